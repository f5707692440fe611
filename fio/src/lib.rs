//! ferrothin as an fio external ioengine: `libferrothin_fio.so`, loaded
//! with `ioengine=external:/path/to/libferrothin_fio.so`, runs fio job
//! files on ferrothin bdevs inside fio, as SPDK's spdk_bdev plugin does
//! (its job options are taken as it spells them: `spdk_json_conf`, and
//! `filename=` a bdev name).
//!
//! Shape:
//! - [`process`]: the process-wide half. The first job loads the JSON
//!   config ([`config`], through the same registry as the daemon and the
//!   bench) into a set of driven reactors; the last job's cleanup shuts
//!   every module down (thin commits and closes its pools).
//! - [`job`]: one fio job thread's half. The thread attaches its own core
//!   and turns it from fio's `getevents`, so its bdev channels, its
//!   I/O and its completions run in fio's thread; no thread of ours
//!   competes with fio's for the I/O path. Only the app core (config,
//!   thin metadata) has a thread of ours, which sleeps when idle.
//! - [`ops`]: the C entry points, each guarded so that a panic fails the
//!   job instead of unwinding into fio; [`options`] the job options;
//!   [`ring`] the completion ring; [`sys`] fio's structures (bindgen, from
//!   Debian's fio 3.33 source); [`host`] what is looked up in fio itself.
//!
//! Loading: fio `dlopen`s the library and calls [`get_ioengine`]. The C
//! layouts are fio 3.33's, so any other fio is refused there, with a
//! message, before fio reads a field (fio's own check, of the ops
//! version, cannot tell 3.30 to 3.33 apart).

pub mod config;
pub mod host;
pub mod job;
pub mod ops;
pub mod options;
pub mod process;
pub mod ring;
pub mod sys;

use std::sync::OnceLock;

/// The ops table, made on the first load.
struct Ops(*mut sys::ioengine_ops);
// SAFETY: the table is made once and then only read and written by fio,
// which serialises engine loading on its main thread.
unsafe impl Send for Ops {}
// SAFETY: as above.
unsafe impl Sync for Ops {}

static OPS: OnceLock<Ops> = OnceLock::new();

/// Why this fio cannot load the engine, if it cannot.
pub fn refuse_fio(version: Option<&str>) -> Option<String> {
    match version {
        Some(v) if v == sys::FIO_VERSION => None,
        Some(v) => Some(format!(
            "fio: ferrothin: this engine is built for {} (ioengine ops version {}) \
             and cannot run in {v}: rebuild it against this fio's headers \
             (fio/regen-bindings.sh)",
            sys::FIO_VERSION,
            sys::FIO_IOOPS_VERSION
        )),
        None => Some("fio: ferrothin: not loaded by fio (no fio_version_string)".into()),
    }
}

/// Keeps this library loaded until the process exits: its threads, its
/// thread-local destructors and its exit handler run its code after fio
/// `dlclose`s the last job's handle.
fn pin_library() {
    // SAFETY: dladdr on one of our own functions fills `info` with our
    // file name; dlopen with RTLD_NOLOAD only takes a reference to a
    // library already loaded, and RTLD_NODELETE keeps it.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(get_ioengine as *const libc::c_void, &mut info) != 0
            && !info.dli_fname.is_null()
        {
            libc::dlopen(
                info.dli_fname,
                libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
            );
        }
    }
}

/// What fio calls after `dlopen` (there is no `ioengine` symbol, so fio
/// asks here): sets `*ops` to the engine, or leaves it null with a message
/// when this fio is not the one the layouts are from (fio then fails the
/// job: "engine ... not loadable").
///
/// # Safety
///
/// `ops` is null or points to a writable `ioengine_ops *`.
#[no_mangle]
pub unsafe extern "C" fn get_ioengine(ops: *mut *mut sys::ioengine_ops) {
    let r = std::panic::catch_unwind(|| {
        if let Some(why) = refuse_fio(host::fio_version().as_deref()) {
            host::log_err(&why);
            return std::ptr::null_mut();
        }
        pin_library();
        OPS.get_or_init(|| Ops(ops::table())).0
    });
    let table = r.unwrap_or(std::ptr::null_mut());
    // SAFETY: per the contract.
    if let Some(slot) = unsafe { ops.as_mut() } {
        *slot = table;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fio_the_layouts_are_from() {
        assert_eq!(refuse_fio(Some("fio-3.33")), None);
        let e = refuse_fio(Some("fio-3.36")).unwrap();
        assert!(e.contains("fio-3.33") && e.contains("fio-3.36"), "{e}");
        assert!(refuse_fio(None).is_some());
    }

    #[test]
    fn outside_fio_get_ioengine_answers_null() {
        let mut ops = std::ptr::dangling_mut::<sys::ioengine_ops>();
        // SAFETY: a writable slot.
        unsafe { get_ioengine(&mut ops) };
        assert!(ops.is_null());
    }

    #[test]
    fn the_ops_table_has_what_fio_checks() {
        // SAFETY: table() returns a leaked, valid ops struct.
        let t = unsafe { &*ops::table() };
        assert_eq!(t.version, 31);
        assert!(t.queue.is_some() && t.getevents.is_some() && t.event.is_some());
        assert!(t.open_file.is_some());
        assert_eq!(t.flags as u32 & sys::FIO_SYNCIO, 0);
    }
}
