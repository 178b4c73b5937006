//! A running QEMU: spawn it from a [`QemuCommand`], follow its console, stop it.
//!
//! QEMU runs with a null stdin, its stdout (the guest's serial console) and stderr piped,
//! in its own process group so that a terminal's Ctrl-C reaches only `tandem`, which then
//! stops QEMU in order (QMP `quit`, then a kill after a grace period). Two threads read the
//! pipes: the console reader tees every line (echo, `console.log`) and forwards it on a
//! channel; the stderr reader keeps QEMU's own messages for error reports.
//!
//! Everything that waits takes a timeout: callers wait on observable conditions (a console
//! line, the process exit), never on a sleep.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::builder::QemuCommand;
use crate::console::{ConsoleEvent, ConsoleLine, ConsoleTee, ReadyLine};
use crate::exit::GuestExit;
use crate::qmp::{Qmp, QmpError};

/// How to treat QEMU's output.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// Echo console lines to our stdout.
    pub echo_console: bool,
    /// Echo QEMU's stderr to our stderr.
    pub echo_stderr: bool,
    /// Write every console line to this file (truncated first).
    pub console_log: Option<PathBuf>,
}

/// Errors of spawning or waiting.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU could not be started.
    #[error("cannot start {}: {source}", .qemu.display())]
    Spawn {
        /// The executable.
        qemu: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The console log could not be created.
    #[error("cannot create console log {}: {source}", .path.display())]
    ConsoleLog {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The condition did not happen in time.
    #[error("timed out after {after:?} waiting for {what}\n{context}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The timeout.
        after: Duration,
        /// The end of the console and QEMU's stderr.
        context: String,
    },
    /// QEMU exited before the condition happened.
    #[error("QEMU exited ({exit}) while waiting for {what}\n{context}")]
    Exited {
        /// What was awaited.
        what: String,
        /// How it ended.
        exit: GuestExit,
        /// The end of the console and QEMU's stderr.
        context: String,
    },
}

/// What [`Vm::poll`] saw.
#[derive(Debug)]
pub enum Poll {
    /// A console line.
    Line(ConsoleLine),
    /// QEMU has exited (after all its console lines were delivered).
    Exited(GuestExit),
    /// Nothing within the wait.
    Idle,
}

/// A running (or finished) QEMU process.
pub struct Vm {
    child: Child,
    started: Instant,
    lines: Receiver<ConsoleLine>,
    console_done: bool,
    history: Vec<ConsoleLine>,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_thread: Option<JoinHandle<()>>,
    qmp_socket: Option<PathBuf>,
    exit: Option<GuestExit>,
    exited_at: Option<Duration>,
}

impl Vm {
    /// Start QEMU.
    pub fn spawn(cmd: &QemuCommand, opts: SpawnOptions) -> Result<Vm, VmError> {
        let log = match &opts.console_log {
            Some(path) => Some(File::create(path).map_err(|source| VmError::ConsoleLog {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let mut command = cmd.to_command();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: a terminal's SIGINT goes to tandem only.
            .process_group(0);
        let started = Instant::now();
        let mut child = command.spawn().map_err(|source| VmError::Spawn {
            qemu: cmd.qemu.clone(),
            source,
        })?;

        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        let tee = ConsoleTee {
            echo: opts.echo_console,
            log,
            started,
        };
        std::thread::Builder::new()
            .name("qemu-console".into())
            .spawn(move || {
                tee.run(BufReader::new(stdout), |line| {
                    let _ = tx.send(line);
                })
            })
            .expect("spawn console thread");

        let stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        let echo_stderr = opts.echo_stderr;
        let stderr_thread = std::thread::Builder::new()
            .name("qemu-stderr".into())
            .spawn(move || {
                for line in BufReader::new(stderr_pipe).lines() {
                    let Ok(line) = line else { break };
                    if echo_stderr {
                        let _ = writeln!(std::io::stderr(), "{line}");
                    }
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            })
            .expect("spawn stderr thread");

        Ok(Vm {
            child,
            started,
            lines: rx,
            console_done: false,
            history: Vec::new(),
            stderr,
            stderr_thread: Some(stderr_thread),
            qmp_socket: cmd.qmp_socket.clone(),
            exit: None,
            exited_at: None,
        })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since spawn.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Time from spawn to exit, once exited.
    pub fn exited_after(&self) -> Option<Duration> {
        self.exited_at
    }

    /// How QEMU ended, once it has.
    pub fn exit_status(&self) -> Option<GuestExit> {
        self.exit
    }

    /// All console lines received so far.
    pub fn history(&self) -> &[ConsoleLine] {
        &self.history
    }

    /// The ready line, if it has been seen.
    pub fn ready(&self) -> Option<&ReadyLine> {
        self.history.iter().find_map(|l| match &l.event {
            ConsoleEvent::Ready(r) => Some(r),
            _ => None,
        })
    }

    /// The `EXCEPTION` and `PANIC` lines seen so far, in order.
    pub fn failure_lines(&self) -> Vec<&str> {
        self.history
            .iter()
            .filter(|l| {
                matches!(
                    l.event,
                    ConsoleEvent::Exception { .. } | ConsoleEvent::Panic(_)
                )
            })
            .map(|l| l.text.as_str())
            .collect()
    }

    /// QEMU's stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// The last lines of console and stderr, for error messages.
    pub fn context(&self) -> String {
        const TAIL: usize = 60;
        let skip = self.history.len().saturating_sub(TAIL);
        let mut out = format!(
            "--- console ({} lines, last {}) ---\n",
            self.history.len(),
            self.history.len() - skip
        );
        for l in &self.history[skip..] {
            out.push_str(&l.text);
            out.push('\n');
        }
        let err = self.stderr_text();
        if !err.is_empty() {
            out.push_str("--- QEMU stderr ---\n");
            out.push_str(&err);
            out.push('\n');
        }
        out
    }

    /// Wait up to `wait` for the next console line or QEMU's exit.
    pub fn poll(&mut self, wait: Duration) -> Poll {
        let deadline = Instant::now() + wait;
        if !self.console_done {
            // Once QEMU is reaped, only wait briefly for lines still in flight.
            let exited_before = self.exit.is_some();
            let recv_wait = if exited_before {
                wait.min(Duration::from_millis(200))
            } else {
                wait
            };
            match self.lines.recv_timeout(recv_wait) {
                Ok(line) => {
                    self.history.push(line.clone());
                    return Poll::Line(line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    // The pipe can outlive QEMU only if something inherited it; don't hang.
                    if exited_before {
                        self.console_done = true;
                    } else {
                        self.try_reap();
                        return Poll::Idle;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => self.console_done = true,
            }
        }
        // The console is closed: QEMU is exiting. Reap it within what is left of `wait`.
        loop {
            if let Some(exit) = self.try_reap() {
                return Poll::Exited(exit);
            }
            if Instant::now() >= deadline {
                return Poll::Idle;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn try_reap(&mut self) -> Option<GuestExit> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(GuestExit::from_status(status));
            self.exited_at = Some(self.started.elapsed());
            if let Some(t) = self.stderr_thread.take() {
                let _ = t.join();
            }
        }
        self.exit
    }

    /// Read console lines until `pred` accepts one, QEMU exits, or `timeout` passes.
    /// `what` names the condition in errors.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&ConsoleLine) -> bool,
    ) -> Result<ConsoleLine, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VmError::Timeout {
                    what: what.to_string(),
                    after: timeout,
                    context: self.context(),
                });
            }
            match self.poll(left.min(Duration::from_millis(250))) {
                Poll::Line(line) if pred(&line) => return Ok(line),
                Poll::Line(_) | Poll::Idle => {}
                Poll::Exited(exit) => {
                    return Err(VmError::Exited {
                        what: what.to_string(),
                        exit,
                        context: self.context(),
                    })
                }
            }
        }
    }

    /// Wait for the `TANDEM READY` line.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<ReadyLine, VmError> {
        if let Some(r) = self.ready() {
            return Ok(r.clone());
        }
        let line = self.wait_for_line("the TANDEM READY line", timeout, |l| {
            matches!(l.event, ConsoleEvent::Ready(_))
        })?;
        match line.event {
            ConsoleEvent::Ready(r) => Ok(r),
            _ => unreachable!("predicate accepted only Ready"),
        }
    }

    /// Wait for QEMU to exit, collecting the rest of the console.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<GuestExit, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VmError::Timeout {
                    what: "QEMU to exit".into(),
                    after: timeout,
                    context: self.context(),
                });
            }
            if let Poll::Exited(exit) = self.poll(left.min(Duration::from_millis(250))) {
                return Ok(exit);
            }
        }
    }

    /// Connect to this QEMU's QMP socket (retrying while QEMU starts, up to `timeout`).
    pub fn qmp(&self, timeout: Duration) -> Result<Qmp, QmpError> {
        let path = self.qmp_socket.as_deref().ok_or_else(|| {
            QmpError::Protocol("this QEMU was started without a QMP socket".into())
        })?;
        Qmp::connect_retry(path, Instant::now() + timeout, timeout)
    }

    /// Send a signal to QEMU (no-op once it has exited).
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if self.try_reap().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, sig);
        }
    }

    /// Kill QEMU (SIGKILL) and reap it.
    pub fn kill(&mut self) -> GuestExit {
        if let Some(exit) = self.try_reap() {
            return exit;
        }
        let _ = self.child.kill();
        match self.wait_exit(Duration::from_secs(10)) {
            Ok(exit) => exit,
            Err(_) => {
                let status = self.child.wait().ok();
                let exit = status.map_or(GuestExit::Qemu(-1), GuestExit::from_status);
                self.exit = Some(exit);
                exit
            }
        }
    }

    /// Stop QEMU in order: QMP `quit` (or SIGTERM when QMP is unavailable), wait up to
    /// `grace`, then kill.
    pub fn stop(&mut self, grace: Duration) -> GuestExit {
        if let Some(exit) = self.try_reap() {
            return exit;
        }
        let quit = self.qmp(Duration::from_secs(1)).and_then(|mut q| q.quit());
        if quit.is_err() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
        }
        match self.wait_exit(grace) {
            Ok(exit) => exit,
            Err(_) => self.kill(),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.exit.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
