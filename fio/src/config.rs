//! Loads a job's JSON config on the app core, through the same registry
//! and loader as `ferrothin bench --json` and the daemon.
//!
//! SPDK's loader runs a config in two passes, the methods allowed before
//! framework init first (`bdev_set_options`), then the rest; the
//! in-process loader (`bdev::config::apply_bdev_here`) runs in the
//! runtime state only, so the few startup-only calls go first here, then
//! everything else through it. Subsystems other than `bdev` (an `nvmf` or
//! `nbd` section of a config shared with the daemon) are skipped with a
//! note, as SPDK's fio plugin skips subsystems it does not link.

use bdev::config::{apply_bdev_here, ConfigCall};
use bdev::rpc::{Handler, RpcRegistry, States};

use crate::host;

/// Applies `text` (an SPDK-style JSON config). Runs on the app core.
pub async fn load(text: &str) -> Result<(), String> {
    let calls = bdev::config::parse(text).map_err(|e| e.to_string())?;
    let registry = RpcRegistry::with_modules();
    let (startup, rest): (Vec<ConfigCall>, Vec<ConfigCall>) = calls.into_iter().partition(|c| {
        c.subsystem == "bdev"
            && registry
                .get(&c.method)
                .is_some_and(|m| m.states == States::StartupOnly)
    });
    for c in startup {
        let m = registry
            .resolve(&c.method, false)
            .map_err(|e| format!("{}: {e}", c.method))?;
        let r = match &m.handler {
            Handler::AppCore(f) => f(c.params),
            Handler::AppCoreAsync(f) => f(c.params).await,
            Handler::Caller(_) => Err(bdev::rpc::RpcError::new(
                bdev::rpc::INTERNAL_ERROR,
                "cannot run in-process",
            )),
        };
        r.map_err(|e| format!("{}: {e}", c.method))?;
    }
    let others = apply_bdev_here(&registry, rest)
        .await
        .map_err(|e| e.to_string())?;
    let mut skipped: Vec<&str> = others.iter().map(|c| c.subsystem.as_str()).collect();
    skipped.dedup();
    for s in skipped {
        host::log_err(&format!(
            "ferrothin: skipping the config's {s} subsystem (fio runs bdevs only)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use reactor::{PollMode, ReactorOptions, ReactorSet};

    fn load_on_a_reactor(text: &'static str) -> Result<(), String> {
        let set = ReactorSet::start(
            &[0],
            ReactorOptions {
                mode: PollMode::default(),
                no_pin: true,
            },
        )
        .unwrap();
        let r = set
            .block_on(0, move || async move { super::load(text).await })
            .unwrap();
        set.stop();
        r
    }

    #[test]
    fn startup_methods_then_the_rest_and_other_subsystems_skipped() {
        let text = r#"{"subsystems": [
          {"subsystem": "bdev", "config": [
            {"method": "bdev_set_options", "params": {"bdev_io_pool_size": 65535}},
            {"method": "bdev_null_create", "params": {"name": "FioCfgNull0", "num_blocks": 64, "block_size": 4096}},
            {"method": "bdev_wait_for_examine"}
          ]},
          {"subsystem": "nbd", "config": [
            {"method": "nbd_start_disk", "params": {"bdev_name": "FioCfgNull0", "nbd_device": "/dev/nbd0"}}
          ]}
        ]}"#;
        load_on_a_reactor(text).unwrap();
        assert_eq!(bdev::lookup("FioCfgNull0").unwrap().num_blocks(), 64);
    }

    #[test]
    fn a_failing_method_names_itself() {
        let text = r#"{"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "bdev_null_create", "params": {"name": "FioCfgBad", "num_blocks": "x"}}
        ]}]}"#;
        let e = load_on_a_reactor(text).unwrap_err();
        assert!(e.contains("bdev_null_create"), "{e}");
        let e = load_on_a_reactor(
            r#"{"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "bdev_set_options", "params": 3}]}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("bdev_set_options"), "{e}");
    }
}
