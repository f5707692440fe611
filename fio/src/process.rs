//! The engine's process-wide half: one set of driven reactors, the bdevs
//! the JSON config made, and the job count that decides when they shut
//! down.
//!
//! Cores: job `n` (fio's `thread_number`, from 1) drives core `n` from its
//! own thread; core 0 is the app core, where the config's methods run and
//! where thin pools keep their metadata (it is the last core of the set,
//! which is where a pool puts its metadata when the config does not say).
//! One thread of ours drives core 0, and sleeps on its eventfd whenever
//! it has nothing to do: a job's I/O on a mapped block never reaches it;
//! provisioning, copy on write and commits do, as on the daemon's
//! metadata core. SPDK's plugin has the same shape (its init thread polls
//! the app thread).
//!
//! Lifetime: the first job to set up loads the config; every job that set
//! up is counted until its cleanup; the last one out runs every module's
//! shutdown (thin commits and closes its pools) and stops core 0, so a
//! pool in a file is clean when fio exits. fio sets every job up before it
//! starts any (its default `create_serialize=1`); a job that comes after
//! the shutdown is refused.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use reactor::{DrivenSet, PollMode};

use crate::host;

/// The core where the config runs and pools keep their metadata.
pub const APP_CORE: u32 = 0;

/// Job cores made when fio's job count cannot be read (outside fio).
const DEFAULT_JOB_CORES: u32 = 64;

/// How long the app core spins after its last work before it sleeps: a
/// job's next provisioning write usually comes sooner than a wakeup.
const APP_SPIN: Duration = Duration::from_micros(50);

/// Why the engine cannot run a job.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot read spdk_json_conf {0}: {1}")]
    Read(String, String),
    #[error("spdk_json_conf {0}: {1}")]
    Config(String, String),
    #[error(
        "this job's spdk_json_conf is {0}, but the bdevs were made from {1}: \
         one fio process loads one config, so every job must name the same"
    )]
    OtherConfig(String, String),
    #[error("the config {0} failed to load earlier: {1}")]
    Failed(String, String),
    #[error(
        "the bdevs were shut down when the earlier jobs ended; a job that starts \
         after that cannot run (leave create_serialize at its default, 1)"
    )]
    ShutDown,
    #[error("reactors: {0}")]
    Reactor(String),
}

pub struct Process {
    set: Arc<DrivenSet>,
    config: PathBuf,
    /// One more than the highest job core.
    cores_end: u32,
    stop: Arc<AtomicBool>,
    app: Mutex<Option<JoinHandle<()>>>,
    jobs: Mutex<Jobs>,
}

#[derive(Default)]
struct Jobs {
    /// The jobs set up and not cleaned up yet, by `thread_data` address.
    live: HashSet<usize>,
    shut_down: bool,
}

/// The process's engine once a job has loaded a config, or why loading
/// failed (every later job gets the same answer).
static PROCESS: Mutex<Option<Result<Arc<Process>, ProcessError>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Process {
    /// The engine, loading `config` if no job has yet; refused if another
    /// job loaded a different config, or the bdevs were shut down.
    pub fn get_or_start(config: &Path) -> Result<Arc<Process>, ProcessError> {
        let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
        let mut slot = lock(&PROCESS);
        let p = match &*slot {
            Some(Ok(p)) => p.clone(),
            Some(Err(e)) => {
                return Err(ProcessError::Failed(
                    config.display().to_string(),
                    e.to_string(),
                ))
            }
            None => {
                let r = Process::start(&config).map(Arc::new);
                *slot = Some(r.clone());
                r?
            }
        };
        if p.config != config {
            return Err(ProcessError::OtherConfig(
                config.display().to_string(),
                p.config.display().to_string(),
            ));
        }
        Ok(p)
    }

    fn start(config: &Path) -> Result<Process, ProcessError> {
        let name = config.display().to_string();
        let text = std::fs::read_to_string(config)
            .map_err(|e| ProcessError::Read(name.clone(), e.to_string()))?;
        thin::register();
        let jobs = host::job_count().unwrap_or(DEFAULT_JOB_CORES).max(1);
        // Core 0 last: a pool whose config names no metadata core takes
        // the set's last one.
        let cores: Vec<u32> = (1..=jobs).chain([APP_CORE]).collect();
        let set = driven_set(&cores)
            .map(Arc::new)
            .map_err(|e| ProcessError::Reactor(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let app = spawn_app_core(&set, stop.clone())?;
        let p = Process {
            set,
            config: config.to_path_buf(),
            cores_end: jobs + 1,
            stop,
            app: Mutex::new(Some(app)),
            jobs: Mutex::new(Jobs::default()),
        };
        let loaded = p
            .set
            .block_on(
                APP_CORE,
                move || async move { crate::config::load(&text).await },
            )
            .map_err(|e| ProcessError::Reactor(e.to_string()))
            .and_then(|r| r.map_err(|e| ProcessError::Config(name.clone(), e)));
        let kept: Vec<u32> = bdev::reserved_cores()
            .into_iter()
            .filter(|&c| c != APP_CORE)
            .collect();
        let checked = loaded.and_then(|()| match kept.as_slice() {
            [] => Ok(()),
            cores => Err(ProcessError::Config(
                name.clone(),
                format!(
                    "a module keeps core(s) {cores:?} (a thin pool's metadata_core): \
                     under fio leave metadata_core out, pools then keep their \
                     metadata on the engine's own core {APP_CORE}"
                ),
            )),
        });
        if checked.is_ok() {
            // A process whose jobs all failed before they were counted in
            // (a missing bdev) still closes its pools: at exit.
            // SAFETY: registers a plain extern "C" fn with no arguments.
            unsafe { libc::atexit(shut_down_at_exit) };
        }
        if let Err(e) = checked {
            // Whatever the config opened closes cleanly before the job fails.
            for line in p.shut_down() {
                host::log_err(&format!("ferrothin: {line}"));
            }
            return Err(e);
        }
        Ok(p)
    }

    /// The engine, if a config loaded.
    pub fn current() -> Option<Arc<Process>> {
        match &*lock(&PROCESS) {
            Some(Ok(p)) => Some(p.clone()),
            _ => None,
        }
    }

    /// The core job `thread_number` drives.
    pub fn job_core(&self, thread_number: u32) -> Result<u32, ProcessError> {
        if thread_number == 0 || thread_number >= self.cores_end {
            return Err(ProcessError::Reactor(format!(
                "job number {thread_number} is past the {} jobs fio had when the engine started",
                self.cores_end - 1
            )));
        }
        Ok(thread_number)
    }

    pub fn set(&self) -> &DrivenSet {
        &self.set
    }

    /// Counts job `td` in (once, however often it is called).
    pub fn join(&self, td: usize) -> Result<(), ProcessError> {
        let mut jobs = lock(&self.jobs);
        if jobs.shut_down {
            return Err(ProcessError::ShutDown);
        }
        jobs.live.insert(td);
        Ok(())
    }

    /// Counts job `td` out; the last one out shuts the bdevs down. Returns
    /// what did not close cleanly.
    pub fn leave(&self, td: usize) -> Vec<String> {
        let last = {
            let mut jobs = lock(&self.jobs);
            let was_in = jobs.live.remove(&td);
            let last = was_in && jobs.live.is_empty() && !jobs.shut_down;
            if last {
                jobs.shut_down = true;
            }
            last
        };
        if last {
            self.shut_down()
        } else {
            Vec::new()
        }
    }

    /// Marks the bdevs shut down (refusing new jobs) unless they are;
    /// true if this call did it.
    fn claim_shut_down(&self) -> bool {
        let mut jobs = lock(&self.jobs);
        !std::mem::replace(&mut jobs.shut_down, true)
    }

    /// Runs every module's shutdown on the app core (thin commits and
    /// closes its pools), then stops the app core's thread.
    fn shut_down(&self) -> Vec<String> {
        let failed = self
            .set
            .block_on(APP_CORE, || async { bdev::fini_all().await })
            .unwrap_or_else(|e| vec![format!("shutdown: {e}")]);
        self.stop.store(true, Ordering::Release);
        // Wakes the app core if it sleeps.
        let _ = self.set.send(APP_CORE, || {});
        if let Some(h) = lock(&self.app).take() {
            let _ = h.join();
        }
        failed
    }
}

/// A driven set for `cores` whose per-core state in the layers'
/// thread-locals (the bdev layer's deferred completions, thin's volume
/// channels) goes with the core: when a job's core stops, its state
/// leaves the thread with it, so a thread is never left holding a dead
/// core's poller.
pub fn driven_set(cores: &[u32]) -> Result<DrivenSet, reactor::ReactorError> {
    Ok(DrivenSet::new(cores, PollMode::default())?
        .follow(bdev::sim_take_core_state, bdev::sim_put_core_state)
        .follow(thin::sim_take_core_state, thin::sim_put_core_state))
}

/// At exit, if no job's cleanup shut the bdevs down: does it. The app
/// core's thread still runs then (exit runs its handlers before threads
/// end).
extern "C" fn shut_down_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(p) = Process::current() {
            if p.claim_shut_down() {
                for line in p.shut_down() {
                    host::log_err(&format!("fio: ferrothin: shutdown: {line}"));
                }
            }
        }
    });
}

/// Starts the thread that drives the app core; returns once the core is
/// attached (a driven reactor is attached by the thread that drives it).
fn spawn_app_core(
    set: &Arc<DrivenSet>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, ProcessError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let set = set.clone();
    let h = std::thread::Builder::new()
        .name("ferrothin-app".into())
        .spawn(move || {
            let r = match set.attach(APP_CORE) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(Ok(()));
            drive_app_core(&r, &stop);
        })
        .map_err(|e| ProcessError::Reactor(e.to_string()))?;
    match rx.recv() {
        Ok(Ok(())) => Ok(h),
        Ok(Err(e)) => Err(ProcessError::Reactor(e)),
        Err(_) => Err(ProcessError::Reactor("the app core's thread died".into())),
    }
}

/// Turns the app core until told to stop: spins briefly after work, then
/// sleeps until a message, a completion or its next timer.
fn drive_app_core(r: &reactor::DrivenReactor, stop: &AtomicBool) {
    let spin = reactor::duration_to_ticks(APP_SPIN);
    let mut last_busy = reactor::ticks();
    while !stop.load(Ordering::Acquire) {
        let now = reactor::ticks();
        let turn = match r.turn(now) {
            Ok(t) => t,
            Err(e) => {
                host::log_err(&format!("ferrothin: the app core stopped: {e}"));
                return;
            }
        };
        if turn.busy {
            last_busy = now;
            continue;
        }
        if now.wrapping_sub(last_busy) < spin {
            std::hint::spin_loop();
            continue;
        }
        let until_timer = turn
            .next_deadline
            .map(|d| Duration::from_nanos(reactor::ticks_to_ns(d.saturating_sub(now))));
        r.wait(Some(until_timer.map_or(Duration::from_millis(100), |d| {
            d.min(Duration::from_millis(100))
        })));
    }
}
