//! I/O types and completion statuses.

use serde::Serialize;

/// The I/O types ferrothin bdevs know, in SPDK's JSON spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum IoType {
    Read = 0,
    Write = 1,
    Unmap = 2,
    Flush = 3,
    Reset = 4,
    WriteZeroes = 5,
}

pub const IO_TYPE_COUNT: usize = 6;

impl IoType {
    pub const ALL: [IoType; IO_TYPE_COUNT] = [
        IoType::Read,
        IoType::Write,
        IoType::Unmap,
        IoType::Flush,
        IoType::Reset,
        IoType::WriteZeroes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Unmap => "unmap",
            IoType::Flush => "flush",
            IoType::Reset => "reset",
            IoType::WriteZeroes => "write_zeroes",
        }
    }

    pub fn parse(s: &str) -> Option<IoType> {
        IoType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Whether this type changes data (refused on a read-only descriptor).
    pub fn is_write(self) -> bool {
        matches!(self, IoType::Write | IoType::Unmap | IoType::WriteZeroes)
    }

    /// Whether this type moves data through the I/O's buffers.
    pub fn has_data(self) -> bool {
        matches!(self, IoType::Read | IoType::Write)
    }

    /// This type as one bit of a set (a `u8` of types a module serves).
    #[inline]
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Why an I/O was refused before it reached a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Past the end of the bdev, or a length that overflows.
    OutOfRange,
    /// Not a multiple of the write unit, a zero length, or buffers that do
    /// not add up to the I/O length or are not sector multiples.
    Misaligned,
    /// The bdev does not support this I/O type.
    Unsupported,
    /// A write-type I/O on a read-only descriptor.
    ReadOnly,
}

/// How an I/O ended. Every I/O ends exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    /// Not completed yet.
    Pending,
    Success,
    /// The device failed it; the errno says how.
    IoError(i32),
    /// A thin pool is out of data space.
    NoSpace,
    /// A transient shortage in a module. The bdev layer retries the I/O
    /// itself; a submitter never sees this status.
    NoMem,
    Invalid(Invalid),
    /// Aborted by a reset.
    Aborted,
}

/// What an operator reads in a log: the errno's own words ("No space
/// left on device"), not a variant name and a number.
impl std::fmt::Display for IoStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoStatus::Pending => f.write_str("not completed"),
            IoStatus::Success => f.write_str("success"),
            IoStatus::IoError(e) => write!(f, "{}", std::io::Error::from_raw_os_error(e.abs())),
            IoStatus::NoSpace => f.write_str("the thin pool is out of data space"),
            IoStatus::NoMem => f.write_str("out of I/O resources"),
            IoStatus::Invalid(i) => write!(f, "invalid I/O ({i:?})"),
            IoStatus::Aborted => f.write_str("aborted by a reset"),
        }
    }
}

impl IoStatus {
    pub fn is_success(self) -> bool {
        self == IoStatus::Success
    }

    /// The negative errno SPDK would report for this status.
    pub fn errno(self) -> i32 {
        match self {
            IoStatus::Pending | IoStatus::Success => 0,
            IoStatus::IoError(e) => -e.abs(),
            IoStatus::NoSpace => -libc::ENOSPC,
            IoStatus::NoMem => -libc::ENOMEM,
            IoStatus::Invalid(Invalid::Unsupported) => -libc::ENOTSUP,
            IoStatus::Invalid(Invalid::ReadOnly) => -libc::EBADF,
            IoStatus::Invalid(_) => -libc::EINVAL,
            IoStatus::Aborted => -libc::ECANCELED,
        }
    }
}

#[cfg(test)]
mod display_tests {
    use super::IoStatus;

    #[test]
    fn an_errno_reads_as_its_words() {
        assert_eq!(
            IoStatus::IoError(28).to_string(),
            "No space left on device (os error 28)"
        );
        assert_eq!(
            IoStatus::IoError(-5).to_string(),
            "Input/output error (os error 5)"
        );
    }
}
