//! One job thread's completions: bdev completions land here as they run
//! (inside the thread's reactor turns), fio reaps them in batches
//! (`getevents`) and reads a batch by index (`event`). Sized for the
//! job's queue depth up front, so the I/O path does not allocate.

use std::collections::VecDeque;

pub struct Ring<T> {
    /// Completed, not yet reaped, oldest first.
    done: VecDeque<T>,
    /// The last batch `reap` handed to fio.
    reaped: Vec<T>,
}

impl<T: Copy> Ring<T> {
    pub fn with_capacity(n: usize) -> Self {
        Ring {
            done: VecDeque::with_capacity(n),
            reaped: Vec::with_capacity(n),
        }
    }

    /// A completion.
    pub fn push(&mut self, t: T) {
        self.done.push_back(t);
    }

    /// Completions waiting to be reaped.
    pub fn ready(&self) -> usize {
        self.done.len()
    }

    /// Replaces the reaped batch with up to `max` of the oldest
    /// completions; returns how many it took.
    pub fn reap(&mut self, max: usize) -> usize {
        self.reaped.clear();
        let n = max.min(self.done.len());
        self.reaped.extend(self.done.drain(..n));
        n
    }

    /// The `i`-th completion of the last batch.
    pub fn event(&self, i: usize) -> Option<T> {
        self.reaped.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::Ring;

    #[test]
    fn reaps_in_completion_order_up_to_max() {
        let mut r = Ring::with_capacity(4);
        for i in 1..=5 {
            r.push(i);
        }
        assert_eq!(r.ready(), 5);
        assert_eq!(r.reap(3), 3);
        assert_eq!(
            (0..3).map(|i| r.event(i).unwrap()).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(r.event(3), None);
        r.push(6);
        assert_eq!(r.reap(10), 3);
        assert_eq!(
            (0..3).map(|i| r.event(i).unwrap()).collect::<Vec<_>>(),
            [4, 5, 6]
        );
        assert_eq!(r.reap(10), 0);
        assert_eq!(r.event(0), None, "an empty reap forgets the last batch");
    }

    #[test]
    fn reap_of_zero_takes_nothing() {
        let mut r = Ring::with_capacity(1);
        r.push('a');
        assert_eq!(r.reap(0), 0);
        assert_eq!(r.ready(), 1);
    }

    #[test]
    fn stays_within_its_capacity_at_depth() {
        let mut r = Ring::with_capacity(32);
        let (cap_done, cap_reaped) = (r.done.capacity(), r.reaped.capacity());
        for round in 0..100 {
            for i in 0..32 {
                r.push(round * 32 + i);
            }
            assert_eq!(r.reap(32), 32);
        }
        assert_eq!(
            (r.done.capacity(), r.reaped.capacity()),
            (cap_done, cap_reaped)
        );
    }
}
