//! The persistent-data layer: checksums, block layouts, space maps.

mod block_cache;
pub mod btree;
pub mod btree_builder;
pub mod btree_walk;
pub mod checksum;
mod le;
pub mod node;
pub mod space_map;
pub mod superblock;
pub mod tm;
pub mod values;
