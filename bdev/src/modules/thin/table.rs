//! A volume's in-memory mapping table: what the fast path reads.
//!
//! One `u64` per virtual block in a three-level radix tree (4096 x 4096 x
//! 512 entries, so 2^33 virtual blocks), with leaves and middles allocated
//! on first use. Only the metadata core writes it; I/O cores read it with
//! plain atomic loads, no lock. A leaf of 512 entries costs 4 KiB, 8 bytes
//! per block once dense.
//!
//! An entry: bit 63 mapped, bit 62 maybe shared (the time-stamp
//! approximation: writes must copy), bit 61 busy (the metadata core holds
//! the block: it is being provisioned, copied or discarded), low 40 bits
//! the data block.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

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

type Leaf = [AtomicU64; LEAF];
type Mid = [AtomicPtr<Leaf>; MID];

pub struct MapTable {
    top: Box<[AtomicPtr<Mid>]>,
    leaves: AtomicU64,
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn prefetch(slot: &AtomicU64) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch is a hint: it never faults, writes or changes what
    // a later access sees, and `slot` is a live reference.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(slot.as_ptr().cast::<i8>().cast_const()) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn prefetch(_: &AtomicU64) {}

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

impl Default for MapTable {
    fn default() -> Self {
        MapTable {
            top: (0..TOP).map(|_| AtomicPtr::new(ptr::null_mut())).collect(),
            leaves: AtomicU64::new(0),
        }
    }
}

impl MapTable {
    /// The entry for `vb` (0 when nothing was ever stored there).
    #[inline]
    pub fn get(&self, vb: u64) -> u64 {
        self.slot(vb).map_or(0, |s| s.load(Ordering::SeqCst))
    }

    /// Where `vb`'s entry lives, if its leaf exists, with its cache line
    /// on its way in. A slot never moves or goes away while the table
    /// lives, so the fast path finds it before it counts the I/O in its
    /// epoch (the count's locked instruction holds back later loads, not
    /// prefetches) and reads it after.
    #[inline]
    pub fn slot(&self, vb: u64) -> Option<&AtomicU64> {
        if vb >= MAX_VBLOCKS {
            return None;
        }
        let (t, m, l) = split(vb);
        let mid = self.top[t].load(Ordering::Acquire);
        if mid.is_null() {
            return None;
        }
        // SAFETY: a non-null middle is a live allocation owned by this
        // table; it is freed only in Drop, when no reader is left.
        let leaf = unsafe { &*mid }[m].load(Ordering::Acquire);
        if leaf.is_null() {
            return None;
        }
        // SAFETY: as above, for leaves.
        let slot = &unsafe { &*leaf }[l];
        prefetch(slot);
        Some(slot)
    }

    /// Stores `entry` for `vb`. Only the metadata core calls this.
    pub fn set(&self, vb: u64, entry: u64) {
        if vb >= MAX_VBLOCKS {
            return;
        }
        if entry == 0 && self.get(vb) == 0 {
            return;
        }
        let (t, m, l) = split(vb);
        let mut mid = self.top[t].load(Ordering::Acquire);
        if mid.is_null() {
            let fresh: Box<Mid> =
                Box::new(std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())));
            mid = Box::into_raw(fresh);
            self.top[t].store(mid, Ordering::Release);
        }
        // SAFETY: non-null and owned by this table (see `get`).
        let slot = &unsafe { &*mid }[m];
        let mut leaf = slot.load(Ordering::Acquire);
        if leaf.is_null() {
            let fresh: Box<Leaf> = Box::new(std::array::from_fn(|_| AtomicU64::new(0)));
            leaf = Box::into_raw(fresh);
            slot.store(leaf, Ordering::Release);
            self.leaves.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        let leaf = unsafe { &*leaf };
        leaf[l].store(entry, Ordering::SeqCst);
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
        for (t, mid) in self.top.iter().enumerate() {
            let mid = mid.load(Ordering::Acquire);
            if mid.is_null() {
                continue;
            }
            // SAFETY: see `get`.
            for (m, leaf) in unsafe { &*mid }.iter().enumerate() {
                let leaf = leaf.load(Ordering::Acquire);
                if leaf.is_null() {
                    continue;
                }
                // SAFETY: see `get`.
                for (l, e) in unsafe { &*leaf }.iter().enumerate() {
                    let e = e.load(Ordering::Acquire);
                    if e != 0 {
                        let vb = ((t << (MID_BITS + LEAF_BITS)) | (m << LEAF_BITS) | l) as u64;
                        f(vb, e);
                    }
                }
            }
        }
    }

    /// Marks every mapped entry shared (after a snapshot of the volume).
    pub fn mark_all_shared(&self) {
        let mut v = Vec::new();
        self.for_each(|vb, e| {
            if e & MAPPED != 0 {
                v.push((vb, e | SHARED));
            }
        });
        for (vb, e) in v {
            self.set(vb, e);
        }
    }

    /// Bytes of table memory (leaves and middles).
    pub fn memory_bytes(&self) -> u64 {
        let mids = self
            .top
            .iter()
            .filter(|m| !m.load(Ordering::Relaxed).is_null())
            .count() as u64;
        self.leaves.load(Ordering::Relaxed) * std::mem::size_of::<Leaf>() as u64
            + mids * std::mem::size_of::<Mid>() as u64
            + (TOP * 8) as u64
    }
}

impl Drop for MapTable {
    fn drop(&mut self) {
        for mid in self.top.iter() {
            let mid = mid.load(Ordering::Acquire);
            if mid.is_null() {
                continue;
            }
            // SAFETY: we own it and nobody else can reach it any more.
            let mid = unsafe { Box::from_raw(mid) };
            for leaf in mid.iter() {
                let leaf = leaf.load(Ordering::Acquire);
                if !leaf.is_null() {
                    // SAFETY: as above.
                    drop(unsafe { Box::from_raw(leaf) });
                }
            }
        }
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
