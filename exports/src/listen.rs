//! Where connections are accepted and where they run, for every
//! protocol: an accept task on one reactor per listen address hands each
//! socket to a reactor chosen round-robin among the cores that bdev
//! modules do not keep for themselves ([`Placement`]).

use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use reactor::sock::{self, StdListener, StdStream};
use reactor::ReactorHandle;

use crate::conn::{Closer, Park};

/// Connections one turn of an accept task takes before it lets the rest
/// of its reactor run.
const ACCEPT_BUDGET: usize = 32;

/// The cores connections must not run on (a thin pool's metadata core),
/// asked afresh for each connection.
pub type ReservedCores = Arc<dyn Fn() -> Vec<u32> + Send + Sync>;

/// Picks the reactor of each new connection.
#[derive(Clone)]
pub struct Placement {
    pub reactors: ReactorHandle,
    reserved: ReservedCores,
    next_core: Arc<AtomicUsize>,
}

impl Placement {
    pub fn new(reactors: ReactorHandle, reserved: ReservedCores) -> Placement {
        Placement {
            reactors,
            reserved,
            next_core: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Round-robin over the cores that are not reserved (all cores if
    /// every one is).
    pub fn pick_core(&self) -> u32 {
        let n = self.next_core.fetch_add(1, Ordering::Relaxed);
        let reserved = (self.reserved)();
        let all = self.reactors.cores();
        let io: Vec<u32> = all
            .iter()
            .copied()
            .filter(|c| !reserved.contains(c))
            .collect();
        let pool = if io.is_empty() { &all } else { &io };
        pool[n % pool.len()]
    }

    /// Starts the accept task of `l` on a reactor: every connection goes
    /// to `on_conn` (on that reactor) until `closer` closes. The receiver
    /// disconnects once the task has ended and the socket is closed.
    pub fn accept(
        &self,
        l: StdListener,
        closer: Arc<Closer>,
        on_conn: impl FnMut(StdStream) + Send + 'static,
    ) -> Result<Receiver<()>, AcceptError> {
        let (done, ended) = std::sync::mpsc::channel();
        let core = self.pick_core();
        self.reactors
            .block_on(core, move || async move {
                let l = sock::Listener::new(l)?;
                reactor::spawn_local(accept_loop(l, closer, on_conn, done)).detach();
                Ok::<(), io::Error>(())
            })
            .map_err(AcceptError::Reactor)?
            .map_err(AcceptError::Socket)?;
        Ok(ended)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("reactor: {0}")]
    Reactor(reactor::ReactorError),
    #[error("cannot poll the listening socket: {0}")]
    Socket(io::Error),
}

/// The task's own waker, for sources that wake it with no future of
/// theirs to await (a closer, a socket whose flags it checks itself).
pub async fn own_waker() -> std::task::Waker {
    poll_fn(|cx| Poll::Ready(cx.waker().clone())).await
}

async fn accept_loop(
    l: sock::Listener,
    closer: Arc<Closer>,
    mut on_conn: impl FnMut(StdStream),
    _done: Sender<()>,
) {
    let waker = own_waker().await;
    l.set_waker(&waker);
    closer.set_waker(&waker);
    let mut budget = ACCEPT_BUDGET;
    while !closer.is_closed() {
        match l.accept() {
            Ok(s) => {
                if let StdStream::Tcp(t) = &s {
                    let _ = t.set_nodelay(true);
                }
                on_conn(s);
                budget -= 1;
                if budget == 0 {
                    budget = ACCEPT_BUDGET;
                    reactor::yield_now().await;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                budget = ACCEPT_BUDGET;
                Park::default().await;
            }
            Err(e) => {
                // Out of descriptors and the like: do not spin on it.
                tracing::debug!("accept: {e}");
                reactor::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
