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
//! Determinism needs the code under test to be deterministic too: no
//! iteration over randomly seeded hash maps where order matters, no wall
//! clock (read `ticks`), no threads of its own.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{duration_to_ticks, SIM_NOW};
use crate::reactor::{install, Local, PollMode, ReactorShared};
use crate::set::SetShared;
use crate::ReactorError;

/// Reactors on one thread with virtual time; see the module docs.
pub struct SimSet {
    locals: Vec<Rc<Local>>,
    /// Per-core state that layers above keep in thread-locals, by core:
    /// moved in when the core's turn starts, out when it ends.
    follow: Vec<(TakeFn, PutFn)>,
    saved: RefCell<Vec<Vec<Saved>>>,
    rng: Cell<u64>,
    now: Cell<u64>,
    steps: Cell<u64>,
    /// Steps in a row in which nothing ran and no timer was set.
    idle_steps: Cell<u64>,
}

/// Idle steps with no timer (each lets up to 200 µs pass) before the
/// simulation calls it a stall: about ten virtual minutes.
const STALL_STEPS: u64 = 6_000_000;

type TakeFn = fn() -> Box<dyn Any>;
/// One core's copy of one followed state (None until its first turn ends).
type Saved = Option<Box<dyn Any>>;
type PutFn = fn(Box<dyn Any>);

/// Why a simulation could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("stalled after {steps} steps: no core has work and no timer is set")]
    Stalled { steps: u64 },
    #[error("no reactor on core {0} in this set")]
    NoSuchCore(u32),
    #[error("gave up after {steps} steps")]
    TooLong { steps: u64 },
}

impl SimSet {
    /// Reactors for `cores`, scheduled by `seed`.
    pub fn new(cores: &[u32], seed: u64) -> Result<SimSet, ReactorError> {
        if cores.is_empty() {
            return Err(ReactorError::BadCoreMask(String::new()));
        }
        let reactors = cores
            .iter()
            .map(|&c| ReactorShared::new(c).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ReactorError::Os)?;
        let set = Arc::new(SetShared { reactors });
        let locals = set
            .reactors
            .iter()
            .map(|r| Local::new(r.clone(), set.clone(), PollMode::Busy))
            .collect();
        let n = cores.len();
        Ok(SimSet {
            locals,
            follow: Vec::new(),
            saved: RefCell::new((0..n).map(|_| Vec::new()).collect()),
            rng: Cell::new(seed ^ 0x5EED_5EED_5EED_5EED),
            // Not 0, so code that subtracts from "now" does not wrap.
            now: Cell::new(1 << 32),
            steps: Cell::new(0),
            idle_steps: Cell::new(0),
        })
    }

    /// Has each core keep its own copy of a thread-local state of a layer
    /// above: `take` moves the thread's out (leaving a new core's), `put`
    /// moves a saved one in. Call before the first `block_on`.
    pub fn follow(mut self, take: TakeFn, put: PutFn) -> SimSet {
        self.follow.push((take, put));
        for s in self.saved.get_mut() {
            s.push(None);
        }
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
        let i = self
            .locals
            .iter()
            .position(|l| l.shared.core == core)
            .ok_or(SimError::NoSuchCore(core))?;
        let slot = out.clone();
        self.with(i, || {
            crate::spawn_local(async move {
                let v = f().await;
                *slot.borrow_mut() = Some(v);
            })
            .detach();
        });
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
            self.step()?;
        }
    }

    /// One step: a turn of a random core; when none has work, time jumps
    /// to the next timer.
    fn step(&self) -> Result<(), SimError> {
        let n = self.locals.len();
        self.steps.set(self.steps.get() + 1);
        let first = self.below(n as u64) as usize;
        if self.turn(first) {
            self.idle_steps.set(0);
            let jitter = duration_to_ticks(Duration::from_nanos(self.below(1000)));
            self.now.set(self.now.get() + 1 + jitter);
            return Ok(());
        }
        for k in 1..n {
            if self.turn((first + k) % n) {
                self.idle_steps.set(0);
                return Ok(());
            }
        }
        // Nothing ran: let time pass, to the next timer or by a random
        // quantum, whichever comes first (pollers that wait for a time of
        // their own, as the delay bdev's, see it pass too). A long run of
        // such steps with no timer at all is a stall.
        let next = self
            .locals
            .iter()
            .filter_map(|l| l.timers.next_deadline())
            .min();
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

    /// One short turn of reactor `i`; whether it did anything.
    fn turn(&self, i: usize) -> bool {
        let (msgs, tasks) = (1 + self.below(4) as usize, 1 + self.below(4) as usize);
        let now = self.now.get();
        self.with(i, || {
            let l = &self.locals[i];
            let mut busy = l.drain_inbox(msgs) > 0;
            busy |= l.run_tasks(tasks) > 0;
            busy |= l.pollers.run();
            busy |= l.timers.run_due(now);
            busy
        })
    }

    /// Runs `f` as reactor `i`, at the virtual time.
    fn with<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        struct Leave;
        impl Drop for Leave {
            fn drop(&mut self) {
                install(None);
                SIM_NOW.with(|c| c.set(None));
            }
        }
        install(Some(self.locals[i].clone()));
        SIM_NOW.with(|c| c.set(Some(self.now.get())));
        for (k, (_, put)) in self.follow.iter().enumerate() {
            if let Some(s) = self.saved.borrow_mut()[i][k].take() {
                put(s);
            }
        }
        let r = {
            let _leave = Leave;
            f()
        };
        // Not on unwind: a panic is the end of the simulation anyway.
        for (k, (take, _)) in self.follow.iter().enumerate() {
            self.saved.borrow_mut()[i][k] = Some(take());
        }
        r
    }
}

impl Drop for SimSet {
    fn drop(&mut self) {
        for i in 0..self.locals.len() {
            self.with(i, || self.locals[i].shutdown());
        }
    }
}
