//! A submission/completion queue pair in the DMA arena: ring positions,
//! the phase tag, doorbells, and one command slot per CID with its own
//! data buffer and PRP list pages (taken when the queue is made, so the
//! I/O path allocates nothing).
//!
//! A queue of N entries has N - 1 slots: at most N - 1 commands are
//! outstanding, so the submission ring can never be overrun (the
//! controller fetches in order, so the entries in use are at most the
//! commands outstanding), and the completion ring, also N entries, has
//! room for every completion. When every slot is taken the caller holds
//! its request until a completion frees one: nothing is dropped.
//!
//! Doorbells are batched: `submit` only writes the entry, `ring` writes
//! the tail once for everything submitted since; `poll` takes every new
//! completion and writes the head once.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use nvme::sqe::{Cqe, Sqe, CQE_LEN, SQE_LEN};

use super::dma::{DmaArena, DmaBuf};
use super::prp::{self, Prp};
use super::regs::{doorbell, Regs, PAGE};
use crate::modules::nvme::NvmeError;

/// Ring positions of a submission queue: the host moves the tail, the
/// controller reports its head in each completion (SQHD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqRing {
    entries: u16,
    tail: u16,
    head: u16,
}

impl SqRing {
    pub fn new(entries: u16) -> SqRing {
        SqRing {
            entries: entries.max(2),
            tail: 0,
            head: 0,
        }
    }

    pub fn tail(&self) -> u16 {
        self.tail
    }

    pub fn head(&self) -> u16 {
        self.head
    }

    /// One entry is always left empty: head == tail means empty.
    pub fn is_full(&self) -> bool {
        self.next(self.tail) == self.head
    }

    /// Entries the controller has not fetched yet.
    pub fn used(&self) -> u16 {
        (self.tail + self.entries - self.head) % self.entries
    }

    fn next(&self, i: u16) -> u16 {
        if i + 1 == self.entries {
            0
        } else {
            i + 1
        }
    }

    /// Takes the entry at the tail: its index, or `None` when full.
    pub fn push(&mut self) -> Option<u16> {
        if self.is_full() {
            return None;
        }
        let at = self.tail;
        self.tail = self.next(at);
        Some(at)
    }

    /// The controller's head from a completion. A head outside the ring,
    /// or one that would un-fetch entries we never submitted, is the
    /// controller's error.
    pub fn set_head(&mut self, head: u16) -> Result<(), NvmeError> {
        let ahead = (head + self.entries - self.head) % self.entries;
        if head >= self.entries || ahead > self.used() {
            return Err(NvmeError::Controller(format!(
                "SQ head {head} is not between head {} and tail {} of a {}-entry ring",
                self.head, self.tail, self.entries
            )));
        }
        self.head = head;
        Ok(())
    }
}

/// Ring position of a completion queue and the phase tag a new entry
/// carries: 1 on the first pass, flipped at each wrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CqRing {
    entries: u16,
    head: u16,
    phase: bool,
}

impl CqRing {
    pub fn new(entries: u16) -> CqRing {
        CqRing {
            entries: entries.max(2),
            head: 0,
            phase: true,
        }
    }

    pub fn head(&self) -> u16 {
        self.head
    }

    pub fn phase(&self) -> bool {
        self.phase
    }

    /// Consumes the entry at the head.
    pub fn advance(&mut self) {
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
    }
}

/// Sets a submission entry's data pointer to PRPs (PSDT 00b, no fused
/// operation), replacing the SGL form the shared builders start with.
pub fn set_prp(sqe: &mut Sqe, p: Prp) {
    sqe.0[1] = 0;
    sqe.0[24..32].copy_from_slice(&p.prp1.to_le_bytes());
    sqe.0[32..40].copy_from_slice(&p.prp2.to_le_bytes());
}

/// One command slot: its data buffer and the PRP list that maps it,
/// written once.
struct Slot {
    data: DmaBuf,
    /// PRP2 for a transfer longer than two pages (the list), or 0.
    list_iova: u64,
    _lists: Option<DmaBuf>,
    busy: bool,
}

/// A queue pair (admin queue 0 or an I/O queue) and its slots.
pub struct QueuePair {
    pub qid: u16,
    regs: Arc<dyn Regs>,
    sq: SqRing,
    cq: CqRing,
    sq_mem: DmaBuf,
    cq_mem: DmaBuf,
    sq_db: u32,
    cq_db: u32,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// The tail moved since the doorbell was last written.
    tail_dirty: bool,
    max_xfer: usize,
}

impl QueuePair {
    /// Rings of `entries` entries and `entries - 1` slots of `max_xfer`
    /// bytes each, taken from `arena`.
    pub fn new(
        regs: Arc<dyn Regs>,
        arena: &Arc<DmaArena>,
        qid: u16,
        entries: u16,
        dstrd: u32,
        max_xfer: usize,
    ) -> Result<QueuePair, NvmeError> {
        let entries = entries.max(2);
        let max_xfer = max_xfer.max(PAGE).div_ceil(PAGE) * PAGE;
        let sq_mem = arena.alloc(usize::from(entries) * SQE_LEN)?;
        let cq_mem = arena.alloc(usize::from(entries) * CQE_LEN)?;
        let mut slots = Vec::with_capacity(usize::from(entries) - 1);
        for _ in 1..entries {
            let data = arena.alloc(max_xfer)?;
            let pages = prp::list_pages(data.iova(), max_xfer);
            let (list_iova, lists) = if pages == 0 {
                (0, None)
            } else {
                let mut l = arena.alloc(pages * PAGE)?;
                let iovas: Vec<u64> = (0..pages).map(|i| l.iova() + (i * PAGE) as u64).collect();
                let mem = l.as_mut_slice();
                prp::build(data.iova(), max_xfer, &iovas, |p, e, v| {
                    let at = p * PAGE + e * 8;
                    mem[at..at + 8].copy_from_slice(&v.to_le_bytes());
                })
                .map_err(|e| NvmeError::Controller(e.to_string()))?;
                (iovas[0], Some(l))
            };
            slots.push(Slot {
                data,
                list_iova,
                _lists: lists,
                busy: false,
            });
        }
        Ok(QueuePair {
            qid,
            regs,
            sq: SqRing::new(entries),
            cq: CqRing::new(entries),
            sq_mem,
            cq_mem,
            sq_db: doorbell(qid, false, dstrd),
            cq_db: doorbell(qid, true, dstrd),
            free: (0..entries - 1).rev().collect(),
            slots,
            tail_dirty: false,
            max_xfer,
        })
    }

    pub fn entries(&self) -> u16 {
        self.sq.entries
    }

    pub fn sq_iova(&self) -> u64 {
        self.sq_mem.iova()
    }

    pub fn cq_iova(&self) -> u64 {
        self.cq_mem.iova()
    }

    /// Bytes one command moves at most.
    pub fn max_xfer(&self) -> usize {
        self.max_xfer
    }

    /// Commands outstanding.
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// A free slot (its CID), or `None` when every one is outstanding.
    pub fn alloc(&mut self) -> Option<u16> {
        let cid = self.free.pop()?;
        self.slots[usize::from(cid)].busy = true;
        Some(cid)
    }

    /// Gives back a slot that was allocated and never submitted.
    pub fn release(&mut self, cid: u16) {
        if let Some(s) = self.slots.get_mut(usize::from(cid)) {
            if s.busy {
                s.busy = false;
                self.free.push(cid);
            }
        }
    }

    /// Slot `cid`'s data buffer: fill it before a write's submit, read it
    /// after a read's completion.
    pub fn buf(&mut self, cid: u16) -> &mut [u8] {
        self.slots[usize::from(cid)].data.as_mut_slice()
    }

    /// Writes `sqe` (CID and PRPs set here; `len` bytes of data in the
    /// slot's buffer, 0 for none) at the tail. The doorbell waits for
    /// `ring`.
    pub fn submit(&mut self, cid: u16, sqe: Sqe, len: usize) -> Result<(), NvmeError> {
        let Some(slot) = self.slots.get(usize::from(cid)).filter(|s| s.busy) else {
            return Err(NvmeError::Invalid(format!(
                "submit of CID {cid} on queue {}, which does not hold it",
                self.qid
            )));
        };
        if len > self.max_xfer {
            return Err(NvmeError::Invalid(format!(
                "{len} bytes in one command on queue {} (at most {})",
                self.qid, self.max_xfer
            )));
        }
        let p = if len == 0 {
            Prp::default()
        } else if len <= 2 * PAGE {
            // Slot buffers start on a page: the first page or two need
            // no list.
            let iova = slot.data.iova();
            Prp {
                prp1: iova,
                prp2: if len > PAGE { iova + PAGE as u64 } else { 0 },
            }
        } else {
            Prp {
                prp1: slot.data.iova(),
                prp2: slot.list_iova,
            }
        };
        self.submit_prp(cid, sqe, p)
    }

    /// Writes `sqe` with the data at `p` (memory the caller owns, such as
    /// a ring given to Create I/O Queue).
    pub fn submit_prp(&mut self, cid: u16, mut sqe: Sqe, p: Prp) -> Result<(), NvmeError> {
        if !self.slots.get(usize::from(cid)).is_some_and(|s| s.busy) {
            return Err(NvmeError::Invalid(format!(
                "submit of CID {cid} on queue {}, which does not hold it",
                self.qid
            )));
        }
        set_prp(&mut sqe, p);
        sqe.set_cid(cid);
        let Some(at) = self.sq.push() else {
            return Err(NvmeError::Controller(format!(
                "submission queue {} is full with {} commands outstanding",
                self.qid,
                self.outstanding()
            )));
        };
        // SAFETY: `at` < entries, so the 64 bytes lie inside sq_mem; the
        // controller reads an entry only after the doorbell covers it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sqe.0.as_ptr(),
                self.sq_mem.ptr().add(usize::from(at) * SQE_LEN),
                SQE_LEN,
            )
        };
        self.tail_dirty = true;
        Ok(())
    }

    /// Writes the tail doorbell if anything was submitted since the last;
    /// whether it did.
    pub fn ring(&mut self) -> bool {
        if !self.tail_dirty {
            return false;
        }
        // The entries must be in memory before the controller hears of
        // them (x86 keeps stores in order; this keeps the compiler from
        // moving them past the doorbell).
        fence(Ordering::SeqCst);
        self.regs.write32(self.sq_db, u32::from(self.sq.tail()));
        self.tail_dirty = false;
        true
    }

    /// The CQE at the head if the controller has posted it.
    fn peek(&self) -> Option<Cqe> {
        let at = usize::from(self.cq.head()) * CQE_LEN;
        // SAFETY: head < entries: inside cq_mem. A volatile read, because
        // the controller writes this memory behind the compiler's back.
        let status =
            unsafe { std::ptr::read_volatile(self.cq_mem.ptr().add(at + 14).cast::<u16>()) };
        if (u16::from_le(status) & 1 != 0) != self.cq.phase() {
            return None;
        }
        // The rest of the entry was written before its phase tag.
        fence(Ordering::Acquire);
        let p = self.cq_mem.ptr().wrapping_add(at).cast::<u64>();
        // SAFETY: the entry is 16 bytes inside cq_mem at a 16-byte aligned
        // offset of a page-aligned buffer: two aligned u64 reads.
        let (lo, hi) = unsafe {
            (
                std::ptr::read_volatile(p),
                std::ptr::read_volatile(p.add(1)),
            )
        };
        let mut b = [0u8; CQE_LEN];
        b[..8].copy_from_slice(&lo.to_ne_bytes());
        b[8..].copy_from_slice(&hi.to_ne_bytes());
        Some(Cqe::decode(&b))
    }

    /// Takes up to `max` completions, calling `f(cid, cqe)` for each with
    /// the slot still held (its buffer readable), then frees the slot;
    /// writes the head doorbell once. A completion for a CID with nothing
    /// outstanding, or with an impossible SQ head, is the controller's
    /// error: polling stops there and the error says why.
    pub fn poll(
        &mut self,
        max: usize,
        mut f: impl FnMut(&mut Self, u16, &Cqe),
    ) -> Result<usize, NvmeError> {
        let mut n = 0;
        let mut res = Ok(());
        while n < max {
            let Some(cqe) = self.peek() else { break };
            self.cq.advance();
            n += 1;
            if let Err(e) = self.sq.set_head(cqe.sqhd) {
                res = Err(e);
                break;
            }
            let busy = self.slots.get(usize::from(cqe.cid)).is_some_and(|s| s.busy);
            if !busy {
                res = Err(NvmeError::Controller(format!(
                    "completion on queue {} for CID {} with no command outstanding",
                    self.qid, cqe.cid
                )));
                break;
            }
            f(self, cqe.cid, &cqe);
            self.release(cqe.cid);
        }
        if n > 0 {
            self.regs.write32(self.cq_db, u32::from(self.cq.head()));
        }
        res.map(|()| n)
    }

    /// Every slot back, the rings at zero (after the controller was reset
    /// and the queue made again): what was outstanding is the caller's to
    /// fail.
    pub fn reset(&mut self) {
        self.sq = SqRing::new(self.sq.entries);
        self.cq = CqRing::new(self.cq.entries);
        self.cq_mem.as_mut_slice().fill(0);
        self.free.clear();
        for (i, s) in self.slots.iter_mut().enumerate().rev() {
            s.busy = false;
            self.free.push(i as u16);
        }
        self.tail_dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sq_tail_wraps_and_full_leaves_one_empty() {
        let mut s = SqRing::new(4);
        assert_eq!((s.push(), s.push(), s.push()), (Some(0), Some(1), Some(2)));
        assert!(s.is_full());
        assert_eq!(s.push(), None, "4 entries hold 3 commands");
        assert_eq!(s.used(), 3);
        s.set_head(2).unwrap();
        assert_eq!(s.used(), 1);
        assert_eq!((s.push(), s.push()), (Some(3), Some(0)), "tail wraps to 0");
        assert_eq!(s.tail(), 1);
        assert!(s.is_full());
        s.set_head(1).unwrap();
        assert_eq!(s.used(), 0);
        // A head beyond the tail (un-fetching entries) or outside the ring.
        assert!(s.set_head(2).is_err());
        assert!(s.set_head(4).is_err());
        assert_eq!(s.head(), 1);
    }

    #[test]
    fn cq_phase_flips_at_each_wrap() {
        let mut c = CqRing::new(3);
        assert!(c.phase(), "the first pass looks for phase 1");
        for _ in 0..3 {
            c.advance();
        }
        assert_eq!((c.head(), c.phase()), (0, false));
        c.advance();
        assert_eq!(c.head(), 1);
        for _ in 0..2 {
            c.advance();
        }
        assert_eq!((c.head(), c.phase()), (0, true));
    }

    #[test]
    fn prp_form_replaces_sgl() {
        let mut s = nvme::sqe::Sqe::new(0x02, 0);
        assert_eq!(s.psdt(), 1);
        set_prp(
            &mut s,
            Prp {
                prp1: 0x1234_5000,
                prp2: 0xABCD_E000,
            },
        );
        assert_eq!(s.psdt(), 0);
        assert_eq!(&s.0[24..32], &0x1234_5000u64.to_le_bytes());
        assert_eq!(&s.0[32..40], &0xABCD_E000u64.to_le_bytes());
    }
}
