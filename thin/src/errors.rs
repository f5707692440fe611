//! Errors of thin pool and volume management, and the errno each answers
//! with over JSON-RPC.

use bdev::BdevError;

/// Errors of thin pool and volume management.
#[derive(Debug, thiserror::Error)]
pub enum ThinError {
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("the pool is in {0} mode")]
    Mode(&'static str),
    #[error(
        "the pool is out of metadata space: grow its metadata bdev, then bdev_thin_pool_resize"
    )]
    NoMetadataSpace,
    /// Refused to keep space for what exists (a limit the pool sets).
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("metadata: {0}")]
    Metadata(#[from] metadata::MetadataError),
    #[error(transparent)]
    Bdev(#[from] BdevError),
    #[error(transparent)]
    Reactor(#[from] reactor::ReactorError),
}

impl ThinError {
    /// The positive errno an SPDK method would answer with.
    pub fn errno(&self) -> i32 {
        match self {
            ThinError::Exists(_) => libc::EEXIST,
            ThinError::NotFound(_) => libc::ENODEV,
            ThinError::Invalid(_) => libc::EINVAL,
            ThinError::Busy(_) => libc::EBUSY,
            ThinError::Mode(_) => libc::EPERM,
            ThinError::NoMetadataSpace | ThinError::NoSpace(_) => libc::ENOSPC,
            ThinError::Io(_) | ThinError::Metadata(_) => libc::EIO,
            ThinError::Bdev(e) => e.errno(),
            ThinError::Reactor(_) => libc::EINVAL,
        }
    }
}
