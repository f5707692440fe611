//! Waiting for the fast path's in-flight I/O without stopping it.
//!
//! Each volume channel (one per I/O core) counts the volume I/O it has
//! sent to the data bdev in one of its two counters, chosen by the
//! volume's epoch parity. The channel holds its counters itself, so an I/O
//! reaches them in one hop from the channel, not through the volume; they
//! are the bdev layer's `PassCounts`, so a fast-path I/O's count is taken
//! back as it completes with no call into this module. To drain,
//! the metadata core first publishes what must change (busy entries, the
//! frozen flag), then bumps the epoch and waits for the old parity's
//! counters to reach zero: an I/O counted in the new parity looked at the
//! table after the change, so it saw it. Drains of one volume run one at a
//! time (the caller serializes them), so a parity is never reused while a
//! drain still waits on it. The fence between a count and the table read
//! is the flip's `membarrier` where the kernel has it (`barrier.rs`), else
//! a locked add per I/O.

use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::barrier;
use bdev::PassCounts;

/// In this order: what every I/O reads first (see `VolumeShared`).
#[repr(C)]
pub struct Epochs {
    epoch: AtomicU64,
    /// Counts are plain stores; `flip` fences every core.
    asymmetric: bool,
    /// A flip's fence failed: no wait may report a drain.
    unfenced: AtomicBool,
    /// Every channel's counters, kept until the channel is gone and its
    /// counts are zero.
    channels: Mutex<Vec<Arc<PassCounts>>>,
}

impl Epochs {
    pub fn new() -> Epochs {
        Self::with_fences(barrier::asymmetric())
    }

    fn with_fences(asymmetric: bool) -> Epochs {
        Epochs {
            epoch: AtomicU64::new(0),
            asymmetric,
            unfenced: AtomicBool::new(false),
            channels: Mutex::new(Vec::new()),
        }
    }

    /// Counters for a new channel, which the drains from now on wait for.
    pub fn counts(&self) -> Arc<PassCounts> {
        let counts = Arc::new(PassCounts::default());
        let mut all = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|other| Arc::strong_count(other) > 1 || !other.idle());
        all.push(counts.clone());
        counts
    }

    /// Counts an I/O in `counts`, a channel's counters from
    /// `Epochs::counts`, and reads what the I/O will act on with `read` (a
    /// table entry); returns the parity to give to `PassCounts::exit`, and
    /// what `read` returned.
    ///
    /// `read` runs after the epoch is loaded and before the count, so that
    /// its loads overlap the count instead of waiting behind it (a locked
    /// add holds back every later load). That is as safe as reading after
    /// the count: the epoch is loaded again after both, and only an I/O
    /// that finds it unchanged goes on. A drain publishes its change
    /// before it bumps the epoch; an I/O whose second load still sees the
    /// old epoch made its count before the bump in the fence order (the
    /// locked add, or `flip`'s fence on this core), so the drain waits for
    /// it whatever `read` saw; one that sees the new epoch reads again.
    /// What `read` must not do is run before the first load, which the
    /// first load's ordering (and x86's load order) rules out.
    #[inline(always)]
    pub fn enter_reading<T>(&self, counts: &PassCounts, mut read: impl FnMut() -> T) -> (u64, T) {
        loop {
            if let Some(entered) = self.try_enter_reading(counts, &mut read) {
                return entered;
            }
        }
    }

    /// `enter_reading` once: `None`, nothing counted, when a drain began
    /// meanwhile. A fast path that leaves such an I/O to a slower one has
    /// no loop, so nothing of it is held in registers across iterations.
    #[inline(always)]
    pub fn try_enter_reading<T>(
        &self,
        counts: &PassCounts,
        read: impl FnOnce() -> T,
    ) -> Option<(u64, T)> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let value = read();
        let parity = epoch & 1;
        let counter = counts.counter(parity);
        if self.asymmetric {
            // One writer per counter: a plain increment. The compiler
            // keeps it before the load below; the hardware may not, and
            // `flip`'s fence on this core covers that.
            counter.store(
                counter.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
            compiler_fence(Ordering::SeqCst);
        } else {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        if self.epoch.load(Ordering::SeqCst) == epoch {
            return Some((parity, value));
        }
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_sub(1),
            Ordering::Release,
        );
        None
    }

    /// Starts a drain: I/O counted from now on sees what was published
    /// before this call. Returns the parity to wait for.
    pub fn flip(&self) -> u64 {
        let parity = self.epoch.fetch_add(1, Ordering::SeqCst) & 1;
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
        parity
    }

    /// Whether every I/O counted in `parity` has finished.
    pub fn drained(&self, parity: u64) -> bool {
        !self.unfenced.load(Ordering::SeqCst)
            && self
                .channels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                // SeqCst, as the bump before it: a count ordered before
                // the bump is then seen (a plain load on x86 all the same).
                .all(|counts| counts.counter(parity).load(Ordering::SeqCst) == 0)
    }

    /// Waits (yielding to the reactor) until `parity` drains or `timeout`
    /// passes; false on timeout.
    pub async fn wait(&self, parity: u64, timeout: Duration) -> bool {
        // The reactor clock, not the wall clock: a simulated set runs on
        // virtual time.
        let deadline = reactor::ticks().saturating_add(reactor::duration_to_ticks(timeout));
        let mut spins = 0u32;
        while !self.drained(parity) {
            if reactor::ticks() > deadline || self.unfenced.load(Ordering::SeqCst) {
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
    use std::time::Instant;

    #[test]
    fn a_flip_waits_for_the_old_parity_only_in_both_fence_modes() {
        for asymmetric in [false, barrier::asymmetric()] {
            let epochs = Epochs::with_fences(asymmetric);
            let (a, b) = (epochs.counts(), epochs.counts());
            let old = epochs.enter_reading(&a, || ()).0;
            let parity = epochs.flip();
            assert_eq!(parity, old);
            // Counted after the flip: the new parity, not waited for.
            let new = epochs.enter_reading(&b, || ()).0;
            assert_ne!(new, old);
            assert!(!epochs.drained(parity), "asymmetric {asymmetric}");
            a.exit(old);
            assert!(epochs.drained(parity), "asymmetric {asymmetric}");
            assert!(!epochs.drained(new));
            b.exit(new);
            assert!(epochs.drained(new));
        }
    }

    #[test]
    fn a_closed_channel_is_waited_for_until_its_io_is_done() {
        let epochs = Epochs::with_fences(false);
        let a = epochs.counts();
        let parity = epochs.enter_reading(&a, || ()).0;
        let held = a.clone();
        drop(a);
        // Registering another channel prunes only idle, closed ones.
        let _b = epochs.counts();
        let flipped = epochs.flip();
        assert_eq!(flipped, parity);
        assert!(!epochs.drained(flipped));
        held.exit(parity);
        assert!(epochs.drained(flipped));
        drop(held);
        let _c = epochs.counts();
        assert_eq!(epochs.channels.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_failed_fence_fails_the_drain_until_one_succeeds() {
        let epochs = Epochs::with_fences(false);
        let parity = epochs.flip();
        epochs.unfenced.store(true, Ordering::SeqCst);
        assert!(!epochs.drained(parity));
        epochs.unfenced.store(false, Ordering::SeqCst);
        assert!(epochs.drained(parity));
    }

    #[test]
    fn after_a_drain_no_io_acts_on_what_was_read_before_the_change() {
        // The table is one word; each I/O thread notes the version it read
        // while the I/O is counted. After a publish, a flip and a drain,
        // no thread may still hold an older version.
        for asymmetric in [false, barrier::asymmetric()] {
            let epochs = Arc::new(Epochs::with_fences(asymmetric));
            let table = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let idle = u64::MAX;
            let holding: Vec<_> = (0..2).map(|_| Arc::new(AtomicU64::new(idle))).collect();
            let workers: Vec<_> = holding
                .iter()
                .map(|h| {
                    let (epochs, table, stop, h) =
                        (epochs.clone(), table.clone(), stop.clone(), h.clone());
                    let counts = epochs.counts();
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            // A slow read, to widen any window a wrong
                            // order of loads would leave.
                            let (parity, version) = epochs.enter_reading(&counts, || {
                                let version = table.load(Ordering::SeqCst);
                                for _ in 0..200 {
                                    std::hint::spin_loop();
                                }
                                version
                            });
                            h.store(version, Ordering::SeqCst);
                            for _ in 0..200 {
                                std::hint::spin_loop();
                            }
                            h.store(idle, Ordering::SeqCst);
                            counts.exit(parity);
                        }
                    })
                })
                .collect();
            for version in 1..=2000 {
                table.store(version, Ordering::SeqCst);
                let parity = epochs.flip();
                let start = Instant::now();
                while !epochs.drained(parity) {
                    assert!(start.elapsed() < Duration::from_secs(10), "drain hung");
                    std::hint::spin_loop();
                }
                for h in &holding {
                    let seen = h.load(Ordering::SeqCst);
                    assert!(
                        seen == idle || seen >= version,
                        "an I/O acts on version {seen} after {version}"
                    );
                }
            }
            stop.store(true, Ordering::Relaxed);
            for w in workers {
                assert!(w.join().is_ok(), "an I/O thread panicked");
            }
        }
    }

    #[test]
    fn counts_from_many_threads_drain_with_asymmetric_fences() {
        // I/O threads count and uncount while this one flips and drains:
        // every drain ends, and the counts come back to zero.
        let epochs = Arc::new(Epochs::new());
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (1..=2u32)
            .map(|_| {
                let (epochs, stop) = (epochs.clone(), stop.clone());
                let counts = epochs.counts();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let parity = epochs.enter_reading(&counts, || ()).0;
                        std::hint::spin_loop();
                        counts.exit(parity);
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            let parity = epochs.flip();
            let start = Instant::now();
            while !epochs.drained(parity) {
                assert!(start.elapsed() < Duration::from_secs(10), "drain hung");
                std::hint::spin_loop();
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            assert!(w.join().is_ok(), "an I/O thread panicked");
        }
        assert!(epochs.drained(0) && epochs.drained(1));
    }
}
