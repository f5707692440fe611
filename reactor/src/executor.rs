//! The per-reactor async executor and the cross-core calls built on it.
//!
//! Tasks are `async_task` local tasks: they never leave the reactor that
//! spawned them. A waker fired on the owning reactor pushes the task onto the
//! local run queue; fired from any other thread it travels through the
//! owner's inbox as a message, which also wakes the owner if it is parked.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_task::{Runnable, Task};

use crate::reactor::{current_shared_id, shared_id, with_local, Msg, ReactorShared};
use crate::{oneshot, ReactorError};

/// Spawns a future on the current reactor. Panics off a reactor thread.
pub fn spawn_local<F>(future: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let owner = with_local(|l| l.shared.clone()).expect("spawn_local called off a reactor thread");
    let schedule = move |r: Runnable| schedule(&owner, r);
    let (runnable, task) = async_task::spawn_local(future, schedule);
    runnable.schedule();
    task
}

fn schedule(owner: &Arc<ReactorShared>, r: Runnable) {
    if current_shared_id() == shared_id(owner) {
        let pushed = with_local(|l| l.runq.borrow_mut().push_back(r));
        debug_assert!(pushed.is_some());
    } else {
        owner.push(Msg::Run(r));
    }
}

/// The core number of the calling reactor, if this is a reactor thread.
pub fn current_core() -> Option<u32> {
    with_local(|l| l.shared.core)
}

/// The cores of the calling reactor's set.
pub fn cores() -> Vec<u32> {
    with_local(|l| l.set.reactors.iter().map(|r| r.core).collect()).unwrap_or_default()
}

/// Whether the calling reactor never parks (busy mode).
pub fn is_busy_mode() -> bool {
    with_local(|l| l.mode == crate::PollMode::Busy).unwrap_or(false)
}

/// The eventfd the calling reactor parks on. A completion source (an
/// io_uring, a socket) that signals it wakes a parked reactor.
pub fn wake_fd() -> Option<std::os::fd::RawFd> {
    with_local(|l| l.shared.efd.raw_fd())
}

fn target(core: u32) -> Result<Arc<ReactorShared>, ReactorError> {
    with_local(|l| l.set.get(core).cloned())
        .ok_or(ReactorError::NotOnReactor)?
        .ok_or(ReactorError::NoSuchCore(core))
}

/// Runs `f` on reactor `core` of the caller's set (in order per sender).
pub fn send(core: u32, f: impl FnOnce() + Send + 'static) -> Result<(), ReactorError> {
    target(core)?.push(Msg::Call(Box::new(f)));
    Ok(())
}

/// Spawns the future made by `f` on reactor `core`, detached.
pub fn spawn_on<Fut>(
    core: u32,
    f: impl FnOnce() -> Fut + Send + 'static,
) -> Result<(), ReactorError>
where
    Fut: Future + 'static,
{
    send(core, move || {
        spawn_local(async move {
            f().await;
        })
        .detach()
    })
}

/// Runs the future made by `f` on reactor `core` and returns its output to
/// the caller's reactor.
pub async fn call_on<T, Fut>(
    core: u32,
    f: impl FnOnce() -> Fut + Send + 'static,
) -> Result<T, ReactorError>
where
    T: Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    if current_core() == Some(core) {
        return Ok(f().await);
    }
    let (tx, rx) = oneshot::channel();
    spawn_on(core, move || async move { tx.send(f().await) })?;
    rx.await.map_err(|_| ReactorError::Stopped)
}

/// Yields to the reactor once: lets messages, pollers and other tasks run.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false).await
}

/// Completes after `d`, driven by a one-shot timer on the current reactor.
pub async fn sleep(d: Duration) {
    let (tx, rx) = oneshot::channel::<()>();
    let _timer = crate::after(d, move || tx.send(()));
    let _ = rx.await;
}

/// Runs `f` until it finishes (`Some(output)`) or `d` passes (`None`: `f`
/// is dropped where it stands), on the current reactor's timers.
pub async fn timeout<F: Future>(d: Duration, f: F) -> Option<F::Output> {
    struct Alarm {
        rang: Cell<bool>,
        waker: RefCell<Option<Waker>>,
    }
    let alarm = Rc::new(Alarm {
        rang: Cell::new(false),
        waker: RefCell::new(None),
    });
    let a = alarm.clone();
    let _timer = crate::after(d, move || {
        a.rang.set(true);
        if let Some(w) = a.waker.borrow_mut().take() {
            w.wake();
        }
    });
    let mut f = pin!(f);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if alarm.rang.get() {
            return Poll::Ready(None);
        }
        *alarm.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}
