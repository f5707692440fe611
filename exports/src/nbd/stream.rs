//! A connection's socket as the NBD code sees it: a receive buffer over a
//! reactor socket (`Wire`), with async `read_exact`/`write_all` for the
//! handshake.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::Poll;

use reactor::sock;

use crate::conn::Closer;

/// Bytes read from the socket per call at most. Requests are parsed from
/// here, so one read takes many small requests at once; write payloads
/// larger than half of it are read straight into their own buffer.
pub const RX_BUF: usize = 64 << 10;

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
