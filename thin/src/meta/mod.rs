//! The metadata core: the one reactor that owns a pool's metadata.
//!
//! Only this core touches the B-trees and space maps. It serves what the
//! fast path cannot (`io`: provisioning, copy-on-write, discard, write
//! zeroes, flushes that need a commit), runs commits (`commit`), handles
//! failures and space (`modes`) and control operations (`control`). Work
//! arrives as messages; each request runs as a task on this core, so many
//! provisions and copies are in flight at once while their data I/O runs.
//!
//! Two rules keep it correct:
//! - The pool is changed only by synchronous calls between awaits, and
//!   never while a commit is between its data flush and the end of its
//!   metadata writes (`unlocked`), so a commit holds exactly the mappings
//!   whose data its flush covered.
//! - A block being changed is held in a cell (dm-thin's bio prison): its
//!   table entry is busy, so I/O to it comes here and waits.

mod autoextend;
mod commit;
mod control;
mod io;
mod live_options;
mod modes;
mod open;
mod shrink;
mod sidecar;
mod suspend;

use metadata::thin::DevId;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use metadata::thin::pool::Pool;
use reactor::{oneshot, Poller};

use super::image::SharedImage;
use super::shared::{PoolShared, VolumeShared};
use super::sync::{AsyncLock, Notify};
use bdev::{IoChannel, IoStatus};

use crate::slow_path::{Reply, SlowReq};
pub use control::DeviceInfo;
pub(crate) use io::{confirm, dispatch};
pub(crate) use open::{open, OpenArgs};
pub use sidecar::SIDECAR_DEV;

/// Something waiting for a held block.
enum CellWaiter {
    /// An I/O: told to retry when the cell is released.
    Io(SlowReq),
    /// A task of this core (a discard holding a range).
    Task(oneshot::Sender<()>),
}

pub(crate) struct MetaCore {
    pub shared: Arc<PoolShared>,
    pool: RefCell<Option<Pool>>,
    image: SharedImage,
    meta_ch: IoChannel,
    data_ch: IoChannel,
    /// Serializes commits (and the control operations that commit).
    commit_lock: AsyncLock,
    /// A commit is between its data flush and its last metadata write.
    playing: Cell<bool>,
    play_done: Notify,
    /// Held blocks: (device, virtual block) -> who waits.
    cells: RefCell<HashMap<(u32, u64), Vec<CellWaiter>>>,
    /// Active volumes. Ordered maps here and in `released`: what is done
    /// for each in turn (drains, rebuilds) happens in one order every run,
    /// which a simulated run needs to replay.
    pub volumes: RefCell<BTreeMap<u32, Arc<VolumeShared>>>,
    /// Volumes that dropped a data block reference this transaction: the
    /// commit waits for their in-flight I/O first, since the blocks become
    /// reusable after it.
    released: RefCell<BTreeSet<u32>>,
    flush_waiters: RefCell<Vec<oneshot::Sender<Result<(), IoStatus>>>>,
    commit_running: Cell<bool>,
    /// Something changed since the last commit.
    dirty: Cell<bool>,
    /// Writes waiting for data space.
    space: Notify,
    no_space_timer: RefCell<Option<Poller>>,
    /// Writes waiting for a frozen volume (a snapshot in progress).
    thaw: Notify,
    /// Whole-block writes the I/O cores are doing: token -> the waiting task.
    confirms: RefCell<HashMap<(u64, u64), oneshot::Sender<IoStatus>>>,
    passdowns: Cell<u32>,
    passdowns_done: Notify,
    low_water_latched: Cell<bool>,
    meta_low_latched: Cell<bool>,
    drain_lock: AsyncLock,
    /// Device ids picked by control calls still running: a second call
    /// cannot pick or name them until the first one ends.
    reserved_ids: RefCell<std::collections::BTreeSet<u32>>,
    /// Serializes pool resizes, so one asked for by RPC answers after one
    /// started by a bdev resize event has landed.
    pub(crate) resize_lock: AsyncLock,
    period: RefCell<Option<Poller>>,
    closed: Cell<bool>,
    /// A transaction id move (from, to) that the next control change
    /// commits along with itself: a side table written for transaction
    /// `to` becomes current in the same commit (`crate::sidecar`).
    pub(crate) staged_tid: Cell<Option<(u64, u64)>>,
}

thread_local! {
    /// The pools whose metadata core this is, by `PoolShared` address.
    static CORES: RefCell<HashMap<usize, Rc<MetaCore>>> = RefCell::new(HashMap::new());
}

pub(crate) fn key(shared: &Arc<PoolShared>) -> usize {
    Arc::as_ptr(shared) as usize
}

/// This core's metadata state of the pool `key`.
pub(crate) fn lookup(key: usize) -> Option<Rc<MetaCore>> {
    CORES.with(|c| c.borrow().get(&key).cloned())
}

fn install(core: Rc<MetaCore>) {
    CORES.with(|c| c.borrow_mut().insert(key(&core.shared), core));
}

fn uninstall(key: usize) {
    CORES.with(|c| c.borrow_mut().remove(&key));
}

impl MetaCore {
    /// Waits while a commit writes metadata; after it returns, the pool may
    /// be changed until the next await.
    async fn unlocked(&self) {
        while self.playing.get() {
            self.play_done.wait().await;
        }
    }

    /// Runs `f` on the pool (None in fail mode, when it is gone).
    fn with_pool<T>(&self, f: impl FnOnce(&mut Pool) -> T) -> Option<T> {
        let mut pool = self.pool.borrow_mut();
        pool.as_mut().map(f)
    }

    pub(crate) fn volume(&self, dev: DevId) -> Option<Arc<VolumeShared>> {
        self.volumes.borrow().get(&dev).cloned()
    }

    fn mark_changed(&self, vol: &VolumeShared) {
        vol.changed
            .store(true, std::sync::atomic::Ordering::Release);
        self.dirty.set(true);
    }

    /// Holds the cell of `(dev, vblock)`, waiting for its holder first.
    async fn hold(&self, vol: &VolumeShared, vblock: u64) {
        loop {
            let rx = {
                let mut cells = self.cells.borrow_mut();
                match cells.get_mut(&(vol.dev_id, vblock)) {
                    None => {
                        cells.insert((vol.dev_id, vblock), Vec::new());
                        vol.table.update(vblock, |entry| entry | super::table::BUSY);
                        return;
                    }
                    Some(waiters) => {
                        let (tx, rx) = oneshot::channel();
                        waiters.push(CellWaiter::Task(tx));
                        rx
                    }
                }
            };
            let _ = rx.await;
        }
    }

    /// Holds the cell if it is free; otherwise queues `req` behind it and
    /// returns None.
    fn try_hold(&self, req: SlowReq, vblock: u64) -> Option<SlowReq> {
        let mut cells = self.cells.borrow_mut();
        match cells.get_mut(&(req.vol.dev_id, vblock)) {
            None => {
                cells.insert((req.vol.dev_id, vblock), Vec::new());
                req.vol
                    .table
                    .update(vblock, |entry| entry | super::table::BUSY);
                Some(req)
            }
            Some(waiters) => {
                waiters.push(CellWaiter::Io(req));
                None
            }
        }
    }

    /// Releases a cell: the entry is no longer busy, waiting I/O retries and
    /// waiting tasks try again.
    fn release(&self, vol: &VolumeShared, vblock: u64) {
        vol.table
            .update(vblock, |entry| entry & !super::table::BUSY);
        let waiters = self.cells.borrow_mut().remove(&(vol.dev_id, vblock));
        for waiter in waiters.into_iter().flatten() {
            match waiter {
                CellWaiter::Io(req) => req.reply(Reply::Retry),
                CellWaiter::Task(tx) => tx.send(()),
            }
        }
    }
}
