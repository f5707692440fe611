//! The kernel lab (tests/vm/, docs/kernel-lab.md): Debian's kernel boots
//! under QEMU with this build's `ferrothin` visible, and the scenarios in
//! tests/vm/scenarios run inside it, one boot for all of them: the kernel's
//! NBD client, ext4 and xfs on thin volumes, dm-thin on the same pools,
//! the kernel's NVMe/TCP host on our target and our NVMe bdev on the
//! kernel's NVMe/TCP target (nvmet-host: a port unlinked under writes).
//!
//! One test, one boot (a boot costs about a minute under software
//! emulation). It needs what ci/setup installs (qemu-system-x86,
//! linux-image-amd64, virtme-ng, ...) and has the machine to itself
//! (.config/nextest.toml). FERROTHIN_LAB_SCENARIOS (space-separated names)
//! runs only those.

use std::process::Command;
use std::time::Instant;

/// Seconds the whole guest may take before the runner kills it; below
/// nextest's limit for this test, so the runner's report is what shows.
const GUEST_TIMEOUT_S: u32 = 1200;

#[test]
fn kernel_lab_scenarios_pass_in_a_guest() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = std::env::temp_dir().join(format!("ferrothin-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{repo}/tests/vm/run.py"))
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_ferrothin"))
        .args(["--timeout", &GUEST_TIMEOUT_S.to_string()])
        .arg("--out")
        .arg(&out);
    if let Ok(names) = std::env::var("FERROTHIN_LAB_SCENARIOS") {
        cmd.args(names.split_whitespace());
    }
    let t0 = Instant::now();
    let o = cmd
        .output()
        .expect("python3 tests/vm/run.py (ci/setup installs what it needs)");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "kernel lab failed ({}, {:.0} s):\n{stdout}\n{stderr}",
        o.status,
        t0.elapsed().as_secs_f64()
    );
    // Every scenario reported a pass (the runner checks it too; this is the
    // test's own look at the results file, so a runner that said nothing
    // cannot pass).
    let results = std::fs::read_to_string(out.join("results")).expect("results file");
    assert!(!results.trim().is_empty(), "no scenario ran:\n{stdout}");
    assert!(
        results
            .lines()
            .all(|l| l.split_whitespace().nth(1) == Some("pass")),
        "{results}\n{stdout}"
    );
    println!("{stdout}");
    println!("kernel lab: {:.0} s wall", t0.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&out);
}
