//! Runtime-API benchmarks of the metadata library (in memory, release):
//! sequential and random inserts with a commit every 10K, cached lookups,
//! snapshot creation on a 1M-mapping origin, open time, blocks used.
//!
//!   cargo run --release -p metadata --example md_bench [MAPPINGS]

use std::time::Instant;

use metadata::io::{BlockIo, MemIo};
use metadata::thin::pool::Pool;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn fill(p: &mut Pool, n: u64, random: bool) -> f64 {
    let mut r = Rng(0x1234_5678);
    let start = Instant::now();
    for i in 0..n {
        let v = if random { r.next() % (n * 4) } else { i };
        let d = p.alloc_data_block().expect("data space");
        p.insert(1, v, d).unwrap();
        if i % 10_000 == 9_999 {
            p.commit(&mut || Ok(())).unwrap();
        }
    }
    p.commit(&mut || Ok(())).unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let meta_blocks = 64 * 1024; // 256 MiB of metadata
    let disk = MemIo::new(meta_blocks);
    let mut p = Pool::format(Box::new(disk), 128, n * 2).unwrap();
    p.create_thin(1).unwrap();
    let seq = fill(&mut p, n, false);
    println!("sequential inserts:  {seq:>12.0} /s ({n} keys, commit every 10K)");
    let mut q = Pool::format(Box::new(MemIo::new(meta_blocks)), 128, n * 2).unwrap();
    q.create_thin(1).unwrap();
    let rnd = fill(&mut q, n, true);
    println!("random inserts:      {rnd:>12.0} /s ({n} keys in a 4x range, commit every 10K)");
    let mut r = Rng(99);
    let start = Instant::now();
    let lookups = 1_000_000u64;
    let mut hits = 0;
    for _ in 0..lookups {
        if p.lookup(1, r.next() % n).unwrap().is_some() {
            hits += 1;
        }
    }
    let lps = lookups as f64 / start.elapsed().as_secs_f64();
    println!("cached lookups:      {lps:>12.0} /s ({hits} hits)");
    // The same over 4K keys (a few nodes, all in the CPU cache): what the
    // code costs without the cold leaf's memory latency.
    let start = Instant::now();
    let mut hot_hits = 0;
    for _ in 0..lookups {
        if p.lookup(1, r.next() % 4096).unwrap().is_some() {
            hot_hits += 1;
        }
    }
    let lps = lookups as f64 / start.elapsed().as_secs_f64();
    println!("hot lookups:         {lps:>12.0} /s ({hot_hits} hits in 4096 keys)");
    let start = Instant::now();
    p.create_snap(2, 1).unwrap();
    let snap = start.elapsed();
    p.commit(&mut || Ok(())).unwrap();
    println!(
        "snapshot of {n} mappings: {:.3} ms (+ commit)",
        snap.as_secs_f64() * 1e3
    );
    let used = p.nr_metadata_blocks() - p.nr_free_metadata_blocks();
    println!("metadata blocks used: {used} for {n} sequential mappings (2 devices sharing them)");
    // Reopen: the whole cost of opening a pool with N mappings.
    let image = {
        let io: Box<dyn BlockIo> = Box::new(MemIo::new(1));
        drop(io);
        p
    };
    let bytes = image_bytes(image);
    let start = Instant::now();
    let reopened = Pool::open(Box::new(MemIo::from_blocks(bytes))).unwrap();
    println!(
        "open:                {:.3} ms ({} devices)",
        start.elapsed().as_secs_f64() * 1e3,
        reopened.devices().len()
    );
}

/// The committed image of a pool (via a fresh read of every block).
fn image_bytes(p: Pool) -> Vec<Box<metadata::Block>> {
    let io = p.into_io();
    (0..io.nr_blocks()).map(|b| io.read(b).unwrap()).collect()
}
