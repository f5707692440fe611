//! bdevperf's command line, as clap arguments.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::workload::Workload;

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmark bdevs in-process (bdevperf's flags)")]
pub struct BenchArgs {
    /// SPDK-style JSON config creating the bdevs (default: the embedded one:
    /// a 512 MiB malloc bdev and a 1 GiB null bdev).
    #[arg(long = "json", short = 'c')]
    pub json: Option<PathBuf>,
    /// Run only on these bdevs (default: every unclaimed bdev).
    #[arg(short = 'T', long = "target")]
    pub targets: Vec<String>,
    /// Queue depth per job.
    #[arg(short = 'q', default_value_t = 32)]
    pub queue_depth: u32,
    /// I/O size in bytes; k, m and g suffixes are binary.
    #[arg(short = 'o', default_value = "4096", value_parser = parse_size)]
    pub io_size: u64,
    /// Workload.
    #[arg(short = 'w', default_value = "randread", value_parser = Workload::parse)]
    pub workload: Workload,
    /// Read percentage for rw and randrw.
    #[arg(short = 'M')]
    pub rwmixread: Option<u32>,
    /// Run time in seconds.
    #[arg(short = 't', default_value_t = 5.0)]
    pub time: f64,
    /// Core mask: jobs run on every core of it.
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    pub core_mask: String,
    /// Write every block of each target once, sequentially, before the run.
    #[arg(long)]
    pub prefill: bool,
    /// A JSON config (same format as --json) applied after the prefill and
    /// before the timed run: e.g. snapshot a prefilled thin volume to
    /// measure copy on write. Its new bdevs are not targets.
    #[arg(long = "after-prefill")]
    pub after_prefill: Option<PathBuf>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Let reactors park when idle instead of busy-polling.
    #[arg(long)]
    pub idle: bool,
    /// Make every N-th I/O of each job a FLUSH (0: never); flush latencies
    /// are reported apart and flushes do not count as IOPS. Measures FLUSH
    /// latency under the workload's load.
    #[arg(long, default_value_t = 0)]
    pub flush_every: u64,
    /// Run the targets in turns of this many seconds each instead of all
    /// at once, until each has run -t seconds; report each turn's IOPS
    /// against the first target's. On a machine whose speed drifts, the
    /// ratio of runs a fraction of a second apart is the steady figure.
    #[arg(long, value_name = "SECONDS")]
    pub alternate: Option<f64>,
    /// Seed for random offsets and verify patterns.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Parses `4096`, `4k`, `1M`, `2g`, `1t` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        Some('t' | 'T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("invalid size {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert!(parse_size("0").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("99999999999g").is_err());
    }
}
