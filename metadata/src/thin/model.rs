//! A whole pool's metadata as plain data: what dump prints, restore reads,
//! and the model tests compare against.

use std::collections::BTreeMap;

use crate::pdata::superblock::valid_data_block_size;
use crate::pdata::values::{BlockTime, DeviceDetails};
use crate::MetadataError;

/// Thin device ids are 24-bit.
pub const MAX_DEV_ID: u64 = (1 << 24) - 1;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Device {
    pub details: DeviceDetails,
    /// Virtual block -> data block and time.
    pub mappings: BTreeMap<u64, BlockTime>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolModel {
    pub flags: u32,
    pub time: u32,
    pub trans_id: u64,
    /// In 512-byte sectors.
    pub data_block_size: u32,
    pub nr_data_blocks: u64,
    pub devices: BTreeMap<u64, Device>,
}

impl PoolModel {
    /// Checks what a writer must refuse: bad sizes, ids or mappings, and
    /// details that disagree with the mappings.
    pub fn validate(&self) -> Result<(), MetadataError> {
        let bad = |m: String| Err(MetadataError::Invalid(m));
        if !valid_data_block_size(self.data_block_size) {
            return bad(format!(
                "data block size {} sectors is not 64 KiB..1 GiB in 64 KiB steps",
                self.data_block_size
            ));
        }
        if self.time > BlockTime::MAX_TIME {
            return bad(format!("pool time {} does not fit in 24 bits", self.time));
        }
        for (id, d) in &self.devices {
            if *id > MAX_DEV_ID {
                return bad(format!("device id {id} is not a 24-bit id"));
            }
            if d.details.mapped_blocks != d.mappings.len() as u64 {
                return bad(format!(
                    "device {id}: mapped_blocks is {} but it has {} mappings",
                    d.details.mapped_blocks,
                    d.mappings.len()
                ));
            }
            if let Some((v, m)) = d
                .mappings
                .iter()
                .find(|(_, m)| m.block >= self.nr_data_blocks || m.time > BlockTime::MAX_TIME)
            {
                return bad(format!(
                    "device {id}: block {v} maps to data block {} (time {}) outside the {} data blocks",
                    m.block, m.time, self.nr_data_blocks
                ));
            }
        }
        Ok(())
    }
}
