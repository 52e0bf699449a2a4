//! Block and inode bitmaps as libext2fs holds them in memory (`ext2fs_read_bitmaps`), and the
//! bitmap blocks it writes back (`ext2fs_write_bitmaps`).
//!
//! In memory the block bitmap is a *cluster* bitmap: bit `i` stands for cluster
//! `(first_data_block >> cluster_bits) + i`, `clusters_per_group` bits per group with no
//! padding between groups. The inode bitmap has bit `i` for inode `i + 1`,
//! `inodes_per_group` bits per group. Both are packed LSB-first.

use super::csum::Checksummer;
use super::damage::Role;
use super::desc::{BG_BLOCK_UNINIT, BG_INODE_UNINIT, DescTable};
use super::fs::read_blocks;
use super::superblock::Superblock;
use crate::Result;
use crate::error::CorruptKind;
use crate::io::ReadAt;
use crate::units::FsBlock;

/// The in-memory bitmaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bitmaps {
    /// `groups * clusters_per_group / 8` bytes.
    pub block: Vec<u8>,
    /// `groups * inodes_per_group / 8` bytes.
    pub inode: Vec<u8>,
}

/// Bytes of one group's block bitmap (`clusters_per_group / 8`).
pub fn block_nbytes(sb: &Superblock) -> usize {
    (sb.clusters_per_group / 8) as usize
}

/// Bytes of one group's inode bitmap (`inodes_per_group / 8`).
pub fn inode_nbytes(sb: &Superblock) -> usize {
    (sb.inodes_per_group / 8) as usize
}

/// Refuse geometries whose per-group bitmaps do not fit a block or are not whole bytes
/// (libext2fs refuses the first as a corrupt superblock and mangles the second).
pub fn check_geometry(sb: &Superblock) -> Result<()> {
    if !sb.clusters_per_group.is_multiple_of(8)
        || !sb.inodes_per_group.is_multiple_of(8)
        || block_nbytes(sb) > sb.block_size.as_usize()
        || inode_nbytes(sb) > sb.block_size.as_usize()
    {
        return Err(CorruptKind::SuperblockBitmapGeometry {
            clusters_per_group: sb.clusters_per_group,
            inodes_per_group: sb.inodes_per_group,
            block_size: sb.block_size.get(),
        }
        .into());
    }
    Ok(())
}

/// Locations of group `g`'s superblock backup, old-style descriptor block and meta_bg
/// descriptor block (block 0 when absent): libext2fs `ext2fs_super_and_bgd_loc2`.
pub fn super_and_bgd_loc(sb: &Superblock, g: u32) -> (FsBlock, FsBlock, FsBlock) {
    let mut group_block = sb.group_first_block(g);
    if group_block == FsBlock(0) && sb.block_size.get() == 1024 {
        group_block = FsBlock(1);
    }
    let has_super = sb.group_has_super(g);
    let super_blk = if has_super { group_block } else { FsBlock(0) };
    let mbs = std::num::NonZeroU32::new(sb.desc_per_block).unwrap_or(std::num::NonZeroU32::MIN);
    let meta_bg = g / mbs;
    let (mut old_desc, mut new_desc) = (FsBlock(0), FsBlock(0));
    // group_block saturates at u64::MAX for groups past the end: never a valid block.
    if !sb.has_meta_bg() || meta_bg < sb.first_meta_bg {
        if has_super {
            old_desc = group_block.saturating_add(1);
        }
    } else {
        let r = g % mbs;
        if r == 0 || r == 1 || r == mbs.get().saturating_sub(1) {
            new_desc = group_block.saturating_add(u64::from(has_super));
        }
    }
    (super_blk, old_desc, new_desc)
}

/// A cluster bitmap over `[start, real_end]` with marks limited to `[start, end]`, as
/// libext2fs's 64-bit block bitmap.
struct ClusterMarks<'a> {
    bits: &'a mut [u8],
    cluster_bits: u32,
    start: u64,
    end: u64,
}

impl ClusterMarks<'_> {
    fn set(&mut self, c: u64) {
        let Some(i) = c.checked_sub(self.start) else {
            return;
        };
        if let Some(b) = usize::try_from(i / 8)
            .ok()
            .and_then(|i| self.bits.get_mut(i))
        {
            *b |= 1 << (i % 8);
        }
    }

    /// `ext2fs_mark_block_bitmap2`: out-of-range marks are dropped (libext2fs warns).
    fn mark(&mut self, blk: u64) {
        let c = blk >> self.cluster_bits;
        if c < self.start || c > self.end {
            return;
        }
        self.set(c);
    }

    /// `ext2fs_mark_block_bitmap_range2`: the whole range is dropped if any of it is out of
    /// range.
    fn mark_range(&mut self, blk: u64, num: u64) {
        // libext2fs computes in wrapping 64-bit arithmetic; so does this, on purpose: a
        // range that wraps fails the bounds check below and is dropped, as there.
        let round = 1u64
            .checked_shl(self.cluster_bits)
            .unwrap_or(1)
            .wrapping_sub(1);
        let first = blk >> self.cluster_bits;
        let last_excl = blk.wrapping_add(num).wrapping_add(round) >> self.cluster_bits;
        let n = last_excl.wrapping_sub(first);
        let last = first.wrapping_add(n).wrapping_sub(1);
        if first < self.start || first > self.end || last > self.end {
            return;
        }
        for c in first..=last {
            self.set(c);
        }
    }
}

/// OR into `block_bitmap` the metadata of every group flagged BLOCK_UNINIT (whatever the
/// checksum feature says): libext2fs `mark_uninit_bg_group_blocks`.
pub fn mark_uninit_group_metadata(sb: &Superblock, desc: &DescTable, block_bitmap: &mut [u8]) {
    let mut m = ClusterMarks {
        bits: block_bitmap,
        cluster_bits: sb.cluster_bits,
        start: u64::from(sb.first_data_block) >> sb.cluster_bits,
        end: sb.blocks_count.saturating_sub(1) >> sb.cluster_bits,
    };
    let old_desc_blocks = if sb.has_meta_bg() {
        u64::from(sb.first_meta_bg)
    } else {
        u64::from(sb.desc_blocks).saturating_add(u64::from(sb.reserved_gdt_blocks()))
    };
    for g in 0..sb.group_count {
        if !desc.has_flag(g, BG_BLOCK_UNINIT) {
            continue;
        }
        // ext2fs_reserve_super_and_bgd
        let (super_blk, old_desc, new_desc) = super_and_bgd_loc(sb, g);
        let (super_blk, old_desc, new_desc) = (super_blk.get(), old_desc.get(), new_desc.get());
        if super_blk != 0 || g == 0 {
            m.mark(super_blk);
        }
        if g == 0 && sb.block_size.get() == 1024 && sb.cluster_bits > 0 {
            m.mark(0);
        }
        if old_desc != 0 && old_desc < sb.blocks_count {
            let num = old_desc_blocks.min(sb.blocks_count.saturating_sub(old_desc));
            m.mark_range(old_desc, num);
        }
        if new_desc != 0 {
            m.mark(new_desc);
        }
        let it = desc.inode_table(g).get();
        if it != 0 {
            m.mark_range(it, u64::from(sb.inode_blocks_per_group));
        }
        for b in [desc.block_bitmap(g), desc.inode_bitmap(g)] {
            let b = b.get();
            if b != 0 && b < sb.blocks_count {
                m.mark(b);
            }
        }
    }
}

/// Build the in-memory bitmaps of a filesystem from its bitmap blocks, as
/// `ext2fs_read_bitmaps` does with checksum errors ignored:
/// * a group flagged BLOCK_UNINIT (INODE_UNINIT) whose descriptor checksum verifies, on a
///   filesystem with descriptor checksums, starts from zeros and its bitmap block is not read;
///   so does a group whose bitmap location is 0 or past the end of the filesystem;
/// * every other group starts from the first `nbytes` of its on-disk bitmap block;
/// * then the metadata of every BLOCK_UNINIT group is marked in the block bitmap.
pub fn read_bitmaps<S: ReadAt + ?Sized>(
    src: &S,
    sb: &Superblock,
    desc: &DescTable,
) -> Result<Bitmaps> {
    check_geometry(sb)?;
    let cs = Checksummer::new(sb);
    let csum = cs.has_group_desc_csum();
    let groups = sb.group_count as usize;
    let bnb = block_nbytes(sb);
    let inb = inode_nbytes(sb);
    let bs = sb.block_size.as_usize();
    // Bounded by 2^32 groups of at most a block each: only a 32-bit host can overflow.
    let too_big = || CorruptKind::SuperblockGroupCount {
        groups: u64::from(sb.group_count),
    };
    let mut out = Bitmaps {
        block: vec![0u8; groups.checked_mul(bnb).ok_or_else(too_big)?],
        inode: vec![0u8; groups.checked_mul(inb).ok_or_else(too_big)?],
    };
    let mut buf = vec![0u8; bs];
    for g in 0..sb.group_count {
        let verified = || cs.group_desc_csum_verify(desc, g);
        for (is_block, flag, loc, nb) in [
            (true, BG_BLOCK_UNINIT, desc.block_bitmap(g), bnb),
            (false, BG_INODE_UNINIT, desc.inode_bitmap(g), inb),
        ] {
            if loc == FsBlock(0)
                || loc.get() >= sb.blocks_count
                || (csum && desc.has_flag(g, flag) && verified())
            {
                continue;
            }
            let (role, dst) = if is_block {
                (Role::BlockBitmap { group: g }, &mut out.block)
            } else {
                (Role::InodeBitmap { group: g }, &mut out.inode)
            };
            read_blocks(src, sb.block_size, loc, &mut buf, role)?;
            // g < group_count: the group's bytes lie inside the bitmap just allocated.
            let at = (g as usize).saturating_mul(nb);
            if let Some(d) = dst.get_mut(at..at.saturating_add(nb)) {
                d.copy_from_slice(&buf[..nb]);
            }
        }
    }
    mark_uninit_group_metadata(sb, desc, &mut out.block);
    Ok(out)
}

/// The block libext2fs writes for group `g`'s block bitmap (`write_bitmaps`): the group's
/// bits, then 0xFF to the end of the block; in the last group the bits past the end of the
/// filesystem are set too.
pub fn block_bitmap_block(sb: &Superblock, block_bitmap: &[u8], g: u32) -> Vec<u8> {
    let bs = sb.block_size.as_usize();
    let nb = block_nbytes(sb);
    let mut out = vec![0xFFu8; bs];
    let at = (g as usize).saturating_mul(nb);
    if let Some(src) = block_bitmap.get(at..at.saturating_add(nb)) {
        out[..nb].copy_from_slice(src);
    }
    if g.checked_add(1) == Some(sb.group_count) {
        // The superblock holds first_data_block < blocks_count.
        let rem = sb
            .blocks_count
            .saturating_sub(u64::from(sb.first_data_block))
            .checked_rem(u64::from(sb.blocks_per_group))
            .unwrap_or(0);
        let nbits = usize::try_from(rem.div_ceil(sb.cluster_ratio())).unwrap_or(usize::MAX);
        if nbits != 0 {
            for j in nbits..bs.saturating_mul(8) {
                out[j / 8] |= 1 << (j % 8);
            }
        }
    }
    out
}

/// The block libext2fs writes for group `g`'s inode bitmap: its bits, then 0xFF.
pub fn inode_bitmap_block(sb: &Superblock, inode_bitmap: &[u8], g: u32) -> Vec<u8> {
    let bs = sb.block_size.as_usize();
    let nb = inode_nbytes(sb);
    let mut out = vec![0xFFu8; bs];
    let at = (g as usize).saturating_mul(nb);
    if let Some(src) = inode_bitmap.get(at..at.saturating_add(nb)) {
        out[..nb].copy_from_slice(src);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_marks_are_all_or_nothing() {
        let mut bits = vec![0u8; 4];
        let mut m = ClusterMarks {
            bits: &mut bits,
            cluster_bits: 0,
            start: 1,
            end: 20,
        };
        m.mark_range(18, 5); // runs past end: dropped
        m.mark_range(2, 3); // bits for clusters 2..5 → indices 1..4
        m.mark(0); // before start: dropped
        m.mark(20);
        m.mark_range(0, 0); // wraps: dropped
        assert_eq!(bits, vec![0b0000_1110, 0, 0b0000_1000, 0]);
    }

    #[test]
    fn cluster_ranges_round_outward() {
        let mut bits = vec![0u8; 2];
        let mut m = ClusterMarks {
            bits: &mut bits,
            cluster_bits: 2,
            start: 0,
            end: 15,
        };
        m.mark_range(5, 4); // blocks 5..9 → clusters 1..=2
        assert_eq!(bits, vec![0b0000_0110, 0]);
    }
}
