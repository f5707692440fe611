//! Differences between two devices' mappings (thin_delta): the basis of
//! incremental backup. Each virtual block is the same in both (same data
//! block), different, or mapped on one side only; runs of consecutive
//! blocks of one kind are grouped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::pdata::values::BlockTime;
use crate::thin::model::PoolModel;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaKind {
    Same,
    Different,
    LeftOnly,
    RightOnly,
}

impl DeltaKind {
    pub fn name(self) -> &'static str {
        match self {
            DeltaKind::Same => "same",
            DeltaKind::Different => "different",
            DeltaKind::LeftOnly => "left_only",
            DeltaKind::RightOnly => "right_only",
        }
    }
}

/// Runs of (kind, first virtual block, length), in block order.
pub fn delta(
    left: &BTreeMap<u64, BlockTime>,
    right: &BTreeMap<u64, BlockTime>,
) -> Vec<(DeltaKind, u64, u64)> {
    let mut keys: Vec<u64> = left.keys().chain(right.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    let mut out: Vec<(DeltaKind, u64, u64)> = Vec::new();
    for v in keys {
        let kind = match (left.get(&v), right.get(&v)) {
            (Some(a), Some(b)) if a.block == b.block => DeltaKind::Same,
            (Some(_), Some(_)) => DeltaKind::Different,
            (Some(_), None) => DeltaKind::LeftOnly,
            _ => DeltaKind::RightOnly,
        };
        match out.last_mut() {
            Some(last) if last.0 == kind && last.1 + last.2 == v => last.2 += 1,
            _ => out.push((kind, v, 1)),
        }
    }
    out
}

/// thin_delta's XML for devices `a` and `b` of `m`.
pub fn delta_xml(m: &PoolModel, a: u64, b: u64) -> Result<String, crate::MetadataError> {
    let get = |id: u64| {
        m.devices
            .get(&id)
            .ok_or_else(|| crate::MetadataError::Invalid(format!("no thin device {id}")))
    };
    let (l, r) = (get(a)?, get(b)?);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<superblock uuid=\"\" time=\"{}\" transaction=\"{}\" data_block_size=\"{}\" nr_data_blocks=\"{}\">",
        m.time, m.trans_id, m.data_block_size, m.nr_data_blocks
    );
    let _ = writeln!(s, "  <diff left=\"{a}\" right=\"{b}\">");
    for (kind, begin, len) in delta(&l.mappings, &r.mappings) {
        let _ = writeln!(
            s,
            "    <{} begin=\"{begin}\" length=\"{len}\"/>",
            kind.name()
        );
    }
    s.push_str("  </diff>\n</superblock>\n");
    Ok(s)
}
