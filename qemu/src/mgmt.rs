//! The host's management-channel client: keys, and one authenticated command.
//!
//! A guest serves its management port (tcp/10810) only when booted with a key
//! (`mgmt.key=<64 hex>`); every connection starts with a challenge that the client answers
//! with HMAC-SHA256 under that key (the exchange and its lines: `tandem_formats::mgmt_auth`).
//! `tandem run` keeps the key in `<state-dir>/mgmt.key` (0600), an appliance image in its
//! directory; `tandem mgmt --state-dir DIR status|inject KIND` uses it. Every management
//! command of `tandem` (`check`, the benchmarks) and of the tests goes through [`command`].
//!
//! **The key never goes on a command line.** QEMU's argv (and so `-append`) is readable by
//! every local user through `ps` and `/proc/PID/cmdline`, and a libvirt domain XML or an xl
//! config is no place for a secret either. The key file therefore holds guest words,
//! `mgmt.key=<64 hex>` and a newline, and is handed to the guest as its first PVH boot module
//! (QEMU `-initrd FILE`, libvirt `<initrd>`, xl `ramdisk=`), which the guest reads as more
//! command-line words. Only the file's name appears anywhere. Key files of the older format
//! (the bare 64 hex digits) are still read, and rewritten in the new one when a guest is about
//! to boot with them ([`load_or_create_key`]). [`cmdline_words`] remains for tests that
//! deliberately put a key on the command line.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
pub use tandem_formats::mgmt_auth::Key;
use tandem_formats::mgmt_auth::{self as auth, MAX_LINE};

/// The key file's name in a state directory or an appliance image's directory.
pub const KEY_FILE: &str = "mgmt.key";

/// A fresh random key (from /dev/urandom).
pub fn generate_key() -> anyhow::Result<Key> {
    let mut k = [0u8; auth::KEY_LEN];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut k))
        .context("reading /dev/urandom for a management key")?;
    Ok(Key(k))
}

/// The key file in `dir`.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

/// The guest word that carries `key`: the key file's contents without its newline.
pub fn key_word(key: &Key) -> String {
    format!("mgmt.key={}", key.to_hex())
}

/// The key in a key file's text: its `mgmt.key=` word (the file holds guest words), or the
/// whole text being the bare 64 hex digits (the older format).
pub fn parse_key_file(text: &str) -> Option<Key> {
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    if let [bare] = words[..]
        && let Some(k) = Key::parse(bare)
    {
        return Some(k);
    }
    let mut keys = words.iter().filter_map(|w| w.strip_prefix("mgmt.key="));
    match (keys.next(), keys.next()) {
        (Some(k), None) => Key::parse(k),
        _ => None,
    }
}

/// Reads a key file (`mgmt.key=<64 hex>`, or the bare 64 hex digits of older files).
pub fn read_key(path: &Path) -> anyhow::Result<Key> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the management key {}", path.display()))?;
    parse_key_file(&text).with_context(|| {
        format!(
            "{}: not a management key file (one word mgmt.key=<64 hex digits>)",
            path.display()
        )
    })
}

/// Writes `key` to `path` as the guest word `mgmt.key=<64 hex>` and a newline, readable by
/// its owner only (0600): the file is the guest's boot module.
pub fn write_key(path: &Path, key: &Key) -> anyhow::Result<()> {
    write_private(path, format!("{}\n", key_word(key)).as_bytes())
}

/// Replaces `path` with `bytes`, readable by its owner only (0600) from its creation on: a
/// secret is never in a file others could open.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// The key in `dir`'s key file, made (0600) when there is none. A file of the older bare-hex
/// format is rewritten as guest words (same key), so that it can be the guest's boot module.
pub fn load_or_create_key(dir: &Path) -> anyhow::Result<Key> {
    let path = key_path(dir);
    if path.exists() {
        let key = read_key(&path)?;
        let text = std::fs::read_to_string(&path)?;
        if text.trim() != key_word(&key) {
            write_key(&path, &key)?;
        }
        return Ok(key);
    }
    let key = generate_key()?;
    write_key(&path, &key)?;
    Ok(key)
}

/// The guest command-line words that turn the channel on with `key` on the data NIC (for a
/// host-only network such as QEMU user networking), and allow `inject` when `inject`.
pub fn cmdline_words(key: &Key, inject: bool) -> String {
    use tandem_formats::cmdline::key as k;
    let mut w = format!("{}={} {}=on", k::MGMT_KEY, key.to_hex(), k::MGMT_ON_DATA);
    if inject {
        w.push_str(&format!(" {}=on", k::DEBUG_INJECT));
    }
    w
}

/// An authenticated connection to a management port.
pub struct Client {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Client {
    /// Connects to `addr` and answers its challenge with `key`; every step waits at most
    /// `timeout`.
    pub fn connect(addr: SocketAddr, key: &Key, timeout: Duration) -> anyhow::Result<Self> {
        let s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("management port {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let mut c = Self {
            reader: BufReader::new(s),
            addr,
        };
        let challenge = c.read_line("the challenge")?;
        let Some(answer) = auth::answer(key, &challenge) else {
            bail!("management port {addr}: no challenge but `{challenge}`");
        };
        c.send(&answer)?;
        let reply = c.read_line("the authentication")?;
        if reply != auth::AUTH_OK {
            bail!("management port {addr}: authentication refused: `{reply}`");
        }
        Ok(c)
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.reader
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("management port {}: sending `{line}`", self.addr))
    }

    fn read_line(&mut self, what: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 * 64)
            .read_line(&mut line)
            .with_context(|| format!("management port {}: reading {what}", self.addr))?;
        if n == 0 {
            bail!("management port {}: closed before {what}", self.addr);
        }
        Ok(line.trim_end().to_string())
    }

    /// Sends one command line and returns the reply line (without its `\n`).
    pub fn command(&mut self, line: &str) -> anyhow::Result<String> {
        self.send(line)?;
        self.read_line(&format!("the reply to `{line}`"))
    }
}

/// Connects to `addr`, authenticates with `key`, sends `line` and returns the reply line
/// (without its `\n`).
pub fn command(
    addr: SocketAddr,
    key: &Key,
    line: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    Client::connect(addr, key, timeout)?.command(line)
}

/// `tandem mgmt`: one command; prints the reply; exit status 0 for `ok ...`, 1 otherwise.
pub fn cli(args: &crate::cli::MgmtArgs) -> anyhow::Result<i32> {
    let key = read_key(&key_path(&args.state_dir))?;
    let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, args.port));
    let reply = command(
        addr,
        &key,
        &args.command.join(" "),
        Duration::from_secs(args.timeout),
    )?;
    println!("{reply}");
    Ok(if reply.starts_with("ok") { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_parses_the_management_words() {
        let key = Key([7; 32]);
        let words = cmdline_words(&key, true);
        let mut issues = Vec::new();
        let cfg = tandem_formats::cmdline::parse(&words, |i| issues.push(i.to_string()));
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(
            (cfg.mgmt_key, cfg.mgmt_on_data, cfg.debug_inject),
            (Some(key), true, true)
        );
    }

    #[test]
    fn key_files_are_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("tandem-mgmt-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = load_or_create_key(&dir).unwrap();
        let meta = std::fs::metadata(key_path(&dir)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_key(&dir).unwrap(), k);
        assert_ne!(generate_key().unwrap(), k);
        let words = cmdline_words(&k, true);
        assert!(words.contains(&k.to_hex()) && words.ends_with("debug.inject=on"));
        // The file is the guest's boot module: one guest word and a newline.
        let text = std::fs::read_to_string(key_path(&dir)).unwrap();
        assert_eq!(text, format!("mgmt.key={}\n", k.to_hex()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_files_of_either_format_are_read_and_the_old_one_is_upgraded() {
        let dir = crate::scratch::tempdir().unwrap();
        let path = key_path(dir.path());
        let k = Key([0xab; 32]);
        for text in [
            format!("mgmt.key={}\n", k.to_hex()),
            format!("{}\n", k.to_hex()),
            k.to_hex(),
            format!("  mgmt.on_data=on\tmgmt.key={} \n", k.to_hex()),
        ] {
            std::fs::write(&path, &text).unwrap();
            assert_eq!(read_key(&path).unwrap(), k, "{text:?}");
        }
        for bad in [
            String::new(),
            "mgmt.key=abc".into(),
            format!("mgmt.key={0} mgmt.key={0}", k.to_hex()),
            format!("{0} {0}", k.to_hex()),
        ] {
            std::fs::write(&path, &bad).unwrap();
            let err = format!("{:#}", read_key(&path).unwrap_err());
            assert!(err.contains("not a management key file"), "{err}");
            assert!(!err.contains(&k.to_hex()), "the error shows the key: {err}");
        }
        // An old bare-hex file keeps its key and becomes guest words, still 0600.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, format!("{}\n", k.to_hex())).unwrap();
        assert_eq!(load_or_create_key(dir.path()).unwrap(), k);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("mgmt.key={}\n", k.to_hex())
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
