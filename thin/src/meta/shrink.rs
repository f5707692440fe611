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
        if !self.drain(vol).await {
            return Err(ThinError::Io(
                "I/O past the new end did not drain; nothing was unmapped".into(),
            ));
        }
        let status = self.write_zeroes(vol, new_end, old_end - new_end).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(ThinError::Io(format!(
                "unmapping the cut-off range failed: {status}"
            )))
        }
    }
}
