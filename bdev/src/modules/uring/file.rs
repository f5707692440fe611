//! Opening the backing file or block device: ownership (one bdev per file
//! or device, in this process and across processes), geometry, and the
//! zeroing method the file or device supports.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// What identifies a file or device however it is named: a file by its
/// inode, a block device by its device number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DevKey {
    File { dev: u64, ino: u64 },
    Block { rdev: u64 },
}

impl DevKey {
    fn of(st: &libc::stat) -> Option<DevKey> {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Some(DevKey::File {
                dev: st.st_dev,
                ino: st.st_ino,
            }),
            libc::S_IFBLK => Some(DevKey::Block { rdev: st.st_rdev }),
            _ => None,
        }
    }
}

/// The files and devices that uring bdevs of this process hold, with the
/// bdev holding each.
static OWNERS: Mutex<Vec<(DevKey, String)>> = Mutex::new(Vec::new());

fn owners() -> std::sync::MutexGuard<'static, Vec<(DevKey, String)>> {
    OWNERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// One bdev's entry in [`OWNERS`], removed when released or dropped.
struct Claim {
    key: DevKey,
    released: AtomicBool,
}

impl Claim {
    /// Takes `key` for `bdev`, or names the bdev that has it.
    fn take(key: DevKey, bdev: &str, path: &Path) -> Result<Claim, BdevError> {
        let mut o = owners();
        if let Some((_, holder)) = o.iter().find(|(k, _)| *k == key) {
            return Err(BdevError::Busy(
                bdev.to_string(),
                format!("{} is in use by bdev {holder}", path.display()),
            ));
        }
        o.push((key, bdev.to_string()));
        Ok(Claim {
            key,
            released: AtomicBool::new(false),
        })
    }

    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            owners().retain(|(k, _)| *k != self.key);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.release();
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
    claim: Claim,
}

fn err(path: &Path, e: io::Error) -> BdevError {
    BdevError::Io(path.display().to_string(), e)
}

fn open_raw(path: &Path, direct: bool, excl: bool) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // O_EXCL without O_CREAT on a block device: an exclusive open, refused
    // (EBUSY) while a filesystem, a device-mapper table or another
    // exclusive opener holds the device.
    let flags = libc::O_RDWR
        | libc::O_CLOEXEC
        | if direct { libc::O_DIRECT } else { 0 }
        | if excl { libc::O_EXCL } else { 0 };
    // SAFETY: a NUL-terminated path that outlives the call; a non-negative
    // result is a new descriptor we own.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just returned by open, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stat_path(path: &Path) -> io::Result<libc::stat> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: all-zero is a valid stat; stat writes one into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a live local to write into.
    if unsafe { libc::stat(c.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
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

/// How long a file lock or an exclusive open refused as busy is retried:
/// a process that just died (a daemon killed and restarted at once) holds
/// its files a little longer, until the kernel has torn its io_uring rings
/// down (about 20 ms when idle).
const BUSY_WAIT: Duration = Duration::from_secs(1);

/// Runs `f` until it succeeds, fails otherwise than with `busy`, or
/// [`BUSY_WAIT`] has passed.
fn busy_retry<T>(busy: i32, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let deadline = Instant::now() + BUSY_WAIT;
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(busy) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

impl Backing {
    /// Opens `path` for bdev `bdev`: refused if a bdev of this process
    /// holds the same file or device (by inode or device number, whatever
    /// the path), if another process holds a block device exclusively
    /// (O_EXCL) or a file locked (flock). The lock and the claim last
    /// until [`Backing::release`] (the bdev's unregistration) or the drop.
    pub fn open(path: &Path, bdev: &str) -> Result<Backing, BdevError> {
        let st = stat_path(path).map_err(|e| err(path, e))?;
        let Some(key) = DevKey::of(&st) else {
            return Err(BdevError::Invalid(format!(
                "{} is neither a file nor a block device",
                path.display()
            )));
        };
        let claim = Claim::take(key, bdev, path)?;
        let is_block_device = matches!(key, DevKey::Block { .. });
        let busy = |e: io::Error| {
            if is_block_device && e.raw_os_error() == Some(libc::EBUSY) {
                BdevError::Busy(
                    bdev.to_string(),
                    format!(
                        "{} is in use (opened exclusively elsewhere: a mounted filesystem, \
                         a device-mapper table or another process)",
                        path.display()
                    ),
                )
            } else {
                err(path, e)
            }
        };
        let open = |direct| busy_retry(libc::EBUSY, || open_raw(path, direct, is_block_device));
        let (fd, direct) = match open(true) {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "O_DIRECT refused; falling back to buffered I/O");
                (open(false).map_err(busy)?, false)
            }
            Err(e) => return Err(busy(e)),
        };
        let st = fstat(fd.as_raw_fd()).map_err(|e| err(path, e))?;
        if DevKey::of(&st) != Some(key) {
            return Err(BdevError::Invalid(format!(
                "{} changed while it was being opened",
                path.display()
            )));
        }
        if !is_block_device {
            let lock = || {
                // SAFETY: flock on a descriptor we own; no memory involved.
                if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            };
            if let Err(e) = busy_retry(libc::EWOULDBLOCK, lock) {
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Err(BdevError::Busy(
                        bdev.to_string(),
                        format!("{} is in use by another bdev or process", path.display()),
                    ));
                }
                return Err(err(path, e));
            }
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
            claim,
        })
    }

    /// Gives the file or device up (the bdev was unregistered): a file's
    /// lock is dropped and another bdev may take it at once. A block
    /// device's exclusive open lasts until the descriptor closes, when the
    /// last channel on it goes.
    pub fn release(&self) {
        if !self.is_block_device {
            // SAFETY: flock on a descriptor we own.
            unsafe { libc::flock(self.fd.as_raw_fd(), libc::LOCK_UN) };
        }
        self.claim.release();
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

    /// Makes a file `len` bytes long (growing: a sparse tail).
    pub fn set_file_len(&self, len: u64) -> io::Result<()> {
        if self.is_block_device {
            return Err(io::Error::from_raw_os_error(libc::ENOTTY));
        }
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: ftruncate on a descriptor we own; no memory is involved.
        if unsafe { libc::ftruncate(self.fd.as_raw_fd(), len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn is_block_device(&self) -> bool {
        self.is_block_device
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
