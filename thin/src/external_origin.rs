//! External origins: a read-only bdev that supplies a volume's (and its
//! snapshots') unprovisioned blocks, as dm-thin's external origin does.
//! Reads of an unprovisioned block inside the origin go to it; the first
//! write to such a block copies it into a new data block (unless the write
//! covers the whole block); blocks past the origin's end read as zeros.

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
    /// Opens `name` read-only for a pool whose data bdev has `block_size`
    /// byte blocks and whose data blocks are `data_block_size` of them.
    pub fn open(name: &str, block_size: u32, data_block_size: u64) -> Result<Arc<Self>, ThinError> {
        let desc = bdev::open(name, false, None)?;
        let origin = desc.bdev().clone();
        if origin.block_size() != block_size {
            return Err(ThinError::Invalid(format!(
                "external origin {name} has {}-byte blocks, the pool's data bdev {block_size}",
                origin.block_size()
            )));
        }
        // One data block is then wholly inside the origin or wholly past
        // its end, so no I/O straddles the end (I/O never crosses a block).
        if !origin.num_blocks().is_multiple_of(data_block_size) {
            return Err(ThinError::Invalid(format!(
                "external origin {name}'s size is not a multiple of the pool's block size"
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

    /// Whether virtual block `vblock` (of `data_block_size` bdev blocks) is inside
    /// the origin.
    pub fn covers(&self, vblock: u64, data_block_size: u64) -> bool {
        (vblock + 1) * data_block_size <= self.num_blocks
    }
}
