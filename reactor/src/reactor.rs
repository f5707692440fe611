//! One reactor: the loop a pinned thread runs (and the turn of it a driven
//! reactor runs), and the state it keeps.
//!
//! A loop turn drains a bounded batch of inbox messages, runs ready tasks,
//! calls every active poller, then fires due timers. A turn that did nothing
//! is idle; after `idle_spins` idle turns in a row (idle mode) the reactor
//! parks on its eventfd until a message, a timer deadline or a completion
//! signalled on that eventfd wakes it, or one of its sockets (`sock.rs`)
//! becomes ready.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_task::Runnable;
use crossbeam_queue::SegQueue;

use crate::clock::{ticks, ticks_to_ns};
use crate::eventfd::EventFd;
use crate::poller::{Pollers, Timers};
use crate::set::SetShared;
use crate::sock;

/// How many inbox messages one loop turn runs at most: keeps a flood of
/// messages from starving pollers (SPDK runs 8; we batch a little more
/// because our messages are cheaper to dispatch).
pub const INBOX_BATCH: usize = 32;
/// How many ready tasks one loop turn runs at most.
pub const TASK_BATCH: usize = 64;

/// Whether a reactor may sleep when it has nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollMode {
    /// Never park: lowest latency, one core at 100%. For benchmarks.
    Busy,
    /// Park on the eventfd after this many idle loop turns in a row.
    Idle { spins: u32 },
}

impl Default for PollMode {
    fn default() -> Self {
        PollMode::Idle { spins: 2000 }
    }
}

pub(crate) enum Msg {
    Call(Box<dyn FnOnce() + Send>),
    Run(Runnable),
}

/// Counters a reactor publishes for `framework_get_reactors`. Written by the
/// owning reactor only (relaxed load + store, no read-modify-write), read by
/// anyone.
#[derive(Default, Debug)]
pub struct ReactorStats {
    pub busy_ticks: AtomicU64,
    pub idle_ticks: AtomicU64,
    pub loops: AtomicU64,
    pub parks: AtomicU64,
}

/// A snapshot of one reactor's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReactorInfo {
    pub core: u32,
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub loops: u64,
    pub parks: u64,
    pub in_interrupt: bool,
}

/// The part of a reactor other threads can see.
pub(crate) struct ReactorShared {
    pub core: u32,
    pub inbox: SegQueue<Msg>,
    pub efd: EventFd,
    pub sleeping: AtomicBool,
    pub stop: AtomicBool,
    /// A driven reactor: a thread has attached this core (`DrivenSet`).
    pub attached: AtomicBool,
    /// The threaded reactor's thread is gone (stopped, or a panic ended
    /// it): nothing sent to it will run.
    pub exited: AtomicBool,
    pub stats: ReactorStats,
}

impl ReactorShared {
    pub fn new(core: u32) -> std::io::Result<Self> {
        Ok(ReactorShared {
            core,
            inbox: SegQueue::new(),
            efd: EventFd::new()?,
            sleeping: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            attached: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            stats: ReactorStats::default(),
        })
    }

    /// Queues a message and wakes the reactor if it is parked.
    pub fn push(&self, msg: Msg) {
        self.inbox.push(msg);
        // Pairs with the fence in `park`: either the sleeper sees our message
        // in its re-check, or we see `sleeping` and signal.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            self.efd.signal();
        }
    }

    pub fn info(&self) -> ReactorInfo {
        ReactorInfo {
            core: self.core,
            busy_ns: ticks_to_ns(self.stats.busy_ticks.load(Ordering::Relaxed)),
            idle_ns: ticks_to_ns(self.stats.idle_ticks.load(Ordering::Relaxed)),
            loops: self.stats.loops.load(Ordering::Relaxed),
            parks: self.stats.parks.load(Ordering::Relaxed),
            in_interrupt: self.sleeping.load(Ordering::Relaxed),
        }
    }
}

/// The reactor-thread-local state.
pub(crate) struct Local {
    pub shared: Arc<ReactorShared>,
    pub set: Arc<SetShared>,
    pub mode: PollMode,
    pub pollers: Pollers,
    pub timers: Timers,
    pub runq: RefCell<VecDeque<Runnable>>,
    /// Per io-device channel slots (`Weak<T>` boxed as Any), keyed by device id.
    pub channels: RefCell<HashMap<u64, Box<dyn Any>>>,
    /// This reactor's sockets and their epoll instance.
    pub sockets: sock::Group,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
    /// Cheap "which reactor am I" for the task scheduler (0 = none).
    static CURRENT_ID: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` with this thread's reactor state; `None` off a reactor thread.
pub(crate) fn with_local<R>(f: impl FnOnce(&Rc<Local>) -> R) -> Option<R> {
    let local = LOCAL.with(|l| l.borrow().clone())?;
    Some(f(&local))
}

pub(crate) fn current_shared_id() -> usize {
    CURRENT_ID.with(|c| c.get())
}

pub(crate) fn shared_id(s: &Arc<ReactorShared>) -> usize {
    Arc::as_ptr(s) as usize
}

/// Makes `local` the calling thread's reactor (None: no reactor). A
/// simulated set switches between its reactors with this, one turn each.
pub(crate) fn install(local: Option<Rc<Local>>) {
    let id = local.as_ref().map_or(0, |l| shared_id(&l.shared));
    LOCAL.with(|l| *l.borrow_mut() = local);
    CURRENT_ID.with(|c| c.set(id));
}

impl Local {
    pub fn new(shared: Arc<ReactorShared>, set: Arc<SetShared>, mode: PollMode) -> Rc<Local> {
        Rc::new(Local {
            shared,
            set,
            mode,
            pollers: Pollers::default(),
            timers: Timers::default(),
            runq: RefCell::new(VecDeque::with_capacity(256)),
            channels: RefCell::new(HashMap::new()),
            sockets: sock::Group::default(),
        })
    }

    /// Installs this state as the calling thread's reactor and runs the loop
    /// until stopped.
    pub fn run(shared: Arc<ReactorShared>, set: Arc<SetShared>, mode: PollMode) {
        let local = Local::new(shared, set, mode);
        install(Some(local.clone()));
        local.run_loop();
        local.shutdown();
        install(None);
    }

    /// One loop turn: at most `messages` inbox messages and `tasks` ready
    /// tasks, every active poller, then the timers due at the time `now`
    /// reads. Whether anything did work, and that time. The threaded loop,
    /// the driven reactors and the simulated set all turn through here.
    #[inline]
    pub fn turn(&self, messages: usize, tasks: usize, now: impl FnOnce() -> u64) -> (bool, u64) {
        let mut busy = self.drain_inbox(messages) > 0;
        busy |= self.run_tasks(tasks) > 0;
        busy |= self.pollers.run();
        let now = now();
        if !self.timers.is_empty() {
            busy |= self.timers.run_due(now);
        }
        (busy, now)
    }

    /// Counts one turn that took `spent` ticks as busy or idle time.
    pub fn account(&self, busy: bool, spent: u64) {
        let stats = &self.shared.stats;
        let counter = if busy {
            &stats.busy_ticks
        } else {
            &stats.idle_ticks
        };
        counter.store(counter.load(Ordering::Relaxed) + spent, Ordering::Relaxed);
        stats
            .loops
            .store(stats.loops.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    fn run_loop(&self) {
        let stats = &self.shared.stats;
        let mut idle_turns: u32 = 0;
        let mut last = ticks();
        loop {
            let (busy, now) = self.turn(INBOX_BATCH, TASK_BATCH, ticks);
            self.account(busy, now.wrapping_sub(last));
            last = now;

            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            if busy {
                idle_turns = 0;
                continue;
            }
            idle_turns = idle_turns.saturating_add(1);
            if let PollMode::Idle { spins } = self.mode {
                if idle_turns >= spins {
                    self.park();
                    let after = ticks();
                    let idle = &stats.idle_ticks;
                    idle.store(
                        idle.load(Ordering::Relaxed) + after.wrapping_sub(last),
                        Ordering::Relaxed,
                    );
                    last = after;
                    idle_turns = 0;
                }
            }
        }
    }

    /// Sleeps until the next timer, a message or a signal on the eventfd.
    fn park(&self) {
        let timeout = self
            .timers
            .next_deadline()
            .map(|d| Duration::from_nanos(ticks_to_ns(d.saturating_sub(ticks()))));
        self.wait(timeout);
    }

    /// Sleeps until a message or a signal on the eventfd, or `timeout`;
    /// not at all with work queued or the reactor stopping.
    pub fn wait(&self, timeout: Option<Duration>) {
        let shared = &self.shared;
        shared.sleeping.store(true, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
        if shared.inbox.is_empty()
            && self.runq.borrow().is_empty()
            && !shared.stop.load(Ordering::Acquire)
        {
            shared.stats.parks.store(
                shared.stats.parks.load(Ordering::Relaxed) + 1,
                Ordering::Relaxed,
            );
            // Socket readiness does not go through the eventfd: the
            // epoll fd stays readable while it holds events nobody has
            // taken, so waiting on both cannot miss one.
            shared.efd.wait(self.sockets.wait_fd(), timeout);
        }
        shared.sleeping.store(false, Ordering::Relaxed);
        shared.efd.drain();
    }

    pub fn drain_inbox(&self, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(msg) = self.shared.inbox.pop() else {
                break;
            };
            n += 1;
            match msg {
                Msg::Call(f) => f(),
                Msg::Run(r) => {
                    r.run();
                }
            }
        }
        n
    }

    /// Runs tasks that were ready when the batch began; a task that wakes
    /// itself (a yield) waits for the next turn, so pollers still run.
    pub fn run_tasks(&self, max: usize) -> usize {
        let max = max.min(self.runq.borrow().len());
        let mut n = 0;
        while n < max {
            let Some(r) = self.runq.borrow_mut().pop_front() else {
                break;
            };
            r.run();
            n += 1;
        }
        n
    }

    /// Clean shutdown: run what is already queued (messages and the tasks
    /// they wake), then drop pollers, timers and channels on this thread.
    pub fn shutdown(&self) {
        // Bounded, so a message that keeps re-sending itself cannot hang exit.
        for _ in 0..10_000 {
            let n = self.drain_inbox(usize::MAX) + self.run_tasks(usize::MAX);
            if n == 0 {
                break;
            }
        }
        self.pollers.clear();
        self.timers.clear();
        let tasks = std::mem::take(&mut *self.runq.borrow_mut());
        drop(tasks);
        let channels = std::mem::take(&mut *self.channels.borrow_mut());
        drop(channels);
    }
}
