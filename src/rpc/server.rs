//! The JSON-RPC server: a Unix socket (SPDK's lock-file protocol beside
//! it), one thread per connection. Requests on a connection run one after
//! another, each on the app reactor through the dispatcher; a slow method
//! holds up only its own client.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::Value;

use super::wire::{self, Next, Request};
use bdev::rpc::RpcError;

/// Runs one request; called on a connection's thread.
pub type Dispatch = Arc<dyn Fn(Request) -> Result<Value, RpcError> + Send + Sync>;

/// SPDK's connection limit; later clients wait in the backlog.
const MAX_CONNS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("RPC Unix domain socket path {0} in use. Specify another.")]
    InUse(PathBuf),
    #[error("RPC socket {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
}

type Conns = Arc<Mutex<HashMap<u64, (UnixStream, Option<JoinHandle<()>>)>>>;

pub struct RpcServer {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    stop: Arc<AtomicBool>,
    conns: Conns,
    accept: Option<JoinHandle<()>>,
}

impl RpcServer {
    /// Listens on `path`; a stale socket file is replaced, one that another
    /// live process holds the lock of is refused.
    pub fn start(path: &Path, dispatch: Dispatch) -> Result<RpcServer, ServerError> {
        let io = |e| ServerError::Io(path.to_path_buf(), e);
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(ServerError::InUse(path.to_path_buf()));
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Conns = Arc::default();
        let accept = {
            let (stop, conns) = (stop.clone(), conns.clone());
            std::thread::Builder::new()
                .name("rpc_accept".into())
                .spawn(move || accept_loop(listener, stop, conns, dispatch))
                .map_err(io)?
        };
        Ok(RpcServer {
            path: path.to_path_buf(),
            lock_path,
            _lock: lock,
            stop,
            conns,
            accept: Some(accept),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes every connection (a request already running
    /// finishes first), and removes the socket and lock files.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept call.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let conns: Vec<_> = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, (s, t)) in conns {
            let _ = s.shutdown(std::net::Shutdown::Both);
            if let Some(t) = t {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

fn accept_loop(listener: UnixListener, stop: Arc<AtomicBool>, conns: Conns, dispatch: Dispatch) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let Ok(stream) = stream else { continue };
        while conns.lock().unwrap_or_else(|e| e.into_inner()).len() >= MAX_CONNS {
            reap(&conns);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        reap(&conns);
        let Ok(keep) = stream.try_clone() else {
            continue;
        };
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let d = dispatch.clone();
        let t = std::thread::Builder::new()
            .name("rpc_conn".into())
            .spawn(move || serve(stream, d));
        match t {
            Ok(t) => {
                conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, (keep, Some(t)));
            }
            Err(e) => tracing::warn!("rpc: cannot start a connection thread: {e}"),
        }
    }
}

/// Forgets connections whose thread has ended.
fn reap(conns: &Conns) {
    let mut c = conns.lock().unwrap_or_else(|e| e.into_inner());
    let done: Vec<u64> = c
        .iter()
        .filter(|(_, (_, t))| t.as_ref().is_none_or(|t| t.is_finished()))
        .map(|(k, _)| *k)
        .collect();
    for k in done {
        if let Some((_, Some(t))) = c.remove(&k) {
            let _ = t.join();
        }
    }
}

/// One connection until the client closes it, a parse error, or a failed
/// write; then the connection is closed for both sides at once (the accept
/// loop keeps a clone of the stream for `stop`, so dropping this one alone
/// would leave the client waiting for an EOF until the next connection).
fn serve(mut s: UnixStream, dispatch: Dispatch) {
    let who = peer(&s);
    tracing::info!("rpc: client {who} connected");
    serve_requests(&mut s, dispatch);
    let _ = s.shutdown(std::net::Shutdown::Both);
    tracing::info!("rpc: client {who} disconnected");
}

/// The connecting process, as the kernel saw it ("pid 1234"), for the log.
fn peer(s: &UnixStream) -> String {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we
    // own and which is that size.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r == 0 {
        format!("pid {} uid {}", cred.pid, cred.uid)
    } else {
        "(unknown peer)".to_string()
    }
}

/// Parse values as they complete, answer each.
fn serve_requests(s: &mut UnixStream, dispatch: Dispatch) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match wire::next_value(&buf) {
                Next::Value(v, used) => {
                    let dup = wire::find_duplicate(&buf[..used]);
                    buf.drain(..used);
                    let out = match dup {
                        Some(d) => Some(refuse_duplicate(&v, d)),
                        None => handle(v, &dispatch),
                    };
                    if let Some(mut out) = out {
                        out.push('\n');
                        if s.write_all(out.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
                Next::Incomplete => break,
                Next::Garbage => {
                    // No way to resync a byte stream: answer, then close.
                    let e = RpcError::new(wire::PARSE_ERROR, "Parse error");
                    let mut out = wire::response(&Value::Null, &Err(e));
                    out.push('\n');
                    let _ = s.write_all(out.as_bytes());
                    return;
                }
            }
        }
        if buf.len() > wire::MAX_REQUEST {
            tracing::warn!(
                "rpc: request larger than {} bytes; closing",
                wire::MAX_REQUEST
            );
            return;
        }
    }
}

/// The answer to a request that repeats a key, as SPDK's strict decoder
/// refuses it: a repeated member of the request (or anything in a batch)
/// makes it an invalid request; one inside a single request's params, its
/// invalid params, with the request's id.
fn refuse_duplicate(v: &Value, d: wire::Duplicate) -> String {
    let single = v.is_object() && !d.in_request;
    let (id, e) = if single {
        let id = match v.get("id") {
            Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
            _ => Value::Null,
        };
        let msg = format!("Invalid parameters: duplicate key {:?}", d.key);
        (id, RpcError::invalid_params(msg))
    } else {
        let e = RpcError::new(wire::INVALID_REQUEST, "Invalid request");
        (Value::Null, e)
    };
    tracing::info!("rpc: refused a request with a duplicate key {:?}", d.key);
    wire::response(&id, &Err(e))
}

/// Answers one value: a request or a batch. None: nothing to send.
pub fn handle(v: Value, dispatch: &Dispatch) -> Option<String> {
    match v {
        Value::Array(items) if items.is_empty() => {
            let e = RpcError::new(wire::INVALID_REQUEST, "Invalid request");
            Some(wire::response(&Value::Null, &Err(e)))
        }
        Value::Array(items) => {
            let out: Vec<String> = items
                .into_iter()
                .filter_map(|v| handle_one(v, dispatch))
                .collect();
            (!out.is_empty()).then(|| format!("[{}]", out.join(",")))
        }
        v => handle_one(v, dispatch),
    }
}

fn handle_one(v: Value, dispatch: &Dispatch) -> Option<String> {
    match wire::validate(v) {
        Err((id, e)) => Some(wire::response(&id, &Err(e))),
        Ok(req) => {
            let id = req.id.clone();
            let r = dispatch(req);
            match (id, r) {
                (Some(id), r) => Some(wire::response(&id, &r)),
                (None, Ok(_)) => None,
                (None, Err(e)) => Some(wire::response(&Value::Null, &Err(e))),
            }
        }
    }
}
