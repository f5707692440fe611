//! Opening a pool on its metadata core: claim the bdevs, lay out the
//! regions, load the metadata image, format or open, reconcile sizes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use metadata::pdata::superblock::Superblock;
use metadata::thin::pool::Pool;
use metadata::BLOCK_SIZE;

use super::{install, MetaCore};
use crate::image::{Image, StagedIo};
use crate::options::{default_metadata_bytes, PoolMode, PoolOptions};
use crate::shared::PoolShared;
use crate::sync::{AsyncLock, Notify};
use crate::ThinError;
use bdev::IoChannel;

/// Where things are on the bdevs.
struct Layout {
    meta_offset: u64,
    meta_blocks: u64,
    data_offset: u64,
    data_blocks: u64,
}

fn layout(
    meta_ch: &IoChannel,
    data_ch: &IoChannel,
    one_device: bool,
    opts: &PoolOptions,
    existing_meta_blocks: Option<u64>,
) -> Result<Layout, ThinError> {
    let meta_bdev_block_size = meta_ch.bdev().block_size() as u64;
    let data_bdev_block_size = data_ch.bdev().block_size() as u64;
    if !(BLOCK_SIZE as u64).is_multiple_of(meta_bdev_block_size) {
        return Err(ThinError::Invalid(format!(
            "metadata bdev block size {meta_bdev_block_size} does not divide 4096"
        )));
    }
    if !opts.block_size.is_multiple_of(data_bdev_block_size) {
        return Err(ThinError::Invalid(format!(
            "block_size {} is not a multiple of the data bdev's block size {data_bdev_block_size}",
            opts.block_size
        )));
    }
    let max_meta = metadata::pdata::space_map::MAX_METADATA_BLOCKS;
    if one_device {
        let dev_bytes = data_ch.bdev().size_bytes();
        let meta_bytes = match existing_meta_blocks {
            Some(n) => n * BLOCK_SIZE as u64,
            None => {
                opts.metadata_size
                    .unwrap_or_else(|| default_metadata_bytes(dev_bytes, opts.block_size))
                    .div_ceil(BLOCK_SIZE as u64)
                    * BLOCK_SIZE as u64
            }
        };
        let data_start = meta_bytes.div_ceil(opts.block_size) * opts.block_size;
        if data_start + opts.block_size > dev_bytes {
            return Err(ThinError::Invalid(format!(
                "{} ({dev_bytes} bytes) is too small for {meta_bytes} bytes of metadata and one data block",
                data_ch.bdev().name()
            )));
        }
        Ok(Layout {
            meta_offset: 0,
            meta_blocks: (meta_bytes / BLOCK_SIZE as u64).min(max_meta),
            data_offset: data_start / data_bdev_block_size,
            data_blocks: (dev_bytes - data_start) / opts.block_size,
        })
    } else {
        let meta_blocks = (meta_ch.bdev().size_bytes() / BLOCK_SIZE as u64).min(max_meta);
        if meta_blocks < 16 {
            return Err(ThinError::Invalid(format!(
                "metadata bdev {} is too small ({meta_blocks} blocks of 4 KiB)",
                meta_ch.bdev().name()
            )));
        }
        let data_blocks = data_ch.bdev().size_bytes() / opts.block_size;
        if data_blocks == 0 {
            return Err(ThinError::Invalid(format!(
                "data bdev {} is smaller than one data block",
                data_ch.bdev().name()
            )));
        }
        Ok(Layout {
            meta_offset: 0,
            meta_blocks,
            data_offset: 0,
            data_blocks,
        })
    }
}

/// Whether block 0 carries dm-thin's superblock magic (a damaged
/// superblock usually still does; another program's data does not).
fn looks_like_a_superblock(head: &[u8]) -> bool {
    const MAGIC_AT: usize = 32;
    head.get(MAGIC_AT..MAGIC_AT + 8)
        .and_then(|b| b.try_into().ok())
        .is_some_and(|b| u64::from_le_bytes(b) == metadata::pdata::superblock::MAGIC)
}

fn not_metadata(bdev: &str) -> String {
    format!(
        "bdev {bdev} holds data that is not ferrothin metadata (no pool superblock in its \
         first block), so it is neither opened nor formatted over; to make a pool there, \
         overwriting that data, create it with \"force_format\": true (spdk-rpc \
         bdev_thin_pool_create ... --force-format true), or zero its first 4 KiB first \
         (dd if=/dev/zero of=FILE bs=4k count=1 conv=notrunc)"
    )
}

/// What `open` needs from the caller: the claimed bdevs' channels on the
/// metadata core.
pub(crate) struct OpenArgs {
    pub name: String,
    pub opts: PoolOptions,
    pub meta_core: u32,
    pub meta_ch: IoChannel,
    pub data_ch: IoChannel,
    pub one_device: bool,
}

/// Formats or opens the pool; runs on the metadata core.
pub(crate) async fn open(a: OpenArgs) -> Result<Rc<MetaCore>, ThinError> {
    let io_err = |what: &str, s: bdev::IoStatus| ThinError::Io(format!("{what}: {s}"));
    // An existing one-device pool says how much metadata it has.
    let head = a
        .meta_ch
        .read(0, BLOCK_SIZE as u64 / a.meta_ch.bdev().block_size() as u64)
        .await
        .map_err(|s| io_err("reading the superblock", s))?;
    let head_blank = head.as_slice().iter().all(|&b| b == 0);
    let existing = if head_blank {
        None
    } else if !looks_like_a_superblock(head.as_slice()) && a.opts.force_format {
        tracing::warn!(
            pool = %a.name,
            "formatting over {}, which held other data (force_format)",
            a.meta_ch.bdev().describe()
        );
        None
    } else if !looks_like_a_superblock(head.as_slice()) {
        // Not a damaged pool (that would be a case for `ferrothin check`)
        // but a device in use for something else: say so, and do not
        // format over it.
        return Err(ThinError::Invalid(not_metadata(a.meta_ch.bdev().name())));
    } else {
        let first_block: &metadata::Block = head.as_slice()[..BLOCK_SIZE]
            .try_into()
            .map_err(|_| ThinError::Invalid("short superblock read".into()))?;
        Some(Superblock::unpack(first_block, 0).map_err(ThinError::Metadata)?)
    };
    let layout = layout(
        &a.meta_ch,
        &a.data_ch,
        a.one_device,
        &a.opts,
        existing
            .as_ref()
            .filter(|_| a.one_device)
            .map(|sb| sb.metadata_nr_blocks),
    )?;
    let loaded = Image::load(&a.meta_ch, layout.meta_offset, layout.meta_blocks)
        .await
        .map_err(|s| io_err("loading the metadata", s))?;
    let image = Rc::new(RefCell::new(loaded));
    let io = Box::new(StagedIo(image.clone()));
    let mut pool = match &existing {
        None => {
            if a.opts.read_only {
                return Err(ThinError::Invalid(
                    "cannot format a pool read-only (the metadata is blank)".into(),
                ));
            }
            Pool::format(io, a.opts.block_sectors(), layout.data_blocks)?
        }
        Some(sb) => {
            if sb.data_block_size != a.opts.block_sectors() {
                return Err(ThinError::Invalid(format!(
                    "the pool was formatted with {}-byte blocks, not {}",
                    sb.data_block_size as u64 * 512,
                    a.opts.block_size
                )));
            }
            Pool::open(io)?
        }
    };
    let data_block_size = a.opts.block_size / a.data_ch.bdev().block_size() as u64;
    let shared = Arc::new(PoolShared::new(
        a.name.clone(),
        a.opts.clone(),
        a.meta_core,
        data_block_size,
        layout.data_offset,
    ));
    shared
        .formatted
        .store(existing.is_none(), std::sync::atomic::Ordering::Release);
    let needs_check = pool.needs_check();
    if layout.data_blocks < pool.nr_data_blocks() {
        return Err(ThinError::Invalid(format!(
            "the data area holds {} blocks but the pool has {}: it cannot shrink",
            layout.data_blocks,
            pool.nr_data_blocks()
        )));
    }
    let grow_data = layout.data_blocks > pool.nr_data_blocks();
    let grow_meta = layout.meta_blocks > pool.nr_metadata_blocks() && !a.one_device;
    if (grow_data || grow_meta) && !needs_check && !a.opts.read_only {
        if grow_data {
            pool.grow_data(layout.data_blocks)?;
        }
        if grow_meta {
            pool.grow_metadata(layout.meta_blocks)?;
        }
    }
    let core = Rc::new(MetaCore {
        shared: shared.clone(),
        pool: RefCell::new(Some(pool)),
        image,
        meta_ch: a.meta_ch,
        data_ch: a.data_ch,
        commit_lock: AsyncLock::default(),
        playing: Cell::new(false),
        play_done: Notify::default(),
        cells: RefCell::new(HashMap::new()),
        volumes: RefCell::new(Default::default()),
        released: RefCell::new(Default::default()),
        flush_waiters: RefCell::new(Vec::new()),
        commit_running: Cell::new(false),
        dirty: Cell::new(existing.is_none() || grow_data || grow_meta),
        space: Notify::default(),
        no_space_timer: RefCell::new(None),
        thaw: Notify::default(),
        confirms: RefCell::new(HashMap::new()),
        passdowns: Cell::new(0),
        passdowns_done: Notify::default(),
        low_water_latched: Cell::new(false),
        meta_low_latched: Cell::new(false),
        drain_lock: AsyncLock::default(),
        reserved_ids: RefCell::new(Default::default()),
        resize_lock: AsyncLock::default(),
        period: RefCell::new(None),
        closed: Cell::new(false),
        staged_tid: Cell::new(None),
    });
    shared
        .needs_check
        .store(needs_check, std::sync::atomic::Ordering::Release);
    if needs_check || a.opts.read_only {
        shared.set_mode(PoolMode::ReadOnly);
    } else if core.dirty.get() {
        // A new or grown pool is durable before anyone uses it.
        core.commit_now()
            .await
            .map_err(|s| io_err("first commit", s))?;
    }
    core.refresh_stats();
    if core.shared.mode() == PoolMode::Write && !core.has_metadata_room() {
        // As full as dm-thin would leave it: usable, but nothing may take
        // metadata until the metadata bdev grows.
        core.shared.set_mode(PoolMode::OutOfMetadataSpace);
    }
    core.start_period();
    install(core.clone());
    Ok(core)
}
