//! Autoextend, as LVM's thin-pool policy does it: when a pool's data (or
//! metadata) use crosses a threshold, the bdev under it grows by a percent
//! of the pool's size and the pool follows (a bdev resize reaches the pool
//! as for bdev_uring_rescan). A file grows by truncate; a bdev the daemon
//! cannot grow (a block device, memory) raises an event for a script,
//! once per crossing. One grow at a time per area: the next is decided
//! once the pool has reached the last target (or it stayed short for
//! `RETRY`), which is the rate limit: a writer filling the pool faster
//! than it grows waits in the pool's no-space queue, not on an error.

use std::time::{Duration, Instant};

/// How long a grow may take to reach the pool before another is tried.
const RETRY: Duration = Duration::from_secs(10);

/// One area's (data's or metadata's) autoextend state.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pending {
    /// The size (in the area's blocks) the last grow asked for.
    target: Option<u64>,
    since: Option<Instant>,
    /// The grow-me event was raised for this crossing.
    pub asked: bool,
}

/// The size to grow an area of `total` blocks (`free` of them free) to,
/// if it is at or above `threshold` percent used and no grow is pending.
pub(crate) fn decide(
    p: &mut Pending,
    total: u64,
    free: u64,
    threshold: u32,
    percent: u32,
    now: Instant,
) -> Option<u64> {
    if threshold == 0 || total == 0 {
        return None;
    }
    let used = total - free.min(total);
    if u128::from(used) * 100 < u128::from(threshold) * u128::from(total) {
        p.asked = false;
        return None;
    }
    if let (Some(target), Some(since)) = (p.target, p.since) {
        if total < target && now.duration_since(since) < RETRY {
            return None;
        }
    }
    let grow = (u128::from(total) * u128::from(percent) / 100).max(1);
    let to = u64::try_from(u128::from(total) + grow).unwrap_or(u64::MAX);
    p.target = Some(to);
    p.since = Some(now);
    Some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_once_per_crossing_until_the_pool_catches_up() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        assert_eq!(decide(&mut p, 100, 40, 70, 20, t0), None, "60% used");
        assert_eq!(
            decide(&mut p, 100, 30, 70, 20, t0),
            Some(120),
            "70%: grow by 20%"
        );
        assert_eq!(decide(&mut p, 100, 10, 70, 20, t0), None, "pending");
        // The pool reached 120 blocks: the next crossing grows again.
        assert_eq!(decide(&mut p, 120, 40, 70, 20, t0), None, "below again");
        assert_eq!(decide(&mut p, 120, 30, 70, 20, t0), Some(144));
        // A grow that never lands is tried again after RETRY.
        assert_eq!(
            decide(&mut p, 120, 0, 70, 20, t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(decide(&mut p, 120, 0, 70, 20, t0 + RETRY), Some(144));
        // Off, tiny pools, small percents.
        assert_eq!(decide(&mut Pending::default(), 100, 0, 0, 20, t0), None);
        assert_eq!(decide(&mut Pending::default(), 3, 0, 50, 1, t0), Some(4));
        assert_eq!(decide(&mut Pending::default(), 0, 0, 50, 20, t0), None);
    }
}
