//! Overlapping operations on one range, through a real client (qemu-io over NBD): the newest
//! acknowledged change is what reads return, before and after FLUSH, after a restart in
//! place (a panic injected through the management port) and after QEMU is SIGKILLed and the
//! guest boots again on the same disk and NVRAM. These are the cases of issue 12 §2: a
//! WRITE_ZEROES that went straight to the disk while an older WRITE of the same range was
//! still live in the write log read back as the old bytes, and a consistency point or replay
//! wrote the old bytes back over the acknowledged, flushed zeroes.
//!
//! Each case first queues 8 MiB of writes elsewhere ([`backlog`]), so that the consistency
//! point is busy and the overlapping WRITE is still a live log record when the WRITE_ZEROES
//! arrives (without it, an idle guest often retires the record first and hides the bug). Each
//! case runs under `durability=disk` and `durability=nvlog`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use tandem_qemu::builder::{Disk, Machine, Nic, SharedRegion};
use tandem_qemu::size::ByteSize;
use tandem_qemu::vm::Vm;
use tandem_tests::*;

const DURABILITIES: [&str; 2] = ["disk", "nvlog"];

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// qemu-io, or a failure naming the package.
fn require_qemu_io() {
    let ok = Command::new("qemu-io")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "qemu-io not found: these tests need it (Debian package qemu-utils; scripts/deps installs it)"
    );
}

struct Guest {
    vm: Vm,
    nbd: u16,
    mgmt: u16,
    key: tandem_qemu::mgmt::Key,
}

/// Boots on `dir/a.raw` and `dir/nvram.bin` (created on first use) and waits for the export.
fn boot(dir: &Path, durability: &str) -> Guest {
    require_qemu_io();
    let disk = dir.join("a.raw");
    if !disk.exists() {
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
    }
    let nvram = dir.join("nvram.bin");
    if !nvram.exists() {
        std::fs::File::create(&nvram)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
    }
    let (nbd, mgmt) = (free_port(), free_port());
    let key = tandem_qemu::mgmt::generate_key().unwrap();
    let cmd = guest_command(Machine::Q35, dir)
        .disk(Disk::new(&disk))
        .nic(
            Nic::user()
                .mac(test_mac())
                .forward(nbd, 10809)
                .forward(mgmt, 10810),
        )
        .shared_region(SharedRegion::new(&nvram, ByteSize::mib(32)))
        .cmdline(&format!(
            "durability={durability} {}",
            tandem_qemu::mgmt::cmdline_words(&key, true)
        ));
    let mut vm = spawn(&cmd, dir);
    vm.wait_for_line("NBD export", BOOT_TIMEOUT, |l| {
        l.text.starts_with("TANDEM NBD ")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Guest { vm, nbd, mgmt, key }
}

impl Guest {
    /// Runs qemu-io commands against blk0; returns (all succeeded and verified, output).
    fn io(&self, cmds: &[String]) -> (bool, String) {
        let mut args = vec!["-f".to_string(), "raw".into()];
        for c in cmds {
            args.push("-c".into());
            args.push(c.clone());
        }
        args.push(format!("nbd://127.0.0.1:{}/blk0", self.nbd));
        let out = Command::new("qemu-io")
            .args(&args)
            .output()
            .expect("qemu-io runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success() && !text.contains("failed"), text)
    }

    /// As [`Self::io`], failing the test on any error.
    fn must(&self, what: &str, cmds: &[String]) {
        let (ok, text) = self.io(cmds);
        assert!(
            ok,
            "{what}: qemu-io {cmds:?}:\n{text}\n{}",
            console(&self.vm)
        );
    }

    /// Injects a panic through the management port; waits until the guest serves again.
    fn panic_and_restart(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.mgmt));
        let reply = tandem_qemu::check::mgmt_command(addr, &self.key, "inject panic", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(reply, "ok injecting panic");
        self.vm
            .wait_for_line("restart", BOOT_TIMEOUT, |l| {
                l.text.starts_with("TANDEM RESTART ")
            })
            .unwrap_or_else(|e| panic!("{e}"));
        self.vm
            .wait_for_line("serving again", BOOT_TIMEOUT, |l| {
                l.text.starts_with("TANDEM NBD ")
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

fn c(s: &str) -> String {
    s.to_string()
}

/// Writes that keep the consistency point busy (8 MiB at 16 MiB, away from the ranges the
/// cases use), followed by `cmds`, in one qemu-io run.
fn backlog(cmds: &[String]) -> Vec<String> {
    let mut all = vec![c("write -P 0x5a 16M 4M"), c("write -P 0x5b 20M 4M")];
    all.extend_from_slice(cmds);
    all
}

/// Failures collected over both durabilities, reported together.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, durability: &str, what: &str, g: &Guest, cmds: &[String]) {
        let (ok, text) = g.io(cmds);
        if !ok {
            let verify: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("failed") || l.contains("error"))
                .collect();
            self.0.push(format!(
                "durability={durability}: {what}: {}",
                verify.join(" / ")
            ));
        }
    }

    /// As [`Self::check`], reporting how many of the READs found the wrong bytes.
    fn check_count(&mut self, durability: &str, what: &str, g: &Guest, cmds: &[String]) {
        let (ok, text) = g.io(cmds);
        if !ok {
            let reads = cmds.iter().filter(|c| c.starts_with("read")).count();
            let bad = text.matches("Pattern verification failed").count();
            self.0.push(format!(
                "durability={durability}: {what}: {bad} of {reads} range(s) read back wrong{}",
                if bad == 0 {
                    format!(":\n{text}")
                } else {
                    String::new()
                }
            ));
        }
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} failure(s):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// WRITE 4 KiB of 0xdd, WRITE_ZEROES (with and without FUA) over it: reads return zeroes
/// at once and after FLUSH.
#[test]
fn write_zeroes_over_a_write_reads_zeroes_before_and_after_flush() {
    let mut f = Failures::default();
    for d in DURABILITIES {
        let dir = tandem_qemu::scratch::tempdir().unwrap();
        let g = boot(dir.path(), d);
        for (off, zero) in [(0x10_0000, "write -z"), (0x20_0000, "write -z -f")] {
            f.check(
                d,
                &format!("WRITE then `{zero}`, then READ"),
                &g,
                &backlog(&[
                    format!("write -P 0xdd {off} 4k"),
                    format!("{zero} {off} 4k"),
                    format!("read -P 0 {off} 4k"),
                ]),
            );
            let off = off + 0x8000;
            f.check(
                d,
                &format!("WRITE then `{zero}`, FLUSH, then READ"),
                &g,
                &backlog(&[
                    format!("write -P 0xdd {off} 4k"),
                    format!("{zero} {off} 4k"),
                    c("flush"),
                    format!("read -P 0 {off} 4k"),
                ]),
            );
        }
        drop(g);
    }
    f.assert_none();
}

/// The writes of the restart and SIGKILL cases, flushed: 0xdd then WRITE_ZEROES+FUA at 1M,
/// 0xdd then WRITE_ZEROES at 2M.
fn zeroed_and_flushed() -> Vec<String> {
    backlog(&[
        c("write -P 0xdd 1M 4k"),
        c("write -z -f 1M 4k"),
        c("write -P 0xdd 2M 4k"),
        c("write -z 2M 4k"),
        c("flush"),
    ])
}

/// The same, flushed, then a restart in place (`inject panic`): the log replay must not
/// bring the old bytes back.
#[test]
fn write_zeroes_over_a_write_reads_zeroes_after_a_restart_in_place() {
    let mut f = Failures::default();
    for d in DURABILITIES {
        let dir = tandem_qemu::scratch::tempdir().unwrap();
        let mut g = boot(dir.path(), d);
        g.must("writes", &zeroed_and_flushed());
        g.panic_and_restart();
        f.check(
            d,
            "WRITE, WRITE_ZEROES+FUA, FLUSH, restart in place, READ",
            &g,
            &[c("read -P 0 1M 4k")],
        );
        f.check(
            d,
            "WRITE, WRITE_ZEROES, FLUSH, restart in place, READ",
            &g,
            &[c("read -P 0 2M 4k")],
        );
    }
    f.assert_none();
}

/// The same, flushed, then QEMU SIGKILLed and a fresh boot on the same disk and NVRAM.
#[test]
fn write_zeroes_over_a_write_reads_zeroes_after_sigkill_and_reboot() {
    let mut f = Failures::default();
    for d in DURABILITIES {
        let dir = tandem_qemu::scratch::tempdir().unwrap();
        let mut g = boot(dir.path(), d);
        g.must("writes", &zeroed_and_flushed());
        g.vm.kill();
        let g = boot(dir.path(), d);
        f.check(
            d,
            "WRITE, WRITE_ZEROES+FUA, FLUSH, SIGKILL, boot, READ",
            &g,
            &[c("read -P 0 1M 4k")],
        );
        f.check(
            d,
            "WRITE, WRITE_ZEROES, FLUSH, SIGKILL, boot, READ",
            &g,
            &[c("read -P 0 2M 4k")],
        );
    }
    f.assert_none();
}

/// The sequence: eight times WRITE 4 KiB of 0xdd then WRITE_ZEROES with FUA over it,
/// then FLUSH; every range reads back zeroes after the FLUSH, after a restart in place, and
/// after SIGKILL and a fresh boot.
#[test]
fn eight_writes_zeroed_with_fua_then_flush_read_zeroes_everywhere() {
    const OFFSETS: [u64; 8] = [
        0x10_0000, 0x11_0000, 0x12_0000, 0x13_0000, 0x20_0000, 0x30_1000, 0x40_0000, 0x7f_f000,
    ];
    let reads: Vec<String> = OFFSETS
        .iter()
        .map(|o| format!("read -P 0 {o} 4k"))
        .collect();
    let mut f = Failures::default();
    for d in DURABILITIES {
        let dir = tandem_qemu::scratch::tempdir().unwrap();
        let mut g = boot(dir.path(), d);
        let mut cmds = Vec::new();
        for o in OFFSETS {
            cmds.push(format!("write -P 0xdd {o} 4k"));
            cmds.push(format!("write -z -f {o} 4k"));
        }
        cmds.push(c("flush"));
        cmds.extend(reads.iter().cloned());
        f.check_count(
            d,
            "8 x (WRITE, WRITE_ZEROES+FUA), FLUSH, READ",
            &g,
            &backlog(&cmds),
        );
        g.panic_and_restart();
        f.check_count(d, "... then a restart in place, READ", &g, &reads);
        g.vm.kill();
        let g = boot(dir.path(), d);
        f.check_count(d, "... then SIGKILL and a fresh boot, READ", &g, &reads);
        // Nothing else in the written area changed.
        f.check(
            d,
            "the area around the last range",
            &g,
            &[c("read -P 0 0x7f0000 0x10000")],
        );
    }
    f.assert_none();
}
