//! An export: one bdev opened for NBD clients under a name at an address.
//! Its I/O runs on reactors through per-core channels that the export
//! caches on each core; the connection threads only move bytes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bdev::{Bdev, BdevEvent, Descriptor, IoBuf, IoChannel, IoStatus, IoType};

use super::proto::*;
use super::stream::Stream;

pub struct Export {
    pub id: u64,
    pub name: String,
    pub bdev_name: String,
    pub bdev: Arc<Bdev>,
    desc: Mutex<Option<Descriptor>>,
    /// The bdev went away (deleted): connections are closed, new ones refused.
    pub removed: Arc<AtomicBool>,
    /// Open connections, to close them when the export stops.
    conns: Mutex<HashMap<u64, Stream>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This core's channel per export id.
    static CHANNELS: RefCell<HashMap<u64, IoChannel>> = RefCell::new(HashMap::new());
}

impl Export {
    /// Opens `bdev_name` read-write. A claimed bdev (a pool's base) is
    /// refused, as SPDK refuses a read-write open of it.
    pub fn open(bdev_name: &str, name: &str) -> Result<Arc<Export>, bdev::BdevError> {
        let removed = Arc::new(AtomicBool::new(false));
        let flag = removed.clone();
        let event: bdev::EventFn = Box::new(move |e| {
            if e == BdevEvent::Remove {
                flag.store(true, Ordering::Release);
            }
        });
        let desc = bdev::open(bdev_name, true, Some(event))?;
        if let Some(m) = desc.bdev().claimed_by() {
            return Err(bdev::BdevError::Claimed(bdev_name.to_string(), m));
        }
        Ok(Arc::new(Export {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            bdev_name: desc.bdev().name().to_string(),
            bdev: desc.bdev().clone(),
            desc: Mutex::new(Some(desc)),
            removed,
            conns: Mutex::new(HashMap::new()),
        }))
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn size(&self) -> u64 {
        self.bdev.size_bytes()
    }

    pub fn block_size(&self) -> u32 {
        self.bdev.block_size()
    }

    /// NBD transmission flags for this export.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = TF_HAS_FLAGS
            | TF_SEND_FLUSH
            | TF_SEND_FUA
            | TF_SEND_WRITE_ZEROES
            | TF_SEND_FAST_ZERO
            | TF_CAN_MULTI_CONN
            | TF_SEND_CACHE;
        if self.bdev.io_type_supported(IoType::Unmap) {
            f |= TF_SEND_TRIM;
        }
        if structured {
            f |= TF_SEND_DF;
        }
        f
    }

    pub fn add_conn(&self, id: u64, s: Stream) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, s);
    }

    pub fn remove_conn(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Closes every connection's socket; their threads end on their own.
    pub fn close_conns(&self) {
        for s in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            s.shutdown();
        }
    }

    pub fn conn_count(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// This core's channel (on a reactor).
    fn channel(&self) -> Result<IoChannel, IoStatus> {
        if let Some(ch) = CHANNELS.with(|c| c.borrow().get(&self.id).cloned()) {
            return Ok(ch);
        }
        let desc = self.desc.lock().unwrap_or_else(|e| e.into_inner());
        let ch = desc
            .as_ref()
            .ok_or(IoStatus::IoError(libc::ENODEV))?
            .io_channel()
            .map_err(|_| IoStatus::IoError(libc::ENODEV))?;
        CHANNELS.with(|c| c.borrow_mut().insert(self.id, ch.clone()));
        Ok(ch)
    }

    /// Drops this core's channel (on a reactor, when the export stops).
    pub fn forget_channel(&self) {
        CHANNELS.with(|c| c.borrow_mut().remove(&self.id));
    }

    /// Closes the bdev (after every core forgot its channel).
    pub fn close(&self) {
        self.desc.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// A checked command, ready to run on a reactor.
pub enum Command {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        data: IoBuf,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Zero {
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    },
}

/// What a command produced.
pub enum Outcome {
    Done,
    Data(IoBuf),
    Error(u32),
}

fn errno(s: IoStatus) -> u32 {
    match s {
        IoStatus::NoSpace => ENOSPC,
        IoStatus::IoError(e) if e == libc::ENOSPC => ENOSPC,
        IoStatus::IoError(e) if e == libc::EPERM || e == libc::EROFS => EPERM,
        IoStatus::Invalid(_) => EINVAL,
        _ => EIO,
    }
}

/// Zeroes are written from a buffer of this size at most per I/O.
const ZERO_CHUNK: u64 = 1 << 20;

impl Export {
    /// Runs `cmd` on this reactor.
    pub async fn run(&self, cmd: Command) -> Outcome {
        let ch = match self.channel() {
            Ok(ch) => ch,
            Err(s) => return Outcome::Error(errno(s)),
        };
        let bs = self.block_size() as u64;
        let r = match cmd {
            Command::Read { offset, len } => {
                return match ch.read(offset / bs, len as u64 / bs).await {
                    Ok(buf) => Outcome::Data(buf),
                    Err(s) => Outcome::Error(errno(s)),
                }
            }
            Command::Write { offset, data, fua } => {
                let r = ch.write(offset / bs, data).await;
                self.then_flush(&ch, r, fua).await
            }
            Command::Flush => ch.flush().await,
            Command::Trim { offset, len, fua } => {
                let r = ch.unmap(offset / bs, len as u64 / bs).await;
                self.then_flush(&ch, r, fua).await
            }
            Command::Zero {
                offset,
                len,
                fua,
                no_hole,
            } => {
                let r = self.zero(&ch, offset / bs, len as u64 / bs, no_hole).await;
                self.then_flush(&ch, r, fua).await
            }
        };
        match r {
            Ok(()) => Outcome::Done,
            Err(s) => Outcome::Error(errno(s)),
        }
    }

    async fn then_flush(
        &self,
        ch: &IoChannel,
        r: Result<(), IoStatus>,
        fua: bool,
    ) -> Result<(), IoStatus> {
        r?;
        if fua && self.bdev.io_type_supported(IoType::Flush) {
            ch.flush().await?;
        }
        Ok(())
    }

    /// Zeroes a range: the bdev's WRITE_ZEROES (a thin volume unmaps whole
    /// blocks) unless the client wants the range to stay allocated or the
    /// bdev has none; then zero buffers are written.
    async fn zero(&self, ch: &IoChannel, off: u64, n: u64, no_hole: bool) -> Result<(), IoStatus> {
        if !no_hole && self.bdev.io_type_supported(IoType::WriteZeroes) {
            return ch.write_zeroes(off, n).await;
        }
        let bs = self.block_size() as u64;
        let per = (ZERO_CHUNK / bs).max(1);
        let mut at = off;
        while at < off + n {
            let k = per.min(off + n - at);
            ch.write(at, IoBuf::zeroed((k * bs) as usize)).await?;
            at += k;
        }
        Ok(())
    }
}
