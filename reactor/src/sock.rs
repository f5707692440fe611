//! Non-blocking sockets polled by the reactor, in the manner of SPDK's
//! lib/sock: TCP and Unix listeners and streams that live on one reactor
//! and never block it.
//!
//! Each reactor has one epoll instance, made when its first socket is
//! registered. Sockets are registered edge-triggered for input, output
//! and hang-up. A poller (also made with the first socket) asks epoll for
//! events without waiting, once per loop turn while the reactor has
//! sockets, records them in each socket's readiness flags and wakes the
//! task that waits on that socket. One syscall a turn serves every socket
//! of the reactor.
//!
//! A readiness flag is cleared only when a read or write meets EAGAIN.
//! So a user may stop reading (backpressure) with data still queued in
//! the kernel and come back later: the flag is still set, the next read
//! finds the data, and nobody waits for an edge that will not come. Reads
//! and writes with the flag clear return `WouldBlock` without a syscall.
//!
//! A parked reactor waits on its eventfd and on the epoll fd together
//! (`reactor.rs`), so a socket wakes it as a message does: an idle
//! reactor with open connections costs nothing, and a request to it is
//! seen at once.
//!
//! Sockets are not `Send`: they belong to the reactor that registered
//! them. To hand a connection to another reactor, send the std socket
//! (which is `Send`) and wrap it there.

use std::cell::{Cell, OnceCell, RefCell};
use std::future::poll_fn;
use std::io::{self, IoSlice, Read, Write};
use std::marker::PhantomData;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use crate::poller::{register_poller, PollStatus, Poller};
use crate::reactor::with_local;
use crate::ReactorError;

/// Events one poll takes from epoll at most; more wait for the next turn.
const EVENTS_PER_POLL: usize = 64;

/// What a socket is ready for, as the poller last saw it.
struct Readiness {
    readable: Cell<bool>,
    writable: Cell<bool>,
    /// The task to wake on any new readiness (one task per socket).
    waker: RefCell<Option<Waker>>,
}

impl Readiness {
    fn set_waker(&self, w: &Waker) {
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|old| old.will_wake(w)) {
            *slot = Some(w.clone());
        }
    }
}

struct Entry {
    /// Bumped each time the slot is reused, so an event fetched for a
    /// socket that closed in the same batch cannot reach its successor.
    generation: u32,
    ready: Weak<Readiness>,
}

/// One reactor's sockets: its epoll instance and what each key names.
#[derive(Default)]
pub(crate) struct Group {
    epoll: OnceCell<OwnedFd>,
    entries: RefCell<Vec<Entry>>,
    free: RefCell<Vec<u32>>,
    live: Cell<usize>,
    /// Reused by every poll, so polling allocates nothing.
    events: RefCell<Vec<libc::epoll_event>>,
    poller: RefCell<Option<Poller>>,
}

impl Group {
    /// The epoll fd, if this reactor ever had a socket: a parked reactor
    /// waits on it beside its eventfd.
    pub(crate) fn wait_fd(&self) -> Option<RawFd> {
        self.epoll.get().map(|fd| fd.as_raw_fd())
    }

    fn epoll_fd(&self) -> io::Result<RawFd> {
        if let Some(fd) = self.epoll.get() {
            return Ok(fd.as_raw_fd());
        }
        // SAFETY: epoll_create1 takes no pointers; a non-negative result
        // is a new descriptor nobody else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is ours.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = owned.as_raw_fd();
        let _ = self.epoll.set(owned);
        *self.events.borrow_mut() = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_POLL];
        Ok(raw)
    }

    fn add(&self, fd: RawFd, ready: &Rc<Readiness>) -> io::Result<u64> {
        let epfd = self.epoll_fd()?;
        let (index, generation) = {
            let mut entries = self.entries.borrow_mut();
            match self.free.borrow_mut().pop() {
                Some(i) => {
                    let e = &mut entries[i as usize];
                    e.generation = e.generation.wrapping_add(1);
                    e.ready = Rc::downgrade(ready);
                    (i, e.generation)
                }
                None => {
                    entries.push(Entry {
                        generation: 0,
                        ready: Rc::downgrade(ready),
                    });
                    ((entries.len() - 1) as u32, 0)
                }
            }
        };
        let key = (generation as u64) << 32 | index as u64;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: key,
        };
        // SAFETY: both descriptors are open; `ev` is a live local that
        // epoll_ctl only reads.
        if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            let e = io::Error::last_os_error();
            self.entries.borrow_mut()[index as usize].ready = Weak::new();
            self.free.borrow_mut().push(index);
            return Err(e);
        }
        self.live.set(self.live.get() + 1);
        if self.poller.borrow().is_none() {
            let p =
                register_poller(|| with_local(|l| l.sockets.poll()).unwrap_or(PollStatus::Idle));
            *self.poller.borrow_mut() = Some(p);
        }
        Ok(key)
    }

    fn remove(&self, key: u64, fd: RawFd) {
        if let Some(epfd) = self.epoll.get() {
            // SAFETY: both descriptors are still open (the socket closes
            // after its registration drops); a null event is allowed for
            // EPOLL_CTL_DEL since Linux 2.6.9.
            unsafe {
                libc::epoll_ctl(
                    epfd.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                )
            };
        }
        let index = key as u32;
        if let Some(e) = self.entries.borrow_mut().get_mut(index as usize) {
            e.ready = Weak::new();
            self.free.borrow_mut().push(index);
            self.live.set(self.live.get() - 1);
        }
    }

    /// Takes what epoll has without waiting and wakes the sockets' tasks.
    fn poll(&self) -> PollStatus {
        if self.live.get() == 0 {
            return PollStatus::Idle;
        }
        let Some(epfd) = self.wait_fd() else {
            return PollStatus::Idle;
        };
        let mut events = self.events.borrow_mut();
        // SAFETY: `events` holds EVENTS_PER_POLL initialised entries that
        // epoll_wait may overwrite; a zero timeout never blocks.
        let n = unsafe {
            libc::epoll_wait(epfd, events.as_mut_ptr(), EVENTS_PER_POLL as libc::c_int, 0)
        };
        if n <= 0 {
            return PollStatus::Idle;
        }
        for ev in &events[..n as usize] {
            let (key, bits) = (ev.u64, ev.events);
            let ready = {
                let entries = self.entries.borrow();
                match entries.get(key as u32 as usize) {
                    Some(e) if e.generation == (key >> 32) as u32 => e.ready.upgrade(),
                    _ => None,
                }
            };
            let Some(r) = ready else { continue };
            // A hang-up or error makes both directions "ready": the next
            // read sees the end of the stream, the next write the error.
            let broken = (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32;
            if bits & (libc::EPOLLIN as u32 | broken) != 0 {
                r.readable.set(true);
            }
            if bits & (libc::EPOLLOUT as u32 | broken) != 0 {
                r.writable.set(true);
            }
            let waker = r.waker.borrow().clone();
            if let Some(w) = waker {
                w.wake();
            }
        }
        PollStatus::Busy
    }
}

/// A socket's place in its reactor's group; leaves it on drop.
struct Registration {
    key: u64,
    fd: RawFd,
    ready: Rc<Readiness>,
    _not_send: PhantomData<*const ()>,
}

impl Registration {
    fn new(fd: RawFd) -> io::Result<Registration> {
        let ready = Rc::new(Readiness {
            // Assume both until the kernel says otherwise: the first
            // read or write finds out, and an edge that came before the
            // registration is not missed.
            readable: Cell::new(true),
            writable: Cell::new(true),
            waker: RefCell::new(None),
        });
        let key = with_local(|l| l.sockets.add(fd, &ready))
            .ok_or_else(|| io::Error::other(ReactorError::NotOnReactor))??;
        Ok(Registration {
            key,
            fd,
            ready,
            _not_send: PhantomData,
        })
    }

    /// Runs a non-blocking call, clearing `flag` when it meets EAGAIN and
    /// retrying on EINTR; with the flag clear it does not call at all.
    fn attempt<T>(&self, flag: &Cell<bool>, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        if !flag.get() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        loop {
            match f() {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    flag.set(false);
                    return Err(e);
                }
                r => return r,
            }
        }
    }

    fn poll_flag(&self, flag: &Cell<bool>, cx: &mut Context<'_>) -> Poll<()> {
        if flag.get() {
            return Poll::Ready(());
        }
        self.ready.set_waker(cx.waker());
        Poll::Pending
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = with_local(|l| l.sockets.remove(self.key, self.fd));
    }
}

/// A connected std socket, TCP or Unix: what crosses between threads.
#[derive(Debug)]
pub enum StdStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl From<TcpStream> for StdStream {
    fn from(s: TcpStream) -> Self {
        StdStream::Tcp(s)
    }
}

impl From<UnixStream> for StdStream {
    fn from(s: UnixStream) -> Self {
        StdStream::Unix(s)
    }
}

impl StdStream {
    fn raw_fd(&self) -> RawFd {
        match self {
            StdStream::Tcp(s) => s.as_raw_fd(),
            StdStream::Unix(s) => s.as_raw_fd(),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            StdStream::Tcp(s) => s.set_nonblocking(true),
            StdStream::Unix(s) => s.set_nonblocking(true),
        }
    }
}

/// A connected, non-blocking socket registered with the current reactor.
pub struct Stream {
    // Declared first so it drops first: the descriptor leaves epoll
    // before it is closed.
    reg: Registration,
    io: StdStream,
}

impl Stream {
    /// Makes `s` non-blocking and registers it with this reactor. Fails
    /// off a reactor thread.
    pub fn new(s: impl Into<StdStream>) -> io::Result<Stream> {
        let io = s.into();
        io.set_nonblocking()?;
        let reg = Registration::new(io.raw_fd())?;
        Ok(Stream { reg, io })
    }

    /// Reads what is there: `Ok(0)` is the end of the stream,
    /// `WouldBlock` means nothing yet.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.reg
            .attempt(&self.reg.ready.readable, || match &self.io {
                StdStream::Tcp(s) => (&*s).read(buf),
                StdStream::Unix(s) => (&*s).read(buf),
            })
    }

    /// Writes what fits; `WouldBlock` when nothing does.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// Writes what fits of `bufs`, in order, with one call.
    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.reg
            .attempt(&self.reg.ready.writable, || match &self.io {
                StdStream::Tcp(s) => (&*s).write_vectored(bufs),
                StdStream::Unix(s) => (&*s).write_vectored(bufs),
            })
    }

    /// Whether a read may find something (it was not seen to block since
    /// the last readiness event).
    pub fn is_readable(&self) -> bool {
        self.reg.ready.readable.get()
    }

    pub fn is_writable(&self) -> bool {
        self.reg.ready.writable.get()
    }

    /// Ready when a read may find something; otherwise wakes `cx`'s
    /// task on the next input event.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.reg.poll_flag(&self.reg.ready.readable, cx)
    }

    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.reg.poll_flag(&self.reg.ready.writable, cx)
    }

    pub async fn readable(&self) {
        poll_fn(|cx| self.poll_readable(cx)).await
    }

    pub async fn writable(&self) {
        poll_fn(|cx| self.poll_writable(cx)).await
    }

    /// Wakes `w` on every readiness event of this socket, for a task that
    /// checks the flags itself rather than await one direction.
    pub fn set_waker(&self, w: &Waker) {
        self.reg.ready.set_waker(w);
    }

    /// Ends both directions; the peer sees the end of the stream.
    pub fn shutdown(&self) {
        let _ = match &self.io {
            StdStream::Tcp(s) => s.shutdown(Shutdown::Both),
            StdStream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// The std socket under it (options such as TCP_NODELAY).
    pub fn get_ref(&self) -> &StdStream {
        &self.io
    }
}

/// A listening std socket, TCP or Unix.
#[derive(Debug)]
pub enum StdListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl From<TcpListener> for StdListener {
    fn from(l: TcpListener) -> Self {
        StdListener::Tcp(l)
    }
}

impl From<UnixListener> for StdListener {
    fn from(l: UnixListener) -> Self {
        StdListener::Unix(l)
    }
}

/// A non-blocking listener registered with the current reactor.
pub struct Listener {
    reg: Registration,
    io: StdListener,
}

impl Listener {
    /// Makes `l` non-blocking and registers it with this reactor. Fails
    /// off a reactor thread.
    pub fn new(l: impl Into<StdListener>) -> io::Result<Listener> {
        let io = l.into();
        let fd = match &io {
            StdListener::Tcp(l) => {
                l.set_nonblocking(true)?;
                l.as_raw_fd()
            }
            StdListener::Unix(l) => {
                l.set_nonblocking(true)?;
                l.as_raw_fd()
            }
        };
        let reg = Registration::new(fd)?;
        Ok(Listener { reg, io })
    }

    /// A waiting connection (still blocking, as std hands it out: wrap it
    /// in a [`Stream`] on the reactor that will serve it); `WouldBlock`
    /// when there is none.
    pub fn accept(&self) -> io::Result<StdStream> {
        self.reg
            .attempt(&self.reg.ready.readable, || match &self.io {
                StdListener::Tcp(l) => l.accept().map(|(s, _)| StdStream::Tcp(s)),
                StdListener::Unix(l) => l.accept().map(|(s, _)| StdStream::Unix(s)),
            })
    }

    /// Ready when a connection may be waiting.
    pub fn poll_acceptable(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.reg.poll_flag(&self.reg.ready.readable, cx)
    }

    /// Wakes `w` when a connection arrives (see [`Stream::set_waker`]).
    pub fn set_waker(&self, w: &Waker) {
        self.reg.ready.set_waker(w);
    }
}
