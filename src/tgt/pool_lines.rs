//! The start banner's pool lines: whether each pool was created (a new,
//! empty pool: a mistyped path shows here) or reopened, and with how
//! many devices; or why it failed to open.

use std::sync::Arc;

use serde_json::{json, Value};

use super::app::App;
use crate::rpc::methods::dispatch;
use crate::rpc::wire::Request;

fn call(app: &Arc<App>, method: &str, params: Value) -> Value {
    let req = Request {
        id: None,
        method: method.to_string(),
        params: Some(params),
    };
    dispatch(app, req).unwrap_or(Value::Null)
}

pub fn lines(app: &Arc<App>) -> Vec<String> {
    let pools = call(app, "bdev_thin_pool_get_pools", json!({}));
    let mut out = Vec::new();
    for p in pools.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("?");
        let on = p["metadata_bdev"].as_str().unwrap_or("?");
        if p["mode"] == "failed" {
            out.push(format!(
                "pool {name} on {on}: failed to open: {}",
                p["error"].as_str().unwrap_or("?")
            ));
            continue;
        }
        let vols = call(app, "bdev_thin_get_volumes", json!({"pool": name}));
        let vols = vols.as_array().cloned().unwrap_or_default();
        let active = vols.iter().filter(|v| !v["name"].is_null()).count();
        let how = if p["formatted"] == true {
            "created (a new, empty pool)"
        } else {
            "reopened"
        };
        out.push(format!(
            "pool {name} on {on}: {how}, mode {}, {} devices ({active} active)",
            p["mode"].as_str().unwrap_or("?"),
            vols.len()
        ));
    }
    out
}
