//! Driven reactors: reactors that no thread of ours runs. The caller turns
//! them, one turn at a time, from threads it owns, on a clock it passes in.
//! An fio engine turns one from each of fio's job threads; the simulated
//! set (`SimSet`) turns a whole set from one thread in an order a seed
//! chooses. Both run the one loop turn the threaded reactor runs
//! (`Local::turn`).
//!
//! A [`DrivenSet`] is a set of reactors with nothing running them: it
//! routes messages (it is a [`ReactorHandle`]) and hands out its cores.
//! [`DrivenSet::attach`] makes a core's reactor on the calling thread and
//! returns a [`DrivenReactor`], which is neither `Send` nor `Sync`: the
//! reactor's tasks, pollers and channels were made on that thread and stay
//! on it, so one thread drives a core, for the core's whole life, and no
//! other thread can reach it. A second `attach` of the same core is
//! refused. One thread may drive several cores (turning each in turn).
//!
//! A turn ([`DrivenReactor::turn`]) enters the reactor on the calling
//! thread (so `spawn_local`, `register_poller`, `after`, `current_core`,
//! `send`, `call_on` and io channels work inside it, as on a reactor
//! thread), runs a batch of inbox messages and ready tasks, every active
//! poller and the timers due at `now`, and leaves. Work sent to the core
//! from other cores or threads meanwhile waits in its inbox for the next
//! turn. [`DrivenReactor::enter`] runs a closure as the core without a
//! turn (to open a channel or submit an I/O from the caller's code).
//!
//! Time: `now` is in reactor ticks (see [`ticks`](crate::ticks) and
//! [`duration_to_ticks`](crate::duration_to_ticks)); pass
//! `reactor::ticks()` to run on real time, or any clock of the caller's
//! that starts anywhere and never runs backwards (a `now` below the
//! core's last one counts as the last one).
//! Inside a turn or an `enter`, [`ticks`](crate::ticks) on that thread
//! returns `now`, so every timestamp and deadline the layers above take
//! (the bdev layer's I/O timestamps and timeouts, the thin pool's commit
//! timer) follows the caller's clock, and timers fire when the caller's
//! time reaches them. The clock stands still for the length of a turn.
//!
//! Per-core state that layers above keep in their own thread-locals (the
//! bdev layer's deferred completions and thin's volume channels) belongs
//! to the core, not the thread: a thread that drives more than one core
//! over its life must have it moved as it switches cores, with
//! [`DrivenSet::follow`] hooks (`bdev::sim_take_core_state` and
//! `bdev::sim_put_core_state`). They run only when a thread switches
//! cores, so a thread that drives one core pays nothing for them.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::set_turn_clock;
use crate::reactor::{
    current_shared_id, install, Local, PollMode, ReactorShared, INBOX_BATCH, TASK_BATCH,
};
use crate::set::{ReactorHandle, SetShared};
use crate::ReactorError;

/// Moves a layer's per-core thread-local state out of the thread, leaving
/// a fresh core's in its place.
pub type TakeFn = fn() -> Box<dyn Any>;
/// Moves per-core state that a [`TakeFn`] took back into the thread.
pub type PutFn = fn(Box<dyn Any>);

/// A set of reactors that the caller drives; see the module docs. Cheap
/// to share between threads (`Send + Sync`); it derefs to the set's
/// [`ReactorHandle`], which sends work to any of its cores from anywhere.
pub struct DrivenSet {
    handle: ReactorHandle,
    mode: PollMode,
    follow: Vec<(TakeFn, PutFn)>,
}

impl DrivenSet {
    /// Reactors for `cores`, none of them running until attached and
    /// turned. `mode` is what [`is_busy_mode`](crate::is_busy_mode) tells
    /// the layers above: `Busy` if the caller never calls
    /// [`DrivenReactor::wait`] (completion sources then need not signal the
    /// reactor's eventfd), `Idle` otherwise (its `spins` is unused: the
    /// caller decides when to wait).
    ///
    /// Calibrates the tick rate now, before any turn: measured inside a
    /// turn it would measure the caller's standing clock.
    pub fn new(cores: &[u32], mode: PollMode) -> Result<DrivenSet, ReactorError> {
        crate::clock::ticks_hz();
        Self::uncalibrated(cores, mode)
    }

    /// As `new`, without calibrating the tick rate. The simulated set's
    /// replay depends on where the rate is first measured (see sim.rs).
    pub(crate) fn uncalibrated(cores: &[u32], mode: PollMode) -> Result<DrivenSet, ReactorError> {
        if cores.is_empty() {
            return Err(ReactorError::BadCoreMask(String::new()));
        }
        let reactors = cores
            .iter()
            .map(|&c| ReactorShared::new(c).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ReactorError::Os)?;
        Ok(DrivenSet {
            handle: ReactorHandle {
                shared: Arc::new(SetShared { reactors }),
            },
            mode,
            follow: Vec::new(),
        })
    }

    /// Has each core keep its own copy of a thread-local state of a layer
    /// above (see the module docs): `take` moves the thread's copy out
    /// (leaving a fresh core's), `put` moves a saved one in. Panics once a
    /// core is attached: every reactor of a set moves the same states.
    pub fn follow(mut self, take: TakeFn, put: PutFn) -> DrivenSet {
        self.add_follow(take, put);
        self
    }

    pub(crate) fn add_follow(&mut self, take: TakeFn, put: PutFn) {
        let attached = self
            .handle
            .shared
            .reactors
            .iter()
            .any(|r| r.attached.load(Ordering::Acquire));
        assert!(!attached, "DrivenSet::follow after a core was attached");
        self.follow.push((take, put));
    }

    /// A cheap, cloneable handle that sends work to these reactors from
    /// any thread.
    pub fn handle(&self) -> ReactorHandle {
        self.handle.clone()
    }

    /// Makes reactor `core` on the calling thread, which drives it from
    /// now on. Refused for a core already attached (by any thread) or
    /// stopped, and for a core not in the set.
    pub fn attach(&self, core: u32) -> Result<DrivenReactor, ReactorError> {
        let shared = self
            .handle
            .shared
            .get(core)
            .ok_or(ReactorError::NoSuchCore(core))?;
        if shared.stop.load(Ordering::Acquire) {
            return Err(ReactorError::Stopped);
        }
        if shared
            .attached
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(ReactorError::AlreadyDriven(core));
        }
        let local = Local::new(shared.clone(), self.handle.shared.clone(), self.mode);
        let follow = Rc::new(Followed {
            hooks: self.follow.clone(),
            saved: RefCell::new((0..self.follow.len()).map(|_| None).collect()),
        });
        Ok(DrivenReactor {
            local,
            follow,
            last_now: Cell::new(None),
            done: Cell::new(false),
            _on_its_thread: PhantomData,
        })
    }
}

/// A driven set is used through its handle (`cores`, `send`, `spawn_on`,
/// `block_on` from a thread that does not drive the target core, `stats`).
impl std::ops::Deref for DrivenSet {
    type Target = ReactorHandle;
    fn deref(&self) -> &ReactorHandle {
        &self.handle
    }
}

/// How much of its queues one turn runs at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnLimits {
    /// Inbox messages (cross-core calls, tasks woken from other threads).
    pub messages: usize,
    /// Ready tasks, of those that were ready when the turn began.
    pub tasks: usize,
}

/// The limits of a threaded reactor's turn.
impl Default for TurnLimits {
    fn default() -> Self {
        TurnLimits {
            messages: INBOX_BATCH,
            tasks: TASK_BATCH,
        }
    }
}

/// What one turn did and when the reactor next needs one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Turn {
    /// A message, task, poller or timer did work. After a turn that did
    /// none, nothing changes until a message arrives, a completion source
    /// signals ([`DrivenReactor::wait`] sleeps until either) or the clock
    /// reaches `next_deadline`.
    pub busy: bool,
    /// The earliest deadline of the reactor's timers (timed pollers
    /// included), in ticks of the caller's clock; None with no timer.
    pub next_deadline: Option<u64>,
}

/// One core's reactor, attached to the thread that drives it; see the
/// module docs. Not `Send` and not `Sync`, so no other thread can turn it:
///
/// ```compile_fail
/// let set = reactor::DrivenSet::new(&[0], reactor::PollMode::Busy).unwrap();
/// let r = set.attach(0).unwrap();
/// std::thread::spawn(move || r.turn(reactor::ticks())); // not Send
/// ```
///
/// Dropping it stops the core: new sends to it are refused, and what is
/// already queued runs before its pollers, timers and channels are dropped.
pub struct DrivenReactor {
    local: Rc<Local>,
    follow: Rc<Followed>,
    /// The clock of the last turn or entry (None before the first).
    last_now: Cell<Option<u64>>,
    /// Shut down already (by the simulated set, at its own time).
    done: Cell<bool>,
    /// Not `Send`, not `Sync`, whatever the fields above become.
    _on_its_thread: PhantomData<*const ()>,
}

/// One core's copies of the followed thread-local states, kept here while
/// another core's are in the thread.
struct Followed {
    hooks: Vec<(TakeFn, PutFn)>,
    saved: RefCell<Vec<Option<Box<dyn Any>>>>,
}

thread_local! {
    /// The core whose followed states are in this thread's thread-locals.
    /// They stay after a turn, so a thread that drives one core moves
    /// nothing, and one that switches cores moves them once per switch.
    static RESIDENT: RefCell<Option<Rc<Followed>>> = const { RefCell::new(None) };
}

impl Followed {
    /// Puts this core's states into the thread, saving the resident
    /// core's first.
    fn make_resident(self: &Rc<Self>) {
        if self.hooks.is_empty() {
            return;
        }
        let resident = RESIDENT.with(|r| r.borrow().clone());
        if resident.as_ref().is_some_and(|r| Rc::ptr_eq(r, self)) {
            return;
        }
        if let Some(other) = resident {
            other.take_out();
        }
        // A core with nothing saved (before its first turn) starts on the
        // fresh states the take left.
        for (k, (_, put)) in self.hooks.iter().enumerate() {
            let saved = self.saved.borrow_mut()[k].take();
            if let Some(s) = saved {
                put(s);
            }
        }
        RESIDENT.with(|r| *r.borrow_mut() = Some(self.clone()));
    }

    fn take_out(&self) {
        for (k, (take, _)) in self.hooks.iter().enumerate() {
            let s = take();
            self.saved.borrow_mut()[k] = Some(s);
        }
    }

    /// The core stopped: moves its states out of the thread (if they are
    /// in) and drops them.
    fn evict(self: &Rc<Self>) {
        let resident = RESIDENT.with(|r| {
            let mut r = r.borrow_mut();
            if r.as_ref().is_some_and(|r| Rc::ptr_eq(r, self)) {
                r.take()
            } else {
                None
            }
        });
        if resident.is_some() {
            self.take_out();
        }
        let saved = std::mem::take(&mut *self.saved.borrow_mut());
        drop(saved);
    }
}

impl DrivenReactor {
    /// The core this reactor is.
    pub fn core(&self) -> u32 {
        self.local.shared.core
    }

    /// One turn with the threaded reactor's limits: see [`Turn`] and the
    /// module docs. Refused (`InTurn`) inside a turn or an `enter` of any
    /// reactor on this thread, or on a reactor thread.
    pub fn turn(&self, now: u64) -> Result<Turn, ReactorError> {
        self.turn_limited(now, TurnLimits::default())
    }

    /// One turn that runs at most `limits` of the queues.
    pub fn turn_limited(&self, now: u64, limits: TurnLimits) -> Result<Turn, ReactorError> {
        let last = self.last_now.get();
        self.enter_at(now, |local, now| {
            let (busy, now) = local.turn(limits.messages, limits.tasks, || now);
            local.account(busy, now.wrapping_sub(last.unwrap_or(now)));
            Turn {
                busy,
                next_deadline: local.timers.next_deadline(),
            }
        })
    }

    /// Runs `f` as this core at time `now` without a turn: inside it the
    /// reactor API works as in a turn (spawn a task, open an io channel,
    /// submit an I/O); what `f` starts runs in the following turns.
    /// Refused as `turn` is.
    pub fn enter<R>(&self, now: u64, f: impl FnOnce() -> R) -> Result<R, ReactorError> {
        self.enter_at(now, |_, _| f())
    }

    /// The earliest timer deadline, in ticks of the caller's clock.
    pub fn next_deadline(&self) -> Option<u64> {
        self.local.timers.next_deadline()
    }

    /// Blocks the calling thread until a message arrives for this core,
    /// a completion source signals its eventfd (in `Idle` mode, see
    /// [`DrivenSet::new`]) or `timeout` passes (None: no timeout).
    /// Returns at once if work is already queued. The caller's clock is
    /// its own business: to sleep until the next timer, pass the time
    /// until [`Turn::next_deadline`] on that clock.
    pub fn wait(&self, timeout: Option<Duration>) {
        self.local.wait(timeout);
    }

    fn enter_at<R>(&self, now: u64, f: impl FnOnce(&Local, u64) -> R) -> Result<R, ReactorError> {
        if current_shared_id() != 0 {
            return Err(ReactorError::InTurn);
        }
        // The clock never runs backwards for a core.
        let now = self.last_now.get().map_or(now, |last| now.max(last));
        self.last_now.set(Some(now));
        self.follow.make_resident();
        struct Leave;
        impl Drop for Leave {
            fn drop(&mut self) {
                install(None);
                set_turn_clock(None);
            }
        }
        install(Some(self.local.clone()));
        set_turn_clock(Some(now));
        let _leave = Leave;
        Ok(f(&self.local, now))
    }

    /// Stops the core at time `now`: refuses new sends, runs what is
    /// queued, drops its pollers, timers, channels and followed states.
    pub(crate) fn shutdown_at(&self, now: u64) {
        if self.done.replace(true) {
            return;
        }
        self.local.shared.stop.store(true, Ordering::Release);
        if self.enter_at(now, |local, _| local.shutdown()).is_err() {
            // Dropped inside another reactor's turn on this thread: its
            // pollers and channels cannot be dropped as this core now, and
            // dropped as the other they would unregister from the wrong
            // reactor. Leak them instead.
            tracing::error!(
                core = self.core(),
                "a driven reactor was dropped inside a turn; leaking its state"
            );
            std::mem::forget(self.local.clone());
            return;
        }
        self.follow.evict();
    }
}

impl Drop for DrivenReactor {
    fn drop(&mut self) {
        let now = self.last_now.get().unwrap_or_else(crate::ticks);
        self.shutdown_at(now);
    }
}

#[cfg(test)]
mod tests;
