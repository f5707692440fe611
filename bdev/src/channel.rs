//! Per-core bdev channels: where submission is checked, counted and handed
//! to the module, and where NOMEM I/Os wait for a retry.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use reactor::Poller;

use crate::bdev::Bdev;
use crate::buf::IoBuf;
use crate::frames::Frame;
use crate::io::{submit_tick, BdevIo, IoBox, IoDone, SubmitGuard};
use crate::io_type::{Invalid, IoStatus, IoType};
use crate::pass_counts::PassCounts;
use crate::stats::ChannelStats;

/// A module's per-core half: takes I/Os for its bdev on this core.
pub trait ModuleChannel {
    /// Runs `io` and later calls `io.complete(status)` exactly once, on this
    /// core. The I/O has been checked (type, range, alignment, buffers).
    fn submit(&self, io: IoBox);

    /// Runs as an I/O of this bdev that the module passed on with
    /// [`IoChannel::submit_through`] completes on this core, before the
    /// submitter hears, with the context the module gave then: the module
    /// finishes its part here. `io` is as the bdev below completed it
    /// (its status final, its offset still the one the module gave).
    /// Not called for a module with [`pass_counts`](Self::pass_counts).
    fn completed(&self, _io: &BdevIo, _ctx: u64) {}

    /// Counters the module counts its pass-through I/O in, if all its
    /// part in their completion is to uncount them (see `PassCounts`):
    /// the bdev layer then does that itself instead of calling
    /// `completed`. Asked once, as the bdev channel is made.
    fn pass_counts(&self) -> Option<Arc<PassCounts>> {
        None
    }

    /// The channel this module passes I/O through to, if it is to use
    /// [`IoChannel::pass_through`]: asked once, as the bdev channel is
    /// made, which sets the pass-through up then instead of on a first
    /// I/O.
    fn passes_through(&self) -> Option<&IoChannel> {
        None
    }
}

/// How long a NOMEM I/O waits before a retry when nothing else is in flight
/// on its channel to trigger one.
const NOMEM_RETRY: Duration = Duration::from_micros(100);

/// One bdev's state on one core.
///
/// What every submit and completion touches comes first, in one cache
/// line (a stacked I/O crosses two channels, so each line saved here is
/// saved twice on a thin volume's fast path).
#[repr(C, align(64))]
pub struct BdevChannel {
    bdev: Arc<Bdev>,
    module: Box<dyn ModuleChannel>,
    stats: Arc<ChannelStats>,
    /// The module's `pass_counts`.
    pass_counts: Option<Arc<PassCounts>>,
    /// Statistics of the I/O this channel passed through to the bdev below
    /// (`IoChannel::submit_through`): one set, read by both bdevs, so such
    /// an I/O is counted once on its completion instead of once per layer.
    /// Set with `below`.
    through: OnceCell<Arc<ChannelStats>>,
    inflight: Cell<u64>,
    /// `nomem.len()`, here so that a completion need not look there.
    parked: Cell<u32>,
    supported: u8,
    /// The bdev this channel passes I/O through to, set by the first
    /// pass-through: one bdev only.
    below: OnceCell<Arc<Bdev>>,
    nomem: RefCell<VecDeque<IoBox>>,
    retry_timer: RefCell<Option<Poller>>,
    me: Weak<BdevChannel>,
}

impl BdevChannel {
    pub(crate) fn new(bdev: Arc<Bdev>, module: Box<dyn ModuleChannel>) -> Rc<BdevChannel> {
        let supported = IoType::ALL
            .iter()
            .filter(|t| bdev.io_type_supported(**t))
            .fold(0, |m, t| m | t.bit());
        let stats = bdev.stats.new_channel();
        let pass_counts = module.pass_counts();
        let ch = Rc::new_cyclic(|me| BdevChannel {
            bdev,
            module,
            pass_counts,
            supported,
            stats,
            through: OnceCell::new(),
            below: OnceCell::new(),
            inflight: Cell::new(0),
            parked: Cell::new(0),
            nomem: RefCell::new(VecDeque::new()),
            retry_timer: RefCell::new(None),
            me: me.clone(),
        });
        if let Some(below) = ch.module.passes_through() {
            ch.start_through(below.bdev());
        }
        ch
    }

    pub fn bdev(&self) -> &Arc<Bdev> {
        &self.bdev
    }

    /// I/Os submitted on this channel and not completed yet. An I/O
    /// passed through to the bdev below (`IoChannel::submit_through`)
    /// counts here, where it completes, and not in the channel below.
    pub fn inflight(&self) -> u64 {
        self.inflight.get()
    }

    #[inline]
    fn submit(self: &Rc<Self>, mut io: IoBox, allowed: u8, done: Rc<dyn IoDone>, ctx: u64) {
        let start = submit_tick();
        let offset = io.offset_blocks();
        io.frames.push(|| Frame {
            done,
            ctx,
            channel: self.clone(),
            start,
            offset,
            layer: 0,
        });
        self.inflight.set(self.inflight.get() + 1);
        let _guard = SubmitGuard::enter(start);
        match self.check(&io, allowed) {
            Ok(()) => self.module.submit(io),
            Err(status) => io.complete(status),
        }
    }

    /// The types a descriptor may submit here, as `IoType::bit`s: those
    /// this bdev does, less the writes if the descriptor is read-only.
    fn allowed(&self, writable: bool) -> u8 {
        let writes = IoType::ALL
            .iter()
            .filter(|t| t.is_write())
            .fold(0, |m, t| m | t.bit());
        if writable {
            self.supported
        } else {
            self.supported & !writes
        }
    }

    /// Of `allowed`, the types whose I/O passed through needs no check of
    /// its own beyond the range (`pass_through`): all but writes, when
    /// this bdev has a write unit to align them to.
    fn passable(&self, allowed: u8) -> u8 {
        if self.bdev.write_unit_size() > 1 {
            allowed & !IoType::Write.bit()
        } else {
            allowed
        }
    }

    /// The type is one of `allowed` (see `allowed`): one bit test.
    #[inline(always)]
    fn check_type(&self, t: IoType, allowed: u8) -> Result<(), IoStatus> {
        if allowed & t.bit() == 0 {
            return Err(self.refused(t));
        }
        Ok(())
    }

    #[cold]
    fn refused(&self, t: IoType) -> IoStatus {
        if self.supported & t.bit() == 0 {
            IoStatus::Invalid(Invalid::Unsupported)
        } else {
            IoStatus::Invalid(Invalid::ReadOnly)
        }
    }

    #[inline]
    fn check_write_unit(&self, t: IoType, offset: u64, n: u64) -> Result<(), IoStatus> {
        let wu = self.bdev.write_unit_size() as u64;
        if t == IoType::Write && wu > 1 && (!offset.is_multiple_of(wu) || !n.is_multiple_of(wu)) {
            return Err(IoStatus::Invalid(Invalid::Misaligned));
        }
        Ok(())
    }

    #[inline]
    fn check_present(&self) -> Result<(), IoStatus> {
        if self.bdev.is_removed() {
            return Err(IoStatus::IoError(libc::ENODEV));
        }
        Ok(())
    }

    #[inline]
    fn check(&self, io: &IoBox, allowed: u8) -> Result<(), IoStatus> {
        let t = io.io_type();
        self.check_type(t, allowed)?;
        let (offset, n) = (io.offset_blocks(), io.num_blocks());
        let whole_device = matches!(t, IoType::Flush | IoType::Reset) && offset == 0 && n == 0;
        if !whole_device {
            if n == 0 {
                return Err(IoStatus::Invalid(Invalid::Misaligned));
            }
            self.check_reach(offset, n)?;
        } else {
            self.check_present()?;
        }
        self.check_write_unit(t, offset, n)?;
        if t.has_data() {
            let want = n.checked_mul(self.bdev.block_size() as u64);
            let mut total = 0u64;
            for b in &io.bufs {
                if b.len() % 512 != 0 {
                    return Err(IoStatus::Invalid(Invalid::Misaligned));
                }
                total += b.len() as u64;
            }
            if want != Some(total) {
                return Err(IoStatus::Invalid(Invalid::Misaligned));
            }
        }
        Ok(())
    }

    /// `check` for an I/O passed through from the layer above: that layer
    /// checked its buffers against the same block size (a stacking module
    /// that passes I/O through has its base's block size), so what can be
    /// wrong now is what the module changed (the range) and what is ours
    /// (type, mode, write unit, removal).
    #[inline(always)]
    fn check_through(&self, io: &IoBox, allowed: u8) -> Result<(), IoStatus> {
        let t = io.io_type();
        self.check_type(t, allowed)?;
        let (offset, n) = (io.offset_blocks(), io.num_blocks());
        debug_assert!(n > 0, "an I/O passed through with no blocks");
        self.check_reach(offset, n)?;
        self.check_write_unit(t, offset, n)?;
        debug_assert_eq!(
            io.buf_len() as u64,
            if t.has_data() {
                n * self.bdev.block_size() as u64
            } else {
                io.buf_len() as u64
            },
            "an I/O passed through with buffers of another block size"
        );
        Ok(())
    }

    /// The range check of `n` (not 0) blocks from `offset`, which is also
    /// the presence check: a removed bdev's reach is 0.
    #[inline(always)]
    fn check_reach(&self, offset: u64, n: u64) -> Result<(), IoStatus> {
        if self.within_reach(offset, n) {
            Ok(())
        } else {
            Err(self.out_of_reach())
        }
    }

    #[inline(always)]
    fn within_reach(&self, offset: u64, n: u64) -> bool {
        offset
            .checked_add(n)
            .is_some_and(|end| end <= self.bdev.reach())
    }

    #[cold]
    #[inline(never)]
    fn out_of_reach(&self) -> IoStatus {
        if self.bdev.is_removed() {
            IoStatus::IoError(libc::ENODEV)
        } else {
            IoStatus::Invalid(Invalid::OutOfRange)
        }
    }

    /// The module's part in a completion it left a context for.
    #[inline]
    pub(crate) fn completed(&self, io: &BdevIo, ctx: u64) {
        match &self.pass_counts {
            Some(c) => c.exit(PassCounts::parity_of(ctx)),
            None => self.module.completed(io, ctx),
        }
    }

    /// `submit` without a frame: the I/O completes to the frame above,
    /// which takes `layer` for its module's `completed` hook. Refused (the
    /// I/O handed back) when that frame is not the caller's own (the
    /// caller holds the I/O through a `submit_through` from above), or
    /// when the frame's channel passes through to another bdev.
    #[inline]
    fn submit_through(&self, mut io: IoBox, allowed: u8, layer: NonZeroU64) -> Result<(), IoBox> {
        let start = match io.frames.top_mut() {
            Some(f)
                if f.layer == 0
                    && (f.channel.passes_to(&self.bdev) || f.channel.start_through(&self.bdev)) =>
            {
                f.layer = layer.get();
                f.start
            }
            _ => return Err(io),
        };
        if !SubmitGuard::inside() {
            // A module passing I/O on from a message or a completion:
            // completions must defer until its submit returns.
            self.submit_guarded(io, allowed, start);
        } else {
            self.check_and_submit(io, allowed);
        }
        Ok(())
    }

    #[inline(never)]
    fn submit_guarded(&self, io: IoBox, allowed: u8, start: u64) {
        let _guard = SubmitGuard::enter(start);
        self.check_and_submit(io, allowed);
    }

    #[inline(never)]
    fn check_and_submit(&self, io: IoBox, allowed: u8) {
        match self.check_through(&io, allowed) {
            Ok(()) => self.module.submit(io),
            Err(status) => io.complete(status),
        }
    }

    /// `submit_through` from a module's `submit`, to the channel its
    /// `passes_through` named (the pass-through is set up), with the I/O's
    /// new offset: see `IoChannel::pass_through`. `pass` is
    /// `passable(allowed)`.
    ///
    /// The I/O is handed back unchanged when refused. Every other path
    /// ends in a call it need not come back from, the common one (a type
    /// in `pass`, in range, the bdev present) in the module's `submit`.
    /// So the fast path of a stacking module that inlines this can keep
    /// what it holds in scratch registers, saving none and writing no
    /// stack, which on a RAM disk (whose streaming copy keeps the store
    /// queue full) is time.
    #[inline(always)]
    fn pass_through(
        &self,
        mut io: IoBox,
        allowed: u8,
        pass: u8,
        layer: NonZeroU64,
        offset: u64,
    ) -> Result<(), IoBox> {
        match io.frames.top_mut() {
            Some(f) if f.layer == 0 => {
                debug_assert!(
                    f.channel.passes_to(&self.bdev),
                    "pass_through to a channel other than the one passes_through named"
                );
                f.layer = layer.get();
            }
            _ => return Err(io),
        }
        debug_assert!(SubmitGuard::inside(), "pass_through outside a submit");
        io.set_offset_blocks(offset);
        let t = io.io_type();
        if pass & t.bit() == 0 || !self.within_reach(offset, io.num_blocks()) {
            // The full checks say which error, or let a write that needs
            // its write unit checked on.
            self.check_and_submit(io, allowed);
            return Ok(());
        }
        self.module.submit(io);
        Ok(())
    }

    /// Whether this channel passes I/O through to `below`: the bdev it
    /// first passed through to (whose statistics then read `through`).
    #[inline(always)]
    fn passes_to(&self, below: &Arc<Bdev>) -> bool {
        self.below.get().is_some_and(|b| Arc::ptr_eq(b, below))
    }

    /// Makes `below` the bdev this channel passes I/O through to, if it
    /// has none yet; whether it passes to `below` now.
    #[cold]
    #[inline(never)]
    fn start_through(&self, below: &Arc<Bdev>) -> bool {
        if self.below.set(below.clone()).is_err() {
            return self.passes_to(below);
        }
        let stats = below.stats.new_channel();
        self.bdev.stats.adopt(stats.clone());
        self.through.set(stats).is_ok()
    }

    /// Parks an I/O that completed with NOMEM for a retry, its frame back
    /// on (it will complete here again).
    pub(crate) fn park_nomem(&self, mut io: IoBox, frame: Frame) {
        self.inflight.set(self.inflight.get() - 1);
        io.frames.push(|| frame);
        self.nomem.borrow_mut().push_back(io);
        self.parked.set(self.parked.get() + 1);
        if self.inflight.get() == 0 {
            self.arm_retry_timer();
        }
    }

    /// Accounts a completion at this layer; `through`: the module passed
    /// the I/O through, and it counts for the bdev below too.
    #[inline]
    pub(crate) fn account(&self, io: &BdevIo, through: bool) {
        self.inflight.set(self.inflight.get() - 1);
        let stats = match self.through.get() {
            Some(s) if through => s,
            _ => &self.stats,
        };
        let t = io.io_type();
        let bytes = if t.has_data() || t == IoType::Unmap || t == IoType::WriteZeroes {
            io.num_blocks() * self.bdev.block_size() as u64
        } else {
            0
        };
        stats.record(t, bytes, io.latency_ticks(), io.status().is_success());
    }

    /// After any completion: give one parked NOMEM I/O another go.
    pub(crate) fn after_complete(&self) {
        if self.parked.get() == 0 {
            return;
        }
        self.retry_one();
    }

    fn retry_one(&self) {
        let Some(mut io) = self.nomem.borrow_mut().pop_front() else {
            return;
        };
        self.parked.set(self.parked.get() - 1);
        let (t, o, n) = (io.io_type(), io.offset_blocks(), io.num_blocks());
        io.prep(t, o, n);
        self.inflight.set(self.inflight.get() + 1);
        let _guard = SubmitGuard::enter(submit_tick());
        self.module.submit(io);
    }

    fn arm_retry_timer(&self) {
        let me = self.me.clone();
        let timer = reactor::after(NOMEM_RETRY, move || {
            if let Some(ch) = me.upgrade() {
                ch.retry_timer.borrow_mut().take();
                let n = ch.nomem.borrow().len();
                for _ in 0..n {
                    ch.retry_one();
                }
            }
        });
        *self.retry_timer.borrow_mut() = Some(timer);
    }
}

impl Drop for BdevChannel {
    fn drop(&mut self) {
        self.bdev.stats.retire(&self.stats);
        if let (Some(s), Some(below)) = (self.through.get(), self.below.get()) {
            self.bdev.stats.retire(s);
            below.stats.retire(s);
        }
    }
}

/// A descriptor's handle on a bdev's channel for this core: what submitters
/// use. Cheap to clone; not `Send` (it belongs to its core).
#[derive(Clone)]
pub struct IoChannel {
    ch: Rc<BdevChannel>,
    /// `BdevChannel::allowed` for this descriptor.
    allowed: u8,
    /// `BdevChannel::passable(allowed)`.
    pass: u8,
}

impl IoChannel {
    pub(crate) fn new(ch: Rc<BdevChannel>, writable: bool) -> IoChannel {
        let allowed = ch.allowed(writable);
        let pass = ch.passable(allowed);
        IoChannel { ch, allowed, pass }
    }

    pub fn bdev(&self) -> &Arc<Bdev> {
        &self.ch.bdev
    }

    pub fn inflight(&self) -> u64 {
        self.ch.inflight()
    }

    /// Submits `io`; `done.io_done(io, ctx)` runs on this core when it
    /// completes, never inside this call.
    #[inline]
    pub fn submit(&self, io: IoBox, done: Rc<dyn IoDone>, ctx: u64) {
        self.ch.submit(io, self.allowed, done, ctx);
    }

    /// Hands `io`, which a stacking module holds, to this bdev's module
    /// without a completion layer of its own: it completes straight to the
    /// stacking module's submitter, as if that module had completed it,
    /// after that module's [`completed`](ModuleChannel::completed) hook has
    /// run with `layer`. Checked as `submit` is, except
    /// for the buffers, which the layer above checked: the module may move
    /// the offset, not change the length or the buffers. What it saves is
    /// a second frame and a second completion: on a thin volume's fast
    /// path, the largest share of its cost.
    ///
    /// Such an I/O is counted once, in statistics that both bdevs read, and
    /// in flight in the stacking module's channel only.
    ///
    /// Refused, the I/O handed back, when the module holds `io` lent from
    /// a layer above (that layer's frame is not its to use), or when the
    /// module's channel passes I/O through to another bdev: it must then
    /// submit with a completion of its own.
    #[inline]
    pub fn submit_through(&self, io: IoBox, layer: NonZeroU64) -> Result<(), IoBox> {
        self.ch.submit_through(io, self.allowed, layer)
    }

    /// `submit_through` for a module's fast path, with the I/O's new
    /// offset (the rest of it as it came): for a module whose
    /// [`passes_through`](ModuleChannel::passes_through) names this
    /// channel, from inside its `submit`. Refused, the I/O handed back
    /// unchanged, when the module holds it lent from a layer above. What
    /// it leaves out is what that makes certain: the pass-through is set
    /// up, completions defer (debug builds assert both).
    #[inline(always)]
    pub fn pass_through(&self, io: IoBox, layer: NonZeroU64, offset: u64) -> Result<(), IoBox> {
        self.ch
            .pass_through(io, self.allowed, self.pass, layer, offset)
    }

    /// Submits `io` and waits for it (control paths and tests; allocates).
    pub fn submit_wait(&self, io: IoBox) -> impl Future<Output = IoBox> {
        let slot = Rc::new(WaitSlot::default());
        self.submit(io, slot.clone(), 0);
        WaitFuture(slot)
    }

    async fn run(
        &self,
        t: IoType,
        offset: u64,
        n: u64,
        buf: Option<IoBuf>,
    ) -> Result<IoBox, IoStatus> {
        let mut io = IoBox::new();
        io.prep(t, offset, n);
        io.bufs.clear();
        if let Some(b) = buf {
            io.bufs.push(b);
        }
        let io = self.submit_wait(io).await;
        match io.status() {
            IoStatus::Success => Ok(io),
            s => Err(s),
        }
    }

    /// Reads `num_blocks` blocks at `offset_blocks` into a new buffer.
    pub async fn read(&self, offset_blocks: u64, num_blocks: u64) -> Result<IoBuf, IoStatus> {
        let len = num_blocks.saturating_mul(self.bdev().block_size() as u64);
        let len = usize::try_from(len).map_err(|_| IoStatus::Invalid(Invalid::OutOfRange))?;
        if len > 1 << 30 {
            return Err(IoStatus::Invalid(Invalid::OutOfRange));
        }
        let mut io = self
            .run(
                IoType::Read,
                offset_blocks,
                num_blocks,
                Some(IoBuf::new(len)),
            )
            .await?;
        Ok(io.bufs.pop().unwrap_or_else(|| IoBuf::new(0)))
    }

    /// Writes `buf` (a whole number of blocks) at `offset_blocks`.
    pub async fn write(&self, offset_blocks: u64, buf: IoBuf) -> Result<(), IoStatus> {
        let n = (buf.len() / self.bdev().block_size() as usize) as u64;
        self.run(IoType::Write, offset_blocks, n, Some(buf))
            .await
            .map(drop)
    }

    /// Flushes the whole device.
    pub async fn flush(&self) -> Result<(), IoStatus> {
        self.run(IoType::Flush, 0, 0, None).await.map(drop)
    }

    /// Whether the bdev takes FLUSH. One that does not has no volatile
    /// cache: its writes are durable when they complete.
    pub fn has_flush(&self) -> bool {
        self.ch.supported & IoType::Flush.bit() != 0
    }

    /// Makes the writes completed so far durable: a FLUSH, or nothing on a
    /// bdev without one (SPDK's null bdev, say). Callers that need
    /// durability use this; `flush` itself fails there (ENOTSUP), as in
    /// SPDK.
    pub async fn make_durable(&self) -> Result<(), IoStatus> {
        if !self.has_flush() {
            return Ok(());
        }
        self.flush().await
    }

    pub async fn unmap(&self, offset_blocks: u64, num_blocks: u64) -> Result<(), IoStatus> {
        self.run(IoType::Unmap, offset_blocks, num_blocks, None)
            .await
            .map(drop)
    }

    pub async fn write_zeroes(&self, offset_blocks: u64, num_blocks: u64) -> Result<(), IoStatus> {
        self.run(IoType::WriteZeroes, offset_blocks, num_blocks, None)
            .await
            .map(drop)
    }

    pub async fn reset(&self) -> Result<(), IoStatus> {
        self.run(IoType::Reset, 0, 0, None).await.map(drop)
    }
}

#[derive(Default)]
struct WaitSlot {
    io: RefCell<Option<IoBox>>,
    waker: RefCell<Option<Waker>>,
}

impl IoDone for WaitSlot {
    fn io_done(&self, io: IoBox, _ctx: u64) {
        *self.io.borrow_mut() = Some(io);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

struct WaitFuture(Rc<WaitSlot>);

impl Future for WaitFuture {
    type Output = IoBox;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<IoBox> {
        if let Some(io) = self.0.io.borrow_mut().take() {
            return Poll::Ready(io);
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn a_submit_and_its_completion_read_one_cache_line_of_the_channel() {
        assert_eq!(align_of::<BdevChannel>(), 64);
        let end = |off: usize, len: usize| off + len;
        assert!(end(offset_of!(BdevChannel, module), 16) <= 64);
        assert!(end(offset_of!(BdevChannel, pass_counts), 8) <= 64);
        assert!(
            end(
                offset_of!(BdevChannel, through),
                size_of::<OnceCell<Arc<ChannelStats>>>()
            ) <= 64
        );
        assert!(end(offset_of!(BdevChannel, inflight), 8) <= 64);
        assert!(end(offset_of!(BdevChannel, parked), 4) <= 64);
        assert!(offset_of!(BdevChannel, supported) < 64);
    }
}
