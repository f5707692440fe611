//! Pool options, as `bdev_thin_pool_create` takes them, and their checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ThinError;

/// What a discard on a thin volume does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum DiscardMode {
    /// Unmap in the pool and pass the discard down to the data bdev for
    /// blocks nothing else references.
    #[default]
    Passdown,
    /// Unmap in the pool only.
    Nopassdown,
    /// Volumes do not support UNMAP.
    Ignore,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolOptions {
    /// Data block size in bytes: 64 KiB to 1 GiB in 64 KiB steps.
    pub block_size: u64,
    /// Zero a new block before a partial write lands in it.
    pub zero_new_blocks: bool,
    pub discard: DiscardMode,
    /// Fail writes that need a block at once when the pool is full,
    /// instead of queueing them.
    pub error_if_no_space: bool,
    /// How long writes queue on a full pool before they fail (0: forever).
    pub no_space_timeout_s: u64,
    /// Free data blocks at or below which a low-water event fires.
    pub low_water_mark_blocks: u64,
    pub commit_period_ms: u64,
    /// The reactor that owns the metadata (default: the last core).
    pub metadata_core: Option<u32>,
    pub read_only: bool,
    /// One-device layout: bytes of the bdev given to metadata (default:
    /// sized from the data space, see `default_metadata_bytes`).
    pub metadata_size: Option<u64>,
    /// Warn when the active volumes add up to more than this many times
    /// the data space (0: never). 1.0 warns at any overprovisioning, as
    /// LVM does; a pool meant to be overprovisioned sets its own ratio.
    pub overprovision_warning_ratio: f64,
    /// Autoextend, as LVM's thin_pool_autoextend_threshold/_percent: at
    /// this percent of data blocks used (0: off) the data bdev is grown by
    /// `autoextend_percent` of the pool's data size (a file by truncate;
    /// other bdevs: an event asks for it), and the pool follows.
    pub autoextend_threshold: u32,
    pub autoextend_percent: u32,
    /// The same for the metadata bdev (two-device pools).
    pub metadata_autoextend_threshold: u32,
    pub metadata_autoextend_percent: u32,
    /// Refuse new volumes and snapshots while metadata use is at or above
    /// this percent (0: never), so the last of it goes to existing data.
    pub metadata_create_limit: u32,
    /// Format over a metadata bdev whose first block holds other data
    /// (never over a pool: one is always opened). Said once, at creation:
    /// save_config and get_pools leave it out, so a restart never formats.
    #[serde(skip_serializing)]
    pub force_format: bool,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            block_size: 64 << 10,
            zero_new_blocks: true,
            discard: DiscardMode::Passdown,
            error_if_no_space: false,
            no_space_timeout_s: 60,
            low_water_mark_blocks: 0,
            commit_period_ms: 1000,
            metadata_core: None,
            read_only: false,
            metadata_size: None,
            overprovision_warning_ratio: 1.0,
            autoextend_threshold: 0,
            autoextend_percent: 20,
            metadata_autoextend_threshold: 0,
            metadata_autoextend_percent: 20,
            metadata_create_limit: 0,
            force_format: false,
        }
    }
}

impl DiscardMode {
    pub(crate) fn from_u8(v: u8) -> DiscardMode {
        match v {
            0 => DiscardMode::Passdown,
            1 => DiscardMode::Nopassdown,
            _ => DiscardMode::Ignore,
        }
    }
}

pub const MIN_BLOCK_SIZE: u64 = 64 << 10;
pub const MAX_BLOCK_SIZE: u64 = 1 << 30;

impl PoolOptions {
    pub fn check(&self) -> Result<(), ThinError> {
        let block_size = self.block_size;
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
            || !block_size.is_multiple_of(MIN_BLOCK_SIZE)
        {
            return Err(ThinError::Invalid(format!(
                "block_size {block_size} must be 64 KiB to 1 GiB in steps of 64 KiB"
            )));
        }
        let r = self.overprovision_warning_ratio;
        if !r.is_finite() || r < 0.0 {
            return Err(ThinError::Invalid(format!(
                "overprovision_warning_ratio {r} must be 0 (never warn) or more"
            )));
        }
        for (name, pct) in [
            ("autoextend_threshold", self.autoextend_threshold),
            (
                "metadata_autoextend_threshold",
                self.metadata_autoextend_threshold,
            ),
            ("metadata_create_limit", self.metadata_create_limit),
        ] {
            if pct > 100 {
                return Err(ThinError::Invalid(format!(
                    "{name} {pct} is a percent: 0 (off) to 100"
                )));
            }
        }
        for (name, pct) in [
            ("autoextend_percent", self.autoextend_percent),
            (
                "metadata_autoextend_percent",
                self.metadata_autoextend_percent,
            ),
        ] {
            if pct == 0 {
                return Err(ThinError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if self.commit_period_ms == 0 {
            return Err(ThinError::Invalid(
                "commit_period_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Data block size in 512-byte sectors (the on-disk unit).
    pub fn block_sectors(&self) -> u32 {
        (self.block_size / 512) as u32
    }

    pub fn commit_period(&self) -> Duration {
        Duration::from_millis(self.commit_period_ms)
    }

    pub fn no_space_timeout(&self) -> Option<Duration> {
        (self.no_space_timeout_s > 0).then(|| Duration::from_secs(self.no_space_timeout_s))
    }
}

/// Metadata for a one-device pool of `device_bytes`: 48 bytes per data
/// block plus room for snapshots' copied nodes (x2), at least 2 MiB and at
/// most what the format can address.
pub fn default_metadata_bytes(device_bytes: u64, block_size: u64) -> u64 {
    let blocks = device_bytes / block_size;
    let want = (blocks * 48 * 2).max(2 << 20);
    let max = metadata::pdata::space_map::MAX_METADATA_BLOCKS * 4096;
    want.min(max).div_ceil(4096) * 4096
}

/// The pool's mode (dm-thin's, in order of health).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum PoolMode {
    Write = 0,
    OutOfDataSpace = 1,
    /// Metadata free space is down to the reserve: read-only, no
    /// needs_check; growing the metadata returns to write.
    OutOfMetadataSpace = 2,
    ReadOnly = 3,
    Fail = 4,
}

impl PoolMode {
    pub fn from_u8(v: u8) -> PoolMode {
        match v {
            0 => PoolMode::Write,
            1 => PoolMode::OutOfDataSpace,
            2 => PoolMode::OutOfMetadataSpace,
            3 => PoolMode::ReadOnly,
            _ => PoolMode::Fail,
        }
    }

    /// Metadata may change (provisioning, discards, control operations).
    pub fn metadata_writable(self) -> bool {
        matches!(self, PoolMode::Write | PoolMode::OutOfDataSpace)
    }

    pub fn name(self) -> &'static str {
        match self {
            PoolMode::Write => "write",
            PoolMode::OutOfDataSpace => "out_of_data_space",
            PoolMode::OutOfMetadataSpace => "out_of_metadata_space",
            PoolMode::ReadOnly => "read_only",
            PoolMode::Fail => "fail",
        }
    }
}
