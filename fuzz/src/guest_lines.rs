//! `guest_lines`: the text that crosses between guest and host as lines of words, both ways.
//!
//! - Host side: the console classifier (`tandem_formats::console::Event::parse`), which every
//!   host tool runs on whatever the guest prints (a guest can print anything). Each line must
//!   classify without panicking, and what it yields must be consistent: an NBD line prints
//!   back to a line that parses to the same value; the key=value readers never panic.
//! - Guest side: the command-line and boot-module word parser
//!   (`tandem_formats::cmdline::parse_parts`), with the input split into a command line and
//!   a module at its first NUL. Every problem is reported, never a panic, and every issue
//!   prints (the key file's secret is redacted: a `mgmt.key` value is never echoed).

use tandem_formats::cmdline::{self, Issue};
use tandem_formats::console::{self, Event, NbdLine};

/// Runs both parsers over `data`.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        classify(line);
    }
    let (cmd, module) = text.split_once('\0').unwrap_or((&text, ""));
    let mut issues = 0usize;
    let _cfg = cmdline::parse_parts(&[cmd, module], |_, issue| {
        issues += 1;
        let shown = issue.to_string();
        if let Issue::BadValue { key, value, .. } = issue
            && key == cmdline::key::MGMT_KEY
            && value.len() >= 8
        {
            assert!(!shown.contains(value), "mgmt.key value echoed: {shown}");
        }
    });
    let words = cmd.split_ascii_whitespace().count() + module.split_ascii_whitespace().count();
    assert!(issues <= words + 1, "{issues} issues for {words} words");
}

fn classify(line: &str) {
    match Event::parse(line) {
        Event::Nbd(nbd) => {
            let again = format!("{nbd}");
            assert_eq!(
                Event::parse(&again),
                Event::Nbd(nbd),
                "{line:?} -> {again:?}"
            );
            let NbdLine { export, .. } = nbd;
            assert!(!export.contains('\n'));
        }
        Event::Ready(rest) | Event::Restart(rest) => {
            for (k, v) in console::key_values(rest) {
                assert!(!k.contains(char::is_whitespace) && !v.contains(char::is_whitespace));
            }
            let _ = console::value(rest, "at_us");
        }
        Event::Inventory(i) => {
            assert!(matches!(i.transport, "pci" | "mmio"));
            let _ = console::key_values(i.props).count();
        }
        Event::Log(l) => assert!(matches!(
            l.level,
            "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE"
        )),
        Event::Panic(_) | Event::Bench(_) | Event::Exception { .. } | Event::Other => {}
    }
}
