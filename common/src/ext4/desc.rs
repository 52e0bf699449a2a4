//! Group descriptors, kept as the raw descriptor blocks (32- or 64-byte records).

use super::le;
use super::superblock::Superblock;

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

    fn rec(&self, g: u32) -> &[u8] {
        let off = g as usize * self.stride;
        &self.raw[off..off + self.stride.max(32)]
    }

    /// Group `g`'s descriptor record (`desc_size` bytes, or 32 without 64bit).
    pub fn record(&self, g: u32) -> &[u8] {
        self.rec(g)
    }

    /// Group `g`'s descriptor record, for updating checksums and flags.
    pub fn record_mut(&mut self, g: u32) -> &mut [u8] {
        let off = g as usize * self.stride;
        let len = self.stride.max(32);
        &mut self.raw[off..off + len]
    }

    fn lo_hi32(&self, g: u32, lo: usize, hi: usize) -> u64 {
        let r = self.rec(g);
        let mut v = u64::from(le::u32(r, lo));
        if self.is64 && r.len() >= hi + 4 {
            v |= u64::from(le::u32(r, hi)) << 32;
        }
        v
    }

    pub fn block_bitmap(&self, g: u32) -> u64 {
        self.lo_hi32(g, 0x00, 0x20)
    }
    pub fn inode_bitmap(&self, g: u32) -> u64 {
        self.lo_hi32(g, 0x04, 0x24)
    }
    pub fn inode_table(&self, g: u32) -> u64 {
        self.lo_hi32(g, 0x08, 0x28)
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
        if self.is64 && r.len() >= 0x34 {
            v |= u32::from(le::u16(r, 0x32)) << 16;
        }
        v
    }

    /// Clear the UNINIT flags and itable_unused of every group, as libext2fs does in memory
    /// when a filesystem with descriptor checksums is opened through a backup superblock.
    pub fn clear_uninit(&mut self) {
        for g in 0..self.count {
            let off = g as usize * self.stride;
            let f = le::u16(&self.raw, off + 0x12) & !(BG_INODE_UNINIT | BG_BLOCK_UNINIT);
            self.raw[off + 0x12..off + 0x14].copy_from_slice(&f.to_le_bytes());
            self.raw[off + 0x1C..off + 0x1E].fill(0);
            if self.is64 && self.stride >= 0x34 {
                self.raw[off + 0x32..off + 0x34].fill(0);
            }
        }
    }
}
