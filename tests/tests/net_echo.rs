//! The guest's network path end to end: virtio-net through the HPDI and the zero-copy
//! smoltcp adapter, reached from the host over QEMU user networking with a real TCP client.
//! A 1 MiB random stream sent to the guest's echo service comes back intact.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use tandem_qemu::builder::{Machine, Nic};
use tandem_tests::*;

/// Connects once the forward answers and the guest accepts (bounded retries).
fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("connect to guest echo: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn echo(machine: Machine) {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let port = free_port();
    let cmd = guest_command(machine, dir.path())
        .nic(Nic::user().mac(test_mac()).forward(port, 10809))
        .cmdline("net.echo=10809");
    let mut vm = spawn(&cmd, dir.path());
    let ready = vm
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ready.get("ip"), Some("10.0.2.15"), "{ready:?}");
    vm.wait_for_line("net up", BOOT_TIMEOUT, |l| {
        l.text.contains("echo on tcp/10809")
    })
    .unwrap_or_else(|e| panic!("{e}"));

    let mut s = connect(port);
    s.set_read_timeout(Some(BOOT_TIMEOUT)).unwrap();
    let mut data = vec![0u8; 1 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let mut got = Vec::with_capacity(data.len());
    let mut buf = [0u8; 65536];
    while got.len() < data.len() {
        let n = s.read(&mut buf).expect("echo stream");
        assert!(
            n > 0,
            "guest closed after {} bytes\n{}",
            got.len(),
            console(&vm)
        );
        got.extend_from_slice(&buf[..n]);
    }
    writer.join().unwrap().unwrap();
    assert!(got == data, "echoed bytes differ");
    drop(s);
    vm.stop(Duration::from_secs(5));
}

#[test]
fn echo_q35() {
    echo(Machine::Q35);
}

#[test]
fn echo_microvm() {
    echo(Machine::Microvm);
}
