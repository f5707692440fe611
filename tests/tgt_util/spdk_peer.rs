//! SPDK's nvmf_tgt as the remote end of the NVMe bdev's tests: started
//! on its own RPC socket and core 0, configured with SPDK's own client
//! (spdk-rpc), killed when dropped, even when the test fails.
//!
//! The binary ships in `shared/peers/spdk` beside the repository (its
//! README says which SPDK); `FERROTHIN_SPDK_PEERS=DIR` points elsewhere.
//! A missing binary fails the test with the place it was looked for: a
//! skipped interoperability test would prove nothing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::spdk::{free_port as unused_port, peers_dir};

pub struct NvmfTgt {
    child: Option<Child>,
    pub dir: PathBuf,
    pub sock: PathBuf,
    transport: std::cell::Cell<bool>,
}

impl NvmfTgt {
    /// Starts nvmf_tgt (no hugepages, 1 GiB, core 0) and waits until its
    /// RPC socket answers.
    pub fn start(name: &str) -> NvmfTgt {
        let bin = peers_dir().join("nvmf_tgt");
        assert!(
            bin.is_file(),
            "SPDK's nvmf_tgt not found at {} (shipped in shared/peers/spdk beside the \
             repository; FERROTHIN_SPDK_PEERS=DIR points elsewhere)",
            bin.display()
        );
        let dir = super::scratch(name);
        let sock = dir.join("spdk.sock");
        let log = std::fs::File::create(dir.join("nvmf_tgt.log")).unwrap();
        let child = Command::new(&bin)
            // Colleagues' SPDK programs on this machine may hold core 0's
            // lock file: the core is shared, not claimed.
            .args([
                "--no-huge",
                "-s",
                "1024",
                "-m",
                "0x1",
                "--disable-cpumask-locks",
                "-r",
            ])
            .arg(&sock)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("nvmf_tgt starts");
        let mut t = NvmfTgt {
            child: Some(child),
            dir,
            sock,
            transport: std::cell::Cell::new(false),
        };
        let start = Instant::now();
        loop {
            if t.sock.exists() && t.try_rpc(&["rpc_get_methods"]).is_ok() {
                break;
            }
            let exited = t.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(30),
                "nvmf_tgt did not come up ({exited:?}):\n{}",
                t.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nvmf_tgt.log")).unwrap_or_default()
    }

    fn try_rpc(&self, args: &[&str]) -> Result<String, String> {
        let o = Command::new("spdk-rpc")
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("spdk-rpc (pip install spdk; ci/setup installs it)");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            Ok(out)
        } else {
            Err(format!("{out}{}", String::from_utf8_lossy(&o.stderr)))
        }
    }

    /// spdk-rpc on this target, which must succeed; its stdout.
    pub fn rpc(&self, args: &[&str]) -> String {
        self.try_rpc(args)
            .unwrap_or_else(|e| panic!("spdk-rpc {args:?}: {e}\n{}", self.log()))
    }

    /// A subsystem `nqn` with one malloc namespace per `(bdev, MiB,
    /// block size)`, listening on a free port of 127.0.0.1: the port.
    pub fn malloc_subsystem(&self, nqn: &str, namespaces: &[(&str, u64, u32)]) -> u16 {
        if !self.transport.replace(true) {
            self.rpc(&["nvmf_create_transport", "-t", "TCP"]);
        }
        self.rpc(&["nvmf_create_subsystem", nqn, "-a", "-s", "SPDK0001"]);
        for (b, mib, bs) in namespaces {
            self.rpc(&[
                "bdev_malloc_create",
                "-b",
                b,
                &mib.to_string(),
                &bs.to_string(),
            ]);
            self.rpc(&["nvmf_subsystem_add_ns", nqn, b]);
        }
        let port = unused_port();
        self.rpc(&[
            "nvmf_subsystem_add_listener",
            nqn,
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            &port.to_string(),
        ]);
        port
    }

    /// SIGKILL, as a crash or a pulled cable would end it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NvmfTgt {
    fn drop(&mut self) {
        // Whether the target died on its own before the test ended: a
        // crash of the peer reads as connection resets on our side.
        let died = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        self.kill();
        // A failing test's cause is often on the target's side: its log
        // goes to the test's output, which the harness shows on failure.
        if std::thread::panicking() || died.is_some() {
            eprintln!(
                "--- nvmf_tgt ({}) {} ---\n{}",
                self.dir.display(),
                died.map_or("was running".to_string(), |s| format!("had exited: {s}")),
                self.log()
            );
        }
    }
}
