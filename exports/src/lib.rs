//! Block exports: bdevs served to clients over the network.

pub mod nbd;
