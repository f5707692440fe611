//! The bdev I/Os a queue pair is serving, for both transports. A bdev
//! I/O larger than one command moves goes out as several commands; its
//! entry counts the blocks still to issue and the commands in flight,
//! and the queue pair completes it once, when its last command returns.
//! Commands name their I/O by its index here, which a finished I/O
//! hands to the next one.

use crate::{IoBox, IoStatus, IoType};

/// A bdev I/O being served; `N` is the transport's namespace parameters.
pub(crate) struct IoEntry<N> {
    pub io: IoBox,
    pub ns: N,
    /// Next block to issue a command for, and the end. A flush is one
    /// command counted from 0: only data has a place in the buffers.
    pub next: u64,
    pub end: u64,
    pub inflight: u32,
    pub status: IoStatus,
}

impl<N> IoEntry<N> {
    pub fn new(io: IoBox, ns: N) -> IoEntry<N> {
        let (next, end) = match io.io_type() {
            IoType::Flush => (0, 1),
            _ => (io.offset_blocks(), io.offset_blocks() + io.num_blocks()),
        };
        IoEntry {
            io,
            ns,
            next,
            end,
            inflight: 0,
            status: IoStatus::Success,
        }
    }
}

/// The entries by index, with freed indexes reused first (the table
/// grows to the most I/O ever in flight at once, and no further).
pub(crate) struct IoTable<N> {
    ios: Vec<Option<IoEntry<N>>>,
    free: Vec<u32>,
}

impl<N> IoTable<N> {
    pub fn with_capacity(n: usize) -> IoTable<N> {
        IoTable {
            ios: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
        }
    }

    /// Adds `e`: its index.
    pub fn insert(&mut self, e: IoEntry<N>) -> u32 {
        match self.free.pop() {
            Some(x) => {
                self.ios[x as usize] = Some(e);
                x
            }
            None => {
                self.ios.push(Some(e));
                (self.ios.len() - 1) as u32
            }
        }
    }

    pub fn get(&self, idx: u32) -> Option<&IoEntry<N>> {
        self.ios.get(idx as usize).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, idx: u32) -> Option<&mut IoEntry<N>> {
        self.ios.get_mut(idx as usize).and_then(Option::as_mut)
    }

    /// Takes entry `idx` out; its index is free for the next I/O.
    pub fn remove(&mut self, idx: u32) -> Option<IoEntry<N>> {
        let e = self.ios.get_mut(idx as usize)?.take()?;
        self.free.push(idx);
        Some(e)
    }

    /// Takes every entry out (a lost connection, a reset), each once,
    /// oldest index first.
    pub fn drain(&mut self) -> Vec<IoEntry<N>> {
        self.free.clear();
        self.free.extend((0..self.ios.len() as u32).rev());
        self.ios.iter_mut().filter_map(Option::take).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, blocks: u64, ty: IoType) -> IoEntry<()> {
        let mut io = IoBox::new();
        io.prep(ty, offset, blocks);
        IoEntry::new(io, ())
    }

    #[test]
    fn a_freed_index_is_reused_and_a_stale_one_finds_nothing() {
        let mut t = IoTable::with_capacity(2);
        let a = t.insert(entry(10, 4, IoType::Read));
        let b = t.insert(entry(20, 1, IoType::Write));
        assert_ne!(a, b);
        assert_eq!(t.get(a).map(|e| (e.next, e.end)), Some((10, 14)));
        assert!(t.remove(a).is_some());
        assert!(t.remove(a).is_none(), "removed once");
        assert!(t.get_mut(a).is_none());
        let c = t.insert(entry(0, 8, IoType::Flush));
        assert_eq!(c, a, "the freed index first");
        assert_eq!(t.get(c).map(|e| (e.next, e.end)), Some((0, 1)));
        assert!(t.get(99).is_none());
    }

    #[test]
    fn drain_takes_each_entry_once_and_frees_every_index() {
        let mut t = IoTable::with_capacity(4);
        for i in 0..4 {
            t.insert(entry(i, 1, IoType::Write));
        }
        t.remove(1);
        let offsets: Vec<u64> = t.drain().iter().map(|e| e.next).collect();
        assert_eq!(offsets, vec![0, 2, 3]);
        assert!(t.drain().is_empty());
        let again: Vec<u32> = (0..4)
            .map(|i| t.insert(entry(i, 1, IoType::Read)))
            .collect();
        assert_eq!(again, vec![0, 1, 2, 3], "no index handed out twice");
    }
}
