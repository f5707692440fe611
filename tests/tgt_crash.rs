//! SIGKILL under a write load: after a restart, every write that a
//! completed NBD FLUSH covered reads back exactly; a write after the last
//! completed flush reads as itself or as what it overwrote.

mod tgt_util;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tgt_util::{nbd::Client, Tgt};

const BLOCKS: u64 = 2048; // 4 KiB blocks over 8 MiB, spread on 128 data blocks

fn content(block: u64, version: u32) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    for (i, c) in v.chunks_mut(16).enumerate() {
        c[..8].copy_from_slice(&block.to_le_bytes());
        c[8..12].copy_from_slice(&version.to_le_bytes());
        c[12..16].copy_from_slice(&(i as u32).to_le_bytes());
    }
    v
}

/// What the writers know: per block, the version a completed flush covers
/// and the versions written (and acknowledged or not) since.
#[derive(Default)]
struct Model {
    durable: HashMap<u64, u32>,
    since: HashMap<u64, Vec<u32>>,
}

fn writer(addr: String, seed: u64, model: Arc<Mutex<Model>>, stop: Arc<AtomicBool>) {
    let Ok(mut c) = Client::connect(&addr, "vol") else {
        return;
    };
    let mut x = seed | 1;
    let mut version = (seed as u32) << 20;
    while !stop.load(Ordering::Relaxed) {
        let mut written = Vec::new();
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Writers own disjoint blocks (by parity), so versions order.
            let block = (x % (BLOCKS / 2)) * 2 + (seed & 1);
            version += 1;
            model
                .lock()
                .unwrap()
                .since
                .entry(block)
                .or_default()
                .push(version);
            match c.write(block * 4096, &content(block, version)) {
                Ok(0) => written.push((block, version)),
                _ => return,
            }
        }
        match c.flush() {
            Ok(0) => {
                let mut m = model.lock().unwrap();
                for (b, v) in written {
                    m.durable.insert(b, v);
                    if let Some(s) = m.since.get_mut(&b) {
                        s.retain(|&w| w > v);
                    }
                }
            }
            _ => return,
        }
    }
}

#[test]
fn sigkill_during_writes_loses_nothing_a_flush_covered() {
    let dir = tgt_util::scratch("crash");
    let cfg = tgt_util::pool_yaml(&dir, 50, &["{name: vol, dev_id: 0, size_mib: 16}"], "vol");
    let args = ["-c", cfg.to_str().unwrap(), "-m", "0x3"];
    let model = Arc::new(Mutex::new(Model::default()));
    let mut dir = dir;
    for round in 0..3u64 {
        let t = Tgt::start_in(dir.clone(), &args);
        let addr = t.first_export();
        check(&addr, &model.lock().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|i| {
                let (a, m, s) = (addr.clone(), model.clone(), stop.clone());
                std::thread::spawn(move || writer(a, round * 2 + i + 1, m, s))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400 + 300 * round));
        dir = t.dir.clone();
        t.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        let m = model.lock().unwrap();
        assert!(
            m.durable.len() > 10,
            "the load did too little: {}",
            m.durable.len()
        );
    }
    let t = Tgt::start_in(dir, &args);
    let addr = t.first_export();
    check(&addr, &model.lock().unwrap());
    let pool = &t.ok("bdev_thin_pool_get_pools", Value::Null)[0];
    assert_eq!(
        (pool["mode"].as_str(), pool["needs_check"].as_bool()),
        (Some("write"), Some(false))
    );
    t.stop();
}

fn check(addr: &str, m: &Model) {
    let mut c = Client::connect(addr, "vol").unwrap();
    for b in 0..BLOCKS {
        let got = c.read(b * 4096, 4096).unwrap();
        let mut allowed: Vec<Vec<u8>> = Vec::new();
        match m.durable.get(&b) {
            Some(&v) => allowed.push(content(b, v)),
            None => allowed.push(vec![0u8; 4096]),
        }
        for &v in m.since.get(&b).into_iter().flatten() {
            allowed.push(content(b, v));
        }
        assert!(
            allowed.contains(&got),
            "block {b}: durable {:?}, since {:?}, read version {:?}",
            m.durable.get(&b),
            m.since.get(&b),
            u32::from_le_bytes(got[8..12].try_into().unwrap())
        );
    }
}
