//! Running `ferrothin tgt` in tests: a daemon in its own scratch directory
//! on its own RPC socket, stopped (killed if need be) when dropped, even
//! when the test fails; a small JSON-RPC client; spdk-rpc; and a minimal
//! NBD client for tests that need exact control of the wire; SPDK's own
//! programs as peers (`spdk`).

#![allow(dead_code)]

pub mod nbd;
pub mod nvme;
pub mod spdk;
pub mod spdk_peer;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Removes the scratch directories of test processes that have ended.
/// A test that stops its daemon keeps its directory for whatever it
/// checks after (and a failed test's is what one debugs), so directories
/// are left behind; the next run clears those whose process is gone,
/// never one of a test still running (in this or another checkout).
fn sweep_dead_scratch() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ft-tgt-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

pub fn scratch(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_dead_scratch);
    let d = std::env::temp_dir().join(format!(
        "ft-tgt-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Tgt {
    child: Option<Child>,
    pub dir: PathBuf,
    pub sock: PathBuf,
    keep_dir: bool,
}

impl Tgt {
    /// Starts a daemon with `args` (after `tgt -r SOCK`) in a new scratch
    /// directory and waits for its RPC socket.
    pub fn start(name: &str, args: &[&str]) -> Tgt {
        Tgt::start_in(scratch(name), args)
    }

    pub fn start_in(dir: PathBuf, args: &[&str]) -> Tgt {
        Tgt::start_with(None, dir, args)
    }

    /// `start_in` with another binary than this build's (`None`: this
    /// build's).
    pub fn start_with(bin: Option<std::ffi::OsString>, dir: PathBuf, args: &[&str]) -> Tgt {
        let sock = dir.join("rpc.sock");
        let log = std::fs::File::create(dir.join("tgt.log")).unwrap();
        let bin = bin.unwrap_or_else(|| env!("CARGO_BIN_EXE_ferrothin").into());
        let child = Command::new(bin)
            .args(["--log-level", "info", "tgt", "-r"])
            .arg(&sock)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ferrothin tgt");
        let mut t = Tgt {
            child: Some(child),
            dir,
            sock,
            keep_dir: false,
        };
        t.wait_ready();
        t
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if UnixStream::connect(&self.sock).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("tgt exited at start ({st}):\n{}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "tgt did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tgt.log")).unwrap_or_default()
    }

    /// One JSON-RPC call over our own client.
    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        rpc_at(&self.sock, method, params)
    }

    /// Sends bytes, returns the first JSON value answered.
    pub fn raw(&self, bytes: &[u8]) -> Value {
        raw_at(&self.sock, bytes)
    }

    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.rpc(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e:?}\n{}", self.log()))
    }

    /// Runs SPDK's spdk-rpc with our plugin on this daemon.
    pub fn spdk_rpc(&self, args: &[&str]) -> Output {
        spdk_rpc_at(&self.sock, args)
    }

    /// spdk-rpc that must succeed; its stdout.
    pub fn spdk_ok(&self, args: &[&str]) -> String {
        spdk_ok_at(&self.sock, args)
    }

    /// Exports `bdev` on a free loopback port; returns "127.0.0.1:PORT".
    pub fn export(&self, bdev: &str, name: Option<&str>, addr: Option<&str>) -> String {
        let mut p = json!({"bdev_name": bdev, "nbd_device": addr.unwrap_or("127.0.0.1:0")});
        if let Some(n) = name {
            p["export_name"] = json!(n);
        }
        self.ok("nbd_start_disk", p).as_str().unwrap().to_string()
    }

    /// SIGTERM and wait; the daemon's exit status must be success, and
    /// every module must have closed cleanly (a pool or controller left
    /// open at shutdown is a bug unless a test set out to break it).
    pub fn stop(self) {
        let log = self.dir.join("tgt.log");
        self.stop_unclean_allowed();
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            !text.contains("not closed cleanly"),
            "the daemon did not shut down cleanly:\n{text}"
        );
    }

    /// `stop` for a test that broke what sits under a pool or a
    /// controller on purpose: some module may fail to close cleanly.
    pub fn stop_unclean_allowed(mut self) {
        self.keep_dir = true;
        let mut c = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let st = wait_timeout(&mut c, Duration::from_secs(60));
        assert!(
            st.is_some_and(|s| s.success()),
            "tgt did not stop cleanly: {st:?}\n{}",
            self.log()
        );
    }

    /// SIGKILL: no shutdown at all.
    pub fn kill9(mut self) {
        self.keep_dir = true;
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.keep_dir = true;
        let mut c = self.child.take().unwrap();
        let st = wait_timeout(&mut c, within);
        if st.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        st
    }
}

/// One JSON-RPC call on the socket `sock` (ours or an SPDK program's).
pub fn rpc_at(sock: &Path, method: &str, params: Value) -> Result<Value, (i64, String)> {
    let mut req = json!({"jsonrpc": "2.0", "method": method, "id": 1});
    if !params.is_null() {
        req["params"] = params;
    }
    let v = raw_at(sock, serde_json::to_vec(&req).unwrap().as_slice());
    if let Some(e) = v.get("error") {
        return Err((
            e["code"].as_i64().unwrap_or(0),
            e["message"].as_str().unwrap_or("").to_string(),
        ));
    }
    Ok(v["result"].clone())
}

/// Sends bytes to the RPC socket `sock`, returns the first JSON value
/// answered.
pub fn raw_at(sock: &Path, bytes: &[u8]) -> Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
        if let Some(Ok(v)) = it.next() {
            return v;
        }
    }
}

/// Runs SPDK's spdk-rpc, with our plugin, on the RPC socket `sock`.
pub fn spdk_rpc_at(sock: &Path, args: &[&str]) -> Output {
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rpc");
    Command::new("spdk-rpc")
        .env("PYTHONPATH", plugin)
        .arg("-s")
        .arg(sock)
        .args(["--plugin", "ferrothin_plugin"])
        .args(args)
        .output()
        .expect("spdk-rpc (pip install spdk; ci/setup installs it)")
}

/// spdk-rpc on `sock` that must succeed; its stdout.
pub fn spdk_ok_at(sock: &Path, args: &[&str]) -> String {
    let o = spdk_rpc_at(sock, args);
    assert!(
        o.status.success(),
        "spdk-rpc {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn wait_timeout(c: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.keep_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The embedded default config's flags in a test: its pool file in
/// `data`, both exports on free loopback ports; `create_missing` lets it
/// make `data`.
pub fn default_args(data: &Path, create_missing: bool) -> Vec<&str> {
    let mut a = vec![
        "--data-dir",
        data.to_str().expect("a UTF-8 scratch path"),
        "--nbd-listen",
        "127.0.0.1:0",
        "--nvmf-listen",
        "127.0.0.1:0",
    ];
    if create_missing {
        a.push("--create-missing");
    }
    a
}

/// Runs `ferrothin tgt -r DIR/rpc.sock ARGS` that is expected to stop by
/// itself within `within`: its exit status and its log (stderr). A daemon
/// still running then is killed and the test fails.
pub fn tgt_must_exit(
    dir: &Path,
    args: &[&str],
    within: Duration,
) -> (std::process::ExitStatus, String) {
    let log = dir.join("tgt.log");
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrothin"))
        .args(["--log-level", "info", "tgt", "-r"])
        .arg(dir.join("rpc.sock"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start ferrothin tgt");
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return (st, std::fs::read_to_string(&log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            panic!(
                "tgt {args:?} kept running:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command; panics with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A writable JSON config with a malloc bdev (or more) and nothing else.
pub fn json_config(dir: &Path, calls: Value) -> PathBuf {
    let p = dir.join("start.json");
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": calls}]});
    std::fs::write(&p, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    p
}

/// Writes `dir/cfg.yaml`: a 64 MiB pool file as uring bdev Disk0, pool0 on
/// it (one-device layout) with `commit_ms`, the given volumes (YAML flow
/// mappings, one per line) and an NBD export of `export` on a free port.
pub fn pool_yaml(dir: &Path, commit_ms: u64, volumes: &[&str], export: &str) -> PathBuf {
    let vols: String = volumes.iter().map(|v| format!("      - {v}\n")).collect();
    let yaml = format!(
        "bdevs:\n  - uring: {{name: Disk0, filename: \"{}/pool.img\", size_mib: 64}}\n\
         pools:\n  - name: pool0\n    metadata_bdev: Disk0\n    commit_period_ms: {commit_ms}\n\
         \x20   volumes:\n{vols}\
         nbd:\n  - {{bdev: {export}, listen: \"127.0.0.1:0\"}}\n",
        dir.display()
    );
    let p = dir.join("cfg.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

impl Tgt {
    /// The listen address of the first NBD export.
    pub fn first_export(&self) -> String {
        self.ok("nbd_get_disks", Value::Null)[0]["nbd_device"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Tgt {
    /// Malloc bdevs Meta (8 MiB) and Data (`data_blocks` of 4 KiB) and a
    /// pool `pool` on them with its metadata on core 1, plus `extra`
    /// pool options.
    /// A one-device pool `pool0` on a 64 MiB file `pool.img` in the
    /// daemon's directory, with volume `vol` (16 MiB, device 0) exported
    /// over NBD: the file and a client of the export.
    pub fn file_pool_with_volume(&self) -> (PathBuf, nbd::Client) {
        let img = self.dir.join("pool.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(64 << 20))
            .expect("the pool file");
        self.ok(
            "bdev_uring_create",
            json!({"name": "Disk0", "filename": img}),
        );
        self.ok(
            "bdev_thin_pool_create",
            json!({"name": "pool0", "metadata_bdev": "Disk0"}),
        );
        self.ok(
            "bdev_thin_create",
            json!({"pool": "pool0", "name": "vol", "size_in_mib": 16, "dev_id": 0}),
        );
        let addr = self.export("vol", None, None);
        let c = nbd::Client::connect(&addr, "vol").expect("an NBD client of vol");
        (img, c)
    }

    pub fn malloc_pool(&self, pool: &str, data_blocks: u64, extra: Value) {
        self.ok(
            "bdev_malloc_create",
            json!({"name": "Meta", "num_blocks": 2048, "block_size": 4096}),
        );
        self.ok(
            "bdev_malloc_create",
            json!({"name": "Data", "num_blocks": data_blocks, "block_size": 4096}),
        );
        let mut p =
            json!({"name": pool, "metadata_bdev": "Meta", "data_bdev": "Data", "metadata_core": 1});
        if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        self.ok("bdev_thin_pool_create", p);
    }
}
