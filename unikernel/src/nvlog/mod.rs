//! The NVLOG: the write log kept in (emulated) non-volatile memory.
//!
//! A write is acknowledged once its record — a header with sequence number, export, offset,
//! length and a CRC32C over header and payload, plus the payload in whole pages — is in the
//! log region. Consistency points later write logged data to the disks straight from the log
//! pages (HPDI segments over the region: no copy), flush the disks, and retire the records.
//! At start, committed records not yet retired are replayed to the disks; a record whose
//! checksum fails (a torn write) ends replay and is reported.
//!
//! Layout and formats: see `FORMATS.md` at the repository root. Pure logic over a
//! `BufferPool` of 4 KiB pages covering the region; host-tested.

/// The on-region formats, in the formats crate (shared with the host tools).
pub use tandem_formats::nvlog as format;
pub mod log;

#[cfg(test)]
mod mirror_tests;
#[cfg(test)]
mod tests;
