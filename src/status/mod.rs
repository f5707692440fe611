//! `ferrothin status`: what a running daemon's pools hold, over its RPC
//! socket, for a person (like `lvs`: size, Data%, Meta%, mode,
//! needs_check, low-water state, then each pool's devices as a tree of
//! snapshots with their exports) or a script (`--json`).

mod client;
pub mod model;
mod text;

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The daemon's JSON-RPC socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = "/var/tmp/spdk.sock")]
    pub rpc_socket: PathBuf,
    /// JSON for scripts instead of text.
    #[arg(long)]
    pub json: bool,
    /// Warn when a pool's volumes add up to more than this many times
    /// its data size (LVM warns past 1).
    #[arg(long, default_value_t = 1.0)]
    pub overprovision_ratio: f64,
}

pub fn run(a: &StatusArgs) -> anyhow::Result<i32> {
    let call = |m: &str, p: Option<Value>| client::call(&a.rpc_socket, m, p);
    let pools = call("bdev_thin_pool_get_pools", None)?;
    let nbd = call("nbd_get_disks", None).unwrap_or(Value::Null);
    let nvmf = call("nvmf_get_subsystems", None).unwrap_or(Value::Null);
    let exports = model::exports(&nbd, &nvmf);
    let mut out = Vec::new();
    for p in pools.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        // A pool that failed to open has no devices to ask about.
        let vols = if p["mode"] == "failed" {
            Vec::new()
        } else {
            let v = call("bdev_thin_get_volumes", Some(json!({"pool": name})))?;
            v.as_array().cloned().unwrap_or_default()
        };
        out.push(model::pool(p, &vols, &exports, a.overprovision_ratio));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", text::render(&out, a.overprovision_ratio));
    }
    Ok(0)
}
