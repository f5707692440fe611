//! A simulated NVMe controller over plain memory: the test double the
//! driver's tests and its instruction-count benchmark run against. It
//! implements [`Regs`] (CAP, VS, CC, CSTS, AQA, ASQ, ACQ and the
//! doorbells) and executes what the driver queues in the DMA arena the
//! way a controller does: it fetches submission entries between its head
//! and the tail doorbell, walks PRPs (lists and their chains included)
//! through IOVAs, answers Identify, Set Features (Number of Queues),
//! Create and Delete I/O queues, Read, Write (FUA) and Flush, and posts
//! completions with the phase tag, holding them back while a completion
//! queue is full. Its own PRP walk is written apart from the driver's
//! builder, so the tests check one against the other.
//!
//! Knobs for the tests: a volatile write cache (written data becomes
//! durable only at Flush or FUA: [`SimCtrlr::durable`]), CSTS.RDY
//! following CC.EN only after some reads, manual processing (commands
//! wait until [`SimCtrlr::process`]), an error status for one LBA, a
//! read-only namespace, and controller fatal status.

use std::collections::BTreeMap;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nvme::sqe::{Cqe, Sqe, Status, CQE_LEN, SQE_LEN};

use super::dma::DmaArena;
use super::regs::{self, Regs, PAGE};

/// What the simulated controller is.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Namespaces 1.., as (blocks, block size).
    pub namespaces: Vec<(u64, u32)>,
    pub vwc: bool,
    /// Entries per queue at most.
    pub mqes: u16,
    pub dstrd: u32,
    /// I/O queue pairs the controller grants at most.
    pub max_queues: u16,
    /// CSTS reads before RDY follows a change of CC.EN.
    pub ready_delay: u32,
    /// CAP.TO, in 500 ms units.
    pub timeout_units: u8,
    pub mdts: u8,
    /// Execute commands as soon as their doorbell is written.
    pub auto: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            namespaces: vec![(2048, 512)],
            vwc: true,
            mqes: 1023,
            dstrd: 0,
            max_queues: 8,
            ready_delay: 3,
            timeout_units: 2,
            mdts: 5,
            auto: true,
        }
    }
}

struct SimSq {
    base: u64,
    entries: u16,
    head: u16,
    tail: u16,
    cqid: u16,
}

struct SimCq {
    base: u64,
    entries: u16,
    head: u16,
    tail: u16,
    phase: bool,
}

struct Ns {
    block_size: u32,
    data: Vec<u8>,
    durable: Vec<u8>,
    read_only: bool,
}

#[derive(Default, Clone, Copy, Debug)]
pub struct SimCounters {
    pub commands: u64,
    pub flushes: u64,
    pub fua_writes: u64,
    pub sq_doorbells: u64,
    pub cq_doorbells: u64,
    /// Doorbell writes past a queue's end or to a queue that is not there.
    pub bad_doorbells: u64,
}

struct State {
    cfg: SimConfig,
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    /// CSTS reads left before RDY follows EN.
    countdown: u32,
    granted: u16,
    sqs: BTreeMap<u16, SimSq>,
    cqs: BTreeMap<u16, SimCq>,
    ns: Vec<Ns>,
    /// An error status for any command touching (nsid, lba).
    bad_lba: Option<(u32, u64, Status)>,
    counters: SimCounters,
    /// Submission queues that carried I/O commands.
    io_sqs: std::collections::BTreeSet<u16>,
}

/// The simulated controller: hand it to the driver as its [`Regs`].
pub struct SimCtrlr {
    /// Told apart in the namespaces' NGUIDs (bdev UUIDs are unique).
    id: u32,
    arena: Arc<DmaArena>,
    st: Mutex<State>,
}

impl SimCtrlr {
    pub fn new(arena: &Arc<DmaArena>, cfg: SimConfig) -> Arc<SimCtrlr> {
        let ns = cfg
            .namespaces
            .iter()
            .map(|&(blocks, bs)| {
                let len = (blocks * u64::from(bs)) as usize;
                Ns {
                    block_size: bs,
                    data: vec![0; len],
                    durable: vec![0; len],
                    read_only: false,
                }
            })
            .collect();
        static IDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        Arc::new(SimCtrlr {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            arena: arena.clone(),
            st: Mutex::new(State {
                cfg,
                cc: 0,
                csts: 0,
                aqa: 0,
                asq: 0,
                acq: 0,
                countdown: 0,
                granted: 0,
                sqs: BTreeMap::new(),
                cqs: BTreeMap::new(),
                ns,
                bad_lba: None,
                counters: SimCounters::default(),
                io_sqs: Default::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_auto(&self, auto: bool) {
        self.lock().cfg.auto = auto;
    }

    /// Executes what every submission queue holds (as far as completion
    /// queue room allows).
    pub fn process(&self) {
        let mut st = self.lock();
        let qids: Vec<u16> = st.sqs.keys().copied().collect();
        for q in qids {
            self.run_sq(&mut st, q);
        }
    }

    /// Controller Fatal Status: nothing more is executed until a reset.
    pub fn set_fatal(&self) {
        self.lock().csts |= regs::CSTS_CFS;
    }

    /// Commands touching `lba` of `nsid` end with `status`.
    pub fn fail_lba(&self, nsid: u32, lba: u64, status: Status) {
        self.lock().bad_lba = Some((nsid, lba, status));
    }

    pub fn set_read_only(&self, nsid: u32, ro: bool) {
        if let Some(n) = self.lock().ns.get_mut(nsid as usize - 1) {
            n.read_only = ro;
        }
    }

    pub fn counters(&self) -> SimCounters {
        self.lock().counters
    }

    /// I/O queues that exist (created and not deleted).
    pub fn io_queues(&self) -> usize {
        self.lock().sqs.keys().filter(|&&q| q != 0).count()
    }

    /// The submission queues that have carried I/O commands.
    pub fn io_sqs_used(&self) -> Vec<u16> {
        self.lock().io_sqs.iter().copied().collect()
    }

    /// Bytes of namespace `nsid` as a reader sees them now.
    pub fn data(&self, nsid: u32, at: usize, len: usize) -> Vec<u8> {
        self.lock().ns[nsid as usize - 1].data[at..at + len].to_vec()
    }

    /// Bytes of namespace `nsid` that survive a power loss.
    pub fn durable(&self, nsid: u32, at: usize, len: usize) -> Vec<u8> {
        self.lock().ns[nsid as usize - 1].durable[at..at + len].to_vec()
    }

    fn mem(&self, iova: u64, len: usize) -> Option<*mut u8> {
        self.arena.at_iova(iova, len)
    }

    fn read_mem(&self, iova: u64, out: &mut [u8]) -> bool {
        let Some(p) = self.mem(iova, out.len()) else {
            return false;
        };
        // SAFETY: at_iova checked the range is inside the arena; the
        // driver does not write memory it handed to a command in flight.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
        true
    }

    fn write_mem(&self, iova: u64, data: &[u8]) -> bool {
        let Some(p) = self.mem(iova, data.len()) else {
            return false;
        };
        // SAFETY: as in read_mem; the driver reads this memory only after
        // the completion that follows.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        true
    }

    /// The (IOVA, bytes) pieces `len` bytes of data occupy under PRP1 and
    /// PRP2, walked as a controller does; `None` for a malformed list.
    fn prp_pieces(&self, prp1: u64, prp2: u64, len: usize) -> Option<Vec<(u64, usize)>> {
        let first = len.min(PAGE - (prp1 as usize % PAGE));
        let mut out = vec![(prp1, first)];
        let mut left = len - first;
        if left == 0 {
            return Some(out);
        }
        if left <= PAGE {
            if !prp2.is_multiple_of(PAGE as u64) {
                return None;
            }
            out.push((prp2, left));
            return Some(out);
        }
        let mut entry_at = prp2;
        if !entry_at.is_multiple_of(8) {
            return None;
        }
        while left > 0 {
            let mut e = [0u8; 8];
            if !self.read_mem(entry_at, &mut e) {
                return None;
            }
            let v = u64::from_le_bytes(e);
            let last_in_page = (entry_at % PAGE as u64) == (PAGE - 8) as u64;
            if last_in_page && left > PAGE {
                // A chain to the next list page.
                entry_at = v;
                continue;
            }
            if v % PAGE as u64 != 0 {
                return None;
            }
            let n = left.min(PAGE);
            out.push((v, n));
            left -= n;
            entry_at += 8;
        }
        Some(out)
    }

    fn write_host(&self, sqe: &Sqe, data: &[u8]) -> Status {
        let (p1, p2) = prps(sqe);
        let Some(pieces) = self.prp_pieces(p1, p2, data.len()) else {
            return Status::DATA_TRANSFER_ERROR;
        };
        let mut at = 0;
        for (iova, n) in pieces {
            if !self.write_mem(iova, &data[at..at + n]) {
                return Status::DATA_TRANSFER_ERROR;
            }
            at += n;
        }
        Status::SUCCESS
    }

    fn read_host(&self, sqe: &Sqe, out: &mut [u8]) -> Status {
        let (p1, p2) = prps(sqe);
        let Some(pieces) = self.prp_pieces(p1, p2, out.len()) else {
            return Status::DATA_TRANSFER_ERROR;
        };
        let mut at = 0;
        for (iova, n) in pieces {
            if !self.read_mem(iova, &mut out[at..at + n]) {
                return Status::DATA_TRANSFER_ERROR;
            }
            at += n;
        }
        Status::SUCCESS
    }

    fn run_sq(&self, st: &mut State, qid: u16) {
        if st.csts & regs::CSTS_CFS != 0 || st.csts & regs::CSTS_RDY == 0 {
            return;
        }
        loop {
            let Some(sq) = st.sqs.get(&qid) else { return };
            if sq.head == sq.tail {
                return;
            }
            let (base, head, entries, cqid) = (sq.base, sq.head, sq.entries, sq.cqid);
            let Some(cq) = st.cqs.get(&cqid) else { return };
            if (cq.tail + 1) % cq.entries == cq.head {
                // No room for the completion: the command waits.
                return;
            }
            let mut b = [0u8; SQE_LEN];
            if !self.read_mem(base + u64::from(head) * SQE_LEN as u64, &mut b) {
                st.csts |= regs::CSTS_CFS;
                return;
            }
            let sqe = Sqe(b);
            let new_head = (head + 1) % entries;
            if let Some(sq) = st.sqs.get_mut(&qid) {
                sq.head = new_head;
            }
            st.counters.commands += 1;
            let (status, dw0) = if qid == 0 {
                self.admin(st, &sqe)
            } else {
                st.io_sqs.insert(qid);
                (self.io(st, &sqe), 0)
            };
            let Some(cq) = st.cqs.get_mut(&cqid) else {
                return;
            };
            let cqe = Cqe {
                dw0,
                dw1: 0,
                sqhd: new_head,
                sqid: qid,
                cid: sqe.cid(),
                status,
                phase: cq.phase,
            }
            .encode();
            let at = cq.base + u64::from(cq.tail) * CQE_LEN as u64;
            if let Some(p) = self.mem(at, CQE_LEN) {
                // SAFETY: inside the arena (checked); the body first, then
                // the status word with the phase tag, as a device does.
                unsafe {
                    std::ptr::copy_nonoverlapping(cqe.as_ptr(), p, 14);
                    fence(Ordering::Release);
                    std::ptr::write_volatile(p.add(14).cast::<[u8; 2]>(), [cqe[14], cqe[15]]);
                }
            }
            cq.tail += 1;
            if cq.tail == cq.entries {
                cq.tail = 0;
                cq.phase = !cq.phase;
            }
        }
    }

    fn admin(&self, st: &mut State, sqe: &Sqe) -> (Status, u32) {
        match sqe.opcode() {
            0x06 => (self.identify(st, sqe), 0),
            0x09 if sqe.cdw10() & 0xFF == 0x07 => {
                let want = (sqe.cdw11() & 0xFFFF).min(sqe.cdw11() >> 16) as u16 + 1;
                st.granted = want.min(st.cfg.max_queues);
                let g = u32::from(st.granted - 1);
                (Status::SUCCESS, g | (g << 16))
            }
            0x05 | 0x01 => (self.create_queue(st, sqe), 0),
            0x00 => {
                let q = (sqe.cdw10() & 0xFFFF) as u16;
                if q == 0 || st.sqs.remove(&q).is_none() {
                    return (Status::INVALID_QUEUE_ID.with_dnr(), 0);
                }
                (Status::SUCCESS, 0)
            }
            0x04 => {
                let q = (sqe.cdw10() & 0xFFFF) as u16;
                if st.sqs.values().any(|s| s.cqid == q) {
                    // An SQ still posts there: Invalid Queue Deletion.
                    return (Status::command_specific(0x0C).with_dnr(), 0);
                }
                if q == 0 || st.cqs.remove(&q).is_none() {
                    return (Status::INVALID_QUEUE_ID.with_dnr(), 0);
                }
                (Status::SUCCESS, 0)
            }
            _ => (Status::INVALID_OPCODE.with_dnr(), 0),
        }
    }

    fn create_queue(&self, st: &mut State, sqe: &Sqe) -> Status {
        let qid = (sqe.cdw10() & 0xFFFF) as u16;
        let size = (sqe.cdw10() >> 16) + 1;
        let (prp1, _) = prps(sqe);
        if qid == 0 || qid > st.granted {
            return Status::INVALID_QUEUE_ID.with_dnr();
        }
        if size < 2 || size > u32::from(st.cfg.mqes) + 1 {
            return Status::INVALID_QUEUE_SIZE.with_dnr();
        }
        // Physically contiguous only (PC); the ring inside the arena.
        let entry = if sqe.opcode() == 0x05 {
            CQE_LEN
        } else {
            SQE_LEN
        };
        if sqe.cdw11() & 1 == 0
            || prp1 % PAGE as u64 != 0
            || self.mem(prp1, size as usize * entry).is_none()
        {
            return Status::INVALID_FIELD.with_dnr();
        }
        let entries = size as u16;
        if sqe.opcode() == 0x05 {
            if st.cqs.contains_key(&qid) {
                return Status::INVALID_QUEUE_ID.with_dnr();
            }
            st.cqs.insert(
                qid,
                SimCq {
                    base: prp1,
                    entries,
                    head: 0,
                    tail: 0,
                    phase: true,
                },
            );
        } else {
            let cqid = (sqe.cdw11() >> 16) as u16;
            if st.sqs.contains_key(&qid) {
                return Status::INVALID_QUEUE_ID.with_dnr();
            }
            if cqid == 0 || !st.cqs.contains_key(&cqid) {
                // Completion Queue Invalid.
                return Status::command_specific(0x00).with_dnr();
            }
            st.sqs.insert(
                qid,
                SimSq {
                    base: prp1,
                    entries,
                    head: 0,
                    tail: 0,
                    cqid,
                },
            );
        }
        Status::SUCCESS
    }

    fn identify(&self, st: &State, sqe: &Sqe) -> Status {
        let mut b = vec![0u8; 4096];
        match sqe.cdw10() & 0xFF {
            1 => {
                b[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
                b[4..24].copy_from_slice(b"SIM0000000000000001 ");
                b[24..64].fill(b' ');
                b[24..37].copy_from_slice(b"ferrothin sim");
                b[64..72].copy_from_slice(b"1.0     ");
                b[77] = st.cfg.mdts;
                b[78..80].copy_from_slice(&1u16.to_le_bytes());
                b[80..84].copy_from_slice(&0x0001_0400u32.to_le_bytes());
                b[516..520].copy_from_slice(&(st.ns.len() as u32).to_le_bytes());
                b[525] = u8::from(st.cfg.vwc);
            }
            0 => {
                let nsid = sqe.nsid();
                let Some(ns) = st.ns.get((nsid as usize).wrapping_sub(1)) else {
                    return Status::INVALID_NAMESPACE.with_dnr();
                };
                let blocks = (ns.data.len() / ns.block_size as usize) as u64;
                b[0..8].copy_from_slice(&blocks.to_le_bytes());
                b[8..16].copy_from_slice(&blocks.to_le_bytes());
                b[16..24].copy_from_slice(&blocks.to_le_bytes());
                b[104..108].copy_from_slice(&nsid.to_le_bytes());
                b[108..112].copy_from_slice(&self.id.to_le_bytes());
                b[104 + 15] = 0x5A;
                let lbads = ns.block_size.trailing_zeros();
                b[128..132].copy_from_slice(&(lbads << 16).to_le_bytes());
            }
            2 => {
                let from = sqe.nsid();
                let ids = (1..=st.ns.len() as u32).filter(|&n| n > from);
                for (i, n) in ids.take(1024).enumerate() {
                    b[i * 4..i * 4 + 4].copy_from_slice(&n.to_le_bytes());
                }
            }
            _ => return Status::INVALID_FIELD.with_dnr(),
        }
        self.write_host(sqe, &b)
    }

    fn io(&self, st: &mut State, sqe: &Sqe) -> Status {
        let nsid = sqe.nsid();
        let Some(idx) = (nsid as usize).checked_sub(1).filter(|&i| i < st.ns.len()) else {
            return Status::INVALID_NAMESPACE.with_dnr();
        };
        if sqe.opcode() == 0x00 {
            st.counters.flushes += 1;
            let ns = &mut st.ns[idx];
            let d = ns.data.clone();
            ns.durable = d;
            return Status::SUCCESS;
        }
        let slba = u64::from(sqe.cdw10()) | (u64::from(sqe.cdw11()) << 32);
        let nlb = u64::from(sqe.cdw12() & 0xFFFF) + 1;
        let fua = sqe.cdw12() & (1 << 30) != 0;
        let bs = u64::from(st.ns[idx].block_size);
        let blocks = st.ns[idx].data.len() as u64 / bs;
        if slba.checked_add(nlb).is_none_or(|e| e > blocks) {
            return Status::LBA_OUT_OF_RANGE.with_dnr();
        }
        if let Some((n, lba, status)) = st.bad_lba {
            if n == nsid && (slba..slba + nlb).contains(&lba) {
                return status;
            }
        }
        let (at, len) = ((slba * bs) as usize, (nlb * bs) as usize);
        match sqe.opcode() {
            0x02 => {
                let data = st.ns[idx].data[at..at + len].to_vec();
                self.write_host(sqe, &data)
            }
            0x01 => {
                if st.ns[idx].read_only {
                    return Status::NAMESPACE_WRITE_PROTECTED.with_dnr();
                }
                let mut data = vec![0u8; len];
                let s = self.read_host(sqe, &mut data);
                if !s.is_success() {
                    return s;
                }
                let vwc = st.cfg.vwc;
                let ns = &mut st.ns[idx];
                ns.data[at..at + len].copy_from_slice(&data);
                if fua || !vwc {
                    ns.durable[at..at + len].copy_from_slice(&data);
                }
                if fua {
                    st.counters.fua_writes += 1;
                }
                Status::SUCCESS
            }
            _ => Status::INVALID_OPCODE.with_dnr(),
        }
    }

    fn write_cc(&self, st: &mut State, v: u32) {
        let was = st.cc & regs::CC_EN != 0;
        let now = v & regs::CC_EN != 0;
        st.cc = v;
        if v & regs::CC_SHN_MASK != 0 {
            st.csts = (st.csts & !regs::CSTS_SHST_MASK) | regs::CSTS_SHST_DONE;
        }
        if was == now {
            return;
        }
        st.countdown = st.cfg.ready_delay;
        st.sqs.clear();
        st.cqs.clear();
        if now {
            let bad_sizes = (v >> 16) & 0xF != 6 || (v >> 20) & 0xF != 4 || (v >> 7) & 0xF != 0;
            let asqs = (st.aqa & 0xFFF) as u16 + 1;
            let acqs = ((st.aqa >> 16) & 0xFFF) as u16 + 1;
            if bad_sizes || asqs < 2 || acqs < 2 {
                st.csts |= regs::CSTS_CFS;
                return;
            }
            st.sqs.insert(
                0,
                SimSq {
                    base: st.asq,
                    entries: asqs,
                    head: 0,
                    tail: 0,
                    cqid: 0,
                },
            );
            st.cqs.insert(
                0,
                SimCq {
                    base: st.acq,
                    entries: acqs,
                    head: 0,
                    tail: 0,
                    phase: true,
                },
            );
        } else {
            // A reset clears fatal status and shutdown state.
            st.csts &= !(regs::CSTS_CFS | regs::CSTS_SHST_MASK);
            st.granted = 0;
        }
    }

    fn doorbell(&self, st: &mut State, off: u32, v: u32) {
        let stride = 4u32 << st.cfg.dstrd;
        let rel = off - regs::DOORBELL_BASE;
        if !rel.is_multiple_of(stride) {
            st.counters.bad_doorbells += 1;
            return;
        }
        let idx = rel / stride;
        let qid = (idx / 2) as u16;
        if idx.is_multiple_of(2) {
            st.counters.sq_doorbells += 1;
            match st.sqs.get_mut(&qid) {
                Some(sq) if v < u32::from(sq.entries) => sq.tail = v as u16,
                _ => {
                    st.counters.bad_doorbells += 1;
                    return;
                }
            }
            if st.cfg.auto {
                self.run_sq(st, qid);
            }
        } else {
            st.counters.cq_doorbells += 1;
            match st.cqs.get_mut(&qid) {
                Some(cq) if v < u32::from(cq.entries) => cq.head = v as u16,
                _ => {
                    st.counters.bad_doorbells += 1;
                    return;
                }
            }
            if st.cfg.auto {
                // Commands held for room in this queue go on.
                let waiting: Vec<u16> = st
                    .sqs
                    .iter()
                    .filter(|(_, s)| s.cqid == qid && s.head != s.tail)
                    .map(|(&q, _)| q)
                    .collect();
                for q in waiting {
                    self.run_sq(st, q);
                }
            }
        }
    }
}

fn prps(sqe: &Sqe) -> (u64, u64) {
    let b = &sqe.0;
    let le = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    };
    (le(24), le(32))
}

impl Regs for SimCtrlr {
    fn read32(&self, off: u32) -> u32 {
        let mut st = self.lock();
        match off {
            regs::CAP => {
                u32::from(st.cfg.mqes) | (u32::from(st.cfg.timeout_units) << 24) | (1 << 16)
            }
            0x04 => st.cfg.dstrd | (1 << 5), // CSS: NVM
            regs::VS => 0x0001_0400,
            regs::CC => st.cc,
            regs::CSTS => {
                if st.countdown > 0 {
                    st.countdown -= 1;
                } else if st.cc & regs::CC_EN != 0 {
                    st.csts |= regs::CSTS_RDY;
                } else {
                    st.csts &= !regs::CSTS_RDY;
                }
                st.csts
            }
            regs::AQA => st.aqa,
            regs::ASQ => st.asq as u32,
            0x2C => (st.asq >> 32) as u32,
            regs::ACQ => st.acq as u32,
            0x34 => (st.acq >> 32) as u32,
            _ => 0,
        }
    }

    fn write32(&self, off: u32, v: u32) {
        let mut st = self.lock();
        match off {
            regs::CC => self.write_cc(&mut st, v),
            regs::AQA => st.aqa = v,
            regs::ASQ => st.asq = (st.asq & !0xFFFF_FFFF) | u64::from(v),
            0x2C => st.asq = (st.asq & 0xFFFF_FFFF) | (u64::from(v) << 32),
            regs::ACQ => st.acq = (st.acq & !0xFFFF_FFFF) | u64::from(v),
            0x34 => st.acq = (st.acq & 0xFFFF_FFFF) | (u64::from(v) << 32),
            o if o >= regs::DOORBELL_BASE => self.doorbell(&mut st, o, v),
            _ => {}
        }
    }
}
