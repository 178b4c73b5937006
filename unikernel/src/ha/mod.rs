//! The failover pair: the shared region both guests map ([`region`]), and the rules that
//! decide who may write which node's disks.

pub mod region;
