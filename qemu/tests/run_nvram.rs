//! `tandem run` gives every q35 guest an NVRAM region: `ivshmem-plain` over
//! `<state-dir>/nvram.bin`, created sparse with `--nvram-size` (default 64M) and kept across
//! runs, so what the guest stored there is found by the next boot, also after QEMU was
//! killed. The guest's `debug.nvram=stamp` reads a boot counter from the start of `nvram0`,
//! logs it and stores the next one.
//!
//! In the `tandem` package because only its own tests get the binary's path.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// The guest image: `TANDEM_IMAGE` when set (passed on to `tandem`), else the default one,
/// built first only when missing.
fn ensure_image() {
    if std::env::var_os(tandem_qemu::image::ENV_IMAGE).is_none_or(|v| v.is_empty()) {
        tandem_qemu::image::ensure(None).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn tandem(args: &[&str], cwd: &Path) -> Output {
    Command::new(TANDEM)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run tandem")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The guest's `nvram: nvram0 found "..."; stamped "..."` line.
fn stamp_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.contains("nvram: nvram0 found"))
        .unwrap_or_else(|| panic!("no nvram stamp line in:\n{stdout}"))
}

fn expect_stamp(stdout: &str, before: &str, boot: u32) {
    let line = stamp_line(stdout);
    let want = format!("found \"{before}\"; stamped \"TANDEM-NVRAM boot={boot}\"");
    assert!(line.contains(&want), "want {want:?} in {line:?}");
}

/// One `tandem run` with `debug.nvram=stamp exit=ready` on `state`; returns stdout.
fn stamp_run(state: &Path, cwd: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "run",
        "--state-dir",
        state.to_str().unwrap(),
        "--nbd-port",
        "0",
        "--mgmt-port",
        "0",
        "--cmdline",
        "debug.nvram=stamp exit=ready",
        "--timeout",
        "120",
    ];
    args.extend_from_slice(extra);
    let out = tandem(&args, cwd);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let nvram = state.join("nvram.bin");
    assert!(
        stderr.contains(&format!("NVRAM:       {}", nvram.display())),
        "banner names the NVRAM file\n{stderr}"
    );
    stdout
}

#[test]
fn nvram_is_kept_across_runs_and_a_qemu_kill() {
    ensure_image();
    let tmp = tandem_qemu::scratch::tempdir().unwrap();
    let state = tmp.path().join("state");
    let nvram = state.join("nvram.bin");

    // Boot 1 creates the file and finds it empty; boot 2 finds boot 1's stamp.
    let out = stamp_run(&state, tmp.path(), &[]);
    assert!(
        out.contains("nvram=1"),
        "ready line reports the region\n{out}"
    );
    expect_stamp(&out, "", 1);
    let meta = std::fs::metadata(&nvram).expect("nvram.bin created");
    assert_eq!(meta.len(), 64 << 20);
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() * 512 < 32 << 20, "created sparse");
    expect_stamp(
        &stamp_run(&state, tmp.path(), &[]),
        "TANDEM-NVRAM boot=1",
        2,
    );

    // Boot 3 stamps, then QEMU is killed (SIGKILL, no shutdown of any kind).
    let mut child = Command::new(TANDEM)
        .args(["run", "--state-dir", state.to_str().unwrap()])
        .args([
            "--nbd-port",
            "0",
            "--mgmt-port",
            "0",
            "--cmdline",
            "debug.nvram=stamp",
        ])
        .args(["--timeout", "120"])
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let stamped = line.contains("nvram: nvram0 found");
                seen.push(line);
                if stamped {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no nvram stamp within 60 s:\n{}", seen.join("\n"));
            }
        }
    }
    expect_stamp(&seen.join("\n"), "TANDEM-NVRAM boot=2", 3);
    let qemu_pid: i32 = std::fs::read_to_string(state.join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tandem did not exit after QEMU was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "a killed QEMU is not a clean exit");

    // Boot 4 finds what boot 3 stored before the kill; the file kept its size.
    expect_stamp(
        &stamp_run(&state, tmp.path(), &[]),
        "TANDEM-NVRAM boot=3",
        4,
    );
    assert_eq!(std::fs::metadata(&nvram).unwrap().len(), 64 << 20);
}

#[test]
fn no_nvram_sizes_and_microvm() {
    ensure_image();
    let tmp = tandem_qemu::scratch::tempdir().unwrap();
    let state = tmp.path().join("state");
    let state_arg = state.to_str().unwrap();

    // --no-nvram: no region, no file; the guest says so in its ready line.
    let out = tandem(
        &[
            "run",
            "--state-dir",
            state_arg,
            "--nbd-port",
            "0",
            "--mgmt-port",
            "0",
            "--no-nvram",
            "--cmdline",
            "exit=ready",
            "--timeout",
            "120",
        ],
        tmp.path(),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("nvram=0"), "{stdout}");
    assert!(
        stderr.contains("NVRAM:       none (--no-nvram)"),
        "{stderr}"
    );
    assert!(!state.join("nvram.bin").exists());

    // --nvram-size shapes the line (a dry run creates nothing); sizes QEMU cannot map as
    // a PCI BAR are refused before anything starts.
    let out = tandem(
        &[
            "run",
            "--dry-run",
            "--state-dir",
            state_arg,
            "--nvram-size",
            "16M",
        ],
        tmp.path(),
    );
    let line = text(&out.stdout);
    assert!(
        line.contains(&format!(
            "-object memory-backend-file,id=nvram0,share=on,mem-path={}/nvram.bin,size=16M \
             -device ivshmem-plain,memdev=nvram0",
            state.display()
        )),
        "{line}"
    );
    assert!(!state.join("nvram.bin").exists());
    let out = tandem(&["run", "--dry-run", "--nvram-size", "48M"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("power of two"));

    // microvm has no PCI: no ivshmem on its line, and one note saying why.
    let out = tandem(
        &[
            "run",
            "--dry-run",
            "--machine",
            "microvm",
            "--state-dir",
            state_arg,
        ],
        tmp.path(),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stdout.contains("ivshmem"), "{stdout}");
    assert_eq!(
        stderr.matches("ivshmem-plain is a PCI device").count(),
        1,
        "{stderr}"
    );
}
