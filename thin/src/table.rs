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
    let w = (first_entry & RUN_FLAGS) | (first_entry & BLOCK_MASK) << 1 | RUN as u64;
    ptr::without_provenance_mut(w as usize)
}

/// The entry of place `l` of the run `w`.
#[inline]
fn run_entry(w: usize, l: usize) -> u64 {
    let w = w as u64;
    (w & RUN_FLAGS) | (((w >> 1) & BLOCK_MASK) + l as u64)
}

pub struct MapTable {
    /// The middle of the first 2^21 blocks, inline (`top[0]` stays null):
    /// a lookup there is one load from the volume, not two or three.
    first: Mid,
    /// The other middles.
    top: Box<[AtomicPtr<Mid>]>,
    leaves: AtomicU64,
    /// Folded leaves by leaf number (vb >> 9), kept for their runs.
    folded: Mutex<HashMap<u64, Box<Leaf>>>,
}

/// A mapped entry for `block`.
pub fn mapped(block: u64, shared: bool) -> u64 {
    MAPPED | (block & BLOCK_MASK) | if shared { SHARED } else { 0 }
}

fn split(vb: u64) -> (usize, usize, usize) {
    (
        (vb >> (LEAF_BITS + MID_BITS)) as usize & (TOP - 1),
        (vb >> LEAF_BITS) as usize & (MID - 1),
        vb as usize & (LEAF - 1),
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
    /// The middle word for `vb`'s place, if its middle exists.
    #[inline]
    fn word(&self, vb: u64) -> Option<&AtomicPtr<Leaf>> {
        if vb >= MAX_VBLOCKS {
            return None;
        }
        let (t, m, _) = split(vb);
        if t == 0 {
            return Some(&self.first[m]);
        }
        let mid = self.top[t].load(Ordering::Acquire);
        if mid.is_null() {
            return None;
        }
        // SAFETY: a non-null middle is a live allocation owned by this
        // table; it is freed only in Drop, when no reader is left.
        Some(&unsafe { &*mid }[m])
    }

    #[inline]
    fn place(&self, vb: u64) -> Place<'_> {
        match self.word(vb) {
            Some(w) => self.place_of(w.load(Ordering::Acquire)),
            None => Place::Empty,
        }
    }

    /// The entry for `vb` (0 when nothing was ever stored there).
    #[inline]
    pub fn get(&self, vb: u64) -> u64 {
        if Self::is_near(vb) {
            return self.get_near(vb);
        }
        match self.place(vb) {
            Place::Empty => 0,
            Place::Leaf(leaf) => leaf[vb as usize & (LEAF - 1)].load(Ordering::SeqCst),
            Place::Run(w) => run_entry(w, vb as usize & (LEAF - 1)),
        }
    }

    /// Whether `get_near` can look `vb` up: it lies under the first
    /// middle.
    #[inline(always)]
    pub fn is_near(vb: u64) -> bool {
        vb < FIRST_SPAN
    }

    /// `get` of a block that `is_near`, without the general case's tests
    /// of the top index, and runs first: what the fast path inlines.
    #[inline(always)]
    pub fn get_near(&self, vb: u64) -> u64 {
        debug_assert!(Self::is_near(vb));
        // Masked to the middle's size: in range without a bounds check,
        // and the place `word` gives a near block.
        let p = self.first[(vb >> LEAF_BITS) as usize & (MID - 1)].load(Ordering::Acquire);
        let l = vb as usize & (LEAF - 1);
        if p.addr() & RUN != 0 {
            return run_entry(p.addr(), l);
        }
        match self.place_of(p) {
            Place::Leaf(leaf) => leaf[l].load(Ordering::SeqCst),
            _ => 0,
        }
    }

    /// What `p`, a word of one of this table's middles, holds.
    #[inline(always)]
    fn place_of(&self, p: *mut Leaf) -> Place<'_> {
        if p.addr() & RUN != 0 {
            Place::Run(p.addr())
        } else if p.is_null() {
            Place::Empty
        } else {
            // SAFETY: a leaf a middle pointed to is never freed while the
            // table lives (a folded one is kept, see the module docs).
            Place::Leaf(unsafe { &*p })
        }
    }

    /// The leaf for `vb`'s place, made (or unfolded from its run) if need
    /// be. Only the metadata core calls this.
    fn leaf_mut(&self, vb: u64) -> &Leaf {
        let (t, m, _) = split(vb);
        let slot = match t {
            0 => &self.first[m],
            _ => {
                let mut mid = self.top[t].load(Ordering::Acquire);
                if mid.is_null() {
                    let fresh: Box<Mid> =
                        Box::new(std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())));
                    mid = Box::into_raw(fresh);
                    self.top[t].store(mid, Ordering::Release);
                }
                // SAFETY: non-null and owned by this table (see `word`).
                let mid = unsafe { &*mid };
                &mid[m]
            }
        };
        let p = slot.load(Ordering::Acquire);
        if !p.is_null() && p.addr() & RUN == 0 {
            // SAFETY: as in `place`.
            return unsafe { &*p };
        }
        // A new leaf, or the run's own leaf back, filled before it is
        // published.
        let kept = self.lock_folded().remove(&(vb >> LEAF_BITS));
        let leaf = match kept {
            Some(l) => l,
            None => {
                self.leaves.fetch_add(1, Ordering::Relaxed);
                Box::new(std::array::from_fn(|_| AtomicU64::new(0)))
            }
        };
        for (l, e) in leaf.iter().enumerate() {
            let v = if p.is_null() {
                0
            } else {
                run_entry(p.addr(), l)
            };
            e.store(v, Ordering::Relaxed);
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

    /// Folds `vb`'s leaf into a run if its entries make one.
    fn try_fold(&self, vb: u64, leaf: &Leaf) {
        let first = leaf[0].load(Ordering::Relaxed);
        let last = leaf[LEAF - 1].load(Ordering::Relaxed);
        let runs = |e: u64, l: usize| {
            e & !(RUN_FLAGS | BLOCK_MASK) == 0
                && e & MAPPED != 0
                && e & RUN_FLAGS == first & RUN_FLAGS
                && e & BLOCK_MASK == (first & BLOCK_MASK) + l as u64
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
            .all(|(l, e)| runs(e.load(Ordering::Relaxed), l))
        {
            return;
        }
        let Some(word) = self.word(vb) else { return };
        let p = word.load(Ordering::Acquire);
        word.store(run_word(first), Ordering::SeqCst);
        // SAFETY: `p` is the live leaf `leaf` came from (only this core
        // changes the word); ownership moves to the kept map.
        let kept = unsafe { Box::from_raw(p) };
        self.lock_folded().insert(vb >> LEAF_BITS, kept);
    }

    /// Stores `entry` for `vb`. Only the metadata core calls this.
    pub fn set(&self, vb: u64, entry: u64) {
        if vb >= MAX_VBLOCKS {
            return;
        }
        let l = vb as usize & (LEAF - 1);
        match self.place(vb) {
            Place::Empty if entry == 0 => return,
            Place::Run(w) if run_entry(w, l) == entry => return,
            _ => {}
        }
        let leaf = self.leaf_mut(vb);
        leaf[l].store(entry, Ordering::SeqCst);
        if entry & MAPPED != 0 && entry & BUSY == 0 {
            self.try_fold(vb, leaf);
        }
    }

    /// Sets or clears bits of an existing entry (no-op when unmapped).
    pub fn update(&self, vb: u64, f: impl FnOnce(u64) -> u64) {
        let e = self.get(vb);
        let n = f(e);
        if n != e {
            self.set(vb, n);
        }
    }

    /// Every non-zero entry, in virtual block order.
    pub fn for_each(&self, mut f: impl FnMut(u64, u64)) {
        for (t, mid) in self.middles() {
            for (m, word) in mid.iter().enumerate() {
                let base = ((t << (MID_BITS + LEAF_BITS)) | (m << LEAF_BITS)) as u64;
                let p = word.load(Ordering::Acquire);
                if p.addr() & RUN != 0 {
                    for l in 0..LEAF {
                        f(base + l as u64, run_entry(p.addr(), l));
                    }
                    continue;
                }
                if p.is_null() {
                    continue;
                }
                // SAFETY: see `place`.
                for (l, e) in unsafe { &*p }.iter().enumerate() {
                    let e = e.load(Ordering::Acquire);
                    if e != 0 {
                        f(base + l as u64, e);
                    }
                }
            }
        }
    }

    /// The middles that exist, by top index.
    fn middles(&self) -> impl Iterator<Item = (usize, &Mid)> {
        let rest = self.top.iter().enumerate().skip(1).filter_map(|(t, mid)| {
            let mid = mid.load(Ordering::Acquire);
            // SAFETY: see `word`.
            (!mid.is_null()).then(|| (t, unsafe { &*mid }))
        });
        std::iter::once((0, &self.first)).chain(rest)
    }

    /// Marks every mapped entry shared (after a snapshot of the volume).
    /// A run stays a run, with the flag.
    pub fn mark_all_shared(&self) {
        let mut v = Vec::new();
        self.for_each(|vb, e| {
            if e & MAPPED != 0 && e & SHARED == 0 {
                v.push((vb, e | SHARED));
            }
        });
        for (vb, e) in v {
            if vb as usize & (LEAF - 1) == 0 {
                if let (Place::Run(w), Some(word)) = (self.place(vb), self.word(vb)) {
                    word.store(run_word(run_entry(w, 0) | SHARED), Ordering::SeqCst);
                    continue;
                }
            }
            self.set(vb, e);
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
                let p = word.load(Ordering::Acquire);
                if !p.is_null() && p.addr() & RUN == 0 {
                    // SAFETY: we own it and nobody else can reach it any
                    // more.
                    drop(unsafe { Box::from_raw(p) });
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
        let t = MapTable::default();
        let keys = [0u64, 1, 511, 512, 1 << 21, (1 << 33) - 1];
        for (i, &k) in keys.iter().enumerate() {
            t.set(k, mapped(i as u64 + 7, i % 2 == 0));
        }
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(t.get(k), mapped(i as u64 + 7, i % 2 == 0));
        }
        assert_eq!(t.get(2), 0);
        assert_eq!(t.get(MAX_VBLOCKS), 0);
        let mut seen = Vec::new();
        t.for_each(|vb, _| seen.push(vb));
        assert_eq!(seen, keys);
        t.mark_all_shared();
        assert!(keys.iter().all(|&k| t.get(k) & SHARED != 0));
        t.set(1, 0);
        assert_eq!(t.get(1), 0);
    }

    /// Fills leaf `n` (512 blocks from `n * 512`) with consecutive data
    /// blocks from `first`.
    fn fill_leaf(t: &MapTable, n: u64, first: u64, shared: bool) {
        for l in 0..LEAF as u64 {
            t.set(n * 512 + l, mapped(first + l, shared));
        }
    }

    #[test]
    fn a_leaf_of_consecutive_blocks_folds_into_a_run_and_unfolds_on_change() {
        let t = MapTable::default();
        // Filled out of order, ends first: folds only once all are there.
        t.set(511, mapped(1000 + 511, false));
        t.set(0, mapped(1000, false));
        assert_eq!(t.runs(), 0);
        fill_leaf(&t, 0, 1000, false);
        assert_eq!(t.runs(), 1);
        assert_eq!(t.get(7), mapped(1007, false));
        assert_eq!(t.get(511), mapped(1511, false));
        let before = t.memory_bytes();
        // Busy (a copy or a provision under way) unfolds it.
        t.update(7, |e| e | BUSY);
        assert_eq!(t.runs(), 0);
        assert_eq!(t.get(7), mapped(1007, false) | BUSY);
        assert_eq!(t.get(8), mapped(1008, false));
        // Done, same block: a run again, and the same leaf came back.
        t.update(7, |e| e & !BUSY);
        assert_eq!(t.runs(), 1);
        // Remapped elsewhere: stays a leaf.
        t.set(9, mapped(5, false));
        assert_eq!(t.runs(), 0);
        assert_eq!(t.get(9), mapped(5, false));
        assert_eq!(t.get(10), mapped(1010, false));
        assert_eq!(t.memory_bytes(), before, "folding cost memory");
        let mut n = 0;
        t.for_each(|vb, e| {
            assert_eq!(e, t.get(vb));
            n += 1;
        });
        assert_eq!(n, 512);
    }

    #[test]
    fn unmapped_busy_or_mixed_leaves_never_fold() {
        let t = MapTable::default();
        // A hole.
        fill_leaf(&t, 0, 0, false);
        t.set(3, 0);
        // Mixed flags.
        fill_leaf(&t, 1, 512, false);
        t.set(512 + 100, mapped(612, true));
        // A busy entry with the right block.
        fill_leaf(&t, 2, 1024, false);
        t.set(1024 + 511, mapped(1024 + 511, false) | BUSY);
        // Consecutive but past the largest data block.
        fill_leaf(&t, 3, BLOCK_MASK - 100, false);
        assert_eq!(t.runs(), 0);
        assert_eq!(t.get(3), 0);
        assert_eq!(t.get(612), mapped(612, true));
        assert_eq!(t.get(1535) & BUSY, BUSY);
    }

    #[test]
    fn marking_shared_keeps_runs_runs() {
        let t = MapTable::default();
        fill_leaf(&t, 0, 0, false);
        fill_leaf(&t, 1, 9000, false);
        t.set(1024, mapped(3, false));
        t.mark_all_shared();
        assert_eq!(t.runs(), 2);
        assert_eq!(t.get(5), mapped(5, true));
        assert_eq!(t.get(600), mapped(9088, true));
        assert_eq!(t.get(1024), mapped(3, true));
        // Copy on write of one block breaks only its run.
        t.set(600, mapped(77, false));
        assert_eq!(t.runs(), 1);
        assert_eq!(t.get(601), mapped(9089, true));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any sequence of stores reads back as a plain map would, however
        /// the leaves fold and unfold; memory stays one leaf per place.
        #[test]
        fn reads_match_a_plain_map(
            ops in proptest::collection::vec((0u64..1536, 0u8..6, 0u64..4), 1..200)
        ) {
            let t = MapTable::default();
            let mut model = std::collections::BTreeMap::new();
            for (vb, op, x) in ops {
                match op {
                    // Runs of consecutive stores, the common case.
                    0..=2 => {
                        let start = vb & !511;
                        for l in 0..512 {
                            let e = mapped(start * 2 + l + x, x == 3);
                            t.set(start + l, e);
                            model.insert(start + l, e);
                        }
                    }
                    3 => {
                        let e = mapped(vb + x, false) | if x == 0 { BUSY } else { 0 };
                        t.set(vb, e);
                        model.insert(vb, e);
                    }
                    4 => {
                        t.set(vb, 0);
                        model.remove(&vb);
                    }
                    _ => {
                        t.mark_all_shared();
                        for e in model.values_mut() {
                            if *e & MAPPED != 0 {
                                *e |= SHARED;
                            }
                        }
                    }
                }
            }
            for vb in 0..1536 {
                proptest::prop_assert_eq!(t.get(vb), model.get(&vb).copied().unwrap_or(0));
            }
            let mut seen = std::collections::BTreeMap::new();
            t.for_each(|vb, e| { seen.insert(vb, e); });
            model.retain(|_, e| *e != 0);
            proptest::prop_assert_eq!(seen, model);
            proptest::prop_assert!(t.leaves.load(Ordering::Relaxed) <= 3);
        }
    }

    #[test]
    fn dense_cost_is_about_eight_bytes_per_block() {
        let t = MapTable::default();
        let n = 1u64 << 20;
        for vb in 0..n {
            t.set(vb, mapped(vb, false));
        }
        let per = t.memory_bytes() as f64 / n as f64;
        assert!(per <= 16.0, "{per} bytes per mapped block");
    }
}
