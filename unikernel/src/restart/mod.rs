//! Fast restart (issue 5): the on-disk label every data disk carries, the configuration
//! checkpoint that lets a restart skip discovery, the start-up decision between the two
//! ([`startup`]), and when an error restarts the guest in place ([`policy`]).
//!
//! Pure formats and validation, host-tested. The kernel (`src/kernel/`) writes labels on
//! first use, writes a checkpoint after a cold initialisation, and on later starts loads the
//! newest valid slot and validates it against what it names (device ids at their locations,
//! disk labels) before configuring from it.

/// Formats in the formats crate (the host writes labels on appliance disks).
pub use tandem_formats::{checkpoint, disk_label as label};

pub mod policy;
pub mod startup;
