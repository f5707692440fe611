//! A volume shrunk (bdev_thin_resize to a smaller size): once its bdev
//! refuses I/O past the new end, the I/O already past it drains and the
//! cut-off range is zeroed the way write-zeroes does it: whole data blocks
//! unmapped (their blocks freed), the part of a block that straddles the
//! new end zeroed, so that growing back reads zeros there.

use std::rc::Rc;
use std::sync::Arc;

use super::MetaCore;
use crate::shared::VolumeShared;
use crate::ThinError;

impl MetaCore {
    pub(crate) async fn shrink_tail(
        self: &Rc<Self>,
        vol: &Arc<VolumeShared>,
        new_end: u64,
        old_end: u64,
    ) -> Result<(), ThinError> {
        let failed = if !self.drain(vol).await {
            "I/O past the new end did not drain; nothing was unmapped".to_string()
        } else {
            let status = self.write_zeroes(vol, new_end, old_end - new_end).await;
            if status.is_success() {
                return Ok(());
            }
            format!("unmapping the cut-off range failed: {status}")
        };
        if !self.is_active(vol) {
            // Deleted meanwhile (a racing bdev_thin_delete): its mappings
            // went with it, so nothing is left to unmap, and the resize
            // reports the volume gone, as if it had come second.
            return Err(ThinError::NotFound(format!(
                "volume (device {}) was deleted while it was shrunk",
                vol.dev_id
            )));
        }
        Err(ThinError::Io(failed))
    }
}
