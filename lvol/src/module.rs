//! lvol as the bdev layer sees it: its methods, examine (an lvstore is
//! found on its base bdev when that bdev appears) and shutdown. It adds
//! nothing to save_config: lvstores live on disk, as in SPDK.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bdev::rpc::RpcMethod;
use bdev::{Bdev, FiniFuture, Module};

pub struct LvolModule;

/// Examines spawned and not finished (`bdev_wait_for_examine`).
static EXAMINING: AtomicUsize = AtomicUsize::new(0);

/// Counts one examine from its spawn to its end, however it ends.
struct Examining;

impl Examining {
    fn start() -> Examining {
        EXAMINING.fetch_add(1, Ordering::AcqRel);
        Examining
    }
}

impl Drop for Examining {
    fn drop(&mut self) {
        EXAMINING.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Module for LvolModule {
    fn name(&self) -> &'static str {
        "lvol"
    }

    fn rpc_methods(&self) -> Vec<RpcMethod> {
        crate::rpc::methods()
    }

    /// Reads the new bdev's first 4 KiB on the app core (the lowest
    /// reactor, where the lvol methods run) and loads the lvstore it
    /// holds, if any. Thin volumes (lvols among them) are not examined:
    /// an lvstore inside an lvol is not looked for.
    fn examine(&self, bdev: &Arc<Bdev>) {
        if bdev.module_name() == "thin" || bdev.claimed_by().is_some() {
            return;
        }
        let Some(app_core) = reactor::cores().into_iter().min() else {
            return;
        };
        let name = bdev.name().to_string();
        let b = bdev.clone();
        let counted = Examining::start();
        let r = reactor::spawn_on(app_core, move || async move {
            let _counted = counted;
            // An esnap clone waiting for this bdev comes online.
            crate::lvols::bring_up_waiting_for(&b).await;
            match crate::store::load(&name).await {
                Ok(Some(lvs)) => {
                    tracing::info!(lvs = %lvs.name(), base = %name, "lvstore loaded")
                }
                Ok(None) => {}
                Err(e) => tracing::error!(base = %name, error = %e, "lvstore not loaded"),
            }
        });
        if r.is_err() {
            tracing::warn!(bdev = %bdev.name(), "lvol examine could not reach the app core");
        }
    }

    fn examining(&self) -> bool {
        EXAMINING.load(Ordering::Acquire) > 0
    }

    fn fini(&self, _last: bool) -> FiniFuture {
        Box::pin(crate::store::unload_all())
    }
}
