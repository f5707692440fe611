//! Open descriptors, claims and bdev events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::bdev::{Bdev, Claim};
use crate::channel::IoChannel;
use crate::BdevError;

/// What a bdev tells the holders of its descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BdevEvent {
    /// The block count changed to this.
    Resize(u64),
    /// The bdev was unregistered: close the descriptor.
    Remove,
}

/// Receives events; called on the thread that caused them.
pub type EventFn = Box<dyn Fn(BdevEvent) + Send + Sync>;

pub(crate) struct DescState {
    id: u64,
    event: Option<EventFn>,
}

impl DescState {
    pub fn notify(&self, e: BdevEvent) {
        if let Some(f) = &self.event {
            f(e);
        }
    }
}

/// An open bdev. Closing (dropping) it releases its claim, if any.
pub struct Descriptor {
    bdev: Arc<Bdev>,
    writable: bool,
    state: Arc<DescState>,
}

/// Opens a bdev by name, alias or UUID.
pub fn open(name: &str, writable: bool, event: Option<EventFn>) -> Result<Descriptor, BdevError> {
    let bdev = crate::lookup(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    Descriptor::open(bdev, writable, event)
}

impl Descriptor {
    pub fn open(
        bdev: Arc<Bdev>,
        writable: bool,
        event: Option<EventFn>,
    ) -> Result<Descriptor, BdevError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        if bdev.is_removed() {
            return Err(BdevError::NotFound(bdev.name().to_string()));
        }
        let state = Arc::new(DescState {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            event,
        });
        {
            let mut st = bdev.lock_state();
            if let (true, Some(c)) = (writable, &st.claim) {
                return Err(BdevError::Claimed(
                    bdev.name().to_string(),
                    c.module.clone(),
                ));
            }
            st.descs.push(state.clone());
        }
        Ok(Descriptor {
            bdev,
            writable,
            state,
        })
    }

    pub fn bdev(&self) -> &Arc<Bdev> {
        &self.bdev
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Claims the bdev for `module` (SPDK's exclusive_write): afterwards no
    /// one else can open it for writing. This descriptor keeps its access.
    pub fn claim(&mut self, module: &str) -> Result<(), BdevError> {
        let mut st = self.bdev.lock_state();
        if let Some(c) = &st.claim {
            return Err(BdevError::Claimed(
                self.bdev.name().to_string(),
                c.module.clone(),
            ));
        }
        st.claim = Some(Claim {
            module: module.to_string(),
            desc_id: self.state.id,
        });
        drop(st);
        self.writable = true;
        Ok(())
    }

    /// This core's I/O channel through this descriptor.
    pub fn io_channel(&self) -> Result<IoChannel, BdevError> {
        self.bdev.channel(self.writable)
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        let mut st = self.bdev.lock_state();
        st.descs.retain(|d| !Arc::ptr_eq(d, &self.state));
        if st
            .claim
            .as_ref()
            .is_some_and(|c| c.desc_id == self.state.id)
        {
            st.claim = None;
        }
    }
}

impl std::fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Descriptor({}, writable: {})",
            self.bdev.name(),
            self.writable
        )
    }
}
