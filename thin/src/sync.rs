//! Single-core async primitives for the metadata core (no atomics: every
//! user runs on that one reactor).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use reactor::oneshot;

/// A FIFO async mutex.
#[derive(Default)]
pub struct AsyncLock {
    held: Cell<bool>,
    waiters: RefCell<VecDeque<oneshot::Sender<()>>>,
}

pub struct Guard<'a>(&'a AsyncLock);

impl AsyncLock {
    pub async fn lock(&self) -> Guard<'_> {
        if !self.held.get() {
            self.held.set(true);
            return Guard(self);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push_back(tx);
        // Ownership is handed over by the guard's drop: `held` stays true.
        let _ = rx.await;
        Guard(self)
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let next = self.0.waiters.borrow_mut().pop_front();
        match next {
            Some(tx) => tx.send(()),
            None => self.0.held.set(false),
        }
    }
}

/// Wakes every waiter at once (a broadcast; waiters re-check their
/// condition).
#[derive(Default)]
pub struct Notify {
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl Notify {
    pub async fn wait(&self) {
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push(tx);
        let _ = rx.await;
    }

    pub fn notify_all(&self) {
        for tx in self.waiters.take() {
            tx.send(());
        }
    }
}
