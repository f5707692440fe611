//! A simulated disk for crash tests: writes since the last flush are held
//! apart; a simulated power cut keeps, drops or tears each of them (a torn
//! write lands some of its 512-byte sectors), decided by a seed so a
//! failing case replays. It can also fail at the n-th block write, to stop
//! a commit part-way.

use std::cell::RefCell;
use std::rc::Rc;

use super::BlockIo;
use crate::{Block, MetadataError, BLOCK_SIZE};

#[derive(Clone)]
struct State {
    durable: Vec<Box<Block>>,
    pending: Vec<(u64, Box<Block>)>,
    writes: u64,
    fail_at: Option<u64>,
    dead: bool,
}

/// A handle on a simulated disk; clones share the disk.
#[derive(Clone)]
pub struct SimDisk(Rc<RefCell<State>>);

fn dead() -> MetadataError {
    MetadataError::Io {
        block: 0,
        source: std::io::Error::other("simulated power loss"),
    }
}

impl SimDisk {
    pub fn new(nr_blocks: u64) -> SimDisk {
        let durable = (0..nr_blocks)
            .map(|_| Box::new([0u8; BLOCK_SIZE]))
            .collect();
        SimDisk(Rc::new(RefCell::new(State {
            durable,
            pending: Vec::new(),
            writes: 0,
            fail_at: None,
            dead: false,
        })))
    }

    /// Block writes so far.
    pub fn writes(&self) -> u64 {
        self.0.borrow().writes
    }

    /// Loses power once `n` block writes have happened: the next write or
    /// flush, and everything after it, fails.
    pub fn fail_at_write(&self, n: u64) {
        self.0.borrow_mut().fail_at = Some(n);
    }

    /// Cuts the power: each held write is kept, dropped or torn, in order,
    /// as `seed` decides. Returns the surviving image and revives the disk.
    pub fn power_cut(&self, seed: u64) -> Vec<Box<Block>> {
        let mut s = self.0.borrow_mut();
        let mut x = seed | 1;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (b, data) in std::mem::take(&mut s.pending) {
            let dst = &mut s.durable[b as usize];
            match rand() % 3 {
                0 => {}
                1 => dst.copy_from_slice(&data[..]),
                _ => {
                    for sector in 0..BLOCK_SIZE / 512 {
                        if rand() & 1 == 1 {
                            dst[sector * 512..(sector + 1) * 512]
                                .copy_from_slice(&data[sector * 512..(sector + 1) * 512]);
                        }
                    }
                }
            }
        }
        s.dead = false;
        s.fail_at = None;
        s.durable.clone()
    }
}

impl BlockIo for SimDisk {
    fn nr_blocks(&self) -> u64 {
        self.0.borrow().durable.len() as u64
    }

    fn read(&self, b: u64) -> Result<Box<Block>, MetadataError> {
        let s = self.0.borrow();
        if s.dead {
            return Err(dead());
        }
        if let Some((_, d)) = s.pending.iter().rev().find(|(pb, _)| *pb == b) {
            return Ok(d.clone());
        }
        s.durable
            .get(b as usize)
            .cloned()
            .ok_or(MetadataError::OutOfRange(b, s.durable.len() as u64))
    }

    fn write(&mut self, blocks: &[(u64, &Block)]) -> Result<(), MetadataError> {
        let mut s = self.0.borrow_mut();
        for &(b, data) in blocks {
            if s.dead {
                return Err(dead());
            }
            if b >= s.durable.len() as u64 {
                return Err(MetadataError::OutOfRange(b, s.durable.len() as u64));
            }
            if s.fail_at == Some(s.writes) {
                s.dead = true;
                return Err(dead());
            }
            s.writes += 1;
            s.pending.push((b, Box::new(*data)));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), MetadataError> {
        let mut s = self.0.borrow_mut();
        if s.dead || s.fail_at == Some(s.writes) {
            s.dead = true;
            return Err(dead());
        }
        for (b, d) in std::mem::take(&mut s.pending) {
            s.durable[b as usize] = d;
        }
        Ok(())
    }
}
