//! The serial console (COM1, 16550) and the `log` backend that writes to it.
//!
//! Log lines carry the guest's monotonic time: `[    0.012345] INFO  message`. Contract
//! lines that the host parses (`TANDEM READY`, `PANIC`, `EXCEPTION`) are printed without
//! the prefix through [`line`]. Panic and exception reports use an unlocked writer so they
//! get out even if the fault hit while the console lock was held.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, Ordering};

use spin::Mutex;
use unikernel::cmdline::LogLevel;

use crate::arch::cpu::{inb, outb};
use crate::arch::idt::ExceptionFrame;

const COM1: u16 = 0x3f8;

struct Serial;

impl Serial {
    fn init() {
        outb(COM1 + 1, 0x00); // no interrupts
        outb(COM1 + 3, 0x80); // DLAB
        outb(COM1, 0x01); // 115200 baud
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03); // 8N1
        outb(COM1 + 2, 0xc7); // FIFO on, cleared
        outb(COM1 + 4, 0x03); // DTR | RTS
    }

    /// Writes bytes, waiting (bounded) for an empty transmit FIFO once per 16 bytes rather
    /// than per byte: under emulation each port access is an exit, and this halves them.
    fn put_all(bytes: &[u8]) {
        for chunk in bytes.chunks(FIFO) {
            for _ in 0..100_000 {
                if inb(COM1 + 5) & 0x20 != 0 {
                    break;
                }
            }
            chunk.iter().for_each(|&b| outb(COM1, b));
        }
    }
}

/// The 16550's transmit FIFO depth (enabled in `init`): empty means room for this many.
const FIFO: usize = 16;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        Serial::put_all(s.as_bytes());
        Ok(())
    }
}

static CONSOLE: Mutex<Serial> = Mutex::new(Serial);
static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

struct Logger;

fn level_of(l: log::Level) -> LogLevel {
    match l {
        log::Level::Error => LogLevel::Error,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Info => LogLevel::Info,
        log::Level::Debug => LogLevel::Debug,
        log::Level::Trace => LogLevel::Trace,
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        let max = LEVEL.load(Ordering::Relaxed);
        let mut lvl = level_of(m.level()) as u8;
        // Third-party drivers are chatty at info; show them only from `log=debug`.
        if !m.target().starts_with("unikernel") && lvl >= LogLevel::Info as u8 {
            lvl += 1;
        }
        lvl <= max
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = crate::time::now_us();
        let mut c = CONSOLE.lock();
        let _ = writeln!(
            c,
            "[{:5}.{:06}] {:<5} {}",
            t / 1_000_000,
            t % 1_000_000,
            r.level(),
            r.args()
        );
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Initialises COM1 and installs the logger.
pub fn init() {
    Serial::init();
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Trace);
}

pub fn set_level(l: LogLevel) {
    LEVEL.store(l as u8, Ordering::Relaxed);
}

/// Prints one contract line, without the log prefix.
pub fn line(args: fmt::Arguments) {
    let mut c = CONSOLE.lock();
    let _ = c.write_fmt(args);
    let _ = c.write_char('\n');
}

/// Prints one line without taking the console lock (panic and exception paths).
pub fn emergency_line(args: fmt::Arguments) {
    let mut s = Serial;
    let _ = s.write_char('\n');
    let _ = s.write_fmt(args);
    let _ = s.write_char('\n');
}

/// The `EXCEPTION ...` report: vector, error code, RIP, CR2 and every register.
pub fn report_exception(f: &ExceptionFrame, cr2: u64) {
    let (m, d) = unikernel::exceptions::describe(f.vector);
    let mut s = Serial;
    let _ = write!(
        s,
        "\nEXCEPTION vector={} ({m}) error={:#x} rip={:#x} cr2={:#x} desc=\"{d}\"",
        f.vector, f.error, f.rip, cr2
    );
    if f.vector == 14 {
        let [a, b, c] = unikernel::exceptions::page_fault_reason(f.error);
        let _ = write!(s, " access=\"{a} {b} {c}\"");
    }
    let _ = write!(
        s,
        "\n  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\
         \n  rsi={:#018x} rdi={:#018x} rbp={:#018x} rsp={:#018x}\
         \n  r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}\
         \n  r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\
         \n  cs={:#x} ss={:#x} rflags={:#x} cr3={:#x}\n",
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx,
        f.rsi,
        f.rdi,
        f.rbp,
        f.rsp,
        f.r8,
        f.r9,
        f.r10,
        f.r11,
        f.r12,
        f.r13,
        f.r14,
        f.r15,
        f.cs,
        f.ss,
        f.rflags,
        crate::arch::cpu::read_cr3()
    );
}
