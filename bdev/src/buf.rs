//! Data buffers aligned to 4 KiB (what O_DIRECT needs), recycled through
//! per-core pools by power-of-two size class so the I/O path never calls
//! the allocator once warm.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

pub const BUF_ALIGN: usize = 4096;
const MIN_SHIFT: u32 = 12;
const MAX_SHIFT: u32 = 24;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
/// Bytes a core keeps parked per size class.
const POOL_BYTES_PER_CLASS: usize = 64 << 20;
const UNPOOLED: u8 = u8::MAX;
/// Memory the buffer does not own (`IoBuf::borrowed`): never pooled nor
/// freed.
const BORROWED: u8 = u8::MAX - 1;

/// An owned, 4 KiB-aligned, initialised byte buffer.
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    class: u8,
}

// SAFETY: an IoBuf owns its allocation exclusively, like a Box<[u8]>; moving
// it to another thread moves that ownership (it then recycles into that
// thread's pool, which is fine: pools hold plain memory).
unsafe impl Send for IoBuf {}
// SAFETY: shared references only allow reads of initialised bytes.
unsafe impl Sync for IoBuf {}

/// Bytes taken from the allocator for buffers and not given back: live
/// buffers and every pool. Touched only when a buffer is allocated or
/// freed, never when a pool serves or takes one.
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static POOLS: RefCell<[Vec<NonNull<u8>>; CLASSES]> = const { RefCell::new([const { Vec::new() }; CLASSES]) };
}

fn class_of(len: usize) -> Option<u8> {
    let cap = len.max(1 << MIN_SHIFT).checked_next_power_of_two()?;
    let shift = cap.trailing_zeros();
    (shift <= MAX_SHIFT).then(|| (shift - MIN_SHIFT) as u8)
}

fn layout(cap: usize) -> Layout {
    // Only fails for sizes near usize::MAX, which `new` already refused.
    Layout::from_size_align(cap, BUF_ALIGN).unwrap_or_else(|_| Layout::new::<u8>())
}

impl IoBuf {
    /// A buffer of `len` bytes. Contents are unspecified (but initialised):
    /// a recycled buffer keeps its previous bytes.
    pub fn new(len: usize) -> IoBuf {
        let class = class_of(len);
        if let Some(c) = class {
            let reused = POOLS
                .try_with(|p| p.borrow_mut()[c as usize].pop())
                .ok()
                .flatten();
            if let Some(ptr) = reused {
                return IoBuf {
                    ptr,
                    len,
                    cap: 1 << (c as u32 + MIN_SHIFT),
                    class: c,
                };
            }
        }
        let cap = match class {
            Some(c) => 1 << (c as u32 + MIN_SHIFT),
            None => len.div_ceil(BUF_ALIGN) * BUF_ALIGN,
        };
        assert!(
            cap <= isize::MAX as usize / 2,
            "buffer of {len} bytes is too large"
        );
        // SAFETY: the layout has a non-zero size (cap >= 4096) and a valid
        // power-of-two alignment. Zeroing makes every byte initialised.
        let raw = unsafe { alloc_zeroed(layout(cap)) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout(cap)));
        ALLOCATED.fetch_add(cap as u64, Ordering::Relaxed);
        IoBuf {
            ptr,
            len,
            cap,
            class: class.unwrap_or(UNPOOLED),
        }
    }

    /// A buffer over `len` bytes at `ptr` that the caller owns: an I/O
    /// moves it through the stack like any other, without a copy (an fio
    /// engine hands fio's own I/O buffers to a bdev this way). Dropping it
    /// does nothing to the memory; it is never pooled.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of `len` initialised
    /// bytes, and nothing else may access them, from now until the
    /// returned buffer is dropped.
    pub unsafe fn borrowed(ptr: NonNull<u8>, len: usize) -> IoBuf {
        IoBuf {
            ptr,
            len,
            cap: len,
            class: BORROWED,
        }
    }

    /// Whether this buffer was made by [`IoBuf::borrowed`].
    pub fn is_borrowed(&self) -> bool {
        self.class == BORROWED
    }

    /// Bytes held by buffers, live or pooled, in the whole process. Pools
    /// are per thread and a thread's pool is never freed, so buffers
    /// dropped on threads that come and go show up here as growth.
    pub fn allocated_bytes() -> u64 {
        ALLOCATED.load(Ordering::Relaxed)
    }

    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> IoBuf {
        let mut b = IoBuf::new(len);
        b.as_mut_slice().fill(0);
        b
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> IoBuf {
        let mut b = IoBuf::new(data.len());
        b.as_mut_slice().copy_from_slice(data);
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Changes the visible length, up to the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "IoBuf::set_len past capacity");
        self.len = len;
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for `cap` >= `len` initialised bytes for as
        // long as self lives, and &self forbids concurrent mutation.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if self.class == BORROWED {
            return;
        }
        if self.class != UNPOOLED {
            let c = self.class as usize;
            let keep = POOL_BYTES_PER_CLASS / self.cap;
            let ptr = self.ptr;
            let kept = POOLS
                .try_with(|p| {
                    let mut p = p.borrow_mut();
                    if p[c].len() < keep.max(4) {
                        p[c].push(ptr);
                        true
                    } else {
                        false
                    }
                })
                .unwrap_or(false);
            if kept {
                return;
            }
        }
        ALLOCATED.fetch_sub(self.cap as u64, Ordering::Relaxed);
        // SAFETY: allocated in `new` with exactly this layout, and not pooled.
        unsafe { dealloc(self.ptr.as_ptr(), layout(self.cap)) };
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_recycled() {
        let a = IoBuf::new(5000);
        assert_eq!(a.as_ptr() as usize % BUF_ALIGN, 0);
        assert_eq!((a.len(), a.capacity()), (5000, 8192));
        let p = a.as_ptr();
        drop(a);
        let b = IoBuf::new(8192);
        assert_eq!(b.as_ptr(), p, "same class reuses the pooled buffer");
        let big = IoBuf::zeroed(40 << 20);
        assert_eq!(big.as_ptr() as usize % BUF_ALIGN, 0);
        assert!(big.as_slice().iter().all(|&x| x == 0));
    }

    #[test]
    fn borrowed_memory_is_neither_pooled_nor_freed() {
        let mut mine = vec![7u8; 8192];
        let ptr = NonNull::new(mine.as_mut_ptr()).unwrap();
        // SAFETY: `mine` outlives the buffer and is not touched meanwhile.
        let mut b = unsafe { IoBuf::borrowed(ptr, 4096) };
        assert!(b.is_borrowed());
        b.as_mut_slice().fill(9);
        assert_eq!((b.len(), b.capacity()), (4096, 4096));
        drop(b);
        let fresh = IoBuf::new(4096);
        assert_ne!(fresh.as_ptr(), ptr.as_ptr(), "never handed out by a pool");
        assert!(mine[..4096].iter().all(|&x| x == 9));
        assert!(mine[4096..].iter().all(|&x| x == 7));
    }
}
