//! bdev_delay_create / _delete / _update_latency.

use serde::Deserialize;
use serde_json::Value;

use super::{create, update_latency, DelayOptions, LatencyKind};
use crate::module::Module;
use crate::rpc::{method, RpcError, RpcMethod, RpcResult};
use crate::Uuid;

/// The delay module: its methods (each bdev's own hooks are its function
/// table).
pub struct DelayModule;

impl Module for DelayModule {
    fn name(&self) -> &'static str {
        "delay"
    }

    fn passes_through(&self) -> bool {
        true
    }

    fn rpc_methods(&self) -> Vec<RpcMethod> {
        vec![
            method("bdev_delay_create").app_core(bdev_delay_create),
            method("bdev_delay_delete").app_core(bdev_delay_delete),
            method("bdev_delay_update_latency").app_core(bdev_delay_update_latency),
        ]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: String,
    base_bdev_name: String,
    avg_read_latency: u64,
    p99_read_latency: u64,
    avg_write_latency: u64,
    p99_write_latency: u64,
    #[serde(default, deserialize_with = "crate::modules::de_uuid")]
    uuid: Option<Uuid>,
}

fn bdev_delay_create(p: CreateParams) -> RpcResult {
    let opts = DelayOptions {
        name: p.name,
        base_bdev_name: p.base_bdev_name,
        latency_us: [
            p.avg_read_latency,
            p.p99_read_latency,
            p.avg_write_latency,
            p.p99_write_latency,
        ],
        uuid: p.uuid,
    };
    Ok(Value::String(create(opts)?.name().to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

fn bdev_delay_delete(p: NameParams) -> RpcResult {
    crate::modules::malloc::rpc::delete_module_bdev(&p.name, "delay")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateParams {
    delay_bdev_name: String,
    latency_type: String,
    latency_us: u64,
}

fn bdev_delay_update_latency(p: UpdateParams) -> RpcResult {
    let kind = LatencyKind::parse(&p.latency_type).ok_or_else(|| {
        RpcError::invalid_params(format!("unknown latency_type {:?}", p.latency_type))
    })?;
    let b = crate::lookup(&p.delay_bdev_name)
        .ok_or_else(|| RpcError::invalid_params("The requested bdev does not exist."))?;
    if b.module_name() != "delay" {
        return Err(RpcError::new(
            -32600,
            "The requested bdev is not a delay bdev.",
        ));
    }
    update_latency(&p.delay_bdev_name, kind, p.latency_us)?;
    Ok(Value::Bool(true))
}
