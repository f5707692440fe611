//! The superblock (block 0): 364 bytes of fields, the rest zero.

use super::checksum::{seal, verify, BlockKind};
use super::le::{put_u32, put_u64, u32_at, u64_at};
use super::values::SmRoot;
use crate::{Block, MetadataError, BLOCK_SIZE};

pub const MAGIC: u64 = 27022010;
pub const VERSION: u32 = 2;
pub const NEEDS_CHECK: u32 = 1;
/// Metadata block size in 512-byte sectors.
pub const METADATA_BLOCK_SECTORS: u32 = 8;
/// Data block size limits in sectors: 64 KiB to 1 GiB in 64 KiB steps.
pub const MIN_DATA_BLOCK_SECTORS: u32 = 128;
pub const MAX_DATA_BLOCK_SECTORS: u32 = 2_097_152;

const CSUM: usize = 0x000;
const FLAGS: usize = 0x004;
const BLOCKNR: usize = 0x008;
const UUID: usize = 0x010;
const MAGIC_OFF: usize = 0x020;
const VERSION_OFF: usize = 0x028;
const TIME: usize = 0x02C;
const TRANS_ID: usize = 0x030;
const HELD_ROOT: usize = 0x038;
const DATA_SM_ROOT: usize = 0x040;
const METADATA_SM_ROOT: usize = 0x0C0;
const DATA_MAPPING_ROOT: usize = 0x140;
const DEVICE_DETAILS_ROOT: usize = 0x148;
const DATA_BLOCK_SIZE: usize = 0x150;
const METADATA_BLOCK_SIZE: usize = 0x154;
const METADATA_NR_BLOCKS: usize = 0x158;
const COMPAT_FLAGS: usize = 0x160;
const COMPAT_RO_FLAGS: usize = 0x164;
const INCOMPAT_FLAGS: usize = 0x168;
/// Where the fields end; everything after is zero.
pub const SUPERBLOCK_LEN: usize = 0x16C;

const _: () = assert!(CSUM == 0 && UUID + 16 == MAGIC_OFF);
const _: () = assert!(DATA_SM_ROOT + SmRoot::SIZE == METADATA_SM_ROOT);
const _: () = assert!(METADATA_SM_ROOT + SmRoot::SIZE == DATA_MAPPING_ROOT);
const _: () = assert!(INCOMPAT_FLAGS + 4 == SUPERBLOCK_LEN && SUPERBLOCK_LEN == 364);
const _: () = assert!(
    SUPERBLOCK_LEN <= 512,
    "a superblock update must stay within one sector"
);

/// The superblock's fields.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Superblock {
    pub flags: u32,
    /// 0 for the live superblock; its own location for a metadata-snapshot copy.
    pub blocknr: u64,
    pub uuid: [u8; 16],
    pub magic: u64,
    pub version: u32,
    pub time: u32,
    pub trans_id: u64,
    pub held_root: u64,
    pub data_sm_root: SmRoot,
    pub metadata_sm_root: SmRoot,
    pub data_mapping_root: u64,
    pub device_details_root: u64,
    pub data_block_size: u32,
    pub metadata_block_size: u32,
    pub metadata_nr_blocks: u64,
    pub compat_flags: u32,
    pub compat_ro_flags: u32,
    pub incompat_flags: u32,
}

impl Superblock {
    pub fn needs_check(&self) -> bool {
        self.flags & NEEDS_CHECK != 0
    }

    /// Encodes into a fresh block with the checksum set.
    pub fn pack(&self) -> Box<Block> {
        let mut b: Box<Block> = Box::new([0u8; BLOCK_SIZE]);
        put_u32(&mut b[..], FLAGS, self.flags);
        put_u64(&mut b[..], BLOCKNR, self.blocknr);
        b[UUID..UUID + 16].copy_from_slice(&self.uuid);
        put_u64(&mut b[..], MAGIC_OFF, self.magic);
        put_u32(&mut b[..], VERSION_OFF, self.version);
        put_u32(&mut b[..], TIME, self.time);
        put_u64(&mut b[..], TRANS_ID, self.trans_id);
        put_u64(&mut b[..], HELD_ROOT, self.held_root);
        self.data_sm_root.pack(&mut b[DATA_SM_ROOT..]);
        self.metadata_sm_root.pack(&mut b[METADATA_SM_ROOT..]);
        put_u64(&mut b[..], DATA_MAPPING_ROOT, self.data_mapping_root);
        put_u64(&mut b[..], DEVICE_DETAILS_ROOT, self.device_details_root);
        put_u32(&mut b[..], DATA_BLOCK_SIZE, self.data_block_size);
        put_u32(&mut b[..], METADATA_BLOCK_SIZE, self.metadata_block_size);
        put_u64(&mut b[..], METADATA_NR_BLOCKS, self.metadata_nr_blocks);
        put_u32(&mut b[..], COMPAT_FLAGS, self.compat_flags);
        put_u32(&mut b[..], COMPAT_RO_FLAGS, self.compat_ro_flags);
        put_u32(&mut b[..], INCOMPAT_FLAGS, self.incompat_flags);
        seal(&mut b, BlockKind::Superblock);
        b
    }

    /// Decodes block `at` (0 for the live superblock, `held_root` for a
    /// metadata-snapshot copy), checking what the kernel checks: location,
    /// magic, checksum; then the feature words.
    pub fn unpack(b: &Block, at: u64) -> Result<Superblock, MetadataError> {
        let corrupt = |what: String| MetadataError::Corrupt { block: at, what };
        let blocknr = u64_at(b, BLOCKNR);
        if blocknr != at {
            return Err(MetadataError::Location {
                block: at,
                recorded: blocknr,
            });
        }
        let magic = u64_at(b, MAGIC_OFF);
        if magic != MAGIC {
            return Err(corrupt(format!(
                "bad superblock magic {magic} (expected {MAGIC})"
            )));
        }
        verify(b, BlockKind::Superblock, at)?;
        let sb = Superblock {
            flags: u32_at(b, FLAGS),
            blocknr,
            uuid: b[UUID..UUID + 16].try_into().unwrap_or([0; 16]),
            magic,
            version: u32_at(b, VERSION_OFF),
            time: u32_at(b, TIME),
            trans_id: u64_at(b, TRANS_ID),
            held_root: u64_at(b, HELD_ROOT),
            data_sm_root: SmRoot::unpack(&b[DATA_SM_ROOT..]),
            metadata_sm_root: SmRoot::unpack(&b[METADATA_SM_ROOT..]),
            data_mapping_root: u64_at(b, DATA_MAPPING_ROOT),
            device_details_root: u64_at(b, DEVICE_DETAILS_ROOT),
            data_block_size: u32_at(b, DATA_BLOCK_SIZE),
            metadata_block_size: u32_at(b, METADATA_BLOCK_SIZE),
            metadata_nr_blocks: u64_at(b, METADATA_NR_BLOCKS),
            compat_flags: u32_at(b, COMPAT_FLAGS),
            compat_ro_flags: u32_at(b, COMPAT_RO_FLAGS),
            incompat_flags: u32_at(b, INCOMPAT_FLAGS),
        };
        if sb.incompat_flags != 0 {
            return Err(corrupt(format!(
                "unsupported incompatible features {:#x}",
                sb.incompat_flags
            )));
        }
        if !(1..=2).contains(&sb.version) {
            return Err(corrupt(format!(
                "unsupported metadata version {}",
                sb.version
            )));
        }
        if sb.metadata_block_size != METADATA_BLOCK_SECTORS {
            return Err(corrupt(format!(
                "metadata block size {} sectors is not 8",
                sb.metadata_block_size
            )));
        }
        if !valid_data_block_size(sb.data_block_size) {
            return Err(corrupt(format!(
                "invalid data block size {} sectors",
                sb.data_block_size
            )));
        }
        Ok(sb)
    }
}

/// 64 KiB to 1 GiB, a multiple of 64 KiB (in 512-byte sectors).
pub fn valid_data_block_size(sectors: u32) -> bool {
    (MIN_DATA_BLOCK_SECTORS..=MAX_DATA_BLOCK_SECTORS).contains(&sectors)
        && sectors.is_multiple_of(MIN_DATA_BLOCK_SECTORS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The superblock of the format spec's section 2.4 (made by thin_restore
    /// 0.9.0): our encoding must give its stored checksum, 0x9f9a7a42.
    fn spec_example() -> Superblock {
        Superblock {
            magic: MAGIC,
            version: 2,
            time: 1,
            trans_id: 5,
            data_sm_root: SmRoot {
                nr_blocks: 1000,
                nr_allocated: 4,
                bitmap_root: 4,
                ref_count_root: 5,
            },
            metadata_sm_root: SmRoot {
                nr_blocks: 4096,
                nr_allocated: 12,
                bitmap_root: 1,
                ref_count_root: 2,
            },
            data_mapping_root: 7,
            device_details_root: 6,
            data_block_size: 128,
            metadata_block_size: 8,
            metadata_nr_blocks: 4096,
            ..Default::default()
        }
    }

    #[test]
    fn matches_a_real_superblock_byte_for_byte() {
        let b = spec_example().pack();
        assert_eq!(&b[..4], &[0x42, 0x7a, 0x9a, 0x9f]);
        assert_eq!(
            &b[0x20..0x30],
            &[0xba, 0x52, 0x9c, 0x01, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]
        );
        assert!(b[SUPERBLOCK_LEN..].iter().all(|&x| x == 0));
        assert_eq!(Superblock::unpack(&b, 0).unwrap(), spec_example());
    }

    #[test]
    fn damage_is_reported_not_panicked() {
        let good = spec_example().pack();
        let mut b = good.clone();
        b[0x100] ^= 1;
        assert!(matches!(
            Superblock::unpack(&b, 0),
            Err(MetadataError::Checksum { .. })
        ));
        assert!(matches!(
            Superblock::unpack(&good, 7),
            Err(MetadataError::Location { .. })
        ));
        let mut m = spec_example();
        m.magic = 1;
        assert!(matches!(
            Superblock::unpack(&m.pack(), 0),
            Err(MetadataError::Corrupt { .. })
        ));
        for f in [
            |s: &mut Superblock| s.incompat_flags = 1,
            |s: &mut Superblock| s.version = 3,
            |s: &mut Superblock| s.metadata_block_size = 16,
            |s: &mut Superblock| s.data_block_size = 100,
        ] {
            let mut s = spec_example();
            f(&mut s);
            assert!(
                matches!(
                    Superblock::unpack(&s.pack(), 0),
                    Err(MetadataError::Corrupt { .. })
                ),
                "{s:?}"
            );
        }
        assert!(
            Superblock::unpack(&[0u8; BLOCK_SIZE], 0).is_err(),
            "an all-zero block is not a superblock"
        );
    }

    #[test]
    fn data_block_sizes() {
        assert!(
            valid_data_block_size(128)
                && valid_data_block_size(2_097_152)
                && valid_data_block_size(256)
        );
        assert!(
            !valid_data_block_size(64)
                && !valid_data_block_size(200)
                && !valid_data_block_size(4_194_304)
        );
    }
}
