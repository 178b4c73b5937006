//! The `tandem` binary end to end: `run` boots the real guest image.
//!
//! These live in the `tandem` package because only its own tests get the built binary's
//! path (`CARGO_BIN_EXE_tandem`).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// Build the guest image first if needed (serialised by the builder's lock), so the runs
/// below don't each try.
fn ensure_image() {
    tandem_qemu::image::ensure(None).unwrap_or_else(|e| panic!("{e}"));
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tandem(args: &[&str], cwd: &Path) -> Output {
    Command::new(TANDEM)
        .args(args)
        .current_dir(cwd)
        .env_remove("TANDEM_IMAGE")
        .output()
        .expect("run tandem")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn tandem_run_cli() {
    ensure_image();
    let tmp = tandem_qemu::scratch::tempdir().unwrap();
    let state = tmp.path().join("state");
    let port = free_port().to_string();
    let out = tandem(
        &[
            "run",
            "--cmdline",
            "exit=ready",
            "--state-dir",
            state.to_str().unwrap(),
            "--nbd-port",
            &port,
            "--mgmt-port",
            "0",
            "--timeout",
            "120",
        ],
        tmp.path(),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let disk = state.join("disk0.raw");
    assert_eq!(
        std::fs::metadata(&disk)
            .expect("default disk created")
            .len(),
        1 << 30
    );
    assert!(stdout.contains("TANDEM READY"), "console echoed\n{stdout}");
    assert!(stderr.contains("guest ready after"), "{stderr}");
    // With exit=ready the guest stops before its NBD service announces exports, so no URI
    // is printed here (tests/tests/nbd_clients.rs covers the service).
    let _ = port;
    assert!(stderr.contains("qmp.sock"), "{stderr}");
    let log = std::fs::read_to_string(state.join("console.log")).unwrap();
    assert!(log.contains("TANDEM READY"), "{log}");
    assert!(!state.join("qmp.sock").exists(), "socket cleaned up");
    assert!(!state.join("qemu.pid").exists(), "pid file cleaned up");
}

#[test]
fn tandem_run_reports_guest_panic() {
    ensure_image();
    let tmp = tandem_qemu::scratch::tempdir().unwrap();
    let out = tandem(
        &[
            "run",
            "--cmdline",
            "debug.panic=boot",
            "--state-dir",
            tmp.path().to_str().unwrap(),
            "--nbd-port",
            "0",
            "--mgmt-port",
            "0",
            "--no-reboot",
            "--timeout",
            "120",
        ],
        tmp.path(),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("guest failed: PANIC at "), "{stderr}");
    assert!(stderr.contains("debug.panic"), "{stderr}");
}

#[test]
fn bogus_machine_is_a_clap_error() {
    let tmp = tandem_qemu::scratch::tempdir().unwrap();
    let out = tandem(&["run", "--machine", "bogus"], tmp.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'bogus' for '--machine <MACHINE>'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[possible values: q35, microvm]"),
        "{stderr}"
    );
    assert!(!tmp.path().join(".tandem").exists(), "nothing created");
}

#[test]
fn dry_run_prints_the_command_line_only() {
    let tmp = tandem_qemu::scratch::tempdir().unwrap();
    let out = tandem(
        &[
            "run",
            "--dry-run",
            "--accel",
            "tcg",
            "--machine",
            "microvm",
            "--mem",
            "32M",
            "--disk",
            "/data/a.raw",
            "--disk",
            "/data/b.qcow2,ro",
            "--cmdline",
            "exit=ready",
        ],
        tmp.path(),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let words = shlex::split(stdout.trim()).expect("shell-quoted line");
    let line = words.join(" ");
    assert!(words[0].ends_with("qemu-system-x86_64"), "{line}");
    for expected in [
        "-machine microvm,acpi=off",
        "-accel tcg -cpu max",
        "-m 32M",
        // The management channel's word first (the key itself travels as the boot module).
        "-append mgmt.on_data=on exit=ready",
        "/mgmt.key",
        "-device virtio-blk-device,drive=disk0",
        "driver=qcow2,read-only=on,file.driver=file,file.filename=/data/b.qcow2",
        "hostfwd=tcp:127.0.0.1:10809-:10809",
        "-device isa-debug-exit,iobase=0xf4,iosize=0x04",
    ] {
        assert!(line.contains(expected), "missing {expected:?} in {line}");
    }
    assert!(
        !line.contains("mgmt.key="),
        "a key on the command line: {line}"
    );
    assert!(
        !tmp.path().join(".tandem").exists(),
        "dry run creates nothing"
    );
}

/// A running `tandem run` answers `tandem qmp`, refuses a second run on its state dir, and
/// on SIGINT (Ctrl-C) stops QEMU and exits 130.
#[test]
fn interrupt_stops_qemu_and_exits_130() {
    ensure_image();
    let tmp = tandem_qemu::scratch::tempdir().unwrap();
    let state = tmp.path().join("s");
    let state_arg = state.to_str().unwrap();
    let mut child = Command::new(TANDEM)
        .args([
            "run",
            "--state-dir",
            state_arg,
            "--nbd-port",
            "0",
            "--mgmt-port",
            "0",
        ])
        .args(["--timeout", "120"])
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let ready = line.contains("guest ready after");
                seen.push(line);
                if ready {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no ready banner within 60 s:\n{}", seen.join("\n"));
            }
        }
    }

    let out = tandem(
        &["qmp", "--state-dir", state_arg, "query-status"],
        tmp.path(),
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
    assert_eq!(reply["status"], "running");

    let second = tandem(
        &[
            "run",
            "--state-dir",
            state_arg,
            "--nbd-port",
            "0",
            "--mgmt-port",
            "0",
        ],
        tmp.path(),
    );
    assert_eq!(second.status.code(), Some(1));
    assert!(
        text(&second.stderr).contains("is in use by another `tandem run`"),
        "{}",
        text(&second.stderr)
    );

    let qemu_pid: i32 = std::fs::read_to_string(state.join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tandem did not exit after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    assert!(
        !Path::new(&format!("/proc/{qemu_pid}")).exists(),
        "QEMU (pid {qemu_pid}) still running"
    );
    assert!(!state.join("qmp.sock").exists());
}

#[test]
fn missing_qemu_names_the_install_command() {
    let tmp = tandem_qemu::scratch::tempdir().unwrap();
    let out = Command::new(TANDEM)
        .args(["run", "--dry-run"])
        .current_dir(tmp.path())
        .env("PATH", tmp.path())
        .env_remove("TANDEM_QEMU")
        .env_remove("TANDEM_AUTO_INSTALL")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "qemu-system-x86_64 not found; install it with: apt-get install -y qemu-system-x86"
        ),
        "{stderr}"
    );
}
