//! `ferrothin bench`: bdevperf for ferrothin.
//!
//! Creates bdevs from an SPDK-style JSON config, then runs one job per core
//! per target bdev (each core gets an equal share of the bdev's blocks), in
//! busy-poll mode unless told otherwise. Jobs keep `-q` I/Os in flight,
//! record every latency in an hdrhistogram, and are merged per bdev for the
//! report. See `args.rs` for the flags, which follow bdevperf's.
//!
//! The bench knows no bdev module: the config goes through the same RPC
//! registry as the daemon's, jobs avoid the cores modules reserve (a thin
//! pool's metadata core), and at exit every module prints its summary and
//! shuts down (thin commits its pools). Latency is the bdev layer's own
//! submit-to-completion ticks, in a fixed-bounds histogram, so a job
//! allocates nothing while it runs.
#![forbid(unsafe_code)]

mod alternate;
mod args;
mod job;
mod report;
mod workload;

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub use args::{parse_size, BenchArgs, OutputFormat};
pub use job::{JobResult, JobShared, JobSpec};
pub use report::BdevReport;
pub use workload::Workload;

use reactor::{PollMode, ReactorOptions, ReactorSet};

/// The config used when `--json` is not given.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/bench-default.json");

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Args(String),
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error(transparent)]
    Config(#[from] bdev::config::ConfigError),
    #[error(transparent)]
    Reactor(#[from] reactor::ReactorError),
    #[error("no bdev to run on{0}")]
    NoTargets(String),
    #[error("job on {0}: {1}")]
    Job(String, String),
}

struct Target {
    name: String,
    num_blocks: u64,
    block_size: u32,
}

/// Runs the benchmark and prints its report. Returns the per-bdev results.
pub fn run(args: &BenchArgs) -> Result<Vec<BdevReport>, BenchError> {
    if args.queue_depth == 0 {
        return Err(BenchError::Args(
            "queue depth (-q) must be at least 1".into(),
        ));
    }
    if !(args.time > 0.0 && args.time.is_finite()) {
        return Err(BenchError::Args("run time (-t) must be positive".into()));
    }
    if matches!(args.alternate, Some(s) if !(s > 0.0 && s.is_finite())) {
        return Err(BenchError::Args(
            "--alternate needs a positive slice in seconds".into(),
        ));
    }
    let mix = match (args.workload.is_mixed(), args.rwmixread) {
        (true, Some(m)) if m <= 100 => m,
        (true, Some(m)) => {
            return Err(BenchError::Args(format!(
                "read percentage (-M) {m} is over 100"
            )))
        }
        (true, None) => {
            return Err(BenchError::Args(
                "rw and randrw need a read percentage (-M)".into(),
            ))
        }
        (false, Some(_)) => {
            eprintln!("-M is only for rw and randrw; ignored");
            0
        }
        (false, None) => 0,
    };
    let config = match &args.json {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| BenchError::Read(p.display().to_string(), e))?
        }
        None => DEFAULT_CONFIG.to_string(),
    };
    let cores = reactor::parse_core_mask(&args.core_mask)?;
    let mode = if args.idle {
        PollMode::default()
    } else {
        PollMode::Busy
    };
    let set = ReactorSet::start(
        &cores,
        ReactorOptions {
            mode,
            no_pin: false,
        },
    )?;
    let app = cores[0];
    let wanted = args.targets.clone();
    let targets = set.block_on(
        app,
        move || async move { configure(&config, &wanted).await },
    )??;
    // I/O jobs never run on a core a module keeps (a thin pool's
    // metadata core).
    let kept = bdev::reserved_cores();
    let job_cores: Vec<u32> = cores
        .iter()
        .copied()
        .filter(|c| !kept.contains(c))
        .collect();
    if job_cores.is_empty() {
        set.stop();
        return Err(BenchError::Args(
            "modules keep every core (a thin pool's metadata core): widen -m or set metadata_core"
                .into(),
        ));
    }

    let mut specs = Vec::new();
    for t in &targets {
        let Some(b) = bdev::lookup(&t.name) else {
            continue;
        };
        if let Some(missing) = args
            .workload
            .needs()
            .iter()
            .find(|x| !b.io_type_supported(**x))
        {
            eprintln!(
                "Skipping {} because it does not support {}",
                t.name,
                missing.name()
            );
            continue;
        }
        if !args.io_size.is_multiple_of(t.block_size as u64) {
            return Err(BenchError::Args(format!(
                "I/O size {} is not a multiple of {}'s block size {}",
                args.io_size, t.name, t.block_size
            )));
        }
        let io_blocks = args.io_size / t.block_size as u64;
        let share = t.num_blocks / io_blocks / job_cores.len() as u64;
        if share == 0 {
            return Err(BenchError::Args(format!(
                "{} is too small for {} cores at this I/O size",
                t.name,
                job_cores.len()
            )));
        }
        for (i, &core) in job_cores.iter().enumerate() {
            specs.push(JobSpec {
                bdev: t.name.clone(),
                core,
                workload: args.workload,
                rwmixread: mix,
                queue_depth: args.queue_depth,
                io_size: args.io_size,
                range_start: i as u64 * share * io_blocks,
                range_ios: share,
                seed: args.seed,
                stream: 0,
                prefill: false,
                flush_every: args.flush_every,
            });
        }
    }
    if specs.is_empty() {
        return Err(BenchError::NoTargets(String::new()));
    }

    if args.prefill {
        let pre: Vec<JobSpec> = specs
            .iter()
            .map(|s| JobSpec {
                prefill: true,
                queue_depth: s.queue_depth.max(32),
                ..s.clone()
            })
            .collect();
        eprintln!("Prefilling {} job range(s)...", pre.len());
        let (results, _) = run_jobs(&set, pre, None, true)?;
        if let Some(j) = results.iter().find(|j| j.failed > 0) {
            return Err(BenchError::Job(
                j.spec.bdev.clone(),
                format!("{} prefill writes failed", j.failed),
            ));
        }
    }

    if let Some(path) = &args.after_prefill {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BenchError::Args(format!("{}: {e}", path.display())))?;
        set.block_on(app, move || async move {
            let calls = bdev::config::parse(&text)?;
            let registry = bdev::rpc::RpcRegistry::with_modules();
            bdev::config::apply_bdev_here(&registry, calls)
                .await
                .map(drop)
        })??;
    }
    if args.output == OutputFormat::Text {
        println!("Running I/O for {} seconds...", args.time);
    }
    let (results, turns) = match args.alternate {
        Some(slice) => {
            let (r, t) = alternate::run(&set, specs, args.time, slice)?;
            (r, Some(t))
        }
        None => (
            run_jobs(&set, specs, Some(Duration::from_secs_f64(args.time)), true)?.0,
            None,
        ),
    };
    let mut reports = Vec::new();
    for t in &targets {
        let mine: Vec<JobResult> = results
            .iter()
            .filter(|j| j.spec.bdev == t.name)
            .map(clone_result)
            .collect();
        if let Some(mut r) = report::merge(&mine) {
            r.paired_ratio = turns.as_ref().and_then(|t| t.ratio_to_first(&r.job));
            reports.push(r);
        }
    }
    match args.output {
        OutputFormat::Text => {
            print!("{}", report::text(&reports));
            if let Some(t) = &turns {
                print!("{}", t.text());
            }
        }
        OutputFormat::Json => println!("{}", report::json(&reports, job_cores.len())),
    }
    // A clean exit shuts every module down (thin commits its pools).
    set.block_on(app, || async {
        for m in bdev::modules() {
            for line in m.summary() {
                eprintln!("{line}");
            }
        }
        for failed in bdev::fini_all().await {
            eprintln!("{failed}");
        }
    })?;
    set.stop();
    Ok(reports)
}

fn clone_result(j: &JobResult) -> JobResult {
    JobResult {
        spec: j.spec.clone(),
        hist: j.hist.clone(),
        flush_hist: j.flush_hist.clone(),
        completed: j.completed,
        failed: j.failed,
        miscompares: j.miscompares,
        total_latency_ticks: j.total_latency_ticks,
        runtime_ticks: j.runtime_ticks,
    }
}

/// Applies the config and picks the targets (runs on the app reactor).
async fn configure(config: &str, wanted: &[String]) -> Result<Vec<Target>, BenchError> {
    let calls = bdev::config::parse(config)?;
    let registry = bdev::rpc::RpcRegistry::with_modules();
    for other in bdev::config::apply_bdev_here(&registry, calls).await? {
        eprintln!(
            "config: ignoring {} (subsystem {})",
            other.method, other.subsystem
        );
    }
    let all = bdev::list();
    let picked: Vec<_> = if wanted.is_empty() {
        all.into_iter()
            .filter(|b| b.claimed_by().is_none())
            .collect()
    } else {
        let mut v = Vec::new();
        for w in wanted {
            v.push(
                bdev::lookup(w)
                    .ok_or_else(|| BenchError::NoTargets(format!(": no bdev named {w}")))?,
            );
        }
        v
    };
    Ok(picked
        .into_iter()
        .map(|b| Target {
            name: b.name().to_string(),
            num_blocks: b.num_blocks(),
            block_size: b.block_size(),
        })
        .collect())
}

/// Starts every job on its core; with a duration, reports progress each
/// second and stops them when it has passed; waits for all.
pub(crate) fn run_jobs(
    set: &ReactorSet,
    specs: Vec<JobSpec>,
    duration: Option<Duration>,
    progress: bool,
) -> Result<(Vec<JobResult>, Duration), BenchError> {
    let (tx, rx) = mpsc::channel();
    let mut shared = Vec::new();
    let io_size = specs.first().map_or(0, |s| s.io_size);
    let n = specs.len();
    let start = Instant::now();
    for spec in specs {
        let s = Arc::new(JobShared::default());
        shared.push(s.clone());
        let tx = tx.clone();
        let core = spec.core;
        set.send(core, move || {
            reactor::spawn_local(async move {
                let name = spec.bdev.clone();
                let r = job::run(spec, s)
                    .await
                    .map_err(|e| BenchError::Job(name, e));
                let _ = tx.send(r);
            })
            .detach();
        })?;
    }
    drop(tx);
    if let Some(d) = duration {
        let tty = std::io::stderr().is_terminal();
        let mut last = 0u64;
        let mut tick = start;
        while start.elapsed() < d {
            let next = (tick + Duration::from_secs(1)).min(start + d);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            let now_total: u64 = shared
                .iter()
                .map(|s| s.completed.load(Ordering::Relaxed))
                .sum();
            let secs = next.duration_since(tick).as_secs_f64().max(1e-9);
            let iops = (now_total - last) as f64 / secs;
            let line = format!(
                "{:12.2} IOPS, {:8.2} MiB/s",
                iops,
                iops * io_size as f64 / (1 << 20) as f64
            );
            match (progress, tty) {
                (false, _) => {}
                (true, true) => eprint!("\r{line}"),
                (true, false) => eprintln!("{line}"),
            }
            last = now_total;
            tick = next;
        }
        if tty && progress {
            eprintln!();
        }
        for s in &shared {
            s.stop.store(true, Ordering::Relaxed);
        }
    }
    let mut results = Vec::with_capacity(n);
    for _ in 0..n {
        let r = rx.recv().map_err(|_| reactor::ReactorError::Stopped)?;
        results.push(r?);
    }
    Ok((results, start.elapsed()))
}
