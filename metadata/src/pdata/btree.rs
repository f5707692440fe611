//! Copy-on-write B-tree operations on the transaction manager: lookup,
//! insert (splitting full nodes on the way down), remove (merging or
//! redistributing an underfull child on the way back up, so every non-root
//! node keeps at least a third of its entries), and whole-tree delete.
//!
//! Values carry reference-count hooks by kind: when a shared node is
//! copied, the copy takes a reference on everything it points at; a
//! removed or overwritten value gives its reference back.

use super::node::{KeyRange, Node, NodeKind};
use super::tm::{SearchResult, Tm};
use super::values::BlockTime;
use crate::MetadataError;

/// What a tree's leaf values point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// Plain data (device details, index entries, counts).
    Plain,
    /// A `block_time`: references a data block.
    DataBlock,
    /// A level-1 tree root: references a metadata subtree.
    Subtree,
}

/// A tree's value shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tree {
    pub value_size: usize,
    pub kind: ValueKind,
}

impl Tree {
    /// Level-1 mapping trees: virtual block -> block_time.
    pub const MAPPINGS: Tree = Tree {
        value_size: 8,
        kind: ValueKind::DataBlock,
    };
    /// The level-0 tree: device id -> level-1 root.
    pub const DEVICES: Tree = Tree {
        value_size: 8,
        kind: ValueKind::Subtree,
    };
    /// The details tree: device id -> details.
    pub const DETAILS: Tree = Tree {
        value_size: 24,
        kind: ValueKind::Plain,
    };
}

/// Deeper than any tree the format can hold (4M blocks / 84-way fan-out).
const MAX_DEPTH: usize = 16;

fn too_deep(b: u64) -> MetadataError {
    MetadataError::Corrupt {
        block: b,
        what: "btree deeper than possible (a loop?)".into(),
    }
}

/// Index of the largest key <= k.
fn lower_bound(keys: &[u64], k: u64) -> Option<usize> {
    match keys.binary_search(&k) {
        Ok(i) => Some(i),
        Err(0) => None,
        Err(i) => Some(i - 1),
    }
}

fn u64_of(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8]))
}

fn set_value(n: &mut Node, i: usize, v: &[u8]) {
    let vs = n.value_size;
    n.values[i * vs..(i + 1) * vs].copy_from_slice(v);
}

fn insert_entry(n: &mut Node, i: usize, key: u64, v: &[u8]) {
    let vs = n.value_size;
    n.keys.insert(i, key);
    n.values.splice(i * vs..i * vs, v.iter().copied());
}

fn remove_entry(n: &mut Node, i: usize) {
    let vs = n.value_size;
    n.keys.remove(i);
    n.values.drain(i * vs..(i + 1) * vs);
}

/// Moves the upper half of `n` into a new node.
fn split_off(n: &mut Node) -> Node {
    let mid = n.len() / 2;
    split_off_at(n, mid)
}

/// A new, empty tree.
pub fn empty(tm: &mut Tm, t: Tree) -> Result<u64, MetadataError> {
    let b = tm.new_block()?;
    tm.write_node(b, &Node::new(NodeKind::Leaf, t.value_size))?;
    Ok(b)
}

pub fn lookup(tm: &mut Tm, root: u64, key: u64, t: Tree) -> Result<Option<Vec<u8>>, MetadataError> {
    lookup_with(tm, root, key, t, <[u8]>::to_vec)
}

/// `lookup` that hands the value's bytes to `read` in place (no copy).
pub fn lookup_with<V>(
    tm: &mut Tm,
    root: u64,
    key: u64,
    t: Tree,
    read: impl FnOnce(&[u8]) -> V,
) -> Result<Option<V>, MetadataError> {
    let (mut b, mut range) = (root, KeyRange::ALL);
    let mut read = Some(read);
    for _ in 0..MAX_DEPTH {
        let step = tm.search_node(b, key, range, t.value_size, |v| read.take().map(|f| f(v)))?;
        match step {
            SearchResult::Absent => return Ok(None),
            SearchResult::Found(v) => return Ok(v),
            SearchResult::Child(c, r) => (b, range) = (c, r),
        }
    }
    Err(too_deep(root))
}

/// Every entry with `lo <= key < hi`, in order.
pub fn range(
    tm: &mut Tm,
    root: u64,
    lo: u64,
    hi: u64,
    t: Tree,
) -> Result<Vec<(u64, Vec<u8>)>, MetadataError> {
    let mut out = Vec::new();
    range_rec(tm, root, lo, hi, t, 0, &mut out)?;
    Ok(out)
}

fn range_rec(
    tm: &mut Tm,
    b: u64,
    lo: u64,
    hi: u64,
    t: Tree,
    depth: usize,
    out: &mut Vec<(u64, Vec<u8>)>,
) -> Result<(), MetadataError> {
    if depth >= MAX_DEPTH {
        return Err(too_deep(b));
    }
    let n = tm.read_node(b, t.value_size)?;
    match n.kind {
        NodeKind::Leaf => {
            out.extend(
                (0..n.len())
                    .filter(|&i| n.keys[i] >= lo && n.keys[i] < hi)
                    .map(|i| (n.keys[i], n.value(i).to_vec())),
            );
        }
        NodeKind::Internal => {
            for i in 0..n.len() {
                let upper = n.keys.get(i + 1).copied().unwrap_or(u64::MAX);
                if upper > lo && n.keys[i] < hi {
                    range_rec(tm, n.value_u64(i), lo, hi, t, depth + 1, out)?;
                }
            }
        }
    }
    Ok(())
}

/// Takes the references a copy of a shared node holds.
fn inc_children(tm: &mut Tm, n: &Node, t: Tree) {
    for i in 0..n.len() {
        match (n.kind, t.kind) {
            (NodeKind::Internal, _) | (NodeKind::Leaf, ValueKind::Subtree) => {
                tm.meta_inc(n.value_u64(i))
            }
            (NodeKind::Leaf, ValueKind::DataBlock) => {
                tm.data_inc(BlockTime::unpack(n.value_u64(i)).block)
            }
            (NodeKind::Leaf, ValueKind::Plain) => {}
        }
    }
}

/// Gives back the reference a value holds.
fn dec_value(tm: &mut Tm, v: &[u8], t: Tree) -> Result<(), MetadataError> {
    match t.kind {
        ValueKind::Plain => Ok(()),
        ValueKind::DataBlock => {
            tm.data_dec(BlockTime::unpack(u64_of(v)).block);
            Ok(())
        }
        ValueKind::Subtree => del(tm, u64_of(v), Tree::MAPPINGS),
    }
}

fn same_value(t: Tree, a: &[u8], b: &[u8]) -> bool {
    match t.kind {
        ValueKind::DataBlock => {
            BlockTime::unpack(u64_of(a)).block == BlockTime::unpack(u64_of(b)).block
        }
        _ => a == b,
    }
}

/// Reads `b` and makes it writable: (its block in this transaction, node).
fn shadow(tm: &mut Tm, b: u64, t: Tree) -> Result<(u64, Node), MetadataError> {
    let node = tm.read_node(b, t.value_size)?;
    let (nb, shared) = tm.shadow(b)?;
    if shared {
        inc_children(tm, &node, t);
    }
    Ok((nb, node))
}

fn needs_split(n: &Node, key: u64) -> bool {
    n.len() >= n.max_entries() && !(n.kind == NodeKind::Leaf && n.keys.binary_search(&key).is_ok())
}

/// The common case done in place: every node on the path is this
/// transaction's own, no node needs a split and no parent key changes, so
/// only the leaf changes, and it is edited in its block bytes. `None` when
/// the general path is needed.
fn insert_in_place(
    tm: &mut Tm,
    root: u64,
    key: u64,
    value: &[u8],
    t: Tree,
    dec_on_overwrite: bool,
) -> Result<Option<bool>, MetadataError> {
    use super::node::{key_at, layout, upper_bound, NodeLayout};
    let mut b = root;
    for _ in 0..MAX_DEPTH {
        if !tm.owns(b) {
            return Ok(None);
        }
        let blk = tm.owned_node_mut(b).ok_or_else(|| too_deep(b))?;
        let NodeLayout {
            internal,
            nr,
            max,
            vs,
        } = layout(blk, b, t.value_size)?;
        let lo = upper_bound(blk, nr, key);
        let vstart = 32 + 8 * max;
        if internal {
            if lo == 0 {
                return Ok(None); // the first key would have to move down
            }
            let v = vstart + 8 * (lo - 1);
            b = u64::from_le_bytes(blk[v..v + 8].try_into().unwrap_or([0; 8]));
            continue;
        }
        if lo > 0 && key_at(blk, lo - 1) == key {
            let v = vstart + vs * (lo - 1);
            let old = blk[v..v + vs].to_vec();
            blk[v..v + vs].copy_from_slice(value);
            if dec_on_overwrite && !same_value(t, &old, value) {
                dec_value(tm, &old, t)?;
            }
            return Ok(Some(false));
        }
        if nr >= max {
            return Ok(None);
        }
        // Shift keys and values [lo, nr) up one slot, then fill slot lo.
        blk.copy_within(32 + 8 * lo..32 + 8 * nr, 32 + 8 * (lo + 1));
        blk.copy_within(vstart + vs * lo..vstart + vs * nr, vstart + vs * (lo + 1));
        blk[32 + 8 * lo..40 + 8 * lo].copy_from_slice(&key.to_le_bytes());
        blk[vstart + vs * lo..vstart + vs * (lo + 1)].copy_from_slice(value);
        blk[16..20].copy_from_slice(&(nr as u32 + 1).to_le_bytes());
        return Ok(Some(true));
    }
    Ok(None)
}

/// Inserts or overwrites `key`. On overwrite the old value's reference is
/// given back when `dec_on_overwrite` (and the value really changed).
/// Returns the new root and whether the key is new.
pub fn insert(
    tm: &mut Tm,
    root: u64,
    key: u64,
    value: &[u8],
    t: Tree,
    dec_on_overwrite: bool,
) -> Result<(u64, bool), MetadataError> {
    if value.len() != t.value_size {
        return Err(MetadataError::Invalid(format!(
            "value of {} bytes for a tree of {}",
            value.len(),
            t.value_size
        )));
    }
    if let Some(inserted) = insert_in_place(tm, root, key, value, t, dec_on_overwrite)? {
        return Ok((root, inserted));
    }
    let (r, mut cur) = shadow(tm, root, t)?;
    // Only nodes that change are re-encoded: a node this transaction
    // already owns, on a path that needs no split, stays as it is.
    let mut cur_modified = r != root;
    if needs_split(&cur, key) {
        cur_modified = true;
        // Split the root beneath itself: it keeps its block and becomes an
        // internal node over two new children, and the tree grows a level.
        let mut left = cur.clone();
        let right = split_off(&mut left);
        let (lb, rb) = (tm.new_block()?, tm.new_block()?);
        tm.write_node(lb, &left)?;
        tm.write_node(rb, &right)?;
        cur = Node::new(NodeKind::Internal, 8);
        cur.push(left.keys[0], &lb.to_le_bytes());
        cur.push(right.keys[0], &rb.to_le_bytes());
    }
    let mut cur_b = r;
    for _ in 0..MAX_DEPTH {
        if cur.kind == NodeKind::Leaf {
            let inserted = match cur.keys.binary_search(&key) {
                Ok(i) => {
                    let old = cur.value(i).to_vec();
                    if dec_on_overwrite && !same_value(t, &old, value) {
                        dec_value(tm, &old, t)?;
                    }
                    set_value(&mut cur, i, value);
                    false
                }
                Err(i) => {
                    insert_entry(&mut cur, i, key, value);
                    true
                }
            };
            tm.write_node(cur_b, &cur)?;
            return Ok((r, inserted));
        }
        let i = match lower_bound(&cur.keys, key) {
            Some(i) => i,
            None => {
                cur.keys[0] = key;
                cur_modified = true;
                0
            }
        };
        let old_child = cur.value_u64(i);
        let (cb, mut child) = shadow(tm, old_child, t)?;
        let mut child_modified = cb != old_child;
        if child_modified {
            set_value(&mut cur, i, &cb.to_le_bytes());
            cur_modified = true;
        }
        let (next_b, next) = if needs_split(&child, key) {
            let right = split_off(&mut child);
            let rb = tm.new_block()?;
            insert_entry(&mut cur, i + 1, right.keys[0], &rb.to_le_bytes());
            cur_modified = true;
            child_modified = true;
            if key >= right.keys[0] {
                tm.write_node(cb, &child)?;
                (rb, right)
            } else {
                tm.write_node(rb, &right)?;
                (cb, child)
            }
        } else {
            (cb, child)
        };
        if cur_modified {
            tm.write_node(cur_b, &cur)?;
        }
        cur_b = next_b;
        cur = next;
        cur_modified = child_modified;
    }
    Err(too_deep(root))
}

/// Removes `key`; returns the new root and the removed value (its
/// reference already given back).
pub fn remove(
    tm: &mut Tm,
    root: u64,
    key: u64,
    t: Tree,
) -> Result<(u64, Option<Vec<u8>>), MetadataError> {
    if lookup(tm, root, key, t)?.is_none() {
        return Ok((root, None));
    }
    let (mut r, old) = remove_rec(tm, root, key, t, 0)?;
    // A root left with one child hands the tree to that child.
    for _ in 0..MAX_DEPTH {
        let n = tm.read_node(r, t.value_size)?;
        if n.kind != NodeKind::Internal || n.len() != 1 {
            break;
        }
        let child = n.value_u64(0);
        tm.meta_dec(r);
        r = child;
    }
    dec_value(tm, &old, t)?;
    Ok((r, Some(old)))
}

fn remove_rec(
    tm: &mut Tm,
    b: u64,
    key: u64,
    t: Tree,
    depth: usize,
) -> Result<(u64, Vec<u8>), MetadataError> {
    if depth >= MAX_DEPTH {
        return Err(too_deep(b));
    }
    let missing = || MetadataError::Corrupt {
        block: b,
        what: format!("key {key} vanished during removal"),
    };
    let (nb, mut node) = shadow(tm, b, t)?;
    match node.kind {
        NodeKind::Leaf => {
            let i = node.keys.binary_search(&key).map_err(|_| missing())?;
            let old = node.value(i).to_vec();
            remove_entry(&mut node, i);
            tm.write_node(nb, &node)?;
            Ok((nb, old))
        }
        NodeKind::Internal => {
            let i = lower_bound(&node.keys, key).ok_or_else(missing)?;
            let (cb, old) = remove_rec(tm, node.value_u64(i), key, t, depth + 1)?;
            set_value(&mut node, i, &cb.to_le_bytes());
            let child = tm.read_node(cb, t.value_size)?;
            if child.len() < child.max_entries() / 3 && node.len() > 1 {
                rebalance(tm, &mut node, i, child, t)?;
            }
            tm.write_node(nb, &node)?;
            Ok((nb, old))
        }
    }
}

/// Fixes an underfull child `i` of `parent` with a neighbour: merge the two
/// if they fit in one node, else share their entries out evenly.
fn rebalance(
    tm: &mut Tm,
    parent: &mut Node,
    i: usize,
    child: Node,
    t: Tree,
) -> Result<(), MetadataError> {
    let (li, ri) = if i + 1 < parent.len() {
        (i, i + 1)
    } else {
        (i - 1, i)
    };
    let child_b = parent.value_u64(i);
    let (lb, mut left) = if li == i {
        (child_b, child.clone())
    } else {
        shadow(tm, parent.value_u64(li), t)?
    };
    let (rb, mut right) = if ri == i {
        (child_b, child)
    } else {
        shadow(tm, parent.value_u64(ri), t)?
    };
    set_value(parent, li, &lb.to_le_bytes());
    set_value(parent, ri, &rb.to_le_bytes());
    if left.len() + right.len() <= left.max_entries() {
        left.keys.append(&mut right.keys);
        left.values.append(&mut right.values);
        tm.write_node(lb, &left)?;
        remove_entry(parent, ri);
        // The right node's entries now live in the left one; only its
        // block goes.
        tm.meta_dec(rb);
    } else {
        let target = (left.len() + right.len()) / 2;
        let vs = left.value_size;
        if left.len() > target {
            let moved = split_off_at(&mut left, target);
            right.keys.splice(0..0, moved.keys);
            right.values.splice(0..0, moved.values);
        } else {
            let n = target - left.len();
            left.keys.extend(right.keys.drain(..n));
            left.values.extend(right.values.drain(..n * vs));
        }
        tm.write_node(lb, &left)?;
        tm.write_node(rb, &right)?;
        parent.keys[ri] = right.keys[0];
    }
    Ok(())
}

fn split_off_at(n: &mut Node, at: usize) -> Node {
    let vs = n.value_size;
    Node {
        kind: n.kind,
        value_size: vs,
        keys: n.keys.split_off(at),
        values: n.values.split_off(at * vs),
    }
}

/// Drops a reference to the tree at `b`: a shared node only loses a count;
/// an unshared one gives back everything it references and is freed.
pub fn del(tm: &mut Tm, b: u64, t: Tree) -> Result<(), MetadataError> {
    del_rec(tm, b, t, 0)
}

fn del_rec(tm: &mut Tm, b: u64, t: Tree, depth: usize) -> Result<(), MetadataError> {
    if depth >= MAX_DEPTH {
        return Err(too_deep(b));
    }
    if tm.meta_count(b) > 1 {
        tm.meta_dec(b);
        return Ok(());
    }
    let n = tm.read_node(b, t.value_size)?;
    for i in 0..n.len() {
        match n.kind {
            NodeKind::Internal => del_rec(tm, n.value_u64(i), t, depth + 1)?,
            NodeKind::Leaf => dec_value(tm, n.value(i), t)?,
        }
    }
    tm.meta_dec(b);
    Ok(())
}
