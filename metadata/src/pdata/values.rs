//! Fixed-size values stored in B-tree leaves and in the superblock.

use super::le::{put_u32, put_u64, u32_at, u64_at};

/// A level-1 mapping: data block (40 bits) and the pool time (24 bits)
/// when it was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockTime {
    pub block: u64,
    pub time: u32,
}

impl BlockTime {
    pub const MAX_BLOCK: u64 = (1 << 40) - 1;
    pub const MAX_TIME: u32 = (1 << 24) - 1;

    /// Packs; `None` if either part does not fit (the kernel would silently
    /// corrupt the block number with a time past 2^24; we refuse).
    pub fn pack(self) -> Option<u64> {
        (self.block <= Self::MAX_BLOCK && self.time <= Self::MAX_TIME)
            .then_some((self.block << 24) | self.time as u64)
    }

    pub fn unpack(v: u64) -> BlockTime {
        BlockTime {
            block: v >> 24,
            time: (v & 0xFF_FFFF) as u32,
        }
    }
}

/// A thin device's details (24 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceDetails {
    pub mapped_blocks: u64,
    pub transaction_id: u64,
    pub creation_time: u32,
    pub snapshotted_time: u32,
}

impl DeviceDetails {
    pub const SIZE: usize = 24;

    pub fn pack(&self, out: &mut [u8]) {
        put_u64(out, 0, self.mapped_blocks);
        put_u64(out, 8, self.transaction_id);
        put_u32(out, 16, self.creation_time);
        put_u32(out, 20, self.snapshotted_time);
    }

    pub fn unpack(b: &[u8]) -> DeviceDetails {
        DeviceDetails {
            mapped_blocks: u64_at(b, 0),
            transaction_id: u64_at(b, 8),
            creation_time: u32_at(b, 16),
            snapshotted_time: u32_at(b, 20),
        }
    }
}

/// A space map's index entry (16 bytes): where a bitmap is and two
/// allocation hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IndexEntry {
    pub blocknr: u64,
    pub nr_free: u32,
    pub none_free_before: u32,
}

impl IndexEntry {
    pub const SIZE: usize = 16;

    pub fn pack(&self, out: &mut [u8]) {
        put_u64(out, 0, self.blocknr);
        put_u32(out, 8, self.nr_free);
        put_u32(out, 12, self.none_free_before);
    }

    pub fn unpack(b: &[u8]) -> IndexEntry {
        IndexEntry {
            blocknr: u64_at(b, 0),
            nr_free: u32_at(b, 8),
            none_free_before: u32_at(b, 12),
        }
    }
}

/// A space map's root, as stored in the superblock (128 bytes, 32 used).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SmRoot {
    pub nr_blocks: u64,
    pub nr_allocated: u64,
    pub bitmap_root: u64,
    pub ref_count_root: u64,
}

impl SmRoot {
    pub const SIZE: usize = 128;

    pub fn pack(&self, out: &mut [u8]) {
        out[..Self::SIZE].fill(0);
        put_u64(out, 0, self.nr_blocks);
        put_u64(out, 8, self.nr_allocated);
        put_u64(out, 16, self.bitmap_root);
        put_u64(out, 24, self.ref_count_root);
    }

    pub fn unpack(b: &[u8]) -> SmRoot {
        SmRoot {
            nr_blocks: u64_at(b, 0),
            nr_allocated: u64_at(b, 8),
            bitmap_root: u64_at(b, 16),
            ref_count_root: u64_at(b, 24),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_time_examples_from_the_spec() {
        assert_eq!(
            BlockTime {
                block: 100,
                time: 0
            }
            .pack(),
            Some(0x0000_0000_6400_0000)
        );
        assert_eq!(
            BlockTime { block: 3, time: 1 }.pack(),
            Some(0x0000_0000_0300_0001)
        );
        assert_eq!(
            BlockTime::unpack(0x0000_0000_0300_0001),
            BlockTime { block: 3, time: 1 }
        );
        assert_eq!(
            BlockTime {
                block: 1,
                time: 1 << 24
            }
            .pack(),
            None
        );
        assert_eq!(
            BlockTime {
                block: 1 << 40,
                time: 0
            }
            .pack(),
            None
        );
    }

    #[test]
    fn round_trips() {
        let d = DeviceDetails {
            mapped_blocks: 5,
            transaction_id: 9,
            creation_time: 2,
            snapshotted_time: 3,
        };
        let mut b = [0u8; 24];
        d.pack(&mut b);
        assert_eq!(DeviceDetails::unpack(&b), d);
        let i = IndexEntry {
            blocknr: 3,
            nr_free: 4084,
            none_free_before: 12,
        };
        let mut b = [0u8; 16];
        i.pack(&mut b);
        assert_eq!(IndexEntry::unpack(&b), i);
    }
}
