//! Pollers: functions a reactor calls on every loop (active) or on a period
//! (timed), and one-shot timers.
//!
//! Callbacks run with no borrow of the reactor held, so a poller may register
//! or unregister pollers (itself included) and create io channels.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

use crate::clock::{duration_to_ticks, ticks};
use crate::reactor::with_local;

/// What a poller did this time: drives busy/idle accounting and parking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStatus {
    /// Did work; the reactor will not park on this loop.
    Busy,
    /// Nothing to do until a message, a timer or a registered fd wakes us.
    Idle,
}

impl PollStatus {
    pub fn from_busy(busy: bool) -> Self {
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

type PollFn = RefCell<Box<dyn FnMut() -> PollStatus>>;

pub(crate) struct PollerEntry {
    f: PollFn,
    dead: Cell<bool>,
}

/// Active pollers of one reactor. Unregistration only marks an entry dead;
/// dead entries are swept between loops so iteration never sees a hole.
#[derive(Default)]
pub(crate) struct Pollers {
    list: RefCell<Vec<Rc<PollerEntry>>>,
    dirty: Cell<bool>,
}

impl Pollers {
    pub fn run(&self) -> bool {
        let mut busy = false;
        let n = self.list.borrow().len();
        for i in 0..n {
            let Some(p) = self.list.borrow().get(i).cloned() else {
                break;
            };
            if p.dead.get() {
                continue;
            }
            // A poller never re-enters itself: only this loop calls it.
            let ran = match p.f.try_borrow_mut() {
                Ok(mut f) => f() == PollStatus::Busy,
                Err(_) => false,
            };
            busy |= ran;
        }
        if self.dirty.replace(false) {
            self.list.borrow_mut().retain(|p| !p.dead.get());
        }
        busy
    }

    pub fn clear(&self) {
        let list = std::mem::take(&mut *self.list.borrow_mut());
        drop(list);
    }
}

/// Handle of a registered poller or timer; unregisters it when dropped.
/// Lives on the reactor that registered it (not `Send`).
pub struct Poller {
    kind: PollerKind,
    _not_send: PhantomData<*const ()>,
}

enum PollerKind {
    Active(Rc<PollerEntry>),
    Timer(u64),
    Detached,
}

impl Poller {
    /// Stops the poller (or cancels the timer). Idempotent.
    pub fn unregister(&mut self) {
        match std::mem::replace(&mut self.kind, PollerKind::Detached) {
            PollerKind::Active(p) => {
                p.dead.set(true);
                let _ = with_local(|l| l.pollers.dirty.set(true));
            }
            PollerKind::Timer(id) => {
                let _ = with_local(|l| l.timers.cancel(id));
            }
            PollerKind::Detached => {}
        }
    }

    /// Lets the poller or timer live on without this handle.
    pub fn detach(mut self) {
        self.kind = PollerKind::Detached;
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// Registers an active poller on the current reactor. Panics off a reactor
/// thread: that is a programming error, not an input error.
pub fn register_poller(f: impl FnMut() -> PollStatus + 'static) -> Poller {
    let entry = Rc::new(PollerEntry {
        f: RefCell::new(Box::new(f)),
        dead: Cell::new(false),
    });
    with_local(|l| l.pollers.list.borrow_mut().push(entry.clone()))
        .expect("register_poller called off a reactor thread");
    Poller {
        kind: PollerKind::Active(entry),
        _not_send: PhantomData,
    }
}

/// Registers a timed poller that runs every `period`.
pub fn register_timed_poller(period: Duration, f: impl FnMut() -> PollStatus + 'static) -> Poller {
    let period = duration_to_ticks(period).max(1);
    let id = with_local(|l| {
        l.timers
            .add(ticks().saturating_add(period), Some(period), Box::new(f))
    })
    .expect("register_timed_poller called off a reactor thread");
    Poller {
        kind: PollerKind::Timer(id),
        _not_send: PhantomData,
    }
}

/// Runs `f` once after `delay`. Dropping the handle cancels it; `detach` keeps it.
pub fn after(delay: Duration, f: impl FnOnce() + 'static) -> Poller {
    let mut f = Some(f);
    // Convert first: the clock is read last so the deadline is exact.
    let delay = duration_to_ticks(delay);
    let id = with_local(|l| {
        l.timers.add(
            ticks().saturating_add(delay),
            None,
            Box::new(move || {
                if let Some(f) = f.take() {
                    f();
                }
                PollStatus::Busy
            }),
        )
    })
    .expect("after() called off a reactor thread");
    Poller {
        kind: PollerKind::Timer(id),
        _not_send: PhantomData,
    }
}

struct TimerEntry {
    f: Rc<PollFn>,
    period: Option<u64>,
}

/// Timers of one reactor: a min-heap of deadlines with lazy cancellation.
#[derive(Default)]
pub(crate) struct Timers {
    heap: RefCell<BinaryHeap<Reverse<(u64, u64)>>>,
    entries: RefCell<HashMap<u64, TimerEntry>>,
    next_id: Cell<u64>,
}

impl Timers {
    fn add(&self, deadline: u64, period: Option<u64>, f: Box<dyn FnMut() -> PollStatus>) -> u64 {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        self.entries.borrow_mut().insert(
            id,
            TimerEntry {
                f: Rc::new(RefCell::new(f)),
                period,
            },
        );
        self.heap.borrow_mut().push(Reverse((deadline, id)));
        id
    }

    fn cancel(&self, id: u64) {
        self.entries.borrow_mut().remove(&id);
    }

    /// The earliest live deadline, if any.
    pub fn next_deadline(&self) -> Option<u64> {
        let mut heap = self.heap.borrow_mut();
        let entries = self.entries.borrow();
        while let Some(Reverse((deadline, id))) = heap.peek().copied() {
            if entries.contains_key(&id) {
                return Some(deadline);
            }
            heap.pop();
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }

    /// Fires every timer due at `now`. Returns whether any ran.
    pub fn run_due(&self, now: u64) -> bool {
        let mut ran = false;
        loop {
            let (deadline, id) = match self.heap.borrow().peek() {
                Some(Reverse((d, id))) if *d <= now => (*d, *id),
                _ => break,
            };
            self.heap.borrow_mut().pop();
            let Some((f, period)) = self
                .entries
                .borrow()
                .get(&id)
                .map(|e| (e.f.clone(), e.period))
            else {
                continue;
            };
            match period {
                Some(p) => {
                    // Reschedule before running so the callback may cancel.
                    // A timer that fell behind skips the periods it missed
                    // rather than firing once per missed period: rescheduling
                    // at `now` would run it again in this same pass.
                    let on_time = deadline.saturating_add(p);
                    let next = if on_time > now {
                        on_time
                    } else {
                        now.saturating_add(p)
                    };
                    self.heap.borrow_mut().push(Reverse((next, id)));
                }
                None => {
                    self.entries.borrow_mut().remove(&id);
                }
            }
            if let Ok(mut f) = f.try_borrow_mut() {
                f();
            }
            ran = true;
        }
        ran
    }

    pub fn clear(&self) {
        let entries = std::mem::take(&mut *self.entries.borrow_mut());
        drop(entries);
        self.heap.borrow_mut().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting(timers: &Timers, deadline: u64, period: u64) -> Rc<Cell<u32>> {
        let runs = Rc::new(Cell::new(0));
        let r = runs.clone();
        timers.add(
            deadline,
            Some(period),
            Box::new(move || {
                r.set(r.get() + 1);
                PollStatus::Busy
            }),
        );
        runs
    }

    #[test]
    fn a_periodic_timer_keeps_its_phase_when_on_time() {
        let timers = Timers::default();
        let runs = counting(&timers, 10, 10);
        assert!(!timers.run_due(9));
        assert!(timers.run_due(12));
        assert_eq!(timers.next_deadline(), Some(20));
        assert!(timers.run_due(20));
        assert_eq!((runs.get(), timers.next_deadline()), (2, Some(30)));
    }

    #[test]
    fn a_late_periodic_timer_runs_once_and_skips_the_missed_periods() {
        let timers = Timers::default();
        let runs = counting(&timers, 10, 10);
        // A stall of several periods: one run, then a full period from now.
        assert!(timers.run_due(55));
        assert_eq!(runs.get(), 1);
        assert_eq!(timers.next_deadline(), Some(65));
        // Exactly one period late still runs once.
        assert!(timers.run_due(75));
        assert_eq!((runs.get(), timers.next_deadline()), (2, Some(85)));
    }
}
