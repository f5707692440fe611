//! A controller: attach (protocols.md A.15 steps 1-7), keep-alive,
//! detach. Attach and detach run as async code on the app core, which
//! owns every admin queue (they are reactor-local); the controller's
//! shared part (`Ctrlr`) is what the bdevs and their channels on other
//! cores read.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use nvme::sqe::{Fabrics, PropertySize, Sgl1, Sqe};
use serde_json::{json, Value};

use super::cmd;
use super::identify::{ns_uuid, ActiveNsList, CtrlrData, NsData};
use super::qpair::{Closer, NsIo, Qpair, QpairConfig, Reply};
use super::{Detach, NvmeError, NvmeNs};
use crate::{Bdev, BdevProps, Uuid};

/// Admin queue entries (Connect's SQSIZE 31, as Linux and SPDK).
const ADMIN_ENTRIES: u16 = 32;
/// I/O queue entries we ask for at most.
const IO_ENTRIES: u16 = 128;
/// Our own bound on one command's data (MDTS 0 means "no limit").
const MAX_XFER_CAP: u32 = 1 << 20;
/// How long a graceful shutdown (CC.SHN) may take at detach.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);
/// A missing or absurd CAP.TO is bounded to this.
const MAX_ENABLE_WAIT: Duration = Duration::from_secs(60);
/// The whole attach (a target that stops answering must not hold the
/// RPC for ever): the enable wait and a margin for the Identify calls.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(90);

// Controller properties (offsets).
const PROP_CAP: u32 = 0x00;
const PROP_VS: u32 = 0x08;
const PROP_CC: u32 = 0x14;
const PROP_CSTS: u32 = 0x1C;
/// CC: IOCQES 4 (16 B), IOSQES 6 (64 B), MPS 0 (4 KiB), CSS NVM.
const CC_BASE: u64 = 0x0046_0000;
const CC_EN: u64 = 1;
const CC_SHN_NORMAL: u64 = 1 << 14;
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 1 << 1;

/// bdev_nvme_attach_controller's parameters.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub name: String,
    pub traddr: String,
    /// "ipv4" or "ipv6".
    pub adrfam: String,
    pub trsvcid: String,
    pub subnqn: String,
    pub hostnqn: Option<String>,
    pub hdgst: bool,
    pub ddgst: bool,
    /// SPDK's resiliency knobs (supervise.rs): -1 reconnects for ever, 0
    /// never (a lost connection fails the controller), else the seconds
    /// after a loss when the controller and its bdevs are deleted.
    pub ctrlr_loss_timeout_sec: i64,
    pub reconnect_delay_sec: u64,
    pub fast_io_fail_timeout_sec: u64,
    /// Keep Alive Timeout asked in Connect, ms.
    pub kato_ms: u32,
}

impl AttachOptions {
    /// Options for a controller, the rest from the module's defaults.
    pub fn new(name: &str, traddr: &str, trsvcid: &str, subnqn: &str) -> AttachOptions {
        let d = super::options::defaults();
        AttachOptions {
            name: name.into(),
            traddr: traddr.into(),
            adrfam: "ipv4".into(),
            trsvcid: trsvcid.into(),
            subnqn: subnqn.into(),
            hostnqn: None,
            hdgst: false,
            ddgst: false,
            ctrlr_loss_timeout_sec: d.ctrlr_loss_timeout_sec,
            reconnect_delay_sec: d.reconnect_delay_sec,
            fast_io_fail_timeout_sec: d.fast_io_fail_timeout_sec,
            kato_ms: d.keep_alive_timeout_ms,
        }
    }
}

/// Where a controller is (SPDK's names in bdev_nvme_get_controllers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    Enabled = 0,
    /// Reconnecting now (an attempt under way).
    Resetting = 1,
    /// Between reconnect attempts (waiting reconnect_delay_sec).
    ReconnectDelayed = 2,
    /// Lost for good: no reconnect (ctrlr_loss_timeout_sec 0), or detached.
    Failed = 3,
    /// Being deleted (detach, or ctrlr_loss_timeout_sec ran out).
    Deleting = 4,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Enabled,
            1 => State::Resetting,
            2 => State::ReconnectDelayed,
            3 => State::Failed,
            _ => State::Deleting,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Enabled => "enabled",
            State::Resetting => "resetting",
            State::ReconnectDelayed => "reconnect_is_delayed",
            State::Failed => "failed",
            State::Deleting => "deleting",
        }
    }
}

/// What a reconnect must find again for the bdevs to stay valid.
#[derive(Clone, Debug)]
pub(crate) struct NsIdent {
    pub nsid: u32,
    pub block_size: u32,
    pub nsze: u64,
    pub id: Option<[u8; 16]>,
}

/// QIDs 1..=granted of the current association (`gen`); true while a
/// queue pair has it.
struct Qids {
    gen: u64,
    used: Vec<bool>,
}

/// What every core may read of an attached controller.
pub(crate) struct Ctrlr {
    pub opts: AttachOptions,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub addr: SocketAddr,
    /// The CNTLID of the current association (a reconnect gets a new one).
    cntlid: AtomicU16,
    pub data: CtrlrData,
    pub in_capsule: u32,
    pub max_xfer: u32,
    pub io_entries: u16,
    /// The reactor that owns the admin queue (the one that attached).
    pub admin_core: u32,
    qids: Mutex<Qids>,
    /// Every I/O queue pair's closer, to end them at detach or reset.
    closers: Mutex<Vec<Weak<Closer>>>,
    /// Detached, deleted, or lost without reconnect: no new connection.
    pub failed: AtomicBool,
    state: AtomicU8,
    /// Counts associations: an I/O queue connected for an older one is
    /// stale.
    gen: AtomicU64,
    /// Lost for longer than fast_io_fail_timeout_sec (or shutting down):
    /// held and new I/O fail until the reconnect succeeds.
    fast_failed: AtomicBool,
    /// A loss an I/O queue saw, or a reset asked for: the supervisor
    /// (on the admin core) acts on it.
    loss: AtomicBool,
    reset_asked: AtomicBool,
    loss_waker: Mutex<Option<Waker>>,
    /// The namespaces the bdevs were made from (AER changes them).
    namespaces: Mutex<Vec<NsIdent>>,
    /// The namespaces' bdev names (AER adds and removes).
    bdevs: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctrlr {
    pub fn cntlid(&self) -> u16 {
        self.cntlid.load(Ordering::Acquire)
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// Whether a lost connection is retried (ctrlr_loss_timeout_sec != 0).
    pub fn reconnects(&self) -> bool {
        self.opts.ctrlr_loss_timeout_sec != 0
    }

    pub fn fast_failed(&self) -> bool {
        self.fast_failed.load(Ordering::Acquire)
    }

    /// Called from any core: a queue of association `gen` was lost.
    /// A loss of an older association is old news.
    pub fn report_loss(&self, gen: u64) {
        if gen == self.generation() && self.state() == State::Enabled {
            self.loss.store(true, Ordering::Release);
            self.wake_supervisor();
        }
    }

    fn wake_supervisor(&self) {
        if let Some(w) = lock(&self.loss_waker).take() {
            w.wake();
        }
    }

    /// Waits until a loss or reset is reported.
    async fn loss_reported(&self) {
        poll_fn(|cx| {
            if self.loss.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            *lock(&self.loss_waker) = Some(cx.waker().clone());
            if self.loss.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    }

    /// A free I/O QID of the current association, taken: (qid, gen).
    pub fn take_qid(&self) -> Option<(u16, u64)> {
        let mut q = lock(&self.qids);
        let i = q.used.iter().position(|used| !used)?;
        q.used[i] = true;
        Some((i as u16 + 1, q.gen))
    }

    pub fn put_qid(&self, qid: u16, gen: u64) {
        let mut q = lock(&self.qids);
        if q.gen != gen {
            return;
        }
        if let Some(u) = q.used.get_mut(usize::from(qid).wrapping_sub(1)) {
            *u = false;
        }
    }

    /// Closes every I/O queue pair: their I/O fails.
    pub fn close_io_queues(&self) {
        for c in lock(&self.closers).drain(..) {
            if let Some(c) = c.upgrade() {
                c.close();
            }
        }
    }

    /// Closes every I/O queue pair for a reconnect: their unfinished
    /// I/O waits for the next association.
    fn reset_io_queues(&self) {
        for c in lock(&self.closers).drain(..) {
            if let Some(c) = c.upgrade() {
                c.reset();
            }
        }
    }

    pub fn track(&self, c: &Arc<Closer>) {
        let mut v = lock(&self.closers);
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(c));
    }

    /// The connection parameters of I/O queue `qid`.
    pub fn io_config(&self, qid: u16) -> QpairConfig {
        QpairConfig {
            addr: self.addr,
            hdgst: self.opts.hdgst,
            ddgst: self.opts.ddgst,
            qid,
            entries: self.io_entries,
            kato_ms: 0,
            cntlid: self.cntlid(),
            subnqn: self.opts.subnqn.clone(),
            hostnqn: self.hostnqn.clone(),
            hostid: self.hostid,
            in_capsule: self.in_capsule,
            max_xfer: self.max_xfer,
            requeue: self.reconnects(),
            quiet: false,
        }
    }

    fn adrfam(&self) -> &'static str {
        if self.addr.is_ipv6() {
            "IPv6"
        } else {
            "IPv4"
        }
    }

    pub fn trid_json(&self) -> Value {
        json!({
            "trtype": "TCP",
            "adrfam": self.adrfam(),
            "traddr": self.opts.traddr,
            "trsvcid": self.opts.trsvcid,
            "subnqn": self.opts.subnqn,
        })
    }

    /// The call that attaches this controller again (save_config).
    pub fn attach_call(&self) -> Value {
        let o = &self.opts;
        json!({
            "method": "bdev_nvme_attach_controller",
            "params": {
                "name": o.name,
                "trtype": "TCP",
                "adrfam": self.adrfam(),
                "traddr": o.traddr,
                "trsvcid": o.trsvcid,
                "subnqn": o.subnqn,
                "hostnqn": self.hostnqn,
                "hdgst": o.hdgst,
                "ddgst": o.ddgst,
                "ctrlr_loss_timeout_sec": o.ctrlr_loss_timeout_sec,
                "reconnect_delay_sec": o.reconnect_delay_sec,
                "fast_io_fail_timeout_sec": o.fast_io_fail_timeout_sec,
            }
        })
    }

    /// bdev_nvme_get_controllers' entry.
    pub fn info(&self) -> Value {
        json!({
            "name": self.opts.name,
            "ctrlrs": [{
                "state": self.state().name(),
                "trid": self.trid_json(),
                "cntlid": self.cntlid(),
                "host": {"nqn": self.hostnqn, "addr": "", "svcid": ""},
            }]
        })
    }
}

/// Attached controllers by name, plus names being attached (so two
/// attaches of one name cannot both proceed).
#[derive(Default)]
struct Registry {
    ctrlrs: BTreeMap<String, Arc<Ctrlr>>,
    pending: Vec<String>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    lock(R.get_or_init(Default::default))
}

/// The admin queue (replaced at each reconnect) and the controller's
/// supervisor task (keep-alive, reconnect): reactor-local, on the core
/// that attached (the app core). Dropping the task cancels it.
pub(super) struct Admin {
    pub qp: Rc<RefCell<Rc<Qpair>>>,
    pub task: reactor::Task<()>,
    /// Asynchronous Event Requests and what they announce (aer.rs).
    pub aer: reactor::Task<()>,
}

thread_local! {
    pub(super) static ADMINS: RefCell<HashMap<String, Admin>> = RefCell::new(HashMap::new());
}

/// This process's host identifier: one per process, as a host has one.
fn hostid() -> [u8; 16] {
    static ID: OnceLock<Uuid> = OnceLock::new();
    ID.get_or_init(Uuid::new_v4).0
}

/// Whether a controller is attached or being attached.
pub(crate) fn any_controller() -> bool {
    let r = registry();
    !r.ctrlrs.is_empty() || !r.pending.is_empty()
}

/// The first bdev of the first controller (save_config puts the
/// module's options before it).
pub(crate) fn first_bdev() -> Option<String> {
    let r = registry();
    crate::list()
        .into_iter()
        .map(|b| b.name().to_string())
        .find(|n| r.ctrlrs.values().any(|c| lock(&c.bdevs).contains(n)))
}

/// Every attached controller (bdev_nvme_get_controllers).
pub fn controllers(name: Option<&str>) -> Result<Vec<Value>, NvmeError> {
    let r = registry();
    match name {
        Some(n) => r
            .ctrlrs
            .get(n)
            .map(|c| vec![c.info()])
            .ok_or_else(|| NvmeError::NotFound(n.to_string())),
        None => Ok(r.ctrlrs.values().map(|c| c.info()).collect()),
    }
}

fn resolve(o: &AttachOptions) -> Result<SocketAddr, NvmeError> {
    let port: u16 = o
        .trsvcid
        .parse()
        .map_err(|_| NvmeError::Invalid(format!("trsvcid {:?} is not a port", o.trsvcid)))?;
    let v6 = match o.adrfam.to_ascii_lowercase().as_str() {
        "ipv4" => false,
        "ipv6" => true,
        other => {
            return Err(NvmeError::Invalid(format!(
                "adrfam {other:?} is not supported"
            )))
        }
    };
    if let Ok(ip) = o.traddr.parse::<IpAddr>() {
        if ip.is_ipv6() != v6 {
            return Err(NvmeError::Invalid(format!(
                "traddr {} is not an {} address",
                o.traddr, o.adrfam
            )));
        }
        return Ok(SocketAddr::new(ip, port));
    }
    // A host name: resolved once, here on the RPC path.
    (o.traddr.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| NvmeError::Invalid(format!("traddr {}: {e}", o.traddr)))?
        .find(|a| a.is_ipv6() == v6)
        .ok_or_else(|| {
            NvmeError::Invalid(format!("traddr {} has no {} address", o.traddr, o.adrfam))
        })
}

fn check_status(what: &'static str, r: Reply) -> Result<Reply, NvmeError> {
    if r.cqe.status.is_success() {
        Ok(r)
    } else {
        Err(NvmeError::Status {
            what,
            sct: r.cqe.status.sct(),
            sc: r.cqe.status.sc(),
        })
    }
}

async fn prop_get(qp: &Qpair, offset: u32, eight: bool) -> Result<u64, NvmeError> {
    let size = if eight {
        PropertySize::Eight
    } else {
        PropertySize::Four
    };
    let sqe = Fabrics::PropertyGet { size, offset }.to_sqe(0, Sgl1::Transport { length: 0 });
    let what = if offset == PROP_CSTS {
        "Property Get CSTS"
    } else {
        "Property Get"
    };
    let r = check_status(what, qp.admin(sqe, Vec::new()).await.map_err(during(what))?)?;
    Ok(u64::from(r.cqe.dw0) | (u64::from(r.cqe.dw1) << 32))
}

async fn prop_set(qp: &Qpair, offset: u32, value: u64) -> Result<(), NvmeError> {
    let sqe = Fabrics::PropertySet {
        size: PropertySize::Four,
        offset,
        value,
    }
    .to_sqe(0, Sgl1::Transport { length: 0 });
    let what = "Property Set";
    check_status(what, qp.admin(sqe, Vec::new()).await.map_err(during(what))?).map(|_| ())
}

pub(super) async fn admin_cmd(
    qp: &Qpair,
    what: &'static str,
    sqe: Sqe,
) -> Result<Reply, NvmeError> {
    check_status(what, qp.admin(sqe, Vec::new()).await.map_err(during(what))?)
}

/// Names the command a lost connection took with it: "read: Connection
/// reset by peer" alone does not say how far an attach had come.
pub(super) fn during(what: &'static str) -> impl Fn(NvmeError) -> NvmeError {
    move |e| match e {
        NvmeError::Transport(why) => NvmeError::Transport(format!("{why} (during {what})")),
        e => e,
    }
}

/// Polls CSTS until `done(csts)`, up to `wait`; CFS is fatal.
async fn wait_csts(
    qp: &Qpair,
    wait: Duration,
    done: impl Fn(u32) -> bool,
) -> Result<(), NvmeError> {
    let start = Instant::now();
    loop {
        let csts = prop_get(qp, PROP_CSTS, false).await? as u32;
        if csts & CSTS_CFS != 0 {
            return Err(NvmeError::Controller(
                "controller fatal status (CSTS.CFS)".into(),
            ));
        }
        if done(csts) {
            return Ok(());
        }
        if start.elapsed() > wait {
            return Err(NvmeError::Timeout(format!("CSTS {csts:#x} after {wait:?}")));
        }
        reactor::sleep(Duration::from_millis(10)).await;
    }
}

/// Every active NSID, page by page.
pub(super) async fn active_namespaces(qp: &Qpair) -> Result<Vec<u32>, NvmeError> {
    let mut list = ActiveNsList::new();
    while let Some(from) = list.next_page() {
        let l = admin_cmd(qp, "Identify active namespaces", cmd::identify(2, from)).await?;
        list.take(&l.data)?;
    }
    Ok(list.into_nsids())
}

/// Everything the admin queue learns at attach.
struct Learnt {
    cntlid: u16,
    cap: u64,
    data: CtrlrData,
    granted: u16,
    namespaces: Vec<(u32, NsData, Option<[u8; 16]>)>,
}

async fn bring_up(qp: &Qpair, cores: u16) -> Result<Learnt, NvmeError> {
    let cntlid = qp.live().await.map_err(during("ICReq and Connect"))?;
    let cap = prop_get(qp, PROP_CAP, true).await?;
    // CAP.TO in 500 ms units.
    let to = Duration::from_millis(500 * ((cap >> 24) & 0xFF).max(1)).min(MAX_ENABLE_WAIT);
    let cc = prop_get(qp, PROP_CC, false).await?;
    if cc & CC_EN != 0 {
        // A controller left enabled is reset first (A.9.4).
        prop_set(qp, PROP_CC, cc & !CC_EN).await?;
        wait_csts(qp, to, |c| c & CSTS_RDY == 0).await?;
    }
    prop_set(qp, PROP_CC, CC_BASE | CC_EN).await?;
    wait_csts(qp, to, |c| c & CSTS_RDY != 0).await?;
    let _vs = prop_get(qp, PROP_VS, false).await?;
    let id = admin_cmd(qp, "Identify Controller", cmd::identify(1, 0)).await?;
    let data = CtrlrData::parse(&id.data);
    data.check(cntlid)?;
    let q = admin_cmd(
        qp,
        "Set Features (Number of Queues)",
        cmd::set_num_queues(cores),
    )
    .await?;
    let granted = ((q.cqe.dw0 & 0xFFFF).min(q.cqe.dw0 >> 16) + 1).min(u32::from(u16::MAX)) as u16;
    let nsids = active_namespaces(qp).await?;
    let mut namespaces = Vec::new();
    for nsid in nsids {
        let r = admin_cmd(qp, "Identify Namespace", cmd::identify(0, nsid)).await?;
        let ns = NsData::parse(&r.data)?;
        if ns.ncap == 0 || ns.nsze == 0 {
            continue;
        }
        // Descriptors are optional (VS < 1.3): an error only loses the UUID.
        let uuid = match qp
            .admin(cmd::identify(3, nsid), Vec::new())
            .await
            .map_err(during("Identify Namespace Descriptors"))?
        {
            r if r.cqe.status.is_success() => ns_uuid(&r.data),
            _ => None,
        };
        namespaces.push((nsid, ns, uuid));
    }
    Ok(Learnt {
        cntlid,
        cap,
        data,
        granted,
        namespaces,
    })
}

/// Attaches the controller `o` names: its namespaces' bdev names.
/// Runs on the app core (the admin queue stays on it).
pub async fn attach(o: AttachOptions) -> Result<Vec<String>, NvmeError> {
    if reactor::current_core().is_none() {
        // The admin queue is a task of the calling reactor.
        return Err(NvmeError::Invalid("attach runs on a reactor".into()));
    }
    if o.name.is_empty() {
        return Err(NvmeError::Invalid("name is empty".into()));
    }
    if o.subnqn.is_empty() {
        return Err(NvmeError::Invalid("subnqn is empty".into()));
    }
    let addr = resolve(&o)?;
    {
        let mut r = registry();
        if r.ctrlrs.contains_key(&o.name) || r.pending.contains(&o.name) {
            return Err(NvmeError::Exists(o.name.clone()));
        }
        r.pending.push(o.name.clone());
    }
    let res = attach_inner(o.clone(), addr).await;
    registry().pending.retain(|n| n != &o.name);
    res
}

/// The admin queue's connection parameters.
pub(super) fn admin_config(
    o: &AttachOptions,
    addr: SocketAddr,
    hostnqn: &str,
    hostid: [u8; 16],
) -> QpairConfig {
    QpairConfig {
        addr,
        hdgst: o.hdgst,
        ddgst: o.ddgst,
        qid: 0,
        entries: ADMIN_ENTRIES,
        kato_ms: o.kato_ms,
        cntlid: 0xFFFF,
        subnqn: o.subnqn.clone(),
        hostnqn: hostnqn.to_string(),
        hostid,
        in_capsule: 0,
        max_xfer: cmd::IDENTIFY_LEN,
        requeue: false,
        quiet: false,
    }
}

/// I/O queue entries for a controller with these CAP and MAXCMD.
fn io_entries(cap: u64, maxcmd: u16) -> u16 {
    let mqes = (cap & 0xFFFF) as u32 + 1;
    let maxcmd = if maxcmd == 0 {
        u32::from(IO_ENTRIES)
    } else {
        u32::from(maxcmd)
    };
    u32::from(IO_ENTRIES).min(mqes).min(maxcmd).max(2) as u16
}

/// A namespace's identity: its UUID descriptor, else its NGUID.
pub(super) fn ns_identity(ns: &NsData, uuid: Option<[u8; 16]>) -> Option<[u8; 16]> {
    uuid.or_else(|| (ns.nguid != [0; 16]).then_some(ns.nguid))
}

/// The I/O queue pairs this process asks for: one per core.
fn wanted_queues() -> u16 {
    reactor::cores().len().clamp(1, usize::from(u16::MAX)) as u16
}

async fn attach_inner(o: AttachOptions, addr: SocketAddr) -> Result<Vec<String>, NvmeError> {
    let hostid = hostid();
    let hostnqn = o
        .hostnqn
        .clone()
        .unwrap_or_else(|| format!("nqn.2014-08.org.nvmexpress:uuid:{}", Uuid(hostid)));
    let admin = Qpair::start(admin_config(&o, addr, &hostnqn, hostid));
    let learnt = reactor::timeout(ATTACH_TIMEOUT, bring_up(&admin, wanted_queues()))
        .await
        .unwrap_or_else(|| {
            Err(NvmeError::Timeout(format!(
                "the controller did not finish attaching within {ATTACH_TIMEOUT:?}"
            )))
        });
    let learnt = match learnt {
        Ok(l) => l,
        Err(e) => {
            admin.close();
            return Err(e);
        }
    };
    let io_entries = io_entries(learnt.cap, learnt.data.maxcmd);
    let names: Vec<String> = learnt
        .namespaces
        .iter()
        .map(|(nsid, ..)| format!("{}n{nsid}", o.name))
        .collect();
    let namespaces = learnt
        .namespaces
        .iter()
        .map(|(nsid, ns, uuid)| NsIdent {
            nsid: *nsid,
            block_size: ns.block_size,
            nsze: ns.nsze,
            id: ns_identity(ns, *uuid),
        })
        .collect();
    let ctrlr = Arc::new(Ctrlr {
        hostnqn,
        hostid,
        addr,
        cntlid: AtomicU16::new(learnt.cntlid),
        in_capsule: learnt.data.in_capsule(),
        max_xfer: learnt.data.max_xfer(MAX_XFER_CAP),
        io_entries,
        admin_core: reactor::current_core().unwrap_or(0),
        qids: Mutex::new(Qids {
            gen: 0,
            used: vec![false; usize::from(learnt.granted)],
        }),
        closers: Mutex::new(Vec::new()),
        failed: AtomicBool::new(false),
        state: AtomicU8::new(State::Enabled as u8),
        gen: AtomicU64::new(0),
        fast_failed: AtomicBool::new(false),
        loss: AtomicBool::new(false),
        reset_asked: AtomicBool::new(false),
        loss_waker: Mutex::new(None),
        namespaces: Mutex::new(namespaces),
        bdevs: Mutex::new(names.clone()),
        data: learnt.data,
        opts: o.clone(),
    });
    let mut registered: Vec<String> = Vec::new();
    for (i, (nsid, ns, uuid)) in learnt.namespaces.iter().enumerate() {
        if let Err(e) = make_bdev(&ctrlr, &names[i], *nsid, ns, *uuid, i == 0) {
            for n in &registered {
                let _ = crate::unregister(n);
            }
            admin.close();
            return Err(e.into());
        }
        registered.push(names[i].clone());
    }
    super::supervise::watch_admin(&admin, &ctrlr);
    let slot = Rc::new(RefCell::new(admin));
    let task = reactor::spawn_local(super::supervise::supervise(slot.clone(), ctrlr.clone()));
    let aer = reactor::spawn_local(super::aer::events(slot.clone(), Arc::downgrade(&ctrlr)));
    ADMINS.with(|a| {
        a.borrow_mut().insert(
            o.name.clone(),
            Admin {
                qp: slot,
                task,
                aer,
            },
        )
    });
    registry().ctrlrs.insert(o.name.clone(), ctrlr);
    tracing::info!(
        "nvme: attached {} (cntlid {}) at {addr} as {}",
        o.subnqn,
        learnt.cntlid,
        names.join(", ")
    );
    Ok(names)
}

/// Registers namespace `nsid`'s bdev `name`.
pub(super) fn make_bdev(
    ctrlr: &Arc<Ctrlr>,
    name: &str,
    nsid: u32,
    ns: &NsData,
    uuid: Option<[u8; 16]>,
    first: bool,
) -> Result<(), crate::BdevError> {
    let mut props = BdevProps::new(name, "NVMe disk", ns.block_size, ns.nsze);
    props.uuid = ns_identity(ns, uuid).map(Uuid);
    let max_rw_blocks = (u64::from(ctrlr.max_xfer) / u64::from(ns.block_size)).max(1);
    let table = NvmeNs {
        ctrlr: ctrlr.clone(),
        ns: NsIo {
            nsid,
            block_size: ns.block_size,
            max_rw_blocks,
        },
        first,
    };
    Bdev::new(props, table).and_then(crate::register)
}

/// What a reconnect learnt, once it is known to be the same controller.
pub(super) struct Association {
    pub cntlid: u16,
    pub granted: u16,
}

/// One reconnect attempt's admin side: a new admin queue through
/// enable and Identify, checked against what the bdevs were made from
/// (the same subsystem, every namespace still there with the same
/// identity and block size and no smaller, limits no lower).
pub(super) async fn bring_up_again(c: &Ctrlr, qp: &Qpair) -> Result<Association, NvmeError> {
    let l = bring_up(qp, wanted_queues()).await?;
    let differs = |what: String| {
        Err(NvmeError::Controller(format!(
            "not the controller that was attached: {what}"
        )))
    };
    if l.data.subnqn != c.data.subnqn {
        return differs(format!("subsystem {:?}", l.data.subnqn));
    }
    if l.data.in_capsule() < c.in_capsule || l.data.max_xfer(MAX_XFER_CAP) < c.max_xfer {
        return differs("smaller transfer limits".into());
    }
    if io_entries(l.cap, l.data.maxcmd) < c.io_entries {
        return differs("a smaller queue size".into());
    }
    for want in c.namespace_list() {
        let Some((_, ns, uuid)) = l.namespaces.iter().find(|(n, ..)| *n == want.nsid) else {
            return differs(format!("namespace {} is gone", want.nsid));
        };
        if ns.block_size != want.block_size
            || ns.nsze < want.nsze
            || ns_identity(ns, *uuid) != want.id
        {
            return differs(format!("namespace {} changed", want.nsid));
        }
    }
    Ok(Association {
        cntlid: l.cntlid,
        granted: l.granted,
    })
}

impl Ctrlr {
    /// Makes `a` the current association: a new CNTLID, QIDs and
    /// generation; the caller then marks the controller enabled.
    pub(super) fn install(&self, a: &Association) -> u64 {
        let mut q = lock(&self.qids);
        q.gen += 1;
        q.used = vec![false; usize::from(a.granted)];
        self.cntlid.store(a.cntlid, Ordering::Release);
        self.gen.store(q.gen, Ordering::Release);
        q.gen
    }

    pub(super) fn set_fast_failed(&self, v: bool) {
        self.fast_failed.store(v, Ordering::Release);
    }

    pub(super) fn take_reset_asked(&self) -> bool {
        self.reset_asked.swap(false, Ordering::AcqRel)
    }

    pub fn bdev_names(&self) -> Vec<String> {
        lock(&self.bdevs).clone()
    }

    pub fn namespace_list(&self) -> Vec<NsIdent> {
        lock(&self.namespaces).clone()
    }

    /// Namespace `ns` (re)appeared with bdev `bdev` (AER).
    pub(super) fn add_namespace(&self, ns: NsIdent, bdev: &str) {
        let mut n = lock(&self.namespaces);
        n.retain(|x| x.nsid != ns.nsid);
        n.push(ns);
        let mut b = lock(&self.bdevs);
        if !b.iter().any(|x| x == bdev) {
            b.push(bdev.to_string());
        }
    }

    /// Namespace `nsid` is gone, or changed size (AER).
    pub(super) fn drop_namespace(&self, nsid: u32, bdev: &str) {
        lock(&self.namespaces).retain(|x| x.nsid != nsid);
        lock(&self.bdevs).retain(|x| x != bdev);
    }

    pub(super) fn set_nsze(&self, nsid: u32, nsze: u64) {
        for n in lock(&self.namespaces).iter_mut().filter(|n| n.nsid == nsid) {
            n.nsze = nsze;
        }
    }

    pub(super) fn reset_pending(&self) -> bool {
        self.reset_asked.load(Ordering::Acquire)
    }

    /// Forgets losses reported so far (of an association being replaced).
    pub(super) fn clear_loss(&self) {
        self.loss.store(false, Ordering::Release);
    }

    pub(super) fn enter(&self, s: State) {
        self.set_state(s);
    }

    pub(super) fn reset_queues(&self) {
        self.reset_io_queues();
    }

    pub(super) async fn wait_loss(&self) {
        self.loss_reported().await
    }
}

/// Detaches controller `name`: its bdevs go, its queues close (after a
/// normal shutdown notification when the admin queue still works).
pub async fn detach(name: &str) -> Result<(), NvmeError> {
    detach_as(name, Detach::User).await
}

pub(super) async fn detach_as(name: &str, how: Detach) -> Result<(), NvmeError> {
    let ctrlr = {
        let r = registry();
        let c = r
            .ctrlrs
            .get(name)
            .cloned()
            .ok_or_else(|| NvmeError::NotFound(name.to_string()))?;
        super::may_remove(&c.bdev_names(), how)?;
        c
    };
    registry().ctrlrs.remove(name);
    ctrlr.set_state(State::Deleting);
    ctrlr.failed.store(true, Ordering::Release);
    super::remove_bdevs(&ctrlr.bdev_names(), how);
    ctrlr.close_io_queues();
    // The admin queue is a task of the core that attached.
    let n = name.to_string();
    let core = ctrlr.admin_core;
    if let Err(e) = reactor::call_on(core, move || close_admin(n)).await {
        tracing::warn!("nvme: {name}: admin queue on core {core}: {e}");
    }
    tracing::info!("nvme: detached {name}");
    Ok(())
}

/// Ends controller `name`'s admin queue on this core (its own): the
/// supervisor stops (a reconnect under way with it), then a normal
/// shutdown notification when the queue still works, then close.
async fn close_admin(name: String) {
    let Some(a) = ADMINS.with(|a| a.borrow_mut().remove(&name)) else {
        return;
    };
    drop(a.task);
    drop(a.aer);
    let qp = a.qp.borrow().clone();
    if !qp.is_failed() {
        let shut = async {
            let cc = prop_get(&qp, PROP_CC, false).await?;
            prop_set(&qp, PROP_CC, (cc & !(3 << 14)) | CC_SHN_NORMAL).await?;
            // CSTS.SHST 10b: shutdown processing complete.
            wait_csts(&qp, SHUTDOWN_WAIT, |c| (c >> 2) & 3 == 2).await
        };
        if let Err(e) = reactor::timeout(SHUTDOWN_WAIT, shut)
            .await
            .unwrap_or_else(|| Err(NvmeError::Timeout("shutdown notification".into())))
        {
            tracing::info!("nvme: {name}: shutdown notification: {e}");
        }
    }
    qp.close();
}

/// Removes controller `c` after its loss timeout: out of the registry,
/// its bdevs hot-removed (claimed or not: what sits on them gets the
/// removal and errors), its queues closed. Runs in its supervisor, on
/// the admin core.
pub(super) fn delete_lost(c: &Arc<Ctrlr>) {
    c.set_state(State::Deleting);
    c.failed.store(true, Ordering::Release);
    c.set_fast_failed(true);
    let name = c.opts.name.clone();
    {
        let mut r = registry();
        if r.ctrlrs.get(&name).is_some_and(|x| Arc::ptr_eq(x, c)) {
            r.ctrlrs.remove(&name);
        }
    }
    for b in &c.bdev_names() {
        if let Err(e) = crate::hot_remove(b) {
            tracing::warn!("nvme: {name}: removing bdev {b}: {e}");
        }
    }
    c.close_io_queues();
    // The supervisor is the task running this: its handle is let go,
    // not dropped (that would cancel it).
    if let Some(a) = ADMINS.with(|a| a.borrow_mut().remove(&name)) {
        a.qp.borrow().close();
        a.task.detach();
    }
}

/// bdev_nvme_reset_controller: the connection is dropped and made
/// again (admin queue, enable, Identify, I/O queues), I/O held meanwhile.
/// Answers once the controller is back, or with an error when the first
/// attempt fails (then it goes on as after a loss: reconnect per its
/// timeouts, or failed without them).
pub async fn reset(name: &str) -> Result<(), NvmeError> {
    let c = registry()
        .ctrlrs
        .get(name)
        .cloned()
        .ok_or_else(|| NvmeError::NotFound(name.to_string()))?;
    if c.state() != State::Enabled {
        return Err(NvmeError::Busy(format!(
            "controller {name} is {}",
            c.state().name()
        )));
    }
    let gen = c.generation();
    c.reset_asked.store(true, Ordering::Release);
    c.loss.store(true, Ordering::Release);
    c.wake_supervisor();
    let start = Instant::now();
    loop {
        reactor::sleep(Duration::from_millis(10)).await;
        match c.state() {
            State::Enabled if c.generation() != gen => return Ok(()),
            State::Enabled | State::Resetting => {}
            s => {
                return Err(NvmeError::Controller(format!(
                    "the reset did not reconnect (controller {name} is {})",
                    s.name()
                )))
            }
        }
        if start.elapsed() > ATTACH_TIMEOUT {
            return Err(NvmeError::Timeout(format!("reset of {name}")));
        }
    }
}

/// Shutdown begins (before any module's fini): a controller that is
/// reconnecting, or loses its connection from now on, fails its held
/// and new I/O at once, so what sits on it can close instead of
/// waiting for a target that may never come back.
pub(crate) fn shutdown_begins() {
    SHUTTING_DOWN.store(true, Ordering::Release);
    for c in registry().ctrlrs.values() {
        if c.state() != State::Enabled {
            c.set_fast_failed(true);
        }
    }
}

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

pub(super) fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::Acquire)
}

/// Detaches every controller (module fini); what failed, one line each.
pub(crate) async fn detach_all(how: Detach) -> Vec<String> {
    let names: Vec<String> = registry().ctrlrs.keys().cloned().collect();
    super::detach_each(names, |n| async move { detach_as(&n, how).await }).await
}
