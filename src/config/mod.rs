//! Config files: SPDK-style JSON (parsed by the bdev crate) and our YAML.

pub mod yaml;
