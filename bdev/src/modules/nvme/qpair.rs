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

use nvme::digest::Crc32c;
use nvme::pdu::header::{Framing, PduType, Role};
use nvme::pdu::{C2HData, CapsuleCmd, H2CData, Header, IcReq, IcResp, Pdu, R2T};
use nvme::receive::{Limits, Received, Receiver, RecvState};
use nvme::sqe::{Connect, ConnectData, Cqe, Fabrics, Sgl1, Sqe};
use reactor::{oneshot, sock};

use super::cmd;
use super::NvmeError;
use crate::{IoBox, IoBuf, IoStatus, IoType};

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

/// Closes a queue pair from any thread (detach, shutdown).
#[derive(Default)]
pub(crate) struct Closer {
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Closer {
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let w = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = w {
            w.wake();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
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

/// A bdev I/O being served, perhaps as several commands.
struct IoEntry {
    io: IoBox,
    ns: NsIo,
    /// Next block to issue a command for, and the end.
    next: u64,
    end: u64,
    inflight: u32,
    status: IoStatus,
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
    ios: Vec<Option<IoEntry>>,
    free_ios: Vec<u32>,
    queue: VecDeque<Req>,
    waiters: Vec<oneshot::Sender<Result<u16, NvmeError>>>,
    cntlid: u16,
    /// I/Os finished and to be completed once no borrow is held (a
    /// completion callback may submit again).
    done: Vec<(IoBox, IoStatus)>,
    dsm: Vec<u8>,
}

/// A queue pair, shared by its owner (a channel, the controller) and
/// the task that drives it.
pub(crate) struct Qpair {
    inner: RefCell<Inner>,
    waker: RefCell<Option<Waker>>,
    closer: Arc<Closer>,
    timed_out: Cell<bool>,
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
                ios: Vec::new(),
                free_ios: Vec::new(),
                queue: VecDeque::new(),
                waiters: Vec::new(),
                cntlid: 0,
                done: Vec::new(),
                dsm: Vec::new(),
            }),
            waker: RefCell::new(None),
            closer: Arc::new(Closer::default()),
            timed_out: Cell::new(false),
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
            let (next, end) = match io.io_type() {
                IoType::Flush => (0, 1),
                _ => (io.offset_blocks(), io.offset_blocks() + io.num_blocks()),
            };
            let e = IoEntry {
                io,
                ns,
                next,
                end,
                inflight: 0,
                status: IoStatus::Success,
            };
            let idx = match i.free_ios.pop() {
                Some(x) => {
                    i.ios[x as usize] = Some(e);
                    x
                }
                None => {
                    i.ios.push(Some(e));
                    (i.ios.len() - 1) as u32
                }
            };
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
    let waker = own_waker().await;
    *qp.waker.borrow_mut() = Some(waker.clone());
    qp.closer.set_waker(&waker);
    let (addr, max_xfer) = {
        let i = qp.inner.borrow();
        (i.cfg.addr, i.cfg.max_xfer)
    };
    if qp.closer.is_closed() {
        qp.inner
            .borrow_mut()
            .fail("closed before connecting".into());
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
        let q = Rc::downgrade(&qp);
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
        {
            let mut i = qp.inner.borrow_mut();
            if qp.closer.is_closed() && i.phase != Phase::Failed {
                i.fail("closed by the host".into());
            }
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
        let queued = {
            let i = qp.inner.borrow();
            i.phase == Phase::Live && !i.queue.is_empty() && !i.free.is_empty()
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
        if self.phase == Phase::Live || !why.starts_with("closed") {
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
        for e in self.ios.iter_mut() {
            if let Some(e) = e.take() {
                self.done.push((e.io, IoStatus::IoError(libc::EIO)));
            }
        }
        self.free_ios.clear();
        self.ios.clear();
        self.why = why;
    }

    fn send_icreq(&mut self) {
        let ic = IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: self.cfg.hdgst,
            ddgst: self.cfg.ddgst,
            maxr2t: 0,
        };
        self.push_pdu(&Pdu::new(Header::IcReq(ic), Vec::new()));
    }

    fn push_pdu(&mut self, p: &Pdu) {
        if let Err(e) = p.encode(&self.send, &mut self.out) {
            self.fail(format!("cannot encode a {:?} PDU: {e}", p.pdu_type()));
        }
    }

    /// Appends a PDU header for `data_len` bytes; false (and failed) if
    /// it cannot be encoded.
    fn push_header(&mut self, h: &Header, data_len: usize) -> bool {
        let send = self.send;
        match h.encode(data_len, &send, &mut self.out) {
            Ok(()) => true,
            Err(e) => {
                self.fail(format!("cannot encode a {:?} PDU: {e}", h.pdu_type()));
                false
            }
        }
    }

    /// Appends `len` bytes of I/O `idx`'s buffers from byte `at`, and
    /// their digest if data digests are on.
    fn push_io_data(&mut self, idx: u32, at: usize, len: usize, ty: PduType) {
        let dd = self.send.dd(ty, len as u32) != 0;
        let Some(Some(e)) = self.ios.get(idx as usize) else {
            return;
        };
        let mut crc = Crc32c::new();
        copy_from_bufs(&e.io.bufs, at, len, |s| {
            self.out.extend_from_slice(s);
            if dd {
                crc.update(s);
            }
        });
        if dd {
            self.out.extend_from_slice(&crc.value().to_le_bytes());
        }
    }

    /// Turns queued requests into commands while CIDs and room last.
    fn pump(&mut self) {
        while self.phase == Phase::Live && self.out.len() - self.out_at < OUT_LIMIT {
            let Some(&cid) = self.free.last() else { return };
            match self.queue.pop_front() {
                None => return,
                Some(Req::Admin(a)) => {
                    self.free.pop();
                    let mut sqe = a.sqe;
                    sqe.set_cid(cid);
                    let expect = match sqe.sgl1() {
                        Sgl1::Transport { length } => length,
                        _ => 0,
                    };
                    let header = Header::CapsuleCmd(CapsuleCmd { sqe });
                    self.slots[usize::from(cid)] = Slot::Admin {
                        tx: a.tx,
                        data: Vec::new(),
                        expect,
                    };
                    self.push_pdu(&Pdu::new(header, a.data));
                }
                Some(Req::Io(idx)) => {
                    self.free.pop();
                    if self.issue(idx, cid) {
                        self.queue.push_front(Req::Io(idx));
                    }
                }
            }
        }
    }

    /// Encodes the next command of I/O `idx` under `cid`; true if the
    /// I/O has more to issue.
    fn issue(&mut self, idx: u32, cid: u16) -> bool {
        let in_capsule = self.cfg.in_capsule;
        let Some(Some(e)) = self.ios.get_mut(idx as usize) else {
            self.free.push(cid);
            return false;
        };
        let ns = e.ns;
        let bs = u64::from(ns.block_size);
        let first = e.io.offset_blocks();
        let left = e.end - e.next;
        let at = ((e.next - first) * bs) as usize;
        let slba = e.next;
        let ty = e.io.io_type();
        let (blocks, mut sqe, kind, capsule) = match ty {
            IoType::Read | IoType::Write => {
                let n = left.min(ns.max_rw_blocks).min(cmd::MAX_NLB);
                let opc = if ty == IoType::Read {
                    cmd::opc::READ
                } else {
                    cmd::opc::WRITE
                };
                let mut s = cmd::rw(opc, ns.nsid, slba, n as u32, false);
                let len = (n * bs) as u32;
                let (kind, capsule) = if ty == IoType::Read {
                    s.set_sgl1(Sgl1::Transport { length: len });
                    (PartKind::Read, 0)
                } else if len <= in_capsule {
                    s.set_sgl1(Sgl1::InCapsule {
                        offset: 0,
                        length: len,
                    });
                    (PartKind::Plain, len)
                } else {
                    s.set_sgl1(Sgl1::Transport { length: len });
                    (PartKind::WriteR2T, 0)
                };
                (n, s, kind, capsule)
            }
            IoType::WriteZeroes => {
                let n = left.min(cmd::MAX_NLB);
                (
                    n,
                    cmd::write_zeroes(ns.nsid, slba, n as u32),
                    PartKind::Plain,
                    0,
                )
            }
            IoType::Unmap => {
                self.dsm.clear();
                let max = (in_capsule as usize / cmd::DSM_RANGE_LEN).max(1);
                let (n, ranges) = cmd::dsm_ranges(&mut self.dsm, slba, left, max);
                let mut s = cmd::deallocate(ns.nsid, ranges);
                s.set_sgl1(Sgl1::InCapsule {
                    offset: 0,
                    length: self.dsm.len() as u32,
                });
                (n, s, PartKind::Plain, 0)
            }
            IoType::Flush | IoType::Reset => (left, cmd::flush(ns.nsid), PartKind::Plain, 0),
        };
        sqe.set_cid(cid);
        e.next += blocks;
        e.inflight += 1;
        let more = e.next < e.end;
        let len = match kind {
            PartKind::Read | PartKind::WriteR2T => (blocks * bs) as u32,
            PartKind::Plain => capsule,
        };
        self.slots[usize::from(cid)] = Slot::Io(Part {
            io: idx,
            at,
            len,
            kind,
            got: 0,
            bad: false,
        });
        let header = Header::CapsuleCmd(CapsuleCmd { sqe });
        if ty == IoType::Unmap {
            let dsm = std::mem::take(&mut self.dsm);
            if self.push_header(&header, dsm.len()) {
                self.out.extend_from_slice(&dsm);
                if self.send.dd(PduType::CapsuleCmd, dsm.len() as u32) != 0 {
                    self.out
                        .extend_from_slice(&nvme::digest::crc32c(&dsm).to_le_bytes());
                }
            }
            self.dsm = dsm;
        } else if self.push_header(&header, capsule as usize) && capsule > 0 {
            self.push_io_data(idx, at, capsule as usize, PduType::CapsuleCmd);
        }
        more
    }

    /// Writes what the socket takes.
    fn flush(&mut self, sock: &sock::Stream) -> Result<(), String> {
        while self.out_at < self.out.len() {
            match sock.write(&self.out[self.out_at..]) {
                Ok(0) => return Err("the connection closed".into()),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        self.out.clear();
        self.out_at = 0;
        Ok(())
    }

    /// Reads and handles PDUs; Ok(true) when the budget ran out with
    /// more maybe waiting.
    fn read(
        &mut self,
        sock: &sock::Stream,
        recv: &mut Receiver,
        rbuf: &mut [u8],
    ) -> Result<bool, String> {
        let mut taken = 0;
        while taken < READ_BUDGET {
            let n = match sock.read(rbuf) {
                Ok(0) => return Err("the target closed the connection".into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(format!("read: {e}")),
            };
            taken += n;
            let mut input = &rbuf[..n];
            while !input.is_empty() {
                match recv.feed(&mut input) {
                    Some(Ok(r)) => self.received(r, recv)?,
                    Some(Err(fatal)) => {
                        self.push_pdu(&fatal.term_req());
                        let _ = self.flush(sock);
                        return Err(format!("protocol error from the target: {fatal}"));
                    }
                    None => {
                        if matches!(recv.state(), RecvState::Terminated | RecvState::Failed) {
                            return Err("the target ended the connection".into());
                        }
                        break;
                    }
                }
            }
            if self.phase == Phase::Failed {
                return Err(self.why.clone());
            }
        }
        Ok(true)
    }

    fn received(&mut self, r: Received, recv: &mut Receiver) -> Result<(), String> {
        let (pdu, bad) = match r {
            Received::Pdu(p) => (p, false),
            Received::BadDataDigest { pdu, .. } => (pdu, true),
        };
        match pdu.header {
            Header::IcResp(ic) => self.ic_resp(ic, recv),
            Header::CapsuleResp(c) => self.response(c.cqe),
            Header::C2HData(c) => self.c2h_data(c, &pdu.data, bad),
            Header::R2T(r) => self.r2t(r),
            Header::C2HTermReq(t) => Err(format!(
                "the target sent a TermReq: {} (FEI {:#x})",
                t.fes.name(),
                t.fei
            )),
            other => Err(format!("unexpected {:?} PDU", other.pdu_type())),
        }
    }

    fn ic_resp(&mut self, ic: IcResp, recv: &mut Receiver) -> Result<(), String> {
        if self.phase != Phase::Connecting || self.maxh2cdata != 0 {
            return Err("a second ICResp".into());
        }
        if ic.pfv != 0 {
            return Err(format!("ICResp PFV {} is not 0", ic.pfv));
        }
        if ic.maxh2cdata < IcResp::MIN_MAXH2CDATA || !ic.maxh2cdata.is_multiple_of(4) {
            return Err(format!("ICResp MAXH2CDATA {} is invalid", ic.maxh2cdata));
        }
        if ic.cpda > Framing::MAX_PDA {
            return Err(format!("ICResp CPDA {} is invalid", ic.cpda));
        }
        if (ic.hdgst, ic.ddgst) != (self.cfg.hdgst, self.cfg.ddgst) {
            // SPDK's host adopts the controller's choice; so do we, and
            // say so, since the user asked otherwise.
            tracing::info!(
                "nvme: {} granted digests header {} data {} (asked {} {})",
                self.cfg.addr,
                ic.hdgst,
                ic.ddgst,
                self.cfg.hdgst,
                self.cfg.ddgst
            );
        }
        self.maxh2cdata = ic.maxh2cdata;
        self.send = Framing {
            header_digest: ic.hdgst,
            data_digest: ic.ddgst,
            pda: ic.cpda,
        };
        // Our HPDA is 0: data we receive is not padded.
        if !recv.negotiated(Framing {
            header_digest: ic.hdgst,
            data_digest: ic.ddgst,
            pda: 0,
        }) {
            return Err("ICResp out of sequence".into());
        }
        self.send_connect();
        Ok(())
    }

    fn send_connect(&mut self) {
        let data = ConnectData {
            hostid: self.cfg.hostid,
            cntlid: self.cfg.cntlid,
            subnqn: self.cfg.subnqn.clone(),
            hostnqn: self.cfg.hostnqn.clone(),
        }
        .encode();
        let data = match data {
            Ok(d) => d,
            Err(e) => return self.fail(format!("Connect data: {e}")),
        };
        let Some(cid) = self.free.pop() else {
            return self.fail("no CID for Connect".into());
        };
        let c = Connect {
            recfmt: 0,
            qid: self.cfg.qid,
            sqsize: self.cfg.entries.saturating_sub(1),
            cattr: 0,
            kato: if self.cfg.qid == 0 {
                self.cfg.kato_ms
            } else {
                0
            },
        };
        let sqe = Fabrics::Connect(c).to_sqe(
            cid,
            Sgl1::InCapsule {
                offset: 0,
                length: CONNECT_DATA_LEN,
            },
        );
        self.slots[usize::from(cid)] = Slot::Connect;
        self.push_pdu(&Pdu::new(Header::CapsuleCmd(CapsuleCmd { sqe }), data));
    }

    fn slot(&mut self, cid: u16) -> Result<&mut Slot, String> {
        match self.slots.get_mut(usize::from(cid)) {
            Some(s) if !matches!(s, Slot::Free) => Ok(s),
            _ => Err(format!(
                "the target answered CID {cid}, which is not outstanding"
            )),
        }
    }

    fn response(&mut self, cqe: Cqe) -> Result<(), String> {
        let slot = std::mem::replace(self.slot(cqe.cid)?, Slot::Free);
        self.free.push(cqe.cid);
        match slot {
            Slot::Free => Ok(()),
            Slot::Connect => {
                if !cqe.status.is_success() {
                    return Err(format!(
                        "Connect refused: status type {:#x} code {:#x}",
                        cqe.status.sct(),
                        cqe.status.sc()
                    ));
                }
                self.cntlid = cqe.dw0 as u16;
                self.phase = Phase::Live;
                for w in self.waiters.drain(..) {
                    w.send(Ok(self.cntlid));
                }
                Ok(())
            }
            Slot::Admin { tx, data, .. } => {
                tx.send(Ok(Reply { cqe, data }));
                Ok(())
            }
            Slot::Io(p) => {
                let ok = cqe.status.is_success()
                    && !p.bad
                    && (p.kind != PartKind::Read || p.got == p.len);
                if !ok {
                    tracing::debug!(
                        "nvme: I/O CID {} failed: status {:#x}/{:#x}, {} of {} bytes",
                        cqe.cid,
                        cqe.status.sct(),
                        cqe.status.sc(),
                        p.got,
                        p.len
                    );
                }
                self.part_done(p.io, ok);
                Ok(())
            }
        }
    }

    /// One command of I/O `idx` ended; the I/O completes with its last.
    fn part_done(&mut self, idx: u32, ok: bool) {
        let Some(slot) = self.ios.get_mut(idx as usize) else {
            return;
        };
        let Some(e) = slot.as_mut() else { return };
        e.inflight -= 1;
        if !ok {
            e.status = IoStatus::IoError(libc::EIO);
        }
        if e.inflight == 0 && e.next >= e.end {
            if let Some(e) = slot.take() {
                self.done.push((e.io, e.status));
                self.free_ios.push(idx);
            }
        }
    }

    fn c2h_data(&mut self, c: C2HData, data: &[u8], bad: bool) -> Result<(), String> {
        let len = data.len() as u32;
        let end = c
            .datao
            .checked_add(len)
            .ok_or_else(|| "C2HData offset overflows".to_string())?;
        match self.slot(c.cccid)? {
            Slot::Admin {
                data: buf, expect, ..
            } => {
                if end > *expect || c.datao as usize != buf.len() {
                    return Err(format!(
                        "C2HData for CID {} at {} +{len} outside its {} bytes",
                        c.cccid, c.datao, expect
                    ));
                }
                buf.extend_from_slice(data);
            }
            Slot::Io(p) if p.kind == PartKind::Read => {
                if end > p.len {
                    return Err(format!(
                        "C2HData for CID {} at {} +{len} beyond its {} bytes",
                        c.cccid, c.datao, p.len
                    ));
                }
                p.got += len;
                p.bad |= bad;
                let (idx, at) = (p.io, p.at + c.datao as usize);
                if let Some(Some(e)) = self.ios.get_mut(idx as usize) {
                    e.io.copy_into_bufs(at, data);
                }
            }
            _ => return Err(format!("C2HData for CID {}, which reads nothing", c.cccid)),
        }
        if c.success {
            // SUCCESS stands for the response capsule (only sent when SQ
            // flow control is off, which we never ask; accepted anyway).
            let cqe = Cqe::new(c.cccid, nvme::sqe::Status::SUCCESS);
            return self.response(cqe);
        }
        Ok(())
    }

    fn r2t(&mut self, r: R2T) -> Result<(), String> {
        let (idx, at, len) = match self.slot(r.cccid)? {
            Slot::Io(p) if p.kind == PartKind::WriteR2T => (p.io, p.at, p.len),
            _ => return Err(format!("R2T for CID {}, which sends no data", r.cccid)),
        };
        let end = r.r2to.saturating_add(r.r2tl);
        if r.r2tl == 0 || end > len {
            return Err(format!(
                "R2T for CID {} asks {} +{} of {len} bytes",
                r.cccid, r.r2to, r.r2tl
            ));
        }
        let mut off = r.r2to;
        while off < end {
            let n = (end - off).min(self.maxh2cdata);
            let h = Header::H2CData(H2CData {
                cccid: r.cccid,
                ttag: r.ttag,
                datao: off,
                last: off + n == end,
            });
            if !self.push_header(&h, n as usize) {
                return Err(self.why.clone());
            }
            self.push_io_data(idx, at + off as usize, n as usize, PduType::H2CData);
            off += n;
        }
        Ok(())
    }
}

/// Calls `f` with the pieces of `len` bytes from byte `at` of `bufs`.
fn copy_from_bufs(bufs: &[IoBuf], mut at: usize, mut len: usize, mut f: impl FnMut(&[u8])) {
    for b in bufs {
        if len == 0 {
            break;
        }
        if at >= b.len() {
            at -= b.len();
            continue;
        }
        let n = (b.len() - at).min(len);
        f(&b.as_slice()[at..at + n]);
        len -= n;
        at = 0;
    }
}
