//! NBD over TLS against the real guest: the certificates reach it in its boot module (QEMU
//! `-initrd`, the text `tandem_formats::boot_module::compose` writes, as `tandem run --tls DIR`
//! does), the mode in its words (`nbd.tls=on|require`, `nbd.tls_verify_peer=on`). Real
//! clients (qemu-io, qemu-img, nbdinfo, nbdcopy, fio) work over TLS 1.3 and 1.2 with a
//! throwaway CA from `tandem_qemu::tls::create`; plaintext, a wrong CA, a missing client
//! certificate and a STARTTLS followed by anything but a TLS handshake are refused, and none
//! of that restarts the guest; `nbd.tls=on` serves both.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_formats::boot_module::{compose, TLS_CA_CERT, TLS_SERVER_CERT, TLS_SERVER_KEY};
use tandem_formats::nbd_wire::{self as wire, opt, rep};
use tandem_qemu::builder::{Machine, Nic};
use tandem_qemu::size::ByteSize;
use tandem_qemu::tls::{self, KeyKind, ServerFiles};
use tandem_qemu::vm::Vm;
use tandem_tests::*;

const DISK: ByteSize = ByteSize::mib(16);
/// The export: the disk less the 1 MiB the guest keeps for itself (as in nbd_clients.rs).
const EXPORT_BYTES: usize = 15 << 20;

struct Served {
    vm: Vm,
    port: u16,
    /// The credentials directory (`tls::create`'s layout): CA, server and client files.
    creds: PathBuf,
    dir: tandem_qemu::scratch::TempDir,
}

impl Served {
    fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/blk0", self.port)
    }

    fn tls_uri(&self, creds: &Path) -> String {
        format!(
            "nbds://127.0.0.1:{}/blk0?tls-certificates={}",
            self.port,
            creds.display()
        )
    }

    /// The `--object`/`--image-opts` arguments for qemu-io and qemu-img over TLS with the
    /// credentials in `creds`; `priority` (a GnuTLS priority string) when given.
    fn qemu_tls_args(&self, creds: &Path, priority: Option<&str>) -> Vec<String> {
        let mut object = format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            creds.display()
        );
        if let Some(p) = priority {
            object.push_str(&format!(",priority={p}"));
        }
        vec![
            "--object".into(),
            object,
            "--image-opts".into(),
            format!(
                "driver=nbd,host=127.0.0.1,port={},export=blk0,tls-creds=tls0",
                self.port
            ),
        ]
    }

    /// Every console line so far (and the console log), after draining what is in flight.
    fn full_console(&mut self) -> String {
        while let tandem_qemu::vm::Poll::Line(_) = self.vm.poll(Duration::from_millis(200)) {}
        let mut text: String = self
            .vm
            .history()
            .iter()
            .map(|l| format!("{}\n", l.text))
            .collect();
        text.push_str(
            &std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default(),
        );
        text
    }
}

/// One 16 MiB disk (a 15 MiB export) served as `blk0` with `words`, the credentials of a fresh throwaway CA in
/// the boot module.
fn serve(words: &str) -> Served {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let creds = dir.path().join("creds");
    tls::create(&creds, &[], KeyKind::EcdsaP256).unwrap();
    let files = ServerFiles::read(&creds).unwrap();
    let module = compose(
        "",
        &[
            (TLS_CA_CERT, &files.ca_cert),
            (TLS_SERVER_CERT, &files.server_cert),
            (TLS_SERVER_KEY, &files.server_key),
        ],
    )
    .unwrap();
    let module_path = dir.path().join("boot.module");
    std::fs::write(&module_path, module).unwrap();

    let port = free_port();
    let cmd = guest_command(Machine::Q35, dir.path())
        .disk(sparse_disk(dir.path(), "a.raw", DISK))
        .nic(Nic::user().mac(test_mac()).forward(port, 10809))
        .cmdline(words)
        .initrd(&module_path);
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_for_line("NBD export", BOOT_TIMEOUT, |l| {
        l.text.starts_with("TANDEM NBD ")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Served {
        vm,
        port,
        creds,
        dir,
    }
}

/// Runs a client tool that must fail; returns its stderr.
fn refused(s: &Served, program: &str, args: &[&str]) -> String {
    let out = run_tool(&s.vm, program, args);
    assert!(
        !out.status.success(),
        "{program} {args:?} succeeded but must be refused\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A raw fixed-newstyle client after the greeting and client flags.
fn raw_client(s: &Served) -> TcpStream {
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(
        u64::from_be_bytes(greeting[..8].try_into().unwrap()),
        wire::NBDMAGIC
    );
    assert_eq!(
        u64::from_be_bytes(greeting[8..16].try_into().unwrap()),
        wire::IHAVEOPT
    );
    let flags = wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES;
    c.write_all(&flags.to_be_bytes()).unwrap();
    c
}

fn option_bytes(option: u32, data: &[u8]) -> Vec<u8> {
    let mut m = wire::IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    m
}

fn go_bytes(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    option_bytes(opt::GO, &d)
}

/// One option reply: (option, type, data).
fn read_reply(c: &mut TcpStream) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    c.read_exact(&mut h).unwrap();
    assert_eq!(
        u64::from_be_bytes(h[..8].try_into().unwrap()),
        wire::REPLY_MAGIC
    );
    let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    let mut data = vec![0u8; be32(&h[16..20]) as usize];
    c.read_exact(&mut data).unwrap();
    (be32(&h[8..12]), be32(&h[12..16]), data)
}

/// Everything the peer sends until it closes; panics if it keeps the connection open.
fn read_to_close(c: &mut TcpStream, s: &Served) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!(
                "the guest kept the connection open ({e}); got {got:02x?}\nguest:\n{}",
                console(&s.vm)
            ),
        }
    }
}

/// Asserts the guest has not restarted in place.
fn no_restart(s: &mut Served) {
    let text = s.full_console();
    assert!(
        !text.contains("TANDEM RESTART"),
        "the guest restarted:\n{text}"
    );
}

#[test]
fn real_clients_over_tls_1_3_and_1_2() {
    let mut s = serve("nbd.tls=require");
    let creds = s.creds.clone();

    // qemu-io writes a pattern over TLS 1.3 (the only version the priority string offers)
    // and reads it back over TLS 1.2 (1.3 taken out; the guest takes nothing below 1.2).
    let mut args = s.qemu_tls_args(&creds, Some("NORMAL:-VERS-ALL:+VERS-TLS1.3"));
    args.extend(["-c".into(), "write -P 0xab 0 1M".into()]);
    let out = tool(&s.vm, "qemu-io", &strs(&args));
    assert!(out.contains("wrote 1048576/1048576"), "{out}");
    let mut args = s.qemu_tls_args(&creds, Some("NORMAL:-VERS-TLS1.3"));
    args.extend(["-c".into(), "read -P 0xab 0 1M".into()]);
    let out = tool(&s.vm, "qemu-io", &strs(&args));
    assert!(
        out.contains("read 1048576/1048576") && !out.contains("Pattern verification failed"),
        "{out}"
    );

    // qemu-img info over TLS.
    let mut args = vec!["info".to_string()];
    args.extend(s.qemu_tls_args(&creds, None));
    let out = tool(&s.vm, "qemu-img", &strs(&args));
    assert!(out.contains(&format!("({EXPORT_BYTES} bytes)")), "{out}");

    // nbdinfo on the nbds:// URI.
    let out = tool(&s.vm, "nbdinfo", &[&s.tls_uri(&creds)]);
    assert!(
        out.contains("export=\"blk0\"") && out.contains(&format!("export-size: {EXPORT_BYTES}")),
        "{out}"
    );

    // nbdcopy from the nbds:// URI to a local file: the pattern is there.
    let back = s.dir.path().join("back.raw");
    tool(
        &s.vm,
        "nbdcopy",
        &[&s.tls_uri(&creds), back.to_str().unwrap()],
    );
    let b = std::fs::read(&back).unwrap();
    assert_eq!(b.len(), EXPORT_BYTES);
    assert!(b[..1 << 20].iter().all(|&x| x == 0xab), "pattern differs");

    // fio's nbd engine hands its URI to libnbd's nbd_connect_uri, which refuses a
    // tls-certificates= parameter (local file access); without one, libnbd takes the CA from
    // its default place, $HOME/.pki/libnbd for a user other than root. So fio runs as nobody
    // with a HOME holding our CA, and its verify job must pass over TLS.
    let home = s.dir.path().join("fio-home");
    let pki = home.join(".pki/libnbd");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::copy(creds.join(tls::CA_CERT), pki.join(tls::CA_CERT)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        // nobody must reach the CA (the server key stays 0600 in its own directory).
        for d in [
            s.dir.path(),
            home.as_path(),
            home.join(".pki").as_path(),
            pki.as_path(),
        ] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let uri = format!("--uri=nbds://127.0.0.1:{}/blk0", s.port);
    let home_env = format!("HOME={}", home.display());
    let out = tool(
        &s.vm,
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "env",
            &home_env,
            "fio",
            "--name=verify",
            "--ioengine=nbd",
            &uri,
            "--rw=randwrite",
            "--bs=4k",
            "--size=4M",
            "--offset=8M",
            "--iodepth=8",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ],
    );
    assert!(out.contains("verify"), "fio over TLS: {out}");

    // The console never shows the private key (its base64 body, line by line).
    let key = std::fs::read_to_string(creds.join(tls::SERVER_KEY)).unwrap();
    let text = s.full_console();
    assert!(text.contains("nbd: TLS required"), "{text}");
    for line in key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
    {
        assert!(!text.contains(line), "the console shows the key:\n{text}");
    }
    no_restart(&mut s);
}

#[test]
fn plaintext_wrong_ca_and_downgrade_are_refused() {
    let mut s = serve("nbd.tls=require");
    let creds = s.creds.clone();

    // Plaintext nbdinfo: refused.
    // (libnbd maps NBD_REP_ERR_TLS_REQD to ENOTSUP; the raw client below checks the code.)
    let err = refused(&s, "nbdinfo", &[&s.uri()]);
    assert!(
        err.contains("server replied with error to opt_go"),
        "nbdinfo's error: {err}"
    );
    // A plaintext list shows no export (nbdinfo --list fails on the refused NBD_OPT_LIST).
    let out = run_tool(&s.vm, "nbdinfo", &["--list", &s.uri()]);
    let listed = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!listed.contains("blk0"), "plaintext list shows: {listed}");
    assert!(
        !out.status.success() && err.contains("server replied with error to list request"),
        "nbdinfo --list in clear: {}\nstdout: {listed}\nstderr: {err}",
        out.status
    );

    // A raw client's NBD_OPT_GO in clear: NBD_REP_ERR_TLS_REQD (2^31 + 5).
    assert_eq!(rep::ERR_TLS_REQD, (1 << 31) + 5);
    let mut c = raw_client(&s);
    c.write_all(&go_bytes("blk0")).unwrap();
    let (o, t, _) = read_reply(&mut c);
    assert_eq!((o, t), (opt::GO, rep::ERR_TLS_REQD));
    // NBD_OPT_LIST in clear: the same.
    c.write_all(&option_bytes(opt::LIST, &[])).unwrap();
    let (o, t, _) = read_reply(&mut c);
    assert_eq!((o, t), (opt::LIST, rep::ERR_TLS_REQD));
    drop(c);

    // STARTTLS, its ACK, then a plaintext NBD_OPT_GO where the ClientHello should be: the
    // guest closes without an NBD reply (a TLS alert at most).
    let mut c = raw_client(&s);
    c.write_all(&option_bytes(opt::STARTTLS, &[])).unwrap();
    let (o, t, d) = read_reply(&mut c);
    assert_eq!((o, t, d.len()), (opt::STARTTLS, rep::ACK, 0));
    c.write_all(&go_bytes("blk0")).unwrap();
    let rest = read_to_close(&mut c, &s);
    let magic = wire::REPLY_MAGIC.to_be_bytes();
    assert!(
        !rest.windows(magic.len()).any(|w| w == magic),
        "an NBD reply after STARTTLS in clear: {rest:02x?}"
    );
    // At most one TLS alert record (content type 21), fatal (level 2).
    assert!(
        rest.is_empty() || (rest.len() == 7 && rest[0] == 0x15 && rest[5] == 2),
        "not a fatal TLS alert: {rest:02x?}"
    );

    // qemu-img with another CA: refused.
    let other = s.dir.path().join("other");
    tls::create(&other, &[], KeyKind::EcdsaP256).unwrap();
    let mut args = vec!["info".to_string()];
    args.extend(s.qemu_tls_args(&other, None));
    let err = refused(&s, "qemu-img", &strs(&args));
    assert!(err.contains("known issuer"), "qemu-img's error: {err}");
    let err = refused(&s, "nbdinfo", &[&s.tls_uri(&other)]);
    assert!(
        err.contains("certificate verification"),
        "nbdinfo's error: {err}"
    );

    // After all that a good TLS client still works, and the guest did not restart.
    let out = tool(&s.vm, "nbdinfo", &[&s.tls_uri(&creds)]);
    assert!(out.contains("export=\"blk0\""), "{out}");
    no_restart(&mut s);
}

#[test]
fn client_certificates_when_verify_peer_is_on() {
    let mut s = serve("nbd.tls=require nbd.tls_verify_peer=on");
    let creds = s.creds.clone();

    // Only the CA: no client certificate to show, refused.
    let ca_only = s.dir.path().join("ca-only");
    std::fs::create_dir(&ca_only).unwrap();
    std::fs::copy(creds.join(tls::CA_CERT), ca_only.join(tls::CA_CERT)).unwrap();
    // (The guest's refusal reaches libnbd as a fatal TLS alert.)
    let err = refused(&s, "nbdinfo", &[&s.tls_uri(&ca_only)]);
    assert!(err.contains("alert"), "nbdinfo's error: {err}");

    // The full directory (client-cert.pem and client-key.pem): served.
    let out = tool(&s.vm, "nbdinfo", &[&s.tls_uri(&creds)]);
    assert!(out.contains("export=\"blk0\""), "{out}");
    let mut args = vec!["info".to_string()];
    args.extend(s.qemu_tls_args(&creds, None));
    let out = tool(&s.vm, "qemu-img", &strs(&args));
    assert!(out.contains(&format!("({EXPORT_BYTES} bytes)")), "{out}");

    let text = s.full_console();
    assert!(
        text.contains("nbd: TLS required (1.3 and 1.2; client certificates required)"),
        "{text}"
    );
    no_restart(&mut s);
}

#[test]
fn tls_on_serves_both() {
    let mut s = serve("nbd.tls=on");
    let creds = s.creds.clone();
    let out = tool(&s.vm, "nbdinfo", &[&s.uri()]);
    assert!(out.contains("export=\"blk0\""), "{out}");
    let out = tool(&s.vm, "nbdinfo", &[&s.tls_uri(&creds)]);
    assert!(out.contains("export=\"blk0\""), "{out}");
    let text = s.full_console();
    assert!(text.contains("nbd: TLS offered"), "{text}");
    no_restart(&mut s);
}
