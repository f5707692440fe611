//! The thin pool's metadata: devices, their mappings and details, on top
//! of the persistent-data layer.

pub mod check;
pub mod delta;
pub mod model;
pub mod pool;
pub mod read;
pub mod repair;
pub mod write;
pub mod xml;

pub use model::{Device, PoolModel};

/// A thin device's id, in every crate: dm-thin's ids are 24 bits
/// (`pool::MAX_DEV_ID`); the metadata's B-trees key them as u64.
pub type DevId = u32;
