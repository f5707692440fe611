//! bdev_error_create / _delete / _inject_error / _resume_pending, with
//! SPDK's parameters, plus our extensions to inject_error: `probability`
//! and the `drop` error type.

use serde::Deserialize;
use serde_json::Value;

use super::{control, create, ErrorKind, Injection};
use crate::module::Module;
use crate::rpc::{method, BadParams, RpcError, RpcMethod, RpcResult, INVALID_PARAMS};
use crate::{IoType, Uuid};

/// The error module: its methods (each bdev's own hooks are its function
/// table).
pub struct ErrorModule;

impl Module for ErrorModule {
    fn name(&self) -> &'static str {
        "error"
    }

    fn passes_through(&self) -> bool {
        true
    }

    fn rpc_methods(&self) -> Vec<RpcMethod> {
        vec![
            method("bdev_error_create")
                .bad_params(BadParams::Code(INVALID_PARAMS))
                .app_core(bdev_error_create),
            method("bdev_error_delete")
                .bad_params(BadParams::Code(INVALID_PARAMS))
                .app_core(bdev_error_delete),
            method("bdev_error_inject_error")
                .bad_params(BadParams::Code(INVALID_PARAMS))
                .app_core(bdev_error_inject_error),
            method("bdev_error_resume_pending")
                .bad_params(BadParams::Code(INVALID_PARAMS))
                .app_core(bdev_error_resume_pending),
        ]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    base_name: String,
    #[serde(default, deserialize_with = "crate::modules::de_uuid")]
    uuid: Option<Uuid>,
}

fn bdev_error_create(p: CreateParams) -> RpcResult {
    create(&p.base_name, p.uuid)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

fn not_error_bdev() -> RpcError {
    RpcError::new(-libc::ENODEV, "No such device")
}

fn bdev_error_delete(p: NameParams) -> RpcResult {
    control(&p.name).map_err(|_| not_error_bdev())?;
    crate::unregister(&p.name)?;
    Ok(Value::Bool(true))
}

fn bdev_error_resume_pending(p: NameParams) -> RpcResult {
    control(&p.name)
        .map_err(|_| not_error_bdev())?
        .resume_pending();
    Ok(Value::Bool(true))
}

fn default_num() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectParams {
    name: String,
    io_type: String,
    error_type: String,
    #[serde(default = "default_num")]
    num: u32,
    #[serde(default)]
    queue_depth: u64,
    #[serde(default)]
    corrupt_offset: u64,
    #[serde(default)]
    corrupt_value: u8,
    #[serde(default)]
    probability: f64,
}

fn bdev_error_inject_error(p: InjectParams) -> RpcResult {
    let ctl = control(&p.name).map_err(|_| not_error_bdev())?;
    if p.io_type == "clear" {
        ctl.clear();
        return Ok(Value::Bool(true));
    }
    let types: Vec<IoType> = match p.io_type.as_str() {
        "all" => vec![IoType::Read, IoType::Write, IoType::Unmap, IoType::Flush],
        "read" | "write" | "unmap" | "flush" => vec![IoType::parse(&p.io_type).ok_or_else(bad)?],
        _ => return Err(bad()),
    };
    let kind = ErrorKind::parse(&p.error_type).ok_or_else(bad)?;
    if kind == ErrorKind::CorruptData && p.corrupt_value == 0 {
        return Err(bad());
    }
    if !(0.0..=1.0).contains(&p.probability) {
        return Err(bad());
    }
    let inj = Injection {
        kind,
        count: p.num,
        probability: p.probability,
        queue_depth: p.queue_depth,
        corrupt_offset: p.corrupt_offset,
        corrupt_value: p.corrupt_value,
        skip: 0,
    };
    for t in types {
        ctl.inject(t, inj);
    }
    Ok(Value::Bool(true))
}

fn bad() -> RpcError {
    RpcError::new(-libc::EINVAL, "Invalid argument")
}
