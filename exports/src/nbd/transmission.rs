//! The transmission phase of one connection: a reader thread that checks
//! requests and hands them to a reactor, and a writer thread that sends
//! replies as they complete (in completion order, whole messages only).
//! The two share a bounded credit count, so a client that stops reading
//! replies stops being read, and nothing else waits for it.

use std::io::{Read, Write};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};

use bdev::{IoBuf, IoType};
use reactor::ReactorHandle;

use super::export::{Command, Export, Outcome};
use super::handshake::Negotiated;
use super::proto::*;
use super::stream::Stream;

/// Requests in flight per connection (replies not yet written), and the
/// READ/WRITE payload bytes they may hold: a client that stops reading
/// replies pins at most this much memory.
const MAX_INFLIGHT: usize = 256;
const MAX_INFLIGHT_BYTES: u64 = 64 << 20;

/// Read data up to this size is copied into the reply batch; larger reads
/// are written from their own buffer.
const COPY_LIMIT: usize = 128 << 10;

/// Largest BLOCK_STATUS extent for our alignment (fits 32 bits).
const MAX_EXTENT: u64 = 0xFFFF_F000;

enum Reply {
    Done {
        cookie: u64,
    },
    Error {
        cookie: u64,
        error: u32,
    },
    Data {
        cookie: u64,
        offset: u64,
        data: IoBuf,
    },
    Status {
        cookie: u64,
        extents: Vec<(u32, u32)>,
    },
}

/// Requests and payload bytes in flight.
#[derive(Default)]
struct Credits {
    used: Mutex<(usize, u64)>,
    cv: Condvar,
}

impl Credits {
    /// Waits for room for one request holding `bytes` (always granted
    /// when nothing is in flight, so a maximal request cannot wait forever).
    fn acquire(&self, bytes: u64) {
        let mut u = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while u.0 >= MAX_INFLIGHT || (u.0 > 0 && u.1 + bytes > MAX_INFLIGHT_BYTES) {
            u = self.cv.wait(u).unwrap_or_else(|e| e.into_inner());
        }
        u.0 += 1;
        u.1 += bytes;
    }
    fn release(&self, n: usize, bytes: u64) {
        let mut u = self.used.lock().unwrap_or_else(|e| e.into_inner());
        u.0 -= n;
        u.1 -= bytes;
        self.cv.notify_all();
    }
    fn wait_idle(&self) {
        let mut u = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while u.0 > 0 {
            u = self.cv.wait(u).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A reply on its way to the writer, with the payload bytes its request
/// was granted.
struct Out {
    reply: Reply,
    bytes: u64,
}

/// Serves one negotiated connection until the client leaves, breaks the
/// protocol, or the socket is shut down; every I/O it started has finished
/// and been answered (or dropped, if the socket broke) when it returns.
pub fn serve(mut s: Stream, neg: Negotiated, reactors: ReactorHandle, core: u32) {
    let Ok(ws) = s.try_clone() else { return };
    let credits = Arc::new(Credits::default());
    let (tx, rx) = mpsc::channel::<Out>();
    let writer = {
        let credits = credits.clone();
        let structured = neg.structured;
        std::thread::Builder::new()
            .name("nbd_writer".into())
            .spawn(move || write_replies(ws, rx, structured, &credits))
    };
    let Ok(writer) = writer else { return };
    let c = Conn {
        export: neg.export,
        structured: neg.structured,
        allocation: neg.allocation,
        block_sizes: neg.block_sizes,
        reactors,
        core,
        tx,
        credits: credits.clone(),
    };
    while c.next(&mut s) {}
    credits.wait_idle();
    drop(c);
    let _ = writer.join();
}

struct Conn {
    export: Arc<Export>,
    structured: bool,
    allocation: bool,
    /// The client agreed to our minimum block size: misaligned requests
    /// are errors. Otherwise they are served (partial blocks by
    /// read-modify-write).
    block_sizes: bool,
    reactors: ReactorHandle,
    core: u32,
    tx: Sender<Out>,
    credits: Arc<Credits>,
}

impl Conn {
    fn reply(&self, reply: Reply) {
        self.credits.acquire(0);
        let _ = self.tx.send(Out { reply, bytes: 0 });
    }

    fn error(&self, cookie: u64, error: u32) {
        self.reply(Reply::Error { cookie, error });
    }

    /// Reads and starts one request; false ends the connection.
    fn next(&self, s: &mut Stream) -> bool {
        let mut hb = [0u8; 28];
        if s.read_exact(&mut hb).is_err() {
            return false;
        }
        let Some(h) = RequestHeader::parse(&hb) else {
            tracing::debug!("nbd: bad request magic; closing");
            return false;
        };
        let payload = if h.kind == CMD_WRITE {
            if h.length > MAX_PAYLOAD {
                tracing::debug!("nbd: write of {} bytes; closing", h.length);
                return false;
            }
            let mut b = IoBuf::new(h.length as usize);
            if s.read_exact(b.as_mut_slice()).is_err() {
                return false;
            }
            Some(b)
        } else {
            None
        };
        if h.kind == CMD_DISC {
            return false;
        }
        if self.export.is_removed() {
            self.error(h.cookie, ESHUTDOWN);
            return true;
        }
        match self.check(&h, payload) {
            Ok(Some(cmd)) => self.submit(h.cookie, cmd),
            Ok(None) => self.reply(Reply::Done { cookie: h.cookie }),
            Err(Early::Error(e)) => self.error(h.cookie, e),
            Err(Early::Status(extents)) => self.reply(Reply::Status {
                cookie: h.cookie,
                extents,
            }),
        }
        true
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

    fn submit(&self, cookie: u64, cmd: Command) {
        let (offset, bytes) = match &cmd {
            Command::Read { offset, len } => (*offset, *len as u64),
            Command::Write { data, .. } => (0, data.len() as u64),
            _ => (0, 0),
        };
        self.credits.acquire(bytes);
        let (export, tx) = (self.export.clone(), self.tx.clone());
        let sent = self.reactors.spawn_on(self.core, move || async move {
            let r = match export.run(cmd).await {
                Outcome::Done => Reply::Done { cookie },
                Outcome::Data(data) => Reply::Data {
                    cookie,
                    offset,
                    data,
                },
                Outcome::Error(error) => Reply::Error { cookie, error },
            };
            let _ = tx.send(Out { reply: r, bytes });
        });
        if sent.is_err() {
            let reply = Reply::Error {
                cookie,
                error: ESHUTDOWN,
            };
            let _ = self.tx.send(Out { reply, bytes });
        }
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

fn write_replies(mut s: Stream, rx: Receiver<Out>, structured: bool, credits: &Credits) {
    let mut out: Vec<u8> = Vec::with_capacity(256 << 10);
    let mut broken = false;
    while let Ok(first) = rx.recv() {
        let (mut n, mut bytes) = (0, 0);
        let mut next = Some(first);
        while let Some(o) = next {
            n += 1;
            bytes += o.bytes;
            if !broken && encode(&mut s, &mut out, o.reply, structured).is_err() {
                broken = true;
            }
            next = if out.len() < (256 << 10) {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !broken && !out.is_empty() && s.write_all(&out).is_err() {
            broken = true;
        }
        if broken {
            // The client is gone: stop its reader too.
            s.shutdown();
        }
        out.clear();
        credits.release(n, bytes);
    }
}

fn encode(s: &mut Stream, out: &mut Vec<u8>, r: Reply, structured: bool) -> std::io::Result<()> {
    match r {
        Reply::Done { cookie } => simple_reply(out, cookie, 0),
        Reply::Error { cookie, error } if structured => {
            chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, 6);
            out.extend_from_slice(&error.to_be_bytes());
            out.extend_from_slice(&0u16.to_be_bytes());
        }
        Reply::Error { cookie, error } => simple_reply(out, cookie, error),
        Reply::Data {
            cookie,
            offset,
            data,
        } => {
            if structured {
                let len = 8 + data.len() as u32;
                chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, len);
                out.extend_from_slice(&offset.to_be_bytes());
            } else {
                simple_reply(out, cookie, 0);
            }
            if data.len() <= COPY_LIMIT {
                out.extend_from_slice(data.as_slice());
            } else {
                s.write_all(out)?;
                out.clear();
                s.write_all(data.as_slice())?;
            }
        }
        Reply::Status { cookie, extents } => {
            let len = 4 + 8 * extents.len() as u32;
            chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie, len);
            out.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
            for (l, f) in extents {
                out.extend_from_slice(&l.to_be_bytes());
                out.extend_from_slice(&f.to_be_bytes());
            }
        }
    }
    Ok(())
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
