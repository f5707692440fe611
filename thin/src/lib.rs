//! thin: dm-thin's thin pools and thin volumes as a bdev module, in a
//! crate of its own: the bdev layer knows it only through the
//! [`bdev::Module`] it registers ([`register`]).
//!
//! A pool claims a metadata bdev and a data bdev (or one bdev split into a
//! metadata region and a data region) and keeps dm-thin v2 metadata on it
//! through the `metadata` crate. Each thin volume is a bdev.
//!
//! Roles (see docs/architecture.md):
//! - I/O cores run volume channels (`volume`): a read or write of a
//!   mapped, unshared block is a lock-free table lookup (`table`, counted
//!   in an epoch, `epoch`), a remap and the same I/O passed to the data
//!   bdev on the same core. Nothing is shared with the metadata core but
//!   the table and a few flags (`shared`).
//! - Anything else is parked and handed to the pool's metadata core
//!   (`slow_path` is the protocol, with its state diagram; `meta` the
//!   core): it owns the metadata, provisions, copies on write, discards,
//!   commits (data flush first, superblock last), switches modes and runs
//!   control operations. `image` bridges the synchronous metadata library
//!   and bdev I/O.
//! - The control API (`pools`, `control`) is async and runs on any
//!   reactor; each call hops to the metadata core and back, which commits
//!   before answering. [`rpc`] serves it as JSON-RPC, `module` hands that
//!   and the pools' save_config and shutdown to the bdev layer; `events`
//!   is what monitors hear; `errors` what callers get.

mod autoextend;
mod barrier;
mod block_size;
mod control;
mod epoch;
mod errors;
mod events;
mod external_origin;
mod failed;
mod image;
mod live_options;
mod meta;
mod module;
pub mod options;
mod overprovision;
mod pools;
pub mod rpc;
mod shared;
pub mod sidecar;
mod slow_path;
mod suspend;
mod sync;
mod table;
mod volume;

pub use events::{events_since, PoolEvent};
pub use failed::{failed_pool, failed_pools, FailedPool};
pub use meta::DeviceInfo;
pub use metadata::thin::delta::DeltaKind;
pub use options::{DiscardMode, PoolMode, PoolOptions};
pub use shared::PoolStats;

pub use control::*;
pub use errors::ThinError;
pub use module::ThinModule;
pub use pools::*;
pub use suspend::{
    fail_held_io, resume_pool, resume_volume, set_read_only, snapshot_many, suspend_pool,
    suspend_volume, SUSPEND_TIMEOUT,
};
pub use volume::{sim_put_core_state, sim_take_core_state};

/// Adds the thin module (its methods, save_config, shutdown) to the bdev
/// layer; every entry point calls it once, more calls change nothing.
pub fn register() {
    bdev::register_module(&ThinModule);
}
