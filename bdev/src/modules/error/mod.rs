//! error: fault injection over another bdev, after SPDK's error bdev and
//! dm-flakey.
//!
//! `EE_<base>` claims its base and passes I/O through, except where a rule
//! hits it: fail it (EIO), park it (until resumed or reset), corrupt its
//! data, complete it NOMEM (the layer retries), or drop a write. Rules count
//! down or fire with a probability from a per-channel seeded generator.
//!
//! The volatile write cache mode models a disk with a write-back cache:
//! writes are acknowledged but held until a FLUSH writes them through; a
//! simulated power cut (seeded, replayable) keeps, drops or tears each held
//! write. Crash tests of the metadata and the thin pool stand on it.

mod cache;
mod channel;
mod inject;
pub mod rpc;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};

pub use cache::PowerCutReport;
pub use inject::{ErrorKind, Injection};

use crate::modules::base::Base;
use crate::{Bdev, BdevError, BdevFnTable, BdevProps, IoBuf, IoType, ModuleChannel, Uuid};
use cache::{CacheState, FlushGate};
use inject::Rules;

/// State shared by every core's channel of one error bdev.
pub(crate) struct Shared {
    pub rules: Rules,
    pub cache_on: AtomicBool,
    pub cache: Mutex<CacheState>,
    pub gate: FlushGate,
    /// Bumped by a power cut: a flush that sees it change stops writing.
    pub epoch: AtomicU64,
    /// Bumped by resume_pending: channels release parked I/O when it moves.
    pub resume_gen: AtomicU64,
    pub seed: AtomicU64,
    pub block_size: usize,
}

impl Shared {
    pub fn cache(&self) -> MutexGuard<'_, CacheState> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct ErrorBdev {
    shared: Arc<Shared>,
    base: Base,
}

/// Creates `EE_<base_name>` over `base_name`, claiming it.
pub fn create(base_name: &str, uuid: Option<Uuid>) -> Result<Arc<Bdev>, BdevError> {
    let (claimed, base) = Base::claim(base_name, "error")?;
    let mut props = BdevProps::new(
        format!("EE_{}", base.name()),
        "Error Injection Disk",
        base.block_size(),
        base.num_blocks(),
    );
    props.uuid = uuid;
    props.write_unit_size = base.write_unit_size();
    props.optimal_io_boundary = base.optimal_io_boundary();
    let shared = Arc::new(Shared {
        rules: Rules::default(),
        cache_on: AtomicBool::new(false),
        cache: Mutex::new(CacheState::default()),
        gate: FlushGate::default(),
        epoch: AtomicU64::new(0),
        resume_gen: AtomicU64::new(0),
        seed: AtomicU64::new(0x5eed),
        block_size: base.block_size() as usize,
    });
    let module = ErrorBdev {
        shared,
        base: claimed,
    };
    let bdev = Bdev::new(props, module)?;
    crate::register(bdev.clone())?;
    Ok(bdev)
}

/// The control surface of an error bdev, for tests and RPCs.
pub struct ErrorControl {
    bdev: Arc<Bdev>,
}

/// Finds the error bdev `name`.
pub fn control(name: &str) -> Result<ErrorControl, BdevError> {
    let bdev = crate::lookup(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if (bdev.module() as &dyn std::any::Any)
        .downcast_ref::<ErrorBdev>()
        .is_none()
    {
        return Err(BdevError::Invalid(format!("{name} is not an error bdev")));
    }
    Ok(ErrorControl { bdev })
}

impl ErrorControl {
    fn module(&self) -> &ErrorBdev {
        (self.bdev.module() as &dyn std::any::Any)
            .downcast_ref::<ErrorBdev>()
            .expect("control() checked the module type")
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.module().shared
    }

    /// Arms `inj` for `io_type` (replacing what was armed for it).
    pub fn inject(&self, io_type: IoType, inj: Injection) {
        self.shared().rules.set(io_type, inj);
    }

    /// Disarms every rule.
    pub fn clear(&self) {
        self.shared().rules.clear();
    }

    /// Seeds the per-channel generators used by probabilistic rules
    /// (channels created afterwards start from it).
    pub fn set_seed(&self, seed: u64) {
        self.shared().seed.store(seed, Ordering::Relaxed);
    }

    /// Releases every parked I/O to the base bdev.
    pub fn resume_pending(&self) {
        self.shared().resume_gen.fetch_add(1, Ordering::Release);
    }

    /// Turns the volatile write cache on or off. Turning it off does not
    /// flush: FLUSH first if held writes should survive.
    pub fn set_volatile_cache(&self, on: bool) {
        self.shared().cache_on.store(on, Ordering::Release);
    }

    /// Writes acknowledged and not yet flushed.
    pub fn held_writes(&self) -> usize {
        self.shared().cache().held_writes()
    }

    /// Simulates a power cut: every held write is kept, dropped or torn
    /// (a random subset of its 512-byte sectors lands), decided by `seed` in
    /// arrival order, so the same seed and the same writes give the same
    /// disk. Must run on a reactor; the surviving data is written to the
    /// base through this core's channel.
    pub async fn power_cut(&self, seed: u64) -> Result<PowerCutReport, BdevError> {
        let shared = self.shared().clone();
        shared.epoch.fetch_add(1, Ordering::AcqRel);
        let held = shared.cache().clear();
        let base = self.module().base.channel()?;
        let bs = shared.block_size;
        let mut rng = crate::modules::SplitMix(seed);
        let mut report = PowerCutReport::default();
        for w in held {
            match rng.next() % 3 {
                0 => {
                    report.dropped += 1;
                }
                1 => {
                    report.kept += 1;
                    write_base(&base, w.offset_blocks * bs as u64, &w.data).await?;
                }
                _ => {
                    report.torn += 1;
                    for (i, sector) in w.data.chunks(512).enumerate() {
                        if rng.next() & 1 == 1 {
                            write_base(&base, w.offset_blocks * bs as u64 + i as u64 * 512, sector)
                                .await?;
                        }
                    }
                }
            }
        }
        match base.make_durable().await {
            Ok(()) => {}
            Err(s) => {
                return Err(BdevError::Io(
                    "power cut".into(),
                    std::io::Error::from_raw_os_error(-s.errno()),
                ))
            }
        }
        Ok(report)
    }
}

/// Writes `data` at byte `offset` of the base: read-modify-write of the
/// blocks it touches, since a torn sector is smaller than a block.
async fn write_base(base: &crate::IoChannel, offset: u64, data: &[u8]) -> Result<(), BdevError> {
    let bs = base.bdev().block_size() as u64;
    let first = offset / bs;
    let last = (offset + data.len() as u64).div_ceil(bs);
    let fail = |s: crate::IoStatus| {
        BdevError::Io(
            "power cut".into(),
            std::io::Error::from_raw_os_error(-s.errno()),
        )
    };
    let mut buf = base.read(first, last - first).await.map_err(fail)?;
    let at = (offset - first * bs) as usize;
    buf.as_mut_slice()[at..at + data.len()].copy_from_slice(data);
    base.write(first, IoBuf::from_slice(buf.as_slice()))
        .await
        .map_err(fail)
}

impl BdevFnTable for ErrorBdev {
    fn module_name(&self) -> &'static str {
        "error"
    }

    fn io_type_supported(&self, t: IoType) -> bool {
        self.base.supports(t)
    }

    fn create_channel(&self, _bdev: &Arc<Bdev>) -> Result<Box<dyn ModuleChannel>, BdevError> {
        Ok(Box::new(channel::ErrorChannel::new(
            self.shared.clone(),
            self.base.channel()?,
        )))
    }

    fn backing(&self, _bdev: &Bdev) -> Option<String> {
        Some(self.base.describe())
    }

    fn driver_specific(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        Some(("error_disk", json!({ "base_bdev": self.base.name() })))
    }

    fn config_entry(&self, bdev: &Bdev) -> Option<Value> {
        Some(json!({
            "method": "bdev_error_create",
            "params": { "base_name": self.base.name(), "uuid": bdev.uuid().to_string() }
        }))
    }

    fn unregistered(&self, _bdev: &Bdev) {
        self.base.release();
    }
}

#[cfg(test)]
mod tests;
