//! Per-core polled reactors: the execution model every other ferrothin crate
//! runs on.
//!
//! One reactor is one OS thread pinned to one core. It owns everything that
//! runs on it (pollers, timers, async tasks, io channels) and shares nothing
//! mutable with other cores: cross-core work is a message pushed into the
//! target reactor's lock-free inbox, and a reply is another message. That is
//! the SPDK model; the Rust surface borrows glommio's shape (a local executor
//! per core, `spawn_local`, `!Send` handles for core-local things).
//!
//! A reactor spins while there is work. In idle mode (the default) it parks on
//! an eventfd after a run of idle loop turns, and wakes for a message, a timer
//! or a completion source that signals the same eventfd, or for one of its
//! sockets; busy mode never parks and is for benchmarks.
//!
//! [`sock`] holds non-blocking TCP and Unix sockets that a reactor polls
//! like any other I/O source (SPDK's lib/sock): servers run their
//! connections as tasks on the reactors, with no thread per connection.
//!
//! With the `sim` feature, `SimSet` runs a whole set on one thread in an
//! order chosen by a seed, on virtual time: deterministic tests.
//!
//! Entry points: [`ReactorSet::start`] from a plain thread; on a reactor,
//! [`send`], [`spawn_local`], [`call_on`], [`register_poller`], [`after`],
//! [`IoDevice`], [`sock`].

mod clock;
mod core_mask;
mod eventfd;
mod executor;
mod io_channel;
pub mod oneshot;
mod poller;
mod reactor;
mod set;
#[cfg(feature = "sim")]
mod sim;
pub mod sock;

pub use async_task::Task;
pub use clock::{duration_to_ticks, ticks, ticks_hz, ticks_to_ns};
pub use core_mask::{format_core_mask, parse_core_mask};
pub use executor::{
    call_on, cores, current_core, is_busy_mode, send, sleep, spawn_local, spawn_on, timeout,
    wake_fd, yield_now,
};
pub use io_channel::IoDevice;
pub use poller::{after, register_poller, register_timed_poller, PollStatus, Poller};
pub use reactor::{PollMode, ReactorInfo};
pub use set::{ReactorHandle, ReactorOptions, ReactorSet};
#[cfg(feature = "sim")]
pub use sim::{SimError, SimSet};

/// Errors of the reactor layer.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("invalid core mask {0:?}")]
    BadCoreMask(String),
    #[error("no reactor on core {0}")]
    NoSuchCore(u32),
    #[error("not called on a reactor thread")]
    NotOnReactor,
    #[error("the reactor stopped before answering")]
    Stopped,
    #[error("operating system error: {0}")]
    Os(#[from] std::io::Error),
}

#[cfg(test)]
mod tests;
