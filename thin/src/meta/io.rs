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
pub(crate) fn confirm(pool: Arc<PoolShared>, uid: u64, core: u32, token: u64, status: IoStatus) {
    if let Some(mc) = super::lookup(super::key(&pool)) {
        let tx = mc
            .confirms
            .borrow_mut()
            .remove(&(uid, confirm_key(core, token)));
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
    async fn serve(self: Rc<Self>, req: SlowReq) {
        if self.closed.get() {
            req.reply(Reply::Done(IoStatus::IoError(libc::ENODEV)));
            return;
        }
        match req.kind {
            SlowKind::Read { vb } => {
                // It came here because the block was busy: wait for the
                // holder, then retry.
                if let Some(req) = self.try_hold(req, vb) {
                    self.release(&req.vol, vb);
                    req.reply(Reply::Retry);
                }
            }
            SlowKind::Write { vb, whole } => {
                let Some(req) = self.try_hold(req, vb) else {
                    return;
                };
                let r = self.write(&req, vb, whole).await;
                self.release(&req.vol, vb);
                req.reply(r);
            }
            SlowKind::Flush => {
                // Sticky, as dm-thin's aborted-with-changes: every flush
                // fails until the device is activated anew, since no later
                // commit can bring back what the abort threw away.
                let r = if req.vol.aborted.load(Ordering::Acquire) {
                    Err(EIO)
                } else {
                    self.commit_now().await
                };
                req.reply(Reply::Done(match r {
                    Ok(()) => IoStatus::Success,
                    Err(s) => s,
                }));
            }
            SlowKind::Discard { offset, n } => {
                let s = self.discard(&req.vol, offset, n, false).await;
                req.reply(Reply::Done(s));
            }
            SlowKind::WriteZeroes { offset, n } => {
                let s = self.write_zeroes(&req.vol, offset, n).await;
                req.reply(Reply::Done(s));
            }
        }
    }

    /// A write that needs a block (its cell is held).
    async fn write(self: &Rc<Self>, req: &SlowReq, vb: u64, whole: bool) -> Reply {
        let vol = &req.vol;
        loop {
            while vol.is_frozen() {
                self.thaw.wait().await;
            }
            let e = vol.table.get(vb) & !BUSY;
            let exclusive = e & MAPPED != 0 && e & SHARED == 0;
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
            let d = match self.alloc().await {
                Ok(d) => d,
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
                req.reply(Reply::WriteTo(d));
                rx.await.unwrap_or(EIO)
            } else if e & MAPPED != 0 {
                self.copy_block(e & BLOCK_MASK, d).await
            } else if let Some(o) = vol
                .origin
                .as_ref()
                .filter(|o| o.covers(vb, self.shared.block_blocks))
            {
                self.copy_from_origin(o, vb, d).await
            } else if self.shared.opts.zero_new_blocks {
                self.zero_block(d).await
            } else {
                IoStatus::Success
            };
            self.unlocked().await;
            if !prepared.is_success() || !self.shared.mode().metadata_writable() {
                self.with_pool(|p| p.free_data_block(d));
                return Reply::Done(if prepared.is_success() { EIO } else { prepared });
            }
            if !self.is_active(vol) {
                // Deactivated or deleted while the block was prepared: the
                // block goes back, and nothing is mapped for a device that
                // may no longer exist.
                self.with_pool(|p| p.free_data_block(d));
                return Reply::Done(IoStatus::IoError(libc::ENODEV));
            }
            if self.metadata_headroom() == 0 {
                // The mapping would eat into the reserve: commit (or find
                // the pool out of metadata space) first, then start over.
                self.with_pool(|p| p.free_data_block(d));
                if self.make_metadata_room().await.is_err() {
                    return Reply::Done(EIO);
                }
                continue;
            }
            let inserted = self.with_pool(|p| p.insert(vol.dev_id, vb, d));
            if !matches!(inserted, Some(Ok(()))) {
                tracing::error!(pool = %self.shared.name, ?inserted, "mapping insert failed");
                self.metadata_failed().await;
                return Reply::Done(EIO);
            }
            vol.table.set(vb, mapped(d, false) | BUSY);
            self.mark_changed(vol);
            if e & MAPPED != 0 {
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
    fn is_active(&self, vol: &Arc<VolumeShared>) -> bool {
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
            if let Some(d) = got {
                self.dirty.set(true);
                return Ok(d);
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

    fn data_lba(&self, d: u64) -> u64 {
        self.shared.data_offset + d * self.shared.block_blocks
    }

    async fn zero_block(&self, d: u64) -> IoStatus {
        self.zero_range(self.data_lba(d), self.shared.block_blocks)
            .await
    }

    /// Zeroes data-bdev blocks, with WRITE_ZEROES where the bdev has it.
    async fn zero_range(&self, lba: u64, len: u64) -> IoStatus {
        let r = if self
            .data_ch
            .bdev()
            .io_type_supported(bdev::IoType::WriteZeroes)
        {
            self.data_ch.write_zeroes(lba, len).await
        } else {
            let bs = self.data_ch.bdev().block_size() as u64;
            self.data_ch
                .write(lba, IoBuf::zeroed((len * bs) as usize))
                .await
        };
        r.err().unwrap_or(IoStatus::Success)
    }

    /// Copies data block `from` to `to` (breaking sharing).
    async fn copy_block(&self, from: u64, to: u64) -> IoStatus {
        let n = self.shared.block_blocks;
        let buf = match self.data_ch.read(self.data_lba(from), n).await {
            Ok(b) => b,
            Err(s) => return s,
        };
        match self.data_ch.write(self.data_lba(to), buf).await {
            Ok(()) => IoStatus::Success,
            Err(s) => s,
        }
    }

    /// Copies virtual block `vb` of the external origin into data block `to`.
    async fn copy_from_origin(
        &self,
        o: &crate::external_origin::ExternalOrigin,
        vb: u64,
        to: u64,
    ) -> IoStatus {
        let n = self.shared.block_blocks;
        let ch = match o.channel() {
            Ok(c) => c,
            Err(_) => return EIO,
        };
        let buf = match ch.read(vb * n, n).await {
            Ok(b) => b,
            Err(s) => return s,
        };
        match self.data_ch.write(self.data_lba(to), buf).await {
            Ok(()) => IoStatus::Success,
            Err(s) => s,
        }
    }

    /// Holds the cells of `[lo, hi)` (virtual blocks), in order.
    async fn hold_range(&self, vol: &VolumeShared, lo: u64, hi: u64) {
        for vb in lo..hi {
            self.hold(vol, vb).await;
        }
    }

    fn release_range(&self, vol: &VolumeShared, lo: u64, hi: u64) {
        for vb in lo..hi {
            self.release(vol, vb);
        }
    }

    /// Waits for the volume's fast-path I/O issued before now.
    pub(crate) async fn drain(&self, vol: &VolumeShared) -> bool {
        let _d = self.drain_lock.lock().await;
        let p = vol.epochs.flip();
        vol.epochs.wait(p, std::time::Duration::from_secs(30)).await
    }

    /// Unmaps the whole data blocks inside `n` bdev blocks at `offset`;
    /// passes freed blocks down to the data bdev when asked. `zeroing`:
    /// this is write-zeroes, which must unmap even when discards are off.
    pub(crate) async fn discard(
        self: &Rc<Self>,
        vol: &Arc<VolumeShared>,
        offset: u64,
        n: u64,
        zeroing: bool,
    ) -> IoStatus {
        let bb = self.shared.block_blocks;
        let lo = offset.div_ceil(bb);
        let hi = (offset + n) / bb;
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
                Err(s) => return s,
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
        let passdown = self.shared.opts.discard == DiscardMode::Passdown;
        let mut freed = Vec::new();
        let mut failed = false;
        let mut removed = false;
        let mut stopped = hi;
        for vb in lo..hi {
            if vol.table.get(vb) & MAPPED == 0 {
                continue;
            }
            if self.metadata_headroom() == 0 {
                stopped = vb;
                break;
            }
            match self.with_pool(|p| {
                let old = p.remove(vol.dev_id, vb)?;
                Ok::<_, metadata::MetadataError>(old.map(|d| (d, p.data_block_count(d))))
            }) {
                Some(Ok(Some((d, count)))) => {
                    removed = true;
                    vol.table.set(vb, BUSY);
                    if passdown && count == 0 {
                        freed.push(d);
                    }
                }
                Some(Ok(None)) => vol.table.set(vb, BUSY),
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
        let bb = self.shared.block_blocks;
        let mut i = 0;
        while i < blocks.len() {
            let mut j = i + 1;
            while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 {
                j += 1;
            }
            let n = (j - i) as u64;
            let _ = self.data_ch.unmap(self.data_lba(blocks[i]), n * bb).await;
            self.shared.with_stats(|s| s.passdowns += n);
            i = j;
        }
    }

    /// Write-zeroes: whole blocks are unmapped (they read as zeros);
    /// partial blocks are zeroed where mapped (copying a shared block
    /// first) and stay unmapped where they are not.
    async fn write_zeroes(
        self: &Rc<Self>,
        vol: &Arc<VolumeShared>,
        offset: u64,
        n: u64,
    ) -> IoStatus {
        let bb = self.shared.block_blocks;
        let end = offset + n;
        if vol.origin.is_some() {
            // Unmapping would expose the origin: zero every piece in place,
            // provisioning blocks the origin covers.
            if !self.shared.mode().metadata_writable() {
                return EIO;
            }
            for vb in offset / bb..end.div_ceil(bb) {
                let (a, b) = ((vb * bb).max(offset), ((vb + 1) * bb).min(end));
                self.hold(vol, vb).await;
                let s = self.zero_piece(vol, vb, a - vb * bb, b - a).await;
                self.release(vol, vb);
                if !s.is_success() {
                    return s;
                }
            }
            return IoStatus::Success;
        }
        let s = self.discard(vol, offset, n, true).await;
        if !s.is_success() {
            return s;
        }
        let mut pieces = Vec::new();
        let first_vb = offset / bb;
        let last_vb = (end - 1) / bb;
        for vb in [first_vb, last_vb] {
            let (a, b) = ((vb * bb).max(offset), ((vb + 1) * bb).min(end));
            let whole = a == vb * bb && b == (vb + 1) * bb;
            if !whole && !pieces.iter().any(|&(v, _, _)| v == vb) {
                pieces.push((vb, a, b));
            }
        }
        for (vb, a, b) in pieces {
            self.hold(vol, vb).await;
            let s = self.zero_piece(vol, vb, a - vb * bb, b - a).await;
            self.release(vol, vb);
            if !s.is_success() {
                return s;
            }
        }
        IoStatus::Success
    }

    /// Zeroes `len` bdev blocks at `at` inside virtual block `vb` (held).
    async fn zero_piece(
        self: &Rc<Self>,
        vol: &Arc<VolumeShared>,
        vb: u64,
        at: u64,
        len: u64,
    ) -> IoStatus {
        let e = vol.table.get(vb) & !BUSY;
        let from_origin = vol
            .origin
            .as_ref()
            .is_some_and(|o| o.covers(vb, self.shared.block_blocks));
        if e & MAPPED == 0 && !from_origin {
            return IoStatus::Success;
        }
        let d = if e & SHARED != 0 || e & MAPPED == 0 {
            // Break sharing (or copy the origin's block) through the
            // ordinary write path, then zero the private copy.
            let req = SlowReq {
                vol: vol.clone(),
                kind: SlowKind::Write { vb, whole: false },
                reply_core: reactor::current_core().unwrap_or(0),
                token: u64::MAX,
            };
            match self.write(&req, vb, false).await {
                Reply::Retry => vol.table.get(vb) & BLOCK_MASK,
                Reply::Done(s) => return s,
                Reply::WriteTo(_) => return EIO,
            }
        } else {
            e & BLOCK_MASK
        };
        self.zero_range(self.data_lba(d) + at, len).await
    }
}
