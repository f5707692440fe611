//! A namespace bdev's channel on one core: its own I/O queue pair on this
//! reactor, connected as the channel is made (I/O submitted meanwhile
//! waits for the Connect). A channel of a failed or detached controller,
//! or one that finds no free QID, is a queue pair closed from the start:
//! its I/O fails with an I/O error.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::ctrlr::Ctrlr;
use super::qpair::{NsIo, Qpair};
use crate::{IoBox, ModuleChannel};

pub(crate) struct NvmeChannel {
    ctrlr: Arc<Ctrlr>,
    ns: NsIo,
    qp: Rc<Qpair>,
    qid: Option<u16>,
}

impl NvmeChannel {
    pub fn new(ctrlr: Arc<Ctrlr>, ns: NsIo) -> NvmeChannel {
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
        NvmeChannel { ctrlr, ns, qp, qid }
    }
}

impl ModuleChannel for NvmeChannel {
    fn submit(&self, io: IoBox) {
        self.qp.submit(io, self.ns);
    }
}

impl Drop for NvmeChannel {
    fn drop(&mut self) {
        self.qp.close();
        if let Some(q) = self.qid {
            self.ctrlr.put_qid(q);
        }
    }
}
