//! Streaming (non-temporal) copies into RAM, fenced once per batch.
//!
//! A write into a cold RAM-disk block is cheapest as streaming stores: one
//! pass over memory, no read for ownership, and the hot set stays cached.
//! Streaming stores are weakly ordered, so an SFENCE must come between them
//! and anything that may read that memory. Fencing at the end of each copy
//! made the core wait, every I/O, for its whole copy to reach memory.
//! Instead a copy notes that this core has unfenced stores, and [`fence`]
//! runs before any of them can be read:
//!
//! - before a completion is delivered (`io.rs`: once before a batch of
//!   deferred completions, and before a direct one). A completion is how a
//!   submitter, and through it any other core, learns of the write;
//! - before a RAM-disk module touches its memory in any other way on this
//!   core (a read, an ordinary store).
//!
//! So the copy drains while the core gets on with the next I/O.

use std::cell::Cell;

thread_local! {
    /// Whether this core made streaming stores that no fence has ordered.
    static UNFENCED: Cell<bool> = const { Cell::new(false) };
}

/// Orders this core's streaming stores before everything after it, if any
/// are outstanding.
#[inline]
pub(crate) fn fence() {
    if UNFENCED.with(|u| u.replace(false)) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SFENCE has no operands and no preconditions; SSE is part
        // of the x86_64 baseline.
        unsafe {
            std::arch::x86_64::_mm_sfence()
        };
    }
}

/// Copies `len` bytes from `src` to `dst`: with streaming stores when both
/// are 16-byte aligned and `len` is a multiple of 64, otherwise with an
/// ordinary copy after a [`fence`]. The caller must deliver the I/O's
/// completion through the bdev layer (which fences) before the data may be
/// read, and must call [`fence`] before touching `dst` any other way.
///
/// # Safety
/// `src` must be valid for `len` reads, `dst` for `len` writes, and the two
/// ranges must not overlap.
#[inline]
pub(crate) unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_load_si128, _mm_stream_si128};
        if (src as usize | dst as usize).is_multiple_of(16) && len.is_multiple_of(64) {
            let (s, d) = (src.cast::<__m128i>(), dst.cast::<__m128i>());
            let mut i = 0;
            while i < len / 16 {
                // SAFETY: i + 3 < len / 16, so every access is inside the
                // ranges the caller vouches for, and both are 16-aligned
                // (checked above).
                unsafe {
                    _mm_stream_si128(d.add(i), _mm_load_si128(s.add(i)));
                    _mm_stream_si128(d.add(i + 1), _mm_load_si128(s.add(i + 1)));
                    _mm_stream_si128(d.add(i + 2), _mm_load_si128(s.add(i + 2)));
                    _mm_stream_si128(d.add(i + 3), _mm_load_si128(s.add(i + 3)));
                }
                i += 4;
            }
            UNFENCED.with(|u| u.set(true));
            return;
        }
    }
    fence();
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IoBuf;

    fn pending() -> bool {
        UNFENCED.with(Cell::get)
    }

    #[test]
    fn aligned_copies_stream_and_leave_a_fence_owed() {
        let src: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut src_buf = IoBuf::new(8192);
        src_buf.as_mut_slice().copy_from_slice(&src);
        let mut dst = IoBuf::new(8192);
        fence();
        // SAFETY: both buffers are 8192 bytes and distinct.
        unsafe { copy(src_buf.as_ptr(), dst.as_mut_ptr(), 8192) };
        assert_eq!(pending(), cfg!(target_arch = "x86_64"));
        fence();
        assert!(!pending());
        assert_eq!(dst.as_slice(), &src[..]);
    }

    #[test]
    fn unaligned_copies_fence_first_and_owe_nothing() {
        let (from, mut to) = (IoBuf::new(4096), IoBuf::new(4096));
        // SAFETY: 64 bytes of two distinct 4096-byte buffers.
        unsafe { copy(from.as_ptr(), to.as_mut_ptr(), 64) };
        // Now a fence is owed (on x86_64); a length no streaming copy takes
        // pays it first.
        let src: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        let mut dst = vec![0u8; 300];
        // SAFETY: 199 bytes from a 200-byte vector into a 300-byte one.
        unsafe { copy(src.as_ptr().add(1), dst.as_mut_ptr().add(3), 199) };
        assert!(!pending());
        assert_eq!(&dst[3..202], &src[1..]);
    }
}
