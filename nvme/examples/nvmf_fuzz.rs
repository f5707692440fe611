//! The long run of the NVMe/TCP PDU fuzzer:
//!
//!     cargo run --release -p nvme --example nvmf_fuzz -- SEED ITERATIONS
//!
//! Prints the report; a failing case panics with the seed that replays
//! it (`nvme::fuzz::fuzz_case`).

use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [seed, iterations] => seed.parse::<u64>().ok().zip(iterations.parse::<u64>().ok()),
        _ => None,
    };
    let Some((seed, iterations)) = parsed else {
        eprintln!("usage: nvmf_fuzz SEED ITERATIONS");
        return ExitCode::from(2);
    };
    let start = Instant::now();
    let report = nvme::fuzz::fuzz(seed, iterations);
    println!("{report}");
    println!("{:.1} s", start.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
