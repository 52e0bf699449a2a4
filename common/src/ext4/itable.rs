//! The one inode-table iterator: the used part of every group's inode table, read in large
//! chunks, the way libext2fs's inode scan (`ext2fs_get_next_inode_full`) walks it: groups
//! flagged INODE_UNINIT and the `itable_unused` tail are skipped when descriptors carry
//! checksums, and (optionally) the inodes in blocks listed in the bad-blocks inode.
//!
//! The scanner reads each inode of a chunk; the scrambler changes inodes in place and keeps
//! the blocks it changed. Damage met on the way (a table outside the filesystem, blocks
//! that cannot be read) is reported as a [`Problem`] and the iteration goes on.

use super::damage::{Problem, ProblemKind, Role};
use super::desc::BG_INODE_UNINIT;
use super::fs::{Filesystem, read_blocks};
use super::inode::{BAD_INO, Inode};
use super::walk::{Visit, walk_inode};
use crate::Result;
use crate::error::CorruptKind;
use crate::io::ReadAt;
use crate::readplan::{self, Readahead};
use crate::units::FsBlock;

/// How to iterate.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableOptions {
    /// Skip the inodes in inode-table blocks listed in the bad-blocks inode, without
    /// reading those blocks (libext2fs's inode scan does; e2image never sees them).
    pub skip_bad_blocks: bool,
    /// Fail on the first chunk that cannot be read instead of salvaging it block by block.
    pub strict: bool,
}

/// A piece of the used part of one group's inode table, as read from the source.
pub struct Chunk<'b> {
    pub group: u32,
    /// The chunk's first block.
    pub first_block: FsBlock,
    /// Number of the chunk's first inode.
    pub first_ino: u32,
    /// Inodes of the used part in this chunk (the last block may hold more, unused).
    pub count: u32,
    inode_size: usize,
    block_size: usize,
    buf: &'b mut [u8],
    /// Per block: skipped (listed bad, or unreadable; its bytes are zeros).
    skipped: &'b [bool],
}

impl Chunk<'_> {
    /// The chunk's blocks: `buf` holds `blocks()` whole blocks.
    pub fn blocks(&self) -> usize {
        self.skipped.len()
    }

    /// Block `j` of the chunk: its number and bytes.
    pub fn block(&self, j: usize) -> Option<(FsBlock, &[u8])> {
        let bytes = self.buf.chunks_exact(self.block_size).nth(j)?;
        Some((self.first_block.checked_add(j as u64)?, bytes))
    }

    /// The inodes of the used part whose blocks were read: (number, bytes).
    pub fn inodes(&self) -> impl Iterator<Item = (u32, &[u8])> + '_ {
        self.buf
            .chunks_exact(self.inode_size.max(1))
            .take(self.count as usize)
            .zip(self.first_ino..)
            .zip(self.block_index())
            .filter(|&(_, j)| !self.skipped.get(j).copied().unwrap_or(true))
            .map(|((raw, ino), _)| (ino, raw))
    }

    /// The same, to change in place: (number, block of the chunk that holds it, bytes).
    pub fn inodes_mut(&mut self) -> impl Iterator<Item = (u32, usize, &mut [u8])> + '_ {
        let blocks = self.block_index();
        let skipped = self.skipped;
        self.buf
            .chunks_exact_mut(self.inode_size.max(1))
            .take(self.count as usize)
            .zip(self.first_ino..)
            .zip(blocks)
            .filter(move |&(_, j)| !skipped.get(j).copied().unwrap_or(true))
            .map(|((raw, ino), j)| (ino, j, raw))
    }

    /// For each inode slot in turn, the block of the chunk that holds it.
    fn block_index(&self) -> impl Iterator<Item = usize> + use<> {
        let per_block = self
            .block_size
            .checked_div(self.inode_size)
            .unwrap_or(1)
            .max(1);
        (0usize..).flat_map(move |j| std::iter::repeat_n(j, per_block))
    }
}

/// The used inodes of group `g` and the inode-table blocks they occupy (libext2fs:
/// all of them, or without the `itable_unused` tail when descriptors carry checksums).
fn used<S: ReadAt>(fs: &Filesystem<S>, g: u32) -> (u32, u64) {
    let sb = &fs.sb;
    let ipg = sb.inodes_per_group;
    if !sb.has_group_desc_csum() {
        return (ipg, u64::from(sb.inode_blocks_per_group));
    }
    let inodes = ipg.saturating_sub(fs.desc.itable_unused(g));
    let blocks = sb
        .block_size
        .blocks_covering(super::mul32(inodes, sb.inode_size));
    (inodes, blocks)
}

/// Where inode `ino` is: its group, the inode-table block holding it and its byte offset
/// in that block; `None` for a number the filesystem does not have or a table location
/// that overflows.
pub fn locate<S: ReadAt>(fs: &Filesystem<S>, ino: u32) -> Option<(u32, FsBlock, usize)> {
    let sb = &fs.sb;
    let idx = ino.checked_sub(1)?;
    let g = idx.checked_div(sb.inodes_per_group)?;
    if g >= sb.group_count {
        return None;
    }
    let off = super::mul32(idx.checked_rem(sb.inodes_per_group)?, sb.inode_size);
    let bs = sb.block_size.bytes();
    let blk = fs.desc.inode_table(g).checked_add(off.checked_div(bs)?)?;
    let at = usize::try_from(off.checked_rem(bs)?).ok()?;
    Some((g, blk, at))
}

/// Inodes the iteration will go through (for progress): every group's used part.
pub fn used_inodes<S: ReadAt>(fs: &Filesystem<S>) -> u64 {
    let lazy = fs.sb.has_group_desc_csum();
    (0..fs.sb.group_count)
        .filter(|&g| !(lazy && fs.desc.has_flag(g, BG_INODE_UNINIT)))
        .map(|g| u64::from(used(fs, g).0))
        .fold(0, u64::saturating_add)
}

/// What the iteration hands its visitor, in table order.
pub enum Item<'c, 'b> {
    /// The next chunk of a table.
    Chunk(&'c mut Chunk<'b>),
    /// Damage met (the visitor may end the iteration by returning an error, as strict
    /// callers do).
    Problem(Problem),
}

/// Visit the used part of every inode table, chunk by chunk.
pub fn for_each_chunk<S: ReadAt>(
    fs: &Filesystem<S>,
    opts: TableOptions,
    visit: &mut dyn FnMut(Item<'_, '_>) -> Result<()>,
) -> Result<()> {
    let sb = &fs.sb;
    let desc = &fs.desc;
    let bs = sb.block_size;
    let isz = sb.inode_size as usize;
    let ipg = sb.inodes_per_group;
    let lazy = sb.has_group_desc_csum();
    let fdb = sb.first_block();
    // libext2fs checks the whole table's location, used or not.
    let table_last = u64::from(sb.inode_blocks_per_group).saturating_sub(1);
    let itable_ok = |blk: FsBlock| {
        blk == FsBlock(0)
            || (blk >= fdb
                && blk
                    .checked_add(table_last)
                    .is_some_and(|l| l.get() < sb.blocks_count))
    };
    let bad = if opts.skip_bad_blocks {
        bad_blocks(fs)
    } else {
        Vec::new()
    };
    let chunk_blocks = bs.blocks_covering(1 << 20).max(8);
    // The used parts of the tables, hinted ahead of the chunks read below, so that the
    // next groups' tables arrive while this one is parsed (tables in descending order
    // only lose the hints).
    let tables = (0..sb.group_count).filter_map(|g| {
        let t = desc.inode_table(g);
        let skip = t == FsBlock(0) || !itable_ok(t) || (lazy && desc.has_flag(g, BG_INODE_UNINIT));
        let end = bs.offset_of(t.checked_add(used(fs, g).1)?)?;
        (!skip).then_some(bs.offset_of(t)?..end)
    });
    let mut ahead = Readahead::new(&fs.src, tables, readplan::WINDOW);
    let mut buf: Vec<u8> = Vec::new();
    let mut skipped: Vec<bool> = Vec::new();
    for g in 0..sb.group_count {
        let itable = desc.inode_table(g);
        let (mut inodes_left, mut blocks_left) = used(fs, g);
        if !itable_ok(itable) {
            let kind = CorruptKind::InodeTableOutside {
                group: g,
                block: itable.get(),
                fs_blocks: sb.blocks_count,
            };
            visit(Item::Problem(Problem {
                ino: None,
                kind: ProblemKind::Corrupt(kind),
            }))?;
            continue;
        }
        if (lazy && desc.has_flag(g, BG_INODE_UNINIT)) || inodes_left == 0 {
            continue;
        }
        if itable == FsBlock(0) {
            visit(Item::Problem(Problem {
                ino: None,
                kind: ProblemKind::Corrupt(CorruptKind::InodeTableMissing { group: g }),
            }))?;
            continue;
        }
        // g < group_count, and the superblock checked group_count × ipg = inodes_count.
        let Some(mut next_ino) = g.checked_mul(ipg).and_then(|i| i.checked_add(1)) else {
            break;
        };
        let mut cur = itable;
        while inodes_left > 0 && blocks_left > 0 {
            // One chunk of the table, stopping before the next listed-bad block; a run of
            // listed-bad blocks is a chunk of its own, not read.
            let mut n = chunk_blocks.min(blocks_left);
            let i = bad.partition_point(|r| r.end <= cur);
            let listed_bad = match bad.get(i) {
                Some(r) if r.start <= cur => {
                    n = n.min(r.end.saturating_since(cur));
                    true
                }
                Some(r) => {
                    n = n.min(r.start.saturating_since(cur));
                    false
                }
                None => false,
            };
            let Some(len) = bs.len_of(n) else {
                break;
            };
            // Every byte is overwritten by the read below (or zeroed), so the buffer is
            // reused as it is: zero-filling a megabyte per chunk would cost more than the
            // rest of the scan.
            buf.resize(len, 0);
            skipped.clear();
            skipped.resize(usize::try_from(n).unwrap_or(0), listed_bad);
            let per_chunk = u32::try_from(len.checked_div(isz).unwrap_or(0)).unwrap_or(u32::MAX);
            let count = per_chunk.min(inodes_left);
            // The chunk's inodes: next_ino ..= last_ino.
            let last_ino = next_ino.saturating_add(count.saturating_sub(1));
            if listed_bad {
                buf.fill(0);
            } else {
                ahead.at(bs.offset_of(cur).unwrap_or(u64::MAX));
                let role = Role::InodeTable { group: g };
                if let Err(e) = read_blocks(&fs.src, sb.block_size, cur, &mut buf, role) {
                    if opts.strict {
                        return Err(e);
                    }
                    salvage(fs, &mut buf, cur, role, &mut skipped);
                    let inodes = (next_ino, last_ino, sb.inodes_per_block());
                    report_unreadable(g, cur, &skipped, inodes, visit)?;
                }
            }
            let mut chunk = Chunk {
                group: g,
                first_block: cur,
                first_ino: next_ino,
                count,
                inode_size: isz,
                block_size: bs.as_usize(),
                buf: &mut buf,
                skipped: &skipped,
            };
            visit(Item::Chunk(&mut chunk))?;
            // count ≤ inodes_left and n ≤ blocks_left; the table lies inside the
            // filesystem, so neither the inode numbers nor the blocks can overflow.
            inodes_left = inodes_left.saturating_sub(count);
            blocks_left = blocks_left.saturating_sub(n);
            next_ino = next_ino.saturating_add(count);
            cur = cur.saturating_add(n);
        }
    }
    Ok(())
}

/// Re-read a chunk block by block: a block that fails is zero-filled and marked skipped.
fn salvage<S: ReadAt>(
    fs: &Filesystem<S>,
    buf: &mut [u8],
    first: FsBlock,
    role: Role,
    skipped: &mut [bool],
) {
    let bs = fs.sb.block_size;
    let blocks = (first.get()..).map(FsBlock);
    for ((blk, b), s) in blocks.zip(buf.chunks_exact_mut(bs.as_usize())).zip(skipped) {
        if read_blocks(&fs.src, bs, blk, b, role).is_err() {
            b.fill(0);
            *s = true;
        }
    }
}

/// One problem per run of unreadable blocks, naming the inodes lost: `inodes` is the
/// chunk's first and last inode of the used part, and the inodes per block.
fn report_unreadable(
    g: u32,
    first: FsBlock,
    skipped: &[bool],
    inodes: (u32, u32, u32),
    visit: &mut dyn FnMut(Item<'_, '_>) -> Result<()>,
) -> Result<()> {
    let (first_ino, last_used, ipb) = inodes;
    let mut i = 0usize;
    while i < skipped.len() {
        if !skipped[i] {
            i = i.saturating_add(1);
            continue;
        }
        let run = skipped[i..].iter().take_while(|&&s| s).count();
        let j = i.saturating_add(run);
        // The chunk lies inside the table, whose inodes and blocks are in range.
        let ino_at = |blk: usize| {
            u32::try_from(blk)
                .ok()
                .and_then(|b| b.checked_mul(ipb))
                .and_then(|o| first_ino.checked_add(o))
                .unwrap_or(u32::MAX)
        };
        visit(Item::Problem(Problem {
            ino: None,
            kind: ProblemKind::InodeTableUnreadable {
                group: g,
                first: first.saturating_add(i as u64).get(),
                last: first.saturating_add(j as u64).get().saturating_sub(1),
                first_ino: ino_at(i),
                last_ino: ino_at(j).saturating_sub(1).min(last_used),
            },
        }))?;
        i = j;
    }
    Ok(())
}

/// Inode-table blocks listed in the bad-blocks inode, as sorted, merged ranges
/// (libext2fs skips the inodes in them). Kept as ranges so that a damaged bad-blocks inode
/// claiming huge extents costs memory by its size, not by the blocks it names.
fn bad_blocks<S: ReadAt>(fs: &Filesystem<S>) -> Vec<std::ops::Range<FsBlock>> {
    let sb = &fs.sb;
    let itable = fs.desc.inode_table(0);
    let fdb = sb.first_block();
    let fits = itable
        .checked_add(u64::from(sb.inode_blocks_per_group))
        .is_some_and(|end| end.get() <= sb.blocks_count);
    if itable == FsBlock(0) || itable < fdb || !fits {
        return Vec::new();
    }
    let mut buf = vec![0u8; sb.block_size.as_usize()];
    if fs
        .read_block(itable, &mut buf, Role::InodeTable { group: 0 })
        .is_err()
    {
        return Vec::new();
    }
    // The bad-blocks inode (BAD_INO, 1) is the first of group 0's table.
    let ino = Inode::parse(&buf[..128]);
    if ino.has_inline_data() {
        return Vec::new();
    }
    let mut list = Vec::new();
    let r = walk_inode(fs, BAD_INO, &ino, true, &mut |v| {
        if let Visit::Data { pblk, len, .. } = v {
            let s = pblk.max(fdb);
            let e = pblk.saturating_add(len).min(FsBlock(sb.blocks_count));
            if s < e {
                list.push(s..e);
            }
        }
    });
    if r.is_err() {
        return Vec::new();
    }
    list.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<std::ops::Range<FsBlock>> = Vec::with_capacity(list.len());
    for r in list {
        match merged.last_mut() {
            Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}
