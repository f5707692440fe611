//! One queue pair: a TCP connection on one reactor, from ICReq to close
//! (protocols.md A.6, A.8). One task owns the socket. Each pass it
//! (1) turns finished commands into response PDUs, (2) writes what the
//! socket takes, (3) reads and parses PDUs and starts their commands;
//! then it sleeps until its socket, a finished command, a controller
//! event or its closer wakes it. Commands that touch a bdev run as tasks
//! of their own on the same reactor and hand their result back through a
//! queue; everything else is answered at once.
//!
//! A protocol error (anything the PDU receiver refuses, a stray H2CData)
//! ends the connection with a C2HTermReq. A host that stops reading its
//! responses stops being read (its send buffer and slots fill); other
//! connections are other tasks and carry on. When the connection ends,
//! commands in flight finish before the task does, so a namespace is
//! never closed under them; an admin queue takes its controller (and the
//! controller's I/O queues) with it.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use bdev::{IoBox, IoBuf, IoDone, IoStatus, IoType};
use reactor::sock::{self, StdStream};
use reactor::{register_timed_poller, PollStatus};

use super::admin::{self, AdminReply};
use super::controller::{CcEffect, Controller};
use super::digest::crc32c;
use super::io::{self, Failure, IoCmd};
use super::pdu::header::{Framing, PduType, Role};
use super::pdu::{C2HData, CapsuleResp, Header, IcResp, Pdu, R2T};
use super::receive::{Limits, Received, Receiver, RecvState};
use super::sqe::{ConnectData, Cqe, DataLocation, Direction, Fabrics, Sqe, Status};
use super::subsystem::{Namespace, Subsystem};
use super::target::Shared;
use super::transport::TransportOpts;
use super::DISCOVERY_NQN;
use crate::conn::{Closer, ConnEntry, Park};
use crate::listen::own_waker;

/// Bytes read from the socket per call.
const READ_CHUNK: usize = 64 << 10;
/// Bytes read per pass before the reactor gets a turn.
const READ_BUDGET: usize = 512 << 10;
/// Commands a pass starts before it answers what has finished. A host
/// that sends a whole queue depth at once would otherwise get it all
/// answered at once, and host and target would take turns, each idle
/// while the other works, instead of overlapping.
const COMMANDS_PER_PASS: usize = 16;
/// Responses waiting for the socket beyond this stop the reading.
const OUT_LIMIT: usize = 4 << 20;
/// A connection that has not connected a queue by then is closed.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);
/// How often the task looks at its clocks (keep-alive, connect deadline).
const TICK: Duration = Duration::from_millis(250);
/// Outstanding AERs a controller keeps (AERL + 1).
const MAX_AERS: usize = 4;

/// A finished command, ready to answer.
struct Done {
    cid: u16,
    status: Status,
    dw0: u32,
    data: Option<Payload>,
    /// The bdev's own status when it failed (for the log).
    cause: Option<IoStatus>,
}

/// Where finished bdev work meets the connection's task: commands run as
/// tasks, and plain reads, writes and flushes submitted with this as their
/// completion callback, both queue their result here and wake the task.
struct Completions {
    q: RefCell<VecDeque<Done>>,
    waker: Waker,
}

impl Completions {
    fn push(&self, d: Done) {
        self.q.borrow_mut().push_back(d);
        self.waker.wake_by_ref();
    }
}

impl IoDone for Completions {
    /// A fast-path I/O of command `ctx` finished.
    fn io_done(&self, mut io: IoBox, ctx: u64) {
        let cid = ctx as u16;
        let data = match io.io_type() {
            IoType::Read => io.bufs.pop().map(Payload::Buf),
            _ => None,
        };
        let d = match io.status() {
            // A read that brought no data back is not a success (a host
            // takes a short read as a protocol error).
            IoStatus::Success if io.io_type() == IoType::Read && data.is_none() => Done {
                cid,
                status: Status::INTERNAL_ERROR,
                dw0: 0,
                data: None,
                cause: None,
            },
            IoStatus::Success => Done {
                cid,
                status: Status::SUCCESS,
                dw0: 0,
                data,
                cause: None,
            },
            s => Done {
                cid,
                status: io::status(s),
                dw0: 0,
                data: None,
                cause: Some(s),
            },
        };
        // Back to this core's pool before the task runs.
        drop(io);
        self.push(d);
    }
}

enum Payload {
    Bytes(Vec<u8>),
    Buf(IoBuf),
}

impl Payload {
    fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Bytes(v) => v,
            Payload::Buf(b) => b.as_slice(),
        }
    }
}

/// A command waiting for the host's data (after our R2T).
struct AwaitData {
    sqe: Sqe,
    ns: Option<Arc<Namespace>>,
    io: Option<IoCmd>,
    buf: IoBuf,
    got: u32,
    /// A data PDU failed its digest: the command fails once all its data
    /// has come.
    bad_digest: bool,
}

enum Slot {
    AwaitData(Box<AwaitData>),
    /// Running, or held (an AER): answered later.
    Busy,
}

/// The queue the connection became at its Connect.
struct Live {
    qid: u16,
    ctrl: Arc<Controller>,
    /// SQ entries: SQHD wraps at this.
    entries: u32,
    /// The host disabled SQ flow control: a read may end with C2HData
    /// SUCCESS and no response capsule.
    dsqfc: bool,
    /// Namespaces looked up, weakly: a removed namespace is closed once
    /// its commands in flight are done, whatever a queue cached.
    ns_cache: HashMap<u32, Weak<Namespace>>,
    ns_generation: u64,
}

struct Qpair {
    shared: Arc<Shared>,
    local: SocketAddr,
    /// The host's end, for the log.
    peer: String,
    opts: TransportOpts,
    closer: Arc<Closer>,
    recv: Receiver,
    /// How PDUs we send are framed (digests, the host's alignment).
    send: Framing,
    out: Vec<u8>,
    out_at: usize,
    /// Bytes read but not parsed yet: a pass that has started its
    /// commands leaves the rest of its input for the next.
    carry: Vec<u8>,
    live: Option<Live>,
    slots: HashMap<u16, Slot>,
    done: Rc<Completions>,
    /// The namespace (and command) of each I/O in flight: held until it
    /// is answered, so the namespace is not closed under it.
    holding: HashMap<u16, (Arc<Namespace>, IoCmd)>,
    waker: Waker,
    aers: VecDeque<u16>,
    /// Commands running in their own tasks.
    running: usize,
    sqhd: u16,
    /// No more reading: EOF, a protocol error, a close.
    ending: bool,
    born: Instant,
    _tick: Option<reactor::Poller>,
}

/// Serves one connection until it ends.
pub(crate) async fn serve(
    s: StdStream,
    local: SocketAddr,
    shared: Arc<Shared>,
    closer: Arc<Closer>,
    _entry: ConnEntry,
) {
    let Some(opts) = shared.transport() else {
        return;
    };
    let peer = crate::conn::peer_name(&s);
    let sock = match sock::Stream::new(s) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("nvmf: cannot serve a connection: {e}");
            return;
        }
    };
    let waker = own_waker().await;
    sock.set_waker(&waker);
    closer.set_waker(&waker);
    let limits = Limits {
        max_data: opts.max_h2c_data(),
        // Admin and Fabrics capsules carry up to 8 KiB whatever IOCCSZ.
        max_in_capsule: opts.io_in_capsule().max(8192),
    };
    let w = waker.clone();
    let tick = register_timed_poller(TICK, move || {
        w.wake_by_ref();
        PollStatus::Idle
    });
    let mut q = Qpair {
        shared,
        local,
        peer,
        opts,
        closer,
        recv: Receiver::new(Role::Controller, limits),
        send: Framing::default(),
        out: Vec::with_capacity(64 << 10),
        out_at: 0,
        carry: Vec::new(),
        live: None,
        slots: HashMap::new(),
        done: Rc::new(Completions {
            q: RefCell::new(VecDeque::new()),
            waker: waker.clone(),
        }),
        holding: HashMap::new(),
        waker,
        aers: VecDeque::new(),
        running: 0,
        sqhd: 0,
        ending: false,
        born: Instant::now(),
        _tick: Some(tick),
    };
    q.run(&sock).await;
    q.finish(&sock).await;
}

impl Qpair {
    async fn run(&mut self, sock: &sock::Stream) {
        let mut rbuf = vec![0u8; READ_CHUNK];
        loop {
            if self.closer.is_closed() {
                self.ending = true;
            }
            self.reap();
            self.deliver_events();
            self.check_clocks();
            if self.flush_out(sock).is_err() {
                return;
            }
            if self.ending {
                if self.out_at >= self.out.len() || !sock.is_writable() {
                    return;
                }
                Park::default().await;
                continue;
            }
            let mut more = false;
            if self.may_read() {
                match self.read(sock, &mut rbuf) {
                    Ok(m) => more = m,
                    Err(()) => self.ending = true,
                }
            }
            if self.flush_out(sock).is_err() {
                return;
            }
            if more {
                reactor::yield_now().await;
            } else if self.done.q.borrow().is_empty() && !self.ending {
                Park::default().await;
            }
        }
    }

    /// Ends the connection: a last try at sending what is queued (a
    /// TermReq), then waits for commands in flight, then lets the
    /// controller know.
    async fn finish(&mut self, sock: &sock::Stream) {
        let _ = self.flush_out(sock);
        sock.shutdown();
        while self.running > 0 {
            let n = self.done.q.borrow_mut().drain(..).count();
            self.running -= n;
            if self.running > 0 {
                Park::default().await;
            }
        }
        self._tick = None;
        self.holding.clear();
        let Some(live) = self.live.take() else { return };
        let stats = &self.shared.stats;
        if live.qid == 0 {
            stats.current_admin_qpairs.fetch_sub(1, Ordering::Relaxed);
            live.ctrl.destroy();
            match &live.ctrl.subsystem {
                Some(s) => s.remove_controller(live.ctrl.cntlid),
                None => self.shared.remove_discovery_ctrl(live.ctrl.cntlid),
            }
            tracing::info!(
                "nvmf: controller {} of {} (host {} at {}) is gone",
                live.ctrl.cntlid,
                live.ctrl.subnqn(),
                live.ctrl.hostnqn,
                self.peer
            );
        } else {
            stats.current_io_qpairs.fetch_sub(1, Ordering::Relaxed);
            live.ctrl.detach_io_queue(live.qid);
        }
    }

    fn may_read(&self) -> bool {
        let depth = self.live.as_ref().map_or(1, |l| l.entries as usize);
        self.out.len() - self.out_at < OUT_LIMIT && self.slots.len() < depth * 2 + MAX_AERS
    }

    /// Reads and handles PDUs; Ok(true) if the budget ran out with more
    /// maybe waiting, Err at the end of the stream or a fatal error.
    fn read(&mut self, sock: &sock::Stream, rbuf: &mut [u8]) -> Result<bool, ()> {
        let mut commands = 0;
        if !self.carry.is_empty() {
            let carry = std::mem::take(&mut self.carry);
            let stopped = self.feed(&carry, &mut commands)?;
            if let Some(at) = stopped {
                self.carry = carry[at..].to_vec();
                return Ok(true);
            }
            // Keep the allocation for the next carry.
            self.carry = carry;
            self.carry.clear();
        }
        let mut taken = 0;
        while taken < READ_BUDGET && self.may_read() {
            let n = match sock.read(rbuf) {
                Ok(0) => {
                    if let Err(t) = self.recv.finish() {
                        tracing::debug!("nvmf: host closed mid-PDU: {t}");
                    }
                    return Err(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => {
                    tracing::debug!("nvmf: connection read: {e}");
                    return Err(());
                }
            };
            taken += n;
            if let Some(at) = self.feed(&rbuf[..n], &mut commands)? {
                self.carry.extend_from_slice(&rbuf[at..n]);
                return Ok(true);
            }
        }
        Ok(taken >= READ_BUDGET)
    }

    /// Parses and handles the PDUs in `input`; Ok(Some(at)) if the pass
    /// has started its commands with input left from byte `at`.
    fn feed(&mut self, input: &[u8], commands: &mut usize) -> Result<Option<usize>, ()> {
        let mut rest = input;
        while !rest.is_empty() {
            match self.recv.feed(&mut rest) {
                Some(Ok(r)) => {
                    if matches!(&r, Received::Pdu(p) if matches!(p.header, Header::CapsuleCmd(_))) {
                        *commands += 1;
                    }
                    if self.received(r).is_err() {
                        return Err(());
                    }
                    if *commands >= COMMANDS_PER_PASS && !rest.is_empty() {
                        return Ok(Some(input.len() - rest.len()));
                    }
                }
                Some(Err(fatal)) => {
                    tracing::info!(
                        "nvmf: protocol error from a host: {fatal}; closing with a TermReq"
                    );
                    self.push_pdu(&fatal.term_req());
                    return Err(());
                }
                None => {
                    if matches!(self.recv.state(), RecvState::Terminated | RecvState::Failed) {
                        return Err(());
                    }
                    break;
                }
            }
        }
        Ok(None)
    }

    /// A whole PDU. Err ends the connection (a TermReq may be queued).
    fn received(&mut self, r: Received) -> Result<(), ()> {
        let (pdu, bad_digest) = match r {
            Received::Pdu(p) => (p, false),
            Received::BadDataDigest { pdu, .. } => (pdu, true),
        };
        match pdu.header {
            Header::IcReq(ic) => {
                let resp = IcResp {
                    pfv: 0,
                    cpda: 0,
                    hdgst: ic.hdgst,
                    ddgst: ic.ddgst,
                    maxh2cdata: self.opts.max_h2c_data(),
                };
                self.push_pdu(&Pdu::new(Header::IcResp(resp), Vec::new()));
                self.send = Framing {
                    header_digest: ic.hdgst,
                    data_digest: ic.ddgst,
                    pda: ic.hpda,
                };
                self.recv.negotiated(Framing {
                    header_digest: ic.hdgst,
                    data_digest: ic.ddgst,
                    pda: 0,
                });
                Ok(())
            }
            Header::CapsuleCmd(c) => {
                self.command(c.sqe, pdu.data, bad_digest);
                Ok(())
            }
            Header::H2CData(h) => self.h2c_data(h.cccid, h.ttag, h.datao, pdu.data, bad_digest),
            Header::H2CTermReq(t) => {
                tracing::info!(
                    "nvmf: host ended the connection: TermReq {:?} at {}",
                    t.fes,
                    t.fei
                );
                Err(())
            }
            // The receiver lets through only what a host may send.
            _ => Err(()),
        }
    }

    fn command(&mut self, sqe: Sqe, data: Vec<u8>, bad_digest: bool) {
        let cid = sqe.cid();
        if let Some(l) = &self.live {
            self.sqhd = ((u32::from(self.sqhd) + 1) % l.entries.max(1)) as u16;
        }
        if let Some(i) = self.aers.iter().position(|&a| a == cid) {
            // A host that gave up its AERs (SPDK's does, before a
            // shutdown) reuses their ids without telling us: the held
            // request is forgotten, as the host forgot it.
            self.aers.remove(i);
            self.slots.remove(&cid);
        }
        if self.slots.contains_key(&cid) {
            self.respond(cid, Status::COMMAND_ID_CONFLICT.with_dnr(), 0);
            return;
        }
        if bad_digest {
            self.respond(cid, Status::TRANSIENT_TRANSPORT_ERROR, 0);
            return;
        }
        let loc = match sqe.sgl1().tcp_data() {
            Ok(l) => l,
            Err(e) => {
                self.respond(cid, e.status(), 0);
                return;
            }
        };
        if let DataLocation::InCapsule { length } = loc {
            if length as usize != data.len() {
                self.respond(cid, Status::DATA_SGL_LENGTH_INVALID.with_dnr(), 0);
                return;
            }
        }
        if sqe.opcode() == super::sqe::OPC_FABRICS {
            self.fabrics(sqe, loc, data);
            return;
        }
        let Some(live) = &self.live else {
            self.respond(cid, Status::COMMAND_SEQUENCE_ERROR.with_dnr(), 0);
            return;
        };
        if live.qid == 0 {
            self.admin(sqe, loc, data);
        } else {
            self.io(sqe, loc, data);
        }
    }

    fn fabrics(&mut self, sqe: Sqe, loc: DataLocation, data: Vec<u8>) {
        let cid = sqe.cid();
        let Some(f) = sqe.fabrics() else {
            self.respond(cid, Status::INVALID_OPCODE.with_dnr(), 0);
            return;
        };
        match f {
            Fabrics::Connect(c) => {
                if matches!(loc, DataLocation::Transport { .. }) {
                    // Connect data always travels in the capsule.
                    self.respond(cid, Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr(), 0);
                    return;
                }
                let (status, dw0) = match self.connect(c, &data) {
                    Ok(cntlid) => (Status::SUCCESS, u32::from(cntlid)),
                    Err((s, dw0)) => (s, dw0),
                };
                let sqhd = match &self.live {
                    Some(l) if l.dsqfc => 0xFFFF,
                    _ => self.sqhd,
                };
                self.respond_full(cid, status, dw0, 0, sqhd);
            }
            Fabrics::PropertyGet { size, offset } => match self.admin_ctrl() {
                Some(c) => match c.property_get(size, offset) {
                    Ok(v) => {
                        let sqhd = self.sqhd;
                        self.respond_full(cid, Status::SUCCESS, v as u32, (v >> 32) as u32, sqhd)
                    }
                    Err(s) => self.respond(cid, s, 0),
                },
                None => self.respond(cid, Status::INVALID_OPCODE.with_dnr(), 0),
            },
            Fabrics::PropertySet {
                size,
                offset,
                value,
            } => match self.admin_ctrl() {
                Some(c) => match c.property_set(size, offset, value) {
                    Ok(effect) => {
                        self.cc_effect(&c, effect);
                        self.respond(cid, Status::SUCCESS, 0);
                    }
                    Err(s) => self.respond(cid, s, 0),
                },
                None => self.respond(cid, Status::INVALID_OPCODE.with_dnr(), 0),
            },
            Fabrics::Other(_) => self.respond(cid, Status::INVALID_OPCODE.with_dnr(), 0),
        }
    }

    /// The controller, if this is a connected admin queue.
    fn admin_ctrl(&self) -> Option<Arc<Controller>> {
        self.live
            .as_ref()
            .filter(|l| l.qid == 0)
            .map(|l| l.ctrl.clone())
    }

    fn cc_effect(&mut self, c: &Arc<Controller>, effect: CcEffect) {
        match effect {
            CcEffect::None => {}
            CcEffect::Reset => c.close_io_queues(),
            CcEffect::Shutdown => {
                c.close_io_queues();
                // Everything a host wrote is made durable before the
                // shutdown is reported complete.
                let c = c.clone();
                reactor::spawn_local(async move {
                    if let Some(s) = &c.subsystem {
                        for ns in s.namespaces() {
                            if let Err(e) = io::run(&ns, IoCmd::Flush, None).await {
                                tracing::warn!(
                                    "nvmf: flushing namespace {} of {} at shutdown: {e:?}",
                                    ns.nsid,
                                    s.nqn
                                );
                            }
                        }
                    }
                    c.shutdown_complete();
                })
                .detach();
            }
        }
    }

    /// Fabrics Connect (A.9.1): checks, in order, then a new controller
    /// (admin queue) or a place in an existing one (I/O queue).
    fn connect(&mut self, c: super::sqe::Connect, data: &[u8]) -> Result<u16, (Status, u32)> {
        let invalid = |attr_data: bool, ipo: u32| {
            (
                Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
                ipo | if attr_data { 1 << 16 } else { 0 },
            )
        };
        if self.live.is_some() {
            return Err((Status::CONNECT_CONTROLLER_BUSY.with_dnr(), 0));
        }
        if c.recfmt != 0 {
            return Err((Status::CONNECT_INCOMPATIBLE_FORMAT.with_dnr(), 0));
        }
        let d = ConnectData::decode(data).map_err(|e| (e.status(), e.dw0()))?;
        let subsystem = if d.subnqn == DISCOVERY_NQN {
            None
        } else {
            let s = self
                .shared
                .subsystem(&d.subnqn)
                .filter(|s| s.listens_on(self.local));
            match s {
                Some(s) => Some(s),
                None => {
                    tracing::info!(
                        "nvmf: host {} asked for {}, not served on {}",
                        d.hostnqn,
                        d.subnqn,
                        self.local
                    );
                    return Err(invalid(true, u32::from(ConnectData::SUBNQN_OFFSET)));
                }
            }
        };
        if let Some(s) = &subsystem {
            if !s.allows_host(&d.hostnqn) {
                tracing::info!("nvmf: host {} is not allowed into {}", d.hostnqn, s.nqn);
                return Err((
                    Status::CONNECT_INVALID_HOST.with_dnr(),
                    u32::from(ConnectData::HOSTNQN_OFFSET) | (1 << 16),
                ));
            }
        }
        if c.sqsize == 0 {
            return Err(invalid(false, 44));
        }
        let entries = u32::from(c.sqsize) + 1;
        let stats = &self.shared.stats;
        let ctrl = if c.qid == 0 {
            if entries > self.opts.max_aq_depth {
                return Err(invalid(false, 44));
            }
            if d.cntlid != 0xFFFF {
                return Err(invalid(true, 16));
            }
            let kato = admin::round_kato(c.kato, &self.opts);
            let make = |id: u16| {
                Arc::new(Controller::new(
                    id,
                    subsystem.clone(),
                    d.hostnqn.clone(),
                    d.hostid,
                    self.local,
                    kato,
                    u32::from(self.opts.max_queue_depth),
                    self.opts.max_io_qpairs_per_ctrlr,
                    self.closer.clone(),
                ))
            };
            let ctrl = match &subsystem {
                Some(s) => {
                    let mut st = s.state();
                    let Some(id) = Subsystem::alloc_cntlid(&mut st) else {
                        return Err((Status::CONNECT_CONTROLLER_BUSY.with_dnr(), 0));
                    };
                    let ctrl = make(id);
                    st.controllers.insert(id, ctrl.clone());
                    ctrl
                }
                None => self.shared.add_discovery_ctrl(make),
            };
            ctrl.set_admin_waker(&self.waker);
            stats.admin_qpairs.fetch_add(1, Ordering::Relaxed);
            stats.current_admin_qpairs.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                "nvmf: host {} at {} connected controller {} of {} on {}",
                d.hostnqn,
                self.peer,
                ctrl.cntlid,
                ctrl.subnqn(),
                self.local
            );
            ctrl
        } else {
            let Some(s) = &subsystem else {
                // Discovery controllers have no I/O queues.
                return Err(invalid(true, u32::from(ConnectData::SUBNQN_OFFSET)));
            };
            if entries > u32::from(self.opts.max_queue_depth) {
                return Err(invalid(false, 44));
            }
            let Some(ctrl) = s.state().controllers.get(&d.cntlid).cloned() else {
                return Err(invalid(true, 16));
            };
            if ctrl.hostnqn != d.hostnqn || ctrl.hostid != d.hostid {
                return Err(invalid(true, u32::from(ConnectData::HOSTNQN_OFFSET)));
            }
            ctrl.attach_io_queue(c.qid, self.closer.clone())
                .map_err(|s| (s, 0))?;
            stats.io_qpairs.fetch_add(1, Ordering::Relaxed);
            stats.current_io_qpairs.fetch_add(1, Ordering::Relaxed);
            // I/O queues have no clocks to watch.
            self._tick = None;
            ctrl
        };
        let cntlid = ctrl.cntlid;
        self.live = Some(Live {
            qid: c.qid,
            ctrl,
            entries,
            dsqfc: c.disable_sq_flow_control(),
            ns_cache: HashMap::new(),
            ns_generation: u64::MAX,
        });
        Ok(cntlid)
    }

    fn admin(&mut self, sqe: Sqe, loc: DataLocation, data: Vec<u8>) {
        let cid = sqe.cid();
        let Some(ctrl) = self.admin_ctrl() else {
            return;
        };
        if sqe.direction() == Direction::HostToController && loc.length() as usize > data.len() {
            // No admin command we serve takes data beyond its capsule.
            self.respond(cid, Status::INVALID_FIELD.with_dnr(), 0);
            return;
        }
        match admin::handle(&ctrl, &self.shared, &self.opts, &sqe, loc.length()) {
            AdminReply::HoldAer => {
                if self.aers.len() >= MAX_AERS {
                    self.respond(cid, Status::AER_LIMIT_EXCEEDED.with_dnr(), 0);
                } else {
                    self.aers.push_back(cid);
                    self.slots.insert(cid, Slot::Busy);
                    self.deliver_events();
                }
            }
            AdminReply::Done { status, dw0, data } => {
                let data = data.map(|mut d| {
                    d.resize(loc.length() as usize, 0);
                    Payload::Bytes(d)
                });
                self.answer(Done {
                    cid,
                    status,
                    dw0,
                    data,
                    cause: None,
                });
            }
        }
    }

    fn namespace(&mut self, nsid: u32) -> Option<Arc<Namespace>> {
        let live = self.live.as_mut()?;
        let s = live.ctrl.subsystem.as_ref()?;
        let gen = s.generation();
        if gen != live.ns_generation {
            live.ns_cache.clear();
            live.ns_generation = gen;
        }
        if let Some(ns) = live.ns_cache.get(&nsid).and_then(Weak::upgrade) {
            return Some(ns);
        }
        let ns = s.namespace(nsid)?;
        live.ns_cache.insert(nsid, Arc::downgrade(&ns));
        Some(ns)
    }

    fn io(&mut self, sqe: Sqe, loc: DataLocation, data: Vec<u8>) {
        let cid = sqe.cid();
        let Some(live) = &self.live else { return };
        if !live.ctrl.is_enabled() {
            self.respond(cid, Status::COMMAND_SEQUENCE_ERROR.with_dnr(), 0);
            return;
        }
        let Some(ns) = self.namespace(sqe.nsid()) else {
            self.respond(cid, Status::INVALID_NAMESPACE.with_dnr(), 0);
            return;
        };
        let cmd = match io::check(&ns, &sqe, loc, &self.opts) {
            Ok(c) => c,
            Err(s) => {
                self.respond(cid, s, 0);
                return;
            }
        };
        let need = cmd.data_in();
        match loc {
            DataLocation::InCapsule { .. } => {
                let buf = (need > 0).then(|| IoBuf::from_slice(&data[..need as usize]));
                self.spawn_io(cid, ns, cmd, buf);
            }
            DataLocation::Transport { length } if need > 0 => {
                // The host sends the whole SGL length; we keep what the
                // command needs.
                self.solicit(sqe, Some(ns), Some(cmd), length);
            }
            DataLocation::Transport { .. } => self.spawn_io(cid, ns, cmd, None),
        }
    }

    /// Asks the host for a command's data: one R2T for all of it.
    fn solicit(&mut self, sqe: Sqe, ns: Option<Arc<Namespace>>, io: Option<IoCmd>, length: u32) {
        let cid = sqe.cid();
        if length > self.opts.max_io_size {
            self.respond(cid, Status::INVALID_FIELD.with_dnr(), 0);
            return;
        }
        let r2t = R2T {
            cccid: cid,
            ttag: cid,
            r2to: 0,
            r2tl: length,
        };
        self.push_pdu(&Pdu::new(Header::R2T(r2t), Vec::new()));
        self.slots.insert(
            cid,
            Slot::AwaitData(Box::new(AwaitData {
                sqe,
                ns,
                io,
                buf: IoBuf::new(length as usize),
                got: 0,
                bad_digest: false,
            })),
        );
    }

    fn h2c_data(
        &mut self,
        cccid: u16,
        ttag: u16,
        datao: u32,
        data: Vec<u8>,
        bad_digest: bool,
    ) -> Result<(), ()> {
        let fits = match self.slots.get(&ttag) {
            Some(Slot::AwaitData(w)) => {
                cccid == ttag
                    && datao == w.got
                    && u64::from(datao) + data.len() as u64 <= w.buf.len() as u64
            }
            _ => false,
        };
        if !fits {
            tracing::info!(
                "nvmf: H2CData for command {cccid} (tag {ttag}) at {datao} matches no R2T; closing"
            );
            let fes = super::pdu::Fes::DATA_OUT_OF_RANGE;
            self.push_pdu(&Pdu::term_req(
                Role::Controller,
                fes,
                0,
                &[PduType::H2CData as u8],
            ));
            return Err(());
        }
        let Some(Slot::AwaitData(w)) = self.slots.get_mut(&ttag) else {
            return Err(());
        };
        let at = datao as usize;
        w.buf.as_mut_slice()[at..at + data.len()].copy_from_slice(&data);
        w.got += data.len() as u32;
        w.bad_digest |= bad_digest;
        if (w.got as usize) < w.buf.len() {
            return Ok(());
        }
        let Some(Slot::AwaitData(w)) = self.slots.remove(&ttag) else {
            return Err(());
        };
        let cid = w.sqe.cid();
        if w.bad_digest {
            self.respond(cid, Status::TRANSIENT_TRANSPORT_ERROR, 0);
            return Ok(());
        }
        match (w.ns, w.io) {
            (Some(ns), Some(cmd)) => {
                let mut buf = w.buf;
                let need = cmd.data_in() as usize;
                if need < buf.len() {
                    buf = IoBuf::from_slice(&buf.as_slice()[..need]);
                }
                self.spawn_io(cid, ns, cmd, Some(buf));
            }
            _ => self.respond(cid, Status::INVALID_FIELD.with_dnr(), 0),
        }
        Ok(())
    }

    /// Starts a checked I/O: plain reads, writes and flushes go to the
    /// bdev channel with [`Completions`] as their callback (a pooled I/O,
    /// no task); the rest run as a task each.
    fn spawn_io(&mut self, cid: u16, ns: Arc<Namespace>, cmd: IoCmd, data: Option<IoBuf>) {
        self.slots.insert(cid, Slot::Busy);
        self.running += 1;
        let bs = u64::from(ns.block_size());
        let fast = match cmd {
            IoCmd::Read { offset, len } => Some((IoType::Read, offset / bs, u64::from(len) / bs)),
            IoCmd::Write {
                offset,
                len,
                fua: false,
            } => Some((IoType::Write, offset / bs, u64::from(len) / bs)),
            IoCmd::Flush => Some((IoType::Flush, 0, 0)),
            _ => None,
        };
        if let (Some((kind, first, blocks)), Ok(ch)) = (fast, ns.export.channel()) {
            let data = match cmd {
                // The reader brings the buffer (from this core's pool).
                IoCmd::Read { len, .. } => Some(IoBuf::new(len as usize)),
                _ => data,
            };
            self.holding.insert(cid, (ns, cmd));
            let mut io = IoBox::new();
            io.prep(kind, first, blocks);
            io.bufs.clear();
            io.bufs.extend(data);
            ch.submit(io, self.done.clone(), u64::from(cid));
            return;
        }
        self.holding.insert(cid, (ns.clone(), cmd));
        let done = self.done.clone();
        reactor::spawn_local(async move {
            let r = io::run(&ns, cmd, data).await;
            drop(ns);
            done.push(match r {
                Ok(buf) => Done {
                    cid,
                    status: Status::SUCCESS,
                    dw0: 0,
                    data: buf.map(Payload::Buf),
                    cause: None,
                },
                Err(f) => Done {
                    cid,
                    status: f.status(),
                    dw0: 0,
                    data: None,
                    cause: match f {
                        Failure::Bdev(s) => Some(s),
                        Failure::Nvme(_) => None,
                    },
                },
            });
        })
        .detach();
    }

    /// Answers the commands whose tasks finished.
    fn reap(&mut self) {
        loop {
            let Some(d) = self.done.q.borrow_mut().pop_front() else {
                break;
            };
            self.running -= 1;
            if let Some((ns, cmd)) = self.holding.remove(&d.cid) {
                if let Some(cause) = d.cause {
                    let answer = format!("NVMe status {:?}", d.status);
                    ns.export.log_error(cmd.describe(), cause, &answer);
                }
            }
            self.answer(d);
        }
    }

    /// Completes held AERs with the controller's waiting events.
    fn deliver_events(&mut self) {
        let Some(ctrl) = self.admin_ctrl() else {
            return;
        };
        while !self.aers.is_empty() {
            let Some(event) = ctrl.take_event() else {
                break;
            };
            let Some(cid) = self.aers.pop_front() else {
                break;
            };
            self.answer(Done {
                cid,
                status: Status::SUCCESS,
                dw0: event,
                data: None,
                cause: None,
            });
        }
    }

    fn check_clocks(&mut self) {
        let now = Instant::now();
        match &self.live {
            None if now.duration_since(self.born) > CONNECT_DEADLINE => {
                tracing::info!(
                    "nvmf: a connection from {} sent no Connect in {CONNECT_DEADLINE:?}; closing",
                    self.local
                );
                self.ending = true;
            }
            Some(l) if l.qid == 0 && l.ctrl.expired(now) => {
                tracing::warn!(
                    "nvmf: host {} of controller {} ({}) sent no keep-alive within {} ms; the controller is torn down",
                    l.ctrl.hostnqn,
                    l.ctrl.cntlid,
                    l.ctrl.subnqn(),
                    l.ctrl.kato_ms()
                );
                self.ending = true;
            }
            Some(l) if l.qid != 0 && l.ctrl.is_dead() => self.ending = true,
            _ => {}
        }
    }

    /// Sends a finished command's data and response, and frees its slot.
    fn answer(&mut self, d: Done) {
        self.slots.remove(&d.cid);
        let ok = d.status.is_success();
        match &d.data {
            Some(p) if ok && !p.as_slice().is_empty() => {
                let success = self.opts.c2h_success
                    && d.dw0 == 0
                    && self.live.as_ref().is_some_and(|l| l.dsqfc);
                self.push_c2h(d.cid, p.as_slice(), success);
                if success {
                    return;
                }
            }
            _ => {}
        }
        self.respond(d.cid, d.status, d.dw0);
    }

    fn respond(&mut self, cid: u16, status: Status, dw0: u32) {
        let sqhd = self.sqhd;
        self.respond_full(cid, status, dw0, 0, sqhd);
    }

    fn respond_full(&mut self, cid: u16, status: Status, dw0: u32, dw1: u32, sqhd: u16) {
        self.slots.remove(&cid);
        if !status.is_success() {
            tracing::debug!(
                "nvmf: queue {:?} command {cid}: {status:?} (dw0 {dw0:#x})",
                self.live.as_ref().map(|l| l.qid)
            );
        }
        let cqe = Cqe {
            dw0,
            dw1,
            sqhd,
            sqid: self.live.as_ref().map_or(0, |l| l.qid),
            cid,
            status,
            phase: false,
        };
        let h = Header::CapsuleResp(CapsuleResp { cqe });
        if let Err(e) = h.encode(0, &self.send, &mut self.out) {
            tracing::error!("nvmf: cannot encode a response: {e}");
        }
    }

    fn push_c2h(&mut self, cid: u16, data: &[u8], success: bool) {
        let h = Header::C2HData(C2HData {
            cccid: cid,
            datao: 0,
            last: true,
            success,
        });
        if let Err(e) = h.encode(data.len(), &self.send, &mut self.out) {
            tracing::error!("nvmf: cannot encode C2HData: {e}");
            return;
        }
        self.out.extend_from_slice(data);
        if self.send.dd(PduType::C2HData, data.len() as u32) != 0 {
            self.out.extend_from_slice(&crc32c(data).to_le_bytes());
        }
    }

    fn push_pdu(&mut self, p: &Pdu) {
        if let Err(e) = p.encode(&self.send, &mut self.out) {
            tracing::error!("nvmf: cannot encode a {:?} PDU: {e}", p.pdu_type());
        }
    }

    /// Writes what the socket takes. Err when the socket broke.
    fn flush_out(&mut self, sock: &sock::Stream) -> Result<(), ()> {
        while self.out_at < self.out.len() {
            match sock.write(&self.out[self.out_at..]) {
                Ok(0) => return Err(()),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    tracing::debug!("nvmf: connection write: {e}");
                    return Err(());
                }
            }
        }
        self.out.clear();
        self.out_at = 0;
        Ok(())
    }
}
