//! This process's CPU time, for the tests that check an idle reactor
//! parks instead of spinning (each in its own binary, so no other test's
//! time is counted).

use std::time::Duration;

/// User plus system time this process has used so far.
pub fn process_cpu() -> Duration {
    // SAFETY: rusage is plain integers, for which all zeros is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage struct into a live local.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
