//! The seeded crash workload both crash tests run: the pool's metadata
//! and data bdevs are error bdevs with a volatile write cache. A seeded
//! workload writes, flushes and snapshots; at a seeded point (between
//! operations, or with a flush and writes in flight, so inside a provision,
//! a copy or a commit step) the power is cut: every write since the last
//! flush is kept, dropped or torn by sector. Then the pool reopens and:
//! - the metadata passes our check (and Debian's thin_check, when asked);
//! - every write acknowledged before a completed flush (or a snapshot,
//!   which commits) reads back exactly;
//! - every other sector reads as its old contents, one of its newer
//!   contents, or zeros where it had none: never another volume's data
//!   (each write's pattern names its tag and its position).
//!
//! The run writes a trace (operations, what each cache held at the cut,
//! checksums of what reads back): on reactor threads it shows what
//! happened; on a simulated set the same seed must write the same trace.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bdev::modules::delay::{self, DelayOptions};
use bdev::modules::error::{self, ErrorKind, Injection};
use bdev::{IoChannel, IoStatus, IoType};
use thin::PoolOptions;

use super::*;

/// What a crash run did, line by line, and how many writes each cache held
/// at the cut. Cloned handles share one trace.
#[derive(Clone, Default)]
pub struct Trace {
    lines: Rc<RefCell<Vec<String>>>,
    held: Rc<RefCell<BTreeMap<&'static str, u32>>>,
    /// Print each line as it comes (THIN_CRASH_TRACE).
    pub echo: bool,
    /// Also run Debian's thin_check on the metadata after the cut.
    pub debian_check: bool,
}

impl Trace {
    pub fn new(echo: bool, debian_check: bool) -> Trace {
        Trace {
            echo,
            debian_check,
            ..Default::default()
        }
    }
    /// Records a line; `pool` (a name unique to the process) reads as
    /// "pool", so two runs of a seed write the same text.
    pub fn pool_line(&self, pool: &str, l: String) {
        self.line(l.replace(pool, "pool"));
    }

    pub fn line(&self, l: String) {
        if self.echo {
            eprintln!("{l}");
        }
        self.lines.borrow_mut().push(l);
    }
    fn held(&self, what: &'static str, n: u32) {
        self.held.borrow_mut().insert(what, n);
    }
    /// How many writes the `what` ("metadata", "data") cache held at the cut.
    pub fn held_at_cut(&self, what: &str) -> u32 {
        self.held.borrow().get(what).copied().unwrap_or(0)
    }
    pub fn text(&self) -> String {
        self.lines.borrow().join("\n")
    }
}

/// FNV-1a: a short, stable digest of what a volume reads back.
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Our own check always (in-process, fast enough for 100,000 seeds), and
/// Debian's thin_check when asked.
async fn check_metadata(meta: &str, seed: u64, t: &Trace) {
    let desc = bdev::open(meta, false, None).expect("open metadata bdev");
    let ch = desc.io_channel().expect("channel");
    let blocks = ch.bdev().size_bytes() / 4096;
    let b = ch
        .read(0, ch.bdev().num_blocks())
        .await
        .expect("read metadata");
    drop((ch, desc));
    let io = metadata::io::MemIo::from_blocks(
        b.as_slice()
            .chunks_exact(4096)
            .map(|c| Box::new(<metadata::Block>::try_from(c).expect("a whole block")))
            .collect(),
    );
    let r = metadata::thin::check::check(&io, &Default::default());
    // A data block allocated for a provision still zeroing or copying when
    // a commit ran is counted on disk but mapped by nobody: a crash then
    // leaks it, in dm-thin as here (thin_check calls it non-fatal, and
    // thin_repair gives it back). Anything else is wrong.
    let others: Vec<&String> = r
        .non_fatal
        .iter()
        .filter(|m| !(m.starts_with("data space map") && m.contains("leaked")))
        .collect();
    assert!(
        r.passed() && others.is_empty(),
        "seed {seed}: our check after the crash: {:?} {:?}",
        r.fatal,
        r.non_fatal
    );
    t.line(format!("check: {:?}", r.non_fatal));
    if t.debian_check {
        let (ok, out) = thin_check(meta, blocks).await;
        assert!(ok, "seed {seed}: thin_check after the crash: {out}");
    }
}

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

/// One seeded crash run; `t` records what happened (see `Trace`).
pub async fn crash_seed(seed: u64, t: Trace) {
    let mut rng = Rng(seed);
    let (mm, md, p) = (unique("cm"), unique("cd"), unique("cp"));
    malloc(&mm, 2 * MIB);
    malloc(&md, 16 * MIB);
    // Under each cache, a disk whose flushes take a seeded while (none, or
    // up to 2 ms): commits then span many turns of the other core, and
    // flushes and power cuts land inside them.
    let slow = |base: &str, rng: &mut Rng| {
        let us = [0, 50, 2000][rng.below(3) as usize];
        let name = unique("cdl");
        delay::create(DelayOptions {
            name: name.clone(),
            base_bdev_name: base.to_string(),
            latency_us: [us, us, 0, 0],
            uuid: None,
        })
        .unwrap();
        name
    };
    let (sm, sd) = (slow(&mm, &mut rng), slow(&md, &mut rng));
    let (em, ed) = (
        error::create(&sm, None).unwrap().name().to_string(),
        error::create(&sd, None).unwrap().name().to_string(),
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
        // Now and then let time pass, so periodic commits start at any
        // point of the workload, a flush included.
        if rng.below(3) == 0 {
            reactor::sleep(Duration::from_micros(rng.below(3000))).await;
        }
        match rng.below(10) {
            0..=6 => {
                let (ch, off, data) = stage_write(&mut vols, &name, &mut rng, &mut tag);
                let s = write(&ch, off, &data).await;
                t.pool_line(
                    &p,
                    format!("step {step}: write {name} at {off} tag {tag}: {s:?}"),
                );
                assert_eq!(s, IoStatus::Success, "seed {seed} step {step}");
            }
            7 | 8 => {
                let v = vols.get_mut(&name).unwrap();
                v.ch.flush()
                    .await
                    .unwrap_or_else(|s| panic!("seed {seed}: flush {s:?}"));
                t.pool_line(&p, format!("step {step}: flush {name}"));
                v.cells.iter_mut().for_each(Cell::settle);
            }
            _ if vols.len() < 4 => {
                let s = format!("{p}_s{step}");
                thin::snapshot(&name, &s, None)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: snapshot {e}"));
                t.pool_line(&p, format!("step {step}: snapshot {name} as {s}"));
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
    t.pool_line(&p, format!("cut at step {crash_at} of {ops}"));
    cut_all_io(&[&em, &ed]);
    for (what, n) in [("metadata", &em), ("data", &ed)] {
        let r = error::control(n).unwrap().power_cut(seed).await.unwrap();
        t.pool_line(
            &p,
            format!(
                "{what} cache at the cut: kept {} dropped {} torn {}",
                r.kept, r.dropped, r.torn
            ),
        );
        t.held(what, r.kept + r.dropped + r.torn);
    }
    let models: BTreeMap<String, (u32, Vec<Cell>)> = vols
        .into_iter()
        .map(|(k, v)| (k, (v.dev, v.cells)))
        .collect();
    thin::abandon_pool(&p).await.unwrap();
    t.line("abandoned".into());
    for t in inflight {
        t.await;
    }
    // The process that lost power is gone: none of its I/O may land from
    // here on. The abandoned pool's tasks still run (a commit waiting on a
    // slow flush, say), so its bdevs go, failing whatever it still sends,
    // and the pool reopens on new ones over the same disks.
    for n in [&em, &ed] {
        bdev::unregister(n).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    let (em, ed) = (
        error::create(&sm, None).unwrap().name().to_string(),
        error::create(&sd, None).unwrap().name().to_string(),
    );
    check_metadata(&em, seed, &t).await;
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
        t.pool_line(&p, format!("{name} reads back {:016x}", fnv(&got)));
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
    for n in [&em, &ed, &sm, &sd, &mm, &md] {
        bdev::unregister(n).unwrap();
    }
}
