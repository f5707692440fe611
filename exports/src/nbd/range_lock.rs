//! Block-range locks for an export's writes. A read-modify-write of a
//! block that a request covers only in part holds its blocks exclusively;
//! every other write holds its blocks shared. So two read-modify-writes of
//! one block cannot lose each other's bytes, and a write landing between
//! the read and the write of a read-modify-write cannot be undone by it.
//! Requests that conflict are granted in arrival order. Connections of one
//! export run on different reactors, so the table is behind a mutex; a
//! waiter is woken through its task's waker, from whichever core releases.
//! A connection's fast path takes a range with [`RangeLocks::try_lock`]
//! (granted at once or not at all, no future) and gives it back with
//! [`RangeLocks::unlock`] from its completion callback.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Range {
    /// Blocks `start..end`.
    start: u64,
    end: u64,
    exclusive: bool,
}

impl Range {
    fn conflicts(&self, o: &Range) -> bool {
        self.start < o.end && o.start < self.end && (self.exclusive || o.exclusive)
    }
}

#[derive(Default)]
struct Table {
    next_id: u64,
    held: Vec<(u64, Range)>,
    /// Not granted yet, in arrival order.
    waiting: Vec<(u64, Range, Waker)>,
}

impl Table {
    fn wake_all(&self) {
        for (_, _, w) in &self.waiting {
            w.wake_by_ref();
        }
    }
}

#[derive(Default)]
pub struct RangeLocks {
    table: Mutex<Table>,
}

impl RangeLocks {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks `start..end`, shared or exclusive; the guard gives them back.
    pub fn lock(&self, start: u64, end: u64, exclusive: bool) -> Acquire<'_> {
        Acquire {
            locks: self,
            range: Range {
                start,
                end,
                exclusive,
            },
            id: None,
            granted: false,
        }
    }

    /// Blocks `start..end` now, if nothing held or waiting conflicts:
    /// the id to [`unlock`](Self::unlock) them with.
    pub fn try_lock(&self, start: u64, end: u64, exclusive: bool) -> Option<u64> {
        let r = Range {
            start,
            end,
            exclusive,
        };
        let mut t = self.table();
        // Everyone waiting arrived before us.
        if t.held.iter().any(|(_, h)| h.conflicts(&r))
            || t.waiting.iter().any(|(_, w, _)| w.conflicts(&r))
        {
            return None;
        }
        t.next_id += 1;
        let id = t.next_id;
        t.held.push((id, r));
        Some(id)
    }

    /// Gives back a range held under `id`; those waiting for it go.
    pub fn unlock(&self, id: u64) {
        let mut t = self.table();
        t.held.retain(|(hid, _)| *hid != id);
        t.wake_all();
    }

    /// Ranges held and waiting (tests).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let t = self.table();
        (t.held.len(), t.waiting.len())
    }
}

/// Waits for a range (see [`RangeLocks::lock`]).
pub struct Acquire<'a> {
    locks: &'a RangeLocks,
    range: Range,
    /// Our place in line, from the first poll.
    id: Option<u64>,
    granted: bool,
}

impl<'a> Future for Acquire<'a> {
    type Output = RangeGuard<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RangeGuard<'a>> {
        let locks = self.locks;
        let mut t = locks.table();
        let id = match self.id {
            Some(id) => id,
            None => {
                t.next_id += 1;
                let id = t.next_id;
                self.id = Some(id);
                id
            }
        };
        let r = self.range;
        let blocked = t.held.iter().any(|(_, h)| h.conflicts(&r))
            || t.waiting
                .iter()
                .any(|(wid, w, _)| *wid < id && w.conflicts(&r));
        let place = t.waiting.iter().position(|(wid, _, _)| *wid == id);
        if blocked {
            match place {
                Some(i) => t.waiting[i].2.clone_from(cx.waker()),
                None => t.waiting.push((id, r, cx.waker().clone())),
            }
            return Poll::Pending;
        }
        if let Some(i) = place {
            t.waiting.remove(i);
        }
        t.held.push((id, r));
        self.granted = true;
        Poll::Ready(RangeGuard { locks, id })
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        if let Some(id) = self.id {
            // Given up while waiting: those behind us may go now.
            let mut t = self.locks.table();
            t.waiting.retain(|(wid, _, _)| *wid != id);
            t.wake_all();
        }
    }
}

/// A held range, given back on drop.
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    id: u64,
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        self.locks.unlock(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(f).poll(&mut cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    #[test]
    fn shared_ranges_overlap_exclusive_ones_wait_in_order() {
        let l = RangeLocks::default();
        let mut a = l.lock(0, 4, false);
        let ga = poll(&mut a).expect("free");
        let mut b = l.lock(2, 6, false);
        let gb = poll(&mut b).expect("shared with shared");
        // An exclusive range over a shared one waits ...
        let mut x = l.lock(3, 4, true);
        assert!(poll(&mut x).is_none());
        // ... and so does a shared one behind it that it conflicts with,
        // while one that conflicts with nobody goes.
        let mut c = l.lock(3, 5, false);
        assert!(poll(&mut c).is_none());
        let mut d = l.lock(10, 12, true);
        let gd = poll(&mut d).expect("disjoint");
        drop(ga);
        assert!(poll(&mut x).is_none(), "b still holds block 3");
        drop(gb);
        let gx = poll(&mut x).expect("granted once both are gone");
        assert!(poll(&mut c).is_none(), "behind the exclusive one");
        drop(gx);
        let gc = poll(&mut c).expect("in order");
        drop((gc, gd));
        assert_eq!(l.counts(), (0, 0));
    }

    #[test]
    fn two_exclusive_ranges_on_one_block_take_turns() {
        let l = RangeLocks::default();
        let mut a = l.lock(7, 8, true);
        let ga = poll(&mut a).unwrap();
        let mut b = l.lock(7, 8, true);
        assert!(poll(&mut b).is_none());
        let mut c = l.lock(6, 8, false);
        assert!(poll(&mut c).is_none());
        drop(ga);
        let gb = poll(&mut b).unwrap();
        assert!(poll(&mut c).is_none());
        drop(gb);
        assert!(poll(&mut c).is_some());
        assert_eq!(l.counts(), (0, 0));
    }

    #[test]
    fn try_lock_takes_free_ranges_only_and_queues_behind_nobody() {
        let l = RangeLocks::default();
        let a = l.try_lock(0, 4, false).expect("free");
        let b = l.try_lock(2, 6, false).expect("shared with shared");
        assert!(l.try_lock(3, 4, true).is_none(), "exclusive over shared");
        // A waiter in line keeps later shared requests off its blocks.
        let mut x = l.lock(5, 7, true);
        assert!(poll(&mut x).is_none());
        assert!(l.try_lock(6, 7, false).is_none(), "behind x");
        let c = l.try_lock(7, 9, false).expect("disjoint from everyone");
        l.unlock(b);
        let gx = poll(&mut x).expect("granted once b is gone");
        drop(gx);
        l.unlock(a);
        l.unlock(c);
        assert_eq!(l.counts(), (0, 0));
    }

    #[test]
    fn a_waiter_that_gives_up_lets_the_next_go() {
        let l = RangeLocks::default();
        let mut a = l.lock(0, 1, false);
        let ga = poll(&mut a).unwrap();
        let mut x = l.lock(0, 2, true);
        assert!(poll(&mut x).is_none());
        let mut s = l.lock(1, 2, false);
        assert!(poll(&mut s).is_none(), "behind x");
        drop(x);
        assert!(poll(&mut s).is_some());
        drop(ga);
        assert_eq!(l.counts(), (0, 0));
    }
}
