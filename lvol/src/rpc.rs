//! The bdev_lvol_* JSON-RPC methods, with SPDK's parameters, results and
//! errors (spdk-interfaces.md 2.4). Each is awaited on the app core.

use serde::Deserialize;
use serde_json::{json, Value};

use bdev::rpc::{method, RpcError, RpcMethod, RpcResult, INTERNAL_ERROR, INVALID_PARAMS};

use crate::table::ClearMethod;
use crate::{lvols, store, LvolError};

pub(crate) fn methods() -> Vec<RpcMethod> {
    vec![
        method("bdev_lvol_create_lvstore").app_core_async(create_lvstore),
        method("bdev_lvol_delete_lvstore").app_core_async(delete_lvstore),
        method("bdev_lvol_get_lvstores").app_core_async(get_lvstores),
        method("bdev_lvol_rename_lvstore").app_core_async(rename_lvstore),
        method("bdev_lvol_grow_lvstore").app_core_async(grow_lvstore),
        method("bdev_lvol_create").app_core_async(create),
        method("bdev_lvol_snapshot").app_core_async(snapshot),
        method("bdev_lvol_clone").app_core_async(clone),
        method("bdev_lvol_clone_bdev").app_core_async(clone_bdev),
        method("bdev_lvol_rename").app_core_async(rename),
        method("bdev_lvol_resize").app_core_async(resize),
        method("bdev_lvol_set_read_only").app_core_async(set_read_only),
        method("bdev_lvol_delete").app_core_async(delete),
        method("bdev_lvol_get_lvols").app_core_async(get_lvols),
        method("bdev_lvol_inflate").app_core_async(inflate),
        method("bdev_lvol_decouple_parent").app_core_async(decouple_parent),
        method("bdev_lvol_set_parent").app_core_async(set_parent),
    ]
}

/// Failures reported from SPDK's callbacks: -32602 and the errno's text.
fn later(e: LvolError) -> RpcError {
    e.to_rpc(INVALID_PARAMS)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateLvstore {
    bdev_name: String,
    lvs_name: String,
    cluster_sz: Option<u32>,
    clear_method: Option<String>,
    /// Accepted for SPDK's scripts: a thin pool sizes its metadata itself.
    #[allow(dead_code)]
    num_md_pages_per_cluster_ratio: Option<u32>,
    #[allow(dead_code)]
    md_page_size: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LvsSelect {
    uuid: Option<String>,
    lvs_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LvolsSelect {
    lvs_uuid: Option<String>,
    lvs_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    old_name: String,
    new_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    lvol_name: String,
    size_in_mib: u64,
    #[serde(default)]
    thin_provision: bool,
    uuid: Option<String>,
    lvs_name: Option<String>,
    clear_method: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    lvol_name: String,
    snapshot_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Clone {
    snapshot_name: String,
    clone_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloneBdev {
    bdev: String,
    lvs_name: String,
    clone_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    name: String,
    size_in_mib: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    name: String,
}

/// bdev_lvol_create_lvstore's clear_method: SPDK's rpc refuses other text.
fn lvs_clear(s: Option<&str>) -> Result<ClearMethod, RpcError> {
    match s {
        None | Some("unmap") => Ok(ClearMethod::Unmap),
        Some("write_zeroes") => Ok(ClearMethod::WriteZeroes),
        Some("none") => Ok(ClearMethod::None),
        Some(_) => Err(RpcError::invalid_params("Invalid clear_method parameter")),
    }
}

/// bdev_lvol_create's clear_method.
fn lvol_clear(s: Option<&str>) -> Result<ClearMethod, RpcError> {
    match s {
        None | Some("default") => Ok(ClearMethod::Default),
        Some("unmap") => Ok(ClearMethod::Unmap),
        Some("write_zeroes") => Ok(ClearMethod::WriteZeroes),
        Some("none") => Ok(ClearMethod::None),
        Some(_) => Err(RpcError::invalid_params("Invalid clean_method parameter")),
    }
}

async fn create_lvstore(p: CreateLvstore) -> RpcResult {
    let clear = lvs_clear(p.clear_method.as_deref())?;
    let uuid = store::create(&p.bdev_name, &p.lvs_name, p.cluster_sz, clear)
        .await
        .map_err(later)?;
    Ok(json!(uuid.to_string()))
}

async fn delete_lvstore(p: LvsSelect) -> RpcResult {
    let lvs = store::select(p.uuid.as_deref(), p.lvs_name.as_deref()).map_err(later)?;
    store::delete(lvs).await.map_err(later)?;
    Ok(json!(true))
}

async fn get_lvstores(p: LvsSelect) -> RpcResult {
    let stores = match (&p.uuid, &p.lvs_name) {
        (None, None) => store::list(),
        (u, n) => vec![store::select(u.as_deref(), n.as_deref()).map_err(later)?],
    };
    let mut out = Vec::new();
    for lvs in stores {
        out.push(json!(store::info(&lvs).await));
    }
    Ok(Value::Array(out))
}

async fn rename_lvstore(p: Rename) -> RpcResult {
    store::rename(&p.old_name, &p.new_name)
        .await
        .map_err(later)?;
    Ok(json!(true))
}

async fn grow_lvstore(p: LvsSelect) -> RpcResult {
    let lvs = store::select(p.uuid.as_deref(), p.lvs_name.as_deref()).map_err(later)?;
    store::grow(lvs).await.map_err(later)?;
    Ok(json!(true))
}

async fn create(p: Create) -> RpcResult {
    let clear = lvol_clear(p.clear_method.as_deref())?;
    let lvs = store::select(p.uuid.as_deref(), p.lvs_name.as_deref()).map_err(later)?;
    let uuid = lvols::create(lvs, &p.lvol_name, p.size_in_mib, p.thin_provision, clear)
        .await
        .map_err(later)?;
    Ok(json!(uuid.to_string()))
}

async fn snapshot(p: Snapshot) -> RpcResult {
    let uuid = lvols::snapshot(&p.lvol_name, &p.snapshot_name)
        .await
        .map_err(later)?;
    Ok(json!(uuid.to_string()))
}

async fn clone(p: Clone) -> RpcResult {
    let uuid = lvols::clone(&p.snapshot_name, &p.clone_name)
        .await
        .map_err(later)?;
    Ok(json!(uuid.to_string()))
}

async fn clone_bdev(p: CloneBdev) -> RpcResult {
    let uuid = lvols::clone_bdev(&p.bdev, &p.lvs_name, &p.clone_name)
        .await
        .map_err(later)?;
    Ok(json!(uuid.to_string()))
}

async fn rename(p: Rename) -> RpcResult {
    lvols::rename(&p.old_name, &p.new_name)
        .await
        .map_err(later)?;
    Ok(json!(true))
}

async fn resize(p: Resize) -> RpcResult {
    lvols::resize(&p.name, p.size_in_mib).await.map_err(later)?;
    Ok(json!(true))
}

async fn set_read_only(p: Name) -> RpcResult {
    lvols::set_read_only(&p.name).await.map_err(later)?;
    Ok(json!(true))
}

/// SPDK answers this one's callback failures with -32603.
async fn delete(p: Name) -> RpcResult {
    lvols::delete(&p.name)
        .await
        .map_err(|e| e.to_rpc(INTERNAL_ERROR))?;
    Ok(json!(true))
}

async fn inflate(p: Name) -> RpcResult {
    lvols::inflate(&p.name).await.map_err(later)?;
    Ok(json!(true))
}

async fn decouple_parent(p: Name) -> RpcResult {
    lvols::decouple_parent(&p.name).await.map_err(later)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetParent {
    lvol_name: String,
    parent_name: String,
}

async fn set_parent(p: SetParent) -> RpcResult {
    lvols::set_parent(&p.lvol_name, &p.parent_name)
        .await
        .map_err(later)?;
    Ok(json!(true))
}

async fn get_lvols(p: LvolsSelect) -> RpcResult {
    let stores = match (&p.lvs_uuid, &p.lvs_name) {
        (None, None) => store::list(),
        (u, n) => vec![store::select(u.as_deref(), n.as_deref()).map_err(later)?],
    };
    let mut out = Vec::new();
    for lvs in stores {
        for l in lvols::list(&lvs).await.map_err(later)? {
            out.push(json!(l));
        }
    }
    Ok(Value::Array(out))
}
