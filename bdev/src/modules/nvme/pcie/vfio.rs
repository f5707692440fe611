//! A PCI function handed to this process through VFIO (type 1 IOMMU,
//! container and group: what Debian 12's kernel has; it has no iommufd):
//! checks that say what to do when the device is not ready for it, BAR0
//! mapped into our address space (the [`Regs`] the driver writes with
//! plain loads and stores, no system call), bus mastering on, and the
//! DMA arena registered with the IOMMU once.
//!
//! Facts from the kernel's `include/uapi/linux/vfio.h` and
//! `Documentation/driver-api/vfio.rst`.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Mutex;

use super::dma::DmaArena;
use super::regs::Regs;
use crate::modules::nvme::NvmeError;

// ioctl numbers: _IO(';', 100 + n), no size or direction bits.
const VFIO_GET_API_VERSION: u64 = 0x3B64;
const VFIO_CHECK_EXTENSION: u64 = 0x3B65;
const VFIO_SET_IOMMU: u64 = 0x3B66;
const VFIO_GROUP_GET_STATUS: u64 = 0x3B67;
const VFIO_GROUP_SET_CONTAINER: u64 = 0x3B68;
const VFIO_GROUP_GET_DEVICE_FD: u64 = 0x3B6A;
const VFIO_DEVICE_GET_REGION_INFO: u64 = 0x3B6C;
const VFIO_IOMMU_MAP_DMA: u64 = 0x3B71;
const VFIO_IOMMU_UNMAP_DMA: u64 = 0x3B72;

const VFIO_API_VERSION: libc::c_int = 0;
const VFIO_TYPE1_IOMMU: libc::c_ulong = 1;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
const GROUP_VIABLE: u32 = 1;
const REGION_MMAP: u32 = 1 << 2;
const BAR0_INDEX: u32 = 0;
const CONFIG_INDEX: u32 = 7;
const DMA_READ_WRITE: u32 = 3;
/// PCI command register: memory space and bus master enable.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY_MASTER: u16 = (1 << 1) | (1 << 2);

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}
const _: () = assert!(std::mem::size_of::<GroupStatus>() == 8);

#[repr(C)]
#[derive(Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}
const _: () = assert!(std::mem::size_of::<RegionInfo>() == 32);

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}
const _: () = assert!(std::mem::size_of::<DmaMap>() == 32);

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}
const _: () = assert!(std::mem::size_of::<DmaUnmap>() == 24);

fn os(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// An ioctl whose argument is a pointer to `arg` (or a plain integer
/// passed as a pointer-sized value): the return value, or the error.
///
/// # Safety
/// `arg` must be what `req` expects on `fd` (a struct of the right
/// layout with its argsz set, or an integer).
unsafe fn ioctl(fd: &OwnedFd, req: u64, arg: usize) -> std::io::Result<libc::c_int> {
    // SAFETY: the caller promises the argument matches the request; the
    // fd is open for as long as the borrow.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A PCI address in the canonical `DDDD:BB:DD.F` form (`BB:DD.F` means
/// domain 0), checked so it can name a sysfs path and nothing else.
pub fn canonical_pci_addr(s: &str) -> Result<String, NvmeError> {
    let bad = || {
        NvmeError::Invalid(format!(
            "traddr {s:?} is not a PCI address (domain:bus:device.function, e.g. 0000:00:04.0)"
        ))
    };
    let full = if s.matches(':').count() == 1 {
        format!("0000:{s}")
    } else {
        s.to_string()
    };
    let parts: Vec<&str> = full.split([':', '.']).collect();
    let widths = [4, 2, 2, 1];
    if parts.len() != 4
        || parts
            .iter()
            .zip(widths)
            .any(|(p, w)| p.len() != w || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(bad());
    }
    let dev = u8::from_str_radix(parts[2], 16).map_err(|_| bad())?;
    let func = u8::from_str_radix(parts[3], 16).map_err(|_| bad())?;
    if dev > 0x1F || func > 7 {
        return Err(bad());
    }
    Ok(full.to_ascii_lowercase())
}

/// What sysfs says about the device; every refusal names the fix.
/// Returns the IOMMU group number.
pub fn check_sysfs(sysfs: &Path, addr: &str) -> Result<u32, NvmeError> {
    let dev = sysfs.join("bus/pci/devices").join(addr);
    if !dev.exists() {
        return Err(NvmeError::Invalid(format!(
            "no PCI device {addr} (see lspci -D)"
        )));
    }
    let driver = std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if driver.as_deref() != Some("vfio-pci") {
        let now = match &driver {
            Some(d) => format!("bound to {d}"),
            None => "bound to no driver".to_string(),
        };
        let unbind = if driver.is_some() {
            format!("echo {addr} > /sys/bus/pci/devices/{addr}/driver/unbind; ")
        } else {
            String::new()
        };
        return Err(NvmeError::Invalid(format!(
            "PCI device {addr} is {now}, not vfio-pci; hand it over with: modprobe vfio-pci; \
             echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override; {unbind}\
             echo {addr} > /sys/bus/pci/drivers_probe"
        )));
    }
    let group = std::fs::read_link(dev.join("iommu_group"))
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
        .ok_or_else(|| {
            NvmeError::Invalid(format!(
                "PCI device {addr} has no IOMMU group: the IOMMU is off (boot with intel_iommu=on \
                 or amd_iommu=on, and enable VT-d/AMD-Vi in the firmware)"
            ))
        })?;
    Ok(group)
}

/// Devices of IOMMU group `group` not bound to vfio-pci (they make the
/// group not viable), with their drivers.
fn group_blockers(sysfs: &Path, group: u32) -> Vec<String> {
    let dir = sysfs.join(format!("kernel/iommu_groups/{group}/devices"));
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let drv = std::fs::read_link(sysfs.join("bus/pci/devices").join(&name).join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        match drv.as_deref() {
            Some("vfio-pci") | None => {}
            // A bridge's driver does not count against viability.
            Some("pcieport") => {}
            Some(d) => out.push(format!("{name} ({d})")),
        }
    }
    out.sort();
    out
}

/// The memory-lock limit, bytes (`None`: unlimited).
fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass, nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0;
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

/// The error for a DMA mapping the kernel refused.
fn map_error(e: std::io::Error, bytes: usize) -> NvmeError {
    let limit = memlock_limit();
    let pinned = e.raw_os_error() == Some(libc::ENOMEM)
        || e.raw_os_error() == Some(libc::EPERM) && limit.is_some();
    if pinned {
        let lim = limit.map_or("unlimited".to_string(), |l| format!("{} KiB", l >> 10));
        return NvmeError::Transport(format!(
            "cannot pin the {} KiB DMA arena ({e}); RLIMIT_MEMLOCK is {lim}: raise it \
             (ulimit -l unlimited, or LimitMEMLOCK=infinity for a systemd service) or run with \
             CAP_IPC_LOCK",
            bytes >> 10
        ));
    }
    NvmeError::Transport(format!("VFIO_IOMMU_MAP_DMA of the DMA arena: {e}"))
}

/// An open VFIO device with BAR0 mapped.
pub struct VfioDevice {
    pub addr: String,
    pub group: u32,
    container: OwnedFd,
    _group: OwnedFd,
    device: File,
    bar: NonNull<u8>,
    bar_len: usize,
    /// IOVA ranges mapped with the IOMMU, unmapped at drop.
    mapped: Mutex<Vec<(u64, u64)>>,
}

// SAFETY: the BAR mapping is device memory reached only through volatile
// 32-bit accesses, which the controller serialises; the fds are plain
// kernel handles; `mapped` is behind a mutex.
unsafe impl Send for VfioDevice {}
// SAFETY: as above: shared access is volatile MMIO and ioctls.
unsafe impl Sync for VfioDevice {}

fn open_rw(p: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(p)
}

impl VfioDevice {
    /// Opens PCI function `addr` through VFIO (`sysfs` is /sys but for
    /// tests): container, group (viable), type 1 IOMMU, device, BAR0.
    pub fn open(sysfs: &Path, addr: &str) -> Result<VfioDevice, NvmeError> {
        let addr = canonical_pci_addr(addr)?;
        let group = check_sysfs(sysfs, &addr)?;
        let container = open_rw(Path::new("/dev/vfio/vfio")).map_err(|e| {
            NvmeError::Transport(format!(
                "/dev/vfio/vfio: {e} (modprobe vfio-pci; run as root or give this user the device)"
            ))
        })?;
        let container = OwnedFd::from(container);
        // SAFETY: VFIO_GET_API_VERSION takes no argument.
        let v = unsafe { ioctl(&container, VFIO_GET_API_VERSION, 0) }
            .map_err(|e| NvmeError::Transport(format!("VFIO_GET_API_VERSION: {e}")))?;
        if v != VFIO_API_VERSION {
            return Err(NvmeError::Transport(format!(
                "VFIO API version {v}, not {VFIO_API_VERSION}"
            )));
        }
        let gpath = PathBuf::from(format!("/dev/vfio/{group}"));
        let gfile = open_rw(&gpath).map_err(|e| {
            let why = if e.raw_os_error() == Some(libc::EBUSY) {
                " (another process has the group open)".to_string()
            } else {
                String::new()
            };
            NvmeError::Transport(format!("{}: {e}{why}", gpath.display()))
        })?;
        let gfd = OwnedFd::from(gfile);
        let mut st = GroupStatus {
            argsz: std::mem::size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        // SAFETY: VFIO_GROUP_GET_STATUS fills a vfio_group_status whose
        // argsz we set.
        unsafe { ioctl(&gfd, VFIO_GROUP_GET_STATUS, &mut st as *mut _ as usize) }
            .map_err(|e| NvmeError::Transport(format!("VFIO_GROUP_GET_STATUS: {e}")))?;
        if st.flags & GROUP_VIABLE == 0 {
            let others = group_blockers(sysfs, group);
            return Err(NvmeError::Invalid(format!(
                "IOMMU group {group} is not viable: every device in it must be bound to vfio-pci \
                 or to no driver; bound elsewhere: {}",
                if others.is_empty() {
                    "(none found in sysfs)".to_string()
                } else {
                    others.join(", ")
                }
            )));
        }
        let cfd = container.as_raw_fd();
        // SAFETY: VFIO_GROUP_SET_CONTAINER takes a pointer to the
        // container's fd, which lives on this stack frame.
        unsafe { ioctl(&gfd, VFIO_GROUP_SET_CONTAINER, &cfd as *const _ as usize) }
            .map_err(|e| NvmeError::Transport(format!("VFIO_GROUP_SET_CONTAINER: {e}")))?;
        let iommu = [VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU]
            .into_iter()
            .find(|&t| {
                // SAFETY: VFIO_CHECK_EXTENSION takes the extension as an integer.
                unsafe { ioctl(&container, VFIO_CHECK_EXTENSION, t as usize) }.is_ok_and(|r| r > 0)
            })
            .ok_or_else(|| NvmeError::Transport("the kernel offers no VFIO type 1 IOMMU".into()))?;
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type as an integer.
        unsafe { ioctl(&container, VFIO_SET_IOMMU, iommu as usize) }
            .map_err(|e| NvmeError::Transport(format!("VFIO_SET_IOMMU: {e}")))?;
        let name = std::ffi::CString::new(addr.clone())
            .map_err(|_| NvmeError::Invalid("PCI address with a NUL".into()))?;
        // SAFETY: VFIO_GROUP_GET_DEVICE_FD takes a NUL-terminated device
        // name, alive for the call.
        let dfd = unsafe { ioctl(&gfd, VFIO_GROUP_GET_DEVICE_FD, name.as_ptr() as usize) }
            .map_err(|e| NvmeError::Transport(format!("VFIO_GROUP_GET_DEVICE_FD {addr}: {e}")))?;
        // SAFETY: a new fd the kernel just gave us, owned from here on.
        let device = File::from(unsafe { OwnedFd::from_raw_fd(dfd) });
        let dev_fd = OwnedFd::from(
            device
                .try_clone()
                .map_err(|e| NvmeError::Transport(e.to_string()))?,
        );
        let region = |index: u32| -> Result<RegionInfo, NvmeError> {
            let mut r = RegionInfo {
                argsz: std::mem::size_of::<RegionInfo>() as u32,
                index,
                ..RegionInfo::default()
            };
            // SAFETY: VFIO_DEVICE_GET_REGION_INFO fills a vfio_region_info
            // whose argsz and index we set.
            unsafe {
                ioctl(
                    &dev_fd,
                    VFIO_DEVICE_GET_REGION_INFO,
                    &mut r as *mut _ as usize,
                )
            }
            .map_err(|e| NvmeError::Transport(format!("region {index} info: {e}")))?;
            Ok(r)
        };
        let bar0 = region(BAR0_INDEX)?;
        if bar0.flags & REGION_MMAP == 0 || bar0.size < 0x2000 {
            return Err(NvmeError::Transport(format!(
                "BAR0 of {addr} cannot be mapped ({} bytes, flags {:#x}): not an NVMe controller?",
                bar0.size, bar0.flags
            )));
        }
        // Bus mastering on, so the controller may reach the arena.
        let cfg = region(CONFIG_INDEX)?;
        let mut cmd = [0u8; 2];
        device
            .read_exact_at(&mut cmd, cfg.offset + PCI_COMMAND)
            .map_err(|e| NvmeError::Transport(format!("PCI command register: {e}")))?;
        let c = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY_MASTER;
        device
            .write_all_at(&c.to_le_bytes(), cfg.offset + PCI_COMMAND)
            .map_err(|e| NvmeError::Transport(format!("PCI command register: {e}")))?;
        let bar_len = bar0.size as usize;
        // SAFETY: maps the device's BAR0 region at the offset VFIO gave;
        // a shared mapping of device memory, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bar_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                device.as_raw_fd(),
                bar0.offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(NvmeError::Transport(os("mmap of BAR0")));
        }
        let bar = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| NvmeError::Transport("mmap of BAR0 returned null".into()))?;
        drop(dev_fd);
        Ok(VfioDevice {
            addr,
            group,
            container,
            _group: gfd,
            device,
            bar,
            bar_len,
            mapped: Mutex::new(Vec::new()),
        })
    }

    /// Registers the arena with the IOMMU at its IOVA: pinned until the
    /// device is closed.
    pub fn map_dma(&self, arena: &DmaArena) -> Result<(), NvmeError> {
        let m = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: DMA_READ_WRITE,
            vaddr: arena.base() as u64,
            iova: arena.iova(),
            size: arena.len() as u64,
        };
        // SAFETY: VFIO_IOMMU_MAP_DMA reads a vfio_iommu_type1_dma_map; the
        // arena's memory stays mapped while this device holds the map
        // (the controller keeps the arena alive past the device).
        unsafe { ioctl(&self.container, VFIO_IOMMU_MAP_DMA, &m as *const _ as usize) }
            .map_err(|e| map_error(e, arena.len()))?;
        self.mapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((arena.iova(), arena.len() as u64));
        Ok(())
    }

    fn in_bar(&self, off: u32) -> bool {
        (off as usize).is_multiple_of(4) && (off as usize) + 4 <= self.bar_len
    }
}

impl Regs for VfioDevice {
    fn read32(&self, off: u32) -> u32 {
        if !self.in_bar(off) {
            return u32::MAX;
        }
        // SAFETY: an aligned 4-byte read inside the BAR mapping (checked);
        // volatile, as device registers change on their own.
        u32::from_le(unsafe {
            std::ptr::read_volatile(self.bar.as_ptr().add(off as usize).cast::<u32>())
        })
    }

    fn write32(&self, off: u32, v: u32) {
        if !self.in_bar(off) {
            return;
        }
        // SAFETY: an aligned 4-byte write inside the BAR mapping (checked).
        unsafe {
            std::ptr::write_volatile(self.bar.as_ptr().add(off as usize).cast::<u32>(), v.to_le())
        }
    }
}

impl Drop for VfioDevice {
    fn drop(&mut self) {
        for (iova, size) in self
            .mapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let u = DmaUnmap {
                argsz: std::mem::size_of::<DmaUnmap>() as u32,
                flags: 0,
                iova,
                size,
            };
            // SAFETY: VFIO_IOMMU_UNMAP_DMA reads a vfio_iommu_type1_dma_unmap
            // naming a range we mapped.
            if let Err(e) = unsafe {
                ioctl(
                    &self.container,
                    VFIO_IOMMU_UNMAP_DMA,
                    &u as *const _ as usize,
                )
            } {
                tracing::warn!("nvme pcie: unmapping the DMA arena of {}: {e}", self.addr);
            }
        }
        // SAFETY: the BAR mapping made in `open`, with its length.
        unsafe { libc::munmap(self.bar.as_ptr().cast(), self.bar_len) };
        let _ = &self.device;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert_eq!(canonical_pci_addr("0000:00:0a.0").unwrap(), "0000:00:0a.0");
        assert_eq!(canonical_pci_addr("00:0A.0").unwrap(), "0000:00:0a.0");
        for bad in [
            "",
            "0000:00:0a",
            "0000:00:20.0",
            "0000:00:0a.8",
            "../../etc",
            "0000:00:0g.0",
            "00000:00:0a.0",
        ] {
            assert!(canonical_pci_addr(bad).is_err(), "{bad:?}");
        }
    }

    /// A sysfs tree with one device, bound to `driver`, in `group`.
    fn fake_sysfs(driver: Option<&str>, group: Option<u32>) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "ft-vfio-{}-{}",
            std::process::id(),
            crate::test_util::unique("s")
        ));
        let dev = root.join("bus/pci/devices/0000:00:0a.0");
        std::fs::create_dir_all(&dev).unwrap();
        if let Some(d) = driver {
            let dd = root.join("bus/pci/drivers").join(d);
            std::fs::create_dir_all(&dd).unwrap();
            std::os::unix::fs::symlink(&dd, dev.join("driver")).unwrap();
        }
        if let Some(g) = group {
            let gd = root.join(format!("kernel/iommu_groups/{g}/devices"));
            std::fs::create_dir_all(&gd).unwrap();
            std::os::unix::fs::symlink(&dev, gd.join("0000:00:0a.0")).unwrap();
            std::os::unix::fs::symlink(gd.parent().unwrap(), dev.join("iommu_group")).unwrap();
        }
        root
    }

    #[test]
    fn sysfs_checks_name_the_fix() {
        let r = fake_sysfs(Some("nvme"), Some(10));
        let e = check_sysfs(&r, "0000:00:0a.0").unwrap_err().to_string();
        assert!(e.contains("bound to nvme"), "{e}");
        assert!(
            e.contains("echo vfio-pci > /sys/bus/pci/devices/0000:00:0a.0/driver_override"),
            "{e}"
        );
        assert!(e.contains("driver/unbind"), "{e}");
        let e = check_sysfs(&r, "0000:00:0b.0").unwrap_err().to_string();
        assert!(e.contains("no PCI device"), "{e}");
        std::fs::remove_dir_all(&r).unwrap();

        let r = fake_sysfs(None, Some(10));
        let e = check_sysfs(&r, "0000:00:0a.0").unwrap_err().to_string();
        assert!(
            e.contains("bound to no driver") && !e.contains("unbind"),
            "{e}"
        );
        std::fs::remove_dir_all(&r).unwrap();

        let r = fake_sysfs(Some("vfio-pci"), None);
        let e = check_sysfs(&r, "0000:00:0a.0").unwrap_err().to_string();
        assert!(
            e.contains("no IOMMU group") && e.contains("intel_iommu=on"),
            "{e}"
        );
        std::fs::remove_dir_all(&r).unwrap();

        let r = fake_sysfs(Some("vfio-pci"), Some(10));
        assert_eq!(check_sysfs(&r, "0000:00:0a.0").unwrap(), 10);
        assert!(group_blockers(&r, 10).is_empty());
        std::fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn pinning_errors_name_the_limit() {
        let e = map_error(std::io::Error::from_raw_os_error(libc::ENOMEM), 64 << 20).to_string();
        assert!(e.contains("ulimit -l") && e.contains("65536 KiB"), "{e}");
        let e = map_error(std::io::Error::from_raw_os_error(libc::EINVAL), 4096).to_string();
        assert!(e.contains("VFIO_IOMMU_MAP_DMA"), "{e}");
    }
}
