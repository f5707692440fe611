//! delay: adds latency to another bdev's I/O, after SPDK's delay bdev.
//!
//! Each I/O is passed to the base at once; its completion is held until
//! submit time + the configured latency (the p99 figure for one I/O in a
//! hundred, the average otherwise). Latencies are per direction; writes,
//! unmaps and write-zeroes count as writes, flushes and resets as reads.
//! Held completions wait in four FIFO queues per core (avg/p99 x read/write),
//! each in deadline order because its latency is constant.

pub mod rpc;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reactor::{PollStatus, Poller};
use serde_json::{json, Value};

use crate::modules::base::Base;
use crate::{
    Bdev, BdevError, BdevFnTable, BdevProps, IoBox, IoChannel, IoDone, IoType, ModuleChannel, Uuid,
};

/// Which latency figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyKind {
    AvgRead = 0,
    P99Read = 1,
    AvgWrite = 2,
    P99Write = 3,
}

impl LatencyKind {
    pub fn parse(s: &str) -> Option<LatencyKind> {
        Some(match s {
            "avg_read" => LatencyKind::AvgRead,
            "p99_read" => LatencyKind::P99Read,
            "avg_write" => LatencyKind::AvgWrite,
            "p99_write" => LatencyKind::P99Write,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct DelayOptions {
    pub name: String,
    pub base_bdev_name: String,
    /// Microseconds, in `LatencyKind` order.
    pub latency_us: [u64; 4],
    pub uuid: Option<Uuid>,
}

struct Delay {
    base: Base,
    /// Ticks, in `LatencyKind` order; updated live by RPC.
    latency_ticks: Arc<[AtomicU64; 4]>,
    latency_us: Arc<[AtomicU64; 4]>,
}

fn check_latencies(l: &[u64; 4]) -> Result<(), BdevError> {
    if l[1] < l[0] || l[3] < l[2] {
        return Err(BdevError::Invalid(
            "p99 latency must be at least the average".into(),
        ));
    }
    Ok(())
}

pub fn create(opts: DelayOptions) -> Result<Arc<Bdev>, BdevError> {
    check_latencies(&opts.latency_us)?;
    if crate::lookup(&opts.name).is_some() {
        return Err(BdevError::Exists(opts.name.clone()));
    }
    let (claimed, base) = Base::claim(&opts.base_bdev_name, "delay")?;
    let mut props = BdevProps::new(&opts.name, "delay", base.block_size(), base.num_blocks());
    props.uuid = opts.uuid;
    props.write_unit_size = base.write_unit_size();
    props.optimal_io_boundary = base.optimal_io_boundary();
    let us = opts.latency_us.map(AtomicU64::new);
    let ticks = opts
        .latency_us
        .map(|u| AtomicU64::new(reactor::duration_to_ticks(Duration::from_micros(u))));
    let module = Delay {
        base: claimed,
        latency_ticks: Arc::new(ticks),
        latency_us: Arc::new(us),
    };
    let bdev = Bdev::new(props, module)?;
    crate::register(bdev.clone())?;
    Ok(bdev)
}

/// Changes one latency of delay bdev `name` (`bdev_delay_update_latency`).
pub fn update_latency(name: &str, kind: LatencyKind, us: u64) -> Result<(), BdevError> {
    let bdev = crate::lookup(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    let d = (bdev.module() as &dyn std::any::Any)
        .downcast_ref::<Delay>()
        .ok_or_else(|| BdevError::Invalid(format!("{name} is not a delay bdev")))?;
    let mut l: [u64; 4] = std::array::from_fn(|i| d.latency_us[i].load(Ordering::Relaxed));
    l[kind as usize] = us;
    check_latencies(&l)?;
    d.latency_us[kind as usize].store(us, Ordering::Relaxed);
    d.latency_ticks[kind as usize].store(
        reactor::duration_to_ticks(Duration::from_micros(us)),
        Ordering::Relaxed,
    );
    Ok(())
}

impl BdevFnTable for Delay {
    fn module_name(&self) -> &'static str {
        "delay"
    }

    fn io_type_supported(&self, t: IoType) -> bool {
        self.base.supports(t)
    }

    fn create_channel(&self, _bdev: &Arc<Bdev>) -> Result<Box<dyn ModuleChannel>, BdevError> {
        Ok(Box::new(DelayChannel::new(
            self.base.channel()?,
            self.latency_ticks.clone(),
        )))
    }

    fn backing(&self, _bdev: &Bdev) -> Option<String> {
        Some(self.base.describe())
    }

    fn driver_specific(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        Some(("delay", json!({ "base_bdev_name": self.base.name() })))
    }

    fn config_entry(&self, bdev: &Bdev) -> Option<Value> {
        let l = |k: LatencyKind| self.latency_us[k as usize].load(Ordering::Relaxed);
        Some(json!({
            "method": "bdev_delay_create",
            "params": {
                "name": bdev.name(),
                "base_bdev_name": self.base.name(),
                "avg_read_latency": l(LatencyKind::AvgRead),
                "p99_read_latency": l(LatencyKind::P99Read),
                "avg_write_latency": l(LatencyKind::AvgWrite),
                "p99_write_latency": l(LatencyKind::P99Write),
                "uuid": bdev.uuid().to_string(),
            }
        }))
    }

    fn unregistered(&self, _bdev: &Bdev) {
        self.base.release();
    }
}

struct DelayChannel {
    inner: Rc<Inner>,
    _poller: Poller,
}

struct Inner {
    base: IoChannel,
    latency: Arc<[AtomicU64; 4]>,
    queues: [RefCell<VecDeque<IoBox>>; 4],
    held: Cell<usize>,
    count: Cell<u64>,
    me: Weak<Inner>,
}

impl DelayChannel {
    fn new(base: IoChannel, latency: Arc<[AtomicU64; 4]>) -> DelayChannel {
        let inner = Rc::new_cyclic(|me| Inner {
            base,
            latency,
            queues: Default::default(),
            held: Cell::new(0),
            count: Cell::new(0),
            me: me.clone(),
        });
        let i = inner.clone();
        let poller = reactor::register_poller(move || i.poll());
        DelayChannel {
            inner,
            _poller: poller,
        }
    }
}

impl ModuleChannel for DelayChannel {
    fn submit(&self, io: IoBox) {
        let me: Rc<dyn IoDone> = self
            .inner
            .me
            .upgrade()
            .expect("channel alive while submitting");
        let start = reactor::ticks();
        self.inner.base.submit(io, me, start);
    }
}

impl IoDone for Inner {
    fn io_done(&self, mut io: IoBox, start: u64) {
        // One I/O in a hundred gets the p99 figure.
        let n = self.count.get() + 1;
        self.count.set(n);
        let p99 = n.is_multiple_of(100);
        let write = matches!(
            io.io_type(),
            IoType::Write | IoType::Unmap | IoType::WriteZeroes
        );
        let q = match (write, p99) {
            (false, false) => LatencyKind::AvgRead,
            (false, true) => LatencyKind::P99Read,
            (true, false) => LatencyKind::AvgWrite,
            (true, true) => LatencyKind::P99Write,
        } as usize;
        io.scratch[0] = start.wrapping_add(self.latency[q].load(Ordering::Relaxed));
        self.queues[q].borrow_mut().push_back(io);
        self.held.set(self.held.get() + 1);
    }
}

impl Inner {
    fn poll(&self) -> PollStatus {
        if self.held.get() == 0 {
            return PollStatus::Idle;
        }
        let now = reactor::ticks();
        for q in &self.queues {
            loop {
                let due = q.borrow().front().is_some_and(|io| io.scratch[0] <= now);
                if !due {
                    break;
                }
                let Some(io) = q.borrow_mut().pop_front() else {
                    break;
                };
                self.held.set(self.held.get() - 1);
                let status = io.status();
                io.complete(status);
            }
        }
        // Held completions are waiting on time alone: stay awake for them.
        PollStatus::Busy
    }
}

#[cfg(test)]
mod tests;
