//! SPDK-style JSON configs: `{"subsystems": [{"subsystem", "config": [...]}]}`,
//! where each config element is `{"method", "params"}` or an array of them
//! (a batch). Comments (`//`, `/* */`) are allowed, as in SPDK.

use serde_json::Value;

/// One method call from a config file.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigCall {
    pub subsystem: String,
    pub method: String,
    pub params: Option<Value>,
}

/// A config that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("config: {0}")]
    Shape(String),
    #[error("config: {method}: {error}")]
    Method {
        method: String,
        error: crate::rpc::RpcError,
    },
}

/// Parses a config into its calls, in file order.
pub fn parse(text: &str) -> Result<Vec<ConfigCall>, ConfigError> {
    let root: Value = serde_json::from_str(&strip_comments(text))?;
    let shape = |m: &str| ConfigError::Shape(m.to_string());
    let root = root
        .as_object()
        .ok_or_else(|| shape("the root must be an object"))?;
    let Some(subsystems) = root.get("subsystems") else {
        tracing::warn!("config has no \"subsystems\": nothing to configure");
        return Ok(Vec::new());
    };
    let subsystems = subsystems
        .as_array()
        .ok_or_else(|| shape("\"subsystems\" must be an array"))?;
    let mut calls = Vec::new();
    for s in subsystems {
        let name = s
            .get("subsystem")
            .and_then(Value::as_str)
            .ok_or_else(|| shape("each subsystem needs a \"subsystem\" string"))?;
        let config = match s.get("config") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(_) => {
                return Err(shape(&format!(
                    "subsystem {name}: \"config\" must be an array"
                )))
            }
        };
        for el in config {
            let batch = match el {
                Value::Array(a) => a.iter().collect::<Vec<_>>(),
                other => vec![other],
            };
            for call in batch {
                calls.push(parse_call(name, call)?);
            }
        }
    }
    Ok(calls)
}

fn parse_call(subsystem: &str, v: &Value) -> Result<ConfigCall, ConfigError> {
    let obj = v
        .as_object()
        .ok_or_else(|| ConfigError::Shape(format!("{subsystem}: each call must be an object")))?;
    if let Some(k) = obj.keys().find(|k| *k != "method" && *k != "params") {
        return Err(ConfigError::Shape(format!(
            "{subsystem}: unexpected key {k:?} in a call"
        )));
    }
    let method = obj.get("method").and_then(Value::as_str).ok_or_else(|| {
        ConfigError::Shape(format!("{subsystem}: a call without a \"method\" string"))
    })?;
    Ok(ConfigCall {
        subsystem: subsystem.to_string(),
        method: method.to_string(),
        params: obj.get("params").cloned(),
    })
}

/// Applies the `bdev` subsystem's calls on the reactor this is awaited
/// on, through `registry` (the daemon's loader goes through the same
/// registry from its own thread); other subsystems are left to their
/// owners (the caller), which is why they are returned.
pub async fn apply_bdev_here(
    registry: &crate::rpc::RpcRegistry,
    calls: Vec<ConfigCall>,
) -> Result<Vec<ConfigCall>, ConfigError> {
    let mut rest = Vec::new();
    for c in calls {
        if c.subsystem != "bdev" {
            rest.push(c);
            continue;
        }
        registry
            .call_here(&c.method, c.params)
            .await
            .map_err(|error| ConfigError::Method {
                method: c.method,
                error,
            })?;
    }
    Ok(rest)
}

/// The `bdev` subsystem's config (save_config): every bdev's creating call
/// in registration order, so a bdev follows what it sits on; a module's
/// own calls (a thin pool) go just before the first bdev that needs them,
/// or after every bdev; `bdev_wait_for_examine` ends it, as in SPDK.
pub fn save_bdev() -> Vec<Value> {
    let mut module_calls: Vec<crate::ModuleConfig> = crate::modules()
        .iter()
        .flat_map(|m| m.config_json())
        .collect();
    let mut out = Vec::new();
    for b in crate::list() {
        let Some(entry) = b.config_entry() else {
            continue;
        };
        module_calls.retain(|c| {
            let due = c.before_bdev.as_deref() == Some(b.name());
            if due {
                out.push(c.call.clone());
            }
            !due
        });
        out.push(entry);
    }
    out.extend(module_calls.into_iter().map(|c| c.call));
    out.push(serde_json::json!({"method": "bdev_wait_for_examine"}));
    out
}

/// Removes `//` and `/* */` comments outside strings.
pub fn strip_comments(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let (mut i, mut in_str, mut start) = (0, false, 0);
    while i < b.len() {
        if in_str {
            match b[i] {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match (b[i], b.get(i + 1)) {
            (b'"', _) => {
                in_str = true;
                i += 1;
            }
            (b'/', Some(b'/')) => {
                out.push_str(&s[start..i]);
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                start = i;
            }
            (b'/', Some(b'*')) => {
                out.push_str(&s[start..i]);
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i = (i + 2).min(b.len());
                out.push(' ');
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&s[start.min(s.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_calls_batches_and_comments() {
        let text = r#"{ // a comment
          "subsystems": [
            {"subsystem": "bdev", "config": [
              {"method": "bdev_malloc_create", "params": {"name": "M//0", "num_blocks": 8, "block_size": 512}},
              /* a batch */ [{"method": "bdev_wait_for_examine"}]
            ]},
            {"subsystem": "nbd", "config": null}
          ]}"#;
        let calls = parse(text).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].params.as_ref().unwrap()["name"], "M//0");
        assert_eq!(calls[1].method, "bdev_wait_for_examine");
    }

    #[test]
    fn bad_shapes_are_errors() {
        for t in [
            "[]",
            "{\"subsystems\": 3}",
            "{\"subsystems\": [{}]}",
            "{\"subsystems\": [{\"subsystem\": \"bdev\", \"config\": [{\"params\": {}}]}]}",
            "{\"subsystems\": [{\"subsystem\": \"bdev\", \"config\": [{\"method\": \"x\", \"extra\": 1}]}]}",
            "{",
        ] {
            assert!(parse(t).is_err(), "{t}");
        }
        assert!(parse("{}").unwrap().is_empty());
    }
}
