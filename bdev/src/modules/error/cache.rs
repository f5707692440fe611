//! The volatile write cache: writes since the last FLUSH are held here, not
//! on the base bdev, until a FLUSH writes them through or a simulated power
//! cut keeps, drops or tears each of them.
//!
//! Shared by every core behind a mutex: this mode exists for crash tests,
//! where determinism matters and speed does not.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// One write the device acknowledged but has not made durable.
#[derive(Clone, Debug)]
pub(crate) struct HeldWrite {
    pub gen: u64,
    pub offset_blocks: u64,
    pub data: Vec<u8>,
}

#[derive(Default)]
pub(crate) struct CacheState {
    /// Latest held contents per block, with the generation that wrote it.
    overlay: BTreeMap<u64, (u64, Box<[u8]>)>,
    /// Held writes in arrival order.
    log: Vec<HeldWrite>,
    next_gen: u64,
}

impl CacheState {
    pub fn hold(&mut self, offset_blocks: u64, data: Vec<u8>, block_size: usize) {
        self.next_gen += 1;
        let gen = self.next_gen;
        for (i, blk) in data.chunks(block_size).enumerate() {
            self.overlay
                .insert(offset_blocks + i as u64, (gen, blk.into()));
        }
        self.log.push(HeldWrite {
            gen,
            offset_blocks,
            data,
        });
    }

    /// Held contents of blocks in `[offset, offset + n)`.
    pub fn snapshot(&self, offset: u64, n: u64) -> Vec<(u64, Box<[u8]>)> {
        self.overlay
            .range(offset..offset + n)
            .map(|(b, (_, d))| (*b, d.clone()))
            .collect()
    }

    pub fn take_log(&mut self) -> Vec<HeldWrite> {
        std::mem::take(&mut self.log)
    }

    /// Puts back writes a failed flush could not make durable.
    pub fn restore_log(&mut self, mut batch: Vec<HeldWrite>) {
        batch.append(&mut self.log);
        self.log = batch;
    }

    /// Forgets overlay blocks now durable on the base (written by a
    /// generation up to `gen` and not rewritten since).
    pub fn retire(&mut self, gen: u64) {
        self.overlay.retain(|_, (g, _)| *g > gen);
    }

    /// Drops everything (after a power cut).
    pub fn clear(&mut self) -> Vec<HeldWrite> {
        self.overlay.clear();
        std::mem::take(&mut self.log)
    }

    pub fn held_writes(&self) -> usize {
        self.log.len()
    }
}

/// Serialises flushes across cores, so a flush never completes before the
/// writes an earlier, still-running flush took are durable.
#[derive(Default)]
pub(crate) struct FlushGate {
    state: Mutex<(bool, Vec<Waker>)>,
}

pub(crate) struct GateGuard<'a>(&'a FlushGate);

impl FlushGate {
    fn lock(&self) -> MutexGuard<'_, (bool, Vec<Waker>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn acquire(&self) -> GateGuard<'_> {
        std::future::poll_fn(|cx| {
            let mut s = self.lock();
            if s.0 {
                s.1.push(cx.waker().clone());
                Poll::Pending
            } else {
                s.0 = true;
                Poll::Ready(())
            }
        })
        .await;
        GateGuard(self)
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut s = self.0.lock();
            s.0 = false;
            std::mem::take(&mut s.1)
        };
        for w in waiters {
            w.wake();
        }
    }
}

/// What a power cut did with each held write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerCutReport {
    pub kept: u32,
    pub dropped: u32,
    pub torn: u32,
}
