//! External origins: a read-only bdev that supplies a volume's (and its
//! snapshots') unprovisioned blocks, as dm-thin's external origin does.
//! Reads of an unprovisioned block inside the origin go to it; the first
//! write to such a block copies it into a new data block (unless the write
//! covers the whole block); blocks past the origin's end read as zeros.
//! The origin may end inside a data block: that block is copied in part
//! and the rest zeroed, and reads are split at the origin's end. It is
//! claimed read-only for as long as a volume uses it, so nothing writes it
//! underneath (no writable export, no delete).

use std::sync::{Arc, Mutex};

use super::ThinError;
use bdev::{Descriptor, IoChannel};

pub struct ExternalOrigin {
    pub name: String,
    desc: Mutex<Descriptor>,
    /// The origin's size in its (the data bdev's) blocks.
    pub num_blocks: u64,
}

impl ExternalOrigin {
    /// Opens and claims `name` read-only for a pool whose data bdev has
    /// `block_size` byte blocks.
    pub fn open(name: &str, block_size: u32) -> Result<Arc<Self>, ThinError> {
        let mut desc = bdev::open(name, false, None)?;
        desc.claim_read_only("thin")
            .map_err(|e| ThinError::Invalid(format!("{name} cannot be an external origin: {e}")))?;
        let origin = desc.bdev().clone();
        if origin.block_size() != block_size {
            return Err(ThinError::Invalid(format!(
                "external origin {name} has {}-byte blocks, the pool's data bdev {block_size}",
                origin.block_size()
            )));
        }
        Ok(Arc::new(ExternalOrigin {
            name: name.to_string(),
            num_blocks: origin.num_blocks(),
            desc: Mutex::new(desc),
        }))
    }

    /// This core's channel to the origin.
    pub fn channel(&self) -> Result<IoChannel, bdev::BdevError> {
        self.desc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .io_channel()
    }

    /// Whether virtual block `vblock` (of `data_block_size` bdev blocks)
    /// starts inside the origin (all of it, or its head when the origin
    /// ends inside it).
    pub fn covers(&self, vblock: u64, data_block_size: u64) -> bool {
        vblock * data_block_size < self.num_blocks
    }

    /// How many of `vblock`'s `data_block_size` bdev blocks the origin has.
    pub fn blocks_in(&self, vblock: u64, data_block_size: u64) -> u64 {
        self.num_blocks
            .saturating_sub(vblock * data_block_size)
            .min(data_block_size)
    }
}
