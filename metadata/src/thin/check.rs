//! Checking a pool's metadata: everything thin_check verifies, with the
//! counting rules of the format. Metadata counts are rebuilt from distinct
//! physical references (a node shared by two trees is walked once and its
//! children counted once); data counts from the slots of distinct level-1
//! leaves. A stored count below the references is fatal (a block in use
//! could be handed out again); a count above them (a leak) is not, and
//! fails the check only for metadata blocks, as in thin_check 0.9.0, which
//! does not count data references at all.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

use crate::pdata::tm::BlockHasher;

use crate::io::BlockIo;
use crate::pdata::node::{Node, NodeKind};
use crate::pdata::superblock::Superblock;
use crate::pdata::tm::load_space_maps;
use crate::pdata::values::{BlockTime, DeviceDetails};

#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Check the superblock only.
    pub super_block_only: bool,
    /// Do not walk the mapping trees (devices and space maps only).
    pub skip_mappings: bool,
    /// Require a metadata snapshot (thin_check -m); its trees are checked
    /// whenever there is one.
    pub metadata_snap: bool,
    /// Take this block as the live mapping tree's root instead of the one
    /// the superblock records (a root found by hand after damage).
    pub override_mapping_root: Option<u64>,
    /// Keep the reference counts found (metadata, data) in the report, for
    /// [`crate::thin::pool::Pool::fix_counts`].
    pub keep_counts: bool,
}

#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub fatal: Vec<String>,
    /// Problems that lose nothing: leaked blocks, counts above their
    /// references, underfull nodes.
    pub non_fatal: Vec<String>,
    /// Whether any of `non_fatal` fails the check (unless non-fatal errors
    /// are ignored). Leaked data blocks alone do not: thin_check 0.9.0
    /// passes them.
    pub non_fatal_fails: bool,
    pub superblock: Option<Superblock>,
    pub metadata_free_blocks: Option<u64>,
    /// With `metadata_snap`: the snapshot's superblock copy, whose
    /// transaction id and free metadata blocks thin_check -m reports.
    pub snapshot: Option<Superblock>,
    /// With `keep_counts` (and the mappings walked): each metadata and
    /// data block's references, as found.
    pub found_counts: Option<(Vec<u32>, Vec<u32>)>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.fatal.is_empty()
    }

    /// thin_check's exit status for this report: 1 on a fatal problem, or
    /// on a failing non-fatal one unless `ignore_non_fatal`; else 0.
    pub fn exit_code(&self, ignore_non_fatal: bool) -> i32 {
        let fails = !self.passed() || (self.non_fatal_fails && !ignore_non_fatal);
        i32::from(fails)
    }
}

/// How many mismatches of one kind are listed before a summary line.
const LIST_LIMIT: usize = 10;

struct Walk<'a> {
    io: &'a dyn BlockIo,
    nr_meta: u64,
    nr_data: u64,
    /// Expected counts, one slot per block of each space map.
    meta: Vec<u32>,
    data: Vec<u32>,
    /// References past the end of a space map (reported once each kind).
    meta_overrun: Option<u64>,
    /// Distinct nodes already walked, with the number of keys below them.
    seen: HashMap<u64, u64, BuildHasherDefault<BlockHasher>>,
    fatal: Vec<String>,
    underfull: u64,
    path: HashSet<u64>,
    progress: &'a mut dyn FnMut(u64, u64),
    in_use: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Leaves {
    Plain,
    Devices,
    Mappings,
}

impl Walk<'_> {
    fn meta_ref(&mut self, b: u64) {
        match self.meta.get_mut(b as usize) {
            Some(c) => *c += 1,
            None => self.meta_overrun = Some(self.meta_overrun.unwrap_or(b)),
        }
    }

    /// Walks the tree at `root` (its own reference counted by the caller);
    /// returns how many keys it holds.
    fn tree(&mut self, root: u64, vs: usize, leaves: Leaves, what: &str) -> u64 {
        self.node(root, vs, leaves, what, 0, (0, u64::MAX), true)
    }

    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        b: u64,
        vs: usize,
        leaves: Leaves,
        what: &str,
        depth: usize,
        (lo, hi): (u64, u64),
        is_root: bool,
    ) -> u64 {
        if let Some(&n) = self.seen.get(&b) {
            return n;
        }
        if b == 0 || b >= self.nr_meta {
            self.fatal.push(format!(
                "{what}: pointer to block {b} outside the metadata device"
            ));
            return 0;
        }
        if depth > 16 || !self.path.insert(b) {
            self.fatal
                .push(format!("{what}: loop in the tree at block {b}"));
            return 0;
        }
        let node = match self.io.read(b).and_then(|blk| Node::unpack(&blk, b, vs)) {
            Ok(n) => n,
            Err(e) => {
                self.fatal.push(format!("{what}: {e}"));
                self.path.remove(&b);
                self.seen.insert(b, 0);
                return 0;
            }
        };
        if let (Some(first), Some(last)) = (node.keys.first(), node.keys.last()) {
            if *first < lo || *last >= hi {
                self.fatal.push(format!("{what}: block {b} holds keys {first}..={last} outside its parent's range {lo}..{hi}"));
            }
        }
        if !is_root && node.len() < node.max_entries() / 3 {
            self.underfull += 1;
        }
        let keys = match node.kind {
            NodeKind::Internal => {
                let mut total = 0;
                for i in 0..node.len() {
                    let child = node.value_u64(i);
                    self.meta_ref(child);
                    let upper = node.keys.get(i + 1).copied().unwrap_or(hi);
                    total += self.node(
                        child,
                        vs,
                        leaves,
                        what,
                        depth + 1,
                        (node.keys[i], upper),
                        false,
                    );
                }
                total
            }
            NodeKind::Leaf => {
                for i in 0..node.len() {
                    match leaves {
                        Leaves::Plain => {}
                        Leaves::Devices => {
                            let sub = node.value_u64(i);
                            self.meta_ref(sub);
                        }
                        Leaves::Mappings => {
                            let bt = BlockTime::unpack(node.value_u64(i));
                            if bt.block >= self.nr_data {
                                self.fatal.push(format!(
                                    "{what}: block {} maps to data block {} past the {} data blocks",
                                    node.keys[i], bt.block, self.nr_data
                                ));
                            }
                            if let Some(c) = self.data.get_mut(bt.block as usize) {
                                *c += 1;
                            }
                        }
                    }
                }
                node.len() as u64
            }
        };
        self.path.remove(&b);
        self.seen.insert(b, keys);
        if self.seen.len().is_multiple_of(1024) {
            (self.progress)(self.seen.len() as u64, self.in_use);
        }
        keys
    }

    /// Walks one superblock's trees (the live one or the metadata-snapshot
    /// copy): details and mappings. Returns the device ids found in each.
    fn thin_trees(&mut self, sb: &Superblock, label: &str, skip_mappings: bool) {
        self.meta_ref(sb.device_details_root);
        self.meta_ref(sb.data_mapping_root);
        let before = self.seen.clone();
        let _ = self.tree(
            sb.device_details_root,
            DeviceDetails::SIZE,
            Leaves::Plain,
            &format!("{label}details tree"),
        );
        let _ = self.tree(
            sb.data_mapping_root,
            8,
            Leaves::Devices,
            &format!("{label}mapping tree"),
        );
        // Re-read the two top trees for their entries (they are small).
        let details = read_entries(self.io, sb.device_details_root, DeviceDetails::SIZE);
        let top = read_entries(self.io, sb.data_mapping_root, 8);
        let (Some(details), Some(top)) = (details, top) else {
            return;
        };
        let ids = |v: &[(u64, Vec<u8>)]| v.iter().map(|(k, _)| *k).collect::<Vec<_>>();
        if ids(&details) != ids(&top) {
            self.fatal.push(format!(
                "{label}the details tree and the mapping tree list different devices"
            ));
        }
        let _ = before;
        for (id, root) in &top {
            let root = u64::from_le_bytes(root[..8].try_into().unwrap_or([0; 8]));
            if skip_mappings {
                continue;
            }
            let n = self.tree(
                root,
                8,
                Leaves::Mappings,
                &format!("{label}thin device {id}"),
            );
            if let Some((_, d)) = details.iter().find(|(k, _)| k == id) {
                let d = DeviceDetails::unpack(d);
                if d.mapped_blocks != n {
                    self.fatal.push(format!(
                        "{label}thin device {id} has {n} mappings but its details say {}",
                        d.mapped_blocks
                    ));
                }
            }
        }
    }
}

fn read_entries(io: &dyn BlockIo, root: u64, vs: usize) -> Option<Vec<(u64, Vec<u8>)>> {
    crate::pdata::btree_walk::read_tree(io, root, vs, &mut |_, _| {}).ok()
}

/// Checks the metadata on `io`.
pub fn check(io: &dyn BlockIo, opts: &CheckOptions) -> CheckReport {
    check_with_progress(io, opts, &mut |_, _| {})
}

/// As `check`, reporting (nodes walked, metadata blocks in use) as it goes.
pub fn check_with_progress(
    io: &dyn BlockIo,
    opts: &CheckOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> CheckReport {
    let mut rep = CheckReport::default();
    let mut sb = match io.read(0).and_then(|b| Superblock::unpack(&b, 0)) {
        Ok(sb) => sb,
        Err(e) => {
            rep.fatal.push(format!("superblock: {e}"));
            return rep;
        }
    };
    if opts.metadata_snap && sb.held_root == 0 {
        rep.superblock = Some(sb);
        rep.fatal.push("No metadata snapshot found.".into());
        return rep;
    }
    if opts.metadata_snap {
        match io
            .read(sb.held_root)
            .and_then(|b| Superblock::unpack(&b, sb.held_root))
        {
            Ok(copy) => rep.snapshot = Some(copy),
            Err(e) => {
                rep.superblock = Some(sb);
                rep.fatal.push(format!("metadata snapshot superblock: {e}"));
                return rep;
            }
        }
    }
    if let Some(root) = opts.override_mapping_root {
        sb.data_mapping_root = root;
    }
    rep.metadata_free_blocks = Some(
        sb.metadata_sm_root
            .nr_blocks
            .saturating_sub(sb.metadata_sm_root.nr_allocated),
    );
    rep.superblock = Some(sb.clone());
    if sb.metadata_sm_root.nr_blocks > io.nr_blocks() {
        rep.fatal.push(format!(
            "the metadata device has {} blocks but its space map counts {} (truncated?)",
            io.nr_blocks(),
            sb.metadata_sm_root.nr_blocks
        ));
        return rep;
    }
    if opts.super_block_only {
        return rep;
    }
    let (meta, data, sm_refs) = match load_space_maps(io, &sb) {
        Ok(x) => x,
        Err(e) => {
            rep.fatal.push(format!("space maps: {e}"));
            return rep;
        }
    };
    let mut w = Walk {
        io,
        nr_meta: sb.metadata_sm_root.nr_blocks,
        nr_data: sb.data_sm_root.nr_blocks,
        meta: match zeroed(meta.nr_blocks()) {
            Ok(v) => v,
            Err(e) => {
                rep.fatal.push(e);
                return rep;
            }
        },
        data: match zeroed(if opts.skip_mappings {
            0
        } else {
            data.nr_blocks()
        }) {
            Ok(v) => v,
            Err(e) => {
                rep.fatal.push(e);
                return rep;
            }
        },
        meta_overrun: None,
        seen: HashMap::default(),
        fatal: Vec::new(),
        underfull: 0,
        path: HashSet::new(),
        progress,
        in_use: meta.nr_allocated(),
    };
    w.meta_ref(0);
    for b in sm_refs.blocks {
        w.meta_ref(b);
    }
    w.thin_trees(&sb, "", opts.skip_mappings);
    if sb.held_root != 0 {
        w.meta_ref(sb.held_root);
        match io
            .read(sb.held_root)
            .and_then(|b| Superblock::unpack(&b, sb.held_root))
        {
            Ok(snap) => w.thin_trees(&snap, "metadata snapshot: ", opts.skip_mappings),
            Err(e) => w.fatal.push(format!("metadata snapshot: {e}")),
        }
    }
    rep.fatal.append(&mut w.fatal);
    if let Some(b) = w.meta_overrun {
        rep.fatal.push(format!(
            "metadata block {b} is referenced but past the end of the space map"
        ));
    }
    if w.underfull > 0 {
        rep.non_fatal.push(format!(
            "{} btree nodes hold fewer than a third of their entries",
            w.underfull
        ));
        rep.non_fatal_fails = true;
    }
    // Without the mappings, the mapping trees' nodes went uncounted: no
    // count can be compared (thin_check --skip-mappings compares none).
    if !opts.skip_mappings {
        if compare(
            "metadata",
            meta.nr_blocks(),
            |b| meta.get(b),
            &w.meta,
            &mut rep,
        ) {
            rep.non_fatal_fails = true;
        }
        compare("data", data.nr_blocks(), |b| data.get(b), &w.data, &mut rep);
        if opts.keep_counts {
            rep.found_counts = Some((w.meta, w.data));
        }
    }
    rep
}

/// A vector of `n` zero counts, or why it cannot be had.
fn zeroed(n: u64) -> Result<Vec<u32>, String> {
    let n = usize::try_from(n).map_err(|_| format!("cannot count {n} blocks"))?;
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| format!("not enough memory to count {n} blocks"))?;
    v.resize(n, 0);
    Ok(v)
}

/// Compares stored counts with the references found. Counts below their
/// references are fatal; counts above them (leaked blocks, with no
/// reference, or blocks counted too high) are non-fatal. Returns whether
/// any count was above its references.
fn compare(
    what: &str,
    n: u64,
    stored: impl Fn(u64) -> u32,
    expected: &[u32],
    rep: &mut CheckReport,
) -> bool {
    let (mut under, mut over, mut leaks) = (0u64, 0u64, 0u64);
    for b in 0..n {
        let (s, e) = (stored(b), expected.get(b as usize).copied().unwrap_or(0));
        if s == e {
            continue;
        }
        let (count, list) = if s < e {
            (&mut under, &mut rep.fatal)
        } else if e == 0 {
            leaks += 1;
            continue;
        } else {
            (&mut over, &mut rep.non_fatal)
        };
        *count += 1;
        if *count as usize <= LIST_LIMIT {
            list.push(format!(
                "{what} block {b}: reference count is {s}, expected {e}"
            ));
        }
    }
    if under as usize > LIST_LIMIT {
        rep.fatal.push(format!(
            "{what} space map: {under} blocks are counted below their references"
        ));
    }
    if over as usize > LIST_LIMIT {
        rep.non_fatal.push(format!(
            "{what} space map: {over} blocks are counted above their references"
        ));
    }
    if leaks > 0 {
        rep.non_fatal
            .push(format!("{what} space map: {leaks} blocks have leaked"));
    }
    over + leaks > 0
}

#[cfg(test)]
mod tests;
