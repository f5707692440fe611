//! The per-core ring: SQEs are queued during a loop turn and submitted in
//! one `io_uring_enter` by the channel's poller, which also reaps CQEs.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use io_uring::{opcode, squeue, types, IoUring};
use reactor::{PollStatus, Poller};

use super::file::{Backing, Zeroing};
use crate::{BdevError, IoBox, IoBuf, IoStatus, IoType, ModuleChannel};

/// Ring size; the CQ is twice this, and in-flight I/O is capped at the CQ
/// size so completions can never overflow it.
const RING_ENTRIES: u32 = 512;

/// Zeroing by writes goes in pieces of at most this many bytes, one after
/// the other, all from one shared buffer of zeros.
const ZERO_PIECE: u64 = 1 << 20;

/// The buffer of zeros every write of zeros reads from (never written).
fn zeros() -> &'static IoBuf {
    static ZEROS: OnceLock<IoBuf> = OnceLock::new();
    ZEROS.get_or_init(|| IoBuf::zeroed(ZERO_PIECE as usize))
}

/// A WRITE_ZEROES done with writes: the piece in flight and what is left.
#[derive(Clone, Copy)]
struct ZeroRun {
    /// Where the next piece starts, and the end of the range.
    at: u64,
    end: u64,
    /// The length of the piece in flight.
    piece: u64,
}

impl ZeroRun {
    /// The next piece's SQE (there must be one).
    fn next(&mut self) -> squeue::Entry {
        let len = ZERO_PIECE.min(self.end - self.at);
        let sqe = opcode::Write::new(types::Fixed(0), zeros().as_ptr(), len as u32)
            .offset(self.at)
            .build();
        self.at += len;
        self.piece = len;
        sqe
    }
}

struct Slot {
    io: Option<IoBox>,
    iov: Vec<libc::iovec>,
    zero: Option<ZeroRun>,
}

pub(crate) struct UringChannel {
    inner: Rc<Inner>,
    _poller: Poller,
}

struct Inner {
    ring: RefCell<IoUring>,
    file: Arc<Backing>,
    block_size: u64,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    inflight: Cell<u32>,
    unsubmitted: Cell<u32>,
    resets: RefCell<VecDeque<IoBox>>,
    /// Cooperative task running: completions wait for us to enter the kernel.
    coop: bool,
}

/// A busy reactor never sleeps, so it can take completions the way fio does
/// (cooperative, deferred task running, single issuer): the kernel queues
/// completion work for us instead of interrupting us for each one, and we
/// run it in a batch when the ring's TASKRUN flag says some is pending
/// (`submit` then enters with GETEVENTS). A reactor that parks needs the
/// kernel to post completions by itself, to signal the eventfd it sleeps
/// on, so it keeps the default setup.
fn make_ring(busy: bool) -> Result<IoUring, BdevError> {
    if busy {
        let coop = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES);
        if let Ok(ring) = coop {
            return Ok(ring);
        }
    }
    IoUring::new(RING_ENTRIES).map_err(|e| BdevError::Io("io_uring_setup".into(), e))
}

impl UringChannel {
    pub fn new(file: Arc<Backing>, block_size: u32) -> Result<UringChannel, BdevError> {
        let busy = reactor::is_busy_mode();
        let ring = make_ring(busy)?;
        ring.submitter()
            .register_files(&[file.raw_fd()])
            .map_err(|e| BdevError::Io("io_uring register_files".into(), e))?;
        // A parked reactor sleeps on its eventfd; let completions signal it.
        // Busy reactors never sleep, so they skip the per-CQE signal cost.
        if !busy {
            if let Some(fd) = reactor::wake_fd() {
                ring.submitter()
                    .register_eventfd(fd)
                    .map_err(|e| BdevError::Io("io_uring register_eventfd".into(), e))?;
            }
        }
        let inner = Rc::new(Inner {
            ring: RefCell::new(ring),
            file,
            block_size: block_size as u64,
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            inflight: Cell::new(0),
            unsubmitted: Cell::new(0),
            resets: RefCell::new(VecDeque::new()),
            coop: busy,
        });
        let i = inner.clone();
        let poller = reactor::register_poller(move || i.poll());
        Ok(UringChannel {
            inner,
            _poller: poller,
        })
    }
}

impl ModuleChannel for UringChannel {
    fn submit(&self, io: IoBox) {
        self.inner.submit(io);
    }
}

impl Inner {
    fn submit(&self, io: IoBox) {
        let off = io.offset_blocks() * self.block_size;
        let len = io.num_blocks() * self.block_size;
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        match io.io_type() {
            IoType::Reset => {
                if self.inflight.get() == 0 {
                    io.complete(IoStatus::Success);
                } else {
                    self.resets.borrow_mut().push_back(io);
                }
            }
            IoType::Unmap | IoType::WriteZeroes if self.file.is_block_device => {
                let zero = io.io_type() == IoType::WriteZeroes;
                let status = match self.file.blkdev_range(zero, off, len) {
                    Ok(()) => IoStatus::Success,
                    Err(e) => IoStatus::IoError(e.raw_os_error().unwrap_or(libc::EIO)),
                };
                io.complete(status);
            }
            // Advisory, and not advertised where holes are refused.
            IoType::Unmap if !self.file.can_unmap => io.complete(IoStatus::Success),
            IoType::Unmap => self.push(io, |_| {
                opcode::Fallocate::new(types::Fixed(0), len)
                    .offset(off)
                    .mode(libc::FALLOC_FL_PUNCH_HOLE | keep)
                    .build()
            }),
            IoType::WriteZeroes => match self.file.zeroing {
                Zeroing::ZeroRange | Zeroing::BlkZeroout => self.push(io, |_| {
                    opcode::Fallocate::new(types::Fixed(0), len)
                        .offset(off)
                        .mode(libc::FALLOC_FL_ZERO_RANGE | keep)
                        .build()
                }),
                Zeroing::PunchHole => self.push(io, |_| {
                    opcode::Fallocate::new(types::Fixed(0), len)
                        .offset(off)
                        .mode(libc::FALLOC_FL_PUNCH_HOLE | keep)
                        .build()
                }),
                Zeroing::Write if len == 0 => io.complete(IoStatus::Success),
                Zeroing::Write => self.push(io, |slot| {
                    let mut run = ZeroRun {
                        at: off,
                        end: off + len,
                        piece: 0,
                    };
                    let sqe = run.next();
                    slot.zero = Some(run);
                    sqe
                }),
            },
            IoType::Flush => self.push(io, |_| {
                opcode::Fsync::new(types::Fixed(0))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
            }),
            t @ (IoType::Read | IoType::Write) => {
                let write = t == IoType::Write;
                self.push(io, |slot| {
                    let io = slot.io.as_mut().expect("slot holds its io");
                    if io.bufs.len() == 1 {
                        let b = &mut io.bufs[0];
                        let (p, l) = (b.as_mut_ptr(), b.len() as u32);
                        if write {
                            opcode::Write::new(types::Fixed(0), p, l)
                                .offset(off)
                                .build()
                        } else {
                            opcode::Read::new(types::Fixed(0), p, l).offset(off).build()
                        }
                    } else {
                        slot.iov.clear();
                        for b in io.bufs.iter_mut() {
                            slot.iov.push(libc::iovec {
                                iov_base: b.as_mut_ptr().cast(),
                                iov_len: b.len(),
                            });
                        }
                        let (p, n) = (slot.iov.as_ptr(), slot.iov.len() as u32);
                        if write {
                            opcode::Writev::new(types::Fixed(0), p, n)
                                .offset(off)
                                .build()
                        } else {
                            opcode::Readv::new(types::Fixed(0), p, n)
                                .offset(off)
                                .build()
                        }
                    }
                })
            }
        }
    }

    /// Parks `io` in a slot and queues the SQE that `build` makes from it.
    fn push(&self, io: IoBox, build: impl FnOnce(&mut Slot) -> squeue::Entry) {
        if self.inflight.get() >= 2 * RING_ENTRIES {
            // The layer parks it and retries after a completion.
            io.complete(IoStatus::NoMem);
            return;
        }
        let idx = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(Slot {
                    io: None,
                    iov: Vec::with_capacity(4),
                    zero: None,
                });
                (slots.len() - 1) as u32
            }
        };
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[idx as usize];
        slot.io = Some(io);
        let sqe = build(slot).user_data(idx as u64);
        // SAFETY: every pointer in the SQE (data buffers, iovec array) points
        // into the IoBox or the slot's iovec vector, both held in this slot
        // untouched until the CQE for `idx` is reaped in `poll`, or into the
        // static buffer of zeros.
        if !unsafe { self.queue(&sqe) } {
            let io = slot.io.take();
            slot.zero = None;
            drop(slots);
            self.free.borrow_mut().push(idx);
            if let Some(io) = io {
                io.complete(IoStatus::NoMem);
            }
            return;
        }
        self.inflight.set(self.inflight.get() + 1);
    }

    /// Queues one SQE, submitting what is queued if the ring is full;
    /// false if there is still no room.
    ///
    /// # Safety
    /// Whatever the SQE points at must stay valid until its CQE is reaped.
    unsafe fn queue(&self, sqe: &squeue::Entry) -> bool {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the caller keeps the SQE's memory valid.
        let mut pushed = unsafe { ring.submission().push(sqe).is_ok() };
        if !pushed {
            let _ = ring.submit();
            self.unsubmitted.set(0);
            // SAFETY: as above.
            pushed = unsafe { ring.submission().push(sqe).is_ok() };
        }
        if pushed {
            self.unsubmitted.set(self.unsubmitted.get() + 1);
        }
        pushed
    }

    fn poll(&self) -> PollStatus {
        let mut busy = false;
        let task_work =
            self.coop && self.inflight.get() > 0 && self.ring.borrow_mut().submission().taskrun();
        if self.unsubmitted.get() > 0 || task_work {
            if let Err(e) = self.ring.borrow_mut().submit() {
                // EBUSY/EAGAIN: the kernel is short of resources; try again
                // next turn with the SQEs still queued.
                tracing::debug!("io_uring submit: {e}");
            } else {
                self.unsubmitted.set(0);
            }
            busy = true;
        }
        loop {
            // Reap in batches so no borrow is held while completing.
            let mut done: [(u64, i32); 32] = [(0, 0); 32];
            let mut n = 0;
            {
                let mut ring = self.ring.borrow_mut();
                for cqe in ring.completion() {
                    done[n] = (cqe.user_data(), cqe.result());
                    n += 1;
                    if n == done.len() {
                        break;
                    }
                }
            }
            if n == 0 {
                break;
            }
            busy = true;
            for &(idx, res) in &done[..n] {
                self.finish(idx as usize, res);
            }
        }
        if self.inflight.get() == 0 && !self.resets.borrow().is_empty() {
            for io in self.resets.borrow_mut().drain(..).collect::<Vec<_>>() {
                io.complete(IoStatus::Success);
            }
        }
        PollStatus::from_busy(busy)
    }

    fn finish(&self, idx: usize, res: i32) {
        let (io, zero) = {
            let mut slots = self.slots.borrow_mut();
            let Some(slot) = slots.get_mut(idx) else {
                return;
            };
            if let Some(run) = slot.zero.as_mut() {
                if res >= 0 && res as u64 == run.piece && run.at < run.end {
                    // The next piece of a write of zeros, in the same slot.
                    let sqe = run.next().user_data(idx as u64);
                    drop(slots);
                    // SAFETY: the SQE points into the static buffer of zeros.
                    if unsafe { self.queue(&sqe) } {
                        return;
                    }
                    // No room: the layer retries the whole WRITE_ZEROES.
                    let mut slots = self.slots.borrow_mut();
                    let slot = &mut slots[idx];
                    slot.zero = None;
                    let io = slot.io.take();
                    drop(slots);
                    self.free.borrow_mut().push(idx as u32);
                    self.inflight.set(self.inflight.get() - 1);
                    if let Some(io) = io {
                        io.complete(IoStatus::NoMem);
                    }
                    return;
                }
            }
            (slot.io.take(), slot.zero.take())
        };
        let Some(io) = io else { return };
        self.free.borrow_mut().push(idx as u32);
        self.inflight.set(self.inflight.get() - 1);
        let status = if res < 0 {
            IoStatus::IoError(-res)
        } else if let Some(run) = zero {
            if res as u64 == run.piece {
                IoStatus::Success
            } else {
                IoStatus::IoError(libc::EIO)
            }
        } else if io.io_type().has_data() && res as u64 != io.num_blocks() * self.block_size {
            // A short transfer on a fixed-size file means the file shrank
            // under us or the device failed part of the request.
            IoStatus::IoError(libc::EIO)
        } else {
            IoStatus::Success
        };
        io.complete(status);
    }
}
