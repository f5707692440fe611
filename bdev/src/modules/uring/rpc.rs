//! bdev_uring_create / _delete / _rescan, and bdev_aio_create / _delete
//! served by the same module (one Linux async I/O path is enough).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::{create, rescan, UringOptions};
use crate::module::Module;
use crate::modules::malloc::rpc::delete_module_bdev;
use crate::rpc::{method, RpcError, RpcMethod, RpcResult, INTERNAL_ERROR};
use crate::{BdevError, Uuid};

/// The uring module: its methods (each bdev's own hooks are its function
/// table).
pub struct UringModule;

impl Module for UringModule {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn rpc_methods(&self) -> Vec<RpcMethod> {
        vec![
            method("bdev_uring_create").app_core(bdev_uring_create),
            method("bdev_uring_delete").app_core(bdev_uring_delete),
            method("bdev_uring_rescan").app_core(bdev_uring_rescan),
            method("bdev_aio_create").app_core(bdev_aio_create),
            method("bdev_aio_delete").app_core(bdev_uring_delete),
            method("bdev_aio_rescan").app_core(bdev_uring_rescan),
        ]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: String,
    filename: PathBuf,
    block_size: Option<u32>,
    #[serde(default, deserialize_with = "crate::modules::de_uuid")]
    uuid: Option<Uuid>,
}

fn bdev_uring_create(p: CreateParams) -> RpcResult {
    let opts = UringOptions {
        name: p.name,
        filename: p.filename,
        block_size: p.block_size,
        uuid: p.uuid,
    };
    match create(opts) {
        Ok(b) => Ok(Value::String(b.name().to_string())),
        // A taken name or a file or device in use: -EEXIST / -EBUSY.
        Err(e @ (BdevError::Exists(_) | BdevError::Busy(..))) => Err(e.into()),
        Err(e) => Err(RpcError::new(
            INTERNAL_ERROR,
            format!("Unable to create URING bdev: {e}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AioParams {
    name: String,
    filename: PathBuf,
    block_size: Option<u32>,
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    fallocate: bool,
    #[serde(default, deserialize_with = "crate::modules::de_uuid")]
    uuid: Option<Uuid>,
    #[serde(default)]
    nowait: bool,
}

fn bdev_aio_create(p: AioParams) -> RpcResult {
    if p.readonly {
        return Err(RpcError::new(
            -libc::EINVAL,
            "readonly aio bdevs are not supported",
        ));
    }
    let _ = (p.fallocate, p.nowait);
    let opts = UringOptions {
        name: p.name,
        filename: p.filename,
        block_size: p.block_size,
        uuid: p.uuid,
    };
    let b = create(opts)?;
    Ok(Value::String(b.name().to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

fn bdev_uring_delete(p: NameParams) -> RpcResult {
    delete_module_bdev(&p.name, "uring")
}

fn bdev_uring_rescan(p: NameParams) -> RpcResult {
    let b = crate::lookup(&p.name)
        .filter(|b| b.module_name() == "uring")
        .ok_or_else(|| RpcError::new(-libc::ENODEV, "No such device"))?;
    rescan(&b)?;
    Ok(Value::Bool(true))
}
