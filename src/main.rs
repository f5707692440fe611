//! The `ferrothin` command: the target daemon (`tgt`), the bench tool, and
//! the metadata tools.

mod config;
mod rpc;
mod status;
mod tgt;
mod tools;

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
    /// The target daemon: JSON-RPC on a Unix socket, NBD exports.
    Tgt(tgt::TgtArgs),
    /// A running daemon's pools and volumes, over its RPC socket (like lvs).
    Status(status::StatusArgs),
    /// Benchmark bdevs in-process (bdevperf's flags).
    Bench(bench::BenchArgs),
    /// Check pool metadata (thin_check).
    Check(tools::check::CheckArgs),
    /// Dump pool metadata as XML or text (thin_dump).
    Dump(tools::dump::DumpArgs),
    /// Write pool metadata from XML (thin_restore).
    Restore(tools::restore::RestoreArgs),
    /// Salvage a damaged metadata device into a fresh one (thin_repair).
    Repair(tools::repair::RepairArgs),
    /// Changed block ranges between two devices (thin_delta).
    Delta(tools::delta::DeltaArgs),
    /// List a pool's devices with mapped, exclusive and shared blocks (thin_ls).
    Ls(tools::ls::LsArgs),
    /// Copy a thin device's mapped blocks to a file or device (thin_migrate).
    Migrate(tools::migrate::MigrateArgs),
    /// Discard an offline pool's free data blocks (thin_trim).
    Trim(tools::trim::TrimArgs),
    /// How much metadata a pool needs (thin_metadata_size).
    MetadataSize(tools::metadata_size::MetadataSizeArgs),
}

/// The levels a bare `--log-level` may name. A bare word is otherwise a
/// valid tracing filter (a target name) that shows nothing, so a typo
/// would silently turn logging off.
const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

fn log_filter(spec: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    let directive = spec.contains(['=', ',', ':', '[']);
    if !directive && !LEVELS.contains(&spec.to_ascii_lowercase().as_str()) {
        anyhow::bail!(
            "--log-level {spec}: not a level ({}) or a filter such as thin=debug",
            LEVELS.join(", ")
        );
    }
    tracing_subscriber::EnvFilter::try_new(spec)
        .with_context(|| format!("--log-level {spec}: not a tracing filter"))
}

/// A metadata tool's exit status. Without its input it says so as
/// thin-provisioning-tools do, then its usage, and exits 1 (scripts
/// written for those tools test for that).
fn tool(name: &str, r: anyhow::Result<i32>) -> anyhow::Result<i32> {
    match tools::exit_status(r) {
        Err(e) if e.downcast_ref::<tools::Missing>().is_some() => {
            eprintln!("{e}");
            let mut cli = <Cli as clap::CommandFactory>::command();
            cli.build();
            if let Some(sub) = cli.find_subcommand_mut(name) {
                eprintln!("{}", sub.render_usage());
            }
            Ok(1)
        }
        r => r,
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The modules beyond the bdev layer's base ones.
    thin::register();
    lvol::register();
    let filter = log_filter(&cli.log_level)?;
    // Colour codes only where a person reads them: not in files or pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    let code = match cli.command {
        Command::Bench(args) => {
            let reports = bench::run(&args)?;
            if reports.iter().any(|r| r.status != "finished") {
                anyhow::bail!("some jobs failed");
            }
            0
        }
        Command::Tgt(a) => {
            tgt::run(&a)?;
            0
        }
        Command::Status(a) => status::run(&a)?,
        Command::Check(a) => tool("check", tools::check::run(&a))?,
        Command::Dump(a) => tool("dump", tools::dump::run(&a))?,
        Command::Restore(a) => tool("restore", tools::restore::run(&a))?,
        Command::Ls(a) => tool("ls", tools::ls::run(&a))?,
        Command::Delta(a) => tool("delta", tools::delta::run(&a))?,
        Command::Repair(a) => tool("repair", tools::repair::run(&a))?,
        Command::Migrate(a) => tool("migrate", tools::migrate::run(&a))?,
        Command::Trim(a) => tool("trim", tools::trim::run(&a))?,
        Command::MetadataSize(a) => tool("metadata-size", tools::metadata_size::run(&a))?,
    };
    std::process::exit(code);
}
