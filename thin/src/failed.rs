//! Pools that could not be opened: kept by name with the reason, so that
//! bdev_thin_pool_get_pools shows an operator the pool that a config
//! asked for and why it is not there, instead of leaving it out. A later
//! create of the same name that succeeds, or a delete, forgets it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// What bdev_thin_pool_get_pools shows for a pool that failed to open.
#[derive(Clone, Debug, Serialize)]
pub struct FailedPool {
    pub name: String,
    /// Always "failed": the field that live pools use for their mode.
    pub mode: &'static str,
    pub metadata_bdev: String,
    pub data_bdev: Option<String>,
    /// Why it did not open, as the create call was answered.
    pub error: String,
}

static FAILED: Mutex<BTreeMap<String, FailedPool>> = Mutex::new(BTreeMap::new());

fn failed() -> std::sync::MutexGuard<'static, BTreeMap<String, FailedPool>> {
    FAILED.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn record(name: &str, metadata_bdev: &str, data_bdev: Option<&str>, error: String) {
    failed().insert(
        name.to_string(),
        FailedPool {
            name: name.to_string(),
            mode: "failed",
            metadata_bdev: metadata_bdev.to_string(),
            data_bdev: data_bdev.map(str::to_string),
            error,
        },
    );
}

/// Forgets `name`; whether it was there.
pub(crate) fn forget(name: &str) -> bool {
    failed().remove(name).is_some()
}

/// The pool `name` if it failed to open.
pub fn failed_pool(name: &str) -> Option<FailedPool> {
    failed().get(name).cloned()
}

/// Every pool that failed to open, by name.
pub fn failed_pools() -> Vec<FailedPool> {
    failed().values().cloned().collect()
}
