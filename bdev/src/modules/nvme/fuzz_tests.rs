//! The host against a hostile target: the scripted target in fuzz mode
//! (`Evil::Fuzz(seed)`: each I/O command answered rightly or with a
//! wrong CID, a second response, short data, data far out of range, a
//! PLEN of gigabytes, random bytes, a response cut off, a bogus R2T, an
//! error status, a TermReq, a close, a PDU type only hosts send), seeded
//! and replayable, with and without reconnect. Per seed: every I/O
//! completes exactly once (each is counted when its completion arrives,
//! and a second one would count twice), none hangs, nothing panics
//! (a reactor thread that panicked fails `block_on`), the controller
//! ends enabled, failed or reconnecting, and detach works.
//!
//! `FERROTHIN_NVME_FUZZ_SEEDS=A-B` runs seeds A..=B (default 0-5, the
//! CI run); a failing seed is printed and replays alone as `N-N`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use reactor::ReactorSet;

use super::ctrlr::controllers;
use super::fake_target::{Evil, FakeTarget, BLOCKS, BS};
use super::{attach, detach, AttachOptions};
use crate::test_util::{opts, unique};
use crate::{IoBox, IoBuf, IoStatus, IoType};

fn seeds() -> std::ops::RangeInclusive<u64> {
    let spec = std::env::var("FERROTHIN_NVME_FUZZ_SEEDS").unwrap_or_default();
    let parsed = spec.split_once('-').and_then(|(a, b)| {
        let a = a.trim().parse().ok()?;
        let b = b.trim().parse().ok()?;
        Some(a..=b)
    });
    parsed.unwrap_or(0..=5)
}

/// The I/O of round `i`: every type, sizes within a capsule, over it,
/// over MDTS; in range.
fn io(i: u64) -> IoBox {
    let mut io = IoBox::new();
    let blocks = [1u64, 3, 8, 17, 40][(i % 5) as usize];
    let at = (i * 37) % (BLOCKS as u64 - blocks);
    match i % 7 {
        0..=2 => {
            io.prep(IoType::Read, at, blocks);
            io.set_buf(IoBuf::new(blocks as usize * BS));
        }
        3 | 4 => {
            io.prep(IoType::Write, at, blocks);
            io.set_buf(IoBuf::from_slice(&vec![i as u8; blocks as usize * BS]));
        }
        5 => {
            io.prep(IoType::WriteZeroes, at, blocks);
        }
        _ => {
            io.prep(IoType::Unmap, at, blocks);
        }
    }
    io
}

#[test]
fn a_hostile_target_never_panics_the_host_and_every_io_completes_once() {
    for seed in seeds() {
        let reconnect = seed % 2 == 1;
        let t = FakeTarget::start(Evil::Fuzz(seed));
        let set = ReactorSet::start(&[0], opts()).expect("reactor");
        let name = unique("fuzz");
        let port = t.port;
        let n = name.clone();
        let outcome = set.block_on(0, move || async move {
            let mut o =
                AttachOptions::new(&n, "127.0.0.1", &port.to_string(), "nqn.2026-12.test:fake");
            o.kato_ms = 1000;
            if reconnect {
                o.ctrlr_loss_timeout_sec = 4;
                o.reconnect_delay_sec = 1;
                o.fast_io_fail_timeout_sec = 2;
            }
            let names = attach(o)
                .await
                .expect("attach (the admin queue is left alone)");
            let desc = crate::open(&names[0], true, None).expect("open");
            let ch = Rc::new(desc.io_channel().expect("channel"));
            let completions = Rc::new(Cell::new(0u32));
            let mut tasks = Vec::new();
            let total = 48u64;
            for i in 0..total {
                let (ch, done) = (ch.clone(), completions.clone());
                tasks.push(reactor::spawn_local(async move {
                    let out = ch.submit_wait(io(i)).await;
                    done.set(done.get() + 1);
                    out.status()
                }));
                if i % 8 == 7 {
                    reactor::sleep(Duration::from_millis(20)).await;
                }
            }
            let mut statuses = Vec::new();
            for t in tasks {
                let st = reactor::timeout(Duration::from_secs(30), t)
                    .await
                    .unwrap_or_else(|| panic!("seed {seed}: an I/O never completed"));
                statuses.push(st);
            }
            // Later completions of the same I/O would show here.
            reactor::sleep(Duration::from_millis(300)).await;
            assert_eq!(completions.get() as u64, total, "seed {seed}: completions");
            let state = controllers(Some(&n))
                .ok()
                .and_then(|v| v[0]["ctrlrs"][0]["state"].as_str().map(str::to_string));
            drop(ch);
            drop(desc);
            // Deleted after its loss timeout is the one way it may be gone.
            if state.is_some() {
                reactor::timeout(Duration::from_secs(10), detach(&n))
                    .await
                    .unwrap_or_else(|| panic!("seed {seed}: detach hung"))
                    .unwrap_or_else(|e| panic!("seed {seed}: detach: {e}"));
            }
            let failed = statuses.iter().filter(|s| **s != IoStatus::Success).count();
            (failed, state)
        });
        let (failed, state) =
            outcome.unwrap_or_else(|e| panic!("seed {seed}: the reactor died: {e}"));
        assert!(
            matches!(
                state.as_deref(),
                Some("enabled" | "failed" | "resetting" | "reconnect_is_delayed") | None
            ),
            "seed {seed}: {state:?}"
        );
        eprintln!("nvme fuzz seed {seed} (reconnect {reconnect}): {failed} of 48 failed, controller {state:?}");
        set.stop();
    }
}
