//! A side table: a few bytes a layer above keeps with a pool, committed
//! atomically with its dm-thin metadata (the lvol layer keeps its names,
//! UUIDs and parent links there). dm-thin's metadata has no room for
//! them, so they live in two data blocks of a hidden thin device
//! ([`SIDECAR_DEV`]) as two copies, each stamped with the transaction id
//! it belongs to; the copy whose id the committed superblock holds is the
//! current one (how it stays crash-consistent: `meta/sidecar.rs`). To
//! dm-thin, thin_check and the kernel, the pool is an ordinary one with
//! one more thin device of two mapped blocks.
//!
//! A copy as written at the start of its data block (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `FTSIDE01` |
//! | 8..16 | transaction id it belongs to |
//! | 16..20 | payload length |
//! | 20..24 | crc32c of the payload |
//! | 24..60 | zero |
//! | 60..64 | crc32c of bytes 0..60 |
//! | 64.. | payload |

use crate::{PoolHandle, ThinError};

pub use crate::meta::SIDECAR_DEV;

const MAGIC: [u8; 8] = *b"FTSIDE01";
/// The copy's header; the payload follows it.
pub(crate) const HEADER_BYTES: usize = 64;
const HEADER_CRC_AT: usize = 60;

/// A copy's bytes: header, then `payload`.
pub(crate) fn encode_slot(tid: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_BYTES + payload.len()];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..16].copy_from_slice(&tid.to_le_bytes());
    b[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b[20..24].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let hcrc = crc32c::crc32c(&b[..HEADER_CRC_AT]);
    b[HEADER_CRC_AT..HEADER_BYTES].copy_from_slice(&hcrc.to_le_bytes());
    b[HEADER_BYTES..].copy_from_slice(payload);
    b
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A copy's transaction id and payload, or why it is not a whole copy.
pub(crate) fn decode_slot(b: &[u8]) -> Result<(u64, Vec<u8>), String> {
    if b.len() < HEADER_BYTES {
        return Err("shorter than a header".into());
    }
    if b[0..8] != MAGIC {
        return Err("no magic".into());
    }
    if crc32c::crc32c(&b[..HEADER_CRC_AT]) != le32(b, HEADER_CRC_AT) {
        return Err("header checksum mismatch".into());
    }
    let mut tid = [0u8; 8];
    tid.copy_from_slice(&b[8..16]);
    let len = le32(b, 16) as usize;
    let payload = b
        .get(HEADER_BYTES..HEADER_BYTES + len)
        .ok_or_else(|| format!("payload of {len} bytes runs past the block"))?;
    if crc32c::crc32c(payload) != le32(b, 20) {
        return Err("payload checksum mismatch".into());
    }
    Ok((u64::from_le_bytes(tid), payload.to_vec()))
}

/// The uuid field of the pool superblock at the start of `head` (the
/// first 4 KiB of a metadata bdev), when it is one and the field is set:
/// how the lvol layer recognises an lvstore without claiming the bdev.
pub fn marked_superblock_uuid(head: &[u8]) -> Option<[u8; 16]> {
    let block: &metadata::Block = head.get(..metadata::BLOCK_SIZE)?.try_into().ok()?;
    let sb = metadata::pdata::superblock::Superblock::unpack(block, 0).ok()?;
    (sb.uuid != [0; 16]).then_some(sb.uuid)
}

impl PoolHandle {
    /// Bytes a side table may hold in this pool (a data block less the
    /// copy header).
    pub fn side_table_capacity(&self) -> usize {
        self.shared.opts.block_size as usize - HEADER_BYTES
    }

    /// Gives the pool a side table holding `payload` and marks its
    /// superblock with `uuid`, in one commit.
    pub async fn side_table_format(
        &self,
        uuid: [u8; 16],
        payload: Vec<u8>,
    ) -> Result<(), ThinError> {
        self.on_meta(move |core| async move { core.sidecar_format(uuid, &payload).await })
            .await
    }

    /// The committed side table, or None when the pool has none.
    pub async fn side_table(&self) -> Result<Option<Vec<u8>>, ThinError> {
        self.on_meta(|core| async move { core.sidecar_read().await })
            .await
    }

    /// Writes `payload` as the next copy; the next control call that
    /// changes this pool's metadata (a create, snapshot, delete) commits
    /// it with its own change, atomically. Returns the transaction id that
    /// commit will carry, for [`PoolHandle::side_table_landed`].
    pub async fn stage_side_table(&self, payload: Vec<u8>) -> Result<u64, ThinError> {
        self.on_meta(move |core| async move {
            core.sidecar_stage(&payload).await?;
            Ok(core.transaction_id()? + 1)
        })
        .await
    }

    /// Whether the staged copy for transaction `tid` is committed.
    pub async fn side_table_landed(&self, tid: u64) -> Result<bool, ThinError> {
        self.on_meta(move |core| async move { Ok(core.transaction_id()? == tid) })
            .await
    }

    /// Drops a staged copy that no change took (the call failed first).
    pub async fn unstage_side_table(&self) -> Result<(), ThinError> {
        self.on_meta(|core| async move {
            core.staged_tid.set(None);
            Ok(())
        })
        .await
    }

    /// Stages `payload` and commits it alone (a rename, a flag change).
    pub async fn commit_side_table(&self, payload: Vec<u8>) -> Result<(), ThinError> {
        self.on_meta(move |core| async move {
            core.sidecar_stage(&payload).await?;
            core.sidecar_commit().await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_round_trips_and_any_damage_is_seen() {
        let payload = b"lvstore table".to_vec();
        let mut block = encode_slot(7, &payload);
        block.resize(4096, 0);
        assert_eq!(decode_slot(&block), Ok((7, payload.clone())));
        for at in [0, 9, 17, 21, 40, 61, HEADER_BYTES + 3] {
            let mut bad = block.clone();
            bad[at] ^= 1;
            assert!(decode_slot(&bad).is_err(), "a flip at {at} went unseen");
        }
        // A torn write: the header landed, the payload did not.
        let mut torn = block.clone();
        torn[HEADER_BYTES..].fill(0);
        assert!(decode_slot(&torn).is_err());
        assert!(decode_slot(&[0; 4096]).is_err());
    }

    #[test]
    fn a_length_past_the_block_is_refused_not_a_panic() {
        let mut block = encode_slot(1, &[1, 2, 3]);
        block[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let hcrc = crc32c::crc32c(&block[..HEADER_CRC_AT]);
        block[HEADER_CRC_AT..HEADER_BYTES].copy_from_slice(&hcrc.to_le_bytes());
        assert!(decode_slot(&block).unwrap_err().contains("past the block"));
    }
}
