//! Salvaging a damaged pool (thin_repair): every tree is walked best
//! effort, a damaged node costs only the subtree below it, and what was
//! readable is written as fresh metadata. Device details that are lost are
//! rebuilt from the mappings; `mapped_blocks` is always recounted.

use std::collections::{BTreeMap, HashSet};

use crate::io::BlockIo;
use crate::pdata::node::{Node, NodeKind};
use crate::pdata::superblock::Superblock;
use crate::pdata::values::{BlockTime, DeviceDetails};
use crate::thin::model::{Device, PoolModel, MAX_DEV_ID};
use crate::MetadataError;

/// What salvage could not read.
#[derive(Debug, Default)]
pub struct SalvageReport {
    /// Damaged or unreadable nodes, with why.
    pub lost_nodes: Vec<(u64, String)>,
    /// Mappings dropped because they pointed past the data device.
    pub dropped_mappings: u64,
}

struct Salvager<'a> {
    io: &'a dyn BlockIo,
    report: SalvageReport,
    path: HashSet<u64>,
}

impl Salvager<'_> {
    /// Readable leaf entries below `b` within `[lo, hi)`, in order.
    fn tree(
        &mut self,
        b: u64,
        vs: usize,
        (lo, hi): (u64, u64),
        depth: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) {
        if depth > 16 || b == 0 || b >= self.io.nr_blocks() || !self.path.insert(b) {
            self.report
                .lost_nodes
                .push((b, "bad pointer or loop".into()));
            return;
        }
        match self.io.read(b).and_then(|blk| Node::unpack(&blk, b, vs)) {
            Err(e) => self.report.lost_nodes.push((b, e.to_string())),
            Ok(n) => match n.kind {
                NodeKind::Internal => {
                    for i in 0..n.len() {
                        let upper = n.keys.get(i + 1).copied().unwrap_or(hi).min(hi);
                        self.tree(
                            n.value_u64(i),
                            vs,
                            (n.keys[i].max(lo), upper),
                            depth + 1,
                            out,
                        );
                    }
                }
                NodeKind::Leaf => {
                    for i in 0..n.len() {
                        let k = n.keys[i];
                        if k >= lo && k < hi && out.last().is_none_or(|(last, _)| *last < k) {
                            out.push((k, n.value(i).to_vec()));
                        }
                    }
                }
            },
        }
        self.path.remove(&b);
    }
}

/// Reads what can be read of the pool on `io`.
pub fn salvage(io: &dyn BlockIo) -> Result<(PoolModel, SalvageReport), MetadataError> {
    let sb = Superblock::unpack(&*io.read(0)?, 0).map_err(|e| {
        MetadataError::Invalid(format!(
            "the superblock is unreadable ({e}); nothing to repair from"
        ))
    })?;
    let mut s = Salvager {
        io,
        report: SalvageReport::default(),
        path: HashSet::new(),
    };
    let mut details = Vec::new();
    s.tree(
        sb.device_details_root,
        DeviceDetails::SIZE,
        (0, u64::MAX),
        0,
        &mut details,
    );
    let mut top = Vec::new();
    s.tree(sb.data_mapping_root, 8, (0, u64::MAX), 0, &mut top);
    let details: BTreeMap<u64, DeviceDetails> = details
        .into_iter()
        .map(|(k, v)| (k, DeviceDetails::unpack(&v)))
        .collect();
    let nr_data = sb.data_sm_root.nr_blocks;
    let mut m = PoolModel {
        flags: 0,
        time: sb.time.min(BlockTime::MAX_TIME),
        trans_id: sb.trans_id,
        data_block_size: sb.data_block_size,
        nr_data_blocks: nr_data,
        devices: BTreeMap::new(),
    };
    for (id, root) in top {
        if id > MAX_DEV_ID {
            continue;
        }
        let root = u64::from_le_bytes(root[..8].try_into().unwrap_or([0; 8]));
        let mut entries = Vec::new();
        s.tree(root, 8, (0, u64::MAX), 0, &mut entries);
        let mut mappings = BTreeMap::new();
        for (v, raw) in entries {
            let bt = BlockTime::unpack(u64::from_le_bytes(raw[..8].try_into().unwrap_or([0; 8])));
            if bt.block < nr_data {
                mappings.insert(
                    v,
                    BlockTime {
                        block: bt.block,
                        time: bt.time.min(m.time),
                    },
                );
            } else {
                s.report.dropped_mappings += 1;
            }
        }
        let mut d = details.get(&id).copied().unwrap_or(DeviceDetails {
            transaction_id: m.trans_id,
            creation_time: m.time,
            snapshotted_time: m.time,
            ..Default::default()
        });
        d.mapped_blocks = mappings.len() as u64;
        d.creation_time = d.creation_time.min(m.time);
        d.snapshotted_time = d.snapshotted_time.clamp(d.creation_time, m.time);
        m.devices.insert(
            id,
            Device {
                details: d,
                mappings,
            },
        );
    }
    Ok((m, s.report))
}

#[cfg(test)]
mod tests;
