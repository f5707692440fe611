//! The management log: every call that changes something (create, delete,
//! snapshot, resize, export start and stop, ...) is logged at info with
//! its parameters and its result, so an operator can tell from the log
//! alone what was done to the daemon and what came of it. Calls that only
//! read are logged at debug: monitoring polls them all day.

use serde_json::Value;

use bdev::rpc::RpcResult;

/// Parameters and results longer than this are cut in the log (a whole
/// config given to load_config, a long volume list).
const MAX_SHOWN: usize = 400;

/// Whether `method` only reads state.
pub fn reads_only(method: &str) -> bool {
    method.contains("_get_")
        || method.starts_with("get_")
        || matches!(
            method,
            "spdk_get_version"
                | "rpc_get_methods"
                | "framework_wait_init"
                | "save_config"
                | "bdev_wait_for_examine"
                | "bdev_thin_delta"
        )
}

fn shown(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > MAX_SHOWN {
        let mut cut = MAX_SHOWN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Logs one call and what it answered.
pub fn log_call(method: &str, params: Option<&Value>, result: &RpcResult) {
    let params = params.map_or_else(|| "{}".to_string(), shown);
    let outcome = match result {
        Ok(v) => format!("ok {}", shown(v)),
        Err(e) => format!("error {}: {}", e.code, e.message),
    };
    if reads_only(method) {
        tracing::debug!("rpc {method} {params}: {outcome}");
    } else {
        tracing::info!("rpc {method} {params}: {outcome}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_told_from_reads() {
        for m in [
            "bdev_thin_create",
            "nbd_start_disk",
            "bdev_thin_snapshot",
            "load_config",
        ] {
            assert!(!reads_only(m), "{m}");
        }
        for m in [
            "bdev_get_bdevs",
            "bdev_thin_pool_get_pools",
            "save_config",
            "nbd_get_disks",
        ] {
            assert!(reads_only(m), "{m}");
        }
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let v = Value::String("é".repeat(400));
        let s = shown(&v);
        assert!(s.ends_with("...") && s.len() <= MAX_SHOWN + 3, "{s}");
    }
}
