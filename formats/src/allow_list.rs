//! Export access control: per-export allow-lists of client IPv4 networks.
//!
//! An export with an empty list is open to every client (the default). An export with a list
//! is served only to clients whose address is in one of its networks: to anyone else the
//! handshake does not list it and answers `NBD_REP_ERR_POLICY` for it (see
//! [`super::handshake`]). A client whose address is not known is admitted only to open exports.
//!
//! The text form is the one definition the guest command line (`export=NAME:DEV:allow=LIST`)
//! and the host's appliance renderer share: networks `A.B.C.D/N` (or `A.B.C.D` for `/32`)
//! joined by `+`, e.g. `10.0.0.0/8+192.168.1.5/32`. A network with bits set below its prefix
//! (`10.0.0.1/8`) is refused as a likely typo.

use core::fmt;

/// Most networks in one allow-list.
pub const MAX_ALLOW: usize = 8;

/// Joins the networks of an allow-list in its text form.
pub const SEPARATOR: char = '+';

/// Why an allow-list (or one network of it) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclError {
    /// Not `A.B.C.D` or `A.B.C.D/N` (decimal octets 0..=255).
    Address,
    /// The prefix length is not a decimal 0..=32.
    Prefix,
    /// Bits are set in the address below the prefix (`10.0.0.1/8`).
    HostBits,
    /// More than [`MAX_ALLOW`] networks.
    TooMany,
    /// An empty list, or an empty item between separators.
    Empty,
}

impl AclError {
    /// What was expected, for error messages.
    pub const fn expected(self) -> &'static str {
        match self {
            AclError::Address => "allow-list networks A.B.C.D/N with octets 0..=255",
            AclError::Prefix => "allow-list networks A.B.C.D/N with a prefix length N of 0..=32",
            AclError::HostBits => {
                "allow-list networks A.B.C.D/N with no address bits set after the first N \
                 (10.0.0.0/8, not 10.0.0.1/8)"
            }
            AclError::TooMany => "at most 8 networks in an allow-list",
            AclError::Empty => "an allow-list of one or more networks A.B.C.D/N joined by '+'",
        }
    }
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {}", self.expected())
    }
}

/// One IPv4 network: an address and a prefix length, no bits set after the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: [u8; 4],
    prefix: u8,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// A decimal number of at most 3 digits, digits only (no sign, no spaces, no leading zero).
fn decimal(s: &str) -> Option<u16> {
    if s.is_empty()
        || s.len() > 3
        || (s.len() > 1 && s.starts_with('0'))
        || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

impl Ipv4Net {
    pub fn new(addr: [u8; 4], prefix: u8) -> Result<Self, AclError> {
        if prefix > 32 {
            return Err(AclError::Prefix);
        }
        if u32::from_be_bytes(addr) & !mask(prefix) != 0 {
            return Err(AclError::HostBits);
        }
        Ok(Self { addr, prefix })
    }

    /// `A.B.C.D/N`, or `A.B.C.D` for a single address (`/32`).
    pub fn parse(s: &str) -> Result<Self, AclError> {
        let (a, n) = match s.split_once('/') {
            Some((a, n)) => (
                a,
                decimal(n).filter(|&n| n <= 32).ok_or(AclError::Prefix)? as u8,
            ),
            None => (s, 32),
        };
        let mut addr = [0u8; 4];
        let mut parts = a.split('.');
        for o in &mut addr {
            *o = parts
                .next()
                .and_then(decimal)
                .and_then(|v| u8::try_from(v).ok())
                .ok_or(AclError::Address)?;
        }
        if parts.next().is_some() {
            return Err(AclError::Address);
        }
        Self::new(addr, n)
    }

    pub fn addr(&self) -> [u8; 4] {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: [u8; 4]) -> bool {
        u32::from_be_bytes(ip) & mask(self.prefix) == u32::from_be_bytes(self.addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.addr;
        write!(f, "{a}.{b}.{c}.{d}/{}", self.prefix)
    }
}

/// The networks one export is served to; empty means every client. Fixed size (no heap), so
/// the guest command line can hold it before the heap exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct AllowList {
    nets: [Ipv4Net; MAX_ALLOW],
    len: u8,
}

impl AllowList {
    /// Every client (no list).
    pub const OPEN: AllowList = AllowList {
        nets: [Ipv4Net {
            addr: [0; 4],
            prefix: 0,
        }; MAX_ALLOW],
        len: 0,
    };

    /// The list of `nets` (empty: open to every client).
    pub fn from_nets(nets: &[Ipv4Net]) -> Result<Self, AclError> {
        if nets.len() > MAX_ALLOW {
            return Err(AclError::TooMany);
        }
        let mut l = Self::OPEN;
        l.nets[..nets.len()].copy_from_slice(nets);
        l.len = nets.len() as u8;
        Ok(l)
    }

    /// The text form: networks joined by `+`; at least one.
    pub fn parse(s: &str) -> Result<Self, AclError> {
        let mut l = Self::OPEN;
        for item in s.split(SEPARATOR) {
            if item.is_empty() {
                return Err(AclError::Empty);
            }
            let net = Ipv4Net::parse(item)?;
            if usize::from(l.len) == MAX_ALLOW {
                return Err(AclError::TooMany);
            }
            l.nets[usize::from(l.len)] = net;
            l.len += 1;
        }
        Ok(l)
    }

    pub fn nets(&self) -> &[Ipv4Net] {
        &self.nets[..usize::from(self.len)]
    }

    /// No list: every client is admitted.
    pub fn is_open(&self) -> bool {
        self.len == 0
    }

    /// Whether a client at `peer` (`None`: address unknown) may see and use the export.
    pub fn admits(&self, peer: Option<[u8; 4]>) -> bool {
        self.is_open() || peer.is_some_and(|ip| self.nets().iter().any(|n| n.contains(ip)))
    }
}

/// The text form (empty for an open list).
impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nets().iter().enumerate() {
            if i > 0 {
                write!(f, "{SEPARATOR}")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn networks_parse_strictly() {
        let n = Ipv4Net::parse("10.0.0.0/8").unwrap();
        assert_eq!((n.addr(), n.prefix()), ([10, 0, 0, 0], 8));
        assert_eq!(Ipv4Net::parse("192.168.1.5").unwrap().prefix(), 32);
        assert_eq!(Ipv4Net::parse("0.0.0.0/0").unwrap().prefix(), 0);
        for (s, e) in [
            ("10.0.0.1/8", AclError::HostBits),
            ("10.0.0.0/33", AclError::Prefix),
            ("10.0.0.0/", AclError::Prefix),
            ("10.0.0.0/+8", AclError::Prefix),
            ("10.0.0.0/0008", AclError::Prefix),
            ("10.0.0.0/08", AclError::Prefix),
            ("010.0.0.0/8", AclError::Address),
            ("10.0.0/8", AclError::Address),
            ("10.0.0.0.0/8", AclError::Address),
            ("10.0.0.256/32", AclError::Address),
            ("10.0.+0.0/16", AclError::Address),
            ("10.0. 0.0/16", AclError::Address),
            ("", AclError::Address),
            ("x", AclError::Address),
        ] {
            assert_eq!(Ipv4Net::parse(s), Err(e), "{s}");
        }
    }

    #[test]
    fn matching() {
        let n = Ipv4Net::parse("10.0.2.0/24").unwrap();
        assert!(n.contains([10, 0, 2, 2]));
        assert!(n.contains([10, 0, 2, 255]));
        assert!(!n.contains([10, 0, 3, 2]));
        assert!(Ipv4Net::parse("0.0.0.0/0").unwrap().contains([1, 2, 3, 4]));
        let one = Ipv4Net::parse("192.168.1.5").unwrap();
        assert!(one.contains([192, 168, 1, 5]) && !one.contains([192, 168, 1, 4]));
        let l = AllowList::parse("192.0.2.0/24+10.0.0.0/8").unwrap();
        assert!(l.admits(Some([10, 9, 8, 7])));
        assert!(l.admits(Some([192, 0, 2, 1])));
        assert!(!l.admits(Some([10, 0, 2, 2].map(|b| b ^ 0x80))));
        assert!(!l.admits(None), "an unknown peer only sees open exports");
        assert!(AllowList::OPEN.admits(None) && AllowList::default().admits(Some([1; 4])));
    }

    #[test]
    fn lists_round_trip() {
        for s in [
            "10.0.0.0/8",
            "10.0.0.0/8+192.168.1.5/32",
            "0.0.0.0/0+1.2.3.4/32",
        ] {
            let l = AllowList::parse(s).unwrap();
            assert_eq!(l.to_string(), s);
            assert_eq!(AllowList::parse(&l.to_string()), Ok(l));
            assert_eq!(AllowList::from_nets(l.nets()), Ok(l));
        }
        assert_eq!(
            AllowList::parse("192.168.1.5").unwrap().to_string(),
            "192.168.1.5/32"
        );
        assert_eq!(AllowList::OPEN.to_string(), "");
        let eight =
            "1.0.0.0/8+2.0.0.0/8+3.0.0.0/8+4.0.0.0/8+5.0.0.0/8+6.0.0.0/8+7.0.0.0/8+8.0.0.0/8";
        assert_eq!(AllowList::parse(eight).unwrap().nets().len(), 8);
        assert_eq!(
            AllowList::parse(&alloc::format!("{eight}+9.0.0.0/8")),
            Err(AclError::TooMany)
        );
        for s in [
            "",
            "+",
            "10.0.0.0/8+",
            "+10.0.0.0/8",
            "10.0.0.0/8++1.0.0.0/8",
        ] {
            assert_eq!(AllowList::parse(s), Err(AclError::Empty), "{s:?}");
        }
        assert_eq!(
            AllowList::parse("10.0.0.0/8,1.0.0.0/8"),
            Err(AclError::Prefix)
        );
    }
}
