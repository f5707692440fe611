//! The metadata tools, after their thin-provisioning-tools namesakes:
//! check, dump, restore, ls, metadata-size. Each opens the metadata device
//! (a file or block device) itself; none needs the daemon, and none touches
//! metadata a live pool holds (`open_device`).

pub mod check;
pub mod delta;
pub mod dump;
pub mod ls;
pub mod metadata_size;
pub mod migrate;
pub mod progress;
pub mod repair;
pub mod repair_in_place;
pub mod restore;
pub mod trim;

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::Context;
use metadata::io::FileIo;

/// A tool run without its input or output, said as thin-provisioning-tools
/// say it (the binary adds the usage and exits 1).
#[derive(Debug, thiserror::Error)]
pub enum Missing {
    #[error("No input file provided.")]
    Input,
    #[error("No output file provided.")]
    Output,
}

/// The tool's input path, or [`Missing::Input`].
pub fn input(p: &Option<std::path::PathBuf>) -> anyhow::Result<&Path> {
    p.as_deref().ok_or_else(|| Missing::Input.into())
}

/// The tool's output path, or [`Missing::Output`].
pub fn output(p: &Option<std::path::PathBuf>) -> anyhow::Result<&Path> {
    p.as_deref().ok_or_else(|| Missing::Output.into())
}

/// What a tool does with a metadata device, which decides how it holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads it (check, dump, ls, delta): refused while a live pool or a
    /// writing tool holds it; other readers may read alongside.
    Read,
    /// Writes it (restore, repair's output, check --clear-needs-check-flag):
    /// refused while anyone holds it.
    Write,
    /// Reads a live pool's reserved metadata snapshot (dump -m, delta -m),
    /// which the pool leaves alone: opened without holding the device.
    Snapshot,
}

/// How a device is held: O_EXCL on a block device (the kernel answers
/// EBUSY while another exclusive opener, a live pool, has it), a
/// non-blocking flock on anything else (the daemon holds its files with
/// LOCK_EX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hold {
    o_excl: bool,
    flock: Option<libc::c_int>,
}

fn hold(block_device: bool, access: Access) -> Hold {
    let lock = match access {
        Access::Read => libc::LOCK_SH,
        Access::Write => libc::LOCK_EX,
        Access::Snapshot => {
            return Hold {
                o_excl: false,
                flock: None,
            }
        }
    };
    Hold {
        o_excl: block_device,
        flock: (!block_device).then_some(lock | libc::LOCK_NB),
    }
}

fn in_use(path: &Path) -> anyhow::Error {
    anyhow::anyhow!("{} is in use (held by a live pool?)", path.display())
}

/// Opens a metadata device and holds it as `access` needs for as long as
/// the returned `FileIo` lives; a device held elsewhere is refused with
/// "DEV is in use". Its size comes from the file or, for a block device,
/// from seeking to its end.
pub fn open_device(path: &Path, access: Access) -> anyhow::Result<FileIo> {
    // A path that cannot be looked at fails in open, with open's error.
    let block_device = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    let h = hold(block_device, access);
    // A daemon that has just exited holds its files a little longer, until
    // the kernel has torn its io_uring rings down: a tool run right after
    // it (a script's next line) waits that out rather than call the file
    // in use.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let retry = || {
        let again = std::time::Instant::now() < deadline;
        if again {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        again
    };
    let mut f: File = loop {
        match OpenOptions::new()
            .read(true)
            .write(access == Access::Write)
            .custom_flags(if h.o_excl { libc::O_EXCL } else { 0 })
            .open(path)
        {
            Err(e) if h.o_excl && e.raw_os_error() == Some(libc::EBUSY) => {
                if !retry() {
                    return Err(in_use(path));
                }
            }
            r => break r.with_context(|| format!("cannot open {}", path.display()))?,
        }
    };
    if let Some(op) = h.flock {
        loop {
            // SAFETY: flock on a descriptor `f` owns; no memory is involved.
            if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::WouldBlock {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
            if !retry() {
                return Err(in_use(path));
            }
        }
    }
    use std::io::Seek;
    let len = f
        .seek(std::io::SeekFrom::End(0))
        .with_context(|| format!("cannot size {}", path.display()))?;
    Ok(FileIo::with_nr_blocks(f, len / metadata::BLOCK_SIZE as u64))
}

/// Where a pool's data blocks are: the data device from byte 0, or in the
/// one-device layout (no data device, or the metadata device named again)
/// the same file behind the metadata region, rounded up to a data block
/// as the daemon lays it out. Returns the path and the byte offset.
pub fn data_area<'a>(
    metadata: &'a Path,
    data: Option<&'a Path>,
    sb: &metadata::pdata::superblock::Superblock,
) -> (&'a Path, u64) {
    match data.filter(|d| !same_file(d, metadata)) {
        Some(d) => (d, 0),
        None => {
            let block_bytes = u64::from(sb.data_block_size) * 512;
            let meta_bytes = sb.metadata_nr_blocks * metadata::BLOCK_SIZE as u64;
            (metadata, meta_bytes.div_ceil(block_bytes) * block_bytes)
        }
    }
}

/// Whether two paths name the same file (or device).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => a == b,
    }
}

/// Reads the pool on `path`, live or (`metadata_snap`) as its reserved
/// metadata snapshot holds it, opening the device as that needs (the
/// snapshot may be read while a live pool holds the device).
pub fn read_pool(
    path: &Path,
    metadata_snap: bool,
) -> anyhow::Result<metadata::thin::model::PoolModel> {
    let access = if metadata_snap {
        Access::Snapshot
    } else {
        Access::Read
    };
    let io = open_device(path, access)?;
    metadata::thin::read::read_image(&io, metadata_snap)
        .with_context(|| format!("cannot read the metadata on {}", path.display()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_devices_open_exclusive_and_files_are_locked() {
        let (sh, ex) = (libc::LOCK_SH | libc::LOCK_NB, libc::LOCK_EX | libc::LOCK_NB);
        let h = |o_excl, flock| Hold { o_excl, flock };
        assert_eq!(hold(true, Access::Read), h(true, None));
        assert_eq!(hold(true, Access::Write), h(true, None));
        assert_eq!(hold(false, Access::Read), h(false, Some(sh)));
        assert_eq!(hold(false, Access::Write), h(false, Some(ex)));
        assert_eq!(hold(true, Access::Snapshot), h(false, None));
        assert_eq!(hold(false, Access::Snapshot), h(false, None));
    }

    #[test]
    fn exit_status_is_quiet_on_a_broken_pipe_only() {
        let pipe = std::io::Error::from(ErrorKind::BrokenPipe);
        let e = anyhow::Error::new(pipe).context("writing");
        assert_eq!(exit_status(Err(e)).unwrap(), 0);
        assert_eq!(exit_status(Ok(1)).unwrap(), 1);
        let other = anyhow::Error::new(std::io::Error::from(ErrorKind::NotFound));
        assert!(exit_status(Err(other)).is_err());
    }
}
