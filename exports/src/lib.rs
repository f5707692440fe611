//! Block exports: bdevs served to network clients. Today that is NBD
//! ([`nbd`]); an NVMe/TCP target will sit beside it on the same pieces.
//!
//! **Where a connection runs.** Everything runs on the reactors; the
//! crate starts no thread. A listen address is a non-blocking listener
//! (`reactor::sock`) with an accept task on one reactor. Each accepted
//! socket is handed to one reactor, chosen round-robin among the cores
//! that the caller does not reserve (the daemon passes the cores bdev
//! modules keep, such as a thin pool's metadata core, through a callback,
//! so this crate never names a bdev module), and stays there: its handshake, request parsing, I/O
//! submission and completion, and replies all happen on that core, in
//! one task. The I/O buffers a connection allocates are dropped on the
//! core that allocated them, back into that core's pool.
//!
//! **The connection's states.** Handshake: async code over the socket,
//! bounded by 30 s, until the client picks an export (or breaks a rule
//! and is closed). Transmission: a loop that (1) encodes the replies of
//! completed requests into one send buffer, (2) writes what the socket
//! takes, (3) parses requests from a receive buffer and starts them: a
//! request holds a slot from its header until its reply has been handed
//! to the socket. Plain reads, whole-block writes and flushes go to the
//! bdev channel with the connection as completion callback, with pooled
//! I/Os and buffers (nothing allocated per I/O once warm); the rest runs
//! as a task. When there is nothing to do, the task sleeps until its
//! socket, a completion or a close wakes it. Ending: the end of the
//! stream, DISC or a bad frame stop the reading; the requests in flight
//! finish and are answered, then the socket closes. A close from the
//! server (the export or listener stops) or a broken socket stop the
//! reading and drop the replies; the task still waits for its I/O, so a
//! stopped export's bdev is closed with nothing in flight.
//!
//! **Backpressure.** A connection holds at most 256 requests and 64 MiB
//! of payload in its slots. When either is spent it stops reading its
//! socket; a client that does not read its replies fills its send
//! buffer, its slots stay taken, and it stops being read. Nothing else
//! waits: the other connections on that reactor are other tasks, and
//! each pass of a connection reads at most 64 requests before the
//! reactor moves on.
//!
//! The management calls ([`nbd::NbdServer`]) come from plain threads (the
//! RPC server's), as stopping waits for the reactors; errors are
//! [`nbd::NbdError`].
//!
//! **NVMe/TCP.** The NVMe over Fabrics TCP target (issue 21) is being
//! built in [`nvmf`], bottom up, PDU layer first: the PDU codec with every
//! length, offset and digest rule checked, the SQE/CQE and Fabrics
//! command encodings, an incremental receiver whose every protocol error
//! names the TermReq to answer with, and a seeded fuzzer over it. Its
//! queue pairs will run on the reactors as NBD connections do, one task
//! per connection.

pub mod conn;
pub mod listen;
pub mod nbd;
pub mod nvmf;
