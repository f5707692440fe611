//! The NBD export server (fixed newstyle, structured replies,
//! base:allocation from thin mappings). Layers, bottom up: [`proto`] (wire
//! constants and encoders), `stream` (a connection's socket and receive
//! buffer, and the handle that closes it), [`handshake`] (options until
//! GO), [`export`] (a bdev opened for clients and its commands run on
//! reactors), [`transmission`] (a connection's requests and replies, on
//! its reactor), [`server`] (listeners, the export table, where
//! connections run), [`rpc`] (the nbd_* methods).

pub mod export;
pub mod handshake;
pub mod proto;
mod range_lock;
pub mod rpc;
pub mod server;
mod stream;
pub mod transmission;

pub use server::{Disk, NbdServer, ReservedCores};

use bdev::rpc::RpcError;

/// Why an NBD management call failed. Each maps to the errno that the
/// RPC answers with (negated, as SPDK does).
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("{0}: ferrothin serves NBD over a socket, not a kernel device; give HOST:PORT or a socket path")]
    KernelDevice(String),
    /// The address, and what the resolver said (with its ": ").
    #[error("bad listen address {0:?}{1}")]
    BadAddress(String, String),
    #[error("export name longer than 4096 bytes")]
    NameTooLong,
    #[error("export {name:?} already exists at {address}")]
    Exists { name: String, address: String },
    #[error("No such device")]
    NoSuchBdev,
    #[error(transparent)]
    Bdev(bdev::BdevError),
    #[error("{0} is in use by a live server")]
    InUse(String),
    #[error("cannot listen: {0}")]
    Listen(#[source] std::io::Error),
    #[error("no NBD exports at {0}")]
    NoExportsAt(String),
    #[error("no export {name:?} at {address}")]
    NoSuchExport { name: String, address: String },
    #[error("reactor: {0}")]
    Reactor(#[from] reactor::ReactorError),
    #[error(transparent)]
    Accept(#[from] crate::listen::AcceptError),
}

impl NbdError {
    /// The positive errno an RPC answers with.
    pub fn errno(&self) -> i32 {
        match self {
            NbdError::KernelDevice(_) | NbdError::BadAddress(..) | NbdError::NameTooLong => {
                libc::EINVAL
            }
            NbdError::Exists { .. } => libc::EEXIST,
            NbdError::NoSuchBdev | NbdError::NoExportsAt(_) | NbdError::NoSuchExport { .. } => {
                libc::ENODEV
            }
            NbdError::Bdev(e) => e.errno(),
            NbdError::InUse(_) => libc::EADDRINUSE,
            NbdError::Listen(e) => e.raw_os_error().unwrap_or(libc::EADDRINUSE),
            NbdError::Reactor(_) | NbdError::Accept(_) => libc::EIO,
        }
    }
}

impl From<NbdError> for RpcError {
    fn from(e: NbdError) -> Self {
        RpcError::new(-e.errno(), e.to_string())
    }
}
