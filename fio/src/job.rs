//! One fio job thread's half of the engine: the core it drives, its bdev
//! channels, the I/Os fio queued and not yet committed, and its
//! completions.
//!
//! Everything here runs on the job's own thread: `queue` stages an I/O,
//! `commit` submits the staged ones inside the core (one entry for the
//! batch), and `getevents` turns the core until enough have completed.
//! Completions run inside those turns, on this thread, and land in the
//! ring fio reaps.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bdev::{Descriptor, IoBox, IoBuf, IoChannel, IoDone, IoStatus, IoType, BUF_ALIGN};
use reactor::DrivenReactor;

use crate::ring::Ring;
use crate::sys;

/// Why a job cannot start or open a file.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Reactor(#[from] reactor::ReactorError),
    #[error("bdev {0}: {1}")]
    Open(String, bdev::BdevError),
}

struct OpenBdev {
    name: String,
    ch: IoChannel,
    /// Keeps the bdev open for the channel (dropped after it).
    _desc: Descriptor,
    block_size: u64,
    has_flush: bool,
}

/// Where completions go: one per job, shared by its in-flight I/Os.
struct Completions {
    ring: RefCell<Ring<*mut sys::io_u>>,
    inflight: Cell<usize>,
}

pub struct Job {
    reactor: DrivenReactor,
    files: Vec<OpenBdev>,
    /// Queued by fio, submitted at the next commit.
    staged: Vec<(usize, IoBox, *mut sys::io_u)>,
    done: Rc<Completions>,
    bounce: bool,
}

/// The fio errno of a finished I/O.
fn errno_of(status: IoStatus) -> u32 {
    match status {
        IoStatus::Success => 0,
        s => match -s.errno() {
            e if e > 0 => e as u32,
            _ => libc::EIO as u32,
        },
    }
}

impl IoDone for Completions {
    fn io_done(&self, mut io: IoBox, ctx: u64) {
        let u = ctx as *mut sys::io_u;
        // SAFETY: ctx is the io_u this I/O was queued for; fio keeps it
        // alive and does not touch it while it is in flight (until it is
        // reaped from the ring).
        let u = unsafe { &mut *u };
        u.error = errno_of(io.status());
        if u.error == 0 && io.io_type() == IoType::Read {
            if let Some(b) = io.bufs.first().filter(|b| !b.is_borrowed()) {
                // A bounce buffer: fio's buffer gets the data.
                let n = (u.xfer_buflen as usize).min(b.len());
                // SAFETY: xfer_buf holds xfer_buflen bytes that fio lent
                // for this I/O; the bounce buffer is a distinct allocation.
                unsafe {
                    std::ptr::copy_nonoverlapping(b.as_ptr(), u.xfer_buf as *mut u8, n);
                }
            }
        }
        // fio's buffer is fio's again once the I/O lets go of it.
        io.bufs.clear();
        drop(io);
        self.inflight.set(self.inflight.get() - 1);
        self.ring.borrow_mut().push(u);
    }
}

impl Job {
    /// Attaches `core` to the calling thread for a job of queue depth
    /// `depth`.
    pub fn new(
        set: &reactor::DrivenSet,
        core: u32,
        depth: usize,
        bounce: bool,
    ) -> Result<Job, JobError> {
        let reactor = set.attach(core)?;
        Ok(Job {
            reactor,
            files: Vec::new(),
            staged: Vec::with_capacity(depth),
            done: Rc::new(Completions {
                ring: RefCell::new(Ring::with_capacity(depth)),
                inflight: Cell::new(0),
            }),
            bounce,
        })
    }

    /// Opens bdev `name` on this job's core (once: a reopen finds it);
    /// returns its index for `queue`.
    pub fn open(&mut self, name: &str) -> Result<usize, JobError> {
        if let Some(i) = self.files.iter().position(|f| f.name == name) {
            return Ok(i);
        }
        let opened = self.reactor.enter(reactor::ticks(), || {
            let desc = bdev::open(name, true, None)?;
            let ch = desc.io_channel()?;
            Ok::<_, bdev::BdevError>((desc, ch))
        })?;
        let (desc, ch) = opened.map_err(|e| JobError::Open(name.to_string(), e))?;
        let b = ch.bdev().clone();
        self.files.push(OpenBdev {
            name: name.to_string(),
            block_size: b.block_size() as u64,
            has_flush: ch.has_flush(),
            ch,
            _desc: desc,
        });
        Ok(self.files.len() - 1)
    }

    /// Stages `u` on file `file`. Returns None when it is staged (fio's
    /// QUEUED), or the errno it finished with at once (fio's COMPLETED;
    /// 0 for a FLUSH of a bdev with nothing volatile).
    ///
    /// # Safety
    ///
    /// `u` is a live io_u that fio hands over until it is reaped (or
    /// until this returns Some): its buffer holds `xfer_buflen` bytes.
    pub unsafe fn queue(&mut self, file: usize, u: *mut sys::io_u) -> Option<u32> {
        // SAFETY: per the contract.
        let io_u = unsafe { &mut *u };
        let Some(f) = self.files.get(file) else {
            return Some(libc::EBADF as u32);
        };
        let t = match io_u.ddir {
            sys::DDIR_READ => IoType::Read,
            sys::DDIR_WRITE => IoType::Write,
            sys::DDIR_TRIM => IoType::Unmap,
            sys::DDIR_SYNC | sys::DDIR_DATASYNC | sys::DDIR_SYNC_FILE_RANGE => IoType::Flush,
            _ => return Some(libc::EINVAL as u32),
        };
        let mut io = IoBox::new();
        if t == IoType::Flush {
            if !f.has_flush {
                // Nothing volatile to make durable (a null bdev): done.
                return Some(0);
            }
            io.prep(IoType::Flush, 0, 0);
        } else {
            let (off, len, bs) = (io_u.offset, io_u.xfer_buflen, f.block_size);
            if len == 0 || !off.is_multiple_of(bs) || !len.is_multiple_of(bs) {
                return Some(libc::EINVAL as u32);
            }
            io.prep(t, off / bs, len / bs);
            if t.has_data() {
                let Some(buf) = self.buffer(t, io_u) else {
                    return Some(libc::EINVAL as u32);
                };
                io.set_buf(buf);
            }
        }
        self.staged.push((file, io, u));
        None
    }

    /// fio's buffer itself when it is aligned for any base bdev, else a
    /// bounce buffer (holding the data to write).
    fn buffer(&self, t: IoType, io_u: &sys::io_u) -> Option<IoBuf> {
        let len = io_u.xfer_buflen as usize;
        let ptr = NonNull::new(io_u.xfer_buf as *mut u8)?;
        if !self.bounce && (ptr.as_ptr() as usize).is_multiple_of(BUF_ALIGN) {
            // SAFETY: fio lends xfer_buf (xfer_buflen bytes) to the engine
            // until the io_u is reaped, and the buffer is dropped at the
            // completion, before that (see io_done).
            return Some(unsafe { IoBuf::borrowed(ptr, len) });
        }
        let mut b = IoBuf::new(len);
        if t == IoType::Write {
            // SAFETY: as above, len readable bytes.
            let src = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len) };
            b.as_mut_slice().copy_from_slice(src);
        }
        Some(b)
    }

    /// Submits what is staged, in the order fio queued it.
    pub fn commit(&mut self) -> Result<(), JobError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let (staged, files, done) = (&mut self.staged, &self.files, &self.done);
        self.reactor.enter(reactor::ticks(), || {
            for (file, io, u) in staged.drain(..) {
                done.inflight.set(done.inflight.get() + 1);
                files[file]
                    .ch
                    .submit(io, done.clone() as Rc<dyn IoDone>, u as u64);
            }
        })?;
        Ok(())
    }

    /// Submits what is staged and turns the core until at least `min`
    /// completions wait (or `timeout` passes); then makes up to `max` of
    /// them the batch `event` reads. Returns the batch's size.
    ///
    /// Completions that already wait are handed over without a turn.
    /// fio reaps one at a time by default (iodepth_batch_complete_max is
    /// the min, 1), and a turn per reap would complete only the I/O
    /// committed just before it: one turn, and on a RAM disk one fence
    /// on its streaming copy, per I/O. Turning only once the ring is
    /// empty completes a whole queue depth per turn. What is in flight
    /// meanwhile waits at most that many reaps to be polled.
    pub fn getevents(
        &mut self,
        min: usize,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, JobError> {
        self.commit()?;
        if self.done.ring.borrow().ready() >= min.max(1) {
            return Ok(self.done.ring.borrow_mut().reap(max));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let turn = self.reactor.turn(reactor::ticks())?;
            if self.done.ring.borrow().ready() >= min || self.done.inflight.get() == 0 {
                // Enough, or all there will be: nothing else is in flight.
                break;
            }
            if !turn.busy && deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        Ok(self.done.ring.borrow_mut().reap(max))
    }

    /// The `i`-th io_u of the last `getevents` batch.
    pub fn event(&self, i: usize) -> Option<*mut sys::io_u> {
        self.done.ring.borrow().event(i)
    }

    /// I/Os submitted and not completed.
    pub fn inflight(&self) -> usize {
        self.done.inflight.get()
    }

    /// Waits (up to `limit`) for what is in flight, then closes the
    /// channels on the core and stops it. Returns how many I/Os were
    /// still in flight at the end.
    pub fn close(mut self, limit: Duration) -> usize {
        let end = Instant::now() + limit;
        let _ = self.commit();
        while self.inflight() > 0 && Instant::now() < end {
            if self.reactor.turn(reactor::ticks()).is_err() {
                break;
            }
        }
        let left = self.inflight();
        let files = std::mem::take(&mut self.files);
        let staged = std::mem::take(&mut self.staged);
        // Channels and I/Os belong to the core: dropped as the core.
        let _ = self.reactor.enter(reactor::ticks(), move || {
            drop(staged);
            drop(files);
        });
        left
    }
}

#[cfg(test)]
mod tests;
