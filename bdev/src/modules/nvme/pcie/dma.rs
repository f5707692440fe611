//! The DMA arena: one anonymous mapping, registered with the IOMMU once
//! (VFIO_IOMMU_MAP_DMA at attach) and pinned from then on, out of which
//! the driver takes everything the controller reads or writes: queue
//! rings, PRP list pages, Identify buffers and each command slot's data
//! buffer. All of that is taken when a queue is made, so the I/O path
//! allocates nothing and never asks the kernel for a mapping.
//!
//! The arena hands out page-aligned pieces by first fit; a queue that
//! goes gives its pieces back. Addresses the controller sees are IOVAs:
//! `iova + offset into the arena`.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use super::regs::PAGE;
use crate::modules::nvme::NvmeError;

/// The pinned memory shared with one controller.
pub struct DmaArena {
    base: NonNull<u8>,
    len: usize,
    iova: u64,
    /// Free runs (offset, bytes), sorted by offset, page multiples.
    free: Mutex<Vec<(usize, usize)>>,
}

// SAFETY: the arena is plain memory owned by this object; every piece of
// it is handed to exactly one owner (`DmaBuf`) at a time, and the free
// list is behind a mutex.
unsafe impl Send for DmaArena {}
// SAFETY: as above; shared references only reach the mutex and the
// immutable base, length and IOVA.
unsafe impl Sync for DmaArena {}

impl DmaArena {
    /// Maps `len` bytes (rounded up to pages), zeroed and populated, that
    /// the controller will see at `iova`.
    pub fn new(len: usize, iova: u64) -> Result<Arc<DmaArena>, NvmeError> {
        let len = len.div_ceil(PAGE).max(1) * PAGE;
        if !iova.is_multiple_of(PAGE as u64) {
            return Err(NvmeError::Invalid(format!(
                "DMA arena IOVA {iova:#x} is not page-aligned"
            )));
        }
        // SAFETY: an anonymous private mapping at an address the kernel
        // picks: no existing memory is affected. The result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            return Err(NvmeError::Transport(format!(
                "cannot map a DMA arena of {len} bytes: {e}"
            )));
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| NvmeError::Transport("mmap returned a null arena".into()))?;
        Ok(Arc::new(DmaArena {
            base,
            len,
            iova,
            free: Mutex::new(vec![(0, len)]),
        }))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iova(&self) -> u64 {
        self.iova
    }

    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// `len` bytes of arena that the controller may address at `iova`, or
    /// `None` when that range is not all inside the arena.
    pub fn at_iova(&self, iova: u64, len: usize) -> Option<*mut u8> {
        let off = iova.checked_sub(self.iova)?;
        let end = off.checked_add(len as u64)?;
        (end <= self.len as u64).then(|| {
            // SAFETY: off + len <= self.len, checked just above: the
            // pointer stays inside the mapping.
            unsafe { self.base.as_ptr().add(off as usize) }
        })
    }

    /// Bytes not handed out.
    pub fn free_bytes(&self) -> usize {
        self.lock().iter().map(|r| r.1).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(usize, usize)>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A zeroed, page-aligned piece of at least `len` bytes.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<DmaBuf, NvmeError> {
        let want = len.div_ceil(PAGE).max(1) * PAGE;
        let off = {
            let mut free = self.lock();
            let Some(i) = free.iter().position(|r| r.1 >= want) else {
                return Err(NvmeError::Transport(format!(
                    "the DMA arena ({} KiB) has no {} KiB free (attach with a larger arena)",
                    self.len >> 10,
                    want >> 10
                )));
            };
            let (off, n) = free[i];
            if n == want {
                free.remove(i);
            } else {
                free[i] = (off + want, n - want);
            }
            off
        };
        let b = DmaBuf {
            arena: self.clone(),
            off,
            len: want,
        };
        // SAFETY: [off, off + want) is inside the mapping and was just
        // taken from the free list: nobody else writes it.
        unsafe { std::ptr::write_bytes(b.ptr(), 0, want) };
        Ok(b)
    }

    fn give_back(&self, off: usize, len: usize) {
        let mut free = self.lock();
        let i = free.partition_point(|r| r.0 < off);
        free.insert(i, (off, len));
        // Merge with the neighbours so large pieces come back.
        if i + 1 < free.len() && free[i].0 + free[i].1 == free[i + 1].0 {
            free[i].1 += free[i + 1].1;
            free.remove(i + 1);
        }
        if i > 0 && free[i - 1].0 + free[i - 1].1 == free[i].0 {
            free[i - 1].1 += free[i].1;
            free.remove(i);
        }
    }
}

impl Drop for DmaArena {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, with its length; every DmaBuf
        // holds an Arc of the arena, so none outlives it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A piece of the arena, owned: the memory goes back when it drops.
pub struct DmaBuf {
    arena: Arc<DmaArena>,
    off: usize,
    len: usize,
}

impl DmaBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address the controller uses.
    pub fn iova(&self) -> u64 {
        self.arena.iova + self.off as u64
    }

    pub fn ptr(&self) -> *mut u8 {
        // SAFETY: off < arena.len by construction.
        unsafe { self.arena.base.as_ptr().add(self.off) }
    }

    /// The bytes, for the host's side of a transfer. The controller does
    /// not touch a slot's buffer while no command of the slot is
    /// outstanding, which is when the driver reads or writes it.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is inside the arena and owned by this buf.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above; &mut self makes the host's access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        self.arena.give_back(self.off, self.len);
    }
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DmaBuf(iova {:#x}, {} bytes)", self.iova(), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_aligned_zeroed_and_come_back_merged() {
        let a = DmaArena::new(64 << 10, 0x10_0000).unwrap();
        let mut x = a.alloc(100).unwrap();
        assert_eq!((x.iova(), x.len()), (0x10_0000, PAGE));
        x.as_mut_slice().fill(0xAB);
        let y = a.alloc(PAGE + 1).unwrap();
        assert_eq!(y.iova(), 0x10_0000 + PAGE as u64);
        assert_eq!(y.len(), 2 * PAGE);
        assert_eq!(a.free_bytes(), (64 << 10) - 3 * PAGE);
        drop(x);
        // The first piece is reused, and zeroed again.
        let z = a.alloc(PAGE).unwrap();
        assert_eq!(z.iova(), 0x10_0000);
        assert!(z.as_slice().iter().all(|&b| b == 0));
        assert!(a.alloc(64 << 10).is_err(), "more than is free");
        drop((y, z));
        assert_eq!(a.free_bytes(), 64 << 10);
        assert_eq!(a.alloc(64 << 10).unwrap().len(), 64 << 10, "merged whole");
        // IOVA translation stays inside the arena.
        assert!(a.at_iova(0x10_0000 + (64 << 10) - 8, 8).is_some());
        assert!(a.at_iova(0x10_0000 + (64 << 10) - 8, 9).is_none());
        assert!(a.at_iova(0xF_F000, 8).is_none());
        assert!(a.at_iova(u64::MAX, 8).is_none());
        assert!(DmaArena::new(PAGE, 0x123).is_err());
    }
}
