//! The console lines the host parses: what the guest prints on its serial console, and the
//! one parser every host tool uses to classify a line.
//!
//! The guest prints with the writers here ([`Ready`], [`NbdLine`], [`Restart`] and the
//! prefixes); the host classifies each line with [`Event::parse`]. A line is one of:
//!
//! - a log line: `[    0.012345] INFO  message` (seconds since guest entry, level padded to 5);
//! - an inventory line (inside a log line): `inventory: NAME KIND TRANSPORT LOCATION key=value...`,
//!   `-` as the name of a device the guest does not drive;
//! - exactly one ready line per boot, at the start of the line: `TANDEM READY key=value ...`
//!   (keys in [`ready_key`]);
//! - `TANDEM NBD nbd://IP:PORT/EXPORT`, one per export served;
//! - `TANDEM RESTART cause="..." n=N at_us=T` when the guest restarts in place;
//! - `PANIC at FILE:LINE:COL: MESSAGE` and `EXCEPTION vector=N (#XX) ...`, at the start of a line;
//! - in benchmark mode, exactly one `BENCH {json}` line (see [`crate::bench_job`]).

use core::fmt;

/// Prefix of the ready line.
pub const READY_PREFIX: &str = "TANDEM READY";
/// Prefix of the line announcing one NBD export (followed by `nbd://IP:PORT/EXPORT`).
pub const NBD_PREFIX: &str = "TANDEM NBD ";
/// Prefix of the line a restart in place prints first.
pub const RESTART_PREFIX: &str = "TANDEM RESTART ";
/// Prefix of the benchmark result line (followed by a JSON object).
pub const BENCH_PREFIX: &str = "BENCH ";
/// Prefix of a panic report (`PANIC at FILE:LINE:COL: MESSAGE`).
pub const PANIC_PREFIX: &str = "PANIC ";
/// Prefix of a CPU exception report.
pub const EXCEPTION_PREFIX: &str = "EXCEPTION ";
/// Marker of an inventory entry, inside a log line.
pub const INVENTORY_PREFIX: &str = "inventory: ";

/// The keys of the ready line the host reads (the guest prints more; the host ignores keys it
/// does not know).
pub mod ready_key {
    pub const MACHINE: &str = "machine";
    pub const DISKS: &str = "disks";
    pub const NICS: &str = "nics";
    pub const NVRAM: &str = "nvram";
    pub const PCI_FUNCTIONS: &str = "pci_functions";
    pub const MEM_TOTAL: &str = "mem_total";
    pub const KERNEL: &str = "kernel";
    pub const HEAP_TOTAL: &str = "heap_total";
    pub const HEAP_USED: &str = "heap_used";
    pub const DMA_TOTAL: &str = "dma_total";
    pub const DMA_USED: &str = "dma_used";
    pub const IP: &str = "ip";
    pub const HYPERVISOR: &str = "hypervisor";
    pub const TSC_MHZ: &str = "tsc_mhz";
    pub const BOOT_US: &str = "boot_us";
}

/// The ready line: `TANDEM READY` and `key=value` words (values must hold no whitespace).
pub struct Ready<'a>(pub &'a [(&'a str, &'a dyn fmt::Display)]);

impl fmt::Display for Ready<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(READY_PREFIX)?;
        for (key, value) in self.0 {
            write!(f, " {key}={value}")?;
        }
        Ok(())
    }
}

/// `TANDEM NBD nbd://IP:PORT/EXPORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NbdLine<'a> {
    pub ip: [u8; 4],
    pub port: u16,
    pub export: &'a str,
}

impl fmt::Display for NbdLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.ip;
        write!(
            f,
            "{NBD_PREFIX}nbd://{a}.{b}.{c}.{d}:{}/{}",
            self.port, self.export
        )
    }
}

impl<'a> NbdLine<'a> {
    /// The line after [`NBD_PREFIX`]; `None` unless it is `nbd://IPv4:PORT/EXPORT`.
    fn parse_uri(rest: &'a str) -> Option<Self> {
        let uri = rest.trim().strip_prefix("nbd://")?;
        let (host, export) = uri.split_once('/')?;
        let (ip, port) = host.rsplit_once(':')?;
        let mut octets = [0u8; 4];
        let mut parts = ip.split('.');
        for o in &mut octets {
            *o = parts.next()?.parse().ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            ip: octets,
            port: port.parse().ok()?,
            export,
        })
    }
}

/// `TANDEM RESTART cause="CAUSE" n=N at_us=T`.
pub struct Restart<'a> {
    pub cause: &'a str,
    /// Restarts before this one.
    pub n: u32,
    /// Guest time of the restart (µs since guest entry).
    pub at_us: u64,
}

impl fmt::Display for Restart<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No allocation: this is printed on the emergency path, whatever state the heap is in.
        write!(f, "{RESTART_PREFIX}cause=\"")?;
        for (i, part) in self.cause.split('"').enumerate() {
            if i > 0 {
                f.write_str("'")?;
            }
            f.write_str(part)?;
        }
        write!(f, "\" n={} at_us={}", self.n, self.at_us)
    }
}

/// A log line's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// Guest time since entry, in microseconds.
    pub time_us: u64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: &'a str,
    pub message: &'a str,
}

/// An inventory line's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InventoryLine<'a> {
    /// `None` for a device the guest does not drive (`-`).
    pub name: Option<&'a str>,
    pub kind: &'a str,
    /// `pci` or `mmio`.
    pub transport: &'a str,
    pub location: &'a str,
    /// The `key=value` words after the location (see [`key_values`]).
    pub props: &'a str,
}

/// What a console line means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// `TANDEM READY ...`: the text after the prefix (see [`key_values`]).
    Ready(&'a str),
    /// `PANIC at ...`: the text after `PANIC `.
    Panic(&'a str),
    /// `BENCH {...}`: the JSON text.
    Bench(&'a str),
    /// `TANDEM NBD ...`.
    Nbd(NbdLine<'a>),
    /// `TANDEM RESTART ...`: the text after the prefix (see [`key_values`]).
    Restart(&'a str),
    /// `EXCEPTION vector=N ...`: the vector (if it parsed) and the whole line.
    Exception {
        vector: Option<u8>,
        text: &'a str,
    },
    Inventory(InventoryLine<'a>),
    Log(LogLine<'a>),
    /// Anything else (register dumps, firmware noise, ...).
    Other,
}

impl<'a> Event<'a> {
    /// Classify one console line (its terminator and leading terminal noise are ignored).
    pub fn parse(line: &'a str) -> Self {
        let line = strip_noise(line);
        if let Some(rest) = line.strip_prefix(READY_PREFIX)
            && (rest.is_empty() || rest.starts_with(char::is_whitespace))
        {
            return Event::Ready(rest);
        }
        if let Some(rest) = line.strip_prefix(PANIC_PREFIX) {
            return Event::Panic(rest);
        }
        if let Some(nbd) = line.strip_prefix(NBD_PREFIX).and_then(NbdLine::parse_uri) {
            return Event::Nbd(nbd);
        }
        if let Some(rest) = line.strip_prefix(RESTART_PREFIX) {
            return Event::Restart(rest);
        }
        if let Some(rest) = line.strip_prefix(BENCH_PREFIX)
            && rest.trim_start().starts_with('{')
        {
            return Event::Bench(rest.trim());
        }
        if line.starts_with(EXCEPTION_PREFIX) {
            return Event::Exception {
                vector: exception_vector(line),
                text: line,
            };
        }
        if let Some(entry) = parse_inventory(line) {
            return Event::Inventory(entry);
        }
        parse_log(line).map_or(Event::Other, Event::Log)
    }
}

/// The `key=value` words of `text` (words without `=` are skipped).
pub fn key_values(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split_whitespace().filter_map(|w| w.split_once('='))
}

/// The value of `key` among the `key=value` words of `text`, quotes removed.
pub fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    key_values(text)
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim_matches('"'))
}

fn exception_vector(line: &str) -> Option<u8> {
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("vector="))?;
    match v.strip_prefix("0x") {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Drop a trailing `\r`/`\n` and leading terminal escape sequences / NULs that firmware may
/// emit before the guest's first line.
pub fn strip_noise(line: &str) -> &str {
    let mut s = line.trim_end_matches(['\r', '\n']);
    loop {
        let before = s.len();
        s = s.trim_start_matches(['\0', '\r']);
        if let Some(rest) = s.strip_prefix('\x1b') {
            // ESC c | ESC [ params final
            if let Some(csi) = rest.strip_prefix('[') {
                let end = csi
                    .find(|c: char| ('\x40'..='\x7e').contains(&c))
                    .map_or(csi.len(), |i| i + 1);
                s = &csi[end..];
            } else {
                s = rest.get(1..).unwrap_or("");
            }
        }
        if s.len() == before {
            return s;
        }
    }
}

fn parse_inventory(line: &str) -> Option<InventoryLine<'_>> {
    let (_, rest) = line.split_once(INVENTORY_PREFIX)?;
    let rest = rest.trim_start();
    let mut words = rest.split_whitespace();
    let name = words.next()?;
    let kind = words.next()?;
    let transport = words.next().filter(|t| matches!(*t, "pci" | "mmio"))?;
    let location = words.next()?;
    let end = location.as_ptr() as usize - rest.as_ptr() as usize + location.len();
    Some(InventoryLine {
        name: (name != "-").then_some(name),
        kind,
        transport,
        location,
        props: rest[end..].trim_start(),
    })
}

fn parse_log(line: &str) -> Option<LogLine<'_>> {
    let rest = line.strip_prefix('[')?;
    let (ts, rest) = rest.split_once(']')?;
    let (secs, micros) = ts.trim().split_once('.')?;
    let secs: u64 = secs.parse().ok()?;
    let micros_val: u64 = micros.parse().ok()?;
    let scale = 10u64.checked_pow(6u32.checked_sub(micros.len() as u32)?)?;
    let rest = rest.strip_prefix(' ')?;
    let (level, message) = match rest.split_once(' ') {
        Some((l, m)) => (l, m.trim_start()),
        None => (rest, ""),
    };
    if !matches!(level, "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE") {
        return None;
    }
    Some(LogLine {
        time_us: secs
            .checked_mul(1_000_000)?
            .checked_add(micros_val * scale)?,
        level,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec::Vec;

    #[test]
    fn ready_round_trip() {
        let (machine, disks, boot_us) = ("q35", 2u32, 123_456u64);
        let line = format!(
            "{}\r",
            Ready(&[
                (ready_key::MACHINE, &machine),
                (ready_key::DISKS, &disks),
                (ready_key::BOOT_US, &boot_us),
            ])
        );
        let Event::Ready(rest) = Event::parse(&line) else {
            panic!("{line}")
        };
        let kv: Vec<_> = key_values(rest).collect();
        assert_eq!(
            kv,
            [("machine", "q35"), ("disks", "2"), ("boot_us", "123456")]
        );
        assert_eq!(Event::parse("TANDEM READYX a=b"), Event::Other);
        assert!(matches!(
            Event::parse("\x1bc\x1b[?7l\x1b[2JTANDEM READY machine=microvm"),
            Event::Ready(" machine=microvm")
        ));
    }

    #[test]
    fn nbd_round_trip() {
        let sent = NbdLine {
            ip: [10, 0, 2, 15],
            port: 10809,
            export: "blk0",
        };
        let text = format!("{sent}");
        assert_eq!(text, "TANDEM NBD nbd://10.0.2.15:10809/blk0");
        assert_eq!(Event::parse(&text), Event::Nbd(sent));
        for bad in [
            "TANDEM NBD garbage",
            "TANDEM NBD nbd://10.0.2:1/x",
            "TANDEM NBD nbd://10.0.2.15:99999/x",
            "TANDEM NBD nbd://10.0.2.15.1:1/x",
        ] {
            assert!(!matches!(Event::parse(bad), Event::Nbd(_)), "{bad}");
        }
    }

    #[test]
    fn restart_round_trip() {
        let text = format!(
            "{}",
            Restart {
                cause: "panic \"x\"",
                n: 1,
                at_us: 77
            }
        );
        let Event::Restart(rest) = Event::parse(&text) else {
            panic!("{text}")
        };
        assert_eq!(value(rest, "at_us"), Some("77"));
        assert_eq!(value(rest, "n"), Some("1"));
        assert!(rest.starts_with("cause=\"panic 'x'\""));
    }

    #[test]
    fn log_inventory_exception_and_bench() {
        let Event::Log(l) = Event::parse("[    1.500000] WARN  disk slow") else {
            panic!()
        };
        assert_eq!(
            (l.time_us, l.level, l.message),
            (1_500_000, "WARN", "disk slow")
        );
        assert_eq!(Event::parse("[99999999999999999.1] INFO x"), Event::Other);
        let Event::Inventory(i) =
            Event::parse("[ 0.1] INFO  inventory: - unknown pci 0000:00:1f.2 vendor=8086 a=b")
        else {
            panic!()
        };
        assert_eq!(
            (i.name, i.kind, i.transport, i.location, i.props),
            (None, "unknown", "pci", "0000:00:1f.2", "vendor=8086 a=b")
        );
        assert_eq!(
            Event::parse("inventory: x y isa 0"),
            Event::Other,
            "unknown transport"
        );
        assert!(matches!(
            Event::parse("EXCEPTION vector=0xe (#PF)"),
            Event::Exception {
                vector: Some(14),
                ..
            }
        ));
        assert_eq!(Event::parse("BENCH {\"a\":1} "), Event::Bench("{\"a\":1}"));
        assert_eq!(Event::parse("BENCH nope"), Event::Other);
        assert_eq!(
            Event::parse("PANIC at x:1:2: boom"),
            Event::Panic("at x:1:2: boom")
        );
    }
}
