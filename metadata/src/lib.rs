//! The dm-thin pool metadata, byte-compatible with the Linux dm-thin v2
//! on-disk format (see `shared/docs/metadata-format.md`).
//!
//! Layered like thin-provisioning-tools: an I/O seam ([`io`]) that reads
//! and writes whole 4 KiB blocks and knows nothing of their meaning; the
//! persistent-data layer ([`pdata`]: checksums, block layouts, space maps)
//! on top; the thin pool structures above that. The crate does its I/O only
//! through [`io::BlockIo`], so it runs unchanged on a file, on a bdev from
//! the metadata core, and on the simulated disks of the crash tests.
//!
//! Two ways in. The runtime API ([`thin::pool::Pool`]) is what a running
//! pool uses: a transaction manager (`pdata::tm`) over a block cache,
//! copy-on-write B-tree operations and space maps, committed in dm-thin's
//! order (every dirty block, then the superblock), with metadata
//! snapshots. The whole-image model ([`thin::PoolModel`]) is what the tools
//! use: written bottom-up (as thin_restore does), read back with
//! validation, checked, repaired, and converted to and from the thin_dump
//! XML format. Ids of thin devices are [`thin::DevId`] in every crate.

pub mod fuzz;
pub mod io;
pub mod pdata;
pub mod thin;

/// The metadata block size: every metadata block is 4 KiB.
pub const BLOCK_SIZE: usize = 4096;

/// One metadata block's bytes.
pub type Block = [u8; BLOCK_SIZE];

/// Errors reading or interpreting metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("I/O error on metadata block {block}: {source}")]
    Io { block: u64, source: std::io::Error },
    #[error("block {0} is past the end of the metadata device ({1} blocks)")]
    OutOfRange(u64, u64),
    #[error("block {block}: bad checksum for a {kind} (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        block: u64,
        kind: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("block {block}: records location {recorded} (misdirected or stale)")]
    Location { block: u64, recorded: u64 },
    #[error("block {block}: {what}")]
    Corrupt { block: u64, what: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the metadata device is too small ({0} blocks)")]
    NoSpace(u64),
}
