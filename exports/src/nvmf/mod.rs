//! The NVMe/TCP target. The wire layer is the `nvme` crate's (PDUs, queue
//! entries, digests, the receiver), shared with the host side and
//! re-exported here. Above it: `qpair`
//! (one connection on one reactor), [`controller`] (what a host's queues
//! share), [`admin`] and [`io`] (the commands), [`identify`] (the data
//! structures handed out), [`subsystem`] and [`target`] (what the RPCs
//! manage), [`transport`] (its options) and [`rpc`] (SPDK's nvmf_*
//! methods).
//!
//! Facts come from `../shared/docs/protocols.md` part A.

pub mod admin;
pub mod controller;
pub mod identify;
pub mod io;
mod qpair;
pub mod rpc;
pub mod subsystem;
pub mod target;
pub mod transport;

pub use nvme::{digest, fuzz, pdu, receive, sqe};
pub use target::NvmfTarget;

use bdev::rpc::RpcError;

/// The discovery subsystem's well-known NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Why an nvmf management call failed, with SPDK's codes and messages.
#[derive(Debug, thiserror::Error)]
pub enum NvmfError {
    #[error("Transport type '{0}' already exists")]
    TransportExists(String),
    #[error("Invalid transport type '{0}'")]
    InvalidTransport(String),
    #[error("Subsystem with NQN '{0}' not found")]
    NoSubsystem(String),
    #[error("Unable to create subsystem {0}: {1}")]
    CreateSubsystem(String, String),
    #[error("Invalid parameters: {0}")]
    InvalidParams(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, #[source] std::io::Error),
    #[error("Internal error: {0}")]
    Internal(String),
}

impl From<NvmfError> for RpcError {
    fn from(e: NvmfError) -> Self {
        use bdev::rpc::{INTERNAL_ERROR, INVALID_PARAMS};
        tracing::info!("nvmf: {e}");
        match &e {
            NvmfError::TransportExists(_) | NvmfError::Internal(_) => {
                RpcError::new(INTERNAL_ERROR, e.to_string())
            }
            NvmfError::CreateSubsystem(nqn, _) => {
                RpcError::new(INTERNAL_ERROR, format!("Unable to create subsystem {nqn}"))
            }
            NvmfError::InvalidTransport(_) | NvmfError::NoSubsystem(_) => {
                RpcError::new(INVALID_PARAMS, e.to_string())
            }
            NvmfError::InvalidParams(_) | NvmfError::Listen(..) => {
                RpcError::new(INVALID_PARAMS, "Invalid parameters")
            }
        }
    }
}
