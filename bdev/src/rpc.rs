//! The bdev modules' JSON-RPC methods, as one table. Each module's methods
//! live beside it (`modules/<name>/rpc.rs`); this file only lists them and
//! holds the shared decoding and error shape (SPDK's).

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::modules::{delay, error, malloc, null, uring};
use crate::BdevError;

/// A JSON-RPC error object: SPDK answers bdev failures with the negative
/// errno as the code and the errno's text as the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;
pub const METHOD_NOT_FOUND: i32 = -32601;

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }
}

impl From<BdevError> for RpcError {
    fn from(e: BdevError) -> Self {
        RpcError::new(-e.errno(), e.to_string())
    }
}

pub type RpcResult = Result<Value, RpcError>;
pub type RpcHandler = fn(Option<Value>) -> RpcResult;

/// Decodes `params` into `T`; missing params decode as `{}`. A failure is
/// SPDK's answer for bdev-module methods: -32603 "spdk_json_decode_object
/// failed" (we add what was wrong).
pub fn decode<T: DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    decode_with(params, INTERNAL_ERROR)
}

/// `decode` answering with `code` (the error module says -32602).
pub fn decode_with<T: DeserializeOwned>(params: Option<Value>, code: i32) -> Result<T, RpcError> {
    let v = params.unwrap_or_else(|| Value::Object(Default::default()));
    serde_json::from_value(v)
        .map_err(|e| RpcError::new(code, format!("spdk_json_decode_object failed: {e}")))
}

/// Every method the bdev modules serve.
pub fn methods() -> Vec<(&'static str, RpcHandler)> {
    let mut m = vec![
        ("bdev_set_options", accept_options as RpcHandler),
        ("bdev_wait_for_examine", accept_options),
    ];
    m.extend_from_slice(malloc::rpc::METHODS);
    m.extend_from_slice(null::rpc::METHODS);
    m.extend_from_slice(uring::rpc::METHODS);
    m.extend_from_slice(error::rpc::METHODS);
    m.extend_from_slice(delay::rpc::METHODS);
    m.extend_from_slice(crate::info::METHODS);
    m.extend_from_slice(crate::notify::METHODS);
    m
}

/// Runs one method.
pub fn call(method: &str, params: Option<Value>) -> RpcResult {
    match methods().into_iter().find(|(n, _)| *n == method) {
        Some((_, f)) => f(params),
        None => Err(RpcError::new(METHOD_NOT_FOUND, "Method not found")),
    }
}

/// Options we take but do not need (our pools size themselves): accepted so
/// that configs written for SPDK load unchanged.
fn accept_options(params: Option<Value>) -> RpcResult {
    match params {
        None | Some(Value::Object(_)) => Ok(Value::Bool(true)),
        Some(_) => Err(RpcError::invalid_params("params must be an object")),
    }
}
