//! A volume's in-memory mapping table: what the fast path reads.
//!
//! One `u64` entry per virtual block in a three-level radix tree (4096 x
//! 4096 x 512 entries, so 2^33 virtual blocks), with middles and leaves
//! made on first use, except the first middle (the first 2^21 blocks: all
//! of a volume up to 128 GiB at 64 KiB blocks), which is part of the table
//! itself, so that a lookup there reads the word in the volume's own
//! allocation. Only the metadata core writes it; I/O cores read it with
//! plain atomic loads, no lock.
//!
//! An entry: bit 63 mapped, bit 62 maybe shared (the time-stamp
//! approximation: writes must copy), bit 61 busy (the metadata core holds
//! the block: it is being provisioned, copied or discarded), low 40 bits
//! the data block.
//!
//! A leaf whose 512 blocks are all mapped to consecutive data blocks with
//! the same flags (what provisioning in order makes) folds into a *run*:
//! its first entry, tagged, stored where the pointer to the leaf was. A
//! lookup in a run reads only the middle level, which stays cached (one
//! word per 512 blocks), instead of missing on a leaf line that the data
//! path's copies keep evicting. A change inside a run unfolds it first.
//! A folded leaf is kept for its place and refilled if the run unfolds: a
//! reader that fetched the leaf's address before the fold may still read
//! it, and it only ever holds entries of its own blocks, old or new, as a
//! live leaf would. So the table holds at most one leaf per place, 8 bytes
//! per block, dense or not, and frees nothing until it goes.

use std::collections::HashMap;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

pub const MAPPED: u64 = 1 << 63;
pub const SHARED: u64 = 1 << 62;
pub const BUSY: u64 = 1 << 61;
pub const BLOCK_MASK: u64 = (1 << 40) - 1;

const LEAF_BITS: u32 = 9;
const MID_BITS: u32 = 12;
const TOP_BITS: u32 = 12;
const LEAF: usize = 1 << LEAF_BITS;
const MID: usize = 1 << MID_BITS;
const TOP: usize = 1 << TOP_BITS;
/// Virtual blocks the table can address.
pub const MAX_VBLOCKS: u64 = 1 << (LEAF_BITS + MID_BITS + TOP_BITS);
/// Virtual blocks of the first middle.
const FIRST_SPAN: u64 = 1 << (LEAF_BITS + MID_BITS);

type Leaf = [AtomicU64; LEAF];
/// A middle: per place, null, a leaf, or a run (an address with bit 0
/// set; leaves are 8-aligned).
type Mid = [AtomicPtr<Leaf>; MID];

// A run is the flags of its entries, its first data block shifted left by
// one, and bit 0: it lives in a pointer's word.
const _: () = assert!(usize::BITS == 64);
const RUN: usize = 1;
const RUN_FLAGS: u64 = MAPPED | SHARED;

fn run_word(first_entry: u64) -> *mut Leaf {
    let word = (first_entry & RUN_FLAGS) | (first_entry & BLOCK_MASK) << 1 | RUN as u64;
    ptr::without_provenance_mut(word as usize)
}

/// The entry at `in_leaf` (an index within the leaf) of the run `run`.
#[inline]
fn run_entry(run: usize, in_leaf: usize) -> u64 {
    let run = run as u64;
    (run & RUN_FLAGS) | (((run >> 1) & BLOCK_MASK) + in_leaf as u64)
}

pub struct MapTable {
    /// The middle of the first 2^21 blocks, inline (`top[0]` stays null):
    /// a lookup there is one load from the volume, not two or three.
    first: Mid,
    /// The other middles.
    top: Box<[AtomicPtr<Mid>]>,
    leaves: AtomicU64,
    /// Folded leaves by leaf number (vblock >> 9), kept for their runs.
    folded: Mutex<HashMap<u64, Box<Leaf>>>,
}

/// A mapped entry for `block`.
pub fn mapped(block: u64, shared: bool) -> u64 {
    MAPPED | (block & BLOCK_MASK) | if shared { SHARED } else { 0 }
}

fn split(vblock: u64) -> (usize, usize, usize) {
    (
        (vblock >> (LEAF_BITS + MID_BITS)) as usize & (TOP - 1),
        (vblock >> LEAF_BITS) as usize & (MID - 1),
        vblock as usize & (LEAF - 1),
    )
}

/// What a middle's word for a place holds.
enum Place<'a> {
    Empty,
    Leaf(&'a Leaf),
    Run(usize),
}

impl Default for MapTable {
    fn default() -> Self {
        MapTable {
            top: (0..TOP).map(|_| AtomicPtr::new(ptr::null_mut())).collect(),
            first: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            leaves: AtomicU64::new(0),
            folded: Mutex::new(HashMap::new()),
        }
    }
}

impl MapTable {
    /// The middle word for `vblock`'s place, if its middle exists.
    #[inline]
    fn word(&self, vblock: u64) -> Option<&AtomicPtr<Leaf>> {
        if vblock >= MAX_VBLOCKS {
            return None;
        }
        let (in_top, in_mid, _) = split(vblock);
        if in_top == 0 {
            return Some(&self.first[in_mid]);
        }
        let mid = self.top[in_top].load(Ordering::Acquire);
        if mid.is_null() {
            return None;
        }
        // SAFETY: a non-null middle is a live allocation owned by this
        // table; it is freed only in Drop, when no reader is left.
        Some(&unsafe { &*mid }[in_mid])
    }

    #[inline]
    fn place(&self, vblock: u64) -> Place<'_> {
        match self.word(vblock) {
            Some(word) => self.place_of(word.load(Ordering::Acquire)),
            None => Place::Empty,
        }
    }

    /// The entry for `vblock` (0 when nothing was ever stored there).
    #[inline]
    pub fn get(&self, vblock: u64) -> u64 {
        if Self::is_near(vblock) {
            return self.get_near(vblock);
        }
        match self.place(vblock) {
            Place::Empty => 0,
            Place::Leaf(leaf) => leaf[vblock as usize & (LEAF - 1)].load(Ordering::SeqCst),
            Place::Run(run) => run_entry(run, vblock as usize & (LEAF - 1)),
        }
    }

    /// Whether `get_near` can look `vblock` up: it lies under the first
    /// middle.
    #[inline(always)]
    pub fn is_near(vblock: u64) -> bool {
        vblock < FIRST_SPAN
    }

    /// `get` of a block that `is_near`, without the general case's tests
    /// of the top index, and runs first: what the fast path inlines.
    #[inline(always)]
    pub fn get_near(&self, vblock: u64) -> u64 {
        debug_assert!(Self::is_near(vblock));
        // Masked to the middle's size: in range without a bounds check,
        // and the place `word` gives a near block.
        let pointer =
            self.first[(vblock >> LEAF_BITS) as usize & (MID - 1)].load(Ordering::Acquire);
        let in_leaf = vblock as usize & (LEAF - 1);
        if pointer.addr() & RUN != 0 {
            return run_entry(pointer.addr(), in_leaf);
        }
        match self.place_of(pointer) {
            Place::Leaf(leaf) => leaf[in_leaf].load(Ordering::SeqCst),
            _ => 0,
        }
    }

    /// What `pointer`, a word of one of this table's middles, holds.
    #[inline(always)]
    fn place_of(&self, pointer: *mut Leaf) -> Place<'_> {
        if pointer.addr() & RUN != 0 {
            Place::Run(pointer.addr())
        } else if pointer.is_null() {
            Place::Empty
        } else {
            // SAFETY: a leaf a middle pointed to is never freed while the
            // table lives (a folded one is kept, see the module docs).
            Place::Leaf(unsafe { &*pointer })
        }
    }

    /// The leaf for `vblock`'s place, made (or unfolded from its run) if need
    /// be. Only the metadata core calls this.
    fn leaf_mut(&self, vblock: u64) -> &Leaf {
        let (in_top, in_mid, _) = split(vblock);
        let slot = match in_top {
            0 => &self.first[in_mid],
            _ => {
                let mut mid = self.top[in_top].load(Ordering::Acquire);
                if mid.is_null() {
                    let fresh: Box<Mid> =
                        Box::new(std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())));
                    mid = Box::into_raw(fresh);
                    self.top[in_top].store(mid, Ordering::Release);
                }
                // SAFETY: non-null and owned by this table (see `word`).
                let mid = unsafe { &*mid };
                &mid[in_mid]
            }
        };
        let pointer = slot.load(Ordering::Acquire);
        if !pointer.is_null() && pointer.addr() & RUN == 0 {
            // SAFETY: as in `place`.
            return unsafe { &*pointer };
        }
        // A new leaf, or the run's own leaf back, filled before it is
        // published.
        let kept = self.lock_folded().remove(&(vblock >> LEAF_BITS));
        let leaf = match kept {
            Some(leaf) => leaf,
            None => {
                self.leaves.fetch_add(1, Ordering::Relaxed);
                Box::new(std::array::from_fn(|_| AtomicU64::new(0)))
            }
        };
        for (in_leaf, entry) in leaf.iter().enumerate() {
            let value = if pointer.is_null() {
                0
            } else {
                run_entry(pointer.addr(), in_leaf)
            };
            entry.store(value, Ordering::Relaxed);
        }
        let leaf = Box::into_raw(leaf);
        slot.store(leaf, Ordering::Release);
        // SAFETY: just published; owned by the table from now on.
        unsafe { &*leaf }
    }

    fn lock_folded(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Box<Leaf>>> {
        // Only the metadata core and Drop take it; a panic while holding it
        // leaves a plain map behind, still usable.
        self.folded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds `vblock`'s leaf into a run if its entries make one.
    fn try_fold(&self, vblock: u64, leaf: &Leaf) {
        let first = leaf[0].load(Ordering::Relaxed);
        let last = leaf[LEAF - 1].load(Ordering::Relaxed);
        let runs = |entry: u64, in_leaf: usize| {
            entry & !(RUN_FLAGS | BLOCK_MASK) == 0
                && entry & MAPPED != 0
                && entry & RUN_FLAGS == first & RUN_FLAGS
                && entry & BLOCK_MASK == (first & BLOCK_MASK) + in_leaf as u64
        };
        // Both ends first: a leaf still filling up fails here, cheaply.
        if (first & BLOCK_MASK) + (LEAF as u64 - 1) > BLOCK_MASK
            || !runs(first, 0)
            || !runs(last, LEAF - 1)
        {
            return;
        }
        if !leaf
            .iter()
            .enumerate()
            .all(|(in_leaf, entry)| runs(entry.load(Ordering::Relaxed), in_leaf))
        {
            return;
        }
        let Some(word) = self.word(vblock) else {
            return;
        };
        let pointer = word.load(Ordering::Acquire);
        word.store(run_word(first), Ordering::SeqCst);
        // SAFETY: `pointer` is the live leaf `leaf` came from (only this core
        // changes the word); ownership moves to the kept map.
        let kept = unsafe { Box::from_raw(pointer) };
        self.lock_folded().insert(vblock >> LEAF_BITS, kept);
    }

    /// Stores `entry` for `vblock`. Only the metadata core calls this.
    pub fn set(&self, vblock: u64, entry: u64) {
        if vblock >= MAX_VBLOCKS {
            return;
        }
        let in_leaf = vblock as usize & (LEAF - 1);
        match self.place(vblock) {
            Place::Empty if entry == 0 => return,
            Place::Run(run) if run_entry(run, in_leaf) == entry => return,
            _ => {}
        }
        let leaf = self.leaf_mut(vblock);
        leaf[in_leaf].store(entry, Ordering::SeqCst);
        if entry & MAPPED != 0 && entry & BUSY == 0 {
            self.try_fold(vblock, leaf);
        }
    }

    /// Sets or clears bits of an existing entry (no-op when unmapped).
    pub fn update(&self, vblock: u64, f: impl FnOnce(u64) -> u64) {
        let old = self.get(vblock);
        let new = f(old);
        if new != old {
            self.set(vblock, new);
        }
    }

    /// Every non-zero entry, in virtual block order.
    pub fn for_each(&self, mut f: impl FnMut(u64, u64)) {
        for (in_top, mid) in self.middles() {
            for (in_mid, word) in mid.iter().enumerate() {
                let base = ((in_top << (MID_BITS + LEAF_BITS)) | (in_mid << LEAF_BITS)) as u64;
                let pointer = word.load(Ordering::Acquire);
                if pointer.addr() & RUN != 0 {
                    for in_leaf in 0..LEAF {
                        f(base + in_leaf as u64, run_entry(pointer.addr(), in_leaf));
                    }
                    continue;
                }
                if pointer.is_null() {
                    continue;
                }
                // SAFETY: see `place`.
                for (in_leaf, entry) in unsafe { &*pointer }.iter().enumerate() {
                    let entry = entry.load(Ordering::Acquire);
                    if entry != 0 {
                        f(base + in_leaf as u64, entry);
                    }
                }
            }
        }
    }

    /// The middles that exist, by top index.
    fn middles(&self) -> impl Iterator<Item = (usize, &Mid)> {
        let rest = self
            .top
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(in_top, mid)| {
                let mid = mid.load(Ordering::Acquire);
                // SAFETY: see `word`.
                (!mid.is_null()).then(|| (in_top, unsafe { &*mid }))
            });
        std::iter::once((0, &self.first)).chain(rest)
    }

    /// Marks every mapped entry shared (after a snapshot of the volume).
    /// A run stays a run, with the flag.
    pub fn mark_all_shared(&self) {
        let mut changes = Vec::new();
        self.for_each(|vblock, entry| {
            if entry & MAPPED != 0 && entry & SHARED == 0 {
                changes.push((vblock, entry | SHARED));
            }
        });
        for (vblock, entry) in changes {
            if vblock as usize & (LEAF - 1) == 0 {
                if let (Place::Run(run), Some(word)) = (self.place(vblock), self.word(vblock)) {
                    word.store(run_word(run_entry(run, 0) | SHARED), Ordering::SeqCst);
                    continue;
                }
            }
            self.set(vblock, entry);
        }
    }

    /// Bytes of table memory (leaves, live or kept for a run, and middles).
    pub fn memory_bytes(&self) -> u64 {
        let mids = self.middles().count() as u64;
        self.leaves.load(Ordering::Relaxed) * std::mem::size_of::<Leaf>() as u64
            + mids * std::mem::size_of::<Mid>() as u64
            + (TOP * 8) as u64
    }

    /// How many places are runs.
    #[cfg(test)]
    fn runs(&self) -> usize {
        self.lock_folded().len()
    }
}

impl Drop for MapTable {
    fn drop(&mut self) {
        for (_, mid) in self.middles() {
            for word in mid.iter() {
                let pointer = word.load(Ordering::Acquire);
                if !pointer.is_null() && pointer.addr() & RUN == 0 {
                    // SAFETY: we own it and nobody else can reach it any
                    // more.
                    drop(unsafe { Box::from_raw(pointer) });
                }
            }
        }
        for mid in self.top.iter().skip(1) {
            let mid = mid.load(Ordering::Acquire);
            if !mid.is_null() {
                // SAFETY: as above; its leaves went in the loop before.
                drop(unsafe { Box::from_raw(mid) });
            }
        }
        // The kept leaves go with the map.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_entries_round_trip_and_iterate_in_order() {
        let table = MapTable::default();
        let keys = [0u64, 1, 511, 512, 1 << 21, (1 << 33) - 1];
        for (i, &vblock) in keys.iter().enumerate() {
            table.set(vblock, mapped(i as u64 + 7, i % 2 == 0));
        }
        for (i, &vblock) in keys.iter().enumerate() {
            assert_eq!(table.get(vblock), mapped(i as u64 + 7, i % 2 == 0));
        }
        assert_eq!(table.get(2), 0);
        assert_eq!(table.get(MAX_VBLOCKS), 0);
        let mut seen = Vec::new();
        table.for_each(|vblock, _| seen.push(vblock));
        assert_eq!(seen, keys);
        table.mark_all_shared();
        assert!(keys.iter().all(|&vblock| table.get(vblock) & SHARED != 0));
        table.set(1, 0);
        assert_eq!(table.get(1), 0);
    }

    /// Fills leaf `leaf` (512 blocks from `leaf * 512`) with consecutive data
    /// blocks from `first`.
    fn fill_leaf(table: &MapTable, leaf: u64, first: u64, shared: bool) {
        for in_leaf in 0..LEAF as u64 {
            table.set(leaf * 512 + in_leaf, mapped(first + in_leaf, shared));
        }
    }

    #[test]
    fn a_leaf_of_consecutive_blocks_folds_into_a_run_and_unfolds_on_change() {
        let table = MapTable::default();
        // Filled out of order, ends first: folds only once all are there.
        table.set(511, mapped(1000 + 511, false));
        table.set(0, mapped(1000, false));
        assert_eq!(table.runs(), 0);
        fill_leaf(&table, 0, 1000, false);
        assert_eq!(table.runs(), 1);
        assert_eq!(table.get(7), mapped(1007, false));
        assert_eq!(table.get(511), mapped(1511, false));
        let before = table.memory_bytes();
        // Busy (a copy or a provision under way) unfolds it.
        table.update(7, |entry| entry | BUSY);
        assert_eq!(table.runs(), 0);
        assert_eq!(table.get(7), mapped(1007, false) | BUSY);
        assert_eq!(table.get(8), mapped(1008, false));
        // Done, same block: a run again, and the same leaf came back.
        table.update(7, |entry| entry & !BUSY);
        assert_eq!(table.runs(), 1);
        // Remapped elsewhere: stays a leaf.
        table.set(9, mapped(5, false));
        assert_eq!(table.runs(), 0);
        assert_eq!(table.get(9), mapped(5, false));
        assert_eq!(table.get(10), mapped(1010, false));
        assert_eq!(table.memory_bytes(), before, "folding cost memory");
        let mut count = 0;
        table.for_each(|vblock, entry| {
            assert_eq!(entry, table.get(vblock));
            count += 1;
        });
        assert_eq!(count, 512);
    }

    #[test]
    fn unmapped_busy_or_mixed_leaves_never_fold() {
        let table = MapTable::default();
        // A hole.
        fill_leaf(&table, 0, 0, false);
        table.set(3, 0);
        // Mixed flags.
        fill_leaf(&table, 1, 512, false);
        table.set(512 + 100, mapped(612, true));
        // A busy entry with the right block.
        fill_leaf(&table, 2, 1024, false);
        table.set(1024 + 511, mapped(1024 + 511, false) | BUSY);
        // Consecutive but past the largest data block.
        fill_leaf(&table, 3, BLOCK_MASK - 100, false);
        assert_eq!(table.runs(), 0);
        assert_eq!(table.get(3), 0);
        assert_eq!(table.get(612), mapped(612, true));
        assert_eq!(table.get(1535) & BUSY, BUSY);
    }

    #[test]
    fn marking_shared_keeps_runs_runs() {
        let table = MapTable::default();
        fill_leaf(&table, 0, 0, false);
        fill_leaf(&table, 1, 9000, false);
        table.set(1024, mapped(3, false));
        table.mark_all_shared();
        assert_eq!(table.runs(), 2);
        assert_eq!(table.get(5), mapped(5, true));
        assert_eq!(table.get(600), mapped(9088, true));
        assert_eq!(table.get(1024), mapped(3, true));
        // Copy on write of one block breaks only its run.
        table.set(600, mapped(77, false));
        assert_eq!(table.runs(), 1);
        assert_eq!(table.get(601), mapped(9089, true));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any sequence of stores reads back as a plain map would, however
        /// the leaves fold and unfold; memory stays one leaf per place.
        #[test]
        fn reads_match_a_plain_map(
            ops in proptest::collection::vec((0u64..1536, 0u8..6, 0u64..4), 1..200)
        ) {
            let table = MapTable::default();
            let mut model = std::collections::BTreeMap::new();
            for (vblock, op, x) in ops {
                match op {
                    // Runs of consecutive stores, the common case.
                    0..=2 => {
                        let start = vblock & !511;
                        for in_leaf in 0..512 {
                            let entry = mapped(start * 2 + in_leaf + x, x == 3);
                            table.set(start + in_leaf, entry);
                            model.insert(start + in_leaf, entry);
                        }
                    }
                    3 => {
                        let entry = mapped(vblock + x, false) | if x == 0 { BUSY } else { 0 };
                        table.set(vblock, entry);
                        model.insert(vblock, entry);
                    }
                    4 => {
                        table.set(vblock, 0);
                        model.remove(&vblock);
                    }
                    _ => {
                        table.mark_all_shared();
                        for entry in model.values_mut() {
                            if *entry & MAPPED != 0 {
                                *entry |= SHARED;
                            }
                        }
                    }
                }
            }
            for vblock in 0..1536 {
                proptest::prop_assert_eq!(table.get(vblock), model.get(&vblock).copied().unwrap_or(0));
            }
            let mut seen = std::collections::BTreeMap::new();
            table.for_each(|vblock, entry| { seen.insert(vblock, entry); });
            model.retain(|_, entry| *entry != 0);
            proptest::prop_assert_eq!(seen, model);
            proptest::prop_assert!(table.leaves.load(Ordering::Relaxed) <= 3);
        }
    }

    #[test]
    fn dense_cost_is_about_eight_bytes_per_block() {
        let table = MapTable::default();
        let count = 1u64 << 20;
        for vblock in 0..count {
            table.set(vblock, mapped(vblock, false));
        }
        let per = table.memory_bytes() as f64 / count as f64;
        assert!(per <= 16.0, "{per} bytes per mapped block");
    }
}
