//! A cheap monotonic tick counter for per-I/O timestamps.
//!
//! Latency accounting stamps every I/O twice; at tens of millions of I/Os per
//! second a vDSO `clock_gettime` (about 20 ns) per stamp would be most of the
//! budget, so on x86_64 we read the invariant TSC (a few ns) and convert ticks
//! to time with a rate calibrated once against the OS clock.

use std::sync::OnceLock;

#[cfg(feature = "sim")]
thread_local! {
    /// The virtual clock of the simulated set running on this thread, in
    /// ticks (None: real time). Only builds with the `sim` feature (the
    /// tests') read it, so the daemon's clock costs nothing for it.
    pub(crate) static SIM_NOW: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}
use std::time::{Duration, Instant};

/// Current tick count. Monotonic and comparable across cores on machines with
/// an invariant TSC (every x86_64 server of the last decade); elsewhere it is
/// nanoseconds since an arbitrary process-wide epoch.
#[inline(always)]
pub fn ticks() -> u64 {
    #[cfg(feature = "sim")]
    if let Some(t) = SIM_NOW.with(|c| c.get()) {
        return t;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions: it reads a counter register and
        // touches no memory. Every x86_64 CPU implements it.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        epoch().elapsed().as_nanos() as u64
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Ticks per second, measured once per process (about 10 ms the first time).
pub fn ticks_hz() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(calibrate)
}

fn calibrate() -> u64 {
    if cfg!(not(target_arch = "x86_64")) {
        return 1_000_000_000;
    }
    let (t0, c0) = clock_pair();
    std::thread::sleep(Duration::from_millis(10));
    let (t1, c1) = clock_pair();
    let ns = t1.duration_since(t0).as_nanos().max(1);
    let hz = ((c1.wrapping_sub(c0)) as u128 * 1_000_000_000 / ns) as u64;
    hz.max(1)
}

/// A tick count and the OS clock's time at the same moment, give or take
/// the narrowest of a few brackets. A thread preempted between reading the
/// two clocks would pair them microseconds apart; over the 10 ms window
/// that skews the rate by tenths of a percent, enough for a timed delay to
/// end measurably early. A preempted bracket is wide, so it loses.
fn clock_pair() -> (Instant, u64) {
    let mut best: Option<(Duration, Instant, u64)> = None;
    for _ in 0..16 {
        let a = Instant::now();
        let c = ticks();
        let b = Instant::now();
        let width = b.duration_since(a);
        if best.is_none_or(|(w, ..)| width < w) {
            best = Some((width, a + width / 2, c));
        }
    }
    match best {
        Some((_, t, c)) => (t, c),
        None => (Instant::now(), ticks()),
    }
}

/// Converts a tick interval to nanoseconds.
#[inline]
pub fn ticks_to_ns(t: u64) -> u64 {
    ((t as u128 * 1_000_000_000) / ticks_hz() as u128) as u64
}

/// Converts a duration to ticks (saturating).
#[inline]
pub fn duration_to_ticks(d: Duration) -> u64 {
    let t = d.as_nanos() * ticks_hz() as u128 / 1_000_000_000;
    t.min(u64::MAX as u128) as u64
}
