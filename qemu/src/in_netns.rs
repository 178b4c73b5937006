//! Running client code inside a pair's network namespace from the host process: a thread
//! joins the namespace (`setns`, which moves only the calling thread) and runs the closure
//! there, so tests and benches can use in-process clients (the write ledger) against the
//! guests' addresses. Joining another process's network namespace needs `CAP_SYS_ADMIN` over
//! it: as root that is always so; a rootless pair (user namespace) needs `tandem pair exec`.

use std::fs::File;

use anyhow::Context;
use nix::sched::{setns, CloneFlags};

/// Runs `f` on a new thread inside the network namespace of process `ns_pid`.
pub fn run<T: Send>(ns_pid: u32, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = format!("/proc/{ns_pid}/ns/net");
    let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).with_context(|| {
                format!("joining the network namespace of process {ns_pid} (needs root)")
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in the namespace panicked"))?
    })
}
