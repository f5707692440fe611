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
use std::io::ErrorKind;
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

/// A tool's exit status, except that a write to a closed stdout (EPIPE:
/// the reader, `head` say, went away) ends the tool quietly with status 0.
/// Rust ignores SIGPIPE, so the write fails instead of killing the process
/// as it would a C tool's.
pub fn exit_status(r: anyhow::Result<i32>) -> anyhow::Result<i32> {
    match r {
        Err(e) if reader_gone(&e) => Ok(0),
        r => r,
    }
}

fn reader_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    })
}
