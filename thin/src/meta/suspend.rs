//! Suspend and resume, as dm's suspend of a thin device or pool: new I/O
//! is held (the gate sends it to the slow path, which parks it here, in
//! order), I/O already under way finishes (the fast path's by an epoch
//! drain, the metadata core's own by its count of requests in service),
//! then a commit; resume lets the held requests go in the order they
//! came. Counts nest, a volume's and its pool's adding up. Nothing here
//! holds a lock across a wait: snapshots, resizes, deletes and the pool's
//! failure handling run while a suspend waits, and the wait is bounded.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::MetaCore;
use crate::shared::VolumeShared;
use crate::slow_path::{Reply, SlowReq};
use crate::ThinError;

/// Counts a request the metadata core serves for its volume, while it
/// lives.
pub(crate) struct Serving(Arc<VolumeShared>);

impl Serving {
    pub(crate) fn new(vol: &Arc<VolumeShared>) -> Serving {
        vol.in_service.fetch_add(1, Ordering::AcqRel);
        Serving(vol.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.in_service.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock_held(vol: &VolumeShared) -> std::sync::MutexGuard<'_, std::collections::VecDeque<SlowReq>> {
    vol.held.lock().unwrap_or_else(|p| p.into_inner())
}

impl MetaCore {
    /// Parks `req` if its volume is suspended; otherwise gives it back.
    pub(super) fn hold_if_suspended(&self, req: SlowReq) -> Option<SlowReq> {
        if !req.vol.is_suspended() {
            return Some(req);
        }
        let vol = req.vol.clone();
        let mut held = lock_held(&vol);
        if vol.going.load(Ordering::Acquire) {
            drop(held);
            req.reply(Reply::Done(bdev::IoStatus::IoError(libc::ENODEV)));
        } else {
            held.push_back(req);
        }
        None
    }

    /// Suspends `vols` (one volume, or a pool's) after `count` raised
    /// their suspension: waits until nothing of theirs is in flight, then
    /// commits. On a timeout the caller undoes its count.
    pub(crate) async fn quiesce(
        self: &Rc<Self>,
        vols: &[Arc<VolumeShared>],
        timeout: Duration,
    ) -> Result<(), ThinError> {
        let deadline = Instant::now() + timeout;
        for v in vols {
            v.set_suspended(v.should_be_suspended());
        }
        for v in vols {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.drain_within(v, left).await {
                return Err(ThinError::Busy(format!(
                    "thin device {}'s I/O did not drain within {timeout:?}",
                    v.dev_id
                )));
            }
            while v.in_service.load(Ordering::Acquire) > 0 {
                if Instant::now() >= deadline {
                    return Err(ThinError::Busy(format!(
                        "thin device {}'s I/O in the pool (provisioning, copies, waiting \
                         for space) did not finish within {timeout:?}",
                        v.dev_id
                    )));
                }
                reactor::sleep(Duration::from_millis(1)).await;
            }
        }
        // A failed commit is the pool's to report (its mode): the I/O
        // stays held all the same, and fails as the pool says on resume.
        if let Err(e) = self.commit_now().await {
            tracing::warn!(pool = %self.shared.name, "commit at suspend failed: {e}");
        }
        Ok(())
    }

    /// After a count went down: volumes no longer suspended let their held
    /// requests go, in order.
    pub(crate) fn release_held(self: &Rc<Self>, vols: &[Arc<VolumeShared>]) {
        for v in vols {
            let on = v.should_be_suspended();
            v.set_suspended(on);
            if on {
                continue;
            }
            let held: Vec<SlowReq> = lock_held(v).drain(..).collect();
            for req in held {
                let me = self.clone();
                reactor::spawn_local(async move { me.serve(req).await }).detach();
            }
        }
    }

    /// A volume going away fails what it held (its bdev is gone), and
    /// from now on what it would hold: a forced delete of a suspended
    /// volume must not wait on I/O that waits on the volume.
    pub(crate) fn fail_held(vol: &VolumeShared) {
        let failed: Vec<SlowReq> = {
            let mut held = lock_held(vol);
            vol.going.store(true, Ordering::Release);
            held.drain(..).collect()
        };
        for req in failed {
            req.reply(Reply::Done(bdev::IoStatus::IoError(libc::ENODEV)));
        }
    }
}
