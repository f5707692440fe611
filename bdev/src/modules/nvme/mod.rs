//! nvme: the host side of NVMe over TCP, as SPDK's bdev_nvme attaches a
//! remote controller: one bdev per active namespace, named
//! `<controller>n<nsid>`.
//!
//! - `connect`: a TCP connect that does not block the reactor.
//! - `qpair`: one queue pair (a connection driven by one task): ICReq,
//!   Fabrics Connect, commands by CID, in-capsule or R2T writes, C2H
//!   reads, digests; any protocol error ends the connection, and every
//!   I/O on it leaves once: failed, or (with reconnect) handed back to
//!   be sent again.
//! - [`ctrlr`]: attach (admin queue, enable, Identify, Number of Queues,
//!   namespaces), detach, reset, deletion after a loss.
//! - `supervise`: one task per controller: Keep Alive at half the KATO,
//!   and what a lost connection does, per SPDK's knobs: nothing more
//!   than failing (ctrlr_loss_timeout_sec 0, the default), or reconnect
//!   every reconnect_delay_sec with I/O held, failed after
//!   fast_io_fail_timeout_sec, the controller deleted after
//!   ctrlr_loss_timeout_sec. docs/architecture.md has the whole story.
//! - `aer`: Asynchronous Event Requests; a namespace-attribute notice
//!   resizes, adds or hot-removes namespace bdevs.
//! - `channel`: a bdev's per-core channel, on the I/O queue pair its
//!   controller has on that core (shared by namespaces); with reconnect,
//!   the core's held I/O and its release.
//! - `cmd`, [`identify`]: the commands sent and the structures read.
//! - `io_table`: the bdev I/Os a queue pair serves, split into commands
//!   (both transports).
//! - [`options`]: the defaults bdev_nvme_set_options changes.
//! - [`rpc`]: bdev_nvme_attach_controller, _detach_controller,
//!   _get_controllers, _reset_controller, _set_options (trtype "pcie"
//!   goes to [`pcie`]).
//! - [`pcie`]: the PCIe transport: a userspace, polled driver over VFIO
//!   (docs/nvme-pcie.md).
//!
//! Not yet: multipath.

mod aer;
mod channel;
mod cmd;
mod connect;
pub mod ctrlr;
pub mod identify;
mod io_table;
pub mod options;
pub mod pcie;
mod qpair;
pub mod rpc;
mod supervise;

#[cfg(test)]
mod fake_target;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod reconnect_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde_json::{json, Value};

use crate::{Bdev, BdevError, BdevFnTable, IoType, ModuleChannel};
use ctrlr::Ctrlr;
use qpair::NsIo;

pub use ctrlr::{attach, controllers, detach, AttachOptions};

/// Who detaches a controller, which decides what may sit on its bdevs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detach {
    /// bdev_nvme_detach_controller, and shutdown's rounds of module fini
    /// while they still close more: refused while a module has claimed a
    /// namespace bdev (a pool, a vbdev), and nothing changes.
    User,
    /// Shutdown's last round (`Module::fini` with `last`): whatever still
    /// sits on a namespace will not close, so the namespace bdevs are
    /// hot-removed under it, and the controller still gets its normal
    /// shutdown notification instead of a dropped connection (which the
    /// target keeps until its keep-alive runs out).
    Shutdown,
}

/// Whether `how` may remove the namespace bdevs `names`: a claimed one
/// refuses a user's detach.
pub(crate) fn may_remove(names: &[String], how: Detach) -> Result<(), NvmeError> {
    if how == Detach::Shutdown {
        return Ok(());
    }
    for b in names {
        if let Some(m) = crate::lookup(b).and_then(|b| b.claimed_by()) {
            return Err(NvmeError::Busy(format!(
                "bdev {b} is claimed by module {m}"
            )));
        }
    }
    Ok(())
}

/// Unregisters the namespace bdevs `names` (`may_remove` said yes).
pub(crate) fn remove_bdevs(names: &[String], how: Detach) {
    for b in names {
        let gone = match how {
            Detach::User => crate::unregister(b),
            Detach::Shutdown => crate::hot_remove(b),
        };
        if let Err(e) = gone {
            tracing::debug!("nvme: bdev {b}: {e}");
        }
    }
}

/// Detaches every controller in `names` for shutdown; what failed, one
/// line each.
pub(crate) async fn detach_each<F, Fut>(names: Vec<String>, detach: F) -> Vec<String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), NvmeError>>,
{
    let mut failed = Vec::new();
    for n in names {
        if let Err(e) = detach(n.clone()).await {
            failed.push(format!("{n}: {e}"));
        }
    }
    failed
}

/// Errors of attaching, detaching and the admin queue.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NvmeError {
    #[error("invalid parameter: {0}")]
    Invalid(String),
    #[error("controller {0} already exists")]
    Exists(String),
    #[error("no controller named {0}")]
    NotFound(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("{what} failed: status type {sct:#x} code {sc:#x}")]
    Status { what: &'static str, sct: u8, sc: u8 },
    #[error("controller: {0}")]
    Controller(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Bdev(Arc<BdevError>),
}

impl From<BdevError> for NvmeError {
    fn from(e: BdevError) -> Self {
        NvmeError::Bdev(Arc::new(e))
    }
}

impl NvmeError {
    /// The positive errno SPDK would answer with.
    pub fn errno(&self) -> i32 {
        match self {
            NvmeError::Invalid(_) => libc::EINVAL,
            NvmeError::Exists(_) => libc::EEXIST,
            NvmeError::NotFound(_) => libc::ENODEV,
            NvmeError::Transport(_) | NvmeError::Status { .. } | NvmeError::Controller(_) => {
                libc::EIO
            }
            NvmeError::Timeout(_) => libc::ETIMEDOUT,
            NvmeError::Busy(_) => libc::EBUSY,
            NvmeError::Bdev(e) => e.errno(),
        }
    }
}

/// The function table of one namespace's bdev.
struct NvmeNs {
    ctrlr: Arc<Ctrlr>,
    ns: NsIo,
    /// The controller's first namespace carries its attach call in
    /// save_config, so the call lands where that bdev was registered.
    first: bool,
}

impl BdevFnTable for NvmeNs {
    fn module_name(&self) -> &'static str {
        "nvme"
    }

    fn io_type_supported(&self, t: IoType) -> bool {
        let d = &self.ctrlr.data;
        match t {
            IoType::Read | IoType::Write => true,
            // Without a volatile cache every write is durable: nothing
            // to flush (a thin pool then skips its flushes).
            IoType::Flush => d.volatile_cache(),
            // The range list travels in the capsule.
            IoType::Unmap => d.dsm() && self.ctrlr.in_capsule as usize >= cmd::DSM_RANGE_LEN,
            IoType::WriteZeroes => d.write_zeroes(),
            IoType::Reset => false,
        }
    }

    fn create_channel(&self, _bdev: &Arc<Bdev>) -> Result<Box<dyn ModuleChannel>, BdevError> {
        Ok(Box::new(channel::NvmeChannel::new(&self.ctrlr, self.ns)))
    }

    fn driver_specific(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        let c = &self.ctrlr;
        Some((
            "nvme",
            json!([{
                "trid": c.trid_json(),
                "ctrlr_data": {
                    "cntlid": c.cntlid(),
                    "vendor_id": format!("{:#06x}", c.data.vid),
                    "model_number": c.data.model_number,
                    "serial_number": c.data.serial_number,
                    "firmware_revision": c.data.firmware_revision,
                    "subnqn": c.data.subnqn,
                },
                "vs": {
                    "nvme_version": format!("{}.{}", c.data.ver >> 16, (c.data.ver >> 8) & 0xFF),
                },
                "ns_data": { "id": self.ns.nsid },
            }]),
        ))
    }

    fn config_entry(&self, _bdev: &Bdev) -> Option<Value> {
        self.first.then(|| self.ctrlr.attach_call())
    }
}
