//! One job: a bdev driven from one core at a fixed queue depth.
//!
//! Every slot of the queue owns one I/O and its buffer for the whole run;
//! a completion records its latency and resubmits the same I/O, so the
//! steady state allocates nothing and the cost measured is the stack's.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bdev::{IoBox, IoBuf, IoChannel, IoDone, IoStatus, IoType};
use hdrhistogram::Histogram;
use reactor::oneshot;

use crate::workload::{Workload, XorShift};

/// What a job does.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub bdev: String,
    pub core: u32,
    pub workload: Workload,
    pub rwmixread: u32,
    pub queue_depth: u32,
    pub io_size: u64,
    /// First block of this job's share of the bdev.
    pub range_start: u64,
    /// How many I/Os fit in its share.
    pub range_ios: u64,
    pub seed: u64,
    /// Mixed into the offsets' random stream (not the verify pattern), so
    /// that each turn of `--alternate` draws new offsets.
    pub stream: u64,
    /// Write each I/O of the range once, sequentially, then finish.
    pub prefill: bool,
    /// Every this many I/Os, a FLUSH instead (0: never).
    pub flush_every: u64,
}

/// What the controlling thread can see while a job runs.
#[derive(Default, Debug)]
pub struct JobShared {
    pub completed: AtomicU64,
    pub stop: AtomicBool,
}

/// A finished job's numbers.
pub struct JobResult {
    pub spec: JobSpec,
    pub hist: Histogram<u64>,
    /// Latencies of the FLUSHes of `flush_every`.
    pub flush_hist: Histogram<u64>,
    pub completed: u64,
    pub failed: u64,
    pub miscompares: u64,
    pub total_latency_ticks: u64,
    pub runtime_ticks: u64,
}

impl JobResult {
    /// Completions per second over the job's own runtime.
    pub fn iops(&self) -> f64 {
        let t = reactor::ticks_to_ns(self.runtime_ticks) as f64 / 1e9;
        if t > 0.0 {
            self.completed as f64 / t
        } else {
            0.0
        }
    }

    /// Adds a later run of the same job, as if this one had gone on.
    pub(crate) fn fold(&mut self, later: JobResult) {
        let _ = self.hist.add(&later.hist);
        let _ = self.flush_hist.add(&later.flush_hist);
        self.completed += later.completed;
        self.failed += later.failed;
        self.miscompares += later.miscompares;
        self.total_latency_ticks += later.total_latency_ticks;
        self.runtime_ticks += later.runtime_ticks;
    }
}

const NORMAL: u64 = 0;
const VERIFY_WRITE: u64 = 1;
const VERIFY_READ: u64 = 2;
const FLUSH: u64 = 3;

struct Job {
    spec: JobSpec,
    ch: IoChannel,
    io_blocks: u64,
    shared: Arc<JobShared>,
    rng: Cell<XorShift>,
    next_seq: Cell<u64>,
    to_submit: Cell<u64>,
    inflight: Cell<u32>,
    hist: RefCell<Histogram<u64>>,
    flush_hist: RefCell<Histogram<u64>>,
    issued: Cell<u64>,
    completed: Cell<u64>,
    failed: Cell<u64>,
    miscompares: Cell<u64>,
    total_ticks: Cell<u64>,
    started: u64,
    done: RefCell<Option<oneshot::Sender<()>>>,
    me: Weak<Job>,
}

/// Runs a job on the current reactor until its shared stop flag is set (or
/// a prefill has covered its range), then drains and reports.
pub async fn run(spec: JobSpec, shared: Arc<JobShared>) -> Result<JobResult, String> {
    let desc = bdev::open(&spec.bdev, true, None).map_err(|e| e.to_string())?;
    let ch = desc.io_channel().map_err(|e| e.to_string())?;
    let bs = ch.bdev().block_size() as u64;
    if !spec.io_size.is_multiple_of(bs) {
        return Err(format!(
            "I/O size {} is not a multiple of {}'s block size {bs}",
            spec.io_size, spec.bdev
        ));
    }
    if spec.range_ios == 0 {
        return Err(format!("{} is smaller than one I/O", spec.bdev));
    }
    // One tick of latency resolution up to an hour: fixed bounds, so
    // recording never allocates.
    let max = reactor::ticks_hz().saturating_mul(3600).max(2);
    let hist = Histogram::new_with_bounds(1, max, 3).map_err(|e| e.to_string())?;
    let (tx, rx) = oneshot::channel();
    let to_submit = if spec.prefill {
        spec.range_ios
    } else {
        u64::MAX
    };
    let job = Rc::new_cyclic(|me| Job {
        io_blocks: spec.io_size / bs,
        rng: Cell::new(XorShift(
            (spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ spec.core as u64
                ^ spec.stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
                | 1,
        )),
        spec,
        ch,
        shared,
        next_seq: Cell::new(0),
        to_submit: Cell::new(to_submit),
        inflight: Cell::new(0),
        flush_hist: RefCell::new(hist.clone()),
        hist: RefCell::new(hist),
        issued: Cell::new(0),
        completed: Cell::new(0),
        failed: Cell::new(0),
        miscompares: Cell::new(0),
        total_ticks: Cell::new(0),
        started: reactor::ticks(),
        done: RefCell::new(Some(tx)),
        me: me.clone(),
    });
    for _ in 0..job.spec.queue_depth {
        let mut io = IoBox::new();
        io.set_buf(IoBuf::new(job.spec.io_size as usize));
        if !job.issue(io) {
            break;
        }
    }
    if job.inflight.get() == 0 {
        job.finish();
    }
    let _ = rx.await;
    let runtime_ticks = reactor::ticks().wrapping_sub(job.started);
    drop(desc);
    Ok(JobResult {
        spec: job.spec.clone(),
        hist: job
            .hist
            .replace(Histogram::new(1).map_err(|e| e.to_string())?),
        flush_hist: job
            .flush_hist
            .replace(Histogram::new(1).map_err(|e| e.to_string())?),
        completed: job.completed.get(),
        failed: job.failed.get(),
        miscompares: job.miscompares.get(),
        total_latency_ticks: job.total_ticks.get(),
        runtime_ticks,
    })
}

/// The verify pattern: a function of the byte offset and the seed only, so
/// any write of a block writes the same bytes and any read can check them.
fn fill_pattern(buf: &mut [u8], byte_offset: u64, seed: u64) {
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        let mut z = (byte_offset + i as u64 * 8) ^ seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        w.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
}

impl Job {
    fn me(&self) -> Rc<Job> {
        self.me.upgrade().expect("a job outlives its I/O")
    }

    /// Picks the next I/O for `io` and submits it. False when the job has
    /// nothing more to submit.
    fn issue(&self, mut io: IoBox) -> bool {
        if self.shared.stop.load(Relaxed) || self.to_submit.get() == 0 {
            return false;
        }
        self.to_submit.set(self.to_submit.get().saturating_sub(1));
        let n = self.issued.get() + 1;
        self.issued.set(n);
        let fe = self.spec.flush_every;
        if fe > 0 && !self.spec.prefill && n.is_multiple_of(fe) {
            io.prep(IoType::Flush, 0, 0);
            self.inflight.set(self.inflight.get() + 1);
            self.ch.submit(io, self.me(), FLUSH);
            return true;
        }
        let w = self.spec.workload;
        // A prefill writes its range in order whatever the workload.
        let idx = if w.is_random() && !self.spec.prefill {
            let mut r = self.rng.get();
            let v = r.next();
            self.rng.set(r);
            v % self.spec.range_ios
        } else {
            let s = self.next_seq.get();
            self.next_seq.set(if s + 1 >= self.spec.range_ios {
                0
            } else {
                s + 1
            });
            s
        };
        let offset = self.spec.range_start + idx * self.io_blocks;
        let (t, ctx) = if self.spec.prefill {
            (IoType::Write, NORMAL)
        } else {
            match w {
                Workload::Read | Workload::RandRead => (IoType::Read, NORMAL),
                Workload::Write | Workload::RandWrite => (IoType::Write, NORMAL),
                Workload::Rw | Workload::RandRw => {
                    let mut r = self.rng.get();
                    let roll = r.next() % 100;
                    self.rng.set(r);
                    (
                        if roll < self.spec.rwmixread as u64 {
                            IoType::Read
                        } else {
                            IoType::Write
                        },
                        NORMAL,
                    )
                }
                Workload::Verify => (IoType::Write, VERIFY_WRITE),
                Workload::Unmap => (IoType::Unmap, NORMAL),
                Workload::Flush => (IoType::Flush, NORMAL),
                Workload::WriteZeroes => (IoType::WriteZeroes, NORMAL),
            }
        };
        if ctx == VERIFY_WRITE {
            let bs = self.ch.bdev().block_size() as u64;
            fill_pattern(io.bufs[0].as_mut_slice(), offset * bs, self.spec.seed);
        }
        io.prep(t, offset, self.io_blocks);
        self.inflight.set(self.inflight.get() + 1);
        self.ch.submit(io, self.me(), ctx);
        true
    }

    fn finish(&self) {
        if let Some(tx) = self.done.borrow_mut().take() {
            tx.send(());
        }
    }
}

impl IoDone for Job {
    fn io_done(&self, mut io: IoBox, ctx: u64) {
        self.inflight.set(self.inflight.get() - 1);
        let ok = io.status() == IoStatus::Success;
        if ok && ctx == VERIFY_WRITE {
            // Read back what was just written, with the same I/O.
            let (o, n) = (io.offset_blocks(), io.num_blocks());
            io.prep(IoType::Read, o, n);
            io.bufs[0].as_mut_slice().fill(0);
            self.inflight.set(self.inflight.get() + 1);
            self.ch.submit(io, self.me(), VERIFY_READ);
            return;
        }
        if ok && ctx == FLUSH {
            self.flush_hist
                .borrow_mut()
                .saturating_record(io.latency_ticks().max(1));
        } else if ok {
            let lat = io.latency_ticks();
            self.completed.set(self.completed.get() + 1);
            self.total_ticks.set(self.total_ticks.get() + lat);
            self.hist.borrow_mut().saturating_record(lat.max(1));
            self.shared.completed.store(self.completed.get(), Relaxed);
            if ctx == VERIFY_READ {
                let bs = self.ch.bdev().block_size() as u64;
                let mut want = vec![0u8; io.bufs[0].len()];
                fill_pattern(&mut want, io.offset_blocks() * bs, self.spec.seed);
                if io.bufs[0].as_slice() != want.as_slice() {
                    self.miscompares.set(self.miscompares.get() + 1);
                }
            }
        } else {
            self.failed.set(self.failed.get() + 1);
        }
        if !self.issue(io) && self.inflight.get() == 0 {
            self.finish();
        }
    }
}
