//! The daemon's JSON-RPC: the wire format ([`wire`]), the Unix-socket
//! server ([`server`]), and the method table that joins the framework's
//! methods to the bdev modules' and the exports' ([`methods`]).

pub mod audit;
pub mod methods;
pub mod server;
pub mod wire;
