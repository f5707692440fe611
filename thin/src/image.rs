//! The pool's metadata as the metadata library sees it: an in-memory image
//! of the metadata region, loaded once at open, whose writes and flushes
//! are staged and then played to the metadata bdev in order by the commit.
//!
//! The library's block I/O is synchronous; bdev I/O completes on the
//! reactor loop. Holding the image in memory lets the library run to the
//! end of a commit without waiting, and `play` then writes what it asked
//! for, in its order (blocks, flush, superblock, flush), waiting for each
//! step. All-zero blocks are not stored.
//!
//! The superblock that last reached the disk (written and then flushed) is
//! kept apart, so an abort after a failed `play` reopens exactly what the
//! disk holds.

use std::cell::RefCell;
use std::rc::Rc;

use metadata::io::BlockIo;
use metadata::{Block, MetadataError, BLOCK_SIZE};

use bdev::{IoBuf, IoChannel, IoStatus};

/// A staged step, with the block's contents as they were when the library
/// wrote them (a later transaction in the same batch may write the block
/// again: the superblock always is).
enum Op {
    Write(u64, Box<Block>),
    Flush,
}

pub struct Image {
    blocks: Vec<Option<Box<Block>>>,
    ops: Vec<Op>,
    durable_sb: Box<Block>,
    /// Where the metadata starts on the bdev, in bdev blocks.
    pub offset_blocks: u64,
}

pub type SharedImage = Rc<RefCell<Image>>;

/// The metadata library's view of the image.
pub struct StagedIo(pub SharedImage);

fn zero_block() -> Box<Block> {
    Box::new([0u8; BLOCK_SIZE])
}

impl BlockIo for StagedIo {
    fn nr_blocks(&self) -> u64 {
        self.0.borrow().blocks.len() as u64
    }

    fn read(&self, block: u64) -> Result<Box<Block>, MetadataError> {
        let image = self.0.borrow();
        match image.blocks.get(block as usize) {
            Some(Some(contents)) => Ok(contents.clone()),
            Some(None) => Ok(zero_block()),
            None => Err(MetadataError::OutOfRange(block, image.blocks.len() as u64)),
        }
    }

    fn write(&mut self, blocks: &[(u64, &Block)]) -> Result<(), MetadataError> {
        let mut image = self.0.borrow_mut();
        let nr_blocks = image.blocks.len() as u64;
        for &(block, data) in blocks {
            if block >= nr_blocks {
                return Err(MetadataError::OutOfRange(block, nr_blocks));
            }
            image.blocks[block as usize] = Some(Box::new(*data));
            image.ops.push(Op::Write(block, Box::new(*data)));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), MetadataError> {
        self.0.borrow_mut().ops.push(Op::Flush);
        Ok(())
    }
}

/// Why playing staged writes stopped.
#[derive(Debug)]
pub struct PlayError {
    pub status: IoStatus,
}

impl Image {
    /// Reads `nr_blocks` metadata blocks at `offset_blocks` of the bdev
    /// behind `ch`, a MiB at a time.
    pub async fn load(
        ch: &IoChannel,
        offset_blocks: u64,
        nr_blocks: u64,
    ) -> Result<Image, IoStatus> {
        let block_size = ch.bdev().block_size() as u64;
        let bdev_blocks = BLOCK_SIZE as u64 / block_size;
        let mut blocks = Vec::with_capacity(nr_blocks as usize);
        const CHUNK: u64 = 256;
        let mut block = 0;
        while block < nr_blocks {
            let count = CHUNK.min(nr_blocks - block);
            let buf = ch
                .read(offset_blocks + block * bdev_blocks, count * bdev_blocks)
                .await?;
            for contents in buf.as_slice().chunks_exact(BLOCK_SIZE) {
                blocks.push(if contents.iter().all(|&x| x == 0) {
                    None
                } else {
                    Some(Box::new(
                        <Block>::try_from(contents).unwrap_or([0; BLOCK_SIZE]),
                    ))
                });
            }
            block += count;
        }
        let durable_sb = match blocks.first() {
            Some(Some(sb)) => sb.clone(),
            _ => zero_block(),
        };
        Ok(Image {
            blocks,
            ops: Vec::new(),
            durable_sb,
            offset_blocks,
        })
    }

    pub fn nr_blocks(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Grows the image (the metadata bdev grew); new blocks read as zero.
    pub fn grow(&mut self, nr_blocks: u64) {
        if nr_blocks > self.nr_blocks() {
            self.blocks.resize_with(nr_blocks as usize, || None);
        }
    }

    /// Forgets staged writes and puts back the superblock the disk holds,
    /// so that reopening reads the last durable commit.
    pub fn rollback(&mut self) {
        self.ops.clear();
        if let Some(slot) = self.blocks.first_mut() {
            *slot = Some(self.durable_sb.clone());
        }
    }
}

/// Plays the staged operations to the bdev behind `ch`, in order: runs of
/// writes go out together (adjacent blocks merged), each flush waits for
/// everything before it. Stops at the first failure.
pub async fn play(image: &SharedImage, ch: &IoChannel) -> Result<(), PlayError> {
    let (ops, offset) = {
        let mut staged = image.borrow_mut();
        (std::mem::take(&mut staged.ops), staged.offset_blocks)
    };
    let block_size = ch.bdev().block_size() as u64;
    let bdev_blocks = BLOCK_SIZE as u64 / block_size;
    let mut sb_written = None;
    // Within one batch (between flushes) the last write of a block wins.
    let mut pending: std::collections::BTreeMap<u64, &Block> = Default::default();
    let tail = match ops.last() {
        None | Some(Op::Flush) => None,
        Some(_) => Some(Op::Flush),
    };
    for op in ops.iter().chain(tail.iter()) {
        match op {
            Op::Write(block, data) => {
                pending.insert(*block, data);
            }
            Op::Flush => {
                if !pending.is_empty() {
                    let keys: Vec<u64> = pending.keys().copied().collect();
                    let mut waits = Vec::new();
                    for (start, len) in runs(&keys) {
                        let mut buf = IoBuf::new((len * BLOCK_SIZE as u64) as usize);
                        for k in 0..len {
                            let at = (k as usize) * BLOCK_SIZE;
                            buf.as_mut_slice()[at..at + BLOCK_SIZE]
                                .copy_from_slice(&pending[&(start + k)][..]);
                        }
                        if start == 0 {
                            sb_written = Some(Box::new(
                                <Block>::try_from(&buf.as_slice()[..BLOCK_SIZE])
                                    .unwrap_or([0; BLOCK_SIZE]),
                            ));
                        }
                        let mut io = bdev::IoBox::new();
                        io.prep(
                            bdev::IoType::Write,
                            offset + start * bdev_blocks,
                            len * bdev_blocks,
                        );
                        io.set_buf(buf);
                        waits.push(ch.submit_wait(io));
                    }
                    let mut failed = None;
                    for w in waits {
                        let io = w.await;
                        if !io.status().is_success() && failed.is_none() {
                            failed = Some(io.status());
                        }
                    }
                    pending.clear();
                    if let Some(status) = failed {
                        return Err(PlayError { status });
                    }
                }
                ch.make_durable()
                    .await
                    .map_err(|status| PlayError { status })?;
                if let Some(sb) = sb_written.take() {
                    image.borrow_mut().durable_sb = sb;
                }
            }
        }
    }
    Ok(())
}

/// Runs of consecutive block numbers, at most 64 blocks each.
fn runs(sorted: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &block in sorted {
        match out.last_mut() {
            Some((start, len)) if *start + *len == block && *len < 64 => *len += 1,
            _ => out.push((block, 1)),
        }
    }
    out
}
