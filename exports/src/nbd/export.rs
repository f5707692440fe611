//! An export: one bdev opened for NBD clients under a name at an address.
//! Its I/O runs on reactors through per-core channels that the export
//! caches on each core. The commands here are the general path, async
//! code that any command can take (read-modify-writes of partial blocks,
//! trims, zeroes, writes that wait for a range lock); a connection runs
//! plain reads, writes and flushes itself, with completion callbacks
//! (`transmission.rs`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bdev::{Bdev, BdevEvent, Descriptor, IoBuf, IoChannel, IoStatus, IoType};

use super::proto::*;
use super::range_lock::RangeLocks;
use crate::conn::{Closer, ConnEntry, ConnTable};

pub struct Export {
    pub id: u64,
    pub name: String,
    pub bdev_name: String,
    pub bdev: Arc<Bdev>,
    desc: Mutex<Option<Descriptor>>,
    /// The bdev went away (deleted): connections are closed, new ones refused.
    pub removed: Arc<AtomicBool>,
    /// Open connections, to close them when the export stops.
    conns: Arc<ConnTable>,
    /// I/O errors answered to clients, logged at most once a second.
    errors: ErrorLog,
    /// Blocks being written: read-modify-writes of partial blocks hold
    /// theirs exclusively, other writes shared.
    pub(crate) writing: RangeLocks,
}

/// Admits one log line per period and counts the ones it holds back, so
/// a failing device cannot flood the log but no error goes unaccounted.
pub struct ErrorLog {
    period: Duration,
    /// When the last line was admitted, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl ErrorLog {
    pub fn new(period: Duration) -> ErrorLog {
        ErrorLog {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// An error at `now`: `Some(held back since the last line)` if it may
    /// be logged, None if it is counted instead.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.0 {
            Some(last) if now.saturating_duration_since(last) < self.period => {
                st.1 += 1;
                None
            }
            _ => {
                let held = st.1;
                *st = (Some(now), 0);
                Some(held)
            }
        }
    }
}

/// What went wrong, in words.
fn cause(s: IoStatus) -> String {
    match s {
        IoStatus::IoError(e) => std::io::Error::from_raw_os_error(e).to_string(),
        IoStatus::NoSpace => "the thin pool is out of data space".into(),
        IoStatus::Invalid(why) => format!("refused by the bdev layer ({why:?})"),
        IoStatus::Aborted => "aborted by a reset".into(),
        other => format!("{other:?}"),
    }
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
        Export::open_with(bdev_name, name, None)
    }

    /// [`Export::open`], with `also` told of the bdev's events (a resize,
    /// a removal) after the export has seen them.
    pub fn open_with(
        bdev_name: &str,
        name: &str,
        also: Option<bdev::EventFn>,
    ) -> Result<Arc<Export>, bdev::BdevError> {
        let removed = Arc::new(AtomicBool::new(false));
        let flag = removed.clone();
        let event: bdev::EventFn = Box::new(move |e| {
            if e == BdevEvent::Remove {
                flag.store(true, Ordering::Release);
            }
            if let Some(f) = &also {
                f(e);
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
            conns: Arc::default(),
            errors: ErrorLog::new(Duration::from_secs(1)),
            writing: RangeLocks::default(),
        }))
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn size(&self) -> u64 {
        self.bdev.size_bytes()
    }

    /// The bdev takes no writes (a read-only volume or snapshot).
    pub fn read_only(&self) -> bool {
        self.bdev.is_read_only()
    }

    pub fn block_size(&self) -> u32 {
        self.bdev.block_size()
    }

    /// NBD transmission flags for this export.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        if self.read_only() {
            // Reads, flushes and cache hints only: writes get EPERM.
            return TF_HAS_FLAGS
                | TF_READ_ONLY
                | TF_SEND_FLUSH
                | TF_CAN_MULTI_CONN
                | TF_SEND_CACHE
                | if structured { TF_SEND_DF } else { 0 };
        }
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

    /// Counts a connection in until the entry drops (its I/O finished).
    pub(crate) fn add_conn(&self, id: u64, closer: Arc<Closer>) -> ConnEntry {
        self.conns.enter(id, closer)
    }

    /// Asks every connection to close; each ends once its I/O finished.
    pub fn close_conns(&self) {
        self.conns.close_all();
    }

    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// This core's channel (on a reactor).
    pub(crate) fn channel(&self) -> Result<IoChannel, IoStatus> {
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

    /// Drops the channel each core cached, then closes the bdev. From a
    /// plain thread, once nothing submits I/O to the export any more.
    pub fn close_everywhere(self: &Arc<Self>, reactors: &reactor::ReactorHandle) {
        for core in reactors.cores() {
            let e = self.clone();
            let _ = reactors.block_on(core, move || async move { e.forget_channel() });
        }
        self.close();
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

impl Command {
    /// Its name, offset and length, for the log.
    pub(crate) fn describe(&self) -> (&'static str, u64, u64) {
        match self {
            Command::Read { offset, len } => ("read", *offset, *len as u64),
            Command::Write { offset, data, .. } => ("write", *offset, data.len() as u64),
            Command::Flush => ("flush", 0, 0),
            Command::Trim { offset, len, .. } => ("trim", *offset, *len as u64),
            Command::Zero { offset, len, .. } => ("write_zeroes", *offset, *len as u64),
        }
    }
}

/// What a command produced.
pub enum Outcome {
    Done,
    Data(IoBuf),
    Error(u32),
}

/// The NBD error a failed I/O is answered with.
pub(crate) fn errno(s: IoStatus) -> u32 {
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
    /// Runs `cmd` on this reactor; an error is logged (rate-limited) with
    /// what failed and why before it goes back to the client.
    pub async fn run(&self, cmd: Command) -> Outcome {
        let what = cmd.describe();
        match self.execute(cmd).await {
            Ok(out) => out,
            Err(s) => {
                let e = errno(s);
                self.log_error(what, s, &format!("NBD error {e}"));
                Outcome::Error(e)
            }
        }
    }

    /// Logs an I/O error answered to a client, at most one line a period:
    /// what failed, why, and what the client was told (`answer`).
    pub(crate) fn log_error(&self, (op, offset, len): (&str, u64, u64), s: IoStatus, answer: &str) {
        let Some(held) = self.errors.admit(Instant::now()) else {
            return;
        };
        let range = if op == "flush" {
            String::new()
        } else {
            format!(" of {len} bytes at offset {offset}")
        };
        let held = if held > 0 {
            format!(" ({held} more I/O errors on this export since the last line not logged)")
        } else {
            String::new()
        };
        tracing::error!(
            "export {:?} (bdev {}): {op}{range} failed: {}; the client gets {answer}{held}",
            self.name,
            self.bdev_name,
            cause(s)
        );
    }

    pub(crate) async fn execute(&self, cmd: Command) -> Result<Outcome, IoStatus> {
        let ch = self.channel()?;
        let bs = self.block_size() as u64;
        let r = match cmd {
            Command::Read { offset, len } => {
                return Ok(Outcome::Data(self.read(&ch, offset, len as u64).await?));
            }
            Command::Write { offset, data, fua } => {
                let r = self.write(&ch, offset, data).await;
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
                let r = self.zero_bytes(&ch, offset, len as u64, no_hole).await;
                self.then_flush(&ch, r, fua).await
            }
        };
        r.map(|()| Outcome::Done)
    }

    /// The blocks a byte range touches, and whether it covers them whole.
    fn blocks(&self, offset: u64, len: u64) -> (u64, u64, bool) {
        let bs = self.block_size() as u64;
        let (first, end) = (offset / bs, (offset + len).div_ceil(bs));
        (
            first,
            end,
            offset.is_multiple_of(bs) && len.is_multiple_of(bs),
        )
    }

    /// Reads any byte range: the blocks it touches, then the part asked.
    async fn read(&self, ch: &IoChannel, offset: u64, len: u64) -> Result<IoBuf, IoStatus> {
        let (first, end, whole) = self.blocks(offset, len);
        let buf = ch.read(first, end - first).await?;
        if whole {
            return Ok(buf);
        }
        let skip = (offset - first * self.block_size() as u64) as usize;
        Ok(IoBuf::from_slice(
            &buf.as_slice()[skip..skip + len as usize],
        ))
    }

    /// Writes any byte range. Partial blocks at either end are read,
    /// patched and written back with the rest, all under an exclusive lock
    /// of the blocks; whole-block writes hold theirs shared.
    async fn write(&self, ch: &IoChannel, offset: u64, data: IoBuf) -> Result<(), IoStatus> {
        let (first, end, whole) = self.blocks(offset, data.len() as u64);
        let _held = self.writing.lock(first, end, !whole).await;
        if whole {
            return ch.write(first, data).await;
        }
        let bs = self.block_size() as u64;
        let mut buf = IoBuf::new(((end - first) * bs) as usize);
        let head = (offset - first * bs) as usize;
        let tail = head + data.len();
        if head > 0 {
            let b = ch.read(first, 1).await?;
            buf.as_mut_slice()[..bs as usize].copy_from_slice(b.as_slice());
        }
        // The last block, if the write ends inside it, unless it is the
        // first one and already read.
        let tail_partial = !tail.is_multiple_of(bs as usize);
        let tail_read = end - 1 == first && head > 0;
        if tail_partial && !tail_read {
            let b = ch.read(end - 1, 1).await?;
            buf.as_mut_slice()[((end - 1 - first) * bs) as usize..].copy_from_slice(b.as_slice());
        }
        buf.as_mut_slice()[head..tail].copy_from_slice(data.as_slice());
        ch.write(first, buf).await
    }

    /// Zeroes any byte range: whole blocks as [`Export::zero`] does,
    /// partial ones by read-modify-write, under the same locks as writes.
    async fn zero_bytes(
        &self,
        ch: &IoChannel,
        offset: u64,
        len: u64,
        no_hole: bool,
    ) -> Result<(), IoStatus> {
        let (first, end, whole) = self.blocks(offset, len);
        let _held = self.writing.lock(first, end, !whole).await;
        if whole {
            return self.zero(ch, first, end - first, no_hole).await;
        }
        let bs = self.block_size() as u64;
        let stop = offset + len;
        // The whole blocks inside the range.
        let (inner, inner_end) = (offset.div_ceil(bs), stop / bs);
        if inner < inner_end {
            self.zero(ch, inner, inner_end - inner, no_hole).await?;
        }
        let mut partial = vec![first];
        if end - 1 != first {
            partial.push(end - 1);
        }
        for blk in partial {
            let (b0, b1) = (blk * bs, (blk + 1) * bs);
            let (z0, z1) = (offset.max(b0), stop.min(b1));
            if z0 == b0 && z1 == b1 {
                continue; // whole: zeroed above
            }
            let mut b = ch.read(blk, 1).await?;
            b.as_mut_slice()[(z0 - b0) as usize..(z1 - b0) as usize].fill(0);
            ch.write(blk, b).await?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_log_admits_one_line_a_period_and_counts_the_rest() {
        let log = ErrorLog::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.admit(at(0)), Some(0));
        assert_eq!(log.admit(at(1)), None);
        assert_eq!(log.admit(at(500)), None);
        assert_eq!(log.admit(at(999)), None);
        // A second after the last line: logged, with the three held back.
        assert_eq!(log.admit(at(1000)), Some(3));
        assert_eq!(log.admit(at(1500)), None);
        // Long quiet: the next one is logged with the one held back.
        assert_eq!(log.admit(at(60_000)), Some(1));
        assert_eq!(log.admit(at(61_001)), Some(0));
        // A clock read out of order (another core) is held back, not a panic.
        assert_eq!(log.admit(at(30_000)), None);
    }
}
