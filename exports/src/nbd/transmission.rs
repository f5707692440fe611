//! The transmission phase of one connection, all on the connection's
//! reactor, in its task: requests are parsed from the receive buffer,
//! started on the bdev, and answered as they complete (in completion
//! order, whole messages only, batched into few writes).
//!
//! Plain reads, whole-block writes and flushes go straight to this core's
//! channel as pooled `IoBox`es whose completion callback is the
//! connection itself: no allocation per I/O once warm. Everything else
//! (partial blocks, trims, zeroes, a write that must wait for a range
//! lock) runs as a task through [`Export::run`].
//!
//! Each request holds a slot from admission until its reply has been
//! handed to the socket. Slots are bounded (256) and so are the payload
//! bytes they hold (64 MiB): when either is spent, the connection stops
//! reading its socket. A client that does not read its replies fills the
//! send buffer, its replies stay in their slots, and it stops being read;
//! only its own connection waits.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Poll, Waker};

use bdev::{IoBox, IoBuf, IoChannel, IoDone, IoStatus, IoType};
use reactor::sock;

use super::export::{errno, Command, Export, Outcome};
use super::handshake::Negotiated;
use super::proto::*;
use super::stream::{Rx, Wire, RX_BUF};
use crate::conn::{Closer, Park};

/// Requests in flight per connection (replies not yet handed to the
/// socket), and the READ/WRITE payload bytes they may hold: a client that
/// stops reading replies pins at most this much memory.
const MAX_INFLIGHT: usize = 256;
const MAX_INFLIGHT_BYTES: u64 = 64 << 20;

/// Read data up to this size is copied into the reply batch; larger reads
/// are written from their own buffer.
const COPY_LIMIT: usize = 128 << 10;

/// Replies are encoded until this many bytes wait for the socket.
const TX_BATCH: usize = 256 << 10;

/// Requests one pass reads before the task lets the rest of its reactor
/// run (a client that keeps its queue full cannot starve the others).
const READ_BUDGET: usize = 64;

/// Largest BLOCK_STATUS extent for our alignment (fits 32 bits).
const MAX_EXTENT: u64 = 0xFFFF_F000;

/// The NBD request header's size.
const HEADER: usize = 28;

enum Reply {
    /// Not answered yet.
    Pending,
    Done,
    Error(u32),
    Data(IoBuf),
    Status(Vec<(u32, u32)>),
}

struct Slot {
    cookie: u64,
    /// Where a read's data starts (a structured reply names it).
    offset: u64,
    /// Payload bytes counted against MAX_INFLIGHT_BYTES.
    bytes: u64,
    /// What a fast-path I/O does, for the error log.
    what: (&'static str, u64, u64),
    /// The range lock a fast-path write holds until it completes.
    lock: Option<u64>,
    /// A fast-path write whose client asked for FUA: a flush follows.
    fua: bool,
    reply: Reply,
}

/// A WRITE whose payload is still arriving.
struct Incoming {
    header: RequestHeader,
    slot: u16,
    data: IoBuf,
    filled: usize,
}

/// What receiving a write's payload came to.
enum Received {
    All,
    Waiting(Incoming),
    /// The client left halfway: the write never happens.
    CutOff,
}

/// Bytes on their way to the client: `buf[pos..]`, then `big` (a large
/// read reply's data, written from its own buffer after its header).
struct Tx {
    buf: Vec<u8>,
    pos: usize,
    big: Option<Big>,
}

struct Big {
    slot: u16,
    data: IoBuf,
    pos: usize,
}

impl Tx {
    fn is_empty(&self) -> bool {
        self.pos == self.buf.len() && self.big.is_none()
    }
}

/// Serves one negotiated connection until the client leaves, breaks the
/// protocol, or the connection is closed; every I/O it started has
/// finished (and been answered, unless the socket broke) when it returns.
pub(crate) async fn serve(wire: Wire, neg: Negotiated) {
    let Wire { sock, rx, closer } = wire;
    let Ok(ch) = neg.export.channel() else { return };
    // The task's own waker: completions wake it with this.
    let waker = poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
    let conn = Rc::new_cyclic(|me| Conn {
        me: me.clone(),
        export: neg.export,
        ch,
        structured: neg.structured,
        allocation: neg.allocation,
        block_sizes: neg.block_sizes,
        sock,
        closer,
        waker,
        rx: RefCell::new(rx),
        incoming: RefCell::new(None),
        tx: RefCell::new(Tx {
            // Grows (once) up to a batch plus its last reply.
            buf: Vec::with_capacity(64 << 10),
            pos: 0,
            big: None,
        }),
        slots: RefCell::new(Vec::new()),
        free: RefCell::new(Vec::with_capacity(MAX_INFLIGHT)),
        ready: RefCell::new(VecDeque::with_capacity(MAX_INFLIGHT)),
        inflight: Cell::new(0),
        inflight_bytes: Cell::new(0),
        reading: Cell::new(true),
        broken: Cell::new(false),
    });
    conn.run().await;
}

struct Conn {
    me: Weak<Conn>,
    export: Arc<Export>,
    ch: IoChannel,
    structured: bool,
    allocation: bool,
    /// The client agreed to our minimum block size: misaligned requests
    /// are errors. Otherwise they are served (partial blocks by
    /// read-modify-write).
    block_sizes: bool,
    sock: sock::Stream,
    closer: Arc<Closer>,
    waker: Waker,
    rx: RefCell<Rx>,
    incoming: RefCell<Option<Incoming>>,
    tx: RefCell<Tx>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u16>>,
    /// Slots whose reply is ready to send, in completion order.
    ready: RefCell<VecDeque<u16>>,
    inflight: Cell<usize>,
    inflight_bytes: Cell<u64>,
    /// Requests are still read (no end of stream, DISC, bad frame, close).
    reading: Cell<bool>,
    /// Replies can no longer be sent: they are dropped.
    broken: Cell<bool>,
}

impl Conn {
    async fn run(self: &Rc<Self>) {
        loop {
            if self.closer.is_closed() && !self.broken.get() {
                self.stop();
            }
            let more = match self.pump() {
                Ok(more) => more,
                Err(e) => {
                    tracing::debug!("nbd: connection error: {e}; closing");
                    self.stop();
                    false
                }
            };
            let drained = self.broken.get() || self.tx.borrow().is_empty();
            if !self.reading.get() && self.inflight.get() == 0 && drained {
                return;
            }
            if more {
                reactor::yield_now().await;
            } else {
                Park::default().await;
            }
        }
    }

    /// Shuts the socket: nothing more is read, replies still to come are
    /// dropped. The task ends when the I/O in flight has completed.
    fn stop(&self) {
        self.sock.shutdown();
        self.reading.set(false);
        self.broken.set(true);
        if let Some(inc) = self.incoming.borrow_mut().take() {
            self.release(inc.slot);
        }
        let big = {
            let mut tx = self.tx.borrow_mut();
            tx.buf.clear();
            tx.pos = 0;
            tx.big.take()
        };
        if let Some(b) = big {
            self.release(b.slot);
        }
        self.encode();
    }

    /// Moves replies to the socket and requests from it until neither
    /// moves; Ok(true) when it stopped on its budget with more to do.
    fn pump(self: &Rc<Self>) -> io::Result<bool> {
        for _ in 0..4 {
            let mut progress = self.encode();
            if !self.broken.get() {
                progress |= self.flush()?;
            }
            let (read, more) = self.read_requests()?;
            if more {
                return Ok(true);
            }
            if !(progress || read) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn wake(&self) {
        self.waker.wake_by_ref();
    }

    /// Room for one more request holding `bytes` (always, when nothing is
    /// in flight, so a maximal request cannot wait forever).
    fn has_room(&self, bytes: u64) -> bool {
        let n = self.inflight.get();
        n == 0 || (n < MAX_INFLIGHT && self.inflight_bytes.get() + bytes <= MAX_INFLIGHT_BYTES)
    }

    fn take_slot(&self, cookie: u64, bytes: u64) -> u16 {
        self.inflight.set(self.inflight.get() + 1);
        self.inflight_bytes.set(self.inflight_bytes.get() + bytes);
        let slot = Slot {
            cookie,
            offset: 0,
            bytes,
            what: ("", 0, 0),
            lock: None,
            fua: false,
            reply: Reply::Pending,
        };
        let mut slots = self.slots.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(i) => {
                slots[i as usize] = slot;
                i
            }
            None => {
                slots.push(slot);
                (slots.len() - 1) as u16
            }
        }
    }

    fn release(&self, i: u16) {
        let bytes = self.slots.borrow()[i as usize].bytes;
        self.inflight.set(self.inflight.get() - 1);
        self.inflight_bytes.set(self.inflight_bytes.get() - bytes);
        self.free.borrow_mut().push(i);
    }

    fn answer(&self, i: u16, reply: Reply) {
        self.slots.borrow_mut()[i as usize].reply = reply;
        self.ready.borrow_mut().push_back(i);
    }

    /// Encodes ready replies while the batch has room; false if none.
    fn encode(&self) -> bool {
        let mut any = false;
        loop {
            let mut tx = self.tx.borrow_mut();
            if tx.big.is_some() || tx.buf.len() - tx.pos >= TX_BATCH {
                return any;
            }
            let Some(i) = self.ready.borrow_mut().pop_front() else {
                return any;
            };
            any = true;
            let (cookie, offset, reply) = {
                let mut slots = self.slots.borrow_mut();
                let s = &mut slots[i as usize];
                (
                    s.cookie,
                    s.offset,
                    std::mem::replace(&mut s.reply, Reply::Pending),
                )
            };
            if self.broken.get() {
                drop(tx);
                self.release(i);
                continue;
            }
            let out = &mut tx.buf;
            match reply {
                Reply::Done => simple_reply(out, cookie, 0),
                // Only answered slots are queued; should one not be, the
                // client hears of a failure, not of a success.
                Reply::Pending => {
                    debug_assert!(false, "slot {i} queued unanswered");
                    simple_reply(out, cookie, EIO)
                }
                Reply::Error(error) if self.structured => {
                    chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, 6);
                    out.extend_from_slice(&error.to_be_bytes());
                    out.extend_from_slice(&0u16.to_be_bytes());
                }
                Reply::Error(error) => simple_reply(out, cookie, error),
                Reply::Data(data) => {
                    if self.structured {
                        let len = 8 + data.len() as u32;
                        chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, len);
                        out.extend_from_slice(&offset.to_be_bytes());
                    } else {
                        simple_reply(out, cookie, 0);
                    }
                    if data.len() > COPY_LIMIT {
                        // The slot stays taken until the data is written.
                        tx.big = Some(Big {
                            slot: i,
                            data,
                            pos: 0,
                        });
                        continue;
                    }
                    out.extend_from_slice(data.as_slice());
                }
                Reply::Status(extents) => {
                    let len = 4 + 8 * extents.len() as u32;
                    chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie, len);
                    out.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
                    for (l, f) in extents {
                        out.extend_from_slice(&l.to_be_bytes());
                        out.extend_from_slice(&f.to_be_bytes());
                    }
                }
            }
            drop(tx);
            self.release(i);
        }
    }

    /// Writes what the socket takes; false if it took nothing.
    fn flush(&self) -> io::Result<bool> {
        let mut progress = false;
        let mut tx = self.tx.borrow_mut();
        let tx = &mut *tx;
        loop {
            let head = tx.buf.len() - tx.pos;
            let r = match &tx.big {
                None if head == 0 => break,
                None => self.sock.write(&tx.buf[tx.pos..]),
                Some(b) => self.sock.write_vectored(&[
                    IoSlice::new(&tx.buf[tx.pos..]),
                    IoSlice::new(&b.data.as_slice()[b.pos..]),
                ]),
            };
            let n = match r {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            progress = true;
            let h = n.min(head);
            tx.pos += h;
            if let Some(b) = &mut tx.big {
                b.pos += n - h;
                if b.pos == b.data.len() {
                    let slot = b.slot;
                    tx.big = None;
                    self.release(slot);
                }
            }
        }
        if tx.pos == tx.buf.len() {
            tx.buf.clear();
            tx.pos = 0;
        } else if tx.pos >= TX_BATCH {
            tx.buf.drain(..tx.pos);
            tx.pos = 0;
        }
        Ok(progress)
    }

    /// Reads and starts requests while there is input and room. Returns
    /// whether it started any, and whether it stopped on its budget.
    fn read_requests(self: &Rc<Self>) -> io::Result<(bool, bool)> {
        let mut progress = false;
        let mut budget = READ_BUDGET;
        while self.reading.get() {
            if budget == 0 {
                return Ok((progress, true));
            }
            let inc = self.incoming.borrow_mut().take();
            if let Some(inc) = inc {
                match self.receive(inc)? {
                    Received::All => {
                        progress = true;
                        budget -= 1;
                        continue;
                    }
                    Received::Waiting(inc) => {
                        *self.incoming.borrow_mut() = Some(inc);
                        break;
                    }
                    Received::CutOff => break,
                }
            }
            let mut rx = self.rx.borrow_mut();
            let Some(hb) = rx.peek(HEADER) else {
                match rx.fill(&self.sock) {
                    Ok(0) => self.reading.set(false),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
                continue;
            };
            let mut b = [0u8; HEADER];
            b.copy_from_slice(hb);
            let Some(h) = RequestHeader::parse(&b) else {
                tracing::debug!("nbd: bad request magic; closing");
                self.reading.set(false);
                break;
            };
            if h.kind == CMD_DISC {
                self.reading.set(false);
                break;
            }
            if h.kind == CMD_WRITE && h.length > MAX_PAYLOAD {
                tracing::debug!("nbd: write of {} bytes; closing", h.length);
                self.reading.set(false);
                break;
            }
            let bytes = match h.kind {
                CMD_READ | CMD_WRITE => h.length.min(MAX_PAYLOAD) as u64,
                _ => 0,
            };
            if !self.has_room(bytes) {
                // Left in the buffer (and the socket) until replies drain.
                break;
            }
            rx.consume(HEADER);
            let slot = self.take_slot(h.cookie, bytes);
            progress = true;
            if h.kind == CMD_WRITE {
                let mut data = IoBuf::new(h.length as usize);
                let filled = rx.take_into(data.as_mut_slice());
                *self.incoming.borrow_mut() = Some(Incoming {
                    header: h,
                    slot,
                    data,
                    filled,
                });
                // Started at the top of the loop once it is all here.
                continue;
            }
            drop(rx);
            self.request(slot, &h, None);
            budget -= 1;
        }
        Ok((progress, false))
    }

    /// Reads a write's payload: what is buffered, then from the socket
    /// (straight into the payload when much is missing); starts the
    /// write when it is all here.
    fn receive(self: &Rc<Self>, mut inc: Incoming) -> io::Result<Received> {
        let len = inc.data.len();
        let mut rx = self.rx.borrow_mut();
        inc.filled += rx.take_into(&mut inc.data.as_mut_slice()[inc.filled..]);
        while inc.filled < len {
            let direct = len - inc.filled >= RX_BUF / 2;
            let r = if direct {
                self.sock.read(&mut inc.data.as_mut_slice()[inc.filled..])
            } else {
                rx.fill(&self.sock)
            };
            match r {
                Ok(0) => {
                    self.reading.set(false);
                    drop(rx);
                    self.release(inc.slot);
                    return Ok(Received::CutOff);
                }
                Ok(n) if direct => inc.filled += n,
                Ok(_) => inc.filled += rx.take_into(&mut inc.data.as_mut_slice()[inc.filled..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Received::Waiting(inc));
                }
                Err(e) => return Err(e),
            }
        }
        drop(rx);
        self.request(inc.slot, &inc.header, Some(inc.data));
        Ok(Received::All)
    }

    /// Answers or starts one request (its payload, for a write, all here).
    fn request(self: &Rc<Self>, slot: u16, h: &RequestHeader, payload: Option<IoBuf>) {
        if self.export.is_removed() {
            return self.answer(slot, Reply::Error(ESHUTDOWN));
        }
        if h.kind == CMD_READ {
            self.slots.borrow_mut()[slot as usize].offset = h.offset;
        }
        match self.check(h, payload) {
            Ok(Some(cmd)) => self.start(slot, cmd),
            Ok(None) => self.answer(slot, Reply::Done),
            Err(Early::Error(e)) => self.answer(slot, Reply::Error(e)),
            Err(Early::Status(extents)) => self.answer(slot, Reply::Status(extents)),
        }
    }

    /// Runs a command: plain reads, whole-block writes that get their
    /// range at once, and flushes with a completion callback; the rest as
    /// a task.
    fn start(self: &Rc<Self>, slot: u16, cmd: Command) {
        let bs = self.export.block_size() as u64;
        let whole = |offset: u64, len: u64| offset.is_multiple_of(bs) && len.is_multiple_of(bs);
        let what = cmd.describe();
        let (kind, first, blocks, buf) = match cmd {
            Command::Read { offset, len } if whole(offset, len as u64) => (
                IoType::Read,
                offset / bs,
                len as u64 / bs,
                Some(IoBuf::new(len as usize)),
            ),
            Command::Write { offset, data, fua } if whole(offset, data.len() as u64) => {
                let (first, end) = (offset / bs, (offset + data.len() as u64) / bs);
                let Some(id) = self.export.writing.try_lock(first, end, false) else {
                    return self.slow(slot, Command::Write { offset, data, fua });
                };
                let mut slots = self.slots.borrow_mut();
                let s = &mut slots[slot as usize];
                s.lock = Some(id);
                s.fua = fua && self.export.bdev.io_type_supported(IoType::Flush);
                (IoType::Write, first, end - first, Some(data))
            }
            Command::Flush => (IoType::Flush, 0, 0, None),
            cmd => return self.slow(slot, cmd),
        };
        self.slots.borrow_mut()[slot as usize].what = what;
        let mut io = IoBox::new();
        io.prep(kind, first, blocks);
        io.bufs.clear();
        io.bufs.extend(buf);
        self.ch.submit(io, self.clone(), slot as u64);
    }

    /// Runs a command as a task on this reactor (see [`Export::run`]).
    fn slow(self: &Rc<Self>, slot: u16, cmd: Command) {
        let conn = self.clone();
        reactor::spawn_local(async move {
            let reply = match conn.export.run(cmd).await {
                Outcome::Done => Reply::Done,
                Outcome::Data(data) => Reply::Data(data),
                Outcome::Error(error) => Reply::Error(error),
            };
            conn.answer(slot, reply);
            conn.wake();
        })
        .detach();
    }

    /// Turns a request into a command; Ok(None) is an immediate success.
    fn check(&self, h: &RequestHeader, payload: Option<IoBuf>) -> Result<Option<Command>, Early> {
        let e = &self.export;
        let (size, bs) = (e.size(), e.block_size() as u64);
        let known =
            CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;
        let allowed = CMD_FLAG_FUA
            | match h.kind {
                // DF is advertised (and valid) only with structured replies.
                CMD_READ if self.structured => CMD_FLAG_DF,
                CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
                _ => 0,
            };
        if h.flags & !known != 0 || h.flags & !allowed != 0 {
            return Err(Early::Error(EINVAL));
        }
        // A read-only export (NBD_FLAG_READ_ONLY) answers what would change
        // it with EPERM, as the protocol asks.
        if matches!(h.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) && e.read_only() {
            return Err(Early::Error(EPERM));
        }
        let (off, len) = (h.offset, h.length as u64);
        let end = off.checked_add(len);
        let in_range = end.is_some_and(|end| end <= size);
        // Misaligned requests are refused only from a client that agreed to
        // our minimum block size.
        let aligned = !self.block_sizes || (off % bs == 0 && len % bs == 0);
        let fua = h.flags & CMD_FLAG_FUA != 0;
        match h.kind {
            CMD_READ => {
                if !in_range || !aligned || h.length > MAX_PAYLOAD {
                    return Err(Early::Error(EINVAL));
                }
                Ok((len > 0).then_some(Command::Read {
                    offset: off,
                    len: h.length,
                }))
            }
            CMD_WRITE => {
                if !in_range {
                    return Err(Early::Error(ENOSPC));
                }
                if !aligned {
                    return Err(Early::Error(EINVAL));
                }
                match payload {
                    Some(data) if len > 0 => Ok(Some(Command::Write {
                        offset: off,
                        data,
                        fua,
                    })),
                    _ => Ok(None),
                }
            }
            CMD_FLUSH => {
                if e.bdev.io_type_supported(IoType::Flush) {
                    Ok(Some(Command::Flush))
                } else {
                    Ok(None)
                }
            }
            CMD_TRIM => {
                if !in_range {
                    return Err(Early::Error(EINVAL));
                }
                // Advisory: round inward to whole blocks.
                let start = off.div_ceil(bs) * bs;
                let stop = (off + len) / bs * bs;
                if stop <= start || !e.bdev.io_type_supported(IoType::Unmap) {
                    return Ok(None);
                }
                Ok(Some(Command::Trim {
                    offset: start,
                    len: (stop - start) as u32,
                    fua,
                }))
            }
            CMD_CACHE => Ok(None),
            CMD_WRITE_ZEROES => {
                if !in_range {
                    return Err(Early::Error(ENOSPC));
                }
                if !aligned {
                    return Err(Early::Error(EINVAL));
                }
                let no_hole = h.flags & CMD_FLAG_NO_HOLE != 0;
                let fast = h.flags & CMD_FLAG_FAST_ZERO != 0;
                // Partial blocks are read and written back: not fast.
                let whole = off % bs == 0 && len % bs == 0;
                if fast && (no_hole || !whole || !e.bdev.io_type_supported(IoType::WriteZeroes)) {
                    return Err(Early::Error(ENOTSUP));
                }
                Ok((len > 0).then_some(Command::Zero {
                    offset: off,
                    len: h.length,
                    fua,
                    no_hole,
                }))
            }
            CMD_BLOCK_STATUS => {
                if !self.structured || !self.allocation || len == 0 || !in_range || !aligned {
                    return Err(Early::Error(EINVAL));
                }
                let req_one = h.flags & CMD_FLAG_REQ_ONE != 0;
                Err(Early::Status(self.extents(off, len, req_one)))
            }
            _ => Err(Early::Error(EINVAL)),
        }
    }

    /// base:allocation extents for a range (see [`extents`]).
    fn extents(&self, off: u64, len: u64, req_one: bool) -> Vec<(u32, u32)> {
        let bs = self.export.block_size() as u64;
        let (first, last) = (off / bs, (off + len).div_ceil(bs));
        let runs = self.export.bdev.block_status(first, last - first);
        extents(&runs, bs, off, len, req_one)
    }
}

impl IoDone for Conn {
    /// A fast-path I/O of slot `ctx` completed: a FUA write goes on to
    /// its flush with the same I/O, anything else is answered.
    fn io_done(&self, mut io: IoBox, ctx: u64) {
        let slot = ctx as u16;
        let status = io.status();
        let kind = io.io_type();
        if kind == IoType::Write {
            let (lock, fua) = {
                let mut slots = self.slots.borrow_mut();
                let s = &mut slots[slot as usize];
                (s.lock.take(), std::mem::take(&mut s.fua))
            };
            if let Some(id) = lock {
                self.export.writing.unlock(id);
            }
            if status == IoStatus::Success && fua {
                if let Some(me) = self.me.upgrade() {
                    io.prep(IoType::Flush, 0, 0);
                    io.bufs.clear();
                    self.ch.submit(io, me, ctx);
                    return;
                }
            }
        }
        let reply = match status {
            IoStatus::Success if kind == IoType::Read => match io.bufs.pop() {
                Some(data) => Reply::Data(data),
                None => Reply::Error(EIO),
            },
            IoStatus::Success => Reply::Done,
            s => {
                let e = errno(s);
                let what = self.slots.borrow()[slot as usize].what;
                self.export.log_error(what, s, &format!("NBD error {e}"));
                Reply::Error(e)
            }
        };
        // Back to this core's pools, where it came from.
        drop(io);
        self.answer(slot, reply);
        self.wake();
    }
}

/// base:allocation extents from allocation runs (in blocks of `bs`) over
/// the blocks that `off..off + len` touches: unallocated is hole + zero.
/// A range that is not block-aligned (a client without block sizes) starts
/// its first extent at `off`; with REQ_ONE the one extent is no longer
/// than `len`.
fn extents(runs: &[(u64, bool)], bs: u64, off: u64, len: u64, req_one: bool) -> Vec<(u32, u32)> {
    // Bytes of the first block before `off`, to leave out.
    let mut skip = off % bs;
    let mut out = Vec::new();
    for &(blocks, allocated) in runs {
        let flags = if allocated {
            0
        } else {
            STATE_HOLE | STATE_ZERO
        };
        let mut bytes = blocks * bs - skip;
        skip = 0;
        while bytes > 0 {
            let n = bytes.min(MAX_EXTENT / bs * bs);
            if req_one {
                out.push((n.min(len) as u32, flags));
                return out;
            }
            out.push((n as u32, flags));
            bytes -= n;
        }
    }
    out
}

/// A request answered without running anything.
enum Early {
    Error(u32),
    Status(Vec<(u32, u32)>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_start_at_an_unaligned_offset() {
        const H: u32 = STATE_HOLE | STATE_ZERO;
        let runs = [(2, true), (3, false)];
        // Aligned: whole runs.
        assert_eq!(
            extents(&runs, 4096, 0, 5 * 4096, false),
            [(8192, 0), (12288, H)]
        );
        // From 512 into the first block; the last extent may run past the
        // request's end (to the end of its block), never past the blocks.
        assert_eq!(
            extents(&runs, 4096, 512, 5 * 4096 - 1024, false),
            [(8192 - 512, 0), (12288, H)]
        );
        // REQ_ONE: one extent, no longer than asked.
        assert_eq!(extents(&runs, 4096, 512, 1000, true), [(1000, 0)]);
        assert_eq!(extents(&runs, 4096, 512, 9000, true), [(7680, 0)]);
    }
}
