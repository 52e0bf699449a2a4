//! Filesystem → block map: exactly the blocks e2image copies (e2image-behaviour.md §3).
//!
//! Fixed metadata comes from the superblock and descriptors; the rest from one pass over
//! the used part of the inode tables ([`super::itable`]), walking the block maps
//! ([`super::walk`]) of the inodes e2image walks.
//! Nothing here loops over the blocks of the filesystem: cost follows the metadata.

use super::desc::{BG_BLOCK_UNINIT, BG_INODE_UNINIT};
use super::fs::Filesystem;
use super::inode::{self, Inode};
use super::itable::{self, Item, TableOptions};
use super::walk::{Visit, Walked, walk_inode};
use crate::blockmap::{BlockMap, BlockMapBuilder};
use crate::error::CorruptKind;
use crate::io::ReadAt;
use crate::units::FsBlock;
use crate::{Error, Result};

pub use super::damage::{Problem, ProblemKind};

/// Damage noticed that leaves the selection as e2image's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// Inode `ino`'s extent root is invalid: libext2fs's iterator visits nothing of it, so
    /// neither e2image nor e2i takes any of its blocks.
    ExtentRootIgnored { ino: u32, kind: CorruptKind },
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::ExtentRootIgnored { kind, .. } => write!(
                f,
                "{kind}; none of its blocks are in the image (as with e2image)"
            ),
        }
    }
}

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

/// The scan's result.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub map: BlockMap,
    /// Directory data blocks (logical block ≥ 0 of directories), with `want_dir_blocks`.
    pub dir_blocks: Option<BlockMap>,
    /// Damaged structures skipped (never non-empty in strict mode).
    pub problems: Vec<Problem>,
    /// Damage noticed that does not change the selection compared to e2image's.
    pub warnings: Vec<Warning>,
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
    warnings: Vec<Warning>,
    /// Bytes of selected data the scan may still hint ([`hint_data`]).
    hint_budget: u64,
}

impl<S: ReadAt> Ctx<'_, S> {
    /// Damage found: skipped, or the end of a strict scan.
    fn problem(&mut self, p: Problem) -> Result<()> {
        if self.opts.strict {
            return Err(p.into_error());
        }
        self.problems.push(p);
        Ok(())
    }

    /// An error met while walking inode `ino`: damage is skipped like any other; errors
    /// that are not damage (an unsupported source) end the scan.
    fn walk_error(&mut self, ino: u32, e: Error) -> Result<()> {
        if self.opts.strict {
            return Err(e);
        }
        let p = Problem::from_error(Some(ino), e)?;
        self.problems.push(p);
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
    let last = FsBlock(sb.blocks_count.saturating_sub(1));
    let fdb = sb.first_block();
    let mut ctx = Ctx {
        fs,
        opts,
        map: BlockMapBuilder::new(fdb, last, sb.cluster_bits),
        dirs: opts
            .want_dir_blocks
            .then(|| BlockMapBuilder::new(fdb, last, sb.cluster_bits)),
        problems: Vec::new(),
        warnings: Vec::new(),
        hint_budget: crate::readplan::WINDOW,
    };
    mark_fixed(&mut ctx);
    let seen = scan_inodes(&mut ctx, progress)?;
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
    let first = sb.first_block();
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
        if (blockdev || !desc.has_flag(g, BG_INODE_UNINIT)) && itable != FsBlock(0) {
            let mut n = sb.inode_blocks_per_group;
            if !blockdev && csum {
                // e2image subtracts in unsigned int: a bogus itable_unused wraps around
                // (and e2image then marks ~2^32 blocks, all but the in-range ones dropped).
                let unused_blocks = desc
                    .itable_unused(g)
                    .checked_div(sb.inodes_per_block())
                    .unwrap_or(0);
                n = n.wrapping_sub(unused_blocks);
            }
            map.mark_range(itable, u64::from(n));
        }
        let bb = desc.block_bitmap(g);
        if !desc.has_flag(g, BG_BLOCK_UNINIT) && bb != FsBlock(0) {
            map.mark(bb);
        }
        let ib = desc.inode_bitmap(g);
        if !desc.has_flag(g, BG_INODE_UNINIT) && ib != FsBlock(0) {
            map.mark(ib);
        }
    }
}

/// The inode pass: libext2fs's inode scan over the used inode tables (lazy groups,
/// itable_unused, bad blocks) and e2image's per-inode rules.
fn scan_inodes<S: ReadAt>(
    ctx: &mut Ctx<'_, S>,
    mut progress: Option<ScanProgress<'_>>,
) -> Result<u64> {
    let fs = ctx.fs;
    let sb = &fs.sb;
    let total = itable::used_inodes(fs);
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
    let opts = TableOptions {
        skip_bad_blocks: true,
        strict: ctx.opts.strict,
    };
    // Reused per chunk: at most one chunk's inodes (1 MiB of table).
    let mut live: Vec<(u32, Inode)> = Vec::new();
    itable::for_each_chunk(fs, opts, &mut |item| {
        let chunk = match item {
            Item::Problem(p) => return ctx.problem(p),
            Item::Chunk(c) => c,
        };
        // The chunk's live inodes, parsed once; the mapping blocks their walks read first
        // are hinted all at once, so that on a cold disk they arrive together instead of
        // one request per inode.
        live.clear();
        live.extend(
            chunk
                .inodes()
                .map(|(ino, raw)| (ino, Inode::parse(raw)))
                .filter(|(_, inode)| inode.links_count != 0),
        );
        for (_, inode) in &live {
            if inode.has_valid_blocks(is64) {
                hint_mapping_blocks(fs, inode);
            }
        }
        for (ino, inode) in &live {
            seen = seen.saturating_add(1);
            inode_blocks(ctx, *ino, inode, &special, is64)?;
        }
        done = done.saturating_add(u64::from(chunk.count));
        if let Some(p) = progress.as_mut() {
            p(done, total);
        }
        Ok(())
    })?;
    Ok(seen)
}

/// Hint selected data found by the scan (directories, the journal), up to `budget` bytes
/// in all: the copy that follows the scan finds the first of it in the page cache, so the
/// disk works during the scan's parsing too.
fn hint_data<S: ReadAt>(fs: &Filesystem<S>, budget: &mut u64, pblk: FsBlock, len: u64) {
    let bs = fs.sb.block_size;
    let (Some(off), Some(n)) = (bs.offset_of(pblk), bs.bytes_of(len)) else {
        return;
    };
    let n = n.min(*budget);
    if n > 0 {
        fs.src.will_need(off, n);
        *budget = budget.saturating_sub(n);
    }
}

/// Hint the first mapping blocks of `inode`'s walk: the children of an index extent root,
/// or the indirect blocks (hints only: the walk reads and checks them).
fn hint_mapping_blocks<S: ReadAt>(fs: &Filesystem<S>, inode: &Inode) {
    let bs = fs.sb.block_size;
    let hint = |blk: FsBlock| {
        if blk != FsBlock(0)
            && let Some(off) = bs.offset_of(blk)
        {
            fs.src.will_need(off, bs.bytes());
        }
    };
    if inode.has_extents() {
        super::walk::extent::root_children(&inode.block_bytes()).for_each(hint);
    } else if !inode.is_symlink() {
        for i in [
            inode::EXT2_IND_BLOCK,
            inode::EXT2_DIND_BLOCK,
            inode::EXT2_TIND_BLOCK,
        ] {
            hint(FsBlock(u64::from(inode.block[i])));
        }
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
    if acl != FsBlock(0) {
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
    let is_dir = inode.is_dir();
    let map = &mut ctx.map;
    let dirs = &mut ctx.dirs;
    let fs = ctx.fs;
    let budget = &mut ctx.hint_budget;
    let r = walk_inode(ctx.fs, ino, inode, want_data, &mut |v| match v {
        Visit::Meta(b) => map.mark(b),
        Visit::Data { pblk, len, .. } => {
            map.mark_range(pblk, len);
            hint_data(fs, budget, pblk, len);
            if is_dir && let Some(d) = dirs.as_mut() {
                d.mark_range(pblk, len);
            }
        }
    });
    match r {
        Ok(Walked::Complete) => Ok(()),
        Ok(Walked::RootIgnored(problem)) => {
            // e2image silently takes nothing of such an inode; so do we, but say so.
            ctx.warnings.push(Warning::ExtentRootIgnored {
                ino,
                kind: CorruptKind::ExtentHeader {
                    ino,
                    node: None,
                    problem,
                },
            });
            Ok(())
        }
        Err(e) => ctx.walk_error(ino, e),
    }
}
