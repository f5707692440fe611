//! The driver against the simulated controller: bring-up, Identify, I/O
//! queues, data through PRPs of every length, several queues at once,
//! queue full, doorbell batching, FUA and Flush against the volatile
//! cache, error statuses, fatal status and reset, shutdown.

use std::sync::Arc;

use nvme::sqe::Status;

use super::controller::{BringUp, Controller, Health};
use super::dma::DmaArena;
use super::queue::QueuePair;
use super::regs::{self, Regs};
use super::sim::{SimConfig, SimCtrlr};
use crate::modules::nvme::cmd::{self, opc};

const WANT: BringUp = BringUp {
    io_queues: 4,
    io_entries: 16,
    max_xfer: 128 << 10,
};

fn setup(cfg: SimConfig) -> (Arc<SimCtrlr>, Controller) {
    let arena = DmaArena::new(32 << 20, 0x1_0000_0000).unwrap();
    let sim = SimCtrlr::new(&arena, cfg);
    let c = Controller::bring_up(sim.clone(), arena, WANT).expect("bring-up");
    (sim, c)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Submits one command with `data` (a write's) or room for `len` bytes (a
/// read's), rings, polls until it completes: the status and the data.
fn one(
    q: &mut QueuePair,
    sqe: nvme::sqe::Sqe,
    data: Option<&[u8]>,
    len: usize,
) -> (Status, Vec<u8>) {
    let cid = q.alloc().expect("a free slot");
    if let Some(d) = data {
        q.buf(cid)[..d.len()].copy_from_slice(d);
    }
    q.submit(cid, sqe, len).unwrap();
    q.ring();
    let mut out = None;
    for _ in 0..1000 {
        q.poll(usize::MAX, |q, c, cqe| {
            assert_eq!(c, cid);
            out = Some((cqe.status, q.buf(c)[..len].to_vec()));
        })
        .unwrap();
        if out.is_some() {
            break;
        }
    }
    out.expect("completed")
}

fn write(q: &mut QueuePair, slba: u64, data: &[u8], fua: bool) -> Status {
    let s = cmd::rw(opc::WRITE, 1, slba, (data.len() / 512) as u32, fua);
    one(q, s, Some(data), data.len()).0
}

fn read(q: &mut QueuePair, slba: u64, len: usize) -> (Status, Vec<u8>) {
    one(
        q,
        cmd::rw(opc::READ, 1, slba, (len / 512) as u32, false),
        None,
        len,
    )
}

#[test]
fn bring_up_identifies_controller_and_namespaces() {
    let (sim, c) = setup(SimConfig {
        namespaces: vec![(2048, 512), (64, 4096)],
        ..SimConfig::default()
    });
    assert_eq!(c.data.model_number, "ferrothin sim");
    assert!(c.data.volatile_cache());
    assert_eq!(c.granted, 4);
    assert_eq!(c.io_entries, 16);
    // MDTS 5: 128 KiB.
    assert_eq!(c.max_xfer, 128 << 10);
    let ns: Vec<(u32, u64, u32)> = c
        .namespaces
        .iter()
        .map(|(n, d)| (*n, d.nsze, d.block_size))
        .collect();
    assert_eq!(ns, vec![(1, 2048, 512), (2, 64, 4096)]);
    assert_eq!(c.health(), Health::Ready);
    assert_eq!(sim.read32(regs::CC), regs::CC_BASE | regs::CC_EN);
    // RDY came only after some CSTS reads: the wait really waited.
    assert!(sim.read32(regs::CSTS) & regs::CSTS_RDY != 0);
}

#[test]
fn an_enabled_controller_is_reset_before_bring_up() {
    let arena = DmaArena::new(8 << 20, 0x1000_0000).unwrap();
    let sim = SimCtrlr::new(&arena, SimConfig::default());
    let first = Controller::bring_up(sim.clone(), arena.clone(), WANT).unwrap();
    let mut q = first.create_io_queue().unwrap();
    assert_eq!(write(&mut q, 0, &[7u8; 512], false), Status::SUCCESS);
    // A process that died leaves the controller enabled with queues.
    std::mem::forget(q);
    std::mem::forget(first);
    let again = Controller::bring_up(sim.clone(), arena, WANT)
        .expect("bring-up over an enabled controller");
    assert_eq!(sim.io_queues(), 0, "the reset dropped the old queues");
    let mut q = again.create_io_queue().unwrap();
    assert_eq!(read(&mut q, 0, 512).1, vec![7u8; 512]);
}

#[test]
fn data_through_prps_of_every_length() {
    let (sim, c) = setup(SimConfig {
        namespaces: vec![(4096, 512)],
        ..SimConfig::default()
    });
    let mut q = c.create_io_queue().unwrap();
    assert_eq!(sim.io_queues(), 1);
    // One sector, one page, two pages (PRP2 is data), three and more
    // (PRP2 is the list), the most one command moves.
    for (i, len) in [512usize, 4096, 4608, 8192, 12288, 65536, 128 << 10]
        .into_iter()
        .enumerate()
    {
        let slba = (i * 300) as u64;
        let d = pattern(i as u8, len);
        assert_eq!(write(&mut q, slba, &d, false), Status::SUCCESS, "{len}");
        assert_eq!(
            sim.data(1, slba as usize * 512, len),
            d,
            "the device has it: {len}"
        );
        let (st, back) = read(&mut q, slba, len);
        assert_eq!((st, back == d), (Status::SUCCESS, true), "{len}");
    }
    // More than one command moves is refused before it reaches the ring.
    let cid = q.alloc().unwrap();
    assert!(q
        .submit(cid, cmd::rw(opc::READ, 1, 0, 512, false), 256 << 10)
        .is_err());
    q.release(cid);
}

#[test]
fn rings_wrap_and_the_phase_flips_many_times() {
    let (sim, c) = setup(SimConfig::default());
    let mut q = c.create_io_queue().unwrap();
    assert_eq!(q.entries(), 16);
    // 100 commands on a 16-entry queue: six passes round the rings.
    for i in 0..100u64 {
        let d = pattern(i as u8, 512);
        assert_eq!(write(&mut q, i % 64, &d, false), Status::SUCCESS);
        assert_eq!(read(&mut q, i % 64, 512).1, d);
    }
    assert_eq!(q.outstanding(), 0);
    assert_eq!(sim.counters().bad_doorbells, 0);
}

#[test]
fn queue_full_holds_commands_and_doorbells_are_batched() {
    let (sim, c) = setup(SimConfig::default());
    let mut q = c.create_io_queue().unwrap();
    sim.set_auto(false);
    let before = sim.counters();
    // 15 slots on 16 entries: the 16th command has no slot and waits.
    let mut cids = Vec::new();
    while let Some(cid) = q.alloc() {
        let d = pattern(cids.len() as u8, 512);
        q.buf(cid)[..512].copy_from_slice(&d);
        q.submit(
            cid,
            cmd::rw(opc::WRITE, 1, cids.len() as u64, 1, false),
            512,
        )
        .unwrap();
        cids.push(cid);
    }
    assert_eq!(cids.len(), 15);
    assert_eq!(q.outstanding(), 15);
    assert!(q.ring());
    assert!(!q.ring(), "nothing new: no second doorbell");
    let after = sim.counters();
    assert_eq!(
        after.sq_doorbells - before.sq_doorbells,
        1,
        "15 commands, one doorbell"
    );
    // Nothing completes until the controller runs.
    assert_eq!(
        q.poll(usize::MAX, |_, _, _| panic!("no completion yet"))
            .unwrap(),
        0
    );
    sim.process();
    let mut done = Vec::new();
    let n = q
        .poll(usize::MAX, |_, cid, cqe| {
            assert!(cqe.status.is_success());
            done.push(cid);
        })
        .unwrap();
    assert_eq!(n, 15);
    done.sort_unstable();
    cids.sort_unstable();
    assert_eq!(done, cids);
    assert_eq!(
        sim.counters().cq_doorbells - after.cq_doorbells,
        1,
        "15 completions, one head doorbell"
    );
    // Every slot is free again and every write landed.
    assert_eq!(q.outstanding(), 0);
    for i in 0..15 {
        assert_eq!(sim.data(1, i * 512, 512), pattern(i as u8, 512));
    }
}

#[test]
fn a_full_completion_queue_holds_the_controller_back() {
    let (sim, c) = setup(SimConfig::default());
    let mut q = c.create_io_queue().unwrap();
    sim.set_auto(false);
    for i in 0..15u64 {
        let cid = q.alloc().unwrap();
        q.submit(cid, cmd::rw(opc::READ, 1, i, 1, false), 512)
            .unwrap();
    }
    q.ring();
    sim.process();
    // Take only some completions: the rest stay posted, in order.
    let mut seen = 0;
    q.poll(5, |_, _, _| seen += 1).unwrap();
    assert_eq!(seen, 5);
    q.poll(usize::MAX, |_, _, _| seen += 1).unwrap();
    assert_eq!(seen, 15);
}

#[test]
fn several_queues_at_once() {
    let (sim, c) = setup(SimConfig {
        namespaces: vec![(8192, 512)],
        ..SimConfig::default()
    });
    let mut qs: Vec<QueuePair> = (0..4).map(|_| c.create_io_queue().unwrap()).collect();
    let qids: Vec<u16> = qs.iter().map(|q| q.qid).collect();
    assert_eq!(qids, vec![1, 2, 3, 4]);
    assert!(c.create_io_queue().is_err(), "the controller granted four");
    assert_eq!(sim.io_queues(), 4);
    sim.set_auto(false);
    // Each queue fills its slots with writes to its own range.
    for (k, q) in qs.iter_mut().enumerate() {
        for i in 0..15u64 {
            let cid = q.alloc().unwrap();
            let d = pattern((k * 16 + i as usize) as u8, 1024);
            q.buf(cid)[..1024].copy_from_slice(&d);
            q.submit(
                cid,
                cmd::rw(opc::WRITE, 1, (k as u64 * 64) + i * 2, 2, false),
                1024,
            )
            .unwrap();
        }
        q.ring();
    }
    sim.process();
    for q in qs.iter_mut() {
        assert_eq!(
            q.poll(usize::MAX, |_, _, c| assert!(c.status.is_success()))
                .unwrap(),
            15
        );
    }
    for k in 0..4usize {
        for i in 0..15usize {
            let at = (k * 64 + i * 2) * 512;
            assert_eq!(sim.data(1, at, 1024), pattern((k * 16 + i) as u8, 1024));
        }
    }
    // A queue given back is deleted on the controller and its QID reused.
    sim.set_auto(true);
    let q = qs.remove(1);
    c.delete_io_queue(&q);
    drop(q);
    assert_eq!(sim.io_queues(), 3);
    assert_eq!(c.create_io_queue().unwrap().qid, 2);
}

#[test]
fn fua_and_flush_against_the_volatile_cache() {
    let (sim, c) = setup(SimConfig::default());
    let mut q = c.create_io_queue().unwrap();
    let a = pattern(1, 512);
    let b = pattern(2, 512);
    assert_eq!(write(&mut q, 0, &a, false), Status::SUCCESS);
    assert_eq!(sim.durable(1, 0, 512), vec![0; 512], "cached, not durable");
    assert_eq!(write(&mut q, 1, &b, true), Status::SUCCESS);
    assert_eq!(sim.durable(1, 512, 512), b, "FUA is durable at once");
    assert_eq!(sim.counters().fua_writes, 1);
    assert_eq!(one(&mut q, cmd::flush(1), None, 0).0, Status::SUCCESS);
    assert_eq!(sim.durable(1, 0, 512), a, "flushed");
    assert_eq!(sim.counters().flushes, 1);
}

#[test]
fn error_statuses_reach_the_caller() {
    let (sim, c) = setup(SimConfig::default());
    let mut q = c.create_io_queue().unwrap();
    sim.fail_lba(1, 10, Status::UNRECOVERED_READ_ERROR);
    let (st, _) = read(&mut q, 8, 4096);
    assert_eq!((st.sct(), st.sc()), (2, 0x81));
    assert!(read(&mut q, 11, 512).0.is_success(), "other blocks read");
    sim.set_read_only(1, true);
    assert_eq!(
        write(&mut q, 0, &[1; 512], false).sc(),
        Status::NAMESPACE_WRITE_PROTECTED.sc()
    );
    // Past the end.
    assert_eq!(
        read(&mut q, 2047, 1024).0.sc(),
        Status::LBA_OUT_OF_RANGE.sc()
    );
    assert_eq!(q.outstanding(), 0);
}

#[test]
fn fatal_status_is_detected_and_the_controller_reset() {
    let (sim, c) = setup(SimConfig::default());
    let mut q = c.create_io_queue().unwrap();
    let d = pattern(9, 512);
    assert_eq!(write(&mut q, 3, &d, true), Status::SUCCESS);
    let generation = c.generation();
    sim.set_fatal();
    assert!(c.fatal());
    // A command sent now is never answered.
    let cid = q.alloc().unwrap();
    q.submit(cid, cmd::rw(opc::READ, 1, 3, 1, false), 512)
        .unwrap();
    q.ring();
    assert_eq!(q.poll(usize::MAX, |_, _, _| ()).unwrap(), 0);
    assert!(
        c.admin_cmd(cmd::identify(1, 0), 4096).is_err(),
        "admin sees CFS"
    );
    c.reset().expect("reset");
    assert!(!c.fatal());
    assert_eq!(c.generation(), generation + 1);
    assert_eq!(c.health(), Health::Ready);
    assert_eq!(sim.io_queues(), 0, "the reset dropped the I/O queues");
    // The core's queue fails what it had and registers again.
    q.reset();
    c.register_io_queue(&q).unwrap();
    assert_eq!(read(&mut q, 3, 512).1, d, "durable data survived");
}

#[test]
fn shutdown_notification() {
    let (sim, c) = setup(SimConfig::default());
    c.shutdown().expect("shutdown");
    assert_eq!(
        sim.read32(regs::CSTS) & regs::CSTS_SHST_MASK,
        regs::CSTS_SHST_DONE
    );
    assert_eq!(
        sim.read32(regs::CC) & regs::CC_SHN_MASK,
        regs::CC_SHN_NORMAL
    );
}

#[test]
fn doorbell_stride_is_honoured() {
    let (sim, c) = setup(SimConfig {
        dstrd: 2,
        ..SimConfig::default()
    });
    let mut q = c.create_io_queue().unwrap();
    assert_eq!(write(&mut q, 0, &[5; 512], false), Status::SUCCESS);
    assert_eq!(read(&mut q, 0, 512).1, vec![5; 512]);
    assert_eq!(sim.counters().bad_doorbells, 0);
}

#[test]
fn bad_controllers_are_refused_not_trusted() {
    // Without the NVM command set, or with pages over 4 KiB.
    struct Odd(Arc<SimCtrlr>, u64);
    impl Regs for Odd {
        fn read32(&self, off: u32) -> u32 {
            match off {
                0 => self.1 as u32,
                4 => (self.1 >> 32) as u32,
                o => self.0.read32(o),
            }
        }
        fn write32(&self, off: u32, v: u32) {
            self.0.write32(off, v)
        }
    }
    let arena = DmaArena::new(8 << 20, 0x1000_0000).unwrap();
    let sim = SimCtrlr::new(&arena, SimConfig::default());
    for cap in [0x0F_u64 | (2 << 24), 0x0F | (1 << 37) | (1 << 48), u64::MAX] {
        let r = Controller::bring_up(Arc::new(Odd(sim.clone(), cap)), arena.clone(), WANT);
        assert!(r.is_err(), "CAP {cap:#x}");
    }
    // A controller that never sets RDY times out after CAP.TO.
    struct Never(Arc<SimCtrlr>);
    impl Regs for Never {
        fn read32(&self, off: u32) -> u32 {
            match off {
                regs::CSTS => 0,
                0 => (0x0F | (1 << 24)) as u32,
                o => self.0.read32(o),
            }
        }
        fn write32(&self, off: u32, v: u32) {
            self.0.write32(off, v)
        }
    }
    let t = std::time::Instant::now();
    let r = Controller::bring_up(Arc::new(Never(sim)), arena, WANT);
    assert!(
        matches!(r, Err(crate::modules::nvme::NvmeError::Timeout(_))),
        "{:?}",
        r.err()
    );
    assert!(t.elapsed() >= std::time::Duration::from_millis(500));
}

/// The count get_controllers shows as `io_qpairs`: the queue pairs alive
/// (one per core that submitted), down again as each is deleted.
#[test]
fn io_queues_in_use_counts_live_queue_pairs() {
    let (sim, c) = setup(SimConfig::default());
    assert_eq!(c.io_queues_in_use(), 0);
    let a = c.create_io_queue().unwrap();
    let b = c.create_io_queue().unwrap();
    assert_eq!((c.io_queues_in_use(), sim.io_queues()), (2, 2));
    c.delete_io_queue(&a);
    assert_eq!((c.io_queues_in_use(), sim.io_queues()), (1, 1));
    c.delete_io_queue(&b);
    assert_eq!(c.io_queues_in_use(), 0);
}
