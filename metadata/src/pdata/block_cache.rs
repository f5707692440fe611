//! The cache of committed metadata blocks, laid out as an image of the
//! metadata device: block `b` lives at a fixed place in chunk `b / CHUNK`.
//!
//! A lookup visits three or four nodes, and the leaf is cold. With a hash
//! map from block number to block, finding the leaf's bytes is itself a
//! dependent miss (the map's entry) before the leaf's own; here the place is
//! computed from the number, and the only other memory read is a presence
//! bit and a chunk pointer, both small enough to stay in cache. Chunks are
//! allocated zeroed on first use (untouched pages cost nothing), so memory
//! follows the blocks actually cached, as the map's did. Blocks are never
//! evicted: the cache holds at most the metadata device.

use crate::{Block, BLOCK_SIZE};

/// Blocks per chunk: 2 MiB, a huge page where the kernel gives them.
const CHUNK: usize = 512;

static EMPTY: Block = [0; BLOCK_SIZE];

#[derive(Default)]
pub struct BlockCache {
    chunks: Vec<Option<Box<[Block]>>>,
    present: Vec<u64>,
}

impl BlockCache {
    #[inline]
    pub fn get(&self, b: u64) -> Option<&Block> {
        let b = usize::try_from(b).ok()?;
        let bit = *self.present.get(b / 64)? & (1 << (b % 64));
        if bit == 0 {
            return None;
        }
        let chunk = self.chunks.get(b / CHUNK)?.as_ref()?;
        Some(&chunk[b % CHUNK])
    }

    /// Block `b`, read with `read` (and kept) if it is not cached.
    #[inline]
    pub fn get_or_try_insert<E>(
        &mut self,
        b: u64,
        read: impl FnOnce() -> Result<Box<Block>, E>,
    ) -> Result<&Block, E> {
        if self.get(b).is_some() {
            // Checked just above; the second probe hits the same lines.
            return Ok(self.get(b).unwrap_or(&EMPTY));
        }
        self.read_in(b, read)
    }

    #[cold]
    #[inline(never)]
    fn read_in<E>(
        &mut self,
        b: u64,
        read: impl FnOnce() -> Result<Box<Block>, E>,
    ) -> Result<&Block, E> {
        let data = read()?;
        Ok(self.insert(b, &data))
    }

    /// Stores a copy of `data` as block `b` and returns it. `b` must be a
    /// block of the device (the caller bounds it): the cache grows to hold it.
    pub fn insert(&mut self, b: u64, data: &Block) -> &Block {
        let i = b as usize;
        if self.present.len() <= i / 64 {
            self.present.resize(i / 64 + 1, 0);
        }
        self.present[i / 64] |= 1 << (i % 64);
        let slot = self.slot(b);
        slot.copy_from_slice(data);
        slot
    }

    /// Where block `b` lives, its chunk allocated if it was not.
    fn slot(&mut self, b: u64) -> &mut Block {
        let i = b as usize;
        if self.chunks.len() <= i / CHUNK {
            self.chunks.resize_with(i / CHUNK + 1, || None);
        }
        let chunk = self.chunks[i / CHUNK]
            .get_or_insert_with(|| vec![[0u8; BLOCK_SIZE]; CHUNK].into_boxed_slice());
        &mut chunk[i % CHUNK]
    }

    pub fn remove(&mut self, b: u64) {
        let i = b as usize;
        if let Some(w) = self.present.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_inserted_and_nothing_else() {
        let mut c = BlockCache::default();
        assert!(c.get(0).is_none() && c.get(5000).is_none() && c.get(u64::MAX).is_none());
        let mut a = [0u8; BLOCK_SIZE];
        a[7] = 7;
        c.insert(3, &a);
        a[7] = 9;
        c.insert(CHUNK as u64 * 3 + 1, &a);
        assert_eq!(c.get(3).map(|b| b[7]), Some(7));
        assert_eq!(c.get(CHUNK as u64 * 3 + 1).map(|b| b[7]), Some(9));
        assert!(c.get(4).is_none() && c.get(CHUNK as u64).is_none());
        let read = || -> Result<Box<Block>, ()> { Ok(Box::new([5u8; BLOCK_SIZE])) };
        assert_eq!(
            c.get_or_try_insert(3, read).map(|b| b[7]),
            Ok(7),
            "cached: not read"
        );
        assert_eq!(c.get_or_try_insert(4, read).map(|b| b[7]), Ok(5));
        assert_eq!(c.get_or_try_insert(6, || Err(())), Err(()));
        assert!(c.get(6).is_none());
        c.remove(3);
        assert!(c.get(3).is_none());
        a[7] = 1;
        assert_eq!(c.insert(3, &a)[7], 1);
        assert_eq!(c.get(3).map(|b| b[7]), Some(1));
    }
}
