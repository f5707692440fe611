//! The data structures a controller hands out: Identify (controller,
//! namespace, active namespace list, namespace identification
//! descriptors), the log pages and the discovery log. Offsets follow
//! protocols.md A.10 and A.11; every structure is built zeroed and filled
//! field by field, little-endian.

use super::controller::{Controller, VERSION};
use super::subsystem::{ListenAddr, Namespace, Subsystem};
use super::transport::TransportOpts;

pub const IDENTIFY_LEN: usize = 4096;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// An ASCII field padded with spaces (SN, MN, FR, TRADDR, TRSVCID).
fn put_padded(b: &mut [u8], at: usize, len: usize, s: &str) {
    let f = &mut b[at..at + len];
    f.fill(b' ');
    let n = s.len().min(len);
    f[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// A NUL-terminated string field (NQNs).
fn put_nul(b: &mut [u8], at: usize, len: usize, s: &str) {
    let n = s.len().min(len - 1);
    b[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Firmware revision: our version, as FR and the firmware slot log say.
pub fn firmware_revision() -> String {
    env!("CARGO_PKG_VERSION").chars().take(8).collect()
}

/// Identify Controller (CNS 01h) for an I/O or a discovery controller.
pub fn controller(ctrl: &Controller, opts: &TransportOpts) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let (serial, model) = match &ctrl.subsystem {
        Some(s) => {
            let c = s.config();
            (c.serial_number, c.model_number)
        }
        None => (String::new(), "ferrothin discovery controller".to_string()),
    };
    put_padded(&mut b, 4, 20, &serial);
    put_padded(&mut b, 24, 40, &model);
    put_padded(&mut b, 64, 8, &firmware_revision());
    b[72] = 6; // RAB
    b[77] = opts.mdts();
    put16(&mut b, 78, ctrl.cntlid);
    put32(&mut b, 80, VERSION);
    put32(&mut b, 96, 1); // CTRATT: 128-bit host identifier
    b[258] = 3; // ACL
    b[259] = 3; // AERL: four outstanding AERs
    b[260] = 0x03; // FRMW: one slot, read-only
    b[261] = 0x06; // LPA: commands supported log, extended Get Log Page
    put16(&mut b, 266, 0x0157);
    put16(&mut b, 268, 0x0175);
    put16(&mut b, 320, opts.kas);
    b[512] = 0x66; // SQES
    b[513] = 0x44; // CQES
    put16(&mut b, 514, opts.max_queue_depth);
    // SGLS: SGLs without alignment rules, offsets in data blocks (for
    // in-capsule data).
    put32(&mut b, 536, 0x0010_0001);
    put_nul(&mut b, 768, 256, ctrl.subnqn());
    b[1803] = 1; // MSDBD
    match &ctrl.subsystem {
        Some(s) => {
            b[76] = 0x02; // CMIC: several controllers may share a namespace
            put32(&mut b, 92, 1 << 8); // OAES: namespace attribute notices
            b[111] = 1; // I/O controller
            put32(&mut b, 516, s.nn());
            put16(&mut b, 520, 0x000C); // ONCS: Dataset Management, Write Zeroes
            b[525] = 0x05; // VWC present, no broadcast flush
            put32(&mut b, 1792, (64 + opts.io_in_capsule()) / 16); // IOCCSZ
            put32(&mut b, 1796, 1); // IORCSZ
        }
        None => {
            put32(&mut b, 92, 1 << 31); // OAES: discovery log change notices
            b[111] = 2; // discovery controller
        }
    }
    b
}

/// Identify Namespace (CNS 00h).
pub fn namespace(ns: &Namespace) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let n = ns.num_blocks();
    let bs = ns.block_size();
    put64(&mut b, 0, n); // NSZE
    put64(&mut b, 8, n); // NCAP: never 0, or Linux drops the namespace
    put64(&mut b, 16, ns.used_blocks()); // NUSE
    let thin = ns.is_thin();
    let gran = ns.export.bdev.unmap_granularity().max(1);
    let mut nsfeat = 0u8;
    if thin {
        nsfeat |= 0x01;
    }
    if gran > 1 && gran <= 0x1_0000 {
        // OPTPERF: the thin block is the unit worth writing and
        // deallocating whole.
        nsfeat |= 0x10;
        let g = (gran - 1) as u16;
        put16(&mut b, 64, g); // NPWG
        put16(&mut b, 66, g); // NPWA
        put16(&mut b, 68, g); // NPDG
        put16(&mut b, 70, g); // NPDA
    }
    b[24] = nsfeat;
    b[30] = 0x01; // NMIC: shareable
    if ns.read_only() {
        b[99] = 0x01; // NSATTR: write protected
    }
    if thin {
        // Deallocated blocks read as zeros; Write Zeroes may deallocate.
        b[33] = 0x09;
    }
    let bytes = u128::from(n) * u128::from(bs);
    b[48..64].copy_from_slice(&bytes.to_le_bytes()); // NVMCAP
    b[104..120].copy_from_slice(&ns.nguid);
    if let Some(e) = ns.eui64 {
        b[120..128].copy_from_slice(&e);
    }
    put32(&mut b, 128, bs.trailing_zeros() << 16); // LBAF0: LBADS
    b
}

/// Active Namespace ID list (CNS 02h): the ids above `after`.
pub fn active_list(s: &Subsystem, after: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let ids = s
        .namespaces()
        .into_iter()
        .map(|n| n.nsid)
        .filter(|&id| id > after);
    for (i, id) in ids.take(IDENTIFY_LEN / 4).enumerate() {
        put32(&mut b, i * 4, id);
    }
    b
}

/// Namespace Identification Descriptor list (CNS 03h).
pub fn descriptors(ns: &Namespace) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut at = 0;
    let mut add = |ty: u8, id: &[u8]| {
        b[at] = ty;
        b[at + 1] = id.len() as u8;
        b[at + 4..at + 4 + id.len()].copy_from_slice(id);
        at += 4 + id.len();
    };
    if let Some(e) = ns.eui64 {
        add(1, &e);
    }
    add(2, &ns.nguid);
    add(3, &ns.uuid.0);
    b
}

/// The log pages we serve.
pub mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE: u8 = 0x03;
    pub const CHANGED_NS: u8 = 0x04;
    pub const EFFECTS: u8 = 0x05;
    pub const DISCOVERY: u8 = 0x70;
}

/// SMART / Health Information: a healthy device at room temperature.
pub fn smart() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    put16(&mut b, 1, 298);
    b[3] = 100;
    b[4] = 10;
    b
}

pub fn firmware_slots() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0] = 1;
    put_padded(&mut b, 8, 8, &firmware_revision());
    b
}

pub fn changed_namespaces(ids: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    for (i, id) in ids.iter().take(1024).enumerate() {
        put32(&mut b, i * 4, *id);
    }
    b
}

/// Commands Supported and Effects: what we answer, and which commands
/// change what the namespace holds.
pub fn effects() -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    for opc in [0x02u32, 0x06, 0x08, 0x09, 0x0A, 0x0C, 0x18] {
        put32(&mut b, (opc * 4) as usize, 1);
    }
    for (opc, e) in [(0x00u32, 1u32), (0x02, 1), (0x01, 3), (0x08, 3), (0x09, 3)] {
        put32(&mut b, 1024 + (opc * 4) as usize, e);
    }
    b
}

/// One discovery log entry's worth: a subsystem reachable at an address.
pub struct DiscoveryEntry {
    pub subnqn: String,
    pub addr: ListenAddr,
    pub portid: u16,
    pub asqsz: u16,
}

/// The discovery log page (LID 70h): header and 1024-byte entries.
pub fn discovery_log(genctr: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut b = vec![0u8; 1024 * (1 + entries.len())];
    put64(&mut b, 0, genctr);
    put64(&mut b, 8, entries.len() as u64);
    for (i, e) in entries.iter().enumerate() {
        let at = 1024 * (1 + i);
        b[at] = 3; // TCP
        b[at + 1] = if e.addr.adrfam == "IPv6" { 2 } else { 1 };
        b[at + 2] = 2; // an NVM subsystem
        b[at + 3] = 2; // secure channel not required
        put16(&mut b, at + 4, e.portid);
        put16(&mut b, at + 6, 0xFFFF);
        put16(&mut b, at + 8, e.asqsz);
        put_padded(&mut b, at + 32, 32, &e.addr.trsvcid);
        put_nul(&mut b, at + 256, 256, &e.subnqn);
        put_padded(&mut b, at + 512, 256, &e.addr.traddr);
    }
    b
}
