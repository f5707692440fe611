//! The NVMe/TCP target, built bottom up. The wire layer: [`pdu`] (every
//! PDU type, its checks and its encoder), [`sqe`] (the queue entries a
//! capsule carries and the Fabrics commands' parameters), [`digest`]
//! (CRC32C), [`receive`] (bytes in any split to whole PDUs, every
//! protocol error turned into the TermReq that ends the connection) and
//! [`fuzz`] (the receiver under seeded mutation). Above it: [`qpair`]
//! (one connection on one reactor), [`controller`] (what a host's queues
//! share), [`admin`] and [`io`] (the commands), [`identify`] (the data
//! structures handed out), [`subsystem`] and [`target`] (what the RPCs
//! manage), [`transport`] (its options) and [`rpc`] (SPDK's nvmf_*
//! methods).
//!
//! Facts come from `../shared/docs/protocols.md` part A and the NVMe/TCP
//! specification. Everything on the wire is little-endian and encoded
//! field by field (no `repr(C)` casts), so no input can panic or misread.

pub mod admin;
pub mod controller;
pub mod digest;
pub mod fuzz;
pub mod identify;
pub mod io;
pub mod pdu;
mod qpair;
pub mod receive;
pub mod rpc;
pub mod sqe;
pub mod subsystem;
pub mod target;
pub mod transport;

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
