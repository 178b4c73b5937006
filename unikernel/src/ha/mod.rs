//! The failover pair: the shared region both guests map ([`region`]), and the rules that
//! decide who may write which node's disks.

/// The region layout, in the formats crate (the host maps the same region).
pub use tandem_formats::pair_region as region;
