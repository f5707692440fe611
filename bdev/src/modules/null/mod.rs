//! null: reads complete without touching the buffer, writes are dropped.
//! The overhead probe: everything it costs is the bdev layer's cost.

pub mod rpc;

use std::sync::Arc;

use serde_json::{json, Value};

use crate::{
    Bdev, BdevError, BdevFnTable, BdevProps, IoBox, IoStatus, IoType, ModuleChannel, Uuid,
};

#[derive(Clone, Debug)]
pub struct NullOptions {
    pub name: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub uuid: Option<Uuid>,
}

struct Null;

pub fn create(opts: NullOptions) -> Result<Arc<Bdev>, BdevError> {
    if crate::lookup(&opts.name).is_some() {
        return Err(BdevError::Exists(opts.name.clone()));
    }
    let mut props = BdevProps::new(&opts.name, "Null disk", opts.block_size, opts.num_blocks);
    props.uuid = opts.uuid;
    let bdev = Bdev::new(props, Null)?;
    crate::register(bdev.clone())?;
    Ok(bdev)
}

impl BdevFnTable for Null {
    fn module_name(&self) -> &'static str {
        "null"
    }

    fn io_type_supported(&self, t: IoType) -> bool {
        // As SPDK's null bdev: no unmap, no flush.
        matches!(
            t,
            IoType::Read | IoType::Write | IoType::WriteZeroes | IoType::Reset
        )
    }

    fn create_channel(&self, _bdev: &Arc<Bdev>) -> Result<Box<dyn ModuleChannel>, BdevError> {
        Ok(Box::new(NullChannel))
    }

    fn config_entry(&self, bdev: &Bdev) -> Option<Value> {
        Some(json!({
            "method": "bdev_null_create",
            "params": {
                "name": bdev.name(),
                "num_blocks": bdev.num_blocks(),
                "block_size": bdev.block_size(),
                "uuid": bdev.uuid().to_string(),
            }
        }))
    }
}

struct NullChannel;

impl ModuleChannel for NullChannel {
    #[inline]
    fn submit(&self, io: IoBox) {
        io.complete(IoStatus::Success);
    }
}
