//! The supervisor's event log, `DIR/events.jsonl`: one JSON object per line, appended, for
//! building failover timelines. Every line has `t_ms` (Unix time in milliseconds), `t_us`
//! (the same in microseconds), `node` (`"a"`, `"b"` or `null`) and `event`; the rest depends
//! on the event:
//!
//! | event | fields | when |
//! |---|---|---|
//! | `supervisor-started` | `pid`, `userns` | the supervisor is in its namespace |
//! | `qemu-started` | `pid` | a node's QEMU was spawned |
//! | `qemu-exited` | `pid`, `status` | a node's QEMU was reaped |
//! | `signal` | `pid`, `signal` | `kill NODE SIG` sent a signal |
//! | `request` | `request`, `seq` | a takeover/giveback request was written to the node's words |
//! | `claim-seen` | `epoch`, `by` | the fence agent saw an unacknowledged claim on the node's disks |
//! | `killed-for-fence` | `pid`, `epoch`, `waited_ms` | it sent SIGKILL to the node's QEMU |
//! | `dead-confirmed` | `epoch`, `reason` | it stored `DEAD = epoch` (after the reap, or the QEMU was not running) |
//! | `supervisor-down` | `reason` | both QEMUs are stopped, the supervisor exits |
//!
//! Each event is also one line in `supervisor.log`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Node;

/// One line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix time, milliseconds.
    pub t_ms: u64,
    /// Unix time, microseconds.
    pub t_us: u64,
    /// The node it concerns.
    pub node: Option<Node>,
    /// What happened.
    pub event: String,
    /// The event's other fields.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Event {
    /// A numeric field.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }
}

/// Unix time in microseconds.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Appends events to `events.jsonl` and log lines to `supervisor.log` (its stderr).
pub struct EventLog {
    file: File,
}

impl EventLog {
    /// Open (append) the event file.
    pub fn open(path: &Path) -> std::io::Result<EventLog> {
        Ok(EventLog {
            file: OpenOptions::new().create(true).append(true).open(path)?,
        })
    }

    /// Record one event; `fields` must be a JSON object (or null). Returns it.
    pub fn record(&mut self, node: Option<Node>, event: &str, fields: Value) -> Event {
        let t_us = now_us();
        let ev = Event {
            t_ms: t_us / 1000,
            t_us,
            node,
            event: event.to_string(),
            fields: match fields {
                Value::Object(m) => m,
                _ => Map::new(),
            },
        };
        if let Ok(mut line) = serde_json::to_string(&ev) {
            line.push('\n');
            // One write per line (O_APPEND): readers never see half a line from us.
            let _ = self.file.write_all(line.as_bytes());
        }
        let extra: Vec<String> = ev.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        log(&format!(
            "{}{}{}",
            node.map(|n| format!("{n}: ")).unwrap_or_default(),
            event,
            if extra.is_empty() {
                String::new()
            } else {
                format!(" {}", extra.join(" "))
            }
        ));
        ev
    }
}

/// One timestamped line on stderr (the supervisor's stderr is `supervisor.log`).
pub fn log(msg: &str) {
    let us = now_us();
    eprintln!("[{}.{:06}] {msg}", us / 1_000_000, us % 1_000_000);
}

/// Every event in `path` (lines that do not parse are skipped; a missing file is empty).
pub fn read(path: &Path) -> std::io::Result<Vec<Event>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_round_trip() {
        let dir = crate::scratch::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut log = EventLog::open(&path).unwrap();
        let e = log.record(
            Some(Node::A),
            "killed-for-fence",
            json!({"epoch": 3, "pid": 42}),
        );
        log.record(None, "supervisor-down", json!({"reason": "down"}));
        let text = std::fs::read_to_string(&path).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["node"], "a");
        assert_eq!(first["event"], "killed-for-fence");
        assert_eq!(first["epoch"], 3);
        assert!(first["t_ms"].as_u64().unwrap() > 1_600_000_000_000);
        let all = read(&path).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], e);
        assert_eq!(all[0].u64("epoch"), Some(3));
        assert_eq!(all[1].node, None);
        assert!(read(&dir.path().join("none")).unwrap().is_empty());
    }
}
