//! The bdev layer: block devices, their per-core channels, and the I/O
//! object that travels through them; plus the base modules.
//!
//! Shape (SPDK's, in Rust):
//! - A [`Bdev`] is shared by all cores: identity, geometry, and its module's
//!   function table ([`BdevFnTable`]).
//! - A user [`open`]s a [`Descriptor`] (read-only or read-write; a module may
//!   claim a bdev it sits on) and gets an [`IoChannel`] per core. The channel
//!   is created on first use on that core and holds the module's per-core
//!   state ([`ModuleChannel`]), so the I/O path never shares anything across
//!   cores.
//! - An I/O is a pooled [`IoBox`] that moves down the stack and comes back
//!   through a completion stack, exactly once, with an [`IoStatus`]. Modules
//!   that stack (error, delay, thin) forward the same object. No allocation
//!   per I/O once warm; completions never run inside a submit call.
//! - The bdev layer checks every I/O before a module sees it (type, range,
//!   write unit, buffer lengths, descriptor mode), counts it per channel, and
//!   retries NOMEM completions itself.
//!
//! A module as a whole ([`Module`]: its RPC methods, save_config, examine,
//! shutdown, reserved cores) is registered with [`register_module`]; the
//! base modules live in [`modules`](mod@modules), thin in its own crate.
//! Every method is declared beside its handler and dispatched through one
//! [`rpc::RpcRegistry`]; [`config`] loads and saves SPDK-style JSON
//! configs through it.

mod bdev;
mod buf;
mod channel;
pub mod config;
mod desc;
mod frames;
mod info;
mod io;
mod io_type;
mod module;
pub mod modules;
pub mod notify;
mod pass_counts;
mod registry;
pub mod rpc;
mod sim_state;
mod stats;
mod stream;
mod uuid;

pub use bdev::{Bdev, BdevFnTable, BdevProps};
pub use buf::{IoBuf, BUF_ALIGN};
pub use channel::{BdevChannel, IoChannel, ModuleChannel};
pub use desc::{open, BdevEvent, Descriptor, EventFn};
pub use io::{BdevIo, IoBox, IoDone};
pub use io_type::{Invalid, IoStatus, IoType, IO_TYPE_COUNT};
pub use module::{
    examine_pending, fini_all, modules, register_module, reserved_cores, FiniFuture, Module,
    ModuleConfig,
};
pub use pass_counts::PassCounts;
pub use registry::{
    hot_remove, list, lookup, register, set_aliases, unregister, unregister_unused,
};
pub use sim_state::{sim_put_core_state, sim_take_core_state};
pub use stats::{IoStatSnapshot, TypeStat};
pub use uuid::Uuid;

/// Errors of bdev management (not of I/O: an I/O ends with an [`IoStatus`]).
#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    #[error("bdev {0} already exists")]
    Exists(String),
    #[error("no bdev named {0}")]
    NotFound(String),
    #[error("bdev {0} is claimed by module {1}")]
    Claimed(String, String),
    #[error("bdev {0} is busy: {1}")]
    Busy(String, String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error(transparent)]
    Reactor(#[from] reactor::ReactorError),
}

impl BdevError {
    /// The positive errno SPDK would answer with.
    pub fn errno(&self) -> i32 {
        match self {
            BdevError::Exists(_) => libc::EEXIST,
            BdevError::NotFound(_) => libc::ENODEV,
            BdevError::Claimed(..) => libc::EPERM,
            BdevError::Busy(..) => libc::EBUSY,
            BdevError::Invalid(_) => libc::EINVAL,
            BdevError::Io(_, e) => e.raw_os_error().unwrap_or(libc::EIO),
            BdevError::Reactor(_) => libc::EINVAL,
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod test_util;
