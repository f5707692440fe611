//! Shared pieces of the thin pool tests: reactors, bdevs, a seeded
//! generator, patterned I/O and Debian's thin_check on a pool's metadata.
#![allow(dead_code)]

pub mod crash;

use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bdev::modules::malloc::{self, MallocOptions};
use bdev::{Bdev, IoBox, IoBuf, IoChannel, IoStatus, IoType};
use reactor::{PollMode, ReactorOptions, ReactorSet};

pub const BS: u32 = 4096;

/// A two-reactor set (I/O on core 0, metadata on core 1), idle-sleeping.
pub fn reactors() -> ReactorSet {
    ReactorSet::start(
        &[0, 1],
        ReactorOptions {
            mode: PollMode::Idle { spins: 200 },
            no_pin: true,
        },
    )
    .expect("start reactors")
}

/// Runs `f` on core 0 of a fresh two-core set; stops the set after.
pub fn run<T, Fut>(f: impl FnOnce() -> Fut + Send + 'static) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let set = reactors();
    let r = set.block_on(0, f);
    set.stop();
    r.expect("reactor stopped")
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn malloc(name: &str, bytes: u64) -> Arc<Bdev> {
    malloc::create(MallocOptions {
        name: name.to_string(),
        block_size: BS,
        num_blocks: bytes / BS as u64,
        uuid: None,
        optimal_io_boundary: 0,
    })
    .expect("malloc bdev")
}

/// A pool with default options on a fresh 4 MiB malloc metadata bdev and
/// the data bdev `data`, and one volume of `vol_bytes`, open on this core:
/// (pool, volume, descriptor, channel).
pub async fn pool_and_volume(
    data: &str,
    vol_bytes: u64,
) -> (String, String, bdev::Descriptor, IoChannel) {
    let opts = thin::PoolOptions::default();
    let (_, p, v, desc, ch) = pool_and_volume_with(data, vol_bytes, opts).await;
    (p, v, desc, ch)
}

/// `pool_and_volume` with pool options of the caller's, also returning the
/// metadata bdev's name first (for `thin_check`).
pub async fn pool_and_volume_with(
    data: &str,
    vol_bytes: u64,
    opts: thin::PoolOptions,
) -> (String, String, String, bdev::Descriptor, IoChannel) {
    let (m, p, v) = (unique("tm"), unique("pool"), unique("vol"));
    malloc(&m, 4 << 20);
    thin::create_pool(&p, &m, Some(data), opts)
        .await
        .expect("pool");
    thin::create_volume(&p, &v, vol_bytes, None)
        .await
        .expect("volume");
    let desc = bdev::open(&v, true, None).expect("open volume");
    let ch = desc.io_channel().expect("channel");
    (m, p, v, desc, ch)
}

/// Closes what `pool_and_volume` opened and deletes the pool (which
/// commits it): the channel and descriptor must go first.
pub async fn close_and_delete(pool: &str, desc: bdev::Descriptor, ch: IoChannel) {
    drop(ch);
    drop(desc);
    thin::delete_pool(pool).await.expect("delete pool");
}

/// The seeded generator of the metadata fuzzer (SplitMix64): runs replay.
#[allow(unused_imports)]
pub use metadata::fuzz::Rng;

/// The byte pattern of a write: a function of (tag, position), so a
/// misplaced block is caught and its origin can be told.
pub fn pattern(tag: u64, offset_blocks: u64, n: u64) -> Vec<u8> {
    let mut v = vec![0u8; (n * BS as u64) as usize];
    for (i, chunk) in v.chunks_mut(8).enumerate() {
        let pos = offset_blocks * BS as u64 + i as u64 * 8;
        let x = (tag.wrapping_mul(0x100_0000_01B3) ^ pos).wrapping_add(tag);
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    v
}

pub async fn write(ch: &IoChannel, offset: u64, data: &[u8]) -> IoStatus {
    let mut io = IoBox::new();
    io.prep(IoType::Write, offset, (data.len() / BS as usize) as u64);
    io.set_buf(IoBuf::from_slice(data));
    ch.submit_wait(io).await.status()
}

pub async fn read(ch: &IoChannel, offset: u64, n: u64) -> Result<Vec<u8>, IoStatus> {
    ch.read(offset, n).await.map(|b| b.as_slice().to_vec())
}

/// Deletes pool `pool` (committing it) and asserts that thin_check
/// passes on its metadata bdev `meta`.
pub async fn close_and_check(pool: &str, meta: &str) {
    thin::delete_pool(pool).await.unwrap();
    let (ok, out) = thin_check(meta, 1024).await;
    assert!(ok, "thin_check: {out}");
}

/// Copies `blocks` 4 KiB blocks from the start of `bdev` into a file and
/// runs Debian's thin_check on it; returns (success, output).
pub async fn thin_check(bdev_name: &str, blocks: u64) -> (bool, String) {
    let desc = bdev::open(bdev_name, false, None).expect("open metadata bdev");
    let ch = desc.io_channel().expect("channel");
    let per = 4096 / ch.bdev().block_size() as u64;
    let mut image = Vec::with_capacity((blocks * 4096) as usize);
    let mut at = 0;
    while at < blocks {
        let n = 256.min(blocks - at);
        let b = ch.read(at * per, n * per).await.expect("read metadata");
        image.extend_from_slice(b.as_slice());
        at += n;
    }
    drop(ch);
    drop(desc);
    let path = std::env::temp_dir()
        .join(unique("thin-meta-"))
        .with_extension("img");
    std::fs::write(&path, &image).expect("write image");
    let out = Command::new("thin_check")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("thin_check could not run ({e}); ci/setup installs it"));
    let _ = std::fs::remove_file(&path);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs a JSON-RPC method through the registry, as the daemon would (on
/// the reactor this is awaited on).
#[allow(dead_code)]
pub async fn rpc(method: &str, params: Option<serde_json::Value>) -> bdev::rpc::RpcResult {
    thin::register();
    bdev::rpc::RpcRegistry::with_modules()
        .call_here(method, params)
        .await
}
