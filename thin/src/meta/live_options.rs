//! Options changed on a running pool (bdev_thin_pool_set_options), applied
//! on the metadata core so no change lands between an allocation's reads
//! of them: the commit period's poller is replaced, a pool out of space
//! takes a new error_if_no_space or timeout at once, and the low-water
//! latch is re-armed against the new mark.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::MetaCore;
use crate::options::{PoolMode, PoolOptions};

impl MetaCore {
    pub(crate) fn apply_options(self: &Rc<Self>, new: PoolOptions) {
        let old = self.shared.options();
        self.shared.set_options(new.clone());
        if new.commit_period_ms != old.commit_period_ms {
            self.start_period();
        }
        if self.shared.mode() == PoolMode::OutOfDataSpace {
            if new.error_if_no_space {
                // Writes queued for space fail now, as they would have.
                self.shared.error_if_no_space.store(true, Ordering::Release);
                self.space.notify_all();
            } else if old.error_if_no_space || new.no_space_timeout_s != old.no_space_timeout_s {
                // Queueing again, for the new timeout (0: forever).
                self.shared
                    .error_if_no_space
                    .store(false, Ordering::Release);
                self.start_no_space_timer();
            }
        } else {
            self.shared
                .error_if_no_space
                .store(new.error_if_no_space, Ordering::Release);
        }
        if new.low_water_mark_blocks != old.low_water_mark_blocks {
            self.clear_low_water_latch();
            let free = self.shared.stats().free_data_blocks;
            self.check_data_low_water(free);
        }
    }
}
