//! `ferrothin tgt`: the target daemon. Start-up order: reactors, the app
//! state, the config (`--json`, `-c`, or the embedded default), then the
//! RPC socket; shutdown (SIGINT, SIGTERM, spdk_kill_instance) runs it
//! backwards: RPC closed, exports stopped after their I/O finished, every
//! pool committed and closed, reactors stopped.

pub mod app;
mod cores;
mod pool_lines;
pub mod remember;
mod signals;
pub mod startup;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::config::yaml::Files;
use crate::rpc::methods;
use crate::rpc::server::{Dispatch, RpcServer};
use app::App;

/// The embedded default config (`${data_dir}`, `${nbd_listen}` and
/// `${nvmf_listen}` are replaced).
const DEFAULT_CONFIG: &str = include_str!("../../configs/default.yaml");

#[derive(Args, Debug)]
pub struct TgtArgs {
    /// Reactor core mask (hex, or a list like [0,2-3]).
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    pub cpumask: String,
    /// JSON-RPC Unix socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = "/var/tmp/spdk.sock")]
    pub rpc_socket: PathBuf,
    /// SPDK-style JSON config to load at start.
    #[arg(long = "json", conflicts_with = "config")]
    pub json: Option<PathBuf>,
    /// YAML config to load at start; an SPDK JSON config (a .json file,
    /// or text that starts with `{`) is loaded as --json would.
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Start in the STARTUP state; framework_start_init finishes start-up.
    #[arg(long)]
    pub wait_for_rpc: bool,
    /// Where the embedded default config keeps its pool file.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The embedded default's NBD listen address.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd_listen: String,
    /// The embedded default's NVMe/TCP listen address.
    #[arg(long, default_value = "127.0.0.1:4420")]
    pub nvmf_listen: String,
    /// Start with nothing configured instead of the embedded default.
    #[arg(long, conflicts_with_all = ["json", "config"])]
    pub empty: bool,
    /// Reactors spin instead of sleeping when idle (lowest latency).
    #[arg(long)]
    pub busy_poll: bool,
    /// Create what a config names that is missing: a pool file's
    /// directory, and the embedded default's pool file when volumes were
    /// remembered in it.
    #[arg(long)]
    pub create_missing: bool,
    /// Stop at the first config entry that fails (by default the daemon
    /// logs it and comes up with the rest).
    #[arg(long)]
    pub json_strict: bool,
    /// SPDK's flag: go on past failed config entries (our default; it
    /// overrides --json-strict).
    #[arg(long)]
    pub json_ignore_init_errors: bool,
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/ferrothin"),
        None => PathBuf::from("/var/tmp/ferrothin"),
    }
}

/// Loads the start-up config into calls.
fn startup_calls(a: &TgtArgs) -> anyhow::Result<Vec<bdev::config::ConfigCall>> {
    if a.empty {
        return Ok(Vec::new());
    }
    if let Some(p) = &a.json {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        return Ok(bdev::config::parse(&text)?);
    }
    if let Some(p) = &a.config {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        if crate::config::format::detect(p, &text) == crate::config::format::Format::SpdkJson {
            tracing::info!(
                "-c {}: an SPDK JSON config (as spdk_tgt's -c takes), loaded as --json",
                p.display()
            );
            return bdev::config::parse(&text).with_context(|| {
                format!(
                    "{} looks like an SPDK JSON config (it was given to -c)",
                    p.display()
                )
            });
        }
        let files = if a.create_missing {
            Files::CreateWithDirs
        } else {
            Files::Create
        };
        return Ok(crate::config::yaml::to_calls(&text, files)?);
    }
    let dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
    refuse_lost_pool(&dir, a.create_missing)?;
    let text = DEFAULT_CONFIG
        .replace("${data_dir}", &dir.display().to_string())
        .replace("${nbd_listen}", &a.nbd_listen)
        .replace("${nvmf_listen}", &a.nvmf_listen);
    // Our own default directory is made on the first start; one the
    // user named must exist (or be asked for), so a typo does not
    // silently start an empty pool.
    let files = if a.create_missing || a.data_dir.is_none() {
        Files::CreateWithDirs
    } else {
        Files::Create
    };
    Ok(crate::config::yaml::to_calls(&text, files)?)
}

/// The embedded default remembered volumes in `dir` but its pool file is
/// gone: making a new, empty pool would look like losing them all.
fn refuse_lost_pool(dir: &std::path::Path, create_missing: bool) -> anyhow::Result<()> {
    let pool = dir.join("pool0.img");
    let remembered = std::fs::read_to_string(remember::file_in(dir))
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<remember::Remembered>>(&t).ok())
        .is_some_and(|v| !v.is_empty());
    if remembered && !pool.exists() && !create_missing {
        anyhow::bail!(
            "{} is missing, but {} remembers volumes in it: was the pool file moved? Put it \
             back, or start with --create-missing for a new, empty pool",
            pool.display(),
            remember::file_in(dir).display()
        );
    }
    Ok(())
}

pub fn run(a: &TgtArgs) -> anyhow::Result<()> {
    // Before any thread exists, so that every thread inherits the mask
    // and the signals wait for `signals::wait`.
    signals::block_shutdown_signals()?;
    let opts = reactor::ReactorOptions {
        mode: if a.busy_poll {
            reactor::PollMode::Busy
        } else {
            reactor::PollMode::default()
        },
        ..Default::default()
    };
    cores::check_mask(&a.cpumask, cores::cores_here())?;
    let set = reactor::ReactorSet::start_mask(&a.cpumask, opts)
        .with_context(|| format!("starting reactors on {}", a.cpumask))?;
    // STARTUP until the config's first pass has run.
    let app = App::new(set.handle(), false);
    let calls = startup_calls(a)?;
    let result = serve(&app, a, calls);
    shutdown(&app);
    set.stop();
    result
}

fn serve(app: &Arc<App>, a: &TgtArgs, calls: Vec<bdev::config::ConfigCall>) -> anyhow::Result<()> {
    // The embedded default is one pool and its exports: without it the
    // daemon has nothing to serve, so it stops at a failure.
    let embedded = !a.empty && a.json.is_none() && a.config.is_none();
    let strict = (a.json_strict || embedded) && !a.json_ignore_init_errors;
    let context = calls.clone();
    let passes = startup::passes(app, calls);
    let mut failed =
        startup::apply(app, passes.startup, &context, strict).context("loading the config")?;
    let remember =
        embedded.then(|| remember::file_in(&a.data_dir.clone().unwrap_or_else(default_data_dir)));
    if a.wait_for_rpc {
        app.defer(app::Deferred {
            calls: passes.runtime,
            context,
            strict,
            remember,
        });
    } else {
        app.set_runtime();
        failed.extend(
            startup::apply(app, passes.runtime, &context, strict).context("loading the config")?,
        );
        if let Some(file) = remember {
            remember::bring_back(app, file);
        }
    }
    let d = app.clone();
    let dispatch: Dispatch = Arc::new(move |req| methods::dispatch(&d, req));
    let server = RpcServer::start(&a.rpc_socket, dispatch)?;
    print_banner(app, &server);
    for line in pool_lines::lines(app) {
        eprintln!("  {line}");
    }
    for line in remember::inactive(app) {
        eprintln!("  inactive devices in {line} (bdev_thin_activate brings one back)");
    }
    if !failed.is_empty() {
        eprintln!(
            "ferrothin tgt: {} config entries failed and are not up (logged above):",
            failed.len()
        );
        for f in &failed {
            eprintln!("  {f}");
        }
    }
    let sig = signals::wait();
    tracing::info!("{sig}: shutting down");
    eprintln!("ferrothin tgt: {sig}, shutting down");
    server.stop();
    Ok(())
}

fn print_banner(app: &App, server: &RpcServer) {
    eprintln!(
        "ferrothin tgt: reactors on {:?}, JSON-RPC on {}",
        app.reactors.cores(),
        server.path().display()
    );
    for d in app.nbd.disks() {
        eprintln!(
            "  NBD export {:?} (bdev {}) at {}: qemu-img info nbd://{}/{}",
            d.export_name, d.bdev_name, d.address, d.address, d.export_name
        );
    }
    for s in app.nvmf.subsystems() {
        for l in &s.listeners {
            let bdevs: Vec<&str> = s.namespaces.iter().map(|n| n.bdev_name.as_str()).collect();
            eprintln!(
                "  NVMe/TCP subsystem {} ({}) at {}:{}: nvme connect -t tcp -a {} -s {} -n {}",
                s.nqn,
                bdevs.join(", "),
                l.traddr,
                l.trsvcid,
                l.traddr,
                l.trsvcid,
                s.nqn
            );
        }
    }
}

/// Stops exports, then shuts every module down (thin commits and closes
/// its pools on their metadata cores).
fn shutdown(app: &App) {
    app.nvmf.stop_all();
    app.nbd.stop_all();
    match app.reactors.block_on(app.app_core, bdev::fini_all) {
        Ok(f) if f.is_empty() => {}
        Ok(f) => eprintln!("ferrothin tgt: not closed cleanly: {}", f.join("; ")),
        Err(e) => eprintln!("ferrothin tgt: shutdown: {e}"),
    }
}
