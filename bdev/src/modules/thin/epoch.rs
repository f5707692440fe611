//! Waiting for the fast path's in-flight I/O without stopping it.
//!
//! Each I/O core counts the volume I/O it has sent to the data bdev in one
//! of two per-core counters, chosen by the volume's epoch parity. To drain,
//! the metadata core first publishes what must change (busy entries, the
//! frozen flag), then bumps the epoch and waits for the old parity's
//! counters to reach zero: an I/O counted in the new parity looked at the
//! table after the change, so it saw it. Drains of one volume run one at a
//! time (the caller serializes them), so a parity is never reused while a
//! drain still waits on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[repr(align(64))]
#[derive(Default)]
struct PerCore([AtomicU64; 2]);

pub struct Epochs {
    epoch: AtomicU64,
    cores: Box<[PerCore]>,
}

impl Epochs {
    pub fn new(max_core: u32) -> Epochs {
        Epochs {
            epoch: AtomicU64::new(0),
            cores: (0..=max_core).map(|_| PerCore::default()).collect(),
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
            c.0[p as usize].fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == e {
                return p;
            }
            c.0[p as usize].fetch_sub(1, Ordering::Release);
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
        self.epoch.fetch_add(1, Ordering::SeqCst) & 1
    }

    /// Whether every I/O counted in `parity` has finished.
    pub fn drained(&self, parity: u64) -> bool {
        self.cores
            .iter()
            .all(|c| c.0[parity as usize & 1].load(Ordering::Acquire) == 0)
    }

    /// Waits (yielding to the reactor) until `parity` drains or `timeout`
    /// passes; false on timeout.
    pub async fn wait(&self, parity: u64, timeout: Duration) -> bool {
        let start = Instant::now();
        let mut spins = 0u32;
        while !self.drained(parity) {
            if start.elapsed() > timeout {
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
