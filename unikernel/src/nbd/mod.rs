//! The NBD protocol (the NetworkBlockDevice project's `doc/proto.md`): fixed-newstyle
//! handshake and transmission-phase request parsing and reply encoding.
//!
//! Pure, incremental, allocation-bounded code: it consumes bytes as the network delivers
//! them and never buffers more than [`handshake::MAX_OPTION_DATA`] bytes for a client, whatever
//! lengths the client announces. Every malformed input has a defined outcome (an error reply
//! that keeps the connection, or closing this connection only), tested byte by byte.

/// Client allow-lists and the NBD wire constants live in the formats crate (the host writes
/// the former on the guest command line and speaks the latter in `tandem check`).
pub use tandem_formats::{allow_list as acl, nbd_wire as wire};
pub mod handshake;
pub mod server;
pub mod tls;
pub mod transmission;

/// One export as the handshake advertises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: alloc::string::String,
    pub description: alloc::string::String,
    pub size: u64,
    pub read_only: bool,
    pub can_trim: bool,
    pub can_write_zeroes: bool,
    /// Smallest addressable unit the export prefers (advertised as minimum block size).
    pub min_block: u32,
    pub preferred_block: u32,
    /// Largest request payload accepted.
    pub max_payload: u32,
    /// The disk's identity for the write log (from its label UUID): replay never writes a
    /// record to another disk.
    pub disk_id: u64,
    /// The client networks this export is served to (empty: every client).
    pub allow: acl::AllowList,
}

impl ExportInfo {
    /// Whether a client at `peer` (`None`: address unknown) may see and use this export.
    pub fn admits(&self, peer: Option<[u8; 4]>) -> bool {
        self.allow.admits(peer)
    }

    /// Transmission flags for this export.
    pub fn transmission_flags(&self) -> u16 {
        use wire::flags::*;
        let mut f = HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_CACHE | SEND_DF;
        if self.read_only {
            f |= READ_ONLY;
        } else {
            if self.can_trim {
                f |= SEND_TRIM;
            }
            if self.can_write_zeroes {
                f |= SEND_WRITE_ZEROES;
            }
        }
        f
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod server_tests;

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod limits_tests;

#[cfg(test)]
mod tls_tests;

#[cfg(test)]
mod tls_interop_tests;
