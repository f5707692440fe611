//! Reading a B-tree: every leaf entry in key order, with the structural
//! checks a reader must make (node validity, key ranges against the
//! parent, equal leaf depth, no cycles, blocks inside the device).

use std::collections::HashSet;

use super::node::{Node, NodeKind};
use crate::io::BlockIo;
use crate::MetadataError;

/// Called for every node reached: its block and decoded contents.
pub type NodeVisitor<'a> = dyn FnMut(u64, &Node) + 'a;

/// Reads the whole tree at `root`, returning its leaf entries in order.
pub fn read_tree(
    io: &dyn BlockIo,
    root: u64,
    leaf_value_size: usize,
    visit: &mut NodeVisitor<'_>,
) -> Result<Vec<(u64, Vec<u8>)>, MetadataError> {
    let mut out = Vec::new();
    let mut path = HashSet::new();
    let mut leaf_depth = None;
    walk(
        io,
        root,
        leaf_value_size,
        0,
        (0, u64::MAX),
        &mut path,
        &mut leaf_depth,
        visit,
        &mut out,
    )?;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn walk(
    io: &dyn BlockIo,
    b: u64,
    vs: usize,
    depth: usize,
    (lo, hi): (u64, u64),
    path: &mut HashSet<u64>,
    leaf_depth: &mut Option<usize>,
    visit: &mut NodeVisitor<'_>,
    out: &mut Vec<(u64, Vec<u8>)>,
) -> Result<(), MetadataError> {
    let corrupt = |what: String| MetadataError::Corrupt { block: b, what };
    if b == 0 || b >= io.nr_blocks() {
        return Err(corrupt(format!(
            "btree pointer to block {b} outside the metadata device"
        )));
    }
    if depth > 16 || !path.insert(b) {
        return Err(corrupt("btree loop: a node is its own ancestor".into()));
    }
    let node = Node::unpack(&*io.read(b)?, b, vs)?;
    visit(b, &node);
    if let (Some(first), Some(last)) = (node.keys.first(), node.keys.last()) {
        if *first < lo || *last >= hi {
            return Err(corrupt(format!(
                "btree keys {first}..={last} outside the parent's range {lo}..{hi}"
            )));
        }
    }
    match node.kind {
        NodeKind::Leaf => {
            if *leaf_depth.get_or_insert(depth) != depth {
                return Err(corrupt("btree leaves at different depths".into()));
            }
            out.extend(
                node.keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (*k, node.value(i).to_vec())),
            );
        }
        NodeKind::Internal => {
            for i in 0..node.len() {
                let upper = node.keys.get(i + 1).copied().unwrap_or(hi);
                walk(
                    io,
                    node.value_u64(i),
                    vs,
                    depth + 1,
                    (node.keys[i], upper),
                    path,
                    leaf_depth,
                    visit,
                    out,
                )?;
            }
        }
    }
    path.remove(&b);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::btree_builder::build;
    use super::super::checksum::{seal, BlockKind};
    use super::*;
    use crate::io::MemIo;

    fn image(n: u64) -> (MemIo, u64) {
        let entries: Vec<(u64, Vec<u8>)> = (0..n)
            .map(|k| (k * 3, (k * 7).to_le_bytes().to_vec()))
            .collect();
        let mut next = 0u64;
        let (root, nodes) = build(&entries, 8, &mut || {
            next += 1;
            Ok(next)
        })
        .unwrap();
        let mut io = MemIo::new(next + 1);
        let writes: Vec<(u64, &crate::Block)> = nodes.iter().map(|(b, d)| (*b, &**d)).collect();
        io.write(&writes).unwrap();
        (io, root)
    }

    #[test]
    fn builds_and_reads_back_trees_of_every_height() {
        for n in [0u64, 1, 252, 253, 70_000] {
            let (io, root) = image(n);
            let mut nodes = 0;
            let got = read_tree(&io, root, 8, &mut |_, _| nodes += 1).unwrap();
            assert_eq!(got.len() as u64, n);
            assert!(got
                .iter()
                .enumerate()
                .all(|(i, (k, v))| *k == i as u64 * 3 && v[..] == (i as u64 * 7).to_le_bytes()));
            assert_eq!(
                nodes,
                super::super::btree_builder::nodes_needed(n as usize, 8)
            );
        }
    }

    #[test]
    fn loops_bad_pointers_and_damage_are_errors() {
        let (mut io, root) = image(70_000);
        // Point the root's first child at the root itself: a loop.
        let mut rootnode = Node::unpack(&io.read(root).unwrap(), root, 8).unwrap();
        rootnode.values[..8].copy_from_slice(&root.to_le_bytes());
        let b = rootnode.pack(root);
        io.write(&[(root, &b)]).unwrap();
        assert!(matches!(
            read_tree(&io, root, 8, &mut |_, _| {}),
            Err(MetadataError::Corrupt { .. })
        ));
        let (io, _) = image(10);
        assert!(read_tree(&io, 0, 8, &mut |_, _| {}).is_err());
        assert!(read_tree(&io, 999, 8, &mut |_, _| {}).is_err());
        let (mut io, root) = image(300);
        let blk = io.block_mut(1).unwrap();
        blk[100] ^= 0xff;
        assert!(matches!(
            read_tree(&io, root, 8, &mut |_, _| {}),
            Err(MetadataError::Checksum { .. })
        ));
        let _ = (seal, BlockKind::Node);
    }
}
