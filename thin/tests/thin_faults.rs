//! Fault injection and running out of space.
//! - An I/O error on the metadata bdev at each step of a commit (the data
//!   flush, a metadata block write, the metadata flush) fails the flush
//!   that asked for it, leaves the pool read-only with needs_check set,
//!   and the previous commit intact on disk (thin_check; reopen).
//! - An error on the data bdev fails that I/O only.
//! - Out of data space: writes queue then time out with ENOSPC, or fail
//!   at once with error_if_no_space; mapped I/O keeps working; a discard
//!   or a delete, or growing the data bdev, returns the pool to write.

mod thin_util;

use std::time::{Duration, Instant};

use bdev::modules::error::{self, ErrorKind, Injection};
use bdev::modules::uring::{self, UringOptions};
use bdev::{IoStatus, IoType};
use thin::{PoolMode, PoolOptions};
use thin_util::*;

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Step {
    DataFlush,
    MetadataWrite,
    MetadataFlush,
}

/// A pool on error bdevs over two malloc bdevs (no periodic commit in
/// the way) with one 4 MiB volume, device 1.
struct FaultPool {
    bases: [String; 2],
    em: String,
    ed: String,
    p: String,
    v: String,
    opts: PoolOptions,
}

async fn fault_pool() -> FaultPool {
    let (mm, md, p, v) = (unique("fm"), unique("fd"), unique("fp"), unique("fv"));
    malloc(&mm, 4 * MIB);
    malloc(&md, 16 * MIB);
    let em = error::create(&mm, None).unwrap().name().to_string();
    let ed = error::create(&md, None).unwrap().name().to_string();
    let opts = PoolOptions {
        commit_period_ms: 3_600_000,
        ..Default::default()
    };
    thin::create_pool(&p, &em, Some(&ed), opts.clone())
        .await
        .unwrap();
    thin::create_volume(&p, &v, 4 * MIB, Some(1)).await.unwrap();
    FaultPool {
        bases: [mm, md],
        em,
        ed,
        p,
        v,
        opts,
    }
}

impl FaultPool {
    fn remove_bdevs(&self) {
        for b in [&self.em, &self.ed, &self.bases[0], &self.bases[1]] {
            bdev::unregister(b).unwrap();
        }
    }
}

async fn metadata_fault(step: Step) {
    let f = fault_pool().await;
    let (em, ed, p, v, opts) = (&f.em, &f.ed, &f.p, &f.v, f.opts.clone());
    let desc = bdev::open(v, true, None).unwrap();
    let ch = desc.io_channel().unwrap();
    let a = pattern(1, 0, 32);
    assert_eq!(write(&ch, 0, &a).await, IoStatus::Success);
    ch.flush().await.unwrap();
    // A new block, then a commit that fails at `step`.
    let b = pattern(2, 64, 16);
    assert_eq!(write(&ch, 64, &b).await, IoStatus::Success);
    let (bdev, t) = match step {
        Step::DataFlush => (&ed, IoType::Flush),
        Step::MetadataWrite => (&em, IoType::Write),
        Step::MetadataFlush => (&em, IoType::Flush),
    };
    error::control(bdev)
        .unwrap()
        .inject(t, Injection::new(ErrorKind::Failure, 1));
    let r = ch.flush().await;
    assert_eq!(r, Err(IoStatus::IoError(libc::EIO)), "{step:?}");
    let pool = thin::pool(p).unwrap();
    let info = thin::pool_info(&pool);
    assert_eq!(pool.mode(), PoolMode::ReadOnly, "{step:?}: {info:?}");
    assert!(info.needs_check, "{step:?}");
    // The committed data reads back; the lost block reads as unmapped.
    assert_eq!(read(&ch, 0, 32).await.unwrap(), a, "{step:?}");
    assert!(read(&ch, 64, 16).await.unwrap().iter().all(|&x| x == 0));
    // Read-only: overwriting a mapped block works, a new block does not.
    assert_eq!(write(&ch, 0, &pattern(3, 0, 1)).await, IoStatus::Success);
    assert_eq!(
        write(&ch, 200, &pattern(4, 200, 1)).await,
        IoStatus::IoError(libc::EIO)
    );
    drop((ch, desc));
    thin::delete_pool(p).await.unwrap();
    let (ok, out) = thin_check(em, 1024).await;
    assert!(ok, "{step:?}: thin_check: {out}");
    // Reopened: still read-only (needs_check), the first commit intact.
    thin::create_pool(p, em, Some(ed), opts).await.unwrap();
    assert_eq!(thin::pool(p).unwrap().mode(), PoolMode::ReadOnly);
    let vols = thin::volumes(p).await.unwrap();
    assert_eq!(vols[0].device.mapped_blocks, 2, "{step:?}");
    thin::delete_pool(p).await.unwrap();
    f.remove_bdevs();
}

#[test]
fn a_failed_commit_step_leaves_the_last_commit_and_goes_read_only() {
    run(|| async {
        for step in [Step::DataFlush, Step::MetadataWrite, Step::MetadataFlush] {
            metadata_fault(step).await;
        }
    });
}

/// When even the abort after a failed commit fails (the metadata cannot be
/// read back), the pool fails, and so does all I/O, mapped blocks'
/// included: the fast path hears of it from the volume, not the pool.
#[test]
fn a_failed_abort_fails_the_pool_and_every_io() {
    run(|| async {
        let f = fault_pool().await;
        let desc = bdev::open(&f.v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        let a = pattern(1, 0, 32);
        assert_eq!(write(&ch, 0, &a).await, IoStatus::Success);
        ch.flush().await.unwrap();
        assert_eq!(read(&ch, 0, 1).await.unwrap(), pattern(1, 0, 1));
        assert_eq!(write(&ch, 64, &pattern(2, 64, 16)).await, IoStatus::Success);
        let ctl = error::control(&f.em).unwrap();
        for t in [IoType::Write, IoType::Read, IoType::Flush] {
            ctl.inject(t, Injection::new(ErrorKind::Failure, u32::MAX));
        }
        assert_eq!(ch.flush().await, Err(IoStatus::IoError(libc::EIO)));
        assert_eq!(thin::pool(&f.p).unwrap().mode(), PoolMode::Fail);
        let eio = IoStatus::IoError(libc::EIO);
        assert_eq!(read(&ch, 0, 1).await.err(), Some(eio), "mapped read");
        assert_eq!(write(&ch, 1, &pattern(3, 1, 1)).await, eio, "mapped write");
        assert_eq!(write(&ch, 200, &pattern(3, 200, 1)).await, eio, "new block");
        ctl.clear();
        drop((ch, desc));
        thin::delete_pool(&f.p).await.unwrap();
        f.remove_bdevs();
    });
}

/// Fails the n-th metadata write of one commit, for every n up to the
/// superblock's (the last write): each time the flush fails, the pool goes
/// read-only with needs_check, and the last commit is what reopens.
#[test]
fn failing_any_write_of_a_commit_keeps_the_last_commit() {
    run(|| async {
        for n in 0.. {
            let f = fault_pool().await;
            let (em, ed, p, v, opts) = (&f.em, &f.ed, &f.p, &f.v, f.opts.clone());
            let desc = bdev::open(v, true, None).unwrap();
            let ch = desc.io_channel().unwrap();
            assert_eq!(write(&ch, 0, &pattern(1, 0, 16)).await, IoStatus::Success);
            ch.flush().await.unwrap();
            assert_eq!(write(&ch, 16, &pattern(2, 16, 16)).await, IoStatus::Success);
            error::control(em).unwrap().inject(
                IoType::Write,
                Injection {
                    skip: n,
                    ..Injection::new(ErrorKind::Failure, 1)
                },
            );
            let r = ch.flush().await;
            drop((ch, desc));
            let mode = thin::pool(p).unwrap().mode();
            thin::delete_pool(p).await.unwrap();
            let (ok, out) = thin_check(em, 1024).await;
            assert!(ok, "write {n}: thin_check: {out}");
            thin::create_pool(p, em, Some(ed), opts).await.unwrap();
            let mapped = thin::volumes(p).await.unwrap()[0].device.mapped_blocks;
            thin::delete_pool(p).await.unwrap();
            f.remove_bdevs();
            match r {
                Err(s) => {
                    assert_eq!(s, IoStatus::IoError(libc::EIO), "write {n}");
                    assert_eq!(mode, PoolMode::ReadOnly, "write {n}");
                    assert_eq!(mapped, 1, "write {n}: the last commit reopens");
                }
                Ok(()) => {
                    // n is past the commit's last write: it committed.
                    assert!(n > 1, "a commit writes blocks and a superblock");
                    assert_eq!(mapped, 2);
                    break;
                }
            }
        }
    });
}

#[test]
fn a_data_error_fails_only_that_io() {
    run(|| async {
        let (mm, md, p) = (unique("dm"), unique("dd"), unique("dp"));
        malloc(&mm, 4 * MIB);
        malloc(&md, 16 * MIB);
        let ed = error::create(&md, None).unwrap().name().to_string();
        thin::create_pool(&p, &mm, Some(&ed), PoolOptions::default())
            .await
            .unwrap();
        let v = unique("dv");
        thin::create_volume(&p, &v, 4 * MIB, None).await.unwrap();
        let desc = bdev::open(&v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        let a = pattern(1, 0, 32);
        assert_eq!(write(&ch, 0, &a).await, IoStatus::Success);
        error::control(&ed)
            .unwrap()
            .inject(IoType::Write, Injection::new(ErrorKind::Failure, 1));
        assert_eq!(
            write(&ch, 4, &pattern(2, 4, 1)).await,
            IoStatus::IoError(libc::EIO)
        );
        assert_eq!(read(&ch, 0, 32).await.unwrap(), a);
        ch.flush().await.unwrap();
        assert_eq!(thin::pool(&p).unwrap().mode(), PoolMode::Write);
        let vols = thin::volumes(&p).await.unwrap();
        assert_eq!(vols[0].device.mapped_blocks, 2);
        drop((ch, desc));
        thin::delete_pool(&p).await.unwrap();
        let (ok, out) = thin_check(&mm, 1024).await;
        assert!(ok, "thin_check: {out}");
    });
}

/// A pool of `blocks` 64 KiB data blocks on a file (so it can grow).
async fn small_pool(
    blocks: u64,
    opts: PoolOptions,
) -> (String, String, std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(unique("thin-space-"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("data.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(blocks * 64 * 1024)
        .unwrap();
    let (mm, ud, p) = (unique("sm"), unique("sd"), unique("sp"));
    malloc(&mm, 4 * MIB);
    uring::create(UringOptions {
        name: ud.clone(),
        filename: file.clone(),
        block_size: Some(BS),
        uuid: None,
    })
    .unwrap();
    thin::create_pool(&p, &mm, Some(&ud), opts).await.unwrap();
    (p, ud, file, mm)
}

/// A volume of 4 MiB on a `small_pool` of `blocks` data blocks, every one
/// of them provisioned by a write of `n` blocks at its start: the pool is
/// full.
struct Full {
    pool: String,
    data_bdev: String,
    file: std::path::PathBuf,
    vol: String,
    _desc: bdev::Descriptor,
    ch: bdev::IoChannel,
}

async fn full_volume(blocks: u64, opts: PoolOptions, n: u64) -> Full {
    let (pool, data_bdev, file, _) = small_pool(blocks, opts).await;
    let vol = unique("fv");
    thin::create_volume(&pool, &vol, 4 * MIB, None)
        .await
        .unwrap();
    let desc = bdev::open(&vol, true, None).unwrap();
    let ch = desc.io_channel().unwrap();
    for b in 0..blocks {
        assert_eq!(
            write(&ch, b * 16, &pattern(b, b * 16, n)).await,
            IoStatus::Success
        );
    }
    Full {
        pool,
        data_bdev,
        file,
        vol,
        _desc: desc,
        ch,
    }
}

#[test]
fn out_of_data_space_queues_then_times_out_and_recovers_by_discard() {
    run(|| async {
        let opts = PoolOptions {
            no_space_timeout_s: 1,
            low_water_mark_blocks: 2,
            ..Default::default()
        };
        let f = full_volume(4, opts, 16).await;
        let (p, ch) = (f.pool.clone(), f.ch.clone());
        let start = Instant::now();
        let r = write(&ch, 4 * 16, &pattern(9, 64, 1)).await;
        assert_eq!(r, IoStatus::NoSpace);
        assert!(
            start.elapsed() >= Duration::from_millis(900),
            "it queued first"
        );
        assert_eq!(thin::pool(&p).unwrap().mode(), PoolMode::OutOfDataSpace);
        // Mapped blocks keep working.
        assert_eq!(write(&ch, 1, &pattern(10, 1, 1)).await, IoStatus::Success);
        assert_eq!(read(&ch, 1, 1).await.unwrap(), pattern(10, 1, 1));
        // After the timeout, writes needing space fail at once.
        let start = Instant::now();
        assert_eq!(write(&ch, 80, &pattern(11, 80, 1)).await, IoStatus::NoSpace);
        assert!(start.elapsed() < Duration::from_millis(500));
        // A discard frees a block; the commit returns the pool to write.
        ch.unmap(0, 16).await.unwrap();
        ch.flush().await.unwrap();
        assert_eq!(thin::pool(&p).unwrap().mode(), PoolMode::Write);
        assert_eq!(write(&ch, 80, &pattern(12, 80, 1)).await, IoStatus::Success);
        let events = thin::events_since(0, 10_000);
        assert!(events
            .iter()
            .any(|(_, e)| matches!(e, thin::PoolEvent::DataLowWater { pool, .. } if *pool == p)));
        assert!(events
            .iter()
            .any(|(_, e)| matches!(e, thin::PoolEvent::NoSpaceTimeout { pool } if *pool == p)));
        drop((ch, f));
        thin::delete_pool(&p).await.unwrap();
    });
}

#[test]
fn error_if_no_space_fails_at_once_and_growing_resumes_queued_writes() {
    run(|| async {
        let opts = PoolOptions {
            error_if_no_space: true,
            ..Default::default()
        };
        let f = full_volume(2, opts, 1).await;
        let (p, v, ch) = (f.pool.clone(), f.vol.clone(), f.ch.clone());
        assert_eq!(write(&ch, 32, &pattern(5, 32, 1)).await, IoStatus::NoSpace);
        // Deleting a volume frees its blocks (deletes work when full).
        let v2 = unique("ev2");
        drop((ch, f));
        thin::delete_volume(&v, false).await.unwrap();
        thin::create_volume(&p, &v2, 4 * MIB, None).await.unwrap();
        let desc = bdev::open(&v2, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        assert_eq!(write(&ch, 0, &pattern(6, 0, 1)).await, IoStatus::Success);
        assert_eq!(thin::pool(&p).unwrap().mode(), PoolMode::Write);
        drop((ch, desc));
        thin::delete_pool(&p).await.unwrap();
    });
}

#[test]
fn growing_the_data_bdev_resumes_queued_writes() {
    run(|| async {
        let f = full_volume(2, PoolOptions::default(), 1).await;
        let (p, ch) = (f.pool.clone(), f.ch.clone());
        let (ud, file) = (f.data_bdev.clone(), f.file.clone());
        let ch2 = ch.clone();
        let queued = reactor::spawn_local(async move { write(&ch2, 48, &pattern(7, 48, 2)).await });
        while thin::pool(&p).unwrap().mode() != PoolMode::OutOfDataSpace {
            reactor::sleep(Duration::from_millis(5)).await;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(8 * 64 * 1024)
            .unwrap();
        uring::rescan(&bdev::lookup(&ud).unwrap()).unwrap();
        assert_eq!(queued.await, IoStatus::Success);
        assert_eq!(read(&ch, 48, 2).await.unwrap(), pattern(7, 48, 2));
        assert_eq!(thin::pool(&p).unwrap().mode(), PoolMode::Write);
        assert_eq!(
            thin::pool_info(&thin::pool(&p).unwrap()).stats.data_blocks,
            8
        );
        drop((ch, f));
        thin::delete_pool(&p).await.unwrap();
        let _ = std::fs::remove_file(&file);
    });
}

/// A commit that no flush of the volume asked for (the periodic one, or
/// another volume's) fails: the volume's changes are lost, so every later
/// flush of it fails, not only the first, while a volume that lost nothing
/// flushes fine. Before the fix the changed flags were cleared before the
/// commit's writes, so the abort found nothing lost and the flush passed.
#[test]
fn after_a_failed_background_commit_every_flush_of_a_changed_volume_fails() {
    run(|| async {
        let f = fault_pool().await;
        let quiet = unique("fq");
        thin::create_volume(&f.p, &quiet, 4 * MIB, Some(2))
            .await
            .unwrap();
        let desc = bdev::open(&f.v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        let qdesc = bdev::open(&quiet, true, None).unwrap();
        let qch = qdesc.io_channel().unwrap();
        assert_eq!(write(&qch, 0, &pattern(7, 0, 16)).await, IoStatus::Success);
        assert_eq!(write(&ch, 0, &pattern(1, 0, 16)).await, IoStatus::Success);
        ch.flush().await.unwrap();
        qch.flush().await.unwrap();
        // Two new blocks, then a commit of nobody's asking that fails.
        assert_eq!(write(&ch, 64, &pattern(2, 64, 32)).await, IoStatus::Success);
        error::control(&f.em)
            .unwrap()
            .inject(IoType::Write, Injection::new(ErrorKind::Failure, 1));
        assert!(thin::commit_all().await.is_err());
        let pool = thin::pool(&f.p).unwrap();
        assert_eq!(pool.mode(), PoolMode::ReadOnly);
        assert!(thin::pool_info(&pool).needs_check);
        let eio = Err(IoStatus::IoError(libc::EIO));
        for i in 0..3 {
            assert_eq!(ch.flush().await, eio, "flush {i} after the abort");
        }
        assert_eq!(qch.flush().await, Ok(()), "a volume that lost nothing");
        // What the last commit held still reads back.
        assert_eq!(read(&ch, 0, 16).await.unwrap(), pattern(1, 0, 16));
        assert_eq!(read(&qch, 0, 16).await.unwrap(), pattern(7, 0, 16));
        drop((ch, desc, qch, qdesc));
        thin::delete_pool(&f.p).await.unwrap();
        let (ok, out) = thin_check(&f.em, 1024).await;
        assert!(ok, "thin_check: {out}");
        f.remove_bdevs();
    });
}

/// A FLUSH that arrives while a commit it did not ask for is writing
/// metadata completes only after that commit landed: the volume's changes
/// are in it. Before the fix the changed flags were cleared when the
/// commit began writing, so such a flush answered at once, and a power cut
/// before the superblock lost writes it had acknowledged as durable (the
/// crash test's seed 76 on a busy machine).
#[test]
fn a_flush_during_a_commit_waits_for_it() {
    use bdev::modules::delay::{self, DelayOptions};
    use std::cell::Cell;
    use std::rc::Rc;
    run(|| async {
        let (mm, md, p, v) = (unique("wm"), unique("wd"), unique("wp"), unique("wv"));
        malloc(&mm, 4 * MIB);
        malloc(&md, 16 * MIB);
        let slow = unique("wslow");
        delay::create(DelayOptions {
            name: slow.clone(),
            base_bdev_name: mm.clone(),
            latency_us: [0, 0, 100_000, 100_000],
            uuid: None,
        })
        .unwrap();
        let opts = PoolOptions {
            commit_period_ms: 3_600_000,
            ..Default::default()
        };
        thin::create_pool(&p, &slow, Some(&md), opts).await.unwrap();
        thin::create_volume(&p, &v, 4 * MIB, None).await.unwrap();
        let desc = bdev::open(&v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        assert_eq!(write(&ch, 0, &pattern(1, 0, 16)).await, IoStatus::Success);
        let order = Rc::new(Cell::new(0u32));
        let (o1, o2) = (order.clone(), order.clone());
        let commit = reactor::spawn_local(async move {
            thin::commit_all().await.unwrap();
            o1.set(o1.get() * 10 + 1);
        });
        // The commit is now writing metadata, 100 ms a write.
        reactor::sleep(Duration::from_millis(30)).await;
        ch.flush().await.unwrap();
        o2.set(o2.get() * 10 + 2);
        commit.await;
        assert_eq!(
            order.get(),
            12,
            "the flush answered before the commit landed"
        );
        drop((ch, desc));
        thin::delete_pool(&p).await.unwrap();
        for b in [&slow, &mm, &md] {
            bdev::unregister(b).unwrap();
        }
    });
}
