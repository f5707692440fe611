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
    writable: std::sync::atomic::AtomicBool,
}

impl DescState {
    pub(crate) fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

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
            writable: std::sync::atomic::AtomicBool::new(writable),
        });
        {
            let mut st = bdev.lock_state();
            if let (true, Some(c)) = (writable, &st.claim) {
                if c.read_only {
                    return Err(BdevError::Busy(
                        bdev.name().to_string(),
                        format!(
                            "claimed read-only by module {} (an external origin its volumes \
                             read): it cannot be opened for writing",
                            c.module
                        ),
                    ));
                }
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
            desc_ids: vec![self.state.id],
            read_only: false,
        });
        drop(st);
        self.writable = true;
        self.state.writable.store(true, Ordering::Release);
        Ok(())
    }

    /// Claims the bdev read-only for `module` (SPDK's read_many_write_none):
    /// any number of such claims may share it, and while one lasts no one
    /// opens it for writing. Refused while it is open for writing or
    /// claimed for writing; this descriptor must be read-only.
    pub fn claim_read_only(&mut self, module: &str) -> Result<(), BdevError> {
        let name = self.bdev.name().to_string();
        if self.writable {
            return Err(BdevError::Invalid(format!(
                "a read-only claim of bdev {name} needs a read-only descriptor"
            )));
        }
        let mut st = self.bdev.lock_state();
        match &mut st.claim {
            Some(c) if !c.read_only => {
                return Err(BdevError::Claimed(name, c.module.clone()));
            }
            Some(c) => c.desc_ids.push(self.state.id),
            None => {
                if st.descs.iter().any(|d| d.writable.load(Ordering::Acquire)) {
                    return Err(BdevError::Busy(
                        name,
                        "it is open for writing (an export or another module); it must not \
                         change while it is read as an origin"
                            .into(),
                    ));
                }
                st.claim = Some(Claim {
                    module: module.to_string(),
                    desc_ids: vec![self.state.id],
                    read_only: true,
                });
            }
        }
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
        if let Some(c) = &mut st.claim {
            c.desc_ids.retain(|&id| id != self.state.id);
            if c.desc_ids.is_empty() {
                st.claim = None;
            }
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
