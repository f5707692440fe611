//! io devices and io channels, as in SPDK: per (device, core) state created
//! lazily on first use on a core and released when its last user drops it.
//!
//! A channel is an `Rc<T>` owned by users on one core; the reactor keeps only
//! a `Weak<T>` so the last user's drop destroys the channel, on its own core.

use std::future::Future;
use std::marker::PhantomData;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::executor::call_on;
use crate::reactor::with_local;
use crate::ReactorError;

/// A device whose per-core state has type `T`. Cheap to share across cores.
pub struct IoDevice<T: 'static> {
    id: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T: 'static> std::fmt::Debug for IoDevice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoDevice({})", self.id)
    }
}

impl<T: 'static> Default for IoDevice<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: 'static> IoDevice<T> {
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        IoDevice {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            _t: PhantomData,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// This core's channel, if one is alive.
    pub fn channel(&self) -> Option<Rc<T>> {
        with_local(|l| {
            l.channels
                .borrow()
                .get(&self.id)
                .and_then(|b| b.downcast_ref::<Weak<T>>())
                .and_then(Weak::upgrade)
        })
        .flatten()
    }

    /// This core's channel, created by `create` if none is alive.
    pub fn get_or_create<E>(&self, create: impl FnOnce() -> Result<T, E>) -> Result<Rc<T>, E>
    where
        E: From<ReactorError>,
    {
        self.get_or_create_rc(|| create().map(Rc::new))
    }

    /// As `get_or_create`, for a constructor that builds the `Rc` itself
    /// (e.g. with `Rc::new_cyclic`).
    pub fn get_or_create_rc<E>(&self, create: impl FnOnce() -> Result<Rc<T>, E>) -> Result<Rc<T>, E>
    where
        E: From<ReactorError>,
    {
        if let Some(ch) = self.channel() {
            return Ok(ch);
        }
        with_local(|_| ()).ok_or(ReactorError::NotOnReactor)?;
        // Create with no borrow held: the constructor may itself open
        // channels of other devices.
        let ch = create()?;
        with_local(|l| {
            l.channels
                .borrow_mut()
                .insert(self.id, Box::new(Rc::downgrade(&ch)))
        });
        Ok(ch)
    }

    /// Runs `f` on every core that holds a live channel of this device, one
    /// core at a time in core order, then returns on the caller's core. Stops
    /// at the first error. Cores without a channel are skipped.
    pub async fn for_each_channel<F, Fut, E>(&self, f: F) -> Result<(), E>
    where
        F: Fn(Rc<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + 'static,
        E: From<ReactorError> + Send + 'static,
    {
        let cores = crate::cores();
        if cores.is_empty() {
            return Err(ReactorError::NotOnReactor.into());
        }
        let f = std::sync::Arc::new(f);
        let id = self.id;
        for core in cores {
            let f = f.clone();
            call_on(core, move || async move {
                let dev = IoDevice::<T> {
                    id,
                    _t: PhantomData,
                };
                match dev.channel() {
                    Some(ch) => f(ch).await,
                    None => Ok(()),
                }
            })
            .await??;
        }
        Ok(())
    }
}
