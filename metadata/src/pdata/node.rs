//! B-tree node layout: a 32-byte header, then `max_entries` u64 keys, then
//! `max_entries` values of `value_size` bytes. Only the first `nr_entries`
//! of each are meaningful.

mod search;
pub use search::{search, KeyRange, Step};

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
#[inline]
pub fn layout(b: &Block, at: u64, leaf_value_size: usize) -> Result<NodeLayout, MetadataError> {
    let nr = u32_at(b, NR_ENTRIES) as usize;
    let max = u32_at(b, MAX_ENTRIES) as usize;
    let internal = match u32_at(b, FLAGS) {
        INTERNAL_NODE => true,
        LEAF_NODE => false,
        f => return Err(bad_header(at, format!("btree node flags {f:#x}"))),
    };
    let vs = if internal { 8 } else { leaf_value_size };
    if nr > max || HEADER_LEN + (8 + vs) * max > BLOCK_SIZE || u32_at(b, VALUE_SIZE) as usize != vs
    {
        return Err(bad_header(
            at,
            "btree node header does not fit its block".into(),
        ));
    }
    Ok(NodeLayout {
        internal,
        nr,
        max,
        vs,
    })
}

/// Kept out of line: `layout` is on every lookup's path, its errors never.
#[cold]
#[inline(never)]
fn bad_header(block: u64, what: String) -> MetadataError {
    MetadataError::Corrupt { block, what }
}

/// Key `i` of a node block.
pub fn key_at(b: &Block, i: usize) -> u64 {
    u64_at(b, HEADER_LEN + 8 * i)
}

/// Index of the first of the block's `nr` keys greater than `key`.
pub fn upper_bound(b: &Block, nr: usize, key: u64) -> usize {
    let (mut lo, mut hi) = (0, nr);
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
