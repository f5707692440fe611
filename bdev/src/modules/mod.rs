//! Base bdev modules. Each is a function table, a per-core channel and an
//! RPC file beside them.

pub mod base;
pub mod delay;
pub mod error;
pub mod malloc;
pub mod null;
pub mod nvme;
pub mod uring;

use serde::{Deserialize, Deserializer};

use crate::module::Module;
use crate::Uuid;

/// The modules every process has, in the order their methods are listed.
pub(crate) fn builtin() -> Vec<&'static dyn Module> {
    vec![
        &malloc::rpc::MallocModule,
        &null::rpc::NullModule,
        &uring::rpc::UringModule,
        &error::rpc::ErrorModule,
        &delay::rpc::DelayModule,
        &nvme::rpc::NvmeModule,
    ]
}

/// Decodes an optional UUID string param.
pub(crate) fn de_uuid<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("invalid uuid {s:?}"))),
    }
}

/// A tiny seeded generator (SplitMix64) for module decisions that must
/// replay from a seed.
pub(crate) struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
