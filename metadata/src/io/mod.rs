//! The block I/O seam: whole, aligned 4 KiB blocks; a batch of writes; a
//! flush. Implementations: a file ([`FileIo`]), memory ([`MemIo`]); the
//! crash tests add a simulated disk and the pool a bdev-backed one.
//!
//! The trait is synchronous: it runs on the core that owns the metadata
//! and blocks only that core.

use std::fs::File;
use std::os::unix::fs::FileExt;

mod sim;

pub use sim::SimDisk;

use crate::{Block, MetadataError, BLOCK_SIZE};

pub trait BlockIo {
    /// Size of the device in blocks.
    fn nr_blocks(&self) -> u64;
    /// Reads block `b`.
    fn read(&self, b: u64) -> Result<Box<Block>, MetadataError>;
    /// Writes blocks (in any order; durable only after `flush`).
    fn write(&mut self, blocks: &[(u64, &Block)]) -> Result<(), MetadataError>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<(), MetadataError>;
}

fn zero_block() -> Box<Block> {
    vec![0u8; BLOCK_SIZE]
        .into_boxed_slice()
        .try_into()
        .unwrap_or_else(|_| unreachable!("exact size"))
}

/// Metadata on a file or block device.
pub struct FileIo {
    file: File,
    nr_blocks: u64,
}

impl FileIo {
    pub fn new(file: File) -> Result<FileIo, MetadataError> {
        let len = file
            .metadata()
            .map_err(|source| MetadataError::Io { block: 0, source })?
            .len();
        Ok(FileIo {
            file,
            nr_blocks: len / BLOCK_SIZE as u64,
        })
    }

    /// Uses a device size other than the file's (a block device reports 0).
    pub fn with_nr_blocks(file: File, nr_blocks: u64) -> FileIo {
        FileIo { file, nr_blocks }
    }

    /// The file underneath, for what is not block I/O (a tool's discard).
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl BlockIo for FileIo {
    fn nr_blocks(&self) -> u64 {
        self.nr_blocks
    }

    fn read(&self, b: u64) -> Result<Box<Block>, MetadataError> {
        if b >= self.nr_blocks {
            return Err(MetadataError::OutOfRange(b, self.nr_blocks));
        }
        let mut buf = zero_block();
        self.file
            .read_exact_at(&mut buf[..], b * BLOCK_SIZE as u64)
            .map_err(|source| MetadataError::Io { block: b, source })?;
        Ok(buf)
    }

    fn write(&mut self, blocks: &[(u64, &Block)]) -> Result<(), MetadataError> {
        for &(b, data) in blocks {
            if b >= self.nr_blocks {
                return Err(MetadataError::OutOfRange(b, self.nr_blocks));
            }
            self.file
                .write_all_at(data, b * BLOCK_SIZE as u64)
                .map_err(|source| MetadataError::Io { block: b, source })?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), MetadataError> {
        self.file
            .sync_data()
            .map_err(|source| MetadataError::Io { block: 0, source })
    }
}

/// Metadata in memory (tests, and images built before being written out).
#[derive(Clone)]
pub struct MemIo {
    blocks: Vec<Box<Block>>,
}

impl MemIo {
    /// An image from blocks (e.g. what survived a simulated power cut).
    pub fn from_blocks(blocks: Vec<Box<Block>>) -> MemIo {
        MemIo { blocks }
    }

    pub fn new(nr_blocks: u64) -> MemIo {
        MemIo {
            blocks: (0..nr_blocks).map(|_| zero_block()).collect(),
        }
    }

    /// The whole device as bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.blocks.iter().flat_map(|b| b.iter().copied()).collect()
    }

    /// Changes a block behind the library's back (for corruption tests).
    pub fn block_mut(&mut self, b: u64) -> Option<&mut Block> {
        self.blocks.get_mut(b as usize).map(|b| &mut **b)
    }
}

impl BlockIo for MemIo {
    fn nr_blocks(&self) -> u64 {
        self.blocks.len() as u64
    }

    fn read(&self, b: u64) -> Result<Box<Block>, MetadataError> {
        self.blocks
            .get(b as usize)
            .cloned()
            .ok_or(MetadataError::OutOfRange(b, self.blocks.len() as u64))
    }

    fn write(&mut self, blocks: &[(u64, &Block)]) -> Result<(), MetadataError> {
        let n = self.blocks.len() as u64;
        for &(b, data) in blocks {
            let slot = self
                .blocks
                .get_mut(b as usize)
                .ok_or(MetadataError::OutOfRange(b, n))?;
            slot.copy_from_slice(data);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), MetadataError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(io: &mut dyn BlockIo) {
        let mut a = [0u8; BLOCK_SIZE];
        a[0] = 1;
        a[4095] = 2;
        io.write(&[(3, &a)]).unwrap();
        io.flush().unwrap();
        assert_eq!(io.read(3).unwrap()[..], a[..]);
        assert!(io.read(2).unwrap().iter().all(|&x| x == 0));
        assert!(matches!(
            io.read(io.nr_blocks()),
            Err(MetadataError::OutOfRange(..))
        ));
        assert!(io.write(&[(io.nr_blocks(), &a)]).is_err());
    }

    #[test]
    fn mem_and_file_behave_alike() {
        exercise(&mut MemIo::new(8));
        let path = std::env::temp_dir().join(format!("ferrothin-mdio-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(8 * BLOCK_SIZE as u64).unwrap();
        exercise(&mut FileIo::new(f).unwrap());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_truncated_file_reads_as_an_error() {
        let path =
            std::env::temp_dir().join(format!("ferrothin-mdio-short-{}", std::process::id()));
        std::fs::write(&path, [0u8; 100]).unwrap();
        let io = FileIo::with_nr_blocks(std::fs::File::open(&path).unwrap(), 4);
        assert!(matches!(io.read(0), Err(MetadataError::Io { .. })));
        std::fs::remove_file(path).unwrap();
    }
}
