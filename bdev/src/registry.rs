//! The bdev registry: every registered bdev by name, alias and UUID.
//! Control path only; the I/O path never touches it.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::bdev::Bdev;
use crate::desc::BdevEvent;
use crate::BdevError;

static REGISTRY: Mutex<Vec<Arc<Bdev>>> = Mutex::new(Vec::new());

fn lock() -> MutexGuard<'static, Vec<Arc<Bdev>>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn matches(b: &Bdev, key: &str) -> bool {
    b.name() == key || b.aliases().iter().any(|a| a == key) || b.uuid().to_string() == key
}

/// Makes a bdev visible, then lets every module examine it. Fails if its
/// name, an alias or its UUID is taken.
pub fn register(bdev: Arc<Bdev>) -> Result<(), BdevError> {
    {
        let mut reg = lock();
        let keys = std::iter::once(bdev.name().to_string())
            .chain(bdev.aliases())
            .chain(std::iter::once(bdev.uuid().to_string()));
        for k in keys {
            if reg.iter().any(|b| matches(b, &k)) {
                return Err(BdevError::Exists(k));
            }
        }
        crate::notify::post("bdev_register", bdev.name());
        reg.push(bdev.clone());
    }
    // Outside the lock: a module that claims the bdev opens it.
    crate::module::examine(&bdev);
    Ok(())
}

/// Gives the bdev `key` names exactly `aliases` (SPDK's
/// spdk_bdev_alias_add/del in one step): refused, changing nothing, when
/// one of them is another bdev's name, alias or UUID.
pub fn set_aliases(key: &str, aliases: Vec<String>) -> Result<(), BdevError> {
    let reg = lock();
    let b = reg
        .iter()
        .find(|b| matches(b, key))
        .ok_or_else(|| BdevError::NotFound(key.to_string()))?;
    for a in &aliases {
        if reg.iter().any(|o| !Arc::ptr_eq(o, b) && matches(o, a)) {
            return Err(BdevError::Exists(a.clone()));
        }
    }
    b.replace_aliases(aliases);
    Ok(())
}

/// Finds a bdev by name, alias or UUID.
pub fn lookup(key: &str) -> Option<Arc<Bdev>> {
    lock().iter().find(|b| matches(b, key)).cloned()
}

/// Every registered bdev, in registration order.
pub fn list() -> Vec<Arc<Bdev>> {
    lock().clone()
}

/// Removes a bdev. A claimed bdev is refused (delete what sits on it first).
/// Open descriptors get a `Remove` event; their I/O fails from now on.
pub fn unregister(key: &str) -> Result<Arc<Bdev>, BdevError> {
    unregister_if(key, Refuse::Claimed)
}

/// Removes a bdev whose device is gone for good (an NVMe controller
/// deleted after its loss timeout), claimed or not: as SPDK's hot
/// remove, the claimer and every open descriptor get a `Remove` event
/// and their I/O fails from now on; they close when they are ready.
pub fn hot_remove(key: &str) -> Result<Arc<Bdev>, BdevError> {
    unregister_if(key, Refuse::Nothing)
}

/// Removes a bdev that nobody has open: an open descriptor (an export, a
/// module stacked on it) makes this EBUSY and changes nothing. No open can
/// slip in between the check and the removal: opening checks the removed
/// flag under the same lock.
pub fn unregister_unused(key: &str) -> Result<Arc<Bdev>, BdevError> {
    unregister_if(key, Refuse::Open)
}

/// What keeps a bdev from being unregistered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refuse {
    Nothing,
    Claimed,
    /// Claimed or open at all.
    Open,
}

fn unregister_if(key: &str, refuse: Refuse) -> Result<Arc<Bdev>, BdevError> {
    let unused = refuse == Refuse::Open;
    let bdev = {
        let mut reg = lock();
        let i = reg
            .iter()
            .position(|b| matches(b, key))
            .ok_or_else(|| BdevError::NotFound(key.to_string()))?;
        if let Some(m) = reg[i].claimed_by().filter(|_| refuse != Refuse::Nothing) {
            return Err(BdevError::Claimed(reg[i].name().to_string(), m));
        }
        if unused {
            let st = reg[i].lock_state();
            if !st.descs.is_empty() {
                return Err(BdevError::Busy(
                    reg[i].name().to_string(),
                    format!("open by {} descriptor(s) (an export?)", st.descs.len()),
                ));
            }
            reg[i]
                .removed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            reg[i].reach.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        reg.remove(i)
    };
    crate::notify::post("bdev_unregister", bdev.name());
    for d in bdev.mark_removed() {
        d.notify(BdevEvent::Remove);
    }
    Ok(bdev)
}
