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
        let c = Arc::new(PassCounts::default());
        let mut all = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|c| Arc::strong_count(c) > 1 || !c.idle());
        all.push(c.clone());
        c
    }

    /// Counts an I/O in `c`, a channel's counters from `counts`, and
    /// reads what the I/O will act on with `read` (a table entry); returns
    /// the parity to give to `PassCounts::exit`, and what `read` returned.
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
    pub fn enter_reading<T>(&self, c: &PassCounts, mut read: impl FnMut() -> T) -> (u64, T) {
        loop {
            if let Some(entered) = self.try_enter_reading(c, &mut read) {
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
        c: &PassCounts,
        read: impl FnOnce() -> T,
    ) -> Option<(u64, T)> {
        let e = self.epoch.load(Ordering::SeqCst);
        let v = read();
        let p = e & 1;
        let n = c.counter(p);
        if self.asymmetric {
            // One writer per counter: a plain increment. The compiler
            // keeps it before the load below; the hardware may not, and
            // `flip`'s fence on this core covers that.
            n.store(n.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
            compiler_fence(Ordering::SeqCst);
        } else {
            n.fetch_add(1, Ordering::SeqCst);
        }
        if self.epoch.load(Ordering::SeqCst) == e {
            return Some((p, v));
        }
        n.store(n.load(Ordering::Relaxed).wrapping_sub(1), Ordering::Release);
        None
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
                .channels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                // SeqCst, as the bump before it: a count ordered before
                // the bump is then seen (a plain load on x86 all the same).
                .all(|c| c.counter(parity).load(Ordering::SeqCst) == 0)
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
            let e = Epochs::with_fences(asymmetric);
            let (a, b) = (e.counts(), e.counts());
            let old = e.enter_reading(&a, || ()).0;
            let p = e.flip();
            assert_eq!(p, old);
            // Counted after the flip: the new parity, not waited for.
            let new = e.enter_reading(&b, || ()).0;
            assert_ne!(new, old);
            assert!(!e.drained(p), "asymmetric {asymmetric}");
            a.exit(old);
            assert!(e.drained(p), "asymmetric {asymmetric}");
            assert!(!e.drained(new));
            b.exit(new);
            assert!(e.drained(new));
        }
    }

    #[test]
    fn a_closed_channel_is_waited_for_until_its_io_is_done() {
        let e = Epochs::with_fences(false);
        let a = e.counts();
        let p = e.enter_reading(&a, || ()).0;
        let held = a.clone();
        drop(a);
        // Registering another channel prunes only idle, closed ones.
        let _b = e.counts();
        let q = e.flip();
        assert_eq!(q, p);
        assert!(!e.drained(q));
        held.exit(p);
        assert!(e.drained(q));
        drop(held);
        let _c = e.counts();
        assert_eq!(e.channels.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_failed_fence_fails_the_drain_until_one_succeeds() {
        let e = Epochs::with_fences(false);
        let p = e.flip();
        e.unfenced.store(true, Ordering::SeqCst);
        assert!(!e.drained(p));
        e.unfenced.store(false, Ordering::SeqCst);
        assert!(e.drained(p));
    }

    #[test]
    fn after_a_drain_no_io_acts_on_what_was_read_before_the_change() {
        // The table is one word; each I/O thread notes the version it read
        // while the I/O is counted. After a publish, a flip and a drain,
        // no thread may still hold an older version.
        for asymmetric in [false, barrier::asymmetric()] {
            let e = Arc::new(Epochs::with_fences(asymmetric));
            let table = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let idle = u64::MAX;
            let holding: Vec<_> = (0..2).map(|_| Arc::new(AtomicU64::new(idle))).collect();
            let workers: Vec<_> = holding
                .iter()
                .map(|h| {
                    let (e, table, stop, h) = (e.clone(), table.clone(), stop.clone(), h.clone());
                    let c = e.counts();
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            // A slow read, to widen any window a wrong
                            // order of loads would leave.
                            let (p, v) = e.enter_reading(&c, || {
                                let v = table.load(Ordering::SeqCst);
                                for _ in 0..200 {
                                    std::hint::spin_loop();
                                }
                                v
                            });
                            h.store(v, Ordering::SeqCst);
                            for _ in 0..200 {
                                std::hint::spin_loop();
                            }
                            h.store(idle, Ordering::SeqCst);
                            c.exit(p);
                        }
                    })
                })
                .collect();
            for version in 1..=2000 {
                table.store(version, Ordering::SeqCst);
                let p = e.flip();
                let start = Instant::now();
                while !e.drained(p) {
                    assert!(start.elapsed() < Duration::from_secs(10), "drain hung");
                    std::hint::spin_loop();
                }
                for h in &holding {
                    let v = h.load(Ordering::SeqCst);
                    assert!(
                        v == idle || v >= version,
                        "an I/O acts on version {v} after {version}"
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
        let e = Arc::new(Epochs::new());
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (1..=2u32)
            .map(|_| {
                let (e, stop) = (e.clone(), stop.clone());
                let c = e.counts();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let p = e.enter_reading(&c, || ()).0;
                        std::hint::spin_loop();
                        c.exit(p);
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
