//! Multi-core stress: writers on both reactors (one is the metadata core)
//! verify every block they write while snapshots of their volume are
//! taken and deleted; each snapshot must hold, per block, one of the
//! values that block had (never a torn mix of writers or another block).

mod thin_util;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bdev::IoStatus;
use thin::PoolOptions;
use thin_util::*;

const MIB: u64 = 1 << 20;
const REGION: u64 = 128;

/// Every tag written to each block, in order (pushed before the write).
type History = Arc<Mutex<Vec<Vec<u64>>>>;

async fn writer(vol: String, core: u64, rounds: u64, hist: History) -> u64 {
    let desc = bdev::open(&vol, true, None).unwrap();
    let ch = desc.io_channel().unwrap();
    let base = core * REGION;
    let mut rng = Rng(core + 1);
    let mut done = 0;
    for r in 0..rounds {
        let b = base + rng.below(REGION);
        let tag = (core << 32) | r;
        let data = pattern(tag, b, 1);
        hist.lock().unwrap()[b as usize].push(tag);
        assert_eq!(write(&ch, b, &data).await, IoStatus::Success);
        assert_eq!(
            read(&ch, b, 1).await.unwrap(),
            data,
            "core {core} block {b}"
        );
        done += 1;
    }
    done
}

#[test]
fn writers_on_both_cores_survive_snapshot_churn() {
    let set = reactors();
    let (m, d, p, v) = (unique("xm"), unique("xd"), unique("xp"), unique("xv"));
    let (p2, v2) = (p.clone(), v.clone());
    set.block_on(0, move || async move {
        malloc(&m, 4 * MIB);
        malloc(&d, 64 * MIB);
        let opts = PoolOptions {
            metadata_core: Some(1),
            ..Default::default()
        };
        thin::create_pool(&p2, &m, Some(&d), opts).await.unwrap();
        thin::create_volume(&p2, &v2, 2 * REGION * BS as u64, None)
            .await
            .unwrap();
    })
    .unwrap();
    let rounds = 3000;
    let hist: History = Arc::new(Mutex::new(vec![Vec::new(); 2 * REGION as usize]));
    let tasks: Vec<_> = (0..2u64)
        .map(|core| {
            let v = v.clone();
            let h = hist.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            set.send(core as u32, move || {
                reactor::spawn_local(async move {
                    let _ = tx.send(writer(v, core, rounds, h).await);
                })
                .detach();
            })
            .unwrap();
            rx
        })
        .collect();
    let (v3, h3) = (v.clone(), hist.clone());
    set.block_on(0, move || async move {
        for i in 0..20 {
            let s = format!("{v3}_s{i}");
            thin::snapshot(&v3, &s, None).await.unwrap();
            let desc = bdev::open(&s, false, None).unwrap();
            let ch = desc.io_channel().unwrap();
            let got = read(&ch, 0, 2 * REGION).await.unwrap();
            for b in 0..2 * REGION {
                let blk = &got[(b * BS as u64) as usize..((b + 1) * BS as u64) as usize];
                if blk.iter().all(|&x| x == 0) {
                    continue;
                }
                let tags = h3.lock().unwrap()[b as usize].clone();
                let ok = tags.iter().any(|&t| pattern(t, b, 1) == blk);
                assert!(ok, "snapshot {i} block {b} holds no value it ever had");
            }
            drop((ch, desc));
            if i % 2 == 0 {
                thin::delete_volume(&s, false).await.unwrap();
            }
            reactor::sleep(Duration::from_millis(5)).await;
        }
    })
    .unwrap();
    for rx in tasks {
        assert_eq!(rx.recv().unwrap(), rounds);
    }
    set.block_on(0, move || async move {
        thin::delete_pool(&p).await.unwrap();
    })
    .unwrap();
    set.stop();
}
