//! The host's management-channel client: keys, and one authenticated command.
//!
//! A guest serves its management port (tcp/10810) only when booted with a key
//! (`mgmt.key=<64 hex>`); every connection starts with a challenge that the client answers
//! with HMAC-SHA256 under that key (the exchange and its lines: `unikernel::mgmt_auth`).
//! `tandem run` keeps the key in `<state-dir>/mgmt.key` (0600), an appliance image in its
//! directory; `tandem mgmt --state-dir DIR status|inject KIND` uses it. Every management
//! command of `tandem` (`check`, the benchmarks) and of the tests goes through [`command`].

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
pub use unikernel::mgmt_auth::Key;
use unikernel::mgmt_auth::{self as auth, MAX_LINE};

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

/// Reads a key file (64 hex digits).
pub fn read_key(path: &Path) -> anyhow::Result<Key> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the management key {}", path.display()))?;
    Key::parse(&text)
        .with_context(|| format!("{}: not a management key (64 hex digits)", path.display()))
}

/// Writes `key` to `path`, readable by its owner only (0600).
pub fn write_key(path: &Path, key: &Key) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(f, "{}", key.to_hex()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The key in `dir`'s key file, made (0600) when there is none.
pub fn load_or_create_key(dir: &Path) -> anyhow::Result<Key> {
    let path = key_path(dir);
    if path.exists() {
        return read_key(&path);
    }
    let key = generate_key()?;
    write_key(&path, &key)?;
    Ok(key)
}

/// The guest command-line words that turn the channel on with `key` on the data NIC (for a
/// host-only network such as QEMU user networking), and allow `inject` when `inject`.
pub fn cmdline_words(key: &Key, inject: bool) -> String {
    let mut w = format!("mgmt.key={} mgmt.on_data=on", key.to_hex());
    if inject {
        w.push_str(" debug.inject=on");
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
