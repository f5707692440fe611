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

/// SplitMix64: the seeded generator of the fuzzer and of the tests' seeded
/// workloads, so a seed means the same thing everywhere.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform-enough in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The seed corpus: small valid images (an empty pool, one with devices
/// and mappings, one with a snapshot and a held metadata snapshot). The
/// cargo-fuzz target starts from these, and CI runs them through
/// [`exercise`].
pub fn seed_corpus() -> Vec<MemIo> {
    use crate::io::SimDisk;
    let mut out = Vec::new();
    for variant in 0..3u64 {
        let disk = SimDisk::new(96);
        let Ok(mut p) = Pool::format(Box::new(disk.clone()), 128, 3000) else {
            continue;
        };
        let mut build = || -> Result<(), crate::MetadataError> {
            if variant > 0 {
                p.create_thin(1)?;
                p.create_thin(2)?;
                for v in 0..400 {
                    if let Some(d) = p.alloc_data_block() {
                        p.insert(1 + (v % 2) as u32, v * 7, d)?;
                    }
                }
            }
            if variant > 1 {
                p.create_snap(3, 1)?;
                p.reserve_metadata_snap(&mut || Ok(()))?;
                if let Some(d) = p.alloc_data_block() {
                    p.insert(3, 1, d)?;
                }
            }
            p.commit(&mut || Ok(()))
        };
        if build().is_ok() {
            out.push(MemIo::from_blocks(disk.power_cut(0)));
        }
    }
    out
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
