//! Export access control against the real guest: per-export allow-lists on the guest command
//! line (`export=NAME:blkN:allow=NETS`). Under QEMU user networking every client reaches the
//! guest from 10.0.2.2, so an export allowed only to 192.0.2.0/24 is denied to it: `nbdinfo
//! --list` does not show it, a raw client's `NBD_OPT_GO` gets `NBD_REP_ERR_POLICY` (the same
//! reply as a name that does not exist), and `nbdinfo` fails on it; an open export and one
//! allowed to 10.0.2.0/24 serve qemu-io as usual.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use tandem_qemu::builder::{Machine, Nic};
use tandem_qemu::size::ByteSize;
use tandem_qemu::vm::Vm;
use tandem_tests::*;

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const OPT_GO: u32 = 7;
const OPT_LIST: u32 = 3;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_POLICY: u32 = (1 << 31) + 2;

struct Served {
    vm: Vm,
    port: u16,
    _dir: tandem_qemu::scratch::TempDir,
}

impl Served {
    fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }
}

/// Three 16 MiB disks: `open` (everyone), `far` (192.0.2.0/24 only: not the test's client)
/// and `lan` (10.0.2.0/24 and one other network: the test's client is in it).
fn serve() -> Served {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let port = free_port();
    let mut cmd = guest_command(Machine::Q35, dir.path());
    for d in ["a.raw", "b.raw", "c.raw"] {
        cmd = cmd.disk(sparse_disk(dir.path(), d, ByteSize::mib(16)));
    }
    let cmd = cmd
        .nic(Nic::user().mac(test_mac()).forward(port, 10809))
        .cmdline(
            "export=open:blk0 export=far:blk1:allow=192.0.2.0/24 \
             export=lan:blk2:allow=198.51.100.0/24+10.0.2.0/24",
        );
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

/// A raw fixed-newstyle client after the greeting and client flags.
fn raw_client(s: &Served) -> TcpStream {
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
    c.write_all(&3u32.to_be_bytes()).unwrap(); // FIXED_NEWSTYLE | NO_ZEROES
    c
}

fn send_option(c: &mut TcpStream, option: u32, data: &[u8]) {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    c.write_all(&m).unwrap();
}

/// One option reply: (option, type, data).
fn read_reply(c: &mut TcpStream) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    c.read_exact(&mut h).unwrap();
    assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), REPLY_MAGIC);
    let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    let mut data = vec![0u8; be32(&h[16..20]) as usize];
    c.read_exact(&mut data).unwrap();
    (be32(&h[8..12]), be32(&h[12..16]), data)
}

fn go(c: &mut TcpStream, name: &str) {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    send_option(c, OPT_GO, &d);
}

/// The replies to `NBD_OPT_GO` for `name` up to the final one (ACK or an error).
fn go_replies(c: &mut TcpStream, name: &str) -> Vec<(u32, u32, Vec<u8>)> {
    go(c, name);
    let mut v = Vec::new();
    loop {
        let r = read_reply(c);
        let last = r.1 != REP_INFO;
        v.push(r);
        if last {
            return v;
        }
    }
}

#[test]
fn denied_clients_see_no_export_and_get_policy() {
    let s = serve();

    // LIST over a raw client: the denied export is not there.
    let mut c = raw_client(&s);
    send_option(&mut c, OPT_LIST, &[]);
    let mut names = Vec::new();
    loop {
        let (o, t, d) = read_reply(&mut c);
        assert_eq!(o, OPT_LIST);
        if t == REP_ACK {
            break;
        }
        assert_eq!(t, REP_SERVER);
        names.push(String::from_utf8(d[4..].to_vec()).unwrap());
    }
    assert_eq!(names, ["open", "lan"], "guest:\n{}", console(&s.vm));

    // GO for the denied export: NBD_REP_ERR_POLICY, the same reply as for a name that does
    // not exist, and the connection stays in the handshake: GO for an allowed one works.
    let denied = go_replies(&mut c, "far");
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!((denied[0].0, denied[0].1), (OPT_GO, REP_ERR_POLICY));
    let unknown = go_replies(&mut c, "nosuch");
    assert_eq!(unknown, denied);
    let ok = go_replies(&mut c, "open");
    assert_eq!(ok.last().unwrap().1, REP_ACK, "{ok:?}");
    drop(c);

    // nbdinfo: the list shows only the admitted exports; the denied one fails.
    let list = tool(&s.vm, "nbdinfo", &["--list", &s.uri("")]);
    assert!(
        list.contains("export=\"open\"") && list.contains("export=\"lan\""),
        "{list}"
    );
    assert!(!list.contains("far"), "{list}");
    let out = run_tool(&s.vm, "nbdinfo", &[&s.uri("far")]);
    assert!(
        !out.status.success(),
        "nbdinfo on the denied export succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // (libnbd reports a refused GO as an error reply to opt_go; which errno it maps
    // NBD_REP_ERR_POLICY to is its own business: the raw client above checked the code.)
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server replied with error to opt_go") && err.contains("far"),
        "nbdinfo's error: {err}"
    );

    // The open export and the one allowed to 10.0.2.0/24 serve real clients.
    let io = tool(
        &s.vm,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 4096 65536",
            "-c",
            "read -P 0x5a 4096 65536",
            &s.uri("open"),
        ],
    );
    assert!(!io.contains("Pattern verification failed"), "{io}");
    let io = tool(
        &s.vm,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xa5 0 8192",
            "-c",
            "read -P 0xa5 0 8192",
            &s.uri("lan"),
        ],
    );
    assert!(!io.contains("Pattern verification failed"), "{io}");
    let info = tool(&s.vm, "nbdinfo", &[&s.uri("lan")]);
    assert!(info.contains("export=\"lan\""), "{info}");
}
