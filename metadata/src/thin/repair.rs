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
    /// What was assumed, for the user to confirm.
    pub notes: Vec<String>,
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

/// Superblock fields given by the user (thin_repair's options): they
/// replace what the superblock says, and are what a lost superblock is
/// rebuilt from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub transaction_id: Option<u64>,
    /// In 512-byte sectors.
    pub data_block_size: Option<u32>,
    pub nr_data_blocks: Option<u64>,
}

/// The superblock fields salvage starts from.
struct Start {
    details_root: u64,
    mapping_root: u64,
    time: u32,
    trans_id: u64,
    data_block_size: u32,
    nr_data_blocks: u64,
}

/// Reads what can be read of the pool on `io`.
pub fn salvage(io: &dyn BlockIo) -> Result<(PoolModel, SalvageReport), MetadataError> {
    salvage_with(io, &Overrides::default())
}

/// As [`salvage`], with superblock fields from the user. A superblock
/// that cannot be read is rebuilt: its trees are found by scanning the
/// device ([`roots::find_roots`]), the data block size must be given (no
/// tree records it), and the data device's size and the transaction id
/// default to the least the trees allow, with a note in the report.
pub fn salvage_with(
    io: &dyn BlockIo,
    o: &Overrides,
) -> Result<(PoolModel, SalvageReport), MetadataError> {
    let mut report = SalvageReport::default();
    let start = match Superblock::unpack(&*io.read(0)?, 0) {
        Ok(sb) => Start {
            details_root: sb.device_details_root,
            mapping_root: sb.data_mapping_root,
            time: sb.time,
            trans_id: o.transaction_id.unwrap_or(sb.trans_id),
            data_block_size: o.data_block_size.unwrap_or(sb.data_block_size),
            nr_data_blocks: o.nr_data_blocks.unwrap_or(sb.data_sm_root.nr_blocks),
        },
        Err(e) => rebuilt_superblock(io, o, &e, &mut report)?,
    };
    if !crate::pdata::superblock::valid_data_block_size(start.data_block_size) {
        return Err(MetadataError::Invalid(format!(
            "data block size {} sectors is not 128..2097152 sectors in steps of 128",
            start.data_block_size
        )));
    }
    salvage_from(io, start, report)
}

fn rebuilt_superblock(
    io: &dyn BlockIo,
    o: &Overrides,
    why: &MetadataError,
    report: &mut SalvageReport,
) -> Result<Start, MetadataError> {
    let Some(data_block_size) = o.data_block_size else {
        return Err(MetadataError::Invalid(format!(
            "the superblock is unreadable ({why}); to rebuild it, give --data-block-size \
             (in 512-byte sectors, as the pool was created with), and --nr-data-blocks and \
             --transaction-id if you know them"
        )));
    };
    let found = roots::find_roots(io)?;
    report.notes.push(format!(
        "superblock rebuilt: details tree at block {}, mapping tree at block {} \
         (chosen from {} candidate pairs)",
        found.device_details_root, found.data_mapping_root, found.candidates
    ));
    let nr_data_blocks = match o.nr_data_blocks {
        Some(n) => n,
        None => {
            report.notes.push(format!(
                "--nr-data-blocks not given: the data device is taken to be {} blocks, \
                 the least its mappings need; grow the pool to its real size after",
                found.min_nr_data_blocks
            ));
            found.min_nr_data_blocks
        }
    };
    let trans_id = match o.transaction_id {
        Some(t) => t,
        None => {
            report.notes.push(format!(
                "--transaction-id not given: {} (the highest a device records) is used; \
                 a volume manager that tracks it may expect another",
                found.max_transaction_id
            ));
            found.max_transaction_id
        }
    };
    Ok(Start {
        details_root: found.device_details_root,
        mapping_root: found.data_mapping_root,
        time: found.max_time,
        trans_id,
        data_block_size,
        nr_data_blocks,
    })
}

fn salvage_from(
    io: &dyn BlockIo,
    sb: Start,
    report: SalvageReport,
) -> Result<(PoolModel, SalvageReport), MetadataError> {
    let mut s = Salvager {
        io,
        report,
        path: HashSet::new(),
    };
    let mut details = Vec::new();
    s.tree(
        sb.details_root,
        DeviceDetails::SIZE,
        (0, u64::MAX),
        0,
        &mut details,
    );
    let mut top = Vec::new();
    s.tree(sb.mapping_root, 8, (0, u64::MAX), 0, &mut top);
    let details: BTreeMap<u64, DeviceDetails> = details
        .into_iter()
        .map(|(k, v)| (k, DeviceDetails::unpack(&v)))
        .collect();
    let nr_data = sb.nr_data_blocks;
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

pub mod roots;
#[cfg(test)]
mod tests;
