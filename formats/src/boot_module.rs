//! What the host puts in the guest's first PVH boot module (QEMU `-initrd`, libvirt
//! `<initrd>`, xl `ramdisk=`): the secrets and files that must not sit on a command line every
//! local user can read. One text file, written by the host (`tandem run`, appliance images)
//! and read by the guest at boot; this module is both sides of that contract.
//!
//! ```text
//! mgmt.key=<64 hex> tls=require          <- guest words, as on the command line
//! [tls.ca-cert]                          <- a section: a line `[NAME]`, then its text
//! -----BEGIN CERTIFICATE-----
//! ...
//! [tls.server-cert]
//! ...
//! [tls.server-key]
//! ...
//! ```
//!
//! Words come first, up to the first section line. A section's text runs to the next section
//! line or the end. Names are from [`SECTIONS`]; each appears at most once. PEM text never has
//! a line starting with `[`, so the format needs no escaping. The whole module is at most
//! [`MAX_BYTES`] (a CA, a certificate chain and a key fit many times over).

use core::fmt;

/// Largest module the guest reads (`start_info::MAX_MODULE_BYTES` is the same bound).
pub const MAX_BYTES: usize = 64 * 1024;

/// The CA certificate(s) client certificates are verified against (PEM).
pub const TLS_CA_CERT: &str = "tls.ca-cert";
/// The guest's certificate chain (PEM).
pub const TLS_SERVER_CERT: &str = "tls.server-cert";
/// The guest's private key (PEM).
pub const TLS_SERVER_KEY: &str = "tls.server-key";
/// Every section name the guest knows.
pub const SECTIONS: [&str; 3] = [TLS_CA_CERT, TLS_SERVER_CERT, TLS_SERVER_KEY];

/// A module's parts: its words and its sections (by index in [`SECTIONS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BootModule<'a> {
    /// The guest words before the first section (parsed like the command line's).
    pub words: &'a str,
    sections: [Option<&'a str>; SECTIONS.len()],
}

/// Why a module's text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleError {
    /// Longer than [`MAX_BYTES`].
    TooLong(usize),
    /// A section line names no known section (its line number, from 1).
    UnknownSection(usize),
    /// A section appears twice (its line number).
    Repeated(usize),
}

impl fmt::Display for ModuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong(n) => write!(f, "{n} bytes, more than {MAX_BYTES}"),
            Self::UnknownSection(l) => write!(
                f,
                "line {l}: unknown section (known: {})",
                SECTIONS.join(", ")
            ),
            Self::Repeated(l) => write!(f, "line {l}: a section given twice"),
        }
    }
}

/// `[NAME]` on a line of its own (trailing whitespace allowed): the name.
fn section_name(line: &str) -> Option<&str> {
    line.trim_end().strip_prefix('[')?.strip_suffix(']')
}

impl<'a> BootModule<'a> {
    /// Splits a module's text into words and sections.
    pub fn parse(text: &'a str) -> Result<Self, ModuleError> {
        if text.len() > MAX_BYTES {
            return Err(ModuleError::TooLong(text.len()));
        }
        let mut m = BootModule::default();
        // (section index, byte offset where its text starts)
        let mut open: Option<(usize, usize)> = None;
        let mut at = 0;
        for (n, line) in text.split_inclusive('\n').enumerate() {
            if let Some(name) = line.starts_with('[').then(|| section_name(line)).flatten() {
                let i = SECTIONS
                    .iter()
                    .position(|s| *s == name)
                    .ok_or(ModuleError::UnknownSection(n + 1))?;
                if m.sections[i].is_some() || open.is_some_and(|(o, _)| o == i) {
                    return Err(ModuleError::Repeated(n + 1));
                }
                match open {
                    Some((o, from)) => m.sections[o] = Some(&text[from..at]),
                    None => m.words = &text[..at],
                }
                open = Some((i, at + line.len()));
            }
            at += line.len();
        }
        match open {
            Some((o, from)) => m.sections[o] = Some(&text[from..]),
            None => m.words = text,
        }
        Ok(m)
    }

    /// The text of section `name`, if the module has it.
    pub fn section(&self, name: &str) -> Option<&'a str> {
        let i = SECTIONS.iter().position(|s| *s == name)?;
        self.sections[i]
    }
}

/// The module text for `words` and `sections` (`(name, text)`, names from [`SECTIONS`]): what
/// [`BootModule::parse`] reads back. Errors if a name is unknown, a text has a line that
/// would read as a section line, or the whole is over [`MAX_BYTES`].
pub fn compose(
    words: &str,
    sections: &[(&str, &str)],
) -> Result<alloc::string::String, &'static str> {
    let section_like = |t: &str| t.lines().any(|l| l.starts_with('['));
    if section_like(words) {
        return Err("a line starting with '[' (it would read as a section line)");
    }
    let mut out = alloc::string::String::from(words.trim_end());
    out.push('\n');
    for (name, body) in sections {
        if !SECTIONS.contains(name) {
            return Err("an unknown boot-module section");
        }
        if section_like(body) {
            return Err("a line starting with '[' (it would read as a section line)");
        }
        out.push('[');
        out.push_str(name);
        out.push_str("]\n");
        out.push_str(body);
        if !body.ends_with('\n') {
            out.push('\n');
        }
    }
    if out.len() > MAX_BYTES {
        return Err("the boot module would be larger than 64 KiB");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn words_alone_and_with_sections_round_trip() {
        let m = BootModule::parse("mgmt.key=00ff mgmt.on_data=on\n").unwrap();
        assert_eq!(m.words, "mgmt.key=00ff mgmt.on_data=on\n");
        assert_eq!(m.section(TLS_CA_CERT), None);

        let text = compose(
            "mgmt.key=00ff tls=on",
            &[
                (TLS_SERVER_KEY, "KEY"),
                (TLS_CA_CERT, PEM),
                (TLS_SERVER_CERT, PEM),
            ],
        )
        .unwrap();
        let m = BootModule::parse(&text).unwrap();
        assert_eq!(m.words, "mgmt.key=00ff tls=on\n");
        assert_eq!(m.section(TLS_CA_CERT), Some(PEM));
        assert_eq!(m.section(TLS_SERVER_CERT), Some(PEM));
        assert_eq!(m.section(TLS_SERVER_KEY), Some("KEY\n"));
        assert_eq!(m.section("tls.other"), None);
    }

    #[test]
    fn bad_modules_are_refused_with_the_line() {
        let e = BootModule::parse("a=b\n[tls.ca-cert]\nx\n[tls.bogus]\n").unwrap_err();
        assert_eq!(e, ModuleError::UnknownSection(4));
        let e = BootModule::parse("[tls.ca-cert]\nx\n[tls.ca-cert]\ny\n").unwrap_err();
        assert_eq!(e, ModuleError::Repeated(3));
        let big = "x".repeat(MAX_BYTES + 1);
        assert_eq!(
            BootModule::parse(&big),
            Err(ModuleError::TooLong(MAX_BYTES + 1))
        );
        assert!(compose("a=b", &[("tls.bogus", PEM)]).is_err());
        assert!(compose("a=b", &[(TLS_CA_CERT, "[tls.server-key]\n")]).is_err());
        assert!(compose("a=b", &[(TLS_CA_CERT, &"x".repeat(MAX_BYTES))]).is_err());
        // A '[' inside a line, or a line like "[x" without ']', is text.
        let m = BootModule::parse("a=b\n[tls.ca-cert]\nsee [x]\n[x\n").unwrap();
        assert_eq!(m.section(TLS_CA_CERT), Some("see [x]\n[x\n"));
    }

    #[test]
    fn any_text_parses_or_is_refused_without_panic() {
        // Every split point of a composed module, and junk around section lines.
        let text = compose("w=1", &[(TLS_CA_CERT, PEM), (TLS_SERVER_KEY, PEM)]).unwrap();
        for cut in 0..=text.len() {
            let _ = BootModule::parse(&text[..cut]);
            let _ = BootModule::parse(&text[cut..]);
        }
        for t in [
            "[",
            "[]",
            "[]\n",
            "\n[tls.ca-cert]",
            "[tls.ca-cert] \r\n",
            "]\n[\n",
        ] {
            let _ = BootModule::parse(t);
        }
        let m = BootModule::parse("[tls.ca-cert] \r\nA").unwrap();
        assert_eq!((m.words, m.section(TLS_CA_CERT)), ("", Some("A")));
    }
}
