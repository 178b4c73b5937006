//! The management channel's authentication (issue 13 §2): a guest booted with a key serves
//! its management port only to clients that answer its challenge (`tandem_formats::mgmt_auth`);
//! `inject` needs `debug.inject=on`; without a key the port is off. The key may come on the
//! command line (these tests do that on purpose) or, as `tandem` passes it, in the key file
//! given as the guest's first boot module (`-initrd`): then it is neither in QEMU's argv nor
//! on the console.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tandem_formats::mgmt_auth as auth;
use tandem_qemu::builder::{Machine, Nic, QemuCommand};
use tandem_qemu::mgmt::{self, Key};
use tandem_qemu::size::ByteSize;
use tandem_qemu::vm::Vm;
use tandem_tests::*;

const REPLY: Duration = Duration::from_secs(30);

/// Boots a guest with `words`; returns it and the host port forwarded to tcp/10810.
fn boot(dir: &std::path::Path, words: &str, ready: &str) -> (Vm, SocketAddr) {
    boot_with(dir, |cmd| cmd.cmdline(words), ready)
}

/// Boots a guest with what `more` adds to its command; returns it and the host port
/// forwarded to tcp/10810, once a console line contains `ready`.
fn boot_with(
    dir: &std::path::Path,
    more: impl FnOnce(QemuCommand) -> QemuCommand,
    ready: &str,
) -> (Vm, SocketAddr) {
    let mport = free_port();
    let cmd = more(
        guest_command(Machine::Q35, dir)
            .disk(sparse_disk(dir, "a.raw", ByteSize::mib(16)))
            .nic(Nic::user().mac(test_mac()).forward(mport, 10810)),
    );
    let mut vm = spawn(&cmd, dir);
    vm.wait_for_line("mgmt", BOOT_TIMEOUT, |l| l.text.contains(ready))
        .unwrap_or_else(|e| panic!("{e}\n{}", console(&vm)));
    (vm, SocketAddr::from((Ipv4Addr::LOCALHOST, mport)))
}

/// A raw connection: its reader, after reading the challenge; returns the nonce too.
fn raw(addr: SocketAddr) -> (BufReader<TcpStream>, [u8; 32]) {
    let s = TcpStream::connect_timeout(&addr, REPLY).unwrap();
    s.set_read_timeout(Some(REPLY)).unwrap();
    let mut r = BufReader::new(s);
    let line = read_line(&mut r);
    let nonce = auth::parse_challenge(&line).unwrap_or_else(|| panic!("challenge: {line:?}"));
    (r, nonce)
}

fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

fn send(r: &mut BufReader<TcpStream>, line: &str) {
    r.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
}

/// Whether the guest closed the connection (EOF or reset, not a timeout).
fn closed(r: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    }
}

#[test]
fn refuses_the_unauthenticated_and_injects_nothing_without_the_debug_key() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let key = mgmt::generate_key().unwrap();
    let (vm, addr) = boot(
        dir.path(),
        &mgmt::cmdline_words(&key, false),
        "mgmt: control channel on tcp/10810",
    );
    let ctx = || console(&vm);
    assert!(!ctx().contains(&key.to_hex()), "the console shows the key");

    // A command before authentication: refused, and the connection closes.
    let (mut r, _) = raw(addr);
    send(&mut r, "status");
    assert_eq!(read_line(&mut r), auth::REFUSE_UNAUTHENTICATED, "{}", ctx());
    assert!(closed(&mut r), "still open after the refusal");

    // A wrong key: refused, closed.
    let (mut r, nonce) = raw(addr);
    send(
        &mut r,
        &auth::answer(&Key([0x55; 32]), &auth::challenge_line(&nonce)).unwrap(),
    );
    assert_eq!(read_line(&mut r), auth::AUTH_FAILED);
    assert!(closed(&mut r));
    let err = mgmt::command(addr, &Key([0x55; 32]), "status", REPLY).unwrap_err();
    assert!(format!("{err:#}").contains(auth::AUTH_FAILED), "{err:#}");

    // A response replayed on a new connection (a new nonce): refused.
    let (mut r1, n1) = raw(addr);
    let answer = auth::answer(&key, &auth::challenge_line(&n1)).unwrap();
    let (mut r2, n2) = raw(addr);
    assert_ne!(n1, n2, "two connections got the same nonce");
    send(&mut r2, &answer);
    assert_eq!(read_line(&mut r2), auth::AUTH_FAILED);
    assert!(closed(&mut r2));
    send(&mut r1, &answer);
    assert_eq!(read_line(&mut r1), auth::AUTH_OK);
    send(&mut r1, "status");
    assert!(read_line(&mut r1).starts_with("ok restarts=0 "));

    // The right key works; inject is refused without debug.inject=on.
    let status = mgmt::command(addr, &key, "status", REPLY).unwrap();
    assert!(status.starts_with("ok restarts=0 "), "{status}");
    let mut c = mgmt::Client::connect(addr, &key, REPLY).unwrap();
    assert_eq!(c.command("inject panic").unwrap(), auth::REFUSE_INJECT);
    assert_eq!(c.command("inject stall").unwrap(), auth::REFUSE_INJECT);
    let status = c.command("status").unwrap();
    assert!(status.starts_with("ok restarts=0 "), "{status}");
    assert!(!ctx().contains("TANDEM RESTART"), "{}", ctx());
}

/// An authenticated connection that sends nothing for `mgmt.idle_ms` is told so and closed,
/// so that forgotten or half-open connections cannot hold the channel's few slots; one that
/// keeps sending commands stays open well past that time.
#[test]
fn an_idle_authenticated_connection_is_closed() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let key = mgmt::generate_key().unwrap();
    let idle = Duration::from_secs(2);
    let (vm, addr) = boot(
        dir.path(),
        &format!(
            "{} mgmt.idle_ms={}",
            mgmt::cmdline_words(&key, false),
            idle.as_millis()
        ),
        "mgmt: control channel on tcp/10810",
    );
    let login = || {
        let (mut r, nonce) = raw(addr);
        send(
            &mut r,
            &auth::answer(&key, &auth::challenge_line(&nonce)).unwrap(),
        );
        assert_eq!(read_line(&mut r), auth::AUTH_OK, "{}", console(&vm));
        r
    };
    // Busy: a command every quarter of the idle time, for three idle times.
    let mut busy = login();
    let t = Instant::now();
    while t.elapsed() < 3 * idle {
        send(&mut busy, "status");
        let line = read_line(&mut busy);
        assert!(line.starts_with("ok "), "a busy connection got {line:?}");
        // Pacing the client (its behaviour under test), not waiting for the guest.
        std::thread::sleep(idle / 4);
    }
    // Idle: the refusal line, then the close, within the idle time plus emulation slack.
    let mut quiet = login();
    quiet
        .get_ref()
        .set_read_timeout(Some(idle + REPLY))
        .unwrap();
    let t = Instant::now();
    assert_eq!(read_line(&mut quiet), auth::REFUSE_IDLE, "{}", console(&vm));
    // Not at once: the idle time (less the reply's trip) passed first.
    assert!(t.elapsed() >= idle / 2, "closed after {:?}", t.elapsed());
    assert!(closed(&mut quiet), "still open after the idle refusal");
    // The slot serves again.
    let status = mgmt::command(addr, &key, "status", REPLY).unwrap();
    assert!(status.starts_with("ok restarts=0 "), "{status}");
}

#[test]
fn injects_with_the_debug_key() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let key = mgmt::generate_key().unwrap();
    let (mut vm, addr) = boot(
        dir.path(),
        &mgmt::cmdline_words(&key, true),
        "mgmt: control channel on tcp/10810",
    );
    assert_eq!(
        mgmt::command(addr, &key, "inject panic", REPLY).unwrap(),
        "ok injecting panic"
    );
    vm.wait_for_line("restart", BOOT_TIMEOUT, |l| {
        l.text.starts_with("TANDEM RESTART ")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", console(&vm)));
}

#[test]
fn no_key_no_port() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let (vm, addr) = boot(dir.path(), "", "mgmt: off (no mgmt.key)");
    assert!(
        mgmt::command(addr, &Key([0; 32]), "status", Duration::from_secs(10)).is_err(),
        "{}",
        console(&vm)
    );
    // Nothing answers: QEMU's forward takes the connection, the guest resets it.
    let s = TcpStream::connect_timeout(&addr, REPLY).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let got = r.read_line(&mut line);
    assert!(
        matches!(got, Ok(0) | Err(_)) && line.is_empty(),
        "{got:?} {line:?}"
    );
}

#[test]
fn a_key_in_the_boot_module_authenticates_and_shows_nowhere() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    // The key file as `tandem run` makes it: the guest word, 0600.
    let key = mgmt::load_or_create_key(dir.path()).unwrap();
    let key_file = mgmt::key_path(dir.path());
    let (mut vm, addr) = boot_with(
        dir.path(),
        |cmd| cmd.cmdline("mgmt.on_data=on").initrd(&key_file),
        "mgmt: control channel on tcp/10810",
    );
    let hex = key.to_hex();

    // QEMU's argv (what every local user can read) names the file, not the key.
    let argv = std::fs::read(format!("/proc/{}/cmdline", vm.pid())).unwrap();
    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
    assert!(
        argv.contains(&format!("-initrd {}", key_file.display())),
        "{argv}"
    );
    assert!(
        !argv.contains(&hex) && !argv.contains("mgmt.key="),
        "{argv}"
    );

    // The right key works; a wrong one is refused.
    let status = mgmt::command(addr, &key, "status", REPLY).unwrap();
    assert!(status.starts_with("ok restarts=0 "), "{status}");
    let err = mgmt::command(addr, &Key([0x55; 32]), "status", REPLY).unwrap_err();
    assert!(format!("{err:#}").contains(auth::AUTH_FAILED), "{err:#}");

    // The console says where the words came from and never shows the key.
    while let tandem_qemu::vm::Poll::Line(_) = vm.poll(Duration::from_millis(200)) {}
    let text = console(&vm);
    assert!(
        text.contains("boot module: 1 words (mgmt.key=<redacted>)"),
        "{text}"
    );
    let log = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
    for t in [&text, &log] {
        assert!(!t.contains(&hex), "the console shows the key:\n{t}");
    }
}
