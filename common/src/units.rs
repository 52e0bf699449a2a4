//! The units of a filesystem, one type each (as [`crate::qcow2::types`] does for qcow2): a
//! block number cannot be passed where a byte offset or a count is expected, and a block
//! size is always one ext2/3/4 allows.
//!
//! * [`BlockSize`]: bytes per filesystem block, a power of two from 1 KiB to 64 KiB,
//!   checked once where it is read (superblock, stream or journal header, `-B`).
//! * [`FsBlock`]: the number of a filesystem block (block `n` starts at byte
//!   `n × block size` of the filesystem).
//! * Byte offsets and lengths stay `u64`; counts of blocks are `u64` named `len` or
//!   `count`. Conversions between blocks and bytes go through [`BlockSize`] and say when a
//!   value does not fit (`None`) instead of wrapping.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::fmt;

/// Bytes per filesystem block: `2^(10 + s_log_block_size)`, 1 KiB to 64 KiB (ext4's
/// `EXT4_MIN_BLOCK_SIZE`..`EXT4_MAX_BLOCK_SIZE`). Only such values exist, so a block size is
/// never zero, a product of it and a 32-bit count never overflows 64 bits, and a buffer of
/// one block always fits in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockSize(u32);

impl BlockSize {
    pub const MIN: u32 = 1024;
    pub const MAX: u32 = 65536;

    /// `bytes` if it is a valid block size.
    pub const fn new(bytes: u32) -> Option<Self> {
        if bytes.is_power_of_two() && bytes >= Self::MIN && bytes <= Self::MAX {
            Some(BlockSize(bytes))
        } else {
            None
        }
    }

    /// The block size of a superblock's `s_log_block_size`.
    pub fn from_log(log_block_size: u32) -> Option<Self> {
        Self::new(Self::MIN.checked_shl(log_block_size)?)
    }

    /// Bytes per block.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Bytes per block, for byte arithmetic.
    pub const fn bytes(self) -> u64 {
        self.0 as u64
    }

    /// Bytes per block, as a buffer length.
    pub const fn as_usize(self) -> usize {
        self.0 as usize
    }

    /// log2 of the block size (10..=16).
    pub const fn bits(self) -> u32 {
        self.0.trailing_zeros()
    }

    /// The byte offset (in the filesystem) where block `b` starts, if it is addressable.
    pub fn offset_of(self, b: FsBlock) -> Option<u64> {
        b.0.checked_mul(self.bytes())
    }

    /// The byte offset just past block `b`, if it is addressable.
    pub fn end_of(self, b: FsBlock) -> Option<u64> {
        self.offset_of(b)?.checked_add(self.bytes())
    }

    /// The length in bytes of `count` blocks, if it fits in 64 bits.
    pub fn bytes_of(self, count: u64) -> Option<u64> {
        count.checked_mul(self.bytes())
    }

    /// The length in bytes of `count` blocks as a buffer length, if it fits.
    pub fn len_of(self, count: u64) -> Option<usize> {
        usize::try_from(count).ok()?.checked_mul(self.as_usize())
    }

    /// The block holding byte `offset` of the filesystem.
    pub const fn block_of(self, offset: u64) -> FsBlock {
        FsBlock(offset >> self.bits())
    }

    /// How many whole blocks `bytes` bytes hold (rounded down).
    pub const fn blocks_in(self, bytes: u64) -> u64 {
        bytes >> self.bits()
    }

    /// How many blocks it takes to hold `bytes` bytes (rounded up).
    pub const fn blocks_covering(self, bytes: u64) -> u64 {
        let whole = bytes >> self.bits();
        if self.divides(bytes) {
            whole
        } else {
            // bytes >> 10 < u64::MAX: cannot saturate.
            whole.saturating_add(1)
        }
    }

    /// True if `bytes` is a whole number of blocks.
    pub const fn divides(self, bytes: u64) -> bool {
        bytes & !(u64::MAX << self.bits()) == 0
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<u32> for BlockSize {
    type Error = u32;

    /// The value itself when it is not a block size.
    fn try_from(bytes: u32) -> Result<Self, u32> {
        BlockSize::new(bytes).ok_or(bytes)
    }
}

/// The number of a filesystem block (not a byte offset, not a count, not a qcow2 cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FsBlock(pub u64);

impl FsBlock {
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The block `n` blocks further, if it exists.
    pub fn checked_add(self, n: u64) -> Option<FsBlock> {
        self.0.checked_add(n).map(FsBlock)
    }

    /// The block `n` blocks further, or the last block number (for ends already known to
    /// lie inside a filesystem).
    pub const fn saturating_add(self, n: u64) -> FsBlock {
        FsBlock(self.0.saturating_add(n))
    }

    /// The number of blocks from `start` up to `self`, if `start` is not after `self`.
    pub fn checked_since(self, start: FsBlock) -> Option<u64> {
        self.0.checked_sub(start.0)
    }

    /// The number of blocks from `start` up to `self`; 0 if `start` is after `self`.
    pub const fn saturating_since(self, start: FsBlock) -> u64 {
        self.0.saturating_sub(start.0)
    }
}

impl fmt::Display for FsBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // tests compute expected values freely
mod tests {
    use super::*;

    #[test]
    fn only_ext4_block_sizes_exist() {
        for bad in [0, 1, 512, 1000, 1536, 3072, 131072, u32::MAX] {
            assert_eq!(BlockSize::new(bad), None, "{bad}");
        }
        let sizes: Vec<u32> = (0..=6)
            .map(|l| BlockSize::from_log(l).unwrap().get())
            .collect();
        assert_eq!(sizes, [1024, 2048, 4096, 8192, 16384, 32768, 65536]);
        assert_eq!(BlockSize::from_log(7), None);
        assert_eq!(BlockSize::from_log(u32::MAX), None);
        assert_eq!(BlockSize::try_from(4096).map(BlockSize::bits), Ok(12));
        assert_eq!(BlockSize::try_from(4095), Err(4095));
    }

    #[test]
    fn conversions_say_when_they_do_not_fit() {
        let bs = BlockSize::new(4096).unwrap();
        assert_eq!(bs.offset_of(FsBlock(3)), Some(12288));
        assert_eq!(bs.end_of(FsBlock(3)), Some(16384));
        assert_eq!(bs.offset_of(FsBlock(u64::MAX >> 12)), Some(u64::MAX - 4095));
        assert_eq!(bs.end_of(FsBlock(u64::MAX >> 12)), None);
        assert_eq!(bs.offset_of(FsBlock((u64::MAX >> 12) + 1)), None);
        assert_eq!(bs.bytes_of(u64::MAX), None);
        assert_eq!(bs.len_of(2), Some(8192));
        assert_eq!(bs.block_of(12287), FsBlock(2));
        assert_eq!(bs.blocks_in(12287), 2);
        assert_eq!(bs.blocks_covering(12287), 3);
        assert_eq!(bs.blocks_covering(12288), 3);
        assert_eq!(bs.blocks_covering(u64::MAX), 1 << 52);
        assert!(bs.divides(8192) && !bs.divides(8193));
        assert_eq!(FsBlock(5).checked_since(FsBlock(7)), None);
        assert_eq!(FsBlock(7).saturating_since(FsBlock(5)), 2);
        assert_eq!(FsBlock(u64::MAX).checked_add(1), None);
    }
}
