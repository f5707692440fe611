//! Listeners and the export table. Each listen address (TCP `HOST:PORT` or
//! a Unix socket path) has an accept thread and any number of exports by
//! name; each connection gets a thread for the handshake and reading, and
//! one for writing replies. A connection's I/O runs on one reactor, chosen
//! round-robin among the cores that are not a thin pool's metadata core.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bdev::rpc::RpcError;
use reactor::ReactorHandle;

use super::export::Export;
use super::handshake::{self, Exports};
use super::stream::Stream;

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
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// One row of `nbd_get_disks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub address: String,
    pub export_name: String,
    pub bdev_name: String,
}

pub struct NbdServer {
    reactors: ReactorHandle,
    next_core: AtomicUsize,
    listeners: Mutex<BTreeMap<String, Listener>>,
}

fn err(code: i32, msg: impl Into<String>) -> RpcError {
    RpcError::new(code, msg)
}

/// Parses a listen address: a socket path (starts with `/` or `.`), or
/// `HOST:PORT`. Kernel devices are SPDK's meaning and not ours.
fn parse_address(s: &str) -> Result<Addr, RpcError> {
    if s.starts_with("/dev/nbd") {
        return Err(err(
            -libc::EINVAL,
            format!("{s}: ferrothin serves NBD over a socket, not a kernel device; give HOST:PORT or a socket path"),
        ));
    }
    if s.starts_with('/') || s.starts_with('.') {
        return Ok(Addr::Unix(PathBuf::from(s)));
    }
    let a = s
        .to_socket_addrs()
        .map_err(|e| err(-libc::EINVAL, format!("bad listen address {s:?}: {e}")))?
        .next()
        .ok_or_else(|| err(-libc::EINVAL, format!("bad listen address {s:?}")))?;
    Ok(Addr::Tcp(a))
}

impl NbdServer {
    pub fn new(reactors: ReactorHandle) -> NbdServer {
        NbdServer {
            reactors,
            next_core: AtomicUsize::new(0),
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
    ) -> Result<String, RpcError> {
        self.reap_removed();
        let address = address.unwrap_or(DEFAULT_ADDRESS);
        let name = export_name.unwrap_or(bdev_name);
        if name.len() > 4096 {
            return Err(err(-libc::EINVAL, "export name longer than 4096 bytes"));
        }
        let addr = parse_address(address)?;
        let mut ls = lock(&self.listeners);
        let key = ls
            .iter()
            .find(|(k, l)| *k == address || same_addr(&l.addr, &addr))
            .map(|(k, _)| k.clone());
        if let Some(k) = &key {
            if lock(&ls[k].exports).contains_key(name) {
                return Err(err(
                    -libc::EEXIST,
                    format!("export {name:?} already exists at {k}"),
                ));
            }
        }
        let export = Export::open(bdev_name, name).map_err(|e| match e {
            bdev::BdevError::NotFound(_) => err(-libc::ENODEV, "No such device"),
            e => RpcError::from(e),
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
    pub fn stop_disk(&self, address: &str, export_name: Option<&str>) -> Result<(), RpcError> {
        let addr = parse_address(address)?;
        let (stopped, idle) = {
            let mut ls = lock(&self.listeners);
            let key = ls
                .iter()
                .find(|(k, l)| *k == address || same_addr(&l.addr, &addr))
                .map(|(k, _)| k.clone())
                .ok_or_else(|| err(-libc::ENODEV, format!("no NBD exports at {address}")))?;
            let mut ex = lock(&ls[&key].exports);
            let stopped: Vec<Arc<Export>> = match export_name {
                Some(n) => vec![ex
                    .remove(n)
                    .ok_or_else(|| err(-libc::ENODEV, format!("no export {n:?} at {address}")))?],
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

    /// Stops everything (daemon shutdown).
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
        while e.conn_count() > 0 {
            e.close_conns();
            std::thread::sleep(Duration::from_millis(2));
        }
        for core in self.reactors.cores() {
            let e2 = e.clone();
            let _ = self
                .reactors
                .block_on(core, move || async move { e2.forget_channel() });
        }
        e.close();
        tracing::info!("nbd: stopped export {:?}", e.name);
    }

    fn listen(&self, addr: Addr) -> Result<Listener, RpcError> {
        let busy = |e: std::io::Error| {
            err(
                -e.raw_os_error().unwrap_or(libc::EADDRINUSE),
                format!("cannot listen: {e}"),
            )
        };
        let exports: ExportMap = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let ctx = AcceptCtx {
            exports: exports.clone(),
            stop: stop.clone(),
            conns: conns.clone(),
            reactors: self.reactors.clone(),
            next_core: Arc::new(AtomicUsize::new(
                self.next_core.fetch_add(1, Ordering::Relaxed),
            )),
        };
        let (addr, accept) = match addr {
            Addr::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(busy)?;
                let a = l.local_addr().map_err(busy)?;
                let accept = move || {
                    let (s, _) = l.accept()?;
                    let _ = s.set_nodelay(true);
                    Ok(Stream::Tcp(s))
                };
                (Addr::Tcp(a), spawn_accept(ctx, accept).map_err(busy)?)
            }
            Addr::Unix(p) => {
                if std::os::unix::net::UnixStream::connect(&p).is_ok() {
                    return Err(err(
                        -libc::EADDRINUSE,
                        format!("{} is in use by a live server", p.display()),
                    ));
                }
                // Nobody answers: a stale socket file (a killed daemon's).
                let _ = std::fs::remove_file(&p);
                let l = UnixListener::bind(&p).map_err(busy)?;
                let accept = move || l.accept().map(|(s, _)| Stream::Unix(s));
                (Addr::Unix(p), spawn_accept(ctx, accept).map_err(busy)?)
            }
        };
        Ok(Listener {
            addr,
            exports,
            stop,
            accept: Some(accept),
            conns,
        })
    }
}

/// The accept loop of one listener, until it is told to stop (and woken).
fn spawn_accept(
    ctx: AcceptCtx,
    mut accept: impl FnMut() -> std::io::Result<Stream> + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("nbd_accept".into())
        .spawn(move || loop {
            let s = accept();
            if ctx.stop.load(Ordering::Acquire) {
                break;
            }
            match s {
                Ok(s) => ctx.connection(s),
                // Out of descriptors and the like: do not spin on it.
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        })
}

fn same_addr(a: &Addr, b: &Addr) -> bool {
    match (a, b) {
        (Addr::Tcp(x), Addr::Tcp(y)) => x == y,
        (Addr::Unix(x), Addr::Unix(y)) => x == y,
        _ => false,
    }
}

fn stop_listener(mut l: Listener) {
    l.stop.store(true, Ordering::Release);
    // Wake the accept call with a connection of our own.
    match &l.addr {
        Addr::Tcp(a) => {
            let _ = std::net::TcpStream::connect_timeout(a, Duration::from_secs(1));
        }
        Addr::Unix(p) => {
            let _ = std::os::unix::net::UnixStream::connect(p);
        }
    }
    if let Some(t) = l.accept.take() {
        let _ = t.join();
    }
    for t in std::mem::take(&mut *lock(&l.conns)) {
        let _ = t.join();
    }
    if let Addr::Unix(p) = &l.addr {
        let _ = std::fs::remove_file(p);
    }
}

struct AcceptCtx {
    exports: ExportMap,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    reactors: ReactorHandle,
    next_core: Arc<AtomicUsize>,
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
    fn connection(&self, mut s: Stream) {
        let view = View(self.exports.clone());
        let reactors = self.reactors.clone();
        let core = pick_core(&reactors, self.next_core.fetch_add(1, Ordering::Relaxed));
        let t = std::thread::Builder::new()
            .name("nbd_conn".into())
            .spawn(move || {
                // A client gets this long to finish the handshake; once
                // it transmits it may idle as long as it likes.
                if s.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).is_err() {
                    return;
                }
                let neg = match handshake::negotiate(&mut s, &view) {
                    Ok(Some(n)) => n,
                    Ok(None) | Err(_) => return,
                };
                if s.set_read_timeout(None).is_err() {
                    return;
                }
                let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
                let export = neg.export.clone();
                match s.try_clone() {
                    Ok(c) => export.add_conn(id, c),
                    Err(_) => return,
                }
                if !export.is_removed() {
                    super::transmission::serve(s, neg, reactors, core);
                }
                export.remove_conn(id);
            });
        let mut conns = lock(&self.conns);
        conns.retain(|t| !t.is_finished());
        match t {
            Ok(t) => conns.push(t),
            Err(e) => tracing::warn!("nbd: cannot start a connection thread: {e}"),
        }
    }
}

/// Round-robin over the cores that are no pool's metadata core (all cores
/// if every one is).
fn pick_core(reactors: &ReactorHandle, n: usize) -> u32 {
    let meta: Vec<u32> = bdev::modules::thin::pool_list()
        .iter()
        .map(|p| p.metadata_core())
        .collect();
    let all = reactors.cores();
    let io: Vec<u32> = all.iter().copied().filter(|c| !meta.contains(c)).collect();
    let pool = if io.is_empty() { &all } else { &io };
    pool[n % pool.len()]
}
