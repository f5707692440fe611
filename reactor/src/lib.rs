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
//! A reactor can also be driven instead of run: [`DrivenSet`] makes a set
//! whose reactors no thread of ours runs. A thread the caller owns (an fio
//! job's, say) attaches a core and calls [`DrivenReactor::turn`] with the
//! time on its own clock; the turn is the threaded loop's turn, run on the
//! caller's thread with the reactor entered, so everything above works
//! inside it unchanged, and `ticks()` there returns the caller's time. The
//! turn says whether it did work and when the next timer is due, so the
//! caller can poll or sleep ([`DrivenReactor::wait`]). A driven reactor
//! stays on the thread that attached it (it is neither `Send` nor `Sync`).
//!
//! With the `sim` feature, `SimSet` drives a whole set from one thread in
//! an order chosen by a seed, on virtual time: deterministic tests.
//!
//! Entry points: [`ReactorSet::start`] or [`DrivenSet::new`] from a plain
//! thread; on a reactor, [`send`], [`spawn_local`], [`call_on`],
//! [`register_poller`], [`after`], [`IoDevice`], [`sock`].

mod clock;
mod core_mask;
mod driven;
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
pub use driven::{DrivenReactor, DrivenSet, PutFn, TakeFn, Turn, TurnLimits};
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
    #[error("core {0} is already driven by a thread")]
    AlreadyDriven(u32),
    #[error("a reactor is already running on this thread")]
    InTurn,
    #[error("operating system error: {0}")]
    Os(#[from] std::io::Error),
}

#[cfg(test)]
mod tests;
