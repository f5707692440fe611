//! The event log: what monitors hear about (mode changes, low-water
//! marks, the no-space timeout), kept apart from pool state. One list for
//! every pool, each event with a sequence number, bounded; each event is
//! also posted to the bdev layer's notifications.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Something a monitor wants to hear about (the notification list).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PoolEvent {
    ModeChanged {
        pool: String,
        mode: &'static str,
    },
    DataLowWater {
        pool: String,
        free_blocks: u64,
    },
    MetadataLowWater {
        pool: String,
        free_blocks: u64,
    },
    NoSpaceTimeout {
        pool: String,
    },
    /// Autoextend grew a bdev under the pool (`what`: data or metadata).
    AutoExtended {
        pool: String,
        what: &'static str,
        bdev: String,
        from_bytes: u64,
        to_bytes: u64,
    },
    /// Autoextend wants a bdev grown that it cannot grow itself (a block
    /// device, memory): a script grows it, then bdev_thin_pool_resize.
    AutoExtendNeeded {
        pool: String,
        what: &'static str,
        bdev: String,
        want_bytes: u64,
    },
}

/// The events list every pool appends to, with a sequence number each.
static EVENTS: Mutex<Vec<(u64, PoolEvent)>> = Mutex::new(Vec::new());
static EVENT_SEQ: AtomicU64 = AtomicU64::new(0);
const EVENTS_KEEP: usize = 4096;

impl PoolEvent {
    /// The notification type (notify_get_notifications) and its context.
    pub fn notification(&self) -> (&'static str, &str) {
        match self {
            PoolEvent::ModeChanged { pool, .. } => ("thin_pool_mode_change", pool),
            PoolEvent::DataLowWater { pool, .. } => ("thin_pool_data_low_water", pool),
            PoolEvent::MetadataLowWater { pool, .. } => ("thin_pool_metadata_low_water", pool),
            PoolEvent::NoSpaceTimeout { pool } => ("thin_pool_no_space_timeout", pool),
            PoolEvent::AutoExtended { pool, .. } => ("thin_pool_autoextended", pool),
            PoolEvent::AutoExtendNeeded { pool, .. } => ("thin_pool_autoextend_needed", pool),
        }
    }
}

pub fn push_event(e: PoolEvent) {
    tracing::info!(?e, "thin pool event");
    let (kind, pool) = e.notification();
    bdev::notify::post(kind, pool);
    let mut v = EVENTS.lock().unwrap_or_else(|p| p.into_inner());
    let seq = EVENT_SEQ.fetch_add(1, Ordering::Relaxed);
    v.push((seq, e));
    if v.len() > EVENTS_KEEP {
        let drop = v.len() - EVENTS_KEEP;
        v.drain(..drop);
    }
}

/// Events with a sequence number of at least `from`, at most `max`.
pub fn events_since(from: u64, max: usize) -> Vec<(u64, PoolEvent)> {
    let v = EVENTS.lock().unwrap_or_else(|p| p.into_inner());
    v.iter()
        .filter(|(s, _)| *s >= from)
        .take(max)
        .cloned()
        .collect()
}
