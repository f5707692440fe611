//! What `ferrothin status` shows, built from the daemon's answers
//! (bdev_thin_pool_get_pools, bdev_thin_get_volumes, nbd_get_disks,
//! nvmf_get_subsystems): each pool with its use and state, and its
//! devices as a tree of snapshots with where each is exported.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub mode: String,
    pub needs_check: bool,
    /// Data area in bytes.
    pub size: u64,
    pub data_percent: f64,
    pub metadata_percent: f64,
    /// "unset" (no mark), "ok", or "below" (free blocks at or under it).
    pub low_water: &'static str,
    /// The devices' sizes added up: what the pool has promised.
    pub virtual_size: u64,
    /// virtual_size over size.
    pub overprovision: f64,
    /// Over the ratio the caller gave.
    pub overprovisioned: bool,
    /// Why a pool that failed to open is not up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub devices: Vec<DeviceNode>,
}

#[derive(Debug, Serialize)]
pub struct DeviceNode {
    pub dev_id: u64,
    /// The bdev name; None for a device that is not active.
    pub name: Option<String>,
    pub size: Option<u64>,
    pub mapped: u64,
    pub exclusive: u64,
    /// What it was made from (a snapshot's origin, an external origin).
    pub origin: Option<String>,
    /// Where it is exported: NBD URIs, NVMe/TCP subsystems.
    pub exports: Vec<String>,
    /// Snapshots taken of it.
    pub children: Vec<DeviceNode>,
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (used as f64 * 10000.0 / total as f64).round() / 100.0
}

/// Where each bdev is exported.
pub fn exports(nbd: &Value, nvmf: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in nbd.as_array().into_iter().flatten() {
        if let (Some(b), Some(addr), Some(name)) = (
            d["bdev_name"].as_str(),
            d["nbd_device"].as_str(),
            d["export_name"].as_str(),
        ) {
            out.entry(b.to_string())
                .or_default()
                .push(format!("nbd://{addr}/{name}"));
        }
    }
    for s in nvmf.as_array().into_iter().flatten() {
        let nqn = s["nqn"].as_str().unwrap_or("?");
        let at: Vec<String> = s["listen_addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "{}:{}",
                    l["traddr"].as_str().unwrap_or("?"),
                    l["trsvcid"].as_str().unwrap_or("?")
                )
            })
            .collect();
        for ns in s["namespaces"].as_array().into_iter().flatten() {
            if let Some(b) = ns["bdev_name"].as_str() {
                out.entry(b.to_string()).or_default().push(format!(
                    "nvme-tcp {nqn} ns {} at {}",
                    u(ns, "nsid"),
                    at.join(", ")
                ));
            }
        }
    }
    out
}

/// One pool's status from its get_pools entry and its devices.
pub fn pool(
    p: &Value,
    volumes: &[Value],
    exports: &BTreeMap<String, Vec<String>>,
    ratio: f64,
) -> PoolStatus {
    let block = p["options"]["block_size"].as_u64().unwrap_or(0);
    let size = u(p, "data_blocks") * block;
    let mark = p["options"]["low_water_mark_blocks"].as_u64().unwrap_or(0);
    let low_water = match (mark, p.get("free_data_blocks")) {
        (0, _) | (_, None) => "unset",
        (m, Some(free)) if free.as_u64().unwrap_or(0) <= m => "below",
        _ => "ok",
    };
    let virtual_size: u64 = volumes.iter().filter_map(|v| v["size"].as_u64()).sum();
    let overprovision = if size == 0 {
        0.0
    } else {
        (virtual_size as f64 * 100.0 / size as f64).round() / 100.0
    };
    PoolStatus {
        name: p["name"].as_str().unwrap_or("?").to_string(),
        mode: p["mode"].as_str().unwrap_or("?").to_string(),
        needs_check: p["needs_check"].as_bool().unwrap_or(false),
        size,
        data_percent: percent(u(p, "used_data_blocks"), u(p, "data_blocks")),
        metadata_percent: percent(u(p, "used_metadata_blocks"), u(p, "metadata_blocks")),
        low_water,
        virtual_size,
        overprovision,
        overprovisioned: size > 0 && virtual_size as f64 > size as f64 * ratio,
        error: p["error"].as_str().map(str::to_string),
        devices: tree(volumes, block, exports),
    }
}

/// The devices as trees: a device whose origin device is in the pool
/// hangs under it; the others are roots. In dev_id order at each level.
fn tree(volumes: &[Value], block: u64, exports: &BTreeMap<String, Vec<String>>) -> Vec<DeviceNode> {
    let ids: Vec<u64> = volumes.iter().map(|v| u(v, "dev_id")).collect();
    let parent = |v: &Value| v["origin_dev_id"].as_u64().filter(|o| ids.contains(o));
    let mut by_id: BTreeMap<u64, &Value> = BTreeMap::new();
    for v in volumes {
        by_id.insert(u(v, "dev_id"), v);
    }
    fn build(
        id: u64,
        by_id: &BTreeMap<u64, &Value>,
        parent: &dyn Fn(&Value) -> Option<u64>,
        block: u64,
        exports: &BTreeMap<String, Vec<String>>,
        depth: usize,
    ) -> DeviceNode {
        let v = by_id[&id];
        let name = v["name"].as_str().map(str::to_string);
        // A lineage loop cannot come from the daemon; the depth bound
        // keeps a bad answer from recursing for ever.
        let children = if depth < 64 {
            by_id
                .iter()
                .filter(|(_, c)| parent(c) == Some(id))
                .map(|(&c, _)| build(c, by_id, parent, block, exports, depth + 1))
                .collect()
        } else {
            Vec::new()
        };
        DeviceNode {
            dev_id: id,
            exports: name
                .as_ref()
                .and_then(|n| exports.get(n).cloned())
                .unwrap_or_default(),
            name,
            size: v["size"].as_u64(),
            mapped: u(v, "mapped_blocks") * block,
            exclusive: u(v, "exclusive_blocks") * block,
            origin: v["origin"].as_str().map(str::to_string),
            children,
        }
    }
    by_id
        .iter()
        .filter(|(_, v)| parent(v).is_none())
        .map(|(&id, _)| build(id, &by_id, &parent, block, exports, 0))
        .collect()
}
