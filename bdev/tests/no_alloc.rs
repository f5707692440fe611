//! The I/O fast path allocates nothing once warm: a counting global
//! allocator watches the reactor thread while it pushes 1M I/Os through a
//! null bdev. Its own test binary, so the allocator sees only this test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use bdev::modules::null;
use bdev::{IoBox, IoBuf, IoChannel, IoDone, IoStatus, IoType};
use reactor::{PollMode, ReactorOptions, ReactorSet};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    // Const-initialised with no destructor: reading it never allocates.
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if WATCHED.with(|w| w.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if WATCHED.with(|w| w.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Keeps `depth` I/Os in flight until `left` reaches zero.
struct Driver {
    ch: IoChannel,
    left: Cell<u64>,
    inflight: Cell<u64>,
    errors: Cell<u64>,
    seq: Cell<u64>,
    me: Cell<Option<Rc<Driver>>>,
}

impl Driver {
    fn submit(&self, mut io: IoBox) {
        let s = self.seq.get();
        self.seq.set(s.wrapping_add(7919));
        let t = if s.is_multiple_of(2) {
            IoType::Read
        } else {
            IoType::Write
        };
        io.prep(t, s % 1000, 1);
        let me = self.me.take().expect("driver registered");
        self.me.set(Some(me.clone()));
        self.inflight.set(self.inflight.get() + 1);
        self.ch.submit(io, me, s);
    }
}

impl IoDone for Driver {
    fn io_done(&self, io: IoBox, _ctx: u64) {
        self.inflight.set(self.inflight.get() - 1);
        if io.status() != IoStatus::Success {
            self.errors.set(self.errors.get() + 1);
        }
        if self.left.get() > 0 {
            self.left.set(self.left.get() - 1);
            self.submit(io);
        }
    }
}

async fn drive(ch: &IoChannel, count: u64, depth: u64) -> u64 {
    let d = Rc::new(Driver {
        ch: ch.clone(),
        left: Cell::new(count.saturating_sub(depth)),
        inflight: Cell::new(0),
        errors: Cell::new(0),
        seq: Cell::new(0),
        me: Cell::new(None),
    });
    d.me.set(Some(d.clone()));
    for _ in 0..depth {
        let mut io = IoBox::new();
        io.set_buf(IoBuf::new(4096));
        d.submit(io);
    }
    while d.left.get() > 0 || d.inflight.get() > 0 {
        reactor::yield_now().await;
    }
    d.me.take();
    d.errors.get()
}

#[test]
fn a_million_null_ios_after_warm_up_allocate_nothing() {
    let name = format!("null_noalloc_{}", std::process::id());
    null::create(null::NullOptions {
        name: name.clone(),
        block_size: 4096,
        num_blocks: 1000,
        uuid: None,
    })
    .unwrap();
    let set = ReactorSet::start(
        &[0],
        ReactorOptions {
            mode: PollMode::Busy,
            no_pin: false,
        },
    )
    .unwrap();
    let (allocs, errors) = set
        .block_on(0, move || async move {
            let desc = bdev::open(&name, true, None).unwrap();
            let ch = desc.io_channel().unwrap();
            // The counter itself works: a watched allocation is seen.
            WATCHED.with(|w| w.set(true));
            let probe = std::hint::black_box(Box::new([0u8; 64]));
            WATCHED.with(|w| w.set(false));
            assert!(
                ALLOCS.load(Ordering::Relaxed) >= 1,
                "the counting allocator counts"
            );
            drop(probe);
            // Warm-up: pools, queues and the completion poller come to size.
            let mut errors = drive(&ch, 100_000, 128).await;
            WATCHED.with(|w| w.set(true));
            let before = ALLOCS.load(Ordering::Relaxed);
            errors += drive_preallocated(&ch).await;
            let after = ALLOCS.load(Ordering::Relaxed);
            WATCHED.with(|w| w.set(false));
            (after - before, errors)
        })
        .unwrap();
    assert_eq!(errors, 0);
    assert_eq!(allocs, 0, "allocations on the I/O path");
}

/// The measured run: the driver itself is built before counting starts (its
/// `Rc` is one allocation by the test, not by the I/O path).
async fn drive_preallocated(ch: &IoChannel) -> u64 {
    WATCHED.with(|w| w.set(false));
    let d = Rc::new(Driver {
        ch: ch.clone(),
        left: Cell::new(1_000_000 - 128),
        inflight: Cell::new(0),
        errors: Cell::new(0),
        seq: Cell::new(1),
        me: Cell::new(None),
    });
    d.me.set(Some(d.clone()));
    let ios: Vec<IoBox> = (0..128)
        .map(|_| {
            let mut io = IoBox::new();
            io.set_buf(IoBuf::new(4096));
            io
        })
        .collect();
    WATCHED.with(|w| w.set(true));
    for io in ios {
        d.submit(io);
    }
    while d.left.get() > 0 || d.inflight.get() > 0 {
        reactor::yield_now().await;
    }
    WATCHED.with(|w| w.set(false));
    d.me.take();
    d.errors.get()
}
