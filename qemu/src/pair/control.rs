//! The supervisor's control protocol on `DIR/control.sock`: the client sends one request
//! line, the supervisor answers one JSON line, `{"ok": true, ...}` or
//! `{"ok": false, "error": "..."}`, and closes the connection.
//!
//! | request | reply fields | what |
//! |---|---|---|
//! | `status` | [`super::PairInfo`] | processes, addresses, files |
//! | `kill a\|b [KILL\|STOP\|CONT\|TERM]` | `pid` (`exit` for KILL) | signal that node's QEMU (default KILL; a KILL is reaped before the reply) |
//! | `start a\|b` | `pid` | start a node whose QEMU is not running, same configuration |
//! | `takeover a\|b` | `seq` | ask that node to take its peer over (`REQUEST`, then `REQUEST_SEQ` + 1) |
//! | `giveback a\|b` | `seq` | ask that node to give its peer's disks back |
//! | `down` | | stop both QEMUs (QMP `quit`, SIGKILL after a grace), exit |

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;

use super::{Node, PairDir};

/// A signal `kill` may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sig {
    /// SIGKILL: the node dies at once (a crash).
    #[value(name = "KILL")]
    Kill,
    /// SIGSTOP: the node freezes (a hang): it keeps its claims but stops beating.
    #[value(name = "STOP")]
    Stop,
    /// SIGCONT: a stopped node runs on.
    #[value(name = "CONT")]
    Cont,
    /// SIGTERM: QEMU shuts down.
    #[value(name = "TERM")]
    Term,
}

impl Sig {
    /// The signal.
    pub fn signal(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal;
        match self {
            Sig::Kill => Signal::SIGKILL,
            Sig::Stop => Signal::SIGSTOP,
            Sig::Cont => Signal::SIGCONT,
            Sig::Term => Signal::SIGTERM,
        }
    }

    /// `KILL`, `STOP`, ...
    pub fn name(self) -> &'static str {
        match self {
            Sig::Kill => "KILL",
            Sig::Stop => "STOP",
            Sig::Cont => "CONT",
            Sig::Term => "TERM",
        }
    }
}

impl FromStr for Sig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let u = s.to_ascii_uppercase();
        match u.strip_prefix("SIG").unwrap_or(&u) {
            "KILL" | "9" => Ok(Sig::Kill),
            "STOP" => Ok(Sig::Stop),
            "CONT" => Ok(Sig::Cont),
            "TERM" | "15" => Ok(Sig::Term),
            _ => Err(format!(
                "unknown signal '{s}' (expected KILL, STOP, CONT or TERM)"
            )),
        }
    }
}

/// A control request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// `status`.
    Status,
    /// `kill NODE SIG`.
    Kill(Node, Sig),
    /// `start NODE`.
    Start(Node),
    /// `takeover NODE`: NODE takes its peer over.
    Takeover(Node),
    /// `giveback NODE`: NODE gives its peer's disks back.
    Giveback(Node),
    /// `down`.
    Down,
}

impl fmt::Display for ControlRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlRequest::Status => f.write_str("status"),
            ControlRequest::Kill(n, s) => write!(f, "kill {n} {}", s.name()),
            ControlRequest::Start(n) => write!(f, "start {n}"),
            ControlRequest::Takeover(n) => write!(f, "takeover {n}"),
            ControlRequest::Giveback(n) => write!(f, "giveback {n}"),
            ControlRequest::Down => f.write_str("down"),
        }
    }
}

impl FromStr for ControlRequest {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let node = |i: usize| -> Result<Node, String> {
            words
                .get(i)
                .ok_or_else(|| format!("'{}' needs a node (a or b)", words[0]))?
                .parse()
        };
        let req = match words.first().copied() {
            Some("status") => ControlRequest::Status,
            Some("down") => ControlRequest::Down,
            Some("kill") => {
                ControlRequest::Kill(node(1)?, words.get(2).map_or(Ok(Sig::Kill), |s| s.parse())?)
            }
            Some("start") => ControlRequest::Start(node(1)?),
            Some("takeover") => ControlRequest::Takeover(node(1)?),
            Some("giveback") => ControlRequest::Giveback(node(1)?),
            Some(other) => {
                return Err(format!(
                    "unknown request '{other}' (status, kill, start, takeover, giveback, down)"
                ))
            }
            None => return Err("empty request".into()),
        };
        let max = match req {
            ControlRequest::Status | ControlRequest::Down => 1,
            ControlRequest::Kill(..) => 3,
            _ => 2,
        };
        if words.len() > max {
            return Err(format!("too many words in '{line}'"));
        }
        Ok(req)
    }
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No pair was ever started in the directory.
    #[error("no pair in {dir} (no pair.json there); start one with `tandem pair up --dir {dir}`")]
    NoPair {
        /// The directory.
        dir: String,
    },
    /// The supervisor is not running (socket missing or refusing).
    #[error(
        "the pair's supervisor in {dir} is not running ({why}); start the pair again with \
         `tandem pair up --dir {dir}` (disks and region are kept)"
    )]
    NotRunning {
        /// The directory.
        dir: String,
        /// What was found.
        why: String,
    },
    /// Socket I/O failed or timed out.
    #[error("talking to the pair's supervisor ({socket}): {source}")]
    Io {
        /// The socket.
        socket: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The supervisor answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The reply was not JSON.
    #[error("bad reply from the pair's supervisor: {0}")]
    BadReply(String),
}

/// Send `req` to the supervisor of the pair in `dir`; wait up to `timeout` for the reply.
pub fn call(dir: &Path, req: ControlRequest, timeout: Duration) -> Result<Value, ControlError> {
    let paths = PairDir::new(dir);
    let shown = dir.display().to_string();
    if !paths.info().is_file() {
        return Err(ControlError::NoPair { dir: shown });
    }
    let sock = paths.control();
    let mut stream = UnixStream::connect(&sock).map_err(|e| ControlError::NotRunning {
        dir: shown.clone(),
        why: match e.kind() {
            std::io::ErrorKind::NotFound => "no control socket".into(),
            std::io::ErrorKind::ConnectionRefused => "stale control socket".into(),
            _ => e.to_string(),
        },
    })?;
    let io = |source| ControlError::Io {
        socket: sock.display().to_string(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(format!("{req}\n").as_bytes())
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(io)?;
    if line.is_empty() {
        return Err(ControlError::BadReply(
            "the supervisor closed the connection without a reply".into(),
        ));
    }
    let v: Value =
        serde_json::from_str(line.trim()).map_err(|e| ControlError::BadReply(e.to_string()))?;
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(v)
    } else {
        Err(ControlError::Refused(
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("request failed")
                .to_string(),
        ))
    }
}

/// Whether a supervisor answers on `dir`'s control socket.
pub fn is_up(dir: &Path) -> bool {
    call(dir, ControlRequest::Status, Duration::from_secs(5)).is_ok()
}

/// A reply line: `{"ok": true, ...fields}`.
pub fn ok_reply(fields: Value) -> String {
    let mut m = match fields {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    m.insert("ok".into(), Value::Bool(true));
    Value::Object(m).to_string()
}

/// A reply line: `{"ok": false, "error": msg}`.
pub fn error_reply(msg: &str) -> String {
    serde_json::json!({"ok": false, "error": msg}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print() {
        for (line, req) in [
            ("status", ControlRequest::Status),
            ("down", ControlRequest::Down),
            ("kill a", ControlRequest::Kill(Node::A, Sig::Kill)),
            ("kill b STOP", ControlRequest::Kill(Node::B, Sig::Stop)),
            ("kill b sigcont", ControlRequest::Kill(Node::B, Sig::Cont)),
            ("start a", ControlRequest::Start(Node::A)),
            ("takeover b", ControlRequest::Takeover(Node::B)),
            ("  giveback a \n", ControlRequest::Giveback(Node::A)),
        ] {
            assert_eq!(line.parse::<ControlRequest>(), Ok(req), "{line}");
            assert_eq!(req.to_string().parse::<ControlRequest>(), Ok(req));
        }
        for bad in [
            "",
            "kill",
            "kill c",
            "kill a HUP",
            "start",
            "status now",
            "reboot a",
        ] {
            assert!(bad.parse::<ControlRequest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn replies() {
        let v: Value = serde_json::from_str(&ok_reply(serde_json::json!({"seq": 3}))).unwrap();
        assert_eq!(
            (v["ok"].as_bool(), v["seq"].as_u64()),
            (Some(true), Some(3))
        );
        let v: Value = serde_json::from_str(&error_reply("no")).unwrap();
        assert_eq!(v["error"], "no");
    }

    #[test]
    fn missing_pair_and_dead_supervisor_name_the_fix() {
        let dir = crate::scratch::tempdir().unwrap();
        let e = call(dir.path(), ControlRequest::Status, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ControlError::NoPair { .. }), "{e}");
        assert!(e.to_string().contains("tandem pair up --dir"), "{e}");
        std::fs::write(dir.path().join("pair.json"), "{}").unwrap();
        let e = call(dir.path(), ControlRequest::Status, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("no control socket"), "{e}");
        // A socket nobody listens on any more.
        let sock = dir.path().join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let e = call(dir.path(), ControlRequest::Status, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("stale control socket"), "{e}");
        assert!(!is_up(dir.path()));
    }
}
