//! The daemon's methods (SPDK's framework: versions, states, configs,
//! reactors) and the exports', added to the bdev layer's registry, which
//! holds the modules' own. The socket and the config loader both go
//! through [`dispatch`], so a method behaves the same whichever way it
//! comes.

use std::sync::{Arc, Weak};

use serde::Deserialize;
use serde_json::{json, Value};

use bdev::config::ConfigCall;
use bdev::rpc::{
    method, BadParams, RpcError, RpcMethod, RpcRegistry, RpcResult, States, INTERNAL_ERROR,
    INVALID_PARAMS,
};

use super::wire::Request;
use crate::tgt::app::App;

/// Subsystems in initialisation order (save_config follows it).
pub const SUBSYSTEMS: &[(&str, &[&str])] =
    &[("bdev", &[]), ("nbd", &["bdev"]), ("nvmf", &["bdev"])];

/// Every method the daemon serves: the framework's, the modules', the
/// exports'.
pub fn registry(app: &Weak<App>) -> RpcRegistry {
    let mut r = RpcRegistry::new();
    r.extend(framework_methods(app));
    let modules = RpcRegistry::with_modules();
    r.extend(modules.methods().iter().cloned());
    r.extend(nbd_methods(app));
    r.extend(nvmf_methods(app));
    r
}

/// A method that needs the app; answers an error once the app is gone.
fn with_app<P: serde::de::DeserializeOwned + 'static>(
    name: &'static str,
    states: States,
    bad: &'static str,
    app: &Weak<App>,
    f: fn(&Arc<App>, P) -> RpcResult,
) -> RpcMethod {
    let app = app.clone();
    method(name)
        .states(states)
        .bad_params(BadParams::Says(INVALID_PARAMS, bad))
        .caller(move |p: P| match app.upgrade() {
            Some(a) => f(&a, p),
            None => Err(RpcError::new(INTERNAL_ERROR, "the daemon is stopping")),
        })
}

/// Params of a method that takes none: absent, or SPDK's refusal.
fn without_params(
    name: &'static str,
    states: States,
    app: &Weak<App>,
    f: fn(&Arc<App>) -> RpcResult,
) -> RpcMethod {
    let app = app.clone();
    method(name).states(states).caller_raw(move |params| {
        if params.is_some() {
            return Err(RpcError::invalid_params(format!(
                "{name} method requires no parameters"
            )));
        }
        match app.upgrade() {
            Some(a) => f(&a),
            None => Err(RpcError::new(INTERNAL_ERROR, "the daemon is stopping")),
        }
    })
}

fn framework_methods(app: &Weak<App>) -> Vec<RpcMethod> {
    use States::{Any, Runtime, StartupOnly};
    vec![
        without_params("spdk_get_version", Any, app, |_| Ok(version())),
        with_app(
            "rpc_get_methods",
            Any,
            "Invalid parameters",
            app,
            get_methods,
        ),
        without_params("framework_get_reactors", Runtime, app, |a| Ok(reactors(a))),
        without_params("framework_get_subsystems", Runtime, app, |_| {
            Ok(json!(SUBSYSTEMS
                .iter()
                .map(|(n, d)| json!({"subsystem": n, "depends_on": d}))
                .collect::<Vec<_>>()))
        }),
        with_app(
            "framework_get_config",
            Runtime,
            "Invalid arguments",
            app,
            get_config,
        ),
        method("framework_wait_init")
            .states(Any)
            .caller_raw(wait_init(app.clone())),
        without_params("framework_start_init", StartupOnly, app, start_init),
        without_params("save_config", Runtime, app, |a| Ok(save(a))),
        {
            let app = app.clone();
            method("load_config").caller_raw(move |params| match app.upgrade() {
                Some(a) => load_config(&a, params),
                None => Err(RpcError::new(INTERNAL_ERROR, "the daemon is stopping")),
            })
        },
        method("spdk_kill_instance")
            .bad_params(BadParams::Says(INVALID_PARAMS, "Invalid parameters"))
            .caller(kill),
    ]
}

/// The exports' methods run on the caller's thread: stopping an export
/// waits for its I/O on every core.
fn nbd_methods(app: &Weak<App>) -> Vec<RpcMethod> {
    exports::nbd::rpc::METHODS
        .iter()
        .map(|&name| {
            let app = app.clone();
            method(name).caller_raw(move |params| match app.upgrade() {
                Some(a) => {
                    let bdev = params.as_ref().and_then(|p| p["bdev_name"].as_str());
                    let bdev = bdev.map(str::to_string);
                    exports::nbd::rpc::call(&a.nbd, name, params)
                        .unwrap_or_else(|| Err(RpcError::not_found()))
                        .map_err(|e| name_missing_bdev(e, bdev.as_deref()))
                }
                None => Err(RpcError::new(INTERNAL_ERROR, "the daemon is stopping")),
            })
        })
        .collect()
}

/// SPDK's bare "No such device" for an export of a bdev that is not
/// there, with the bdev's name (the code stays -19 for scripts).
fn name_missing_bdev(e: RpcError, bdev: Option<&str>) -> RpcError {
    match bdev {
        Some(b) if e.code == -libc::ENODEV && !e.message.contains(b) => RpcError::new(
            e.code,
            format!(
                "{}: no bdev named {b:?} (bdev_get_bdevs lists them)",
                e.message
            ),
        ),
        _ => e,
    }
}

/// The nvmf methods, on the caller's thread for the same reason.
fn nvmf_methods(app: &Weak<App>) -> Vec<RpcMethod> {
    exports::nvmf::rpc::METHODS
        .iter()
        .map(|&name| {
            let app = app.clone();
            method(name).caller_raw(move |params| match app.upgrade() {
                Some(a) => exports::nvmf::rpc::call(&a.nvmf, name, params)
                    .unwrap_or_else(|| Err(RpcError::not_found())),
                None => Err(RpcError::new(INTERNAL_ERROR, "the daemon is stopping")),
            })
        })
        .collect()
}

/// Runs one request.
pub fn dispatch(app: &Arc<App>, req: Request) -> RpcResult {
    stop_exports_if_forced(app, &req.method, req.params.as_ref());
    let logged = req.params.clone();
    let r = app.rpc().call_blocking(
        &app.reactors,
        app.app_core,
        &req.method,
        req.params,
        app.is_runtime(),
    );
    super::audit::log_call(&req.method, logged.as_ref(), &r);
    let changed_volumes = req.method.starts_with("bdev_thin_") && r.is_ok();
    if let (true, Some(path)) = (changed_volumes, app.remember.get()) {
        if !super::audit::reads_only(&req.method) {
            crate::tgt::remember::save(app, path);
        }
    }
    r
}

/// A forced removal of a bdev (`"force": true` with its `"name"`: a thin
/// volume's delete or deactivation) stops its exports first (their I/O
/// finishes, their clients are disconnected), on this thread, since
/// stopping an export waits on every core.
fn stop_exports_if_forced(app: &App, method: &str, params: Option<&Value>) {
    // Only removals: a forced activation's name is a bdev to be made, and
    // a bdev of that name already there is not its to stop.
    if !matches!(method, "bdev_thin_delete" | "bdev_thin_deactivate") {
        return;
    }
    let Some(p) = params else { return };
    let (Some(true), Some(name)) = (p["force"].as_bool(), p["name"].as_str()) else {
        return;
    };
    // I/O a suspend holds would keep its exports from closing (its
    // replies go out from a reactor).
    let held = name.to_string();
    if let Err(e) = app.reactors.block_on(
        app.app_core,
        move || async move { thin::fail_held_io(&held) },
    ) {
        tracing::warn!(volume = name, error = ?e, "could not fail held I/O before a forced delete");
    }
    // Hosts of its NVMe/TCP namespaces are told the namespace is gone.
    app.nvmf.remove_bdev(name);
    for d in app.nbd.disks() {
        if d.bdev_name == name {
            if let Err(e) = app.nbd.stop_disk(&d.address, Some(&d.export_name)) {
                tracing::warn!(export = %d.export_name, error = ?e, "could not stop an export before a forced delete");
            }
        }
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

fn get_methods(app: &Arc<App>, p: GetMethods) -> RpcResult {
    let runtime = app.is_runtime();
    Ok(json!(app
        .rpc()
        .methods()
        .iter()
        .filter(|m| !p.current || m.states.allows(runtime))
        .map(|m| m.name)
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

fn get_config(app: &Arc<App>, p: GetConfig) -> RpcResult {
    subsystem_config(app, &p.name)
        .map(Value::Array)
        .ok_or_else(|| RpcError::invalid_params(format!("Subsystem '{}' not found", p.name)))
}

fn subsystem_config(app: &App, name: &str) -> Option<Vec<Value>> {
    match name {
        "bdev" => Some(bdev::config::save_bdev()),
        "nbd" => Some(exports::nbd::rpc::save(&app.nbd)),
        "nvmf" => Some(exports::nvmf::rpc::save(&app.nvmf)),
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

fn wait_init(app: Weak<App>) -> impl Fn(Option<Value>) -> RpcResult + Send + Sync {
    move |_| {
        while let Some(a) = app.upgrade() {
            if a.is_runtime() {
                return Ok(json!(true));
            }
            drop(a);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(RpcError::new(INTERNAL_ERROR, "the daemon is stopping"))
    }
}

fn start_init(app: &Arc<App>) -> RpcResult {
    app.set_runtime();
    let d = app.take_deferred();
    crate::tgt::startup::apply(app, d.calls, &d.context, d.strict).map_err(|e| {
        RpcError::new(
            INTERNAL_ERROR,
            format!("framework_initialization failed: {e}"),
        )
    })?;
    if let Some(file) = d.remember {
        crate::tgt::remember::bring_back(app, file);
    }
    Ok(json!(true))
}

/// Applies config calls in order through [`dispatch`]; stops at the first
/// failure. Subsystems we do not have are skipped, as SPDK skips those not
/// linked into an application.
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

fn kill(p: Kill) -> RpcResult {
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
