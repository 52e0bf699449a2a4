//! Filesystem → block map: exactly the blocks e2image copies (e2image-behaviour.md §3).
//!
//! Fixed metadata comes from the superblock and descriptors; the rest from one pass over
//! the used part of the inode tables, walking the block maps of the inodes e2image walks.
//! Nothing here loops over the blocks of the filesystem: cost follows the metadata.

use super::desc::{BG_BLOCK_UNINIT, BG_INODE_UNINIT};
use super::extent::{self, Visit};
use super::fs::Filesystem;
use super::indirect;
use super::inode::{self, Inode};
use super::superblock::EXT2_OS_HURD;
use crate::blockmap::{BlockMap, BlockMapBuilder};
use crate::io::ReadAt;
use crate::{Error, Result};

/// What to select.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// `-a`: regular-file data too.
    pub all_data: bool,
    /// The output is a block device: inode tables are taken whole, UNINIT or not.
    pub output_is_block_device: bool,
    /// Stop at the first damaged structure (e2image's behaviour) instead of skipping it.
    pub strict: bool,
    /// Also collect the directory data blocks (for scrambling).
    pub want_dir_blocks: bool,
}

/// A damaged structure that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The inode it belongs to, if any.
    pub ino: Option<u32>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The scan's result.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub map: BlockMap,
    /// Directory data blocks (logical block ≥ 0 of directories), with `want_dir_blocks`.
    pub dir_blocks: Option<BlockMap>,
    /// Damaged structures skipped (never non-empty in strict mode).
    pub problems: Vec<Problem>,
    /// Damage noticed that does not change the selection compared to e2image's.
    pub warnings: Vec<Problem>,
    /// Inodes visited (in use, not in bad blocks).
    pub inodes_seen: u64,
}

/// Progress callback: (inodes scanned so far, inodes to scan).
pub type ScanProgress<'a> = &'a mut dyn FnMut(u64, u64);

struct Ctx<'a, S> {
    fs: &'a Filesystem<S>,
    opts: ScanOptions,
    map: BlockMapBuilder,
    dirs: Option<BlockMapBuilder>,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl<S: ReadAt> Ctx<'_, S> {
    fn problem(&mut self, ino: Option<u32>, e: Error) -> Result<()> {
        if self.opts.strict {
            return Err(e);
        }
        self.problems.push(Problem {
            ino,
            message: e.to_string(),
        });
        Ok(())
    }
}

/// Build the block map of `fs`.
pub fn scan<S: ReadAt>(
    fs: &Filesystem<S>,
    opts: ScanOptions,
    progress: Option<ScanProgress<'_>>,
) -> Result<ScanResult> {
    let sb = &fs.sb;
    let last = sb.blocks_count.saturating_sub(1);
    let mut ctx = Ctx {
        fs,
        opts,
        map: BlockMapBuilder::new(u64::from(sb.first_data_block), last, sb.cluster_bits),
        dirs: opts
            .want_dir_blocks
            .then(|| BlockMapBuilder::new(u64::from(sb.first_data_block), last, sb.cluster_bits)),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    mark_fixed(&mut ctx);
    let seen = scan_inodes(&mut ctx, progress)?;
    let fdb = u64::from(sb.first_data_block);
    Ok(ScanResult {
        map: ctx.map.build(fdb, sb.blocks_count),
        dir_blocks: ctx.dirs.map(|d| d.build(fdb, sb.blocks_count)),
        problems: ctx.problems,
        warnings: ctx.warnings,
        inodes_seen: seen,
    })
}

/// Superblock, descriptors, MMP block, bitmaps and the used part of each inode table.
fn mark_fixed<S: ReadAt>(ctx: &mut Ctx<'_, S>) {
    let sb = &ctx.fs.sb;
    let desc = &ctx.fs.desc;
    let map = &mut ctx.map;
    if let Some(s) = ctx.fs.backup_superblock {
        map.mark(s);
        for j in 0..sb.desc_blocks {
            map.mark(sb.descriptor_block_loc(s, j));
        }
    }
    let first = u64::from(sb.first_data_block);
    map.mark(first);
    for j in 0..sb.desc_blocks {
        map.mark(sb.descriptor_block_loc(first, j));
    }
    if sb.has_incompat(super::superblock::feature::INCOMPAT_MMP) {
        map.mark(sb.mmp_block());
    }
    let blockdev = ctx.opts.output_is_block_device;
    let csum = sb.has_group_desc_csum();
    for g in 0..sb.group_count {
        let itable = desc.inode_table(g);
        if (blockdev || !desc.has_flag(g, BG_INODE_UNINIT)) && itable != 0 {
            let mut n = sb.inode_blocks_per_group;
            if !blockdev && csum {
                // e2image subtracts in unsigned int: a bogus itable_unused wraps around.
                n = n.wrapping_sub(desc.itable_unused(g) / sb.inodes_per_block());
            }
            map.mark_range(itable, u64::from(n));
        }
        let bb = desc.block_bitmap(g);
        if !desc.has_flag(g, BG_BLOCK_UNINIT) && bb != 0 {
            map.mark(bb);
        }
        let ib = desc.inode_bitmap(g);
        if !desc.has_flag(g, BG_INODE_UNINIT) && ib != 0 {
            map.mark(ib);
        }
    }
}

/// Inode-table blocks listed in the bad-blocks inode (libext2fs skips the inodes in them).
fn bad_blocks<S: ReadAt>(fs: &Filesystem<S>) -> Vec<u64> {
    let sb = &fs.sb;
    let itable = fs.desc.inode_table(0);
    let fdb = u64::from(sb.first_data_block);
    if itable == 0
        || itable < fdb
        || itable + u64::from(sb.inode_blocks_per_group) > sb.blocks_count
    {
        return Vec::new();
    }
    let bs = sb.block_size as usize;
    let mut buf = vec![0u8; bs];
    if fs
        .read_block(itable, &mut buf, &|| "bad-blocks inode".into())
        .is_err()
    {
        return Vec::new();
    }
    let ino = Inode::parse(&buf[..128]);
    if ino.has_inline_data() {
        return Vec::new();
    }
    let mut list = Vec::new();
    let r = walk_inode(fs, 1, &ino, true, &mut |v| {
        if let Visit::Data { pblk, len } = v {
            for b in pblk..pblk.saturating_add(len) {
                if b >= fdb && b < sb.blocks_count {
                    list.push(b);
                }
            }
        }
    });
    if r.is_err() {
        return Vec::new();
    }
    list.sort_unstable();
    list.dedup();
    list
}

/// Walk one inode's block map (libext2fs `ext2fs_block_iterate3`, read-only).
fn walk_inode<S: ReadAt>(
    fs: &Filesystem<S>,
    ino: u32,
    inode: &Inode,
    want_data: bool,
    visit: &mut dyn FnMut(Visit),
) -> Result<()> {
    let sb = &fs.sb;
    if sb.creator_os == EXT2_OS_HURD && inode.osd1 != 0 {
        visit(Visit::Meta(u64::from(inode.osd1)));
    }
    let what = || format!("inode {ino}");
    let mut read =
        |blk: u64, buf: &mut [u8]| fs.read_block(blk, buf, &|| format!("inode {ino}: block {blk}"));
    if inode.has_extents() {
        extent::walk(
            &inode.block_bytes(),
            sb.block_size as usize,
            want_data,
            &mut read,
            visit,
            &what,
        )
    } else {
        indirect::walk(
            &inode.block,
            sb.block_size as usize,
            u64::from(sb.first_data_block),
            sb.blocks_count,
            want_data,
            &mut read,
            visit,
            &what,
        )
    }
}

/// The inode pass: libext2fs's inode scan (lazy groups, itable_unused, bad blocks) and
/// e2image's per-inode rules.
fn scan_inodes<S: ReadAt>(
    ctx: &mut Ctx<'_, S>,
    mut progress: Option<ScanProgress<'_>>,
) -> Result<u64> {
    let fs = ctx.fs;
    let sb = &fs.sb;
    let desc = &fs.desc;
    let bs = u64::from(sb.block_size);
    let isz = sb.inode_size as usize;
    let ipg = sb.inodes_per_group;
    let lazy = sb.has_group_desc_csum();
    let fdb = u64::from(sb.first_data_block);
    let itable_ok = |blk: u64| {
        blk == 0 || (blk >= fdb && blk + u64::from(sb.inode_blocks_per_group) - 1 < sb.blocks_count)
    };
    let bad = bad_blocks(fs);
    let mut bad_ptr = 0usize;
    let chunk_blocks = (1u64 << 20).div_ceil(bs).max(8);
    let mut buf: Vec<u8> = Vec::new();
    let total: u64 = (0..sb.group_count)
        .map(|g| {
            if lazy && desc.has_flag(g, BG_INODE_UNINIT) {
                0
            } else if lazy {
                u64::from(ipg.saturating_sub(desc.itable_unused(g)))
            } else {
                u64::from(ipg)
            }
        })
        .sum();
    let mut done: u64 = 0;
    let mut seen: u64 = 0;
    let is64 = sb.is_64bit();
    let special = [
        sb.journal_inum(),
        inode::USR_QUOTA_INO,
        inode::GRP_QUOTA_INO,
        sb.prj_quota_inum(),
        sb.orphan_file_inum(),
    ];
    for g in 0..sb.group_count {
        let itable = desc.inode_table(g);
        let mut inodes_left = ipg;
        let mut blocks_left = u64::from(sb.inode_blocks_per_group);
        if lazy {
            inodes_left = ipg.saturating_sub(desc.itable_unused(g));
            blocks_left = (u64::from(inodes_left) * isz as u64).div_ceil(bs);
        }
        if !itable_ok(itable) {
            let e = Error::corrupt(
                format!("group {g} descriptor"),
                format!("inode table at block {itable} is outside the filesystem"),
            );
            ctx.problem(None, e)?;
            continue;
        }
        if (lazy && desc.has_flag(g, BG_INODE_UNINIT)) || inodes_left == 0 {
            continue;
        }
        if itable == 0 {
            ctx.problem(
                None,
                Error::corrupt(
                    format!("group {g} descriptor"),
                    "the group has no inode table",
                ),
            )?;
            continue;
        }
        let mut cur = itable;
        let mut ino = g * ipg; // last inode returned
        while inodes_left > 0 && blocks_left > 0 {
            // One chunk of the inode table, stopping before the next bad block.
            let mut n = chunk_blocks.min(blocks_left);
            let mut is_bad = false;
            while bad_ptr < bad.len() && cur > bad[bad_ptr] {
                bad_ptr += 1;
            }
            if let Some(&b) = bad.get(bad_ptr) {
                if b == cur {
                    is_bad = true;
                    n = 1;
                    bad_ptr += 1;
                } else if cur + n > b {
                    n = b - cur;
                }
            }
            let len = (n * bs) as usize;
            // Blocks of this chunk that could not be read (their inodes are skipped).
            let mut unreadable: Vec<bool> = Vec::new();
            if !is_bad {
                buf.resize(len, 0);
                if let Err(e) = fs.src.read_exact_at(&mut buf[..len], cur * bs, &|| {
                    format!("group {g} inode table: blocks {cur}..{}", cur + n)
                }) {
                    if ctx.opts.strict {
                        return Err(e);
                    }
                    unreadable = salvage_blocks(fs, &mut buf[..len], cur, n);
                    report_unreadable(ctx, g, cur, &unreadable, ino, sb.inodes_per_block());
                }
            }
            let per_chunk = (len / isz) as u32;
            let ipb = sb.inodes_per_block();
            for k in 0..per_chunk.min(inodes_left) {
                ino += 1;
                inodes_left -= 1;
                done += 1;
                if is_bad || unreadable.get((k / ipb) as usize).copied().unwrap_or(false) {
                    continue;
                }
                let off = k as usize * isz;
                let raw = &buf[off..off + isz];
                let inode = Inode::parse(raw);
                if inode.links_count == 0 {
                    continue;
                }
                seen += 1;
                inode_blocks(ctx, ino, &inode, &special, is64)?;
            }
            if let Some(p) = progress.as_mut() {
                p(done, total);
            }
            blocks_left -= n;
            cur += n;
        }
    }
    Ok(seen)
}

/// Re-read a chunk block by block; returns which blocks failed (zero-filled).
fn salvage_blocks<S: ReadAt>(fs: &Filesystem<S>, buf: &mut [u8], first: u64, n: u64) -> Vec<bool> {
    let bs = fs.sb.block_size as usize;
    (0..n as usize)
        .map(|i| {
            let blk = &mut buf[i * bs..(i + 1) * bs];
            let ok = fs
                .read_block(first + i as u64, blk, &|| String::new())
                .is_ok();
            if !ok {
                blk.fill(0);
            }
            !ok
        })
        .collect()
}

/// One problem per run of unreadable inode-table blocks, naming the inodes lost.
fn report_unreadable<S: ReadAt>(
    ctx: &mut Ctx<'_, S>,
    g: u32,
    first: u64,
    bad: &[bool],
    ino_before: u32,
    ipb: u32,
) {
    let mut i = 0;
    while i < bad.len() {
        if !bad[i] {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < bad.len() && bad[j] {
            j += 1;
        }
        let a = u64::from(ino_before) + i as u64 * u64::from(ipb) + 1;
        let b = u64::from(ino_before) + j as u64 * u64::from(ipb);
        ctx.problems.push(Problem {
            ino: None,
            message: format!(
                "group {g} inode table: blocks {}..{} cannot be read; inodes {a}..={b} skipped",
                first + i as u64,
                first + j as u64
            ),
        });
        i = j;
    }
}

/// e2image's per-inode rules (§3.2 steps 2–5).
fn inode_blocks<S: ReadAt>(
    ctx: &mut Ctx<'_, S>,
    ino: u32,
    inode: &Inode,
    special: &[u32; 5],
    is64: bool,
) -> Result<()> {
    let acl = inode.file_acl(is64);
    if acl != 0 {
        ctx.map.mark(acl);
    }
    if !inode.has_valid_blocks(is64) {
        return Ok(());
    }
    let take_all = inode.is_dir() || inode.is_symlink() || special.contains(&ino);
    let walk = take_all
        || inode.has_extents()
        || inode.block[inode::EXT2_IND_BLOCK] != 0
        || inode.block[inode::EXT2_DIND_BLOCK] != 0
        || inode.block[inode::EXT2_TIND_BLOCK] != 0
        || ctx.opts.all_data;
    if !walk {
        return Ok(());
    }
    let want_data = take_all || ctx.opts.all_data;
    if inode.has_extents() {
        let root = inode.block_bytes();
        if root.iter().any(|&b| b != 0)
            && let Err(e) = extent::header_ok(&root, 60)
        {
            // e2image silently takes nothing of such an inode; so do we, but say so.
            ctx.warnings.push(Problem {
                ino: Some(ino),
                message: format!("inode {ino}: extent root: {e}; none of its blocks are in the image (as with e2image)"),
            });
            return Ok(());
        }
    }
    let is_dir = inode.is_dir();
    let map = &mut ctx.map;
    let dirs = &mut ctx.dirs;
    let r = walk_inode(ctx.fs, ino, inode, want_data, &mut |v| match v {
        Visit::Meta(b) => map.mark(b),
        Visit::Data { pblk, len } => {
            map.mark_range(pblk, len);
            if is_dir && let Some(d) = dirs.as_mut() {
                d.mark_range(pblk, len);
            }
        }
    });
    if let Err(e) = r {
        ctx.problem(Some(ino), e)?;
    }
    Ok(())
}
