//! Space maps: a count per block, stored on disk as 2-bit entries in
//! bitmap blocks (3 = "look in the overflow tree") listed by index entries.
//! This file holds the block layouts and the in-memory counts.

use std::collections::{BTreeMap, BTreeSet};

use super::checksum::{seal, verify, BlockKind};
use super::le::{put_u64, u64_at};
use super::values::IndexEntry;
use crate::{Block, MetadataError, BLOCK_SIZE};

const BITMAP_HEADER: usize = 16;
/// Blocks one bitmap block covers: (4096 - 16) bytes x 4 entries.
pub const ENTRIES_PER_BITMAP: u64 = ((BLOCK_SIZE - BITMAP_HEADER) * 4) as u64;
const _: () = assert!(ENTRIES_PER_BITMAP == 16320);
/// Index entries in the metadata space map's single index block.
pub const MAX_METADATA_BITMAPS: usize = (BLOCK_SIZE - 16) / IndexEntry::SIZE;
const _: () = assert!(MAX_METADATA_BITMAPS == 255);
/// The most metadata blocks the format can count.
pub const MAX_METADATA_BLOCKS: u64 = MAX_METADATA_BITMAPS as u64 * ENTRIES_PER_BITMAP;

/// The 2-bit entry of `i` in a bitmap's payload. Bit 2i (little-endian
/// bit order) is the high bit, bit 2i+1 the low bit.
#[inline]
fn get2(payload: &[u8], i: usize) -> u8 {
    let byte = payload[i / 4];
    let shift = 2 * (i % 4);
    let hi = (byte >> shift) & 1;
    let lo = (byte >> (shift + 1)) & 1;
    (hi << 1) | lo
}

#[inline]
fn set2(payload: &mut [u8], i: usize, v: u8) {
    let shift = 2 * (i % 4);
    let byte = &mut payload[i / 4];
    *byte &= !(3 << shift);
    *byte |= ((v >> 1) & 1) << shift | (v & 1) << (shift + 1);
}

/// Encodes up to 16320 entries (each 0..=3) as the bitmap block at `at`.
pub fn pack_bitmap(entries: &[u8], at: u64) -> Box<Block> {
    debug_assert!(entries.len() as u64 <= ENTRIES_PER_BITMAP);
    let mut b: Box<Block> = Box::new([0u8; BLOCK_SIZE]);
    put_u64(&mut b[..], 8, at);
    for (i, &e) in entries.iter().enumerate() {
        set2(&mut b[BITMAP_HEADER..], i, e.min(3));
    }
    seal(&mut b, BlockKind::Bitmap);
    b
}

/// Decodes the bitmap block at `at` into its 16320 entries.
pub fn unpack_bitmap(b: &Block, at: u64) -> Result<Vec<u8>, MetadataError> {
    verify(b, BlockKind::Bitmap, at)?;
    let recorded = u64_at(b, 8);
    if recorded != at {
        return Err(MetadataError::Location {
            block: at,
            recorded,
        });
    }
    Ok((0..ENTRIES_PER_BITMAP as usize)
        .map(|i| get2(&b[BITMAP_HEADER..], i))
        .collect())
}

/// Encodes the metadata space map's index block.
pub fn pack_index(entries: &[IndexEntry], at: u64) -> Result<Box<Block>, MetadataError> {
    if entries.len() > MAX_METADATA_BITMAPS {
        return Err(MetadataError::Corrupt {
            block: at,
            what: format!("{} bitmaps exceed the index block", entries.len()),
        });
    }
    let mut b: Box<Block> = Box::new([0u8; BLOCK_SIZE]);
    put_u64(&mut b[..], 8, at);
    for (i, e) in entries.iter().enumerate() {
        e.pack(&mut b[16 + i * IndexEntry::SIZE..]);
    }
    seal(&mut b, BlockKind::Index);
    Ok(b)
}

/// Decodes the index block at `at`, keeping the first `nr_bitmaps` entries.
pub fn unpack_index(
    b: &Block,
    at: u64,
    nr_bitmaps: usize,
) -> Result<Vec<IndexEntry>, MetadataError> {
    verify(b, BlockKind::Index, at)?;
    let recorded = u64_at(b, 8);
    if recorded != at {
        return Err(MetadataError::Location {
            block: at,
            recorded,
        });
    }
    if nr_bitmaps > MAX_METADATA_BITMAPS {
        return Err(MetadataError::Corrupt {
            block: at,
            what: format!("{nr_bitmaps} bitmaps exceed the index block"),
        });
    }
    Ok((0..nr_bitmaps)
        .map(|i| IndexEntry::unpack(&b[16 + i * IndexEntry::SIZE..]))
        .collect())
}

/// Bitmaps needed to cover `nr_blocks`.
pub fn nr_bitmaps(nr_blocks: u64) -> u64 {
    nr_blocks.div_ceil(ENTRIES_PER_BITMAP)
}

/// Reference counts of `nr_blocks` blocks, kept the way the disk keeps
/// them: 2 bits per block, counts of 3 and more in an overflow map.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    nr_blocks: u64,
    /// 2-bit entries, four per byte, in the on-disk bit order.
    bits: Vec<u8>,
    overflow: BTreeMap<u64, u32>,
    nr_allocated: u64,
    /// Bitmaps changed since the last `take_dirty` (to rewrite at commit).
    dirty: BTreeSet<u64>,
}

impl PartialEq for Counts {
    fn eq(&self, o: &Counts) -> bool {
        (
            self.nr_blocks,
            &self.bits,
            &self.overflow,
            self.nr_allocated,
        ) == (o.nr_blocks, &o.bits, &o.overflow, o.nr_allocated)
    }
}

impl Eq for Counts {}

impl Counts {
    pub fn new(nr_blocks: u64) -> Counts {
        Counts {
            nr_blocks,
            bits: vec![0; nr_blocks.div_ceil(4) as usize],
            overflow: BTreeMap::new(),
            nr_allocated: 0,
            dirty: BTreeSet::new(),
        }
    }

    /// As `new`, for a size read from disk or from a user: too large for
    /// this machine's memory is an error, not an abort.
    pub fn try_new(nr_blocks: u64) -> Result<Counts, crate::MetadataError> {
        let bytes = usize::try_from(nr_blocks.div_ceil(4)).map_err(|_| {
            crate::MetadataError::Invalid(format!("a space map of {nr_blocks} blocks is too large"))
        })?;
        let mut bits = Vec::new();
        bits.try_reserve_exact(bytes).map_err(|_| {
            crate::MetadataError::Invalid(format!(
                "not enough memory for a space map of {nr_blocks} blocks"
            ))
        })?;
        bits.resize(bytes, 0);
        Ok(Counts {
            nr_blocks,
            bits,
            overflow: BTreeMap::new(),
            nr_allocated: 0,
            dirty: BTreeSet::new(),
        })
    }

    pub fn nr_blocks(&self) -> u64 {
        self.nr_blocks
    }

    /// Blocks with a non-zero count.
    pub fn nr_allocated(&self) -> u64 {
        self.nr_allocated
    }

    pub fn nr_free(&self) -> u64 {
        self.nr_blocks - self.nr_allocated
    }

    /// Grows to `nr_blocks` (new blocks free). Never shrinks.
    pub fn extend(&mut self, nr_blocks: u64) {
        if nr_blocks > self.nr_blocks {
            let first_new = nr_bitmaps(self.nr_blocks).saturating_sub(1);
            self.nr_blocks = nr_blocks;
            self.bits.resize(nr_blocks.div_ceil(4) as usize, 0);
            self.dirty.extend(first_new..nr_bitmaps(nr_blocks));
        }
    }

    pub fn get(&self, b: u64) -> u32 {
        if b >= self.nr_blocks {
            return 0;
        }
        match get2(&self.bits, b as usize) {
            3 => self.overflow.get(&b).copied().unwrap_or(3),
            v => v as u32,
        }
    }

    /// Sets the count of `b` (ignored past the end: callers check ranges).
    pub fn set(&mut self, b: u64, count: u32) {
        if b >= self.nr_blocks {
            return;
        }
        let old = self.get(b);
        if (old == 0) != (count == 0) {
            if count == 0 {
                self.nr_allocated = self.nr_allocated.saturating_sub(1);
            } else {
                self.nr_allocated += 1;
            }
        }
        self.dirty.insert(b / ENTRIES_PER_BITMAP);
        if count >= 3 {
            self.overflow.insert(b, count);
            set2(&mut self.bits, b as usize, 3);
        } else {
            self.overflow.remove(&b);
            set2(&mut self.bits, b as usize, count as u8);
        }
    }

    pub fn inc(&mut self, b: u64) {
        let c = self.get(b);
        self.set(b, c.saturating_add(1));
    }

    /// Decrements; a count already at 0 stays 0 and returns false.
    pub fn dec(&mut self, b: u64) -> bool {
        match self.get(b) {
            0 => false,
            c => {
                self.set(b, c - 1);
                true
            }
        }
    }

    /// Bitmaps changed since the last call.
    /// How many bitmaps changed since the last `take_dirty`.
    pub fn nr_dirty(&self) -> usize {
        self.dirty.len()
    }

    /// How many blocks have counts of 3 or more (the overflow tree's size).
    pub fn nr_overflow(&self) -> usize {
        self.overflow.len()
    }

    pub fn take_dirty(&mut self) -> BTreeSet<u64> {
        std::mem::take(&mut self.dirty)
    }

    /// The 2-bit entries of bitmap `j` (for writing it out).
    pub fn bitmap_entries(&self, j: u64) -> Vec<u8> {
        let first = j * ENTRIES_PER_BITMAP;
        let last = ((j + 1) * ENTRIES_PER_BITMAP).min(self.nr_blocks);
        (first..last)
            .map(|b| get2(&self.bits, b as usize))
            .collect()
    }

    /// Loads bitmap `j`'s entries (after reading it from disk).
    pub fn load_bitmap(&mut self, j: u64, entries: &[u8]) {
        let first = j * ENTRIES_PER_BITMAP;
        for (i, &e) in entries.iter().enumerate() {
            let b = first + i as u64;
            if b >= self.nr_blocks {
                break;
            }
            if e != 0 {
                self.nr_allocated += 1;
            }
            set2(&mut self.bits, b as usize, e);
        }
    }

    /// Loads an overflow count (after reading the ref-count tree).
    pub fn load_overflow(&mut self, b: u64, count: u32) {
        if b < self.nr_blocks && get2(&self.bits, b as usize) == 3 {
            self.overflow.insert(b, count);
        }
    }

    /// Blocks whose count lives in the overflow tree, with their counts.
    pub fn overflow(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.overflow.iter().map(|(b, c)| (*b, *c))
    }

    /// The index entry hints of bitmap `j`, kernel style: `nr_free` counts
    /// the whole 16320 entries, the tail past `nr_blocks` included.
    pub fn index_hints(&self, j: u64) -> (u32, u32) {
        let entries = self.bitmap_entries(j);
        let used = entries.iter().filter(|&&e| e != 0).count() as u32;
        let none_free_before = entries
            .iter()
            .position(|&e| e == 0)
            .unwrap_or(entries.len()) as u32;
        (ENTRIES_PER_BITMAP as u32 - used, none_free_before)
    }

    /// The first free block at or after `from` (wrapping), if any.
    pub fn find_free(&self, from: u64) -> Option<u64> {
        let n = self.nr_blocks;
        (from..n)
            .chain(0..from.min(n))
            .find(|&b| get2(&self.bits, b as usize) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_order_matches_the_spec() {
        // "0xAA = four entries of count 1; 0x55 = four of count 2; 0xFF = overflow".
        let mut p = [0u8; 3];
        for i in 0..4 {
            set2(&mut p, i, 1);
        }
        for i in 4..8 {
            set2(&mut p, i, 2);
        }
        for i in 8..12 {
            set2(&mut p, i, 3);
        }
        assert_eq!(p, [0xAA, 0x55, 0xFF]);
        assert_eq!(
            (0..12).map(|i| get2(&p, i)).collect::<Vec<_>>(),
            [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
        );
    }

    /// The metadata bitmap (block 3) and data bitmap (block 9) of the
    /// spec's example image: our encoding must give their stored checksums.
    #[test]
    fn matches_real_bitmaps() {
        let mut e = vec![0u8; 4096];
        for b in [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11] {
            e[b] = 1;
        }
        let blk = pack_bitmap(&e, 3);
        assert_eq!(&blk[16..19], &[0xaa, 0xaa, 0xa8]);
        assert_eq!(&blk[..4], &[0xaf, 0x39, 0x73, 0xf9]);
        assert_eq!(&unpack_bitmap(&blk, 3).unwrap()[..4096], &e[..]);

        let mut d = vec![0u8; 1000];
        for b in [0, 1, 2, 100] {
            d[b] = 2;
        }
        let blk = pack_bitmap(&d, 9);
        assert_eq!((blk[16], blk[0x29]), (0x15, 0x01));
        assert_eq!(&blk[..4], &[0xb6, 0xc5, 0x89, 0xa9]);
    }

    #[test]
    fn matches_a_real_index_block() {
        let blk = pack_index(
            &[IndexEntry {
                blocknr: 3,
                nr_free: 4084,
                none_free_before: 12,
            }],
            1,
        )
        .unwrap();
        assert_eq!(&blk[..4], &[0x7f, 0x97, 0x67, 0x47]);
        assert_eq!(unpack_index(&blk, 1, 1).unwrap()[0].blocknr, 3);
        assert!(unpack_index(&blk, 2, 1).is_err());
        assert!(pack_index(&vec![IndexEntry::default(); 256], 1).is_err());
    }

    #[test]
    fn counts_overflow_and_allocation() {
        let mut c = Counts::new(40000);
        for _ in 0..5 {
            c.inc(17);
        }
        assert_eq!(c.get(17), 5);
        assert_eq!(c.overflow().collect::<Vec<_>>(), vec![(17, 5)]);
        for _ in 0..3 {
            c.dec(17);
        }
        assert_eq!((c.get(17), c.overflow().count()), (2, 0));
        c.inc(20000);
        assert_eq!(c.nr_allocated(), 2);
        assert!(!c.dec(5), "dec of a free block is refused");
        assert_eq!(c.find_free(17), Some(18));
        assert_eq!(c.index_hints(0), (16319, 0));
        assert_eq!(c.index_hints(1), (16319, 0));
        let mut d = Counts::new(40000);
        d.load_bitmap(0, &c.bitmap_entries(0));
        d.load_bitmap(1, &c.bitmap_entries(1));
        d.load_bitmap(2, &c.bitmap_entries(2));
        assert_eq!(d, c);
        c.extend(50000);
        assert_eq!(
            (c.nr_blocks(), c.get(45000), c.nr_free()),
            (50000, 0, 49998)
        );
    }
}
