//! A small blocking JSON-RPC client for the daemon's Unix socket: one
//! connection per call, SPDK's framing (the answer is the first complete
//! JSON value).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

/// Calls `method` with `params` (None: no params) and returns its result.
pub fn call(sock: &Path, method: &str, params: Option<Value>) -> anyhow::Result<Value> {
    let mut s = UnixStream::connect(sock).with_context(|| {
        format!(
            "cannot reach the daemon at {} (is ferrothin tgt running? -r names its socket)",
            sock.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = json!({"jsonrpc": "2.0", "id": 1, "method": method});
    if let Some(p) = params {
        req["params"] = p;
    }
    s.write_all(req.to_string().as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = s.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "{method}: the daemon closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                if let Some(e) = v.get("error") {
                    anyhow::bail!("{method}: {} (code {})", e["message"], e["code"]);
                }
                return Ok(v["result"].clone());
            }
            Some(Err(e)) if e.is_eof() => continue,
            Some(Err(e)) => return Err(e).context(format!("{method}: a bad answer")),
            None => continue,
        }
    }
}
