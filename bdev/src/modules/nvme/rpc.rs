//! bdev_nvme_attach_controller / _detach_controller / _get_controllers,
//! with SPDK's names and shapes, and the module's shutdown.

use serde::Deserialize;
use serde_json::{json, Value};

use super::ctrlr::{self, AttachOptions};
use super::options::{defaults, set_defaults, NvmeDefaults};
use super::{Detach, NvmeError};
use crate::module::{FiniFuture, Module, ModuleConfig};
use crate::rpc::{method, RpcError, RpcMethod, RpcResult};

pub struct NvmeModule;

impl Module for NvmeModule {
    fn name(&self) -> &'static str {
        "nvme"
    }

    fn rpc_methods(&self) -> Vec<RpcMethod> {
        vec![
            method("bdev_nvme_attach_controller").app_core_async(attach_controller),
            method("bdev_nvme_detach_controller").app_core_async(detach_controller),
            method("bdev_nvme_get_controllers").app_core(get_controllers),
            method("bdev_nvme_set_options").app_core(set_options),
            method("bdev_nvme_reset_controller").app_core_async(reset_controller),
        ]
    }

    /// The options, when not SPDK's defaults, before the first
    /// controller's bdev (so its attach call finds them).
    fn config_json(&self) -> Vec<ModuleConfig> {
        let d = defaults();
        if d == NvmeDefaults::SPDK {
            return Vec::new();
        }
        vec![ModuleConfig {
            call: json!({"method": "bdev_nvme_set_options", "params": {
                "keep_alive_timeout_ms": d.keep_alive_timeout_ms,
                "ctrlr_loss_timeout_sec": d.ctrlr_loss_timeout_sec,
                "reconnect_delay_sec": d.reconnect_delay_sec,
                "fast_io_fail_timeout_sec": d.fast_io_fail_timeout_sec,
            }}),
            before_bdev: ctrlr::first_bdev(),
        }]
    }

    fn fini_start(&self) {
        ctrlr::shutdown_begins();
    }

    fn fini(&self, last: bool) -> FiniFuture {
        let how = if last { Detach::Shutdown } else { Detach::User };
        Box::pin(async move {
            let mut failed = ctrlr::detach_all(how).await;
            failed.extend(super::pcie::attach::detach_all(how).await);
            failed
        })
    }
}

impl From<NvmeError> for RpcError {
    fn from(e: NvmeError) -> Self {
        RpcError::new(-e.errno(), e.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachParams {
    name: String,
    trtype: String,
    traddr: String,
    #[serde(default)]
    adrfam: Option<String>,
    #[serde(default)]
    trsvcid: Option<String>,
    #[serde(default)]
    subnqn: Option<String>,
    #[serde(default)]
    hostnqn: Option<String>,
    #[serde(default)]
    hdgst: bool,
    #[serde(default)]
    ddgst: bool,
    #[serde(default)]
    ctrlr_loss_timeout_sec: Option<i64>,
    #[serde(default)]
    reconnect_delay_sec: Option<u64>,
    #[serde(default)]
    fast_io_fail_timeout_sec: Option<u64>,
    // What spdk-rpc always sends: accepted at their defaults (no
    // protection information here, SQ flow control stays on).
    #[serde(default)]
    prchk_reftag: bool,
    #[serde(default)]
    prchk_guard: bool,
    #[serde(default)]
    disable_sq_flow_control: bool,
    #[serde(default)]
    allow_unrecognized_csi: bool,
    /// "disable" (one path: the only mode here) or absent.
    #[serde(default)]
    multipath: Option<String>,
}

/// SPDK's rules for the three timeouts (bdev_nvme_check_io_error_resiliency_params):
/// -1 or >= 0 for the loss timeout; a reconnect delay when it is not 0,
/// none when it is; the fast-fail timeout within the loss timeout.
pub(crate) fn check_timeouts(loss: i64, delay: u64, fast: u64) -> Result<(), NvmeError> {
    let bad = |m: &str| Err(NvmeError::Invalid(m.to_string()));
    if loss < -1 {
        return bad("ctrlr_loss_timeout_sec must be -1 or >= 0");
    }
    if loss == 0 {
        if delay != 0 || fast != 0 {
            return bad(
                "reconnect_delay_sec and fast_io_fail_timeout_sec need ctrlr_loss_timeout_sec",
            );
        }
        return Ok(());
    }
    if delay == 0 {
        return bad("reconnect_delay_sec must be non-zero when ctrlr_loss_timeout_sec is");
    }
    if loss > 0 && delay > loss as u64 {
        return bad("reconnect_delay_sec must not exceed ctrlr_loss_timeout_sec");
    }
    if fast != 0 && (fast < delay || (loss > 0 && fast > loss as u64)) {
        return bad("fast_io_fail_timeout_sec must lie between reconnect_delay_sec and ctrlr_loss_timeout_sec");
    }
    Ok(())
}

async fn attach_controller(p: AttachParams) -> RpcResult {
    if p.trtype.eq_ignore_ascii_case("pcie") {
        return super::pcie::rpc::attach_pcie(&p.name, &p.traddr).await;
    }
    if !p.trtype.eq_ignore_ascii_case("tcp") {
        return Err(RpcError::new(
            -libc::EINVAL,
            format!("trtype {:?} is not supported (TCP or PCIe)", p.trtype),
        ));
    }
    if p.prchk_reftag || p.prchk_guard || p.disable_sq_flow_control {
        return Err(RpcError::new(
            -libc::EINVAL,
            "prchk_reftag, prchk_guard and disable_sq_flow_control are not supported",
        ));
    }
    if p.multipath.as_deref().is_some_and(|m| m != "disable") {
        return Err(RpcError::new(
            -libc::EINVAL,
            "multipath is not supported (only \"disable\")",
        ));
    }
    let _ = p.allow_unrecognized_csi;
    let (Some(trsvcid), Some(subnqn)) = (p.trsvcid, p.subnqn) else {
        return Err(RpcError::new(-libc::EINVAL, "TCP needs trsvcid and subnqn"));
    };
    let d = defaults();
    let loss = p.ctrlr_loss_timeout_sec.unwrap_or(d.ctrlr_loss_timeout_sec);
    let delay = p.reconnect_delay_sec.unwrap_or(d.reconnect_delay_sec);
    let fast = p
        .fast_io_fail_timeout_sec
        .unwrap_or(d.fast_io_fail_timeout_sec);
    check_timeouts(loss, delay, fast)?;
    let mut o = AttachOptions::new(&p.name, &p.traddr, &trsvcid, &subnqn);
    if let Some(a) = p.adrfam {
        o.adrfam = a;
    }
    o.hostnqn = p.hostnqn;
    o.hdgst = p.hdgst;
    o.ddgst = p.ddgst;
    o.ctrlr_loss_timeout_sec = loss;
    o.reconnect_delay_sec = delay;
    o.fast_io_fail_timeout_sec = fast;
    let names = ctrlr::attach(o).await?;
    Ok(json!(names))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetachParams {
    name: String,
    // SPDK's path selectors: accepted, but a controller has one path here.
    #[serde(default)]
    trtype: Option<String>,
    #[serde(default)]
    traddr: Option<String>,
    #[serde(default)]
    adrfam: Option<String>,
    #[serde(default)]
    trsvcid: Option<String>,
    #[serde(default)]
    subnqn: Option<String>,
}

async fn detach_controller(p: DetachParams) -> RpcResult {
    let _ = (&p.trtype, &p.traddr, &p.adrfam, &p.trsvcid, &p.subnqn);
    if super::pcie::rpc::is_pcie(&p.name) {
        return super::pcie::rpc::detach_pcie(&p.name).await;
    }
    ctrlr::detach(&p.name).await?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetParams {
    name: String,
    /// SPDK's path selector (a controller has one path here).
    #[serde(default)]
    cntlid: Option<u16>,
}

async fn reset_controller(p: ResetParams) -> RpcResult {
    let _ = p.cntlid;
    ctrlr::reset(&p.name).await?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetParams {
    #[serde(default)]
    name: Option<String>,
}

fn get_controllers(p: GetParams) -> RpcResult {
    let pcie = super::pcie::rpc::controllers(p.name.as_deref());
    if p.name.is_some() && !pcie.is_empty() {
        return Ok(Value::Array(pcie));
    }
    let mut all = ctrlr::controllers(p.name.as_deref())?;
    all.extend(pcie);
    Ok(Value::Array(all))
}

#[derive(Deserialize)]
struct SetOptionsParams {
    #[serde(default)]
    keep_alive_timeout_ms: Option<u32>,
    #[serde(default)]
    ctrlr_loss_timeout_sec: Option<i64>,
    #[serde(default)]
    reconnect_delay_sec: Option<u64>,
    #[serde(default)]
    fast_io_fail_timeout_sec: Option<u64>,
    /// SPDK's other options (its save_config writes them all): taken and
    /// named in a warning, so an SPDK config loads and nobody believes
    /// they took effect.
    #[serde(flatten)]
    others: serde_json::Map<String, Value>,
}

/// SPDK's method; the options it has that this module has too. The rest
/// are accepted and named in a warning.
fn set_options(p: SetOptionsParams) -> RpcResult {
    if !p.others.is_empty() {
        let names: Vec<&str> = p.others.keys().map(String::as_str).collect();
        tracing::warn!(
            "bdev_nvme_set_options: ignoring options this module has no use for: {}",
            names.join(", ")
        );
    }
    let mut d = defaults();
    if let Some(v) = p.keep_alive_timeout_ms {
        d.keep_alive_timeout_ms = v;
    }
    if let Some(v) = p.ctrlr_loss_timeout_sec {
        d.ctrlr_loss_timeout_sec = v;
    }
    if let Some(v) = p.reconnect_delay_sec {
        d.reconnect_delay_sec = v;
    }
    if let Some(v) = p.fast_io_fail_timeout_sec {
        d.fast_io_fail_timeout_sec = v;
    }
    set_defaults(d).map_err(|e| match e {
        NvmeError::Busy(m) => RpcError::new(-libc::EPERM, m),
        e => e.into(),
    })?;
    Ok(Value::Bool(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_follow_spdks_rules() {
        assert!(check_timeouts(0, 0, 0).is_ok());
        assert!(check_timeouts(0, 1, 0).is_err());
        assert!(check_timeouts(-2, 1, 0).is_err());
        assert!(check_timeouts(10, 0, 0).is_err());
        assert!(check_timeouts(10, 2, 5).is_ok());
        assert!(check_timeouts(10, 20, 0).is_err());
        assert!(check_timeouts(10, 2, 11).is_err());
        assert!(check_timeouts(-1, 2, 100).is_ok());
    }
}
