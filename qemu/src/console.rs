//! The guest's serial console: the host's view of its lines, and a reader that tees it.
//!
//! The line contract (which lines the guest prints, and how they are classified) lives in
//! `tandem_formats::console`, used by the guest to write them; [`ConsoleEvent::parse`] turns
//! its borrowed classification into owned values. In benchmark mode the `BENCH {json}` line is
//! read by [`crate::bench::blk`].
//!
//! [`ConsoleTee`] is the I/O side: it reads QEMU's stdout line by line, echoes each line,
//! appends it to `console.log` and hands it on.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use tandem_formats::console::{self as contract, Event};
pub use tandem_formats::console::{BENCH_PREFIX, NBD_PREFIX, READY_PREFIX, RESTART_PREFIX};

/// The ready line's `key=value` words, in a map (the set of keys is the guest's business).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ReadyLine {
    /// All key=value words.
    pub fields: BTreeMap<String, String>,
}

impl ReadyLine {
    /// A field by key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A numeric field (e.g. `boot_us`, `disks`).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }
}

/// How a device is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// PCI (q35).
    Pci,
    /// virtio-mmio (microvm).
    Mmio,
}

/// One `inventory:` line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InventoryEntry {
    /// Device name such as `blk0`; `None` for a device listed as `-` (not driven).
    pub name: Option<String>,
    /// Kind, e.g. `virtio-blk`, `virtio-net`, `unknown`.
    pub kind: String,
    /// Transport.
    pub transport: Transport,
    /// Location: a PCI address `0000:00:02.0` or an MMIO base `0xfeb00e00`.
    pub location: String,
    /// The remaining `key=value` words (`capacity`, `mac`, `vendor`, ...).
    pub props: BTreeMap<String, String>,
}

impl InventoryEntry {
    /// A property by key.
    pub fn prop(&self, key: &str) -> Option<&str> {
        self.props.get(key).map(String::as_str)
    }
}

/// A log line `[ seconds] LEVEL message`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LogLine {
    /// Guest time since entry, in microseconds.
    pub time_us: u64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The message.
    pub message: String,
}

/// What a console line means.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum ConsoleEvent {
    /// `TANDEM READY ...`.
    Ready(ReadyLine),
    /// `PANIC at ...`: the whole text after `PANIC `.
    Panic(String),
    /// `BENCH {...}`: the benchmark result, the JSON text after `BENCH `.
    Bench(String),
    /// `TANDEM NBD nbd://IP:PORT/EXPORT`: an export the guest serves (guest address and port).
    Nbd {
        /// The export name.
        export: String,
        /// The guest's TCP port.
        port: u16,
    },
    /// `EXCEPTION vector=N ...`: the vector (if it parsed) and the whole text.
    Exception {
        /// The CPU exception vector.
        vector: Option<u8>,
        /// The whole line.
        text: String,
    },
    /// `TANDEM RESTART cause="..." n=N at_us=T`: its `key=value` words.
    Restart(BTreeMap<String, String>),
    /// An inventory line.
    Inventory(InventoryEntry),
    /// Any other log line.
    Log(LogLine),
    /// Anything else (register dumps, firmware noise, ...).
    Other,
}

impl ConsoleEvent {
    /// Classify one console line (without its line terminator).
    pub fn parse(line: &str) -> ConsoleEvent {
        match Event::parse(line) {
            Event::Ready(rest) => ConsoleEvent::Ready(ReadyLine {
                fields: key_values(rest),
            }),
            Event::Panic(rest) => ConsoleEvent::Panic(rest.to_string()),
            Event::Bench(json) => ConsoleEvent::Bench(json.to_string()),
            Event::Nbd(nbd) => ConsoleEvent::Nbd {
                export: nbd.export.to_string(),
                port: nbd.port,
            },
            Event::Restart(rest) => ConsoleEvent::Restart(key_values(rest)),
            Event::Exception { vector, text } => ConsoleEvent::Exception {
                vector,
                text: text.to_string(),
            },
            Event::Inventory(i) => ConsoleEvent::Inventory(InventoryEntry {
                name: i.name.map(str::to_string),
                kind: i.kind.to_string(),
                transport: match i.transport {
                    "mmio" => Transport::Mmio,
                    _ => Transport::Pci,
                },
                location: i.location.to_string(),
                props: key_values(i.props),
            }),
            Event::Log(l) => ConsoleEvent::Log(LogLine {
                time_us: l.time_us,
                level: l.level.to_string(),
                message: l.message.to_string(),
            }),
            Event::Other => ConsoleEvent::Other,
        }
    }
}

fn key_values(text: &str) -> BTreeMap<String, String> {
    contract::key_values(text)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One line as it arrived from the console.
#[derive(Debug, Clone)]
pub struct ConsoleLine {
    /// The text, without the line terminator.
    pub text: String,
    /// Time since QEMU was spawned.
    pub at: Duration,
    /// Its meaning.
    pub event: ConsoleEvent,
}

/// Reads QEMU's stdout line by line, echoes and logs each line, and passes it on.
pub struct ConsoleTee {
    /// Echo lines to this process's stdout.
    pub echo: bool,
    /// Append lines here (`console.log`).
    pub log: Option<File>,
    /// When QEMU was spawned (line timestamps are relative to it).
    pub started: Instant,
}

impl ConsoleTee {
    /// Run until EOF, calling `sink` for every line. Returns when QEMU closes its stdout.
    /// Bytes that are not UTF-8 are replaced, never fatal.
    pub fn run(mut self, input: impl BufRead, mut sink: impl FnMut(ConsoleLine)) {
        let mut input = input;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match input.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let at = self.started.elapsed();
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end_matches(['\n', '\r']).to_string();
            if self.echo {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
            if let Some(log) = &mut self.log {
                let _ = writeln!(log, "{text}");
            }
            let event = ConsoleEvent::parse(&text);
            sink(ConsoleLine { text, at, event });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbd_lines() {
        assert_eq!(
            ConsoleEvent::parse("TANDEM NBD nbd://10.0.2.15:10809/blk0"),
            ConsoleEvent::Nbd {
                export: "blk0".into(),
                port: 10809
            }
        );
        assert!(!matches!(
            ConsoleEvent::parse("TANDEM NBD garbage"),
            ConsoleEvent::Nbd { .. }
        ));
    }

    #[test]
    fn ready_line_parses_all_fields() {
        let ev = ConsoleEvent::parse(
            "TANDEM READY machine=q35 disks=2 nics=1 mem_total=32MiB heap_free=123 boot_us=123456 future=x\r",
        );
        let ConsoleEvent::Ready(r) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(r.get("machine"), Some("q35"));
        assert_eq!(r.get_u64("disks"), Some(2));
        assert_eq!(r.get_u64("boot_us"), Some(123456));
        assert_eq!(r.get("mem_total"), Some("32MiB"));
        assert_eq!(r.get("future"), Some("x"));
        assert_eq!(r.fields.len(), 7);
    }

    #[test]
    fn ready_must_start_the_line() {
        assert!(matches!(
            ConsoleEvent::parse("[ 0.1] INFO  TANDEM READY machine=q35"),
            ConsoleEvent::Log(_)
        ));
        assert!(matches!(
            ConsoleEvent::parse("TANDEM READYX a=b"),
            ConsoleEvent::Other
        ));
        // Firmware escape codes before the first guest line are tolerated.
        assert!(matches!(
            ConsoleEvent::parse("\x1bc\x1b[?7l\x1b[2JTANDEM READY machine=microvm"),
            ConsoleEvent::Ready(_)
        ));
    }

    #[test]
    fn panic_and_exception() {
        assert_eq!(
            ConsoleEvent::parse("PANIC at unikernel/src/main.rs:10:5: debug.panic=boot requested"),
            ConsoleEvent::Panic("at unikernel/src/main.rs:10:5: debug.panic=boot requested".into())
        );
        let line = "EXCEPTION vector=14 (#PF) error=0x2 rip=0xffff cr2=0xdead000";
        match ConsoleEvent::parse(line) {
            ConsoleEvent::Exception { vector, text } => {
                assert_eq!(vector, Some(14));
                assert_eq!(text, line);
            }
            other => panic!("{other:?}"),
        }
        match ConsoleEvent::parse("EXCEPTION vector=0x0d (#GP)") {
            ConsoleEvent::Exception { vector, .. } => assert_eq!(vector, Some(13)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bench_line() {
        assert_eq!(
            ConsoleEvent::parse("BENCH {\"iops\":1.5}\r"),
            ConsoleEvent::Bench("{\"iops\":1.5}".into())
        );
        // Not at the start of the line, or no JSON object: not the result line.
        assert!(matches!(
            ConsoleEvent::parse("[ 0.1] INFO  BENCH {\"iops\":1}"),
            ConsoleEvent::Log(_)
        ));
        assert_eq!(ConsoleEvent::parse("BENCH starting"), ConsoleEvent::Other);
        assert_eq!(ConsoleEvent::parse("BENCHMARK {}"), ConsoleEvent::Other);
    }

    #[test]
    fn inventory_lines() {
        let ev = ConsoleEvent::parse(
            "[    0.012345] INFO  inventory: blk0 virtio-blk pci 0000:00:02.0 capacity=2097152 sectors=512B size=1024MiB",
        );
        let ConsoleEvent::Inventory(e) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(e.name.as_deref(), Some("blk0"));
        assert_eq!(e.kind, "virtio-blk");
        assert_eq!(e.transport, Transport::Pci);
        assert_eq!(e.location, "0000:00:02.0");
        assert_eq!(e.prop("capacity"), Some("2097152"));
        assert_eq!(e.prop("size"), Some("1024MiB"));

        let ConsoleEvent::Inventory(e) = ConsoleEvent::parse(
            "[    0.02] INFO  inventory: net0 virtio-net mmio 0xfeb00e00 mac=52:54:00:12:34:56",
        ) else {
            panic!()
        };
        assert_eq!(e.transport, Transport::Mmio);
        assert_eq!(e.location, "0xfeb00e00");
        assert_eq!(e.prop("mac"), Some("52:54:00:12:34:56"));

        let ConsoleEvent::Inventory(e) = ConsoleEvent::parse(
            "inventory: - unknown pci 0000:00:1f.2 vendor=8086 device=2922 class=01.06",
        ) else {
            panic!()
        };
        assert_eq!(e.name, None);
        assert_eq!(e.kind, "unknown");
        assert_eq!(e.prop("class"), Some("01.06"));

        // Not enough words, or an unknown transport: just a log line.
        assert!(matches!(
            ConsoleEvent::parse("[ 0.1] INFO  inventory: 3 devices"),
            ConsoleEvent::Log(_)
        ));
    }

    #[test]
    fn log_lines() {
        let ev = ConsoleEvent::parse("[    0.012345] INFO  some message");
        assert_eq!(
            ev,
            ConsoleEvent::Log(LogLine {
                time_us: 12_345,
                level: "INFO".into(),
                message: "some message".into()
            })
        );
        let ConsoleEvent::Log(l) =
            ConsoleEvent::parse("[   12.5] WARN  cmdline: unknown key 'frobnicate'")
        else {
            panic!()
        };
        assert_eq!(l.time_us, 12_500_000);
        assert_eq!(l.level, "WARN");
        assert_eq!(l.message, "cmdline: unknown key 'frobnicate'");
        assert_eq!(
            ConsoleEvent::parse("  rax=0x1 rbx=0x2"),
            ConsoleEvent::Other
        );
        assert_eq!(ConsoleEvent::parse("[x] INFO a"), ConsoleEvent::Other);
        assert_eq!(ConsoleEvent::parse(""), ConsoleEvent::Other);
    }

    #[test]
    fn tee_splits_lines_and_logs() {
        let dir = crate::scratch::tempdir().unwrap();
        let log_path = dir.path().join("console.log");
        let tee = ConsoleTee {
            echo: false,
            log: Some(File::create(&log_path).unwrap()),
            started: Instant::now(),
        };
        let input: &[u8] = b"[ 0.1] INFO  hi\r\nTANDEM READY a=1\r\nbad \xff byte\npartial";
        let mut got = Vec::new();
        tee.run(input, |l| got.push(l));
        let texts: Vec<_> = got.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "[ 0.1] INFO  hi",
                "TANDEM READY a=1",
                "bad \u{fffd} byte",
                "partial"
            ]
        );
        assert!(matches!(got[1].event, ConsoleEvent::Ready(_)));
        let logged = std::fs::read_to_string(&log_path).unwrap();
        assert_eq!(logged.lines().count(), 4);
    }
}
