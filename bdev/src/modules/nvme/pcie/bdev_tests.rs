//! The bdev over the simulated controller on reactors: one queue pair per
//! core, many I/Os at once (more than a queue has slots: they wait, none
//! is lost), I/O split at the transfer limit, scatter-gather buffers,
//! Flush to the volatile cache, error statuses as I/O errors, fatal
//! status and reset under I/O, detach.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use nvme::sqe::Status;
use reactor::ReactorSet;

use super::attach::{attach, attach_regs, controllers, detach, PcieAttach};
use super::dma::DmaArena;
use super::regs::{self, Regs};
use super::sim::{SimConfig, SimCtrlr};
use crate::test_util::{opts, unique, Rng};
use crate::{IoBox, IoBuf, IoChannel, IoStatus, IoType};

const BLOCKS: u64 = 8192;
/// Far longer than any I/O here takes.
const LIMIT: Duration = Duration::from_secs(20);

fn sim() -> (Arc<SimCtrlr>, Arc<DmaArena>) {
    sim_with(1023)
}

/// A controller whose queues have at most `mqes + 1` entries.
fn sim_with(mqes: u16) -> (Arc<SimCtrlr>, Arc<DmaArena>) {
    let arena = DmaArena::new(48 << 20, 1 << 32).unwrap();
    let sim = SimCtrlr::new(
        &arena,
        SimConfig {
            namespaces: vec![(BLOCKS, 512), (64, 4096)],
            mqes,
            ..SimConfig::default()
        },
    );
    (sim, arena)
}

fn fill(seed: u64, len: usize) -> IoBuf {
    let mut b = IoBuf::new(len);
    for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
        *x = (seed as usize).wrapping_mul(131).wrapping_add(i / 3) as u8;
    }
    b
}

/// `n` writes at once to blocks [base, base + span) of random sizes (up
/// to 40 blocks, one in eight up to 300: over the 128 KiB one command
/// moves), each in 1-2 buffers, mirrored in a model; then everything read back at once and
/// compared.
async fn storm(ch: Rc<IoChannel>, seed: u64, base: u64, span: u64, n: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut model = vec![0u8; span as usize * 512];
    let mut tasks = Vec::new();
    // Non-overlapping extents, so the order the writes land in does not
    // matter.
    let mut off = 0;
    for i in 0..n {
        let len = 1 + if rng.below(8) == 0 {
            rng.below(300)
        } else {
            rng.below(40)
        };
        if off + len > span {
            break;
        }
        let mut io = IoBox::new();
        io.prep(IoType::Write, base + off, len);
        io.bufs.clear();
        let bytes = len as usize * 512;
        let first = if len > 1 {
            (1 + rng.below(len - 1)) as usize * 512
        } else {
            bytes
        };
        for (k, part) in [first, bytes - first]
            .into_iter()
            .filter(|&p| p > 0)
            .enumerate()
        {
            let b = fill(seed ^ (i as u64) << 8 ^ k as u64, part);
            let at = off as usize * 512 + if k == 0 { 0 } else { first };
            model[at..at + part].copy_from_slice(b.as_slice());
            io.bufs.push(b);
        }
        let ch = ch.clone();
        tasks.push(reactor::spawn_local(async move {
            ch.submit_wait(io).await.status()
        }));
        off += len + rng.below(3);
    }
    assert!(tasks.len() > 60, "{} writes", tasks.len());
    // An I/O lost on the way would never complete: bounded waits.
    for t in tasks {
        let st = reactor::timeout(LIMIT, t)
            .await
            .expect("the write completed");
        assert_eq!(st, IoStatus::Success);
    }
    let mut reads = Vec::new();
    let mut at = 0;
    while at < span {
        let len = (1 + rng.below(400)).min(span - at);
        let ch = ch.clone();
        let o = base + at;
        reads.push((
            at,
            reactor::spawn_local(async move { ch.read(o, len).await }),
        ));
        at += len;
    }
    for (at, t) in reads {
        let b = reactor::timeout(LIMIT, t)
            .await
            .expect("the read completed")
            .expect("read");
        let a = at as usize * 512;
        assert!(
            b.as_slice() == &model[a..a + b.len()],
            "blocks from {} differ",
            base + at
        );
    }
    model
}

#[test]
fn two_cores_each_on_its_own_queue_with_more_io_than_slots() {
    let set = ReactorSet::start(&[0, 1], opts()).expect("reactors");
    // Queues of 8 entries, 7 slots: the ~100 I/Os each core sends at
    // once mostly wait for a slot.
    let (sim, arena) = sim_with(7);
    let name = unique("pc");
    let s2 = sim.clone();
    set.block_on(0, move || async move {
        let o = PcieAttach {
            name: name.clone(),
            traddr: "sim:0".into(),
            io_queues: 2,
        };
        let names = attach_regs(o, s2.clone(), arena).await.expect("attach");
        assert_eq!(names, vec![format!("{name}n1"), format!("{name}n2")]);
        let b = crate::lookup(&names[0]).unwrap();
        assert_eq!((b.block_size(), b.num_blocks()), (512, BLOCKS));
        assert!(
            b.io_type_supported(IoType::Flush),
            "volatile cache: Flush is there"
        );
        assert!(!b.io_type_supported(IoType::Unmap));
        let info = controllers(Some(&name));
        assert_eq!(info[0]["ctrlrs"][0]["trid"]["trtype"], "PCIe");
        let n1 = names[0].clone();
        // Core 1 and core 0 at the same time, each on half the namespace.
        let other = reactor::spawn_local(reactor::call_on(1, move || async move {
            let d = crate::open(&n1, true, None).unwrap();
            let ch = Rc::new(d.io_channel().unwrap());
            let m = storm(ch.clone(), 11, BLOCKS / 2, BLOCKS / 2, 150).await;
            ch.flush().await.expect("flush");
            m
        }));
        let d = crate::open(&names[0], true, None).unwrap();
        let ch = Rc::new(d.io_channel().unwrap());
        let m0 = storm(ch.clone(), 7, 0, BLOCKS / 2, 150).await;
        let m1 = other.await.expect("core 1");
        assert_eq!(s2.io_sqs_used(), vec![1, 2], "one queue pair per core");
        ch.flush().await.expect("flush");
        // Both flushes made everything durable.
        assert!(s2.durable(1, 0, m0.len()) == m0);
        assert!(s2.durable(1, m0.len(), m1.len()) == m1);
        assert!(s2.counters().flushes >= 2);
        // The second namespace (4 KiB blocks) shares the core's queue.
        let d2 = crate::open(&names[1], true, None).unwrap();
        let ch2 = d2.io_channel().unwrap();
        ch2.write(3, fill(99, 8192)).await.expect("write ns2");
        assert_eq!(
            ch2.read(3, 2).await.unwrap().as_slice(),
            fill(99, 8192).as_slice()
        );
        assert_eq!(s2.io_queues(), 1, "core 1's queue went with its channel");
        assert_eq!(s2.io_sqs_used(), vec![1, 2]);
        drop((ch, ch2, d, d2));
        detach(&name).await.expect("detach");
        assert!(crate::lookup(&names[0]).is_none());
    })
    .unwrap();
    // Shutdown notification at detach.
    assert_eq!(
        sim.read32(regs::CSTS) & regs::CSTS_SHST_MASK,
        regs::CSTS_SHST_DONE
    );
    assert_eq!(sim.io_queues(), 0, "the queues were deleted");
}

#[test]
fn error_statuses_are_io_errors_and_nothing_is_lost() {
    let set = ReactorSet::start(&[0], opts()).expect("reactor");
    let (sim, arena) = sim();
    let name = unique("pe");
    set.block_on(0, move || async move {
        let o = PcieAttach {
            name: name.clone(),
            traddr: "sim:1".into(),
            io_queues: 1,
        };
        let names = attach_regs(o.clone(), sim.clone(), arena.clone())
            .await
            .unwrap();
        // The same name again, or the same device under another name.
        assert!(attach_regs(o.clone(), sim.clone(), arena.clone())
            .await
            .is_err());
        let mut o2 = o.clone();
        o2.name = unique("pe");
        let e = attach_regs(o2, sim.clone(), arena.clone())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("attached already"), "{e}");
        let d = crate::open(&names[0], true, None).unwrap();
        let ch = d.io_channel().unwrap();
        ch.write(0, fill(1, 4096)).await.unwrap();
        sim.fail_lba(1, 5, Status::UNRECOVERED_READ_ERROR);
        assert_eq!(
            ch.read(4, 4).await.unwrap_err(),
            IoStatus::IoError(libc::EIO)
        );
        // A split I/O whose middle command fails fails once, as a whole.
        assert_eq!(
            ch.read(0, 600).await.unwrap_err(),
            IoStatus::IoError(libc::EIO)
        );
        assert!(ch.read(0, 4).await.is_ok());
        sim.set_read_only(1, true);
        assert_eq!(
            ch.write(100, fill(2, 512)).await.unwrap_err(),
            IoStatus::IoError(libc::EIO)
        );
        sim.set_read_only(1, false);
        ch.write(100, fill(2, 512)).await.unwrap();
        // Detached under an open channel: its I/O fails, nothing hangs.
        detach(&name).await.unwrap();
        assert!(ch.read(0, 1).await.is_err());
    })
    .unwrap();
}

#[test]
fn fatal_status_under_io_resets_and_io_resumes() {
    let set = ReactorSet::start(&[0], opts()).expect("reactor");
    let (sim, arena) = sim();
    let name = unique("pf");
    set.block_on(0, move || async move {
        let o = PcieAttach {
            name: name.clone(),
            traddr: "sim:2".into(),
            io_queues: 1,
        };
        let names = attach_regs(o, sim.clone(), arena).await.unwrap();
        let d = crate::open(&names[0], true, None).unwrap();
        let ch = Rc::new(d.io_channel().unwrap());
        ch.write(10, fill(5, 2048)).await.unwrap();
        ch.flush().await.unwrap();
        // A read the controller never answers, then fatal status.
        sim.set_auto(false);
        let c2 = ch.clone();
        let stuck = reactor::spawn_local(async move { c2.read(10, 4).await });
        reactor::sleep(Duration::from_millis(20)).await;
        sim.set_fatal();
        sim.set_auto(true);
        let r = reactor::timeout(Duration::from_secs(10), stuck)
            .await
            .expect("the read ended");
        assert_eq!(
            r.unwrap_err(),
            IoStatus::IoError(libc::EIO),
            "outstanding I/O fails at the reset"
        );
        // After the reset the queue is back and the data is there.
        let mut ok = None;
        for _ in 0..100 {
            if let Ok(b) = ch.read(10, 4).await {
                ok = Some(b);
                break;
            }
            reactor::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            ok.expect("I/O resumed").as_slice(),
            fill(5, 2048).as_slice()
        );
        assert_eq!(controllers(Some(&name))[0]["ctrlrs"][0]["state"], "enabled");
        drop(ch);
        drop(d);
        detach(&name).await.unwrap();
    })
    .unwrap();
}

#[test]
fn a_device_not_there_or_not_a_pci_address_is_refused() {
    let set = ReactorSet::start(&[0], opts()).expect("reactor");
    set.block_on(0, || async {
        let bad = PcieAttach {
            name: unique("px"),
            traddr: "not-an-address".into(),
            io_queues: 1,
        };
        let e = attach(bad).await.unwrap_err();
        assert!(e.to_string().contains("not a PCI address"), "{e}");
        let missing = PcieAttach {
            name: unique("px"),
            traddr: "0000:ff:1f.7".into(),
            io_queues: 1,
        };
        let e = attach(missing).await.unwrap_err();
        assert!(e.to_string().contains("no PCI device 0000:ff:1f.7"), "{e}");
    })
    .unwrap();
}
