//! The NVMe/TCP target, built bottom up. What is here is the wire layer
//! only, with nothing above it yet: [`pdu`] (every PDU type, its checks
//! and its encoder), [`sqe`] (the queue entries a capsule carries and the
//! Fabrics commands' parameters), [`digest`] (CRC32C), [`receive`] (bytes
//! in any split to whole PDUs, every protocol error turned into the
//! TermReq that ends the connection) and [`fuzz`] (the receiver under
//! seeded mutation). Queue pairs, controllers, subsystems and their RPCs
//! come next, on top of these.
//!
//! Facts come from `../shared/docs/protocols.md` part A and the NVMe/TCP
//! specification. Everything on the wire is little-endian and encoded
//! field by field (no `repr(C)` casts), so no input can panic or misread.

pub mod digest;
pub mod fuzz;
pub mod pdu;
pub mod receive;
pub mod sqe;
