//! The slow path's protocol: what a volume channel on an I/O core and the
//! pool's metadata core say to each other about one I/O the fast path
//! could not finish. Both sides are reactors, so every step is a message
//! (`reactor::send`) and nothing is shared but the volume's table.
//!
//! One I/O, by the state of its slot on the I/O core (`volume.rs`):
//!
//! ```text
//!            fast path cannot finish it (unmapped or shared block,
//!            busy cell, frozen volume, flush with changes, discard)
//!   Free ─────────────────────────────────────────────▶ Parked(io)
//!                                  SlowReq ──▶ metadata core
//!
//!   Parked(io) ◀── Reply::Retry ──────── block ready (or released):
//!       │                                  run the fast path again
//!       │                                  (slot freed, io re-routed)
//!       ├─── Reply::Done(status) ───────▶ Free, io completed
//!       │
//!       └─ Reply::WriteTo(data_block) ──▶ Writing: the whole-block
//!                                          write goes to data_block
//!   Writing ── the write lands ─────────▶ Parked(io) again, and
//!                                          confirm(status) ──▶ metadata
//!                                          core, which inserts the
//!                                          mapping and answers Retry or
//!                                          Done as above
//!   Writing ── Reply::Done(s) first ────▶ WritingDone(s) (the metadata
//!                                          core gave up, e.g. the pool
//!                                          closed): finish with s when
//!                                          the write lands
//! ```
//!
//! The metadata core holds the block's cell from the request to its
//! answer, so I/O to the same block waits there, in arrival order, and is
//! answered Retry when the cell is released. A reply to a channel that is
//! gone (its volume closed) is dropped; the I/O was failed at close.

use std::sync::Arc;

use bdev::IoStatus;

use crate::shared::VolumeShared;
use crate::volume;

/// What the fast path could not do.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SlowKind {
    Read {
        vblock: u64,
    },
    /// `whole`: the write covers the block exactly (no zeroing or copy).
    Write {
        vblock: u64,
        whole: bool,
    },
    /// A flush of a volume with uncommitted changes.
    Flush,
    /// Unmap `num_blocks` bdev blocks at `offset` (whole data blocks
    /// only).
    Discard {
        offset: u64,
        num_blocks: u64,
    },
    /// Zero `num_blocks` bdev blocks at `offset`; unmapped blocks stay
    /// unmapped.
    WriteZeroes {
        offset: u64,
        num_blocks: u64,
    },
}

impl SlowKind {
    /// Whether the request would change the volume's data (refused on a
    /// read-only volume).
    pub fn changes_data(&self) -> bool {
        matches!(
            self,
            SlowKind::Write { .. } | SlowKind::Discard { .. } | SlowKind::WriteZeroes { .. }
        )
    }
}

/// The answer to a slow request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reply {
    /// Run the fast path again: the block is ready (or was released).
    Retry,
    /// Write the whole block to this data block, then `confirm`.
    WriteTo(u64),
    /// Finished with this status.
    Done(IoStatus),
}

pub(crate) struct SlowReq {
    pub vol: Arc<VolumeShared>,
    pub kind: SlowKind,
    pub reply_core: u32,
    pub token: u64,
}

impl SlowReq {
    pub fn reply(&self, reply: Reply) {
        let (uid, token) = (self.vol.uid, self.token);
        if reactor::send(self.reply_core, move || volume::deliver(uid, token, reply)).is_err() {
            tracing::error!("thin: cannot reply to core {}", self.reply_core);
        }
    }
}
