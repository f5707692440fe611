//! The PCIe side of bdev_nvme_attach_controller, _detach_controller and
//! _get_controllers: the shared handlers in `nvme::rpc` hand a call here
//! when its trtype is PCIe or its controller is a PCIe one.

use serde_json::{json, Value};

use super::attach::{self, PcieAttach};
use crate::rpc::RpcResult;

/// bdev_nvme_attach_controller with trtype PCIe: traddr is the PCI
/// address. One I/O queue pair per reactor is asked for.
pub async fn attach_pcie(name: &str, traddr: &str) -> RpcResult {
    let o = PcieAttach {
        name: name.to_string(),
        traddr: traddr.to_string(),
        io_queues: reactor::cores().len().clamp(1, 65535) as u16,
    };
    Ok(json!(attach::attach(o).await?))
}

/// Whether `name` is a PCIe controller (detach goes here then).
pub fn is_pcie(name: &str) -> bool {
    attach::exists(name)
}

pub async fn detach_pcie(name: &str) -> RpcResult {
    attach::detach(name).await?;
    Ok(Value::Bool(true))
}

/// PCIe controllers for bdev_nvme_get_controllers.
pub fn controllers(name: Option<&str>) -> Vec<Value> {
    attach::controllers(name)
}
