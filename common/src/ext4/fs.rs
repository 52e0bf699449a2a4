//! An opened filesystem: source, superblock and descriptors.

use super::damage::Role;
use super::desc::DescTable;
use super::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, Superblock};
use crate::error::CorruptKind;
use crate::io::ReadAt;
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// How to find the superblock.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// `-b`: read the superblock from this block (of `block_size` bytes) instead of byte 1024.
    pub superblock: Option<FsBlock>,
    /// `-B`: the block size; required with `superblock`, otherwise a check.
    pub block_size: Option<BlockSize>,
}

/// A filesystem opened read-only over a source.
pub struct Filesystem<S> {
    pub src: S,
    pub sb: Superblock,
    pub desc: DescTable,
    /// The block the superblock was read from, when `-b` was given.
    pub backup_superblock: Option<FsBlock>,
}

/// Descriptor tables up to this size are loaded without checking that the source holds
/// them as data (see [`stored_in`]).
pub(crate) const DESC_CHECK_FROM: usize = 1 << 20;

/// The bytes of data `src` holds in `range` (its data regions: SEEK_DATA of a sparse file,
/// the allocated clusters of a qcow2 chain; all of a source that cannot tell), counted up
/// to `want`: the walk stops there, so it costs a few calls on a real filesystem.
pub(crate) fn stored_in<S: ReadAt + ?Sized>(
    src: &S,
    range: std::ops::Range<u64>,
    want: u64,
) -> Result<u64> {
    let stop = range.end.min(src.size());
    let (mut at, mut seen) = (range.start, 0u64);
    while seen < want && at < stop {
        let Some(r) = src.data_region(at)? else {
            break;
        };
        let (start, end) = (r.start.max(at), r.end.min(stop));
        if end <= start {
            break;
        }
        seen = seen.saturating_add(end.saturating_sub(start));
        at = end;
    }
    Ok(seen.min(want))
}

impl<S: ReadAt> Filesystem<S> {
    /// Open like libext2fs's `ext2fs_open2` with checksum errors ignored.
    pub fn open(src: S, opts: OpenOptions) -> Result<Self> {
        let (sb_offset, group_block) = match opts.superblock {
            Some(s) if s != FsBlock(0) => {
                let bs = opts.block_size.ok_or_else(|| {
                    Error::InvalidInput("a backup superblock (-b) needs the block size (-B)".into())
                })?;
                let off = bs.offset_of(s).ok_or_else(|| {
                    Error::InvalidInput(format!("superblock {s} × block size {bs} overflows"))
                })?;
                (off, Some(s))
            }
            _ => (SUPERBLOCK_OFFSET, None),
        };
        let mut raw = [0u8; SUPERBLOCK_SIZE];
        if src.read_at(&mut raw, sb_offset)? < SUPERBLOCK_SIZE {
            return Err(CorruptKind::SuperblockPastSource {
                offset: sb_offset,
                source_bytes: src.size(),
            }
            .into());
        }
        let sb = Superblock::parse(&raw, opts.block_size)?;
        let bs = sb.block_size.as_usize();
        let group_block = group_block.unwrap_or(sb.first_block());
        let too_large = || CorruptKind::DescTableTooLarge {
            desc_blocks: sb.desc_blocks,
            source_bytes: src.size(),
        };
        // At most 2^32 groups of ≤1 KiB descriptors is too much for memory: refuse tables
        // far larger than the source could hold.
        let desc_len = (sb.desc_blocks as usize)
            .checked_mul(bs)
            .filter(|&n| n as u64 <= src.size().saturating_add(bs as u64))
            .ok_or_else(too_large)?;
        // The table is loaded whole, so it must be data the source holds: a superblock
        // claiming 2^31 groups over a qcow2's holes (a virtual disk of 256 PiB in a file of a
        // few MiB) asked for 128 GiB here, and the allocation aborted the process. A real
        // filesystem's descriptors are data (never all zeros), so this refuses no real one.
        // Small tables skip the walk.
        if desc_len > DESC_CHECK_FROM {
            let stored = stored_in(&src, 0..u64::MAX, desc_len as u64)?;
            if stored < desc_len as u64 {
                return Err(CorruptKind::DescTableNotStored {
                    desc_blocks: sb.desc_blocks,
                    stored_bytes: stored,
                }
                .into());
            }
        }
        // Data can still claim more than memory holds (compressed qcow2 clusters): an error,
        // not an abort.
        let mut raw_desc = Vec::new();
        raw_desc.try_reserve_exact(desc_len).map_err(|_| {
            Error::io(
                "allocate the descriptor table",
                std::io::Error::from(std::io::ErrorKind::OutOfMemory),
            )
        })?;
        raw_desc.resize(desc_len, 0);
        let first_meta_bg = if sb.has_meta_bg() {
            sb.first_meta_bg.min(sb.desc_blocks)
        } else {
            sb.desc_blocks
        };
        // Descriptor blocks before the first meta_bg follow the superblock's block.
        let head_len = (first_meta_bg as usize).saturating_mul(bs).min(desc_len);
        let (head, rest) = raw_desc.split_at_mut(head_len);
        if !head.is_empty() {
            let zero_adjust = u64::from(group_block == FsBlock(0) && sb.block_size.get() == 1024);
            let first = group_block.saturating_add(zero_adjust).saturating_add(1);
            read_blocks(
                &src,
                sb.block_size,
                first,
                head,
                Role::DescriptorBlock { index: 0 },
            )?;
        }
        for (i, chunk) in (first_meta_bg..sb.desc_blocks).zip(rest.chunks_exact_mut(bs)) {
            let blk = sb.descriptor_block_loc(group_block, i);
            read_blocks(
                &src,
                sb.block_size,
                blk,
                chunk,
                Role::DescriptorBlock { index: i },
            )?;
        }
        let mut desc = DescTable::new(raw_desc, &sb);
        let backup = opts.superblock.filter(|&s| s > FsBlock(1));
        if backup.is_some() && sb.has_group_desc_csum() {
            desc.clear_uninit();
        }
        Ok(Filesystem {
            src,
            sb,
            desc,
            backup_superblock: opts.superblock.filter(|&s| s != FsBlock(0)),
        })
    }

    pub fn block_size(&self) -> BlockSize {
        self.sb.block_size
    }

    /// Read block `blk`, which holds what `role` says, into the first block-size bytes of
    /// `buf`. A block the source does not hold is [`CorruptKind::BlockPastSource`].
    pub fn read_block(&self, blk: FsBlock, buf: &mut [u8], role: Role) -> Result<()> {
        let bs = self.sb.block_size.as_usize();
        let Some(buf) = buf.get_mut(..bs) else {
            return Err(Error::InvalidInput(format!(
                "a {}-byte buffer cannot hold a {bs}-byte block",
                buf.len()
            )));
        };
        read_blocks(&self.src, self.sb.block_size, blk, buf, role)
    }
}

/// Read whole blocks from `first` into `buf` (a multiple of `block_size` bytes). A block the
/// source does not hold (fully) is [`CorruptKind::BlockPastSource`], naming the first such
/// block and `role`; other failures are the source's I/O errors.
pub fn read_blocks<S: ReadAt + ?Sized>(
    src: &S,
    bs: BlockSize,
    first: FsBlock,
    buf: &mut [u8],
    role: Role,
) -> Result<()> {
    let past = |block: FsBlock| {
        Error::from(CorruptKind::BlockPastSource {
            role,
            block: block.get(),
            source_bytes: src.size(),
        })
    };
    let off = bs.offset_of(first).ok_or_else(|| past(first))?;
    let n = src.read_at(buf, off)?;
    if n < buf.len() {
        // The first block not read whole.
        return Err(past(first.saturating_add(bs.blocks_in(n as u64))));
    }
    Ok(())
}
