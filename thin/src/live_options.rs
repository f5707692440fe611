//! bdev_thin_pool_set_options: a running pool's options changed without
//! dropping its clients, as dm-thin's table reload changes a pool's
//! feature arguments. The options that shape the pool on disk or where it
//! runs (block size, metadata core, layout, read-only) are fixed.

use serde_json::{Map, Value};

use super::options::{DiscardMode, PoolOptions};
use super::ThinError;

/// What a running pool keeps as it was opened.
const FIXED: [&str; 5] = [
    "block_size",
    "metadata_core",
    "metadata_size",
    "read_only",
    "force_format",
];

/// Applies `changes` (option name -> value) to pool `name`; returns the
/// options now in force.
pub async fn set_pool_options(
    name: &str,
    changes: Map<String, Value>,
) -> Result<PoolOptions, ThinError> {
    let p = super::pool(name)?;
    if let Some(k) = changes.keys().find(|k| FIXED.contains(&k.as_str())) {
        return Err(ThinError::Invalid(format!(
            "{k} cannot change on a running pool (it is fixed when the pool is created or opened)"
        )));
    }
    let mut merged = match serde_json::to_value(p.options()) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(ThinError::Invalid(
                "the pool's options do not serialize".into(),
            ))
        }
    };
    merged.extend(changes.clone());
    let new: PoolOptions = serde_json::from_value(Value::Object(merged))
        .map_err(|e| ThinError::Invalid(e.to_string()))?;
    let new = PoolOptions {
        // Not serialized, so not carried by the merge.
        force_format: false,
        ..new
    };
    new.check()?;
    if new.discard == DiscardMode::Passdown && !p.data_supports_unmap() {
        return Err(ThinError::Invalid(format!(
            "discard passdown needs a data bdev that takes unmaps, and {} does not; \
             use \"nopassdown\"",
            p.data_bdev.as_deref().unwrap_or(&p.metadata_bdev)
        )));
    }
    p.on_meta({
        let new = new.clone();
        move |core| async move {
            core.apply_options(new);
            Ok(())
        }
    })
    .await?;
    let said = Value::Object(changes).to_string();
    tracing::info!(pool = %name, "options changed: {said}");
    Ok(new)
}
