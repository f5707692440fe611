use std::cell::Cell;
use std::rc::Rc;

use super::*;
use crate::modules::malloc;
use crate::test_util::{check_integrity, on_reactor, unique};
use crate::{open, IoBox, IoChannel, IoDone, IoStatus};

/// A malloc base of `n` 512-byte blocks and an error bdev over it.
fn stack(n: u64) -> (String, String) {
    let base = malloc::create(malloc::MallocOptions {
        name: unique("base"),
        block_size: 512,
        num_blocks: n,
        uuid: None,
        optimal_io_boundary: 0,
    })
    .unwrap();
    let ee = create(base.name(), None).unwrap();
    (base.name().to_string(), ee.name().to_string())
}

fn chan(name: &str) -> IoChannel {
    open(name, true, None).unwrap().io_channel().unwrap()
}

#[test]
fn claims_its_base_and_passes_data_through() {
    let (base, ee) = stack(256);
    assert_eq!(ee, format!("EE_{base}"));
    assert_eq!(
        crate::lookup(&base).unwrap().claimed_by().as_deref(),
        Some("error")
    );
    assert!(open(&base, true, None).is_err(), "the base is claimed");
    on_reactor(move || async move {
        check_integrity(&chan(&ee), 21, 300, true).await;
    });
}

#[test]
fn failure_hits_exactly_n_ios_of_the_chosen_type() {
    let (_base, ee) = stack(64);
    control(&ee)
        .unwrap()
        .inject(IoType::Write, Injection::new(ErrorKind::Failure, 3));
    let (w, r) = on_reactor(move || async move {
        let ch = chan(&ee);
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for i in 0..6 {
            writes.push(ch.write(i, IoBuf::zeroed(512)).await);
            reads.push(ch.read(i, 1).await.is_ok());
        }
        (writes, reads)
    });
    let expect_err = Err(IoStatus::IoError(libc::EIO));
    assert_eq!(
        w,
        vec![expect_err, expect_err, expect_err, Ok(()), Ok(()), Ok(())]
    );
    assert!(r.iter().all(|ok| *ok), "reads untouched");
}

#[test]
fn probabilistic_failures_replay_from_the_seed() {
    let run = |seed: u64| {
        let (_base, ee) = stack(64);
        let ctl = control(&ee).unwrap();
        ctl.set_seed(seed);
        ctl.inject(
            IoType::Read,
            Injection {
                probability: 0.25,
                ..Injection::new(ErrorKind::Failure, 0)
            },
        );
        on_reactor(move || async move {
            let ch = chan(&ee);
            let mut hits = Vec::new();
            for i in 0..2000u64 {
                hits.push(ch.read(i % 64, 1).await.is_err());
            }
            hits
        })
    };
    let a = run(7);
    assert_eq!(a, run(7), "same seed, same hits");
    assert_ne!(a, run(8));
    let n = a.iter().filter(|h| **h).count();
    assert!((350..650).contains(&n), "{n} of 2000 hit at p = 0.25");
}

#[test]
fn corrupt_data_flips_reads_and_stored_writes_but_not_the_callers_buffer() {
    let (base, ee) = stack(16);
    let ctl = control(&ee).unwrap();
    on_reactor(move || async move {
        let ch = chan(&ee);
        ch.write(0, IoBuf::from_slice(&[0x11; 512])).await.unwrap();
        ctl.inject(
            IoType::Read,
            Injection {
                corrupt_offset: 5,
                corrupt_value: 0xff,
                ..Injection::new(ErrorKind::CorruptData, 1)
            },
        );
        let r = ch.read(0, 1).await.unwrap();
        assert_eq!(r.as_slice()[5], 0x11 ^ 0xff);
        assert_eq!(
            ch.read(0, 1).await.unwrap().as_slice()[5],
            0x11,
            "only one read hit"
        );

        ctl.inject(
            IoType::Write,
            Injection {
                corrupt_offset: 7,
                corrupt_value: 0x0f,
                ..Injection::new(ErrorKind::CorruptData, 1)
            },
        );
        let mut io = IoBox::new();
        io.prep(IoType::Write, 1, 1)
            .set_buf(IoBuf::from_slice(&[0x22; 512]));
        let io = ch.submit_wait(io).await;
        assert_eq!(io.status(), IoStatus::Success);
        assert_eq!(
            io.bufs[0].as_slice()[7],
            0x22,
            "submitter's buffer restored"
        );
        let stored = ch.read(1, 1).await.unwrap();
        assert_eq!(stored.as_slice()[7], 0x22 ^ 0x0f);
        drop(base);
    });
}

#[test]
fn pending_ios_wait_for_resume_or_are_aborted_by_reset() {
    let (_base, ee) = stack(16);
    on_reactor(move || async move {
        let ctl = control(&ee).unwrap();
        let ch = chan(&ee);
        ctl.inject(IoType::Read, Injection::new(ErrorKind::Pending, 2));
        let done = Rc::new(Cell::new(Vec::<IoStatus>::new()));
        let d = done.clone();
        let cb: Rc<dyn IoDone> = Rc::new(move |io: IoBox, _| {
            let mut v = d.take();
            v.push(io.status());
            d.set(v);
        });
        for _ in 0..2 {
            let mut io = IoBox::new();
            io.prep(IoType::Read, 0, 1).set_buf(IoBuf::new(512));
            ch.submit(io, cb.clone(), 0);
        }
        reactor::sleep(std::time::Duration::from_millis(5)).await;
        assert!(done.take().is_empty(), "parked");
        ctl.resume_pending();
        while ch.inflight() > 0 {
            reactor::yield_now().await;
        }
        assert_eq!(done.take(), vec![IoStatus::Success, IoStatus::Success]);

        ctl.inject(IoType::Read, Injection::new(ErrorKind::Pending, 1));
        let mut io = IoBox::new();
        io.prep(IoType::Read, 0, 1).set_buf(IoBuf::new(512));
        ch.submit(io, cb.clone(), 0);
        ch.reset().await.unwrap();
        while ch.inflight() > 0 {
            reactor::yield_now().await;
        }
        assert_eq!(done.take(), vec![IoStatus::Aborted]);
    });
}

#[test]
fn nomem_is_retried_by_the_layer_and_every_io_completes() {
    let (_base, ee) = stack(1024);
    let ctl = control(&ee).unwrap();
    ctl.inject(IoType::Write, Injection::new(ErrorKind::NoMem, 500));
    ctl.inject(IoType::Read, Injection::new(ErrorKind::NoMem, 500));
    let (ok, total) = on_reactor(move || async move {
        let ch = chan(&ee);
        let ok = Rc::new(Cell::new(0u32));
        let total = Rc::new(Cell::new(0u32));
        let (o, t) = (ok.clone(), total.clone());
        let cb: Rc<dyn IoDone> = Rc::new(move |io: IoBox, ctx| {
            if io.status() == IoStatus::Success
                && (io.io_type() != IoType::Read || io.bufs[0].as_slice()[0] == ctx as u8)
            {
                o.set(o.get() + 1);
            }
            t.set(t.get() + 1);
        });
        for i in 0..1024u64 {
            let mut io = IoBox::new();
            io.prep(IoType::Write, i, 1)
                .set_buf(IoBuf::from_slice(&[i as u8; 512]));
            ch.submit(io, cb.clone(), i);
        }
        while total.get() < 1024 {
            reactor::yield_now().await;
        }
        for i in 0..1024u64 {
            let mut io = IoBox::new();
            io.prep(IoType::Read, i, 1).set_buf(IoBuf::new(512));
            ch.submit(io, cb.clone(), i);
        }
        while total.get() < 2048 {
            reactor::yield_now().await;
        }
        (ok.get(), total.get())
    });
    assert_eq!((ok, total), (2048, 2048));
}

#[test]
fn dropped_writes_succeed_and_store_nothing() {
    let (_base, ee) = stack(16);
    let ctl = control(&ee).unwrap();
    on_reactor(move || async move {
        let ch = chan(&ee);
        ctl.inject(IoType::Write, Injection::new(ErrorKind::Drop, 1));
        ch.write(3, IoBuf::from_slice(&[9; 512])).await.unwrap();
        assert!(ch
            .read(3, 1)
            .await
            .unwrap()
            .as_slice()
            .iter()
            .all(|&x| x == 0));
        ch.write(3, IoBuf::from_slice(&[9; 512])).await.unwrap();
        assert!(ch
            .read(3, 1)
            .await
            .unwrap()
            .as_slice()
            .iter()
            .all(|&x| x == 9));
    });
}

#[test]
fn volatile_cache_keeps_data_visible_and_flushes_through() {
    let (base, ee) = stack(128);
    let ctl = control(&ee).unwrap();
    ctl.set_volatile_cache(true);
    on_reactor(move || async move {
        let ch = chan(&ee);
        check_integrity(&ch, 33, 200, true).await;
        assert!(ctl.held_writes() > 0, "writes are held, not written");
        ch.flush().await.unwrap();
        assert_eq!(ctl.held_writes(), 0);
        // After the flush the base itself has the data.
        let via_ee = ch.read(0, 128).await.unwrap();
        let base_desc =
            crate::Descriptor::open(crate::lookup(&base).unwrap(), false, None).unwrap();
        let via_base = base_desc.io_channel().unwrap().read(0, 128).await.unwrap();
        assert!(via_ee.as_slice() == via_base.as_slice());
    });
}

/// Runs the same workload on a fresh stack and cuts power with `seed`;
/// returns the base's contents and the report.
fn cut(seed: u64) -> (Vec<u8>, PowerCutReport) {
    let (base, ee) = stack(64);
    on_reactor(move || async move {
        let ctl = control(&ee).unwrap();
        let ch = chan(&ee);
        // Durable: blocks 0..8 = 0xAA.
        ch.write(0, IoBuf::from_slice(&[0xAA; 8 * 512]))
            .await
            .unwrap();
        ch.flush().await.unwrap();
        ctl.set_volatile_cache(true);
        ch.write(0, IoBuf::from_slice(&[0xAA; 8 * 512]))
            .await
            .unwrap();
        ch.flush().await.unwrap();
        // Held: 40 writes of 2 blocks each over blocks 8..64, then one that
        // overwrites durable block 0.
        for i in 0..40u64 {
            let blk = 8 + (i * 2) % 56;
            ch.write(blk, IoBuf::from_slice(&[i as u8 + 1; 1024]))
                .await
                .unwrap();
        }
        ch.write(0, IoBuf::from_slice(&[0xBB; 512])).await.unwrap();
        assert_eq!(
            ch.read(0, 1).await.unwrap().as_slice()[0],
            0xBB,
            "held data is visible before the cut"
        );
        let report = ctl.power_cut(seed).await.unwrap();
        assert_eq!(ctl.held_writes(), 0);
        let base_ch = crate::Descriptor::open(crate::lookup(&base).unwrap(), false, None)
            .unwrap()
            .io_channel()
            .unwrap();
        let disk = base_ch.read(0, 64).await.unwrap().as_slice().to_vec();
        // Reads after the cut see the disk, not the lost cache.
        assert!(ch.read(0, 64).await.unwrap().as_slice() == disk.as_slice());
        (disk, report)
    })
}

#[test]
fn power_cut_drops_only_unflushed_writes_and_replays_from_its_seed() {
    let (a, ra) = cut(1234);
    let (b, rb) = cut(1234);
    assert_eq!(ra, rb);
    assert!(a == b, "same seed, same disk");
    let (c, rc) = cut(99);
    assert!(a != c || ra != rc, "another seed, another outcome");
    assert_eq!(ra.kept + ra.dropped + ra.torn, 41);
    assert!(ra.kept > 0 && ra.dropped > 0 && ra.torn > 0, "{ra:?}");
    for disk in [&a, &c] {
        // Flushed blocks 1..8 survive whatever happens.
        assert!(disk[512..8 * 512].iter().all(|&x| x == 0xAA));
        // Block 0 sector: old (0xAA) or new (0xBB), nothing else.
        assert!(disk[..512].iter().all(|&x| x == 0xAA || x == 0xBB));
        // Every other sector holds zeros (never written durably) or the
        // value of one write that covered it; sectors are never mixed inside.
        for s in disk[8 * 512..].chunks(512) {
            assert!(s.iter().all(|&x| x == s[0]), "a sector is atomic");
            assert!(s[0] <= 40, "only values the workload wrote");
        }
    }
}
