//! The management channel's authentication: a challenge–response over HMAC-SHA256 with a
//! per-guest key, so that no secret crosses the wire.
//!
//! The host makes a 32-byte key (`tandem run` keeps it in `<state-dir>/mgmt.key`, an
//! appliance image in its directory, both 0600) and passes it at boot as `mgmt.key=<64 hex
//! digits>`. The guest listens on the management port only when it has a key.
//!
//! The exchange, one line each (`\n`-terminated, at most [`MAX_LINE`] bytes):
//!
//! ```text
//! guest:  tandem-mgmt 1 challenge <64 hex: a fresh 32-byte nonce>
//! client: auth <64 hex: HMAC-SHA256(key, nonce || "tandem-mgmt")>
//! guest:  ok authenticated                      (then commands, one reply line each)
//!    or:  error authentication failed           (and the guest closes the connection)
//! ```
//!
//! Any other first line gets [`REFUSE_UNAUTHENTICATED`] and the connection closes; so does a
//! client that does not answer within [`AUTH_TIMEOUT_MS`], and a line longer than
//! [`MAX_LINE`]. A response is bound to its nonce: replaying it on a new connection fails.
//! `inject ...` is refused ([`REFUSE_INJECT`]) unless the guest was started with
//! `debug.inject=on`.
//!
//! This module is the whole protocol, shared by the guest (`kernel/mgmt.rs`) and the host
//! client (`tandem_qemu::mgmt`); it is pure (no I/O) and tested on the host.

use alloc::string::String;
use core::fmt::Write;

use hmac::{KeyInit, Mac};
use sha2::Sha256;

/// Key and nonce length in bytes (64 hex digits each).
pub const KEY_LEN: usize = 32;
/// The nonce's length in bytes.
pub const NONCE_LEN: usize = 32;
/// What the HMAC covers after the nonce: ties the response to this protocol.
pub const CONTEXT: &[u8] = b"tandem-mgmt";
/// The challenge line's prefix (then the nonce in hex).
pub const CHALLENGE_PREFIX: &str = "tandem-mgmt 1 challenge ";
/// The client's answer's prefix (then the response in hex).
pub const AUTH_PREFIX: &str = "auth ";
/// The guest's line after a right response.
pub const AUTH_OK: &str = "ok authenticated";
/// The guest's line after a wrong response; it closes the connection.
pub const AUTH_FAILED: &str = "error authentication failed";
/// The guest's line to a command before authentication; it closes the connection.
pub const REFUSE_UNAUTHENTICATED: &str =
    "error not authenticated: answer the challenge first (auth HMAC-SHA256(key, nonce || \"tandem-mgmt\"))";
/// The guest's line when the client did not answer the challenge in time; it closes.
pub const REFUSE_TIMEOUT: &str = "error authentication timed out";
/// The guest's line to an authenticated client that sent nothing for the idle time
/// (`mgmt.idle_ms`); it closes the connection.
pub const REFUSE_IDLE: &str = "error idle too long; closing";
/// The default idle time of an authenticated connection.
pub const IDLE_TIMEOUT_MS: u64 = 300_000;
/// The guest's line to an over-long line; it closes the connection.
pub const REFUSE_LONG_LINE: &str = "error line too long";
/// The guest's line to `inject ...` without `debug.inject=on`.
pub const REFUSE_INJECT: &str =
    "error inject refused: the guest was not started with debug.inject=on";
/// The longest line either side sends or accepts, without its `\n`.
pub const MAX_LINE: usize = 160;
/// How long the guest waits for the `auth` line.
pub const AUTH_TIMEOUT_MS: u64 = 10_000;

/// A management key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; KEY_LEN]);

impl core::fmt::Debug for Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Parses 64 hex digits (surrounding whitespace allowed, as in a key file).
    pub fn parse(s: &str) -> Option<Self> {
        parse_hex32(s.trim()).map(Self)
    }

    /// The key as 64 lowercase hex digits (`mgmt.key=` and the key file).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn mac(key: &Key, nonce: &[u8; NONCE_LEN]) -> hmac::Hmac<Sha256> {
    let mut m =
        <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&key.0).expect("HMAC takes any key length");
    m.update(nonce);
    m.update(CONTEXT);
    m
}

/// The response to `nonce`: HMAC-SHA256(key, nonce || "tandem-mgmt").
pub fn response(key: &Key, nonce: &[u8; NONCE_LEN]) -> [u8; 32] {
    mac(key, nonce).finalize().into_bytes().into()
}

/// Whether `resp` is the response to `nonce` (compared in constant time).
pub fn verify(key: &Key, nonce: &[u8; NONCE_LEN], resp: &[u8; 32]) -> bool {
    mac(key, nonce).verify_slice(resp).is_ok()
}

/// The guest's challenge line for `nonce`, without `\n`.
pub fn challenge_line(nonce: &[u8; NONCE_LEN]) -> String {
    let mut s = String::from(CHALLENGE_PREFIX);
    s.push_str(&hex(nonce));
    s
}

/// The nonce in a challenge line (`None`: not a challenge).
pub fn parse_challenge(line: &str) -> Option<[u8; NONCE_LEN]> {
    parse_hex32(line.trim().strip_prefix(CHALLENGE_PREFIX)?)
}

/// The client's answer to a challenge line, without `\n`: `None` when the line is no
/// challenge.
pub fn answer(key: &Key, challenge: &str) -> Option<String> {
    let nonce = parse_challenge(challenge)?;
    let mut s = String::from(AUTH_PREFIX);
    s.push_str(&hex(&response(key, &nonce)));
    Some(s)
}

/// What the guest makes of the first line on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthCheck {
    /// The right response: reply [`AUTH_OK`] and take commands.
    Accepted,
    /// An `auth` line with a wrong or malformed response: reply [`AUTH_FAILED`], close.
    Failed,
    /// Anything else: reply [`REFUSE_UNAUTHENTICATED`], close.
    NotAuth,
}

impl AuthCheck {
    /// The reply line (without `\n`).
    pub fn reply(self) -> &'static str {
        match self {
            Self::Accepted => AUTH_OK,
            Self::Failed => AUTH_FAILED,
            Self::NotAuth => REFUSE_UNAUTHENTICATED,
        }
    }
}

/// Checks the first line a client sent after the challenge for `nonce`.
pub fn check_auth(key: &Key, nonce: &[u8; NONCE_LEN], line: &str) -> AuthCheck {
    let Some(rest) = line.trim().strip_prefix(AUTH_PREFIX) else {
        return AuthCheck::NotAuth;
    };
    match parse_hex32(rest.trim()) {
        Some(resp) if verify(key, nonce, &resp) => AuthCheck::Accepted,
        _ => AuthCheck::Failed,
    }
}

/// A management command (after authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    Status,
    /// `inject KIND`; the guest checks the kind.
    Inject(&'a str),
    Unknown(&'a str),
}

/// Parses a command line.
pub fn parse_command(line: &str) -> Command<'_> {
    let line = line.trim();
    if line == "status" {
        return Command::Status;
    }
    match line.strip_prefix("inject ") {
        Some(kind) => Command::Inject(kind.trim()),
        None => Command::Unknown(line),
    }
}

/// Mixes entropy words (RDSEED/RDRAND output, TSC readings, a counter) into a nonce: the
/// SHA-256 of their bytes under a domain tag. Nonces need to be unpredictable and never
/// repeat; the guest feeds a per-connection counter along with the hardware words.
pub fn mix_nonce(words: &[u64]) -> [u8; NONCE_LEN] {
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update(b"tandem-mgmt nonce");
    for w in words {
        h.update(w.to_le_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Key = Key([7; 32]);

    #[test]
    fn round_trip_accepts_the_right_key() {
        let nonce = mix_nonce(&[1, 2, 3]);
        let ch = challenge_line(&nonce);
        assert!(ch.len() <= MAX_LINE);
        assert_eq!(parse_challenge(&ch), Some(nonce));
        let a = answer(&KEY, &ch).unwrap();
        assert!(a.len() <= MAX_LINE);
        assert_eq!(check_auth(&KEY, &nonce, &a), AuthCheck::Accepted);
        assert_eq!(
            check_auth(&KEY, &nonce, &format!("{a}\r")),
            AuthCheck::Accepted
        );
    }

    #[test]
    fn a_wrong_key_fails() {
        let nonce = mix_nonce(&[9]);
        let a = answer(&Key([8; 32]), &challenge_line(&nonce)).unwrap();
        assert_eq!(check_auth(&KEY, &nonce, &a), AuthCheck::Failed);
    }

    #[test]
    fn a_replayed_response_to_a_new_nonce_fails() {
        let n1 = mix_nonce(&[1, 100]);
        let n2 = mix_nonce(&[2, 100]);
        assert_ne!(n1, n2);
        let a = answer(&KEY, &challenge_line(&n1)).unwrap();
        assert_eq!(check_auth(&KEY, &n1, &a), AuthCheck::Accepted);
        assert_eq!(check_auth(&KEY, &n2, &a), AuthCheck::Failed);
    }

    #[test]
    fn anything_else_is_refused() {
        let nonce = mix_nonce(&[5]);
        assert_eq!(check_auth(&KEY, &nonce, "status"), AuthCheck::NotAuth);
        assert_eq!(check_auth(&KEY, &nonce, "inject panic"), AuthCheck::NotAuth);
        assert_eq!(check_auth(&KEY, &nonce, "auth zz"), AuthCheck::Failed);
        assert_eq!(check_auth(&KEY, &nonce, "auth 00"), AuthCheck::Failed);
        // The key itself is no response.
        let leak = format!("auth {}", KEY.to_hex());
        assert_eq!(check_auth(&KEY, &nonce, &leak), AuthCheck::Failed);
        assert!(REFUSE_UNAUTHENTICATED.len() <= MAX_LINE);
        assert!(REFUSE_INJECT.len() <= MAX_LINE);
    }

    #[test]
    fn keys_parse_and_print() {
        let k = Key::parse(&format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(k, Key([0xab; 32]));
        assert_eq!(k.to_hex(), "ab".repeat(32));
        assert_eq!(Key::parse(&"AB".repeat(32)), Some(Key([0xab; 32])));
        assert!(Key::parse(&"ab".repeat(31)).is_none());
        assert!(Key::parse(&"zz".repeat(32)).is_none());
        assert_eq!(format!("{k:?}"), "Key(..)");
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA256(key = 32 x 0x07, 32 x 0x00 || "tandem-mgmt"), computed with Python's
        // `hmac` (a fixed vector, so both sides cannot drift together).
        let nonce = [0u8; 32];
        assert_eq!(
            hex(&response(&KEY, &nonce)),
            "b5e69a741d4dc28e04cffecdcb52ec6011bc22b28f915088dcbb799bf031ede5"
        );
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command("status\r"), Command::Status);
        assert_eq!(parse_command("inject panic"), Command::Inject("panic"));
        assert_eq!(parse_command("bogus"), Command::Unknown("bogus"));
    }
}
