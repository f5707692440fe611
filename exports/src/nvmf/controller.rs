//! A controller: what one host's association (its admin queue and I/O
//! queues, each a TCP connection, maybe on different cores) shares. The
//! registers (CC, CSTS), keep-alive, queue grants, the asynchronous
//! events waiting for an AER and the changed-namespace list live here
//! behind a mutex; nothing on the I/O path takes it.
//!
//! States (protocols.md A.9.3): created at the admin Connect with CC = 0
//! and CSTS = 0; CC.EN 0 -> 1 checks the queue entry sizes and sets
//! CSTS.RDY (or CSTS.CFS); EN 1 -> 0 is a reset (I/O queues closed);
//! CC.SHN asks for a shutdown (I/O queues closed, every namespace flushed,
//! then CSTS.SHST = complete). The controller dies with its admin queue
//! or when the host stops sending keep-alives.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::sqe::{PropertySize, Status};
use super::subsystem::Subsystem;
use crate::conn::Closer;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Property offsets (A.9.2).
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
    pub const NSSR: u32 = 0x20;
}

/// NVMe 1.3.0: obliges Identify CNS 03, which we serve.
pub const VERSION: u32 = 0x0001_0300;

const CC_EN: u32 = 1;
const CC_SHN_SHIFT: u32 = 14;
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 1 << 1;
const CSTS_SHST_SHIFT: u32 = 2;
const SHST_OCCURRING: u32 = 1;
const SHST_COMPLETE: u32 = 2;

/// Asynchronous event: notice, namespace attribute changed, log page 04h.
pub const AEN_NS_CHANGED: u32 = 0x0004_0002;
/// Asynchronous event: notice, discovery log changed, log page 70h.
pub const AEN_DISCOVERY_CHANGED: u32 = 0x0070_F002;
/// Asynchronous Event Configuration bits.
const AEC_NS_ATTR: u32 = 1 << 8;
const AEC_DISCOVERY: u32 = 1 << 31;

/// Extra time a host gets past its KATO before it is declared gone:
/// loopback hosts share cores with us and their timers slip.
const KATO_GRACE: Duration = Duration::from_secs(2);

/// What a property write asks the admin queue to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum CcEffect {
    None,
    /// EN 1 -> 0: close the I/O queues.
    Reset,
    /// SHN set: close the I/O queues, flush the namespaces, then call
    /// [`Controller::shutdown_complete`].
    Shutdown,
}

struct State {
    cc: u32,
    csts: u32,
    kato: Duration,
    last_contact: Instant,
    /// I/O queues granted by Set Features Number of Queues (count).
    granted: Option<u16>,
    aec: u32,
    /// Events waiting for an AER, as completion DW0.
    events: VecDeque<u32>,
    /// Event types delivered and not yet acknowledged by reading their
    /// log page (with RAE clear): not raised again until then.
    masked: BTreeSet<u32>,
    changed: BTreeSet<u32>,
    changed_overflow: bool,
    io_queues: BTreeMap<u16, Arc<Closer>>,
    /// Wakes the admin queue's task: an event is waiting.
    admin_waker: Option<Waker>,
    dead: bool,
}

pub struct Controller {
    pub cntlid: u16,
    /// None for a discovery controller.
    pub subsystem: Option<Arc<Subsystem>>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// The listener the admin queue came in on.
    pub listen: SocketAddr,
    /// MQES + 1: entries an I/O queue may have.
    pub io_queue_entries: u32,
    /// The most I/O queues a host may have.
    pub max_io_queues: u16,
    /// Ends the admin queue (and with it the controller).
    admin: Arc<Closer>,
    st: Mutex<State>,
}

impl Controller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cntlid: u16,
        subsystem: Option<Arc<Subsystem>>,
        hostnqn: String,
        hostid: [u8; 16],
        listen: SocketAddr,
        kato_ms: u32,
        io_queue_entries: u32,
        max_io_queues: u16,
        admin: Arc<Closer>,
    ) -> Controller {
        Controller {
            cntlid,
            subsystem,
            hostnqn,
            hostid,
            listen,
            io_queue_entries,
            max_io_queues,
            admin,
            st: Mutex::new(State {
                cc: 0,
                csts: 0,
                kato: Duration::from_millis(u64::from(kato_ms)),
                last_contact: Instant::now(),
                granted: None,
                aec: 0,
                events: VecDeque::new(),
                masked: BTreeSet::new(),
                changed: BTreeSet::new(),
                changed_overflow: false,
                io_queues: BTreeMap::new(),
                admin_waker: None,
                dead: false,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.st)
    }

    pub fn is_discovery(&self) -> bool {
        self.subsystem.is_none()
    }

    pub fn subnqn(&self) -> &str {
        self.subsystem
            .as_ref()
            .map_or(super::DISCOVERY_NQN, |s| s.nqn.as_str())
    }

    /// CAP (A.9.2): MQES, CQR, TO = 10 s, the NVM command set, 4 KiB pages.
    pub fn cap(&self) -> u64 {
        let mqes = u64::from(self.io_queue_entries.saturating_sub(1).min(0xFFFF));
        mqes | (1 << 16) | (20 << 24) | (1 << 37)
    }

    pub fn is_enabled(&self) -> bool {
        self.state().csts & CSTS_RDY != 0
    }

    pub fn property_get(&self, size: PropertySize, offset: u32) -> Result<u64, Status> {
        let st = self.state();
        let bad = Status::INVALID_FIELD.with_dnr();
        let v = match (offset, size.bytes()) {
            (prop::CAP, Some(8)) => self.cap(),
            (prop::CAP, Some(4)) => self.cap() & 0xFFFF_FFFF,
            (o, Some(4)) if o == prop::CAP + 4 => self.cap() >> 32,
            (prop::VS, Some(4)) => u64::from(VERSION),
            (prop::CC, Some(4)) => u64::from(st.cc),
            (prop::CSTS, Some(4)) => u64::from(st.csts),
            (prop::NSSR, Some(4)) => 0,
            _ => return Err(bad),
        };
        Ok(v)
    }

    /// A Property Set. CC changes take effect here; what must follow
    /// (closing queues, flushing) is the admin queue's to do.
    pub fn property_set(
        &self,
        size: PropertySize,
        offset: u32,
        value: u64,
    ) -> Result<CcEffect, Status> {
        if offset != prop::CC || size.bytes() != Some(4) {
            return Err(Status::INVALID_FIELD.with_dnr());
        }
        let new = value as u32;
        let mut st = self.state();
        let old = st.cc;
        st.cc = new;
        let shn = (new >> CC_SHN_SHIFT) & 3;
        if shn != 0 && (old >> CC_SHN_SHIFT) & 3 == 0 {
            st.csts = (st.csts & !(3 << CSTS_SHST_SHIFT)) | (SHST_OCCURRING << CSTS_SHST_SHIFT);
            return Ok(CcEffect::Shutdown);
        }
        match (old & CC_EN != 0, new & CC_EN != 0) {
            (false, true) => {
                let iosqes = (new >> 16) & 0xF;
                let iocqes = (new >> 20) & 0xF;
                let mps = (new >> 7) & 0xF;
                let css = (new >> 4) & 0x7;
                let ams = (new >> 11) & 0x7;
                if iosqes != 6 || iocqes != 4 || mps != 0 || css != 0 || ams != 0 {
                    tracing::warn!(
                        "nvmf: controller {} of {}: CC {new:#x} asks for what we do not support; controller fatal status",
                        self.cntlid,
                        self.subnqn()
                    );
                    st.csts |= CSTS_CFS;
                } else {
                    st.csts = CSTS_RDY;
                }
                Ok(CcEffect::None)
            }
            (true, false) => {
                st.csts = 0;
                st.cc = 0;
                st.granted = None;
                Ok(CcEffect::Reset)
            }
            _ => Ok(CcEffect::None),
        }
    }

    /// The shutdown's flushes are done: SHST = complete.
    pub fn shutdown_complete(&self) {
        let mut st = self.state();
        st.csts = (st.csts & !(3 << CSTS_SHST_SHIFT)) | (SHST_COMPLETE << CSTS_SHST_SHIFT);
        // A shut-down controller is no longer ready.
        st.csts &= !CSTS_RDY;
    }

    /// Number of Queues: what the host asked (0's based, both counts),
    /// answered with what it gets, 0's based.
    pub fn set_queue_count(&self, requested: u32) -> Result<u32, Status> {
        let nsqr = requested & 0xFFFF;
        let ncqr = requested >> 16;
        if nsqr == 0xFFFF || ncqr == 0xFFFF {
            return Err(Status::INVALID_FIELD.with_dnr());
        }
        let mut st = self.state();
        if !st.io_queues.is_empty() {
            return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        }
        let n = (nsqr.min(ncqr) + 1).min(u32::from(self.max_io_queues)) as u16;
        st.granted = Some(n);
        Ok(self.queue_count_dw0(n))
    }

    pub fn queue_count(&self) -> u32 {
        let n = self.state().granted.unwrap_or(self.max_io_queues);
        self.queue_count_dw0(n)
    }

    fn queue_count_dw0(&self, n: u16) -> u32 {
        let z = u32::from(n.max(1) - 1);
        z | (z << 16)
    }

    pub fn kato_ms(&self) -> u32 {
        self.state().kato.as_millis() as u32
    }

    pub fn set_kato_ms(&self, ms: u32) {
        let mut st = self.state();
        st.kato = Duration::from_millis(u64::from(ms));
        st.last_contact = Instant::now();
    }

    /// The host is alive (a Keep Alive, or any admin command).
    pub fn touch(&self) {
        self.state().last_contact = Instant::now();
    }

    /// Whether the host went silent past its KATO (never with KATO 0, nor
    /// after a shutdown, which stops keep-alive enforcement).
    pub fn expired(&self, now: Instant) -> bool {
        let st = self.state();
        let shut = (st.cc >> CC_SHN_SHIFT) & 3 != 0;
        !st.kato.is_zero()
            && !shut
            && now.saturating_duration_since(st.last_contact) > st.kato + KATO_GRACE
    }

    /// An I/O queue Connect: checks the controller may take queue `qid`.
    pub fn attach_io_queue(&self, qid: u16, closer: Arc<Closer>) -> Result<(), Status> {
        let mut st = self.state();
        if st.dead {
            return Err(Status::CONNECT_INVALID_PARAMETERS.with_dnr());
        }
        if st.csts & CSTS_RDY == 0 {
            return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        }
        let limit = st.granted.unwrap_or(self.max_io_queues);
        if qid > limit {
            return Err(Status::INVALID_QUEUE_ID.with_dnr());
        }
        if st.io_queues.contains_key(&qid) {
            return Err(Status::CONNECT_CONTROLLER_BUSY.with_dnr());
        }
        st.io_queues.insert(qid, closer);
        Ok(())
    }

    pub fn detach_io_queue(&self, qid: u16) {
        self.state().io_queues.remove(&qid);
    }

    pub fn io_queue_ids(&self) -> Vec<u16> {
        self.state().io_queues.keys().copied().collect()
    }

    pub fn io_queue_count(&self) -> usize {
        self.state().io_queues.len()
    }

    /// Closes every I/O queue (reset, shutdown, teardown).
    pub fn close_io_queues(&self) {
        for c in self.state().io_queues.values() {
            c.close();
        }
    }

    /// Ends the controller: the admin queue and every I/O queue close.
    pub fn destroy(&self) {
        let mut st = self.state();
        st.dead = true;
        for c in st.io_queues.values() {
            c.close();
        }
        drop(st);
        self.admin.close();
    }

    pub fn is_dead(&self) -> bool {
        self.state().dead
    }

    pub fn set_admin_waker(&self, w: &Waker) {
        self.state().admin_waker = Some(w.clone());
    }

    pub fn aec(&self) -> u32 {
        self.state().aec
    }

    pub fn set_aec(&self, aec: u32) {
        self.state().aec = aec;
    }

    /// A namespace was added, removed or resized: remembered for the
    /// Changed Namespace List, and an event raised if the host asked for
    /// namespace notices and has read the last one.
    pub fn namespace_changed(&self, nsid: u32) {
        let mut st = self.state();
        if st.changed.len() >= 1024 {
            st.changed_overflow = true;
        } else {
            st.changed.insert(nsid);
        }
        if st.aec & AEC_NS_ATTR != 0 {
            Self::raise(&mut st, AEN_NS_CHANGED);
        }
    }

    /// The discovery log changed (discovery controllers).
    pub fn discovery_changed(&self) {
        let mut st = self.state();
        if st.aec & AEC_DISCOVERY != 0 {
            Self::raise(&mut st, AEN_DISCOVERY_CHANGED);
        }
    }

    fn raise(st: &mut State, event: u32) {
        if st.masked.contains(&event) || st.events.contains(&event) {
            return;
        }
        st.events.push_back(event);
        if let Some(w) = &st.admin_waker {
            w.wake_by_ref();
        }
    }

    /// The next event for an outstanding AER; its type is masked until
    /// the host reads its log page.
    pub fn take_event(&self) -> Option<u32> {
        let mut st = self.state();
        let e = st.events.pop_front()?;
        st.masked.insert(e);
        Some(e)
    }

    /// Reads (and clears) the Changed Namespace List (log 04h).
    pub fn take_changed(&self, rae: bool) -> Vec<u32> {
        let mut st = self.state();
        if !rae {
            st.masked.remove(&AEN_NS_CHANGED);
        }
        let out = if st.changed_overflow {
            vec![u32::MAX]
        } else {
            st.changed.iter().copied().collect()
        };
        st.changed.clear();
        st.changed_overflow = false;
        out
    }

    /// The host read the discovery log with RAE clear.
    pub fn discovery_log_read(&self, rae: bool) {
        if !rae {
            self.state().masked.remove(&AEN_DISCOVERY_CHANGED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctrl(kato_ms: u32) -> Controller {
        Controller::new(
            1,
            None,
            "nqn.host".into(),
            [0; 16],
            "127.0.0.1:4420".parse().unwrap(),
            kato_ms,
            128,
            4,
            Arc::new(Closer::default()),
        )
    }

    const CC_CONFIG: u64 = 0x0046_0000;

    #[test]
    fn enable_checks_the_entry_sizes_and_reset_clears_the_grants() {
        let c = ctrl(0);
        assert_eq!(c.property_get(PropertySize::Four, prop::CSTS), Ok(0));
        // Linux writes the configuration first, then EN.
        assert_eq!(
            c.property_set(PropertySize::Four, prop::CC, CC_CONFIG),
            Ok(CcEffect::None)
        );
        assert!(!c.is_enabled());
        assert_eq!(
            c.property_set(PropertySize::Four, prop::CC, CC_CONFIG | 1),
            Ok(CcEffect::None)
        );
        assert!(c.is_enabled());
        assert_eq!(
            c.set_queue_count(0x0010_0010),
            Ok(0x0003_0003),
            "four granted"
        );
        assert_eq!(
            c.attach_io_queue(5, Arc::default()),
            Err(Status::INVALID_QUEUE_ID.with_dnr())
        );
        assert_eq!(c.attach_io_queue(4, Arc::default()), Ok(()));
        assert_eq!(
            c.attach_io_queue(4, Arc::default()),
            Err(Status::CONNECT_CONTROLLER_BUSY.with_dnr())
        );
        assert_eq!(
            c.set_queue_count(0),
            Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr())
        );
        c.detach_io_queue(4);
        assert_eq!(
            c.property_set(PropertySize::Four, prop::CC, CC_CONFIG),
            Ok(CcEffect::Reset)
        );
        assert!(!c.is_enabled());
        // 64-byte completions are not ours to give: fatal status, not ready.
        let bad_cqes = 0x0066_0001;
        assert_eq!(
            c.property_set(PropertySize::Four, prop::CC, bad_cqes),
            Ok(CcEffect::None)
        );
        let csts = c.property_get(PropertySize::Four, prop::CSTS).unwrap();
        assert_eq!(csts & 3, 2, "CFS set, RDY clear");
        assert_eq!(
            c.property_set(PropertySize::Eight, prop::CC, 1),
            Err(Status::INVALID_FIELD.with_dnr())
        );
    }

    #[test]
    fn cap_reads_whole_or_by_halves() {
        let c = ctrl(0);
        let cap = c.property_get(PropertySize::Eight, prop::CAP).unwrap();
        assert_eq!(cap & 0xFFFF, 127, "MQES");
        assert_eq!((cap >> 37) & 1, 1, "the NVM command set");
        assert_eq!(
            c.property_get(PropertySize::Four, prop::CAP),
            Ok(cap & 0xFFFF_FFFF)
        );
        assert_eq!(
            c.property_get(PropertySize::Four, prop::CAP + 4),
            Ok(cap >> 32)
        );
        assert_eq!(
            c.property_get(PropertySize::Four, prop::VS),
            Ok(u64::from(VERSION))
        );
        assert!(c.property_get(PropertySize::Reserved(3), prop::VS).is_err());
    }

    #[test]
    fn shutdown_reports_occurring_then_complete_and_stops_keep_alive() {
        let c = ctrl(1000);
        c.property_set(PropertySize::Four, prop::CC, CC_CONFIG | 1)
            .unwrap();
        let shn = CC_CONFIG | 1 | (1 << CC_SHN_SHIFT);
        assert_eq!(
            c.property_set(PropertySize::Four, prop::CC, shn),
            Ok(CcEffect::Shutdown)
        );
        let shst =
            |c: &Controller| (c.property_get(PropertySize::Four, prop::CSTS).unwrap() >> 2) & 3;
        assert_eq!(shst(&c), 1);
        c.shutdown_complete();
        assert_eq!(shst(&c), 2);
        assert!(!c.expired(Instant::now() + Duration::from_secs(3600)));
    }

    #[test]
    fn keep_alive_expires_only_past_kato_and_grace() {
        let c = ctrl(1000);
        let now = Instant::now();
        assert!(!c.expired(now + Duration::from_millis(2900)));
        assert!(c.expired(now + Duration::from_millis(3100)));
        c.set_kato_ms(0);
        assert!(!c.expired(now + Duration::from_secs(3600)), "KATO 0: never");
    }

    #[test]
    fn a_namespace_event_is_raised_once_until_its_log_is_read() {
        let c = ctrl(0);
        c.namespace_changed(1);
        assert_eq!(c.take_event(), None, "notices not enabled");
        c.set_aec(AEC_NS_ATTR);
        c.namespace_changed(2);
        c.namespace_changed(3);
        assert_eq!(c.take_event(), Some(AEN_NS_CHANGED));
        c.namespace_changed(4);
        assert_eq!(c.take_event(), None, "masked until the log is read");
        // Read with RAE set: still masked.
        assert_eq!(c.take_changed(true), vec![1, 2, 3, 4]);
        c.namespace_changed(5);
        assert_eq!(c.take_event(), None);
        assert_eq!(c.take_changed(false), vec![5]);
        c.namespace_changed(6);
        assert_eq!(c.take_event(), Some(AEN_NS_CHANGED));
    }

    #[test]
    fn more_than_1024_changes_overflow_the_list() {
        let c = ctrl(0);
        for n in 1..=1100 {
            c.namespace_changed(n);
        }
        assert_eq!(c.take_changed(false), vec![u32::MAX]);
        assert_eq!(c.take_changed(false), Vec::<u32>::new());
    }
}
