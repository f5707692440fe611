//! Block checksums: CRC-32C (Castagnoli) seeded with all ones and not
//! inverted at the end, over bytes 4..4096, XOR a salt per block type. The
//! checksum sits in bytes 0..4. (`crc32c` inverts at the end, so we undo it.)

use crate::{Block, MetadataError};

/// What a block claims to be; each kind has its own salt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Superblock,
    Node,
    Bitmap,
    Index,
}

impl BlockKind {
    pub const fn salt(self) -> u32 {
        match self {
            BlockKind::Superblock => 160774,
            BlockKind::Node => 121107,
            BlockKind::Bitmap => 240779,
            BlockKind::Index => 160478,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            BlockKind::Superblock => "superblock",
            BlockKind::Node => "btree node",
            BlockKind::Bitmap => "space map bitmap",
            BlockKind::Index => "space map index",
        }
    }

    /// The kind whose salt a stored checksum implies, if any (how repair
    /// tools recognise blocks).
    pub fn identify(block: &Block) -> Option<BlockKind> {
        let salt = stored(block) ^ raw(block);
        [
            BlockKind::Superblock,
            BlockKind::Node,
            BlockKind::Bitmap,
            BlockKind::Index,
        ]
        .into_iter()
        .find(|k| k.salt() == salt)
    }
}

/// CRC-32C of bytes 4.. with seed !0 and no final inversion.
fn raw(block: &Block) -> u32 {
    crc32c::crc32c(&block[4..]) ^ 0xFFFF_FFFF
}

fn stored(block: &Block) -> u32 {
    u32::from_le_bytes([block[0], block[1], block[2], block[3]])
}

/// The checksum `block` should carry as a `kind`.
pub fn compute(block: &Block, kind: BlockKind) -> u32 {
    raw(block) ^ kind.salt()
}

/// Writes the checksum into bytes 0..4 (the last step before writing).
pub fn seal(block: &mut Block, kind: BlockKind) {
    let c = compute(block, kind);
    block[..4].copy_from_slice(&c.to_le_bytes());
}

/// Checks the stored checksum of block `b`.
pub fn verify(block: &Block, kind: BlockKind, b: u64) -> Result<(), MetadataError> {
    let (s, c) = (stored(block), compute(block, kind));
    if s != c {
        return Err(MetadataError::Checksum {
            block: b,
            kind: kind.name(),
            stored: s,
            computed: c,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BLOCK_SIZE;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn zero_block_vectors_from_the_format_spec() {
        let b = [0u8; BLOCK_SIZE];
        assert_eq!(raw(&b), 0x58CD_A791);
        assert_eq!(compute(&b, BlockKind::Superblock), 0x58CF_D397);
        assert_eq!(compute(&b, BlockKind::Node), 0x58CC_7E82);
        assert_eq!(compute(&b, BlockKind::Bitmap), 0x58CE_0B1A);
        assert_eq!(compute(&b, BlockKind::Index), 0x58CF_D54F);
    }

    #[test]
    fn seal_verify_identify_and_detect_a_flip() {
        let mut b = [0u8; BLOCK_SIZE];
        b[100] = 7;
        seal(&mut b, BlockKind::Bitmap);
        verify(&b, BlockKind::Bitmap, 3).unwrap();
        assert_eq!(BlockKind::identify(&b), Some(BlockKind::Bitmap));
        assert!(verify(&b, BlockKind::Node, 3).is_err());
        b[4000] ^= 1;
        assert!(matches!(
            verify(&b, BlockKind::Bitmap, 3),
            Err(MetadataError::Checksum { block: 3, .. })
        ));
        assert_eq!(BlockKind::identify(&b), None);
    }
}
