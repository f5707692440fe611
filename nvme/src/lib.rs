//! NVMe over TCP on the wire, for both ends: the target (exports) and the
//! host (the NVMe bdev). [`pdu`] holds every PDU type, its checks and its
//! encoder; [`sqe`] the queue entries a capsule carries and the Fabrics
//! commands' parameters; [`digest`] CRC32C; [`receive`] turns bytes in any
//! split into whole PDUs, every protocol error into the TermReq that ends
//! the connection; [`fuzz`] runs the receiver under seeded mutation.
//!
//! Facts come from `../shared/docs/protocols.md` part A and the NVMe/TCP
//! specification. Everything on the wire is little-endian and encoded
//! field by field (no `repr(C)` casts), so no input can panic or misread.
//! Nothing here does I/O: callers own their sockets.

pub mod digest;
pub mod fuzz;
pub mod pdu;
pub mod receive;
pub mod sqe;
