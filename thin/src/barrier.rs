//! Asymmetric fences: the rare side pays so that the common one need not.
//!
//! An I/O core counts an I/O in its epoch and then reads the table; the
//! metadata core changes the table, flips the epoch and then reads the
//! counts. Each side stores and then loads, so one of them needs a full
//! fence between the two, or each can miss the other. A locked add on every
//! I/O is that fence, and it also waits for the core's streaming stores to
//! drain. Linux's `membarrier` (private expedited) instead makes every core
//! running one of our threads execute a full fence before it returns, so
//! the metadata core pays it once per drain (rare: a snapshot, a discard, a
//! commit that freed blocks) and the I/O path stores a plain count, behind
//! a compiler fence only.
//!
//! Where the kernel does not offer it, the I/O path keeps the locked add.

use std::sync::OnceLock;

// From linux/membarrier.h.
const CMD_QUERY: libc::c_long = 0;
const CMD_GLOBAL: libc::c_long = 1 << 0;
const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

fn membarrier(cmd: libc::c_long) -> libc::c_long {
    // SAFETY: membarrier takes no pointers; an unknown command or an
    // unsupported kernel is reported as -1 with errno.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    }
}

/// Whether this process uses the asymmetric scheme: decided once, at the
/// first pool's first volume, before any I/O counts.
pub fn asymmetric() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var_os("FERROTHIN_NO_MEMBARRIER").is_some() {
            return false;
        }
        let cmds = membarrier(CMD_QUERY);
        let wanted = CMD_PRIVATE_EXPEDITED | CMD_REGISTER_PRIVATE_EXPEDITED;
        let on =
            cmds >= 0 && cmds & wanted == wanted && membarrier(CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
        tracing::debug!(
            "thin epochs: asymmetric fences {}",
            if on { "on" } else { "off" }
        );
        on
    })
}

/// The heavy side's fence: on return, every one of our threads has passed
/// a full fence since the call began. False if the kernel refused both
/// ways of doing it (the caller must then treat the drain as failed).
pub fn heavy() -> bool {
    membarrier(CMD_PRIVATE_EXPEDITED) == 0 || membarrier(CMD_GLOBAL) == 0
}
