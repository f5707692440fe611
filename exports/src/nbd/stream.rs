//! A connection's socket as the NBD code sees it: a receive buffer over a
//! reactor socket (`Wire`), with async `read_exact`/`write_all` for the
//! handshake; and the handle other threads use to close a connection
//! (`Closer`, kept in a `ConnTable` per listener and per export).

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use reactor::sock;

/// Bytes read from the socket per call at most. Requests are parsed from
/// here, so one read takes many small requests at once; write payloads
/// larger than half of it are read straight into their own buffer.
pub const RX_BUF: usize = 64 << 10;

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// Bytes received and not consumed yet: `buf[start..end]`.
pub struct Rx {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Rx {
    pub fn new() -> Rx {
        Rx {
            buf: vec![0u8; RX_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The first `n` bytes, if that many are here.
    pub fn peek(&self, n: usize) -> Option<&[u8]> {
        (self.len() >= n).then(|| &self.buf[self.start..self.start + n])
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Moves up to `out.len()` buffered bytes into `out`; returns how many.
    pub fn take_into(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.consume(n);
        n
    }

    /// Reads from `s` into the free space (moving what is buffered to the
    /// front first when the tail is short). `Ok(0)`: the peer closed.
    pub fn fill(&mut self, s: &sock::Stream) -> io::Result<usize> {
        if self.start > 0 && self.buf.len() - self.end < RX_BUF / 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Callers fill only with less than a request header buffered, so
        // there is room: a zero-length read would look like the peer's end.
        debug_assert!(self.end < self.buf.len());
        let n = s.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }
}

impl Default for Rx {
    fn default() -> Self {
        Rx::new()
    }
}

/// A connection in its handshake: the socket, what was read ahead, and
/// the closer that may end it.
pub struct Wire {
    pub sock: sock::Stream,
    pub rx: Rx,
    pub closer: Arc<Closer>,
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the server",
    )
}

impl Wire {
    /// Waits until a read may succeed, or the connection is closed.
    async fn readable(&self) -> io::Result<()> {
        poll_fn(|cx| {
            if self.closer.is_closed() {
                return Poll::Ready(Err(aborted()));
            }
            self.sock.poll_readable(cx).map(Ok)
        })
        .await
    }

    async fn writable(&self) -> io::Result<()> {
        poll_fn(|cx| {
            if self.closer.is_closed() {
                return Poll::Ready(Err(aborted()));
            }
            self.sock.poll_writable(cx).map(Ok)
        })
        .await
    }

    /// Fills `out` from the buffer, then the socket.
    pub async fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut at = self.rx.take_into(out);
        while at < out.len() {
            match self.rx.fill(&self.sock) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => at += self.rx.take_into(&mut out[at..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads and drops `n` bytes.
    pub async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        loop {
            let k = (self.rx.len() as u64).min(n);
            self.rx.consume(k as usize);
            n -= k;
            if n == 0 {
                return Ok(());
            }
            match self.rx.fill(&self.sock) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable().await?,
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.sock.write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
