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
