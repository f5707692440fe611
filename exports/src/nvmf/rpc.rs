//! SPDK's nvmf methods, with its names, parameters, results and error
//! shapes, so `spdk-rpc` drives them unchanged; and the nvmf subsystem's
//! save_config entries. Decoding is relaxed (unknown keys ignored) where
//! SPDK's is: nvmf_create_transport, add_listener, add_ns, add_host.

use serde::Deserialize;
use serde_json::{json, Value};

use bdev::rpc::{RpcError, RpcResult};

use super::subsystem::{ListenAddr, SubsystemConfig};
use super::target::NvmfTarget;
use super::transport::TransportOpts;
use super::DISCOVERY_NQN;

pub const METHODS: &[&str] = &[
    "nvmf_create_transport",
    "nvmf_get_transports",
    "nvmf_create_subsystem",
    "nvmf_delete_subsystem",
    "nvmf_subsystem_add_ns",
    "nvmf_subsystem_remove_ns",
    "nvmf_subsystem_add_listener",
    "nvmf_subsystem_remove_listener",
    "nvmf_subsystem_add_host",
    "nvmf_subsystem_remove_host",
    "nvmf_subsystem_allow_any_host",
    "nvmf_get_subsystems",
    "nvmf_subsystem_get_controllers",
    "nvmf_subsystem_get_qpairs",
    "nvmf_subsystem_get_listeners",
    "nvmf_get_stats",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubsystem {
    nqn: String,
    serial_number: Option<String>,
    model_number: Option<String>,
    #[serde(default)]
    max_namespaces: Option<u32>,
    #[serde(default)]
    allow_any_host: bool,
    #[serde(default)]
    ana_reporting: bool,
    min_cntlid: Option<u16>,
    max_cntlid: Option<u16>,
    #[allow(dead_code)]
    tgt_name: Option<String>,
    #[allow(dead_code)]
    admin_label: Option<String>,
    #[allow(dead_code)]
    dmrsl: Option<u32>,
    #[allow(dead_code)]
    wzsl: Option<u8>,
    #[serde(default)]
    passthrough: bool,
    #[serde(default)]
    enable_nssr: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nqn {
    nqn: String,
    #[allow(dead_code)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
struct NsParams {
    bdev_name: String,
    #[serde(default)]
    nsid: u32,
    nguid: Option<String>,
    eui64: Option<String>,
    uuid: Option<String>,
}

#[derive(Deserialize)]
struct AddNs {
    nqn: String,
    namespace: NsParams,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNs {
    nqn: String,
    nsid: u32,
    #[allow(dead_code)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
struct Address {
    trtype: String,
    traddr: String,
    #[serde(default)]
    trsvcid: String,
    adrfam: Option<String>,
}

#[derive(Deserialize)]
struct Listener {
    nqn: String,
    listen_address: Address,
    #[serde(default)]
    secure_channel: bool,
}

#[derive(Deserialize)]
struct Host {
    nqn: String,
    host: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowAny {
    nqn: String,
    allow_any_host: bool,
    #[allow(dead_code)]
    tgt_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Filter {
    nqn: Option<String>,
    trtype: Option<String>,
    #[allow(dead_code)]
    tgt_name: Option<String>,
}

fn bad(why: impl Into<String>) -> RpcError {
    let why = why.into();
    tracing::info!("nvmf: {why}");
    RpcError::invalid_params("Invalid parameters")
}

fn hex_bytes<const N: usize>(s: &str) -> Result<[u8; N], RpcError> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if digits.len() != N * 2 {
        return Err(bad(format!("{s:?} is not {} hex digits", N * 2)));
    }
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks(2).enumerate() {
        let t = std::str::from_utf8(pair).map_err(|_| bad("not hex"))?;
        out[i] = u8::from_str_radix(t, 16).map_err(|_| bad(format!("{s:?} is not hex")))?;
    }
    Ok(out)
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn listen_json(l: &ListenAddr) -> Value {
    json!({"trtype": l.trtype, "adrfam": l.adrfam, "traddr": l.traddr, "trsvcid": l.trsvcid})
}

fn address(a: Address) -> ListenAddr {
    ListenAddr {
        trtype: a.trtype,
        adrfam: a.adrfam.unwrap_or_else(|| "ipv4".into()),
        traddr: a.traddr,
        trsvcid: a.trsvcid,
    }
}

/// Decodes params as SPDK's nvmf methods do: a failure is -32602
/// "Invalid parameters" (what was wrong goes to the log).
fn decode<T: serde::de::DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    let v = params.unwrap_or_else(|| Value::Object(Default::default()));
    serde_json::from_value(v).map_err(|e| bad(format!("decoding params: {e}")))
}

fn nullable<T: serde::de::DeserializeOwned + Default>(
    params: Option<Value>,
) -> Result<T, RpcError> {
    match params {
        None => Ok(T::default()),
        p => decode(p),
    }
}

/// Runs an nvmf method; None when `method` is not one.
pub fn call(t: &NvmfTarget, method: &str, params: Option<Value>) -> Option<RpcResult> {
    let r = match method {
        "nvmf_create_transport" => decode::<TransportOpts>(params)
            .and_then(|o| t.create_transport(o).map_err(RpcError::from))
            .map(|()| json!(true)),
        "nvmf_get_transports" => nullable::<Filter>(params).and_then(|f| {
            let ts: Vec<Value> = t
                .transports()
                .into_iter()
                .filter(|o| f.trtype.as_ref().is_none_or(|x| x.eq_ignore_ascii_case(&o.trtype)))
                .map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
                .collect();
            if ts.is_empty() && f.trtype.is_some() {
                return Err(RpcError::new(-libc::ENODEV, "No such device"));
            }
            Ok(Value::Array(ts))
        }),
        "nvmf_create_subsystem" => decode::<CreateSubsystem>(params).and_then(create_subsystem(t)),
        "nvmf_delete_subsystem" => decode::<Nqn>(params)
            .and_then(|p| t.delete_subsystem(&p.nqn).map_err(RpcError::from))
            .map(|()| json!(true)),
        "nvmf_subsystem_add_ns" => decode::<AddNs>(params).and_then(|p| {
            let n = p.namespace;
            let nguid = n.nguid.as_deref().map(hex_bytes::<16>).transpose()?;
            let eui64 = n.eui64.as_deref().map(hex_bytes::<8>).transpose()?;
            let uuid = match n.uuid.as_deref() {
                Some(u) => Some(
                    u.parse::<bdev::Uuid>()
                        .map_err(|()| bad(format!("{u:?} is not a UUID")))?,
                ),
                None => None,
            };
            t.add_namespace(&p.nqn, &n.bdev_name, n.nsid, nguid, uuid, eui64)
                .map(Value::from)
                .map_err(RpcError::from)
        }),
        "nvmf_subsystem_remove_ns" => decode::<RemoveNs>(params)
            .and_then(|p| t.remove_namespace(&p.nqn, p.nsid).map_err(RpcError::from))
            .map(|()| json!(true)),
        "nvmf_subsystem_add_listener" => decode::<Listener>(params).and_then(|p| {
            if p.secure_channel {
                return Err(bad("TLS (secure_channel) is not served"));
            }
            t.add_listener(&p.nqn, address(p.listen_address))
                .map(|()| json!(true))
                .map_err(RpcError::from)
        }),
        "nvmf_subsystem_remove_listener" => decode::<Listener>(params).and_then(|p| {
            t.remove_listener(&p.nqn, address(p.listen_address))
                .map(|()| json!(true))
                .map_err(RpcError::from)
        }),
        "nvmf_subsystem_add_host" => decode::<Host>(params)
            .and_then(|p| t.add_host(&p.nqn, &p.host).map_err(RpcError::from))
            .map(|()| json!(true)),
        "nvmf_subsystem_remove_host" => decode::<Host>(params)
            .and_then(|p| t.remove_host(&p.nqn, &p.host).map_err(RpcError::from))
            .map(|()| json!(true)),
        "nvmf_subsystem_allow_any_host" => decode::<AllowAny>(params)
            .and_then(|p| t.allow_any_host(&p.nqn, p.allow_any_host).map_err(RpcError::from))
            .map(|()| json!(true)),
        "nvmf_get_subsystems" => nullable::<Filter>(params).and_then(|f| get_subsystems(t, f.nqn)),
        "nvmf_subsystem_get_controllers" => decode::<Nqn>(params).and_then(|p| {
            let cs = t.controllers(&p.nqn).map_err(RpcError::from)?;
            Ok(Value::Array(
                cs.iter()
                    .map(|c| {
                        json!({"cntlid": c.cntlid, "hostnqn": c.hostnqn,
                               "hostid": bdev::Uuid(c.hostid).to_string(),
                               "num_io_qpairs": c.io_queue_count()})
                    })
                    .collect(),
            ))
        }),
        "nvmf_subsystem_get_qpairs" => decode::<Nqn>(params).and_then(|p| {
            let cs = t.controllers(&p.nqn).map_err(RpcError::from)?;
            let mut out = Vec::new();
            for c in cs {
                let addr = json!({"trtype": "TCP", "adrfam": if c.listen.is_ipv4() {"IPv4"} else {"IPv6"},
                                  "traddr": c.listen.ip().to_string(), "trsvcid": c.listen.port().to_string()});
                for qid in std::iter::once(0).chain(c.io_queue_ids()) {
                    out.push(json!({"cntlid": c.cntlid, "qid": qid, "state": "active",
                                    "listen_address": addr}));
                }
            }
            Ok(Value::Array(out))
        }),
        "nvmf_subsystem_get_listeners" => decode::<Nqn>(params).and_then(|p| {
            let ls = if p.nqn == DISCOVERY_NQN {
                t.discovery_listeners()
            } else {
                t.subsystems()
                    .into_iter()
                    .find(|s| s.nqn == p.nqn)
                    .ok_or_else(|| RpcError::from(super::NvmfError::NoSubsystem(p.nqn.clone())))?
                    .listeners
            };
            Ok(Value::Array(
                ls.iter()
                    .map(|l| json!({"address": listen_json(l), "ana_state": "optimized"}))
                    .collect(),
            ))
        }),
        "nvmf_get_stats" => nullable::<Filter>(params).map(|_| stats(t)),
        _ => return None,
    };
    Some(r)
}

fn create_subsystem(t: &NvmfTarget) -> impl FnOnce(CreateSubsystem) -> RpcResult + '_ {
    move |p| {
        if p.ana_reporting || p.passthrough || p.enable_nssr {
            return Err(bad(
                "ana_reporting, passthrough and enable_nssr are not served",
            ));
        }
        let config = SubsystemConfig {
            serial_number: p
                .serial_number
                .unwrap_or_else(|| "00000000000000000000".into()),
            model_number: p
                .model_number
                .unwrap_or_else(|| "ferrothin thin volume".into()),
            max_namespaces: p.max_namespaces.unwrap_or(32),
            allow_any_host: p.allow_any_host,
            min_cntlid: p.min_cntlid.unwrap_or(1),
            max_cntlid: p.max_cntlid.unwrap_or(0xFFEF),
        };
        t.create_subsystem(&p.nqn, config)
            .map(|()| json!(true))
            .map_err(RpcError::from)
    }
}

fn get_subsystems(t: &NvmfTarget, filter: Option<String>) -> RpcResult {
    let mut out = Vec::new();
    if filter.as_deref().is_none_or(|n| n == DISCOVERY_NQN) {
        out.push(json!({"nqn": DISCOVERY_NQN, "subtype": "Discovery",
            "listen_addresses": t.discovery_listeners().iter().map(listen_json).collect::<Vec<_>>(),
            "allow_any_host": true, "hosts": []}));
    }
    for s in t.subsystems() {
        if filter.as_ref().is_some_and(|n| *n != s.nqn) {
            continue;
        }
        let c = &s.config;
        let mut v = json!({
            "nqn": s.nqn, "subtype": "NVMe",
            "listen_addresses": s.listeners.iter().map(listen_json).collect::<Vec<_>>(),
            "allow_any_host": c.allow_any_host,
            "hosts": s.hosts.iter().map(|h| json!({"nqn": h})).collect::<Vec<_>>(),
            "serial_number": c.serial_number, "model_number": c.model_number,
        });
        if c.max_namespaces != 0 {
            v["max_namespaces"] = json!(c.max_namespaces);
        }
        v["passthrough"] = json!(false);
        v["min_cntlid"] = json!(c.min_cntlid);
        v["max_cntlid"] = json!(c.max_cntlid);
        v["dmrsl"] = json!(0);
        v["wzsl"] = json!(0);
        v["namespaces"] = Value::Array(
            s.namespaces
                .iter()
                .map(|n| {
                    let mut ns = json!({"nsid": n.nsid, "bdev_name": n.bdev_name, "name": n.bdev_name,
                                        "nguid": hex_upper(&n.nguid)});
                    if let Some(e) = n.eui64 {
                        ns["eui64"] = json!(hex_upper(&e));
                    }
                    ns["uuid"] = json!(n.uuid.to_string());
                    ns
                })
                .collect(),
        );
        out.push(v);
    }
    if out.is_empty() {
        if let Some(n) = filter {
            return Err(RpcError::from(super::NvmfError::NoSubsystem(n)));
        }
    }
    Ok(Value::Array(out))
}

fn stats(t: &NvmfTarget) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &t.shared().stats;
    json!({"tick_rate": 1_000_000_000u64, "poll_groups": [{
        "name": "nvmf_tgt_poll_group_000",
        "admin_qpairs": s.admin_qpairs.load(Relaxed),
        "io_qpairs": s.io_qpairs.load(Relaxed),
        "current_admin_qpairs": s.current_admin_qpairs.load(Relaxed),
        "current_io_qpairs": s.current_io_qpairs.load(Relaxed),
        "pending_bdev_io": 0,
        "completions": 0,
        "transports": [{"trtype": "TCP"}]}]})
}

/// The nvmf subsystem's config: the transport, then each subsystem with
/// its namespaces, hosts and listeners, in the order they must be
/// replayed.
pub fn save(t: &NvmfTarget) -> Vec<Value> {
    let mut out = Vec::new();
    for o in t.transports() {
        out.push(json!({"method": "nvmf_create_transport",
                        "params": serde_json::to_value(o).unwrap_or(Value::Null)}));
    }
    for l in t.discovery_listeners() {
        out.push(json!({"method": "nvmf_subsystem_add_listener", "params": {
            "nqn": DISCOVERY_NQN, "listen_address": listen_json(&l)}}));
    }
    for s in t.subsystems() {
        let c = &s.config;
        out.push(json!({"method": "nvmf_create_subsystem", "params": {
            "nqn": s.nqn, "serial_number": c.serial_number, "model_number": c.model_number,
            "max_namespaces": c.max_namespaces, "allow_any_host": c.allow_any_host,
            "min_cntlid": c.min_cntlid, "max_cntlid": c.max_cntlid}}));
        for h in &s.hosts {
            out.push(
                json!({"method": "nvmf_subsystem_add_host", "params": {"nqn": s.nqn, "host": h}}),
            );
        }
        for n in &s.namespaces {
            let mut ns = json!({"bdev_name": n.bdev_name, "nsid": n.nsid,
                                "nguid": hex_upper(&n.nguid), "uuid": n.uuid.to_string()});
            if let Some(e) = n.eui64 {
                ns["eui64"] = json!(hex_upper(&e));
            }
            out.push(json!({"method": "nvmf_subsystem_add_ns", "params": {"nqn": s.nqn, "namespace": ns}}));
        }
        for l in &s.listeners {
            out.push(json!({"method": "nvmf_subsystem_add_listener", "params": {
                "nqn": s.nqn, "listen_address": listen_json(l)}}));
        }
    }
    out
}
