//! A controller's I/O queue pair on one core, shared by every namespace
//! bdev's channel there, and the poller that drives it. The queue is
//! made (Create I/O CQ and SQ on the admin queue) with the first channel
//! on the core and deleted with the last.
//!
//! Submit copies a write's data into a command slot's buffer in the DMA
//! arena (a bounce: the bdev layer's buffers are not in the arena) and
//! writes the entry; the poller writes the tail doorbell once for all
//! the entries written since its last turn; a bdev I/O larger than one command moves is split
//! into several that complete it once. With every slot taken, I/O waits
//! in order for a completion to free one: nothing is dropped. The poller
//! takes completions by phase tag, copies read data out, issues what
//! waits, and writes each doorbell at most once per turn. No system call
//! on this path.
//!
//! A timed check reads CSTS: on fatal status the controller is reset (on
//! a thread), every I/O outstanding on the core fails with EIO, and the
//! queue is registered again once the controller is back; I/O submitted
//! meanwhile waits. A failed or detached controller fails its I/O.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use reactor::{PollStatus, Poller};

use super::attach::PcieCtrlr;
use super::controller::Health;
use super::queue::QueuePair;
use crate::modules::nvme::cmd::{self, opc};
use crate::modules::nvme::io_table::{IoEntry, IoTable};
use crate::{IoBox, IoStatus, IoType, ModuleChannel};

/// How often each core's queue reads CSTS for fatal status.
const HEALTH_PERIOD: Duration = Duration::from_millis(100);

/// A namespace's I/O parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NsIo {
    pub nsid: u32,
    pub block_size: u32,
    /// Blocks one command moves at most.
    pub max_blocks: u64,
}

/// One command of a bdev I/O, by CID.
#[derive(Clone, Copy)]
struct Part {
    io: u32,
    /// Byte offset of the command's data in the I/O's buffers.
    at: usize,
    len: usize,
    read: bool,
}

struct State {
    qp: Option<QueuePair>,
    /// The controller generation `qp` is registered under.
    generation: u64,
    /// No queue could be made: I/O fails.
    broken: bool,
    ios: IoTable<NsIo>,
    /// I/Os with commands still to issue, oldest first.
    waiting: VecDeque<u32>,
    parts: Vec<Option<Part>>,
    /// Finished I/Os, completed once no borrow is held.
    done: Vec<(IoBox, IoStatus)>,
}

pub(crate) struct CoreQueue {
    ctrlr: Arc<PcieCtrlr>,
    st: RefCell<State>,
    poller: RefCell<Option<Poller>>,
    health: RefCell<Option<Poller>>,
}

thread_local! {
    static QUEUES: RefCell<HashMap<usize, Weak<CoreQueue>>> = RefCell::new(HashMap::new());
}

fn key(c: &Arc<PcieCtrlr>) -> usize {
    Arc::as_ptr(c) as usize
}

/// Copies `out.len()` bytes of `bufs` from byte `at`.
fn gather(bufs: &[crate::IoBuf], mut at: usize, mut out: &mut [u8]) {
    for b in bufs {
        if out.is_empty() {
            break;
        }
        if at >= b.len() {
            at -= b.len();
            continue;
        }
        let n = (b.len() - at).min(out.len());
        out[..n].copy_from_slice(&b.as_slice()[at..at + n]);
        out = &mut out[n..];
        at = 0;
    }
}

impl CoreQueue {
    /// This core's queue for `ctrlr`, made if there is none.
    pub fn get(ctrlr: &Arc<PcieCtrlr>) -> Rc<CoreQueue> {
        let k = key(ctrlr);
        if let Some(q) = QUEUES.with(|q| q.borrow().get(&k).and_then(Weak::upgrade)) {
            return q;
        }
        let c = &ctrlr.ctrl;
        let generation = c.generation();
        let (qp, broken) = match c.health() {
            Health::Ready => match c.create_io_queue() {
                Ok(q) => (Some(q), false),
                Err(e) => {
                    tracing::warn!(
                        "nvme pcie: {}: no I/O queue on this core: {e}; its I/O fails",
                        ctrlr.name
                    );
                    (None, true)
                }
            },
            // Made when the reset is over (check_health).
            Health::Resetting => (None, false),
            Health::Failed => (None, true),
        };
        // Slots for the most entries a queue of this controller has.
        let slots = usize::from(c.io_entries).max(2) - 1;
        let q = Rc::new(CoreQueue {
            ctrlr: ctrlr.clone(),
            st: RefCell::new(State {
                qp,
                generation,
                broken,
                ios: IoTable::with_capacity(slots),
                waiting: VecDeque::with_capacity(slots),
                parts: vec![None; slots],
                done: Vec::with_capacity(slots),
            }),
            poller: RefCell::new(None),
            health: RefCell::new(None),
        });
        let w = Rc::downgrade(&q);
        *q.poller.borrow_mut() = Some(reactor::register_poller(move || match w.upgrade() {
            Some(q) => q.poll(),
            None => PollStatus::Idle,
        }));
        let w = Rc::downgrade(&q);
        *q.health.borrow_mut() = Some(reactor::register_timed_poller(HEALTH_PERIOD, move || {
            if let Some(q) = w.upgrade() {
                q.check_health();
            }
            PollStatus::Idle
        }));
        QUEUES.with(|m| m.borrow_mut().insert(k, Rc::downgrade(&q)));
        q
    }

    /// Takes a bdev I/O; it completes later, exactly once.
    pub fn submit(&self, io: IoBox, ns: NsIo) {
        let failed = self.st.borrow().broken || self.ctrlr.ctrl.health() == Health::Failed;
        if failed {
            // Inside a submit call: the bdev layer defers the completion.
            io.complete(IoStatus::IoError(libc::EIO));
            return;
        }
        let mut st = self.st.borrow_mut();
        let idx = st.ios.insert(IoEntry::new(io, ns));
        st.waiting.push_back(idx);
        // The doorbell waits for this core's poller: one write for
        // everything submitted in this turn of the reactor.
        st.pump();
    }

    fn poll(&self) -> PollStatus {
        let mut st = self.st.borrow_mut();
        let Some(mut qp) = st.qp.take() else {
            drop(st);
            return self.complete_done();
        };
        let mut n = 0;
        let r = qp.poll(usize::MAX, |q, cid, cqe| {
            n += 1;
            let Some(p) = st.parts.get_mut(usize::from(cid)).and_then(Option::take) else {
                return;
            };
            let Some(e) = st.ios.get_mut(p.io) else {
                return;
            };
            e.inflight -= 1;
            if !cqe.status.is_success() {
                tracing::debug!(
                    "nvme pcie: {:?} at block {} failed: status type {:#x} code {:#x}",
                    e.io.io_type(),
                    e.io.offset_blocks(),
                    cqe.status.sct(),
                    cqe.status.sc()
                );
                e.status = IoStatus::IoError(libc::EIO);
            } else if p.read {
                e.io.copy_into_bufs(p.at, &q.buf(cid)[..p.len]);
            }
            if e.inflight == 0 && (e.next >= e.end || e.status != IoStatus::Success) {
                // An error stops the rest of a split I/O.
                if let Some(e) = st.ios.remove(p.io) {
                    st.done.push((e.io, e.status));
                }
            }
        });
        st.qp = Some(qp);
        if let Err(e) = r {
            // The controller broke the protocol: it is reset like a fatal one.
            tracing::error!(
                "nvme pcie: {}: {e}; resetting the controller",
                self.ctrlr.name
            );
            drop(st);
            self.start_reset();
            return PollStatus::Busy;
        }
        st.pump();
        let rang = st.qp.as_mut().is_some_and(QueuePair::ring);
        drop(st);
        let c = self.complete_done();
        if n > 0 || rang {
            PollStatus::Busy
        } else {
            c
        }
    }

    fn complete_done(&self) -> PollStatus {
        let mut done = std::mem::take(&mut self.st.borrow_mut().done);
        if done.is_empty() {
            self.st.borrow_mut().done = done;
            return PollStatus::Idle;
        }
        for (io, s) in done.drain(..) {
            io.complete(s);
        }
        let mut st = self.st.borrow_mut();
        if st.done.is_empty() {
            st.done = done;
        }
        PollStatus::Busy
    }

    fn start_reset(&self) {
        let c = self.ctrlr.clone();
        std::thread::Builder::new()
            .name("nvme-pcie-reset".into())
            .spawn(move || {
                if c.ctrl.reset().is_ok() {
                    tracing::info!("nvme pcie: {} reset after fatal status", c.name);
                }
            })
            .map(drop)
            .unwrap_or_else(|e| {
                tracing::error!("nvme pcie: no thread for the reset: {e}");
                self.ctrlr.ctrl.fail();
            });
    }

    /// Fatal status: start a reset. A new generation (the reset ran):
    /// fail what was outstanding, register the queue again.
    fn check_health(&self) {
        let c = &self.ctrlr.ctrl;
        if c.health() == Health::Ready && c.fatal() {
            tracing::error!(
                "nvme pcie: {}: controller fatal status; resetting",
                self.ctrlr.name
            );
            self.start_reset();
            return;
        }
        let mut st = self.st.borrow_mut();
        if c.health() == Health::Failed && !st.broken {
            // Detached or dead: what is outstanding will not complete.
            st.fail_all();
            st.broken = true;
            drop(st);
            self.complete_done();
            return;
        }
        let gen_now = c.generation();
        if st.generation == gen_now && (st.qp.is_some() || st.broken) {
            return;
        }
        match c.health() {
            Health::Resetting => return,
            Health::Failed => {
                st.fail_all();
                st.broken = true;
            }
            Health::Ready => {
                st.fail_all();
                let remade = match st.qp.as_mut() {
                    Some(q) => {
                        q.reset();
                        c.register_io_queue(q).map(|()| None)
                    }
                    // A queue first wanted during a reset.
                    None => c.create_io_queue().map(Some),
                };
                match remade {
                    Ok(Some(q)) => st.qp = Some(q),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(
                            "nvme pcie: {}: no I/O queue after the reset: {e}; its I/O fails",
                            self.ctrlr.name
                        );
                        st.broken = true;
                        if let Some(q) = st.qp.take() {
                            c.delete_io_queue(&q);
                        }
                    }
                }
                st.generation = gen_now;
                st.pump();
                if let Some(q) = st.qp.as_mut() {
                    let _ = q.ring();
                }
            }
        }
        drop(st);
        self.complete_done();
    }
}

impl State {
    /// Issues commands for waiting I/O while slots are free.
    fn pump(&mut self) {
        let Some(qp) = self.qp.as_mut() else { return };
        while let Some(&idx) = self.waiting.front() {
            let Some(e) = self.ios.get_mut(idx) else {
                self.waiting.pop_front();
                continue;
            };
            if e.next >= e.end {
                self.waiting.pop_front();
                continue;
            }
            let Some(cid) = qp.alloc() else { return };
            let t = e.io.io_type();
            let (sqe, part) = match t {
                IoType::Flush => {
                    e.next = e.end;
                    (
                        cmd::flush(e.ns.nsid),
                        Part {
                            io: idx,
                            at: 0,
                            len: 0,
                            read: false,
                        },
                    )
                }
                IoType::Read | IoType::Write => {
                    let blocks = (e.end - e.next).min(e.ns.max_blocks);
                    let at =
                        ((e.next - e.io.offset_blocks()) * u64::from(e.ns.block_size)) as usize;
                    let len = (blocks * u64::from(e.ns.block_size)) as usize;
                    let read = t == IoType::Read;
                    if !read {
                        gather(&e.io.bufs, at, &mut qp.buf(cid)[..len]);
                    }
                    let opcode = if read { opc::READ } else { opc::WRITE };
                    let s = cmd::rw(opcode, e.ns.nsid, e.next, blocks as u32, false);
                    e.next += blocks;
                    (
                        s,
                        Part {
                            io: idx,
                            at,
                            len,
                            read,
                        },
                    )
                }
                _ => {
                    // Not advertised; the bdev layer does not send it.
                    e.next = e.end;
                    e.status = IoStatus::IoError(libc::EOPNOTSUPP);
                    qp.release(cid);
                    if e.inflight == 0 {
                        if let Some(e) = self.ios.remove(idx) {
                            self.done.push((e.io, e.status));
                        }
                    }
                    continue;
                }
            };
            let len = part.len;
            if let Err(err) = qp.submit(cid, sqe, len) {
                tracing::error!("nvme pcie: submit on queue {}: {err}", qp.qid);
                qp.release(cid);
                e.status = IoStatus::IoError(libc::EIO);
                e.next = e.end;
                if e.inflight == 0 {
                    if let Some(e) = self.ios.remove(idx) {
                        self.done.push((e.io, e.status));
                    }
                }
                continue;
            }
            e.inflight += 1;
            self.parts[usize::from(cid)] = Some(part);
        }
    }

    /// Every I/O on this core fails with EIO (the controller was reset or
    /// failed under it): once each.
    fn fail_all(&mut self) {
        for p in self.parts.iter_mut() {
            *p = None;
        }
        for e in self.ios.drain() {
            self.done.push((e.io, IoStatus::IoError(libc::EIO)));
        }
        self.waiting.clear();
    }
}

impl Drop for CoreQueue {
    fn drop(&mut self) {
        let st = self.st.get_mut();
        st.fail_all();
        for (io, s) in st.done.drain(..) {
            io.complete(s);
        }
        if let Some(q) = st.qp.take() {
            self.ctrlr.ctrl.delete_io_queue(&q);
        }
        let k = key(&self.ctrlr);
        let _ = QUEUES.try_with(|m| {
            let mut m = m.borrow_mut();
            if m.get(&k).is_some_and(|w| w.strong_count() == 0) {
                m.remove(&k);
            }
        });
    }
}

/// A namespace bdev's channel on one core.
pub(crate) struct PcieChannel {
    ns: NsIo,
    queue: Rc<CoreQueue>,
}

impl PcieChannel {
    pub fn new(ctrlr: &Arc<PcieCtrlr>, ns: NsIo) -> PcieChannel {
        PcieChannel {
            ns,
            queue: CoreQueue::get(ctrlr),
        }
    }
}

impl ModuleChannel for PcieChannel {
    fn submit(&self, io: IoBox) {
        self.queue.submit(io, self.ns);
    }
}
