//! Helpers for the crate's tests.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use reactor::{PollMode, ReactorOptions, ReactorSet};

pub(crate) fn opts() -> ReactorOptions {
    ReactorOptions {
        mode: PollMode::Idle { spins: 200 },
        no_pin: false,
    }
}

/// Runs a future on a fresh one-reactor set and returns its output.
pub(crate) fn on_reactor<T, Fut>(f: impl FnOnce() -> Fut + Send + 'static) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let set = ReactorSet::start(&[0], opts()).expect("start reactor");
    set.block_on(0, f).expect("reactor stopped")
}

/// A bdev name no other test in this process uses.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

use crate::{IoBox, IoBuf, IoChannel, IoStatus, IoType};

/// A small seeded generator for test workloads (xorshift64*).
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Splits `len` bytes into 1-4 sector-multiple buffers (scatter-gather).
fn split(rng: &mut Rng, len: usize) -> Vec<usize> {
    let sectors = len / 512;
    let parts = 1 + rng.below(4.min(sectors as u64)) as usize;
    let mut cuts: Vec<usize> = (0..parts - 1)
        .map(|_| 1 + rng.below(sectors as u64 - 1) as usize)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts.into_iter().chain(std::iter::once(sectors)) {
        if c > prev {
            out.push((c - prev) * 512);
            prev = c;
        }
    }
    out
}

/// Random writes, write-zeroes and (where `unmap_reads_zero`) unmaps of
/// random sizes at random offsets, with scatter-gather buffers, mirrored in
/// a model; then every block is read back (also scatter-gather) and
/// compared. Returns the number of operations checked.
pub(crate) async fn check_integrity(
    ch: &IoChannel,
    seed: u64,
    ops: usize,
    unmap_reads_zero: bool,
) -> usize {
    let bs = ch.bdev().block_size() as usize;
    let nb = ch.bdev().num_blocks();
    let mut model = vec![0u8; nb as usize * bs];
    // Start from a known state.
    ch.write_zeroes(0, nb).await.expect("initial write_zeroes");
    let mut rng = Rng::new(seed);
    for op in 0..ops {
        let n = 1 + rng.below(16.min(nb));
        let off = rng.below(nb - n + 1);
        let (a, b) = (off as usize * bs, (off + n) as usize * bs);
        match rng.below(10) {
            0 => {
                ch.write_zeroes(off, n).await.expect("write_zeroes");
                model[a..b].fill(0);
            }
            1 if unmap_reads_zero => {
                ch.unmap(off, n).await.expect("unmap");
                model[a..b].fill(0);
            }
            _ => {
                let mut io = IoBox::new();
                io.prep(IoType::Write, off, n);
                io.bufs.clear();
                let mut at = a;
                for len in split(&mut rng, b - a) {
                    let mut buf = IoBuf::new(len);
                    for (i, x) in buf.as_mut_slice().iter_mut().enumerate() {
                        *x = (seed as usize ^ op.wrapping_mul(31) ^ ((at + i) / 7)) as u8;
                    }
                    model[at..at + len].copy_from_slice(buf.as_slice());
                    at += len;
                    io.bufs.push(buf);
                }
                let io = ch.submit_wait(io).await;
                assert_eq!(io.status(), IoStatus::Success, "write {off}+{n}");
            }
        }
    }
    let mut off = 0;
    while off < nb {
        let n = (1 + rng.below(32)).min(nb - off);
        let (a, b) = (off as usize * bs, (off + n) as usize * bs);
        let mut io = IoBox::new();
        io.prep(IoType::Read, off, n);
        io.bufs.clear();
        for len in split(&mut rng, b - a) {
            io.bufs.push(IoBuf::new(len));
        }
        let io = ch.submit_wait(io).await;
        assert_eq!(io.status(), IoStatus::Success, "read {off}+{n}");
        assert!(
            io.gather() == model[a..b],
            "data mismatch in blocks {off}..{} (seed {seed})",
            off + n
        );
        off += n;
    }
    ops
}

/// A fresh scratch directory on a disk filesystem (so O_DIRECT works).
pub(crate) fn scratch_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(unique("ferrothin-test-"));
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}
