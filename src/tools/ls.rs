//! `ferrothin ls`: the devices of a pool with their mapped, exclusive and
//! shared block counts. As thin_ls counts them: a mapping is shared when
//! its data block is mapped more than once across all devices (by two
//! devices, or twice by one). The space map's reference counts do not tell
//! this: a snapshot shares its origin's mapping subtrees, and the data
//! blocks below a shared subtree keep a count of 1.

use std::io::{BufWriter, Write as _};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use metadata::thin::pool::Pool;

use super::Access;

#[derive(Args, Debug)]
pub struct LsArgs {
    /// The metadata device or image.
    pub device: PathBuf,
}

/// How often each data block is mapped, saturating at two: one bit for
/// "mapped", one for "mapped again".
#[derive(Default)]
struct MapCounts {
    once: Vec<u64>,
    again: Vec<u64>,
}

impl MapCounts {
    fn with_blocks(n: u64) -> MapCounts {
        let words = n.div_ceil(64) as usize;
        MapCounts {
            once: vec![0; words],
            again: vec![0; words],
        }
    }

    fn add(&mut self, b: u64) {
        let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
        if w >= self.once.len() {
            // A mapping past the data device (damaged metadata): count it all
            // the same.
            self.once.resize(w + 1, 0);
            self.again.resize(w + 1, 0);
        }
        if self.once[w] & bit != 0 {
            self.again[w] |= bit;
        }
        self.once[w] |= bit;
    }

    fn shared(&self, b: u64) -> bool {
        self.again
            .get((b / 64) as usize)
            .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }
}

pub fn run(a: &LsArgs) -> anyhow::Result<i32> {
    let io = super::open_device(&a.device, Access::Read)?;
    let mut p = Pool::open(Box::new(io))
        .with_context(|| format!("cannot open the pool on {}", a.device.display()))?;
    let devices = p.devices();
    let mut counts = MapCounts::with_blocks(p.nr_data_blocks());
    for &id in &devices {
        for bt in p.mappings(id)?.values() {
            counts.add(bt.block);
        }
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    writeln!(
        out,
        "{:>8} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "DEV", "MAPPED", "EXCLUSIVE", "SHARED", "CREATE_TIME", "SNAP_TIME"
    )?;
    for id in devices {
        let d = p.details(id).unwrap_or_default();
        let maps = p.mappings(id)?;
        let shared = maps.values().filter(|bt| counts.shared(bt.block)).count();
        writeln!(
            out,
            "{id:>8} {:>12} {:>12} {shared:>12} {:>12} {:>10}",
            maps.len(),
            maps.len() - shared,
            d.creation_time,
            d.snapshotted_time
        )?;
    }
    out.flush()?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_at_shared() {
        let mut c = MapCounts::with_blocks(100);
        c.add(3);
        c.add(70);
        c.add(70);
        c.add(70);
        c.add(1000);
        c.add(1000);
        assert!(!c.shared(3) && c.shared(70) && c.shared(1000));
        assert!(!c.shared(4) && !c.shared(5000));
    }
}
