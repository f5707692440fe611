//! Helpers for the crate's tests.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use reactor::{PollMode, ReactorOptions, ReactorSet};

pub(crate) fn opts() -> ReactorOptions {
    ReactorOptions { mode: PollMode::Idle { spins: 200 }, no_pin: false }
}

/// Runs a future on a fresh one-reactor set and returns its output.
pub(crate) fn on_reactor<T, Fut>(f: impl FnOnce() -> Fut + Send + 'static) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let set = ReactorSet::start(&[0], opts()).expect("start reactor");
    set.block_on(0, f).expect("reactor stopped")
}

/// A bdev name no other test in this process uses.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
