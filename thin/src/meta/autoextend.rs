//! Autoextend on the metadata core (the policy is `crate::autoextend`):
//! checked after each data allocation and each commit, it grows the bdev
//! under the pool; the bdev's resize event brings the pool along.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bdev::Bdev;

use super::MetaCore;
use crate::autoextend::decide;
use crate::events::{push_event, PoolEvent};
use crate::options::default_metadata_bytes;

impl MetaCore {
    /// Grows the data bdev (`data`) or the metadata bdev when the pool's
    /// use of it crossed its autoextend threshold.
    pub(crate) fn check_autoextend(self: &Rc<Self>, data: bool) {
        let o = self.shared.options();
        let (threshold, percent) = if data {
            (o.autoextend_threshold, o.autoextend_percent)
        } else {
            (
                o.metadata_autoextend_threshold,
                o.metadata_autoextend_percent,
            )
        };
        if threshold == 0 {
            return;
        }
        let one_device = self.data_ch.bdev().name() == self.meta_ch.bdev().name();
        if !data && one_device {
            // The metadata region of a one-device pool is fixed.
            return;
        }
        let Some((total, free)) = self.with_pool(|p| {
            if data {
                (p.nr_data_blocks(), p.nr_free_data_blocks())
            } else {
                (p.nr_metadata_blocks(), p.nr_free_metadata_blocks())
            }
        }) else {
            return;
        };
        let to = {
            let mut st = self
                .shared
                .autoextend
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            decide(
                &mut st[usize::from(!data)],
                total,
                free,
                threshold,
                percent,
                Instant::now(),
            )
        };
        let Some(to) = to else { return };
        if data {
            let block = self.shared.opts.block_size;
            if !one_device {
                // The metadata keeps up with the data, by the same rule
                // a new pool's metadata is sized.
                let meta = self.meta_ch.bdev().clone();
                let need = default_metadata_bytes(to * block, block);
                if meta.size_bytes() < need {
                    self.grow_bdev(&meta, need, false);
                }
            }
            let bdev = self.data_ch.bdev().clone();
            let offset = self.shared.data_offset * u64::from(bdev.block_size());
            self.grow_bdev(&bdev, offset + to * block, true);
        } else {
            let bdev = self.meta_ch.bdev().clone();
            self.grow_bdev(&bdev, to * metadata::BLOCK_SIZE as u64, false);
        }
    }

    fn grow_bdev(&self, bdev: &Arc<Bdev>, want_bytes: u64, data: bool) {
        let what = if data { "data" } else { "metadata" };
        let pool = self.shared.name.clone();
        let from = bdev.size_bytes();
        match bdev.grow(want_bytes.div_ceil(u64::from(bdev.block_size()))) {
            Ok(true) => push_event(PoolEvent::AutoExtended {
                pool,
                what,
                bdev: bdev.name().to_string(),
                from_bytes: from,
                to_bytes: bdev.size_bytes(),
            }),
            Ok(false) => {
                let mut st = self
                    .shared
                    .autoextend
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let pending = &mut st[usize::from(!data)];
                if !pending.asked {
                    pending.asked = true;
                    drop(st);
                    push_event(PoolEvent::AutoExtendNeeded {
                        pool,
                        what,
                        bdev: bdev.name().to_string(),
                        want_bytes,
                    });
                }
            }
            Err(e) => tracing::warn!(
                pool = %pool,
                "autoextend could not grow {} ({what}): {e}",
                bdev.describe()
            ),
        }
    }
}
