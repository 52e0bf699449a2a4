//! An opened filesystem: source, superblock and descriptors.

use super::desc::DescTable;
use super::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, Superblock};
use crate::io::ReadAt;
use crate::{Error, Result};

/// How to find the superblock.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// `-b`: read the superblock from this block (of `block_size` bytes) instead of byte 1024.
    pub superblock: Option<u64>,
    /// `-B`: the block size; required with `superblock`, otherwise a check.
    pub block_size: Option<u32>,
}

/// A filesystem opened read-only over a source.
pub struct Filesystem<S> {
    pub src: S,
    pub sb: Superblock,
    pub desc: DescTable,
    /// The block the superblock was read from, when `-b` was given.
    pub backup_superblock: Option<u64>,
}

impl<S: ReadAt> Filesystem<S> {
    /// Open like libext2fs's `ext2fs_open2` with checksum errors ignored.
    pub fn open(src: S, opts: OpenOptions) -> Result<Self> {
        let (sb_offset, group_block) = match opts.superblock {
            Some(s) if s != 0 => {
                let bs = opts.block_size.ok_or_else(|| {
                    Error::InvalidInput("a backup superblock (-b) needs the block size (-B)".into())
                })?;
                let off = s.checked_mul(u64::from(bs)).ok_or_else(|| {
                    Error::InvalidInput(format!("superblock {s} × block size {bs} overflows"))
                })?;
                (off, Some(s))
            }
            _ => (SUPERBLOCK_OFFSET, None),
        };
        let mut raw = [0u8; SUPERBLOCK_SIZE];
        src.read_exact_at(&mut raw, sb_offset, &|| {
            format!("superblock at byte {sb_offset}")
        })?;
        let sb = Superblock::parse(&raw, opts.block_size)?;
        let bs = u64::from(sb.block_size);
        let group_block = group_block.unwrap_or(u64::from(sb.first_data_block));
        let desc_len = (sb.desc_blocks as usize)
            .checked_mul(sb.block_size as usize)
            .ok_or_else(|| Error::corrupt("superblock", "descriptor table size overflows"))?;
        // Bounded by the geometry checks: at most 2^32 groups of ≤1 KiB descriptors is too
        // much for memory, so refuse tables far larger than the source could hold.
        if desc_len as u64 > src.size().saturating_add(bs) {
            return Err(Error::corrupt(
                "superblock",
                format!(
                    "{} descriptor blocks do not fit in a {}-byte source",
                    sb.desc_blocks,
                    src.size()
                ),
            ));
        }
        let mut raw_desc = vec![0u8; desc_len];
        let first_meta_bg = if sb.has_meta_bg() {
            sb.first_meta_bg.min(sb.desc_blocks)
        } else {
            sb.desc_blocks
        };
        let zero_adjust = u64::from(group_block == 0 && sb.block_size == 1024);
        if first_meta_bg > 0 {
            let start = (group_block + zero_adjust + 1) * bs;
            let len = first_meta_bg as usize * sb.block_size as usize;
            src.read_exact_at(&mut raw_desc[..len], start, &|| {
                format!(
                    "group descriptors at block {}",
                    group_block + zero_adjust + 1
                )
            })?;
        }
        for i in first_meta_bg..sb.desc_blocks {
            let blk = sb.descriptor_block_loc(group_block, i);
            let off = blk
                .checked_mul(bs)
                .ok_or_else(|| Error::corrupt("group descriptors", "block number overflows"))?;
            let at = i as usize * sb.block_size as usize;
            src.read_exact_at(&mut raw_desc[at..at + sb.block_size as usize], off, &|| {
                format!("group descriptor block {i} at block {blk}")
            })?;
        }
        let mut desc = DescTable::new(raw_desc, &sb);
        let backup = opts.superblock.filter(|&s| s > 1);
        if backup.is_some() && sb.has_group_desc_csum() {
            desc.clear_uninit();
        }
        Ok(Filesystem {
            src,
            sb,
            desc,
            backup_superblock: opts.superblock.filter(|&s| s != 0),
        })
    }

    pub fn block_size(&self) -> u32 {
        self.sb.block_size
    }

    /// Read one whole block; a short read is an error naming `what`.
    pub fn read_block(&self, blk: u64, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
        let bs = u64::from(self.sb.block_size);
        let off = blk
            .checked_mul(bs)
            .ok_or_else(|| Error::corrupt(what(), format!("block {blk} is past any device")))?;
        self.src.read_exact_at(&mut buf[..bs as usize], off, what)
    }
}
