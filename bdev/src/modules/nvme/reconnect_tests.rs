//! Reconnect against the scripted target (fake_target.rs), which can go
//! away (port closed, connections dropped) and come back on the same
//! port with the same namespace: I/O held while it is away completes
//! once it is back; I/O in flight on a dropped queue is sent again;
//! fast_io_fail_timeout_sec fails held I/O; ctrlr_loss_timeout_sec
//! deletes the controller and its bdev; detach in the middle of a
//! reconnect is prompt; bdev_nvme_reset_controller makes a new
//! association.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reactor::ReactorSet;

use super::ctrlr::{controllers, reset};
use super::fake_target::{Evil, FakeTarget, BS};
use super::{attach, detach, AttachOptions};
use crate::test_util::{opts, unique};
use crate::{IoBuf, IoStatus};

fn options(name: &str, port: u16, loss: i64, delay: u64, fast: u64) -> AttachOptions {
    let mut o = AttachOptions::new(
        name,
        "127.0.0.1",
        &port.to_string(),
        "nqn.2026-12.test:fake",
    );
    o.ctrlr_loss_timeout_sec = loss;
    o.reconnect_delay_sec = delay;
    o.fast_io_fail_timeout_sec = fast;
    o.kato_ms = 2000;
    o
}

fn state(name: &str) -> Option<String> {
    controllers(Some(name))
        .ok()
        .and_then(|v| v[0]["ctrlrs"][0]["state"].as_str().map(str::to_string))
}

/// The controller's state, waited for (off the reactors).
fn wait_state(name: &str, want: Option<&str>, within: Duration) {
    let start = Instant::now();
    while state(name).as_deref() != want {
        assert!(
            start.elapsed() < within,
            "{name}: state {:?}, waited for {want:?}",
            state(name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn io_held_while_the_target_is_away_completes_when_it_is_back() {
    let mut t = FakeTarget::start(Evil::None);
    let set = ReactorSet::start(&[0, 1], opts()).expect("reactors");
    let name = unique("back");
    let (port, n) = (t.port, name.clone());
    let bdev = set
        .block_on(0, move || async move {
            attach(options(&n, port, 60, 1, 0)).await.expect("attach")[0].clone()
        })
        .expect("reactor");
    // Core 1 writes, then the target goes away with the writer's
    // channel open: its next I/O is held, not failed.
    let b = bdev.clone();
    let (w, r, waited, after) = std::thread::scope(|s| {
        let pending = s.spawn(|| {
            set.block_on(1, move || async move {
                let desc = crate::open(&b, true, None).expect("open");
                let ch = desc.io_channel().expect("channel");
                ch.write(0, IoBuf::from_slice(&[1u8; 4 * BS]))
                    .await
                    .expect("write before");
                // Wait here until the target is gone (the test stops it).
                reactor::sleep(Duration::from_millis(600)).await;
                let start = Instant::now();
                let w = ch.write(8, IoBuf::from_slice(&[2u8; 2 * BS])).await;
                let r = ch.read(0, 4).await;
                let waited = start.elapsed();
                let after = ch.read(8, 2).await;
                (
                    w.is_ok(),
                    r.map(|b| b.as_slice().to_vec()),
                    waited,
                    after.map(|b| b.as_slice().to_vec()),
                )
            })
            .expect("reactor")
        });
        std::thread::sleep(Duration::from_millis(200));
        t.stop();
        wait_state(&name, Some("reconnect_is_delayed"), Duration::from_secs(10));
        // Away for a while: several attempts fail (nothing listens).
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(state(&name).as_deref(), Some("reconnect_is_delayed"));
        t.restart();
        wait_state(&name, Some("enabled"), Duration::from_secs(10));
        pending.join().expect("the I/O task")
    });
    assert!(w, "the held write completes after the reconnect");
    assert_eq!(r.expect("held read"), vec![1u8; 4 * BS]);
    assert_eq!(after.expect("read after"), vec![2u8; 2 * BS]);
    assert!(waited >= Duration::from_secs(2), "it waited ({waited:?})");
    let n = name.clone();
    set.block_on(0, move || async move { detach(&n).await.expect("detach") })
        .expect("reactor");
    let start = Instant::now();
    while t.live.load(Ordering::SeqCst) != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "connections left open"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    set.stop();
}

#[test]
fn io_in_flight_on_a_dropped_queue_is_sent_again() {
    let t = FakeTarget::start(Evil::None);
    let set = ReactorSet::start(&[0], opts()).expect("reactor");
    let name = unique("again");
    let (port, n) = (t.port, name.clone());
    let drops = t.drop_reads.clone();
    set.block_on(0, move || async move {
        let names = attach(options(&n, port, 30, 1, 0)).await.expect("attach");
        let desc = crate::open(&names[0], true, None).expect("open");
        let ch = desc.io_channel().expect("channel");
        ch.write(16, IoBuf::from_slice(&[9u8; 8 * BS]))
            .await
            .expect("write");
        // The target closes the I/O queue with this read outstanding:
        // the controller resets and the read goes out again, once.
        drops.store(1, Ordering::SeqCst);
        let got = reactor::timeout(Duration::from_secs(20), ch.read(16, 8))
            .await
            .expect("the read came back");
        assert_eq!(got.expect("read").as_slice(), &[9u8; 8 * BS][..]);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(ch);
        drop(desc);
        detach(&n).await.expect("detach");
    })
    .expect("reactor");
    set.stop();
}

#[test]
fn held_io_fails_after_fast_io_fail_and_the_controller_goes_after_ctrlr_loss() {
    let mut t = FakeTarget::start(Evil::None);
    let set = ReactorSet::start(&[0], opts()).expect("reactor");
    let name = unique("gone");
    let (port, n) = (t.port, name.clone());
    let bdev = set
        .block_on(0, move || async move {
            attach(options(&n, port, 5, 1, 2)).await.expect("attach")[0].clone()
        })
        .expect("reactor");
    let b = bdev.clone();
    let n = name.clone();
    let (held, held_for, now, now_for, st) = std::thread::scope(|s| {
        let task = s.spawn(|| {
            set.block_on(0, move || async move {
                let desc = crate::open(&b, true, None).expect("open");
                let ch = desc.io_channel().expect("channel");
                ch.read(0, 1).await.expect("read before");
                reactor::sleep(Duration::from_millis(500)).await;
                // Lost at about 0.2 s: held until fast_io_fail (2 s), then
                // an I/O error.
                let start = Instant::now();
                let held = ch.read(0, 1).await;
                let held_for = start.elapsed();
                // New I/O fails at once while it is still reconnecting.
                let start = Instant::now();
                let now = ch.read(0, 1).await;
                let now_for = start.elapsed();
                let st = state(&n);
                (held.err(), held_for, now.err(), now_for, st)
            })
            .expect("reactor")
        });
        std::thread::sleep(Duration::from_millis(200));
        t.stop();
        task.join().expect("task")
    });
    assert_eq!(held, Some(IoStatus::IoError(libc::EIO)));
    assert!(
        held_for >= Duration::from_millis(1000) && held_for < Duration::from_secs(4),
        "held for {held_for:?}"
    );
    assert_eq!(now, Some(IoStatus::IoError(libc::EIO)));
    assert!(now_for < Duration::from_millis(500), "{now_for:?}");
    assert!(
        matches!(st.as_deref(), Some("resetting" | "reconnect_is_delayed")),
        "{st:?}"
    );
    // After ctrlr_loss_timeout_sec (5 s) the controller and its bdev go.
    wait_state(&name, None, Duration::from_secs(10));
    assert!(crate::lookup(&bdev).is_none(), "the bdev was hot-removed");
    set.stop();
}

#[test]
fn detach_in_the_middle_of_a_reconnect_is_prompt_and_fails_held_io() {
    let mut t = FakeTarget::start(Evil::None);
    let set = ReactorSet::start(&[0, 1], opts()).expect("reactors");
    let name = unique("mid");
    let (port, n) = (t.port, name.clone());
    let bdev = set
        .block_on(0, move || async move {
            attach(options(&n, port, -1, 1, 0)).await.expect("attach")[0].clone()
        })
        .expect("reactor");
    let b = bdev.clone();
    std::thread::scope(|s| {
        let task = s.spawn(|| {
            set.block_on(1, move || async move {
                let desc = crate::open(&b, true, None).expect("open");
                let ch = desc.io_channel().expect("channel");
                reactor::sleep(Duration::from_millis(500)).await;
                ch.read(0, 1).await.err()
            })
            .expect("reactor")
        });
        std::thread::sleep(Duration::from_millis(200));
        t.stop();
        wait_state(&name, Some("reconnect_is_delayed"), Duration::from_secs(10));
        // The read is held by now (it went out at 0.5 s).
        std::thread::sleep(Duration::from_millis(500));
        let start = Instant::now();
        let n = name.clone();
        set.block_on(0, move || async move { detach(&n).await.expect("detach") })
            .expect("reactor");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            task.join().expect("task"),
            Some(IoStatus::IoError(libc::EIO))
        );
    });
    assert!(state(&name).is_none());
    set.stop();
}

#[test]
fn reset_controller_makes_a_new_association_and_keeps_the_data() {
    let t = FakeTarget::start(Evil::None);
    let set = ReactorSet::start(&[0], opts()).expect("reactor");
    let name = unique("rst");
    let port = t.port;
    // Without reconnect knobs too: a reset is one attempt.
    set.block_on(0, move || async move {
        let names = attach(options(&name, port, 0, 0, 0)).await.expect("attach");
        let desc = crate::open(&names[0], true, None).expect("open");
        let ch = desc.io_channel().expect("channel");
        ch.write(3, IoBuf::from_slice(&[5u8; BS]))
            .await
            .expect("write");
        reset(&name).await.expect("reset");
        assert_eq!(state(&name).as_deref(), Some("enabled"));
        let back = ch.read(3, 1).await.expect("read after the reset");
        assert_eq!(back.as_slice(), &[5u8; BS][..]);
        drop(ch);
        drop(desc);
        detach(&name).await.expect("detach");
    })
    .expect("reactor");
    set.stop();
}
