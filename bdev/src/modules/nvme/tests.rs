//! The host against the scripted target (fake_target.rs): data with
//! scatter-gather buffers through every split (in-capsule, R2T with
//! several H2CData PDUs, reads in several C2HData PDUs, I/O over MDTS),
//! digests both ways; and each misbehaviour of the target fails the I/O
//! with an I/O error, once, and later I/O at once, with no panic and no
//! hang; detach works after all of it.

use std::time::Duration;

use reactor::ReactorSet;

use super::fake_target::{Evil, FakeTarget, BLOCKS, BS};
use super::{attach, detach, AttachOptions};
use crate::test_util::{check_integrity, opts, unique};
use crate::{IoBox, IoBuf, IoStatus, IoType};

fn options(name: &str, port: u16, digests: bool) -> AttachOptions {
    let mut o = AttachOptions::new(
        name,
        "127.0.0.1",
        &port.to_string(),
        "nqn.2026-12.test:fake",
    );
    o.hdgst = digests;
    o.ddgst = digests;
    o
}

#[test]
fn data_integrity_through_every_split_with_and_without_digests() {
    for digests in [false, true] {
        let t = FakeTarget::start(Evil::None);
        let set = ReactorSet::start(&[0], opts()).expect("reactor");
        let name = unique("fk");
        let (port, nguid) = (t.port, t.nguid_id);
        let checked = set
            .block_on(0, move || async move {
                let names = attach(options(&name, port, digests)).await.expect("attach");
                assert_eq!(names, vec![format!("{name}n1")]);
                let b = crate::lookup(&names[0]).expect("bdev");
                assert_eq!((b.block_size(), b.num_blocks()), (BS as u32, BLOCKS as u64));
                // The NGUID is the bdev's UUID.
                assert_eq!(b.uuid().0[..4], nguid.to_le_bytes());
                assert!(b.io_type_supported(IoType::Unmap) && b.io_type_supported(IoType::Flush));
                let desc = crate::open(&names[0], true, None).expect("open");
                let ch = desc.io_channel().expect("channel");
                let n = check_integrity(&ch, 3, 200, true).await;
                // Larger than MDTS (8 KiB): split into several commands.
                let big = IoBuf::from_slice(&vec![0x5Au8; 64 << 10]);
                ch.write(7, big).await.expect("big write");
                let back = ch.read(7, 128).await.expect("big read");
                assert!(back.as_slice().iter().all(|&x| x == 0x5A));
                ch.flush().await.expect("flush");
                // A flush of a range: one Flush command whatever the range.
                let mut f = IoBox::new();
                f.prep(IoType::Flush, 100, 10);
                assert_eq!(ch.submit_wait(f).await.status(), IoStatus::Success);
                drop(ch);
                drop(desc);
                detach(&name).await.expect("detach");
                assert!(crate::lookup(&names[0]).is_none());
                n
            })
            .expect("reactor");
        assert_eq!(checked, 200);
        set.stop();
    }
}

#[test]
fn a_misbehaving_target_fails_io_once_and_never_panics_or_hangs() {
    for evil in [
        Evil::UnknownCid,
        Evil::DataBeyond,
        Evil::TermReq,
        Evil::Close,
        Evil::TwoResponses,
        Evil::R2TForInCapsule,
        Evil::Silent,
    ] {
        let t = FakeTarget::start(evil);
        let set = ReactorSet::start(&[0], opts()).expect("reactor");
        let name = unique("evil");
        let port = t.port;
        set.block_on(0, move || async move {
            let mut o = options(&name, port, false);
            // A silent target is found out by its unanswered Keep Alive.
            o.kato_ms = 1000;
            let names = attach(o).await.expect("attach");
            let desc = crate::open(&names[0], true, None).expect("open");
            let ch = desc.io_channel().expect("channel");
            let bad = if evil == Evil::R2TForInCapsule {
                let mut io = IoBox::new();
                io.prep(IoType::Write, 0, 1);
                io.set_buf(IoBuf::zeroed(BS));
                io
            } else {
                let mut io = IoBox::new();
                io.prep(IoType::Read, 0, 1);
                io.set_buf(IoBuf::new(BS));
                io
            };
            let out = reactor::timeout(Duration::from_secs(10), ch.submit_wait(bad))
                .await
                .unwrap_or_else(|| panic!("{evil:?}: the I/O hung"));
            if evil == Evil::TwoResponses {
                // The first response is a good one; the second, for a
                // CID no longer outstanding, ends the connection.
                assert_eq!(out.status(), IoStatus::Success);
                reactor::sleep(Duration::from_millis(200)).await;
            } else {
                assert_eq!(out.status(), IoStatus::IoError(libc::EIO), "{evil:?}");
            }
            // Later I/O fails at once: the queue is gone.
            let later = reactor::timeout(Duration::from_secs(10), ch.read(0, 1))
                .await
                .unwrap_or_else(|| panic!("{evil:?}: a later I/O hung"));
            assert_eq!(later.err(), Some(IoStatus::IoError(libc::EIO)), "{evil:?}");
            drop(ch);
            drop(desc);
            detach(&name).await.expect("detach");
        })
        .expect("reactor");
        set.stop();
    }
}

#[test]
fn more_io_in_flight_than_the_queue_holds_all_complete_in_place() {
    let t = FakeTarget::start(Evil::None);
    let set = ReactorSet::start(&[0], opts()).expect("reactor");
    let name = unique("deep");
    let port = t.port;
    set.block_on(0, move || async move {
        let names = attach(options(&name, port, true)).await.expect("attach");
        let desc = crate::open(&names[0], true, None).expect("open");
        let ch = std::rc::Rc::new(desc.io_channel().expect("channel"));
        // 200 writes of 8 blocks at once (the queue holds 31 commands;
        // each write goes by R2T), then 200 reads at once.
        let n = 200u64;
        let writes: Vec<_> = (0..n)
            .map(|i| {
                let ch = ch.clone();
                reactor::spawn_local(async move {
                    ch.write(i * 8, IoBuf::from_slice(&[i as u8 + 1; 8 * BS]))
                        .await
                })
            })
            .collect();
        for w in writes {
            w.await.expect("write");
        }
        let reads: Vec<_> = (0..n)
            .map(|i| {
                let ch = ch.clone();
                reactor::spawn_local(async move { (i, ch.read(i * 8, 8).await) })
            })
            .collect();
        for r in reads {
            let (i, got) = r.await;
            let got = got.expect("read");
            assert!(
                got.as_slice().iter().all(|&x| x == i as u8 + 1),
                "blocks of write {i}"
            );
        }
        drop(ch);
        drop(desc);
        detach(&name).await.expect("detach");
    })
    .expect("reactor");
    set.stop();
}

#[test]
fn detach_from_another_core_closes_every_connection() {
    let t = FakeTarget::start(Evil::None);
    let set = ReactorSet::start(&[0, 1], opts()).expect("reactors");
    let name = unique("far");
    let port = t.port;
    let n = name.clone();
    let bdev = set
        .block_on(0, move || async move {
            attach(options(&n, port, false)).await.expect("attach")[0].clone()
        })
        .expect("reactor");
    // I/O from core 1: its own queue pair.
    let b = bdev.clone();
    set.block_on(1, move || async move {
        let desc = crate::open(&b, true, None).expect("open");
        let ch = desc.io_channel().expect("channel");
        ch.write(0, IoBuf::from_slice(&[7u8; BS]))
            .await
            .expect("write");
    })
    .expect("reactor");
    wait_live(&t, 1, "the I/O queue closes with its last channel");
    let n = name.clone();
    set.block_on(1, move || async move { detach(&n).await.expect("detach") })
        .expect("reactor");
    wait_live(&t, 0, "detach on core 1 closes core 0's admin queue");
    assert!(crate::lookup(&bdev).is_none());
    set.stop();
}

/// Waits until the target has `n` connections open.
fn wait_live(t: &FakeTarget, n: usize, what: &str) {
    let start = std::time::Instant::now();
    while t.live.load(std::sync::atomic::Ordering::SeqCst) != n {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A namespace that changes before the host has enabled namespace
/// notices raises no event, ever: the host finds the change by looking
/// at every namespace once notices are on.
#[test]
fn a_change_before_notices_are_enabled_is_found_without_an_event() {
    let t = FakeTarget::start(Evil::GrowsAtNotices);
    let set = ReactorSet::start(&[0], opts()).expect("reactor");
    let name = unique("grow");
    let port = t.port;
    let n = name.clone();
    let blocks = set
        .block_on(0, move || async move {
            let names = attach(options(&n, port, false)).await.expect("attach");
            let b = crate::lookup(&names[0]).expect("bdev");
            let start = std::time::Instant::now();
            while b.num_blocks() != 2 * BLOCKS as u64 && start.elapsed() < Duration::from_secs(5) {
                reactor::sleep(Duration::from_millis(10)).await;
            }
            let blocks = b.num_blocks();
            drop(b);
            detach(&n).await.expect("detach");
            blocks
        })
        .expect("reactor");
    assert_eq!(blocks, 2 * BLOCKS as u64, "the bdev follows the namespace");
    set.stop();
}

/// At shutdown a vbdev without state may still sit on a namespace (the
/// modules with state have closed): the detach goes ahead under it, and
/// the controller gets its shutdown notification rather than a dropped
/// connection that the target keeps until its keep-alive runs out. A
/// user's detach is still refused while the bdev is claimed.
#[test]
fn shutdown_detaches_under_a_claim_and_notifies_the_controller() {
    let t = FakeTarget::start(Evil::None);
    let set = ReactorSet::start(&[0], opts()).expect("reactor");
    let name = unique("shut");
    let port = t.port;
    let (refused, shut) = set
        .block_on(0, move || async move {
            let names = attach(options(&name, port, false)).await.expect("attach");
            let mut desc = crate::open(&names[0], false, None).expect("open");
            desc.claim("delay").expect("claim");
            let refused = detach(&name).await;
            let shut = super::ctrlr::detach_as(&name, super::Detach::Shutdown).await;
            let gone = crate::lookup(&names[0]).is_none();
            drop(desc);
            (refused.map_err(|e| e.to_string()), shut.map(|()| gone))
        })
        .expect("reactor");
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("claimed")),
        "{refused:?}"
    );
    assert!(shut.expect("the shutdown detach"), "the bdev is gone");
    assert_eq!(t.shutdowns.load(std::sync::atomic::Ordering::SeqCst), 1);
    wait_live(&t, 0, "the admin queue closes after the notification");
    set.stop();
}
