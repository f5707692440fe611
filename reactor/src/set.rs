//! A set of reactors, one pinned thread per core of a core mask.

use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::reactor::{Local, Msg, PollMode, ReactorInfo, ReactorShared};
use crate::ReactorError;

/// How often a blocked `block_on` looks whether its reactor died.
const EXIT_CHECK: Duration = Duration::from_millis(100);

/// What every reactor of a set can see of the others.
pub(crate) struct SetShared {
    pub reactors: Vec<Arc<ReactorShared>>,
}

impl SetShared {
    pub fn get(&self, core: u32) -> Option<&Arc<ReactorShared>> {
        self.reactors.iter().find(|r| r.core == core)
    }
}

/// Options for starting reactors.
#[derive(Clone, Debug, Default)]
pub struct ReactorOptions {
    pub mode: PollMode,
    /// Pin each thread to its core (default on). Off is useful when the core
    /// numbers are logical only, e.g. more reactors than CPUs in a test.
    pub no_pin: bool,
}

/// Running reactors. Dropping the set stops and joins them.
pub struct ReactorSet {
    handle: ReactorHandle,
    threads: Vec<JoinHandle<()>>,
}

impl ReactorSet {
    /// Starts one reactor per core in `cores`.
    pub fn start(cores: &[u32], opts: ReactorOptions) -> Result<Self, ReactorError> {
        if cores.is_empty() {
            return Err(ReactorError::BadCoreMask(String::new()));
        }
        // Calibrate the tick rate here, once, not on a reactor's first timer
        // (it sleeps ~10 ms).
        crate::clock::ticks_hz();
        let reactors = cores
            .iter()
            .map(|&c| ReactorShared::new(c).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ReactorError::Os)?;
        let shared = Arc::new(SetShared { reactors });
        let mut threads = Vec::new();
        for r in &shared.reactors {
            let (r, set, mode, pin) = (r.clone(), shared.clone(), opts.mode, !opts.no_pin);
            let t = std::thread::Builder::new()
                .name(format!("reactor_{}", r.core))
                .spawn(move || {
                    // Set however the thread ends, a panic included, so
                    // that `block_on` stops waiting for a reply that can
                    // no longer come.
                    struct Exited(Arc<ReactorShared>);
                    impl Drop for Exited {
                        fn drop(&mut self) {
                            self.0.exited.store(true, Ordering::Release);
                        }
                    }
                    let _exited = Exited(r.clone());
                    if pin {
                        pin_to_core(r.core);
                    }
                    Local::run(r, set, mode)
                })
                .map_err(ReactorError::Os)?;
            threads.push(t);
        }
        Ok(ReactorSet {
            handle: ReactorHandle { shared },
            threads,
        })
    }

    /// Parses a core mask and starts reactors on it.
    pub fn start_mask(mask: &str, opts: ReactorOptions) -> Result<Self, ReactorError> {
        Self::start(&crate::parse_core_mask(mask)?, opts)
    }

    /// A cheap, cloneable handle that sends work to these reactors from any
    /// thread (servers' connection threads use it).
    pub fn handle(&self) -> ReactorHandle {
        self.handle.clone()
    }

    /// Stops every reactor after it runs the messages already queued, and
    /// joins the threads.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        for r in &self.handle.shared.reactors {
            r.stop.store(true, std::sync::atomic::Ordering::Release);
            r.efd.signal();
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a reactor thread panicked");
            }
        }
    }
}

/// A set is used through its handle (`cores`, `send`, `block_on`,
/// `stats`, ...); it adds only the threads it stops and joins.
impl std::ops::Deref for ReactorSet {
    type Target = ReactorHandle;
    fn deref(&self) -> &ReactorHandle {
        &self.handle
    }
}

/// Sends work to a running set's reactors; see [`ReactorSet::handle`].
/// Once the set stops, sends are dropped and `block_on` fails.
#[derive(Clone)]
pub struct ReactorHandle {
    pub(crate) shared: Arc<SetShared>,
}

impl ReactorHandle {
    pub fn cores(&self) -> Vec<u32> {
        self.shared.reactors.iter().map(|r| r.core).collect()
    }

    /// Runs `f` on reactor `core`; refused once the set is stopping.
    pub fn send(&self, core: u32, f: impl FnOnce() + Send + 'static) -> Result<(), ReactorError> {
        let r = self
            .shared
            .get(core)
            .ok_or(ReactorError::NoSuchCore(core))?;
        if r.stop.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ReactorError::Stopped);
        }
        r.push(Msg::Call(Box::new(f)));
        Ok(())
    }

    /// Runs the future made by `f` on reactor `core`, detached.
    pub fn spawn_on<Fut>(
        &self,
        core: u32,
        f: impl FnOnce() -> Fut + Send + 'static,
    ) -> Result<(), ReactorError>
    where
        Fut: std::future::Future + 'static,
    {
        self.send(core, move || {
            crate::spawn_local(async move {
                f().await;
            })
            .detach();
        })
    }

    /// Runs the future made by `f` on reactor `core` and blocks the calling
    /// (non-reactor) thread until it finishes.
    pub fn block_on<T, Fut>(
        &self,
        core: u32,
        f: impl FnOnce() -> Fut + Send + 'static,
    ) -> Result<T, ReactorError>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.spawn_on(core, move || async move {
            let _ = tx.send(f().await);
        })?;
        let r = self
            .shared
            .get(core)
            .ok_or(ReactorError::NoSuchCore(core))?;
        loop {
            match rx.recv_timeout(EXIT_CHECK) {
                Ok(v) => return Ok(v),
                Err(RecvTimeoutError::Disconnected) => return Err(ReactorError::Stopped),
                // A reactor that died (a panic in one of its tasks) leaves
                // the future, and the sender in it, queued forever.
                Err(RecvTimeoutError::Timeout) if r.exited.load(Ordering::Acquire) => {
                    return rx.try_recv().map_err(|_| ReactorError::Stopped);
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    pub fn stats(&self) -> Vec<ReactorInfo> {
        self.shared.reactors.iter().map(|r| r.info()).collect()
    }
}

impl Drop for ReactorSet {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn pin_to_core(core: u32) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it, bounded by
    // the check on `core`; sched_setaffinity only reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if (core as usize) >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            -1
        } else {
            libc::CPU_SET(core as usize, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        }
    };
    if rc != 0 {
        tracing::warn!(core, "could not pin reactor to its core; running unpinned");
    }
}
