//! The per-core state this crate keeps in thread-locals (one instruction to
//! reach on the I/O path), as a simulated reactor set needs it: all its
//! cores share one thread, so when the set switches cores it takes one
//! core's state out of the thread and puts the next one's in
//! (`reactor::SimSet::follow`). Modules with thread-local state of their
//! own (thin's channels) are followed the same way, by their own pair. Caches (the pools of free I/Os and
//! buffers) stay put: sharing them between simulated cores changes nothing.

use std::any::Any;
use std::collections::VecDeque;

use crate::io::{put_core_queue, take_core_queue};
use crate::IoBox;

struct CoreState {
    queue: (VecDeque<IoBox>, Option<reactor::Poller>, bool),
}

/// Moves this thread's per-core state out, leaving a new core's.
#[doc(hidden)]
pub fn sim_take_core_state() -> Box<dyn Any> {
    Box::new(CoreState {
        queue: take_core_queue(),
    })
}

/// Moves state that `sim_take_core_state` took back into this thread.
#[doc(hidden)]
pub fn sim_put_core_state(state: Box<dyn Any>) {
    if let Ok(s) = state.downcast::<CoreState>() {
        put_core_queue(s.queue);
    }
}
