//! The controller over its registers: bring-up (CAP, disable if enabled,
//! admin queue in AQA/ASQ/ACQ, CC, CSTS.RDY within CAP.TO), the admin
//! queue, Identify, Number of Queues, I/O queue creation and deletion,
//! fatal status (CSTS.CFS) and reset, and shutdown notification (CC.SHN).
//!
//! Everything here is synchronous and polls registers or the admin
//! completion queue with short sleeps: it runs at attach and detach (on
//! a thread of their own, so no reactor waits), at a reset, and when a
//! core makes its I/O queue (two admin commands). The I/O path never
//! comes here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nvme::sqe::{Cqe, Sqe};

use super::cmd as pcmd;
use super::dma::DmaArena;
use super::prp::Prp;
use super::queue::QueuePair;
use super::regs::{self, Cap, Regs, PAGE};
use crate::modules::nvme::cmd;
use crate::modules::nvme::identify::{ActiveNsList, CtrlrData, NsData};
use crate::modules::nvme::NvmeError;

/// Admin queue entries.
pub const ADMIN_ENTRIES: u16 = 32;
/// An admin command that takes longer than this fails the controller.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A missing CAP.TO still gets this long; an absurd one is cut to the max.
const MIN_ENABLE_WAIT: Duration = Duration::from_millis(500);
const MAX_ENABLE_WAIT: Duration = Duration::from_secs(60);
/// How long a shutdown notification may take before we give up on it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// What the host asks for at bring-up.
#[derive(Clone, Copy, Debug)]
pub struct BringUp {
    /// I/O queue pairs wanted (one per reactor).
    pub io_queues: u16,
    /// Entries per I/O queue wanted (cut to CAP.MQES).
    pub io_entries: u16,
    /// Bytes per command at most (cut to MDTS).
    pub max_xfer: usize,
}

fn status_err(what: &'static str, c: &Cqe) -> Result<(), NvmeError> {
    if c.status.is_success() {
        Ok(())
    } else {
        Err(NvmeError::Status {
            what,
            sct: c.status.sct(),
            sc: c.status.sc(),
        })
    }
}

/// Polls CSTS until `done`, up to `wait`. CFS ends the wait with an error.
fn wait_csts(
    regs: &dyn Regs,
    wait: Duration,
    done: impl Fn(u32) -> bool,
) -> Result<u32, NvmeError> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(10);
    loop {
        let csts = regs.read32(regs::CSTS);
        if csts == u32::MAX {
            return Err(NvmeError::Controller(
                "CSTS reads all ones: the device is gone (surprise removal or a dead link)".into(),
            ));
        }
        if csts & regs::CSTS_CFS != 0 {
            return Err(NvmeError::Controller(
                "controller fatal status (CSTS.CFS)".into(),
            ));
        }
        if done(csts) {
            return Ok(csts);
        }
        if start.elapsed() > wait {
            return Err(NvmeError::Timeout(format!(
                "CSTS {csts:#x} after {wait:?} (CAP.TO)"
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// Where an admin command's data is.
enum Data {
    /// In the admin slot's buffer, this many bytes.
    Slot(usize),
    /// At these PRPs (a queue's ring).
    Given(Prp),
}

/// A controller's state as the I/O queues see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// Reset in progress: I/O waits.
    Resetting,
    /// Dead (reset failed, or detached): I/O fails.
    Failed,
}

/// A brought-up controller.
pub struct Controller {
    pub regs: Arc<dyn Regs>,
    pub arena: Arc<DmaArena>,
    pub cap: Cap,
    pub vs: u32,
    pub data: CtrlrData,
    /// I/O queue pairs the controller granted.
    pub granted: u16,
    pub io_entries: u16,
    pub max_xfer: usize,
    /// Active namespaces with a usable format.
    pub namespaces: Vec<(u32, NsData)>,
    admin: Mutex<QueuePair>,
    /// QIDs 1..=granted; true while a core's queue has it.
    qids: Mutex<Vec<bool>>,
    /// Bumped at each reset: a queue made before it must be made again.
    generation: AtomicU64,
    resetting: AtomicBool,
    failed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Controller {
    /// Resets and enables the controller behind `regs`, with its admin
    /// queue in `arena`; identifies it and its namespaces, asks for
    /// `want.io_queues` I/O queues.
    pub fn bring_up(
        regs: Arc<dyn Regs>,
        arena: Arc<DmaArena>,
        want: BringUp,
    ) -> Result<Controller, NvmeError> {
        let cap = Cap(regs.read64(regs::CAP));
        if cap.0 == u64::MAX {
            return Err(NvmeError::Controller(
                "CAP reads all ones: BAR0 is not the controller's (or the device is gone)".into(),
            ));
        }
        if !cap.nvm_css() {
            return Err(NvmeError::Controller(
                "the controller does not support the NVM command set (CAP.CSS)".into(),
            ));
        }
        if cap.mps_min() > PAGE {
            return Err(NvmeError::Controller(format!(
                "the controller's smallest page is {} bytes; the driver uses 4 KiB",
                cap.mps_min()
            )));
        }
        let vs = regs.read32(regs::VS);
        let admin_entries = ADMIN_ENTRIES.min(cap.mqes().min(4096) as u16);
        let admin = QueuePair::new(
            regs.clone(),
            &arena,
            0,
            admin_entries,
            cap.dstrd(),
            cmd::IDENTIFY_LEN as usize,
        )?;
        let mut c = Controller {
            regs,
            arena,
            cap,
            vs,
            data: CtrlrData::default(),
            granted: 0,
            io_entries: 0,
            max_xfer: want.max_xfer,
            namespaces: Vec::new(),
            admin: Mutex::new(admin),
            qids: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            resetting: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        };
        c.enable()?;
        let (_, id) = c.admin_cmd(cmd::identify(1, 0), 4096)?;
        c.data = CtrlrData::parse(&id);
        c.max_xfer = (c.data.max_xfer(want.max_xfer.min(u32::MAX as usize) as u32) as usize)
            .max(PAGE)
            / PAGE
            * PAGE;
        c.granted = c.set_num_queues(want.io_queues)?;
        *lock(&c.qids) = vec![false; usize::from(c.granted)];
        let maxcmd = if c.data.maxcmd == 0 {
            u32::MAX
        } else {
            u32::from(c.data.maxcmd)
        };
        c.io_entries = u32::from(want.io_entries)
            .min(cap.mqes())
            .min(maxcmd)
            .max(2) as u16;
        c.namespaces = c.identify_namespaces()?;
        Ok(c)
    }

    fn enable_wait(&self) -> Duration {
        Duration::from_millis(self.cap.to_ms()).clamp(MIN_ENABLE_WAIT, MAX_ENABLE_WAIT)
    }

    /// Disables the controller if it is enabled, programs the admin
    /// queue, enables it and waits for RDY.
    fn enable(&self) -> Result<(), NvmeError> {
        let r = &*self.regs;
        let wait = self.enable_wait();
        let cc = r.read32(regs::CC);
        let csts = r.read32(regs::CSTS);
        if cc & regs::CC_EN != 0 || csts & regs::CSTS_RDY != 0 {
            // A controller left enabled (by the kernel's driver, or by a
            // process that died) is reset first. CFS is expected here and
            // cleared by the reset, so it does not end this wait.
            r.write32(regs::CC, cc & !regs::CC_EN);
            let start = Instant::now();
            while r.read32(regs::CSTS) & regs::CSTS_RDY != 0 {
                if start.elapsed() > wait {
                    return Err(NvmeError::Timeout(format!(
                        "CSTS.RDY still set {wait:?} after clearing CC.EN"
                    )));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let mut a = lock(&self.admin);
        a.reset();
        let e = u32::from(a.entries() - 1);
        r.write32(regs::AQA, e | (e << 16));
        r.write64(regs::ASQ, a.sq_iova());
        r.write64(regs::ACQ, a.cq_iova());
        drop(a);
        r.write32(regs::CC, regs::CC_BASE | regs::CC_EN);
        wait_csts(r, wait, |c| c & regs::CSTS_RDY != 0)?;
        Ok(())
    }

    /// Runs one admin command: its completion and `len` bytes of data
    /// from the controller (0: none), moved through an admin slot.
    pub fn admin_cmd(&self, sqe: Sqe, len: usize) -> Result<(Cqe, Vec<u8>), NvmeError> {
        self.exec(sqe, Data::Slot(len))
    }

    fn exec(&self, sqe: Sqe, data: Data) -> Result<(Cqe, Vec<u8>), NvmeError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(NvmeError::Controller("the controller has failed".into()));
        }
        let mut a = lock(&self.admin);
        let Some(cid) = a.alloc() else {
            return Err(NvmeError::Controller(
                "every admin slot is held by a command that never completed".into(),
            ));
        };
        let (submitted, len) = match data {
            Data::Slot(len) => (a.submit(cid, sqe, len), len),
            Data::Given(p) => (a.submit_prp(cid, sqe, p), 0),
        };
        if let Err(e) = submitted {
            a.release(cid);
            return Err(e);
        }
        a.ring();
        let start = Instant::now();
        let mut got: Option<(Cqe, Vec<u8>)> = None;
        let mut spins = 0u32;
        loop {
            a.poll(1, |q, c, cqe| {
                if c == cid {
                    got = Some((*cqe, q.buf(c)[..len].to_vec()));
                }
            })?;
            if let Some(g) = got.take() {
                return Ok(g);
            }
            if start.elapsed() > ADMIN_TIMEOUT {
                // The slot stays taken: the controller may still write it.
                return Err(NvmeError::Timeout(format!(
                    "admin command {:#04x} unanswered after {ADMIN_TIMEOUT:?}",
                    sqe.opcode()
                )));
            }
            let csts = self.regs.read32(regs::CSTS);
            if csts & regs::CSTS_CFS != 0 || csts == u32::MAX {
                return Err(NvmeError::Controller(format!(
                    "controller fatal status during admin command {:#04x}",
                    sqe.opcode()
                )));
            }
            spins += 1;
            if spins > 64 {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn checked(
        &self,
        what: &'static str,
        sqe: Sqe,
        len: usize,
    ) -> Result<(Cqe, Vec<u8>), NvmeError> {
        let (c, d) = self.admin_cmd(sqe, len)?;
        status_err(what, &c)?;
        Ok((c, d))
    }

    fn set_num_queues(&self, n: u16) -> Result<u16, NvmeError> {
        let (c, _) = self.checked(
            "Set Features (Number of Queues)",
            cmd::set_num_queues(n.max(1)),
            0,
        )?;
        let granted = (c.dw0 & 0xFFFF).min(c.dw0 >> 16) + 1;
        Ok(granted.min(u32::from(n.max(1))) as u16)
    }

    fn identify_namespaces(&self) -> Result<Vec<(u32, NsData)>, NvmeError> {
        let mut list = ActiveNsList::new();
        while let Some(from) = list.next_page() {
            let (_, l) =
                self.checked("Identify active namespaces", cmd::identify(2, from), 4096)?;
            list.take(&l)?;
        }
        let nsids = list.into_nsids();
        let mut out = Vec::new();
        for nsid in nsids {
            let (_, b) = self.checked("Identify Namespace", cmd::identify(0, nsid), 4096)?;
            match NsData::parse(&b) {
                Ok(ns) if ns.nsze > 0 && ns.ncap > 0 => out.push((nsid, ns)),
                Ok(_) => {}
                Err(e) => tracing::warn!("nvme pcie: namespace {nsid} left out: {e}"),
            }
        }
        Ok(out)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn health(&self) -> Health {
        if self.failed.load(Ordering::Acquire) {
            Health::Failed
        } else if self.resetting.load(Ordering::Acquire) {
            Health::Resetting
        } else {
            Health::Ready
        }
    }

    /// Marks the controller dead: I/O fails from now on.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// A free I/O QID, taken.
    fn take_qid(&self) -> Option<u16> {
        let mut q = lock(&self.qids);
        let i = q.iter().position(|used| !used)?;
        q[i] = true;
        Some(i as u16 + 1)
    }

    fn put_qid(&self, qid: u16) {
        if let Some(u) = lock(&self.qids).get_mut(usize::from(qid).wrapping_sub(1)) {
            *u = false;
        }
    }

    /// An I/O queue pair: its memory from the arena, created on the
    /// controller (completion queue first).
    pub fn create_io_queue(&self) -> Result<QueuePair, NvmeError> {
        let qid = self.take_qid().ok_or_else(|| {
            NvmeError::Busy(format!(
                "every one of the {} I/O queues the controller granted is in use",
                self.granted
            ))
        })?;
        let q = QueuePair::new(
            self.regs.clone(),
            &self.arena,
            qid,
            self.io_entries,
            self.cap.dstrd(),
            self.max_xfer,
        );
        let q = match q {
            Ok(q) => q,
            Err(e) => {
                self.put_qid(qid);
                return Err(e);
            }
        };
        if let Err(e) = self.register_io_queue(&q) {
            self.put_qid(qid);
            return Err(e);
        }
        Ok(q)
    }

    /// Creates `q`'s completion and submission queues on the controller
    /// (at first, and again after a reset).
    pub fn register_io_queue(&self, q: &QueuePair) -> Result<(), NvmeError> {
        let ring = |iova| {
            Data::Given(Prp {
                prp1: iova,
                prp2: 0,
            })
        };
        let (c, _) = self.exec(pcmd::create_io_cq(q.qid, q.entries()), ring(q.cq_iova()))?;
        status_err("Create I/O Completion Queue", &c)?;
        let made = self
            .exec(
                pcmd::create_io_sq(q.qid, q.entries(), q.qid),
                ring(q.sq_iova()),
            )
            .and_then(|(c, _)| status_err("Create I/O Submission Queue", &c));
        if let Err(e) = made {
            let _ = self.admin_cmd(pcmd::delete_io_cq(q.qid), 0);
            return Err(e);
        }
        Ok(())
    }

    /// Deletes `q` on the controller (submission queue first) and gives
    /// its QID back. Its memory goes when `q` drops.
    /// I/O queue pairs in use (one per core that did I/O here).
    pub fn io_queues_in_use(&self) -> usize {
        lock(&self.qids).iter().filter(|used| **used).count()
    }

    pub fn delete_io_queue(&self, q: &QueuePair) {
        if self.health() == Health::Ready {
            let sq = self.admin_cmd(pcmd::delete_io_sq(q.qid), 0);
            let cq = self.admin_cmd(pcmd::delete_io_cq(q.qid), 0);
            for (what, r) in [("SQ", sq), ("CQ", cq)] {
                match r {
                    Ok((c, _)) if c.status.is_success() => {}
                    Ok((c, _)) => tracing::debug!(
                        "nvme pcie: delete I/O {what} {}: status {:#x}/{:#x}",
                        q.qid,
                        c.status.sct(),
                        c.status.sc()
                    ),
                    Err(e) => tracing::debug!("nvme pcie: delete I/O {what} {}: {e}", q.qid),
                }
            }
        }
        self.put_qid(q.qid);
    }

    /// Whether the controller reports fatal status (or reads as gone).
    pub fn fatal(&self) -> bool {
        let csts = self.regs.read32(regs::CSTS);
        csts == u32::MAX || csts & regs::CSTS_CFS != 0
    }

    /// Resets a controller after fatal status: disable, enable, Number of
    /// Queues again. The I/O queues are gone on the controller; each
    /// core sees the new generation, fails what it had outstanding and
    /// registers its queue again. A reset that fails leaves the
    /// controller failed.
    pub fn reset(&self) -> Result<(), NvmeError> {
        if self.resetting.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        let r = self.enable().and_then(|()| {
            let g = self.set_num_queues(self.granted)?;
            if g < self.granted {
                return Err(NvmeError::Controller(format!(
                    "after the reset the controller grants {g} I/O queues, not {}",
                    self.granted
                )));
            }
            Ok(())
        });
        if let Err(e) = &r {
            tracing::error!("nvme pcie: reset failed: {e}; the controller is failed");
            self.fail();
        }
        self.resetting.store(false, Ordering::Release);
        r
    }

    /// Normal shutdown notification (CC.SHN), waiting for CSTS.SHST.
    pub fn shutdown(&self) -> Result<(), NvmeError> {
        let r = &*self.regs;
        let cc = r.read32(regs::CC);
        r.write32(regs::CC, (cc & !regs::CC_SHN_MASK) | regs::CC_SHN_NORMAL);
        let wait = Duration::from_millis(self.cap.to_ms()).clamp(MIN_ENABLE_WAIT, SHUTDOWN_WAIT);
        let start = Instant::now();
        loop {
            let csts = r.read32(regs::CSTS);
            if csts & regs::CSTS_SHST_MASK == regs::CSTS_SHST_DONE {
                return Ok(());
            }
            if csts == u32::MAX || start.elapsed() > wait {
                return Err(NvmeError::Timeout(format!(
                    "shutdown notification: CSTS {csts:#x} after {wait:?}"
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
