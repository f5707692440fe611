//! A controller's supervisor: one task on the admin core per attached
//! controller. While the controller is enabled it sends Keep Alive every
//! KATO/2 and waits for a loss: the admin queue's connection ending, a
//! Keep Alive unanswered within the KATO, an I/O queue's connection
//! ending (any core reports it), or bdev_nvme_reset_controller.
//!
//! What a loss does follows SPDK's knobs (ctrlr_loss_timeout_sec,
//! reconnect_delay_sec, fast_io_fail_timeout_sec):
//!
//! - ctrlr_loss_timeout_sec 0 (SPDK's default, and ours): no reconnect.
//!   The controller is failed: its queues close, their I/O fails, later
//!   I/O fails at once, until it is detached.
//! - otherwise the controller goes to `resetting`: every queue pair is
//!   closed for a reconnect (its unfinished I/O is held on its core, see
//!   channel.rs), and a new association is made at once and then every
//!   reconnect_delay_sec (`reconnect_is_delayed` between attempts): ICReq,
//!   Connect, enable, Identify, checked to be the same controller and
//!   namespaces. Once back (`enabled`), each core opens its I/O queue
//!   again with its next I/O and the held I/O is sent again.
//! - fast_io_fail_timeout_sec after the loss (when not 0), held and new
//!   I/O fail with an I/O error until the controller is back.
//! - ctrlr_loss_timeout_sec after the loss (when not -1), the controller
//!   is deleted and its bdevs hot-removed.
//!
//! A detach, or the daemon's shutdown, drops the supervisor's task:
//! an attempt under way is abandoned and its connection closed.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cmd;
use super::ctrlr::{admin_config, bring_up_again, delete_lost, shutting_down, Ctrlr, State};
use super::qpair::Qpair;
use super::NvmeError;

/// One reconnect attempt at most (enable waits included).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Tells the supervisor when this admin queue's connection ends.
pub(super) fn watch_admin(qp: &Rc<Qpair>, c: &Arc<Ctrlr>) {
    let gen = c.generation();
    let w = Arc::downgrade(c);
    qp.on_lost(Box::new(move |_, lost| {
        if let (true, Some(c)) = (lost, w.upgrade()) {
            c.report_loss(gen);
        }
    }));
}

/// Closes an attempt's queue pair unless it is kept.
struct Attempt(Option<Rc<Qpair>>);

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(q) = self.0.take() {
            q.close();
        }
    }
}

pub(super) async fn supervise(admin: Rc<RefCell<Rc<Qpair>>>, c: Arc<Ctrlr>) {
    loop {
        let why = healthy(&admin, &c).await;
        let reset = c.take_reset_asked();
        if !c.reconnects() && !reset {
            admin.borrow().close();
            c.enter(State::Failed);
            if !c.failed.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    "nvme: controller {} failed ({why}); its I/O fails until it is detached \
                     (ctrlr_loss_timeout_sec 0: no reconnect)",
                    c.opts.name
                );
            }
            c.set_fast_failed(true);
            c.close_io_queues();
            return;
        }
        if !recover(&admin, &c, &why).await {
            return;
        }
    }
}

/// Keep-alive until the controller is lost: why.
async fn healthy(admin: &RefCell<Rc<Qpair>>, c: &Ctrlr) -> String {
    let kato_ms = c.opts.kato_ms;
    let kato = Duration::from_millis(u64::from(kato_ms));
    let period = (kato / 2).max(Duration::from_millis(100));
    loop {
        if reactor::timeout(period, c.wait_loss()).await.is_some() {
            return if c.reset_pending() {
                "a reset was asked for".into()
            } else {
                "a queue's connection ended".into()
            };
        }
        let q = admin.borrow().clone();
        if q.is_failed() {
            return "its admin queue failed".into();
        }
        if kato_ms == 0 || c.data.kas == 0 {
            continue;
        }
        match reactor::timeout(kato, q.admin(cmd::keep_alive(), Vec::new())).await {
            None => return format!("no Keep Alive answer within {kato:?}"),
            Some(Err(e)) => return e.to_string(),
            Some(Ok(_)) if q.is_failed() => return "its admin queue failed".into(),
            Some(Ok(_)) => {}
        }
    }
}

/// Reconnects per the controller's timeouts: true once it is back,
/// false when it was given up (failed, or deleted after its loss
/// timeout).
async fn recover(admin: &RefCell<Rc<Qpair>>, c: &Arc<Ctrlr>, why: &str) -> bool {
    let o = &c.opts;
    let once = !c.reconnects();
    let lost_at = Instant::now();
    c.enter(State::Resetting);
    c.clear_loss();
    admin.borrow().close();
    c.reset_queues();
    if once {
        tracing::info!("nvme: controller {}: resetting ({why})", o.name);
    } else {
        tracing::warn!(
            "nvme: controller {} lost ({why}); reconnecting every {} s \
             (I/O waits{}; deleted after {})",
            o.name,
            o.reconnect_delay_sec,
            match o.fast_io_fail_timeout_sec {
                0 => String::new(),
                s => format!(", fails after {s} s"),
            },
            match o.ctrlr_loss_timeout_sec {
                -1 => "never".to_string(),
                s => format!("{s} s"),
            },
        );
    }
    if shutting_down() {
        c.set_fast_failed(true);
    }
    // Fast-fail on time, even in the middle of an attempt.
    let _fast = (o.fast_io_fail_timeout_sec > 0).then(|| {
        let w = Arc::downgrade(c);
        reactor::after(Duration::from_secs(o.fast_io_fail_timeout_sec), move || {
            if let Some(c) = w.upgrade() {
                tracing::warn!(
                    "nvme: controller {} still lost after fast_io_fail_timeout_sec {}: \
                     its I/O fails until it is back",
                    c.opts.name,
                    c.opts.fast_io_fail_timeout_sec
                );
                c.set_fast_failed(true);
            }
        })
    });
    let deadline = u64::try_from(o.ctrlr_loss_timeout_sec)
        .ok()
        .filter(|&s| s > 0)
        .map(|s| lost_at + Duration::from_secs(s));
    let delay = Duration::from_secs(o.reconnect_delay_sec.max(1));
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        c.enter(State::Resetting);
        let budget = deadline
            .map_or(ATTEMPT_TIMEOUT, |d| {
                d.saturating_duration_since(Instant::now())
            })
            .clamp(Duration::from_secs(1), ATTEMPT_TIMEOUT);
        let tried = reactor::timeout(budget, attempt(c))
            .await
            .unwrap_or_else(|| Err(NvmeError::Timeout(format!("reconnect within {budget:?}"))));
        match tried {
            Ok(qp) => {
                *admin.borrow_mut() = qp;
                c.clear_loss();
                c.set_fast_failed(false);
                c.enter(State::Enabled);
                tracing::info!(
                    "nvme: controller {} reconnected after {:.1} s ({attempts} attempt(s)), cntlid {}",
                    o.name,
                    lost_at.elapsed().as_secs_f64(),
                    c.cntlid()
                );
                return true;
            }
            Err(e) => {
                // The first failure and then one in ten: a target away
                // for hours must not fill the log.
                if attempts == 1 || attempts.is_multiple_of(10) {
                    tracing::warn!(
                        "nvme: controller {}: reconnect attempt {attempts} failed: {e}",
                        o.name
                    );
                }
            }
        }
        if once {
            c.enter(State::Failed);
            c.failed.store(true, Ordering::Release);
            c.set_fast_failed(true);
            c.close_io_queues();
            tracing::warn!(
                "nvme: controller {} failed after its reset; its I/O fails until it is detached",
                o.name
            );
            return false;
        }
        c.enter(State::ReconnectDelayed);
        let next = Instant::now() + delay;
        let until = deadline.map_or(next, |d| d.min(next));
        reactor::sleep(until.saturating_duration_since(Instant::now())).await;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                "nvme: controller {} not back within ctrlr_loss_timeout_sec {}: \
                 deleting it and its bdevs",
                o.name,
                o.ctrlr_loss_timeout_sec
            );
            delete_lost(c);
            return false;
        }
    }
}

/// One reconnect attempt: the new admin queue, checked, installed as
/// the current association (the caller marks the controller enabled).
async fn attempt(c: &Arc<Ctrlr>) -> Result<Rc<Qpair>, NvmeError> {
    let mut cfg = admin_config(&c.opts, c.addr, &c.hostnqn, c.hostid);
    cfg.quiet = true;
    let qp = Qpair::start(cfg);
    let mut guard = Attempt(Some(qp.clone()));
    let a = bring_up_again(c, &qp).await?;
    c.install(&a);
    watch_admin(&qp, c);
    if qp.is_failed() {
        return Err(NvmeError::Transport(
            "the new admin queue failed at once".into(),
        ));
    }
    guard.0 = None;
    Ok(qp)
}
