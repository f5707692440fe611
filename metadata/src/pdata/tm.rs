//! The transaction manager: block cache, shadowing (copy-on-write), both
//! space maps, and the commit that makes a transaction durable.
//!
//! Invariant: nothing reachable from the committed superblock is written
//! before the next superblock write. Every block this transaction writes
//! was free in the committed space map when it was handed out, and a block
//! freed in this transaction is not handed out again before the commit
//! (allocation needs a block free in both the committed and the current
//! view). `write_node` refuses anything else.
//!
//! The space maps live in memory (2 bits per block, as on disk) and are
//! written at commit: changed bitmaps move to new blocks, the index block,
//! the data index tree and both overflow trees are rebuilt. Those writes
//! allocate metadata blocks, which change metadata bitmaps, so bitmaps are
//! relocated until none is left unrelocated (each moves once per commit).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use super::block_cache::BlockCache;
use super::btree_builder::{build, nodes_needed};
use super::btree_walk::read_tree;
use super::node::{KeyRange, Node};
use super::space_map::{
    nr_bitmaps, pack_bitmap, pack_index, unpack_bitmap, unpack_index, Counts, MAX_METADATA_BLOCKS,
};
use super::superblock::Superblock;
use super::values::{IndexEntry, SmRoot};
use crate::io::BlockIo;
use crate::{Block, MetadataError};

/// Hashes block numbers with one multiply: they are well spread already,
/// and SipHash was most of the cost of a cached node visit.
#[derive(Default)]
pub struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type BlockMap<V> = HashMap<u64, V, BuildHasherDefault<BlockHasher>>;
type BlockSet = HashSet<u64, BuildHasherDefault<BlockHasher>>;

/// What one lookup step found.
pub enum SearchResult<V> {
    Absent,
    /// The child to follow and the range of its keys.
    Child(u64, KeyRange),
    Found(V),
}

/// Where the committed space-map structures live (freed at the next commit).
#[derive(Clone, Debug, Default)]
struct SmBlocks {
    meta_index: u64,
    meta_bitmaps: Vec<u64>,
    meta_overflow_nodes: Vec<u64>,
    meta_overflow_root: u64,
    data_bitmaps: Vec<u64>,
    data_index_nodes: Vec<u64>,
    data_index_root: u64,
    data_overflow_nodes: Vec<u64>,
    data_overflow_root: u64,
}

pub struct Tm {
    io: Box<dyn BlockIo>,
    cache: BlockCache,
    /// Blocks written in this transaction. Nodes are kept unsealed (their
    /// checksum is computed once, at commit); `unsealed` lists them.
    dirty: BlockMap<Box<Block>>,
    unsealed: BlockSet,
    shadows: BlockSet,
    pub(crate) meta: Counts,
    meta_committed: Counts,
    meta_cursor: u64,
    pub(crate) data: Counts,
    data_committed: Counts,
    data_cursor: u64,
    sm: SmBlocks,
    changed: bool,
}

impl Tm {
    /// Opens committed metadata: reads the superblock and both space maps.
    pub fn open(io: Box<dyn BlockIo>) -> Result<(Tm, Superblock), MetadataError> {
        let sb = Superblock::unpack(&*io.read(0)?, 0)?;
        let (meta, data, sm) = load_space_maps_inner(&*io, &sb)?;
        let tm = Tm {
            io,
            cache: BlockCache::default(),
            dirty: BlockMap::default(),
            unsealed: BlockSet::default(),
            shadows: BlockSet::default(),
            meta_committed: meta.clone(),
            meta,
            meta_cursor: 0,
            data_committed: data.clone(),
            data,
            data_cursor: 0,
            sm,
            changed: false,
        };
        Ok((tm, sb))
    }

    /// Gives the device back (after a failure, to reopen it).
    pub fn into_io(self) -> Box<dyn BlockIo> {
        self.io
    }

    pub fn io(&self) -> &dyn BlockIo {
        &*self.io
    }

    fn read_block(&mut self, b: u64) -> Result<&Block, MetadataError> {
        if self.dirty.contains_key(&b) {
            return Ok(&self.dirty[&b]);
        }
        let io = &self.io;
        self.cache.get_or_try_insert(b, || io.read(b))
    }

    /// A node block. Its checksum is verified once, when it comes from
    /// disk; blocks in the cache or written by this transaction are trusted
    /// (dirty nodes are only sealed at commit).
    #[inline]
    fn node_block(&mut self, b: u64) -> Result<&Block, MetadataError> {
        if b == 0 || b >= self.meta.nr_blocks() {
            return Err(MetadataError::Corrupt {
                block: b,
                what: "btree pointer outside the metadata device".into(),
            });
        }
        // One probe per map on the hit path (this is every lookup's step).
        if let Some(d) = self.dirty.get(&b) {
            return Ok(d);
        }
        let io = &self.io;
        self.cache.get_or_try_insert(b, || {
            let blk = io.read(b)?;
            super::checksum::verify(&blk, super::checksum::BlockKind::Node, b)?;
            Ok(blk)
        })
    }

    /// Reads and checks the node at `b`.
    pub fn read_node(&mut self, b: u64, leaf_value_size: usize) -> Result<Node, MetadataError> {
        Node::unpack_verified(self.node_block(b)?, b, leaf_value_size)
    }

    /// One lookup step in node `b` without decoding it: the child to
    /// follow, the value found, or nothing. `range` is what the parent says
    /// of the node's keys (`KeyRange::ALL` at the root); it only speeds the
    /// search.
    /// `read` turns a found value's bytes into what the caller keeps.
    #[inline]
    pub fn search_node<V>(
        &mut self,
        b: u64,
        key: u64,
        range: KeyRange,
        leaf_value_size: usize,
        read: impl FnOnce(&[u8]) -> V,
    ) -> Result<SearchResult<V>, MetadataError> {
        use super::node::{search, Step};
        Ok(
            match search(self.node_block(b)?, b, key, leaf_value_size, range)? {
                Step::Absent => SearchResult::Absent,
                Step::Child(c, range) => SearchResult::Child(c, range),
                Step::Found(v) => SearchResult::Found(read(v)),
            },
        )
    }

    /// A new metadata block (count 1), free in both views.
    pub fn new_block(&mut self) -> Result<u64, MetadataError> {
        let n = self.meta.nr_blocks();
        let (meta, committed) = (&self.meta, &self.meta_committed);
        let free = |b: &u64| meta.get(*b) == 0 && committed.get(*b) == 0;
        let b = (self.meta_cursor..n)
            .find(free)
            .or_else(|| (1..self.meta_cursor.min(n)).find(free));
        let b = b.ok_or(MetadataError::NoSpace(n))?;
        self.meta_cursor = b + 1;
        self.meta.set(b, 1);
        self.shadows.insert(b);
        self.changed = true;
        Ok(b)
    }

    /// Copy-on-write: a block this transaction may change in place standing
    /// for `b`, and whether `b` was shared (the caller must then take
    /// references for the copy's children). The caller has read `b` and
    /// must write the returned block: it is allocated, not filled.
    pub fn shadow(&mut self, b: u64) -> Result<(u64, bool), MetadataError> {
        let count = self.meta.get(b);
        if self.shadows.contains(&b) && count == 1 {
            return Ok((b, false));
        }
        let nb = self.new_block()?;
        self.meta_dec(b);
        Ok((nb, count > 1))
    }

    /// Whether `b` is this transaction's own and unshared: written here,
    /// so it may be changed in place.
    pub fn owns(&self, b: u64) -> bool {
        self.shadows.contains(&b)
            && self.meta.get(b) == 1
            && self.dirty.contains_key(&b)
            && self.unsealed.contains(&b)
    }

    /// The bytes of an owned node block, for an in-place change (the
    /// caller keeps the node valid; it is sealed at commit).
    pub fn owned_node_mut(&mut self, b: u64) -> Option<&mut Block> {
        if !self.owns(b) {
            return None;
        }
        self.changed = true;
        self.dirty.get_mut(&b).map(|blk| &mut **blk)
    }

    /// Reads block `b` as it stands in this transaction.
    pub fn read_raw(&mut self, b: u64) -> Result<Box<Block>, MetadataError> {
        Ok(Box::new(*self.read_block(b)?))
    }

    /// Stores an encoded block (a superblock copy) at `b`, which this
    /// transaction owns; the same guard as `write_node`.
    pub fn write_raw(&mut self, b: u64, block: Box<Block>) -> Result<(), MetadataError> {
        if self.meta_committed.get(b) != 0 || !self.shadows.contains(&b) {
            return Err(MetadataError::Invalid(format!(
                "refused a write to block {b}, which this transaction does not own"
            )));
        }
        self.dirty.insert(b, block);
        self.unsealed.remove(&b);
        self.changed = true;
        Ok(())
    }

    /// Stores `node` at `b`, a block this transaction owns.
    pub fn write_node(&mut self, b: u64, node: &Node) -> Result<(), MetadataError> {
        let reachable = self.meta_committed.get(b) != 0;
        debug_assert!(
            !reachable,
            "write to block {b}, reachable from the committed superblock"
        );
        if reachable || !self.shadows.contains(&b) {
            return Err(MetadataError::Invalid(format!(
                "refused a write to block {b}, which this transaction does not own"
            )));
        }
        self.dirty.insert(b, node.pack_unsealed(b));
        self.unsealed.insert(b);
        self.changed = true;
        Ok(())
    }

    pub fn meta_count(&self, b: u64) -> u32 {
        self.meta.get(b)
    }

    pub fn meta_inc(&mut self, b: u64) {
        self.meta.inc(b);
        self.changed = true;
    }

    pub fn meta_dec(&mut self, b: u64) {
        self.meta.dec(b);
        if self.meta.get(b) == 0 {
            // Freed: not written, and not handed out again this transaction
            // (the cursor has passed it or the committed view holds it).
            self.dirty.remove(&b);
            self.unsealed.remove(&b);
            self.shadows.remove(&b);
        }
        self.changed = true;
    }

    /// A new data block (count 1), free in both views: a block freed in
    /// this transaction may still be mapped by the committed metadata.
    pub fn new_data_block(&mut self) -> Option<u64> {
        let n = self.data.nr_blocks();
        let (data, committed) = (&self.data, &self.data_committed);
        let free = |b: &u64| data.get(*b) == 0 && committed.get(*b) == 0;
        let b = (self.data_cursor..n)
            .find(free)
            .or_else(|| (0..self.data_cursor.min(n)).find(free))?;
        self.data_cursor = b + 1;
        self.data.set(b, 1);
        self.changed = true;
        Some(b)
    }

    pub fn data_count(&self, b: u64) -> u32 {
        self.data.get(b)
    }

    pub fn data_inc(&mut self, b: u64) {
        self.data.inc(b);
        self.changed = true;
    }

    pub fn data_dec(&mut self, b: u64) {
        self.data.dec(b);
        self.changed = true;
    }

    /// Grows the data space map.
    pub fn extend_data(&mut self, nr_blocks: u64) -> Result<(), MetadataError> {
        if nr_blocks < self.data.nr_blocks() {
            return Err(MetadataError::Invalid(format!(
                "cannot shrink the data device from {} to {nr_blocks} blocks",
                self.data.nr_blocks()
            )));
        }
        // Refuse growth this machine cannot hold rather than abort.
        Counts::try_new(nr_blocks.saturating_sub(self.data.nr_blocks()))?;
        self.data.extend(nr_blocks);
        self.changed = true;
        Ok(())
    }

    /// Grows the metadata space map to `nr_blocks` (the device must hold
    /// them, and the format counts at most 255 bitmaps' worth).
    pub fn extend_metadata(&mut self, nr_blocks: u64) -> Result<(), MetadataError> {
        let cur = self.meta.nr_blocks();
        if nr_blocks < cur {
            return Err(MetadataError::Invalid(format!(
                "cannot shrink the metadata from {cur} to {nr_blocks} blocks"
            )));
        }
        if nr_blocks > MAX_METADATA_BLOCKS {
            return Err(MetadataError::Invalid(format!(
                "metadata cannot exceed {MAX_METADATA_BLOCKS} blocks"
            )));
        }
        if nr_blocks > self.io.nr_blocks() {
            return Err(MetadataError::Invalid(format!(
                "the metadata device holds {} blocks, not {nr_blocks}",
                self.io.nr_blocks()
            )));
        }
        Counts::try_new(nr_blocks - cur)?;
        self.meta.extend(nr_blocks);
        self.changed = true;
        Ok(())
    }

    pub fn nr_data_blocks(&self) -> u64 {
        self.data.nr_blocks()
    }
    pub fn nr_free_data_blocks(&self) -> u64 {
        self.data.nr_free()
    }
    pub fn nr_metadata_blocks(&self) -> u64 {
        self.meta.nr_blocks()
    }
    pub fn nr_free_metadata_blocks(&self) -> u64 {
        self.meta.nr_free()
    }
    /// At most how many metadata blocks the next commit allocates: the
    /// rebuilt index and overflow trees, a new place for every changed data
    /// bitmap, and for every metadata bitmap (moving one changes others).
    pub fn commit_blocks_needed(&self) -> u64 {
        let data_bitmaps = nr_bitmaps(self.data.nr_blocks()) as usize;
        let trees = 1
            + nodes_needed(data_bitmaps, IndexEntry::SIZE)
            + nodes_needed(self.data.nr_overflow(), 4)
            + nodes_needed(self.meta.nr_overflow(), 4);
        (trees + self.data.nr_dirty()) as u64 + nr_bitmaps(self.meta.nr_blocks())
    }

    /// Metadata blocks this transaction can still be handed: free in the
    /// committed view and not taken since. Lower than
    /// `nr_free_metadata_blocks` while a transaction runs, since the blocks
    /// it shadowed stay reserved for the committed tree until the commit.
    pub fn nr_allocatable_metadata_blocks(&self) -> u64 {
        self.meta_committed
            .nr_free()
            .saturating_sub(self.shadows.len() as u64)
    }

    /// Whether anything changed since the last commit.
    pub fn has_changes(&self) -> bool {
        self.changed
    }

    /// Makes the transaction durable, in this order: `pre_commit` (the pool
    /// flushes its data device), every new metadata block written, flush,
    /// the superblock `sb` (its space-map roots filled in here) written,
    /// flush. A failure at any step leaves the last commit intact on disk.
    pub fn commit(
        &mut self,
        sb: &mut Superblock,
        pre_commit: &mut dyn FnMut() -> Result<(), MetadataError>,
    ) -> Result<(), MetadataError> {
        pre_commit()?;
        // The old space-map structures are unreachable once this commit lands.
        let old = std::mem::take(&mut self.sm);
        for b in [old.meta_index]
            .into_iter()
            .chain(old.meta_overflow_nodes)
            .chain(old.data_index_nodes)
            .chain(old.data_overflow_nodes)
        {
            self.meta_dec(b);
        }
        let mut sm = SmBlocks {
            meta_bitmaps: old.meta_bitmaps,
            data_bitmaps: old.data_bitmaps,
            ..Default::default()
        };
        sm.meta_index = self.new_block()?;
        let n_data_bitmaps = nr_bitmaps(self.data.nr_blocks()) as usize;
        let data_overflow: Vec<(u64, Vec<u8>)> = self
            .data
            .overflow()
            .map(|(b, c)| (b, c.to_le_bytes().to_vec()))
            .collect();
        let data_index_blocks = self.alloc_n(nodes_needed(n_data_bitmaps, IndexEntry::SIZE))?;
        let data_overflow_blocks = self.alloc_n(nodes_needed(data_overflow.len(), 4))?;
        // Counts of 3 or more do not change below (only 0 <-> 1), so the
        // metadata overflow tree's contents are fixed from here.
        let meta_overflow: Vec<(u64, Vec<u8>)> = self
            .meta
            .overflow()
            .map(|(b, c)| (b, c.to_le_bytes().to_vec()))
            .collect();
        let meta_overflow_blocks = self.alloc_n(nodes_needed(meta_overflow.len(), 4))?;

        // Move every changed bitmap to a new block.
        sm.data_bitmaps.resize(n_data_bitmaps, 0);
        let data_dirty = self.data.take_dirty();
        for &j in &data_dirty {
            if let Some(slot) = sm.data_bitmaps.get(j as usize).copied() {
                let nb = self.new_block()?;
                if slot != 0 {
                    self.meta_dec(slot);
                }
                sm.data_bitmaps[j as usize] = nb;
            }
        }
        sm.meta_bitmaps
            .resize(nr_bitmaps(self.meta.nr_blocks()) as usize, 0);
        let mut meta_moved = BTreeSet::new();
        loop {
            let pending: Vec<u64> = self
                .meta
                .take_dirty()
                .into_iter()
                .filter(|j| !meta_moved.contains(j))
                .collect();
            if pending.is_empty() {
                break;
            }
            for j in pending {
                let old_at = sm.meta_bitmaps[j as usize];
                let nb = self.new_block()?;
                // A bitmap added by growth has no block yet.
                if old_at != 0 {
                    self.meta_dec(old_at);
                }
                sm.meta_bitmaps[j as usize] = nb;
                meta_moved.insert(j);
            }
        }
        // Everything is counted now: encode.
        let mut out: Vec<(u64, Box<Block>)> = Vec::new();
        for &j in &data_dirty {
            if let Some(&at) = sm.data_bitmaps.get(j as usize) {
                out.push((at, pack_bitmap(&self.data.bitmap_entries(j), at)));
            }
        }
        let data_index: Vec<(u64, Vec<u8>)> = (0..n_data_bitmaps as u64)
            .map(|j| {
                let (nr_free, none_free_before) = self.data.index_hints(j);
                let mut v = vec![0u8; IndexEntry::SIZE];
                IndexEntry {
                    blocknr: sm.data_bitmaps[j as usize],
                    nr_free,
                    none_free_before,
                }
                .pack(&mut v);
                (j, v)
            })
            .collect();
        let (root, nodes) = build(
            &data_index,
            IndexEntry::SIZE,
            &mut take_from(&data_index_blocks),
        )?;
        (sm.data_index_root, sm.data_index_nodes) = (root, data_index_blocks);
        out.extend(nodes);
        let (root, nodes) = build(&data_overflow, 4, &mut take_from(&data_overflow_blocks))?;
        (sm.data_overflow_root, sm.data_overflow_nodes) = (root, data_overflow_blocks);
        out.extend(nodes);
        let (root, nodes) = build(&meta_overflow, 4, &mut take_from(&meta_overflow_blocks))?;
        (sm.meta_overflow_root, sm.meta_overflow_nodes) = (root, meta_overflow_blocks);
        out.extend(nodes);
        for &j in &meta_moved {
            let at = sm.meta_bitmaps[j as usize];
            out.push((at, pack_bitmap(&self.meta.bitmap_entries(j), at)));
        }
        let index: Vec<IndexEntry> = (0..sm.meta_bitmaps.len() as u64)
            .map(|j| {
                let (nr_free, none_free_before) = self.meta.index_hints(j);
                IndexEntry {
                    blocknr: sm.meta_bitmaps[j as usize],
                    nr_free,
                    none_free_before,
                }
            })
            .collect();
        out.push((sm.meta_index, pack_index(&index, sm.meta_index)?));
        debug_assert!(
            out.iter().all(|(b, _)| self.meta_committed.get(*b) == 0),
            "space-map write over a committed block"
        );

        sb.metadata_sm_root = SmRoot {
            nr_blocks: self.meta.nr_blocks(),
            nr_allocated: self.meta.nr_allocated(),
            bitmap_root: sm.meta_index,
            ref_count_root: sm.meta_overflow_root,
        };
        sb.data_sm_root = SmRoot {
            nr_blocks: self.data.nr_blocks(),
            nr_allocated: self.data.nr_allocated(),
            bitmap_root: sm.data_index_root,
            ref_count_root: sm.data_overflow_root,
        };
        let mut dirty = std::mem::take(&mut self.dirty);
        for b in self.unsealed.drain() {
            if let Some(blk) = dirty.get_mut(&b) {
                super::checksum::seal(blk, super::checksum::BlockKind::Node);
            }
        }
        let mut writes: Vec<(u64, &Block)> = dirty.iter().map(|(b, d)| (*b, &**d)).collect();
        writes.extend(out.iter().map(|(b, d)| (*b, &**d)));
        writes.sort_by_key(|(b, _)| *b);
        let result = self
            .io
            .write(&writes)
            .and_then(|_| self.io.flush())
            .and_then(|_| self.io.write(&[(0, &sb.pack())]))
            .and_then(|_| self.io.flush());
        if let Err(e) = result {
            // The caller aborts (reopens); keep nothing that claims success.
            self.dirty = dirty;
            return Err(e);
        }
        for (b, d) in dirty.into_iter().chain(out) {
            self.cache.insert(b, &d);
        }
        self.cache.remove(0);
        self.sm = sm;
        self.meta_committed = self.meta.clone();
        self.data_committed = self.data.clone();
        self.meta_cursor = 0;
        self.data_cursor = 0;
        self.shadows.clear();
        self.changed = false;
        Ok(())
    }

    fn alloc_n(&mut self, n: usize) -> Result<Vec<u64>, MetadataError> {
        (0..n).map(|_| self.new_block()).collect()
    }
}

/// The blocks of the committed space-map structures, as counted by a
/// checker: every bitmap, index and overflow-tree node, with the number of
/// references each has from the superblock's roots and its parents.
pub struct SpaceMapRefs {
    pub blocks: Vec<u64>,
}

/// Reads both space maps described by `sb`, checking their structure.
pub fn load_space_maps(
    io: &dyn BlockIo,
    sb: &Superblock,
) -> Result<(Counts, Counts, SpaceMapRefs), MetadataError> {
    let (meta, data, sm) = load_space_maps_inner(io, sb)?;
    Ok((
        meta,
        data,
        SpaceMapRefs {
            blocks: sm_blocks(&sm),
        },
    ))
}

fn sm_blocks(sm: &SmBlocks) -> Vec<u64> {
    let mut v = vec![sm.meta_index];
    v.extend(&sm.meta_bitmaps);
    v.extend(&sm.meta_overflow_nodes);
    v.extend(&sm.data_bitmaps);
    v.extend(&sm.data_index_nodes);
    v.extend(&sm.data_overflow_nodes);
    v
}

fn load_space_maps_inner(
    io: &dyn BlockIo,
    sb: &Superblock,
) -> Result<(Counts, Counts, SmBlocks), MetadataError> {
    let corrupt = |block: u64, what: String| MetadataError::Corrupt { block, what };
    let nr_meta = sb.metadata_sm_root.nr_blocks;
    if nr_meta == 0 || nr_meta > MAX_METADATA_BLOCKS || nr_meta > io.nr_blocks() {
        return Err(corrupt(
            0,
            format!(
                "metadata space map of {nr_meta} blocks on a {}-block device",
                io.nr_blocks()
            ),
        ));
    }
    let mut sm = SmBlocks::default();
    let mut meta = Counts::try_new(nr_meta)?;
    let idx_at = sb.metadata_sm_root.bitmap_root;
    if idx_at == 0 || idx_at >= nr_meta {
        return Err(corrupt(
            0,
            format!("metadata space map index at block {idx_at}"),
        ));
    }
    let index = unpack_index(&*io.read(idx_at)?, idx_at, nr_bitmaps(nr_meta) as usize)?;
    for (j, e) in index.iter().enumerate() {
        if e.blocknr == 0 || e.blocknr >= nr_meta {
            return Err(corrupt(
                idx_at,
                format!("metadata bitmap {j} at block {}", e.blocknr),
            ));
        }
        meta.load_bitmap(j as u64, &unpack_bitmap(&*io.read(e.blocknr)?, e.blocknr)?);
    }
    sm.meta_index = idx_at;
    sm.meta_bitmaps = index.iter().map(|e| e.blocknr).collect();
    sm.meta_overflow_root = sb.metadata_sm_root.ref_count_root;
    let mut nodes = Vec::new();
    for (b, c) in read_tree(io, sm.meta_overflow_root, 4, &mut |b, _| nodes.push(b))? {
        meta.load_overflow(b, u32::from_le_bytes(c[..4].try_into().unwrap_or([0; 4])));
    }
    sm.meta_overflow_nodes = nodes;
    let nr_data = sb.data_sm_root.nr_blocks;
    sm.data_index_root = sb.data_sm_root.bitmap_root;
    let mut nodes = Vec::new();
    let entries = read_tree(io, sm.data_index_root, IndexEntry::SIZE, &mut |b, _| {
        nodes.push(b)
    })?;
    sm.data_index_nodes = nodes;
    if entries.len() as u64 != nr_bitmaps(nr_data)
        || entries.iter().enumerate().any(|(j, (k, _))| *k != j as u64)
    {
        return Err(corrupt(
            sm.data_index_root,
            "data space map index does not list every bitmap".into(),
        ));
    }
    // Sized only now: the index, checked above, bounds nr_blocks.
    let mut data = Counts::try_new(nr_data)?;
    for (j, (_, v)) in entries.iter().enumerate() {
        let e = IndexEntry::unpack(v);
        if e.blocknr == 0 || e.blocknr >= nr_meta {
            return Err(corrupt(
                sm.data_index_root,
                format!("data bitmap {j} at block {}", e.blocknr),
            ));
        }
        data.load_bitmap(j as u64, &unpack_bitmap(&*io.read(e.blocknr)?, e.blocknr)?);
        sm.data_bitmaps.push(e.blocknr);
    }
    sm.data_overflow_root = sb.data_sm_root.ref_count_root;
    let mut nodes = Vec::new();
    for (b, c) in read_tree(io, sm.data_overflow_root, 4, &mut |b, _| nodes.push(b))? {
        data.load_overflow(b, u32::from_le_bytes(c[..4].try_into().unwrap_or([0; 4])));
    }
    sm.data_overflow_nodes = nodes;
    meta.take_dirty();
    data.take_dirty();
    Ok((meta, data, sm))
}

/// An allocator handing out a pre-allocated list in order.
fn take_from(blocks: &[u64]) -> impl FnMut() -> Result<u64, MetadataError> + '_ {
    let mut it = blocks.iter();
    move || {
        it.next()
            .copied()
            .ok_or_else(|| MetadataError::Invalid("space-map tree outgrew its allocation".into()))
    }
}
