//! Crash tests: the pool's metadata and data bdevs are error bdevs with a
//! volatile write cache. A seeded workload writes, flushes and snapshots;
//! at a seeded point (between operations, or with a flush and writes in
//! flight, so inside a provision, a copy or a commit step) the power is
//! cut: every write since the last flush is kept, dropped or torn by
//! sector. Then the pool reopens and:
//! - Debian's thin_check passes on the metadata;
//! - every write acknowledged before a completed flush (or a snapshot,
//!   which commits) reads back exactly;
//! - every other sector reads as its old contents, one of its newer
//!   contents, or zeros where it had none: never another volume's data
//!   (each write's pattern names its tag and its position).
//!
//! `THIN_CRASH_SEEDS` sets the seed count (CI: 200; bench/thin-crash.sh
//! runs 10,000). A failure prints its seed; it replays.

mod thin_util;

use std::collections::BTreeMap;
use std::time::Duration;

use bdev::modules::error::{self, ErrorKind, Injection};
use bdev::modules::thin::{self, PoolOptions};
use bdev::{IoChannel, IoStatus, IoType};
use thin_util::*;

const MIB: u64 = 1 << 20;
const VOL_BLOCKS: u64 = 256;

/// What a 4 KiB block may hold: the durable tag (0: zeros) and the tags
/// written since.
#[derive(Clone, Default)]
struct Cell {
    durable: u64,
    since: Vec<u64>,
}

impl Cell {
    fn current(&self) -> u64 {
        self.since.last().copied().unwrap_or(self.durable)
    }
    fn settle(&mut self) {
        self.durable = self.current();
        self.since.clear();
    }
}

/// Picks a random write to volume `name`, records it in the model as
/// not yet durable, and returns its channel, offset and bytes.
fn stage_write(
    vols: &mut BTreeMap<String, Vol>,
    name: &str,
    rng: &mut Rng,
    tag: &mut u64,
) -> (IoChannel, u64, Vec<u8>) {
    let n = 1 + rng.below(20);
    let off = rng.below(VOL_BLOCKS - n + 1);
    *tag += 1;
    let v = vols.get_mut(name).expect("a volume of the model");
    for c in &mut v.cells[off as usize..(off + n) as usize] {
        c.since.push(*tag);
    }
    (v.ch.clone(), off, pattern(*tag, off, n))
}

struct Vol {
    dev: u32,
    ch: IoChannel,
    _desc: bdev::Descriptor,
    cells: Vec<Cell>,
}

fn sector(tag: u64, block: u64, i: usize) -> Vec<u8> {
    if tag == 0 {
        return vec![0; 512];
    }
    pattern(tag, block, 1)[i * 512..(i + 1) * 512].to_vec()
}

fn open_vol(name: &str, dev: u32, cells: Vec<Cell>) -> Vol {
    let desc = bdev::open(name, true, None).expect("open volume");
    let ch = desc.io_channel().expect("channel");
    Vol {
        dev,
        ch,
        _desc: desc,
        cells,
    }
}

/// The thin device id behind volume bdev `name` of pool `pool`.
async fn dev_id_of(pool: &str, name: &str) -> u32 {
    thin::volumes(pool)
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.name.as_deref() == Some(name))
        .unwrap()
        .device
        .dev_id
}

fn cut_all_io(names: &[&str]) {
    for n in names {
        let c = error::control(n).expect("error bdev");
        for t in [
            IoType::Write,
            IoType::Flush,
            IoType::Unmap,
            IoType::WriteZeroes,
        ] {
            c.inject(t, Injection::new(ErrorKind::Failure, u32::MAX));
        }
    }
}

async fn crash_seed(seed: u64) {
    let mut rng = Rng(seed);
    let trace = std::env::var("THIN_CRASH_TRACE").is_ok();
    let (mm, md, p) = (unique("cm"), unique("cd"), unique("cp"));
    malloc(&mm, 2 * MIB);
    malloc(&md, 16 * MIB);
    let (em, ed) = (
        error::create(&mm, None).unwrap().name().to_string(),
        error::create(&md, None).unwrap().name().to_string(),
    );
    for n in [&em, &ed] {
        let c = error::control(n).unwrap();
        c.set_volatile_cache(true);
        c.set_seed(seed);
    }
    let opts = PoolOptions {
        commit_period_ms: 1 + rng.below(50),
        ..Default::default()
    };
    thin::create_pool(&p, &em, Some(&ed), opts.clone())
        .await
        .unwrap();
    let mut vols: BTreeMap<String, Vol> = BTreeMap::new();
    for i in 0..2 {
        let n = format!("{p}_v{i}");
        let b = thin::create_volume(&p, &n, VOL_BLOCKS * BS as u64, None)
            .await
            .unwrap();
        let dev = dev_id_of(&p, b.name()).await;
        vols.insert(
            n.clone(),
            open_vol(&n, dev, vec![Cell::default(); VOL_BLOCKS as usize]),
        );
    }
    let mut tag = seed << 24;
    let ops = 10 + rng.below(40);
    let crash_at = rng.below(ops + 1);
    let mut inflight = Vec::new();
    for step in 0..=ops {
        let keys: Vec<String> = vols.keys().cloned().collect();
        let name = keys[rng.below(keys.len() as u64) as usize].clone();
        if step == crash_at {
            // Leave a flush and some writes in flight, then cut.
            for _ in 0..rng.below(4) {
                let (ch, off, data) = stage_write(&mut vols, &name, &mut rng, &mut tag);
                inflight.push(reactor::spawn_local(async move {
                    write(&ch, off, &data).await;
                }));
            }
            let ch = vols[&name].ch.clone();
            inflight.push(reactor::spawn_local(async move {
                let _ = ch.flush().await;
            }));
            for _ in 0..rng.below(40) {
                reactor::yield_now().await;
            }
            break;
        }
        match rng.below(10) {
            0..=6 => {
                let (ch, off, data) = stage_write(&mut vols, &name, &mut rng, &mut tag);
                let s = write(&ch, off, &data).await;
                assert_eq!(s, IoStatus::Success, "seed {seed} step {step}");
            }
            7 | 8 => {
                let v = vols.get_mut(&name).unwrap();
                v.ch.flush()
                    .await
                    .unwrap_or_else(|s| panic!("seed {seed}: flush {s:?}"));
                v.cells.iter_mut().for_each(Cell::settle);
            }
            _ if vols.len() < 4 => {
                let s = format!("{p}_s{step}");
                thin::snapshot(&name, &s, None)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: snapshot {e}"));
                // The snapshot committed: everything written is durable.
                for v in vols.values_mut() {
                    v.cells.iter_mut().for_each(Cell::settle);
                }
                let dev = dev_id_of(&p, &s).await;
                let cells = vols[&name].cells.clone();
                vols.insert(s.clone(), open_vol(&s, dev, cells));
            }
            _ => {}
        }
    }
    // Power cut: nothing more reaches the disks; the caches lose, keep or
    // tear what they hold; the pool is gone without a commit.
    if trace {
        eprintln!("seed {seed}: cut at step {crash_at} of {ops}");
    }
    cut_all_io(&[&em, &ed]);
    for n in [&em, &ed] {
        error::control(n).unwrap().power_cut(seed).await.unwrap();
    }
    let models: BTreeMap<String, (u32, Vec<Cell>)> = vols
        .into_iter()
        .map(|(k, v)| (k, (v.dev, v.cells)))
        .collect();
    thin::abandon_pool(&p).await.unwrap();
    if trace {
        eprintln!("seed {seed}: abandoned");
    }
    for t in inflight {
        t.await;
    }
    reactor::sleep(Duration::from_millis(2)).await;
    for n in [&em, &ed] {
        let c = error::control(n).unwrap();
        c.clear();
        c.set_volatile_cache(false);
    }
    if trace {
        eprintln!("seed {seed}: checking");
    }
    let (ok, out) = thin_check(&em, 512).await;
    assert!(ok, "seed {seed}: thin_check after the crash: {out}");
    thin::create_pool(&p, &em, Some(&ed), opts)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
    for (name, (dev, cells)) in &models {
        thin::activate(&p, name, *dev, VOL_BLOCKS * BS as u64)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: activate {name}: {e}"));
        let desc = bdev::open(name, false, None).unwrap();
        let ch = desc.io_channel().unwrap();
        let got = read(&ch, 0, VOL_BLOCKS).await.unwrap();
        for (b, c) in cells.iter().enumerate() {
            for i in 0..8 {
                let at = b * 4096 + i * 512;
                let s = &got[at..at + 512];
                let mut allowed = vec![c.durable];
                allowed.extend(&c.since);
                let ok = allowed.iter().any(|&t| sector(t, b as u64, i) == s);
                assert!(
                    ok,
                    "seed {seed}: {name} block {b} sector {i} holds none of its writes (durable {}, since {:?})",
                    c.durable, c.since
                );
            }
        }
    }
    thin::delete_pool(&p).await.unwrap();
    for n in [&em, &ed, &mm, &md] {
        bdev::unregister(n).unwrap();
    }
}

#[test]
fn power_cuts_keep_every_flushed_write_and_leak_nothing() {
    let seeds: u64 = std::env::var("THIN_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let first: u64 = std::env::var("THIN_CRASH_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    run(move || async move {
        for seed in first..first + seeds {
            crash_seed(seed).await;
        }
        eprintln!("thin crash: {seeds} seeds from {first} passed");
    });
}
