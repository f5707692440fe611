//! The bdev a stacking module sits on: opened read-write and claimed at
//! creation, released when the stacking bdev is unregistered.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Bdev, BdevError, Descriptor, IoChannel, IoType};

pub struct Base {
    desc: Mutex<Option<Descriptor>>,
    name: String,
}

impl Base {
    /// Opens `name` for writing and claims it for `module`.
    pub fn claim(name: &str, module: &str) -> Result<(Base, Arc<Bdev>), BdevError> {
        Self::claim_with_events(name, module, None)
    }

    /// `claim`, telling `event` about resizes and removal.
    pub fn claim_with_events(
        name: &str,
        module: &str,
        event: Option<crate::EventFn>,
    ) -> Result<(Base, Arc<Bdev>), BdevError> {
        let mut desc = crate::open(name, true, event)?;
        desc.claim(module)?;
        let bdev = desc.bdev().clone();
        Ok((
            Base {
                desc: Mutex::new(Some(desc)),
                name: bdev.name().to_string(),
            },
            bdev,
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, Option<Descriptor>> {
        self.desc.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn supports(&self, t: IoType) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|d| d.bdev().io_type_supported(t))
    }

    /// This core's channel to the base.
    pub fn channel(&self) -> Result<IoChannel, BdevError> {
        self.lock()
            .as_ref()
            .ok_or_else(|| BdevError::NotFound(self.name.clone()))?
            .io_channel()
    }

    /// "over bdev NAME (...)": what a stacking bdev's messages say backs
    /// it, down to the file when there is one.
    pub fn describe(&self) -> String {
        match self.lock().as_ref() {
            Some(d) => format!("over {}", d.bdev().describe()),
            None => format!("over bdev {} (released)", self.name),
        }
    }

    /// Closes the descriptor, which releases the claim.
    pub fn release(&self) {
        self.lock().take();
    }
}
