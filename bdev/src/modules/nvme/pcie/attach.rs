//! Attached PCIe controllers: attach (VFIO open, DMA arena pinned,
//! bring-up on a thread of its own, one bdev per namespace), detach
//! (bdevs gone, I/O failed, shutdown notification), the list
//! bdev_nvme_get_controllers shows, and each namespace's bdev function
//! table.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde_json::{json, Value};

use super::channel::{NsIo, PcieChannel};
use super::controller::{BringUp, Controller, Health};
use super::dma::DmaArena;
use super::regs::{Regs, PAGE};
use super::vfio::{canonical_pci_addr, VfioDevice};
use crate::modules::nvme::cmd::MAX_NLB;
use crate::modules::nvme::{detach_each, may_remove, remove_bdevs, Detach, NvmeError};
use crate::{Bdev, BdevError, BdevFnTable, BdevProps, IoType, ModuleChannel, Uuid};

/// Entries per I/O queue we ask for.
const IO_ENTRIES: u16 = 64;
/// Bytes one command moves at most (before MDTS cuts it).
const MAX_XFER: usize = 128 << 10;
/// Where the arena sits in the device's address space (any page-aligned
/// address the IOMMU maps works; this one is clear of low memory).
const ARENA_IOVA: u64 = 1 << 32;

/// What one attach asks for.
#[derive(Clone, Debug)]
pub struct PcieAttach {
    pub name: String,
    pub traddr: String,
    /// I/O queue pairs to ask for (one per reactor).
    pub io_queues: u16,
}

/// An attached controller, shared by its bdevs and their channels.
pub struct PcieCtrlr {
    pub name: String,
    pub traddr: String,
    pub ctrl: Controller,
    pub bdevs: Vec<String>,
}

impl PcieCtrlr {
    fn trid(&self) -> Value {
        json!({"trtype": "PCIe", "traddr": self.traddr})
    }

    /// bdev_nvme_get_controllers' entry.
    pub fn info(&self) -> Value {
        let state = match self.ctrl.health() {
            Health::Ready => "enabled",
            Health::Resetting => "resetting",
            Health::Failed => "failed",
        };
        json!({
            "name": self.name,
            "ctrlrs": [{
                "state": state,
                "trid": self.trid(),
                "cntlid": self.ctrl.data.cntlid,
                "host": {"nqn": "", "addr": "", "svcid": ""},
                // One per core that submitted here: each reactor has its
                // own submission/completion queue pair.
                "io_qpairs": self.ctrl.io_queues_in_use(),
            }]
        })
    }

    fn attach_call(&self) -> Value {
        json!({
            "method": "bdev_nvme_attach_controller",
            "params": {"name": self.name, "trtype": "PCIe", "traddr": self.traddr}
        })
    }
}

#[derive(Default)]
struct Registry {
    ctrlrs: BTreeMap<String, Arc<PcieCtrlr>>,
    /// Names and addresses being attached.
    pending: Vec<(String, String)>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Every PCIe controller (or the one named), for bdev_nvme_get_controllers.
pub fn controllers(name: Option<&str>) -> Vec<Value> {
    let r = registry();
    r.ctrlrs
        .values()
        .filter(|c| name.is_none_or(|n| n == c.name))
        .map(|c| c.info())
        .collect()
}

pub fn exists(name: &str) -> bool {
    registry().ctrlrs.contains_key(name)
}

/// The arena for `queues` I/O queues and the admin queue.
fn arena_bytes(queues: u16) -> usize {
    let e = usize::from(IO_ENTRIES);
    let per_queue = e * (MAX_XFER + PAGE) + e * 80 + 4 * PAGE;
    (1 << 20) + usize::from(queues) * per_queue
}

/// Attaches the controller at PCI address `o.traddr` through VFIO.
pub async fn attach(o: PcieAttach) -> Result<Vec<String>, NvmeError> {
    let addr = canonical_pci_addr(&o.traddr)?;
    let queues = o.io_queues.max(1);
    attach_with(o, addr.clone(), move || {
        let dev = Arc::new(VfioDevice::open(Path::new("/sys"), &addr)?);
        let arena = DmaArena::new(arena_bytes(queues), ARENA_IOVA)?;
        dev.map_dma(&arena)?;
        Ok((dev as Arc<dyn Regs>, arena))
    })
    .await
}

/// Attaches a controller reached through `regs` with `arena` (the hook
/// the simulated controller's tests and benchmark use); `label` stands
/// for the PCI address.
pub async fn attach_regs(
    o: PcieAttach,
    regs: Arc<dyn Regs>,
    arena: Arc<DmaArena>,
) -> Result<Vec<String>, NvmeError> {
    let label = o.traddr.clone();
    attach_with(o, label, move || Ok((regs, arena))).await
}

async fn attach_with(
    o: PcieAttach,
    addr: String,
    open: impl FnOnce() -> Result<(Arc<dyn Regs>, Arc<DmaArena>), NvmeError> + Send + 'static,
) -> Result<Vec<String>, NvmeError> {
    if o.name.is_empty() {
        return Err(NvmeError::Invalid("name is empty".into()));
    }
    if crate::modules::nvme::ctrlr::controllers(Some(&o.name)).is_ok() {
        return Err(NvmeError::Exists(o.name.clone()));
    }
    {
        let mut r = registry();
        if r.ctrlrs.contains_key(&o.name) || r.pending.iter().any(|p| p.0 == o.name) {
            return Err(NvmeError::Exists(o.name.clone()));
        }
        if let Some(c) = r.ctrlrs.values().find(|c| c.traddr == addr) {
            return Err(NvmeError::Busy(format!(
                "PCI device {addr} is attached already as {}",
                c.name
            )));
        }
        if r.pending.iter().any(|p| p.1 == addr) {
            return Err(NvmeError::Busy(format!(
                "PCI device {addr} is being attached"
            )));
        }
        r.pending.push((o.name.clone(), addr.clone()));
    }
    let res = attach_inner(&o, addr.clone(), open).await;
    registry().pending.retain(|p| p.0 != o.name);
    res
}

async fn attach_inner(
    o: &PcieAttach,
    addr: String,
    open: impl FnOnce() -> Result<(Arc<dyn Regs>, Arc<DmaArena>), NvmeError> + Send + 'static,
) -> Result<Vec<String>, NvmeError> {
    let want = BringUp {
        io_queues: o.io_queues.max(1),
        io_entries: IO_ENTRIES,
        max_xfer: MAX_XFER,
    };
    // Opening and bring-up wait on the device for up to CAP.TO: on a
    // thread, so this reactor keeps serving I/O meanwhile.
    let (tx, rx) = reactor::oneshot::channel();
    std::thread::Builder::new()
        .name("nvme-pcie-attach".into())
        .spawn(move || {
            tx.send(open().and_then(|(regs, arena)| Controller::bring_up(regs, arena, want)));
        })
        .map_err(|e| NvmeError::Transport(format!("no thread for the attach: {e}")))?;
    let ctrl = rx
        .await
        .unwrap_or_else(|_| Err(NvmeError::Transport("the attach thread died".into())))?;
    let names: Vec<String> = ctrl
        .namespaces
        .iter()
        .map(|(nsid, _)| format!("{}n{nsid}", o.name))
        .collect();
    let namespaces = ctrl.namespaces.clone();
    let c = Arc::new(PcieCtrlr {
        name: o.name.clone(),
        traddr: addr.clone(),
        ctrl,
        bdevs: names.clone(),
    });
    let mut registered: Vec<String> = Vec::new();
    for (i, (nsid, ns)) in namespaces.iter().enumerate() {
        let mut props = BdevProps::new(&names[i], "NVMe disk", ns.block_size, ns.nsze);
        props.uuid = (ns.nguid != [0; 16]).then_some(Uuid(ns.nguid));
        let max_blocks = (c.ctrl.max_xfer as u64 / u64::from(ns.block_size)).clamp(1, MAX_NLB);
        let table = PcieNs {
            ctrlr: c.clone(),
            ns: NsIo {
                nsid: *nsid,
                block_size: ns.block_size,
                max_blocks,
            },
            first: i == 0,
        };
        if let Err(e) = Bdev::new(props, table).and_then(crate::register) {
            for n in &registered {
                let _ = crate::unregister(n);
            }
            c.ctrl.fail();
            return Err(e.into());
        }
        registered.push(names[i].clone());
    }
    registry().ctrlrs.insert(o.name.clone(), c.clone());
    tracing::info!(
        "nvme pcie: attached {addr} ({}, {} I/O queues of {} entries, {} KiB per command) as {}",
        c.ctrl.data.model_number,
        c.ctrl.granted,
        c.ctrl.io_entries,
        c.ctrl.max_xfer >> 10,
        names.join(", ")
    );
    Ok(names)
}

/// Detaches controller `name`: its bdevs go, its I/O fails, and the
/// controller gets a normal shutdown notification.
pub async fn detach(name: &str) -> Result<(), NvmeError> {
    detach_as(name, Detach::User).await
}

async fn detach_as(name: &str, how: Detach) -> Result<(), NvmeError> {
    let c = {
        let mut r = registry();
        let c = r
            .ctrlrs
            .get(name)
            .cloned()
            .ok_or_else(|| NvmeError::NotFound(name.to_string()))?;
        may_remove(&c.bdevs, how)?;
        r.ctrlrs.remove(name);
        c
    };
    remove_bdevs(&c.bdevs, how);
    c.ctrl.fail();
    let (tx, rx) = reactor::oneshot::channel();
    let cc = c.clone();
    let spawned = std::thread::Builder::new()
        .name("nvme-pcie-detach".into())
        .spawn(move || tx.send(cc.ctrl.shutdown()));
    let shut = match spawned {
        Ok(_) => rx
            .await
            .unwrap_or_else(|_| Err(NvmeError::Transport("the detach thread died".into()))),
        Err(e) => Err(NvmeError::Transport(e.to_string())),
    };
    if let Err(e) = shut {
        tracing::warn!("nvme pcie: {name}: shutdown notification: {e}");
    }
    tracing::info!("nvme pcie: detached {name}");
    Ok(())
}

/// Detaches every PCIe controller (module fini); what failed.
pub(crate) async fn detach_all(how: Detach) -> Vec<String> {
    let names: Vec<String> = registry().ctrlrs.keys().cloned().collect();
    detach_each(names, |n| async move { detach_as(&n, how).await }).await
}

/// One namespace's bdev.
struct PcieNs {
    ctrlr: Arc<PcieCtrlr>,
    ns: NsIo,
    first: bool,
}

impl BdevFnTable for PcieNs {
    fn module_name(&self) -> &'static str {
        "nvme"
    }

    fn io_type_supported(&self, t: IoType) -> bool {
        match t {
            IoType::Read | IoType::Write => true,
            // Without a volatile cache every completed write is durable.
            IoType::Flush => self.ctrlr.ctrl.data.volatile_cache(),
            IoType::Unmap | IoType::WriteZeroes | IoType::Reset => false,
        }
    }

    fn create_channel(&self, _bdev: &Arc<Bdev>) -> Result<Box<dyn ModuleChannel>, BdevError> {
        Ok(Box::new(PcieChannel::new(&self.ctrlr, self.ns)))
    }

    fn driver_specific(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        let c = &self.ctrlr;
        let d = &c.ctrl.data;
        Some((
            "nvme",
            json!([{
                "pci_address": c.traddr,
                "trid": c.trid(),
                "ctrlr_data": {
                    "cntlid": d.cntlid,
                    "vendor_id": format!("{:#06x}", d.vid),
                    "model_number": d.model_number,
                    "serial_number": d.serial_number,
                    "firmware_revision": d.firmware_revision,
                },
                "vs": {"nvme_version": format!("{}.{}", c.ctrl.vs >> 16, (c.ctrl.vs >> 8) & 0xFF)},
                "ns_data": {"id": self.ns.nsid},
            }]),
        ))
    }

    fn backing(&self, _bdev: &Bdev) -> Option<String> {
        Some(format!("PCI device {}", self.ctrlr.traddr))
    }

    fn config_entry(&self, _bdev: &Bdev) -> Option<Value> {
        self.first.then(|| self.ctrlr.attach_call())
    }
}
