//! The PCIe driver's per-I/O work on the simulated controller, for
//! callgrind (bench/nvme-pcie-instructions.sh): `submit` (take a slot,
//! copy 4 KiB into its DMA buffer, write the entry), `ring` (one tail
//! doorbell per batch) and `reap` (completions by phase tag, one head
//! doorbell per batch). The simulated controller runs between them,
//! outside the measured functions.
//!
//!     cargo run --release -p bdev --example nvme_pcie_ops -- [IOS] [BATCH]

use std::hint::black_box;
use std::sync::Arc;

use bdev::modules::nvme::pcie::controller::{BringUp, Controller};
use bdev::modules::nvme::pcie::dma::DmaArena;
use bdev::modules::nvme::pcie::queue::QueuePair;
use bdev::modules::nvme::pcie::sim::{SimConfig, SimCtrlr};
use nvme::sqe::Sqe;

/// A 4 KiB write of `lba` (8 sectors of 512 bytes) to namespace 1.
fn write_sqe(lba: u64) -> Sqe {
    let mut s = Sqe::new(0x01, 0);
    s.set_nsid(1);
    s.set_cdw(10, lba as u32);
    s.set_cdw(11, (lba >> 32) as u32);
    s.set_cdw(12, 7);
    s
}

#[inline(never)]
fn submit(q: &mut QueuePair, data: &[u8], lba: u64) -> bool {
    let Some(cid) = q.alloc() else { return false };
    q.buf(cid)[..data.len()].copy_from_slice(data);
    q.submit(cid, write_sqe(lba), data.len()).is_ok()
}

#[inline(never)]
fn ring(q: &mut QueuePair) {
    let _ = q.ring();
}

#[inline(never)]
fn reap(q: &mut QueuePair) -> usize {
    let mut ok = 0usize;
    let n = q
        .poll(usize::MAX, |_, _, c| {
            ok += usize::from(c.status.is_success())
        })
        .unwrap_or(0);
    assert_eq!(ok, n, "every write succeeds");
    n
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ios: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let arena = DmaArena::new(64 << 20, 1 << 32)?;
    let sim = SimCtrlr::new(
        &arena,
        SimConfig {
            namespaces: vec![(1 << 16, 512)],
            ..SimConfig::default()
        },
    );
    let want = BringUp {
        io_queues: 1,
        io_entries: 256,
        max_xfer: 128 << 10,
    };
    let c = Controller::bring_up(sim.clone() as Arc<_>, arena, want)?;
    let mut q = c.create_io_queue()?;
    sim.set_auto(false);
    let data = vec![0xA5u8; 4096];
    let mut done = 0;
    let mut lba = 0u64;
    while done < ios {
        let mut n = 0;
        while n < batch && submit(&mut q, black_box(&data), lba) {
            lba = (lba + 8) % (1 << 16);
            n += 1;
        }
        ring(&mut q);
        sim.process();
        done += reap(&mut q);
    }
    println!("{done} I/Os in batches of {batch}");
    Ok(())
}
