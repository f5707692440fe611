//! Running out of metadata space, as dm-thin does it: the pool commits
//! while free metadata (less the reserve and what the commit needs) is
//! still there, then enters out-of-metadata-space mode: no needs_check,
//! writes that need a new mapping and control calls that change metadata
//! fail, everything else works, a reopen finds the same mode, and growing
//! the metadata bdev returns the pool to write mode.

mod thin_util;

use std::path::{Path, PathBuf};

use bdev::modules::uring::{self, UringOptions};
use bdev::IoStatus;
use thin::{PoolMode, PoolOptions};
use thin_util::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A file of `bytes` under a fresh directory, as a uring bdev.
fn file_bdev(dir: &Path, name: &str, bytes: u64) -> (String, PathBuf) {
    let path = dir.join(format!("{name}.img"));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    let b = unique(name);
    uring::create(UringOptions {
        name: b.clone(),
        filename: path.clone(),
        block_size: Some(BS),
        uuid: None,
    })
    .unwrap();
    (b, path)
}

fn grow(path: &Path, bdev_name: &str, bytes: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    uring::rescan(&bdev::lookup(bdev_name).unwrap()).unwrap();
}

fn mode_and_check(p: &str) -> (PoolMode, bool) {
    let pool = thin::pool(p).unwrap();
    (pool.mode(), thin::pool_info(&pool).needs_check)
}

/// 4 KiB writes, each to a new data block, on a 256 KiB metadata device
/// (before the fix: EIO, read-only with needs_check, and so after a
/// reopen).
#[test]
fn a_small_metadata_device_fills_into_out_of_metadata_space_not_needs_check() {
    run(|| async {
        let dir = std::env::temp_dir().join(unique("thin-meta-space-"));
        std::fs::create_dir_all(&dir).unwrap();
        let (mb, mpath) = file_bdev(&dir, "msm", 256 * KIB);
        let (db, _) = file_bdev(&dir, "msd", 1024 * MIB);
        let p = unique("msp");
        // Commits on the period, as a pool in use makes them.
        let opts = PoolOptions {
            commit_period_ms: 10,
            ..Default::default()
        };
        thin::create_pool(&p, &mb, Some(&db), opts.clone())
            .await
            .unwrap();
        let v = unique("msv");
        thin::create_volume(&p, &v, 1024 * MIB, Some(0))
            .await
            .unwrap();
        let desc = bdev::open(&v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        // Each write provisions a data block; stride 16 bdev blocks.
        let mut written = 0u64;
        let failed_with = loop {
            let at = written * 16;
            assert!(
                at < 262_144,
                "16384 mappings fit in 256 KiB? the test is wrong"
            );
            let s = write(&ch, at, &pattern(written, at, 1)).await;
            if s != IoStatus::Success {
                break s;
            }
            written += 1;
        };
        assert!(written > 100, "only {written} blocks were mapped");
        assert_eq!(
            failed_with,
            IoStatus::IoError(libc::EIO),
            "dm-thin's answer"
        );
        assert_eq!(mode_and_check(&p), (PoolMode::OutOfMetadataSpace, false));
        // Everything that needs no new metadata works.
        assert_eq!(ch.flush().await, Ok(()));
        assert_eq!(write(&ch, 0, &pattern(99, 0, 1)).await, IoStatus::Success);
        assert_eq!(read(&ch, 16, 1).await.unwrap(), pattern(1, 16, 1));
        let e = thin::create_volume(&p, &unique("msx"), MIB, None)
            .await
            .unwrap_err();
        assert_eq!(e.errno(), libc::ENOSPC, "{e}");
        drop((ch, desc));
        thin::delete_pool(&p).await.unwrap();
        let (ok, out) = thin_check(&mb, 64).await;
        assert!(ok, "thin_check: {out}");
        // Reopened: still out of metadata space, not read-only.
        thin::create_pool(&p, &mb, Some(&db), opts).await.unwrap();
        assert_eq!(mode_and_check(&p), (PoolMode::OutOfMetadataSpace, false));
        // Grown: write mode, and new blocks map again.
        grow(&mpath, &mb, 2 * MIB);
        thin::resize_pool(&p).await.unwrap();
        assert_eq!(mode_and_check(&p), (PoolMode::Write, false));
        thin::activate(&p, &v, 0, 1024 * MIB).await.unwrap();
        let desc = bdev::open(&v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        let at = written * 16;
        assert_eq!(write(&ch, at, &pattern(7, at, 1)).await, IoStatus::Success);
        assert_eq!(read(&ch, at, 1).await.unwrap(), pattern(7, at, 1));
        assert_eq!(read(&ch, 0, 1).await.unwrap(), pattern(99, 0, 1));
        drop((ch, desc));
        thin::delete_pool(&p).await.unwrap();
        let (ok, out) = thin_check(&mb, 512).await;
        assert!(ok, "thin_check: {out}");
        for b in [&mb, &db] {
            bdev::unregister(b).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Creating devices until the metadata is full: the create that does not
/// fit is ENOSPC with a message that says so (before: "busy: no free
/// device id" from a pool in fail mode), snapshots and deletes keep the
/// pool consistent, and deleting devices does not need room.
#[test]
fn creating_devices_until_full_answers_enospc() {
    run(|| async {
        let dir = std::env::temp_dir().join(unique("thin-meta-devs-"));
        std::fs::create_dir_all(&dir).unwrap();
        let (mb, _) = file_bdev(&dir, "mdm", 512 * KIB);
        let (db, _) = file_bdev(&dir, "mdd", 64 * MIB);
        let p = unique("mdp");
        thin::create_pool(&p, &mb, Some(&db), PoolOptions::default())
            .await
            .unwrap();
        let mut names = Vec::new();
        let err = loop {
            let n = unique("mdv");
            match thin::create_volume(&p, &n, MIB, None).await {
                Ok(_) => names.push(n),
                Err(e) => break e,
            }
            assert!(names.len() < 100_000, "the metadata never filled");
        };
        assert_eq!(err.errno(), libc::ENOSPC, "{err}");
        assert!(err.to_string().contains("metadata space"), "{err}");
        assert_eq!(mode_and_check(&p), (PoolMode::OutOfMetadataSpace, false));
        let e = thin::snapshot(&names[0], &unique("mds"), None)
            .await
            .unwrap_err();
        assert_eq!(e.errno(), libc::ENOSPC, "{e}");
        thin::delete_pool(&p).await.unwrap();
        let (ok, out) = thin_check(&mb, 128).await;
        assert!(ok, "thin_check: {out}");
        for b in [&mb, &db] {
            bdev::unregister(b).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}
