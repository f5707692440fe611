//! A thin volume's fast path hands its I/O through to the data bdev with no
//! completion layer of its own (`IoChannel::submit_through`): the data
//! bdev must still count it, a NOMEM from below must be retried without
//! leaking the I/O's epoch count, and a pool stacked on another pool's
//! volume (where the lower volume cannot pass through again) must keep
//! every byte.

mod thin_util;

use bdev::modules::error::{self, ErrorKind, Injection};
use bdev::{IoStatus, IoType};
use thin_util::*;

const MIB: u64 = 1 << 20;

/// Ops of `t` the bdev has completed, as its iostat says.
fn ops(name: &str, t: IoType) -> u64 {
    bdev::lookup(name).expect("bdev").iostat().get(t).ops
}

#[test]
fn the_data_bdev_counts_fast_path_io() {
    run(|| async {
        let d = unique("td");
        malloc(&d, 16 * MIB);
        let (p, v, desc, ch) = pool_and_volume(&d, 8 * MIB).await;
        // Provision one block (the slow path), then overwrite and read it in
        // place (the fast path) one 4 KiB block at a time.
        assert_eq!(write(&ch, 0, &pattern(1, 0, 16)).await, IoStatus::Success);
        let (w0, r0) = (ops(&d, IoType::Write), ops(&d, IoType::Read));
        let (tw0, tr0) = (ops(&v, IoType::Write), ops(&v, IoType::Read));
        for i in 0..10 {
            assert_eq!(write(&ch, i, &pattern(2, i, 1)).await, IoStatus::Success);
            assert_eq!(read(&ch, i, 1).await.unwrap(), pattern(2, i, 1));
        }
        assert_eq!(ops(&d, IoType::Write) - w0, 10, "data bdev writes");
        assert_eq!(ops(&d, IoType::Read) - r0, 10, "data bdev reads");
        assert_eq!(ops(&v, IoType::Write) - tw0, 10, "volume writes");
        assert_eq!(ops(&v, IoType::Read) - tr0, 10, "volume reads");
        close_and_delete(&p, desc, ch).await;
        // The closed channel's counts stay with the data bdev.
        assert!(
            ops(&d, IoType::Write) - w0 >= 10,
            "data bdev writes after close"
        );
        assert!(
            ops(&d, IoType::Read) - r0 >= 10,
            "data bdev reads after close"
        );
    });
}

#[test]
fn nomem_from_the_data_bdev_is_retried_and_leaks_no_epoch() {
    run(|| async {
        let base = unique("tdb");
        malloc(&base, 16 * MIB);
        let d = error::create(&base, None).unwrap().name().to_string();
        let (p, v, desc, ch) = pool_and_volume(&d, 8 * MIB).await;
        assert_eq!(write(&ch, 0, &pattern(1, 0, 16)).await, IoStatus::Success);
        let ctl = error::control(&d).unwrap();
        ctl.inject(IoType::Write, Injection::new(ErrorKind::NoMem, 3));
        ctl.inject(IoType::Read, Injection::new(ErrorKind::NoMem, 3));
        for i in 0..6 {
            assert_eq!(write(&ch, i, &pattern(3, i, 1)).await, IoStatus::Success);
            assert_eq!(read(&ch, i, 1).await.unwrap(), pattern(3, i, 1));
        }
        // A snapshot of a live volume drains the origin's fast-path I/O;
        // an epoch count left behind by a retried I/O would time it out.
        thin::snapshot(&v, &unique("snap"), None).await.unwrap();
        assert_eq!(
            read(&ch, 0, 6).await.unwrap()[..],
            {
                let mut all = Vec::new();
                for i in 0..6 {
                    all.extend(pattern(3, i, 1));
                }
                all
            }[..]
        );
        close_and_delete(&p, desc, ch).await;
    });
}

#[test]
fn a_pool_on_another_pools_volume_keeps_every_byte() {
    run(|| async {
        let d1 = unique("td");
        malloc(&d1, 32 * MIB);
        // The lower volume, closed again: the upper pool claims it.
        let (p1, lower, ldesc, lch) = pool_and_volume(&d1, 16 * MIB).await;
        drop(lch);
        drop(ldesc);
        let (p2, upper, desc, ch) = pool_and_volume(&lower, 8 * MIB).await;
        // Provision, then overwrite in place: the upper fast path passes
        // through to the lower volume, whose fast path must then complete
        // its part itself.
        for round in 1..=3u64 {
            for b in [0u64, 5, 17, 40, 100] {
                let data = pattern(round, b, 2);
                assert_eq!(write(&ch, b, &data).await, IoStatus::Success);
            }
            for b in [0u64, 5, 17, 40, 100] {
                assert_eq!(read(&ch, b, 2).await.unwrap(), pattern(round, b, 2));
            }
        }
        // Both volumes' epochs drain (a leak would time these out).
        thin::snapshot(&upper, &unique("usnap"), None)
            .await
            .unwrap();
        thin::snapshot(&lower, &unique("lsnap"), None)
            .await
            .unwrap();
        assert_eq!(read(&ch, 40, 2).await.unwrap(), pattern(3, 40, 2));
        close_and_delete(&p2, desc, ch).await;
        thin::delete_pool(&p1).await.unwrap();
    });
}
