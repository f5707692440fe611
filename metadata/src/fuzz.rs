//! A seeded mutation fuzzer for the readers: start from valid images,
//! mutate them (bit flips, overwritten fields with boundary values, blocks
//! copied over other blocks, truncation) and require that opening,
//! checking, reading and salvaging never panic. Every case replays from
//! its (seed, iteration) pair.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::io::{BlockIo, MemIo};
use crate::thin::check::{check, CheckOptions};
use crate::thin::pool::Pool;
use crate::thin::read::read_image;
use crate::thin::repair::salvage;
use crate::BLOCK_SIZE;

/// Runs every reader on `image`; returns a description if one panicked.
pub fn exercise(image: &MemIo) -> Option<String> {
    let run = |name: &str, f: &dyn Fn()| {
        catch_unwind(AssertUnwindSafe(f))
            .err()
            .map(|_| format!("{name} panicked"))
    };
    run("check", &|| {
        let _ = check(image, &CheckOptions::default());
    })
    .or_else(|| {
        run("read_image", &|| {
            let _ = read_image(image, false);
            let _ = read_image(image, true);
        })
    })
    .or_else(|| {
        run("salvage", &|| {
            let _ = salvage(image);
        })
    })
    .or_else(|| {
        run("open", &|| {
            if let Ok(mut p) = Pool::open(Box::new(image.clone())) {
                for id in p.devices() {
                    let _ = p.mappings(id);
                    let _ = p.lookup(id, 0);
                }
            }
        })
    })
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Mutates `image` in place, as case (seed, iteration) decides. Mutations
/// target blocks in use (those that hold something) most of the time.
pub fn mutate(image: &MemIo, seed: u64, iteration: u64) -> MemIo {
    let mut r = Rng(seed ^ iteration.wrapping_mul(0xA24B_AED4_963E_E407));
    let n = image.nr_blocks();
    let used: Vec<u64> = (0..n)
        .filter(|&b| {
            image
                .read(b)
                .map(|blk| blk.iter().any(|&x| x != 0))
                .unwrap_or(false)
        })
        .collect();
    let pick = |r: &mut Rng| {
        if used.is_empty() || r.below(8) == 0 {
            r.below(n)
        } else {
            used[r.below(used.len() as u64) as usize]
        }
    };
    let mut blocks: Vec<Box<crate::Block>> = (0..n)
        .map(|b| image.read(b).unwrap_or_else(|_| Box::new([0; BLOCK_SIZE])))
        .collect();
    for _ in 0..1 + r.below(4) {
        let b = pick(&mut r) as usize;
        match r.below(5) {
            0 => {
                let at = r.below(BLOCK_SIZE as u64) as usize;
                blocks[b][at] ^= 1 << r.below(8);
            }
            1 => {
                // A header field set to a boundary value.
                let at = [4usize, 8, 16, 20, 24, 0x38, 0x40, 0x50, 0x140, 0x148, 0x150]
                    [r.below(11) as usize];
                let v: u64 = [0, 1, 2, 3, u64::MAX, u32::MAX as u64, 252, 253, n, n - 1]
                    [r.below(10) as usize];
                let w = if r.below(2) == 0 { 4 } else { 8 };
                blocks[b][at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
                // Often re-seal, so the damage gets past the checksum.
                if r.below(3) != 0 {
                    if let Some(kind) = crate::pdata::checksum::BlockKind::identify(
                        &image
                            .read(b as u64)
                            .unwrap_or_else(|_| Box::new([0; BLOCK_SIZE])),
                    ) {
                        crate::pdata::checksum::seal(&mut blocks[b], kind);
                    }
                }
            }
            2 => {
                let src = pick(&mut r) as usize;
                let copy = blocks[src].clone();
                blocks[b] = copy;
            }
            3 => *blocks[b] = [0; BLOCK_SIZE],
            _ => {
                let keep = (1 + r.below(n)) as usize;
                blocks.truncate(keep);
                break;
            }
        }
    }
    MemIo::from_blocks(blocks)
}
