//! The NBD export server (fixed newstyle, structured replies,
//! base:allocation from thin mappings). Layers, bottom up: [`proto`] (wire
//! constants and encoders), [`handshake`] (options until GO), [`export`]
//! (a bdev opened for clients and its commands run on reactors),
//! [`transmission`] (a connection's reader and writer threads), [`server`]
//! (listeners and the export table), [`rpc`] (the nbd_* methods).

pub mod export;
pub mod handshake;
pub mod proto;
mod range_lock;
pub mod rpc;
pub mod server;
mod stream;
pub mod transmission;

pub use server::NbdServer;
