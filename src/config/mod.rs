//! Config files: SPDK-style JSON (parsed by the bdev crate) and our YAML.

pub mod format;
pub mod yaml;
