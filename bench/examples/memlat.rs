//! The machine's memory latency by working-set size: a random cycle of
//! cache lines, followed one dependent load at a time. It is the floor
//! under any lookup that misses (a cold B-tree leaf, a mapping-table
//! entry), so benchmark notes quote it.
//!
//!   cargo run --release -p bench --example memlat [MiB ...]

use std::time::Instant;

const LINE: usize = 64 / std::mem::size_of::<usize>();

fn ns_per_load(bytes: usize) -> f64 {
    let lines = (bytes / 64).max(2);
    // A random cyclic order of the lines (Sattolo's shuffle: one cycle).
    let mut order: Vec<usize> = (0..lines).collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..lines).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % i as u64) as usize);
    }
    let mut next = vec![0usize; lines * LINE];
    for i in 0..lines {
        next[order[i] * LINE] = order[(i + 1) % lines] * LINE;
    }
    let steps = 20_000_000usize;
    let mut at = 0;
    let start = Instant::now();
    for _ in 0..steps {
        at = next[at];
    }
    std::hint::black_box(at);
    start.elapsed().as_nanos() as f64 / steps as f64
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1, 4, 8, 16, 64, 256]
    } else {
        sizes
    };
    for mib in sizes {
        println!(
            "{mib:>5} MiB: {:6.1} ns per dependent load",
            ns_per_load(mib << 20)
        );
    }
}
