//! What every connection of every protocol shares: the handle other
//! threads use to close it ([`Closer`], kept in a [`ConnTable`] per
//! listener and per export), and [`Park`], how a connection's task sleeps
//! until one of its sources wakes it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

/// Who is on the other end of `s`, for the log: the TCP peer's address,
/// or the client's pid on a Unix socket (where there is no address).
pub fn peer_name(s: &reactor::sock::StdStream) -> String {
    use std::os::fd::AsRawFd;
    match s {
        reactor::sock::StdStream::Tcp(t) => t
            .peer_addr()
            .map_or_else(|_| "an unknown TCP peer".into(), |a| a.to_string()),
        reactor::sock::StdStream::Unix(u) => {
            let mut cred = libc::ucred {
                pid: 0,
                uid: 0,
                gid: 0,
            };
            let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
            // SAFETY: SO_PEERCRED fills at most `len` bytes of `cred`, a
            // live local of that size; the descriptor is `u`'s own.
            let rc = unsafe {
                libc::getsockopt(
                    u.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_PEERCRED,
                    (&mut cred as *mut libc::ucred).cast(),
                    &mut len,
                )
            };
            if rc == 0 {
                format!("pid {} on a Unix socket", cred.pid)
            } else {
                "a Unix socket client".into()
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Closes a connection from any thread: sets a flag and wakes the
/// connection's task, which shuts the socket and ends once its I/O has
/// finished.
#[derive(Default)]
pub struct Closer {
    closed: AtomicBool,
    waker: OnceLock<Waker>,
}

impl Closer {
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Pairs with the fence in `set_waker`: either the task sees the
        // flag after storing its waker, or we see the waker here.
        fence(Ordering::SeqCst);
        if let Some(w) = self.waker.get() {
            w.wake_by_ref();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The connection's task, woken by `close`; set once, before the
    /// task first checks the flag.
    pub fn set_waker(&self, w: &Waker) {
        let _ = self.waker.set(w.clone());
        fence(Ordering::SeqCst);
    }
}

/// Pending once, ready when polled again: a task that checks its
/// sources itself sleeps until one of them (a socket, a completion, its
/// closer) wakes it.
#[derive(Default)]
pub struct Park(bool);

impl Future for Park {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        Poll::Pending
    }
}

/// Connections by id, to close them all (a listener or an export stops).
#[derive(Default)]
pub struct ConnTable(Mutex<HashMap<u64, Arc<Closer>>>);

impl ConnTable {
    /// Adds a connection; the entry goes when the guard drops.
    pub fn enter(self: &Arc<Self>, id: u64, closer: Arc<Closer>) -> ConnEntry {
        lock(&self.0).insert(id, closer);
        ConnEntry {
            table: self.clone(),
            id,
        }
    }

    pub fn close_all(&self) {
        for c in lock(&self.0).values() {
            c.close();
        }
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.0).is_empty()
    }

    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

/// A connection's entry in a [`ConnTable`]: dropped when the connection
/// has ended (its I/O finished), or when its task never ran.
pub struct ConnEntry {
    table: Arc<ConnTable>,
    id: u64,
}

impl Drop for ConnEntry {
    fn drop(&mut self) {
        lock(&self.table.0).remove(&self.id);
    }
}
