//! bdev_nvme_set_options: the defaults a new controller takes (the
//! Keep Alive Timeout it asks for, the resiliency timeouts an attach
//! call leaves out). As in SPDK, they change only while no controller is
//! attached, so every controller lives under the options it was made
//! with.

use std::sync::{Mutex, MutexGuard};

use super::NvmeError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmeDefaults {
    /// KATO asked in the admin Connect, ms (SPDK's default 10 s).
    pub keep_alive_timeout_ms: u32,
    pub ctrlr_loss_timeout_sec: i64,
    pub reconnect_delay_sec: u64,
    pub fast_io_fail_timeout_sec: u64,
}

impl NvmeDefaults {
    pub const SPDK: NvmeDefaults = NvmeDefaults {
        keep_alive_timeout_ms: 10_000,
        ctrlr_loss_timeout_sec: 0,
        reconnect_delay_sec: 0,
        fast_io_fail_timeout_sec: 0,
    };
}

static DEFAULTS: Mutex<NvmeDefaults> = Mutex::new(NvmeDefaults::SPDK);

fn lock() -> MutexGuard<'static, NvmeDefaults> {
    DEFAULTS.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn defaults() -> NvmeDefaults {
    *lock()
}

/// Replaces the defaults; refused (EPERM in SPDK) with a controller
/// attached or being attached.
pub fn set_defaults(d: NvmeDefaults) -> Result<(), NvmeError> {
    if super::ctrlr::any_controller() {
        return Err(NvmeError::Busy(
            "options cannot change while a controller is attached".into(),
        ));
    }
    super::rpc::check_timeouts(
        d.ctrlr_loss_timeout_sec,
        d.reconnect_delay_sec,
        d.fast_io_fail_timeout_sec,
    )?;
    *lock() = d;
    Ok(())
}
