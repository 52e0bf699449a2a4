//! Group descriptors, kept as the raw descriptor blocks (32- or 64-byte records).

use super::le;
use super::superblock::Superblock;
use crate::units::FsBlock;

pub const BG_INODE_UNINIT: u16 = 0x0001;
pub const BG_BLOCK_UNINIT: u16 = 0x0002;
pub const BG_INODE_ZEROED: u16 = 0x0004;

/// The descriptor table as read from disk (`desc_blocks` whole blocks).
#[derive(Debug, Clone)]
pub struct DescTable {
    raw: Vec<u8>,
    stride: usize,
    is64: bool,
    count: u32,
}

/// What a descriptor record past the table reads as: zeros (no table, no bitmaps, no flags).
static ZERO_RECORD: [u8; 1024] = [0; 1024];

impl DescTable {
    pub fn new(raw: Vec<u8>, sb: &Superblock) -> Self {
        DescTable {
            raw,
            stride: (sb.desc_size & !7) as usize,
            is64: sb.is_64bit(),
            count: sb.group_count,
        }
    }

    /// The raw descriptor blocks, verbatim.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn raw_mut(&mut self) -> &mut [u8] {
        &mut self.raw
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Byte range of group `g`'s record in the table.
    fn range(&self, g: u32) -> Option<std::ops::Range<usize>> {
        let off = usize::try_from(g).ok()?.checked_mul(self.stride)?;
        Some(off..off.checked_add(self.stride.max(32))?)
    }

    fn rec(&self, g: u32) -> &[u8] {
        // Callers loop over the groups the table holds; a group past it (which the
        // superblock's geometry rules out) reads as an all-zero record.
        self.range(g)
            .and_then(|r| self.raw.get(r))
            .unwrap_or(&ZERO_RECORD[..self.stride.clamp(32, 1024)])
    }

    /// Group `g`'s descriptor record (`desc_size` bytes, or 32 without 64bit).
    pub fn record(&self, g: u32) -> &[u8] {
        self.rec(g)
    }

    /// Group `g`'s descriptor record, for updating checksums and flags; `None` for a group
    /// the table does not hold.
    pub fn record_mut(&mut self, g: u32) -> Option<&mut [u8]> {
        let r = self.range(g)?;
        self.raw.get_mut(r)
    }

    fn lo_hi32(&self, g: u32, lo: usize, hi: usize) -> u64 {
        let r = self.rec(g);
        let mut v = u64::from(le::u32(r, lo));
        if self.is64
            && let Some(h) = le::get_u32(r, hi)
        {
            v |= u64::from(h) << 32;
        }
        v
    }

    /// Where group `g`'s block bitmap is (0: none), as the descriptor says: not checked to
    /// lie inside the filesystem.
    pub fn block_bitmap(&self, g: u32) -> FsBlock {
        FsBlock(self.lo_hi32(g, 0x00, 0x20))
    }
    pub fn inode_bitmap(&self, g: u32) -> FsBlock {
        FsBlock(self.lo_hi32(g, 0x04, 0x24))
    }
    pub fn inode_table(&self, g: u32) -> FsBlock {
        FsBlock(self.lo_hi32(g, 0x08, 0x28))
    }
    pub fn flags(&self, g: u32) -> u16 {
        le::u16(self.rec(g), 0x12)
    }
    pub fn has_flag(&self, g: u32, f: u16) -> bool {
        self.flags(g) & f != 0
    }
    pub fn itable_unused(&self, g: u32) -> u32 {
        let r = self.rec(g);
        let mut v = u32::from(le::u16(r, 0x1C));
        if self.is64
            && let Some(h) = le::get_u16(r, 0x32)
        {
            v |= u32::from(h) << 16;
        }
        v
    }

    /// Clear the UNINIT flags and itable_unused of every group, as libext2fs does in memory
    /// when a filesystem with descriptor checksums is opened through a backup superblock.
    pub fn clear_uninit(&mut self) {
        let is64 = self.is64;
        for g in 0..self.count {
            let Some(rec) = self.record_mut(g) else { break };
            let f = le::u16(rec, 0x12) & !(BG_INODE_UNINIT | BG_BLOCK_UNINIT);
            le::set_u16(rec, 0x12, f);
            le::set_u16(rec, 0x1C, 0);
            if is64 && rec.len() >= 0x34 {
                le::set_u16(rec, 0x32, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_halves_of_64bit_fields() {
        let mut raw = vec![0u8; 1024];
        le::set_u32(&mut raw, 64 + 0x08, 0xFFFF_FFFF);
        le::set_u32(&mut raw, 64 + 0x28, 0xFFFF_FFFF);
        le::set_u16(&mut raw, 64 + 0x1C, 0xFFFF);
        le::set_u16(&mut raw, 64 + 0x32, 0xFFFF);
        let t = DescTable {
            raw,
            stride: 64,
            is64: true,
            count: 2,
        };
        assert_eq!(t.inode_table(1), FsBlock(u64::MAX));
        assert_eq!(t.itable_unused(1), u32::MAX);
        assert_eq!(t.inode_table(0), FsBlock(0));
        // A group past the table reads as zeros.
        assert_eq!(t.inode_table(99), FsBlock(0));
        assert_eq!(t.record(99).len(), 64);
    }
}
