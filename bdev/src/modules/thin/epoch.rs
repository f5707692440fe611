//! Waiting for the fast path's in-flight I/O without stopping it.
//!
//! Each I/O core counts the volume I/O it has sent to the data bdev in one
//! of two per-core counters, chosen by the volume's epoch parity. To drain,
//! the metadata core first publishes what must change (busy entries, the
//! frozen flag), then bumps the epoch and waits for the old parity's
//! counters to reach zero: an I/O counted in the new parity looked at the
//! table after the change, so it saw it. Drains of one volume run one at a
//! time (the caller serializes them), so a parity is never reused while a
//! drain still waits on it. The fence between a count and the table read
//! is the flip's `membarrier` where the kernel has it (`barrier.rs`), else
//! a locked add per I/O.

use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::barrier;

#[repr(align(64))]
#[derive(Default)]
struct PerCore([AtomicU64; 2]);

/// In this order: what every I/O reads first (see `VolumeShared`).
#[repr(C)]
pub struct Epochs {
    epoch: AtomicU64,
    cores: Box<[PerCore]>,
    /// Counts are plain stores; `flip` fences every core.
    asymmetric: bool,
    /// A flip's fence failed: no wait may report a drain.
    unfenced: AtomicBool,
}

impl Epochs {
    pub fn new(max_core: u32) -> Epochs {
        Self::with_fences(max_core, barrier::asymmetric())
    }

    fn with_fences(max_core: u32, asymmetric: bool) -> Epochs {
        Epochs {
            epoch: AtomicU64::new(0),
            cores: (0..=max_core).map(|_| PerCore::default()).collect(),
            asymmetric,
            unfenced: AtomicBool::new(false),
        }
    }

    /// `core`'s counters. Every reactor core has its own (`new` sizes them
    /// to the highest); the modulo, a division on the fast path's every
    /// I/O, is only for a core that should not exist.
    #[inline]
    fn core(&self, core: u32) -> &PerCore {
        match self.cores.get(core as usize) {
            Some(c) => c,
            None => &self.cores[core as usize % self.cores.len()],
        }
    }

    /// Counts an I/O on `core`; returns the parity to give to `exit`.
    #[inline]
    pub fn enter(&self, core: u32) -> u64 {
        let c = self.core(core);
        loop {
            let e = self.epoch.load(Ordering::SeqCst);
            let p = e & 1;
            let n = &c.0[p as usize];
            if self.asymmetric {
                // One writer per counter: a plain increment. The compiler
                // keeps it before the loads below; the hardware may not,
                // and `flip`'s fence on this core covers that.
                n.store(n.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
                compiler_fence(Ordering::SeqCst);
            } else {
                n.fetch_add(1, Ordering::SeqCst);
            }
            if self.epoch.load(Ordering::SeqCst) == e {
                return p;
            }
            n.store(n.load(Ordering::Relaxed).wrapping_sub(1), Ordering::Release);
        }
    }

    /// Uncounts an I/O; called on the core that counted it. Each counter
    /// has one writer (its core), so a plain load and a release store do:
    /// no locked instruction on the completion path. (`enter` keeps its
    /// locked add: that is the fence between the count and the table read.)
    #[inline]
    pub fn exit(&self, core: u32, parity: u64) {
        let c = &self.core(core).0[parity as usize & 1];
        c.store(c.load(Ordering::Relaxed).wrapping_sub(1), Ordering::Release);
    }

    /// Starts a drain: I/O counted from now on sees what was published
    /// before this call. Returns the parity to wait for.
    pub fn flip(&self) -> u64 {
        let p = self.epoch.fetch_add(1, Ordering::SeqCst) & 1;
        // Every I/O core passes a fence now: a count it stored before is
        // visible to `drained`, and a table read it makes after sees what
        // was published before this call.
        if self.asymmetric {
            let fenced = barrier::heavy();
            if !fenced {
                tracing::error!("thin: membarrier failed; the drain fails");
            }
            self.unfenced.store(!fenced, Ordering::SeqCst);
        }
        p
    }

    /// Whether every I/O counted in `parity` has finished.
    pub fn drained(&self, parity: u64) -> bool {
        !self.unfenced.load(Ordering::SeqCst)
            && self
                .cores
                .iter()
                .all(|c| c.0[parity as usize & 1].load(Ordering::Acquire) == 0)
    }

    /// Waits (yielding to the reactor) until `parity` drains or `timeout`
    /// passes; false on timeout.
    pub async fn wait(&self, parity: u64, timeout: Duration) -> bool {
        let start = Instant::now();
        let mut spins = 0u32;
        while !self.drained(parity) {
            if start.elapsed() > timeout || self.unfenced.load(Ordering::SeqCst) {
                return false;
            }
            spins += 1;
            if spins < 64 {
                reactor::yield_now().await;
            } else {
                reactor::sleep(Duration::from_micros(50)).await;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flip_waits_for_the_old_parity_only_in_both_fence_modes() {
        for asymmetric in [false, barrier::asymmetric()] {
            let e = Epochs::with_fences(3, asymmetric);
            let old = e.enter(2);
            let p = e.flip();
            assert_eq!(p, old);
            // Counted after the flip: the new parity, not waited for.
            let new = e.enter(1);
            assert_ne!(new, old);
            assert!(!e.drained(p), "asymmetric {asymmetric}");
            e.exit(2, old);
            assert!(e.drained(p), "asymmetric {asymmetric}");
            assert!(!e.drained(new));
            e.exit(1, new);
            assert!(e.drained(new));
        }
    }

    #[test]
    fn a_failed_fence_fails_the_drain_until_one_succeeds() {
        let e = Epochs::with_fences(1, false);
        let p = e.flip();
        e.unfenced.store(true, Ordering::SeqCst);
        assert!(!e.drained(p));
        e.unfenced.store(false, Ordering::SeqCst);
        assert!(e.drained(p));
    }

    #[test]
    fn counts_from_many_threads_drain_with_asymmetric_fences() {
        // I/O threads count and uncount while this one flips and drains:
        // every drain ends, and the counts come back to zero.
        let e = std::sync::Arc::new(Epochs::new(3));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (1..=2u32)
            .map(|core| {
                let (e, stop) = (e.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let p = e.enter(core);
                        std::hint::spin_loop();
                        e.exit(core, p);
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            let p = e.flip();
            let start = Instant::now();
            while !e.drained(p) {
                assert!(start.elapsed() < Duration::from_secs(10), "drain hung");
                std::hint::spin_loop();
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            assert!(w.join().is_ok(), "an I/O thread panicked");
        }
        assert!(e.drained(0) && e.drained(1));
    }
}
