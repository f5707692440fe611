//! Admin commands of an I/O or discovery controller (protocols.md A.10,
//! A.11): Identify, Get Log Page, Set/Get Features, Keep Alive, Abort and
//! the asynchronous event requests (held by the admin queue). Fabrics
//! commands (Connect, properties) are the queue pair's.

use super::controller::Controller;
use super::identify::{self, lid, DiscoveryEntry};
use super::sqe::{Sqe, Status};
use super::target::Shared;
use super::transport::TransportOpts;

pub mod opc {
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const KEEP_ALIVE: u8 = 0x18;
}

mod fid {
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
    pub const HOST_IDENTIFIER: u8 = 0x81;
}

/// What an admin command comes to.
pub enum AdminReply {
    Done {
        status: Status,
        dw0: u32,
        /// Controller-to-host data (sized to the command's SGL by the
        /// queue pair).
        data: Option<Vec<u8>>,
    },
    /// An Asynchronous Event Request: held until an event comes.
    HoldAer,
}

fn ok(dw0: u32) -> AdminReply {
    AdminReply::Done {
        status: Status::SUCCESS,
        dw0,
        data: None,
    }
}

fn data(d: Vec<u8>) -> AdminReply {
    AdminReply::Done {
        status: Status::SUCCESS,
        dw0: 0,
        data: Some(d),
    }
}

fn fail(status: Status) -> AdminReply {
    AdminReply::Done {
        status,
        dw0: 0,
        data: None,
    }
}

/// Runs one admin command. `xfer` is its SGL length.
pub fn handle(
    ctrl: &Controller,
    shared: &Shared,
    opts: &TransportOpts,
    sqe: &Sqe,
    xfer: u32,
) -> AdminReply {
    ctrl.touch();
    if sqe.fuse() != 0 {
        return fail(Status::INVALID_FIELD.with_dnr());
    }
    if !ctrl.is_enabled() {
        return fail(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    }
    let discovery = ctrl.is_discovery();
    match sqe.opcode() {
        opc::IDENTIFY => identify(ctrl, opts, sqe),
        opc::GET_LOG_PAGE => get_log_page(ctrl, shared, opts, sqe, xfer),
        opc::SET_FEATURES => set_features(ctrl, opts, sqe),
        opc::GET_FEATURES => get_features(ctrl, sqe),
        opc::KEEP_ALIVE | opc::ABORT | opc::ASYNC_EVENT_REQUEST if sqe.nsid() != 0 => {
            fail(Status::INVALID_FIELD.with_dnr())
        }
        opc::KEEP_ALIVE => ok(0),
        opc::ASYNC_EVENT_REQUEST => AdminReply::HoldAer,
        // Nothing is ever aborted: DW0 bit 0 says so.
        opc::ABORT if !discovery => ok(1),
        _ => fail(Status::INVALID_OPCODE.with_dnr()),
    }
}

fn identify(ctrl: &Controller, opts: &TransportOpts, sqe: &Sqe) -> AdminReply {
    let cns = (sqe.cdw10() & 0xFF) as u8;
    let nsid = sqe.nsid();
    let Some(sub) = &ctrl.subsystem else {
        return match cns {
            0x01 => data(identify::controller(ctrl, opts)),
            _ => fail(Status::INVALID_FIELD.with_dnr()),
        };
    };
    match cns {
        0x01 => data(identify::controller(ctrl, opts)),
        0x00 => {
            if nsid == 0 || (nsid > sub.nn() && nsid != u32::MAX) {
                return fail(Status::INVALID_NAMESPACE.with_dnr());
            }
            if nsid == u32::MAX {
                return fail(Status::INVALID_FIELD.with_dnr());
            }
            match sub.namespace(nsid) {
                Some(ns) => data(identify::namespace(&ns)),
                // An inactive id in range: all zeros.
                None => data(vec![0; identify::IDENTIFY_LEN]),
            }
        }
        0x02 => {
            if nsid >= 0xFFFF_FFFE {
                return fail(Status::INVALID_NAMESPACE.with_dnr());
            }
            data(identify::active_list(sub, nsid))
        }
        0x03 => match sub.namespace(nsid) {
            Some(ns) => data(identify::descriptors(&ns)),
            None => fail(Status::INVALID_NAMESPACE.with_dnr()),
        },
        // The NVM command set's controller limits: zero is "none".
        0x06 if (sqe.cdw11() >> 24) == 0 => data(vec![0; identify::IDENTIFY_LEN]),
        _ => fail(Status::INVALID_FIELD.with_dnr()),
    }
}

fn get_log_page(
    ctrl: &Controller,
    shared: &Shared,
    opts: &TransportOpts,
    sqe: &Sqe,
    xfer: u32,
) -> AdminReply {
    let cdw10 = sqe.cdw10();
    let page_id = (cdw10 & 0xFF) as u8;
    let rae = cdw10 & (1 << 15) != 0;
    let numd = ((u64::from(sqe.cdw11() & 0xFFFF) << 16) | u64::from(cdw10 >> 16)) + 1;
    let len = numd * 4;
    let offset = u64::from(sqe.cdw12()) | (u64::from(sqe.cdw13()) << 32);
    if len > u64::from(xfer) || offset % 4 != 0 {
        return fail(Status::INVALID_FIELD.with_dnr());
    }
    let page = match (page_id, ctrl.is_discovery()) {
        (lid::DISCOVERY, true) => {
            let d = discovery_page(ctrl, shared, opts);
            ctrl.discovery_log_read(rae);
            d
        }
        (lid::ERROR, false) => vec![0; 64],
        (lid::SMART, false) => identify::smart(),
        (lid::FIRMWARE, false) => identify::firmware_slots(),
        (lid::CHANGED_NS, false) => identify::changed_namespaces(&ctrl.take_changed(rae)),
        (lid::EFFECTS, false) => identify::effects(),
        _ => return fail(Status::INVALID_LOG_PAGE.with_dnr()),
    };
    if offset > page.len() as u64 {
        return fail(Status::INVALID_FIELD.with_dnr());
    }
    let mut out = vec![0u8; len as usize];
    let from = &page[offset as usize..];
    let n = from.len().min(out.len());
    out[..n].copy_from_slice(&from[..n]);
    data(out)
}

/// The subsystems this controller's host may reach, at each address
/// they listen on.
fn discovery_page(ctrl: &Controller, shared: &Shared, opts: &TransportOpts) -> Vec<u8> {
    let mut entries = Vec::new();
    for s in shared.subsystems() {
        if !s.allows_host(&ctrl.hostnqn) {
            continue;
        }
        for l in s.state().listeners.iter() {
            entries.push(DiscoveryEntry {
                subnqn: s.nqn.clone(),
                addr: l.clone(),
                portid: l.trsvcid.parse().unwrap_or(0),
                asqsz: opts.max_aq_depth.min(0xFFFF) as u16,
            });
        }
    }
    let gen = shared.genctr.load(std::sync::atomic::Ordering::Acquire);
    identify::discovery_log(gen, &entries)
}

fn set_features(ctrl: &Controller, opts: &TransportOpts, sqe: &Sqe) -> AdminReply {
    let cdw10 = sqe.cdw10();
    if cdw10 & (1 << 31) != 0 {
        return fail(Status::FEATURE_NOT_SAVEABLE.with_dnr());
    }
    let v = sqe.cdw11();
    match ((cdw10 & 0xFF) as u8, ctrl.is_discovery()) {
        (fid::ASYNC_EVENT_CONFIG, _) => {
            ctrl.set_aec(v);
            ok(0)
        }
        (fid::KEEP_ALIVE_TIMER, _) => {
            ctrl.set_kato_ms(round_kato(v, opts));
            ok(0)
        }
        (fid::NUMBER_OF_QUEUES, false) => match ctrl.set_queue_count(v) {
            Ok(dw0) => ok(dw0),
            Err(s) => fail(s),
        },
        (fid::VOLATILE_WRITE_CACHE, false) if v & 1 == 1 => ok(0),
        // Writes are not made write-through on request.
        (fid::VOLATILE_WRITE_CACHE, false) => fail(Status::FEATURE_NOT_CHANGEABLE.with_dnr()),
        (fid::HOST_IDENTIFIER, false) => fail(Status::COMMAND_SEQUENCE_ERROR.with_dnr()),
        _ => fail(Status::INVALID_FIELD.with_dnr()),
    }
}

fn get_features(ctrl: &Controller, sqe: &Sqe) -> AdminReply {
    let cdw10 = sqe.cdw10();
    let sel = (cdw10 >> 8) & 7;
    let f = (cdw10 & 0xFF) as u8;
    let known = matches!(
        (f, ctrl.is_discovery()),
        (fid::ASYNC_EVENT_CONFIG | fid::KEEP_ALIVE_TIMER, _)
            | (
                fid::NUMBER_OF_QUEUES | fid::VOLATILE_WRITE_CACHE | fid::HOST_IDENTIFIER,
                false
            )
    );
    if !known {
        return fail(Status::INVALID_FIELD.with_dnr());
    }
    if sel == 3 {
        // Supported capabilities: changeable, neither saveable nor per
        // namespace.
        return ok(if f == fid::HOST_IDENTIFIER { 0 } else { 1 << 2 });
    }
    match f {
        fid::ASYNC_EVENT_CONFIG => ok(ctrl.aec()),
        fid::KEEP_ALIVE_TIMER => ok(ctrl.kato_ms()),
        fid::NUMBER_OF_QUEUES => ok(ctrl.queue_count()),
        fid::VOLATILE_WRITE_CACHE => ok(1),
        _ if sqe.cdw11() & 1 == 1 => data(ctrl.hostid.to_vec()),
        // Only the 128-bit identifier exists (CTRATT bit 0).
        _ => fail(Status::INVALID_FIELD.with_dnr()),
    }
}

/// A KATO rounded up to the KAS granularity (units of 100 ms).
pub fn round_kato(ms: u32, opts: &TransportOpts) -> u32 {
    if ms == 0 {
        return 0;
    }
    let unit = u32::from(opts.kas) * 100;
    ms.div_ceil(unit).saturating_mul(unit)
}
