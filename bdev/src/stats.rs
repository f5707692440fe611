//! Per-bdev I/O statistics, kept per channel by the channel's core and summed
//! on demand (SPDK's model: no shared counters on the I/O path).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::io_type::{IoType, IO_TYPE_COUNT};

#[derive(Default, Debug)]
struct TypeCounters {
    ops: AtomicU64,
    bytes: AtomicU64,
    ticks: AtomicU64,
    max_ticks: AtomicU64,
    min_ticks: AtomicU64,
    errors: AtomicU64,
}

/// Counters of one channel. Only the owning core writes them, so updates are
/// plain load + store, never a locked read-modify-write.
#[derive(Default, Debug)]
pub(crate) struct ChannelStats {
    types: [TypeCounters; IO_TYPE_COUNT],
}

#[inline]
fn bump(c: &AtomicU64, v: u64) {
    c.store(c.load(Relaxed).wrapping_add(v), Relaxed);
}

impl ChannelStats {
    #[inline]
    pub fn record(&self, t: IoType, bytes: u64, ticks: u64, ok: bool) {
        let c = &self.types[t as usize];
        if !ok {
            bump(&c.errors, 1);
            return;
        }
        bump(&c.ops, 1);
        bump(&c.bytes, bytes);
        bump(&c.ticks, ticks);
        if ticks > c.max_ticks.load(Relaxed) {
            c.max_ticks.store(ticks, Relaxed);
        }
        let min = c.min_ticks.load(Relaxed);
        if min == 0 || ticks < min {
            c.min_ticks.store(ticks, Relaxed);
        }
    }

    fn add_to(&self, out: &mut IoStatSnapshot) {
        for t in IoType::ALL {
            let c = &self.types[t as usize];
            let o = &mut out.types[t as usize];
            o.ops += c.ops.load(Relaxed);
            o.bytes += c.bytes.load(Relaxed);
            o.latency_ticks += c.ticks.load(Relaxed);
            o.errors += c.errors.load(Relaxed);
            o.max_latency_ticks = o.max_latency_ticks.max(c.max_ticks.load(Relaxed));
            let min = c.min_ticks.load(Relaxed);
            if min != 0 && (o.min_latency_ticks == 0 || min < o.min_latency_ticks) {
                o.min_latency_ticks = min;
            }
        }
    }
}

/// Totals of one I/O type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TypeStat {
    pub ops: u64,
    pub bytes: u64,
    pub latency_ticks: u64,
    pub min_latency_ticks: u64,
    pub max_latency_ticks: u64,
    pub errors: u64,
}

/// A bdev's statistics at one moment (`bdev_get_iostat`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoStatSnapshot {
    pub types: [TypeStat; IO_TYPE_COUNT],
    pub tick_rate: u64,
}

impl IoStatSnapshot {
    pub fn get(&self, t: IoType) -> &TypeStat {
        &self.types[t as usize]
    }
}

/// All channels' counters of one bdev, plus what closed channels left.
#[derive(Default)]
pub(crate) struct BdevStats {
    live: Mutex<Vec<Arc<ChannelStats>>>,
    retired: Mutex<IoStatSnapshot>,
}

impl BdevStats {
    pub fn new_channel(&self) -> Arc<ChannelStats> {
        let s = Arc::new(ChannelStats::default());
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s.clone());
        s
    }

    /// Counts `s` too (a pass-through's counters, shared with the bdev
    /// above or below).
    pub fn adopt(&self, s: Arc<ChannelStats>) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }

    /// Folds a closing channel's counters into the retired totals.
    pub fn retire(&self, s: &Arc<ChannelStats>) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|x| !Arc::ptr_eq(x, s));
        s.add_to(&mut self.retired.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn snapshot(&self) -> IoStatSnapshot {
        let mut out = self
            .retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for s in self.live.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            s.add_to(&mut out);
        }
        out.tick_rate = reactor::ticks_hz();
        out
    }
}
