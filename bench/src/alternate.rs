//! `--alternate`: the targets take turns instead of running side by side.
//!
//! Each round runs every target alone for one slice and notes its IOPS. A
//! target's results over all its slices fold into one, as if it had run
//! for the whole time; and each round gives a ratio of every target to the
//! first, measured a fraction of a second apart. On a shared machine whose
//! speed drifts by tens of percent over seconds, the median of those ratios
//! moves far less than a ratio of separate runs.
//!
//! The order rotates from round to round (AB, BA, AB, ...): a turn's place
//! in its round matters by itself (the second of two identical RAM disks
//! measured 0.5-1% slower in fixed order), and rotating spreads that over
//! every target alike.

use std::time::Duration;

use reactor::ReactorSet;

use crate::job::{JobResult, JobSpec};
use crate::{run_jobs, BenchError};

/// Every round's IOPS, per target in the order they ran.
pub(crate) struct Turns {
    names: Vec<String>,
    slice: f64,
    rounds: Vec<Vec<f64>>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[(v.len() - 1) / 2])
}

impl Turns {
    /// The median over the rounds of `name`'s IOPS over the first target's.
    pub(crate) fn ratio_to_first(&self, name: &str) -> Option<f64> {
        let i = self.names.iter().position(|n| n == name)?;
        median(
            self.rounds
                .iter()
                .filter(|r| r[0] > 0.0)
                .map(|r| r[i] / r[0])
                .collect(),
        )
    }

    pub(crate) fn text(&self) -> String {
        let Some(first) = self.names.first() else {
            return String::new();
        };
        let mut s = format!(
            "\nAlternating {:.3} s turns, {} rounds; IOPS against {first} in the same round:\n",
            self.slice,
            self.rounds.len()
        );
        for (i, name) in self.names.iter().enumerate().skip(1) {
            let ratios: Vec<f64> = self
                .rounds
                .iter()
                .filter(|r| r[0] > 0.0)
                .map(|r| r[i] / r[0])
                .collect();
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if let Some(m) = median(ratios) {
                s += &format!("\t {name:<20}: median {m:.4}  (rounds {lo:.4} to {hi:.4})\n");
            }
        }
        s
    }
}

/// The order in which round `round` runs `n` targets: each round starts
/// one target further on.
fn turn_order(round: u64, n: usize) -> impl Iterator<Item = usize> {
    let first = (round % n.max(1) as u64) as usize;
    (0..n).map(move |k| (first + k) % n)
}

/// Runs `specs` grouped by bdev, one group at a time, `slice` seconds
/// (positive: checked with the other arguments) each, round after round
/// until each group has run `total` seconds.
pub(crate) fn run(
    set: &ReactorSet,
    specs: Vec<JobSpec>,
    total: f64,
    slice: f64,
) -> Result<(Vec<JobResult>, Turns), BenchError> {
    let mut groups: Vec<(String, Vec<JobSpec>)> = Vec::new();
    for s in specs {
        match groups.iter_mut().find(|(n, _)| *n == s.bdev) {
            Some((_, g)) => g.push(s),
            None => groups.push((s.bdev.clone(), vec![s])),
        }
    }
    let rounds = (total / slice).ceil().max(1.0) as u64;
    let mut folded: Vec<Vec<JobResult>> = groups.iter().map(|_| Vec::new()).collect();
    let mut turns = Turns {
        names: groups.iter().map(|(n, _)| n.clone()).collect(),
        slice,
        rounds: Vec::new(),
    };
    for round in 0..rounds {
        let mut iops = vec![0.0; groups.len()];
        for g in turn_order(round, groups.len()) {
            let (group, acc) = (&groups[g].1, &mut folded[g]);
            let specs = group
                .iter()
                .map(|s| JobSpec {
                    stream: round,
                    ..s.clone()
                })
                .collect();
            let (results, _) = run_jobs(set, specs, Some(Duration::from_secs_f64(slice)), false)?;
            iops[g] = results.iter().map(JobResult::iops).sum();
            if acc.is_empty() {
                *acc = results;
            } else {
                for (a, r) in acc.iter_mut().zip(results) {
                    a.fold(r);
                }
            }
        }
        turns.rounds.push(iops);
    }
    Ok((folded.into_iter().flatten().collect(), turns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_starts_one_target_further_on() {
        let order = |round, n| turn_order(round, n).collect::<Vec<_>>();
        assert_eq!(order(0, 2), [0, 1]);
        assert_eq!(order(1, 2), [1, 0]);
        assert_eq!(order(2, 2), [0, 1]);
        assert_eq!(order(4, 3), [1, 2, 0]);
        assert_eq!(order(7, 1), [0]);
        assert!(order(3, 0).is_empty());
    }

    #[test]
    fn ratios_are_per_round_medians_against_the_first_target() {
        let t = Turns {
            names: vec!["a".into(), "b".into()],
            slice: 0.1,
            rounds: vec![
                vec![100.0, 90.0],
                vec![200.0, 196.0],
                vec![50.0, 40.0],
                vec![0.0, 10.0],
            ],
        };
        assert_eq!(t.ratio_to_first("b"), Some(0.9));
        assert_eq!(t.ratio_to_first("a"), Some(1.0));
        assert_eq!(t.ratio_to_first("c"), None);
        assert!(t
            .text()
            .contains("median 0.9000  (rounds 0.8000 to 0.9800)"));
    }
}
