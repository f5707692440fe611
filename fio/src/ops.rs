//! The C entry points fio calls (`struct ioengine_ops`). Each one catches
//! panics: one never unwinds into fio, it fails the job with a message.
//!
//! Their contract is fio's: `td` is the live `thread_data` of a job that
//! uses this engine, `f` and `io_u` live entries of that job, and every
//! call but `setup` comes from the job's own thread.

use std::ffi::{c_int, c_uint, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::host;
use crate::job::Job;
use crate::options::{JobOptions, RawOptions};
use crate::process::Process;
use crate::sys::{self, fio_file, fio_q_status, io_u, thread_data};

/// How long a job's cleanup waits for I/O still in flight.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Fails job `td` with `msg`: on fio's error output, and as the job's
/// error (fio prints it in the job's summary and exits non-zero).
fn fail(td: *mut thread_data, msg: &str) {
    host::log_err(&format!("fio: ferrothin: {msg}"));
    // SAFETY: td is the live thread_data fio called us with (or null).
    if let Some(td) = unsafe { td.as_mut() } {
        if td.error == 0 {
            td.error = libc::EINVAL;
            let bytes = msg.as_bytes();
            let n = bytes.len().min(td.verror.len() - 1);
            for (d, s) in td.verror.iter_mut().zip(&bytes[..n]) {
                *d = *s as libc::c_char;
            }
            td.verror[n] = 0;
        }
    }
}

/// Runs `f`, turning a panic into a failed job and `fallback`.
fn guarded<R>(td: *mut thread_data, what: &str, fallback: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            fail(td, &format!("internal error in {what}: {why}"));
            fallback
        }
    }
}

/// The job's options and the engine, loading the config on first use
/// (the job is not counted in yet).
///
/// # Safety
///
/// `td` is a live thread_data of a job that uses this engine.
unsafe fn process_for(td: *mut thread_data) -> Result<Arc<Process>, String> {
    // SAFETY: per the contract.
    let t = unsafe { &*td };
    // SAFETY: fio allocated eo as our RawOptions (option_struct_size).
    let opts = unsafe { JobOptions::from_fio(t.eo as *const RawOptions, t.o.use_thread != 0) }
        .map_err(|e| e.to_string())?;
    Process::get_or_start(&opts.json_conf).map_err(|e| e.to_string())
}

/// The job's files, as fio lists them.
///
/// # Safety
///
/// `td` is live; fio's file table holds `files_index` live entries.
unsafe fn files(td: *mut thread_data) -> Vec<*mut fio_file> {
    // SAFETY: per the contract.
    let t = unsafe { &*td };
    (0..t.files_index as usize)
        // SAFETY: index within the table fio filled.
        .map(|i| unsafe { *t.files.add(i) })
        .filter(|f| !f.is_null())
        .collect()
}

fn file_name(f: &fio_file) -> String {
    if f.file_name.is_null() {
        return String::new();
    }
    // SAFETY: fio's file names are NUL-terminated strings.
    unsafe { CStr::from_ptr(f.file_name) }
        .to_string_lossy()
        .into_owned()
}

/// Per job, before its thread starts (on fio's main thread, by default):
/// loads the config (first job), sizes each file from its bdev.
unsafe extern "C" fn setup(td: *mut thread_data) -> c_int {
    guarded(td, "setup", 1, || {
        // SAFETY: fio passes a live thread_data.
        let p = match unsafe { process_for(td) } {
            Ok(p) => p,
            Err(e) => {
                fail(td, &e);
                return 1;
            }
        };
        // SAFETY: as above.
        for f in unsafe { files(td) } {
            // SAFETY: a live entry of the job's file table.
            let f = unsafe { &mut *f };
            let name = file_name(f);
            let Some(b) = bdev::lookup(&name) else {
                let mut known: Vec<String> =
                    bdev::list().iter().map(|b| b.name().to_string()).collect();
                known.sort();
                fail(
                    td,
                    &format!(
                        "no bdev named {name:?} (filename= is a bdev name; the config made: {})",
                        known.join(", ")
                    ),
                );
                return 1;
            };
            f.real_file_size = b.num_blocks() * b.block_size() as u64;
            f.filetype = sys::FIO_TYPE_BLOCK;
            f.flags |= sys::FIO_FILE_size_known;
        }
        // Counted in only once it can run: a job that fails here never
        // gets a cleanup call to count it out.
        if let Err(e) = p.join(td as usize) {
            fail(td, &e.to_string());
            return 1;
        }
        0
    })
}

/// Per job, on its own thread: attaches its core.
unsafe extern "C" fn init(td: *mut thread_data) -> c_int {
    guarded(td, "init", 1, || {
        // SAFETY: fio passes a live thread_data.
        let p = match unsafe { process_for(td) } {
            Ok(p) => p,
            Err(e) => {
                fail(td, &e);
                return 1;
            }
        };
        // Already in if setup ran first (fio's default), else counted now.
        if let Err(e) = p.join(td as usize) {
            fail(td, &e.to_string());
            return 1;
        }
        // SAFETY: as above.
        let t = unsafe { &mut *td };
        // SAFETY: options were checked by process_for.
        let bounce = unsafe { JobOptions::from_fio(t.eo as *const RawOptions, true) }
            .map(|o| o.bounce)
            .unwrap_or(false);
        let core = match p.job_core(t.thread_number) {
            Ok(c) => c,
            Err(e) => {
                fail(td, &e.to_string());
                return 1;
            }
        };
        let depth = t.o.iodepth.max(1) as usize;
        match Job::new(p.set(), core, depth, bounce) {
            Ok(job) => {
                t.io_ops_data = Box::into_raw(Box::new(job)) as *mut libc::c_void;
                0
            }
            Err(e) => {
                fail(td, &format!("job core {core}: {e}"));
                1
            }
        }
    })
}

/// The job's state, if init made it.
///
/// # Safety
///
/// `td` is live and called on the job's own thread.
unsafe fn job<'a>(td: *mut thread_data) -> Option<&'a mut Job> {
    // SAFETY: io_ops_data is null or the Box<Job> init made, used only on
    // this thread.
    unsafe { ((*td).io_ops_data as *mut Job).as_mut() }
}

unsafe extern "C" fn open_file(td: *mut thread_data, f: *mut fio_file) -> c_int {
    guarded(td, "open_file", 1, || {
        // SAFETY: fio passes a live job and file, on the job's thread.
        let (Some(job), Some(f)) = (unsafe { job(td) }, unsafe { f.as_mut() }) else {
            fail(td, "open_file before init");
            return 1;
        };
        let name = file_name(f);
        match job.open(&name) {
            Ok(i) => {
                f.engine_pos = i as u64;
                0
            }
            Err(e) => {
                fail(td, &e.to_string());
                1
            }
        }
    })
}

unsafe extern "C" fn close_file(_td: *mut thread_data, _f: *mut fio_file) -> c_int {
    // Channels stay open until cleanup: fio may reopen the file.
    0
}

unsafe extern "C" fn queue(td: *mut thread_data, u: *mut io_u) -> fio_q_status {
    guarded(td, "queue", fio_q_status::FIO_Q_BUSY, || {
        // SAFETY: fio passes a live job and io_u, on the job's thread.
        let (Some(job), Some(io_u)) = (unsafe { job(td) }, unsafe { u.as_mut() }) else {
            fail(td, "queue before init");
            return fio_q_status::FIO_Q_BUSY;
        };
        // SAFETY: an io_u's file is a live entry of the job's table.
        let Some(file) = (unsafe { io_u.file.as_ref() }) else {
            io_u.error = libc::EINVAL as u32;
            return fio_q_status::FIO_Q_COMPLETED;
        };
        // SAFETY: fio hands the io_u over until it is reaped.
        match unsafe { job.queue(file.engine_pos as usize, u) } {
            None => fio_q_status::FIO_Q_QUEUED,
            Some(errno) => {
                io_u.error = errno;
                fio_q_status::FIO_Q_COMPLETED
            }
        }
    })
}

unsafe extern "C" fn commit(td: *mut thread_data) -> c_int {
    guarded(td, "commit", -libc::EIO, || {
        // SAFETY: fio passes a live job, on the job's thread.
        let Some(job) = (unsafe { job(td) }) else {
            return -libc::EINVAL;
        };
        match job.commit() {
            Ok(()) => 0,
            Err(e) => {
                fail(td, &e.to_string());
                -libc::EIO
            }
        }
    })
}

unsafe extern "C" fn getevents(
    td: *mut thread_data,
    min: c_uint,
    max: c_uint,
    t: *const sys::timespec,
) -> c_int {
    guarded(td, "getevents", -libc::EIO, || {
        // SAFETY: fio passes a live job, on the job's thread.
        let Some(job) = (unsafe { job(td) }) else {
            return -libc::EINVAL;
        };
        // SAFETY: t is null or a live timespec.
        let timeout = unsafe { t.as_ref() }.map(|t| {
            Duration::new(
                t.tv_sec.max(0) as u64,
                t.tv_nsec.clamp(0, 999_999_999) as u32,
            )
        });
        match job.getevents(min as usize, max as usize, timeout) {
            Ok(n) => n as c_int,
            Err(e) => {
                fail(td, &e.to_string());
                -libc::EIO
            }
        }
    })
}

unsafe extern "C" fn event(td: *mut thread_data, i: c_int) -> *mut io_u {
    guarded(td, "event", std::ptr::null_mut(), || {
        // SAFETY: fio passes a live job, on the job's thread.
        unsafe { job(td) }
            .and_then(|j| j.event(i.max(0) as usize))
            .unwrap_or(std::ptr::null_mut())
    })
}

/// Per job, on its thread, at its end (also after a failed init): closes
/// its channels and core; the last job shuts the bdevs down.
unsafe extern "C" fn cleanup(td: *mut thread_data) {
    guarded(td, "cleanup", (), || {
        // SAFETY: fio passes a live job, on the job's thread; the Box is
        // taken exactly once (fio clears io_ops_data after cleanup).
        let job = unsafe {
            let p = (*td).io_ops_data as *mut Job;
            (*td).io_ops_data = std::ptr::null_mut();
            (!p.is_null()).then(|| Box::from_raw(p))
        };
        if let Some(job) = job {
            let left = job.close(CLOSE_WAIT);
            if left > 0 {
                fail(td, &format!("{left} I/Os still in flight at cleanup"));
            }
        }
        if let Some(p) = Process::current() {
            for line in p.leave(td as usize) {
                fail(td, &format!("shutdown: {line}"));
            }
        }
    })
}

/// The ops table, made once; fio writes its `dlhandle` into it.
pub fn table() -> *mut sys::ioengine_ops {
    // SAFETY: ioengine_ops is plain C data; all-zero means "no op".
    let mut ops: sys::ioengine_ops = unsafe { std::mem::zeroed() };
    ops.name = c"ferrothin".as_ptr();
    ops.version = sys::FIO_IOOPS_VERSION as c_int;
    ops.flags = (sys::FIO_RAWIO
        | sys::FIO_NOEXTEND
        | sys::FIO_NODISKUTIL
        | sys::FIO_MEMALIGN
        | sys::FIO_DISKLESSIO) as c_int;
    ops.setup = Some(setup);
    ops.init = Some(init);
    ops.queue = Some(queue);
    ops.commit = Some(commit);
    ops.getevents = Some(getevents);
    ops.event = Some(event);
    ops.cleanup = Some(cleanup);
    ops.open_file = Some(open_file);
    ops.close_file = Some(close_file);
    ops.option_struct_size = crate::options::RAW_SIZE as c_int;
    ops.options = crate::options::table();
    Box::into_raw(Box::new(ops))
}
