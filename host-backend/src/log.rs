//! A small stderr logger for the `log` facade (ours and the rust-vmm crates'): one line per
//! record, `tandem-backend: LEVEL message`, the libraries only from warnings up unless
//! `--verbose`.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr {
    verbose: bool,
}

impl Log for Stderr {
    fn enabled(&self, m: &Metadata) -> bool {
        let ours = m.target().starts_with("host_backend") || m.target().starts_with("tandem");
        if self.verbose {
            m.level() <= Level::Debug
        } else if ours {
            m.level() <= Level::Info
        } else {
            m.level() <= Level::Warn
        }
    }

    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            let lib = if r.target().starts_with("host_backend") {
                String::new()
            } else {
                format!("[{}] ", r.target())
            };
            eprintln!("tandem-backend: {:<5} {lib}{}", r.level(), r.args());
        }
    }

    fn flush(&self) {}
}

/// Install the logger (once; later calls do nothing).
pub fn init(verbose: bool) {
    let logger = Box::leak(Box::new(Stderr { verbose }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(if verbose {
            LevelFilter::Debug
        } else {
            LevelFilter::Info
        });
    }
}
