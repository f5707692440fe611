//! Opening the backing file or block device: geometry, and the zeroing
//! method the file or device supports.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::BdevError;

// Block-device ioctls (linux/fs.h): _IO(0x12, nr), _IOR for the size.
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// How WRITE_ZEROES is done, decided once when the bdev opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zeroing {
    /// fallocate(FALLOC_FL_ZERO_RANGE): the range stays allocated.
    ZeroRange,
    /// fallocate(FALLOC_FL_PUNCH_HOLE): a hole reads as zeros (tmpfs).
    PunchHole,
    /// Writes from a shared buffer of zeros (neither fallocate mode works).
    Write,
    /// The BLKZEROOUT ioctl (block devices; the kernel writes zero pages
    /// itself where the device has no zeroing command).
    BlkZeroout,
}

impl Zeroing {
    pub fn as_str(self) -> &'static str {
        match self {
            Zeroing::ZeroRange => "zero_range",
            Zeroing::PunchHole => "punch_hole",
            Zeroing::Write => "write",
            Zeroing::BlkZeroout => "blkzeroout",
        }
    }
}

/// An open backing store.
pub(crate) struct Backing {
    fd: OwnedFd,
    pub is_block_device: bool,
    pub direct: bool,
    pub size: u64,
    /// The device's own logical block size (512 for regular files).
    pub logical_block_size: u32,
    pub zeroing: Zeroing,
    /// UNMAP works: BLKDISCARD on a block device, a punched hole in a file.
    /// A file whose filesystem refuses holes has no UNMAP (it is advisory).
    pub can_unmap: bool,
}

fn err(path: &Path, e: io::Error) -> BdevError {
    BdevError::Io(path.display().to_string(), e)
}

fn open_raw(path: &Path, direct: bool) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = libc::O_RDWR | libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 };
    // SAFETY: a NUL-terminated path that outlives the call; a non-negative
    // result is a new descriptor we own.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just returned by open, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: all-zero is a valid stat; fstat writes one into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live local to write into.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn fallocate(fd: RawFd, mode: libc::c_int, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: no memory is passed; the kernel checks the descriptor.
    if unsafe { libc::fallocate(fd, mode, off as libc::off_t, len as libc::off_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Which fallocate modes a regular file takes, tried on a range past its
/// end with KEEP_SIZE: that changes no byte of the file and not its size
/// (a filesystem may keep the zeroed range allocated past the end, where
/// nothing reads it). Returns the zeroing method and whether holes work.
fn probe_file(fd: RawFd, size: u64, path: &Path) -> (Zeroing, bool) {
    const LEN: u64 = 4096;
    let at = size.div_ceil(LEN) * LEN + LEN;
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    let zero = fallocate(fd, libc::FALLOC_FL_ZERO_RANGE | keep, at, LEN);
    let punch = fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | keep, at, LEN);
    let zeroing = match (&zero, &punch) {
        (Ok(()), _) => Zeroing::ZeroRange,
        (Err(_), Ok(())) => Zeroing::PunchHole,
        (Err(_), Err(_)) => Zeroing::Write,
    };
    if let Err(e) = &zero {
        tracing::info!(
            path = %path.display(),
            "fallocate(FALLOC_FL_ZERO_RANGE) refused ({e}); WRITE_ZEROES will use {}",
            zeroing.as_str()
        );
    }
    if let Err(e) = &punch {
        tracing::info!(
            path = %path.display(),
            "fallocate(FALLOC_FL_PUNCH_HOLE) refused ({e}); no UNMAP"
        );
    }
    (zeroing, punch.is_ok())
}

impl Backing {
    pub fn open(path: &Path) -> Result<Backing, BdevError> {
        let (fd, direct) = match open_raw(path, true) {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "O_DIRECT refused; falling back to buffered I/O");
                (open_raw(path, false).map_err(|e| err(path, e))?, false)
            }
            Err(e) => return Err(err(path, e)),
        };
        let st = fstat(fd.as_raw_fd()).map_err(|e| err(path, e))?;
        let is_block_device = st.st_mode & libc::S_IFMT == libc::S_IFBLK;
        if !is_block_device && st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(BdevError::Invalid(format!(
                "{} is neither a file nor a block device",
                path.display()
            )));
        }
        let (size, logical_block_size) = if is_block_device {
            let mut size: u64 = 0;
            let mut lbs: libc::c_int = 0;
            // SAFETY: both ioctls write one integer of the stated type into
            // a live local.
            let rc = unsafe {
                libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64)
                    | libc::ioctl(fd.as_raw_fd(), BLKSSZGET as _, &mut lbs as *mut libc::c_int)
            };
            if rc < 0 {
                return Err(err(path, io::Error::last_os_error()));
            }
            (size, lbs.max(512) as u32)
        } else {
            (st.st_size as u64, 512)
        };
        let (zeroing, can_unmap) = if is_block_device {
            (Zeroing::BlkZeroout, true)
        } else {
            probe_file(fd.as_raw_fd(), size, path)
        };
        Ok(Backing {
            fd,
            is_block_device,
            direct,
            size,
            logical_block_size,
            zeroing,
            can_unmap,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Discards or zeroes a byte range of a block device (synchronous: the
    /// kernel has no ring opcode for these on every version we run on).
    pub fn blkdev_range(&self, zero: bool, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        let req = if zero { BLKZEROOUT } else { BLKDISCARD };
        // SAFETY: the ioctl reads two u64s from a live local array.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, range.as_ptr()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Re-reads the size (rescan after the file or device grew).
    pub fn current_size(&self) -> io::Result<u64> {
        if self.is_block_device {
            let mut size: u64 = 0;
            // SAFETY: writes one u64 into a live local.
            let rc = unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    BLKGETSIZE64 as _,
                    &mut size as *mut u64,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(size)
        } else {
            Ok(fstat(self.fd.as_raw_fd())?.st_size as u64)
        }
    }
}
