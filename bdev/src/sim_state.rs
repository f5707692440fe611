//! The per-core state this crate keeps in thread-locals (one instruction to
//! reach on the I/O path), as a simulated reactor set needs it: all its
//! cores share one thread, so when the set switches cores it takes one
//! core's state out of the thread and puts the next one's in
//! (`reactor::SimSet::follow`). Caches (the pools of free I/Os and
//! buffers) stay put: sharing them between simulated cores changes nothing.

use std::any::Any;
use std::collections::VecDeque;

use crate::io::{put_core_queue, take_core_queue};
use crate::modules::thin::{put_channels, take_channels};
use crate::IoBox;

struct CoreState {
    queue: (VecDeque<IoBox>, Option<reactor::Poller>, bool),
    thin_channels: Box<dyn Any>,
}

/// Moves this thread's per-core state out, leaving a new core's.
#[doc(hidden)]
pub fn sim_take_core_state() -> Box<dyn Any> {
    Box::new(CoreState {
        queue: take_core_queue(),
        thin_channels: take_channels(),
    })
}

/// Moves state that `sim_take_core_state` took back into this thread.
#[doc(hidden)]
pub fn sim_put_core_state(state: Box<dyn Any>) {
    if let Ok(s) = state.downcast::<CoreState>() {
        put_core_queue(s.queue);
        put_channels(s.thin_channels);
    }
}
