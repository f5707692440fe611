//! bdev_null_create / bdev_null_delete / bdev_null_resize.

use serde::Deserialize;
use serde_json::Value;

use super::{create, NullOptions};
use crate::module::Module;
use crate::modules::malloc::rpc::delete_module_bdev;
use crate::rpc::{method, RpcError, RpcMethod, RpcResult};
use crate::Uuid;

/// The null module: its methods (each bdev's own hooks are its function
/// table).
pub struct NullModule;

impl Module for NullModule {
    fn name(&self) -> &'static str {
        "null"
    }

    fn rpc_methods(&self) -> Vec<RpcMethod> {
        vec![
            method("bdev_null_create").app_core(bdev_null_create),
            method("bdev_null_delete").app_core(bdev_null_delete),
            method("bdev_null_resize").app_core(bdev_null_resize),
        ]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: String,
    block_size: u32,
    num_blocks: u64,
    #[serde(default, deserialize_with = "crate::modules::de_uuid")]
    uuid: Option<Uuid>,
    #[serde(default)]
    physical_block_size: Option<u32>,
    #[serde(default)]
    md_size: u32,
    #[serde(default)]
    dif_type: i32,
    #[serde(default)]
    dif_is_head_of_md: bool,
    #[serde(default)]
    dif_pi_format: u32,
    #[serde(default)]
    preferred_write_granularity: u32,
    #[serde(default)]
    preferred_write_alignment: u32,
    #[serde(default)]
    optimal_write_size: u32,
    #[serde(default)]
    preferred_unmap_granularity: u32,
    #[serde(default)]
    preferred_unmap_alignment: u32,
}

fn bdev_null_create(p: CreateParams) -> RpcResult {
    if p.md_size != 0 || p.dif_type != 0 {
        return Err(RpcError::new(
            -libc::EINVAL,
            "metadata and DIF are not supported",
        ));
    }
    let _ = (
        p.physical_block_size,
        p.dif_is_head_of_md,
        p.dif_pi_format,
        p.preferred_write_granularity,
        p.preferred_write_alignment,
        p.optimal_write_size,
        p.preferred_unmap_granularity,
        p.preferred_unmap_alignment,
    );
    let b = create(NullOptions {
        name: p.name,
        block_size: p.block_size,
        num_blocks: p.num_blocks,
        uuid: p.uuid,
    })?;
    Ok(Value::String(b.name().to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

fn bdev_null_delete(p: NameParams) -> RpcResult {
    delete_module_bdev(&p.name, "null")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeParams {
    name: String,
    /// MiB, as SPDK.
    new_size: u64,
}

fn bdev_null_resize(p: ResizeParams) -> RpcResult {
    let b = crate::lookup(&p.name)
        .filter(|b| b.module_name() == "null")
        .ok_or_else(|| RpcError::new(-libc::ENODEV, "No such device"))?;
    let bytes = p
        .new_size
        .checked_mul(1 << 20)
        .ok_or_else(|| RpcError::new(-libc::EINVAL, "new_size too large"))?;
    let blocks = bytes / b.block_size() as u64;
    if blocks < b.num_blocks() {
        return Err(RpcError::new(-libc::EINVAL, "a null bdev cannot shrink"));
    }
    b.notify_resize(blocks)?;
    Ok(Value::Bool(true))
}
