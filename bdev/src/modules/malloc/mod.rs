//! malloc: a RAM disk. Zero-filled at creation; every I/O is a memcpy on the
//! submitting core.

pub mod rpc;

use std::ptr::NonNull;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::stream;
use crate::{
    Bdev, BdevError, BdevFnTable, BdevProps, IoBox, IoStatus, IoType, ModuleChannel, Uuid,
};

/// Options of `bdev_malloc_create`.
#[derive(Clone, Debug)]
pub struct MallocOptions {
    pub name: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub uuid: Option<Uuid>,
    pub optimal_io_boundary: u32,
}

/// The RAM behind a malloc bdev.
struct Memory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the allocation is owned by this struct for its whole life and only
// accessed through raw copies within bounds checked by the bdev layer.
unsafe impl Send for Memory {}
// SAFETY: as for Send. Overlapping concurrent I/O to the same blocks from two
// cores gives unspecified contents, exactly as on a disk; callers (the thin
// pool's block prison, the bench's per-core ranges) never issue it.
unsafe impl Sync for Memory {}

impl Memory {
    /// Maps zeroed anonymous memory. The kernel hands pages out lazily, so a
    /// large disk costs nothing until written; huge pages (where the kernel
    /// allows them on request) cut the TLB misses of random I/O over a large
    /// disk, which measurably bound 4 KiB random writes.
    fn new(len: usize) -> Result<Memory, BdevError> {
        // SAFETY: an anonymous private mapping with no address hint touches
        // no existing memory; failure is reported as MAP_FAILED.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(BdevError::Invalid(format!(
                "cannot map {len} bytes for a malloc bdev: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: advice on the mapping just created; failure only means no
        // huge pages, which is harmless.
        unsafe { libc::madvise(raw, len, libc::MADV_HUGEPAGE) };
        let ptr = NonNull::new(raw.cast::<u8>())
            .ok_or_else(|| BdevError::Invalid("mmap returned null".into()))?;
        // Fault every page in now, as SPDK's pre-allocated hugepage memory
        // is: a first touch in the I/O path costs a page clear (a 2 MiB
        // one with THP, ~1 ms on the VMs measured here), which would make
        // a fresh RAM disk measure the kernel, not the stack.
        let step = 4096;
        let mut off = 0;
        while off < len {
            // SAFETY: off < len, inside the mapping made above; a volatile
            // read-modify-write of one byte of our own fresh memory.
            unsafe {
                let p = raw.cast::<u8>().add(off);
                p.write_volatile(p.read_volatile());
            }
            off += step;
        }
        Ok(Memory { ptr, len })
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn physical_memory() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || size <= 0 {
        return u64::MAX;
    }
    pages as u64 * size as u64
}

struct Malloc {
    mem: Arc<Memory>,
    opts: MallocOptions,
}

/// Creates and registers a malloc bdev.
pub fn create(opts: MallocOptions) -> Result<Arc<Bdev>, BdevError> {
    if opts.block_size < 512 || !opts.block_size.is_multiple_of(512) {
        return Err(BdevError::Invalid(format!(
            "block_size {} is not a multiple of 512",
            opts.block_size
        )));
    }
    if opts.num_blocks == 0 {
        return Err(BdevError::Invalid(
            "num_blocks must be greater than 0".into(),
        ));
    }
    let len = opts
        .num_blocks
        .checked_mul(opts.block_size as u64)
        .and_then(|l| usize::try_from(l).ok())
        .filter(|l| *l <= isize::MAX as usize / 2)
        .ok_or_else(|| BdevError::Invalid("malloc bdev too large".into()))?;
    // A RAM disk larger than the RAM would be accepted lazily and then
    // kill the process on a write; refuse it now.
    let ram = physical_memory();
    if len as u64 > ram {
        return Err(BdevError::Invalid(format!(
            "malloc bdev of {len} bytes exceeds physical memory ({ram} bytes)"
        )));
    }
    if crate::lookup(&opts.name).is_some() {
        return Err(BdevError::Exists(opts.name.clone()));
    }
    let mut props = BdevProps::new(&opts.name, "Malloc disk", opts.block_size, opts.num_blocks);
    props.uuid = opts.uuid;
    props.optimal_io_boundary = opts.optimal_io_boundary;
    let bdev = Bdev::new(
        props,
        Malloc {
            mem: Arc::new(Memory::new(len)?),
            opts,
        },
    )?;
    crate::register(bdev.clone())?;
    Ok(bdev)
}

impl BdevFnTable for Malloc {
    fn module_name(&self) -> &'static str {
        "malloc"
    }

    fn io_type_supported(&self, _t: IoType) -> bool {
        true
    }

    fn create_channel(&self, bdev: &Arc<Bdev>) -> Result<Box<dyn ModuleChannel>, BdevError> {
        Ok(Box::new(MallocChannel {
            mem: self.mem.clone(),
            block_size: bdev.block_size() as usize,
        }))
    }

    fn config_entry(&self, bdev: &Bdev) -> Option<Value> {
        Some(json!({
            "method": "bdev_malloc_create",
            "params": {
                "name": bdev.name(),
                "num_blocks": bdev.num_blocks(),
                "block_size": bdev.block_size(),
                "uuid": bdev.uuid().to_string(),
                "optimal_io_boundary": self.opts.optimal_io_boundary,
            }
        }))
    }
}

struct MallocChannel {
    mem: Arc<Memory>,
    block_size: usize,
}

impl ModuleChannel for MallocChannel {
    fn submit(&self, mut io: IoBox) {
        let start = io.offset_blocks() as usize * self.block_size;
        let len = io.num_blocks() as usize * self.block_size;
        let base = self.mem.ptr.as_ptr();
        if io.io_type() != IoType::Write {
            // Streaming stores of this core's earlier writes may still be
            // on their way to this memory.
            stream::fence();
        }
        match io.io_type() {
            IoType::Read => {
                let mut at = start;
                for b in io.bufs.iter_mut() {
                    // SAFETY: the bdev layer checked offset + length against
                    // the bdev size and that the buffers add up to the length,
                    // so [at, at + b.len()) lies inside the allocation; the
                    // buffer is a distinct allocation (no overlap).
                    unsafe { std::ptr::copy_nonoverlapping(base.add(at), b.as_mut_ptr(), b.len()) };
                    at += b.len();
                }
            }
            IoType::Write => {
                let mut at = start;
                for b in io.bufs.iter() {
                    // SAFETY: as for reads, in the other direction.
                    unsafe { stream::copy(b.as_ptr(), base.add(at), b.len()) };
                    at += b.len();
                }
            }
            IoType::Unmap | IoType::WriteZeroes => {
                // SAFETY: [start, start + len) was range-checked by the layer.
                unsafe { std::ptr::write_bytes(base.add(start), 0, len) };
            }
            IoType::Flush | IoType::Reset => {}
        }
        io.complete(IoStatus::Success);
    }
}
