//! The NBD service with real clients: qemu-io, qemu-img, nbdinfo, nbdcopy and fio's nbd
//! engine against the guest over QEMU user networking, plus hostile raw-TCP clients that
//! must not disturb anyone else.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tandem_qemu::builder::{Machine, Nic};
use tandem_qemu::size::ByteSize;
use tandem_qemu::vm::Vm;
use tandem_tests::*;

const DISK_MIB: u64 = 128;
/// What the export serves: the disk less the 1 MiB reserved for its label and checkpoints.
const EXPORT_BYTES: u64 = (DISK_MIB - 1) << 20;

/// A booted guest serving one 128 MiB disk as `blk0` on a host port.
struct Served {
    vm: Vm,
    port: u16,
    _dir: tandem_qemu::scratch::TempDir,
}

impl Served {
    fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/blk0", self.port)
    }
}

fn serve(machine: Machine, cmdline: &str) -> Served {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let port = free_port();
    let cmd = guest_command(machine, dir.path())
        .disk(sparse_disk(dir.path(), "a.raw", ByteSize::mib(DISK_MIB)))
        .nic(Nic::user().mac(test_mac()).forward(port, 10809))
        .cmdline(cmdline);
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_for_line("NBD export", BOOT_TIMEOUT, |l| {
        l.text.starts_with("TANDEM NBD ")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Served {
        vm,
        port,
        _dir: dir,
    }
}

/// Runs a client tool with a deadline; panics with its output on failure.
fn tool(s: &Served, program: &str, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} not runnable ({e}); run scripts/deps"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(
                status.success(),
                "{program} {args:?} failed: {status}\nstdout: {}\nstderr: {}\nguest:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                console(&s.vm)
            );
            return out;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} {args:?} timed out\nguest:\n{}", console(&s.vm));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn random_file(path: &Path, bytes: usize, seed: u64) {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, data).unwrap();
}

#[test]
fn qemu_io_patterns_read_back() {
    let s = serve(Machine::Q35, "");
    let uri = s.uri();
    let mut args = vec!["-f".to_string(), "raw".into()];
    let spots: &[(u64, u64)] = &[
        (0, 4096),
        (8192, 512),
        (65536, 1 << 20),
        (3 << 20, 3 << 20),
        (100 << 20, 65536),
        (EXPORT_BYTES - 4096, 4096),
    ];
    for (i, (off, len)) in spots.iter().enumerate() {
        args.push("-c".into());
        args.push(format!("write -P {} {off} {len}", 0x20 + i));
    }
    args.push("-c".into());
    args.push("flush".into());
    for (i, (off, len)) in spots.iter().enumerate() {
        args.push("-c".into());
        args.push(format!("read -P {} {off} {len}", 0x20 + i));
    }
    args.push(uri.clone());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tool(&s, "qemu-io", &argv);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Pattern verification failed"), "{text}");
    assert_eq!(text.matches("read ").count(), spots.len(), "{text}");
}

#[test]
fn qemu_img_convert_compare_and_nbdinfo() {
    let s = serve(Machine::Q35, "");
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    random_file(&src, 24 << 20, 7);
    let src = src.to_str().unwrap();
    tool(
        &s,
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src, &s.uri()],
    );
    // The rest of the fresh disk is zero, which compare accepts as equal content.
    tool(
        &s,
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", src, &s.uri()],
    );
    let out = tool(
        &s,
        "nbdinfo",
        &["--json", "--list", &format!("nbd://127.0.0.1:{}", s.port)],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "blk0", "{v}");
    assert_eq!(e["export-size"], EXPORT_BYTES, "{v}");
    assert_eq!(e["is_read_only"], false, "{v}");
    assert_eq!(e["can_flush"], true, "{v}");
    assert_eq!(e["can_trim"], true, "{v}");
    assert_eq!(e["block_size_maximum"], 32 << 20, "{v}");
}

#[test]
fn nbdcopy_round_trip_and_fio_verify_on_microvm() {
    let s = serve(Machine::Microvm, "");
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let (src, back) = (dir.path().join("src.raw"), dir.path().join("back.raw"));
    random_file(&src, 16 << 20, 11);
    tool(&s, "nbdcopy", &[src.to_str().unwrap(), &s.uri()]);
    tool(&s, "nbdcopy", &[&s.uri(), back.to_str().unwrap()]);
    let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());
    assert!(
        b.len() == EXPORT_BYTES as usize && a[..] == b[..a.len()],
        "nbdcopy round trip differs"
    );
    let uri = s.uri();
    let out = tool(
        &s,
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--size=8M",
            "--offset=64M",
            "--iodepth=16",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("err= 0"), "{text}");
}

fn raw(port: u16) -> TcpStream {
    let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads until the peer closes (Ok) or the timeout hits (Err).
fn closed_by_server(mut s: TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn handshake(s: &mut TcpStream) {
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet).unwrap();
    assert_eq!(&greet[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    // NBD_OPT_EXPORT_NAME "blk0" (no zeroes): size + flags come back.
    let mut opt = Vec::new();
    opt.extend_from_slice(b"IHAVEOPT");
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.extend_from_slice(&4u32.to_be_bytes());
    opt.extend_from_slice(b"blk0");
    s.write_all(&opt).unwrap();
    let mut info = [0u8; 10];
    s.read_exact(&mut info).unwrap();
}

fn request(kind: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    v.extend_from_slice(&0u16.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn reply_error(s: &mut TcpStream) -> (u64, u32) {
    let mut r = [0u8; 16];
    s.read_exact(&mut r).unwrap();
    assert_eq!(&r[..4], &0x6744_6698u32.to_be_bytes());
    (
        u64::from_be_bytes(r[8..16].try_into().unwrap()),
        u32::from_be_bytes(r[4..8].try_into().unwrap()),
    )
}

#[test]
fn hostile_clients_do_not_disturb_others() {
    let s = serve(Machine::Q35, "");
    // Data a good client wrote first.
    tool(
        &s,
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 1M 1M", &s.uri()],
    );

    // Garbage instead of the client flags / options: closed.
    let mut g = raw(s.port);
    g.write_all(b"GET / HTTP/1.1\r\nHost: tandem\r\n\r\n")
        .unwrap();
    assert!(closed_by_server(g), "garbage handshake not closed");

    // Requests that are refused with an error, on a connection that survives them.
    let mut c = raw(s.port);
    handshake(&mut c);
    c.write_all(&request(0, 1, EXPORT_BYTES + 4096, 4096))
        .unwrap(); // read past the end
    assert_eq!(reply_error(&mut c), (1, 22));
    c.write_all(&request(0, 2, 0, 64 << 20)).unwrap(); // longer than the maximum
    assert_eq!(reply_error(&mut c), (2, 22));
    c.write_all(&request(1, 3, EXPORT_BYTES, 512)).unwrap(); // write past the end
    c.write_all(&[0u8; 512]).unwrap(); // its payload is skipped
    assert_eq!(reply_error(&mut c), (3, 28));
    c.write_all(&request(9, 4, 0, 512)).unwrap(); // unknown command
    assert_eq!(reply_error(&mut c), (4, 22));
    c.write_all(&request(0, 5, 0, 512)).unwrap(); // and a good read still works
    assert_eq!(reply_error(&mut c), (5, 0));
    let mut data = [0u8; 512];
    c.read_exact(&mut data).unwrap();

    // A write whose payload stops halfway, then the client vanishes.
    let mut w = raw(s.port);
    handshake(&mut w);
    w.write_all(&request(1, 1, 1 << 20, 1 << 20)).unwrap();
    w.write_all(&vec![0xee; 300_000]).unwrap();
    drop(w);
    // A truncated request header, then the client vanishes.
    let mut t = raw(s.port);
    handshake(&mut t);
    t.write_all(&request(0, 1, 0, 512)[..10]).unwrap();
    drop(t);
    // Bad request magic: closed.
    let mut m = raw(s.port);
    handshake(&mut m);
    m.write_all(&[0xffu8; 28]).unwrap();
    assert!(closed_by_server(m), "bad magic not closed");

    // Everyone else goes on, and acknowledged data is intact: the vanished write over it
    // never arrived whole, so it was never applied.
    tool(
        &s,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x5a 1M 1M",
            "-c",
            "write -P 0x77 8M 64k",
            "-c",
            "read -P 0x77 8M 64k",
            &s.uri(),
        ],
    );
    drop(c);
}

#[test]
fn sixteen_clients_at_once_in_64m() {
    let s = serve(Machine::Q35, "");
    let uri = s.uri();
    let children: Vec<_> = (0..16)
        .map(|i| {
            let off = i * (4 << 20);
            Command::new("qemu-io")
                .args([
                    "-f",
                    "raw",
                    "-c",
                    &format!("write -P {} {off} 2M", 0x30 + i),
                    "-c",
                    &format!("read -P {} {off} 2M", 0x30 + i),
                    &uri,
                ])
                .output()
                .expect("qemu-io")
        })
        .collect();
    for (i, out) in children.iter().enumerate() {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !text.contains("failed"),
            "client {i}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
