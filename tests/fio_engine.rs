//! Debian's fio running job files on ferrothin bdevs through the fio
//! engine (`libferrothin_fio.so`, the `fio/` crate): verify on a thin
//! volume from two jobs, mixed I/O with trims and syncs, a thin pool in
//! files that is clean after fio and reads back through the daemon, and
//! jobs that must fail with a message instead of crashing fio.
//!
//! The engine is the workspace's build of it, beside this test's
//! `ferrothin` binary (`cargo build --workspace` makes both).

mod tgt_util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tgt_util::nbd::Client;
use tgt_util::{scratch, Tgt};

fn engine() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ferrothin")).with_file_name("libferrothin_fio.so");
    assert!(
        p.is_file(),
        "{} is missing: build the engine with `cargo build --workspace` (or -p ferrothin-fio)",
        p.display()
    );
    p
}

/// Writes `dir/bdev.json` with the `bdev` subsystem's `calls`.
fn config(dir: &Path, calls: Value) -> PathBuf {
    let p = dir.join("bdev.json");
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": calls}]});
    std::fs::write(&p, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    p
}

/// A thin pool on two RAM disks and a 64 MiB volume `thin0`.
fn thin_on_malloc(dir: &Path) -> PathBuf {
    config(
        dir,
        json!([
            {"method": "bdev_malloc_create", "params": {"name": "Meta0", "num_blocks": 4096, "block_size": 4096}},
            {"method": "bdev_malloc_create", "params": {"name": "Data0", "num_blocks": 32768, "block_size": 4096}},
            {"method": "bdev_thin_pool_create", "params": {"name": "pool0", "metadata_bdev": "Meta0",
                "data_bdev": "Data0", "block_size": 65536}},
            {"method": "bdev_thin_create", "params": {"pool": "pool0", "name": "thin0", "size_in_mib": 64}}
        ]),
    )
}

/// Runs fio on `job` (a job file's text; `ENGINE` and `CONFIG` in it are
/// replaced) in `dir`, killed after two minutes. fio must not have
/// crashed, whatever its exit status.
fn fio(dir: &Path, cfg: &Path, job: &str) -> Output {
    let text = job
        .replace("ENGINE", engine().to_str().unwrap())
        .replace("CONFIG", cfg.to_str().unwrap());
    let file = dir.join("job.fio");
    std::fs::write(&file, text).unwrap();
    // fio keeps verify state files in its working directory.
    let mut child = Command::new("fio")
        .current_dir(dir)
        .arg("--output-format=json")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fio (Debian's fio package, see ci/setup)");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "fio ran for two minutes:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code().is_some(),
        "fio died of a signal ({:?}):\n{err}",
        o.status
    );
    for bad in ["Assertion", "panicked", "internal error", "Segmentation"] {
        assert!(!err.contains(bad), "fio's stderr has {bad:?}:\n{err}");
    }
    o
}

/// fio's JSON report of a run that must have succeeded.
fn report(o: &Output) -> Value {
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "fio failed ({:?}):\n{}\n{out}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let start = out.find('{').expect("fio's JSON report");
    let r: Value = serde_json::from_str(&out[start..]).unwrap();
    for j in r["jobs"].as_array().unwrap() {
        assert_eq!(j["error"], 0, "{j}");
    }
    r
}

fn job<'a>(r: &'a Value, name: &str) -> Vec<&'a Value> {
    r["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["jobname"] == name)
        .collect()
}

const GLOBAL: &str = "[global]
ioengine=external:ENGINE
spdk_json_conf=CONFIG
thread=1
filename=thin0
verify_state_save=0
";

#[test]
fn verify_crc32c_on_a_thin_volume_from_two_jobs() {
    let dir = scratch("fio-verify");
    let cfg = thin_on_malloc(&dir);
    let o = fio(
        &dir,
        &cfg,
        &format!(
            "{GLOBAL}
verify=crc32c
verify_fatal=1
do_verify=1

[fixed]
rw=randwrite
bs=4k
iodepth=16
iodepth_batch_submit=4
iodepth_batch_complete_min=2
numjobs=2
size=16m
offset_increment=16m

[ranged]
rw=randwrite
bsrange=4k-64k
iodepth=8
offset=32m
size=16m
"
        ),
    );
    let r = report(&o);
    let fixed = job(&r, "fixed");
    assert_eq!(fixed.len(), 2, "numjobs=2 makes two jobs");
    for j in fixed.iter().chain(&job(&r, "ranged")) {
        assert_eq!(j["write"]["io_bytes"], 16 << 20, "{j}");
        assert_eq!(j["read"]["io_bytes"], 16 << 20, "verify read it all back");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mixed_io_with_trims_and_syncs_on_a_thin_volume() {
    let dir = scratch("fio-trim");
    let cfg = thin_on_malloc(&dir);
    let o = fio(
        &dir,
        &cfg,
        &format!(
            "{GLOBAL}
bs=4k
iodepth=16

# First: fio 3.33 issues only the trims of a trimwrite job that has an
# offset.
[trimwrite]
rw=randtrimwrite
verify=crc32c
verify_fatal=1
size=16m

[mixed]
rw=randrw
rwmixread=50
fsync=8
verify=crc32c
verify_fatal=1
offset=16m
size=16m

[trim]
rw=randtrim
offset=32m
size=16m
"
        ),
    );
    let r = report(&o);
    let mixed = job(&r, "mixed")[0];
    assert!(mixed["write"]["io_bytes"].as_u64().unwrap() > 0);
    assert!(
        mixed["sync"]["total_ios"].as_u64().unwrap() > 0,
        "fsync=8 issued flushes: {}",
        mixed["sync"]
    );
    assert_eq!(job(&r, "trim")[0]["trim"]["io_bytes"], 16 << 20);
    let tw = job(&r, "trimwrite")[0];
    assert_eq!(tw["trim"]["io_bytes"], 16 << 20);
    assert_eq!(tw["read"]["io_bytes"], 16 << 20, "verified after trims");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The bytes fio writes for `buffer_pattern=0xdeadbeef` (in the order
/// the hex digits give them).
const PATTERN: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];

#[test]
fn a_thin_pool_in_files_is_clean_after_fio_and_reads_back_in_the_daemon() {
    let dir = scratch("fio-file");
    let (meta, data) = (dir.join("meta.img"), dir.join("data.img"));
    std::fs::File::create(&meta)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    std::fs::File::create(&data)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let cfg = config(
        &dir,
        json!([
            {"method": "bdev_aio_create", "params": {"name": "Meta0", "filename": meta, "block_size": 4096}},
            {"method": "bdev_aio_create", "params": {"name": "Data0", "filename": data, "block_size": 4096}},
            {"method": "bdev_thin_pool_create", "params": {"name": "pool0", "metadata_bdev": "Meta0",
                "data_bdev": "Data0", "block_size": 65536}},
            // Made on the first load, reopened by id on the next.
            {"method": "bdev_thin_create", "params": {"pool": "pool0", "name": "thin0", "size_in_mib": 32,
                "dev_id": 1, "open_existing": true}}
        ]),
    );
    let o = fio(
        &dir,
        &cfg,
        &format!(
            "{GLOBAL}
[pattern]
rw=write
bs=64k
iodepth=8
offset=1m
size=8m
buffer_pattern=0xdeadbeef
"
        ),
    );
    let r = report(&o);
    assert_eq!(job(&r, "pattern")[0]["write"]["io_bytes"], 8 << 20);

    // The pool was committed and closed when the last job ended.
    let check = Command::new(env!("CARGO_BIN_EXE_ferrothin"))
        .arg("check")
        .arg(&meta)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "ferrothin check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // The daemon opens the same pool and serves what fio wrote.
    let t = Tgt::start("fio-file-tgt", &["--json", cfg.to_str().unwrap()]);
    let addr = t.export("thin0", None, None);
    let mut c = Client::connect(&addr, "thin0").unwrap();
    assert_eq!(c.size, 32 << 20);
    for off in (0..16u64 << 20).step_by(1 << 20) {
        let got = c.read(off, 1 << 20).unwrap();
        let written = (1 << 20..9 << 20).contains(&off);
        let ok = if written {
            got.chunks(4).all(|w| w == PATTERN)
        } else {
            got.iter().all(|&b| b == 0)
        };
        assert!(
            ok,
            "MiB at {off:#x} (written: {written}) starts {:02x?}",
            &got[..8]
        );
    }
    drop(c);
    let tgt_dir = t.dir.clone();
    t.stop();
    let _ = std::fs::remove_dir_all(&tgt_dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A job that cannot run fails with `needle` on stderr, and fio exits
/// with an error instead of crashing.
fn fails_with(dir: &Path, cfg: &Path, job: &str, needle: &str) {
    let o = fio(dir, cfg, job);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "fio succeeded:\n{err}");
    assert!(
        err.contains(needle),
        "{needle:?} not in fio's stderr:\n{err}"
    );
}

#[test]
fn jobs_that_cannot_run_fail_with_a_message() {
    let dir = scratch("fio-bad");
    let cfg = thin_on_malloc(&dir);
    let tail = "[j]\nrw=read\nbs=4k\nsize=1m\n";
    fails_with(
        &dir,
        &cfg,
        &format!(
            "{}{tail}",
            GLOBAL.replace("filename=thin0", "filename=nosuch0")
        ),
        "no bdev named \"nosuch0\"",
    );
    fails_with(
        &dir,
        Path::new("/nonexistent/bdev.json"),
        &format!("{GLOBAL}{tail}"),
        "cannot read spdk_json_conf /nonexistent/bdev.json",
    );
    fails_with(
        &dir,
        &cfg,
        &format!("{}{tail}", GLOBAL.replace("thread=1", "thread=0")),
        "thread=1 is required",
    );
    fails_with(
        &dir,
        &cfg,
        &format!("{}{tail}", GLOBAL.replace("spdk_json_conf=", "spdk_conf=")),
        "write spdk_json_conf=",
    );
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "{\"subsystems\": [{\"subsystem\": \"bdev\", \"config\": [{\"method\": \"bdev_malloc_create\", \"params\": {\"name\": \"M\"}}]}]}").unwrap();
    fails_with(
        &dir,
        &broken,
        &format!("{GLOBAL}{tail}"),
        "bdev_malloc_create",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
