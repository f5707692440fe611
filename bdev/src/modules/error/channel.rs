//! The error bdev's per-core channel: decide, inject, or pass through.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use reactor::{PollStatus, Poller};

use super::inject::ErrorKind;
use super::Shared;
use crate::{IoBox, IoBuf, IoChannel, IoDone, IoStatus, IoType, ModuleChannel};

// What io_done must do when the base completes (low byte of ctx).
const PLAIN: u64 = 0;
const CORRUPT_READ: u64 = 1;
const UNCORRUPT_WRITE: u64 = 2;
const PATCH_READ: u64 = 3;

/// Held (unflushed) block contents: (block, data).
type HeldBlocks = Vec<(u64, Box<[u8]>)>;

pub(crate) struct ErrorChannel {
    inner: Rc<Inner>,
    _poller: Poller,
}

struct Inner {
    shared: Arc<Shared>,
    base: IoChannel,
    rng: Cell<u64>,
    pending: RefCell<Vec<IoBox>>,
    seen_resume: Cell<u64>,
    /// Held-data snapshots for volatile-cache reads in flight, by slot.
    patches: RefCell<Vec<Option<HeldBlocks>>>,
    /// (offset, value) of corruptions in flight, by slot.
    corruptions: RefCell<Vec<Option<(u64, u8)>>>,
    me: Weak<Inner>,
}

impl ErrorChannel {
    pub fn new(shared: Arc<Shared>, base: IoChannel) -> ErrorChannel {
        let seed =
            shared.seed.load(Ordering::Relaxed) ^ reactor::current_core().unwrap_or(0) as u64;
        let seen = shared.resume_gen.load(Ordering::Acquire);
        let inner = Rc::new_cyclic(|me| Inner {
            shared,
            base,
            rng: Cell::new(seed | 1),
            pending: RefCell::new(Vec::new()),
            seen_resume: Cell::new(seen),
            patches: RefCell::new(Vec::new()),
            corruptions: RefCell::new(Vec::new()),
            me: me.clone(),
        });
        let i = inner.clone();
        let poller = reactor::register_poller(move || i.poll());
        ErrorChannel {
            inner,
            _poller: poller,
        }
    }
}

impl ModuleChannel for ErrorChannel {
    fn submit(&self, io: IoBox) {
        self.inner.submit(io);
    }
}

fn put<T>(v: &RefCell<Vec<Option<T>>>, x: T) -> u64 {
    let mut v = v.borrow_mut();
    let i = match v.iter().position(Option::is_none) {
        Some(i) => i,
        None => {
            v.push(None);
            v.len() - 1
        }
    };
    v[i] = Some(x);
    i as u64
}

fn xor_at(io: &mut IoBox, offset: u64, value: u8) {
    let mut at = offset as usize;
    for b in io.bufs.iter_mut() {
        if at < b.len() {
            b.as_mut_slice()[at] ^= value;
            return;
        }
        at -= b.len();
    }
}

impl Inner {
    fn me(&self) -> Rc<Inner> {
        self.me
            .upgrade()
            .expect("a channel outlives its own submissions")
    }

    fn forward(&self, io: IoBox, ctx: u64) {
        self.base.submit(io, self.me(), ctx);
    }

    fn roll(&self) -> u32 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x >> 32) as u32
    }

    fn submit(&self, mut io: IoBox) {
        let t = io.io_type();
        if t == IoType::Reset {
            for p in self.pending.borrow_mut().drain(..).collect::<Vec<_>>() {
                p.complete(IoStatus::Aborted);
            }
            return self.forward(io, PLAIN);
        }
        if let Some(hit) = self
            .shared
            .rules
            .check(t, self.base.inflight(), || self.roll())
        {
            match hit.kind {
                ErrorKind::Failure => return io.complete(IoStatus::IoError(libc::EIO)),
                ErrorKind::NoMem => return io.complete(IoStatus::NoMem),
                ErrorKind::Pending => return self.pending.borrow_mut().push(io),
                ErrorKind::Drop if t.is_write() => return io.complete(IoStatus::Success),
                ErrorKind::Drop => {}
                ErrorKind::CorruptData if t == IoType::Read => {
                    let slot = put(&self.corruptions, (hit.corrupt_offset, hit.corrupt_value));
                    return self.forward(io, CORRUPT_READ | slot << 8);
                }
                ErrorKind::CorruptData if t == IoType::Write => {
                    // Flip the byte for the device, and flip it back for the
                    // submitter when the write completes.
                    xor_at(&mut io, hit.corrupt_offset, hit.corrupt_value);
                    let slot = put(&self.corruptions, (hit.corrupt_offset, hit.corrupt_value));
                    if self.shared.cache_on.load(Ordering::Acquire) {
                        self.hold(&io);
                        xor_at(&mut io, hit.corrupt_offset, hit.corrupt_value);
                        self.corruptions.borrow_mut()[slot as usize] = None;
                        return io.complete(IoStatus::Success);
                    }
                    return self.forward(io, UNCORRUPT_WRITE | slot << 8);
                }
                ErrorKind::CorruptData => {}
            }
        }
        if self.shared.cache_on.load(Ordering::Acquire) {
            return self.submit_cached(io);
        }
        self.forward(io, PLAIN);
    }

    fn hold(&self, io: &IoBox) {
        let bs = self.shared.block_size;
        let data = match io.io_type() {
            IoType::Write => io.gather(),
            _ => vec![0u8; io.num_blocks() as usize * bs],
        };
        self.shared.cache().hold(io.offset_blocks(), data, bs);
    }

    fn submit_cached(&self, io: IoBox) {
        match io.io_type() {
            IoType::Write | IoType::WriteZeroes | IoType::Unmap => {
                self.hold(&io);
                io.complete(IoStatus::Success);
            }
            IoType::Read => {
                let snap = self
                    .shared
                    .cache()
                    .snapshot(io.offset_blocks(), io.num_blocks());
                if snap.is_empty() {
                    return self.forward(io, PLAIN);
                }
                let slot = put(&self.patches, snap);
                self.forward(io, PATCH_READ | slot << 8);
            }
            IoType::Flush => {
                let shared = self.shared.clone();
                let base = self.base.clone();
                reactor::spawn_local(async move {
                    let status = flush_through(&shared, &base).await;
                    io.complete(status);
                })
                .detach();
            }
            IoType::Reset => self.forward(io, PLAIN),
        }
    }

    fn poll(&self) -> PollStatus {
        let gen = self.shared.resume_gen.load(Ordering::Acquire);
        if gen == self.seen_resume.get() {
            return PollStatus::Idle;
        }
        self.seen_resume.set(gen);
        let parked: Vec<IoBox> = self.pending.borrow_mut().drain(..).collect();
        let n = parked.len();
        for io in parked {
            self.forward(io, PLAIN);
        }
        PollStatus::from_busy(n > 0)
    }
}

/// Writes every held write through to the base in arrival order, then
/// flushes the base. Flushes run one at a time across cores.
async fn flush_through(shared: &Arc<Shared>, base: &IoChannel) -> IoStatus {
    let _gate = shared.gate.acquire().await;
    let epoch = shared.epoch.load(Ordering::Acquire);
    let batch = shared.cache().take_log();
    for (i, w) in batch.iter().enumerate() {
        if shared.epoch.load(Ordering::Acquire) != epoch {
            return IoStatus::IoError(libc::EIO);
        }
        if let Err(s) = base
            .write(w.offset_blocks, IoBuf::from_slice(&w.data))
            .await
        {
            if shared.epoch.load(Ordering::Acquire) == epoch {
                shared.cache().restore_log(batch[i..].to_vec());
            }
            return s;
        }
    }
    if let Err(s) = base.make_durable().await {
        return s;
    }
    if let Some(max) = batch.iter().map(|w| w.gen).max() {
        shared.cache().retire(max);
    }
    IoStatus::Success
}

impl IoDone for Inner {
    fn io_done(&self, mut io: IoBox, ctx: u64) {
        let slot = (ctx >> 8) as usize;
        match ctx & 0xff {
            CORRUPT_READ | UNCORRUPT_WRITE => {
                let c = self
                    .corruptions
                    .borrow_mut()
                    .get_mut(slot)
                    .and_then(Option::take);
                if let Some((off, val)) = c {
                    if io.status().is_success() || ctx & 0xff == UNCORRUPT_WRITE {
                        xor_at(&mut io, off, val);
                    }
                }
            }
            PATCH_READ => {
                let snap = self
                    .patches
                    .borrow_mut()
                    .get_mut(slot)
                    .and_then(Option::take);
                if let (Some(snap), true) = (snap, io.status().is_success()) {
                    let bs = self.shared.block_size;
                    let first = io.offset_blocks();
                    for (blk, data) in snap {
                        io.copy_into_bufs((blk - first) as usize * bs, &data);
                    }
                }
            }
            _ => {}
        }
        let status = io.status();
        io.complete(status);
    }
}
