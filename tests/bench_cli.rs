//! `ferrothin bench` end to end: the real binary, real configs, bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn ferrothin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrothin"))
        .args(args)
        .output()
        .expect("run ferrothin")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrothin-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_config(dir: &std::path::Path, body: &str) -> PathBuf {
    let p = dir.join("bench.json");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn verify_over_every_module_on_two_cores() {
    let dir = scratch("verify");
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let cfg = format!(
        r#"{{"subsystems": [{{"subsystem": "bdev", "config": [
            {{"method": "bdev_malloc_create", "params": {{"name": "M0", "num_blocks": 4096, "block_size": 4096}}}},
            {{"method": "bdev_malloc_create", "params": {{"name": "M1", "num_blocks": 4096, "block_size": 512}}}},
            {{"method": "bdev_error_create", "params": {{"base_name": "M1"}}}},
            {{"method": "bdev_malloc_create", "params": {{"name": "M2", "num_blocks": 2048, "block_size": 4096}}}},
            {{"method": "bdev_delay_create", "params": {{"name": "D0", "base_bdev_name": "M2",
               "avg_read_latency": 20, "p99_read_latency": 50, "avg_write_latency": 20, "p99_write_latency": 50}}}},
            {{"method": "bdev_uring_create", "params": {{"name": "U0", "filename": "{}", "block_size": 4096}}}}
        ]}}]}}"#,
        img.display()
    );
    let cfg = write_config(&dir, &cfg);
    let out = ferrothin(&[
        "bench",
        "--json",
        cfg.to_str().unwrap(),
        "-w",
        "verify",
        "-q",
        "8",
        "-o",
        "4k",
        "-t",
        "1",
        "-m",
        "0x3",
        "--idle",
        "--output",
        "json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let results = v["results"].as_array().unwrap();
    let mut jobs: Vec<&str> = results.iter().map(|r| r["job"].as_str().unwrap()).collect();
    jobs.sort();
    // Claimed bases (M1, M2) are not leaves and are not run.
    assert_eq!(jobs, vec!["D0", "EE_M1", "M0", "U0"]);
    for r in results {
        assert_eq!(r["status"], "finished", "{r}");
        assert_eq!(r["miscompares"], 0, "{r}");
        assert_eq!(r["core_mask"], "0x3");
        assert!(r["iops"].as_f64().unwrap() > 0.0, "{r}");
        for k in [
            "p50_latency_us",
            "p99_latency_us",
            "p99_99_latency_us",
            "avg_latency_us",
        ] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k} in {r}");
        }
    }
    assert_eq!(v["core_count"], 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn text_report_with_prefill_and_a_mixed_workload() {
    let out = ferrothin(&[
        "bench",
        "-T",
        "Malloc0",
        "-w",
        "randrw",
        "-M",
        "70",
        "-t",
        "1",
        "-q",
        "4",
        "--prefill",
        "--idle",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Running I/O for 1 seconds..."), "{stdout}");
    assert!(stdout.contains(
        "Job: Malloc0 (Core Mask 0x1, workload: randrw, percentage: 70, depth: 4, IO size: 4096)"
    ));
    assert!(
        stdout.contains("percentiles (us)") && stdout.contains(" Total "),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("IOPS"),
        "a progress line each second"
    );
}

/// Runs `bench -T Malloc0 -w randwrite --idle --output json` plus `extra`;
/// the first result.
fn randwrite_json(extra: &[&str]) -> Value {
    let mut args = vec![
        "bench",
        "-T",
        "Malloc0",
        "-w",
        "randwrite",
        "--idle",
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = ferrothin(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["results"][0].clone()
}

#[test]
fn flush_every_reports_flush_latency_apart() {
    let r = randwrite_json(&["-t", "0.5", "-q", "8", "--flush-every", "100"]);
    let f = &r["flush"];
    let flushes = f["count"].as_u64().unwrap();
    let iops = r["iops"].as_f64().unwrap();
    assert!(flushes > 0, "{r}");
    // About one flush per 100 I/Os (the count of each is per the run time).
    let per = iops * r["runtime"].as_f64().unwrap() / flushes as f64;
    assert!((50.0..200.0).contains(&per), "{per} I/Os per flush: {r}");
    assert!(f["p99_us"].as_f64().unwrap() >= f["p50_us"].as_f64().unwrap());
    // Without the option there is no flush report.
    assert!(randwrite_json(&["-t", "0.2"]).get("flush").is_none());
}

#[test]
fn prefill_writes_every_block_in_order_even_for_random_workloads() {
    let dir = scratch("prefill");
    let cfg = write_config(
        &dir,
        r#"{"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M", "num_blocks": 2048, "block_size": 4096}},
            {"method": "bdev_malloc_create", "params": {"name": "D", "num_blocks": 32768, "block_size": 4096}},
            {"method": "bdev_thin_pool_create", "params": {"name": "p", "metadata_bdev": "M", "data_bdev": "D",
                                                          "zero_new_blocks": false, "metadata_core": 1}},
            {"method": "bdev_thin_create", "params": {"pool": "p", "name": "v", "size_in_mib": 64}}]}]}"#,
    );
    // One 64 KiB I/O per thin block, then reads (which provision nothing):
    // random prefill offsets would leave about a third of the blocks out.
    let out = ferrothin(&[
        "bench",
        "--json",
        cfg.to_str().unwrap(),
        "-m",
        "0x3",
        "-w",
        "randread",
        "-o",
        "64k",
        "-t",
        "0.2",
        "--prefill",
        "--idle",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("thin pool p: 1024 blocks provisioned"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn alternate_runs_targets_in_turns_and_pairs_them() {
    let out = ferrothin(&[
        "bench",
        "-T",
        "Malloc0",
        "-T",
        "Null0",
        "-w",
        "randread",
        "-t",
        "0.4",
        "--alternate",
        "0.1",
        "--idle",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 2, "{v}");
    for x in r {
        // Four turns of 0.1 s each, folded: about 0.4 s each, not 0.1.
        let t = x["runtime"].as_f64().unwrap();
        assert!((0.3..0.8).contains(&t), "runtime {t}: {x}");
        assert!(x["iops"].as_f64().unwrap() > 0.0, "{x}");
    }
    // The first target is the reference: its ratio to itself is 1; null
    // does no copy, so it beats malloc in every turn.
    assert_eq!(r[0]["paired_ratio"].as_f64(), Some(1.0), "{v}");
    assert!(r[1]["paired_ratio"].as_f64().unwrap() > 1.0, "{v}");
    // Without the option there is no ratio.
    assert!(randwrite_json(&["-t", "0.2"]).get("paired_ratio").is_none());
}

#[test]
fn unsupported_workloads_are_skipped_by_name() {
    let out = ferrothin(&["bench", "-T", "Null0", "-w", "flush", "-t", "1", "--idle"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Skipping Null0 because it does not support flush"),
        "{err}"
    );
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = scratch("bad");
    let malformed = write_config(
        &dir,
        "{ \"subsystems\": [ {\"subsystem\": \"bdev\", \"config\": [ {\"method\": ",
    );
    let bad_method = dir.join("m.json");
    std::fs::write(&bad_method, r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"X","num_blocks":0,"block_size":512}}]}]}"#).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["bench", "-q", "0", "-t", "1"], "queue depth"),
        (vec!["bench", "-t", "0"], "run time"),
        (vec!["bench", "-w", "sideways"], "unknown workload"),
        (vec!["bench", "-o", "4q"], "invalid size"),
        (
            vec!["bench", "-o", "1000", "-T", "Malloc0", "-t", "1"],
            "not a multiple",
        ),
        (vec!["bench", "-w", "rw", "-t", "1"], "read percentage"),
        (
            vec!["bench", "-w", "rw", "-M", "101", "-t", "1"],
            "over 100",
        ),
        (
            vec!["bench", "-T", "NoSuchBdev", "-t", "1"],
            "no bdev named NoSuchBdev",
        ),
        (vec!["bench", "-m", "0xZZ", "-t", "1"], "core mask"),
        (
            vec!["bench", "-t", "1", "--alternate", "0"],
            "--alternate needs a positive slice",
        ),
        (
            vec!["bench", "--json", "/nonexistent/ferrothin.json"],
            "cannot read",
        ),
        (
            vec!["bench", "--json", malformed.to_str().unwrap()],
            "not valid JSON",
        ),
        (
            vec!["bench", "--json", bad_method.to_str().unwrap()],
            "bdev_malloc_create",
        ),
    ];
    for (args, want) in cases {
        let out = ferrothin(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
