//! A namespace bdev's channel on one core. Every namespace of a
//! controller shares one I/O queue pair per core (a queue is the
//! controller's, not a namespace's, and controllers grant few), made on
//! this reactor with the first channel that needs it and closed with the
//! last one. I/O submitted before its Connect completes waits for it. A
//! queue for a failed or detached controller, or one that finds no free
//! QID, is closed from the start: its I/O fails with an I/O error.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::ctrlr::Ctrlr;
use super::qpair::{NsIo, Qpair};
use crate::{IoBox, ModuleChannel};

/// A controller's I/O queue pair on this core.
struct CoreQueue {
    ctrlr: Arc<Ctrlr>,
    qp: Rc<Qpair>,
    qid: Option<u16>,
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
    /// one there failed (a channel made later gets a fresh connection).
    fn get(ctrlr: &Arc<Ctrlr>) -> Rc<CoreQueue> {
        let k = key(ctrlr);
        let cached = QUEUES.with(|q| q.borrow().get(&k).and_then(Weak::upgrade));
        if let Some(q) = cached.filter(|q| !q.qp.is_failed()) {
            return q;
        }
        let usable = !ctrlr.failed.load(Ordering::Relaxed);
        let qid = if usable { ctrlr.take_qid() } else { None };
        if usable && qid.is_none() {
            tracing::warn!(
                "nvme: {}: every I/O queue the controller granted is in use; I/O on this core fails",
                ctrlr.opts.name
            );
        }
        let qp = Qpair::start(ctrlr.io_config(qid.unwrap_or(0)));
        match qid {
            Some(_) => ctrlr.track(&qp.closer()),
            None => qp.close(),
        }
        let q = Rc::new(CoreQueue {
            ctrlr: ctrlr.clone(),
            qp,
            qid,
        });
        QUEUES.with(|m| m.borrow_mut().insert(k, Rc::downgrade(&q)));
        q
    }
}

impl Drop for CoreQueue {
    fn drop(&mut self) {
        self.qp.close();
        if let Some(q) = self.qid {
            self.ctrlr.put_qid(q);
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
        self.queue.qp.submit(io, self.ns);
    }
}
