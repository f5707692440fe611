//! The metadata tools, after their thin-provisioning-tools namesakes:
//! check, dump, restore, ls, metadata-size. Each opens the metadata device
//! (a file or block device) itself; none needs the daemon.

pub mod check;
pub mod delta;
pub mod dump;
pub mod ls;
pub mod metadata_size;
pub mod progress;
pub mod repair;
pub mod restore;

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::Context;
use metadata::io::FileIo;

/// Opens a metadata device; its size comes from the file or, for a block
/// device, from seeking to its end.
pub fn open_device(path: &Path, write: bool) -> anyhow::Result<FileIo> {
    let mut f: File = OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    use std::io::Seek;
    let len = f
        .seek(std::io::SeekFrom::End(0))
        .with_context(|| format!("cannot size {}", path.display()))?;
    Ok(FileIo::with_nr_blocks(f, len / metadata::BLOCK_SIZE as u64))
}
