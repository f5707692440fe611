//! The engine's job options, as SPDK's spdk_bdev plugin spells them, so
//! its job files run with only the `ioengine=` line changed.
//!
//! fio parses them into [`RawOptions`] (through the table [`table`]
//! makes) and the engine checks them with [`JobOptions::parse`], which
//! knows nothing of fio and is tested without it.

use std::ffi::{c_char, c_uint, c_void, CStr};
use std::mem::offset_of;
use std::path::PathBuf;

use crate::sys;

/// The option struct fio fills (`td->eo`). fio keeps the job's
/// `thread_data *` in its first pointer-sized slot, so no option may sit
/// at offset 0.
#[repr(C)]
pub struct RawOptions {
    pad: *mut c_void,
    json_conf: *mut c_char,
    conf: *mut c_char,
    bounce: c_uint,
    /// SPDK's environment options: taken so their job files parse, unused
    /// (ferrothin needs no hugepages or DPDK environment).
    spdk_mem: *mut c_char,
    single_seg: *mut c_char,
    log_flags: *mut c_char,
    env_context: *mut c_char,
}

/// A string option's value, if it has one (an empty value is none).
fn given(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty())
}

/// Why a job's options cannot run.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error(
        "spdk_conf is not read by ferrothin (SPDK's legacy option name): write \
         spdk_json_conf={0} instead; the file is the same SPDK-style JSON config \
         (`ferrothin tgt --json` takes it too)"
    )]
    LegacyConf(String),
    #[error(
        "spdk_json_conf=FILE is required: the SPDK-style JSON config that makes \
         the bdevs (bdev_malloc_create, bdev_thin_pool_create, ...)"
    )]
    NoConfig,
    #[error(
        "thread=1 is required: the bdevs run in fio's job threads, which fio \
         makes only with thread=1 (without it every job is a forked process)"
    )]
    NotThreaded,
}

/// A job's checked options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOptions {
    /// The JSON config (`spdk_json_conf`).
    pub json_conf: PathBuf,
    /// Copy every data I/O through the engine's own aligned buffers
    /// (`ferrothin_bounce=1`), even when fio's buffers are aligned; for
    /// measuring what a copy costs.
    pub bounce: bool,
}

impl JobOptions {
    /// Checks the options as given: `json_conf` and `conf` are the
    /// values of `spdk_json_conf` and `spdk_conf` (None when unset),
    /// `threaded` fio's `thread` option.
    pub fn parse(
        json_conf: Option<&str>,
        conf: Option<&str>,
        bounce: bool,
        threaded: bool,
    ) -> Result<JobOptions, OptionError> {
        if !threaded {
            return Err(OptionError::NotThreaded);
        }
        if let Some(c) = given(conf) {
            return Err(OptionError::LegacyConf(c.to_string()));
        }
        let json_conf = given(json_conf).ok_or(OptionError::NoConfig)?;
        Ok(JobOptions {
            json_conf: PathBuf::from(json_conf),
            bounce,
        })
    }

    /// Reads a job's options from fio's option struct.
    ///
    /// # Safety
    ///
    /// `raw` is null or points to the `RawOptions` fio filled for a job
    /// (its strings NUL-terminated or null).
    pub unsafe fn from_fio(raw: *const RawOptions, threaded: bool) -> Result<Self, OptionError> {
        // SAFETY: per the contract, null or a live RawOptions.
        let Some(raw) = (unsafe { raw.as_ref() }) else {
            return Self::parse(None, None, false, threaded);
        };
        let s = |p: *const c_char| {
            // SAFETY: fio stores strdup'ed, NUL-terminated strings or null.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        };
        Self::parse(
            s(raw.json_conf).as_deref(),
            s(raw.conf).as_deref(),
            raw.bounce != 0,
            threaded,
        )
    }
}

/// The option table fio reads (`ioengine_ops.options`): one entry per
/// option, then an all-zero entry. fio writes into it as it registers
/// the options, so it is made once and leaked.
pub fn table() -> *mut sys::fio_option {
    let entry = |name: &'static CStr,
                 lname: &'static CStr,
                 help: &'static CStr,
                 type_: sys::fio_opt_type,
                 off: usize,
                 def: Option<&'static CStr>| {
        // SAFETY: fio_option is plain C data (pointers, integers, floats,
        // arrays of them); all-zero is its "unset" value.
        let mut o: sys::fio_option = unsafe { std::mem::zeroed() };
        o.name = name.as_ptr();
        o.lname = lname.as_ptr();
        o.help = help.as_ptr();
        o.type_ = type_;
        o.off1 = off as c_uint;
        o.def = def.map_or(std::ptr::null(), CStr::as_ptr);
        o.category = sys::FIO_OPT_C_ENGINE as u64;
        o.group = sys::FIO_OPT_G_INVALID;
        o
    };
    let store = sys::FIO_OPT_STR_STORE;
    let ignored = c"SPDK environment option: accepted and ignored by ferrothin";
    let options = vec![
        entry(
            c"spdk_json_conf",
            c"SPDK-style JSON config",
            c"JSON config that makes the bdevs (ferrothin's methods, thin pools included)",
            store,
            offset_of!(RawOptions, json_conf),
            None,
        ),
        entry(
            c"spdk_conf",
            c"SPDK legacy config",
            c"SPDK's legacy config option: refused, use spdk_json_conf",
            store,
            offset_of!(RawOptions, conf),
            None,
        ),
        entry(
            c"ferrothin_bounce",
            c"Copy through bounce buffers",
            c"Copy data through the engine's aligned buffers even when fio's are aligned",
            sys::FIO_OPT_BOOL,
            offset_of!(RawOptions, bounce),
            Some(c"0"),
        ),
        entry(
            c"spdk_mem",
            c"SPDK memory",
            ignored,
            store,
            offset_of!(RawOptions, spdk_mem),
            None,
        ),
        entry(
            c"spdk_single_seg",
            c"SPDK single segment",
            ignored,
            store,
            offset_of!(RawOptions, single_seg),
            None,
        ),
        entry(
            c"log_flags",
            c"SPDK log flags",
            ignored,
            store,
            offset_of!(RawOptions, log_flags),
            None,
        ),
        entry(
            c"env_context",
            c"SPDK environment context",
            ignored,
            store,
            offset_of!(RawOptions, env_context),
            None,
        ),
        // SAFETY: as above: the all-zero entry ends the table.
        unsafe { std::mem::zeroed() },
    ];
    Box::leak(options.into_boxed_slice()).as_mut_ptr()
}

/// The size fio allocates for a job's options.
pub const RAW_SIZE: usize = std::mem::size_of::<RawOptions>();

#[cfg(test)]
mod tests;
