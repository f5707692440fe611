//! The control path under concurrency and misuse: ids picked by calls that
//! overlap, deletes of volumes in use or under load, refused calls that
//! must change nothing, resizes that answer only when visible, and a
//! seeded mix of every control call from several clients at once with I/O
//! running. After each: the pool is in write mode, without needs_check,
//! and Debian's thin_check passes.

mod thin_util;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bdev::modules::delay::{self, DelayOptions};
use bdev::modules::uring::{self, UringOptions};
use bdev::IoStatus;
use thin::{PoolMode, PoolOptions, ThinError};
use thin_util::*;

const MIB: u64 = 1 << 20;

/// A pool on a 4 MiB malloc metadata bdev and a 64 MiB data bdev behind a
/// delay bdev of `latency_us` (0: no delay bdev): (pool, metadata bdev).
async fn pool_on_delay(latency_us: u64) -> (String, String) {
    let (m, d, p) = (unique("cm"), unique("cd"), unique("cp"));
    malloc(&m, 4 * MIB);
    malloc(&d, 64 * MIB);
    let data = if latency_us > 0 {
        let dl = unique("cdl");
        delay::create(DelayOptions {
            name: dl.clone(),
            base_bdev_name: d,
            latency_us: [latency_us; 4],
            uuid: None,
        })
        .unwrap();
        dl
    } else {
        d
    };
    let opts = PoolOptions {
        commit_period_ms: 50,
        ..Default::default()
    };
    thin::create_pool(&p, &m, Some(&data), opts).await.unwrap();
    (p, m)
}

/// Write mode, no needs_check; then deletes the pool and runs thin_check.
async fn healthy_then_close(p: &str, m: &str) {
    let info = thin::pool_info(&thin::pool(p).unwrap());
    assert_eq!(info.mode, "write", "{info:?}");
    assert!(!info.needs_check, "{info:?}");
    thin::delete_pool(p).await.unwrap();
    let (ok, out) = thin_check(m, 1024).await;
    assert!(ok, "thin_check: {out}");
    assert!(!out.contains("leak"), "thin_check: {out}");
}

fn dev_of(infos: &[thin::VolumeInfo], name: &str) -> u32 {
    infos
        .iter()
        .find(|v| v.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{name} is not listed"))
        .device
        .dev_id
}

/// A 4 MiB volume on a pool whose data bdev takes 300 ms per I/O, open
/// for writing, its first block mapped, and an overwrite of that block
/// in flight (started 20 ms ago): what a control call that drains the
/// volume's I/O waits for.
struct InFlight {
    /// The pool, its metadata bdev and the volume.
    p: String,
    m: String,
    v: String,
    desc: bdev::Descriptor,
    ch: bdev::IoChannel,
    inflight: reactor::Task<IoStatus>,
}

async fn a_write_in_flight() -> InFlight {
    let (pool, meta) = pool_on_delay(300_000).await;
    let vol = unique("cv");
    thin::create_volume(&pool, &vol, 4 * MIB, None)
        .await
        .unwrap();
    let desc = bdev::open(&vol, true, None).unwrap();
    let ch = desc.io_channel().unwrap();
    assert_eq!(write(&ch, 0, &pattern(1, 0, 1)).await, IoStatus::Success);
    let ch2 = ch.clone();
    let inflight = reactor::spawn_local(async move { write(&ch2, 0, &pattern(2, 0, 1)).await });
    reactor::sleep(Duration::from_millis(20)).await;
    InFlight {
        p: pool,
        m: meta,
        v: vol,
        desc,
        ch,
        inflight,
    }
}

/// A snapshot waits for its origin's in-flight write to drain; a create
/// without an id that runs meanwhile must not take the id the snapshot
/// picked (before the fix: "thin device N already exists" as a metadata
/// failure, and the pool read-only with needs_check).
#[test]
fn a_create_during_a_snapshots_drain_takes_another_id() {
    run(|| async {
        let w = a_write_in_flight().await;
        let (p, v) = (&w.p, &w.v);
        let (v2, s) = (v.clone(), unique("cs"));
        let s2 = s.clone();
        let snap = reactor::spawn_local(async move { thin::snapshot(&v2, &s2, None).await });
        reactor::sleep(Duration::from_millis(50)).await;
        let c = unique("cc");
        thin::create_volume(p, &c, 4 * MIB, None)
            .await
            .expect("the create picks a free id");
        snap.await.expect("the snapshot keeps the id it picked");
        assert_eq!(w.inflight.await, IoStatus::Success);
        let infos = thin::volumes(p).await.unwrap();
        let ids = [dev_of(&infos, v), dev_of(&infos, &s), dev_of(&infos, &c)];
        assert!(
            ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
            "{ids:?}"
        );
        // The snapshot holds the write that finished before it.
        let sd = bdev::open(&s, false, None).unwrap();
        let sch = sd.io_channel().unwrap();
        assert_eq!(read(&sch, 0, 1).await.unwrap(), pattern(2, 0, 1));
        // A named id another call holds, or one in use, is EEXIST.
        let e = thin::create_volume(p, &unique("cx"), MIB, Some(ids[2]))
            .await
            .unwrap_err();
        assert_eq!(e.errno(), libc::EEXIST, "{e}");
        drop((sch, sd, w.ch, w.desc));
        healthy_then_close(&w.p, &w.m).await;
    });
}

/// A shrink waits for the volume's in-flight I/O before it unmaps the
/// cut-off range; a delete meanwhile takes the volume, and the shrink
/// then reports it gone (before the fix: "unmapping the cut-off range
/// failed: No such device", an I/O error).
#[test]
fn a_delete_during_a_shrinks_drain_leaves_the_shrink_reporting_the_volume_gone() {
    run(|| async {
        let w = a_write_in_flight().await;
        let v = &w.v;
        let v2 = v.clone();
        let shrink =
            reactor::spawn_local(async move { thin::resize_volume(&v2, 2 * MIB, true).await });
        reactor::sleep(Duration::from_millis(50)).await;
        thin::delete_volume(v, true)
            .await
            .expect("a forced delete of a volume being shrunk");
        let r = shrink.await;
        assert!(matches!(r, Err(ThinError::NotFound(_))), "{r:?}");
        let _ = w.inflight.await;
        drop((w.ch, w.desc));
        assert!(thin::volumes(&w.p).await.unwrap().is_empty());
        healthy_then_close(&w.p, &w.m).await;
    });
}

/// An open volume (an export holds a descriptor) is not deleted nor
/// deactivated unless forced; deactivation keeps its data, an inactive
/// device can be listed and deleted by id, and an unknown id is ENODEV.
#[test]
fn an_open_volume_is_not_deleted_unless_forced() {
    run(|| async {
        let (p, m) = pool_on_delay(0).await;
        let v = unique("ov");
        thin::create_volume(&p, &v, 4 * MIB, Some(5)).await.unwrap();
        let desc = bdev::open(&v, true, None).unwrap();
        let ch = desc.io_channel().unwrap();
        assert_eq!(write(&ch, 0, &pattern(3, 0, 4)).await, IoStatus::Success);
        for r in [
            thin::delete_volume(&v, false).await,
            thin::deactivate(&v, false).await,
        ] {
            let e = r.unwrap_err();
            assert_eq!(e.errno(), libc::EBUSY, "{e}");
        }
        assert!(bdev::lookup(&v).is_some(), "a refused call changes nothing");
        assert_eq!(read(&ch, 0, 4).await.unwrap(), pattern(3, 0, 4));
        // Closed: deactivation keeps the device and its data.
        drop((ch, desc));
        thin::deactivate(&v, false).await.unwrap();
        assert!(bdev::lookup(&v).is_none());
        let r = rpc(
            "bdev_thin_get_volumes",
            Some(serde_json::json!({"pool": p, "dev_id": 5})),
        )
        .await
        .unwrap();
        assert_eq!(r[0]["dev_id"], 5, "{r}");
        assert!(r[0]["name"].is_null(), "{r}");
        thin::activate(&p, &v, 5, 4 * MIB).await.unwrap();
        {
            let d = bdev::open(&v, false, None).unwrap();
            let c = d.io_channel().unwrap();
            assert_eq!(read(&c, 0, 4).await.unwrap(), pattern(3, 0, 4));
        }
        // Forced: the open descriptor sees the volume go.
        let d = bdev::open(&v, true, None).unwrap();
        thin::deactivate(&v, true).await.unwrap();
        drop(d);
        let e = thin::activate(&p, &v, 77, 4 * MIB).await.unwrap_err();
        assert_eq!(e.errno(), libc::ENODEV, "unknown id: {e}");
        let e = thin::delete_device(&p, 77).await.unwrap_err();
        assert_eq!(e.errno(), libc::ENODEV, "{e}");
        thin::delete_device(&p, 5).await.unwrap();
        assert!(thin::volumes(&p).await.unwrap().is_empty());
        healthy_then_close(&p, &m).await;
    });
}

/// A delete refused because the pool is read-only leaves the volume
/// registered and readable (before the fix its bdev was gone).
#[test]
fn a_refused_delete_keeps_the_volume() {
    run(|| async {
        let (m, d, p, v) = (unique("rm"), unique("rd"), unique("rp"), unique("rv"));
        malloc(&m, 4 * MIB);
        malloc(&d, 16 * MIB);
        thin::create_pool(&p, &m, Some(&d), PoolOptions::default())
            .await
            .unwrap();
        thin::create_volume(&p, &v, 4 * MIB, None).await.unwrap();
        {
            let desc = bdev::open(&v, true, None).unwrap();
            let ch = desc.io_channel().unwrap();
            assert_eq!(write(&ch, 0, &pattern(4, 0, 2)).await, IoStatus::Success);
            ch.flush().await.unwrap();
        }
        thin::delete_pool(&p).await.unwrap();
        let ro = PoolOptions {
            read_only: true,
            ..Default::default()
        };
        thin::create_pool(&p, &m, Some(&d), ro).await.unwrap();
        let dev = thin::volumes(&p).await.unwrap()[0].device.dev_id;
        thin::activate(&p, &v, dev, 4 * MIB).await.unwrap();
        let e = thin::delete_volume(&v, false).await.unwrap_err();
        assert!(matches!(e, ThinError::Mode(_)), "{e}");
        let desc = bdev::open(&v, false, None).expect("still registered");
        let ch = desc.io_channel().unwrap();
        assert_eq!(read(&ch, 0, 2).await.unwrap(), pattern(4, 0, 2));
        drop((ch, desc));
        thin::delete_pool(&p).await.unwrap();
    });
}

/// A thin volume reports its data block as the unmap granularity.
#[test]
fn a_volume_reports_its_data_block_as_unmap_granularity() {
    run(|| async {
        let (p, m) = pool_on_delay(0).await;
        let v = unique("gv");
        thin::create_volume(&p, &v, 4 * MIB, None).await.unwrap();
        let r = rpc("bdev_get_bdevs", Some(serde_json::json!({ "name": v })))
            .await
            .unwrap();
        // 64 KiB data blocks of 4 KiB bdev blocks.
        assert_eq!(r[0]["preferred_unmap_granularity"], 16, "{r}");
        assert_eq!(r[0]["preferred_unmap_alignment"], 16, "{r}");
        healthy_then_close(&p, &m).await;
    });
}

/// Writers keep new blocks in flight while the volume is deleted: the
/// delete never fails the pool, and nothing leaks (before the fix: 3 of
/// 19 tries put the pool in needs_check with leaked blocks).
#[test]
fn deleting_volumes_under_write_load_never_fails_the_pool() {
    run(|| async {
        let (p, m) = pool_on_delay(2000).await;
        let mut rng = Rng(18);
        for round in 0..12u64 {
            let v = unique("lv");
            thin::create_volume(&p, &v, 16 * MIB, None).await.unwrap();
            let desc = bdev::open(&v, true, None).unwrap();
            let ch = desc.io_channel().unwrap();
            let mut writers = Vec::new();
            for w in 0..32u64 {
                let ch = ch.clone();
                let seed = rng.next_u64() ^ w;
                writers.push(reactor::spawn_local(async move {
                    let mut r = Rng(seed);
                    loop {
                        let b = r.below(4096);
                        let s = write(&ch, b, &pattern(b, b, 1)).await;
                        if !s.is_success() {
                            return s;
                        }
                    }
                }));
            }
            reactor::sleep(Duration::from_millis(1 + rng.below(20))).await;
            thin::delete_volume(&v, true)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            for w in writers {
                let s = w.await;
                assert!(
                    matches!(s, IoStatus::IoError(e) if e == libc::ENODEV || e == libc::EIO),
                    "round {round}: a writer ended with {s:?}"
                );
            }
            drop((ch, desc));
            assert_eq!(
                thin::pool(&p).unwrap().mode(),
                PoolMode::Write,
                "round {round}"
            );
        }
        let info = thin::pool_info(&thin::pool(&p).unwrap());
        thin::commit_all().await.unwrap();
        let info2 = thin::pool_info(&thin::pool(&p).unwrap());
        assert_eq!(info2.used_data_blocks, 0, "{info:?} {info2:?}");
        healthy_then_close(&p, &m).await;
    });
}

/// Grown step by step, the pool shows each new size as soon as
/// bdev_thin_pool_resize answers, even when the bdev's resize event has
/// started the same resize (before the fix the call returned at once and
/// the size showed up later).
#[test]
fn a_pool_resize_answers_once_the_size_is_visible() {
    run(|| async {
        let dir = std::env::temp_dir().join(unique("thin-grow-"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("data.img");
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(4 * MIB).unwrap();
        let (m, u, p) = (unique("gm"), unique("gu"), unique("gp"));
        malloc(&m, 4 * MIB);
        uring::create(UringOptions {
            name: u.clone(),
            filename: file.clone(),
            block_size: Some(BS),
            uuid: None,
        })
        .unwrap();
        thin::create_pool(&p, &m, Some(&u), PoolOptions::default())
            .await
            .unwrap();
        for step in 1..=8u64 {
            let blocks = 64 + step * 16;
            f.set_len(blocks * 64 * 1024).unwrap();
            uring::rescan(&bdev::lookup(&u).unwrap()).unwrap();
            thin::resize_pool(&p).await.unwrap();
            let info = thin::pool_info(&thin::pool(&p).unwrap());
            assert_eq!(info.stats.data_blocks, blocks, "step {step}: {info:?}");
        }
        healthy_then_close(&p, &m).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// What the mix believes: active volumes by name (device, size), the
/// transaction id and whether a metadata snapshot is held.
#[derive(Default)]
struct Model {
    volumes: BTreeMap<String, u64>,
    tid: u64,
    snap_held: bool,
}

/// Errors a call may meet when others race it; anything else (a metadata
/// failure, a mode change) fails the test.
fn expected(e: &ThinError) -> bool {
    match e {
        ThinError::Exists(_)
        | ThinError::NotFound(_)
        | ThinError::Busy(_)
        | ThinError::Invalid(_) => true,
        // The bdev name taken, or gone, between the check and the call.
        ThinError::Bdev(b) => [libc::EEXIST, libc::ENODEV, libc::EBUSY].contains(&b.errno()),
        _ => false,
    }
}

/// One client (`id`): `ops` random control calls. Names are never used
/// twice, and each model update commutes with the others' (a delete
/// removes, a resize keeps the largest size, the transaction id the
/// highest), so the order in which concurrent calls come back does not
/// matter; only client 0 takes and drops the metadata snapshot.
async fn client(
    p: String,
    io_vol: String,
    model: Rc<RefCell<Model>>,
    seed: u64,
    id: u64,
    ops: u32,
) {
    let mut r = Rng(seed);
    let mut made = 0u32;
    let mut fresh = || {
        made += 1;
        format!("{p}_c{id}_{made}")
    };
    let existing = |r: &mut Rng| {
        let names: Vec<String> = model.borrow().volumes.keys().cloned().collect();
        names[r.below(names.len() as u64) as usize].clone()
    };
    for _ in 0..ops {
        let op = r.below(8);
        let res: Result<(), ThinError> = match op {
            0 | 1 => {
                let n = fresh();
                let dev = (r.below(3) == 0).then(|| r.below(12) as u32);
                thin::create_volume(&p, &n, 2 * MIB, dev).await.map(|_| {
                    model.borrow_mut().volumes.insert(n, 2 * MIB);
                })
            }
            2 | 3 => {
                let from = existing(&mut r);
                let n = fresh();
                let dev = (r.below(3) == 0).then(|| r.below(12) as u32);
                thin::snapshot(&from, &n, dev).await.map(|b| {
                    model.borrow_mut().volumes.insert(n, b.size_bytes());
                })
            }
            4 => {
                let n = existing(&mut r);
                if n == io_vol {
                    continue;
                }
                thin::delete_volume(&n, false).await.map(|_| {
                    model.borrow_mut().volumes.remove(&n);
                })
            }
            5 => {
                let n = existing(&mut r);
                let size = 2 * MIB + r.below(4) * MIB;
                let res = thin::resize_volume(&n, size, false).await;
                if res.is_ok() {
                    if let Some(s) = model.borrow_mut().volumes.get_mut(&n) {
                        *s = size;
                    }
                }
                res
            }
            6 if id == 0 => {
                let held = model.borrow().snap_held;
                if held {
                    thin::release_metadata_snap(&p).await.map(|_| {
                        model.borrow_mut().snap_held = false;
                    })
                } else {
                    thin::reserve_metadata_snap(&p).await.map(|_| {
                        model.borrow_mut().snap_held = true;
                    })
                }
            }
            _ => {
                let cur = model.borrow().tid;
                thin::set_transaction_id(&p, cur, cur + 1).await.map(|_| {
                    let mut m = model.borrow_mut();
                    m.tid = m.tid.max(cur + 1);
                })
            }
        };
        if let Err(e) = res {
            assert!(expected(&e), "op {op}: unexpected error {e}");
        }
    }
}

/// Seeded mixes of create, snapshot, delete, resize, reserve/release and
/// set_transaction_id from three clients at once, with a writer on a
/// volume: after each mix the pool is writable and thin_check passes, and
/// the active volumes, sizes and transaction id are what the calls said.
#[test]
fn concurrent_control_calls_keep_the_pool_and_the_model() {
    run(|| async {
        for seed in 0..16u64 {
            let (p, m) = pool_on_delay(500).await;
            let io_vol = unique("iov");
            thin::create_volume(&p, &io_vol, 4 * MIB, None)
                .await
                .unwrap();
            let desc = bdev::open(&io_vol, true, None).unwrap();
            let ch = desc.io_channel().unwrap();
            let stop = Rc::new(std::cell::Cell::new(false));
            let (ch2, stop2) = (ch.clone(), stop.clone());
            let writer = reactor::spawn_local(async move {
                let mut r = Rng(seed);
                let mut last = BTreeMap::new();
                let mut tag = 0u64;
                while !stop2.get() {
                    let b = r.below(1024);
                    tag += 1;
                    assert_eq!(write(&ch2, b, &pattern(tag, b, 1)).await, IoStatus::Success);
                    last.insert(b, tag);
                }
                last
            });
            let model = Rc::new(RefCell::new(Model::default()));
            model.borrow_mut().volumes.insert(io_vol.clone(), 4 * MIB);
            let clients: Vec<_> = (0..3u64)
                .map(|c| {
                    let (p, iv, md) = (p.clone(), io_vol.clone(), model.clone());
                    reactor::spawn_local(client(p, iv, md, seed * 10 + c, c, 25))
                })
                .collect();
            for c in clients {
                c.await;
            }
            stop.set(true);
            let last = writer.await;
            for (b, tag) in last {
                assert_eq!(
                    read(&ch, b, 1).await.unwrap(),
                    pattern(tag, b, 1),
                    "seed {seed} block {b}"
                );
            }
            drop((ch, desc));
            let infos = thin::volumes(&p).await.unwrap();
            let active: BTreeMap<String, u64> = infos
                .iter()
                .filter_map(|v| Some((v.name.clone()?, v.size?)))
                .collect();
            let (volumes, tid, snap_held) = {
                let md = model.borrow();
                (md.volumes.clone(), md.tid, md.snap_held)
            };
            assert_eq!(active, volumes, "seed {seed}");
            assert_eq!(
                infos.len(),
                active.len(),
                "seed {seed}: no stray inactive device"
            );
            let info = thin::pool_info(&thin::pool(&p).unwrap());
            assert_eq!(info.stats.transaction_id, tid, "seed {seed}");
            assert_eq!(info.stats.metadata_snap.is_some(), snap_held, "seed {seed}");
            if snap_held {
                thin::release_metadata_snap(&p).await.unwrap();
            }
            healthy_then_close(&p, &m).await;
        }
    });
}
