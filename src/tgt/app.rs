//! The running daemon's shared state: what RPC methods need to reach.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bdev::config::ConfigCall;
use bdev::rpc::RpcRegistry;
use reactor::ReactorHandle;

use exports::nbd::NbdServer;
use exports::nvmf::NvmfTarget;

/// The part of a start-up config that waits for framework_start_init.
#[derive(Default)]
pub struct Deferred {
    pub calls: Vec<ConfigCall>,
    /// The whole config, to name files in failure messages.
    pub context: Vec<ConfigCall>,
    /// Stop at the first failure (--json-strict).
    pub strict: bool,
    /// The embedded default's volume list, brought back after the calls.
    pub remember: Option<PathBuf>,
}

pub struct App {
    pub reactors: ReactorHandle,
    /// Where RPC handlers and config loading run (the first core).
    pub app_core: u32,
    pub nbd: NbdServer,
    pub nvmf: NvmfTarget,
    /// Every method the daemon serves.
    rpc: RpcRegistry,
    /// STARTUP (false) until framework_start_init, RUNTIME after.
    runtime: AtomicBool,
    /// A --json config's RUNTIME calls, held for framework_start_init when
    /// the daemon was started with --wait-for-rpc.
    deferred: Mutex<Deferred>,
    /// Where the embedded default remembers its volumes (set once its
    /// config is applied; see `remember`).
    pub remember: OnceLock<PathBuf>,
}

impl App {
    pub fn new(reactors: ReactorHandle, runtime: bool) -> Arc<App> {
        let app_core = reactors.cores().into_iter().min().unwrap_or(0);
        Arc::new_cyclic(|me| App {
            // NBD connections run on cores no module keeps for itself (a
            // thin pool's metadata core) when they can.
            nbd: NbdServer::new(reactors.clone(), Arc::new(bdev::reserved_cores)),
            nvmf: NvmfTarget::new(reactors.clone(), Arc::new(bdev::reserved_cores)),
            rpc: crate::rpc::methods::registry(me),
            reactors,
            app_core,
            runtime: AtomicBool::new(runtime),
            deferred: Mutex::new(Deferred::default()),
            remember: OnceLock::new(),
        })
    }

    pub fn rpc(&self) -> &RpcRegistry {
        &self.rpc
    }

    pub fn is_runtime(&self) -> bool {
        self.runtime.load(Ordering::Acquire)
    }

    pub fn set_runtime(&self) {
        self.runtime.store(true, Ordering::Release);
    }

    pub fn defer(&self, d: Deferred) {
        *self.deferred.lock().unwrap_or_else(|e| e.into_inner()) = d;
    }

    pub fn take_deferred(&self) -> Deferred {
        std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
