//! What lvol calls fail with, and the JSON-RPC error SPDK's lvol module
//! answers each with (spdk-interfaces.md 2.4): its synchronous checks
//! answer the negative errno, its asynchronous steps -32602 (-32603 for
//! bdev_lvol_delete), both with the errno's strerror text.

use bdev::rpc::RpcError;
use thin::ThinError;

#[derive(Debug, thiserror::Error)]
pub enum LvolError {
    /// A check SPDK makes before it starts: code -errno.
    #[error("{}", strerror(*.0))]
    Now(i32),
    /// A failure SPDK reports from a completion callback.
    #[error("{}", strerror(*.0))]
    Later(i32),
    /// A code and message of SPDK's own wording.
    #[error("{1}")]
    Says(i32, String),
    #[error(transparent)]
    Thin(#[from] ThinError),
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
}

/// glibc's text for `errno`, as SPDK's spdk_strerror gives it.
pub fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl LvolError {
    /// The JSON-RPC error; `later` is the code asynchronous failures get.
    pub fn to_rpc(&self, later: i32) -> RpcError {
        match self {
            LvolError::Now(e) => RpcError::new(-e, strerror(*e)),
            LvolError::Later(e) => RpcError::new(later, strerror(*e)),
            LvolError::Says(code, msg) => RpcError::new(*code, msg.clone()),
            LvolError::Thin(t) => {
                // SPDK says only the errno; the log keeps what happened.
                tracing::warn!(error = %t, "lvol operation failed");
                RpcError::new(later, strerror(t.errno()))
            }
            LvolError::Table(t) => {
                tracing::warn!(error = %t, "lvol operation failed");
                RpcError::new(later, strerror(libc::EIO))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_texts_are_spdks() {
        let e = LvolError::Now(libc::EEXIST).to_rpc(-32602);
        assert_eq!((e.code, e.message.as_str()), (-17, "File exists"));
        let e = LvolError::Later(libc::ENOSPC).to_rpc(-32602);
        assert_eq!(
            (e.code, e.message.as_str()),
            (-32602, "No space left on device")
        );
        let e = LvolError::Later(libc::EPERM).to_rpc(-32603);
        assert_eq!(
            (e.code, e.message.as_str()),
            (-32603, "Operation not permitted")
        );
        let e = LvolError::Thin(ThinError::Busy("x".into())).to_rpc(-32602);
        assert_eq!(
            (e.code, e.message.as_str()),
            (-32602, "Device or resource busy")
        );
    }
}
