//! Thin pool basics on malloc bdevs: provisioning, zeroing, unmapped
//! reads, snapshots, discard passdown, reopen, and Debian's thin_check on
//! what the pool wrote.

mod thin_util;

use bdev::IoStatus;
use bdev::Module;
use thin::{DeltaBase, DeltaKind, PoolMode, PoolOptions};
use thin_util::*;

const MIB: u64 = 1 << 20;

#[test]
fn provision_read_back_reopen_and_thin_check() {
    run(|| async {
        let (m, d, p) = (unique("tm"), unique("td"), unique("pool"));
        malloc(&m, 4 * MIB);
        malloc(&d, 64 * MIB);
        let opts = PoolOptions::default();
        thin::create_pool(&p, &m, Some(&d), opts.clone())
            .await
            .unwrap();
        let v = unique("vol");
        let vb = thin::create_volume(&p, &v, 32 * MIB, None).await.unwrap();
        assert_eq!(vb.block_size(), BS);
        let desc = bdev::open(&v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        // Unprovisioned reads are zeros.
        assert!(read(&ch, 100, 4).await.unwrap().iter().all(|&b| b == 0));
        // A partial write into a new block: the rest of the block reads zero.
        let data = pattern(1, 17, 2);
        assert_eq!(write(&ch, 17, &data).await, IoStatus::Success);
        let got = read(&ch, 16, 16).await.unwrap();
        assert!(got[..4096].iter().all(|&b| b == 0));
        assert_eq!(&got[4096..3 * 4096], &data[..]);
        assert!(got[3 * 4096..].iter().all(|&b| b == 0));
        // A write crossing a 64 KiB block boundary (split in two).
        let cross = pattern(2, 30, 6);
        assert_eq!(write(&ch, 30, &cross).await, IoStatus::Success);
        assert_eq!(read(&ch, 30, 6).await.unwrap(), cross);
        // A whole-block write (no zeroing, the data lands first).
        let whole = pattern(3, 64, 16);
        assert_eq!(write(&ch, 64, &whole).await, IoStatus::Success);
        assert_eq!(read(&ch, 64, 16).await.unwrap(), whole);
        ch.flush().await.unwrap();
        let info = thin::pool_info(&thin::pool(&p).unwrap());
        assert_eq!(info.mode, "write");
        assert_eq!(
            info.stats.data_blocks - info.stats.free_data_blocks,
            3,
            "{info:?}"
        );
        drop(ch);
        drop(desc);
        close_and_check(&p, &m).await;
        // Reopen: the device and its data are back.
        thin::create_pool(&p, &m, Some(&d), opts).await.unwrap();
        let vols = thin::volumes(&p).await.unwrap();
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0].device.mapped_blocks, 3);
        assert!(vols[0].name.is_none(), "not active until activated");
        let dev = vols[0].device.dev_id;
        thin::activate(&p, &v, dev, 32 * MIB).await.unwrap();
        let desc = bdev::open(&v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        assert_eq!(read(&ch, 17, 2).await.unwrap(), data);
        assert_eq!(read(&ch, 30, 6).await.unwrap(), cross);
        assert_eq!(read(&ch, 64, 16).await.unwrap(), whole);
        drop(ch);
        drop(desc);
        thin::delete_pool(&p).await.unwrap();
    });
}

/// A data bdev without FLUSH (the null bdev, as SPDK's) has no volatile
/// cache: commits skip its flush and a volume's FLUSH succeeds, instead of
/// the first commit failing and the pool going read-only.
#[test]
fn a_data_bdev_without_flush_needs_none() {
    run(|| async {
        let (m, d, p) = (unique("tm"), unique("tnull"), unique("pool"));
        malloc(&m, 4 * MIB);
        let null = bdev::modules::null::create(bdev::modules::null::NullOptions {
            name: d.clone(),
            block_size: BS,
            num_blocks: 64 * MIB / BS as u64,
            uuid: None,
        })
        .unwrap();
        assert!(!null.io_type_supported(bdev::IoType::Flush));
        thin::create_pool(&p, &m, Some(&d), PoolOptions::default())
            .await
            .unwrap();
        let v = unique("vol");
        thin::create_volume(&p, &v, 32 * MIB, None).await.unwrap();
        let desc = bdev::open(&v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        assert_eq!(write(&ch, 17, &pattern(1, 17, 2)).await, IoStatus::Success);
        // A flush with a new mapping to commit, then one with nothing to
        // commit (the data bdev's own flush, which it does not have).
        ch.flush().await.unwrap();
        assert_eq!(write(&ch, 18, &pattern(2, 18, 1)).await, IoStatus::Success);
        ch.flush().await.unwrap();
        let info = thin::pool_info(&thin::pool(&p).unwrap());
        assert_eq!(info.mode, "write", "{info:?}");
        assert_eq!(info.stats.data_blocks - info.stats.free_data_blocks, 1);
        drop(ch);
        drop(desc);
        close_and_check(&p, &m).await;
    });
}

#[test]
fn one_device_layout_snapshots_and_delta() {
    run(|| async {
        let disk = unique("one");
        malloc(&disk, 64 * MIB);
        let p = unique("pool");
        thin::create_pool(&p, &disk, None, PoolOptions::default())
            .await
            .unwrap();
        let v = unique("vol");
        thin::create_volume(&p, &v, 16 * MIB, Some(7))
            .await
            .unwrap();
        let desc = bdev::open(&v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        let a = pattern(10, 0, 16);
        assert_eq!(write(&ch, 0, &a).await, IoStatus::Success);
        let b = pattern(11, 16, 16);
        assert_eq!(write(&ch, 16, &b).await, IoStatus::Success);
        // Snapshot, then overwrite part of the origin: copy on write.
        let s = unique("snap");
        thin::snapshot(&v, &s, None).await.unwrap();
        let a2 = pattern(12, 2, 1);
        assert_eq!(write(&ch, 2, &a2).await, IoStatus::Success);
        let sdesc = bdev::open(&s, true, None).unwrap();
        let sch = sdesc.io_channel().unwrap();
        assert_eq!(
            read(&sch, 0, 16).await.unwrap(),
            a,
            "snapshot keeps the old data"
        );
        let mut want = a.clone();
        want[2 * 4096..3 * 4096].copy_from_slice(&a2);
        assert_eq!(read(&ch, 0, 16).await.unwrap(), want);
        // Snapshot of the snapshot, written: every level keeps its view.
        let s2 = unique("snap2");
        thin::snapshot(&s, &s2, None).await.unwrap();
        let s2desc = bdev::open(&s2, true, None).unwrap();
        let s2ch = s2desc.io_channel().unwrap();
        let c = pattern(13, 20, 1);
        assert_eq!(write(&s2ch, 20, &c).await, IoStatus::Success);
        assert_eq!(read(&sch, 16, 16).await.unwrap(), b);
        assert_eq!(read(&ch, 16, 16).await.unwrap(), b);
        // Delta of the origin against its snapshot: block 0 differs.
        let d = thin::delta(&v, DeltaBase::Volume(s.clone())).await.unwrap();
        assert_eq!(
            d,
            vec![(DeltaKind::Different, 0, 1), (DeltaKind::Same, 1, 1)]
        );
        let info = thin::pool_info(&thin::pool(&p).unwrap());
        assert_eq!(info.stats.copied, 2, "{info:?}");
        // Incremental backup: hold a metadata snapshot, change the origin,
        // and the delta against the held view shows exactly the change.
        let held = thin::reserve_metadata_snap(&p).await.unwrap();
        assert!(held > 0);
        assert!(
            thin::reserve_metadata_snap(&p).await.is_err(),
            "only one at a time"
        );
        assert_eq!(write(&ch, 40, &pattern(14, 40, 1)).await, IoStatus::Success);
        let d = thin::delta(&v, DeltaBase::MetadataSnap).await.unwrap();
        assert_eq!(
            d,
            vec![(DeltaKind::Same, 0, 2), (DeltaKind::RightOnly, 2, 1)],
            "block 2 is new since the metadata snapshot"
        );
        let info = thin::pool_info(&thin::pool(&p).unwrap());
        assert_eq!(info.stats.metadata_snap, Some(held));
        thin::release_metadata_snap(&p).await.unwrap();
        assert!(thin::release_metadata_snap(&p).await.is_err());
        assert!(thin::delta(&v, DeltaBase::MetadataSnap).await.is_err());
        drop((ch, sch, s2ch, desc, sdesc, s2desc));
        thin::delete_volume(&s2, false).await.unwrap();
        thin::delete_volume(&s, false).await.unwrap();
        let vols = thin::volumes(&p).await.unwrap();
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0].device.exclusive_blocks, 3);
        thin::delete_pool(&p).await.unwrap();
        let (ok, out) = thin_check(&disk, 64).await;
        assert!(ok, "thin_check: {out}");
    });
}

#[test]
fn discard_unmaps_and_passes_down_only_unshared_blocks() {
    run(|| async {
        let (m, d, p) = (unique("tm"), unique("td"), unique("pool"));
        malloc(&m, 4 * MIB);
        malloc(&d, 16 * MIB);
        thin::create_pool(&p, &m, Some(&d), PoolOptions::default())
            .await
            .unwrap();
        let v = unique("vol");
        thin::create_volume(&p, &v, 8 * MIB, None).await.unwrap();
        let desc = bdev::open(&v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        assert_eq!(write(&ch, 0, &pattern(1, 0, 64)).await, IoStatus::Success);
        let s = unique("snap");
        thin::snapshot(&v, &s, None).await.unwrap();
        // Blocks 0-1 are shared with the snapshot: unmapped here, kept
        // there, not passed down. Block 2-3 after the snapshot is deleted
        // would pass down; a partial block is left alone.
        ch.unmap(0, 32).await.unwrap();
        ch.unmap(40, 4).await.unwrap();
        assert!(read(&ch, 0, 32).await.unwrap().iter().all(|&b| b == 0));
        assert_eq!(read(&ch, 40, 4).await.unwrap(), pattern(1, 40, 4));
        let sdesc = bdev::open(&s, false, None).unwrap();
        let sch = sdesc.io_channel().unwrap();
        assert_eq!(read(&sch, 0, 64).await.unwrap(), pattern(1, 0, 64));
        let info = thin::pool_info(&thin::pool(&p).unwrap());
        assert_eq!(info.stats.passdowns, 0, "shared blocks must not pass down");
        drop((sch, sdesc));
        thin::delete_volume(&s, false).await.unwrap();
        ch.unmap(32, 32).await.unwrap();
        let info = thin::pool_info(&thin::pool(&p).unwrap());
        assert_eq!(info.stats.passdowns, 2, "{info:?}");
        ch.flush().await.unwrap();
        // Write zeroes over a partial block zeroes it; unmapped stays so.
        assert_eq!(write(&ch, 0, &pattern(2, 0, 16)).await, IoStatus::Success);
        ch.write_zeroes(4, 4).await.unwrap();
        let got = read(&ch, 0, 16).await.unwrap();
        assert!(got[4 * 4096..8 * 4096].iter().all(|&b| b == 0));
        assert_eq!(&got[..4 * 4096], &pattern(2, 0, 4)[..]);
        let before = thin::pool_info(&thin::pool(&p).unwrap());
        ch.write_zeroes(100, 50).await.unwrap();
        let after = thin::pool_info(&thin::pool(&p).unwrap());
        assert_eq!(before.stats.provisioned, after.stats.provisioned);
        assert_eq!(thin::pool(&p).unwrap().mode(), PoolMode::Write);
        drop((ch, desc));
        close_and_check(&p, &m).await;
    });
}

#[test]
fn an_external_origin_supplies_unprovisioned_blocks() {
    run(|| async {
        let (m, d, o, p) = (unique("om"), unique("od"), unique("oo"), unique("op"));
        malloc(&m, 4 * MIB);
        malloc(&d, 16 * MIB);
        malloc(&o, 2 * MIB);
        // The origin's contents: a pattern over its 512 blocks.
        {
            let desc = bdev::open(&o, true, None).unwrap();
            let ch = desc.io_channel().unwrap();
            assert_eq!(write(&ch, 0, &pattern(77, 0, 512)).await, IoStatus::Success);
        }
        thin::create_pool(&p, &m, Some(&d), PoolOptions::default())
            .await
            .unwrap();
        let v = unique("ov");
        // Larger than the origin: blocks past its end read as zeros.
        thin::bring_up(&p, &v, 4 * MIB, Some(&o), thin::Device::New(None))
            .await
            .unwrap();
        let desc = bdev::open(&v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        assert_eq!(read(&ch, 0, 512).await.unwrap(), pattern(77, 0, 512));
        assert!(read(&ch, 512, 512).await.unwrap().iter().all(|&b| b == 0));
        // A partial write copies the origin's block first.
        let w = pattern(78, 20, 2);
        assert_eq!(write(&ch, 20, &w).await, IoStatus::Success);
        let mut want = pattern(77, 16, 16);
        want[4 * 4096..6 * 4096].copy_from_slice(&w);
        assert_eq!(read(&ch, 16, 16).await.unwrap(), want);
        // Write-zeroes inside the origin zeroes (it must not expose the
        // origin again); a snapshot reads the origin too.
        ch.write_zeroes(32, 20).await.unwrap();
        let got = read(&ch, 32, 20).await.unwrap();
        assert!(got.iter().all(|&b| b == 0));
        assert_eq!(read(&ch, 52, 12).await.unwrap(), pattern(77, 52, 12));
        let s = unique("os");
        thin::snapshot(&v, &s, None).await.unwrap();
        let sdesc = bdev::open(&s, false, None).unwrap();
        let sch = sdesc.io_channel().unwrap();
        assert_eq!(read(&sch, 16, 16).await.unwrap(), want);
        assert_eq!(read(&sch, 100, 50).await.unwrap(), pattern(77, 100, 50));
        // The origin itself is never written.
        let odesc = bdev::open(&o, false, None).unwrap();
        let och = odesc.io_channel().unwrap();
        assert_eq!(read(&och, 0, 512).await.unwrap(), pattern(77, 0, 512));
        // An origin whose size is not a block multiple works too (its tail
        // block is read in part; tests/tgt_thin_manage.rs reads it back),
        // and is claimed read-only while the volume lasts.
        let odd = unique("odd");
        malloc(&odd, 68 * 1024);
        let ox = unique("ox");
        thin::bring_up(&p, &ox, MIB, Some(&odd), thin::Device::New(None))
            .await
            .unwrap();
        assert!(
            bdev::open(&odd, true, None).is_err(),
            "the origin is claimed"
        );
        thin::delete_volume(&ox, false).await.unwrap();
        assert!(
            bdev::open(&odd, true, None).is_ok(),
            "released with its volume"
        );
        drop((ch, desc, sch, sdesc, och, odesc));
        close_and_check(&p, &m).await;
    });
}

#[test]
fn thin_rpc_methods_answer_garbage_with_errors() {
    use serde_json::json;
    run(|| async {
        let garbage = [
            None,
            Some(json!(null)),
            Some(json!([1, 2])),
            Some(json!("x")),
            Some(json!({"name": 5})),
            Some(json!({"name": "nope", "pool": "nope", "size_in_mib": 0})),
            Some(json!({"name": "p", "metadata_bdev": "missing"})),
            Some(json!({"name": "p", "metadata_bdev": "missing", "block_size": 12345})),
            Some(json!({"pool": "nope", "name": "v", "size_in_mib": -1})),
            Some(json!({"origin": "nope", "name": "s"})),
            Some(json!({"name": "nope", "base": "metadata_snap"})),
            Some(json!({"name": "nope", "current": 1, "new": 2})),
            Some(json!({"unknown_key": true})),
        ];
        thin::register();
        let registry = bdev::rpc::RpcRegistry::with_modules();
        let methods = thin::ThinModule.rpc_methods();
        assert!(methods.len() >= 16);
        for m in methods.iter().map(|m| m.name) {
            for g in &garbage {
                let r = registry.call_here(m, g.clone()).await;
                // get_pools / get_volumes with no filter list nothing: fine.
                if let Err(e) = r {
                    assert!(e.code < 0, "{m} {g:?}: {e:?}");
                    assert!(!e.message.is_empty());
                }
            }
        }
        assert_eq!(
            registry.call_here("bdev_thin_nope", None).await,
            Err(bdev::rpc::RpcError::not_found())
        );
    });
}

/// A data block size that is no power of two (192 KiB: 48 bdev blocks)
/// takes the routed path for every read and write: within a block, across
/// blocks, over mapped blocks, and through a snapshot's copy on write.
#[test]
fn a_block_size_that_is_no_power_of_two_reads_and_writes_right() {
    run(|| async {
        let d = unique("td");
        malloc(&d, 48 * MIB);
        let opts = PoolOptions {
            block_size: 192 << 10,
            ..Default::default()
        };
        let (m, p, v, desc, ch) = pool_and_volume_with(&d, 12 * MIB, opts).await;
        let blocks = 12 * MIB / BS as u64;
        let mut model = vec![0u8; (12 * MIB) as usize];
        let mut put = |off: u64, data: &[u8]| {
            let a = (off * BS as u64) as usize;
            model[a..a + data.len()].copy_from_slice(data);
        };
        // (offset, blocks): the whole of block 2, inside block 0, across
        // 0|1, again inside block 0 (mapped now), the volume's last blocks.
        // Provisioned out of order: no data block lies where its index
        // would put it.
        let writes = [(96, 48), (5, 3), (46, 4), (7, 1), (blocks - 2, 2)];
        for (tag, &(off, n)) in writes.iter().enumerate() {
            let data = pattern(tag as u64 + 1, off, n);
            assert_eq!(write(&ch, off, &data).await, IoStatus::Success, "{off}+{n}");
            put(off, &data);
        }
        let s = unique("snap");
        thin::snapshot(&v, &s, None).await.unwrap();
        // Copies on write, then a write into the copied block.
        let data = pattern(9, 50, 2);
        assert_eq!(write(&ch, 50, &data).await, IoStatus::Success);
        put(50, &data);
        let data = pattern(10, 60, 1);
        assert_eq!(write(&ch, 60, &data).await, IoStatus::Success);
        put(60, &data);
        let got = read(&ch, 0, blocks).await.unwrap();
        assert!(got == model, "the volume differs from what was written");
        // One block at a time too (each inside one data block).
        for off in (0..8).chain(44..52).chain(blocks - 3..blocks) {
            let got = read(&ch, off, 1).await.unwrap();
            let a = (off * BS as u64) as usize;
            assert!(got == model[a..a + BS as usize], "block {off} differs");
        }
        // The snapshot kept block 1 as it was before the copies.
        let sdesc = bdev::open(&s, false, None).unwrap();
        let sch = sdesc.io_channel().unwrap();
        let got = read(&sch, 48, 48).await.unwrap();
        assert_eq!(got[..2 * BS as usize], pattern(3, 46, 4)[2 * BS as usize..]);
        assert!(got[2 * BS as usize..].iter().all(|&b| b == 0));
        drop((sch, sdesc, ch, desc));
        close_and_check(&p, &m).await;
    });
}

/// Blocks past the first 2^21 of a volume (128 GiB at 64 KiB) are looked
/// up in the table's other middles, on a fast path of their own: each
/// reads and overwrites in place as its twin 2^21 blocks earlier does,
/// neither taking the other's data.
#[test]
fn blocks_past_the_first_two_million_keep_their_own_data() {
    run(|| async {
        let d = unique("td");
        malloc(&d, 16 * MIB);
        let vol_bytes = 256 << 30;
        let opts = PoolOptions::default();
        let (m, p, _v, desc, ch) = pool_and_volume_with(&d, vol_bytes, opts).await;
        let per_block = (64 << 10) / BS as u64;
        let far = (1u64 << 21) * per_block;
        let last = vol_bytes / BS as u64 - 1;
        let places = [3, far + 3, far + 2 * per_block + 1, last];
        // Provision (the slow path), then overwrite in place and read one
        // block at a time (the fast path).
        for (tag, &off) in places.iter().enumerate() {
            let data = pattern(tag as u64 + 1, off, 1);
            assert_eq!(write(&ch, off, &data).await, IoStatus::Success, "{off}");
        }
        for round in 0..2 {
            for (tag, &off) in places.iter().enumerate() {
                let tag = tag as u64 + 10 * (round + 1);
                let data = pattern(tag, off, 1);
                assert_eq!(write(&ch, off, &data).await, IoStatus::Success, "{off}");
            }
            for (tag, &off) in places.iter().enumerate() {
                let tag = tag as u64 + 10 * (round + 1);
                let got = read(&ch, off, 1).await.unwrap();
                assert!(got == pattern(tag, off, 1), "block {off}, round {round}");
            }
        }
        // Unwritten neighbours read as zeros.
        for off in [far + 4, far + per_block, last - 1] {
            assert!(read(&ch, off, 1).await.unwrap().iter().all(|&b| b == 0));
        }
        drop((ch, desc));
        close_and_check(&p, &m).await;
    });
}
