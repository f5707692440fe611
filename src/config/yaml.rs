//! Our YAML config: the same things as an SPDK JSON config, in a shape
//! people write by hand. It becomes a list of RPC calls, in this order:
//! bdevs (as listed), pools with their volumes, NBD exports, then the
//! NVMe/TCP target (its transport, then each subsystem's hosts,
//! namespaces and listeners).
//!
//! ```yaml
//! bdevs:
//!   - uring: {name: Disk0, filename: /var/lib/ferrothin/pool.img, size_mib: 4096}
//!   - malloc: {name: Malloc0, size_mib: 64, block_size: 512}
//!   - nvme: {name: Nvme0, traddr: 10.0.0.2, trsvcid: 4420, subnqn: nqn.2016-06.io.spdk:cnode1}
//! pools:
//!   - name: pool0
//!     metadata_bdev: Disk0          # no data_bdev: one-device layout
//!     block_size: 65536
//!     volumes:
//!       - {name: vol0, dev_id: 0, size_mib: 1024}
//! nbd:
//!   - {bdev: vol0, listen: "127.0.0.1:10809"}
//! nvmf:
//!   transport: {max_queue_depth: 128}   # optional: nvmf_create_transport's params
//!   subsystems:
//!     - nqn: nqn.2026-12.io.ferrothin:vol0
//!       allow_any_host: true            # or hosts: [nqn.2014-08.org.nvmexpress:uuid:...]
//!       namespaces: [vol0]              # bdev names, or {bdev: vol0, nsid: 1}
//!       listen: ["127.0.0.1:4420"]
//! ```
//!
//! A bdev entry is `<module>: {params}` for `bdev_<module>_create`
//! (`nvme: {name, traddr, trsvcid, subnqn, ...}` for
//! `bdev_nvme_attach_controller`, TCP by default: the controller's
//! namespaces become bdevs `<name>n<nsid>`), with
//! `size_mib` accepted for malloc and null (converted to `num_blocks`) and
//! for uring and aio (the file is created, sparse, if it does not exist).
//! Pool entries take `bdev_thin_pool_create`'s params; volumes need a
//! `dev_id`, because the config runs at every start: a volume is created
//! the first time and activated after.

use metadata::thin::DevId;
use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use bdev::config::ConfigCall;

#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("YAML config: {0}")]
    Parse(String),
    #[error("YAML config: {0}")]
    Shape(String),
    #[error("YAML config: cannot create {0}: {1}")]
    File(String, #[source] std::io::Error),
    #[error(
        "YAML config: {file} would be created, but its directory {dir} does not exist \
         (a mistyped path?): create the directory, or start with --create-missing"
    )]
    NoDirectory { file: String, dir: String },
}

/// What to do about the files that uring and aio entries size
/// (`size_mib`) and that do not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Files {
    /// Nothing (checking a config).
    Leave,
    /// Create them, in directories that exist: a file whose directory is
    /// missing is more likely a typo than a wish for a new, empty pool.
    Create,
    /// Create them and their directories.
    CreateWithDirs,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    bdevs: Vec<BTreeMap<String, Value>>,
    #[serde(default)]
    pools: Vec<Map<String, Value>>,
    #[serde(default)]
    nbd: Vec<NbdEntry>,
    nvmf: Option<Nvmf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nvmf {
    transport: Option<Map<String, Value>>,
    #[serde(default)]
    subsystems: Vec<NvmfSubsystem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NvmfSubsystem {
    nqn: String,
    serial_number: Option<String>,
    model_number: Option<String>,
    #[serde(default)]
    allow_any_host: bool,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    namespaces: Vec<NvmfNamespace>,
    #[serde(default)]
    listen: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NvmfNamespace {
    Bdev(String),
    Full { bdev: String, nsid: Option<u32> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NbdEntry {
    bdev: String,
    listen: Option<String>,
    export_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Volume {
    name: String,
    dev_id: DevId,
    size_mib: u64,
    external_origin: Option<String>,
}

fn call(subsystem: &str, method: &str, params: Value) -> ConfigCall {
    ConfigCall {
        subsystem: subsystem.into(),
        method: method.into(),
        params: Some(params),
    }
}

/// The bdev modules a `bdevs:` entry may name (each has a
/// `bdev_<module>_create`).
const MODULES: &[&str] = &["malloc", "null", "uring", "aio", "error", "delay", "nvme"];

/// Turns a YAML config into calls; with `create_files`, creates the files
/// that uring and aio entries ask for (`size_mib`) when they are missing.
pub fn to_calls(text: &str, files: Files) -> Result<Vec<ConfigCall>, YamlError> {
    let doc: Doc = serde_saphyr::from_str(text).map_err(|e| YamlError::Parse(e.to_string()))?;
    let shape = |m: String| YamlError::Shape(m);
    let mut calls = Vec::new();
    for entry in doc.bdevs {
        let mut it = entry.into_iter();
        let (Some((module, params)), None) = (it.next(), it.next()) else {
            return Err(shape("each bdev is one `<module>: {params}` entry".into()));
        };
        if !MODULES.contains(&module.as_str()) {
            return Err(shape(format!(
                "unknown bdev module {module}; known: {}",
                MODULES.join(", ")
            )));
        }
        let Value::Object(mut p) = params else {
            return Err(shape(format!("bdev {module}: params must be a mapping")));
        };
        if let Some(mib) = p.remove("size_mib") {
            let mib = mib
                .as_u64()
                .ok_or_else(|| shape(format!("bdev {module}: size_mib must be a number")))?;
            match module.as_str() {
                "malloc" | "null" => {
                    let bs = p.get("block_size").and_then(Value::as_u64).unwrap_or(512);
                    if bs == 0 {
                        return Err(shape(format!("bdev {module}: block_size must be positive")));
                    }
                    p.insert("num_blocks".into(), json!((mib << 20) / bs));
                    p.entry("block_size").or_insert(json!(bs));
                }
                "uring" | "aio" => {
                    let f = p.get("filename").and_then(Value::as_str).ok_or_else(|| {
                        shape(format!("bdev {module}: size_mib needs a filename"))
                    })?;
                    if files != Files::Leave {
                        create_file(Path::new(f), mib << 20, files == Files::CreateWithDirs)?;
                    }
                }
                _ => return Err(shape(format!("bdev {module}: size_mib is not understood"))),
            }
        }
        let method = if module == "nvme" {
            // A remote controller: its namespaces become the bdevs.
            p.entry("trtype").or_insert(json!("tcp"));
            if let Some(port) = p.get("trsvcid").and_then(Value::as_u64) {
                p.insert("trsvcid".into(), json!(port.to_string()));
            }
            "bdev_nvme_attach_controller".to_string()
        } else {
            format!("bdev_{module}_create")
        };
        calls.push(call("bdev", &method, Value::Object(p)));
    }
    for mut pool in doc.pools {
        let volumes = pool.remove("volumes").unwrap_or(Value::Array(Vec::new()));
        let name = pool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| shape("each pool needs a name".into()))?
            .to_string();
        calls.push(call("bdev", "bdev_thin_pool_create", Value::Object(pool)));
        let volumes: Vec<Volume> = serde_json::from_value(volumes).map_err(|e| {
            shape(format!(
                "pool {name}: volumes: {e} (each needs name, dev_id and size_mib)"
            ))
        })?;
        for v in volumes {
            let mut p = json!({"pool": name, "name": v.name, "dev_id": v.dev_id,
                               "size_in_mib": v.size_mib, "open_existing": true});
            if let Some(o) = v.external_origin {
                p["external_origin"] = json!(o);
            }
            calls.push(call("bdev", "bdev_thin_create", p));
        }
    }
    for e in doc.nbd {
        let mut p = json!({"bdev_name": e.bdev});
        if let Some(l) = e.listen {
            p["nbd_device"] = json!(l);
        }
        if let Some(n) = e.export_name {
            p["export_name"] = json!(n);
        }
        calls.push(call("nbd", "nbd_start_disk", p));
    }
    if let Some(n) = doc.nvmf {
        nvmf_calls(n, &mut calls)?;
    }
    Ok(calls)
}

fn nvmf_calls(n: Nvmf, calls: &mut Vec<ConfigCall>) -> Result<(), YamlError> {
    let mut t = n.transport.unwrap_or_default();
    t.entry("trtype").or_insert(json!("TCP"));
    calls.push(call("nvmf", "nvmf_create_transport", Value::Object(t)));
    for s in n.subsystems {
        let mut p = json!({"nqn": s.nqn, "allow_any_host": s.allow_any_host});
        if let Some(v) = s.serial_number {
            p["serial_number"] = json!(v);
        }
        if let Some(v) = s.model_number {
            p["model_number"] = json!(v);
        }
        calls.push(call("nvmf", "nvmf_create_subsystem", p));
        for h in s.hosts {
            calls.push(call(
                "nvmf",
                "nvmf_subsystem_add_host",
                json!({"nqn": s.nqn, "host": h}),
            ));
        }
        for ns in s.namespaces {
            let ns = match ns {
                NvmfNamespace::Bdev(b) => json!({"bdev_name": b}),
                NvmfNamespace::Full { bdev, nsid } => {
                    json!({"bdev_name": bdev, "nsid": nsid.unwrap_or(0)})
                }
            };
            calls.push(call(
                "nvmf",
                "nvmf_subsystem_add_ns",
                json!({"nqn": s.nqn, "namespace": ns}),
            ));
        }
        for l in s.listen {
            let (host, port) = l
                .rsplit_once(':')
                .ok_or_else(|| YamlError::Shape(format!("nvmf listen {l:?}: give HOST:PORT")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let adrfam = if host.contains(':') { "ipv6" } else { "ipv4" };
            calls.push(call("nvmf", "nvmf_subsystem_add_listener", json!({"nqn": s.nqn,
                "listen_address": {"trtype": "tcp", "adrfam": adrfam, "traddr": host, "trsvcid": port}})));
        }
    }
    Ok(())
}

fn create_file(path: &Path, size: u64, with_dirs: bool) -> Result<(), YamlError> {
    if path.exists() {
        return Ok(());
    }
    let err = |e| YamlError::File(path.display().to_string(), e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !with_dirs && !dir.is_dir() {
            return Err(YamlError::NoDirectory {
                file: path.display().to_string(),
                dir: dir.display().to_string(),
            });
        }
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let f = std::fs::File::create_new(path).map_err(err)?;
    f.set_len(size).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn params(c: &ConfigCall) -> Result<&Value, &'static str> {
        c.params.as_ref().ok_or("a call without params")
    }

    #[test]
    fn an_nvme_entry_attaches_a_controller_over_tcp() -> TestResult {
        let text = "bdevs:\n  - nvme: {name: N0, traddr: 127.0.0.1, trsvcid: 4420, subnqn: nqn.x:y}\npools:\n  - {name: p, metadata_bdev: N0n1}\n";
        let calls = to_calls(text, Files::Leave)?;
        assert_eq!(calls[0].method, "bdev_nvme_attach_controller");
        let p = params(&calls[0])?;
        assert_eq!(
            (&p["trtype"], &p["trsvcid"], &p["name"]),
            (&json!("tcp"), &json!("4420"), &json!("N0"))
        );
        assert_eq!(calls[1].method, "bdev_thin_pool_create");
        Ok(())
    }

    #[test]
    fn a_config_becomes_calls_in_order() -> TestResult {
        let dir = std::env::temp_dir().join(format!("ft-yaml-{}", std::process::id()));
        let file = dir.join("d.img");
        let text = format!(
            r#"
bdevs:
  - malloc: {{name: M0, size_mib: 1, block_size: 4096}}
  - uring: {{name: D0, filename: "{}", size_mib: 8}}
pools:
  - name: p0
    metadata_bdev: D0
    commit_period_ms: 500
    volumes:
      - {{name: v0, dev_id: 3, size_mib: 16}}
nbd:
  - {{bdev: v0, listen: "127.0.0.1:0"}}
"#,
            file.display()
        );
        let calls = to_calls(&text, Files::CreateWithDirs)?;
        let methods: Vec<&str> = calls.iter().map(|c| c.method.as_str()).collect();
        assert_eq!(
            methods,
            [
                "bdev_malloc_create",
                "bdev_uring_create",
                "bdev_thin_pool_create",
                "bdev_thin_create",
                "nbd_start_disk"
            ]
        );
        assert_eq!(params(&calls[0])?["num_blocks"], 256);
        assert_eq!(std::fs::metadata(&file)?.len(), 8 << 20);
        let v = params(&calls[3])?;
        assert_eq!(
            (v["dev_id"].as_u64(), v["open_existing"].as_bool()),
            (Some(3), Some(true))
        );
        assert_eq!(calls[4].subsystem, "nbd");
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }

    #[test]
    fn the_shipped_configs_parse() -> TestResult {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
        let mut n = 0;
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                // The embedded default's placeholders, as `tgt` fills them.
                let text = std::fs::read_to_string(&p)?
                    .replace("${data_dir}", "/var/tmp/ferrothin")
                    .replace("${nbd_listen}", "127.0.0.1:10809")
                    .replace("${nvmf_listen}", "127.0.0.1:4420");
                let calls = to_calls(&text, Files::Leave)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert!(!calls.is_empty(), "{}", p.display());
                n += 1;
            }
            if p.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&p)?;
                bdev::config::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
        assert!(n >= 2);
        Ok(())
    }

    #[test]
    fn mistakes_are_reported() {
        for bad in [
            "bdevs: 3",
            "bdevs:\n  - {malloc: {name: a}, null: {name: b}}",
            "pools:\n  - {metadata_bdev: x}",
            "pools:\n  - {name: p, metadata_bdev: x, volumes: [{name: v, size_mib: 1}]}",
            "nbd:\n  - {listen: x}",
            "unknown: 1",
            "bdevs:\n  - error: {base_name: x, size_mib: 3}",
            ": : :",
        ] {
            assert!(to_calls(bad, Files::Leave).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_file_in_a_missing_directory_is_created_only_when_asked() -> TestResult {
        let root = std::env::temp_dir().join(format!("ft-yaml-nodir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let file = root.join("typo/pool.img");
        let yaml = format!(
            "bdevs:\n  - uring: {{name: D, filename: \"{}\", size_mib: 1}}\n",
            file.display()
        );
        let e = to_calls(&yaml, Files::Create).err().map(|e| e.to_string());
        assert_eq!(
            e,
            Some(format!(
                "YAML config: {} would be created, but its directory {} does not exist \
                 (a mistyped path?): create the directory, or start with --create-missing",
                file.display(),
                root.join("typo").display()
            ))
        );
        assert!(!root.exists());
        to_calls(&yaml, Files::CreateWithDirs)?;
        assert_eq!(std::fs::metadata(&file)?.len(), 1 << 20);
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }

    #[test]
    fn a_mistyped_module_is_named_with_the_known_ones() {
        let e = to_calls(
            "bdevs:\n  - urin: {name: D, filename: /x, size_mib: 4}\n",
            Files::Leave,
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "YAML config: unknown bdev module urin; known: malloc, null, uring, aio, error, delay, nvme"
            )
        );
    }
}
