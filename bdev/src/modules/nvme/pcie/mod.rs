//! The PCIe transport of the NVMe bdev: a userspace, polled driver for a
//! local controller handed to this process through VFIO.
//!
//! - [`regs`]: BAR0's registers and the [`regs::Regs`] trait the driver
//!   reaches them through (a VFIO-mapped BAR, or the simulated
//!   controller in tests).
//! - [`dma`]: the DMA arena, pinned and registered with the IOMMU once;
//!   rings, PRP lists and data buffers all come from it.
//! - [`queue`]: a submission/completion queue pair: ring arithmetic,
//!   phase tag, batched doorbells, one slot per CID.
//! - [`prp`]: PRP1/PRP2 and PRP lists (chained across list pages).
//! - [`controller`]: bring-up, admin queue, Identify, I/O queue creation,
//!   fatal status and reset, shutdown notification.
//! - [`sim`]: a simulated controller over plain memory, for the tests
//!   and the instruction-count benchmark.
//!
//! Identify parsing and the NVM command builders are the TCP host's
//! (`nvme::identify`, `nvme::cmd`); only the data pointer differs (PRPs
//! here, SGLs there), and `queue::set_prp` rewrites it.

pub mod attach;
mod channel;
pub mod cmd;
pub mod controller;
pub mod dma;
pub mod prp;
pub mod queue;
pub mod regs;
pub mod rpc;
pub mod sim;
pub mod vfio;

#[cfg(test)]
mod bdev_tests;
#[cfg(test)]
mod tests;
