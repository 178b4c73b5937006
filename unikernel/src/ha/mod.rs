//! The failover pair: the shared region both guests map ([`region`]), and the rules that
//! decide who may write which node's disks ([`protocol`], one node's side, turn by turn).
//! After a takeover, [`reset`] tells the peer's clients at once that their connections are
//! gone, from the connection tables in the region.

/// The region layout, in the formats crate (the host maps the same region).
pub use tandem_formats::pair_region as region;

pub mod protocol;
pub mod reset;
