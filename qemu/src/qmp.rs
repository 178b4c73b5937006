//! A small synchronous QMP client over a unix socket.
//!
//! QMP is QEMU's JSON control protocol: on connect QEMU sends a greeting
//! (`{"QMP": {...}}`), the client enters command mode with `qmp_capabilities`, then each
//! `{"execute": CMD, "arguments": ARGS, "id": N}` gets exactly one `{"return": ...}` or
//! `{"error": {"class", "desc"}}`, possibly preceded by asynchronous `{"event": ...}`
//! messages. Every read here is bounded by a timeout so a wedged QEMU cannot hang `tandem`.
//! Events seen while waiting for replies are kept (see [`Qmp::events`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Default bound on any one QMP exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Could not connect to the socket.
    #[error("cannot connect to QMP socket {}: {source}", .path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Socket I/O failed.
    #[error("QMP I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// No reply within the timeout.
    #[error("QMP timed out after {0:?} waiting for a reply")]
    Timeout(Duration),
    /// QEMU closed the connection.
    #[error("QMP connection closed by QEMU")]
    Closed,
    /// A message was not the JSON we expected.
    #[error("unexpected QMP message: {0}")]
    Protocol(String),
    /// QEMU answered with an error.
    #[error("QMP command '{command}' failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class, e.g. `CommandNotFound`.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// A connected QMP session in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    greeting: Value,
    events: Vec<Value>,
    next_id: u64,
}

impl Qmp {
    /// Connect to `path`, read the greeting and negotiate capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            timeout,
            greeting: Value::Null,
            events: Vec::new(),
            next_id: 1,
        };
        let deadline = Instant::now() + timeout;
        let greeting = qmp.read_message(deadline)?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected greeting, got {greeting}"
            )));
        }
        qmp.greeting = greeting;
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Like [`Qmp::connect`], retrying until `deadline` while the socket does not exist yet
    /// or refuses connections (QEMU is still starting).
    pub fn connect_retry(
        path: &Path,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Qmp, QmpError> {
        loop {
            match Qmp::connect(path, timeout) {
                Ok(q) => return Ok(q),
                Err(QmpError::Connect { source, .. })
                    if Instant::now() < deadline
                        && matches!(
                            source.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The greeting QEMU sent (`{"QMP": {"version": ..., "capabilities": ...}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Asynchronous events received so far (e.g. `SHUTDOWN`, `STOP`), oldest first.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Change the per-exchange timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Run `command` with optional `arguments` (a JSON object) and return its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        self.writer.flush()?;

        let deadline = Instant::now() + self.timeout;
        loop {
            let reply = self.read_message(deadline)?;
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                // A reply to something else (e.g. an earlier command that timed out).
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| {
                    err.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol(reply.to_string()));
        }
    }

    /// `query-status`: the run state (`running`, `paused`, `prelaunch`, `shutdown`, ...).
    pub fn query_status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None)?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol(v.to_string()))
    }

    /// `quit`: QEMU exits (status 0). The connection closes afterwards; a close before the
    /// reply arrives also counts as success.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(QmpError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `system_reset`: reset the guest as if by the reset button.
    pub fn system_reset(&mut self) -> Result<(), QmpError> {
        self.execute("system_reset", None).map(|_| ())
    }

    /// Wait until an event named `name` arrives (or was already received).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value, QmpError> {
        if let Some(e) = self
            .events
            .iter()
            .find(|e| e.get("event").and_then(Value::as_str) == Some(name))
        {
            return Ok(e.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let msg = self.read_message(deadline)?;
            let is_match = msg.get("event").and_then(Value::as_str) == Some(name);
            if msg.get("event").is_some() {
                self.events.push(msg.clone());
            }
            if is_match {
                return Ok(msg);
            }
        }
    }

    fn read_message(&mut self, deadline: Instant) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(QmpError::Timeout(self.timeout));
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(deadline - now))?;
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err(QmpError::Closed),
                Ok(_) if line.ends_with('\n') => {
                    let text = line.trim();
                    if text.is_empty() {
                        line.clear();
                        continue;
                    }
                    return serde_json::from_str(text)
                        .map_err(|e| QmpError::Protocol(format!("{e}: {text}")));
                }
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(QmpError::Timeout(self.timeout));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(QmpError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    /// A scripted fake QEMU on the other end of a socket.
    fn fake_qemu(
        script: Vec<(&'static str, Vec<&'static str>)>,
    ) -> (crate::scratch::TempDir, PathBuf) {
        let dir = crate::scratch::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            for (expect, replies) in script {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let v: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["execute"], expect);
                let id = v["id"].clone();
                for reply in replies {
                    let reply = reply.replace("ID", &id.to_string());
                    s.write_all(reply.as_bytes()).unwrap();
                    s.write_all(b"\r\n").unwrap();
                }
            }
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest);
        });
        (dir, path)
    }

    #[test]
    fn handshake_events_and_errors() {
        let (_dir, path) = fake_qemu(vec![
            ("qmp_capabilities", vec![r#"{"return": {}, "id": ID}"#]),
            (
                "query-status",
                vec![
                    r#"{"event": "RESUME", "data": {}, "timestamp": {}}"#,
                    r#"{"return": {"status": "running", "running": true}, "id": ID}"#,
                ],
            ),
            (
                "bogus",
                vec![r#"{"error": {"class": "CommandNotFound", "desc": "no such"}, "id": ID}"#],
            ),
        ]);
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        assert!(q.greeting().get("QMP").is_some());
        assert_eq!(q.query_status().unwrap(), "running");
        assert_eq!(q.events().len(), 1);
        assert_eq!(q.events()[0]["event"], "RESUME");
        match q.execute("bogus", None) {
            Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn silent_peer_times_out() {
        let (_dir, path) = fake_qemu(vec![("qmp_capabilities", vec![])]);
        let start = Instant::now();
        let err = Qmp::connect(&path, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, QmpError::Timeout(_)), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let err = Qmp::connect(Path::new("/nonexistent/qmp.sock"), DEFAULT_TIMEOUT).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/qmp.sock"));
    }
}
