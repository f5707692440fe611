//! Notifications (`notify_get_types`, `notify_get_notifications`): a ring of
//! the last 1024 bdev events, each with a sequence number that never goes
//! back, so a client can poll for what it has not seen.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::rpc::{method, BadParams, RpcError, RpcMethod, RpcResult, INVALID_PARAMS};

const RING: usize = 1024;

/// The event types we emit: SPDK's bdev ones, and the thin pools' (their
/// details: bdev_thin_pool_get_events).
pub const TYPES: [&str; 7] = [
    "bdev_register",
    "bdev_unregister",
    "bdev_resize",
    "thin_pool_mode_change",
    "thin_pool_data_low_water",
    "thin_pool_metadata_low_water",
    "thin_pool_no_space_timeout",
];

/// One notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub id: u64,
    pub kind: &'static str,
    pub ctx: String,
}

struct Ring {
    next: u64,
    events: VecDeque<Notification>,
}

static RING_STATE: Mutex<Ring> = Mutex::new(Ring {
    next: 0,
    events: VecDeque::new(),
});

/// Records an event about bdev `ctx`.
pub fn post(kind: &'static str, ctx: &str) {
    let mut r = RING_STATE.lock().unwrap_or_else(|e| e.into_inner());
    let id = r.next;
    r.next += 1;
    if r.events.len() == RING {
        r.events.pop_front();
    }
    r.events.push_back(Notification {
        id,
        kind,
        ctx: ctx.to_string(),
    });
}

/// Events with id >= `from` (from the oldest kept one if `from` has been
/// overwritten), at most `max`.
pub fn since(from: u64, max: usize) -> Vec<Notification> {
    let r = RING_STATE.lock().unwrap_or_else(|e| e.into_inner());
    r.events
        .iter()
        .filter(|n| n.id >= from)
        .take(max)
        .cloned()
        .collect()
}

pub(crate) fn methods() -> Vec<RpcMethod> {
    vec![
        method("notify_get_types").app_core_raw(get_types),
        method("notify_get_notifications")
            .bad_params(BadParams::Says(INVALID_PARAMS, "Invalid argument"))
            .app_core(get_notifications),
    ]
}

fn get_types(params: Option<Value>) -> RpcResult {
    if params.is_some() {
        return Err(RpcError::invalid_params("No parameters required"));
    }
    Ok(json!(TYPES))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    #[serde(default)]
    id: u64,
    max: Option<u64>,
}

fn get_notifications(p: GetParams) -> RpcResult {
    let max = p
        .max
        .map_or(usize::MAX, |m| m.min(usize::MAX as u64) as usize);
    Ok(Value::Array(
        since(p.id, max)
            .into_iter()
            .map(|n| json!({"type": n.kind, "ctx": n.ctx, "id": n.id}))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_rise_and_the_ring_keeps_the_newest() {
        let start = since(0, usize::MAX).last().map_or(0, |n| n.id + 1);
        for i in 0..(RING + 10) {
            post("bdev_register", &format!("n{i}"));
        }
        let all = since(start, usize::MAX);
        assert!(all.len() <= RING);
        assert!(all.windows(2).all(|w| w[1].id > w[0].id));
        let two = since(start + RING as u64 + 8, 2);
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].ctx, format!("n{}", RING + 8));
    }
}
