//! What a stacking module has passed through and not seen complete yet,
//! in two counters, for a module that must wait for the I/O it passed
//! before some change (thin's drains, before a block moves).
//!
//! The module counts each I/O it passes through in one counter, chosen
//! by bit 1 of the layer context it passes it with; the bdev layer
//! uncounts it there as it completes, on the same core, without a call
//! into the module. To wait, the module sends new I/O to the other
//! counter and waits for the first to reach zero. How the count is
//! ordered against what the module read is the module's affair: the
//! counters only count.

use std::sync::atomic::{AtomicU64, Ordering};

/// A channel's two counters. Each is written by the channel's core only
/// and read by any (a line of their own: no other core's stores come
/// near them).
#[repr(align(64))]
#[derive(Default)]
pub struct PassCounts([AtomicU64; 2]);

impl PassCounts {
    /// The counter of `parity` (its low bit), for the module's own
    /// counting.
    #[inline(always)]
    pub fn counter(&self, parity: u64) -> &AtomicU64 {
        &self.0[parity as usize & 1]
    }

    /// Uncounts an I/O counted in `parity`, on the core that counted it.
    /// One writer per counter: a plain load and a release store do, no
    /// locked instruction on the completion path.
    #[inline(always)]
    pub fn exit(&self, parity: u64) {
        let c = self.counter(parity);
        c.store(c.load(Ordering::Relaxed).wrapping_sub(1), Ordering::Release);
    }

    /// The layer context's parity: bit 1 (bit 0 keeps a context nonzero).
    #[inline(always)]
    pub fn parity_of(layer: u64) -> u64 {
        (layer >> 1) & 1
    }

    /// Whether no I/O is counted in either counter.
    pub fn idle(&self) -> bool {
        self.0.iter().all(|c| c.load(Ordering::Acquire) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_take_back_counts_of_their_own_parity_only() {
        let c = PassCounts::default();
        assert!(c.idle());
        c.counter(0).fetch_add(2, Ordering::Relaxed);
        c.counter(1).fetch_add(1, Ordering::Relaxed);
        c.exit(PassCounts::parity_of(0b011));
        assert_eq!(c.counter(1).load(Ordering::Relaxed), 0);
        assert_eq!(c.counter(0).load(Ordering::Relaxed), 2);
        c.exit(PassCounts::parity_of(0b001));
        c.exit(PassCounts::parity_of(0b101));
        assert!(c.idle());
    }
}
