//! A namespace bdev's channel on one core. Every namespace of a
//! controller shares one I/O queue pair per core (a queue is the
//! controller's, not a namespace's, and controllers grant few), made on
//! this reactor with the first channel that needs it and closed with the
//! last one. I/O submitted before its Connect completes waits for it.
//!
//! Without reconnect (ctrlr_loss_timeout_sec 0, the default) a lost
//! queue fails its I/O, and so does a queue of a failed or detached
//! controller, or one that finds no free QID.
//!
//! With reconnect, the core's queue is a link to the controller's
//! current association. A lost link hands its unfinished I/O back here;
//! that I/O, and I/O submitted while the controller is reconnecting, is
//! held in this core's queue (never failed, never sent twice at once)
//! and sent again on a new link once the controller is back. A small
//! task per core looks at the controller every `HOLD_POLL` while I/O is
//! held: back (new association) → resubmit; fast-failed, failed or
//! deleted → fail what is held, once.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::ctrlr::{Ctrlr, State};
use super::qpair::{NsIo, Qpair};
use crate::{IoBox, IoStatus, ModuleChannel};

/// How often held I/O looks at its controller.
const HOLD_POLL: Duration = Duration::from_millis(10);

/// One I/O queue pair of one association (`gen`) of the controller.
struct Link {
    ctrlr: Arc<Ctrlr>,
    qp: Rc<Qpair>,
    qid: Option<u16>,
    gen: u64,
}

impl Drop for Link {
    fn drop(&mut self) {
        // A reset, not a close: I/O still on it (a stale link replaced
        // after a reconnect) comes back to be sent on the new one.
        self.qp.closer().reset();
        if let Some(q) = self.qid {
            self.ctrlr.put_qid(q, self.gen);
        }
    }
}

/// A controller's I/O queue on this core.
struct CoreQueue {
    ctrlr: Arc<Ctrlr>,
    link: RefCell<Option<Link>>,
    held: RefCell<VecDeque<(IoBox, NsIo)>>,
    holding: Cell<bool>,
    me: Weak<CoreQueue>,
}

thread_local! {
    /// This core's queue per controller (keyed by the controller's
    /// address, which cannot be reused while a queue holds it).
    static QUEUES: RefCell<HashMap<usize, Weak<CoreQueue>>> = RefCell::new(HashMap::new());
}

fn key(c: &Arc<Ctrlr>) -> usize {
    Arc::as_ptr(c) as usize
}

impl CoreQueue {
    /// This core's queue for `ctrlr`, made if there is none, or if the
    /// one there failed without reconnect (a channel made later gets a
    /// fresh connection).
    fn get(ctrlr: &Arc<Ctrlr>) -> Rc<CoreQueue> {
        let k = key(ctrlr);
        let cached = QUEUES.with(|q| q.borrow().get(&k).and_then(Weak::upgrade));
        if let Some(q) = cached.filter(|q| ctrlr.reconnects() || !q.link_failed()) {
            return q;
        }
        let q = Rc::new_cyclic(|me| CoreQueue {
            ctrlr: ctrlr.clone(),
            link: RefCell::new(None),
            held: RefCell::new(VecDeque::new()),
            holding: Cell::new(false),
            me: me.clone(),
        });
        if !ctrlr.reconnects() {
            // Connected now, as before reconnect existed: a channel's
            // queue is made with it.
            q.connect();
        }
        QUEUES.with(|m| m.borrow_mut().insert(k, Rc::downgrade(&q)));
        q
    }

    fn link_failed(&self) -> bool {
        self.link.borrow().as_ref().is_none_or(|l| l.qp.is_failed())
    }

    /// A new link for the controller's current association (closed from
    /// the start for a failed controller or without a free QID: its I/O
    /// fails).
    fn connect(&self) {
        let c = &self.ctrlr;
        let usable = !c.failed.load(Ordering::Relaxed);
        let gen = c.generation();
        let taken = if usable { c.take_qid() } else { None };
        if usable && taken.is_none() {
            tracing::warn!(
                "nvme: {}: every I/O queue the controller granted is in use; I/O on this core fails",
                c.opts.name
            );
        }
        let mut cfg = c.io_config(taken.map_or(0, |(q, _)| q));
        if taken.is_none() {
            cfg.requeue = false;
        }
        let qp = Qpair::start(cfg);
        if c.reconnects() {
            let me = self.me.clone();
            qp.on_lost(Box::new(move |orphans, lost| match me.upgrade() {
                Some(q) => {
                    if lost {
                        q.ctrlr.report_loss(gen);
                    }
                    for (io, ns) in orphans {
                        q.hold(io, ns);
                    }
                }
                None => {
                    for (io, _) in orphans {
                        io.complete(IoStatus::IoError(libc::EIO));
                    }
                }
            }));
        }
        match taken {
            Some(_) => c.track(&qp.closer()),
            None => qp.close(),
        }
        *self.link.borrow_mut() = Some(Link {
            ctrlr: c.clone(),
            qp,
            qid: taken.map(|(q, _)| q),
            gen: taken.map_or(gen, |(_, g)| g),
        });
    }

    fn submit(&self, io: IoBox, ns: NsIo) {
        let c = &self.ctrlr;
        if !c.reconnects() {
            // After bdev_nvme_reset_controller: a new association, so a
            // new link (without reconnect, that is the only way the
            // association changes).
            let stale = self
                .link
                .borrow()
                .as_ref()
                .is_some_and(|l| l.gen != c.generation() && l.qp.is_failed());
            if stale && !c.failed.load(Ordering::Relaxed) && c.state() == State::Enabled {
                let old = self.link.borrow_mut().take();
                drop(old);
                self.connect();
            }
            let qp = self.link.borrow().as_ref().map(|l| l.qp.clone());
            match qp {
                Some(qp) => qp.submit(io, ns),
                None => io.complete(IoStatus::IoError(libc::EIO)),
            }
            return;
        }
        if c.failed.load(Ordering::Relaxed) || c.fast_failed() {
            io.complete(IoStatus::IoError(libc::EIO));
            return;
        }
        if c.state() != State::Enabled {
            return self.hold(io, ns);
        }
        let gen = c.generation();
        let current = self
            .link
            .borrow()
            .as_ref()
            .filter(|l| l.gen == gen)
            .map(|l| l.qp.clone());
        match current {
            Some(qp) if !qp.is_failed() => qp.submit(io, ns),
            Some(_) => {
                // This core's queue died and the controller does not
                // know yet (its lost callback tells it too).
                c.report_loss(gen);
                self.hold(io, ns);
            }
            None => {
                // First I/O here, or the first since a reconnect: the
                // stale link (if any) goes, its I/O comes back held.
                let stale = self.link.borrow_mut().take();
                drop(stale);
                self.connect();
                let qp = self.link.borrow().as_ref().map(|l| l.qp.clone());
                match qp {
                    Some(qp) if !qp.is_failed() => qp.submit(io, ns),
                    _ => io.complete(IoStatus::IoError(libc::EIO)),
                }
            }
        }
    }

    /// Keeps `io` until the controller is back or given up.
    fn hold(&self, io: IoBox, ns: NsIo) {
        self.held.borrow_mut().push_back((io, ns));
        if !self.holding.replace(true) {
            reactor::spawn_local(release(self.me.clone())).detach();
        }
    }
}

/// While I/O is held: resubmits it once the controller is back, fails it
/// once the controller gives up (fast_io_fail_timeout_sec, deletion,
/// detach, shutdown).
async fn release(me: Weak<CoreQueue>) {
    loop {
        reactor::sleep(HOLD_POLL).await;
        let Some(q) = me.upgrade() else { return };
        let c = &q.ctrlr;
        let give_up = c.failed.load(Ordering::Relaxed) || c.fast_failed();
        if give_up || c.state() == State::Enabled {
            let held = std::mem::take(&mut *q.held.borrow_mut());
            for (io, ns) in held {
                if give_up {
                    io.complete(IoStatus::IoError(libc::EIO));
                } else {
                    // Held again if the controller went away meanwhile.
                    q.submit(io, ns);
                }
            }
        }
        if q.held.borrow().is_empty() {
            q.holding.set(false);
            return;
        }
    }
}

impl Drop for CoreQueue {
    fn drop(&mut self) {
        // No channel is left: nothing can be held, but if it were, it
        // fails here, once.
        for (io, _) in self.held.get_mut().drain(..) {
            io.complete(IoStatus::IoError(libc::EIO));
        }
        if let Some(l) = self.link.get_mut().take() {
            l.qp.close();
        }
        let k = key(&self.ctrlr);
        // At thread exit the map may be gone already: nothing to tidy.
        let _ = QUEUES.try_with(|m| {
            let mut m = m.borrow_mut();
            if m.get(&k).is_some_and(|w| w.strong_count() == 0) {
                m.remove(&k);
            }
        });
    }
}

pub(crate) struct NvmeChannel {
    ns: NsIo,
    queue: Rc<CoreQueue>,
}

impl NvmeChannel {
    pub fn new(ctrlr: &Arc<Ctrlr>, ns: NsIo) -> NvmeChannel {
        NvmeChannel {
            ns,
            queue: CoreQueue::get(ctrlr),
        }
    }
}

impl ModuleChannel for NvmeChannel {
    fn submit(&self, io: IoBox) {
        self.queue.submit(io, self.ns);
    }
}
