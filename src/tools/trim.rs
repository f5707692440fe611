//! `ferrothin trim`: thin_trim. Discards the data blocks an offline pool
//! does not use (reference count 0 in its data space map), so the storage
//! under it can reclaim them: BLKDISCARD on a block device, a punched hole
//! in a file (thin_trim takes block devices only). The one-device layout
//! (the metadata device given alone, or as both) is trimmed behind its
//! metadata region. Like every writing tool, refused while a live pool
//! holds either device.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use metadata::thin::pool::Pool;

use super::Access;

#[derive(Args, Debug)]
pub struct TrimArgs {
    /// The pool's metadata device (in the one-device layout, the pool).
    #[arg(long)]
    pub metadata_dev: Option<PathBuf>,
    /// The pool's data device (absent, or the same path: one device).
    #[arg(long)]
    pub data_dev: Option<PathBuf>,
    /// Print the ranges discarded (data block, count), one per line.
    #[arg(short, long)]
    pub verbose: bool,
}

/// The free runs of a pool: `(first block, blocks)`, in order.
pub fn free_runs(count: impl Fn(u64) -> u32, nr_blocks: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for b in (0..nr_blocks).filter(|&b| count(b) == 0) {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == b => *len += 1,
            _ => runs.push((b, 1)),
        }
    }
    runs
}

pub fn run(a: &TrimArgs) -> anyhow::Result<i32> {
    let meta_path = super::input(&a.metadata_dev)?;
    let one_device = a
        .data_dev
        .as_deref()
        .is_none_or(|d| super::same_file(d, meta_path));
    // Held for the whole trim: no pool can open either device meanwhile.
    let meta = super::open_device(meta_path, Access::Write)?;
    let pool = Pool::open(Box::new(meta))
        .with_context(|| format!("cannot open the pool on {}", meta_path.display()))?;
    anyhow::ensure!(
        !pool.needs_check(),
        "{}: the pool needs a check first (ferrothin check, then repair if it fails); \
         trimming by damaged space maps could discard data in use",
        meta_path.display()
    );
    let block_bytes = u64::from(pool.superblock().data_block_size) * 512;
    let (data_path, offset) = super::data_area(meta_path, a.data_dev.as_deref(), pool.superblock());
    let runs = free_runs(|b| pool.data_block_count(b), pool.nr_data_blocks());
    let data_io;
    let data = if one_device {
        // The pool's handle on the file holds the lock; this one writes.
        std::fs::OpenOptions::new().write(true).open(data_path)?
    } else {
        data_io = super::open_device(data_path, Access::Write)?;
        data_io.file().try_clone()?
    };
    let block_device = data.metadata()?.file_type().is_block_device();
    let end = device_bytes(&data, block_device)?;
    let need = offset + pool.nr_data_blocks() * block_bytes;
    anyhow::ensure!(
        end >= need,
        "{} holds {end} bytes, less than the pool's {} data blocks need ({need})",
        data_path.display(),
        pool.nr_data_blocks()
    );
    for &(b, n) in &runs {
        let (start, len) = (offset + b * block_bytes, n * block_bytes);
        discard(&data, block_device, start, len).with_context(|| {
            format!(
                "discarding {len} bytes at {start} of {}",
                data_path.display()
            )
        })?;
        if a.verbose {
            println!("{b} {n}");
        }
    }
    let blocks: u64 = runs.iter().map(|r| r.1).sum();
    eprintln!(
        "trimmed {blocks} free data blocks in {} ranges of {}",
        runs.len(),
        data_path.display()
    );
    Ok(0)
}

pub(super) fn device_bytes(f: &File, block_device: bool) -> anyhow::Result<u64> {
    if !block_device {
        return Ok(f.metadata()?.len());
    }
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, a live
    // local; the descriptor is `f`'s own.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut bytes as *mut u64) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("BLKGETSIZE64");
    }
    Ok(bytes)
}

// From linux/fs.h: _IOR(0x12, 114, size_t) and _IO(0x12, 119).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKDISCARD: libc::c_ulong = 0x1277;

fn discard(f: &File, block_device: bool, start: u64, len: u64) -> std::io::Result<()> {
    let rc = if block_device {
        let range: [u64; 2] = [start, len];
        // SAFETY: BLKDISCARD reads two u64s (start, length) through the
        // pointer, a live local array; the descriptor is `f`'s own.
        unsafe { libc::ioctl(f.as_raw_fd(), BLKDISCARD, range.as_ptr()) }
    } else {
        // SAFETY: fallocate on a descriptor `f` owns; no memory is
        // involved. KEEP_SIZE: the file's length is the pool's size.
        unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                len as libc::off_t,
            )
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_runs_join_neighbours() {
        let used = [1u64, 2, 5, 9];
        let count = |b: u64| u32::from(used.contains(&b));
        assert_eq!(free_runs(count, 12), [(0, 1), (3, 2), (6, 3), (10, 2)]);
        assert_eq!(free_runs(|_| 1, 5), []);
        assert_eq!(free_runs(|_| 0, 5), [(0, 5)]);
    }
}
