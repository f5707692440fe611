//! The running daemon's shared state: what RPC methods need to reach.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bdev::config::ConfigCall;
use reactor::ReactorHandle;

use exports::nbd::NbdServer;

pub struct App {
    pub reactors: ReactorHandle,
    /// Where RPC handlers and config loading run (the first core).
    pub app_core: u32,
    pub nbd: NbdServer,
    /// STARTUP (false) until framework_start_init, RUNTIME after.
    runtime: AtomicBool,
    /// A --json config's RUNTIME calls, held for framework_start_init when
    /// the daemon was started with --wait-for-rpc.
    deferred: Mutex<Vec<ConfigCall>>,
}

/// Thin pools' metadata cores: NBD connections run elsewhere when they can.
fn pool_metadata_cores() -> Vec<u32> {
    bdev::modules::thin::pool_list()
        .iter()
        .map(|p| p.metadata_core())
        .collect()
}

impl App {
    pub fn new(reactors: ReactorHandle, runtime: bool) -> Arc<App> {
        let app_core = reactors.cores().into_iter().min().unwrap_or(0);
        Arc::new(App {
            nbd: NbdServer::new(reactors.clone(), Arc::new(pool_metadata_cores)),
            reactors,
            app_core,
            runtime: AtomicBool::new(runtime),
            deferred: Mutex::new(Vec::new()),
        })
    }

    pub fn is_runtime(&self) -> bool {
        self.runtime.load(Ordering::Acquire)
    }

    pub fn set_runtime(&self) {
        self.runtime.store(true, Ordering::Release);
    }

    pub fn defer(&self, calls: Vec<ConfigCall>) {
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(calls);
    }

    pub fn take_deferred(&self) -> Vec<ConfigCall> {
        std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
