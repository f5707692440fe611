//! Applying a start-up config as spdk_tgt does: the entries that may run
//! before the framework is initialised (bdev_set_options and the like) in
//! a first pass, then initialisation, then every other entry in file
//! order. SPDK's own option methods that this target has no use for (its
//! iobuf, sock, accel and NVMe-driver tuning) are skipped with one warning
//! naming them, so a config SPDK saved loads unchanged.
//!
//! An entry that fails does not stop the others unless the daemon was
//! asked to be strict: the failure is logged with the entry's method, what
//! it names, the cause and what to run next, and the daemon comes up with
//! everything else (a pool that could not open shows as failed in
//! bdev_thin_pool_get_pools).

use std::collections::BTreeMap;
use std::sync::Arc;

use bdev::config::ConfigCall;
use bdev::rpc::{RpcError, States};
use serde_json::Value;

use super::app::App;
use crate::rpc::methods::{dispatch, SUBSYSTEMS};
use crate::rpc::wire::Request;

/// Methods SPDK writes into saved configs to tune parts of SPDK we do not
/// have. Matched by suffix as well (`*_set_options`, `*_set_config`), so a
/// newer SPDK's option methods are covered too.
const SPDK_ONLY_OPTIONS: &[&str] = &[
    "sock_set_default_impl",
    "framework_set_scheduler",
    "nvmf_set_max_subsystems",
    "nvmf_set_crdt",
    "bdev_nvme_set_hotplug",
    "accel_assign_opc",
];

/// Whether `method` is an SPDK option method we accept and ignore.
pub fn is_spdk_option(method: &str) -> bool {
    method.ends_with("_set_options")
        || method.ends_with("_set_config")
        || SPDK_ONLY_OPTIONS.contains(&method)
}

/// One entry that failed.
#[derive(Debug)]
pub struct Failure {
    pub method: String,
    /// What the entry names ("pool0", "vol1 in pool pool1"), if anything.
    pub what: String,
    pub error: RpcError,
    /// The command to run next.
    pub next: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.method)?;
        if !self.what.is_empty() {
            write!(f, " {}", self.what)?;
        }
        write!(f, ": {}; next: {}", self.error, self.next)
    }
}

/// Why a strict load stopped.
#[derive(Debug, thiserror::Error)]
#[error("config entry {0} (--json-strict stops at the first failure)")]
pub struct Stopped(pub Failure);

/// The config's calls sorted for the two passes.
pub struct Passes {
    /// Entries that may run before initialisation (SPDK runs those here
    /// only, even when they may also run after).
    pub startup: Vec<ConfigCall>,
    /// Everything else, in file order.
    pub runtime: Vec<ConfigCall>,
}

/// Sorts `calls` into the two passes; SPDK option methods we have no use
/// for, and subsystems we do not have, are dropped with one warning.
pub fn passes(app: &App, calls: Vec<ConfigCall>) -> Passes {
    let mut ignored: BTreeMap<String, usize> = BTreeMap::new();
    let (mut startup, mut runtime) = (Vec::new(), Vec::new());
    for c in calls {
        // Waiting for the end of start-up from inside start-up would
        // never end; the loader's order already gives what it asks for.
        if c.method == "framework_wait_init" {
            continue;
        }
        let known_subsystem = SUBSYSTEMS.iter().any(|(n, _)| *n == c.subsystem);
        let method = app.rpc().get(&c.method);
        if !known_subsystem || (method.is_none() && is_spdk_option(&c.method)) {
            *ignored.entry(c.method).or_default() += 1;
            continue;
        }
        match method.map(|m| m.states) {
            Some(States::StartupOnly | States::Any) => startup.push(c),
            // Unknown methods fail in the second pass, where they are
            // reported with the rest.
            _ => runtime.push(c),
        }
    }
    if !ignored.is_empty() {
        let names: Vec<String> = ignored
            .into_iter()
            .map(|(m, n)| if n > 1 { format!("{m} (x{n})") } else { m })
            .collect();
        tracing::warn!(
            "config: ignoring SPDK settings this target has no use for: {}",
            names.join(", ")
        );
    }
    Passes { startup, runtime }
}

/// Applies `calls` in order. Strict: stops at the first failure. Otherwise
/// every failure is logged and returned, and the rest still runs.
/// `context` is every call of the config (to name a bdev's file when a
/// pool on it fails).
pub fn apply(
    app: &Arc<App>,
    calls: Vec<ConfigCall>,
    context: &[ConfigCall],
    strict: bool,
) -> Result<Vec<Failure>, Stopped> {
    let mut failures = Vec::new();
    for c in calls {
        let req = Request {
            id: None,
            method: c.method.clone(),
            params: c.params.clone(),
        };
        let Err(error) = dispatch(app, req) else {
            continue;
        };
        let f = failure(&c, error, context);
        if strict {
            return Err(Stopped(f));
        }
        tracing::error!("config entry failed, the daemon goes on without it: {f}");
        failures.push(f);
    }
    Ok(failures)
}

/// Describes a failed entry: what it names and what to do about it.
pub fn failure(c: &ConfigCall, error: RpcError, context: &[ConfigCall]) -> Failure {
    let p = c.params.as_ref().unwrap_or(&Value::Null);
    let s = |k: &str| p.get(k).and_then(Value::as_str);
    let what = match (s("name"), s("pool"), s("bdev_name"), s("nqn")) {
        (Some(n), Some(pool), _, _) => format!("{n} in pool {pool}"),
        (Some(n), None, _, _) => n.to_string(),
        (None, _, Some(b), _) => b.to_string(),
        (None, _, None, Some(nqn)) => nqn.to_string(),
        _ => String::new(),
    };
    let next = next_step(c, &error, context);
    Failure {
        method: c.method.clone(),
        what,
        error,
        next,
    }
}

/// The file behind bdev `name`, from the config's create call for it.
fn file_of<'a>(name: &str, context: &'a [ConfigCall]) -> Option<&'a str> {
    context.iter().find_map(|c| {
        let p = c.params.as_ref()?;
        let file_bdev = matches!(c.method.as_str(), "bdev_uring_create" | "bdev_aio_create");
        (file_bdev && p.get("name")?.as_str()? == name).then(|| p.get("filename")?.as_str())?
    })
}

fn next_step(c: &ConfigCall, e: &RpcError, context: &[ConfigCall]) -> String {
    let p = c.params.as_ref().unwrap_or(&Value::Null);
    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("?");
    match (c.method.as_str(), -e.code) {
        (_, libc::EBUSY) => {
            "stop whatever holds it (another ferrothin tgt?), then restart".to_string()
        }
        ("bdev_thin_pool_create", libc::EIO | libc::EINVAL) => {
            let meta = s("metadata_bdev");
            match file_of(meta, context) {
                Some(f) => format!("ferrothin check {f}"),
                None => format!("ferrothin check <the device behind bdev {meta}>"),
            }
        }
        ("bdev_thin_activate" | "bdev_thin_create", _) => format!(
            "see what pool {} holds: PYTHONPATH=src/rpc spdk-rpc --plugin ferrothin_plugin \
             bdev_thin_get_volumes -p {}; then fix or remove the entry",
            s("pool"),
            s("pool")
        ),
        (_, libc::ENODEV) => {
            "an earlier entry it needs failed or is missing: fix that one first".to_string()
        }
        _ => format!(
            "fix the entry, then apply it with spdk-rpc {} or restart",
            c.method
        ),
    }
}
