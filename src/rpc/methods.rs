//! The method table: framework methods here, the bdev modules' (thin
//! included) from the bdev crate, the exports' from `nbd`. Every call
//! comes from a server or config thread, never a reactor: bdev methods
//! are run on the app core (as SPDK runs handlers on its app thread) and
//! awaited from here.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use bdev::config::ConfigCall;
use bdev::rpc::{
    decode_with, RpcError, RpcResult, INTERNAL_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND,
};

use super::wire::Request;
use crate::tgt::app::App;

const FRAMEWORK: &[&str] = &[
    "spdk_get_version",
    "rpc_get_methods",
    "framework_get_reactors",
    "framework_get_subsystems",
    "framework_get_config",
    "framework_wait_init",
    "framework_start_init",
    "save_config",
    "load_config",
    "spdk_kill_instance",
];

/// Methods that run before framework_start_init only.
const STARTUP_ONLY: &[&str] = &["framework_start_init", "bdev_set_options"];
/// Methods that run in both states.
const ANY_STATE: &[&str] = &["rpc_get_methods", "spdk_get_version", "framework_wait_init"];

/// Subsystems in initialisation order (save_config follows it).
const SUBSYSTEMS: &[(&str, &[&str])] = &[("bdev", &[]), ("nbd", &["bdev"])];

/// Every method we serve.
pub fn all_methods() -> Vec<&'static str> {
    let mut m: Vec<&'static str> = FRAMEWORK.to_vec();
    m.extend(bdev::rpc::methods().into_iter().map(|(n, _)| n));
    m.extend_from_slice(bdev::modules::thin::rpc::METHODS);
    m.extend_from_slice(exports::nbd::rpc::METHODS);
    m
}

fn allowed_now(app: &App, method: &str) -> bool {
    ANY_STATE.contains(&method) || (STARTUP_ONLY.contains(&method) != app.is_runtime())
}

/// Runs one request.
pub fn dispatch(app: &Arc<App>, req: Request) -> RpcResult {
    let method = req.method.as_str();
    if !all_methods().contains(&method) {
        return Err(RpcError::new(METHOD_NOT_FOUND, "Method not found"));
    }
    if !allowed_now(app, method) {
        let msg = if app.is_runtime() {
            "Method may only be called before framework is initialized. Use --wait-for-rpc command line parameter and then issue this RPC before the framework_start_init RPC."
        } else {
            "Method may only be called after framework is initialized using framework_start_init RPC."
        };
        return Err(RpcError::new(-1, msg));
    }
    let params = req.params;
    match method {
        "spdk_get_version" => no_params(method, params).map(|()| version()),
        "rpc_get_methods" => get_methods(app, params),
        "framework_get_reactors" => no_params(method, params).map(|()| reactors(app)),
        "framework_get_subsystems" => no_params(method, params).map(|()| {
            json!(SUBSYSTEMS
                .iter()
                .map(|(n, d)| json!({"subsystem": n, "depends_on": d}))
                .collect::<Vec<_>>())
        }),
        "framework_get_config" => get_config(app, params),
        "framework_wait_init" => wait_init(app),
        "framework_start_init" => no_params(method, params).and_then(|()| start_init(app)),
        "save_config" => no_params(method, params).map(|()| save(app)),
        "load_config" => load_config(app, params),
        "spdk_kill_instance" => kill(params),
        "bdev_get_bdevs" => {
            wait_for_bdev(params.as_ref())?;
            on_app_core(app, method, params)
        }
        "bdev_thin_delete" | "bdev_thin_deactivate" => {
            stop_exports_if_forced(app, params.as_ref());
            on_app_core(app, method, params)
        }
        m if exports::nbd::rpc::METHODS.contains(&m) => {
            exports::nbd::rpc::call(&app.nbd, m, params).unwrap_or_else(not_found)
        }
        _ => on_app_core(app, method, params),
    }
}

/// A forced delete or deactivation of a volume stops its exports first
/// (their I/O finishes, their clients are disconnected), on this thread,
/// since stopping an export waits on every core.
fn stop_exports_if_forced(app: &App, params: Option<&Value>) {
    let Some(p) = params else { return };
    let (Some(true), Some(name)) = (p["force"].as_bool(), p["name"].as_str()) else {
        return;
    };
    for d in app.nbd.disks() {
        if d.bdev_name == name {
            if let Err(e) = app.nbd.stop_disk(&d.address, Some(&d.export_name)) {
                tracing::warn!(export = %d.export_name, error = ?e, "could not stop an export before a forced delete");
            }
        }
    }
}

/// Runs a bdev module's (thin included) method on the app core.
fn on_app_core(app: &App, method: &str, params: Option<Value>) -> RpcResult {
    let m = method.to_string();
    app.reactors
        .block_on(app.app_core, move || async move {
            match bdev::modules::thin::rpc::call(&m, params.clone()).await {
                Some(r) => r,
                None => bdev::rpc::call(&m, params),
            }
        })
        .map_err(|e| RpcError::new(INTERNAL_ERROR, format!("reactor: {e}")))?
}

/// bdev_get_bdevs with a name and a timeout (ms) waits for the bdev to
/// appear, as SPDK's does; -110 when it does not in time. Waits here, on
/// the client's thread, not on a reactor.
fn wait_for_bdev(params: Option<&Value>) -> Result<(), RpcError> {
    let Some(p) = params else { return Ok(()) };
    let (Some(name), Some(ms)) = (p["name"].as_str(), p["timeout"].as_u64()) else {
        return Ok(());
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    while bdev::lookup(name).is_none() {
        if std::time::Instant::now() >= deadline {
            return Err(RpcError::new(-libc::ETIMEDOUT, "Connection timed out"));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

fn not_found() -> RpcResult {
    Err(RpcError::new(METHOD_NOT_FOUND, "Method not found"))
}

fn no_params(method: &str, params: Option<Value>) -> Result<(), RpcError> {
    match params {
        None => Ok(()),
        Some(_) => Err(RpcError::invalid_params(format!(
            "{method} method requires no parameters"
        ))),
    }
}

fn version() -> Value {
    let v = env!("CARGO_PKG_VERSION");
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    json!({
        "version": format!("ferrothin v{v}"),
        "fields": {"major": major, "minor": minor, "patch": patch, "suffix": ""},
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethods {
    #[serde(default)]
    current: bool,
    #[serde(default)]
    #[allow(dead_code)]
    include_aliases: bool,
}

fn get_methods(app: &App, params: Option<Value>) -> RpcResult {
    let p: GetMethods = decode_with(params, INVALID_PARAMS)
        .map_err(|_| RpcError::invalid_params("Invalid parameters"))?;
    Ok(json!(all_methods()
        .into_iter()
        .filter(|m| !p.current || allowed_now(app, m))
        .collect::<Vec<_>>()))
}

fn reactors(app: &App) -> Value {
    let rs: Vec<Value> = app
        .reactors
        .stats()
        .into_iter()
        .map(|r| {
            let mut threads = vec![];
            if r.core == app.app_core {
                threads.push(json!({"name": "app_thread", "id": 1,
                    "cpumask": format!("{:x}", 1u64 << r.core.min(63)), "elapsed": r.busy_ns + r.idle_ns}));
            }
            json!({"lcore": r.core, "numa_id": 0, "busy": r.busy_ns, "idle": r.idle_ns,
                   "in_interrupt": false, "irq": 0, "sys": 0, "usr": 0,
                   "loops": r.loops, "parks": r.parks, "lw_threads": threads})
        })
        .collect();
    json!({"tick_rate": 1_000_000_000u64, "pid": std::process::id(), "reactors": rs})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfig {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    with_batches: bool,
}

fn get_config(app: &App, params: Option<Value>) -> RpcResult {
    let p: GetConfig = decode_with(params, INVALID_PARAMS)
        .map_err(|_| RpcError::invalid_params("Invalid arguments"))?;
    subsystem_config(app, &p.name)
        .map(Value::Array)
        .ok_or_else(|| RpcError::invalid_params(format!("Subsystem '{}' not found", p.name)))
}

fn subsystem_config(app: &App, name: &str) -> Option<Vec<Value>> {
    match name {
        "bdev" => Some(bdev::config::save_bdev()),
        "nbd" => Some(exports::nbd::rpc::save(&app.nbd)),
        _ => None,
    }
}

/// The whole config, as `spdk-rpc save_config` assembles it.
pub fn save(app: &App) -> Value {
    json!({"subsystems": SUBSYSTEMS
        .iter()
        .map(|(n, _)| json!({"subsystem": n, "config": subsystem_config(app, n)}))
        .collect::<Vec<_>>()})
}

fn wait_init(app: &App) -> RpcResult {
    while !app.is_runtime() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(json!(true))
}

fn start_init(app: &Arc<App>) -> RpcResult {
    app.set_runtime();
    apply(app, app.take_deferred()).map_err(|e| {
        RpcError::new(
            INTERNAL_ERROR,
            format!("framework_initialization failed: {e}"),
        )
    })?;
    Ok(json!(true))
}

/// Applies config calls in order through the method table; stops at the
/// first failure. Subsystems we do not have are skipped, as SPDK skips
/// those not linked into an application.
pub fn apply(app: &Arc<App>, calls: Vec<ConfigCall>) -> Result<(), RpcError> {
    for c in calls {
        if !SUBSYSTEMS.iter().any(|(n, _)| *n == c.subsystem) {
            tracing::info!(
                "config: skipping {} (subsystem {} not present)",
                c.method,
                c.subsystem
            );
            continue;
        }
        let req = Request {
            id: None,
            method: c.method.clone(),
            params: c.params,
        };
        dispatch(app, req)
            .map_err(|e| RpcError::new(e.code, format!("{}: {}", c.method, e.message)))?;
    }
    Ok(())
}

/// Server-side load_config: params are a whole config object.
fn load_config(app: &Arc<App>, params: Option<Value>) -> RpcResult {
    let text = params.map(|p| p.to_string()).unwrap_or_default();
    let calls = bdev::config::parse(&text).map_err(|e| RpcError::invalid_params(e.to_string()))?;
    apply(app, calls)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kill {
    sig_name: String,
}

fn kill(params: Option<Value>) -> RpcResult {
    let p: Kill = decode_with(params, INVALID_PARAMS)
        .map_err(|_| RpcError::invalid_params("Invalid parameters"))?;
    let sig = match p.sig_name.as_str() {
        "SIGINT" => libc::SIGINT,
        "SIGTERM" => libc::SIGTERM,
        "SIGQUIT" => libc::SIGQUIT,
        "SIGHUP" => libc::SIGHUP,
        "SIGKILL" => libc::SIGKILL,
        "SIGUSR1" => libc::SIGUSR1,
        _ => return Err(RpcError::invalid_params("Invalid parameters")),
    };
    // SAFETY: kill(2) on our own pid; no memory is passed.
    unsafe { libc::kill(libc::getpid(), sig) };
    Ok(json!(true))
}
