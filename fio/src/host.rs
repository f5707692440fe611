//! What the engine uses of the fio executable that loaded it: its version
//! string, its job count and its error log. Looked up at run time
//! (`dlsym` in the global scope, where fio's `-rdynamic` symbols are)
//! rather than linked, so that the crate's unit tests, which run without
//! fio, link and run too.

use std::ffi::{c_char, c_int, c_uint, CStr, CString};

/// The address of `name` in the process's global scope, if it is there.
fn symbol(name: &CStr) -> Option<*mut libc::c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// fio's `fio_version_string` ("fio-3.33"), or None when not in fio.
pub fn fio_version() -> Option<String> {
    let p = symbol(c"fio_version_string")?;
    // SAFETY: fio defines it as a NUL-terminated `const char[]`; the
    // symbol's address is the array's.
    let s = unsafe { CStr::from_ptr(p as *const c_char) };
    Some(s.to_string_lossy().into_owned())
}

/// How many jobs fio made (`thread_number`), all parsed before any job's
/// setup runs; None when not in fio.
pub fn job_count() -> Option<u32> {
    let p = symbol(c"thread_number")?;
    // SAFETY: fio defines `unsigned int thread_number`; it only changes
    // while job files are parsed, before any engine code runs.
    Some(unsafe { *(p as *const c_uint) })
}

/// Prints `msg` on fio's error output (its `log_err`, so it lands where
/// fio's own errors do, also in client/server mode), or on stderr
/// outside fio.
pub fn log_err(msg: &str) {
    type LogErr = unsafe extern "C" fn(*const c_char, ...) -> c_int;
    let line = CString::new(format!("{msg}\n").replace('\0', " ")).unwrap_or_default();
    match symbol(c"log_err") {
        Some(f) => {
            // SAFETY: fio's `int log_err(const char *fmt, ...)`; a fixed
            // "%s" format with one C string argument.
            unsafe {
                let f: LogErr = std::mem::transmute::<*mut libc::c_void, LogErr>(f);
                f(c"%s".as_ptr(), line.as_ptr());
            }
        }
        None => eprintln!("{msg}"),
    }
}
