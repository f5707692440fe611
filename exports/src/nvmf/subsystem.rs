//! Subsystems: an NQN, its namespaces (bdevs opened for hosts), the
//! listeners it may be reached on, the hosts allowed in, and its live
//! controllers. Management calls (RPC threads) and queue pairs (reactors)
//! share one subsystem behind a mutex; the data path reads a namespace
//! once per queue pair and generation, not per command.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bdev::{BdevEvent, IoType, Uuid};

use super::controller::Controller;
use crate::nbd::export::Export;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A listen address as SPDK's RPCs spell it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListenAddr {
    pub trtype: String,
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
}

impl ListenAddr {
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip: std::net::IpAddr = self.traddr.parse().ok()?;
        let port: u16 = self.trsvcid.parse().ok()?;
        Some(SocketAddr::new(ip, port))
    }
}

/// One exported bdev.
pub struct Namespace {
    pub nsid: u32,
    pub bdev_name: String,
    pub export: Arc<Export>,
    pub nguid: [u8; 16],
    pub uuid: Uuid,
    pub eui64: Option<[u8; 8]>,
}

impl Namespace {
    /// A read-only bdev (a read-only volume or snapshot): the host sees
    /// the namespace write protected.
    pub fn read_only(&self) -> bool {
        self.export.bdev.is_read_only()
    }

    pub fn block_size(&self) -> u32 {
        self.export.block_size()
    }

    pub fn num_blocks(&self) -> u64 {
        self.export.bdev.num_blocks()
    }

    /// Whether the bdev knows which blocks are allocated (a thin volume):
    /// the namespace is then thin provisioned in NVMe's sense.
    pub fn is_thin(&self) -> bool {
        self.export.bdev.module().block_status(0, 1).is_some()
    }

    /// Blocks allocated now (NUSE): all of them unless the bdev is thin.
    pub fn used_blocks(&self) -> u64 {
        let n = self.num_blocks();
        if !self.is_thin() {
            return n;
        }
        self.export
            .bdev
            .block_status(0, n)
            .iter()
            .filter(|(_, mapped)| *mapped)
            .map(|(len, _)| len)
            .sum()
    }

    pub fn can_unmap(&self) -> bool {
        self.export.bdev.io_type_supported(IoType::Unmap)
    }
}

/// A UUID (version 8: our own scheme) from a 128-bit FNV-1a hash of the
/// subsystem NQN, the namespace id and the bdev name.
pub fn stable_uuid(nqn: &str, nsid: u32, bdev_name: &str) -> Uuid {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    let nsid = nsid.to_le_bytes();
    let parts: [&[u8]; 5] = [nqn.as_bytes(), &[0], &nsid, &[0], bdev_name.as_bytes()];
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u128::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    let mut b = h.to_be_bytes();
    b[6] = (b[6] & 0x0F) | 0x80;
    b[8] = (b[8] & 0x3F) | 0x80;
    Uuid(b)
}

/// The parts of a subsystem the RPCs set.
#[derive(Clone, Debug)]
pub struct SubsystemConfig {
    pub serial_number: String,
    pub model_number: String,
    pub max_namespaces: u32,
    pub allow_any_host: bool,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
}

pub(crate) struct SubsysState {
    pub config: SubsystemConfig,
    pub hosts: BTreeSet<String>,
    pub namespaces: BTreeMap<u32, Arc<Namespace>>,
    pub listeners: Vec<ListenAddr>,
    pub controllers: BTreeMap<u16, Arc<Controller>>,
    next_cntlid: u16,
}

pub struct Subsystem {
    pub nqn: String,
    st: Mutex<SubsysState>,
    /// Bumped on every namespace change: queue pairs drop what they
    /// cached when it moves.
    generation: AtomicU64,
    /// Namespaces whose bdev was removed under them: out of the
    /// subsystem, their bdevs still to be closed (by the target, off the
    /// thread that removed the bdev).
    removed: Mutex<Vec<Arc<Namespace>>>,
}

impl Subsystem {
    pub fn new(nqn: String, config: SubsystemConfig) -> Arc<Subsystem> {
        let first = config.min_cntlid;
        Arc::new(Subsystem {
            nqn,
            st: Mutex::new(SubsysState {
                config,
                hosts: BTreeSet::new(),
                namespaces: BTreeMap::new(),
                listeners: Vec::new(),
                controllers: BTreeMap::new(),
                next_cntlid: first,
            }),
            generation: AtomicU64::new(0),
            removed: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, SubsysState> {
        lock(&self.st)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn config(&self) -> SubsystemConfig {
        self.state().config.clone()
    }

    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.state().namespaces.get(&nsid).cloned()
    }

    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.state().namespaces.values().cloned().collect()
    }

    /// The highest NSID a host may see (NN): max_namespaces, or the
    /// highest in use when that is unlimited (0).
    pub fn nn(&self) -> u32 {
        let st = self.state();
        match st.config.max_namespaces {
            0 => st
                .namespaces
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0)
                .max(1),
            n => n,
        }
    }

    pub fn allows_host(&self, hostnqn: &str) -> bool {
        let st = self.state();
        st.config.allow_any_host || st.hosts.contains(hostnqn)
    }

    /// Whether a connection that came in on `local` may reach this
    /// subsystem (one of its listeners is that address).
    pub fn listens_on(&self, local: SocketAddr) -> bool {
        self.state().listeners.iter().any(|l| {
            l.socket_addr().is_some_and(|a| {
                a.port() == local.port() && (a.ip() == local.ip() || a.ip().is_unspecified())
            })
        })
    }

    /// Opens `bdev_name` as namespace `nsid` (0: the lowest free).
    pub fn add_namespace(
        self: &Arc<Self>,
        bdev_name: &str,
        nsid: u32,
        nguid: Option<[u8; 16]>,
        uuid: Option<Uuid>,
        eui64: Option<[u8; 8]>,
    ) -> Result<u32, String> {
        let mut st = self.state();
        let max = match st.config.max_namespaces {
            0 => u32::MAX - 1,
            n => n,
        };
        let nsid = if nsid == 0 {
            (1..=max)
                .find(|n| !st.namespaces.contains_key(n))
                .ok_or("no free namespace id")?
        } else {
            nsid
        };
        if nsid > max || nsid == u32::MAX {
            return Err(format!("nsid {nsid} is above max_namespaces {max}"));
        }
        if st.namespaces.contains_key(&nsid) {
            return Err(format!("nsid {nsid} is taken"));
        }
        if st.namespaces.values().any(|n| n.bdev_name == bdev_name) {
            return Err(format!(
                "{bdev_name} is already a namespace of {}",
                self.nqn
            ));
        }
        let me: Weak<Subsystem> = Arc::downgrade(self);
        let event: bdev::EventFn = Box::new(move |e| {
            if let Some(s) = me.upgrade() {
                s.bdev_event(nsid, e);
            }
        });
        let export = Export::open_with(bdev_name, &format!("{}/{nsid}", self.nqn), Some(event))
            .map_err(|e| e.to_string())?;
        // The identity a host keeps: the same at every start (a host that
        // reconnects to changed identifiers drops the namespace, and bdev
        // UUIDs not given in the config are new at each start), distinct
        // per subsystem and namespace (Linux ignores a namespace whose
        // NGUID another already has).
        let uuid = uuid.unwrap_or_else(|| stable_uuid(&self.nqn, nsid, bdev_name));
        let nguid = nguid.unwrap_or(uuid.0);
        let ns = Arc::new(Namespace {
            nsid,
            bdev_name: export.bdev.name().to_string(),
            export,
            nguid,
            uuid,
            eui64,
        });
        st.namespaces.insert(nsid, ns);
        let ctrls: Vec<_> = st.controllers.values().cloned().collect();
        drop(st);
        self.generation.fetch_add(1, Ordering::AcqRel);
        for c in ctrls {
            c.namespace_changed(nsid);
        }
        Ok(nsid)
    }

    /// Takes namespace `nsid` out; hosts are told. The caller stops the
    /// export (it waits for I/O on every core).
    pub fn remove_namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        let mut st = self.state();
        let ns = st.namespaces.remove(&nsid)?;
        let ctrls: Vec<_> = st.controllers.values().cloned().collect();
        drop(st);
        self.generation.fetch_add(1, Ordering::AcqRel);
        ns.export.removed.store(true, Ordering::Release);
        for c in ctrls {
            c.namespace_changed(nsid);
        }
        Some(ns)
    }

    fn bdev_event(&self, nsid: u32, e: BdevEvent) {
        match e {
            BdevEvent::Resize(_) => {
                tracing::info!("nvmf: namespace {nsid} of {} resized", self.nqn);
                for c in self.controllers() {
                    c.namespace_changed(nsid);
                }
            }
            // The bdev is going: the namespace leaves, hosts are told; the
            // target reaps the export (closes it on every core) later, off
            // the thread that deletes the bdev.
            BdevEvent::Remove => {
                tracing::info!(
                    "nvmf: namespace {nsid} of {}: its bdev was removed",
                    self.nqn
                );
                if let Some(ns) = self.remove_namespace(nsid) {
                    lock(&self.removed).push(ns);
                }
            }
        }
    }

    /// The namespaces [`Subsystem::bdev_event`] took out, to close.
    pub(crate) fn take_removed(&self) -> Vec<Arc<Namespace>> {
        std::mem::take(&mut *lock(&self.removed))
    }

    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.state().controllers.values().cloned().collect()
    }

    /// A free controller id in [min_cntlid, max_cntlid], round-robin so a
    /// reconnecting host does not get the id it just dropped.
    pub(crate) fn alloc_cntlid(st: &mut SubsysState) -> Option<u16> {
        let (lo, hi) = (st.config.min_cntlid, st.config.max_cntlid);
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span {
            let id = st.next_cntlid.clamp(lo, hi);
            st.next_cntlid = if id >= hi { lo } else { id + 1 };
            if !st.controllers.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    pub(crate) fn remove_controller(&self, cntlid: u16) {
        self.state().controllers.remove(&cntlid);
    }
}

#[cfg(test)]
mod tests {
    use super::stable_uuid;

    #[test]
    fn namespace_identities_are_stable_and_distinct() {
        let a = stable_uuid("nqn.2026-12.io.ferrothin:vol0", 1, "vol0");
        assert_eq!(a, stable_uuid("nqn.2026-12.io.ferrothin:vol0", 1, "vol0"));
        assert_eq!(
            a.to_string(),
            stable_uuid("nqn.2026-12.io.ferrothin:vol0", 1, "vol0").to_string()
        );
        assert_ne!(a, stable_uuid("nqn.2026-12.io.ferrothin:vol1", 1, "vol0"));
        assert_ne!(a, stable_uuid("nqn.2026-12.io.ferrothin:vol0", 2, "vol0"));
        assert_ne!(a, stable_uuid("nqn.2026-12.io.ferrothin:vol0", 1, "vol1"));
        // The version (8) and variant (RFC 4122) bits.
        assert_eq!(a.0[6] >> 4, 8);
        assert_eq!(a.0[8] >> 6, 2);
    }
}
