//! bdev_uring_create / _delete / _rescan, and bdev_aio_create / _delete
//! served by the same module (one Linux async I/O path is enough).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::{create, rescan, UringOptions};
use crate::modules::malloc::rpc::delete_module_bdev;
use crate::rpc::{decode, RpcError, RpcHandler, RpcResult, INTERNAL_ERROR};
use crate::{BdevError, Uuid};

pub const METHODS: &[(&str, RpcHandler)] = &[
    ("bdev_uring_create", bdev_uring_create),
    ("bdev_uring_delete", bdev_uring_delete),
    ("bdev_uring_rescan", bdev_uring_rescan),
    ("bdev_aio_create", bdev_aio_create),
    ("bdev_aio_delete", bdev_uring_delete),
    ("bdev_aio_rescan", bdev_uring_rescan),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: String,
    filename: PathBuf,
    block_size: Option<u32>,
    #[serde(default, deserialize_with = "crate::modules::de_uuid")]
    uuid: Option<Uuid>,
}

fn bdev_uring_create(params: Option<Value>) -> RpcResult {
    let p: CreateParams = decode(params)?;
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

fn bdev_aio_create(params: Option<Value>) -> RpcResult {
    let p: AioParams = decode(params)?;
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

fn bdev_uring_delete(params: Option<Value>) -> RpcResult {
    let p: NameParams = decode(params)?;
    delete_module_bdev(&p.name, "uring")
}

fn bdev_uring_rescan(params: Option<Value>) -> RpcResult {
    let p: NameParams = decode(params)?;
    let b = crate::lookup(&p.name)
        .filter(|b| b.module_name() == "uring")
        .ok_or_else(|| RpcError::new(-libc::ENODEV, "No such device"))?;
    rescan(&b)?;
    Ok(Value::Bool(true))
}
