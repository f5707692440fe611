//! Shutdown signals: SIGINT and SIGTERM are blocked in every thread and
//! taken synchronously by the main thread, so no handler runs at a random
//! point and shutdown is ordinary code.

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, libc::SIGINT);
        libc::sigaddset(&mut s, libc::SIGTERM);
        s
    }
}

pub fn block_shutdown_signals() -> anyhow::Result<()> {
    let s = set();
    // SAFETY: pthread_sigmask reads a valid set; the old mask is not kept.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut()) };
    if rc != 0 {
        anyhow::bail!("pthread_sigmask failed: {rc}");
    }
    Ok(())
}

/// Waits for SIGINT or SIGTERM; returns its name.
pub fn wait() -> &'static str {
    let s = set();
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait reads the set and writes one int we own.
        if unsafe { libc::sigwait(&s, &mut sig) } == 0 {
            return if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
        }
    }
}
