//! Asynchronous events: the host keeps one Asynchronous Event Request
//! outstanding on the admin queue (with namespace attribute notices
//! enabled by Set Features 0x0B). When the target answers one with a
//! namespace-attribute-changed notice, the Changed Namespace List (log
//! 04h, which also re-arms the event) names the namespaces to look at
//! again: a namespace whose size changed resizes its bdev (the bdev
//! layer tells its openers), a new one gets a bdev, one that is gone
//! (Identify says size 0) has its bdev hot-removed. A list that
//! overflowed (first entry 0xFFFFFFFF) means every namespace.
//!
//! One task per controller on the admin core, beside the supervisor:
//! after a reconnect it arms the new admin queue the same way; a target
//! that refuses AERs gets none. Each time notices are enabled every
//! namespace is looked at once, for what changed before they were.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::cmd;
use super::ctrlr::{admin_cmd, make_bdev, ns_identity, Ctrlr, NsIdent, State};
use super::identify::{ns_list, ns_uuid, NsData};
use super::qpair::Qpair;
use super::NvmeError;

/// Waits for the controller's next association (after a reconnect).
async fn next_association(c: &Weak<Ctrlr>, after: u64) -> Option<Arc<Ctrlr>> {
    loop {
        let ctrlr = c.upgrade()?;
        if ctrlr.failed.load(Ordering::Acquire) {
            return None;
        }
        if ctrlr.state() == State::Enabled && ctrlr.generation() != after {
            return Some(ctrlr);
        }
        drop(ctrlr);
        reactor::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) async fn events(admin: Rc<RefCell<Rc<Qpair>>>, c: Weak<Ctrlr>) {
    let mut gen = match c.upgrade() {
        Some(c) => c.generation(),
        None => return,
    };
    loop {
        let qp = admin.borrow().clone();
        match listen(&qp, &c).await {
            Ok(()) => return,
            Err(e) => tracing::debug!("nvme: AER: {e}"),
        }
        // The admin queue ended: wait for the next one.
        let Some(ctrlr) = next_association(&c, gen).await else {
            return;
        };
        gen = ctrlr.generation();
    }
}

/// Arms AERs on `qp` and handles what they say until the queue fails
/// (Err) or the target refuses them (Ok: nothing more to do).
async fn listen(qp: &Qpair, c: &Weak<Ctrlr>) -> Result<(), NvmeError> {
    let r = qp.admin(cmd::aen_config(), Vec::new()).await?;
    if !r.cqe.status.is_success() {
        tracing::info!("nvme: the controller refuses namespace attribute notices: no AER");
        return Ok(());
    }
    // A change made before the notices were on raised no event and never
    // will: between the attach's Identify and this Set Features (or
    // while a reconnect was under way). One look at every namespace now
    // finds it; a change from here on is an event.
    if let Some(ctrlr) = c.upgrade() {
        if let Err(e) = rescan(qp, &ctrlr, None).await {
            tracing::debug!("nvme: rescan after enabling notices: {e}");
        }
    }
    loop {
        let r = qp.admin(cmd::async_event(), Vec::new()).await?;
        if !r.cqe.status.is_success() {
            tracing::info!(
                "nvme: Asynchronous Event Request refused (status {:#x}/{:#x}): no AER",
                r.cqe.status.sct(),
                r.cqe.status.sc()
            );
            return Ok(());
        }
        let dw0 = r.cqe.dw0;
        let (kind, info, log) = (dw0 & 7, (dw0 >> 8) & 0xFF, (dw0 >> 16) & 0xFF);
        let Some(ctrlr) = c.upgrade() else {
            return Ok(());
        };
        if kind == 2 && info == 0 {
            let page = admin_cmd(
                qp,
                "Get Log Page (changed namespaces)",
                cmd::get_log(cmd::CHANGED_NS_LOG),
            )
            .await?;
            let listed = ns_list(&page.data);
            let all = listed.first() == Some(&0xFFFF_FFFF);
            rescan(qp, &ctrlr, if all { None } else { Some(listed) }).await?;
        } else {
            if log != 0 {
                // Another event: read its log so the controller may
                // send the next one of its kind.
                let _ = qp.admin(cmd::get_log(log as u8), Vec::new()).await?;
            }
            // A target that answers every AER at once must not make
            // this a busy loop.
            reactor::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Looks at `nsids` again (None: every namespace, known or active).
async fn rescan(qp: &Qpair, c: &Arc<Ctrlr>, nsids: Option<Vec<u32>>) -> Result<(), NvmeError> {
    let nsids = match nsids {
        Some(l) => l,
        None => {
            let mut all: Vec<u32> = c.namespace_list().iter().map(|n| n.nsid).collect();
            all.extend(super::ctrlr::active_namespaces(qp).await?);
            all.sort_unstable();
            all.dedup();
            all
        }
    };
    for nsid in nsids {
        let r = admin_cmd(qp, "Identify Namespace", cmd::identify(0, nsid)).await?;
        let ns = NsData::parse(&r.data)
            .ok()
            .filter(|n| n.nsze > 0 && n.ncap > 0);
        let uuid = match ns {
            Some(_) => match qp.admin(cmd::identify(3, nsid), Vec::new()).await? {
                r if r.cqe.status.is_success() => ns_uuid(&r.data),
                _ => None,
            },
            None => None,
        };
        apply(c, nsid, ns, uuid);
    }
    Ok(())
}

/// What namespace `nsid` is now (None: gone), applied to its bdev.
fn apply(c: &Arc<Ctrlr>, nsid: u32, ns: Option<NsData>, uuid: Option<[u8; 16]>) {
    let name = format!("{}n{nsid}", c.opts.name);
    let known = c.namespace_list().into_iter().find(|n| n.nsid == nsid);
    match (known, ns) {
        (None, None) => {}
        (Some(_), None) => {
            tracing::info!(
                "nvme: namespace {nsid} of {} is gone: removing {name}",
                c.opts.name
            );
            c.drop_namespace(nsid, &name);
            if let Err(e) = crate::hot_remove(&name) {
                tracing::warn!("nvme: removing {name}: {e}");
            }
        }
        (Some(k), Some(ns)) if k.block_size == ns.block_size && k.id == ns_identity(&ns, uuid) => {
            if k.nsze == ns.nsze {
                return;
            }
            let Some(b) = crate::lookup(&name) else {
                return;
            };
            match b.notify_resize(ns.nsze) {
                Ok(()) => {
                    c.set_nsze(nsid, ns.nsze);
                    tracing::info!("nvme: {name} resized to {} blocks", ns.nsze);
                }
                Err(e) => {
                    tracing::warn!("nvme: {name}: the namespace is now {} blocks: {e}", ns.nsze)
                }
            }
        }
        (Some(_), Some(ns)) => {
            // Another namespace under the same NSID: the old bdev goes,
            // a new one comes.
            c.drop_namespace(nsid, &name);
            if let Err(e) = crate::hot_remove(&name) {
                tracing::warn!("nvme: removing {name}: {e}");
            }
            add(c, nsid, &name, &ns, uuid);
        }
        (None, Some(ns)) => add(c, nsid, &name, &ns, uuid),
    }
}

fn add(c: &Arc<Ctrlr>, nsid: u32, name: &str, ns: &NsData, uuid: Option<[u8; 16]>) {
    match make_bdev(c, name, nsid, ns, uuid, false) {
        Ok(()) => {
            c.add_namespace(
                NsIdent {
                    nsid,
                    block_size: ns.block_size,
                    nsze: ns.nsze,
                    id: ns_identity(ns, uuid),
                },
                name,
            );
            tracing::info!(
                "nvme: namespace {nsid} of {} appeared: bdev {name}",
                c.opts.name
            );
        }
        Err(e) => tracing::warn!(
            "nvme: namespace {nsid} of {}: bdev {name}: {e}",
            c.opts.name
        ),
    }
}
