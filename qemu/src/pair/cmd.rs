//! The `tandem pair` commands (arguments in [`crate::cli`]): thin wrappers over [`Pair`].

use std::time::{Duration, Instant};

use anyhow::Context;

use super::api::{matching_lines, ns_command};
use super::{Node, Pair, PairSpec};
use crate::cli::{
    PairCommand, PairDirArgs, PairExecArgs, PairKillArgs, PairNodeArgs, PairRequestArgs,
    PairStatusArgs, PairUpArgs,
};
use crate::console::{ConsoleEvent, NBD_PREFIX};

/// Run one `tandem pair` command; returns the exit status.
pub fn run(cmd: &PairCommand) -> anyhow::Result<i32> {
    match cmd {
        PairCommand::Up(a) => up(a),
        PairCommand::Status(a) => status(a),
        PairCommand::Takeover(a) => request(a, true),
        PairCommand::Giveback(a) => request(a, false),
        PairCommand::Kill(a) => kill(a),
        PairCommand::Start(a) => start(a),
        PairCommand::Exec(a) => exec(a),
        PairCommand::Down(a) => down(a),
        PairCommand::Supervise(a) => super::supervisor::supervise(&std::path::absolute(&a.dir)?),
    }
}

/// The library spec for `tandem pair up`'s arguments.
pub fn spec_of(a: &PairUpArgs) -> PairSpec {
    PairSpec {
        dir: a.dir.dir.clone(),
        disks: a.disks,
        disk_size: a.disk_size,
        region_size: a.region_size,
        mem: a.mem,
        timeout_ms: a.timeout_ms,
        fence_timeout_ms: a.fence_timeout_ms,
        giveback: a.giveback,
        subnet: a.subnet,
        accel: a.accel,
        image: a.image.clone(),
        tandem: None,
        cmdline: a
            .cmdline
            .as_deref()
            .map(|c| c.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        exports: super::spec::export_words(
            &[(); 2].map(|_| vec![a.allow.unwrap_or_default(); usize::from(a.disks)]),
        ),
        tls: a.tls.clone(),
        tls_mode: a.tls_mode,
        boot_modules: [None, None],
        boot_timeout: Duration::from_secs(a.boot_timeout),
        verbose: true,
    }
}

fn up(a: &PairUpArgs) -> anyhow::Result<i32> {
    up_spec(&spec_of(a))
}

/// `tandem pair up` for `spec` (what [`spec_of`] makes, or an appliance's with its boot
/// modules).
pub fn up_spec(spec: &PairSpec) -> anyhow::Result<i32> {
    // Ctrl-C while waiting: tear down what was started instead of leaving a half-up pair.
    ctrlc::set_handler(super::api::interrupt).context("installing the Ctrl-C handler")?;
    let pair = Pair::up(spec)?;
    let info = pair.info().clone();
    let dir = pair.dir().display().to_string();
    // The exports follow TANDEM READY once the network is up: give them a moment to show.
    let deadline = Instant::now() + Duration::from_secs(10);
    let exports = |n: Node| -> Vec<String> {
        matching_lines(&pair.console(n), NBD_PREFIX)
            .iter()
            .filter(|l| matches!(ConsoleEvent::parse(l), ConsoleEvent::Nbd { .. }))
            .filter_map(|l| l.split_whitespace().last().map(str::to_string))
            .collect()
    };
    while Node::ALL.iter().any(|&n| exports(n).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "pair up in {dir}: supervisor pid {} ({})",
        info.supervisor_pid,
        if info.userns {
            "rootless: network namespace in a user namespace"
        } else {
            "network namespace"
        }
    );
    println!(
        "  host side {} on bridge tbr0 (subnet {})",
        info.host_ip, info.subnet
    );
    for n in Node::ALL {
        let node = info.node(n);
        println!(
            "  node {n}: {} mac {} qemu pid {} console {}",
            node.ip,
            node.mac,
            node.qemu_pid.map_or("-".into(), |p| p.to_string()),
            node.console.display()
        );
        for uri in exports(n) {
            println!("    export {uri}");
        }
    }
    let a_ip = &info.node(Node::A).ip;
    println!("clients run inside the pair's network namespace:");
    println!("  tandem pair exec --dir {dir} -- nbdinfo --list nbd://{a_ip}");
    println!("  tandem pair status --dir {dir}");
    println!(
        "  tandem pair kill --dir {dir} a        # crash node a (the fence agent and node b take over)"
    );
    println!("  tandem pair takeover --dir {dir} --by b --wait 30");
    println!("  tandem pair down --dir {dir}");
    pair.detach();
    Ok(0)
}

fn status(a: &PairStatusArgs) -> anyhow::Result<i32> {
    let pair = Pair::attach(&a.dir.dir)?;
    let st = pair.status()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", st.table());
    }
    Ok(0)
}

fn request(a: &PairRequestArgs, takeover: bool) -> anyhow::Result<i32> {
    let pair = Pair::attach(&a.dir.dir)?;
    let (what, seq) = if takeover {
        ("takeover", pair.takeover(a.by)?)
    } else {
        ("giveback", pair.giveback(a.by)?)
    };
    println!("{what} request {seq} written to node {}", a.by);
    if let Some(secs) = a.wait {
        let timeout = Duration::try_from_secs_f64(secs)
            .context("--wait takes a non-negative number of seconds")?;
        pair.wait_request(a.by, seq, timeout)?;
        println!("node {} carried out request {seq}", a.by);
    }
    Ok(0)
}

fn kill(a: &PairKillArgs) -> anyhow::Result<i32> {
    let pair = Pair::attach(&a.dir.dir)?;
    pair.kill(a.node, a.signal)?;
    println!("sent {} to node {}'s QEMU", a.signal.name(), a.node);
    Ok(0)
}

fn start(a: &PairNodeArgs) -> anyhow::Result<i32> {
    let pair = Pair::attach(&a.dir.dir)?;
    let pid = pair.start(a.node)?;
    println!(
        "node {} started (QEMU pid {pid}); console {}",
        a.node,
        pair.console(a.node).display()
    );
    Ok(0)
}

fn exec(a: &PairExecArgs) -> anyhow::Result<i32> {
    let pair = Pair::attach(&a.dir.dir)?;
    let (program, args) = a
        .command
        .split_first()
        .context("no command given after --")?;
    let mut c = ns_command(pair.info(), program);
    c.args(args);
    let status = c
        .status()
        .with_context(|| format!("cannot run nsenter for {program:?}"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

fn down(a: &PairDirArgs) -> anyhow::Result<i32> {
    let mut pair = Pair::attach(&a.dir)?;
    pair.down()?;
    println!("pair in {} is down", pair.dir().display());
    Ok(0)
}
