//! The embedded default remembers its volumes. Its YAML names only vol0;
//! volumes and snapshots made at run time would be inactive after a
//! restart (dm-thin's metadata keeps devices, not their names or sizes).
//! So the daemon keeps, beside the pool file, the active volumes of the
//! default's pools (name, device, size, origin) in `volumes.json`,
//! rewritten after every change to a thin volume, and activates them at
//! the next start. Only the embedded default does this: a `--json` or
//! `-c` config says itself what to activate (save_config writes it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::app::App;
use crate::rpc::wire::Request;

/// One remembered volume: what bdev_thin_activate needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remembered {
    pub pool: String,
    pub name: String,
    pub dev_id: u64,
    /// Files written before sizes could be any number of sectors have
    /// MiB; they still load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_in_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_dev_id: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// Where the embedded default keeps them.
pub fn file_in(data_dir: &Path) -> PathBuf {
    data_dir.join("volumes.json")
}

fn call(app: &Arc<App>, method: &str, params: Value) -> Option<Value> {
    let req = Request {
        id: None,
        method: method.to_string(),
        params: Some(params),
    };
    crate::rpc::methods::dispatch(app, req).ok()
}

/// The active volumes of every pool, from bdev_thin_get_volumes.
pub fn active(app: &Arc<App>) -> Vec<Remembered> {
    let Some(vols) = call(app, "bdev_thin_get_volumes", json!({})) else {
        return Vec::new();
    };
    vols.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            Some(Remembered {
                pool: v["pool"].as_str()?.to_string(),
                name: v["name"].as_str()?.to_string(),
                dev_id: v["dev_id"].as_u64()?,
                size_in_mib: None,
                size_bytes: Some(v["size"].as_u64()?),
                origin_dev_id: v["origin_dev_id"].as_u64(),
                read_only: v["read_only"].as_bool().unwrap_or(false),
            })
        })
        .collect()
}

/// Writes what is active now to `path` (a new file renamed over the old,
/// so a crash leaves one or the other).
pub fn save(app: &Arc<App>, path: &Path) {
    let text = match serde_json::to_string_pretty(&active(app)) {
        Ok(t) => t + "\n",
        Err(_) => return,
    };
    let tmp = path.with_extension("json.new");
    let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        tracing::warn!("cannot remember the volumes in {}: {e}", path.display());
    }
}

/// Activates the volumes remembered in `path` that are not active yet,
/// with their lineage. A volume that cannot come back is logged, and the
/// rest come.
pub fn restore(app: &Arc<App>, path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let vols: Vec<Remembered> = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("{}: not a volume list ({e}); not used", path.display());
            return;
        }
    };
    let up: Vec<(String, u64)> = active(app)
        .into_iter()
        .map(|v| (v.pool, v.dev_id))
        .collect();
    for v in vols {
        if up.contains(&(v.pool.clone(), v.dev_id)) {
            continue;
        }
        let mut p = json!({"pool": v.pool, "name": v.name, "dev_id": v.dev_id});
        match (v.size_bytes, v.size_in_mib) {
            (Some(b), _) => p["size_bytes"] = json!(b),
            (None, Some(m)) => p["size_in_mib"] = json!(m),
            (None, None) => {}
        }
        if let Some(o) = v.origin_dev_id {
            p["origin_dev_id"] = json!(o);
        }
        if v.read_only {
            p["read_only"] = json!(true);
        }
        let req = Request {
            id: None,
            method: "bdev_thin_activate".into(),
            params: Some(p),
        };
        if let Err(e) = crate::rpc::methods::dispatch(app, req) {
            tracing::error!(
                "could not bring back volume {} (device {} of pool {}) from {}: {e}",
                v.name,
                v.dev_id,
                v.pool,
                path.display()
            );
        }
    }
}

/// Once the embedded default's config is applied: its remembered volumes
/// come back, and from now on every change is remembered in `file`.
pub fn bring_back(app: &Arc<App>, file: PathBuf) {
    restore(app, &file);
    save(app, &file);
    let _ = app.remember.set(file);
}

/// Devices no bdev stands for, per pool: "pool0: dev 3, dev 5".
pub fn inactive(app: &Arc<App>) -> Vec<String> {
    let Some(vols) = call(app, "bdev_thin_get_volumes", json!({})) else {
        return Vec::new();
    };
    let mut by_pool: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for v in vols.as_array().into_iter().flatten() {
        if v["name"].is_null() {
            by_pool
                .entry(v["pool"].as_str().unwrap_or("?").to_string())
                .or_default()
                .push(format!("dev {}", v["dev_id"]));
        }
    }
    by_pool
        .into_iter()
        .map(|(p, devs)| format!("{p}: {}", devs.join(", ")))
        .collect()
}
