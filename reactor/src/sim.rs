//! A simulated reactor set: every reactor of a set runs on the calling
//! thread, one turn at a time, in an order a seed chooses, on a virtual
//! clock. Code above the reactors cannot tell: messages, tasks, pollers,
//! timers and io channels behave as on threads, but the interleaving of
//! cores is a function of the seed alone, so a failure found with a seed
//! replays exactly (TigerBeetle's simulator is the model).
//!
//! Scheduling: each step picks a core at random and runs one short turn
//! on it (a random number of inbox messages and ready tasks, its pollers,
//! its due timers), then moves the clock on by a random sub-microsecond
//! amount. When a sweep of every core finds nothing to do, the clock moves
//! to the earliest timer or by a random quantum, whichever is sooner;
//! minutes of virtual time with nothing run and no timer set are reported
//! as a stall instead of a hang.
//!
//! It is a driven set (driven.rs) turned from one thread: each step is a
//! `turn_limited` of one core at the virtual time, so the turn it runs is
//! the threaded reactors' own. (The tick rate: see `calibrate` in
//! clock.rs. Measured in a turn, where the clock stands still, it has so
//! far been 1 tick per second in thin_sim, so the sub-microsecond
//! and microsecond amounts above are 0 ticks.)
//!
//! Determinism needs the code under test to be deterministic too: no
//! iteration over randomly seeded hash maps where order matters, no wall
//! clock (read `ticks`), no threads of its own.

use std::cell::{Cell, OnceCell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use crate::clock::duration_to_ticks;
use crate::driven::{DrivenReactor, DrivenSet, PutFn, TakeFn, TurnLimits};
use crate::reactor::PollMode;
use crate::ReactorError;

/// Reactors on one thread with virtual time; see the module docs.
pub struct SimSet {
    set: DrivenSet,
    /// The set's reactors, in core order, attached to this thread at the
    /// first `block_on` (after every `follow`).
    reactors: OnceCell<Vec<DrivenReactor>>,
    rng: Cell<u64>,
    now: Cell<u64>,
    steps: Cell<u64>,
    /// Steps in a row in which nothing ran and no timer was set.
    idle_steps: Cell<u64>,
}

/// Idle steps with no timer (each lets up to 200 µs pass) before the
/// simulation calls it a stall: about ten virtual minutes.
const STALL_STEPS: u64 = 6_000_000;

/// Why a simulation could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("stalled after {steps} steps: no core has work and no timer is set")]
    Stalled { steps: u64 },
    #[error("no reactor on core {0} in this set")]
    NoSuchCore(u32),
    #[error("gave up after {steps} steps")]
    TooLong { steps: u64 },
    #[error(transparent)]
    Reactor(#[from] ReactorError),
}

impl SimSet {
    /// Reactors for `cores`, scheduled by `seed`.
    pub fn new(cores: &[u32], seed: u64) -> Result<SimSet, ReactorError> {
        // Not `DrivenSet::new`: that calibrates the tick rate against the
        // counter, and the simulation's schedules (so the traces seeds
        // replay) depend on the rate it has always had, measured in its
        // first turn (see `calibrate` in clock.rs).
        let set = DrivenSet::uncalibrated(cores, PollMode::Busy)?;
        Ok(SimSet {
            set,
            reactors: OnceCell::new(),
            rng: Cell::new(seed ^ 0x5EED_5EED_5EED_5EED),
            // Not 0, so code that subtracts from "now" does not wrap.
            now: Cell::new(1 << 32),
            steps: Cell::new(0),
            idle_steps: Cell::new(0),
        })
    }

    /// Has each core keep its own copy of a thread-local state of a layer
    /// above: `take` moves the thread's out (leaving a new core's), `put`
    /// moves a saved one in (`DrivenSet::follow`). Call before the first
    /// `block_on`.
    pub fn follow(mut self, take: TakeFn, put: PutFn) -> SimSet {
        assert!(
            self.reactors.get().is_none(),
            "SimSet::follow after the first block_on"
        );
        self.set.add_follow(take, put);
        self
    }

    /// Virtual time passed, in ticks.
    pub fn now(&self) -> u64 {
        self.now.get()
    }

    /// Steps taken so far (one turn of one core each).
    pub fn steps(&self) -> u64 {
        self.steps.get()
    }

    fn reactors(&self) -> Result<&[DrivenReactor], ReactorError> {
        if let Some(r) = self.reactors.get() {
            return Ok(r);
        }
        let attached = self
            .set
            .cores()
            .into_iter()
            .map(|c| self.set.attach(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.reactors.get_or_init(|| attached))
    }

    fn next(&self) -> u64 {
        let x = self.rng.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.rng.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Runs the future made by `f` on reactor `core` to its end, turning
    /// the reactors; at most `max_steps` steps.
    pub fn block_on<T, Fut>(
        &self,
        core: u32,
        max_steps: u64,
        f: impl FnOnce() -> Fut + 'static,
    ) -> Result<T, SimError>
    where
        T: 'static,
        Fut: Future<Output = T> + 'static,
    {
        let out: Rc<RefCell<Option<T>>> = Rc::new(RefCell::new(None));
        let reactors = self.reactors()?;
        let r = reactors
            .iter()
            .find(|r| r.core() == core)
            .ok_or(SimError::NoSuchCore(core))?;
        let slot = out.clone();
        r.enter(self.now.get(), || {
            crate::spawn_local(async move {
                let v = f().await;
                *slot.borrow_mut() = Some(v);
            })
            .detach();
        })?;
        let limit = self.steps.get() + max_steps;
        loop {
            if let Some(v) = out.borrow_mut().take() {
                return Ok(v);
            }
            if self.steps.get() >= limit {
                return Err(SimError::TooLong {
                    steps: self.steps.get(),
                });
            }
            self.step(reactors)?;
        }
    }

    /// One step: a turn of a random core; when none has work, time jumps
    /// to the next timer.
    fn step(&self, reactors: &[DrivenReactor]) -> Result<(), SimError> {
        let n = reactors.len();
        self.steps.set(self.steps.get() + 1);
        let first = self.below(n as u64) as usize;
        if self.turn(&reactors[first])? {
            self.idle_steps.set(0);
            let jitter = duration_to_ticks(Duration::from_nanos(self.below(1000)));
            self.now.set(self.now.get() + 1 + jitter);
            return Ok(());
        }
        for k in 1..n {
            if self.turn(&reactors[(first + k) % n])? {
                self.idle_steps.set(0);
                return Ok(());
            }
        }
        // Nothing ran: let time pass, to the next timer or by a random
        // quantum, whichever comes first (pollers that wait for a time of
        // their own, as the delay bdev's, see it pass too). A long run of
        // such steps with no timer at all is a stall.
        let next = reactors.iter().filter_map(|r| r.next_deadline()).min();
        let quantum = duration_to_ticks(Duration::from_micros(1 + self.below(200)));
        let to = self.now.get() + quantum;
        self.now
            .set(next.map_or(to, |t| t.min(to)).max(self.now.get()));
        if next.is_none() {
            self.idle_steps.set(self.idle_steps.get() + 1);
            if self.idle_steps.get() > STALL_STEPS {
                return Err(SimError::Stalled {
                    steps: self.steps.get(),
                });
            }
        }
        Ok(())
    }

    /// One short turn of `reactor` at the virtual time (a random few
    /// messages and tasks); whether it did anything.
    fn turn(&self, reactor: &DrivenReactor) -> Result<bool, ReactorError> {
        let (messages, tasks) = (1 + self.below(4) as usize, 1 + self.below(4) as usize);
        let limits = TurnLimits { messages, tasks };
        Ok(reactor.turn_limited(self.now.get(), limits)?.busy)
    }
}

impl Drop for SimSet {
    fn drop(&mut self) {
        // Each core stops at the virtual time; then (dropped) its state.
        for r in self.reactors.get().into_iter().flatten() {
            r.shutdown_at(self.now.get());
        }
    }
}
