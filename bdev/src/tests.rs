//! Tests of the bdev layer itself (modules test themselves beside them).

use std::cell::{Cell, RefCell};
use std::num::NonZeroU64;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::modules::{malloc, null};
use crate::test_util::{on_reactor, unique};
use crate::*;

fn malloc_bdev(block_size: u32, num_blocks: u64) -> Arc<Bdev> {
    malloc::create(malloc::MallocOptions {
        name: unique("malloc"),
        block_size,
        num_blocks,
        uuid: None,
        optimal_io_boundary: 0,
    })
    .unwrap()
}

#[test]
fn invalid_io_completes_with_invalid_and_never_reaches_the_module() {
    let b = malloc_bdev(512, 64);
    let name = b.name().to_string();
    let nb = null::create(null::NullOptions {
        name: unique("null"),
        block_size: 4096,
        num_blocks: 8,
        uuid: None,
    })
    .unwrap();
    let null_name = nb.name().to_string();
    on_reactor(move || async move {
        let ro = open(&name, false, None).unwrap().io_channel().unwrap();
        let rw = open(&name, true, None).unwrap().io_channel().unwrap();
        let null = open(&null_name, true, None).unwrap().io_channel().unwrap();
        let cases: Vec<(IoChannel, IoType, u64, u64, Option<usize>, Invalid)> = vec![
            (
                rw.clone(),
                IoType::Read,
                64,
                1,
                Some(512),
                Invalid::OutOfRange,
            ),
            (
                rw.clone(),
                IoType::Read,
                63,
                2,
                Some(1024),
                Invalid::OutOfRange,
            ),
            (
                rw.clone(),
                IoType::Read,
                u64::MAX,
                2,
                Some(1024),
                Invalid::OutOfRange,
            ),
            (
                rw.clone(),
                IoType::Write,
                0,
                2,
                Some(512),
                Invalid::Misaligned,
            ),
            (
                rw.clone(),
                IoType::Write,
                0,
                1,
                Some(1000),
                Invalid::Misaligned,
            ),
            (rw.clone(), IoType::Read, 0, 0, Some(0), Invalid::Misaligned),
            (rw.clone(), IoType::Unmap, 10, 0, None, Invalid::Misaligned),
            (
                rw.clone(),
                IoType::WriteZeroes,
                60,
                5,
                None,
                Invalid::OutOfRange,
            ),
            (
                ro.clone(),
                IoType::Write,
                0,
                1,
                Some(512),
                Invalid::ReadOnly,
            ),
            (ro.clone(), IoType::Unmap, 0, 1, None, Invalid::ReadOnly),
            (
                null.clone(),
                IoType::Unmap,
                0,
                1,
                None,
                Invalid::Unsupported,
            ),
            (
                null.clone(),
                IoType::Flush,
                0,
                0,
                None,
                Invalid::Unsupported,
            ),
        ];
        for (ch, t, off, n, buf, want) in cases {
            let mut io = IoBox::new();
            io.prep(t, off, n);
            if let Some(len) = buf {
                io.set_buf(IoBuf::new(len));
            }
            let io = ch.submit_wait(io).await;
            assert_eq!(
                io.status(),
                IoStatus::Invalid(want),
                "{t:?} {off}+{n} buf {buf:?}"
            );
        }
        // Valid I/O still works afterwards, and nothing is left in flight.
        rw.write(0, IoBuf::from_slice(&[7u8; 512])).await.unwrap();
        assert_eq!(ro.read(0, 1).await.unwrap().as_slice(), &[7u8; 512]);
        assert_eq!(rw.inflight(), 0);
    });
}

#[test]
fn completions_never_run_inside_submit() {
    let b = null::create(null::NullOptions {
        name: unique("null"),
        block_size: 512,
        num_blocks: 1024,
        uuid: None,
    })
    .unwrap();
    let name = b.name().to_string();
    let done = on_reactor(move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        let inside = Rc::new(Cell::new(false));
        let count = Rc::new(Cell::new(0u32));
        let (i2, c2) = (inside.clone(), count.clone());
        let cb: Rc<dyn IoDone> = Rc::new(move |_io: IoBox, _ctx: u64| {
            assert!(!i2.get(), "completion ran inside submit");
            c2.set(c2.get() + 1);
        });
        for _ in 0..100 {
            let mut io = IoBox::new();
            io.prep(IoType::Read, 0, 1).set_buf(IoBuf::new(512));
            inside.set(true);
            ch.submit(io, cb.clone(), 0);
            inside.set(false);
        }
        while count.get() < 100 {
            reactor::yield_now().await;
        }
        count.get()
    });
    assert_eq!(done, 100);
}

#[test]
fn registry_names_aliases_uuids_and_duplicates() {
    let b = malloc_bdev(512, 8);
    assert!(Arc::ptr_eq(&lookup(b.name()).unwrap(), &b));
    assert!(Arc::ptr_eq(&lookup(&b.uuid().to_string()).unwrap(), &b));
    let dup = malloc::create(malloc::MallocOptions {
        name: b.name().to_string(),
        block_size: 512,
        num_blocks: 8,
        uuid: None,
        optimal_io_boundary: 0,
    });
    assert!(matches!(dup, Err(BdevError::Exists(_))));
    assert!(list().iter().any(|x| x.name() == b.name()));
    unregister(b.name()).unwrap();
    assert!(lookup(b.name()).is_none());
    assert!(matches!(unregister(b.name()), Err(BdevError::NotFound(_))));
}

#[test]
fn aliases_change_only_to_names_no_other_bdev_has() {
    let a = malloc_bdev(512, 8);
    let b = malloc_bdev(512, 8);
    crate::set_aliases(a.name(), vec!["lvs/x".into()]).unwrap();
    assert!(Arc::ptr_eq(&lookup("lvs/x").unwrap(), &a));
    // Another bdev's name, alias or UUID is refused and nothing changes.
    for taken in [b.name().to_string(), b.uuid().to_string()] {
        assert!(matches!(
            crate::set_aliases(a.name(), vec!["lvs/y".into(), taken]),
            Err(BdevError::Exists(_))
        ));
    }
    assert!(matches!(
        crate::set_aliases(b.name(), vec!["lvs/x".into()]),
        Err(BdevError::Exists(_))
    ));
    assert_eq!(a.aliases(), vec!["lvs/x".to_string()]);
    assert!(lookup("lvs/y").is_none());
    // Renaming: the old alias stops resolving.
    crate::set_aliases(a.name(), vec!["lvs/z".into()]).unwrap();
    assert!(lookup("lvs/x").is_none());
    assert!(Arc::ptr_eq(&lookup("lvs/z").unwrap(), &a));
    unregister(a.name()).unwrap();
    unregister(b.name()).unwrap();
}

#[test]
fn claims_exclude_other_writers_until_released() {
    let b = malloc_bdev(512, 8);
    let mut owner = Descriptor::open(b.clone(), false, None).unwrap();
    owner.claim("test").unwrap();
    assert_eq!(b.claimed_by().as_deref(), Some("test"));
    assert!(owner.writable());
    assert!(matches!(
        Descriptor::open(b.clone(), true, None),
        Err(BdevError::Claimed(..))
    ));
    assert!(
        Descriptor::open(b.clone(), false, None).is_ok(),
        "readers are still allowed"
    );
    let mut other = Descriptor::open(b.clone(), false, None).unwrap();
    assert!(other.claim("other").is_err());
    assert!(matches!(unregister(b.name()), Err(BdevError::Claimed(..))));
    drop(owner);
    assert_eq!(b.claimed_by(), None);
    assert!(Descriptor::open(b.clone(), true, None).is_ok());
}

/// Read-only claims (an external origin under several volumes): shared
/// by any number of readers, no writer while one lasts, refused while a
/// writer has it open, released with the last holder.
#[test]
fn read_only_claims_share_and_keep_writers_out() {
    let b = malloc_bdev(512, 8);
    let writer = Descriptor::open(b.clone(), true, None).unwrap();
    let mut first = Descriptor::open(b.clone(), false, None).unwrap();
    assert!(matches!(
        first.claim_read_only("thin"),
        Err(BdevError::Busy(..))
    ));
    drop(writer);
    first.claim_read_only("thin").unwrap();
    let mut second = Descriptor::open(b.clone(), false, None).unwrap();
    second.claim_read_only("thin").unwrap();
    assert_eq!(b.claimed_by().as_deref(), Some("thin"));
    let e = Descriptor::open(b.clone(), true, None).unwrap_err();
    assert!(
        e.to_string().contains("claimed read-only by module thin"),
        "{e}"
    );
    let mut exclusive = Descriptor::open(b.clone(), false, None).unwrap();
    assert!(exclusive.claim("other").is_err());
    assert!(matches!(unregister(b.name()), Err(BdevError::Claimed(..))));
    let mut rw = Descriptor::open(b.clone(), false, None).unwrap();
    rw.claim("x").unwrap_err();
    drop(first);
    assert_eq!(
        b.claimed_by().as_deref(),
        Some("thin"),
        "the second still holds it"
    );
    drop(second);
    assert_eq!(b.claimed_by(), None);
    assert!(Descriptor::open(b.clone(), true, None).is_ok());
    // An exclusive claim keeps read-only claims out too.
    let mut owner = Descriptor::open(b.clone(), false, None).unwrap();
    owner.claim("pool").unwrap();
    let mut reader = Descriptor::open(b.clone(), false, None).unwrap();
    assert!(matches!(
        reader.claim_read_only("thin"),
        Err(BdevError::Claimed(..))
    ));
}

#[test]
fn resize_notifies_open_descriptors_and_refuses_to_shrink_while_open() {
    let b = null::create(null::NullOptions {
        name: unique("null"),
        block_size: 512,
        num_blocks: 100,
        uuid: None,
    })
    .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut claimer = Descriptor::open(
        b.clone(),
        false,
        Some(Box::new(move |e| s.lock().unwrap().push(("claimer", e)))),
    )
    .unwrap();
    claimer.claim("test").unwrap();
    let s = seen.clone();
    let _reader = Descriptor::open(
        b.clone(),
        false,
        Some(Box::new(move |e| s.lock().unwrap().push(("reader", e)))),
    )
    .unwrap();
    b.notify_resize(200).unwrap();
    assert_eq!(b.num_blocks(), 200);
    assert!(matches!(b.notify_resize(50), Err(BdevError::Busy(..))));
    assert!(b.notify_resize(0).is_err());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ("claimer", BdevEvent::Resize(200)),
            ("reader", BdevEvent::Resize(200))
        ]
    );
}

#[test]
fn iostat_counts_per_type_across_cores() {
    let b = malloc_bdev(4096, 64);
    let name = b.name().to_string();
    let set = reactor::ReactorSet::start(&[0, 1], crate::test_util::opts()).unwrap();
    for core in [0, 1] {
        let name = name.clone();
        set.block_on(core, move || async move {
            let ch = open(&name, true, None).unwrap().io_channel().unwrap();
            for i in 0..10 {
                ch.write(i, IoBuf::zeroed(4096)).await.unwrap();
            }
            ch.read(0, 4).await.unwrap();
            ch.unmap(0, 2).await.unwrap();
        })
        .unwrap();
    }
    let s = b.iostat();
    assert_eq!(s.get(IoType::Write).ops, 20);
    assert_eq!(s.get(IoType::Write).bytes, 20 * 4096);
    assert_eq!(s.get(IoType::Read).ops, 2);
    assert_eq!(s.get(IoType::Read).bytes, 2 * 4 * 4096);
    assert_eq!(s.get(IoType::Unmap).ops, 2);
    assert!(s.get(IoType::Write).latency_ticks > 0 && s.tick_rate > 0);
    assert!(s.get(IoType::Write).min_latency_ticks <= s.get(IoType::Write).max_latency_ticks);
}

#[test]
fn a_removed_bdev_fails_io_and_tells_its_users() {
    let b = malloc_bdev(512, 8);
    let name = b.name().to_string();
    let removed = Arc::new(AtomicUsize::new(0));
    let r = removed.clone();
    let status = on_reactor(move || async move {
        let d = open(
            &name,
            true,
            Some(Box::new(move |e| {
                if e == BdevEvent::Remove {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            })),
        )
        .unwrap();
        let ch = d.io_channel().unwrap();
        unregister(&name).unwrap();
        ch.read(0, 1).await.err()
    });
    assert_eq!(status, Some(IoStatus::IoError(libc::ENODEV)));
    assert_eq!(removed.load(Ordering::Relaxed), 1);
}

/// Keeps a result list across callbacks for the recursion test.
#[test]
fn resubmitting_from_the_callback_does_not_recurse() {
    let b = null::create(null::NullOptions {
        name: unique("null"),
        block_size: 512,
        num_blocks: 16,
        uuid: None,
    })
    .unwrap();
    let name = b.name().to_string();
    let n = on_reactor(move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        struct Loop {
            ch: IoChannel,
            left: Cell<u32>,
            depth: Cell<u32>,
            max_depth: Cell<u32>,
            me: RefCell<Option<Rc<Loop>>>,
        }
        impl IoDone for Loop {
            fn io_done(&self, io: IoBox, _ctx: u64) {
                self.depth.set(self.depth.get() + 1);
                self.max_depth
                    .set(self.max_depth.get().max(self.depth.get()));
                if self.left.get() > 0 {
                    self.left.set(self.left.get() - 1);
                    let me = self.me.borrow().clone().unwrap();
                    self.ch.submit(io, me, 0);
                }
                self.depth.set(self.depth.get() - 1);
            }
        }
        let l = Rc::new(Loop {
            ch: ch.clone(),
            left: Cell::new(100_000),
            depth: Cell::new(0),
            max_depth: Cell::new(0),
            me: RefCell::new(None),
        });
        *l.me.borrow_mut() = Some(l.clone());
        let mut io = IoBox::new();
        io.prep(IoType::Read, 0, 1).set_buf(IoBuf::new(512));
        ch.submit(io, l.clone(), 0);
        while l.left.get() > 0 || ch.inflight() > 0 {
            reactor::yield_now().await;
        }
        l.me.borrow_mut().take();
        l.max_depth.get()
    });
    assert_eq!(n, 1);
}

#[test]
fn malloc_keeps_data_across_sizes_offsets_and_scatter_gather() {
    for (bs, nb, seed) in [(512u32, 300u64, 1u64), (4096, 100, 2), (512, 17, 3)] {
        let b = malloc_bdev(bs, nb);
        let name = b.name().to_string();
        on_reactor(move || async move {
            let ch = open(&name, true, None).unwrap().io_channel().unwrap();
            crate::test_util::check_integrity(&ch, seed, 300, true).await;
        });
    }
}

#[test]
fn null_reads_leave_buffers_alone_and_drops_writes() {
    let b = null::create(null::NullOptions {
        name: unique("null"),
        block_size: 512,
        num_blocks: 64,
        uuid: None,
    })
    .unwrap();
    let name = b.name().to_string();
    on_reactor(move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        ch.write(0, IoBuf::from_slice(&[9u8; 1024])).await.unwrap();
        let mut io = IoBox::new();
        io.prep(IoType::Read, 0, 2)
            .set_buf(IoBuf::from_slice(&[5u8; 1024]));
        let io = ch.submit_wait(io).await;
        assert_eq!(io.status(), IoStatus::Success);
        assert!(io.bufs[0].as_slice().iter().all(|&x| x == 5));
        ch.write_zeroes(0, 64).await.unwrap();
        ch.reset().await.unwrap();
    });
}

/// A stacking module over two bases that passes each write through to one
/// of them by its offset's parity, submitting with a completion of its own
/// when the pass-through is refused.
struct Alternate {
    bases: [String; 2],
}

struct AlternateChannel {
    bases: [IoChannel; 2],
    refused: Rc<Cell<u32>>,
}

thread_local! {
    static REFUSED: Rc<Cell<u32>> = Rc::new(Cell::new(0));
}

impl BdevFnTable for Alternate {
    fn module_name(&self) -> &'static str {
        "alternate"
    }

    fn io_type_supported(&self, t: IoType) -> bool {
        matches!(t, IoType::Read | IoType::Write)
    }

    fn create_channel(&self, _bdev: &Arc<Bdev>) -> Result<Box<dyn ModuleChannel>, BdevError> {
        let ch = |n: &str| open(n, true, None)?.io_channel();
        Ok(Box::new(AlternateChannel {
            bases: [ch(&self.bases[0])?, ch(&self.bases[1])?],
            refused: REFUSED.with(Rc::clone),
        }))
    }
}

impl ModuleChannel for AlternateChannel {
    fn submit(&self, io: IoBox) {
        let side = (io.offset_blocks() % 2) as usize;
        if let Err(io) =
            self.bases[side].submit_through(io, NonZeroU64::MIN.saturating_add(side as u64))
        {
            self.refused.set(self.refused.get() + 1);
            let up = Rc::new(|io: IoBox, _: u64| {
                let status = io.status();
                io.complete(status)
            });
            self.bases[side].submit(io, up, 0);
        }
    }
}

#[test]
fn a_channel_passes_through_to_one_bdev_and_counts_such_io_once_for_both() {
    let bases = [malloc_bdev(4096, 64), malloc_bdev(4096, 64)];
    let name = unique("alt");
    let top = Bdev::new(
        BdevProps::new(&name, "alternate", 4096, 64),
        Alternate {
            bases: [bases[0].name().to_string(), bases[1].name().to_string()],
        },
    )
    .unwrap();
    register(top.clone()).unwrap();
    let refused = on_reactor(move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        for i in 0..8 {
            ch.write(i, IoBuf::zeroed(4096)).await.unwrap();
        }
        REFUSED.with(|r| r.get())
    });
    // The first write went through to base 0: the channel passes through
    // to that bdev only, and base 1's writes took their own completions.
    assert_eq!(refused, 4);
    assert_eq!(top.iostat().get(IoType::Write).ops, 8);
    assert_eq!(bases[0].iostat().get(IoType::Write).ops, 4);
    assert_eq!(bases[1].iostat().get(IoType::Write).ops, 4);
    assert_eq!(bases[0].iostat().get(IoType::Write).bytes, 4 * 4096);
}

/// A stacking module that shifts every I/O by `by` blocks and passes it
/// through to its base with `pass_through`.
struct Shift {
    base: String,
    by: u64,
}

struct ShiftChannel {
    base: IoChannel,
    by: u64,
}

impl BdevFnTable for Shift {
    fn module_name(&self) -> &'static str {
        "shift"
    }

    fn io_type_supported(&self, t: IoType) -> bool {
        matches!(t, IoType::Read | IoType::Write)
    }

    fn create_channel(&self, _bdev: &Arc<Bdev>) -> Result<Box<dyn ModuleChannel>, BdevError> {
        Ok(Box::new(ShiftChannel {
            base: open(&self.base, true, None)?.io_channel()?,
            by: self.by,
        }))
    }
}

impl ModuleChannel for ShiftChannel {
    fn submit(&self, io: IoBox) {
        let to = io.offset_blocks() + self.by;
        if let Err(io) = self.base.pass_through(io, NonZeroU64::MIN, to) {
            io.complete(IoStatus::IoError(libc::EBUSY));
        }
    }

    fn passes_through(&self) -> Option<&IoChannel> {
        Some(&self.base)
    }
}

#[test]
fn a_pass_through_lands_shifted_and_fails_past_the_base_or_once_it_is_gone() {
    let base = malloc_bdev(4096, 8);
    let base_name = base.name().to_string();
    // The top is as large as the base but starts 4 blocks in: its blocks
    // 4-7 fall past the base's end.
    let name = unique("shift");
    let top = Bdev::new(
        BdevProps::new(&name, "shift", 4096, 8),
        Shift {
            base: base_name.clone(),
            by: 4,
        },
    )
    .unwrap();
    register(top.clone()).unwrap();
    let (landed, past, gone) = on_reactor(move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        let raw = open(&base_name, false, None).unwrap().io_channel().unwrap();
        ch.write(1, IoBuf::from_slice(&[7u8; 4096])).await.unwrap();
        let landed = raw.read(5, 1).await.unwrap().as_slice().to_vec();
        let past = ch.read(4, 1).await.err();
        unregister(&base_name).unwrap();
        let gone = ch.read(0, 1).await.err();
        (landed, past, gone)
    });
    assert!(
        landed.iter().all(|&b| b == 7),
        "block 1 lands on base block 5"
    );
    assert_eq!(past, Some(IoStatus::Invalid(Invalid::OutOfRange)));
    assert_eq!(gone, Some(IoStatus::IoError(libc::ENODEV)));
    assert_eq!(top.iostat().get(IoType::Write).ops, 1);
}
