//! `ferrothin metadata-size`: how much metadata a pool needs. Worst case:
//! every data block mapped, leaves half full after splits (126 of 252
//! entries), one root block per thin device, plus the superblock. This is
//! the figure thin_metadata_size gives.

use std::io::Write as _;

use clap::Args;

use bench::parse_size;

#[derive(Args, Debug)]
pub struct MetadataSizeArgs {
    /// Data block size (64k to 1g).
    #[arg(short = 'b', long, value_parser = parse_size)]
    pub block_size: u64,
    /// Pool (data device) size.
    #[arg(short = 's', long, value_parser = parse_size)]
    pub pool_size: u64,
    /// Thin devices and snapshots at most.
    #[arg(short = 'm', long, default_value_t = 1)]
    pub max_thins: u64,
}

/// Metadata size in 512-byte sectors.
pub fn metadata_sectors(block_size: u64, pool_size: u64, max_thins: u64) -> Result<u64, String> {
    if !(65536..=1 << 30).contains(&block_size) || !block_size.is_multiple_of(65536) {
        return Err("block size must be 64 KiB to 1 GiB in 64 KiB steps".into());
    }
    if pool_size <= block_size {
        return Err("pool size must be larger than the block size".into());
    }
    let nr_blocks = pool_size / block_size;
    let blocks = 1 + 2 * nr_blocks / 252 + max_thins;
    Ok(blocks * 8)
}

pub fn run(a: &MetadataSizeArgs) -> anyhow::Result<i32> {
    let sectors =
        metadata_sectors(a.block_size, a.pool_size, a.max_thins).map_err(anyhow::Error::msg)?;
    writeln!(
        std::io::stdout(),
        "{sectors} sectors ({} MiB) of metadata",
        (sectors * 512).div_ceil(1 << 20)
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures thin_metadata_size 0.9.0 printed for the same inputs.
    #[test]
    fn agrees_with_thin_metadata_size() {
        assert_eq!(metadata_sectors(64 << 10, 1 << 40, 1000), Ok(1_073_224));
        assert_eq!(metadata_sectors(64 << 10, 1 << 30, 1), Ok(1056));
        assert_eq!(metadata_sectors(64 << 10, 100 << 20, 1), Ok(112));
        assert_eq!(metadata_sectors(1 << 20, 10 << 30, 10), Ok(736));
        assert!(metadata_sectors(64 << 10, 64 << 10, 1).is_err());
        assert!(metadata_sectors(4096, 1 << 30, 1).is_err());
    }
}
