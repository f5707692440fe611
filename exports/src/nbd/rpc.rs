//! The NBD methods: nbd_start_disk, nbd_stop_disk, nbd_get_disks, and the
//! nbd subsystem's save_config entries. `nbd_device` is a listen address
//! (`HOST:PORT` or a Unix socket path), not SPDK's /dev/nbdN.

use serde::Deserialize;
use serde_json::{json, Value};

use bdev::rpc::{decode, RpcError, RpcResult};

use super::server::NbdServer;

pub const METHODS: &[&str] = &["nbd_start_disk", "nbd_stop_disk", "nbd_get_disks"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    bdev_name: String,
    nbd_device: Option<String>,
    export_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stop {
    nbd_device: String,
    export_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Get {
    nbd_device: Option<String>,
}

/// Runs an nbd method; None when `method` is not one.
pub fn call(server: &NbdServer, method: &str, params: Option<Value>) -> Option<RpcResult> {
    let r = match method {
        "nbd_start_disk" => decode::<Start>(params).and_then(|p| {
            server
                .start_disk(
                    &p.bdev_name,
                    p.nbd_device.as_deref(),
                    p.export_name.as_deref(),
                )
                .map(Value::from)
                .map_err(RpcError::from)
        }),
        "nbd_stop_disk" => decode::<Stop>(params).and_then(|p| {
            server
                .stop_disk(&p.nbd_device, p.export_name.as_deref())
                .map(|()| json!(true))
                .map_err(RpcError::from)
        }),
        "nbd_get_disks" => decode::<Get>(params).and_then(|p| {
            let disks: Vec<Value> = server
                .disks()
                .into_iter()
                .filter(|d| p.nbd_device.as_ref().is_none_or(|a| *a == d.address))
                .map(|d| {
                    json!({"nbd_device": d.address, "bdev_name": d.bdev_name,
                           "export_name": d.export_name})
                })
                .collect();
            if disks.is_empty() && p.nbd_device.is_some() {
                return Err(RpcError::new(-libc::ENODEV, "No such device"));
            }
            Ok(Value::Array(disks))
        }),
        _ => return None,
    };
    Some(r)
}

/// The nbd subsystem's config: one nbd_start_disk per export.
pub fn save(server: &NbdServer) -> Vec<Value> {
    server
        .disks()
        .into_iter()
        .map(|d| {
            json!({"method": "nbd_start_disk", "params": {
                "bdev_name": d.bdev_name, "nbd_device": d.address, "export_name": d.export_name}})
        })
        .collect()
}
