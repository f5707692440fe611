//! lvol: SPDK's logical volume methods (bdev_lvol_*) on thin pools and
//! volumes, so SPDK lvol scripts work unchanged (docs/lvol.md).
//!
//! - An lvstore (`store`) is a thin pool in the one-device layout on its
//!   base bdev; the cluster size is the pool's data block size. Its pool
//!   superblock's uuid field carries the lvstore UUID, which is how
//!   examine (`module`) recognises it without claiming the bdev.
//! - An lvol (`lvols`) is a thin volume whose bdev name is its UUID and
//!   whose alias is `lvs_name/lvol_name`; a snapshot is a read-only dm-thin
//!   snapshot, a clone a writable snapshot of a read-only lvol.
//! - What dm-thin's metadata cannot hold (names, UUIDs, flags, sizes,
//!   parents) is the lvol table (`table`), kept in the pool's side table
//!   (`thin::sidecar`) and committed in the same transaction as the pool
//!   change it goes with.
//! - `rpc` serves the methods with SPDK's parameters and errors
//!   (`errors`).

mod errors;
mod lvols;
mod module;
mod rpc;
mod store;
pub mod table;

pub use errors::{strerror, LvolError};
pub use module::LvolModule;

/// Adds the lvol module (its methods, examine, shutdown) to the bdev
/// layer. Needs thin's module, which it registers too.
pub fn register() {
    thin::register();
    bdev::register_module(&LvolModule);
}
