//! Listeners and the export table. Each listen address (TCP `HOST:PORT` or
//! a Unix socket path) has any number of exports by name and an accept
//! task on one reactor. Each connection is a task on one reactor, chosen
//! round-robin among the cores the caller does not reserve: the handshake
//! (30 s at most), then the transmission phase.
//!
//! [`NbdServer`]'s methods are called from plain threads (the RPC
//! server's, the daemon's main thread), never from a reactor: stopping an
//! export or a listener waits for tasks on the reactors.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use reactor::sock::{self, StdListener, StdStream};
use reactor::ReactorHandle;

pub use crate::listen::ReservedCores;
use crate::listen::{own_waker, Placement};

use super::export::Export;
use super::handshake::{self, Exports};
use super::stream::{Rx, Wire};
use super::NbdError;
use crate::conn::{Closer, ConnEntry, ConnTable};

/// Where exports go when nbd_start_disk names no address.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:10809";

/// How long a client may take over the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

type ExportMap = Arc<Mutex<BTreeMap<String, Arc<Export>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

struct Listener {
    addr: Addr,
    exports: ExportMap,
    /// Ends the accept task.
    closer: Arc<Closer>,
    /// Disconnected once the accept task has ended (its end of the
    /// channel dropped).
    ended: Receiver<()>,
    /// Every connection accepted here, in its handshake or serving.
    conns: Arc<ConnTable>,
}

/// One row of `nbd_get_disks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub address: String,
    pub export_name: String,
    pub bdev_name: String,
}

pub struct NbdServer {
    place: Placement,
    listeners: Mutex<BTreeMap<String, Listener>>,
}

/// Parses a listen address: a socket path (starts with `/` or `.`), or
/// `HOST:PORT`. Kernel devices are SPDK's meaning and not ours.
fn parse_address(s: &str) -> Result<Addr, NbdError> {
    if s.starts_with("/dev/nbd") {
        return Err(NbdError::KernelDevice(s.to_string()));
    }
    if s.starts_with('/') || s.starts_with('.') {
        return Ok(Addr::Unix(PathBuf::from(s)));
    }
    let a = s
        .to_socket_addrs()
        .map_err(|e| NbdError::BadAddress(s.to_string(), format!(": {e}")))?
        .next()
        .ok_or_else(|| NbdError::BadAddress(s.to_string(), String::new()))?;
    Ok(Addr::Tcp(a))
}

impl NbdServer {
    /// A server whose connections run on `reactors`, never on the cores
    /// `reserved` names while any other is left.
    pub fn new(reactors: ReactorHandle, reserved: ReservedCores) -> NbdServer {
        NbdServer {
            place: Placement::new(reactors, reserved),
            listeners: Mutex::new(BTreeMap::new()),
        }
    }

    /// Exports `bdev_name` as `export_name` (default: the bdev name) at
    /// `address` (default 127.0.0.1:10809; port 0 picks one). Returns the
    /// address it listens on.
    pub fn start_disk(
        &self,
        bdev_name: &str,
        address: Option<&str>,
        export_name: Option<&str>,
    ) -> Result<String, NbdError> {
        self.reap_removed();
        let address = address.unwrap_or(DEFAULT_ADDRESS);
        let name = export_name.unwrap_or(bdev_name);
        if name.len() > 4096 {
            return Err(NbdError::NameTooLong);
        }
        let addr = parse_address(address)?;
        let mut ls = lock(&self.listeners);
        let key = ls
            .iter()
            .find(|(k, l)| *k == address || same_addr(&l.addr, &addr))
            .map(|(k, _)| k.clone());
        if let Some(k) = &key {
            if lock(&ls[k].exports).contains_key(name) {
                return Err(NbdError::Exists {
                    name: name.to_string(),
                    address: k.clone(),
                });
            }
        }
        let export = Export::open(bdev_name, name).map_err(|e| match e {
            bdev::BdevError::NotFound(_) => NbdError::NoSuchBdev,
            e => NbdError::Bdev(e),
        })?;
        let key = match key {
            Some(k) => k,
            None => {
                let l = self.listen(addr)?;
                let k = match &l.addr {
                    Addr::Tcp(a) => a.to_string(),
                    Addr::Unix(p) => p.display().to_string(),
                };
                ls.insert(k.clone(), l);
                k
            }
        };
        lock(&ls[&key].exports).insert(name.to_string(), export);
        tracing::info!("nbd: exporting {bdev_name} as {name:?} at {key}");
        Ok(key)
    }

    /// Stops the exports at `address` (all, or the one named). Open
    /// connections are closed once their I/O has finished.
    pub fn stop_disk(&self, address: &str, export_name: Option<&str>) -> Result<(), NbdError> {
        let addr = parse_address(address)?;
        let (stopped, idle) = {
            let mut ls = lock(&self.listeners);
            let key = ls
                .iter()
                .find(|(k, l)| *k == address || same_addr(&l.addr, &addr))
                .map(|(k, _)| k.clone())
                .ok_or_else(|| NbdError::NoExportsAt(address.to_string()))?;
            let mut ex = lock(&ls[&key].exports);
            let stopped: Vec<Arc<Export>> = match export_name {
                Some(n) => vec![ex.remove(n).ok_or_else(|| NbdError::NoSuchExport {
                    name: n.to_string(),
                    address: address.to_string(),
                })?],
                None => std::mem::take(&mut *ex).into_values().collect(),
            };
            let empty = ex.is_empty();
            drop(ex);
            let idle = if empty { ls.remove(&key) } else { None };
            (stopped, idle)
        };
        for e in stopped {
            self.stop_export(&e);
        }
        if let Some(l) = idle {
            stop_listener(l);
        }
        Ok(())
    }

    /// Every export, by address then name.
    pub fn disks(&self) -> Vec<Disk> {
        self.reap_removed();
        let ls = lock(&self.listeners);
        ls.iter()
            .flat_map(|(k, l)| {
                lock(&l.exports)
                    .values()
                    .map(|e| Disk {
                        address: k.clone(),
                        export_name: e.name.clone(),
                        bdev_name: e.bdev_name.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Stops everything (daemon shutdown); before the reactors stop.
    pub fn stop_all(&self) {
        let keys: Vec<String> = lock(&self.listeners).keys().cloned().collect();
        for k in keys {
            let _ = self.stop_disk(&k, None);
        }
    }

    /// Drops exports whose bdev was deleted under them.
    fn reap_removed(&self) {
        let gone: Vec<(String, String)> = {
            let ls = lock(&self.listeners);
            ls.iter()
                .flat_map(|(k, l)| {
                    lock(&l.exports)
                        .values()
                        .filter(|e| e.is_removed())
                        .map(|e| (k.clone(), e.name.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for (k, n) in gone {
            let _ = self.stop_disk(&k, Some(&n));
        }
    }

    fn stop_export(&self, e: &Arc<Export>) {
        e.removed.store(true, Ordering::Release);
        // Again each round: a connection that finished its handshake
        // meanwhile joins the table, sees `removed` and leaves.
        while e.conn_count() > 0 {
            e.close_conns();
            std::thread::sleep(Duration::from_millis(2));
        }
        e.close_everywhere(&self.place.reactors);
        tracing::info!("nbd: stopped export {:?}", e.name);
    }

    fn listen(&self, addr: Addr) -> Result<Listener, NbdError> {
        let (addr, l): (Addr, StdListener) = match addr {
            Addr::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(NbdError::Listen)?;
                let a = l.local_addr().map_err(NbdError::Listen)?;
                (Addr::Tcp(a), l.into())
            }
            Addr::Unix(p) => {
                if std::os::unix::net::UnixStream::connect(&p).is_ok() {
                    return Err(NbdError::InUse(p.display().to_string()));
                }
                // Nobody answers: a stale socket file (a killed daemon's).
                let _ = std::fs::remove_file(&p);
                let l = UnixListener::bind(&p).map_err(NbdError::Listen)?;
                (Addr::Unix(p), l.into())
            }
        };
        let exports: ExportMap = Arc::default();
        let closer = Arc::new(Closer::default());
        let conns: Arc<ConnTable> = Arc::default();
        let ctx = AcceptCtx {
            exports: exports.clone(),
            conns: conns.clone(),
            place: self.place.clone(),
        };
        let ended = match self
            .place
            .accept(l, closer.clone(), move |s| ctx.connection(s))
        {
            Ok(ended) => ended,
            Err(e) => {
                if let Addr::Unix(p) = &addr {
                    let _ = std::fs::remove_file(p);
                }
                return Err(NbdError::Accept(e));
            }
        };
        Ok(Listener {
            addr,
            exports,
            closer,
            ended,
            conns,
        })
    }
}

fn same_addr(a: &Addr, b: &Addr) -> bool {
    match (a, b) {
        (Addr::Tcp(x), Addr::Tcp(y)) => x == y,
        (Addr::Unix(x), Addr::Unix(y)) => x == y,
        _ => false,
    }
}

fn stop_listener(l: Listener) {
    l.closer.close();
    // Err once the accept task has dropped its sender: it has ended, and
    // its socket is closed.
    let _ = l.ended.recv();
    while !l.conns.is_empty() {
        l.conns.close_all();
        std::thread::sleep(Duration::from_millis(2));
    }
    if let Addr::Unix(p) = &l.addr {
        let _ = std::fs::remove_file(p);
    }
}

/// What an accept task needs to place a connection.
struct AcceptCtx {
    exports: ExportMap,
    conns: Arc<ConnTable>,
    place: Placement,
}

struct View(ExportMap);

impl Exports for View {
    fn find(&self, name: &str) -> Option<Arc<Export>> {
        let m = lock(&self.0);
        let live = |e: &&Arc<Export>| !e.is_removed();
        if name.is_empty() && m.len() == 1 {
            return m.values().find(live).cloned();
        }
        m.get(name).filter(live).cloned()
    }
    fn names(&self) -> Vec<String> {
        lock(&self.0)
            .values()
            .filter(|e| !e.is_removed())
            .map(|e| e.name.clone())
            .collect()
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

impl AcceptCtx {
    fn connection(&self, s: StdStream) {
        let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let closer = Arc::new(Closer::default());
        let entry = self.conns.enter(id, closer.clone());
        let view = View(self.exports.clone());
        let core = self.place.pick_core();
        // Refused only when the reactors are stopping: the closure, with
        // the socket and the entry, is dropped and the client sees EOF.
        let _ = self.place.reactors.send(core, move || {
            reactor::spawn_local(connection(s, view, closer, id, entry)).detach();
        });
    }
}

/// One connection, on its reactor: the handshake, then transmission. The
/// entry leaves the listener's table when this ends.
async fn connection(s: StdStream, view: View, closer: Arc<Closer>, id: u64, _entry: ConnEntry) {
    let peer = crate::conn::peer_name(&s);
    let sock = match sock::Stream::new(s) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("nbd: cannot serve a connection: {e}");
            return;
        }
    };
    let waker = own_waker().await;
    sock.set_waker(&waker);
    closer.set_waker(&waker);
    let mut wire = Wire {
        sock,
        rx: Rx::new(),
        closer: closer.clone(),
    };
    let neg =
        match reactor::timeout(HANDSHAKE_TIMEOUT, handshake::negotiate(&mut wire, &view)).await {
            Some(Ok(Some(n))) => n,
            Some(Ok(None)) => {
                tracing::debug!("nbd: {peer} left during the handshake");
                return;
            }
            Some(Err(e)) => {
                tracing::info!("nbd: handshake with {peer} failed: {e}");
                return;
            }
            None => {
                tracing::info!(
                    "nbd: {peer} did not finish its handshake in {HANDSHAKE_TIMEOUT:?}; closing"
                );
                return;
            }
        };
    let export = neg.export.clone();
    let _in_export = export.add_conn(id, closer.clone());
    if export.is_removed() || closer.is_closed() {
        return;
    }
    tracing::info!(
        "nbd: {peer} connected to export {:?} (bdev {}, connection {id})",
        export.name,
        export.bdev_name
    );
    super::transmission::serve(wire, neg).await;
    tracing::info!(
        "nbd: {peer} disconnected from export {:?} (connection {id})",
        export.name
    );
}
