//! `ferrothin ls`: the devices of a pool with their mapped, exclusive and
//! shared block counts (a block is shared when its data block's reference
//! count is above one).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use metadata::thin::pool::Pool;

#[derive(Args, Debug)]
pub struct LsArgs {
    /// The metadata device or image.
    pub device: PathBuf,
}

pub fn run(a: &LsArgs) -> anyhow::Result<i32> {
    let io = super::open_device(&a.device, false)?;
    let mut p = Pool::open(Box::new(io))
        .with_context(|| format!("cannot open the pool on {}", a.device.display()))?;
    println!(
        "{:>8} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "DEV", "MAPPED", "EXCLUSIVE", "SHARED", "CREATE_TIME", "SNAP_TIME"
    );
    for id in p.devices() {
        let d = p.details(id).unwrap_or_default();
        let maps = p.mappings(id)?;
        let shared = maps
            .values()
            .filter(|bt| p.data_block_count(bt.block) > 1)
            .count();
        println!(
            "{id:>8} {:>12} {:>12} {shared:>12} {:>12} {:>10}",
            maps.len(),
            maps.len() - shared,
            d.creation_time,
            d.snapshotted_time
        );
    }
    Ok(0)
}
