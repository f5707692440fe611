//! Bdev modules as a whole (SPDK's `struct spdk_bdev_module`), as opposed
//! to the function table behind each of their bdevs ([`crate::BdevFnTable`]).
//!
//! The layer keeps a list of modules; the base modules are in it from the
//! start and others (thin) add themselves with [`register_module`] before
//! the daemon or a tool configures anything. Whatever must happen for every
//! module (its RPC methods, save_config, examine, shutdown, cores kept out
//! of I/O placement) iterates this list, so nothing outside a module names
//! it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde_json::Value;

use crate::rpc::RpcMethod;
use crate::Bdev;

/// A call that recreates module-level state (not a bdev) in save_config.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleConfig {
    /// `{"method", "params"}`.
    pub call: Value,
    /// The bdev whose entry it must precede (the first one that needs it),
    /// or `None` for after every bdev.
    pub before_bdev: Option<String>,
}

pub type FiniFuture = Pin<Box<dyn Future<Output = Vec<String>>>>;

/// What the bdev layer asks of a module. Every hook has a default, so a
/// module implements what it has.
pub trait Module: Send + Sync + 'static {
    /// The module's name (`malloc`, `thin`, ...).
    fn name(&self) -> &'static str;

    /// Its JSON-RPC methods, each declared beside its handler.
    fn rpc_methods(&self) -> Vec<RpcMethod> {
        Vec::new()
    }

    /// Calls that recreate its module-level state, in order (save_config);
    /// each bdev's own call comes from its function table.
    fn config_json(&self) -> Vec<ModuleConfig> {
        Vec::new()
    }

    /// A bdev was registered: a module that finds its on-disk state there
    /// claims the bdev and brings up what it holds. Runs on the thread that
    /// registered the bdev (often a reactor), so it must not block; long
    /// work is spawned.
    fn examine(&self, _bdev: &Arc<Bdev>) {}

    /// Shutdown is starting, before any module's fini: stop waiting for
    /// what may never come (an NVMe controller in reconnect fails its
    /// held I/O), so the modules stacked above can close.
    fn fini_start(&self) {}

    /// Whether examine work it spawned is still running
    /// (`bdev_wait_for_examine` waits until no module says so).
    fn examining(&self) -> bool {
        false
    }

    /// Whether its bdevs only pass I/O on to a base and keep nothing of
    /// their own (delay, error). Shutdown removes those that nothing sits
    /// on, top down, before each module's fini, so that what they sit on
    /// (a pool, an lvstore, a controller) is free to close cleanly: SPDK
    /// too unregisters bdevs top down before its modules' fini.
    fn passes_through(&self) -> bool {
        false
    }

    /// Orderly shutdown, awaited on the app core before the reactors stop:
    /// commit and close what the module holds. Returns what could not be
    /// closed cleanly, one line each. It is called again, in rounds, for
    /// as long as a round closes more: what is claimed from above (a pool
    /// on another pool's volume) closes once what sits on it has. `last`:
    /// the round before closed nothing more, so a module may tear down
    /// under whoever still holds on (the NVMe host hot-removes such
    /// namespaces so that the controller still gets its shutdown
    /// notification).
    fn fini(&self, _last: bool) -> FiniFuture {
        Box::pin(std::future::ready(Vec::new()))
    }

    /// Cores the module keeps for itself (a thin pool's metadata core):
    /// exports and benchmark jobs place their I/O elsewhere.
    fn reserved_cores(&self) -> Vec<u32> {
        Vec::new()
    }

    /// One line per object the module holds, for a tool's summary at exit
    /// (the bench prints it).
    fn summary(&self) -> Vec<String> {
        Vec::new()
    }
}

static MODULES: OnceLock<Mutex<Vec<&'static dyn Module>>> = OnceLock::new();

fn lock() -> MutexGuard<'static, Vec<&'static dyn Module>> {
    MODULES
        .get_or_init(|| Mutex::new(crate::modules::builtin()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Adds a module; a second registration of the same name is ignored, so
/// every entry point (daemon, tools, tests) may register what it needs.
pub fn register_module(m: &'static dyn Module) {
    let mut all = lock();
    if !all.iter().any(|x| x.name() == m.name()) {
        all.push(m);
    }
}

/// Every module, in registration order (the base modules first).
pub fn modules() -> Vec<&'static dyn Module> {
    lock().clone()
}

/// Asks every module to examine a new bdev.
pub(crate) fn examine(bdev: &Arc<Bdev>) {
    for m in modules() {
        m.examine(bdev);
    }
}

/// Whether any module's examine is still running.
pub fn examine_pending() -> bool {
    modules().iter().any(|m| m.examining())
}

/// Every module's reserved cores.
pub fn reserved_cores() -> Vec<u32> {
    let mut cores: Vec<u32> = modules().iter().flat_map(|m| m.reserved_cores()).collect();
    cores.sort_unstable();
    cores.dedup();
    cores
}

/// Unregisters every bdev of a pass-through module that is neither
/// claimed nor open, again until none is left that way: removing the
/// top of a stack frees the one below it (its claim goes with the
/// removal). A pool's base stays until the pool has closed.
fn remove_pass_through_bdevs() {
    let through: Vec<&str> = modules()
        .iter()
        .filter(|m| m.passes_through())
        .map(|m| m.name())
        .collect();
    loop {
        let mut removed = false;
        for b in crate::list() {
            if through.contains(&b.module_name()) && crate::unregister_unused(b.name()).is_ok() {
                tracing::debug!("shutdown: removed {} bdev {}", b.module_name(), b.name());
                removed = true;
            }
        }
        if !removed {
            return;
        }
    }
}

/// Runs every module's fini, last registered first (a module stacked on
/// another goes down before it), in rounds while a round closes more;
/// before each fini, the pass-through bdevs that nothing sits on any more
/// go. Returns what did not close cleanly.
pub async fn fini_all() -> Vec<String> {
    for m in modules() {
        m.fini_start();
    }
    let mut last = false;
    let mut before = usize::MAX;
    loop {
        let mut failed = Vec::new();
        for m in modules().into_iter().rev() {
            remove_pass_through_bdevs();
            for f in m.fini(last).await {
                failed.push(format!("{}: {f}", m.name()));
            }
        }
        if failed.is_empty() || last {
            return failed;
        }
        // Each round that leaves fewer failures closed something the
        // next may build on; one that does not is followed by the last.
        last = failed.len() >= before;
        before = failed.len();
    }
}
