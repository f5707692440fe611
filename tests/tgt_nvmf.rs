//! The NVMe/TCP target from outside: SPDK's spdk-rpc drives the nvmf
//! methods and gets SPDK's answers; a host (tests/tgt_util/nvme.rs, on
//! our PDU layer) checks what the controller says, moves data both ways
//! and provokes the error answers; the same volume read over NBD shows
//! the same bytes. SPDK's own hosts (spdk_nvme_identify, spdk_nvme_perf)
//! and the kernel's are in tgt_nvmf_peers.rs and the kernel lab.

mod tgt_util;

use std::time::{Duration, Instant};

use exports::nvmf::sqe::{Sgl1, Sqe};
use serde_json::{json, Value};
use tgt_util::nvme::{Host, HOSTNQN};
use tgt_util::Tgt;

const NQN: &str = "nqn.2016-06.io.spdk:ft1";
/// The thin volume's block size.
const BS: u32 = 4096;

/// A daemon with a thin pool, volume `v` (64 MiB, 4 KiB blocks), and
/// subsystem NQN exporting it on a free port; the port.
fn exported(name: &str, extra_transport: Value) -> (Tgt, String) {
    let t = Tgt::start(name, &["--empty", "-m", "0x3"]);
    t.malloc_pool("pool", 16384, json!({"block_size": 65536}));
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "v", "size_in_mib": 64}),
    );
    let mut tr = json!({"trtype": "TCP"});
    if let (Some(a), Some(b)) = (tr.as_object_mut(), extra_transport.as_object()) {
        a.extend(b.clone());
    }
    t.ok("nvmf_create_transport", tr);
    t.ok(
        "nvmf_create_subsystem",
        json!({"nqn": NQN, "allow_any_host": true, "serial_number": "SN1"}),
    );
    assert_eq!(
        t.ok(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "v"}})
        ),
        json!(1)
    );
    let addr = listen(&t, NQN);
    (t, addr)
}

/// Adds a listener on a free port to `nqn`; "127.0.0.1:PORT".
fn listen(t: &Tgt, nqn: &str) -> String {
    t.ok(
        "nvmf_subsystem_add_listener",
        json!({"nqn": nqn, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "0"}}),
    );
    let subs = t.ok("nvmf_get_subsystems", json!({"nqn": nqn}));
    let port = subs[0]["listen_addresses"][0]["trsvcid"]
        .as_str()
        .unwrap()
        .to_string();
    format!("127.0.0.1:{port}")
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Whether NQN's controllers are all gone within five seconds (their
/// queues' tasks end on the reactors after the sockets close).
fn controllers_go(t: &Tgt) -> bool {
    (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        t.ok("nvmf_subsystem_get_controllers", json!({"nqn": NQN})) == json!([])
    })
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn spdk_rpc_drives_every_nvmf_method_with_spdks_answers() {
    let t = Tgt::start("nvmf-rpc", &["--empty"]);
    t.ok(
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 8192, "block_size": 512}),
    );
    t.spdk_ok(&["nvmf_create_transport", "-t", "tcp"]);
    assert_eq!(
        t.rpc("nvmf_create_transport", json!({"trtype": "TCP"})),
        Err((-32603, "Transport type 'TCP' already exists".into()))
    );
    assert_eq!(
        t.rpc("nvmf_create_transport", json!({"trtype": "PIGEON"})),
        Err((-32602, "Invalid transport type 'PIGEON'".into()))
    );
    let tr = t.ok("nvmf_get_transports", Value::Null);
    assert_eq!(tr[0]["trtype"], "TCP");
    assert_eq!(tr[0]["max_queue_depth"], 128);

    t.spdk_ok(&[
        "nvmf_create_subsystem",
        NQN,
        "-a",
        "-s",
        "SPDK001",
        "-d",
        "Model X",
    ]);
    assert_eq!(
        t.rpc("nvmf_create_subsystem", json!({"nqn": NQN})),
        Err((-32603, format!("Unable to create subsystem {NQN}")))
    );
    assert_eq!(
        t.rpc("nvmf_create_subsystem", json!({"nqn": "not-an-nqn"}))
            .unwrap_err()
            .0,
        -32603
    );
    t.spdk_ok(&["nvmf_subsystem_add_ns", NQN, "M0"]);
    // The same nsid again, or a bdev that is not there.
    assert_eq!(
        t.rpc(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "M0", "nsid": 1}})
        ),
        Err((-32602, "Invalid parameters".into()))
    );
    assert_eq!(
        t.rpc(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "nope"}})
        ),
        Err((-32602, "Invalid parameters".into()))
    );
    let unknown = "nqn.2016-06.io.spdk:nobody";
    assert_eq!(
        t.rpc(
            "nvmf_subsystem_add_ns",
            json!({"nqn": unknown, "namespace": {"bdev_name": "M0"}})
        ),
        Err((-32602, format!("Subsystem with NQN '{unknown}' not found")))
    );
    t.spdk_ok(&[
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        "0",
    ]);
    t.spdk_ok(&[
        "nvmf_subsystem_add_listener",
        "discovery",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        "0",
    ]);
    t.spdk_ok(&["nvmf_subsystem_add_host", NQN, "nqn.2016-06.io.spdk:host1"]);
    assert_eq!(
        t.rpc(
            "nvmf_subsystem_add_host",
            json!({"nqn": NQN, "host": "nqn.2016-06.io.spdk:host1"})
        )
        .unwrap_err()
        .0,
        -32603
    );
    t.spdk_ok(&["nvmf_subsystem_allow_any_host", "--no-allow-any-host", NQN]);

    let subs: Value = serde_json::from_str(&t.spdk_ok(&["nvmf_get_subsystems"])).unwrap();
    assert_eq!(subs[0]["nqn"], "nqn.2014-08.org.nvmexpress.discovery");
    assert_eq!(subs[0]["subtype"], "Discovery");
    assert_eq!(subs[0]["listen_addresses"].as_array().unwrap().len(), 1);
    let s = &subs[1];
    let keys: Vec<&str> = s.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "nqn",
            "subtype",
            "listen_addresses",
            "allow_any_host",
            "hosts",
            "serial_number",
            "model_number",
            "max_namespaces",
            "passthrough",
            "min_cntlid",
            "max_cntlid",
            "dmrsl",
            "wzsl",
            "namespaces"
        ]
    );
    assert_eq!(s["subtype"], "NVMe");
    assert_eq!(s["allow_any_host"], false);
    assert_eq!(s["serial_number"], "SPDK001");
    assert_eq!(s["model_number"], "Model X");
    assert_eq!(s["hosts"], json!([{"nqn": "nqn.2016-06.io.spdk:host1"}]));
    assert_eq!(s["listen_addresses"][0]["trtype"], "TCP");
    assert_eq!(s["listen_addresses"][0]["adrfam"], "IPv4");
    assert_eq!(s["namespaces"][0]["nsid"], 1);
    assert_eq!(s["namespaces"][0]["bdev_name"], "M0");
    assert_eq!(s["namespaces"][0]["nguid"].as_str().unwrap().len(), 32);

    assert_eq!(
        t.ok("nvmf_subsystem_get_controllers", json!({"nqn": NQN})),
        json!([])
    );
    assert_eq!(
        t.ok("nvmf_subsystem_get_qpairs", json!({"nqn": NQN})),
        json!([])
    );
    assert_eq!(
        t.ok("nvmf_get_stats", Value::Null)["poll_groups"][0]["current_io_qpairs"],
        0
    );
    let port = s["listen_addresses"][0]["trsvcid"].as_str().unwrap();
    t.spdk_ok(&[
        "nvmf_subsystem_remove_listener",
        NQN,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        port,
    ]);
    assert_eq!(
        t.rpc("nvmf_subsystem_remove_listener",
              json!({"nqn": NQN, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": port}})),
        Err((-32602, "Invalid parameters".into()))
    );
    t.spdk_ok(&[
        "nvmf_subsystem_remove_host",
        NQN,
        "nqn.2016-06.io.spdk:host1",
    ]);
    t.spdk_ok(&["nvmf_subsystem_remove_ns", NQN, "1"]);
    assert_eq!(
        t.rpc("nvmf_subsystem_remove_ns", json!({"nqn": NQN, "nsid": 1})),
        Err((-32602, "Invalid parameters".into()))
    );
    // The namespace closed its bdev: it can be deleted now.
    t.ok("bdev_malloc_delete", json!({"name": "M0"}));
    t.spdk_ok(&["nvmf_delete_subsystem", NQN]);
    assert_eq!(
        t.rpc("nvmf_delete_subsystem", json!({"nqn": NQN})),
        Err((-32602, format!("Subsystem with NQN '{NQN}' not found")))
    );
    // Garbage params are errors, not crashes.
    assert_eq!(
        t.rpc("nvmf_create_subsystem", json!({"nqn": 5}))
            .unwrap_err()
            .0,
        -32602
    );
    assert_eq!(
        t.rpc("nvmf_subsystem_remove_ns", json!([1, 2]))
            .unwrap_err()
            .0,
        -32602
    );
    t.stop();
}

#[test]
fn a_host_moves_data_both_ways_and_nbd_sees_the_same_bytes() {
    let (t, addr) = exported("nvmf-data", json!({}));
    let nbd = t.export("v", None, None);
    let (mut a, cntlid) = Host::admin(&addr, NQN);

    let id = a.identify(1, 0);
    assert!(id.ok());
    let c = &id.data;
    assert_eq!(le16(c, 78), cntlid, "CNTLID");
    assert_eq!(le32(c, 80), 0x0001_0300, "VER");
    assert!(le16(c, 320) > 0, "KAS");
    assert_eq!(c[512], 0x66);
    assert_eq!(c[513], 0x44);
    assert_eq!(le16(c, 514), 128, "MAXCMD");
    assert_eq!(le32(c, 516), 32, "NN");
    assert_eq!(le32(c, 536) & 3, 1, "SGLS");
    assert_eq!(le32(c, 1792), (64 + 4096) / 16, "IOCCSZ");
    assert_eq!(le32(c, 1796), 1, "IORCSZ");
    assert_eq!(le16(c, 1800), 0, "ICDOFF");
    assert_eq!(&c[768..768 + NQN.len()], NQN.as_bytes());
    assert_eq!(c[111], 1, "an I/O controller");

    let ns = a.identify(0, 1);
    let n = &ns.data;
    let blocks = (64u64 << 20) / u64::from(BS);
    assert_eq!((le64(n, 0), le64(n, 8)), (blocks, blocks), "NSZE, NCAP");
    assert_eq!(le64(n, 16), 0, "NUSE of a new thin volume");
    assert_eq!(n[24] & 1, 1, "NSFEAT thin provisioning");
    assert_eq!(
        n[33], 0x09,
        "DLFEAT: deallocated reads zero, WZ deallocates"
    );
    assert_eq!(le16(n, 68), 15, "NPDG: a 64 KiB thin block");
    assert_eq!((le32(n, 128) >> 16) & 0xFF, 12, "LBADS 4096");
    let list = a.identify(2, 0);
    assert_eq!((le32(&list.data, 0), le32(&list.data, 4)), (1, 0));
    let desc = a.identify(3, 1);
    assert_eq!((desc.data[0], desc.data[1]), (2, 16), "an NGUID descriptor");
    assert_eq!(&desc.data[4..20], &n[104..120]);

    let (mut q, r) = Host::connect(&addr, NQN, 1, cntlid);
    assert!(r.ok(), "{:?}", r.cqe);
    let small = pattern(4096, 1);
    let big = pattern(128 << 10, 2);
    assert!(q.write(1, 1, &small, BS, 4096).ok(), "in-capsule write");
    assert!(q.write(1, 512, &big, BS, 4096).ok(), "write through an R2T");
    assert!(q.flush(1).ok());
    assert_eq!(q.read(1, 1, 1, BS).data, small);
    assert_eq!(q.read(1, 512, 32, BS).data, big);
    // Unwritten blocks of a thin volume read as zeros.
    assert!(q.read(1, 10_000, 2, BS).data.iter().all(|&b| b == 0));
    let used = le64(&a.identify(0, 1).data, 16);
    assert_eq!(used, 3 * 16, "NUSE: three 64 KiB blocks provisioned");

    // The same bytes through NBD, at the same time.
    let mut c = tgt_util::nbd::Client::connect(&nbd, "v").unwrap();
    assert_eq!(c.read(u64::from(BS), 4096).unwrap(), small);
    assert_eq!(c.read(512 * u64::from(BS), big.len() as u32).unwrap(), big);
    let from_nbd = pattern(8192, 3);
    assert_eq!(c.write(1 << 20, &from_nbd).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    assert_eq!(q.read(1, (1 << 20) / u64::from(BS), 2, BS).data, from_nbd);

    // Dataset Management with Deallocate hands the blocks back.
    let mut ranges = Vec::new();
    ranges.extend_from_slice(&0u32.to_le_bytes());
    ranges.extend_from_slice(&32u32.to_le_bytes());
    ranges.extend_from_slice(&512u64.to_le_bytes());
    let mut dsm = exports::nvmf::sqe::Sqe::new(0x09, 0);
    dsm.set_nsid(1);
    dsm.set_cdw(11, 1 << 2);
    assert!(q.command(dsm, Some(ranges), 4096).ok());
    assert!(q.read(1, 512, 32, BS).data.iter().all(|&b| b == 0));
    assert_eq!(
        le64(&a.identify(0, 1).data, 16),
        2 * 16,
        "NUSE after deallocate"
    );

    // Write Zeroes without DEAC reads zeros.
    let mut wz = exports::nvmf::sqe::Sqe::new(0x08, 0);
    wz.set_nsid(1);
    wz.set_cdw(10, 1);
    wz.set_cdw(12, 0);
    wz.set_sgl1(exports::nvmf::sqe::Sgl1::Transport { length: 0 });
    assert!(q.command(wz, None, 0).ok());
    assert!(q.read(1, 1, 1, BS).data.iter().all(|&b| b == 0));

    // The queues show in the RPCs.
    let qp = t.ok("nvmf_subsystem_get_qpairs", json!({"nqn": NQN}));
    assert_eq!(qp.as_array().unwrap().len(), 2, "{qp}");
    let cs = t.ok("nvmf_subsystem_get_controllers", json!({"nqn": NQN}));
    assert_eq!(cs[0]["cntlid"], cntlid);
    assert_eq!(cs[0]["num_io_qpairs"], 1);

    // Digests on: the same data, checked by both ends.
    let mut d = Host::open(&addr, true);
    assert!(d
        .fabrics_connect(NQN, tgt_util::nvme::HOSTNQN, 2, cntlid)
        .ok());
    assert!(d.write(1, 2, &small, BS, 4096).ok());
    assert_eq!(d.read(1, 2, 1, BS).data, small);

    // A shutdown (CC.SHN) flushes and reports complete.
    assert!(a.prop_set(0x14, 0x0046_4001).ok());
    let t0 = Instant::now();
    while (a.prop_get(0x1C, false).cqe.dw0 >> 2) & 3 != 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "CSTS.SHST never completed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop((a, q, d, c));

    // Issue 25 point 8: both protocols log who connected and who left.
    let wait_for = |what: &str| {
        let t0 = Instant::now();
        while !t.log().contains(what) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("disconnected from export");
    wait_for(") is gone");
    let log = t.log();
    for want in [
        "nbd: 127.0.0.1:",
        " connected to export \"v\" (bdev v, connection ",
        " disconnected from export \"v\" (connection ",
        &format!("nvmf: host {HOSTNQN} at 127.0.0.1:"),
        &format!(" connected controller {cntlid} of {NQN} on {addr}"),
        &format!("nvmf: controller {cntlid} of {NQN} (host {HOSTNQN} at 127.0.0.1:"),
    ] {
        assert!(log.contains(want), "{want:?} not in\n{log}");
    }
    t.stop();
}

#[test]
fn commands_out_of_place_get_the_specs_answers() {
    let (t, addr) = exported("nvmf-errors", json!({}));
    let other = "nqn.2016-06.io.spdk:closed";
    t.ok("nvmf_create_subsystem", json!({"nqn": other}));
    let other_addr = listen(&t, other);

    // A command before Connect.
    let mut h = Host::open(&addr, false);
    let r = h.identify(1, 0);
    assert_eq!(r.status(), (0, 0x0C), "Command Sequence Error");
    // Connect to a subsystem nobody serves, then to one that does not let
    // this host in: Invalid Parameters (at SUBNQN), Invalid Host.
    let r = h.fabrics_connect(
        "nqn.2016-06.io.spdk:nobody",
        tgt_util::nvme::HOSTNQN,
        0,
        0xFFFF,
    );
    assert_eq!(r.status(), (1, 0x82));
    assert_eq!(r.cqe.dw0, 256 | (1 << 16), "IATTR data, IPO 256");
    let (_, r) = Host::connect(&other_addr, other, 0, 0xFFFF);
    assert_eq!(r.status(), (1, 0x84), "Connect Invalid Host");
    // A subsystem reached on another subsystem's port: not served there.
    let (_, r) = Host::connect(&addr, other, 0, 0xFFFF);
    assert_eq!(r.status(), (1, 0x82));

    // Before CC.EN = 1: admin commands and I/O queues are refused.
    let (mut a, r) = Host::connect(&addr, NQN, 0, 0xFFFF);
    let cntlid = r.cqe.dw0 as u16;
    assert_eq!(a.identify(1, 0).status(), (0, 0x0C));
    let (_, r) = Host::connect(&addr, NQN, 1, cntlid);
    assert_eq!(r.status(), (0, 0x0C));
    // An I/O queue of a controller that does not exist.
    let (_, r) = Host::connect(&addr, NQN, 1, 0x7777);
    assert_eq!(r.status(), (1, 0x82));
    assert!(a.prop_set(0x14, 0x0046_0001).ok());
    // A property that is not there; CAP is what hosts need.
    assert_eq!(a.prop_get(0x40, false).status(), (0, 0x02));
    let cap = a.prop_get(0x00, true);
    assert_eq!(u64::from(cap.cqe.dw0) & 0xFFFF, 127, "MQES");
    // A queue id beyond what the controller has.
    let (_, r) = Host::connect(&addr, NQN, 500, cntlid);
    assert_eq!(r.status(), (1, 0x01), "Invalid Queue Identifier");
    assert_eq!(a.identify(0x55, 0).status(), (0, 0x02), "unknown CNS");
    assert_eq!(a.identify(0, 0).status(), (0, 0x0B), "NSID 0");
    let mut bad = exports::nvmf::sqe::Sqe::new(0x80, 0);
    bad.set_sgl1(exports::nvmf::sqe::Sgl1::Transport { length: 0 });
    assert_eq!(a.command(bad, None, 0).status(), (0, 0x01), "admin opcode");

    let (mut q, r) = Host::connect(&addr, NQN, 1, cntlid);
    assert!(r.ok());
    // A second Connect on a connected queue.
    let r = q.fabrics_connect(NQN, tgt_util::nvme::HOSTNQN, 1, cntlid);
    assert_eq!(r.status(), (1, 0x81), "Controller Busy");
    let blocks = (64u64 << 20) / u64::from(BS);
    assert_eq!(
        q.read(1, blocks - 1, 2, BS).status(),
        (0, 0x80),
        "LBA Out of Range"
    );
    assert_eq!(
        q.read(1, u64::MAX - 1, 8, BS).status(),
        (0, 0x80),
        "no overflow"
    );
    assert_eq!(q.read(7, 0, 1, BS).status(), (0, 0x0B), "Invalid Namespace");
    let mut odd = exports::nvmf::sqe::Sqe::new(0x7C, 0);
    odd.set_nsid(1);
    odd.set_sgl1(exports::nvmf::sqe::Sgl1::Transport { length: 0 });
    assert_eq!(q.command(odd, None, 0).status(), (0, 0x01), "I/O opcode");
    // A read whose SGL is shorter than its blocks.
    let mut short = exports::nvmf::sqe::Sqe::new(0x02, 0);
    short.set_nsid(1);
    short.set_cdw(12, 1);
    short.set_sgl1(exports::nvmf::sqe::Sgl1::Transport { length: BS });
    assert_eq!(
        q.command(short, None, 0).status(),
        (0, 0x0F),
        "Data SGL Length Invalid"
    );
    // After all that, the queue still moves data.
    let p = pattern(BS as usize, 9);
    assert!(q.write(1, 0, &p, BS, 4096).ok());
    assert_eq!(q.read(1, 0, 1, BS).data, p);
    t.stop();
}

#[test]
fn a_resize_or_a_new_namespace_reaches_the_host_as_an_event() {
    let (t, addr) = exported("nvmf-aen", json!({}));
    let (mut a, _) = Host::admin(&addr, NQN);
    // Namespace attribute notices on, one AER outstanding.
    let mut aec = exports::nvmf::sqe::Sqe::new(0x09, 0);
    aec.set_cdw(10, 0x0B);
    aec.set_cdw(11, 1 << 8);
    aec.set_sgl1(exports::nvmf::sqe::Sgl1::Transport { length: 0 });
    assert!(a.command(aec, None, 0).ok());
    let mut aer = exports::nvmf::sqe::Sqe::new(0x0C, 0);
    aer.set_sgl1(exports::nvmf::sqe::Sgl1::Transport { length: 0 });
    aer.set_cid(900);
    let aer_pdu = exports::nvmf::pdu::Pdu::new(
        exports::nvmf::pdu::Header::CapsuleCmd(exports::nvmf::pdu::CapsuleCmd { sqe: aer }),
        Vec::new(),
    );
    a.send(&aer_pdu);

    t.ok("bdev_thin_resize", json!({"name": "v", "size_in_mib": 128}));
    let p = a.next();
    let exports::nvmf::pdu::Header::CapsuleResp(resp) = p.header else {
        panic!("an AER completion expected, got {p:?}")
    };
    assert_eq!((resp.cqe.cid, resp.cqe.dw0), (900, 0x0004_0002));
    let mut log = exports::nvmf::sqe::Sqe::new(0x02, 0);
    log.set_cdw(10, 0x04 | (1023 << 16));
    log.set_sgl1(exports::nvmf::sqe::Sgl1::Transport { length: 4096 });
    let changed = a.command(log, None, 0);
    assert_eq!((le32(&changed.data, 0), le32(&changed.data, 4)), (1, 0));
    assert_eq!(
        le64(&a.identify(0, 1).data, 0),
        (128u64 << 20) / u64::from(BS),
        "the new NSZE"
    );
    // Read once, the list is empty.
    let again = a.command(log, None, 0);
    assert_eq!(le32(&again.data, 0), 0);

    // A second namespace: another event on the next AER.
    aer.set_cid(901);
    a.send(&exports::nvmf::pdu::Pdu::new(
        exports::nvmf::pdu::Header::CapsuleCmd(exports::nvmf::pdu::CapsuleCmd { sqe: aer }),
        Vec::new(),
    ));
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "w", "size_in_mib": 8}),
    );
    assert_eq!(
        t.ok(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "w"}})
        ),
        2
    );
    let p = a.next();
    let exports::nvmf::pdu::Header::CapsuleResp(resp) = p.header else {
        panic!("{p:?}")
    };
    assert_eq!((resp.cqe.cid, resp.cqe.dw0), (901, 0x0004_0002));
    // A volume with a connected host is not deleted unless forced; forced,
    // its namespace goes first.
    assert_eq!(
        t.rpc("bdev_thin_delete", json!({"name": "w"}))
            .unwrap_err()
            .0,
        -16
    );
    t.ok("bdev_thin_delete", json!({"name": "w", "force": true}));
    let subs = t.ok("nvmf_get_subsystems", json!({"nqn": NQN}));
    assert_eq!(subs[0]["namespaces"].as_array().unwrap().len(), 1);
    t.stop();
}

#[test]
fn a_silent_host_loses_its_controller_after_its_keep_alive_timeout() {
    // KAS of 100 ms units: a one-second granularity keeps the test short.
    let (t, addr) = exported("nvmf-kato", json!({"kas": 10}));
    let mut h = Host::open(&addr, false);
    let data = exports::nvmf::sqe::ConnectData {
        hostid: tgt_util::nvme::HOSTID,
        cntlid: 0xFFFF,
        subnqn: NQN.into(),
        hostnqn: tgt_util::nvme::HOSTNQN.into(),
    }
    .encode()
    .unwrap();
    let c = exports::nvmf::sqe::Connect {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato: 1000,
    };
    let sqe = exports::nvmf::sqe::Fabrics::Connect(c).to_sqe(
        1,
        exports::nvmf::sqe::Sgl1::InCapsule {
            offset: 0,
            length: 1024,
        },
    );
    assert!(h.command(sqe, Some(data), 0).ok());
    assert_eq!(
        t.ok("nvmf_subsystem_get_controllers", json!({"nqn": NQN}))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Silence: KATO (1 s) and the grace pass, the controller goes and the
    // connection is closed.
    let t0 = Instant::now();
    assert!(h.try_next().is_none(), "the target closed the connection");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert!(controllers_go(&t), "the controller stayed");
    t.stop();
}

/// A host that sends a whole queue of commands in one write (as Linux
/// and SPDK do at depth) gets every one answered once, with its data,
/// although the target starts only part of them per pass and keeps the
/// rest of what it read for the next.
#[test]
fn a_queue_of_commands_in_one_write_is_answered_whole() {
    let (t, addr) = exported("nvmf-burst", json!({}));
    let (_a, cntlid) = Host::admin(&addr, NQN);
    let (mut q, r) = Host::connect(&addr, NQN, 1, cntlid);
    assert!(r.ok(), "{:?}", r.cqe);
    // 31 commands: a 32-entry queue full.
    let rw = |opc: u8, lba: u64, data: Vec<u8>| {
        let mut sqe = Sqe::new(opc, 0);
        sqe.set_nsid(1);
        sqe.set_cdw(10, lba as u32);
        sqe.set_cdw(12, 0);
        if data.is_empty() {
            sqe.set_sgl1(Sgl1::Transport { length: BS });
        }
        (sqe, data)
    };
    let writes = (0..31u64)
        .map(|i| rw(0x01, i, pattern(BS as usize, i as u8)))
        .collect();
    for (i, r) in q.burst(writes).iter().enumerate() {
        assert!(r.ok(), "write {i}: {:?}", r.cqe);
    }
    let reads = (0..31u64).map(|i| rw(0x02, i, Vec::new())).collect();
    for (i, r) in q.burst(reads).iter().enumerate() {
        assert!(r.ok(), "read {i}: {:?}", r.cqe);
        assert!(r.data == pattern(BS as usize, i as u8), "read {i}'s data");
    }
    drop(q);
    t.stop();
}

#[test]
fn save_config_brings_the_exports_back_after_a_restart() {
    let dir = tgt_util::scratch("nvmf-save");
    let img = dir.join("d.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let t = Tgt::start_in(dir.clone(), &["--empty"]);
    t.ok(
        "bdev_uring_create",
        json!({"name": "U", "filename": img.to_str().unwrap(), "block_size": 512}),
    );
    t.spdk_ok(&["nvmf_create_transport", "-t", "tcp"]);
    t.spdk_ok(&["nvmf_create_subsystem", NQN, "-a", "-s", "S1"]);
    t.spdk_ok(&["nvmf_subsystem_add_ns", NQN, "U"]);
    let addr = listen(&t, NQN);
    let (mut a, cntlid) = Host::admin(&addr, NQN);
    let (mut q, _) = Host::connect(&addr, NQN, 1, cntlid);
    let p = pattern(4096, 5);
    assert!(q.write(1, 64, &p, 512, 4096).ok());
    assert!(q.flush(1).ok());
    let nguid = a.identify(0, 1).data[104..120].to_vec();
    drop((a, q));
    let saved = t.ok("save_config", Value::Null);
    let before = t.ok("nvmf_get_subsystems", Value::Null);
    let cfg = dir.join("saved.json");
    std::fs::write(&cfg, serde_json::to_string(&saved).unwrap()).unwrap();
    t.stop();

    let t = Tgt::start_in(dir, &["--json", cfg.to_str().unwrap()]);
    assert_eq!(t.ok("nvmf_get_subsystems", Value::Null), before);
    let (mut a, cntlid) = Host::admin(&addr, NQN);
    assert_eq!(a.identify(0, 1).data[104..120], nguid[..], "the same NGUID");
    let (mut q, _) = Host::connect(&addr, NQN, 1, cntlid);
    assert_eq!(q.read(1, 64, 8, 512).data, p);
    t.stop();
}

#[test]
fn discovery_lists_what_the_host_may_reach() {
    let (t, addr) = exported("nvmf-disc", json!({}));
    let hidden = "nqn.2016-06.io.spdk:hidden";
    t.ok("nvmf_create_subsystem", json!({"nqn": hidden}));
    listen(&t, hidden);
    let disc = "nqn.2014-08.org.nvmexpress.discovery";
    // The discovery subsystem answers on every subsystem's port.
    let (mut a, cntlid) = Host::admin(&addr, disc);
    let id = a.identify(1, 0);
    assert_eq!(id.data[111], 2, "a discovery controller");
    assert_eq!(le16(&id.data, 78), cntlid);
    assert_eq!(a.identify(0, 1).status(), (0, 0x02), "only CNS 01h");
    let mut log = exports::nvmf::sqe::Sqe::new(0x02, 0);
    log.set_cdw(10, 0x70 | (1023 << 16));
    log.set_sgl1(exports::nvmf::sqe::Sgl1::Transport { length: 4096 });
    let page = a.command(log, None, 0).data;
    // One record: the subsystem that lets any host in, not the hidden one.
    assert_eq!(le64(&page, 8), 1, "NUMREC");
    let e = &page[1024..2048];
    assert_eq!((e[0], e[2]), (3, 2), "TCP, an NVM subsystem");
    let port = addr.rsplit(':').next().unwrap();
    assert_eq!(std::str::from_utf8(&e[32..64]).unwrap().trim(), port);
    assert_eq!(&e[256..256 + NQN.len()], NQN.as_bytes());
    assert_eq!(
        std::str::from_utf8(&e[512..768]).unwrap().trim(),
        "127.0.0.1"
    );
    // Allowing this host adds the hidden subsystem and a new generation.
    let gen = le64(&page, 0);
    t.ok(
        "nvmf_subsystem_add_host",
        json!({"nqn": hidden, "host": tgt_util::nvme::HOSTNQN}),
    );
    let page = a.command(log, None, 0).data;
    assert_eq!(le64(&page, 8), 2);
    assert!(le64(&page, 0) > gen, "GENCTR moved");
    // Discovery has no I/O queues.
    let (_, r) = Host::connect(&addr, disc, 1, cntlid);
    assert_eq!(r.status(), (1, 0x82));
    t.stop();
}

#[test]
fn a_wrong_digest_fails_its_command_or_ends_the_connection() {
    use exports::nvmf::pdu::{CapsuleCmd, Header, Pdu};
    let (t, addr) = exported("nvmf-digest", json!({}));
    let (mut a, cntlid) = Host::admin(&addr, NQN);
    let mut q = Host::open(&addr, true);
    assert!(q
        .fabrics_connect(NQN, tgt_util::nvme::HOSTNQN, 1, cntlid)
        .ok());
    // A write whose in-capsule data fails its data digest: that command
    // fails (retryable), the connection goes on.
    let data = pattern(BS as usize, 4);
    let mut w = exports::nvmf::sqe::Sqe::new(0x01, 77);
    w.set_nsid(1);
    w.set_cdw(10, 3);
    w.set_sgl1(exports::nvmf::sqe::Sgl1::InCapsule {
        offset: 0,
        length: BS,
    });
    let mut bytes = q.encode(&Pdu::new(
        Header::CapsuleCmd(CapsuleCmd { sqe: w }),
        data.clone(),
    ));
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    q.send_raw(&bytes);
    let p = q.next();
    let Header::CapsuleResp(r) = p.header else {
        panic!("{p:?}")
    };
    assert_eq!(
        (r.cqe.cid, r.cqe.status.sct(), r.cqe.status.sc()),
        (77, 0, 0x22),
        "Transient Transport Error"
    );
    assert!(
        q.read(1, 3, 1, BS).data.iter().all(|&b| b == 0),
        "nothing was written"
    );
    assert!(q.write(1, 3, &data, BS, 4096).ok());
    // A header digest that does not match: a C2HTermReq, then the close.
    let mut r = exports::nvmf::sqe::Sqe::new(0x02, 78);
    r.set_nsid(1);
    r.set_sgl1(exports::nvmf::sqe::Sgl1::Transport { length: BS });
    let mut bytes = q.encode(&Pdu::new(
        Header::CapsuleCmd(CapsuleCmd { sqe: r }),
        Vec::new(),
    ));
    bytes[72] ^= 0x01;
    q.send_raw(&bytes);
    let p = q.next();
    let Header::C2HTermReq(term) = p.header else {
        panic!("a TermReq expected: {p:?}")
    };
    assert_eq!(term.fes, exports::nvmf::pdu::Fes::HEADER_DIGEST_ERROR);
    assert!(q.try_next().is_none(), "closed after the TermReq");
    // Garbage on a fresh connection: a TermReq and a close; the admin
    // queue of the other connection carries on.
    let mut g = std::net::TcpStream::connect(&addr).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut g, &[0x42; 200]).unwrap();
    let mut head = [0u8; 8];
    std::io::Read::read_exact(&mut g, &mut head).unwrap();
    assert_eq!(head[0], 0x03, "C2HTermReq");
    assert!(a.identify(1, 0).ok());
    t.stop();
}

#[test]
fn an_association_ends_with_its_admin_queue_and_a_reset_closes_io_queues() {
    let (t, addr) = exported("nvmf-assoc", json!({}));
    let (mut a, cntlid) = Host::admin(&addr, NQN);
    let (mut q, r) = Host::connect(&addr, NQN, 1, cntlid);
    assert!(r.ok());
    // CC.EN 1 -> 0: the I/O queue is closed, the admin queue stays.
    assert!(a.prop_set(0x14, 0x0046_0000).ok());
    assert!(
        q.try_next().is_none(),
        "the I/O queue was closed by the reset"
    );
    assert_eq!(
        a.prop_get(0x1C, false).cqe.dw0 & 1,
        0,
        "not ready after a reset"
    );
    // Enabled again, a new I/O queue connects with the same id.
    assert!(a.prop_set(0x14, 0x0046_0001).ok());
    let t0 = Instant::now();
    let mut q = loop {
        let (q, r) = Host::connect(&addr, NQN, 1, cntlid);
        if r.ok() {
            break q;
        }
        // The old queue's task may still be leaving.
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", r.cqe);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(q.flush(1).ok());
    // The admin queue goes: so do the controller and its I/O queues.
    drop(a);
    assert!(
        q.try_next().is_none(),
        "the I/O queue went with its controller"
    );
    assert!(controllers_go(&t), "the controller stayed");
    t.stop();
}

#[test]
fn a_host_that_stops_reading_stalls_only_itself() {
    use exports::nvmf::pdu::{CapsuleCmd, Header, Pdu};
    let (t, addr) = exported("nvmf-stall", json!({}));
    let (_a, cntlid) = Host::admin(&addr, NQN);
    let (mut slow, r) = Host::connect(&addr, NQN, 1, cntlid);
    assert!(r.ok());
    // 128 KiB reads queued back to back, their data never read: the
    // socket buffers fill, then the target stops reading this queue.
    let mut read = exports::nvmf::sqe::Sqe::new(0x02, 0);
    read.set_nsid(1);
    read.set_cdw(12, 31);
    read.set_sgl1(exports::nvmf::sqe::Sgl1::Transport { length: 32 * BS });
    slow.s.set_nonblocking(true).unwrap();
    let mut sent = 0u32;
    for i in 0..4000u32 {
        read.set_cid((i % 60000) as u16 + 1);
        let b = slow.encode(&Pdu::new(
            Header::CapsuleCmd(CapsuleCmd { sqe: read }),
            Vec::new(),
        ));
        match std::io::Write::write(&mut slow.s, &b) {
            Ok(n) if n == b.len() => sent += 1,
            _ => break,
        }
    }
    assert!(sent > 0);
    // Another queue of the same controller moves data meanwhile.
    let (mut q, r) = Host::connect(&addr, NQN, 2, cntlid);
    assert!(r.ok());
    let p = pattern(BS as usize, 7);
    for i in 0..50 {
        assert!(q.write(1, i, &p, BS, 4096).ok());
        assert_eq!(q.read(1, i, 1, BS).data, p);
    }
    drop(slow);
    t.stop();
}

#[test]
fn the_default_export_keeps_its_identity_across_restarts() {
    let dir = tgt_util::scratch("nvmf-default");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let args = tgt_util::default_args(&data, false);
    let nqn = "nqn.2026-12.io.ferrothin:vol0";
    let mut ids = Vec::new();
    for _ in 0..2 {
        let t = Tgt::start_in(dir.clone(), &args);
        let addr = listen_addr(&t, nqn);
        let (mut a, _) = Host::admin(&addr, nqn);
        let ns = a.identify(0, 1);
        assert!(ns.ok());
        assert_eq!(
            le64(&ns.data, 0) * 512,
            2 << 30,
            "vol0 is 2 GiB of 512-byte blocks"
        );
        ids.push((ns.data[104..120].to_vec(), a.identify(3, 1).data));
        drop(a);
        t.stop();
    }
    assert_eq!(
        ids[0], ids[1],
        "NGUID and descriptors the same after a restart"
    );
    assert!(ids[0].0.iter().any(|&b| b != 0));
}

/// The first listen address of `nqn`, "127.0.0.1:PORT".
fn listen_addr(t: &Tgt, nqn: &str) -> String {
    let subs = t.ok("nvmf_get_subsystems", json!({"nqn": nqn}));
    let l = &subs[0]["listen_addresses"][0];
    format!(
        "{}:{}",
        l["traddr"].as_str().unwrap(),
        l["trsvcid"].as_str().unwrap()
    )
}

/// Issue 26 item 3: a read-only volume (bdev_thin_set_read_only, or made
/// read-only) is write protected to NVMe/TCP hosts (NSATTR, and writes,
/// write zeroes and deallocate answered "Namespace is Write Protected")
/// and read-only to NBD clients (the flag, and EPERM); reads work; made
/// writable again, it takes writes, and save_config keeps the state.
#[test]
fn a_read_only_volume_is_write_protected_to_every_export() {
    let (t, addr) = exported("nvmf-ro", json!({}));
    let (mut a, cntlid) = Host::admin(&addr, NQN);
    let (mut q, r) = Host::connect(&addr, NQN, 1, cntlid);
    assert!(r.ok());
    let data = pattern(4096, 5);
    assert!(q.write(1, 3, &data, BS, 4096).ok());
    assert_eq!(a.identify(0, 1).data[99], 0, "NSATTR: writable");

    t.spdk_ok(&["bdev_thin_set_read_only", "v"]);
    let vols = t.ok("bdev_thin_get_volumes", json!({"name": "v"}));
    assert_eq!(vols[0]["read_only"], true, "{vols}");
    assert_eq!(a.identify(0, 1).data[99], 1, "NSATTR: write protected");
    let protected = (0u8, 0x20u8);
    assert_eq!(q.write(1, 3, &data, BS, 4096).status(), protected);
    let mut wz = exports::nvmf::sqe::Sqe::new(0x08, 0);
    wz.set_nsid(1);
    wz.set_sgl1(exports::nvmf::sqe::Sgl1::Transport { length: 0 });
    assert_eq!(q.command(wz, None, 0).status(), protected);
    assert_eq!(q.read(1, 3, 1, BS).data, data, "reads still work");

    let nbd = t.export("v", None, None);
    let mut c = tgt_util::nbd::Client::connect(&nbd, "v").unwrap();
    assert_ne!(c.flags & 0x0002, 0, "NBD_FLAG_READ_ONLY");
    assert_eq!(c.write(0, &data).unwrap(), 1, "EPERM");
    assert_eq!(c.read(3 * 4096, 4096).unwrap(), data);
    let saved = t.ok("save_config", json!(null)).to_string();
    assert!(saved.contains("\"read_only\":true"), "{saved}");

    t.ok(
        "bdev_thin_set_read_only",
        json!({"name": "v", "read_only": false}),
    );
    assert!(q.write(1, 4, &data, BS, 4096).ok());
    assert_eq!(a.identify(0, 1).data[99], 0);
    let mut c2 = tgt_util::nbd::Client::connect(&nbd, "v").unwrap();
    assert_eq!(c2.flags & 0x0002, 0);
    assert_eq!(c2.write(0, &data).unwrap(), 0);
    drop((a, q, c, c2));
    t.stop();
}
