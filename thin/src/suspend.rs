//! bdev_thin_suspend / _resume for a volume, bdev_thin_pool_suspend /
//! _resume for every volume of a pool (the metadata core's side is in
//! `meta::suspend`), and snapshots of several volumes at one instant.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::control::volume_of;
use super::shared::VolumeShared;
use super::{pool, PoolHandle, ThinError};

/// How long a suspend waits for in-flight I/O by default.
pub const SUSPEND_TIMEOUT: Duration = Duration::from_secs(30);

async fn quiesce_or_undo(
    p: &Arc<PoolHandle>,
    vols: Option<Vec<Arc<VolumeShared>>>,
    timeout: Duration,
    undo: impl FnOnce(),
) -> Result<(), ThinError> {
    let r = p
        .on_meta(move |core| async move {
            let vols = vols.unwrap_or_else(|| core.volumes.borrow().values().cloned().collect());
            core.quiesce(&vols, timeout).await
        })
        .await;
    if r.is_err() {
        undo();
        release(p, None).await?;
    }
    r
}

/// Lets held I/O go where the counts allow (all of the pool's volumes
/// when `vols` is None).
async fn release(
    p: &Arc<PoolHandle>,
    vols: Option<Vec<Arc<VolumeShared>>>,
) -> Result<(), ThinError> {
    p.on_meta(move |core| async move {
        let vols = vols.unwrap_or_else(|| core.volumes.borrow().values().cloned().collect());
        core.release_held(&vols);
        Ok(())
    })
    .await
}

/// Holds volume `name`'s new I/O, waits for what is in flight, commits.
pub async fn suspend_volume(name: &str, timeout: Duration) -> Result<(), ThinError> {
    let (_, vol, p) = volume_of(name)?;
    vol.suspends.fetch_add(1, Ordering::AcqRel);
    let undo = {
        let vol = vol.clone();
        move || {
            vol.suspends.fetch_sub(1, Ordering::AcqRel);
        }
    };
    quiesce_or_undo(&p, Some(vec![vol]), timeout, undo).await?;
    tracing::info!(volume = name, "suspended");
    Ok(())
}

/// Undoes one suspend of volume `name`; its held I/O goes once neither it
/// nor its pool is suspended.
pub async fn resume_volume(name: &str) -> Result<(), ThinError> {
    let (_, vol, p) = volume_of(name)?;
    let was = vol
        .suspends
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    if was.is_err() {
        return Err(ThinError::Invalid(format!("{name} is not suspended")));
    }
    release(&p, Some(vec![vol])).await?;
    tracing::info!(volume = name, "resumed");
    Ok(())
}

/// Suspends every volume of pool `name` (and those activated before it
/// resumes).
pub async fn suspend_pool(name: &str, timeout: Duration) -> Result<(), ThinError> {
    let p = pool(name)?;
    p.shared.suspends.fetch_add(1, Ordering::AcqRel);
    let undo = {
        let shared = p.shared.clone();
        move || {
            shared.suspends.fetch_sub(1, Ordering::AcqRel);
        }
    };
    quiesce_or_undo(&p, None, timeout, undo).await?;
    tracing::info!(pool = name, "suspended");
    Ok(())
}

pub async fn resume_pool(name: &str) -> Result<(), ThinError> {
    let p = pool(name)?;
    let was = p
        .shared
        .suspends
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    if was.is_err() {
        return Err(ThinError::Invalid(format!("pool {name} is not suspended")));
    }
    release(&p, None).await?;
    tracing::info!(pool = name, "resumed");
    Ok(())
}

/// Makes volume `name` read-only (writes, unmaps and write-zeroes refused
/// with EROFS; exports connecting from now see it read-only) or writable
/// again. Returns once writes already past the check have landed.
pub async fn set_read_only(name: &str, on: bool) -> Result<(), ThinError> {
    let (_, vol, p) = volume_of(name)?;
    vol.set_read_only(on);
    if on {
        p.on_meta(move |core| async move {
            if core.drain(&vol).await {
                Ok(())
            } else {
                Err(ThinError::Busy("writes in flight did not drain".into()))
            }
        })
        .await?;
    }
    tracing::info!(volume = name, read_only = on, "volume access changed");
    Ok(())
}

/// Volume `name` is about to go by force (its exports stop first, and
/// they wait for their commands): what a suspend holds of it fails now,
/// and what would be held from now on fails at once. Call it on a
/// reactor: the replies are sent from there.
pub fn fail_held_io(name: &str) {
    if let Ok((_, vol, _)) = volume_of(name) {
        crate::meta::MetaCore::fail_held(&vol);
    }
}

/// Snapshots of several volumes at one instant: all are suspended, each
/// snapshotted, all resumed (whatever failed). Returns the new bdevs'
/// names, in order.
pub async fn snapshot_many(
    list: &[(String, String, Option<metadata::thin::DevId>)],
    timeout: Duration,
) -> Result<Vec<String>, ThinError> {
    let mut suspended = Vec::new();
    let mut result = Ok(Vec::new());
    for (origin, _, _) in list {
        match suspend_volume(origin, timeout).await {
            Ok(()) => suspended.push(origin.clone()),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if let Ok(names) = &mut result {
        for (origin, name, dev_id) in list {
            match super::snapshot(origin, name, *dev_id).await {
                Ok(b) => names.push(b.name().to_string()),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    for origin in suspended {
        if let Err(e) = resume_volume(&origin).await {
            tracing::error!(volume = %origin, "resume after a multi-volume snapshot failed: {e}");
        }
    }
    result
}
