//! The side table's blocks, on the metadata core. A hidden thin device
//! (`SIDECAR_DEV`) maps two data blocks, one per copy of the table; a copy
//! is written in place (the device is never snapshotted, so its blocks
//! are never shared) before the commit that makes it current, and that
//! commit moves the pool's transaction id to the one the copy carries.
//! The commit's data flush makes the copy durable before the superblock
//! names its transaction, so after a crash the superblock's transaction id
//! picks a complete copy: the new one if the commit landed, else the old.

use std::rc::Rc;

use metadata::thin::DevId;
use metadata::MetadataError;

use super::MetaCore;
use crate::sidecar::{decode_slot, encode_slot, HEADER_BYTES};
use crate::ThinError;

/// The hidden device: the highest id dm-thin allows, which the lowest-free
/// id picking reaches last.
pub const SIDECAR_DEV: DevId = metadata::thin::model::MAX_DEV_ID as DevId;

impl MetaCore {
    pub(crate) fn transaction_id(&self) -> Result<u64, ThinError> {
        self.with_pool(|p| p.transaction_id())
            .ok_or(ThinError::Mode("fail"))
    }

    /// The data blocks of the two copies, or None when the pool has no
    /// side table.
    fn sidecar_blocks(&self) -> Result<Option<[u64; 2]>, ThinError> {
        self.with_pool(|p| -> Result<Option<[u64; 2]>, MetadataError> {
            if p.details(SIDECAR_DEV).is_none() {
                return Ok(None);
            }
            match (p.lookup(SIDECAR_DEV, 0)?, p.lookup(SIDECAR_DEV, 1)?) {
                (Some(a), Some(b)) => Ok(Some([a.block, b.block])),
                _ => Err(MetadataError::Invalid(format!(
                    "side table device {SIDECAR_DEV} does not map its two blocks"
                ))),
            }
        })
        .ok_or(ThinError::Mode("fail"))?
        .map_err(ThinError::Metadata)
    }

    /// Where data block `block` starts on the data bdev, in its blocks.
    fn data_offset_of(&self, block: u64) -> u64 {
        self.shared.data_offset + block * self.shared.data_block_size
    }

    /// Creates the hidden device with its two blocks, the first copy
    /// (`payload`) in one of them, and marks the superblock with `uuid`,
    /// all in one commit: a crash leaves a pool with all of it or none.
    pub(crate) async fn sidecar_format(
        self: &Rc<Self>,
        uuid: [u8; 16],
        payload: &[u8],
    ) -> Result<(), ThinError> {
        self.writable()?;
        self.fits(payload)?;
        let from = self.transaction_id()?;
        let to = from + 1;
        let room = move |c: &Self| {
            if c.exists(SIDECAR_DEV) {
                return Err(ThinError::Exists("a side table".into()));
            }
            if c.transaction_id()? != from {
                return Err(ThinError::Busy(
                    "the transaction id moved while the side table was made".into(),
                ));
            }
            Ok(())
        };
        room(self)?;
        // The blocks are held (allocated, not yet mapped) while the first
        // copy is written into one, as a write provisions a block.
        let mut blocks = Vec::with_capacity(2);
        let give_back = |core: &Self, blocks: &[u64]| {
            core.with_pool(|p| blocks.iter().for_each(|&b| p.free_data_block(b)));
        };
        for _ in 0..2 {
            match self.with_pool(|p| p.alloc_data_block()).flatten() {
                Some(b) => blocks.push(b),
                None => {
                    give_back(self, &blocks);
                    return Err(ThinError::Invalid(
                        "the pool needs two free data blocks for its side table".into(),
                    ));
                }
            }
        }
        if let Err(e) = self
            .write_copy(blocks[(to % 2) as usize], to, payload)
            .await
        {
            give_back(self, &blocks);
            return Err(e);
        }
        let applied = std::cell::Cell::new(false);
        let r = self
            .change(room, |p| {
                applied.set(true);
                p.create_thin(SIDECAR_DEV)?;
                for (vblock, &b) in blocks.iter().enumerate() {
                    p.insert(SIDECAR_DEV, vblock as u64, b)?;
                }
                p.set_uuid(uuid);
                p.set_transaction_id(from, to)
            })
            .await;
        if r.is_err() && !applied.get() {
            give_back(self, &blocks);
        }
        r
    }

    fn fits(&self, payload: &[u8]) -> Result<(), ThinError> {
        let capacity = self.shared.opts.block_size as usize - HEADER_BYTES;
        if payload.len() > capacity {
            return Err(ThinError::Invalid(format!(
                "the side table needs {} bytes and a copy holds {capacity}",
                payload.len()
            )));
        }
        Ok(())
    }

    /// Writes the copy of `payload` for transaction `tid` at the start of
    /// data block `block`.
    async fn write_copy(&self, block: u64, tid: u64, payload: &[u8]) -> Result<(), ThinError> {
        let bdev_block = self.data_ch.bdev().block_size() as usize;
        let bytes = encode_slot(tid, payload);
        let len = bytes.len().div_ceil(bdev_block) * bdev_block;
        let mut buf = bdev::IoBuf::zeroed(len);
        buf.as_mut_slice()[..bytes.len()].copy_from_slice(&bytes);
        self.data_ch
            .write(self.data_offset_of(block), buf)
            .await
            .map_err(|s| ThinError::Io(format!("writing the side table: {s}")))
    }

    /// The current copy's payload: the one written for the committed
    /// transaction id. None when the pool has no side table.
    pub(crate) async fn sidecar_read(&self) -> Result<Option<Vec<u8>>, ThinError> {
        let Some(blocks) = self.sidecar_blocks()? else {
            return Ok(None);
        };
        let tid = self.transaction_id()?;
        let mut seen = Vec::new();
        for block in blocks {
            let buf = self
                .data_ch
                .read(self.data_offset_of(block), self.shared.data_block_size)
                .await
                .map_err(|s| ThinError::Io(format!("reading the side table: {s}")))?;
            match decode_slot(buf.as_slice()) {
                Ok((t, payload)) if t == tid => return Ok(Some(payload)),
                Ok((t, _)) => seen.push(format!("a copy for transaction {t}")),
                Err(why) => seen.push(format!("a damaged copy ({why})")),
            }
        }
        Err(ThinError::Invalid(format!(
            "the side table has no copy for the pool's transaction id {tid}: found {}",
            seen.join(" and ")
        )))
    }

    /// Writes `payload` as the copy for the next transaction id and arms
    /// the move to it: the next control change commits the two together
    /// (or `sidecar_commit` alone). The current copy is not touched.
    pub(crate) async fn sidecar_stage(self: &Rc<Self>, payload: &[u8]) -> Result<(), ThinError> {
        self.writable()?;
        let blocks = self
            .sidecar_blocks()?
            .ok_or_else(|| ThinError::NotFound("side table".into()))?;
        self.fits(payload)?;
        let from = self.transaction_id()?;
        let to = from + 1;
        self.write_copy(blocks[(to % 2) as usize], to, payload)
            .await?;
        self.staged_tid.set(Some((from, to)));
        Ok(())
    }

    /// Commits the staged copy with no other change.
    pub(crate) async fn sidecar_commit(self: &Rc<Self>) -> Result<(), ThinError> {
        self.change(|_| Ok(()), |_| Ok(())).await
    }
}
