//! Lays out a B-tree bottom-up from sorted entries (what thin_restore does,
//! and how the space maps' trees are written at commit). Leaves are filled
//! evenly, so every non-root node is at least half full.

use super::node::{max_entries, Node, NodeKind};
use crate::{Block, MetadataError};

/// Nodes encoded at their locations, ready to write.
pub type EncodedNodes = Vec<(u64, Box<Block>)>;

/// Builds a tree of `value_size`-byte values from `entries` (strictly
/// increasing keys). `alloc` hands out block numbers. Returns the root and
/// every node, encoded at its location.
pub fn build(
    entries: &[(u64, Vec<u8>)],
    value_size: usize,
    alloc: &mut dyn FnMut() -> Result<u64, MetadataError>,
) -> Result<(u64, EncodedNodes), MetadataError> {
    debug_assert!(
        entries.windows(2).all(|w| w[0].0 < w[1].0),
        "keys must be strictly increasing"
    );
    let mut out = Vec::new();
    // Level 0: leaves.
    let mut level: Vec<(u64, u64)> = Vec::new(); // (first key, block)
    for chunk in even_chunks(entries.len(), max_entries(value_size)) {
        let mut n = Node::new(NodeKind::Leaf, value_size);
        for (k, v) in &entries[chunk.clone()] {
            n.push(*k, v);
        }
        let b = alloc()?;
        level.push((n.keys.first().copied().unwrap_or(0), b));
        out.push((b, n.pack(b)));
    }
    // Internal levels until one node is left.
    while level.len() > 1 {
        let mut next = Vec::new();
        for chunk in even_chunks(level.len(), max_entries(8)) {
            let mut n = Node::new(NodeKind::Internal, 8);
            for (k, child) in &level[chunk.clone()] {
                n.push(*k, &child.to_le_bytes());
            }
            let b = alloc()?;
            next.push((n.keys[0], b));
            out.push((b, n.pack(b)));
        }
        level = next;
    }
    Ok((level[0].1, out))
}

/// Splits `n` items into the fewest chunks of at most `max`, sizes within
/// one of each other. Zero items still make one (empty) chunk: an empty
/// tree is one empty leaf.
fn even_chunks(n: usize, max: usize) -> Vec<std::ops::Range<usize>> {
    let parts = n.div_ceil(max).max(1);
    let (base, extra) = (n / parts, n % parts);
    let mut out = Vec::with_capacity(parts);
    let mut at = 0;
    for i in 0..parts {
        let len = base + usize::from(i < extra);
        out.push(at..at + len);
        at += len;
    }
    out
}

/// How many blocks `build` will allocate for `n` entries.
pub fn nodes_needed(n: usize, value_size: usize) -> usize {
    let mut count = n.div_ceil(max_entries(value_size)).max(1);
    let mut total = count;
    while count > 1 {
        count = count.div_ceil(max_entries(8));
        total += count;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_even_and_cover_everything() {
        assert_eq!(even_chunks(0, 252), vec![0..0]);
        assert_eq!(even_chunks(252, 252), vec![0..252]);
        assert_eq!(even_chunks(253, 252), vec![0..127, 127..253]);
        let c = even_chunks(1000, 252);
        assert_eq!(c.len(), 4);
        assert!(c.iter().all(|r| r.len() == 250));
    }

    #[test]
    fn node_counts_match_what_build_allocates() {
        for n in [0usize, 1, 252, 253, 10_000, 70_000] {
            let entries: Vec<(u64, Vec<u8>)> = (0..n as u64)
                .map(|k| (k, k.to_le_bytes().to_vec()))
                .collect();
            let mut next = 1u64;
            let (_, nodes) = build(&entries, 8, &mut || {
                next += 1;
                Ok(next)
            })
            .unwrap();
            assert_eq!(nodes.len(), nodes_needed(n, 8), "{n} entries");
        }
    }
}
