//! The data block size in bdev blocks, as the I/O path divides by it.
//!
//! Every read or write divides its offset by the block size two or three
//! times (which block, the offset within it, whether it crosses into the
//! next). A 64-bit division costs 10 to 40 cycles, a measurable share of a
//! fast-path I/O; the sizes users pick are nearly always powers of two, so
//! those divide by shifting. Others (dm-thin allows any multiple of 64 KiB)
//! still divide.

#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockSize {
    blocks: u64,
    /// log2(blocks) when it is a power of two.
    shift: Option<u32>,
}

impl BlockSize {
    /// `blocks` must be non-zero (a pool's block size always is).
    pub fn new(blocks: u64) -> BlockSize {
        BlockSize {
            blocks: blocks.max(1),
            shift: blocks.is_power_of_two().then(|| blocks.trailing_zeros()),
        }
    }

    /// Bdev blocks per data block.
    #[inline]
    pub fn get(self) -> u64 {
        self.blocks
    }

    /// log2 of `get()`, when it is a power of two.
    #[inline]
    pub fn shift(self) -> Option<u32> {
        self.shift
    }

    /// The data block that bdev block `offset` lies in.
    #[inline]
    pub fn index(self, offset: u64) -> u64 {
        match self.shift {
            Some(shift) => offset >> shift,
            None => offset / self.blocks,
        }
    }

    /// Where bdev block `offset` lies within its data block.
    #[inline]
    pub fn within(self, offset: u64) -> u64 {
        match self.shift {
            Some(_) => offset & (self.blocks - 1),
            None => offset % self.blocks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divides_as_division_does() {
        for blocks in [1u64, 2, 16, 128, 48, 3, 160, 1 << 18, (1 << 18) - 16] {
            let size = BlockSize::new(blocks);
            assert_eq!(size.get(), blocks);
            for offset in [
                0,
                1,
                blocks - 1,
                blocks,
                blocks + 1,
                12345,
                u64::MAX - 7,
                u64::MAX,
            ] {
                assert_eq!(size.index(offset), offset / blocks, "{offset} / {blocks}");
                assert_eq!(size.within(offset), offset % blocks, "{offset} % {blocks}");
            }
        }
    }
}
