//! What to inject, per I/O type: shared by every core, read with one relaxed
//! load on the fast path when nothing is armed.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use crate::IoType;

/// What happens to an I/O that is hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorKind {
    /// Completes with an I/O error (EIO).
    Failure = 1,
    /// Parked until resumed or reset.
    Pending = 2,
    /// Reads come back with a byte flipped; writes store a flipped byte.
    CorruptData = 3,
    /// Completes NOMEM: the bdev layer retries it.
    NoMem = 4,
    /// Writes report success but store nothing (dm-flakey's drop_writes).
    Drop = 5,
}

impl ErrorKind {
    pub fn parse(s: &str) -> Option<ErrorKind> {
        Some(match s {
            "failure" => ErrorKind::Failure,
            "pending" => ErrorKind::Pending,
            "corrupt_data" => ErrorKind::CorruptData,
            "nomem" => ErrorKind::NoMem,
            "drop" => ErrorKind::Drop,
            _ => return None,
        })
    }
    fn from_u8(v: u8) -> Option<ErrorKind> {
        Some(match v {
            1 => ErrorKind::Failure,
            2 => ErrorKind::Pending,
            3 => ErrorKind::CorruptData,
            4 => ErrorKind::NoMem,
            5 => ErrorKind::Drop,
            _ => return None,
        })
    }
}

/// One injection rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Injection {
    pub kind: ErrorKind,
    /// How many I/Os to hit (ignored when `probability` is set).
    pub count: u32,
    /// Hit each I/O with this probability instead of counting (0 = off).
    pub probability: f64,
    /// Hit only while at least this many I/Os are in flight on the channel.
    pub queue_depth: u64,
    pub corrupt_offset: u64,
    pub corrupt_value: u8,
    /// Let this many matching I/Os through before the rule applies (to
    /// hit the n-th write of a sequence, e.g. one step of a commit).
    pub skip: u32,
}

impl Injection {
    pub fn new(kind: ErrorKind, count: u32) -> Injection {
        Injection {
            kind,
            count,
            probability: 0.0,
            queue_depth: 0,
            corrupt_offset: 0,
            corrupt_value: 0,
            skip: 0,
        }
    }
}

#[derive(Default)]
struct Rule {
    kind: AtomicU8,
    remaining: AtomicU32,
    /// Parts per billion; 0 means "count down `remaining`".
    ppb: AtomicU32,
    queue_depth: AtomicU64,
    corrupt_offset: AtomicU64,
    corrupt_value: AtomicU8,
    skip: AtomicU32,
}

/// The rules for read, write, unmap and flush (the types SPDK's error bdev
/// can hit).
#[derive(Default)]
pub(crate) struct Rules {
    rules: [Rule; 4],
}

fn slot(t: IoType) -> Option<usize> {
    match t {
        IoType::Read => Some(0),
        IoType::Write => Some(1),
        IoType::Unmap => Some(2),
        IoType::Flush => Some(3),
        _ => None,
    }
}

/// A hit: what to do and, for corruption, where and how.
pub(crate) struct Hit {
    pub kind: ErrorKind,
    pub corrupt_offset: u64,
    pub corrupt_value: u8,
}

impl Rules {
    pub fn set(&self, t: IoType, inj: Injection) {
        let Some(i) = slot(t) else { return };
        let r = &self.rules[i];
        r.kind.store(0, Relaxed);
        r.remaining.store(inj.count, Relaxed);
        r.ppb
            .store((inj.probability.clamp(0.0, 1.0) * 1e9) as u32, Relaxed);
        r.queue_depth.store(inj.queue_depth, Relaxed);
        r.corrupt_offset.store(inj.corrupt_offset, Relaxed);
        r.corrupt_value.store(inj.corrupt_value, Relaxed);
        r.skip.store(inj.skip, Relaxed);
        let armed = inj.count > 0 || inj.probability > 0.0;
        r.kind
            .store(if armed { inj.kind as u8 } else { 0 }, Relaxed);
    }

    pub fn clear(&self) {
        for r in &self.rules {
            r.kind.store(0, Relaxed);
            r.remaining.store(0, Relaxed);
            r.ppb.store(0, Relaxed);
        }
    }

    /// Decides whether this I/O is hit. `roll` is a uniform random u32 from
    /// the channel's seeded generator; `inflight` the channel's depth.
    #[inline]
    pub fn check(&self, t: IoType, inflight: u64, roll: impl FnOnce() -> u32) -> Option<Hit> {
        let r = &self.rules[slot(t)?];
        let kind = ErrorKind::from_u8(r.kind.load(Relaxed))?;
        if inflight < r.queue_depth.load(Relaxed) {
            return None;
        }
        if r.skip
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return None;
        }
        let ppb = r.ppb.load(Relaxed);
        let hit = if ppb > 0 {
            ((roll() as u64 * 1_000_000_000) >> 32) < ppb as u64
        } else {
            r.remaining
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok()
        };
        hit.then(|| Hit {
            kind,
            corrupt_offset: r.corrupt_offset.load(Relaxed),
            corrupt_value: r.corrupt_value.load(Relaxed),
        })
    }
}
