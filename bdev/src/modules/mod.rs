//! Base bdev modules. Each is a function table, a per-core channel and an
//! RPC file beside them.

pub mod delay;
pub mod error;
pub mod malloc;
pub mod null;
pub mod uring;

use serde::{Deserialize, Deserializer};

use crate::Uuid;

/// Decodes an optional UUID string param.
pub(crate) fn de_uuid<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| serde::de::Error::custom(format!("invalid uuid {s:?}"))),
    }
}
