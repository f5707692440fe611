//! Finding a pool's trees when the superblock that pointed at them is
//! lost. Metadata is copy-on-write, so a device holds the current trees
//! and, in blocks not yet reused, the trees of earlier transactions (the
//! previous one is always whole: its freed blocks are not reused until
//! the transaction after). Every valid btree node is read and tried as a
//! root; the complete trees are sorted into device-details trees and
//! top-level mapping trees, and pairs that name the same devices are
//! ranked: first pairs where each device's recorded `mapped_blocks`
//! equals the mappings its tree holds (both are written in the same
//! transaction), then the newest by time (mapping times and the devices'
//! creation and snapshot times), transaction id, and the furthest data
//! block mapped.
//!
//! Nothing on the device orders two transactions for certain once the
//! superblock is gone: when the last transaction neither took a snapshot
//! nor mapped a block further out than the one before (say it only deleted
//! a device), the previous transaction's trees may be the ones chosen.
//! thin_repair has the same limit; the report names the roots chosen so a
//! user can check the result with `ferrothin dump` before using it.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::io::BlockIo;
use crate::pdata::node::{Node, NodeKind};
use crate::pdata::values::{BlockTime, DeviceDetails};
use crate::thin::model::MAX_DEV_ID;
use crate::MetadataError;

/// The trees a rebuilt superblock should point at, and what their
/// contents say about the fields that were lost with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRoots {
    pub device_details_root: u64,
    pub data_mapping_root: u64,
    /// The highest transaction id any device's details record.
    pub max_transaction_id: u64,
    /// The highest mapping time: the superblock's time is at least this.
    pub max_time: u32,
    /// One past the highest data block mapped (0 if nothing is mapped).
    pub min_nr_data_blocks: u64,
    /// How many details/mapping tree pairs were considered.
    pub candidates: usize,
}

/// A tree below a root, read from the scanned nodes only.
struct Tree<'a> {
    leaves: Vec<(u64, &'a [u8])>,
    value_size: usize,
}

struct Scan {
    nodes: HashMap<u64, Node>,
}

impl Scan {
    fn read(io: &dyn BlockIo) -> Scan {
        let mut nodes = HashMap::new();
        for b in 1..io.nr_blocks() {
            let Ok(blk) = io.read(b) else { continue };
            // Internal nodes always carry 8-byte values; leaves carry 8
            // (mappings, top level) or 24 (device details).
            if let Some(n) = [8, DeviceDetails::SIZE]
                .iter()
                .find_map(|&vs| Node::unpack(&blk, b, vs).ok())
            {
                nodes.insert(b, n);
            }
        }
        Scan { nodes }
    }

    /// The leaves below `root` in key order, or `None` if any node below
    /// it is missing, of mixed leaf sizes or out of key order: a stale
    /// tree whose blocks were reused is not a candidate.
    fn tree(&self, root: u64) -> Option<Tree<'_>> {
        let mut leaves = Vec::new();
        let mut value_size = None;
        let mut seen = HashSet::new();
        self.walk(root, 0, &mut seen, &mut value_size, &mut leaves)?;
        if leaves.windows(2).any(|w| w[0].0 >= w[1].0) {
            return None;
        }
        Some(Tree {
            leaves,
            value_size: value_size?,
        })
    }

    fn walk<'a>(
        &'a self,
        b: u64,
        depth: usize,
        seen: &mut HashSet<u64>,
        value_size: &mut Option<usize>,
        leaves: &mut Vec<(u64, &'a [u8])>,
    ) -> Option<()> {
        if depth > 16 || !seen.insert(b) {
            return None;
        }
        let n = self.nodes.get(&b)?;
        match n.kind {
            NodeKind::Internal => {
                for i in 0..n.len() {
                    self.walk(n.value_u64(i), depth + 1, seen, value_size, leaves)?;
                }
            }
            NodeKind::Leaf => {
                if *value_size.get_or_insert(n.value_size) != n.value_size {
                    return None;
                }
                leaves.extend((0..n.len()).map(|i| (n.keys[i], n.value(i))));
            }
        }
        Some(())
    }
}

struct Details {
    root: u64,
    devices: Vec<(u64, DeviceDetails)>,
}

impl Details {
    fn max_transaction_id(&self) -> u64 {
        self.devices
            .iter()
            .map(|(_, d)| d.transaction_id)
            .max()
            .unwrap_or(0)
    }

    fn max_time(&self) -> u32 {
        self.devices
            .iter()
            .map(|(_, d)| d.snapshotted_time.max(d.creation_time))
            .max()
            .unwrap_or(0)
    }
}

struct Mappings {
    root: u64,
    /// Device id -> number of mappings, in id order.
    counts: Vec<(u64, u64)>,
    max_time: u32,
    max_block: Option<u64>,
}

/// Scans `io` for the current device-details and mapping trees.
pub fn find_roots(io: &dyn BlockIo) -> Result<FoundRoots, MetadataError> {
    let scan = Scan::read(io);
    // Every node is a possible root: a stale node may still point at a
    // block that was since reused for a current root, so "no node points
    // here" would miss it.
    let mut roots: Vec<u64> = scan.nodes.keys().copied().collect();
    roots.sort_unstable();

    let mut details = Vec::new();
    let mut tops = Vec::new();
    for &r in &roots {
        let Some(t) = scan.tree(r) else { continue };
        if t.leaves.iter().any(|(k, _)| *k > MAX_DEV_ID) {
            continue;
        }
        if t.value_size == DeviceDetails::SIZE {
            details.push(Details {
                root: r,
                devices: t
                    .leaves
                    .iter()
                    .map(|(k, v)| (*k, DeviceDetails::unpack(v)))
                    .collect(),
            });
        } else if let Some(m) = top_level(&scan, r, &t) {
            tops.push(m);
        }
    }

    type Score = (bool, u32, u64, Option<u64>, usize, u64);
    let mut best: Option<(Score, &Details, &Mappings)> = None;
    let mut candidates = 0;
    for d in &details {
        let ids: BTreeSet<u64> = d.devices.iter().map(|(k, _)| *k).collect();
        for m in &tops {
            if !m.counts.iter().map(|(k, _)| *k).eq(ids.iter().copied()) {
                continue;
            }
            candidates += 1;
            let agreeing = d
                .devices
                .iter()
                .zip(&m.counts)
                .filter(|((_, dd), (_, n))| dd.mapped_blocks == *n)
                .count();
            let time = m.max_time.max(d.max_time());
            let score = (
                agreeing == ids.len(),
                time,
                d.max_transaction_id(),
                // Data blocks are allocated from the lowest free one, so a
                // later transaction tends to reach further.
                m.max_block,
                agreeing,
                m.root.max(d.root),
            );
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, d, m));
            }
        }
    }
    let Some((_, d, m)) = best else {
        return Err(MetadataError::Invalid(format!(
            "no device-details tree and mapping tree that name the same devices were found \
             ({} details and {} mapping tree candidates among {} readable nodes)",
            details.len(),
            tops.len(),
            scan.nodes.len()
        )));
    };
    Ok(FoundRoots {
        device_details_root: d.root,
        data_mapping_root: m.root,
        max_transaction_id: d.max_transaction_id(),
        max_time: m.max_time.max(d.max_time()),
        min_nr_data_blocks: m.max_block.map_or(0, |b| b + 1),
        candidates,
    })
}

/// `t` as a top-level mapping tree (device id -> root of that device's
/// mapping tree), if every value points at a complete tree of 8-byte
/// leaves. A device's mapping tree could pass for a top-level one only if
/// each of its block/time values happened to name a node.
fn top_level(scan: &Scan, root: u64, t: &Tree<'_>) -> Option<Mappings> {
    if t.value_size != 8 {
        return None;
    }
    let mut m = Mappings {
        root,
        counts: Vec::with_capacity(t.leaves.len()),
        max_time: 0,
        max_block: None,
    };
    for (id, v) in &t.leaves {
        let sub = scan.tree(u64::from_le_bytes(v[..8].try_into().ok()?))?;
        if sub.value_size != 8 {
            return None;
        }
        for (_, bt) in &sub.leaves {
            let bt = BlockTime::unpack(u64::from_le_bytes(bt[..8].try_into().ok()?));
            m.max_time = m.max_time.max(bt.time);
            m.max_block = m.max_block.max(Some(bt.block));
        }
        m.counts.push((*id, sub.leaves.len() as u64));
    }
    Some(m)
}
