//! The NVMe/TCP target under SPDK's own hosts: spdk_nvme_identify reads
//! what the controller, its namespaces and the discovery log say;
//! spdk_nvme_perf drives reads and writes on one and four queues; raw
//! sockets send what no host should (garbage, a PDU of the wrong type,
//! a PDU cut short, a Connect to a subsystem that does not exist) while
//! a perf run goes on beside them.
//!
//! A malloc bdev and a thin volume are exported as two subsystems on one
//! listener, configured with SPDK's own nvmf RPC methods through SPDK's
//! own client (spdk-rpc).
//!
//! `ferrothin tgt` runs on 2 reactors (`FERROTHIN_NVMF_PEER_MASK=0x1`: on
//! one). `FERROTHIN_NVMF_PEER_TARGET=spdk` runs every check against SPDK's
//! nvmf_tgt instead of `ferrothin tgt` (a thin-provisioned lvol stands
//! in for the thin volume). That is how these checks were proven before
//! our target existed, and how to tell a wrong check from a wrong
//! target. Where the two targets may rightly differ, each check says
//! what it accepts from which.
//!
//! The SPDK programs come from `shared/peers/spdk` (tests/tgt_util/spdk.rs);
//! a missing one fails the test.

mod tgt_util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use exports::nvmf::pdu::{CapsuleCmd, Framing, Header, IcResp, Pdu, Role, TermReq};
use exports::nvmf::receive::{Limits, Received, Receiver};
use exports::nvmf::sqe::{Connect, ConnectData, Cqe, Fabrics, Sgl1, Status};
use serde_json::{json, Value};
use tgt_util::spdk::{excerpt, free_port, host, trid, Host, HostRun, SpdkApp};
use tgt_util::Tgt;

const MALLOC_NQN: &str = "nqn.2016-06.io.ferrothin:malloc0";
const THIN_NQN: &str = "nqn.2016-06.io.ferrothin:thin0";
const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:6c1b0c2e-1d0f-4a43-9a8e-5f3c1e0d2b47";
/// Both namespaces are 64 MiB.
const NS_BYTES: u64 = 64 << 20;

/// The tests of this file one at a time under `cargo test` (nextest runs
/// each in its own process, alone: .config/nextest.toml): each runs a
/// target and SPDK hosts that poll their cores, and side by side they
/// would only slow each other down on a 2-core machine.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ferrothin,
    Spdk,
}

fn kind() -> Kind {
    match std::env::var("FERROTHIN_NVMF_PEER_TARGET").as_deref() {
        Err(_) | Ok("") | Ok("ferrothin") => Kind::Ferrothin,
        Ok("spdk") => Kind::Spdk,
        Ok(other) => panic!("FERROTHIN_NVMF_PEER_TARGET={other}: ferrothin or spdk"),
    }
}

enum Daemon {
    Ferrothin(Tgt),
    Spdk(SpdkApp),
}

/// One subsystem as created: what identify and the RPCs must report.
struct Subsys {
    nqn: &'static str,
    serial: &'static str,
    model: &'static str,
    bdev: String,
    thin: bool,
}

/// A target exporting a malloc bdev and a thin volume as two subsystems
/// on one TCP listener on 127.0.0.1.
struct Target {
    daemon: Daemon,
    kind: Kind,
    port: u16,
    subsystems: Vec<Subsys>,
    /// Where host programs write their output.
    dir: std::path::PathBuf,
}

impl Target {
    fn start(name: &str) -> Target {
        let kind = kind();
        // Every host program, before anything runs: a missing one fails
        // here, with where it was looked for.
        for p in ["spdk_nvme_identify", "spdk_nvme_perf"] {
            tgt_util::spdk::peer(p);
        }
        let (daemon, dir) = match kind {
            Kind::Ferrothin => {
                // Two reactors, so the qpairs of a 4-queue host spread
                // over cores; a thin pool's metadata goes to the last.
                // FERROTHIN_NVMF_PEER_MASK=0x1 runs it all on one.
                let mask = std::env::var("FERROTHIN_NVMF_PEER_MASK");
                let mask = mask.as_deref().unwrap_or("0x3");
                let t = Tgt::start(name, &["--empty", "-m", mask]);
                let dir = t.dir.clone();
                (Daemon::Ferrothin(t), dir)
            }
            Kind::Spdk => {
                let a = SpdkApp::start(name, "nvmf_tgt", "0x1");
                let dir = a.dir.clone();
                (Daemon::Spdk(a), dir)
            }
        };
        let mut t = Target {
            daemon,
            kind,
            port: 0,
            subsystems: Vec::new(),
            dir,
        };
        t.rpc_cli(&["bdev_malloc_create", "-b", "Malloc0", "64", "4096"]);
        let thin_bdev = match &t.daemon {
            Daemon::Ferrothin(d) => {
                for (name, blocks) in [("Meta", 2048), ("Data", 32768)] {
                    d.ok(
                        "bdev_malloc_create",
                        json!({"name": name, "num_blocks": blocks, "block_size": 4096}),
                    );
                }
                d.ok(
                    "bdev_thin_pool_create",
                    json!({"name": "pool0", "metadata_bdev": "Meta", "data_bdev": "Data"}),
                );
                d.ok(
                    "bdev_thin_create",
                    json!({"pool": "pool0", "name": "thin0", "size_in_mib": 64}),
                );
                "thin0".to_string()
            }
            Daemon::Spdk(_) => {
                t.rpc_cli(&["bdev_malloc_create", "-b", "Base", "128", "4096"]);
                t.rpc_cli(&["bdev_lvol_create_lvstore", "Base", "lvs0"]);
                t.rpc_cli(&["bdev_lvol_create", "-l", "lvs0", "-t", "thin0", "64"]);
                "lvs0/thin0".to_string()
            }
        };
        t.subsystems = vec![
            Subsys {
                nqn: MALLOC_NQN,
                serial: "FT00000000000001",
                model: "ferrothin malloc",
                bdev: "Malloc0".into(),
                thin: false,
            },
            Subsys {
                nqn: THIN_NQN,
                serial: "FT00000000000002",
                model: "ferrothin thin volume",
                bdev: thin_bdev,
                thin: true,
            },
        ];
        t.rpc_cli(&["nvmf_create_transport", "-t", "TCP"]);
        for i in 0..t.subsystems.len() {
            let (nqn, serial, model, bdev) = {
                let s = &t.subsystems[i];
                (s.nqn, s.serial, s.model, s.bdev.clone())
            };
            t.rpc_cli(&[
                "nvmf_create_subsystem",
                nqn,
                "-a",
                "-s",
                serial,
                "-d",
                model,
            ]);
            t.rpc_cli(&["nvmf_subsystem_add_ns", nqn, &bdev]);
        }
        t.listen();
        t.check_get_subsystems();
        t
    }

    /// Adds the listener of both subsystems on a free port; a port taken
    /// between choosing and binding it is retried with another.
    fn listen(&mut self) {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let p = port.to_string();
            let o = tgt_util::spdk_rpc_at(
                self.sock(),
                &[
                    "nvmf_subsystem_add_listener",
                    MALLOC_NQN,
                    "-t",
                    "tcp",
                    "-a",
                    "127.0.0.1",
                    "-s",
                    &p,
                ],
            );
            if o.status.success() {
                self.port = port;
                self.rpc_cli(&[
                    "nvmf_subsystem_add_listener",
                    THIN_NQN,
                    "-t",
                    "tcp",
                    "-a",
                    "127.0.0.1",
                    "-s",
                    &p,
                ]);
                return;
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        panic!("no listener after 5 ports: {last}\n{}", self.log());
    }

    /// nvmf_get_subsystems reports each subsystem as created.
    fn check_get_subsystems(&self) {
        let all: Value = serde_json::from_str(&self.rpc_cli(&["nvmf_get_subsystems"])).unwrap();
        for s in &self.subsystems {
            let got = all
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["nqn"] == s.nqn)
                .unwrap_or_else(|| panic!("{} not in nvmf_get_subsystems: {all:#}", s.nqn));
            assert_eq!(got["subtype"], "NVMe", "{got:#}");
            assert_eq!(got["serial_number"], s.serial, "{got:#}");
            assert_eq!(got["model_number"], s.model, "{got:#}");
            assert_eq!(got["allow_any_host"], true, "{got:#}");
            let ns = got["namespaces"].as_array().unwrap();
            assert_eq!(ns.len(), 1, "{got:#}");
            assert_eq!(ns[0]["nsid"], 1, "{got:#}");
            // SPDK names an lvol's bdev by its UUID; its alias is what
            // was given.
            if self.kind == Kind::Ferrothin || !s.thin {
                assert_eq!(ns[0]["bdev_name"], s.bdev.as_str(), "{got:#}");
            }
            let la = &got["listen_addresses"];
            // A string, as SPDK's RPCs give it.
            let port = self.port.to_string();
            assert_eq!(la.as_array().map(|a| a.len()), Some(1), "{got:#}");
            assert!(
                la[0]["trtype"]
                    .as_str()
                    .unwrap_or("")
                    .eq_ignore_ascii_case("tcp")
                    && la[0]["adrfam"]
                        .as_str()
                        .unwrap_or("")
                        .eq_ignore_ascii_case("ipv4")
                    && la[0]["traddr"] == "127.0.0.1"
                    && la[0]["trsvcid"].as_str() == Some(port.as_str()),
                "{got:#}"
            );
        }
    }

    fn sock(&self) -> &std::path::Path {
        match &self.daemon {
            Daemon::Ferrothin(t) => &t.sock,
            Daemon::Spdk(a) => &a.sock,
        }
    }

    /// SPDK's spdk-rpc on the target; must succeed; its stdout.
    fn rpc_cli(&self, args: &[&str]) -> String {
        let o = tgt_util::spdk_rpc_at(self.sock(), args);
        assert!(
            o.status.success(),
            "spdk-rpc {args:?}: {}\n{}\n--- target log\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn log(&self) -> String {
        match &self.daemon {
            Daemon::Ferrothin(t) => t.log(),
            Daemon::Spdk(a) => a.log(),
        }
    }

    fn alive(&mut self) -> bool {
        match &mut self.daemon {
            Daemon::Ferrothin(t) => t.alive(),
            Daemon::Spdk(a) => a.alive(),
        }
    }

    /// SIGTERM; the target must exit 0. The scratch directory (logs,
    /// the hosts' output) goes too: a failed test keeps it.
    fn stop(self) {
        match self.daemon {
            Daemon::Ferrothin(t) => t.stop(),
            Daemon::Spdk(a) => a.stop(),
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn trid(&self, nqn: &str) -> String {
        trid(self.port, nqn)
    }

    fn identify(&self, nqn: &str) -> HostRun {
        let r = host(
            &self.dir,
            "spdk_nvme_identify",
            &["-r", &self.trid(nqn)],
            Duration::from_secs(60),
        );
        if !r.status.is_some_and(|s| s.success()) {
            panic!("{r:#?}\n--- target log\n{}", self.log());
        }
        r
    }

    /// spdk_nvme_perf on core 0 against both subsystems, in the
    /// background; `extra` are more of perf's flags.
    fn perf(&self, depth: u32, workload: &str, seconds: u32, queues: u32, extra: &[&str]) -> Host {
        let (q, t, p) = (depth.to_string(), seconds.to_string(), queues.to_string());
        let (a, b) = (self.trid(MALLOC_NQN), self.trid(THIN_NQN));
        let mut args = vec![
            "-c", "0x1", "-q", &q, "-o", "4096", "-w", workload, "-t", &t, "-P", &p, "-r", &a,
            "-r", &b,
        ];
        args.extend_from_slice(extra);
        Host::spawn(&self.dir, "spdk_nvme_perf", &args)
    }
}

/// The value of `key` on the first line of `text` that starts with it
/// (after indentation) and a colon.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix(key)?;
        Some(rest.trim_start().strip_prefix(':')?.trim())
    })
}

fn field_ok<'a>(text: &'a str, key: &str) -> &'a str {
    field(text, key).unwrap_or_else(|| panic!("no {key:?} in\n{}", excerpt(text, "")))
}

/// The leading number of a value like "16384 (0GiB)".
fn number(v: &str) -> u64 {
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {v:?}"))
}

/// The blocks of `text` that start with a line starting with `head`,
/// each up to the next such line.
fn blocks<'a>(text: &'a str, head: &str) -> Vec<&'a str> {
    let starts: Vec<usize> = text
        .match_indices(head)
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n')
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &i)| &text[i..starts.get(k + 1).copied().unwrap_or(text.len())])
        .collect()
}

/// A namespace as spdk_nvme_identify prints it.
#[derive(Debug)]
struct Namespace {
    size: u64,
    capacity: u64,
    utilization: u64,
    lba_bytes: u64,
    thin: String,
    /// NGUID and UUID, where printed.
    ids: Vec<String>,
}

/// The one active namespace of an identify run (NSID 1).
fn namespace(r: &HostRun) -> Namespace {
    let active = r
        .stdout
        .split_once("Active Namespaces")
        .unwrap_or_else(|| panic!("no active namespaces:\n{}", r.stdout))
        .1;
    let ns = blocks(active, "Namespace ID:");
    assert_eq!(ns.len(), 1, "one namespace expected:\n{active}");
    let ns = ns[0];
    assert_eq!(field_ok(ns, "Namespace ID"), "1", "{ns}");
    // "Current LBA Format: LBA Format #00", then that format's line:
    // "LBA Format #00: Data Size:  4096  Metadata Size:     0".
    let current = field_ok(ns, "Current LBA Format");
    let format_line = ns
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{current}:")))
        .unwrap_or_else(|| panic!("no line for {current}:\n{ns}"));
    let lba_bytes = number(
        format_line
            .split_once("Data Size:")
            .unwrap_or_else(|| panic!("{format_line}"))
            .1,
    );
    Namespace {
        size: number(field_ok(ns, "Size (in LBAs)")),
        capacity: number(field_ok(ns, "Capacity (in LBAs)")),
        utilization: number(field_ok(ns, "Utilization (in LBAs)")),
        lba_bytes,
        thin: field_ok(ns, "Thin Provisioning").to_string(),
        ids: ["NGUID", "UUID", "EUI64"]
            .iter()
            .filter_map(|k| field(ns, k).map(|v| format!("{k} {}", v.to_lowercase())))
            .collect(),
    }
}

/// Identify Controller and Identify Namespace through
/// spdk_nvme_identify: serial, model and NQN as created; both namespaces
/// 64 MiB with NCAP = NSZE and identifiers of their own; the malloc bdev
/// fully used and not thin. The thin volume (protocols.md A.12.4):
/// NSFEAT THINP set and NUSE its allocated blocks, 0 when new and more
/// after writes. SPDK's nvmf_tgt does not set THINP for a thin lvol and
/// reports NUSE = NSZE; that is what is expected of it.
#[test]
fn identify_reports_controller_namespaces_and_thin_provisioning() {
    let _s = serial();
    let t = Target::start("nvmf-identify");
    let mut fresh_thin_use = None;
    let mut ids = Vec::new();
    for s in &t.subsystems {
        let r = t.identify(s.nqn);
        let out = &r.stdout;
        assert!(
            out.contains(&format!(
                "NVMeoF Controller at TCP (addr:127.0.0.1 subnqn:{})",
                s.nqn
            )),
            "{}",
            excerpt(out, "")
        );
        assert_eq!(field_ok(out, "Serial Number"), s.serial);
        assert_eq!(field_ok(out, "Model Number"), s.model);
        assert_eq!(field_ok(out, "Subsystem NQN"), s.nqn);
        let ns = namespace(&r);
        assert_eq!(ns.size * ns.lba_bytes, NS_BYTES, "{ns:?} ({})", s.nqn);
        assert_eq!(ns.capacity, ns.size, "NCAP = NSZE: {ns:?} ({})", s.nqn);
        // Linux ignores a namespace whose identifier another one has
        // (protocols.md D.1).
        assert!(!ns.ids.is_empty(), "no namespace identifier: {ns:?}");
        for id in &ns.ids {
            assert!(!ids.contains(id), "{id} twice ({})", s.nqn);
            ids.push(id.clone());
        }
        if s.thin && t.kind == Kind::Ferrothin {
            assert_eq!(
                ns.thin,
                "Supported",
                "{ns:?}\n{}",
                excerpt(out, "Thin Provisioning")
            );
            assert_eq!(ns.utilization, 0, "a new thin volume holds nothing: {ns:?}");
            fresh_thin_use = Some(ns.utilization);
        } else {
            assert_eq!(ns.thin, "Not Supported", "{ns:?} ({})", s.nqn);
            assert_eq!(ns.utilization, ns.size, "{ns:?} ({})", s.nqn);
        }
    }
    // Writes allocate the thin volume's blocks; NUSE follows.
    let w = t
        .perf(32, "randwrite", 1, 1, &[])
        .wait(Duration::from_secs(60));
    w.assert_ok();
    let ns = namespace(&t.identify(THIN_NQN));
    match t.kind {
        Kind::Ferrothin => assert!(
            ns.utilization > fresh_thin_use.unwrap() && ns.utilization <= ns.size,
            "NUSE after random writes: {ns:?}"
        ),
        Kind::Spdk => assert_eq!(ns.utilization, ns.size, "{ns:?}"),
    }
    t.stop();
}

/// What a perf run must show: exit 0, no error or failure reported, and
/// I/O done on both namespaces.
fn check_perf(t: &Target, r: &HostRun) {
    let ctx = || format!("{r:#?}\n--- target log\n{}", excerpt(&t.log(), ""));
    assert!(r.status.is_some_and(|s| s.success()), "{}", ctx());
    let all = r.all().to_lowercase();
    assert!(
        !all.contains("error") && !all.contains("fail"),
        "errors reported: {}",
        ctx()
    );
    for nqn in [MALLOC_NQN, THIN_NQN] {
        let line = r
            .stdout
            .lines()
            // Names are padded to one width: "NSID 1   from core  0:".
            .find(|l| l.contains(&format!("subnqn:{nqn}) NSID 1 ")) && l.contains(" from core "))
            .unwrap_or_else(|| panic!("no result for {nqn}: {}", ctx()));
        let iops: f64 = line
            .rsplit_once(':')
            .and_then(|(_, v)| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no IOPS in {line:?}"));
        assert!(iops > 0.0, "no I/O on {nqn}: {}", ctx());
    }
    assert!(r.stdout.contains("\nTotal "), "{}", ctx());
}

/// spdk_nvme_perf, 4 KiB random reads and writes at depth 1 and 128 on
/// 1 and 4 I/O queues per namespace, both namespaces at once; then at
/// depth 32 with header and data digests.
#[test]
fn perf_reads_and_writes_on_one_and_four_queues() {
    let _s = serial();
    let t = Target::start("nvmf-perf");
    for queues in [1, 4] {
        for depth in [1, 128] {
            for w in ["randread", "randwrite"] {
                let r = t
                    .perf(depth, w, 2, queues, &[])
                    .wait(Duration::from_secs(90));
                check_perf(&t, &r);
            }
        }
    }
    // Header and data digests (CRC32C on every PDU), as negotiated in
    // ICReq/ICResp.
    for w in ["randread", "randwrite"] {
        let r = t
            .perf(32, w, 2, 1, &["-H", "-I"])
            .wait(Duration::from_secs(90));
        check_perf(&t, &r);
    }
    t.stop();
}

/// The discovery controller's log lists both subsystems on the listener.
#[test]
fn discovery_lists_both_subsystems() {
    let _s = serial();
    let t = Target::start("nvmf-discovery");
    let r = t.identify(DISCOVERY_NQN);
    let out = &r.stdout;
    let page = out
        .split_once("Discovery Log Page")
        .unwrap_or_else(|| panic!("no discovery log:\n{}", excerpt(out, "")))
        .1;
    let entries = blocks(page, "Discovery Log Entry ");
    assert_eq!(
        number(field_ok(page, "Number of Records")),
        entries.len() as u64,
        "{page}"
    );
    for s in &t.subsystems {
        let e = entries
            .iter()
            .find(|e| field(e, "NVM Subsystem Qualified Name") == Some(s.nqn))
            .unwrap_or_else(|| panic!("{} not in the discovery log:\n{page}", s.nqn));
        assert!(field_ok(e, "Transport Type").starts_with("3 "), "{e}");
        assert!(field_ok(e, "Address Family").starts_with("1 "), "{e}");
        assert!(field_ok(e, "Subsystem Type").starts_with("2 "), "{e}");
        assert_eq!(
            field_ok(e, "Transport Service Identifier"),
            t.port.to_string(),
            "{e}"
        );
        assert_eq!(field_ok(e, "Transport Address"), "127.0.0.1", "{e}");
    }
    t.stop();
}

/// A raw NVMe/TCP connection: bytes out, PDUs in through the PDU layer's
/// own receiver (host side).
struct Wire {
    s: TcpStream,
    rx: Receiver,
    pending: Vec<u8>,
}

/// What came back.
#[derive(Debug)]
enum Next {
    Pdu(Pdu),
    /// The target closed the connection.
    Closed,
    /// Nothing came for the time given.
    Quiet,
    /// Bytes that are no valid PDU (why, shown by Debug in a failure).
    Invalid(#[allow(dead_code)] String),
}

impl Wire {
    fn connect(port: u16) -> Wire {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        Wire {
            s,
            rx: Receiver::new(
                Role::Host,
                Limits {
                    max_data: 1 << 20,
                    max_in_capsule: 8192,
                },
            ),
            pending: Vec::new(),
        }
    }

    /// Sends bytes; a target that already closed may refuse them.
    fn send(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }

    /// Waits up to `wait` for more bytes and adds them to `pending`;
    /// `Closed` or `Quiet` when none came.
    fn fill(&mut self, wait: Duration) -> Result<(), Next> {
        self.s.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 4096];
        match self.s.read(&mut b) {
            Ok(0) => Err(Next::Closed),
            Ok(n) => {
                self.pending.extend_from_slice(&b[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(Next::Quiet)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                Err(Next::Closed)
            }
            Err(e) => panic!("read: {e}"),
        }
    }

    /// The next PDU, waiting at most `wait` for each read.
    fn next(&mut self, wait: Duration) -> Next {
        loop {
            if !self.pending.is_empty() {
                let mut input = &self.pending[..];
                let r = self.rx.feed(&mut input);
                let used = self.pending.len() - input.len();
                self.pending.drain(..used);
                match r {
                    Some(Ok(Received::Pdu(p))) => return Next::Pdu(p),
                    Some(Ok(other)) => return Next::Invalid(format!("{other:?}")),
                    Some(Err(f)) => return Next::Invalid(format!("{f}")),
                    None if used == 0 => {
                        return Next::Invalid(format!(
                            "{} bytes the receiver takes no more of ({:?})",
                            self.pending.len(),
                            self.rx.state()
                        ))
                    }
                    None => {}
                }
            }
            if let Err(n) = self.fill(wait) {
                return n;
            }
        }
    }

    /// ICReq (hand-encoded, A.4: no digests, HPDA 0, MAXR2T 0), then the
    /// ICResp, which must be sound.
    fn initialize(&mut self) {
        let mut ic = vec![0u8; 128];
        ic[..8].copy_from_slice(&[0x00, 0x00, 128, 0x00, 128, 0, 0, 0]);
        self.send(&ic);
        match self.next(Duration::from_secs(10)) {
            Next::Pdu(Pdu {
                header:
                    Header::IcResp(IcResp {
                        pfv: 0,
                        cpda: 0,
                        hdgst: false,
                        ddgst: false,
                        maxh2cdata,
                    }),
                ..
            }) if maxh2cdata >= IcResp::MIN_MAXH2CDATA && maxh2cdata % 4 == 0 => {}
            other => panic!("ICResp expected: {other:?}"),
        }
        assert!(self.rx.negotiated(Framing::default()));
    }

    /// Connect on the admin queue to `subnqn`; its completion.
    fn connect_admin(&mut self, cid: u16, subnqn: &str) -> Cqe {
        let sqe = Fabrics::Connect(Connect {
            recfmt: 0,
            qid: 0,
            sqsize: 31,
            cattr: 0,
            kato: 0,
        })
        .to_sqe(
            cid,
            Sgl1::InCapsule {
                offset: 0,
                length: ConnectData::LEN as u32,
            },
        );
        let data = ConnectData {
            hostid: *b"ferrothin-peers!",
            cntlid: 0xFFFF,
            subnqn: subnqn.into(),
            hostnqn: HOST_NQN.into(),
        }
        .encode()
        .unwrap();
        let mut w = Vec::new();
        Pdu::new(Header::CapsuleCmd(CapsuleCmd { sqe }), data)
            .encode(&Framing::default(), &mut w)
            .unwrap();
        self.send(&w);
        match self.next(Duration::from_secs(10)) {
            Next::Pdu(Pdu {
                header: Header::CapsuleResp(r),
                ..
            }) => {
                assert_eq!(r.cqe.cid, cid, "{r:?}");
                r.cqe
            }
            other => panic!("CapsuleResp expected: {other:?}"),
        }
    }
}

/// Bytes that each end a connection with a C2HTermReq: what to send
/// (after an ICReq/ICResp exchange or not), the FES values accepted and
/// the FEI expected (A.2.3's table).
struct Abuse {
    what: &'static str,
    after_ic: bool,
    bytes: Vec<u8>,
    fes: &'static [u16],
    fei: u32,
}

fn abuses() -> Vec<Abuse> {
    let mut capsule_first = vec![0x04, 0x00, 72, 0x00, 72, 0, 0, 0];
    capsule_first.resize(72, 0);
    let mut icresp = vec![0x01, 0x00, 128, 0x00, 128, 0, 0, 0];
    icresp.resize(128, 0);
    let mut short_icreq = vec![0x00, 0x00, 128, 0x00, 64, 0, 0, 0];
    short_icreq.resize(128, 0);
    vec![
        // Not a PDU type at all: an invalid header field (FES 1) or, as
        // SPDK says, no ICReq where one was due (FES 2).
        Abuse {
            what: "garbage instead of an ICReq",
            after_ic: false,
            bytes: [0xde, 0xad, 0xbe, 0xef].repeat(64),
            fes: &[0x01, 0x02],
            fei: 0,
        },
        Abuse {
            what: "a CapsuleCmd before the ICReq",
            after_ic: false,
            bytes: capsule_first,
            fes: &[0x02],
            fei: 0,
        },
        Abuse {
            what: "an ICResp (a controller's PDU type) from the host",
            after_ic: true,
            bytes: icresp,
            fes: &[0x01],
            fei: 0,
        },
        Abuse {
            what: "an ICReq whose PLEN (64) cuts its own header short",
            after_ic: false,
            bytes: short_icreq,
            fes: &[0x01],
            fei: 4,
        },
    ]
}

/// After the TermReq: nothing more, and the connection closed (ours
/// must close it; SPDK's nvmf_tgt waits for the host to, protocols.md
/// A.5, so from it silence for a second is accepted).
fn expect_end(w: &mut Wire, kind: Kind, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let wait = match kind {
            Kind::Ferrothin => deadline.saturating_duration_since(Instant::now()),
            Kind::Spdk => Duration::from_secs(1),
        };
        match w.fill(wait.max(Duration::from_millis(1))) {
            Ok(()) => {}
            Err(Next::Closed) => break,
            Err(Next::Quiet) if kind == Kind::Spdk => break,
            Err(n) => panic!("{what}: the target did not close the connection: {n:?}"),
        }
    }
    assert!(
        w.pending.is_empty(),
        "{what}: {} bytes after the TermReq: {:02x?}",
        w.pending.len(),
        &w.pending[..w.pending.len().min(64)]
    );
}

/// Raw sockets misbehave while spdk_nvme_perf runs on both subsystems:
/// garbage, a PDU the host may not send, a PDU out of sequence, a PDU
/// whose PLEN cuts its header, a stream cut inside a PDU, a Connect to a
/// subsystem that does not exist. Each bad connection gets a C2HTermReq
/// with the right FES and the offending header's start and is closed
/// (or, the cut stream, closed without a word); the Connect gets SCT 1
/// SC 0x82 pointing at SUBNQN, and a Connect to a real subsystem on the
/// same connection then succeeds. The perf run finishes without an
/// error, the target lives and identify still works.
#[test]
fn bad_input_ends_only_its_own_connection() {
    let _s = serial();
    let mut t = Target::start("nvmf-abuse");
    let perf = t.perf(16, "randread", 10, 2, &[]);
    // Let perf connect before anything else does.
    std::thread::sleep(Duration::from_secs(2));

    for a in abuses() {
        let mut w = Wire::connect(t.port);
        if a.after_ic {
            w.initialize();
        }
        w.send(&a.bytes);
        match w.next(Duration::from_secs(10)) {
            Next::Pdu(Pdu {
                header: Header::C2HTermReq(TermReq { fes, fei }),
                data,
            }) => {
                assert!(
                    a.fes.contains(&fes.0),
                    "{}: FES {fes:?}, one of {:?} expected",
                    a.what,
                    a.fes
                );
                assert_eq!(fei, a.fei, "{}: FEI", a.what);
                // The offending header: its common header at least.
                // SPDK copies its whole header buffer, zeros past what
                // it read; ours copies what it read, no more.
                let copy_ok = match t.kind {
                    Kind::Ferrothin => data.len() >= 8 && data[..] == a.bytes[..data.len()],
                    Kind::Spdk => data.len() >= 8 && data[..8] == a.bytes[..8],
                };
                assert!(copy_ok, "{}: TermReq data {:02x?}", a.what, data);
            }
            other => panic!("{}: C2HTermReq expected, got {other:?}", a.what),
        }
        expect_end(&mut w, t.kind, a.what);
    }

    // A CapsuleCmd cut short: its header claims 1 KiB of data, 40 bytes
    // of the SQE come, then the host half-closes. Nothing is wrong with
    // what came, so no TermReq; the connection just ends.
    let mut w = Wire::connect(t.port);
    w.initialize();
    let mut cut = vec![0x04, 0x00, 72, 72];
    cut.extend_from_slice(&(72u32 + 1024).to_le_bytes());
    cut.resize(48, 0);
    w.send(&cut);
    w.s.shutdown(Shutdown::Write).unwrap();
    expect_end(&mut w, t.kind, "a CapsuleCmd cut short");

    // A Connect to an unknown NQN: Connect Invalid Parameters, IATTR 1
    // (in the data), IPO 256 (SUBNQN). The connection stays usable.
    let mut w = Wire::connect(t.port);
    w.initialize();
    let cqe = w.connect_admin(7, "nqn.2016-06.io.ferrothin:nothing-here");
    assert_eq!(
        (cqe.status.sct(), cqe.status.sc()),
        (Status::SCT_COMMAND_SPECIFIC, 0x82),
        "{cqe:?}"
    );
    assert_eq!(cqe.dw0, 256 | 1 << 16, "IPO 256 and IATTR 1: {cqe:?}");
    let cqe = w.connect_admin(8, MALLOC_NQN);
    assert!(cqe.status.is_success(), "{cqe:?}");
    assert_ne!(cqe.dw0 & 0xFFFF, 0xFFFF, "a CNTLID: {cqe:?}");
    drop(w);

    let r = perf.wait(Duration::from_secs(60));
    check_perf(&t, &r);
    assert!(t.alive(), "the target died:\n{}", t.log());
    for s in &t.subsystems {
        t.identify(s.nqn);
    }
    t.stop();
}
