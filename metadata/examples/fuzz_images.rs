//! Runs the mutation fuzzer for a while and reports executions and
//! findings (a finding is printed with the case that replays it); or
//! writes the seed corpus for the cargo-fuzz target.
//!
//!   cargo run --release -p metadata --example fuzz_images [SECONDS]
//!   cargo run --release -p metadata --example fuzz_images -- --write-corpus DIR

use std::time::{Duration, Instant};

use metadata::fuzz::{exercise, mutate};
use metadata::io::MemIo;

fn corpus() -> Vec<MemIo> {
    metadata::fuzz::seed_corpus()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--write-corpus") {
        let dir = std::path::PathBuf::from(args.get(2).expect("--write-corpus DIR"));
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        for (i, image) in corpus().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}.img")), image.bytes()).expect("write seed");
        }
        return;
    }
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    std::panic::set_hook(Box::new(|_| {}));
    let corpus = corpus();
    let (start, budget) = (Instant::now(), Duration::from_secs(secs));
    let (mut execs, mut findings) = (0u64, 0u64);
    let seed = 0xF022_u64;
    'outer: for it in 0.. {
        for (i, image) in corpus.iter().enumerate() {
            if start.elapsed() >= budget {
                break 'outer;
            }
            let bad = mutate(image, seed + i as u64, it);
            execs += 1;
            if let Some(what) = exercise(&bad) {
                findings += 1;
                println!(
                    "finding: {what} (corpus image {i}, seed {}, iteration {it})",
                    seed + i as u64
                );
            }
        }
    }
    let t = start.elapsed().as_secs_f64();
    println!(
        "{execs} executions in {t:.1} s ({:.0}/s), {findings} findings",
        execs as f64 / t
    );
}
