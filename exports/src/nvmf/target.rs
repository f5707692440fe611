//! The NVMe/TCP target: one transport, subsystems by NQN, listeners by
//! address. [`NvmfTarget`]'s methods are the nvmf RPCs' and are called
//! from plain threads (the RPC server's): stopping a listener or a
//! namespace waits for work on the reactors. Connections find what they
//! need through [`Shared`].

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reactor::sock::StdStream;
use reactor::ReactorHandle;

use super::controller::Controller;
use super::subsystem::{lock, ListenAddr, Namespace, Subsystem, SubsystemConfig};
use super::transport::TransportOpts;
use super::{NvmfError, DISCOVERY_NQN};
use crate::conn::{Closer, ConnTable};
use crate::listen::{Placement, ReservedCores};

/// What connections share with the management side.
pub struct Shared {
    pub(crate) transport: Mutex<Option<TransportOpts>>,
    pub(crate) subsystems: Mutex<BTreeMap<String, Arc<Subsystem>>>,
    /// Listeners added to the discovery subsystem itself.
    pub(crate) discovery_listeners: Mutex<Vec<ListenAddr>>,
    pub(crate) discovery_ctrls: Mutex<BTreeMap<u16, Arc<Controller>>>,
    next_discovery_cntlid: Mutex<u16>,
    /// The discovery log's generation: bumped whenever what it lists
    /// changes.
    pub(crate) genctr: AtomicU64,
    /// Queue pairs ever connected, for nvmf_get_stats.
    pub(crate) stats: Stats,
}

#[derive(Default)]
pub struct Stats {
    pub admin_qpairs: AtomicU64,
    pub io_qpairs: AtomicU64,
    pub current_admin_qpairs: AtomicU64,
    pub current_io_qpairs: AtomicU64,
    pub pending_bdev_io: AtomicU64,
}

impl Shared {
    pub fn transport(&self) -> Option<TransportOpts> {
        lock(&self.transport).clone()
    }

    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        lock(&self.subsystems).get(nqn).cloned()
    }

    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        lock(&self.subsystems).values().cloned().collect()
    }

    pub(crate) fn add_discovery_ctrl(
        &self,
        make: impl FnOnce(u16) -> Arc<Controller>,
    ) -> Arc<Controller> {
        let mut next = lock(&self.next_discovery_cntlid);
        let mut ctrls = lock(&self.discovery_ctrls);
        let mut id = *next;
        while ctrls.contains_key(&id) || id == 0 || id > 0xFFEF {
            id = if id >= 0xFFEF { 1 } else { id + 1 };
        }
        *next = if id >= 0xFFEF { 1 } else { id + 1 };
        let c = make(id);
        ctrls.insert(id, c.clone());
        c
    }

    pub(crate) fn remove_discovery_ctrl(&self, cntlid: u16) {
        lock(&self.discovery_ctrls).remove(&cntlid);
    }

    /// The discovery log changed: a new generation, and discovery
    /// controllers that asked are told.
    pub(crate) fn discovery_changed(&self) {
        self.genctr.fetch_add(1, Ordering::AcqRel);
        for c in lock(&self.discovery_ctrls).values() {
            c.discovery_changed();
        }
    }
}

struct Listener {
    addr: ListenAddr,
    closer: Arc<Closer>,
    ended: Receiver<()>,
    conns: Arc<ConnTable>,
    /// Subsystems (by NQN, the discovery one included) listening here.
    users: Vec<String>,
}

pub struct NvmfTarget {
    place: Placement,
    shared: Arc<Shared>,
    listeners: Mutex<BTreeMap<SocketAddr, Listener>>,
}

/// One row of nvmf_get_subsystems.
pub struct SubsystemInfo {
    pub nqn: String,
    pub config: SubsystemConfig,
    pub listeners: Vec<ListenAddr>,
    pub hosts: Vec<String>,
    pub namespaces: Vec<Arc<Namespace>>,
}

/// How long a removed namespace waits for its commands in flight before
/// its bdev is closed regardless.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

fn valid_nqn(nqn: &str) -> bool {
    // NQN rules (NVMe base spec 4.5): at most 223 bytes, "nqn." followed
    // by a date and a domain, or the UUID form.
    nqn.len() <= 223
        && nqn.len() > 11
        && nqn.starts_with("nqn.")
        && nqn.is_ascii()
        && !nqn.contains('\0')
}

impl NvmfTarget {
    pub fn new(reactors: ReactorHandle, reserved: ReservedCores) -> NvmfTarget {
        NvmfTarget {
            place: Placement::new(reactors, reserved),
            shared: Arc::new(Shared {
                transport: Mutex::new(None),
                subsystems: Mutex::new(BTreeMap::new()),
                discovery_listeners: Mutex::new(Vec::new()),
                discovery_ctrls: Mutex::new(BTreeMap::new()),
                next_discovery_cntlid: Mutex::new(1),
                genctr: AtomicU64::new(0),
                stats: Stats::default(),
            }),
            listeners: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn create_transport(&self, opts: TransportOpts) -> Result<(), NvmfError> {
        if !opts.trtype.eq_ignore_ascii_case("tcp") {
            return Err(NvmfError::InvalidTransport(opts.trtype));
        }
        let mut t = lock(&self.shared.transport);
        if t.is_some() {
            return Err(NvmfError::TransportExists(opts.trtype.to_uppercase()));
        }
        opts.check().map_err(NvmfError::InvalidParams)?;
        let mut opts = opts;
        opts.trtype = "TCP".into();
        *t = Some(opts);
        Ok(())
    }

    pub fn transports(&self) -> Vec<TransportOpts> {
        self.shared.transport().into_iter().collect()
    }

    pub fn create_subsystem(&self, nqn: &str, config: SubsystemConfig) -> Result<(), NvmfError> {
        let refuse = |why: String| NvmfError::CreateSubsystem(nqn.to_string(), why);
        if !valid_nqn(nqn) || nqn == DISCOVERY_NQN {
            return Err(refuse("not a valid NQN".into()));
        }
        if config.serial_number.len() > 20
            || !config
                .serial_number
                .bytes()
                .all(|b| (0x20..0x7F).contains(&b))
            || config.model_number.len() > 40
            || !config
                .model_number
                .bytes()
                .all(|b| (0x20..0x7F).contains(&b))
        {
            return Err(NvmfError::InvalidParams(
                "serial_number (at most 20) and model_number (at most 40) are printable ASCII"
                    .into(),
            ));
        }
        if config.min_cntlid == 0
            || config.min_cntlid > config.max_cntlid
            || config.max_cntlid > 0xFFEF
        {
            return Err(NvmfError::InvalidParams(
                "min_cntlid..max_cntlid must lie in 1..65519".into(),
            ));
        }
        let mut subs = lock(&self.shared.subsystems);
        if subs.contains_key(nqn) {
            return Err(refuse("it exists".into()));
        }
        subs.insert(nqn.to_string(), Subsystem::new(nqn.to_string(), config));
        drop(subs);
        tracing::info!("nvmf: created subsystem {nqn}");
        Ok(())
    }

    fn subsystem(&self, nqn: &str) -> Result<Arc<Subsystem>, NvmfError> {
        self.shared
            .subsystem(nqn)
            .ok_or_else(|| NvmfError::NoSubsystem(nqn.to_string()))
    }

    pub fn delete_subsystem(&self, nqn: &str) -> Result<(), NvmfError> {
        let s = lock(&self.shared.subsystems)
            .remove(nqn)
            .ok_or_else(|| NvmfError::NoSubsystem(nqn.to_string()))?;
        for c in s.controllers() {
            c.destroy();
        }
        let listeners = std::mem::take(&mut s.state().listeners);
        for l in listeners {
            self.release_listener(&l, nqn);
        }
        let nsids: Vec<u32> = s.state().namespaces.keys().copied().collect();
        for nsid in nsids {
            if let Some(ns) = s.remove_namespace(nsid) {
                self.close_namespace(ns);
            }
        }
        self.shared.discovery_changed();
        tracing::info!("nvmf: deleted subsystem {nqn}");
        Ok(())
    }

    pub fn add_namespace(
        &self,
        nqn: &str,
        bdev_name: &str,
        nsid: u32,
        nguid: Option<[u8; 16]>,
        uuid: Option<bdev::Uuid>,
        eui64: Option<[u8; 8]>,
    ) -> Result<u32, NvmfError> {
        self.reap_removed();
        let s = self.subsystem(nqn)?;
        let nsid = s
            .add_namespace(bdev_name, nsid, nguid, uuid, eui64)
            .map_err(NvmfError::InvalidParams)?;
        tracing::info!("nvmf: {nqn} namespace {nsid} is bdev {bdev_name}");
        Ok(nsid)
    }

    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), NvmfError> {
        let s = self.subsystem(nqn)?;
        let ns = s
            .remove_namespace(nsid)
            .ok_or_else(|| NvmfError::InvalidParams(format!("{nqn} has no namespace {nsid}")))?;
        self.close_namespace(ns);
        Ok(())
    }

    /// Takes every namespace of `bdev_name` out of every subsystem (its
    /// hosts are told) and closes the bdev: before a forced delete.
    pub fn remove_bdev(&self, bdev_name: &str) {
        for s in self.shared.subsystems() {
            let nsids: Vec<u32> = s
                .namespaces()
                .iter()
                .filter(|n| n.bdev_name == bdev_name)
                .map(|n| n.nsid)
                .collect();
            for nsid in nsids {
                if let Some(ns) = s.remove_namespace(nsid) {
                    self.close_namespace(ns);
                }
            }
        }
        self.reap_removed();
    }

    /// Waits for the namespace's commands in flight (each holds it),
    /// then closes its bdev on every core.
    fn close_namespace(&self, ns: Arc<Namespace>) {
        let t0 = Instant::now();
        while Arc::strong_count(&ns) > 1 && t0.elapsed() < DRAIN_LIMIT {
            std::thread::sleep(Duration::from_millis(2));
        }
        ns.export.close_everywhere(&self.place.reactors);
        tracing::info!("nvmf: closed namespace {} (bdev {})", ns.nsid, ns.bdev_name);
    }

    /// Namespaces whose bdev went away under them left their subsystem at
    /// once (hosts were told then); their bdevs are closed here, by the
    /// next management call, off the thread that deleted the bdev.
    fn reap_removed(&self) {
        for s in self.shared.subsystems() {
            for ns in s.take_removed() {
                self.close_namespace(ns);
            }
        }
    }

    pub fn add_listener(&self, nqn: &str, addr: ListenAddr) -> Result<(), NvmfError> {
        let is_discovery = nqn == "discovery" || nqn == DISCOVERY_NQN;
        let sub = if is_discovery {
            None
        } else {
            Some(self.subsystem(nqn)?)
        };
        if !addr.trtype.eq_ignore_ascii_case("tcp") {
            return Err(NvmfError::InvalidParams(format!(
                "transport {} is not served",
                addr.trtype
            )));
        }
        if self.shared.transport().is_none() {
            return Err(NvmfError::InvalidParams(
                "create the TCP transport first".into(),
            ));
        }
        let sa = addr.socket_addr().ok_or_else(|| {
            NvmfError::InvalidParams(format!("bad address {}:{}", addr.traddr, addr.trsvcid))
        })?;
        let mut addr = ListenAddr {
            trtype: "TCP".into(),
            adrfam: if sa.is_ipv4() {
                "IPv4".into()
            } else {
                "IPv6".into()
            },
            traddr: addr.traddr,
            trsvcid: addr.trsvcid,
        };
        let key = if is_discovery {
            DISCOVERY_NQN.to_string()
        } else {
            nqn.to_string()
        };
        {
            let taken = match &sub {
                Some(s) => s.state().listeners.contains(&addr),
                None => lock(&self.shared.discovery_listeners).contains(&addr),
            };
            if taken {
                return Err(NvmfError::InvalidParams(format!(
                    "{key} already listens on {}:{}",
                    addr.traddr, addr.trsvcid
                )));
            }
        }
        let mut ls = lock(&self.listeners);
        match ls.get_mut(&sa) {
            Some(l) => l.users.push(key.clone()),
            None => {
                // Port 0 picks a free port: what is recorded (and saved,
                // and listed) is the port bound.
                let (bound, l) = self.listen(sa, addr.clone(), key.clone())?;
                addr.trsvcid = bound.port().to_string();
                ls.insert(bound, l);
            }
        }
        drop(ls);
        match &sub {
            Some(s) => s.state().listeners.push(addr.clone()),
            None => lock(&self.shared.discovery_listeners).push(addr.clone()),
        }
        self.shared.discovery_changed();
        tracing::info!("nvmf: {key} listens on {}:{}", addr.traddr, addr.trsvcid);
        Ok(())
    }

    pub fn remove_listener(&self, nqn: &str, addr: ListenAddr) -> Result<(), NvmfError> {
        let is_discovery = nqn == "discovery" || nqn == DISCOVERY_NQN;
        let key = if is_discovery {
            DISCOVERY_NQN.to_string()
        } else {
            nqn.to_string()
        };
        let found = if is_discovery {
            let mut d = lock(&self.shared.discovery_listeners);
            let at = d.iter().position(|l| same_listen(l, &addr));
            at.map(|i| d.remove(i))
        } else {
            let s = self.subsystem(nqn)?;
            let mut st = s.state();
            let at = st.listeners.iter().position(|l| same_listen(l, &addr));
            let found = at.map(|i| st.listeners.remove(i));
            let ctrls: Vec<_> = st.controllers.values().cloned().collect();
            drop(st);
            if let Some(l) = &found {
                // Hosts connected through it lose their controllers, as
                // they would if the port went away.
                if let Some(sa) = l.socket_addr() {
                    for c in ctrls.iter().filter(|c| c.listen.port() == sa.port()) {
                        c.destroy();
                    }
                }
            }
            found
        };
        let l = found.ok_or_else(|| {
            NvmfError::InvalidParams(format!(
                "{key} does not listen on {}:{}",
                addr.traddr, addr.trsvcid
            ))
        })?;
        self.release_listener(&l, &key);
        self.shared.discovery_changed();
        Ok(())
    }

    fn release_listener(&self, addr: &ListenAddr, user: &str) {
        let Some(sa) = addr.socket_addr() else { return };
        let mut ls = lock(&self.listeners);
        let Some(l) = ls.get_mut(&sa) else { return };
        if let Some(i) = l.users.iter().position(|u| u == user) {
            l.users.remove(i);
        }
        if !l.users.is_empty() {
            return;
        }
        if let Some(l) = ls.remove(&sa) {
            drop(ls);
            stop_listener(l);
        }
    }

    fn listen(
        &self,
        sa: SocketAddr,
        mut addr: ListenAddr,
        user: String,
    ) -> Result<(SocketAddr, Listener), NvmfError> {
        let l = TcpListener::bind(sa).map_err(|e| NvmfError::Listen(sa.to_string(), e))?;
        let bound = l
            .local_addr()
            .map_err(|e| NvmfError::Listen(sa.to_string(), e))?;
        addr.trsvcid = bound.port().to_string();
        let closer = Arc::new(Closer::default());
        let conns: Arc<ConnTable> = Arc::default();
        let shared = self.shared.clone();
        let place = self.place.clone();
        let table = conns.clone();
        let ended = self
            .place
            .accept(l.into(), closer.clone(), move |s| {
                connection(&place, &shared, &table, s)
            })
            .map_err(|e| NvmfError::Internal(e.to_string()))?;
        Ok((
            bound,
            Listener {
                addr,
                closer,
                ended,
                conns,
                users: vec![user],
            },
        ))
    }

    pub fn add_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        let s = self.subsystem(nqn)?;
        if !s.state().hosts.insert(host.to_string()) {
            return Err(NvmfError::Internal(format!(
                "{host} is already allowed into {nqn}"
            )));
        }
        self.shared.discovery_changed();
        Ok(())
    }

    pub fn remove_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        let s = self.subsystem(nqn)?;
        if !s.state().hosts.remove(host) {
            return Err(NvmfError::Internal(format!(
                "{host} is not allowed into {nqn}"
            )));
        }
        // Its controllers go, as SPDK disconnects a removed host.
        for c in s.controllers().iter().filter(|c| c.hostnqn == host) {
            c.destroy();
        }
        self.shared.discovery_changed();
        Ok(())
    }

    pub fn allow_any_host(&self, nqn: &str, allow: bool) -> Result<(), NvmfError> {
        let s = self.subsystem(nqn)?;
        s.state().config.allow_any_host = allow;
        self.shared.discovery_changed();
        Ok(())
    }

    pub fn subsystems(&self) -> Vec<SubsystemInfo> {
        self.reap_removed();
        self.shared
            .subsystems()
            .into_iter()
            .map(|s| {
                let st = s.state();
                SubsystemInfo {
                    nqn: s.nqn.clone(),
                    config: st.config.clone(),
                    listeners: st.listeners.clone(),
                    hosts: st.hosts.iter().cloned().collect(),
                    namespaces: st.namespaces.values().cloned().collect(),
                }
            })
            .collect()
    }

    pub fn discovery_listeners(&self) -> Vec<ListenAddr> {
        lock(&self.shared.discovery_listeners).clone()
    }

    pub fn controllers(&self, nqn: &str) -> Result<Vec<Arc<Controller>>, NvmfError> {
        if nqn == DISCOVERY_NQN {
            return Ok(lock(&self.shared.discovery_ctrls)
                .values()
                .cloned()
                .collect());
        }
        Ok(self.subsystem(nqn)?.controllers())
    }

    /// Stops everything (daemon shutdown): controllers first, so hosts see
    /// their queues close, then listeners, then namespaces.
    pub fn stop_all(&self) {
        let nqns: Vec<String> = lock(&self.shared.subsystems).keys().cloned().collect();
        for nqn in nqns {
            let _ = self.delete_subsystem(&nqn);
        }
        let rest: Vec<Listener> = std::mem::take(&mut *lock(&self.listeners))
            .into_values()
            .collect();
        for l in rest {
            stop_listener(l);
        }
        lock(&self.shared.discovery_listeners).clear();
    }
}

fn same_listen(a: &ListenAddr, b: &ListenAddr) -> bool {
    a.traddr == b.traddr && a.trsvcid == b.trsvcid && a.trtype.eq_ignore_ascii_case(&b.trtype)
}

fn stop_listener(l: Listener) {
    l.closer.close();
    let _ = l.ended.recv();
    while !l.conns.is_empty() {
        l.conns.close_all();
        std::thread::sleep(Duration::from_millis(2));
    }
    tracing::info!(
        "nvmf: stopped listening on {}:{}",
        l.addr.traddr,
        l.addr.trsvcid
    );
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Hands an accepted connection to a reactor.
fn connection(place: &Placement, shared: &Arc<Shared>, conns: &Arc<ConnTable>, s: StdStream) {
    let local = match &s {
        StdStream::Tcp(t) => t.local_addr().ok(),
        StdStream::Unix(_) => None,
    };
    let Some(local) = local else { return };
    let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let closer = Arc::new(Closer::default());
    let entry = conns.enter(id, closer.clone());
    let shared = shared.clone();
    let core = place.pick_core();
    // Refused only when the reactors are stopping: the socket is dropped
    // and the host sees the connection close.
    let _ = place.reactors.send(core, move || {
        reactor::spawn_local(super::qpair::serve(s, local, shared, closer, entry)).detach();
    });
}
