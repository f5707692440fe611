//! The commit, in dm-thin's order and never otherwise: flush the data bdev;
//! write every dirty metadata block; flush the metadata bdev; write the
//! superblock; flush; only then answer the flushes that waited. A failed
//! step never writes the superblock: the pool aborts to the last commit.
//!
//! Flushes batch: a flush that arrives while a commit runs waits for the
//! next one, which serves every flush that arrived meanwhile.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use metadata::thin::pool::Pool;
use metadata::MetadataError;
use reactor::oneshot;

use super::MetaCore;
use crate::image;
use crate::options::PoolMode;
use bdev::IoStatus;

/// How long a commit waits for a volume's in-flight I/O before it gives
/// up on the drain (it then fails like any other metadata step).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl MetaCore {
    /// Commits now (joining a batch if one is being gathered).
    pub(crate) async fn commit_now(self: &Rc<Self>) -> Result<(), IoStatus> {
        let (tx, rx) = oneshot::channel();
        self.flush_waiters.borrow_mut().push(tx);
        self.kick_commit();
        rx.await.unwrap_or(Err(IoStatus::IoError(libc::EIO)))
    }

    /// Starts the commit task unless it is running (it loops while flushes
    /// keep arriving).
    pub(crate) fn kick_commit(self: &Rc<Self>) {
        if self.commit_running.replace(true) {
            return;
        }
        let me = self.clone();
        reactor::spawn_local(async move {
            loop {
                let waiters = std::mem::take(&mut *me.flush_waiters.borrow_mut());
                if waiters.is_empty() && !me.dirty.get() {
                    break;
                }
                let result = me.commit_with(|p| p.commit(&mut || Ok(()))).await;
                let result = result.map_err(|_| IoStatus::IoError(libc::EIO));
                for waiter in waiters {
                    waiter.send(result);
                }
                if me.flush_waiters.borrow().is_empty() {
                    break;
                }
            }
            me.commit_running.set(false);
        })
        .detach();
    }

    /// Runs one transaction end: `stage` makes the library write its
    /// commit (into the image), then the staged writes reach the disk.
    /// Returns `stage`'s value.
    pub(crate) async fn commit_with<T>(
        self: &Rc<Self>,
        stage: impl FnOnce(&mut Pool) -> Result<T, MetadataError>,
    ) -> Result<T, CommitError> {
        let _serial = self.commit_lock.lock().await;
        let mode = self.shared.mode();
        if !mode.metadata_writable() {
            return Err(CommitError::Mode(mode));
        }
        // Passdowns of freed blocks finish before the blocks can be reused.
        while self.passdowns.get() > 0 {
            self.passdowns_done.wait().await;
        }
        self.drain_released().await?;
        self.playing.set(true);
        let r = self.commit_steps(stage).await;
        self.playing.set(false);
        self.play_done.notify_all();
        match r {
            Ok(v) => {
                self.dirty.set(false);
                self.shared.with_stats(|s| s.commits += 1);
                self.after_commit();
                Ok(v)
            }
            Err(e) => {
                tracing::error!(pool = %self.shared.name, "commit failed: {e}");
                self.metadata_failed().await;
                Err(e)
            }
        }
    }

    async fn commit_steps<T>(
        &self,
        stage: impl FnOnce(&mut Pool) -> Result<T, MetadataError>,
    ) -> Result<T, CommitError> {
        // 1. Every data block a new mapping points to is durable first.
        self.data_ch
            .make_durable()
            .await
            .map_err(|st| CommitError::DataFlush(self.data_ch.bdev().describe(), st))?;
        // 2-5 are staged by the library, in its order, and played here.
        let v = self
            .with_pool(stage)
            .ok_or(CommitError::Mode(PoolMode::Fail))?
            .map_err(CommitError::Metadata)?;
        image::play(&self.image, &self.meta_ch)
            .await
            .map_err(|e| CommitError::MetadataIo(self.meta_ch.bdev().describe(), e.status))?;
        // Only now are the volumes' changes durable. Cleared earlier, a
        // FLUSH arriving during the play would skip the commit and succeed
        // before the superblock landed, and a failed play would find no
        // volume to mark aborted. Nothing changes the pool while `playing`
        // holds, so every flag set now was set for this transaction.
        for vol in self.volumes.borrow().values() {
            vol.changed.store(false, Ordering::Release);
        }
        Ok(v)
    }

    /// Waits for the fast-path I/O of every volume that gave up data
    /// blocks in this transaction: after the commit those blocks may be
    /// handed out again, and a read still in flight must not see the new
    /// owner's data.
    async fn drain_released(&self) -> Result<(), CommitError> {
        let released: Vec<u32> = std::mem::take(&mut *self.released.borrow_mut())
            .into_iter()
            .collect();
        for dev in released {
            if let Some(vol) = self.volume(dev) {
                let _d = self.drain_lock.lock().await;
                let p = vol.epochs.flip();
                if !vol.epochs.wait(p, DRAIN_TIMEOUT).await {
                    return Err(CommitError::DrainTimeout);
                }
            }
        }
        Ok(())
    }

    /// Space checks after a successful commit: out-of-data-space ends when
    /// blocks are free again; metadata down to the reserve is out of
    /// metadata space.
    fn after_commit(self: &Rc<Self>) {
        self.refresh_stats();
        let (free_data, free_meta, nr_meta) = self
            .with_pool(|p| {
                (
                    p.nr_free_data_blocks(),
                    p.nr_free_metadata_blocks(),
                    p.nr_metadata_blocks(),
                )
            })
            .unwrap_or((0, 0, 0));
        self.check_metadata_low_water(free_meta, nr_meta);
        self.check_autoextend(false);
        if !self.has_metadata_room() {
            self.shared.set_mode(PoolMode::OutOfMetadataSpace);
            return;
        }
        if self.shared.mode() == PoolMode::OutOfDataSpace && free_data > 0 {
            self.leave_no_space();
        }
    }

    /// Publishes the counts that `get_pools` shows.
    pub(crate) fn refresh_stats(&self) {
        let Some((
            data_blocks,
            free_data_blocks,
            metadata_blocks,
            free_metadata_blocks,
            transaction_id,
            metadata_snap,
        )) = self.with_pool(|p| {
            (
                p.nr_data_blocks(),
                p.nr_free_data_blocks(),
                p.nr_metadata_blocks(),
                p.nr_free_metadata_blocks(),
                p.transaction_id(),
                p.metadata_snap(),
            )
        })
        else {
            return;
        };
        self.shared.with_stats(|s| {
            s.data_blocks = data_blocks;
            s.free_data_blocks = free_data_blocks;
            s.metadata_blocks = metadata_blocks;
            s.free_metadata_blocks = free_metadata_blocks;
            s.transaction_id = transaction_id;
            s.metadata_snap = metadata_snap;
        });
    }

    /// Commits on the period when something changed.
    pub(crate) fn start_period(self: &Rc<Self>) {
        let me = Rc::downgrade(self);
        let poller =
            reactor::register_timed_poller(self.shared.options().commit_period(), move || {
                if let Some(core) = me.upgrade() {
                    if core.dirty.get()
                        && !core.commit_running.get()
                        && core.shared.mode().metadata_writable()
                    {
                        core.kick_commit();
                    }
                }
                reactor::PollStatus::Idle
            });
        *self.period.borrow_mut() = Some(poller);
    }
}

/// dm-thin's hidden metadata reserve, min(4096 blocks, 10%), but never
/// less than one change can take between two room checks (a copy-on-write
/// path through both mapping levels with a split at each node), so that
/// the commit after it still fits on a small metadata device.
pub(crate) fn metadata_reserve(nr_meta: u64) -> u64 {
    (nr_meta / 10).clamp(MIN_METADATA_RESERVE, 4096)
}

/// Two levels of at most 8 nodes each, every one shadowed and split once.
const MIN_METADATA_RESERVE: u64 = 32;

#[derive(Debug)]
pub(crate) enum CommitError {
    Mode(PoolMode),
    /// The data bdev's name, and how its flush failed.
    DataFlush(String, IoStatus),
    Metadata(MetadataError),
    /// The metadata bdev's name, and how a write to it failed.
    MetadataIo(String, IoStatus),
    DrainTimeout,
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Mode(m) => write!(f, "the pool is in {} mode", m.name()),
            CommitError::DataFlush(b, s) => write!(f, "flushing data {b} failed: {s}"),
            CommitError::Metadata(e) => write!(f, "metadata: {e}"),
            CommitError::MetadataIo(b, s) => {
                write!(f, "writing metadata to {b} failed: {s}")
            }
            CommitError::DrainTimeout => write!(f, "in-flight I/O did not drain"),
        }
    }
}

#[cfg(test)]
mod message_tests {
    use super::*;

    /// Issue 25: the log said "MetadataIo(IoError(28))".
    #[test]
    fn a_failed_commit_names_the_bdev_and_the_errno_in_words() {
        let e = CommitError::MetadataIo(
            "bdev Disk0 (file /srv/pool0.img)".into(),
            IoStatus::IoError(28),
        );
        assert_eq!(
            e.to_string(),
            "writing metadata to bdev Disk0 (file /srv/pool0.img) failed: \
             No space left on device (os error 28)"
        );
        let e = CommitError::DataFlush("bdev Data0".into(), IoStatus::IoError(5));
        assert_eq!(
            e.to_string(),
            "flushing data bdev Data0 failed: Input/output error (os error 5)"
        );
    }
}
