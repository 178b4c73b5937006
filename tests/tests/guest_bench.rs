//! The in-guest block benchmark (`bench=blk0`): a verified write-then-read job on q35 and
//! microvm, run through the HPDI against a real virtio-blk disk; its `BENCH` JSON line is
//! parsed and checked, including the driver's own count of requests in flight.

use serde_json::Value;
use tandem_qemu::builder::Machine;
use tandem_qemu::exit::GuestExit;
use tandem_qemu::size::ByteSize;
use tandem_tests::*;

/// Boots with `words` on the command line, returns the parsed `BENCH` JSON and the exit.
fn bench(machine: Machine, words: &str) -> (Value, GuestExit, String) {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let cmd = guest_command(machine, dir.path())
        .disk(sparse_disk(dir.path(), "a.raw", ByteSize::mib(64)))
        .cmdline(words);
    let mut vm = spawn(&cmd, dir.path());
    let line = vm
        .wait_for_line("BENCH line", BOOT_TIMEOUT, |l| l.text.starts_with("BENCH "))
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let json: Value = serde_json::from_str(&line.text["BENCH ".len()..])
        .unwrap_or_else(|e| panic!("BENCH line is not JSON ({e}): {}", line.text));
    (json, exit, console(&vm))
}

fn verified_job(machine: Machine, transport: &str) {
    let (j, exit, ctx) = bench(
        machine,
        "bench=blk0 bench.rw=randwrite bench.qd=32 bench.ops=3000 bench.span_mib=16 bench.verify=1",
    );
    assert_eq!(exit, GuestExit::Clean, "{ctx}");
    assert_eq!(j["device"], "blk0", "{j}");
    assert_eq!(j["transport"], transport, "{j}");
    assert_eq!(j["rw"], "randwrite");
    assert_eq!(j["path"], "hpdi");
    assert_eq!(j["ops"], 3000, "{j}");
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(
        j["verified"], true,
        "every written block read back with its stamp: {j}"
    );
    assert!(j["iops"].as_f64().unwrap() > 0.0, "{j}");
    let lat = &j["lat_us"];
    let (p50, p99, max) = (
        lat["p50"].as_u64().unwrap(),
        lat["p99"].as_u64().unwrap(),
        lat["max"].as_u64().unwrap(),
    );
    assert!(p50 <= p99 && p99 <= max, "{lat}");
    // Depth 32 really had many requests in the device at once (the driver's own counter).
    let in_flight = j["max_in_flight"].as_u64().unwrap();
    assert!(
        in_flight > 1 && in_flight <= 32,
        "max_in_flight {in_flight}: {j}"
    );
    // Every payload byte went to the device. No copy count: the job fills its pool buffers
    // in place and virtio-blk hands their addresses to the device (frontend-drivers'
    // fake-device tests check those addresses), so a count here could only ever be 0.
    assert_eq!(j["bytes_moved"], 3000 * 4096, "{j}");
    assert!(j.get("bytes_copied").is_none(), "{j}");
}

#[test]
fn verified_randwrite_q35() {
    verified_job(Machine::Q35, "pci");
}

#[test]
fn verified_randwrite_microvm() {
    verified_job(Machine::Microvm, "mmio");
}

#[test]
fn direct_path_and_sequential_read() {
    let (j, exit, ctx) = bench(
        Machine::Q35,
        "bench=blk0 bench.rw=read bench.bs=64K bench.qd=4 bench.ops=200 bench.path=direct",
    );
    assert_eq!(exit, GuestExit::Clean, "{ctx}");
    assert_eq!(
        (j["path"].as_str(), j["bs"].as_u64()),
        (Some("direct"), Some(65536)),
        "{j}"
    );
    assert_eq!(j["verified"], Value::Null, "reads are not verified: {j}");
    assert_eq!(j["ops"], 200);
}

#[test]
fn bad_jobs_fail_with_a_reason() {
    let (j, exit, ctx) = bench(Machine::Q35, "bench=blk7");
    assert_eq!(exit, GuestExit::Failed, "{ctx}");
    assert!(j["error"].as_str().unwrap().contains("blk7"), "{j}");
    // More buffers than the guest's DMA memory: refused with the numbers, not a crash.
    let (j, exit, ctx) = bench(Machine::Q35, "bench=blk0 bench.bs=4M bench.qd=1024");
    assert_eq!(exit, GuestExit::Failed, "{ctx}");
    assert!(j["error"].as_str().unwrap().contains("DMA"), "{j}");
}

/// Every block operation the driver offers, on real virtio-blk, read back in the guest.
fn block_ops(machine: Machine) {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let cmd = guest_command(machine, dir.path())
        .disk(sparse_disk(dir.path(), "a.raw", ByteSize::mib(64)))
        .cmdline("debug.blkops=blk0 exit=ready");
    let mut vm = spawn(&cmd, dir.path());
    let line = vm
        .wait_for_line("selftest result", BOOT_TIMEOUT, |l| {
            l.text.contains("selftest: blk0")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.text
            .contains("selftest: blk0 ok (fua-write+read,write-zeroes,discard,flush,errors)"),
        "{}\n{}",
        line.text,
        console(&vm)
    );
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).unwrap(), GuestExit::Clean);
}

#[test]
fn block_ops_q35() {
    block_ops(Machine::Q35);
}

#[test]
fn block_ops_microvm() {
    block_ops(Machine::Microvm);
}

/// More requests than the 16-bit available index holds: the queue must keep going after
/// the index wraps (virtio-drivers' event-idx check stalled here; the driver no longer
/// negotiates event-idx).
#[test]
fn queue_index_wraparound_does_not_stall() {
    let (j, exit, ctx) = bench(
        Machine::Q35,
        "bench=blk0 bench.rw=randread bench.qd=32 bench.ops=70000",
    );
    assert_eq!(exit, GuestExit::Clean, "{ctx}");
    assert_eq!(j["ops"], 70000, "{j}");
}
