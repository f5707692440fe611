//! JSON-RPC 2.0 as SPDK speaks it: requests are found by parsing JSON values
//! back to back from the byte stream (no line or length framing; SPDK's
//! client sends indented JSON with no newline), validated strictly, and
//! answered with one compact object and a newline.

use serde_json::Value;

use bdev::rpc::RpcError;

mod duplicates;
pub use duplicates::{find_duplicate, Duplicate};

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;

/// The largest request we buffer: SPDK's receive buffer.
pub const MAX_REQUEST: usize = 256 << 10;

/// What the start of a receive buffer holds.
#[derive(Debug)]
pub enum Next {
    /// A complete JSON value, and how many bytes it used.
    Value(Value, usize),
    /// Only part of a value (or nothing): read more.
    Incomplete,
    /// Not JSON: answer a parse error and close.
    Garbage,
}

/// Parses the first JSON value in `buf` (leading whitespace skipped).
pub fn next_value(buf: &[u8]) -> Next {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match it.next() {
        None => Next::Incomplete,
        Some(Ok(v)) => Next::Value(v, it.byte_offset()),
        Some(Err(e)) if e.is_eof() => Next::Incomplete,
        Some(Err(_)) => Next::Garbage,
    }
}

/// One valid request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// None: a notification (a success is not answered).
    pub id: Option<Value>,
    pub method: String,
    pub params: Option<Value>,
}

/// Checks one request object the way SPDK does; an invalid one gets an
/// error answer with the id if we could read it.
pub fn validate(v: Value) -> Result<Request, (Value, RpcError)> {
    let invalid = |id: Value| (id, RpcError::new(INVALID_REQUEST, "Invalid request"));
    let Value::Object(mut o) = v else {
        return Err(invalid(Value::Null));
    };
    let id = o.remove("id").unwrap_or(Value::Null);
    if !matches!(id, Value::Null | Value::String(_) | Value::Number(_)) {
        return Err(invalid(Value::Null));
    }
    if o.keys()
        .any(|k| !matches!(k.as_str(), "jsonrpc" | "method" | "params"))
    {
        return Err(invalid(id));
    }
    if let Some(j) = o.get("jsonrpc") {
        if j != "2.0" {
            return Err(invalid(id));
        }
    }
    let params = match o.remove("params") {
        None | Some(Value::Null) => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => return Err(invalid(id)),
    };
    let method = match o.remove("method") {
        Some(Value::String(m)) => m,
        _ => return Err(invalid(id)),
    };
    Ok(Request {
        id: (!id.is_null()).then_some(id),
        method,
        params,
    })
}

/// The response object (compact; member order jsonrpc, id, result|error).
pub fn response(id: &Value, r: &Result<Value, RpcError>) -> String {
    let id = serde_json::to_string(id).unwrap_or_else(|_| "null".into());
    match r {
        Ok(v) => {
            let v = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{v}}}")
        }
        Err(e) => {
            let msg = serde_json::to_string(&e.message).unwrap_or_else(|_| "\"\"".into());
            format!(
                "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"error\":{{\"code\":{},\"message\":{msg}}}}}",
                e.code
            )
        }
    }
}

#[cfg(test)]
mod tests;
