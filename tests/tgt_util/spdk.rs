//! SPDK's own programs as peers: nvmf_tgt as a reference target, and
//! spdk_nvme_identify and spdk_nvme_perf as NVMe/TCP hosts.
//!
//! The binaries are not built here: they ship in `shared/peers/spdk`
//! beside the repository (its README says which SPDK and which Debian
//! libraries). `FERROTHIN_SPDK_PEERS=DIR` points elsewhere. A missing
//! binary fails the test that needs it, with the place it was looked
//! for: a skipped interoperability test would pass without proving
//! anything.
//!
//! These machines have no hugepages, so every program gets `--no-huge`
//! and a memory size. Each process is killed when its guard is dropped,
//! so a failing test leaves no target spinning on a core.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where the SPDK programs are: `$FERROTHIN_SPDK_PEERS`, else the first
/// `shared/peers/spdk` found beside the repository or beside one of its
/// parent directories (a worktree under `/work/wt/NAME` finds
/// `/work/shared`, as `/work/main` does).
pub fn peers_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERROTHIN_SPDK_PEERS") {
        return PathBuf::from(d);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    repo.ancestors()
        .skip(1)
        .map(|a| a.join("shared/peers/spdk"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| repo.join("../shared/peers/spdk"))
}

/// The path of SPDK program `name`; fails the test if it is not there.
pub fn peer(name: &str) -> PathBuf {
    let p = peers_dir().join(name);
    assert!(
        p.is_file(),
        "SPDK peer program {} not found: the NVMe/TCP interoperability tests \
         need SPDK's own programs (shipped in shared/peers/spdk beside the \
         repository; set FERROTHIN_SPDK_PEERS=DIR to use another directory)",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1 (bound, read and released: another
/// process could take it before the target binds it, which the callers
/// accept on a machine where ports are not contended).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An NVMe/TCP transport id for SPDK's hosts (`-r`).
pub fn trid(port: u16, nqn: &str) -> String {
    format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{nqn}")
}

/// A running SPDK application (nvmf_tgt) on its own RPC socket in a
/// scratch directory, killed when dropped.
pub struct SpdkApp {
    child: Option<Child>,
    pub dir: PathBuf,
    pub sock: PathBuf,
}

impl SpdkApp {
    /// Starts `program` with `--no-huge -s 1024`, core mask `mask` and
    /// its RPC socket in a new scratch directory, and waits until its
    /// framework is initialised.
    pub fn start(name: &str, program: &str, mask: &str) -> SpdkApp {
        let dir = super::scratch(name);
        let sock = dir.join("spdk.sock");
        let log = std::fs::File::create(dir.join("app.log")).unwrap();
        let child = Command::new(peer(program))
            .args(["--no-huge", "-s", "1024", "-m", mask, "-r"])
            .arg(&sock)
            // Core lock files in /var/tmp are shared by every SPDK
            // process on the machine: another session's target on core 0
            // would make this one refuse to start.
            .arg("--disable-cpumask-locks")
            // No trace buffer: it lives in /dev/shm and a killed process
            // would leave it there.
            .args(["--num-trace-entries", "0"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let mut app = SpdkApp {
            child: Some(child),
            dir,
            sock,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::os::unix::net::UnixStream::connect(&app.sock).is_ok()
                && app.rpc("framework_wait_init", Value::Null).is_ok()
            {
                return app;
            }
            if let Some(Ok(Some(st))) = app.child.as_mut().map(|c| c.try_wait()) {
                panic!("{program} exited at start ({st}):\n{}", app.log());
            }
            assert!(
                Instant::now() < deadline,
                "{program} did not start:\n{}",
                app.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("app.log")).unwrap_or_default()
    }

    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        super::rpc_at(&self.sock, method, params)
    }

    /// spdk-rpc that must succeed; its stdout.
    pub fn spdk_ok(&self, args: &[&str]) -> String {
        super::spdk_ok_at(&self.sock, args)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM and wait: the application must exit with status 0.
    pub fn stop(mut self) {
        let mut c = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let st = wait_for(&mut c, Duration::from_secs(60));
        assert!(
            st.is_some_and(|s| s.success()),
            "SPDK application did not stop cleanly: {st:?}\n{}",
            self.log()
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for SpdkApp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits up to `within` for `c`; kills it if it is still running then.
fn wait_for(c: &mut Child, within: Duration) -> Option<ExitStatus> {
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

/// A host program (spdk_nvme_identify, spdk_nvme_perf) running in the
/// background, its output going to files; killed when dropped.
pub struct Host {
    child: Option<Child>,
    what: String,
    out: PathBuf,
    err: PathBuf,
}

/// What a host program did: its exit status (None: it was killed after
/// its time ran out) and its output.
#[derive(Debug)]
pub struct HostRun {
    pub what: String,
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl HostRun {
    /// Panics, with everything the program printed, unless it exited 0.
    pub fn assert_ok(&self) -> &HostRun {
        assert!(
            self.status.is_some_and(|s| s.success()),
            "{} exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// stdout and stderr together, for checks that do not care which.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl Host {
    /// Starts SPDK host program `program` with `--no-huge -s 512` and
    /// `args`; its output goes to files in `dir`.
    pub fn spawn(dir: &Path, program: &str, args: &[&str]) -> Host {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let out = dir.join(format!("{program}.{n}.out"));
        let err = dir.join(format!("{program}.{n}.err"));
        let what = format!("{program} --no-huge -s 512 {}", shell_words(args));
        let child = Command::new(peer(program))
            .args(["--no-huge", "-s", "512"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        Host {
            child: Some(child),
            what,
            out,
            err,
        }
    }

    /// Waits for the program, at most `within` (then kills it).
    pub fn wait(mut self, within: Duration) -> HostRun {
        let mut c = self.child.take().unwrap();
        let status = wait_for(&mut c, within);
        HostRun {
            what: self.what.clone(),
            status,
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a host program to its end (at most `within`).
pub fn host(dir: &Path, program: &str, args: &[&str], within: Duration) -> HostRun {
    Host::spawn(dir, program, args).wait(within)
}

/// Arguments as a shell would need them, for messages that show the
/// command to rerun by hand.
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Up to 2 KB of `s` from just before `around` (its start if absent):
/// for a failed assertion, as identify prints hundreds of lines.
pub fn excerpt(s: &str, around: &str) -> String {
    let Some(i) = s.find(around) else {
        return s.chars().take(3000).collect();
    };
    let (mut a, mut b) = (i.saturating_sub(200), (i + 2000).min(s.len()));
    while !s.is_char_boundary(a) {
        a -= 1;
    }
    while !s.is_char_boundary(b) {
        b += 1;
    }
    s[a..b].to_string()
}
