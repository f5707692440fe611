//! B-tree node layout: a 32-byte header, then `max_entries` u64 keys, then
//! `max_entries` values of `value_size` bytes. Only the first `nr_entries`
//! of each are meaningful.

use super::checksum::{seal, verify, BlockKind};
use super::le::{put_u32, put_u64, u32_at, u64_at};
use crate::{Block, MetadataError, BLOCK_SIZE};

pub const INTERNAL_NODE: u32 = 1;
pub const LEAF_NODE: u32 = 2;
pub const HEADER_LEN: usize = 32;

const FLAGS: usize = 0x04;
const BLOCKNR: usize = 0x08;
const NR_ENTRIES: usize = 0x10;
const MAX_ENTRIES: usize = 0x14;
const VALUE_SIZE: usize = 0x18;
const _: () = assert!(VALUE_SIZE + 8 == HEADER_LEN);

/// Entries per node for a value size: as many as fit, rounded down to a
/// multiple of 3 (so 2 -> 3 splits and 3 -> 2 merges come out even).
pub const fn max_entries(value_size: usize) -> usize {
    // The tree's own sizes without a division (a lookup asks per node).
    match value_size {
        8 => 252,
        16 => 168,
        24 => 126,
        _ => ((BLOCK_SIZE - HEADER_LEN) / (8 + value_size)) / 3 * 3,
    }
}

const _: () = assert!(max_entries(8) == (BLOCK_SIZE - HEADER_LEN) / 16 / 3 * 3);
const _: () = assert!(max_entries(16) == (BLOCK_SIZE - HEADER_LEN) / 24 / 3 * 3);
const _: () = assert!(max_entries(24) == (BLOCK_SIZE - HEADER_LEN) / 32 / 3 * 3);
const _: () = assert!(max_entries(8) == 252 && max_entries(16) == 168);
const _: () = assert!(max_entries(24) == 126 && max_entries(4) == 336);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Internal,
    Leaf,
}

/// A decoded node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    pub value_size: usize,
    pub keys: Vec<u64>,
    /// `keys.len() * value_size` bytes.
    pub values: Vec<u8>,
}

impl Node {
    pub fn new(kind: NodeKind, value_size: usize) -> Node {
        let value_size = if kind == NodeKind::Internal {
            8
        } else {
            value_size
        };
        Node {
            kind,
            value_size,
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn max_entries(&self) -> usize {
        max_entries(self.value_size)
    }

    pub fn value(&self, i: usize) -> &[u8] {
        &self.values[i * self.value_size..(i + 1) * self.value_size]
    }

    pub fn value_u64(&self, i: usize) -> u64 {
        u64_at(self.value(i), 0)
    }

    pub fn push(&mut self, key: u64, value: &[u8]) {
        debug_assert_eq!(value.len(), self.value_size);
        self.keys.push(key);
        self.values.extend_from_slice(value);
    }

    /// Encodes at location `at`, unused slots zeroed, checksum last.
    pub fn pack(&self, at: u64) -> Box<Block> {
        let mut b = self.pack_unsealed(at);
        seal(&mut b, BlockKind::Node);
        b
    }

    /// Encodes without the checksum (sealed when the block is written).
    pub fn pack_unsealed(&self, at: u64) -> Box<Block> {
        let mut b: Box<Block> = Box::new([0u8; BLOCK_SIZE]);
        let max = self.max_entries();
        debug_assert!(self.len() <= max);
        put_u32(
            &mut b[..],
            FLAGS,
            if self.kind == NodeKind::Internal {
                INTERNAL_NODE
            } else {
                LEAF_NODE
            },
        );
        put_u64(&mut b[..], BLOCKNR, at);
        put_u32(&mut b[..], NR_ENTRIES, self.len() as u32);
        put_u32(&mut b[..], MAX_ENTRIES, max as u32);
        put_u32(&mut b[..], VALUE_SIZE, self.value_size as u32);
        for (i, k) in self.keys.iter().enumerate() {
            put_u64(&mut b[..], HEADER_LEN + 8 * i, *k);
        }
        let vstart = HEADER_LEN + 8 * max;
        b[vstart..vstart + self.values.len()].copy_from_slice(&self.values);
        b
    }

    /// Decodes the node at `at`, checking what the kernel and thin_check
    /// check. `leaf_value_size` is what this tree's leaves must hold.
    pub fn unpack(b: &Block, at: u64, leaf_value_size: usize) -> Result<Node, MetadataError> {
        verify(b, BlockKind::Node, at)?;
        Node::unpack_verified(b, at, leaf_value_size)
    }

    /// As `unpack`, for a block whose checksum was already verified (it
    /// came through the cache, or we wrote it).
    pub fn unpack_verified(
        b: &Block,
        at: u64,
        leaf_value_size: usize,
    ) -> Result<Node, MetadataError> {
        let corrupt = |what: String| MetadataError::Corrupt { block: at, what };
        let recorded = u64_at(b, BLOCKNR);
        if recorded != at {
            return Err(MetadataError::Location {
                block: at,
                recorded,
            });
        }
        let kind = match u32_at(b, FLAGS) {
            INTERNAL_NODE => NodeKind::Internal,
            LEAF_NODE => NodeKind::Leaf,
            f => {
                return Err(corrupt(format!(
                    "btree node flags {f:#x} are neither internal nor leaf"
                )))
            }
        };
        let nr = u32_at(b, NR_ENTRIES) as usize;
        let max = u32_at(b, MAX_ENTRIES) as usize;
        let vs = u32_at(b, VALUE_SIZE) as usize;
        let want_vs = if kind == NodeKind::Internal {
            8
        } else {
            leaf_value_size
        };
        if vs != want_vs {
            return Err(corrupt(format!(
                "btree node value size {vs}, expected {want_vs}"
            )));
        }
        if HEADER_LEN + (8 + vs) * max > BLOCK_SIZE || nr > max {
            return Err(corrupt(format!(
                "btree node with {nr} of {max} entries of {vs} bytes does not fit"
            )));
        }
        if kind == NodeKind::Internal && nr == 0 {
            return Err(corrupt("empty internal btree node".into()));
        }
        let keys: Vec<u64> = (0..nr).map(|i| u64_at(b, HEADER_LEN + 8 * i)).collect();
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(corrupt(
                "btree node keys are not strictly increasing".into(),
            ));
        }
        let vstart = HEADER_LEN + 8 * max;
        let values = b[vstart..vstart + nr * vs].to_vec();
        Ok(Node {
            kind,
            value_size: vs,
            keys,
            values,
        })
    }
}

/// A node block's header, checked to fit its block.
pub struct NodeLayout {
    pub internal: bool,
    pub nr: usize,
    pub max: usize,
    pub vs: usize,
}

/// Reads and checks the header of node block `b` (at `at`).
pub fn layout(b: &Block, at: u64, leaf_value_size: usize) -> Result<NodeLayout, MetadataError> {
    let nr = u32_at(b, NR_ENTRIES) as usize;
    let max = u32_at(b, MAX_ENTRIES) as usize;
    let internal = match u32_at(b, FLAGS) {
        INTERNAL_NODE => true,
        LEAF_NODE => false,
        f => {
            return Err(MetadataError::Corrupt {
                block: at,
                what: format!("btree node flags {f:#x}"),
            })
        }
    };
    let vs = if internal { 8 } else { leaf_value_size };
    if nr > max || HEADER_LEN + (8 + vs) * max > BLOCK_SIZE || u32_at(b, VALUE_SIZE) as usize != vs
    {
        return Err(MetadataError::Corrupt {
            block: at,
            what: "btree node header does not fit its block".into(),
        });
    }
    Ok(NodeLayout {
        internal,
        nr,
        max,
        vs,
    })
}

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

/// Slots either side of the guessed one that a search loads at once.
const WINDOW: usize = 8;

/// Finds `key` in the verified node block `b`, whose keys lie in `range`.
/// A header that does not fit its block reads as an error, never a panic.
///
/// A cold node costs memory latency (about 150 ns here), and a plain
/// binary search pays one dependent miss per probe, after the header's. So
/// the search guesses the key's slot and loads the header, the keys and
/// the values around the guess with independent loads: a cold leaf costs
/// one overlapped miss. The first guess is made before the header is read,
/// when the parent's range is no wider than a node: dense mapping keys (a
/// volume written in order) put the key exactly at `key - lo`. Otherwise,
/// or if the key is not in that window, a second guess interpolates
/// between the node's first key and its bound; if that misses too, the
/// whole key array is loaded at once and binary-searched.
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
        touch(b, 0, 1);
        touch_window(b, g, std_max, leaf_value_size, std_max);
    }
    let NodeLayout {
        internal,
        nr,
        max,
        vs,
    } = layout(b, at, leaf_value_size)?;
    if nr == 0 || key < key_at(b, 0) {
        return Ok(Step::Absent);
    }
    let i = match early.and_then(|g| find_near(b, nr, key, g)) {
        Some(i) => i,
        None => {
            let g = late_guess(b, nr, key, range);
            touch_window(b, g, max, vs, nr);
            find_near(b, nr, key, g).unwrap_or_else(|| {
                touch(b, HEADER_LEN, HEADER_LEN + 8 * nr);
                upper_bound(b, nr, key) - 1
            })
        }
    };
    let v = HEADER_LEN + 8 * max + vs * i;
    if internal {
        let hi = if i + 1 < nr {
            key_at(b, i + 1)
        } else {
            range.hi
        };
        let lo = key_at(b, i);
        Ok(Step::Child(u64_at(b, v), KeyRange { lo, hi }))
    } else if key_at(b, i) == key {
        Ok(Step::Found(&b[v..v + vs]))
    } else {
        Ok(Step::Absent)
    }
}

/// The slot `key` would have in a node with keys in `range`, before its
/// header is read: its offset in the range when the range is no wider
/// than a node's capacity (dense keys, exact if none is missing). None for
/// wider ranges (the fill decides; guessing it misses more often than not)
/// and at the root, whose range is unknown.
fn early_guess(range: KeyRange, key: u64, max: usize) -> Option<usize> {
    let off = key.checked_sub(range.lo)?;
    let span = range.hi.checked_sub(range.lo)?;
    (range.hi != u64::MAX && off < span && span <= max as u64).then_some(off as usize)
}

/// The slot of `key` interpolated between the node's first key and its
/// bound (its last key when the bound is unknown), once the header is read.
/// The caller has checked `nr > 0` and that the first key is `<= key`.
fn late_guess(b: &Block, nr: usize, key: u64, range: KeyRange) -> usize {
    let k0 = key_at(b, 0);
    let end = if range.hi == u64::MAX || range.hi <= k0 {
        key_at(b, nr - 1).saturating_add(1)
    } else {
        range.hi
    };
    interpolate(key - k0, nr, end.saturating_sub(k0).max(1)).min(nr - 1)
}

/// `off * n / span`, in 64 bits when it fits (a 128-bit division is a
/// library call, several times slower).
fn interpolate(off: u64, n: usize, span: u64) -> usize {
    match off.checked_mul(n as u64) {
        Some(p) => (p / span) as usize,
        None => (off as u128 * n as u128 / span as u128) as usize,
    }
}

/// Loads the keys and values of the slots around `g` (at most `nr`).
#[inline]
fn touch_window(b: &Block, g: usize, max: usize, vs: usize, nr: usize) {
    let (lo, hi) = (g.saturating_sub(WINDOW), (g + WINDOW + 1).min(nr).min(max));
    if lo >= hi {
        return;
    }
    touch(b, HEADER_LEN + 8 * lo, HEADER_LEN + 8 * (hi + 1).min(max));
    let values = HEADER_LEN + 8 * max;
    touch(b, values + vs * lo, values + vs * hi);
}

/// The slot of the last key `<= key`, if it lies in the window around `g`
/// (the key at or past the window's end must be greater). The caller has
/// checked that the first key is `<= key`. A right guess costs two loads.
fn find_near(b: &Block, nr: usize, key: u64, g: usize) -> Option<usize> {
    let g = g.min(nr - 1);
    if key_at(b, g) <= key && (g + 1 == nr || key < key_at(b, g + 1)) {
        return Some(g);
    }
    let (lo, hi) = (g.saturating_sub(WINDOW), (g + WINDOW + 1).min(nr));
    (key_at(b, lo) <= key && (hi == nr || key < key_at(b, hi)))
        .then(|| upper_bound_from(b, lo, hi, key) - 1)
}

/// Loads one byte of every cache line of `b[from..to]`, independently, so
/// the misses overlap instead of queueing behind each other.
#[inline]
fn touch(b: &Block, from: usize, to: usize) {
    let to = to.min(b.len());
    if from >= to {
        return;
    }
    let mut x = b[to - 1];
    let mut at = from;
    while at < to {
        x ^= b[at];
        at += 64;
    }
    std::hint::black_box(x);
}

/// Key `i` of a node block.
pub fn key_at(b: &Block, i: usize) -> u64 {
    u64_at(b, HEADER_LEN + 8 * i)
}

/// Index of the first of the block's `nr` keys greater than `key`.
pub fn upper_bound(b: &Block, nr: usize, key: u64) -> usize {
    upper_bound_from(b, 0, nr, key)
}

/// Index of the first key greater than `key` among keys `lo..hi` (`hi`
/// when none is).
fn upper_bound_from(b: &Block, lo: usize, hi: usize, key: u64) -> usize {
    let (mut lo, mut hi) = (lo, hi);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if key_at(b, mid) <= key {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdata::values::BlockTime;

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

    /// Device 1's mapping leaf from the format spec (block 10): our
    /// encoding must reproduce its stored checksum 0xf2822a85.
    #[test]
    fn matches_a_real_leaf() {
        let mut n = Node::new(NodeKind::Leaf, 8);
        for (k, d) in [(0u64, 0u64), (1, 1), (2, 2), (10, 100)] {
            n.push(
                k,
                &BlockTime { block: d, time: 0 }
                    .pack()
                    .unwrap()
                    .to_le_bytes(),
            );
        }
        let b = n.pack(10);
        assert_eq!(&b[..4], &[0x85, 0x2a, 0x82, 0xf2]);
        assert_eq!(&b[0x800..0x808], &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[0x818..0x820], &[0, 0, 0, 0x64, 0, 0, 0, 0]);
        assert_eq!(Node::unpack(&b, 10, 8).unwrap(), n);
    }

    #[test]
    fn bad_nodes_are_refused() {
        let mut n = Node::new(NodeKind::Leaf, 24);
        n.push(1, &[0; 24]);
        n.push(5, &[1; 24]);
        let good = n.pack(4);
        assert!(Node::unpack(&good, 4, 24).is_ok());
        assert!(matches!(
            Node::unpack(&good, 5, 24),
            Err(MetadataError::Checksum { .. } | MetadataError::Location { .. })
        ));
        assert!(matches!(
            Node::unpack(&good, 4, 8),
            Err(MetadataError::Corrupt { .. })
        ));
        // Each field made wrong and the block re-sealed, so only that field
        // is wrong: keys out of order, more entries than fit, bad flags, a
        // max_entries that overruns the block. Every one reads as Corrupt,
        // and the raw-block readers (search, layout) refuse them too.
        let damage: [(usize, u64, bool); 4] = [
            (HEADER_LEN, 9, true),
            (NR_ENTRIES, 500, false),
            (FLAGS, 3, false),
            (MAX_ENTRIES, 4000, false),
        ];
        for (off, v, wide) in damage {
            let mut b = good.clone();
            if wide {
                put_u64(&mut b[..], off, v);
            } else {
                put_u32(&mut b[..], off, v as u32);
            }
            seal(&mut b, BlockKind::Node);
            assert!(
                matches!(Node::unpack(&b, 4, 24), Err(MetadataError::Corrupt { .. })),
                "field at {off:#x}"
            );
            if off != HEADER_LEN {
                assert!(
                    layout(&b, 4, 24).is_err() && search(&b, 4, 1, 24, KeyRange::ALL).is_err(),
                    "raw read of field {off:#x}"
                );
            }
        }
    }
}
