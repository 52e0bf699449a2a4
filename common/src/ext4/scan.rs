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
use crate::blockmap::{BlockMap, BlockMapBuilder, BlockRun};
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
    /// Threads walking the inodes' block maps while the inode tables are read and parsed
    /// (results merged in table order: the same map, problems and warnings); 0 walks on the
    /// reading thread. `None`: [`auto_walkers`].
    pub walkers: Option<usize>,
}

/// Walkers for a scan on this machine: one per core beyond the first two, at most 6. With
/// two cores the reading thread and one walker measured no faster than walking on the
/// reading thread (the walks of a cold scan mostly wait on the same disk).
pub fn auto_walkers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .saturating_sub(2)
        .min(6)
}

/// The scan's result.
#[derive(Debug, Default, PartialEq, Eq)]
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

/// Receives the blocks selected so far, as the scan goes: see [`scan_publishing`].
pub type Publish<'a> = &'a mut dyn FnMut(Vec<BlockRun>) -> Result<()>;

struct Ctx<'a, 'p, S> {
    fs: &'a Filesystem<S>,
    opts: ScanOptions,
    map: BlockMapBuilder,
    dirs: Option<BlockMapBuilder>,
    problems: Vec<Problem>,
    warnings: Vec<Warning>,
    publish: Option<Publish<'p>>,
}

impl<S: ReadAt> Ctx<'_, '_, S> {
    /// Hand the blocks selected since the last call to the publisher, if there is one.
    fn publish(&mut self) -> Result<()> {
        if let Some(p) = self.publish.as_mut() {
            let runs = self
                .map
                .take_fresh(self.fs.sb.first_block(), self.fs.sb.blocks_count);
            if !runs.is_empty() {
                p(runs)?;
            }
        }
        Ok(())
    }

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

/// Where one inode's selection goes: straight into the scan ([`Ctx`]), or recorded by a
/// walker thread ([`Recorder`]) to be applied in table order.
trait Out {
    fn mark(&mut self, start: FsBlock, len: u64);
    fn dir_data(&mut self, start: FsBlock, len: u64);
    fn warning(&mut self, w: Warning);
    fn walk_error(&mut self, ino: u32, e: Error) -> Result<()>;
}

impl<S: ReadAt> Out for Ctx<'_, '_, S> {
    fn mark(&mut self, start: FsBlock, len: u64) {
        self.map.mark_range(start, len);
    }

    fn dir_data(&mut self, start: FsBlock, len: u64) {
        if let Some(d) = self.dirs.as_mut() {
            d.mark_range(start, len);
        }
    }

    fn warning(&mut self, w: Warning) {
        self.warnings.push(w);
    }

    fn walk_error(&mut self, ino: u32, e: Error) -> Result<()> {
        Ctx::walk_error(self, ino, e)
    }
}

/// What a walker found, in order, for the reading thread to apply.
enum Event {
    Mark(FsBlock, u64),
    DirData(FsBlock, u64),
    Warning(Warning),
    WalkError(u32, Error),
    /// Damage met by the table reader (not by a walk), in its place in the order.
    Problem(Problem),
    /// A walk panicked (a bug): raised again on the reading thread, in its place, as the
    /// walk on the reading thread would have (a lost chunk would leave the reader waiting).
    Panic(Box<dyn std::any::Any + Send>),
}

/// A walker's [`Out`]: every event kept, in order.
#[derive(Default)]
struct Recorder {
    events: Vec<Event>,
    want_dirs: bool,
}

impl Out for Recorder {
    fn mark(&mut self, start: FsBlock, len: u64) {
        match self.events.last_mut() {
            // Consecutive extents of one file: one event.
            Some(Event::Mark(s, n)) if s.checked_add(*n) == Some(start) => {
                *n = n.saturating_add(len);
            }
            _ => self.events.push(Event::Mark(start, len)),
        }
    }

    fn dir_data(&mut self, start: FsBlock, len: u64) {
        if self.want_dirs {
            self.events.push(Event::DirData(start, len));
        }
    }

    fn warning(&mut self, w: Warning) {
        self.events.push(Event::Warning(w));
    }

    fn walk_error(&mut self, ino: u32, e: Error) -> Result<()> {
        self.events.push(Event::WalkError(ino, e));
        Ok(())
    }
}

/// Build the block map of `fs`.
pub fn scan<S: ReadAt>(
    fs: &Filesystem<S>,
    opts: ScanOptions,
    progress: Option<ScanProgress<'_>>,
) -> Result<ScanResult> {
    scan_inner(fs, opts, progress, None)
}

/// [`scan`], handing the selection to `publish` as it grows: the fixed metadata first,
/// then what each chunk of inodes added (sorted runs; a block may come again). The union
/// of what was published is exactly the result's map, so a writer that does not need
/// blocks in order can copy them while the scan goes on. An error from `publish` ends the
/// scan with that error.
pub fn scan_publishing<S: ReadAt>(
    fs: &Filesystem<S>,
    opts: ScanOptions,
    progress: Option<ScanProgress<'_>>,
    publish: Publish<'_>,
) -> Result<ScanResult> {
    scan_inner(fs, opts, progress, Some(publish))
}

fn scan_inner<S: ReadAt>(
    fs: &Filesystem<S>,
    opts: ScanOptions,
    progress: Option<ScanProgress<'_>>,
    publish: Option<Publish<'_>>,
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
        publish,
    };
    if ctx.publish.is_some() {
        ctx.map.track_fresh();
    }
    mark_fixed(&mut ctx);
    ctx.publish()?;
    let seen = scan_inodes(&mut ctx, progress)?;
    ctx.publish()?;
    Ok(ScanResult {
        map: ctx.map.build(fdb, sb.blocks_count),
        dir_blocks: ctx.dirs.map(|d| d.build(fdb, sb.blocks_count)),
        problems: ctx.problems,
        warnings: ctx.warnings,
        inodes_seen: seen,
    })
}

/// Superblock, descriptors, MMP block, bitmaps and the used part of each inode table.
fn mark_fixed<S: ReadAt>(ctx: &mut Ctx<'_, '_, S>) {
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
    ctx: &mut Ctx<'_, '_, S>,
    progress: Option<ScanProgress<'_>>,
) -> Result<u64> {
    match ctx.opts.walkers.unwrap_or_else(auto_walkers) {
        0 => scan_inodes_here(ctx, progress),
        n => scan_inodes_walkers(ctx, progress, n),
    }
}

/// The inodes e2image treats as special (their blocks are taken whole).
fn special_inodes(sb: &super::superblock::Superblock) -> [u32; 5] {
    [
        sb.journal_inum(),
        inode::USR_QUOTA_INO,
        inode::GRP_QUOTA_INO,
        sb.prj_quota_inum(),
        sb.orphan_file_inum(),
    ]
}

/// A chunk's live inodes, parsed once; the mapping blocks their walks read first are
/// hinted all at once, so that on a cold disk they arrive together instead of one request
/// per inode.
fn live_inodes<S: ReadAt>(
    fs: &Filesystem<S>,
    chunk: &itable::Chunk<'_>,
    live: &mut Vec<(u32, Inode)>,
) {
    let is64 = fs.sb.is_64bit();
    live.clear();
    live.extend(
        chunk
            .inodes()
            .map(|(ino, raw)| (ino, Inode::parse(raw)))
            .filter(|(_, inode)| inode.links_count != 0),
    );
    for (_, inode) in live.iter() {
        if inode.has_valid_blocks(is64) {
            hint_mapping_blocks(fs, inode);
        }
    }
}

fn table_options(opts: &ScanOptions) -> TableOptions {
    TableOptions {
        skip_bad_blocks: true,
        strict: opts.strict,
    }
}

/// [`scan_inodes`] with the walks on the reading thread.
fn scan_inodes_here<S: ReadAt>(
    ctx: &mut Ctx<'_, '_, S>,
    mut progress: Option<ScanProgress<'_>>,
) -> Result<u64> {
    let fs = ctx.fs;
    let total = itable::used_inodes(fs);
    let (mut done, mut seen) = (0u64, 0u64);
    let special = special_inodes(&fs.sb);
    let opts = ctx.opts;
    let mut budget = crate::readplan::WINDOW;
    // Reused per chunk: at most one chunk's inodes (1 MiB of table).
    let mut live: Vec<(u32, Inode)> = Vec::new();
    itable::for_each_chunk(fs, table_options(&opts), &mut |item| {
        let chunk = match item {
            Item::Problem(p) => return ctx.problem(p),
            Item::Chunk(c) => c,
        };
        live_inodes(fs, chunk, &mut live);
        for (ino, inode) in &live {
            seen = seen.saturating_add(1);
            inode_blocks(fs, &opts, ctx, &mut budget, *ino, inode, &special)?;
        }
        done = done.saturating_add(u64::from(chunk.count));
        if let Some(p) = progress.as_mut() {
            p(done, total);
        }
        ctx.publish()
    })?;
    Ok(seen)
}

/// [`scan_inodes`] with `n` walker threads: the reading thread reads and parses the tables
/// and hands each chunk's live inodes to the walkers; their findings are applied in table
/// order (at most `2n` chunks in flight), so the map, problems and warnings are the same as
/// walking on the reading thread, and a strict scan stops at the same first problem.
fn scan_inodes_walkers<S: ReadAt>(
    ctx: &mut Ctx<'_, '_, S>,
    mut progress: Option<ScanProgress<'_>>,
    n: usize,
) -> Result<u64> {
    use std::collections::BTreeMap;
    use std::sync::mpsc::{Receiver, sync_channel};
    use std::sync::{Arc, Mutex};
    let fs = ctx.fs;
    let total = itable::used_inodes(fs);
    let special = special_inodes(&fs.sb);
    let opts = ctx.opts;
    let in_flight = n.saturating_mul(2);
    // Chunk number, its live inodes, and how many inodes of the table it covered.
    type Job = (u64, Vec<(u32, Inode)>, u32);
    std::thread::scope(|scope| {
        // Made inside the scope: when the reading thread stops early (strict mode, an
        // error), its ends of the channels are dropped before the walkers are joined, so a
        // walker blocked on either wakes up and ends.
        let (job_tx, job_rx) = sync_channel::<Job>(in_flight);
        let job_rx: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(job_rx));
        let (res_tx, res_rx) = sync_channel::<(u64, Vec<Event>, u64, u32)>(in_flight);
        for _ in 0..n {
            let (job_rx, res_tx) = (Arc::clone(&job_rx), res_tx.clone());
            let opts = &opts;
            let special = &special;
            scope.spawn(move || {
                // Hints of directory and journal data: each walker its share.
                let mut budget = crate::readplan::WINDOW.checked_div(n as u64).unwrap_or(0);
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((seq, live, count)) = job else { return };
                    let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let mut rec = Recorder {
                            events: Vec::new(),
                            want_dirs: opts.want_dir_blocks,
                        };
                        for (ino, inode) in &live {
                            // A walker records errors; only the reading thread ends the scan.
                            let _ =
                                inode_blocks(fs, opts, &mut rec, &mut budget, *ino, inode, special);
                        }
                        rec.events
                    }));
                    let events = walked.unwrap_or_else(|p| vec![Event::Panic(p)]);
                    let seen = live.len() as u64;
                    if res_tx.send((seq, events, seen, count)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(res_tx);
        let mut next = 0u64;
        let mut sent = 0u64;
        let (mut done, mut seen) = (0u64, 0u64);
        let mut waiting: BTreeMap<u64, (Vec<Event>, u64, u32)> = BTreeMap::new();
        // Apply every finished chunk that is next in order; with `wait`, while chunks before
        // `sent` (those handed to the walkers) are unapplied, first wait for one more result.
        let mut apply = |ctx: &mut Ctx<'_, '_, S>,
                         waiting: &mut BTreeMap<u64, (Vec<Event>, u64, u32)>,
                         next: &mut u64,
                         sent: u64,
                         wait: bool|
         -> Result<()> {
            let mut wait = wait;
            loop {
                while let Some((events, s, count)) = waiting.remove(next) {
                    for e in events {
                        match e {
                            Event::Mark(b, len) => ctx.map.mark_range(b, len),
                            Event::DirData(b, len) => Out::dir_data(ctx, b, len),
                            Event::Warning(w) => ctx.warnings.push(w),
                            Event::WalkError(ino, e) => ctx.walk_error(ino, e)?,
                            Event::Problem(p) => ctx.problem(p)?,
                            Event::Panic(p) => std::panic::resume_unwind(p),
                        }
                    }
                    seen = seen.saturating_add(s);
                    done = done.saturating_add(u64::from(count));
                    if let Some(p) = progress.as_mut() {
                        p(done, total);
                    }
                    ctx.publish()?;
                    *next = next.saturating_add(1);
                }
                let r = if std::mem::take(&mut wait) && *next < sent {
                    Some(
                        res_rx
                            .recv()
                            .map_err(|_| Error::InvalidInput("a scan walker stopped".into()))?,
                    )
                } else {
                    res_rx.try_recv().ok()
                };
                match r {
                    Some((seq, ev, s, count)) => {
                        waiting.insert(seq, (ev, s, count));
                    }
                    None => return Ok(()),
                }
            }
        };
        let mut live: Vec<(u32, Inode)> = Vec::new();
        let read = itable::for_each_chunk(fs, table_options(&opts), &mut |item| {
            let seq = sent;
            sent = sent.saturating_add(1);
            match item {
                Item::Problem(p) => {
                    waiting.insert(seq, (vec![Event::Problem(p)], 0, 0));
                }
                Item::Chunk(chunk) => {
                    live_inodes(fs, chunk, &mut live);
                    let job = (seq, std::mem::take(&mut live), chunk.count);
                    // Room for the job (at most `in_flight` chunks unapplied before it): the
                    // walkers hold the ones before it, so waiting ends.
                    while seq.saturating_sub(next) >= in_flight as u64 {
                        apply(ctx, &mut waiting, &mut next, seq, true)?;
                    }
                    job_tx
                        .send(job)
                        .map_err(|_| Error::InvalidInput("a scan walker stopped".into()))?;
                }
            }
            apply(ctx, &mut waiting, &mut next, seq, false)
        });
        drop(job_tx);
        read?;
        while next < sent {
            apply(ctx, &mut waiting, &mut next, sent, true)?;
        }
        Ok(seen)
    })
}

/// What one hint of [`hint_data`] costs of its budget at least.
const MIN_HINT_COST: u64 = 32 << 10;

/// Hint selected data found by the scan (directories, the journal), up to `budget` bytes
/// in all: the copy that follows the scan finds the first of it in the page cache, so the
/// disk works during the scan's parsing too. At most [`readplan::HINT_MAX`] per extent:
/// the small scattered extents (directories) are what the copy would wait for one by one,
/// and one long extent (a 64 MiB journal) read whole would queue ahead of the scan's own
/// table reads (cold spread16g `-r`: 0.18 s with 2 MiB of it, 0.23 s with all of it).
/// Each hint costs at least 32 KiB of the budget, so at most ~2,000 are made: on a disk of
/// slow requests, 16,000 one-block directory hints kept the scan waiting in full request
/// queues (2 ms per request, spread16g `-Q`: 1.7 → 1.3 s).
fn hint_data<S: ReadAt>(fs: &Filesystem<S>, budget: &mut u64, pblk: FsBlock, len: u64) {
    let bs = fs.sb.block_size;
    let (Some(off), Some(n)) = (bs.offset_of(pblk), bs.bytes_of(len)) else {
        return;
    };
    let n = n.min(*budget).min(crate::readplan::HINT_MAX);
    if n > 0 {
        fs.src.will_need(off, n);
        *budget = budget.saturating_sub(n.max(MIN_HINT_COST));
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

/// e2image's per-inode rules (§3.2 steps 2–5), the selection going to `out`.
fn inode_blocks<S: ReadAt>(
    fs: &Filesystem<S>,
    opts: &ScanOptions,
    out: &mut dyn Out,
    budget: &mut u64,
    ino: u32,
    inode: &Inode,
    special: &[u32; 5],
) -> Result<()> {
    let is64 = fs.sb.is_64bit();
    let acl = inode.file_acl(is64);
    if acl != FsBlock(0) {
        out.mark(acl, 1);
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
        || opts.all_data;
    if !walk {
        return Ok(());
    }
    let want_data = take_all || opts.all_data;
    let is_dir = inode.is_dir();
    let r = walk_inode(fs, ino, inode, want_data, &mut |v| match v {
        Visit::Meta(b) => out.mark(b, 1),
        Visit::Data { pblk, len, .. } => {
            out.mark(pblk, len);
            hint_data(fs, budget, pblk, len);
            if is_dir {
                out.dir_data(pblk, len);
            }
        }
    });
    match r {
        Ok(Walked::Complete) => Ok(()),
        Ok(Walked::RootIgnored(problem)) => {
            // e2image silently takes nothing of such an inode; so do we, but say so.
            out.warning(Warning::ExtentRootIgnored {
                ino,
                kind: CorruptKind::ExtentHeader {
                    ino,
                    node: None,
                    problem,
                },
            });
            Ok(())
        }
        Err(e) => out.walk_error(ino, e),
    }
}
