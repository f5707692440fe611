//! A cheap monotonic tick counter for per-I/O timestamps.
//!
//! Latency accounting stamps every I/O twice; at tens of millions of I/Os per
//! second a vDSO `clock_gettime` (about 20 ns) per stamp would be most of the
//! budget, so on x86_64 we read the invariant TSC (a few ns) and convert ticks
//! to time with a rate calibrated once against the OS clock.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

thread_local! {
    /// The caller's clock while a driven reactor (`DrivenReactor`, and the
    /// simulated set built on it) is in a turn on this thread, in ticks;
    /// None: the counter. Const-initialised and without a destructor, so
    /// reading it is one thread-local load.
    static TURN_NOW: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Sets (Some) or clears (None) the clock `ticks` reads on this thread:
/// a driven reactor's entry and exit.
pub(crate) fn set_turn_clock(now: Option<u64>) {
    TURN_NOW.with(|c| c.set(now));
}

/// Current tick count. Monotonic and comparable across cores on machines with
/// an invariant TSC (every x86_64 server of the last decade); elsewhere it is
/// nanoseconds since an arbitrary process-wide epoch.
///
/// Inside a driven reactor's turn it is the caller's clock instead (the
/// `now` of the turn; see `DrivenReactor`), so that everything timed above
/// the reactors follows it: the bdev layer's stamps and timeouts, the thin
/// pool's commit timer. The threaded reactors pay for that on the I/O
/// path, where this is read once per I/O (bdev's completion stamp; the
/// submit stamp is taken from it when the submit runs in a completion):
/// one thread-local load, a compare and a branch never taken.
/// bench/thin-instructions.sh counted 3 instructions and 1 load per I/O
/// more, all in `bdev::io::finish` (raw null bdev 581.6 -> 584.8
/// instructions per I/O, thin volume 686.6 -> 689.8: 0.5%). Chosen over
/// the alternatives: a process-wide "a driven set exists" flag costs the
/// same load; a second clock function would put the choice in every
/// caller above (or a driven bdev would not follow the caller's time);
/// a cargo feature would be unified on in any build that includes the
/// fio engine or the simulator's tests.
#[inline(always)]
pub fn ticks() -> u64 {
    if let Some(t) = TURN_NOW.with(|c| c.get()) {
        return t;
    }
    counter()
}

/// The counter itself, whatever clock a driven turn set.
#[inline(always)]
fn counter() -> u64 {
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

/// Reads `ticks`, not the counter: asked for first inside a driven turn,
/// it measures the caller's standing clock, and the rate comes out as 1.
/// `ReactorSet::start` and `DrivenSet::new` ask for it before any turn for
/// that reason. The simulated set does not, and so far runs on exactly
/// that rate (the first `ticks_hz` of a test process is in its first
/// turn): its virtual time moves one tick per busy step and every delay
/// under a second is 0 ticks. Its seeds replay across processes because
/// of it; see sim.rs before changing it.
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
