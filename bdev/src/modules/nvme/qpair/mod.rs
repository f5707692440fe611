//! One NVMe/TCP queue pair of the host: a TCP connection on one reactor,
//! driven by one task (protocols.md A.6, A.8.6, A.15). The task connects
//! without blocking, sends ICReq, checks ICResp, sends the Fabrics
//! Connect, and then loops: commands waiting for a CID are encoded into
//! the send buffer, the socket takes what it can, PDUs are read and
//! parsed, finished I/Os complete; it parks until the socket, a new
//! command or a close wakes it.
//!
//! Commands are found by CID in a table (the CID is the slot index). A
//! bdev I/O larger than one command may move (MDTS, 65536 blocks) is
//! split into parts that share one entry and complete it once, when the
//! last part is in. Anything the target gets wrong (a PDU the receiver
//! refuses, a TermReq, a response or data for a CID with nothing
//! outstanding, data beyond a command's length, an R2T for a command
//! that sent its data in the capsule) ends the connection: every
//! outstanding and later I/O completes with an I/O error, each exactly
//! once, because an entry leaves the table when it completes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use nvme::pdu::header::{Framing, Role};
use nvme::receive::{Limits, Receiver};
use nvme::sqe::{Cqe, Sgl1, Sqe};
use reactor::oneshot;

use super::cmd;

mod recv;
mod send;
use super::io_table::{IoEntry, IoTable};
use super::NvmeError;
use crate::{IoBox, IoStatus};

/// Bytes read from the socket per call.
const READ_CHUNK: usize = 64 << 10;
/// Bytes read per pass before other tasks get a turn.
const READ_BUDGET: usize = 512 << 10;
/// Encoded commands waiting for the socket beyond this stay queued.
const OUT_LIMIT: usize = 4 << 20;
/// From the TCP connect to the Connect response.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The Connect data is always 1024 bytes, in the capsule.
const CONNECT_DATA_LEN: u32 = 1024;

/// How to reach and connect one queue.
#[derive(Clone, Debug)]
pub(crate) struct QpairConfig {
    pub addr: SocketAddr,
    pub hdgst: bool,
    pub ddgst: bool,
    pub qid: u16,
    /// Queue entries (Connect's SQSIZE + 1); one fewer commands are
    /// outstanding at most, so a full queue is never overrun.
    pub entries: u16,
    pub kato_ms: u32,
    /// 0xFFFF on the admin queue; the admin queue's CNTLID on I/O queues.
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// Write data up to this many bytes goes in the capsule (0: never).
    pub in_capsule: u32,
    /// The most data one command moves (C2HData is bounded by it).
    pub max_xfer: u32,
    /// A lost connection hands its unfinished I/O back (to the lost
    /// callback) instead of failing it: the controller reconnects and the
    /// I/O is sent again. Our own plain close still fails it.
    pub requeue: bool,
    /// Its failure is logged at debug level (a reconnect attempt: the
    /// supervisor says what failed, once in a while).
    pub quiet: bool,
}

/// A namespace's I/O parameters, carried by each I/O entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NsIo {
    pub nsid: u32,
    pub block_size: u32,
    /// Blocks one Read or Write carries at most.
    pub max_rw_blocks: u64,
}

/// An admin command's answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub cqe: Cqe,
    pub data: Vec<u8>,
}

/// Closes a queue pair from any thread (detach, shutdown, reconnect).
#[derive(Default)]
pub(crate) struct Closer {
    closed: AtomicBool,
    /// Closed for a reconnect: unfinished I/O is handed back, not failed.
    requeue: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Closer {
    /// Ends the connection; its unfinished I/O fails.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let w = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Ends the connection for a reconnect: on a queue in requeue mode
    /// its unfinished I/O goes back to the lost callback, to be sent
    /// again on the next connection.
    pub fn reset(&self) {
        self.requeue.store(true, Ordering::Release);
        self.close();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn requeue(&self) -> bool {
        self.requeue.load(Ordering::Acquire)
    }

    fn set_waker(&self, w: &Waker) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(w.clone());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// TCP connect, ICReq, Fabrics Connect.
    Connecting,
    Live,
    Failed,
}

type AdminTx = oneshot::Sender<Result<Reply, NvmeError>>;

struct AdminReq {
    sqe: Sqe,
    /// In-capsule data.
    data: Vec<u8>,
    tx: AdminTx,
}

enum Req {
    Io(u32),
    Admin(AdminReq),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PartKind {
    /// Data comes in C2HData.
    Read,
    /// Data goes in H2CData after R2Ts.
    WriteR2T,
    /// No data moves after the capsule.
    Plain,
}

/// One command of a bdev I/O.
struct Part {
    io: u32,
    /// Byte offset of this command's data in the I/O's buffers.
    at: usize,
    len: u32,
    kind: PartKind,
    got: u32,
    /// A data PDU failed its digest: the command fails.
    bad: bool,
}

enum Slot {
    Free,
    Connect,
    Admin {
        tx: AdminTx,
        data: Vec<u8>,
        expect: u32,
    },
    Io(Part),
}

struct Inner {
    cfg: QpairConfig,
    phase: Phase,
    why: String,
    send: Framing,
    maxh2cdata: u32,
    out: Vec<u8>,
    out_at: usize,
    slots: Vec<Slot>,
    free: Vec<u16>,
    ios: IoTable<NsIo>,
    queue: VecDeque<Req>,
    waiters: Vec<oneshot::Sender<Result<u16, NvmeError>>>,
    cntlid: u16,
    /// I/Os finished and to be completed once no borrow is held (a
    /// completion callback may submit again).
    done: Vec<(IoBox, IoStatus)>,
    /// Unfinished I/O of a lost connection in requeue mode, for the
    /// lost callback.
    orphans: Vec<(IoBox, NsIo)>,
    dsm: Vec<u8>,
}

/// Called once when the connection has ended: the unfinished I/O (only
/// in requeue mode) and whether the loss was the target's or the
/// network's doing (false: we closed it).
pub(crate) type LostFn = Box<dyn FnOnce(Vec<(IoBox, NsIo)>, bool)>;

/// A queue pair, shared by its owner (a channel, the controller) and
/// the task that drives it.
pub(crate) struct Qpair {
    inner: RefCell<Inner>,
    waker: RefCell<Option<Waker>>,
    closer: Arc<Closer>,
    timed_out: Cell<bool>,
    on_lost: RefCell<Option<LostFn>>,
}

impl Qpair {
    /// Starts connecting queue `cfg.qid` on this reactor; commands given
    /// before it is live wait for it.
    pub fn start(cfg: QpairConfig) -> Rc<Qpair> {
        let depth = usize::from(cfg.entries.clamp(2, 1024) - 1);
        let qp = Rc::new(Qpair {
            inner: RefCell::new(Inner {
                cfg,
                phase: Phase::Connecting,
                why: String::new(),
                send: Framing::default(),
                maxh2cdata: 0,
                out: Vec::with_capacity(64 << 10),
                out_at: 0,
                slots: (0..depth).map(|_| Slot::Free).collect(),
                free: (0..depth as u16).rev().collect(),
                ios: IoTable::with_capacity(0),
                queue: VecDeque::new(),
                waiters: Vec::new(),
                cntlid: 0,
                done: Vec::new(),
                orphans: Vec::new(),
                dsm: Vec::new(),
            }),
            waker: RefCell::new(None),
            closer: Arc::new(Closer::default()),
            timed_out: Cell::new(false),
            on_lost: RefCell::new(None),
        });
        reactor::spawn_local(drive(qp.clone())).detach();
        qp
    }

    /// What closes this queue pair from another thread.
    pub fn closer(&self) -> Arc<Closer> {
        self.closer.clone()
    }

    /// Ends the connection; outstanding and later I/O fail.
    pub fn close(&self) {
        self.closer.close();
    }

    /// What runs when the connection ends (set before it can end: on
    /// this core, right after `start`).
    pub fn on_lost(&self, f: LostFn) {
        *self.on_lost.borrow_mut() = Some(f);
    }

    pub fn is_failed(&self) -> bool {
        self.inner.borrow().phase == Phase::Failed
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Waits for the Connect response: the CNTLID.
    pub async fn live(&self) -> Result<u16, NvmeError> {
        let rx = {
            let mut i = self.inner.borrow_mut();
            match i.phase {
                Phase::Live => return Ok(i.cntlid),
                Phase::Failed => return Err(NvmeError::Transport(i.why.clone())),
                Phase::Connecting => {
                    let (tx, rx) = oneshot::channel();
                    i.waiters.push(tx);
                    rx
                }
            }
        };
        rx.await
            .unwrap_or_else(|_| Err(NvmeError::Transport("queue pair gone".into())))
    }

    /// Sends an admin (or any non-bdev) command, with `data` in the
    /// capsule; its response and any C2H data.
    pub async fn admin(&self, mut sqe: Sqe, data: Vec<u8>) -> Result<Reply, NvmeError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut i = self.inner.borrow_mut();
            if i.phase == Phase::Failed {
                return Err(NvmeError::Transport(i.why.clone()));
            }
            if !data.is_empty() {
                sqe.set_sgl1(Sgl1::InCapsule {
                    offset: 0,
                    length: data.len() as u32,
                });
            }
            i.queue.push_back(Req::Admin(AdminReq { sqe, data, tx }));
        }
        self.wake();
        rx.await
            .unwrap_or_else(|_| Err(NvmeError::Transport("queue pair gone".into())))
    }

    /// Takes a bdev I/O for namespace `ns`; it completes later, on this
    /// core, exactly once.
    pub fn submit(&self, io: IoBox, ns: NsIo) {
        {
            let mut i = self.inner.borrow_mut();
            if i.phase == Phase::Failed {
                drop(i);
                // Inside a submit call: the bdev layer defers it.
                io.complete(IoStatus::IoError(libc::EIO));
                return;
            }
            let idx = i.ios.insert(IoEntry::new(io, ns));
            i.queue.push_back(Req::Io(idx));
        }
        self.wake();
    }

    /// Completes what finished, with no borrow held.
    fn complete_done(&self) {
        let mut done = std::mem::take(&mut self.inner.borrow_mut().done);
        for (io, st) in done.drain(..) {
            io.complete(st);
        }
        let mut i = self.inner.borrow_mut();
        if i.done.is_empty() {
            i.done = done;
        }
    }
}

/// The task's own waker, to hand to the socket and the submitters.
async fn own_waker() -> Waker {
    poll_fn(|cx| Poll::Ready(cx.waker().clone())).await
}

/// Returns Pending once: the task sleeps until something wakes it.
async fn park() {
    let mut parked = false;
    poll_fn(|_| {
        if parked {
            Poll::Ready(())
        } else {
            parked = true;
            Poll::Pending
        }
    })
    .await
}

async fn drive(qp: Rc<Qpair>) {
    drive_connection(&qp).await;
    // Whatever ended the connection, the unfinished I/O of a requeue
    // queue goes to its owner, once; without an owner it fails.
    let orphans = std::mem::take(&mut qp.inner.borrow_mut().orphans);
    let lost = !qp.closer.is_closed();
    let cb = qp.on_lost.borrow_mut().take();
    match cb {
        Some(f) => f(orphans, lost),
        None => {
            for (io, _) in orphans {
                io.complete(IoStatus::IoError(libc::EIO));
            }
        }
    }
}

/// A plain close (not a reset) fails the I/O even in requeue mode.
fn fail_closed(qp: &Qpair, why: &str) {
    let mut i = qp.inner.borrow_mut();
    if !qp.closer.requeue() {
        i.cfg.requeue = false;
    }
    i.fail(why.into());
}

async fn drive_connection(qp: &Rc<Qpair>) {
    let waker = own_waker().await;
    *qp.waker.borrow_mut() = Some(waker.clone());
    qp.closer.set_waker(&waker);
    let (addr, max_xfer) = {
        let i = qp.inner.borrow();
        (i.cfg.addr, i.cfg.max_xfer)
    };
    if qp.closer.is_closed() {
        fail_closed(qp, "closed before connecting");
        qp.complete_done();
        return;
    }
    let sock = match super::connect::start(addr) {
        Ok(s) => s,
        Err(e) => {
            qp.inner
                .borrow_mut()
                .fail(format!("connect to {addr}: {e}"));
            qp.complete_done();
            return;
        }
    };
    sock.set_waker(&waker);
    let timer = {
        let w = waker.clone();
        let q = Rc::downgrade(qp);
        reactor::after(CONNECT_TIMEOUT, move || {
            if let Some(q) = q.upgrade() {
                q.timed_out.set(true);
            }
            w.wake();
        })
    };
    let mut recv = Receiver::new(
        Role::Host,
        Limits {
            max_data: max_xfer.max(cmd::IDENTIFY_LEN),
            max_in_capsule: 0,
        },
    );
    qp.inner.borrow_mut().send_icreq();
    let mut rbuf = vec![0u8; READ_CHUNK];
    let mut timer = Some(timer);
    loop {
        if qp.closer.is_closed() && qp.inner.borrow().phase != Phase::Failed {
            fail_closed(qp, "closed by the host");
        }
        {
            let mut i = qp.inner.borrow_mut();
            if i.phase != Phase::Connecting {
                timer = None;
            } else if qp.timed_out.get() {
                i.fail(format!(
                    "no connection to {addr} within {CONNECT_TIMEOUT:?}"
                ));
            }
        }
        qp.complete_done();
        if qp.inner.borrow().phase == Phase::Failed {
            break;
        }
        qp.inner.borrow_mut().pump();
        // Each result is bound first: a borrow in an `if let` or `match`
        // head would last through its arms.
        let flushed = qp.inner.borrow_mut().flush(&sock);
        if let Err(e) = flushed {
            qp.inner.borrow_mut().fail(e);
            continue;
        }
        let read = qp.inner.borrow_mut().read(&sock, &mut recv, &mut rbuf);
        let more = match read {
            Ok(m) => m,
            Err(e) => {
                qp.inner.borrow_mut().fail(e);
                continue;
            }
        };
        qp.complete_done();
        qp.inner.borrow_mut().pump();
        // Each result is bound first: a borrow in an `if let` or `match`
        // head would last through its arms.
        let flushed = qp.inner.borrow_mut().flush(&sock);
        if let Err(e) = flushed {
            qp.inner.borrow_mut().fail(e);
            continue;
        }
        // Requests that could go out now: run again at once. With the
        // send buffer full they wait for the socket, which wakes us.
        let queued = {
            let i = qp.inner.borrow();
            i.phase == Phase::Live
                && !i.queue.is_empty()
                && !i.free.is_empty()
                && i.out.len() - i.out_at < OUT_LIMIT
        };
        if more || queued {
            reactor::yield_now().await;
        } else {
            park().await;
        }
    }
    drop(timer);
    sock.shutdown();
    // Wakes that still come find nothing to do.
    qp.waker.borrow_mut().take();
}

impl Inner {
    /// Ends the connection: every outstanding command fails, once.
    fn fail(&mut self, why: String) {
        if self.phase == Phase::Failed {
            return;
        }
        // Our own close (a detach, the last channel gone) is no failure.
        if why.starts_with("closed") || self.cfg.quiet {
            tracing::debug!("nvme: queue {} to {}: {why}", self.cfg.qid, self.cfg.addr);
        } else {
            tracing::warn!(
                "nvme: queue {} to {} failed: {why}",
                self.cfg.qid,
                self.cfg.addr
            );
        }
        self.phase = Phase::Failed;
        let err = || NvmeError::Transport(why.clone());
        for w in self.waiters.drain(..) {
            w.send(Err(err()));
        }
        for s in self.slots.iter_mut() {
            if let Slot::Admin { tx, .. } = std::mem::replace(s, Slot::Free) {
                tx.send(Err(err()));
            }
        }
        for r in self.queue.drain(..) {
            if let Req::Admin(a) = r {
                a.tx.send(Err(err()));
            }
        }
        for e in self.ios.drain() {
            if self.cfg.requeue {
                // Sent again whole on the next connection: a read reads
                // again, a write writes the same bytes again (idempotent),
                // whatever part of it got through.
                self.orphans.push((e.io, e.ns));
            } else {
                self.done.push((e.io, IoStatus::IoError(libc::EIO)));
            }
        }
        self.why = why;
    }
}
