//! ferrothin's lvol methods beside SPDK's spdk_tgt: the example script
//! written for SPDK runs unchanged on both, and one sequence of spdk-rpc
//! calls (every lvol method, its errors included) answers the same on
//! both, apart from UUID values and the differences docs/lvol.md lists.

mod tgt_util;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use tgt_util::spdk::SpdkApp;
use tgt_util::Tgt;

fn run_script(sock: &Path) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lvol/spdk_lvol_example.sh");
    Command::new("bash")
        .arg(script)
        .env("RPC", format!("spdk-rpc -s {}", sock.display()))
        .output()
        .expect("bash")
}

fn assert_script_ok(who: &str, o: &std::process::Output) {
    assert!(
        o.status.success(),
        "the example script failed on {who}:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("lvol example: ok"));
}

#[test]
fn the_spdk_example_script_runs_unchanged_on_both() {
    let spdk = SpdkApp::start("lvol-script-spdk", "spdk_tgt", "0x1");
    assert_script_ok("spdk_tgt", &run_script(&spdk.sock));
    spdk.stop();
    let t = Tgt::start("lvol-script", &["--empty", "-m", "0x3"]);
    assert_script_ok("ferrothin", &run_script(&t.sock));
    let dir = t.dir.clone();
    t.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// How a step's answers are compared.
#[derive(Clone, Copy)]
enum Cmp {
    /// The whole output (UUIDs replaced).
    Full,
    /// Only these keys of each element of the JSON array answered: the
    /// lvstore's cluster counts differ (thin pool metadata, docs/lvol.md).
    Keys(&'static [&'static str]),
    /// These keys of each bdev's `driver_specific.lvol`.
    LvolKeys(&'static [&'static str]),
}

/// SPDK's `driver_specific.lvol` keys ferrothin shows (docs/lvol.md).
const LVOL_KEYS: &[&str] = &[
    "lvol_store_uuid",
    "base_bdev",
    "thin_provision",
    "snapshot",
    "clone",
    "base_snapshot",
    "clones",
    "esnap_clone",
];

const LVS_KEYS: &[&str] = &["uuid", "name", "base_bdev", "block_size", "cluster_size"];
/// A bdev's identity and geometry (flush and driver_specific differ:
/// docs/lvol.md).
const BDEV_KEYS: &[&str] = &[
    "name",
    "aliases",
    "product_name",
    "uuid",
    "block_size",
    "num_blocks",
];

/// Replaces each UUID with `uuid#N`, N in order of first appearance, so
/// two targets' answers compare.
fn normalize(s: &str, seen: &mut HashMap<String, usize>) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if i + 36 <= b.len() && is_uuid(&b[i..i + 36]) {
            let u = s[i..i + 36].to_string();
            let n = seen.len();
            let n = *seen.entry(u).or_insert(n);
            out.push_str(&format!("uuid#{n}"));
            i += 36;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn is_uuid(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match i {
        8 | 13 | 18 | 23 => c == b'-',
        _ => c.is_ascii_hexdigit(),
    })
}

/// One call's answer: Ok(stdout) or Err((code, message)).
fn answer(sock: &Path, args: &[&str]) -> Result<String, (i64, String)> {
    let o = tgt_util::spdk_rpc_at(sock, args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if o.status.success() {
        return Ok(out);
    }
    let all = format!("{out}{}", String::from_utf8_lossy(&o.stderr));
    let at = all
        .rfind("response:")
        .unwrap_or_else(|| panic!("spdk-rpc {args:?} failed without a response: {all}"));
    let v: Value = serde_json::Deserializer::from_str(all[at + 9..].trim_start())
        .into_iter()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no error object: {all}"));
    Err((
        v["code"].as_i64().unwrap_or(0),
        v["message"].as_str().unwrap_or("").into(),
    ))
}

fn compared(
    a: Result<String, (i64, String)>,
    cmp: Cmp,
    seen: &mut HashMap<String, usize>,
) -> Value {
    match a {
        Err((code, msg)) => json!({"error": code, "message": msg}),
        Ok(out) => match cmp {
            Cmp::Full => json!(normalize(&out, seen).trim()),
            // The keys are picked first: UUIDs in the rest (SPDK's
            // driver_specific) must not shift the numbering.
            Cmp::Keys(keys) | Cmp::LvolKeys(keys) => {
                let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
                let nested = matches!(cmp, Cmp::LvolKeys(_));
                let picked: Vec<Value> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|e| {
                                if nested {
                                    &e["driver_specific"]["lvol"]
                                } else {
                                    e
                                }
                            })
                            .map(|e| {
                                keys.iter()
                                    .map(|k| (k.to_string(), e[*k].clone()))
                                    .collect::<serde_json::Map<_, _>>()
                                    .into()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let text = normalize(&Value::Array(picked).to_string(), seen);
                serde_json::from_str(&text).unwrap_or(Value::Null)
            }
        },
    }
}

/// The sequence: every lvol method, and each error section 2.4 lists.
fn steps() -> Vec<(Vec<&'static str>, Cmp)> {
    use Cmp::*;
    let s = |a: &[&'static str], c: Cmp| (a.to_vec(), c);
    vec![
        s(&["bdev_malloc_create", "-b", "Malloc0", "64", "512"], Full),
        s(&["bdev_malloc_create", "-b", "Malloc1", "64", "512"], Full),
        s(
            &[
                "bdev_lvol_create_lvstore",
                "Malloc0",
                "lvs0",
                "-c",
                "1048576",
            ],
            Full,
        ),
        s(&["bdev_lvol_create_lvstore", "Malloc1", "lvs0"], Full),
        s(&["bdev_lvol_create_lvstore", "nope", "lvsX"], Full),
        s(
            &["bdev_lvol_create_lvstore", "Malloc1", "lvsX", "-c", "256"],
            Full,
        ),
        s(&["bdev_lvol_create_lvstore", "Malloc0", "lvsX"], Full),
        s(&["bdev_lvol_get_lvstores"], Keys(LVS_KEYS)),
        s(&["bdev_lvol_get_lvstores", "-l", "nope"], Full),
        s(&["bdev_lvol_get_lvstores", "-l", "lvs0", "-u", "x"], Full),
        s(&["bdev_lvol_create", "-l", "lvs0", "-t", "lv0", "3"], Full),
        s(&["bdev_lvol_create", "-l", "lvs0", "-t", "lv0", "3"], Full),
        s(&["bdev_lvol_create", "-l", "lvs0", "big", "1000"], Full),
        s(&["bdev_lvol_create", "-l", "nope", "-t", "x", "1"], Full),
        s(&["bdev_lvol_create", "-l", "lvs0", "thick", "2"], Full),
        s(&["bdev_get_bdevs", "-b", "lvs0/lv0"], Keys(BDEV_KEYS)),
        s(&["bdev_lvol_snapshot", "lvs0/lv0", "snap0"], Full),
        s(&["bdev_lvol_snapshot", "lvs0/snap0", "snap1"], Full),
        s(&["bdev_lvol_snapshot", "lvs0/lv0", "thick"], Full),
        s(&["bdev_lvol_snapshot", "lvs0/nope", "s"], Full),
        s(&["bdev_lvol_resize", "lvs0/snap0", "8"], Full),
        s(&["bdev_lvol_clone", "lvs0/snap0", "c0"], Full),
        s(&["bdev_lvol_clone", "lvs0/lv0", "c1"], Full),
        s(&["bdev_lvol_clone", "lvs0/snap0", "c0"], Full),
        s(&["bdev_lvol_delete", "lvs0/snap0"], Full),
        s(&["bdev_lvol_delete", "lvs0/nope"], Full),
        s(&["bdev_lvol_rename", "lvs0/c0", "c0r"], Full),
        s(&["bdev_lvol_rename", "lvs0/c0r", "lv0"], Full),
        s(&["bdev_lvol_resize", "lvs0/lv0", "5"], Full),
        s(&["bdev_get_bdevs", "-b", "lvs0/lv0"], Keys(BDEV_KEYS)),
        s(&["bdev_lvol_set_read_only", "lvs0/thick"], Full),
        s(&["bdev_lvol_clone", "lvs0/thick", "tc"], Full),
        s(&["bdev_lvol_resize", "lvs0/thick", "8"], Full),
        s(&["bdev_malloc_create", "-b", "Malloc2", "4", "512"], Full),
        s(&["bdev_lvol_clone_bdev", "Malloc2", "lvs0", "e0"], Full),
        s(&["bdev_lvol_clone_bdev", "Malloc2", "nope", "e1"], Full),
        s(&["bdev_lvol_clone_bdev", "nope", "lvs0", "e1"], Full),
        s(&["bdev_lvol_clone_bdev", "lvs0/lv0", "lvs0", "e1"], Full),
        s(&["bdev_lvol_clone_bdev", "Malloc2", "lvs0", "e0"], Full),
        s(&["bdev_get_bdevs", "-b", "lvs0/e0"], Keys(BDEV_KEYS)),
        s(&["bdev_lvol_get_lvols"], Full),
        s(&["bdev_lvol_delete", "lvs0/e0"], Full),
        s(
            &["bdev_lvol_create", "-l", "lvs0", "-t", "base1", "3"],
            Full,
        ),
        s(&["bdev_lvol_snapshot", "lvs0/base1", "bs1"], Full),
        s(
            &["bdev_lvol_create", "-l", "lvs0", "-t", "orphan", "3"],
            Full,
        ),
        s(&["bdev_lvol_set_parent", "lvs0/orphan", "lvs0/bs1"], Full),
        s(&["bdev_lvol_set_parent", "lvs0/orphan", "lvs0/base1"], Full),
        s(&["bdev_lvol_set_parent", "lvs0/orphan", "lvs0/thick"], Full),
        s(&["bdev_lvol_set_parent", "lvs0/orphan", "lvs0/nope"], Full),
        s(&["bdev_lvol_set_parent", "lvs0/nope", "lvs0/bs1"], Full),
        s(&["bdev_lvol_get_lvols"], Full),
        s(&["bdev_lvol_delete", "lvs0/bs1"], Full),
        s(&["bdev_lvol_delete", "lvs0/orphan"], Full),
        s(&["bdev_lvol_delete", "lvs0/bs1"], Full),
        s(&["bdev_lvol_delete", "lvs0/base1"], Full),
        s(&["bdev_lvol_decouple_parent", "lvs0/thick"], Full),
        s(&["bdev_lvol_inflate", "lvs0/nope"], Full),
        s(&["bdev_lvol_decouple_parent", "lvs0/tc"], Full),
        s(&["bdev_lvol_inflate", "lvs0/c0r"], Full),
        s(&["bdev_lvol_get_lvols"], Full),
        s(&["bdev_get_bdevs", "-b", "lvs0/lv0"], LvolKeys(LVOL_KEYS)),
        s(&["bdev_get_bdevs", "-b", "lvs0/snap0"], LvolKeys(LVOL_KEYS)),
        s(&["bdev_get_bdevs", "-b", "lvs0/thick"], LvolKeys(LVOL_KEYS)),
        s(&["bdev_lvol_delete", "lvs0/c0r"], Full),
        s(&["bdev_lvol_delete", "lvs0/snap0"], Full),
        s(&["bdev_lvol_get_lvols", "-l", "lvs0"], Full),
        s(&["bdev_lvol_rename_lvstore", "lvs0", "lvsA"], Full),
        s(&["bdev_lvol_rename_lvstore", "nope", "lvs9"], Full),
        s(&["bdev_lvol_create_lvstore", "Malloc1", "lvs1"], Full),
        s(&["bdev_lvol_rename_lvstore", "lvsA", "lvs1"], Full),
        s(&["bdev_get_bdevs", "-b", "lvsA/lv0"], Keys(BDEV_KEYS)),
        s(&["bdev_lvol_grow_lvstore", "-l", "lvsA"], Full),
        s(&["bdev_lvol_delete", "lvsA/tc"], Full),
        s(&["bdev_lvol_delete", "lvsA/thick"], Full),
        s(&["bdev_lvol_delete", "lvsA/lv0"], Full),
        s(&["bdev_lvol_get_lvols", "-l", "lvsA"], Full),
        s(&["bdev_lvol_delete_lvstore", "-l", "lvsA"], Full),
        s(&["bdev_lvol_get_lvstores", "-l", "lvsA"], Full),
        s(&["bdev_lvol_delete_lvstore", "-u", "nope"], Full),
        s(&["bdev_lvol_get_lvstores"], Keys(LVS_KEYS)),
    ]
}

#[test]
fn the_same_calls_answer_the_same_on_spdk_tgt_and_ferrothin() {
    let spdk = SpdkApp::start("lvol-diff-spdk", "spdk_tgt", "0x1");
    let t = Tgt::start("lvol-diff", &["--empty", "-m", "0x3"]);
    let (mut seen_s, mut seen_f) = (HashMap::new(), HashMap::new());
    let mut differ = Vec::new();
    for (args, cmp) in steps() {
        let theirs = compared(answer(&spdk.sock, &args), cmp, &mut seen_s);
        let ours = compared(answer(&t.sock, &args), cmp, &mut seen_f);
        if theirs != ours {
            differ.push(format!(
                "{args:?}\n  spdk_tgt:  {theirs}\n  ferrothin: {ours}"
            ));
        }
    }
    assert!(differ.is_empty(), "answers differ:\n{}", differ.join("\n"));
    spdk.stop();
    let dir = t.dir.clone();
    t.stop();
    let _ = std::fs::remove_dir_all(dir);
}
