//! Opening the backing file or block device and learning its geometry.

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

/// An open backing store.
pub(crate) struct Backing {
    fd: OwnedFd,
    pub is_block_device: bool,
    pub direct: bool,
    pub size: u64,
    /// The device's own logical block size (512 for regular files).
    pub logical_block_size: u32,
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
        let meta = std::fs::File::from(fd.try_clone().map_err(|e| err(path, e))?)
            .metadata()
            .map_err(|e| err(path, e))?;
        use std::os::unix::fs::FileTypeExt;
        let is_block_device = meta.file_type().is_block_device();
        if !is_block_device && !meta.is_file() {
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
            (meta.len(), 512)
        };
        Ok(Backing {
            fd,
            is_block_device,
            direct,
            size,
            logical_block_size,
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
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat writes one stat struct into a live local.
            if unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(st.st_size as u64)
        }
    }
}
