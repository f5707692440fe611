//! The slow path: I/O the fast path handed to the metadata core.
//!
//! A read or write arrives here when its block is unmapped (writes),
//! shared (writes), busy, or its volume is frozen. It holds the block's
//! cell, does what the block needs (allocate; zero, copy, or let a
//! whole-block write land first; insert the mapping), releases the cell
//! and tells the I/O core to retry: the fast path then finds the block
//! mapped and unshared. I/O that waited in the cell retries too, in the
//! order it arrived.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use reactor::oneshot;

use super::MetaCore;
use crate::options::{DiscardMode, PoolMode};
use crate::shared::{PoolShared, VolumeShared};
use crate::slow_path::{Reply, SlowKind, SlowReq};
use crate::table::{mapped, BLOCK_MASK, BUSY, MAPPED, SHARED};
use bdev::{IoBuf, IoStatus};

const EIO: IoStatus = IoStatus::IoError(libc::EIO);

/// Entry point on the metadata core for a slow request.
pub(crate) fn dispatch(pool: Arc<PoolShared>, req: SlowReq) {
    let Some(core) = super::lookup(super::key(&pool)) else {
        req.reply(Reply::Done(IoStatus::IoError(libc::ENODEV)));
        return;
    };
    reactor::spawn_local(async move { core.serve(req).await }).detach();
}

/// A whole-block write finished on its I/O core.
pub(crate) fn confirm(
    pool: Arc<PoolShared>,
    uid: u64,
    reply_core: u32,
    token: u64,
    status: IoStatus,
) {
    if let Some(core) = super::lookup(super::key(&pool)) {
        let tx = core
            .confirms
            .borrow_mut()
            .remove(&(uid, confirm_key(reply_core, token)));
        if let Some(tx) = tx {
            tx.send(status);
        }
    }
}

/// Tokens are per channel, so a confirmation is known by core and token.
fn confirm_key(core: u32, token: u64) -> u64 {
    (core as u64) << 48 | token
}

/// Why a block could not be had.
enum AllocError {
    NoSpace,
    Failed,
}

impl MetaCore {
    pub(super) async fn serve(self: Rc<Self>, req: SlowReq) {
        if self.closed.get() {
            req.reply(Reply::Done(IoStatus::IoError(libc::ENODEV)));
            return;
        }
        let Some(req) = self.hold_if_suspended(req) else {
            return;
        };
        if req.vol.is_read_only() && req.kind.changes_data() {
            req.reply(Reply::Done(IoStatus::IoError(libc::EROFS)));
            return;
        }
        let _serving = super::suspend::Serving::new(&req.vol);
        match req.kind {
            SlowKind::Read { vblock } => {
                // It came here because the block was busy: wait for the
                // holder, then retry.
                if let Some(req) = self.try_hold(req, vblock) {
                    self.release(&req.vol, vblock);
                    req.reply(Reply::Retry);
                }
            }
            SlowKind::Write { vblock, whole } => {
                let Some(req) = self.try_hold(req, vblock) else {
                    return;
                };
                let reply = self.write(&req, vblock, whole).await;
                self.release(&req.vol, vblock);
                req.reply(reply);
            }
            SlowKind::Flush => {
                // Sticky, as dm-thin's aborted-with-changes: every flush
                // fails until the device is activated anew, since no later
                // commit can bring back what the abort threw away.
                let result = if req.vol.aborted.load(Ordering::Acquire) {
                    Err(EIO)
                } else {
                    self.commit_now().await
                };
                req.reply(Reply::Done(match result {
                    Ok(()) => IoStatus::Success,
                    Err(status) => status,
                }));
            }
            SlowKind::Discard { offset, num_blocks } => {
                let status = self.discard(&req.vol, offset, num_blocks, false).await;
                req.reply(Reply::Done(status));
            }
            SlowKind::WriteZeroes { offset, num_blocks } => {
                let status = self.write_zeroes(&req.vol, offset, num_blocks).await;
                req.reply(Reply::Done(status));
            }
        }
    }

    /// A write that needs a block (its cell is held).
    async fn write(self: &Rc<Self>, req: &SlowReq, vblock: u64, whole: bool) -> Reply {
        let vol = &req.vol;
        loop {
            while vol.is_frozen() {
                self.thaw.wait().await;
            }
            let entry = vol.table.get(vblock) & !BUSY;
            let exclusive = entry & MAPPED != 0 && entry & SHARED == 0;
            let mode = self.shared.mode();
            if mode == PoolMode::Fail {
                return Reply::Done(EIO);
            }
            if exclusive {
                return Reply::Retry;
            }
            if !mode.metadata_writable() {
                return Reply::Done(EIO);
            }
            let data_block = match self.alloc().await {
                Ok(data_block) => data_block,
                Err(AllocError::Failed) => return Reply::Done(EIO),
                Err(AllocError::NoSpace) => {
                    if self.shared.error_if_no_space.load(Ordering::Acquire) {
                        return Reply::Done(IoStatus::NoSpace);
                    }
                    // Queue until space comes back, the timeout fires or
                    // the pool degrades; then look again.
                    self.space.wait().await;
                    if self.shared.mode() == PoolMode::OutOfDataSpace
                        && self.shared.error_if_no_space.load(Ordering::Acquire)
                    {
                        return Reply::Done(IoStatus::NoSpace);
                    }
                    continue;
                }
            };
            let prepared = if whole && self.closed.get() {
                IoStatus::IoError(libc::ENODEV)
            } else if whole {
                // The caller's data fills the block: it lands first.
                let (tx, rx) = oneshot::channel();
                self.confirms
                    .borrow_mut()
                    .insert((vol.uid, confirm_key(req.reply_core, req.token)), tx);
                req.reply(Reply::WriteTo(data_block));
                rx.await.unwrap_or(EIO)
            } else if entry & MAPPED != 0 {
                self.copy_block(entry & BLOCK_MASK, data_block).await
            } else if let Some(origin) = vol
                .origin
                .as_ref()
                .filter(|origin| origin.covers(vblock, self.shared.data_block_size))
            {
                self.copy_from_origin(origin, vblock, data_block).await
            } else if self.shared.options().zero_new_blocks {
                self.zero_block(data_block).await
            } else {
                IoStatus::Success
            };
            self.unlocked().await;
            if !prepared.is_success() || !self.shared.mode().metadata_writable() {
                self.with_pool(|p| p.free_data_block(data_block));
                return Reply::Done(if prepared.is_success() { EIO } else { prepared });
            }
            if !self.is_active(vol) {
                // Deactivated or deleted while the block was prepared: the
                // block goes back, and nothing is mapped for a device that
                // may no longer exist.
                self.with_pool(|p| p.free_data_block(data_block));
                return Reply::Done(IoStatus::IoError(libc::ENODEV));
            }
            if self.metadata_headroom() == 0 {
                // The mapping would eat into the reserve: commit (or find
                // the pool out of metadata space) first, then start over.
                self.with_pool(|p| p.free_data_block(data_block));
                if self.make_metadata_room().await.is_err() {
                    return Reply::Done(EIO);
                }
                continue;
            }
            let inserted = self.with_pool(|p| p.insert(vol.dev_id, vblock, data_block));
            if !matches!(inserted, Some(Ok(()))) {
                tracing::error!(pool = %self.shared.name, ?inserted, "mapping insert failed");
                self.metadata_failed().await;
                return Reply::Done(EIO);
            }
            vol.table.set(vblock, mapped(data_block, false) | BUSY);
            self.mark_changed(vol);
            if entry & MAPPED != 0 {
                self.released.borrow_mut().insert(vol.dev_id);
                self.shared.with_stats(|s| s.copied += 1);
            } else {
                self.shared.with_stats(|s| s.provisioned += 1);
            }
            return if whole {
                Reply::Done(IoStatus::Success)
            } else {
                Reply::Retry
            };
        }
    }

    /// Whether `vol` is the pool's active volume for its device (not
    /// deactivated or deleted since its I/O came here).
    pub(super) fn is_active(&self, vol: &Arc<VolumeShared>) -> bool {
        self.volumes
            .borrow()
            .get(&vol.dev_id)
            .is_some_and(|v| Arc::ptr_eq(v, vol))
    }

    /// A free data block; commits once to recycle blocks freed in this
    /// transaction before declaring the pool full.
    async fn alloc(self: &Rc<Self>) -> Result<u64, AllocError> {
        for attempt in 0..2 {
            self.unlocked().await;
            if !self.shared.mode().metadata_writable() {
                return Err(AllocError::Failed);
            }
            let got = self.with_pool(|p| {
                let free = p.nr_free_data_blocks();
                (free, p.alloc_data_block())
            });
            let Some((free, got)) = got else {
                return Err(AllocError::Failed);
            };
            self.check_data_low_water(free);
            self.check_autoextend(true);
            if let Some(data_block) = got {
                self.dirty.set(true);
                return Ok(data_block);
            }
            if self.shared.mode() == PoolMode::OutOfDataSpace {
                return Err(AllocError::NoSpace);
            }
            if attempt == 0 && self.commit_now().await.is_err() {
                return Err(AllocError::Failed);
            }
        }
        self.enter_no_space();
        Err(AllocError::NoSpace)
    }

    fn data_lba(&self, data_block: u64) -> u64 {
        self.shared.data_offset + data_block * self.shared.data_block_size
    }

    pub(super) async fn zero_block(&self, data_block: u64) -> IoStatus {
        self.zero_range(self.data_lba(data_block), self.shared.data_block_size)
            .await
    }

    /// Zeroes data-bdev blocks, with WRITE_ZEROES where the bdev has it.
    async fn zero_range(&self, lba: u64, len: u64) -> IoStatus {
        let result = if self
            .data_ch
            .bdev()
            .io_type_supported(bdev::IoType::WriteZeroes)
        {
            self.data_ch.write_zeroes(lba, len).await
        } else {
            let block_size = self.data_ch.bdev().block_size() as u64;
            self.data_ch
                .write(lba, IoBuf::zeroed((len * block_size) as usize))
                .await
        };
        result.err().unwrap_or(IoStatus::Success)
    }

    /// Copies data block `from` to `to` (breaking sharing).
    async fn copy_block(&self, from: u64, to: u64) -> IoStatus {
        let data_block_size = self.shared.data_block_size;
        let buf = match self
            .data_ch
            .read(self.data_lba(from), data_block_size)
            .await
        {
            Ok(buf) => buf,
            Err(status) => return status,
        };
        match self.data_ch.write(self.data_lba(to), buf).await {
            Ok(()) => IoStatus::Success,
            Err(status) => status,
        }
    }

    /// Copies virtual block `vblock` of the external origin into data block `to`.
    async fn copy_from_origin(
        &self,
        origin: &crate::external_origin::ExternalOrigin,
        vblock: u64,
        to: u64,
    ) -> IoStatus {
        let data_block_size = self.shared.data_block_size;
        let ch = match origin.channel() {
            Ok(c) => c,
            Err(_) => return EIO,
        };
        let have = origin.blocks_in(vblock, data_block_size);
        let mut buf = match ch.read(vblock * data_block_size, have).await {
            Ok(buf) => buf,
            Err(status) => return status,
        };
        if have < data_block_size {
            // The origin ends inside this block: the rest reads as zeros,
            // and so must the copy (as dm-thin copies a partial tail).
            let bytes = buf.as_slice().len() / have as usize * data_block_size as usize;
            let mut whole = bdev::IoBuf::zeroed(bytes);
            whole.as_mut_slice()[..buf.as_slice().len()].copy_from_slice(buf.as_slice());
            buf = whole;
        }
        match self.data_ch.write(self.data_lba(to), buf).await {
            Ok(()) => IoStatus::Success,
            Err(status) => status,
        }
    }

    /// Holds the cells of `[lo, hi)` (virtual blocks), in order.
    async fn hold_range(&self, vol: &VolumeShared, lo: u64, hi: u64) {
        for vblock in lo..hi {
            self.hold(vol, vblock).await;
        }
    }

    fn release_range(&self, vol: &VolumeShared, lo: u64, hi: u64) {
        for vblock in lo..hi {
            self.release(vol, vblock);
        }
    }

    /// Waits for the volume's fast-path I/O issued before now.
    pub(crate) async fn drain(&self, vol: &VolumeShared) -> bool {
        self.drain_within(vol, std::time::Duration::from_secs(30))
            .await
    }

    /// `drain`, waiting at most `timeout`.
    pub(crate) async fn drain_within(
        &self,
        vol: &VolumeShared,
        timeout: std::time::Duration,
    ) -> bool {
        let _d = self.drain_lock.lock().await;
        let parity = vol.epochs.flip();
        vol.epochs.wait(parity, timeout).await
    }

    /// Unmaps the whole data blocks inside `num_blocks` bdev blocks at `offset`;
    /// passes freed blocks down to the data bdev when asked. `zeroing`:
    /// this is write-zeroes, which must unmap even when discards are off.
    pub(crate) async fn discard(
        self: &Rc<Self>,
        vol: &Arc<VolumeShared>,
        offset: u64,
        num_blocks: u64,
        zeroing: bool,
    ) -> IoStatus {
        let data_block_size = self.shared.data_block_size;
        let lo = offset.div_ceil(data_block_size);
        let hi = (offset + num_blocks) / data_block_size;
        let mode = self.shared.mode();
        if mode == PoolMode::Fail {
            return EIO;
        }
        if hi <= lo {
            return IoStatus::Success;
        }
        if !mode.metadata_writable() {
            // dm-thin's read-only discard: succeeds and changes nothing.
            return if zeroing { EIO } else { IoStatus::Success };
        }
        // A range at a time, so a huge discard does not hold everything.
        const CHUNK: u64 = 1024;
        let mut at = lo;
        while at < hi {
            let end = (at - at % CHUNK + CHUNK).min(hi);
            match self.discard_chunk(vol, at, end, zeroing).await {
                Ok(next) if next == end => at = end,
                Ok(next) => {
                    // Stopped short of the reserve: make room and go on.
                    if self.make_metadata_room().await.is_err() {
                        // dm-thin's discard without metadata room:
                        // nothing more is unmapped, and that is no error.
                        return if zeroing { EIO } else { IoStatus::Success };
                    }
                    at = next;
                }
                Err(status) => return status,
            }
        }
        IoStatus::Success
    }

    /// Unmaps `[lo, hi)`; returns where it stopped: `hi`, or earlier when
    /// the next removal could eat into the metadata reserve.
    async fn discard_chunk(
        self: &Rc<Self>,
        vol: &Arc<VolumeShared>,
        lo: u64,
        hi: u64,
        zeroing: bool,
    ) -> Result<u64, IoStatus> {
        self.hold_range(vol, lo, hi).await;
        // Earlier I/O to these blocks finishes before they are unmapped.
        if !self.drain(vol).await {
            self.release_range(vol, lo, hi);
            return Err(EIO);
        }
        self.unlocked().await;
        if !self.shared.mode().metadata_writable() {
            self.release_range(vol, lo, hi);
            return if zeroing { Err(EIO) } else { Ok(hi) };
        }
        if !self.is_active(vol) {
            self.release_range(vol, lo, hi);
            return Err(IoStatus::IoError(libc::ENODEV));
        }
        let passdown = self.shared.discard() == DiscardMode::Passdown;
        let mut freed = Vec::new();
        let mut failed = false;
        let mut removed = false;
        let mut stopped = hi;
        for vblock in lo..hi {
            if vol.table.get(vblock) & MAPPED == 0 {
                continue;
            }
            if self.metadata_headroom() == 0 {
                stopped = vblock;
                break;
            }
            match self.with_pool(|p| {
                let old = p.remove(vol.dev_id, vblock)?;
                Ok::<_, metadata::MetadataError>(
                    old.map(|data_block| (data_block, p.data_block_count(data_block))),
                )
            }) {
                Some(Ok(Some((data_block, count)))) => {
                    removed = true;
                    vol.table.set(vblock, BUSY);
                    if passdown && count == 0 {
                        freed.push(data_block);
                    }
                }
                Some(Ok(None)) => vol.table.set(vblock, BUSY),
                _ => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.release_range(vol, lo, hi);
            self.metadata_failed().await;
            return Err(EIO);
        }
        if removed {
            self.mark_changed(vol);
            self.released.borrow_mut().insert(vol.dev_id);
        }
        if !freed.is_empty() {
            // The blocks are free but cannot be reused before the next
            // commit, and the commit waits for these.
            self.passdowns.set(self.passdowns.get() + 1);
            self.pass_down(freed).await;
            self.passdowns.set(self.passdowns.get() - 1);
            if self.passdowns.get() == 0 {
                self.passdowns_done.notify_all();
            }
        }
        self.release_range(vol, lo, hi);
        Ok(stopped)
    }

    /// Unmaps runs of data blocks on the data bdev (errors are ignored:
    /// the blocks are already free in the pool).
    async fn pass_down(&self, mut blocks: Vec<u64>) {
        if !self.data_ch.bdev().io_type_supported(bdev::IoType::Unmap) {
            return;
        }
        blocks.sort_unstable();
        let data_block_size = self.shared.data_block_size;
        let mut i = 0;
        while i < blocks.len() {
            let mut j = i + 1;
            while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 {
                j += 1;
            }
            let count = (j - i) as u64;
            let _ = self
                .data_ch
                .unmap(self.data_lba(blocks[i]), count * data_block_size)
                .await;
            self.shared.with_stats(|s| s.passdowns += count);
            i = j;
        }
    }

    /// Write-zeroes: whole blocks are unmapped (they read as zeros);
    /// partial blocks are zeroed where mapped (copying a shared block
    /// first) and stay unmapped where they are not.
    pub(super) async fn write_zeroes(
        self: &Rc<Self>,
        vol: &Arc<VolumeShared>,
        offset: u64,
        num_blocks: u64,
    ) -> IoStatus {
        let data_block_size = self.shared.data_block_size;
        let end = offset + num_blocks;
        if vol.origin.is_some() {
            // Unmapping would expose the origin: zero every piece in place,
            // provisioning blocks the origin covers.
            if !self.shared.mode().metadata_writable() {
                return EIO;
            }
            for vblock in offset / data_block_size..end.div_ceil(data_block_size) {
                let status = self.zero_held(vol, vblock, offset, end).await;
                if !status.is_success() {
                    return status;
                }
            }
            return IoStatus::Success;
        }
        let status = self.discard(vol, offset, num_blocks, true).await;
        if !status.is_success() {
            return status;
        }
        let mut pieces = Vec::new();
        let first_vblock = offset / data_block_size;
        let last_vblock = (end - 1) / data_block_size;
        for vblock in [first_vblock, last_vblock] {
            let (piece_start, piece_end) = piece(vblock, data_block_size, offset, end);
            let whole = piece_end - piece_start == data_block_size;
            if !whole && !pieces.contains(&vblock) {
                pieces.push(vblock);
            }
        }
        for vblock in pieces {
            let status = self.zero_held(vol, vblock, offset, end).await;
            if !status.is_success() {
                return status;
            }
        }
        IoStatus::Success
    }

    /// Zeroes the part of `[offset, end)` (bdev blocks) that falls in
    /// `vblock`, with the block's cell held meanwhile.
    async fn zero_held(
        self: &Rc<Self>,
        vol: &Arc<VolumeShared>,
        vblock: u64,
        offset: u64,
        end: u64,
    ) -> IoStatus {
        let data_block_size = self.shared.data_block_size;
        let (piece_start, piece_end) = piece(vblock, data_block_size, offset, end);
        self.hold(vol, vblock).await;
        let status = self
            .zero_piece(
                vol,
                vblock,
                piece_start - vblock * data_block_size,
                piece_end - piece_start,
            )
            .await;
        self.release(vol, vblock);
        status
    }

    /// Zeroes `len` bdev blocks at `at` inside virtual block `vblock` (held).
    async fn zero_piece(
        self: &Rc<Self>,
        vol: &Arc<VolumeShared>,
        vblock: u64,
        at: u64,
        len: u64,
    ) -> IoStatus {
        let entry = vol.table.get(vblock) & !BUSY;
        let from_origin = vol
            .origin
            .as_ref()
            .is_some_and(|origin| origin.covers(vblock, self.shared.data_block_size));
        if entry & MAPPED == 0 && !from_origin {
            return IoStatus::Success;
        }
        let data_block = if entry & SHARED != 0 || entry & MAPPED == 0 {
            // Break sharing (or copy the origin's block) through the
            // ordinary write path, then zero the private copy.
            let req = SlowReq {
                vol: vol.clone(),
                kind: SlowKind::Write {
                    vblock,
                    whole: false,
                },
                reply_core: reactor::current_core().unwrap_or(0),
                token: u64::MAX,
            };
            match self.write(&req, vblock, false).await {
                Reply::Retry => vol.table.get(vblock) & BLOCK_MASK,
                Reply::Done(status) => return status,
                Reply::WriteTo(_) => return EIO,
            }
        } else {
            entry & BLOCK_MASK
        };
        self.zero_range(self.data_lba(data_block) + at, len).await
    }
}

/// The part of `[offset, end)` (bdev blocks) inside data block `vblock`.
fn piece(vblock: u64, data_block_size: u64, offset: u64, end: u64) -> (u64, u64) {
    (
        (vblock * data_block_size).max(offset),
        ((vblock + 1) * data_block_size).min(end),
    )
}
