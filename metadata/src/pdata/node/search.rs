//! One lookup step on a raw node block: the child to follow, or the value
//! found. Every lookup repeats it once per level, so it decodes nothing,
//! checks the header once and then indexes slices the header was checked
//! against, and it prefetches the cache lines it will need together.

use super::{layout, max_entries, NodeLayout, HEADER_LEN};
use crate::{Block, MetadataError};

/// One step of a lookup made on the raw block, without decoding it.
pub enum Step<'a> {
    Absent,
    /// The child to follow and the range its keys lie in.
    Child(u64, KeyRange),
    Found(&'a [u8]),
}

/// The keys a node may hold, as far as its parent says: `lo` is the
/// parent's separator for it, every key is below `hi`. The root's range is
/// unknown (`KeyRange::ALL`). Only a hint: a corrupt parent costs speed,
/// never a wrong answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub lo: u64,
    pub hi: u64,
}

impl KeyRange {
    pub const ALL: KeyRange = KeyRange {
        lo: 0,
        hi: u64::MAX,
    };
}

/// Slots either side of the guessed one that a search prefetches.
const WINDOW: usize = 8;

/// Finds `key` in the verified node block `b`, whose keys lie in `range`.
/// A header that does not fit its block reads as an error, never a panic.
///
/// A cold node costs memory latency (about 150 ns here), and a plain
/// binary search pays one dependent miss per probe, after the header's. So
/// the search guesses the key's slot and prefetches the header, the keys
/// and the values around the guess together: a cold leaf costs one
/// overlapped miss. A prefetch, unlike a load, retires at once, so the CPU
/// runs ahead into the caller's next lookup while the lines come in. The first guess is made before the header is read,
/// when the parent's range is no wider than a node: dense mapping keys (a
/// volume written in order) put the key exactly at `key - lo`. Otherwise,
/// or if the key is not in that window, a second guess interpolates
/// between the node's first key and its bound; if that misses too, the
/// whole key array is binary-searched.
#[inline]
pub fn search(
    b: &Block,
    at: u64,
    key: u64,
    leaf_value_size: usize,
    range: KeyRange,
) -> Result<Step<'_>, MetadataError> {
    let std_max = max_entries(leaf_value_size);
    let early = early_guess(range, key, std_max);
    if let Some(g) = early {
        prefetch_range(b, 0, 1);
        prefetch_window(b, g, std_max, leaf_value_size, std_max);
    }
    let NodeLayout {
        internal,
        nr,
        max,
        vs,
    } = layout(b, at, leaf_value_size)?;
    // `layout` checked that `max` keys and values fit the block and that
    // `nr <= max`, so neither slice can fail; from here on a slot below
    // `nr` indexes both without another check.
    let keys = Keys(b[HEADER_LEN..HEADER_LEN + 8 * nr].as_chunks::<8>().0);
    let values = &b[HEADER_LEN + 8 * max..HEADER_LEN + 8 * max + vs * nr];
    let Some(first) = keys.get(0) else {
        return Ok(Step::Absent);
    };
    if key < first {
        return Ok(Step::Absent);
    }
    let i = match early.and_then(|g| keys.near(key, g)) {
        Some(i) => i,
        None => {
            let g = late_guess(keys, first, key, range);
            prefetch_window(b, g, max, vs, nr);
            keys.near(key, g).unwrap_or_else(|| {
                prefetch_range(b, HEADER_LEN, HEADER_LEN + 8 * nr);
                keys.last_at_most(key, 0, nr)
            })
        }
    };
    let (k, v) = (keys.at(i), &values[vs * i..vs * i + vs]);
    if internal {
        let child = u64::from_le_bytes(v[..8].try_into().unwrap_or_default());
        let hi = keys.get(i + 1).unwrap_or(range.hi);
        Ok(Step::Child(child, KeyRange { lo: k, hi }))
    } else if k == key {
        Ok(Step::Found(v))
    } else {
        Ok(Step::Absent)
    }
}

/// A node's `nr` keys, as stored (little-endian).
#[derive(Clone, Copy)]
struct Keys<'a>(&'a [[u8; 8]]);

impl Keys<'_> {
    #[inline]
    fn get(self, i: usize) -> Option<u64> {
        self.0.get(i).map(|k| u64::from_le_bytes(*k))
    }

    /// Key `i < nr`.
    #[inline]
    fn at(self, i: usize) -> u64 {
        u64::from_le_bytes(self.0[i])
    }

    /// The slot of the last key `<= key`, if it lies in the window around
    /// `g` (the key at or past the window's end must be greater). The
    /// caller has checked that the first key is `<= key`. A right guess
    /// costs two loads.
    #[inline]
    fn near(self, key: u64, g: usize) -> Option<usize> {
        let n = self.0.len();
        let g = g.min(n - 1);
        let above = |i: usize| i == n || key < self.at(i);
        if self.at(g) <= key && above(g + 1) {
            return Some(g);
        }
        let (lo, hi) = (g.saturating_sub(WINDOW), (g + WINDOW + 1).min(n));
        (self.at(lo) <= key && above(hi)).then(|| self.last_at_most(key, lo, hi))
    }

    /// The slot of the last key `<= key` among `lo..hi`, whose first is.
    /// On keys out of order (a corrupt node) it is some slot in `lo..hi`.
    #[inline]
    fn last_at_most(self, key: u64, lo: usize, hi: usize) -> usize {
        let past = self.0[lo..hi].partition_point(|k| u64::from_le_bytes(*k) <= key);
        lo + past.max(1) - 1
    }
}

/// The slot `key` would have in a node with keys in `range`, before its
/// header is read: its offset in the range when the range is no wider
/// than a node's capacity (dense keys, exact if none is missing). None for
/// wider ranges (the fill decides; guessing it misses more often than not)
/// and at the root, whose range is unknown.
#[inline]
fn early_guess(range: KeyRange, key: u64, max: usize) -> Option<usize> {
    let off = key.checked_sub(range.lo)?;
    let span = range.hi.checked_sub(range.lo)?;
    (range.hi != u64::MAX && off < span && span <= max as u64).then_some(off as usize)
}

/// The slot of `key` interpolated between the node's first key and its
/// bound (its last key when the bound is unknown), once the header is read.
/// The caller has checked that the first key is `<= key`.
#[inline]
fn late_guess(keys: Keys, first: u64, key: u64, range: KeyRange) -> usize {
    let nr = keys.0.len();
    let end = if range.hi == u64::MAX || range.hi <= first {
        keys.at(nr - 1).saturating_add(1)
    } else {
        range.hi
    };
    interpolate(key - first, nr, end.saturating_sub(first).max(1)).min(nr - 1)
}

/// `off * n / span`, in 64 bits when it fits (a 128-bit division is a
/// library call, several times slower).
fn interpolate(off: u64, n: usize, span: u64) -> usize {
    match off.checked_mul(n as u64) {
        Some(p) => (p / span) as usize,
        None => (off as u128 * n as u128 / span as u128) as usize,
    }
}

/// Prefetches the keys and values of the slots around `g` (at most `nr`).
#[inline]
fn prefetch_window(b: &Block, g: usize, max: usize, vs: usize, nr: usize) {
    let (lo, hi) = (g.saturating_sub(WINDOW), (g + WINDOW + 1).min(nr).min(max));
    if lo >= hi {
        return;
    }
    prefetch_range(b, HEADER_LEN + 8 * lo, HEADER_LEN + 8 * (hi + 1).min(max));
    let values = HEADER_LEN + 8 * max;
    prefetch_range(b, values + vs * lo, values + vs * hi);
}

/// Starts loading every cache line of `b[from..to]` at once, so the
/// misses overlap instead of queueing behind each other.
#[inline]
fn prefetch_range(b: &Block, from: usize, to: usize) {
    let to = to.min(b.len());
    let mut at = from;
    while at < to {
        prefetch(&b[at]);
        at += 64;
    }
    if from < to {
        prefetch(&b[to - 1]);
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn prefetch(byte: &u8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch is a hint: it never faults, writes or makes a
    // later access see anything different, and `byte` is a live reference.
    // Unlike a load it retires at once, so the search behind it goes on
    // while the lines come in.
    unsafe { _mm_prefetch::<_MM_HINT_T0>((byte as *const u8).cast()) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn prefetch(byte: &u8) {
    std::hint::black_box(*byte);
}

#[cfg(test)]
mod tests {
    use super::super::{Node, NodeKind};
    use super::*;

    /// What `search` must answer, by a linear scan of the decoded node.
    fn expected(n: &Node, key: u64) -> Option<(usize, Vec<u8>)> {
        let i = n.keys.iter().rposition(|&k| k <= key)?;
        let v = n.values[i * n.value_size..(i + 1) * n.value_size].to_vec();
        match n.kind {
            NodeKind::Internal => Some((i, v)),
            NodeKind::Leaf => (n.keys[i] == key).then_some((i, v)),
        }
    }

    /// The guesses only choose which cache lines to load first: dense,
    /// sparse, clustered and skewed keys, with the right range, a
    /// wrong one (a corrupt parent) or none, give the answer a linear scan
    /// gives, for every key around and between the node's keys.
    #[test]
    fn search_answers_as_a_scan_whatever_the_guess() {
        let layouts: Vec<Vec<u64>> = vec![
            (100..352).collect(),                     // full, dense
            (100..226).collect(),                     // half full, dense
            (0..126).map(|i| 1000 + i * 7).collect(), // evenly sparse
            (0..120)
                .map(|i| if i < 100 { i } else { 1 << 40 | i })
                .collect(), // clustered
            (0..200).map(|i| i * i * i).collect(),    // skewed
            vec![5],
            vec![],
        ];
        for keys in &layouts {
            for (kind, vs) in [
                (NodeKind::Leaf, 8),
                (NodeKind::Internal, 8),
                (NodeKind::Leaf, 24),
            ] {
                if keys.len() > max_entries(vs) {
                    continue;
                }
                let mut n = Node::new(kind, vs);
                for &k in keys {
                    n.push(k, &vec![(k % 251) as u8; n.value_size]);
                }
                let b = n.pack(9);
                let (first, last) = (
                    keys.first().copied().unwrap_or(0),
                    keys.last().copied().unwrap_or(0),
                );
                let ranges = [
                    KeyRange::ALL,
                    KeyRange {
                        lo: first,
                        hi: last + 1,
                    },
                    KeyRange {
                        lo: first,
                        hi: first + keys.len() as u64,
                    },
                    KeyRange {
                        lo: first + 3,
                        hi: first + 10,
                    },
                    KeyRange { lo: 0, hi: 1 },
                    KeyRange {
                        lo: last + 5,
                        hi: first,
                    },
                    KeyRange {
                        lo: u64::MAX - 1,
                        hi: u64::MAX,
                    },
                ];
                let mut probes: Vec<u64> = keys
                    .iter()
                    .flat_map(|&k| [k.saturating_sub(1), k, k + 1])
                    .collect();
                probes.extend([0, u64::MAX, first / 2, last.saturating_mul(2)]);
                for range in ranges {
                    for &key in &probes {
                        let got = match search(&b, 9, key, vs, range) {
                            Ok(Step::Absent) => None,
                            Ok(Step::Found(v)) => Some(v.to_vec()),
                            Ok(Step::Child(c, _)) => Some(c.to_le_bytes().to_vec()),
                            Err(e) => panic!("{e}"),
                        };
                        assert_eq!(
                            got,
                            expected(&n, key).map(|(_, v)| v),
                            "{kind:?} key {key} range {range:?}"
                        );
                    }
                }
            }
        }
    }

    /// Keys out of order (a corrupt node that passed its checksum) give
    /// some answer, never a panic, whatever the range.
    #[test]
    fn unsorted_keys_do_not_panic() {
        for kind in [NodeKind::Leaf, NodeKind::Internal] {
            let mut n = Node::new(kind, 8);
            for k in [50u64, 3, 900, 1, 7, u64::MAX, 0, 40] {
                n.push(k, &k.to_le_bytes());
            }
            let b = n.pack(2);
            for range in [
                KeyRange::ALL,
                KeyRange { lo: 50, hi: 40 },
                KeyRange { lo: 3, hi: 11 },
            ] {
                for key in [0, 1, 3, 7, 40, 45, 50, 900, 1000, u64::MAX] {
                    let _ = search(&b, 2, key, 8, range);
                }
            }
        }
    }

    /// An internal node hands its child the range between its separators.
    #[test]
    fn a_child_gets_the_range_between_separators() {
        let mut n = Node::new(NodeKind::Internal, 8);
        for (k, c) in [(0u64, 10u64), (100, 11), (200, 12)] {
            n.push(k, &c.to_le_bytes());
        }
        let b = n.pack(3);
        let range = KeyRange { lo: 0, hi: 300 };
        for (key, child, lo, hi) in [(5, 10, 0, 100), (100, 11, 100, 200), (299, 12, 200, 300)] {
            match search(&b, 3, key, 8, range) {
                Ok(Step::Child(c, r)) => assert_eq!((c, r), (child, KeyRange { lo, hi })),
                _ => panic!("key {key}: no child"),
            }
        }
    }
}
