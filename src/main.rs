//! The `ferrothin` command: the bench tool today; the target daemon and the
//! metadata tools join it as subcommands.

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferrothin",
    version,
    about = "Thin-provisioning storage target"
)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace; or a tracing filter).
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark bdevs in-process (bdevperf's flags).
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.log_level).context("invalid --log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Bench(args) => {
            let reports = bench::run(&args)?;
            if reports.iter().any(|r| r.status != "finished") {
                anyhow::bail!("some jobs failed");
            }
        }
    }
    Ok(())
}
