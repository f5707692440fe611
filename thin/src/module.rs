//! thin as the bdev layer sees it from above: its methods, the calls that
//! reopen its pools in save_config, its shutdown, and the cores it keeps.

use bdev::rpc::RpcMethod;
use bdev::{FiniFuture, Module, ModuleConfig};

use crate::rpc::pool_config_entry;

/// The thin module; [`crate::register`] adds it to the bdev layer.
pub struct ThinModule;

impl Module for ThinModule {
    fn name(&self) -> &'static str {
        "thin"
    }

    fn rpc_methods(&self) -> Vec<RpcMethod> {
        crate::rpc::methods()
    }

    /// A pool goes just before its first active volume (volumes are
    /// activated by id in it), or after every bdev when none is active.
    fn config_json(&self) -> Vec<ModuleConfig> {
        let bdevs = bdev::list();
        crate::pool_list()
            .iter()
            .filter(|p| p.managed_by().is_none())
            .map(|p| {
                let first_volume = bdevs.iter().find(|b| {
                    b.config_entry().is_some_and(|config| {
                        config["method"] == "bdev_thin_activate"
                            && config["params"]["pool"] == p.name()
                    })
                });
                ModuleConfig {
                    call: pool_config_entry(p),
                    before_bdev: first_volume.map(|b| b.name().to_string()),
                }
            })
            .collect()
    }

    /// Commits and closes every pool on its metadata core; a pool whose
    /// volume is claimed (by a pool on it) waits for the next round.
    fn fini(&self, _last: bool) -> FiniFuture {
        Box::pin(async {
            let mut failed = Vec::new();
            for p in crate::pool_list() {
                let name = p.name().to_string();
                if let Err(e) = crate::delete_pool(&name).await {
                    failed.push(format!("pool {name}: {e}"));
                }
            }
            failed
        })
    }

    fn reserved_cores(&self) -> Vec<u32> {
        crate::pool_list()
            .iter()
            .map(|p| p.metadata_core())
            .collect()
    }

    fn summary(&self) -> Vec<String> {
        crate::pool_list()
            .iter()
            .map(|p| {
                let s = crate::pool_info(p).stats;
                format!(
                    "thin pool {}: {} blocks provisioned, {} copied, {} commits",
                    p.name(),
                    s.provisioned,
                    s.copied,
                    s.commits
                )
            })
            .collect()
    }
}
