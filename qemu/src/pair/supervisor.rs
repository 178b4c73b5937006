//! The supervisor: `tandem pair supervise --dir DIR` (hidden; `pair up` starts it detached).
//!
//! First thing, while the process is still single-threaded, it enters the pair's network
//! namespace and builds the bridge and taps ([`super::netns`]). Then it maps the region,
//! binds `DIR/control.sock`, starts both QEMUs as its children (they inherit the
//! namespace) and runs one loop on the main thread, every [`POLL`]:
//!
//! 1. reap exited QEMUs (`waitpid` `WNOHANG`) and log them;
//! 2. the fence agent (see [`super`]): for each node whose disks are claimed by the other
//!    node and not yet silenced, confirm it dead at once if its QEMU is not running, or kill
//!    it after the fence timeout, reap it, then confirm it dead;
//! 3. carry out control requests, which a thread per connection reads from the socket and
//!    passes to the loop (so all process and region state has one owner).
//!
//! `down` (or SIGTERM, SIGINT, SIGHUP) stops both QEMUs (QMP `quit`, SIGKILL after
//! [`crate::run::STOP_GRACE`]), removes the control socket and exits; the namespace goes
//! with the process. QEMUs die with the supervisor in any case (`PR_SET_PDEATHSIG`).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tandem_formats::pair_region::{self as r, word, Request};

use super::control::{error_reply, ok_reply, ControlRequest, Sig};
use super::events::{self, EventLog};
use super::netns::{self, Namespace};
use super::region::RegionMap;
use super::spec::{self, PairConfig};
use super::status::{NodeInfo, PairInfo};
use super::{Node, PairDir};
use crate::exit::GuestExit;
use crate::qmp::Qmp;

/// How often the loop runs (the fence agent's poll interval).
pub const POLL: Duration = Duration::from_millis(2);
/// How long a control connection may take to send its request line.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a control connection waits for the loop's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Run the supervisor for the pair in `dir` (its `spec.json` written by `pair up`).
pub fn supervise(dir: &Path) -> anyhow::Result<i32> {
    let paths = PairDir::new(dir);
    let text = std::fs::read_to_string(paths.spec())
        .with_context(|| format!("reading {}", paths.spec().display()))?;
    let cfg: PairConfig = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", paths.spec().display()))?;
    // Held until the process ends: one supervisor per directory.
    let _lock = super::try_lock(&paths.supervisor_lock())
        .with_context(|| format!("locking {}", paths.supervisor_lock().display()))?
        .with_context(|| format!("another supervisor is running for {}", dir.display()))?;
    events::log(&format!(
        "supervisor pid {} for {} starting",
        std::process::id(),
        dir.display()
    ));
    // Single-threaded up to here: the namespace must come before any thread.
    let ns = netns::enter()?;
    netns::setup(&cfg.ip_tool, &cfg.subnet())?;
    let region = RegionMap::open(&paths.region(), true)?;
    region
        .header()
        .map_err(|e| anyhow::anyhow!("{}: {e}", paths.region().display()))?;
    let events = EventLog::open(&paths.events())
        .with_context(|| format!("opening {}", paths.events().display()))?;
    let mut sup = Supervisor::new(cfg, paths, ns, region, events);
    sup.events.record(
        None,
        "supervisor-started",
        json!({"pid": std::process::id(), "userns": ns.userns}),
    );
    // A fresh console per `up`; restarts within it append.
    for n in Node::ALL {
        std::fs::File::create(sup.paths.console(n))
            .with_context(|| format!("creating {}", sup.paths.console(n).display()))?;
    }

    let control = sup.paths.control();
    let _ = std::fs::remove_file(&control);
    let listener =
        UnixListener::bind(&control).with_context(|| format!("binding {}", control.display()))?;
    let (tx, rx) = mpsc::channel::<Cmd>();
    let (written_tx, written_rx) = mpsc::channel::<()>();
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve_control(listener, tx, written_tx))
            .context("spawning the control thread")?;
    }
    ctrlc::set_handler(move || {
        let _ = tx.send(Cmd {
            req: ControlRequest::Down,
            reply: None,
        });
    })
    .context("installing the signal handler")?;

    for n in Node::ALL {
        if let Err(e) = sup.start(n) {
            sup.down("a QEMU failed to start");
            return Err(e.context(format!("starting node {n}")));
        }
    }
    sup.write_info();
    sup.run(rx, written_rx)
}

/// A request from a control connection, with where its reply goes.
struct Cmd {
    req: ControlRequest,
    reply: Option<Sender<String>>,
}

fn serve_control(listener: UnixListener, tx: Sender<Cmd>, written: Sender<()>) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let tx = tx.clone();
        let written = written.clone();
        let _ = std::thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || handle_conn(stream, tx, written));
    }
}

fn handle_conn(stream: UnixStream, tx: Sender<Cmd>, written: Sender<()>) {
    let _ = stream.set_read_timeout(Some(REQUEST_READ_TIMEOUT));
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() {
        return;
    }
    let (reply, req) = match line.parse::<ControlRequest>() {
        Err(e) => (error_reply(&e), None),
        Ok(req) => {
            let (rtx, rrx) = mpsc::channel();
            if tx
                .send(Cmd {
                    req,
                    reply: Some(rtx),
                })
                .is_err()
            {
                return;
            }
            match rrx.recv_timeout(REPLY_TIMEOUT) {
                Ok(reply) => (reply, Some(req)),
                Err(_) => (error_reply("the supervisor did not answer in time"), None),
            }
        }
    };
    let mut stream = stream;
    let _ = stream.write_all(format!("{reply}\n").as_bytes());
    let _ = stream.flush();
    if req == Some(ControlRequest::Down) {
        let _ = written.send(());
    }
}

/// One node's QEMU as the supervisor tracks it.
#[derive(Default)]
struct NodeProc {
    child: Option<Child>,
    pid: Option<u32>,
    /// What happened last when no QEMU runs: `not-started`, `exited`, `killed-for-fence`,
    /// `down`.
    state: Option<&'static str>,
    exit: Option<String>,
    starts: u32,
    /// An unacknowledged claim on this node's disks being timed: (epoch, since).
    pending: Option<(u64, Instant)>,
}

struct Supervisor {
    cfg: PairConfig,
    paths: PairDir,
    ns: Namespace,
    region: RegionMap,
    events: EventLog,
    nodes: [NodeProc; 2],
    fence_timeout: Duration,
    running: bool,
}

impl Supervisor {
    fn new(
        cfg: PairConfig,
        paths: PairDir,
        ns: Namespace,
        region: RegionMap,
        events: EventLog,
    ) -> Supervisor {
        let fence_timeout = Duration::from_millis(cfg.fence_timeout_ms);
        Supervisor {
            cfg,
            paths,
            ns,
            region,
            events,
            nodes: Default::default(),
            fence_timeout,
            running: true,
        }
    }

    fn run(&mut self, rx: Receiver<Cmd>, written: Receiver<()>) -> anyhow::Result<i32> {
        loop {
            self.reap();
            self.fence_pass();
            match rx.recv_timeout(POLL) {
                Ok(Cmd {
                    req: ControlRequest::Down,
                    reply,
                }) => {
                    let by_request = reply.is_some();
                    self.down(if by_request { "down" } else { "signal" });
                    if let Some(reply) = reply {
                        let _ = reply.send(ok_reply(json!({})));
                        // Let the control thread write the reply before the process ends.
                        let _ = written.recv_timeout(Duration::from_secs(5));
                    }
                    return Ok(0);
                }
                Ok(Cmd { req, reply }) => {
                    let answer = self.handle(req);
                    if let Some(reply) = reply {
                        let _ = reply.send(answer);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.down("control channel closed");
                    return Ok(1);
                }
            }
        }
    }

    fn handle(&mut self, req: ControlRequest) -> String {
        let result = match req {
            ControlRequest::Status => {
                serde_json::to_value(self.info()).map_err(|e| anyhow::anyhow!(e))
            }
            ControlRequest::Kill(n, sig) => self.signal(n, sig),
            ControlRequest::Start(n) => match self.nodes[n.index()].pid {
                Some(pid) if self.nodes[n.index()].child.is_some() => Err(anyhow::anyhow!(
                    "node {n} is running (QEMU pid {pid}); stop it first with `tandem pair \
                     kill --dir {} {n}`",
                    self.paths.root().display()
                )),
                _ => self.start(n).map(|pid| json!({ "pid": pid })),
            },
            ControlRequest::Takeover(n) => self.request(n, Request::Takeover),
            ControlRequest::Giveback(n) => self.request(n, Request::Giveback),
            ControlRequest::Down => unreachable!("handled by the loop"),
        };
        match result {
            Ok(v) => ok_reply(v),
            Err(e) => error_reply(&format!("{e:#}")),
        }
    }

    /// Start node `n`'s QEMU.
    fn start(&mut self, n: Node) -> anyhow::Result<u32> {
        let cmd = self.cfg.node_command(n);
        let _ = std::fs::remove_file(self.paths.qmp(n));
        let append = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))
        };
        let console = append(&self.paths.console(n))?;
        let mut qemu_log = append(&self.paths.qemu_log(n))?;
        let np = &mut self.nodes[n.index()];
        let _ = writeln!(
            qemu_log,
            "--- start {} at {} us: {cmd}",
            np.starts + 1,
            events::now_us()
        );
        let mut command = cmd.to_command();
        command
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(qemu_log);
        let parent = nix::unistd::getpid();
        // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid).
        unsafe {
            command.pre_exec(move || {
                // A QEMU must never outlive its fence agent.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other("the supervisor is gone"));
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", cmd.qemu.display()))?;
        let pid = child.id();
        np.child = Some(child);
        np.pid = Some(pid);
        np.state = None;
        np.exit = None;
        np.starts += 1;
        np.pending = None;
        self.events
            .record(Some(n), "qemu-started", json!({ "pid": pid }));
        self.write_info();
        Ok(pid)
    }

    /// Reap QEMUs that exited.
    fn reap(&mut self) {
        for n in Node::ALL {
            let status = match self.nodes[n.index()].child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => status,
                _ => continue,
            };
            self.exited(n, status, "exited");
        }
    }

    fn exited(&mut self, n: Node, status: ExitStatus, state: &'static str) {
        let np = &mut self.nodes[n.index()];
        np.child = None;
        let desc = GuestExit::from_status(status).to_string();
        np.exit = Some(desc.clone());
        if np.state != Some("killed-for-fence") {
            np.state = Some(state);
        }
        let pid = np.pid;
        self.events
            .record(Some(n), "qemu-exited", json!({"pid": pid, "status": desc}));
        self.write_info();
    }

    /// The fence agent's pass over both nodes.
    fn fence_pass(&mut self) {
        for n in Node::ALL {
            let j = n.index();
            let (o, e) = r::owner(&self.region, j);
            if o == j || r::peer_silenced(&self.region, j, e) {
                self.nodes[j].pending = None;
                continue;
            }
            if self.nodes[j].child.is_none() {
                // Not running: nothing of it can write any more.
                self.confirm_dead(n, e, "not running");
                continue;
            }
            match self.nodes[j].pending {
                Some((epoch, since)) if epoch == e => {
                    if since.elapsed() >= self.fence_timeout {
                        self.kill_for_fence(n, e, since.elapsed());
                    }
                }
                _ => {
                    self.nodes[j].pending = Some((e, Instant::now()));
                    self.events.record(
                        Some(n),
                        "claim-seen",
                        json!({"epoch": e, "by": Node::from_index(o)}),
                    );
                }
            }
        }
    }

    fn kill_for_fence(&mut self, n: Node, epoch: u64, waited: Duration) {
        let np = &mut self.nodes[n.index()];
        let Some(mut child) = np.child.take() else {
            return;
        };
        np.state = Some("killed-for-fence");
        let pid = child.id();
        let _ = child.kill();
        self.events.record(
            Some(n),
            "killed-for-fence",
            json!({"pid": pid, "epoch": epoch, "waited_ms": waited.as_millis() as u64}),
        );
        // Only a reaped QEMU can issue no more writes.
        match child.wait() {
            Ok(status) => {
                self.exited(n, status, "killed-for-fence");
                self.confirm_dead(n, epoch, "killed and reaped");
            }
            Err(e) => {
                events::log(&format!(
                    "{n}: waitpid({pid}) failed: {e}; DEAD not written"
                ));
            }
        }
    }

    fn confirm_dead(&mut self, n: Node, epoch: u64, reason: &str) {
        r::set(&self.region, n.index(), word::DEAD, epoch);
        self.region_fence();
        self.nodes[n.index()].pending = None;
        self.events.record(
            Some(n),
            "dead-confirmed",
            json!({"epoch": epoch, "reason": reason}),
        );
    }

    fn region_fence(&self) {
        use tandem_formats::pair_region::Words;
        self.region.fence();
    }

    fn signal(&mut self, n: Node, sig: Sig) -> anyhow::Result<serde_json::Value> {
        let np = &mut self.nodes[n.index()];
        let Some(child) = np.child.as_mut() else {
            anyhow::bail!(
                "node {n} is not running ({}); start it with `tandem pair start --dir {} {n}`",
                np.exit.as_deref().unwrap_or("not started"),
                self.paths.root().display()
            );
        };
        let pid = child.id();
        kill(Pid::from_raw(pid as i32), sig.signal())
            .with_context(|| format!("kill -{} {pid}", sig.name()))?;
        self.events
            .record(Some(n), "signal", json!({"pid": pid, "signal": sig.name()}));
        if sig == Sig::Kill {
            let status = self.nodes[n.index()]
                .child
                .as_mut()
                .expect("checked above")
                .wait()
                .context("waitpid")?;
            self.exited(n, status, "exited");
            let exit = self.nodes[n.index()].exit.clone();
            return Ok(json!({"pid": pid, "exit": exit}));
        }
        self.write_info();
        Ok(json!({ "pid": pid }))
    }

    fn request(&mut self, n: Node, req: Request) -> anyhow::Result<serde_json::Value> {
        let j = n.index();
        let seq = r::get(&self.region, j, word::REQUEST_SEQ) + 1;
        // The request word before its sequence number: a node that sees the new sequence
        // number reads the request that goes with it.
        r::set(&self.region, j, word::REQUEST, req as u64);
        self.region_fence();
        r::set(&self.region, j, word::REQUEST_SEQ, seq);
        self.region_fence();
        let kind = match req {
            Request::Takeover => "takeover",
            Request::Giveback => "giveback",
            Request::None => "none",
        };
        self.events
            .record(Some(n), "request", json!({"request": kind, "seq": seq}));
        Ok(json!({"seq": seq, "request": kind}))
    }

    /// Stop both QEMUs, remove the socket, mark the pair down.
    fn down(&mut self, reason: &str) {
        for n in Node::ALL {
            let Some(child) = self.nodes[n.index()].child.as_mut() else {
                continue;
            };
            let pid = child.id();
            if process_stopped(pid) {
                // A frozen QEMU cannot answer QMP.
                let _ = child.kill();
                continue;
            }
            let quit =
                Qmp::connect(&self.paths.qmp(n), Duration::from_secs(1)).and_then(|mut q| q.quit());
            if quit.is_err() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + crate::run::STOP_GRACE;
        loop {
            self.reap_as("down");
            let left: Vec<Node> = Node::ALL
                .into_iter()
                .filter(|n| self.nodes[n.index()].child.is_some())
                .collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for n in left {
                    if let Some(mut child) = self.nodes[n.index()].child.take() {
                        let _ = child.kill();
                        if let Ok(status) = child.wait() {
                            self.nodes[n.index()].child = None;
                            self.exited(n, status, "down");
                        }
                    }
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for np in &mut self.nodes {
            np.state = Some("down");
        }
        let _ = std::fs::remove_file(self.paths.control());
        self.running = false;
        self.write_info();
        self.events
            .record(None, "supervisor-down", json!({ "reason": reason }));
    }

    fn reap_as(&mut self, state: &'static str) {
        for n in Node::ALL {
            if let Some(Ok(Some(status))) =
                self.nodes[n.index()].child.as_mut().map(Child::try_wait)
            {
                self.exited(n, status, state);
            }
        }
    }

    fn info(&self) -> PairInfo {
        let net = self.cfg.subnet();
        let pid = std::process::id();
        PairInfo {
            supervisor_pid: pid,
            ns_pid: pid,
            userns: self.ns.userns,
            running: self.running,
            dir: self.cfg.dir.clone(),
            subnet: net.to_string(),
            host_ip: net.host().to_string(),
            nodes: Node::ALL
                .into_iter()
                .map(|n| {
                    let np = &self.nodes[n.index()];
                    let state = match (&np.child, np.state) {
                        (Some(c), _) if process_stopped(c.id()) => "stopped",
                        (Some(_), _) => "running",
                        (None, Some(s)) => s,
                        (None, None) => "not-started",
                    };
                    NodeInfo {
                        node: n,
                        qemu_pid: np.child.as_ref().map(Child::id),
                        state: state.to_string(),
                        exit: np.exit.clone(),
                        starts: np.starts,
                        ip: net.node_ip(n).to_string(),
                        mac: spec::mac(n).to_string(),
                        tap: spec::tap(n).to_string(),
                        console: self.paths.console(n),
                        qmp: self.paths.qmp(n),
                        disks: self.cfg.node_disks(n),
                    }
                })
                .collect(),
        }
    }

    /// Rewrite `pair.json` (atomically: a reader never sees half of it).
    fn write_info(&self) {
        let path = self.paths.info();
        let tmp = path.with_extension("json.tmp");
        let text = match serde_json::to_string_pretty(&self.info()) {
            Ok(t) => t,
            Err(_) => return,
        };
        if std::fs::write(&tmp, text + "\n").is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

/// Whether process `pid` is stopped (SIGSTOP): state `T` in `/proc/PID/stat`.
pub fn process_stopped(pid: u32) -> bool {
    process_state(pid).is_some_and(|s| s == 'T' || s == 't')
}

/// The state letter of process `pid` (`R`, `S`, `T`, `Z`, ...), `None` when it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the command may hold spaces and parentheses; the state follows
    // the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_state_of_self_and_of_nothing() {
        let me = process_state(std::process::id()).unwrap();
        assert!(matches!(me, 'R' | 'S'), "{me}");
        assert!(!process_stopped(std::process::id()));
        assert_eq!(process_state(u32::MAX), None);
    }

    /// A supervisor whose "QEMUs" are a script that sleeps (no guest, no namespace): the
    /// fence agent's logic against real processes and a real region file.
    fn fake_pair(dir: &Path, fence_timeout_ms: u64) -> Supervisor {
        use std::os::unix::fs::PermissionsExt;
        let paths = PairDir::new(dir);
        for n in Node::ALL {
            std::fs::create_dir_all(paths.node_dir(n)).unwrap();
        }
        super::super::region::prepare(&paths.region(), crate::size::ByteSize::mib(4)).unwrap();
        let script = dir.join("fake-qemu");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut spec = super::super::PairSpec::new(dir);
        spec.fence_timeout_ms = fence_timeout_ms;
        let cfg = spec::resolve(
            &spec,
            dir,
            script,
            "/nonexistent/unikernel".into(),
            crate::accel::Accel::Tcg,
            "ip".into(),
            4 << 20,
        );
        let region = RegionMap::open(&paths.region(), true).unwrap();
        let events = EventLog::open(&paths.events()).unwrap();
        Supervisor::new(cfg, paths, Namespace { userns: false }, region, events)
    }

    fn names(sup: &Supervisor, n: Node) -> Vec<String> {
        events::read(&sup.paths.events())
            .unwrap()
            .into_iter()
            .filter(|e| e.node == Some(n))
            .map(|e| e.event)
            .collect()
    }

    /// Host-only: no guest runs here, so the test itself is node B and the only writer of
    /// node B's words (the integration test `pair_topology` has the real guest claim).
    #[test]
    fn fence_agent_kills_a_stopped_node_that_ignores_a_claim_host_only() {
        let dir = crate::scratch::tempdir().unwrap();
        let mut sup = fake_pair(dir.path(), 300);
        let pid_a = sup.start(Node::A).unwrap();
        let pid_b = sup.start(Node::B).unwrap();
        assert_eq!(r::claim(&sup.region, 0, 0), Some(1), "A's home claim");
        assert_eq!(r::claim(&sup.region, 1, 1), Some(1), "B's home claim");
        // Nothing to do while every node holds its own disks.
        sup.fence_pass();
        assert_eq!(r::get(&sup.region, 0, word::DEAD), 0);

        kill(Pid::from_raw(pid_a as i32), Signal::SIGSTOP).unwrap();
        let e = r::claim(&sup.region, 1, 0).expect("B's claim on A's disks stands");
        let claimed = Instant::now();
        while r::get(&sup.region, 0, word::DEAD) != e {
            assert!(
                claimed.elapsed() < Duration::from_secs(20),
                "the agent never confirmed A dead"
            );
            sup.reap();
            sup.fence_pass();
            std::thread::sleep(POLL);
        }
        assert!(
            claimed.elapsed() >= Duration::from_millis(300),
            "killed before the fence timeout: {:?}",
            claimed.elapsed()
        );
        assert!(sup.nodes[0].child.is_none());
        assert_eq!(process_state(pid_a), None, "A's process is reaped");
        assert!(r::peer_silenced(&sup.region, 0, e));
        assert_eq!(
            names(&sup, Node::A),
            [
                "qemu-started",
                "claim-seen",
                "killed-for-fence",
                "qemu-exited",
                "dead-confirmed"
            ]
        );
        assert_eq!(sup.info().node(Node::A).state, "killed-for-fence");
        assert_eq!(process_state(pid_b).map(|s| s != 'Z'), Some(true));
        assert_eq!(r::get(&sup.region, 1, word::DEAD), 0, "B left alone");

        // A claim on a node whose QEMU is not running is confirmed at once.
        let reply = sup.handle(ControlRequest::Kill(Node::B, Sig::Kill));
        assert!(reply.contains("\"ok\":true"), "{reply}");
        let e_b = r::claim(&sup.region, 0, 1).unwrap();
        sup.fence_pass();
        assert_eq!(r::get(&sup.region, 1, word::DEAD), e_b);
        assert_eq!(
            names(&sup, Node::B).last().map(String::as_str),
            Some("dead-confirmed")
        );

        // An acknowledged claim is left alone, however long it stands.
        sup.start(Node::A).unwrap();
        r::set(&sup.region, 0, word::CLAIM[0], 0);
        let e2 = r::claim(&sup.region, 1, 0).unwrap();
        r::set(&sup.region, 0, word::FENCE_ACK, e2);
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            sup.reap();
            sup.fence_pass();
            std::thread::sleep(POLL);
        }
        assert!(
            sup.nodes[0].child.is_some(),
            "an obedient node is not killed"
        );
        assert_eq!(r::get(&sup.region, 0, word::DEAD), e);
        sup.down("test");
        assert!(sup.nodes.iter().all(|n| n.child.is_none()));
        assert!(!sup.paths.control().exists());
    }

    #[test]
    fn requests_bump_the_sequence_after_the_request_word() {
        let dir = crate::scratch::tempdir().unwrap();
        let mut sup = fake_pair(dir.path(), 1000);
        let v: serde_json::Value =
            serde_json::from_str(&sup.handle(ControlRequest::Takeover(Node::B))).unwrap();
        assert_eq!(v["seq"], 1);
        assert_eq!(
            r::get(&sup.region, 1, word::REQUEST),
            Request::Takeover as u64
        );
        let v: serde_json::Value =
            serde_json::from_str(&sup.handle(ControlRequest::Giveback(Node::B))).unwrap();
        assert_eq!(v["seq"], 2);
        assert_eq!(r::get(&sup.region, 1, word::REQUEST_SEQ), 2);
        assert_eq!(
            r::get(&sup.region, 1, word::REQUEST),
            Request::Giveback as u64
        );
        assert_eq!(r::get(&sup.region, 0, word::REQUEST_SEQ), 0);
        // Starting a running node, or signalling a stopped one, is refused with the fix.
        sup.start(Node::A).unwrap();
        let e = sup.handle(ControlRequest::Start(Node::A));
        assert!(
            e.contains("is running") && e.contains("tandem pair kill"),
            "{e}"
        );
        let e = sup.handle(ControlRequest::Kill(Node::B, Sig::Stop));
        assert!(
            e.contains("not running") && e.contains("tandem pair start"),
            "{e}"
        );
        let st: PairInfo =
            serde_json::from_str::<serde_json::Value>(&sup.handle(ControlRequest::Status))
                .map(|v| serde_json::from_value(v).unwrap())
                .unwrap();
        assert_eq!(st.node(Node::A).state, "running");
        assert_eq!(st.node(Node::B).state, "not-started");
        sup.down("test");
    }

    #[test]
    fn stopped_child_is_seen_stopped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGSTOP).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process_stopped(child.id()) {
            assert!(Instant::now() < deadline, "never seen stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
