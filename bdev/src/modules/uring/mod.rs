//! uring: a file or block device through io_uring, one ring per core.
//!
//! Opened with O_DIRECT (buffered, with a warning, where the filesystem
//! refuses it). FLUSH is fdatasync through the ring. On files, UNMAP punches
//! a hole and WRITE_ZEROES zeroes a range (fallocate through the ring) with
//! the method decided at open: FALLOC_FL_ZERO_RANGE, else a punched hole
//! (tmpfs), else writes of zeros; a file that takes no holes has no UNMAP.
//! On block devices they are the BLKDISCARD / BLKZEROOUT ioctls.
//!
//! One bdev owns its file or device: block devices are opened O_EXCL,
//! files are locked with flock(LOCK_EX), and a second bdev of this process
//! on the same inode or device number is refused naming the first.

mod channel;
mod file;
pub mod rpc;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::{Bdev, BdevError, BdevFnTable, BdevProps, IoType, ModuleChannel, Uuid};
use file::Backing;
pub use file::Zeroing;

#[derive(Clone, Debug)]
pub struct UringOptions {
    pub name: String,
    pub filename: PathBuf,
    /// None: the device's logical block size (512 for files).
    pub block_size: Option<u32>,
    pub uuid: Option<Uuid>,
}

struct Uring {
    file: Arc<Backing>,
    opts: UringOptions,
}

pub fn create(opts: UringOptions) -> Result<Arc<Bdev>, BdevError> {
    create_with(opts, None)
}

/// `create`, with the zeroing method forced (tests of the fallbacks).
fn create_with(opts: UringOptions, zeroing: Option<Zeroing>) -> Result<Arc<Bdev>, BdevError> {
    if crate::lookup(&opts.name).is_some() {
        return Err(BdevError::Exists(opts.name.clone()));
    }
    let mut file = Backing::open(&opts.filename, &opts.name)?;
    if let Some(z) = zeroing {
        file.zeroing = z;
    }
    let bs = opts.block_size.unwrap_or(file.logical_block_size);
    if bs < 512 || !bs.is_power_of_two() || bs < file.logical_block_size {
        return Err(BdevError::Invalid(format!(
            "block size {bs} must be a power of two of at least {}",
            file.logical_block_size
        )));
    }
    if file.size == 0 || file.size % bs as u64 != 0 {
        return Err(BdevError::Invalid(format!(
            "size of {} ({} bytes) is not a non-zero multiple of the block size {bs}",
            opts.filename.display(),
            file.size
        )));
    }
    let mut props = BdevProps::new(&opts.name, "URING bdev", bs, file.size / bs as u64);
    props.uuid = opts.uuid;
    let bdev = Bdev::new(
        props,
        Uring {
            file: Arc::new(file),
            opts,
        },
    )?;
    crate::register(bdev.clone())?;
    Ok(bdev)
}

/// Picks up a grown file or device (`bdev_uring_rescan`).
pub fn rescan(bdev: &Bdev) -> Result<(), BdevError> {
    let Some(u) = (bdev.module() as &dyn std::any::Any).downcast_ref::<Uring>() else {
        return Err(BdevError::NotFound(bdev.name().to_string()));
    };
    let size = u
        .file
        .current_size()
        .map_err(|e| BdevError::Io(u.opts.filename.display().to_string(), e))?;
    let blocks = size / bdev.block_size() as u64;
    if blocks != bdev.num_blocks() {
        bdev.notify_resize(blocks)?;
    }
    Ok(())
}

impl BdevFnTable for Uring {
    fn module_name(&self) -> &'static str {
        "uring"
    }

    fn io_type_supported(&self, t: IoType) -> bool {
        t != IoType::Unmap || self.file.can_unmap
    }

    fn create_channel(&self, bdev: &Arc<Bdev>) -> Result<Box<dyn ModuleChannel>, BdevError> {
        Ok(Box::new(channel::UringChannel::new(
            self.file.clone(),
            bdev.block_size(),
        )?))
    }

    fn backing(&self, _bdev: &Bdev) -> Option<String> {
        Some(format!("file {}", self.opts.filename.display()))
    }

    /// A file grows by truncate (sparse); a block device cannot be grown
    /// from here.
    fn grow(&self, bdev: &Bdev, num_blocks: u64) -> Option<Result<(), BdevError>> {
        if self.file.is_block_device() {
            return None;
        }
        let bytes = num_blocks * u64::from(bdev.block_size());
        Some(
            self.file
                .set_file_len(bytes)
                .map_err(|e| BdevError::Io(self.opts.filename.display().to_string(), e))
                .and_then(|()| rescan(bdev)),
        )
    }

    fn driver_specific(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        Some((
            "uring",
            json!({
                "filename": self.opts.filename,
                "direct": self.file.direct,
                "zeroing": self.file.zeroing.as_str(),
                "unmap": self.file.can_unmap,
            }),
        ))
    }

    fn unregistered(&self, _bdev: &Bdev) {
        self.file.release();
    }

    fn config_entry(&self, bdev: &Bdev) -> Option<Value> {
        Some(json!({
            "method": "bdev_uring_create",
            "params": {
                "name": bdev.name(),
                "filename": self.opts.filename,
                "block_size": bdev.block_size(),
                "uuid": bdev.uuid().to_string(),
            }
        }))
    }
}

#[cfg(test)]
mod tests;
