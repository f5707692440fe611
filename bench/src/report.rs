//! Merging jobs into per-bdev results and printing them (bdevperf's table,
//! plus percentiles; or JSON in the shape of bdevperf's perform_tests).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::job::JobResult;

/// One bdev's numbers, merged over the cores that drove it.
#[derive(Debug, Clone, Serialize)]
pub struct BdevReport {
    pub job: String,
    pub core_mask: String,
    pub workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<u32>,
    pub status: String,
    pub queue_depth: u32,
    pub io_size: u64,
    pub runtime: f64,
    pub iops: f64,
    pub mibps: f64,
    pub io_failed: u64,
    pub io_timeout: u64,
    pub miscompares: u64,
    pub avg_latency_us: f64,
    pub min_latency_us: f64,
    pub max_latency_us: f64,
    pub p50_latency_us: f64,
    pub p90_latency_us: f64,
    pub p99_latency_us: f64,
    pub p99_9_latency_us: f64,
    pub p99_99_latency_us: f64,
    /// With --flush-every: how many FLUSHes ran and their latencies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flush: Option<FlushReport>,
    /// With `--alternate`: the median, over the turns, of this bdev's IOPS
    /// over the first target's in the same turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paired_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlushReport {
    pub count: u64,
    pub avg_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub max_us: f64,
}

fn us(ticks: u64) -> f64 {
    reactor::ticks_to_ns(ticks) as f64 / 1000.0
}

/// Merges the jobs of one bdev.
pub fn merge(jobs: &[JobResult]) -> Option<BdevReport> {
    let first = jobs.first()?;
    let mut hist: Histogram<u64> = first.hist.clone();
    for j in &jobs[1..] {
        let _ = hist.add(&j.hist);
    }
    let mut fh: Histogram<u64> = first.flush_hist.clone();
    for j in &jobs[1..] {
        let _ = fh.add(&j.flush_hist);
    }
    let flush = (!fh.is_empty()).then(|| FlushReport {
        count: fh.len(),
        avg_us: fh.mean() * reactor::ticks_to_ns(1_000_000) as f64 / 1e9,
        p50_us: us(fh.value_at_quantile(0.5)),
        p99_us: us(fh.value_at_quantile(0.99)),
        p99_9_us: us(fh.value_at_quantile(0.999)),
        max_us: us(fh.max()),
    });
    let completed: u64 = jobs.iter().map(|j| j.completed).sum();
    let failed: u64 = jobs.iter().map(|j| j.failed).sum();
    let miscompares: u64 = jobs.iter().map(|j| j.miscompares).sum();
    let total_ticks: u64 = jobs.iter().map(|j| j.total_latency_ticks).sum();
    let runtime = jobs
        .iter()
        .map(|j| reactor::ticks_to_ns(j.runtime_ticks))
        .max()
        .unwrap_or(0) as f64
        / 1e9;
    // Each job's rate over its own runtime, summed: cores run side by side.
    let iops: f64 = jobs.iter().map(JobResult::iops).sum();
    let spec = &first.spec;
    let mut cores: Vec<u32> = jobs.iter().map(|j| j.spec.core).collect();
    cores.sort_unstable();
    let q = |p: f64| {
        if hist.is_empty() {
            0.0
        } else {
            us(hist.value_at_quantile(p))
        }
    };
    Some(BdevReport {
        job: spec.bdev.clone(),
        core_mask: reactor::format_core_mask(&cores),
        workload: spec.workload.name().to_string(),
        percentage: spec.workload.is_mixed().then_some(spec.rwmixread),
        status: if failed > 0 || miscompares > 0 {
            "failed"
        } else {
            "finished"
        }
        .to_string(),
        queue_depth: spec.queue_depth,
        io_size: spec.io_size,
        runtime,
        iops,
        mibps: iops * spec.io_size as f64 / (1 << 20) as f64,
        io_failed: failed,
        io_timeout: 0,
        miscompares,
        avg_latency_us: if completed > 0 {
            us(total_ticks) / completed as f64
        } else {
            0.0
        },
        min_latency_us: if hist.is_empty() { 0.0 } else { us(hist.min()) },
        max_latency_us: if hist.is_empty() { 0.0 } else { us(hist.max()) },
        p50_latency_us: q(0.50),
        p90_latency_us: q(0.90),
        p99_latency_us: q(0.99),
        p99_9_latency_us: q(0.999),
        p99_99_latency_us: q(0.9999),
        flush,
        paired_ratio: None,
    })
}

/// bdevperf's final table, with a percentile line under each bdev.
pub fn text(reports: &[BdevReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n{:>107}", "Latency(us)");
    let _ = writeln!(
        s,
        " {:<28}: {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "Device Information",
        "runtime(s)",
        "IOPS",
        "MiB/s",
        "Fail/s",
        "TO/s",
        "Average",
        "min",
        "max"
    );
    for r in reports {
        match r.percentage {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "Job: {} (Core Mask {}, workload: {}, percentage: {p}, depth: {}, IO size: {})",
                    r.job, r.core_mask, r.workload, r.queue_depth, r.io_size
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "Job: {} (Core Mask {}, workload: {}, depth: {}, IO size: {})",
                    r.job, r.core_mask, r.workload, r.queue_depth, r.io_size
                );
            }
        }
        let fail_s = if r.runtime > 0.0 {
            r.io_failed as f64 / r.runtime
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "\t {:<20}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2}",
            r.job,
            r.runtime,
            r.iops,
            r.mibps,
            fail_s,
            0.0,
            r.avg_latency_us,
            r.min_latency_us,
            r.max_latency_us
        );
        let _ = writeln!(
            s,
            "\t {:<20}: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  p99.99 {:.2}",
            "percentiles (us)",
            r.p50_latency_us,
            r.p90_latency_us,
            r.p99_latency_us,
            r.p99_9_latency_us,
            r.p99_99_latency_us
        );
        if let Some(f) = &r.flush {
            let _ = writeln!(
                s,
                "\t {:<20}: {} flushes, avg {:.2}  p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                "flush (us)", f.count, f.avg_us, f.p50_us, f.p99_us, f.p99_9_us, f.max_us
            );
        }
        if r.miscompares > 0 {
            let _ = writeln!(s, "\t {:<20}: {} miscompares", "verify", r.miscompares);
        }
    }
    let _ = writeln!(s, " {}", "=".repeat(115));
    let iops: f64 = reports.iter().map(|r| r.iops).sum();
    let mibps: f64 = reports.iter().map(|r| r.mibps).sum();
    let fails: f64 = reports
        .iter()
        .map(|r| {
            if r.runtime > 0.0 {
                r.io_failed as f64 / r.runtime
            } else {
                0.0
            }
        })
        .sum();
    let weight: f64 = reports
        .iter()
        .map(|r| r.iops)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let avg = reports
        .iter()
        .map(|r| r.avg_latency_us * r.iops)
        .sum::<f64>()
        / weight;
    let min = reports
        .iter()
        .map(|r| r.min_latency_us)
        .fold(f64::INFINITY, f64::min);
    let max = reports.iter().map(|r| r.max_latency_us).fold(0.0, f64::max);
    let _ = writeln!(
        s,
        " {:<28}: {:>10} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2}",
        "Total",
        "",
        iops,
        mibps,
        fails,
        0.0,
        avg,
        if min.is_finite() { min } else { 0.0 },
        max
    );
    s
}

/// bdevperf's perform_tests JSON, with our percentile fields added.
pub fn json(reports: &[BdevReport], core_count: usize) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        results: &'a [BdevReport],
        core_count: usize,
    }
    serde_json::to_string_pretty(&Out {
        results: reports,
        core_count,
    })
    .unwrap_or_default()
}
