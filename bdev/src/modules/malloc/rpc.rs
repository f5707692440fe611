//! bdev_malloc_create / bdev_malloc_delete.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::Deserialize;
use serde_json::Value;

use super::{create, MallocOptions};
use crate::module::Module;
use crate::rpc::{method, RpcError, RpcMethod, RpcResult};
use crate::Uuid;

/// The malloc module: its methods (each bdev's own hooks are its function
/// table).
pub struct MallocModule;

impl Module for MallocModule {
    fn name(&self) -> &'static str {
        "malloc"
    }

    fn rpc_methods(&self) -> Vec<RpcMethod> {
        vec![
            method("bdev_malloc_create").app_core(bdev_malloc_create),
            method("bdev_malloc_delete").app_core(bdev_malloc_delete),
        ]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: Option<String>,
    block_size: u32,
    num_blocks: u64,
    #[serde(default, deserialize_with = "crate::modules::de_uuid")]
    uuid: Option<Uuid>,
    #[serde(default)]
    physical_block_size: Option<u32>,
    #[serde(default)]
    optimal_io_boundary: u32,
    #[serde(default)]
    md_size: u32,
    #[serde(default)]
    md_interleave: bool,
    #[serde(default)]
    dif_type: i32,
    #[serde(default)]
    dif_is_head_of_md: bool,
    #[serde(default)]
    dif_pi_format: u32,
    #[serde(default)]
    numa_id: Option<i32>,
}

fn bdev_malloc_create(p: CreateParams) -> RpcResult {
    if p.md_size != 0 || p.dif_type != 0 {
        return Err(RpcError::new(
            -libc::EINVAL,
            "metadata and DIF are not supported",
        ));
    }
    let _ = (
        p.physical_block_size,
        p.md_interleave,
        p.dif_is_head_of_md,
        p.dif_pi_format,
        p.numa_id,
    );
    static AUTO: AtomicU32 = AtomicU32::new(0);
    let name = p
        .name
        .unwrap_or_else(|| format!("Malloc{}", AUTO.fetch_add(1, Ordering::Relaxed)));
    let opts = MallocOptions {
        name,
        block_size: p.block_size,
        num_blocks: p.num_blocks,
        uuid: p.uuid,
        optimal_io_boundary: p.optimal_io_boundary,
    };
    Ok(Value::String(create(opts)?.name().to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    name: String,
}

fn bdev_malloc_delete(p: DeleteParams) -> RpcResult {
    delete_module_bdev(&p.name, "malloc")
}

/// Deletes `name` if it belongs to `module` (SPDK answers -19 otherwise).
pub(crate) fn delete_module_bdev(name: &str, module: &str) -> RpcResult {
    match crate::lookup(name) {
        Some(b) if b.module_name() == module => {
            crate::unregister(name)?;
            Ok(Value::Bool(true))
        }
        _ => Err(RpcError::new(-libc::ENODEV, "No such device")),
    }
}
