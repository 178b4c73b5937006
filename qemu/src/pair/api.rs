//! The library API over a pair, for tests and benchmarks: [`Pair::up`] runs the same code
//! path as `tandem pair up` (it starts the real `tandem` binary's supervisor), the other
//! methods are the `tandem pair` commands, and dropping a [`Pair`] made by `up` takes it
//! down.
//!
//! Every wait is bounded and waits on something observable (a console line, a control word,
//! an event, a process exit); nothing sleeps and hopes.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tandem_formats::pair_region::{self as r, word};

use super::control::{self, ControlRequest, Sig};
use super::events::{self, Event};
use super::region::{self, RegionMap};
use super::spec::{self, PairSpec};
use super::status::{self, PairInfo, PairStatus};
use super::{netns, tail, Node, PairDir};
use crate::console::ConsoleEvent;

/// Environment variable naming the `tandem` executable that runs a pair's supervisor.
pub const ENV_TANDEM_BIN: &str = "TANDEM_BIN";
/// How long control requests may take (a `down` waits for QEMU's grace period).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// The heartbeat sampling window of [`Pair::status`].
pub const HEARTBEAT_WINDOW: Duration = Duration::from_millis(50);

/// A running pair (see the module docs).
#[derive(Debug)]
pub struct Pair {
    paths: PairDir,
    /// The supervisor, when this process started it.
    supervisor: Option<Child>,
    region: RegionMap,
    info: PairInfo,
    /// Take the pair down on drop.
    owned: bool,
}

impl Pair {
    /// Bring a pair up as `tandem pair up` does: prepare the disks and the region, start the
    /// supervisor, wait (up to `spec.boot_timeout`) until both guests print `TANDEM READY`.
    /// On failure everything started is torn down and the error says what went wrong.
    pub fn up(spec: &PairSpec) -> anyhow::Result<Pair> {
        spec.validate().map_err(|e| anyhow!(e))?;
        let dir = std::path::absolute(&spec.dir)
            .with_context(|| format!("bad pair directory {}", spec.dir.display()))?;
        let paths = PairDir::new(&dir);
        for n in Node::ALL {
            std::fs::create_dir_all(paths.node_dir(n))
                .with_context(|| format!("creating {}", paths.node_dir(n).display()))?;
        }
        for sock in [paths.control(), paths.qmp(Node::A), paths.qmp(Node::B)] {
            if sock.as_os_str().len() > crate::state::MAX_SOCKET_PATH {
                bail!(
                    "socket path {} is too long for a unix socket (at most {} bytes); use a \
                     shorter --dir",
                    sock.display(),
                    crate::state::MAX_SOCKET_PATH
                );
            }
        }
        let _up_lock = super::try_lock(&paths.up_lock())
            .with_context(|| format!("locking {}", paths.up_lock().display()))?
            .with_context(|| {
                format!("another `tandem pair up` is under way in {}", dir.display())
            })?;
        check_nothing_left(&dir, &paths)?;
        netns::preflight().map_err(|e| anyhow!(e))?;
        let ip_tool = spec::find_tool("ip").ok_or_else(|| {
            anyhow!("`ip` (iproute2) not found; install it with: apt-get install -y iproute2")
        })?;
        let accel = crate::accel::choose(spec.accel)?;
        let qemu = crate::qemu_bin::ensure_qemu()?;
        let image = crate::image::ensure(spec.image.as_deref())?;
        let tandem = tandem_binary(spec.tandem.as_deref())?;
        let say = |msg: String| {
            if spec.verbose {
                eprintln!("tandem: {msg}");
            }
        };

        let region_size = prepare_disks_and_region(spec, &paths, &say)?;
        let cfg = spec::resolve(spec, &dir, qemu, image, accel.accel, ip_tool, region_size);
        if let Some(tls) = &spec.tls {
            let files = crate::tls::ServerFiles::read(tls)?;
            let text = crate::tls::boot_module_text("", Some(&files))?;
            crate::mgmt::write_private(&paths.boot_module(), text.as_bytes())?;
        }
        std::fs::write(paths.spec(), serde_json::to_string_pretty(&cfg)? + "\n")
            .with_context(|| format!("writing {}", paths.spec().display()))?;
        // Nothing answers on the socket: what is there is stale.
        let _ = std::fs::remove_file(paths.control());
        let _ = std::fs::remove_file(paths.info());

        let mut child = spawn_supervisor(&tandem, &dir, &paths)?;
        say(format!(
            "supervisor pid {} started ({} accel, {}); waiting for both guests",
            child.id(),
            accel.accel,
            paths.supervisor_log().display()
        ));
        let info = match wait_up(&paths, &mut child, spec) {
            Ok(info) => info,
            Err(e) => {
                stop_supervisor(&paths, &mut child);
                return Err(e);
            }
        };
        let region = match RegionMap::open(&paths.region(), true) {
            Ok(r) => r,
            Err(e) => {
                stop_supervisor(&paths, &mut child);
                return Err(e);
            }
        };
        Ok(Pair {
            paths,
            supervisor: Some(child),
            region,
            info,
            owned: true,
        })
    }

    /// The pair already running in `dir` (started by `tandem pair up`, or another process).
    /// Dropping it leaves the pair running.
    pub fn attach(dir: &Path) -> anyhow::Result<Pair> {
        let dir = std::path::absolute(dir)?;
        if !dir.is_dir() {
            bail!(
                "no pair directory {0}; start a pair with `tandem pair up --dir {0}`",
                dir.display()
            );
        }
        let info: PairInfo = serde_json::from_value(control::call(
            &dir,
            ControlRequest::Status,
            CONTROL_TIMEOUT,
        )?)?;
        let paths = PairDir::new(&dir);
        let region = RegionMap::open(&paths.region(), true)
            .or_else(|_| RegionMap::open(&paths.region(), false))?;
        Ok(Pair {
            paths,
            supervisor: None,
            region,
            info,
            owned: false,
        })
    }

    /// Leave the pair running when this value is dropped (what `tandem pair up` does
    /// before it exits).
    pub fn detach(mut self) {
        self.owned = false;
        // Dropping a `Child` neither kills nor waits; the supervisor runs on.
        self.supervisor = None;
    }

    /// The pair directory.
    pub fn dir(&self) -> &Path {
        self.paths.root()
    }

    /// The directory's files.
    pub fn paths(&self) -> &PairDir {
        &self.paths
    }

    /// The supervisor's view when this value was made (see [`Pair::status`] for now).
    pub fn info(&self) -> &PairInfo {
        &self.info
    }

    /// The supervisor's pid.
    pub fn supervisor_pid(&self) -> u32 {
        self.info.supervisor_pid
    }

    /// A node's address.
    pub fn ip(&self, n: Node) -> &str {
        &self.info.node(n).ip
    }

    fn call(&self, req: ControlRequest) -> anyhow::Result<serde_json::Value> {
        Ok(control::call(self.paths.root(), req, CONTROL_TIMEOUT)?)
    }

    /// The supervisor's view now.
    pub fn process_info(&self) -> anyhow::Result<PairInfo> {
        Ok(serde_json::from_value(self.call(ControlRequest::Status)?)?)
    }

    /// Processes and control words (heartbeats sampled [`HEARTBEAT_WINDOW`] apart).
    pub fn status(&self) -> anyhow::Result<PairStatus> {
        let info = self.process_info()?;
        let words = status::sample_words(&self.region, HEARTBEAT_WINDOW);
        Ok(PairStatus::new(info, words))
    }

    /// A node's QEMU pid, while it runs.
    pub fn qemu_pid(&self, n: Node) -> anyhow::Result<Option<u32>> {
        Ok(self.process_info()?.node(n).qemu_pid)
    }

    /// Send `sig` to node `n`'s QEMU (a KILL is reaped before this returns).
    pub fn kill(&self, n: Node, sig: Sig) -> anyhow::Result<()> {
        self.call(ControlRequest::Kill(n, sig)).map(drop)
    }

    /// Start node `n`'s QEMU again (it must not be running); returns its pid.
    pub fn start(&self, n: Node) -> anyhow::Result<u32> {
        let v = self.call(ControlRequest::Start(n))?;
        v["pid"]
            .as_u64()
            .map(|p| p as u32)
            .ok_or_else(|| anyhow!("no pid in the reply {v}"))
    }

    /// Ask node `by` to take its peer over; returns the request's sequence number.
    pub fn takeover(&self, by: Node) -> anyhow::Result<u64> {
        seq_of(self.call(ControlRequest::Takeover(by))?)
    }

    /// Ask node `by` to give its peer's disks back; returns the request's sequence number.
    pub fn giveback(&self, by: Node) -> anyhow::Result<u64> {
        seq_of(self.call(ControlRequest::Giveback(by))?)
    }

    /// Wait until node `n` has carried out request `seq` (`REQUEST_DONE >= seq`).
    pub fn wait_request(&self, n: Node, seq: u64, timeout: Duration) -> anyhow::Result<()> {
        wait_request_done(&self.region, n, seq, timeout)
    }

    /// A command that runs `program` inside the pair's network namespace
    /// (`nsenter -t PID -n [-U --preserve-credentials] -- program`); add arguments, stdio
    /// and run it as usual.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        ns_command(&self.info, program.as_ref())
    }

    /// Run `cmd` (program, arguments, environment, directory) inside the pair's network
    /// namespace and collect its output.
    pub fn exec(&self, cmd: &Command) -> anyhow::Result<Output> {
        let mut c = self.command(cmd.get_program());
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        c.output()
            .with_context(|| format!("running {:?} in the pair's namespace", cmd.get_program()))
    }

    /// Node `n`'s console log.
    pub fn console(&self, n: Node) -> PathBuf {
        self.paths.console(n)
    }

    /// Wait until node `n`'s console has more than `skip` lines containing `needle`, and
    /// return the first line after the skipped ones.
    pub fn wait_console(
        &self,
        n: Node,
        needle: &str,
        skip: usize,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        wait_console_line(&self.paths, n, needle, skip, timeout)
    }

    /// The lines of node `n`'s console containing `needle`, so far.
    pub fn console_lines(&self, n: Node, needle: &str) -> Vec<String> {
        matching_lines(&self.paths.console(n), needle)
    }

    /// The shared region's control words (a `MAP_SHARED` mapping; tests read it).
    pub fn region(&self) -> &RegionMap {
        &self.region
    }

    /// Every event in `events.jsonl` so far.
    pub fn events(&self) -> anyhow::Result<Vec<Event>> {
        Ok(events::read(&self.paths.events())?)
    }

    /// Wait until an event accepted by `pred` is in `events.jsonl`; returns it.
    pub fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> anyhow::Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events()?.into_iter().find(|e| pred(e)) {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no {what} event in {} within {timeout:?}; last events:\n{}",
                    self.paths.events().display(),
                    tail(&self.paths.events(), 10)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Take the pair down: both QEMUs stopped, the supervisor gone (reaped when this
    /// process started it), the control socket removed.
    pub fn down(&mut self) -> anyhow::Result<()> {
        self.owned = false;
        let result = self.call(ControlRequest::Down);
        match self.supervisor.as_mut() {
            Some(child) => {
                if wait_child(child, Duration::from_secs(15)).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                self.supervisor = None;
            }
            None => {
                let pid = self.info.supervisor_pid;
                let deadline = Instant::now() + Duration::from_secs(15);
                while process_alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        result.map(drop)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if self.owned {
            // Stops the QEMUs, then reaps (or kills and reaps) the supervisor.
            let _ = self.down();
        }
    }
}

fn seq_of(v: serde_json::Value) -> anyhow::Result<u64> {
    v["seq"]
        .as_u64()
        .ok_or_else(|| anyhow!("no seq in the reply {v}"))
}

/// Wait until node `n`'s `REQUEST_DONE` reaches `seq`.
pub fn wait_request_done(
    w: &RegionMap,
    n: Node,
    seq: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let done = r::get(w, n.index(), word::REQUEST_DONE);
        if done >= seq {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "node {n} did not carry out request {seq} within {timeout:?} (REQUEST_DONE is \
                 {done})"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `nsenter` into the namespace of the pair described by `info`, then `program`.
pub fn ns_command(info: &PairInfo, program: &OsStr) -> Command {
    let nsenter = spec::find_tool("nsenter").unwrap_or_else(|| "nsenter".into());
    let mut c = Command::new(nsenter);
    c.arg("-t").arg(info.ns_pid.to_string()).arg("-n");
    if info.userns {
        c.args(["-U", "--preserve-credentials"]);
    }
    c.arg("--").arg(program);
    c
}

/// The complete lines of a console file containing `needle` (a last line still being
/// written, without its newline, is left out: the guest prints a byte at a time).
pub fn matching_lines(path: &Path, needle: &str) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..end],
        None => return Vec::new(),
    };
    String::from_utf8_lossy(complete)
        .lines()
        .filter(|l| l.contains(needle))
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

/// The `TANDEM READY` lines of a console file.
pub fn ready_lines(path: &Path) -> Vec<crate::console::ReadyLine> {
    matching_lines(path, crate::console::READY_PREFIX)
        .iter()
        .filter_map(|l| match ConsoleEvent::parse(l) {
            ConsoleEvent::Ready(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn wait_console_line(
    paths: &PairDir,
    n: Node,
    needle: &str,
    skip: usize,
    timeout: Duration,
) -> anyhow::Result<String> {
    let path = paths.console(n);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = matching_lines(&path, needle).into_iter().nth(skip) {
            return Ok(line);
        }
        if Instant::now() >= deadline {
            bail!(
                "node {n}'s console has no {} line containing {needle:?} within {timeout:?}; \
                 its end ({}):\n{}",
                ordinal(skip + 1),
                path.display(),
                tail(&path, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn ordinal(n: usize) -> String {
    match n {
        1 => "1st".into(),
        2 => "2nd".into(),
        3 => "3rd".into(),
        n => format!("{n}th"),
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Make a [`Pair::up`] under way in this process give up and tear down what it started (for
/// a Ctrl-C handler).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Before a pair comes up in `dir`: no pair is up there, no supervisor of an earlier one
/// still runs, and no process still maps its region.
fn check_nothing_left(dir: &Path, paths: &PairDir) -> anyhow::Result<()> {
    if control::is_up(dir) {
        bail!(
            "a pair is already up in {0}; take it down first with `tandem pair down --dir {0}`",
            dir.display()
        );
    }
    if super::try_lock(&paths.supervisor_lock())?.is_none() {
        bail!(
            "a supervisor still runs for {} but does not answer on its control socket; \
             stop it (its pid is in {} and {}) and try again",
            dir.display(),
            paths.info().display(),
            paths.supervisor_log().display()
        );
    }
    if let Some(pid) = mapping_process(&paths.region()) {
        bail!(
            "process {pid} still maps {} (a QEMU of an earlier pair?); stop it first",
            paths.region().display()
        );
    }
    Ok(())
}

/// Each node's disks (sparse, kept when they exist) and the pair region (kept with its logs
/// and claims when it exists); returns the region's size in bytes.
fn prepare_disks_and_region(
    spec: &PairSpec,
    paths: &PairDir,
    say: &dyn Fn(String),
) -> anyhow::Result<u64> {
    for n in Node::ALL {
        for k in 0..spec.disks {
            let disk = crate::state::ensure_nvram(&paths.disk(n, k), spec.disk_size)?;
            if disk.created {
                say(format!(
                    "created disk {} ({}, sparse)",
                    disk.path.display(),
                    disk.size
                ));
            }
        }
    }
    let prepared = region::prepare(&paths.region(), spec.region_size)?;
    if prepared.created {
        say(format!(
            "created the pair region {} ({}, pair id {:016x})",
            paths.region().display(),
            prepared.size,
            prepared.header.pair_id
        ));
    } else {
        say(format!(
            "keeping the pair region {} ({}, pair id {:016x}: its logs and claims stay)",
            paths.region().display(),
            prepared.size,
            prepared.header.pair_id
        ));
    }
    Ok(prepared.size.bytes())
}

/// Start `tandem pair supervise --dir DIR` in a session of its own, its output appended to
/// the supervisor log.
fn spawn_supervisor(tandem: &Path, dir: &Path, paths: &PairDir) -> anyhow::Result<Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.supervisor_log())
        .with_context(|| format!("opening {}", paths.supervisor_log().display()))?;
    let mut command = Command::new(tandem);
    command
        .args(["pair", "supervise", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it is the only call between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot start {}", tandem.display()))
}

/// Wait for the supervisor to publish its `pair.json` and both guests to print
/// `TANDEM READY`.
fn wait_up(paths: &PairDir, child: &mut Child, spec: &PairSpec) -> anyhow::Result<PairInfo> {
    let started = Instant::now();
    let deadline = started + spec.boot_timeout;
    let mut last_progress = Instant::now();
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted while waiting for the guests; the pair was taken down");
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the pair supervisor exited ({status}) before both guests were ready; the end \
                 of {}:\n{}",
                paths.supervisor_log().display(),
                tail(&paths.supervisor_log(), 15)
            );
        }
        let info = std::fs::read_to_string(paths.info())
            .ok()
            .and_then(|t| serde_json::from_str::<PairInfo>(&t).ok())
            .filter(|i| i.supervisor_pid == child.id());
        let ready = Node::ALL.map(|n| !ready_lines(&paths.console(n)).is_empty());
        if let Some(info) = &info {
            for n in Node::ALL {
                let node = info.node(n);
                if !ready[n.index()] && node.qemu_pid.is_none() && node.starts > 0 {
                    bail!(
                        "node {n}'s QEMU ended ({}) before the guest was ready\n--- {} ---\n{}\n\
                         --- {} ---\n{}",
                        node.exit.as_deref().unwrap_or("?"),
                        paths.qemu_log(n).display(),
                        tail(&paths.qemu_log(n), 10),
                        paths.console(n).display(),
                        tail(&paths.console(n), 20)
                    );
                }
            }
            if ready == [true, true] {
                if spec.verbose {
                    for n in Node::ALL {
                        let got = ready_lines(&paths.console(n))
                            .first()
                            .and_then(|r| r.get("ip").map(str::to_string));
                        if got.as_deref() != Some(info.node(n).ip.as_str()) {
                            eprintln!(
                                "tandem: warning: node {n} reports ip={} (expected {})",
                                got.as_deref().unwrap_or("?"),
                                info.node(n).ip
                            );
                        }
                    }
                }
                return Ok(info.clone());
            }
        }
        if Instant::now() >= deadline {
            let mut msg = format!(
                "the guests did not both print TANDEM READY within {:?} (a: {}, b: {})",
                spec.boot_timeout,
                if ready[0] { "ready" } else { "not ready" },
                if ready[1] { "ready" } else { "not ready" }
            );
            for n in Node::ALL.into_iter().filter(|n| !ready[n.index()]) {
                msg.push_str(&format!(
                    "\n--- {} ---\n{}",
                    paths.console(n).display(),
                    tail(&paths.console(n), 15)
                ));
            }
            bail!(msg);
        }
        if spec.verbose && last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "tandem: waiting for the guests ({} s): a {}, b {}",
                started.elapsed().as_secs(),
                if ready[0] { "ready" } else { "booting" },
                if ready[1] { "ready" } else { "booting" }
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Take a supervisor this process started down: `down`, else SIGKILL (its QEMUs die with
/// it); reaped either way.
fn stop_supervisor(paths: &PairDir, child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = control::call(paths.root(), ControlRequest::Down, CONTROL_TIMEOUT);
        if wait_child(child, Duration::from_secs(10)).is_none() {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    super::supervisor::process_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// A process (other than this one) that maps `path`, found through `/proc/*/maps`.
pub fn mapping_process(path: &Path) -> Option<u32> {
    let path = std::fs::canonicalize(path).ok()?;
    let wanted = path.to_str()?;
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| {
                maps.lines()
                    .any(|l| l.ends_with(wanted) || l.ends_with(&format!("{wanted} (deleted)")))
            })
        })
}

/// The `tandem` executable that runs supervisors: `explicit`, else `TANDEM_BIN`, else this
/// process when it is `tandem`, else `<workspace>/target/release/tandem` (built with
/// `cargo build --release -p tandem` when missing).
pub fn tandem_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("tandem executable {} does not exist", p.display());
        }
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(ENV_TANDEM_BIN).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{ENV_TANDEM_BIN}={} does not exist", p.display());
        }
        return Ok(p);
    }
    if let Ok(exe) = std::env::current_exe()
        && exe.file_name() == Some(OsStr::new("tandem"))
    {
        return Ok(exe);
    }
    let ws = crate::image::workspace_root().ok_or_else(|| {
        anyhow!("cannot find the tandem executable: set {ENV_TANDEM_BIN} to its path")
    })?;
    let bin = ws.join("target").join("release").join("tandem");
    // Built once per process, even when present: a stale supervisor would run an older
    // spec.json reader than the library that wrote it (cargo makes this a no-op when fresh).
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_tandem(&ws).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))?;
    if !bin.is_file() {
        bail!(
            "`cargo build --release -p tandem` did not produce {}",
            bin.display()
        );
    }
    Ok(bin)
}

/// `cargo build --release -p tandem` in `workspace` (into its own `target/`).
pub fn build_tandem(workspace: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--release", "-q", "-p", "tandem"])
        .current_dir(workspace)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .status()
        .with_context(|| format!("cannot run {}", Path::new(&cargo).display()))?;
    if !status.success() {
        bail!("`cargo build --release -p tandem` failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_matching() {
        let dir = crate::scratch::tempdir().unwrap();
        let paths = PairDir::new(dir.path());
        std::fs::create_dir_all(paths.node_dir(Node::A)).unwrap();
        std::fs::write(
            paths.console(Node::A),
            "noise\nTANDEM READY machine=q35 ip=10.77.0.10\nx\nTANDEM READY ip=10.77.0.10\nTANDEM RE",
        )
        .unwrap();
        assert_eq!(
            matching_lines(&paths.console(Node::A), "TANDEM RE").len(),
            2
        );
        let r = ready_lines(&paths.console(Node::A));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].get("ip"), Some("10.77.0.10"));
        let second =
            wait_console_line(&paths, Node::A, "TANDEM READY", 1, Duration::from_secs(1)).unwrap();
        assert_eq!(second, "TANDEM READY ip=10.77.0.10");
        let e = wait_console_line(
            &paths,
            Node::A,
            "TANDEM READY",
            2,
            Duration::from_millis(100),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("3rd") && e.contains("noise"), "{e}");
    }

    #[test]
    fn nsenter_line() {
        let info = PairInfo {
            supervisor_pid: 5,
            ns_pid: 5,
            userns: true,
            running: true,
            dir: "/p".into(),
            subnet: "10.77.0.0/24".into(),
            host_ip: "10.77.0.1".into(),
            nodes: vec![],
        };
        let c = ns_command(&info, OsStr::new("nbdinfo"));
        let args: Vec<_> = c.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "-t",
                "5",
                "-n",
                "-U",
                "--preserve-credentials",
                "--",
                "nbdinfo"
            ]
        );
        let root = PairInfo {
            userns: false,
            ..info
        };
        let args: Vec<String> = ns_command(&root, OsStr::new("x"))
            .get_args()
            .map(|a| a.to_str().unwrap().to_string())
            .collect();
        assert_eq!(args, ["-t", "5", "-n", "--", "x"]);
    }

    #[test]
    fn no_mapping_of_an_unmapped_file() {
        let dir = crate::scratch::tempdir().unwrap();
        let f = dir.path().join("r.bin");
        std::fs::write(&f, [0u8; 8192]).unwrap();
        assert_eq!(mapping_process(&f), None);
        assert!(process_alive(std::process::id()));
    }
}
