//! The scrambler's pass over the metadata: one read of the used inode tables (ext4's
//! [`itable`] iterator), and for each inode its directory blocks, symlink target, inline
//! data and xattrs, found through ext4's block-map walker ([`walk_inode`]).

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::dir::{Boundary, DirNames, HashSpec, parse_htree, rec_len};
use super::names::{NAME_CHARS, Slot, generate};
use super::xattr::{self, XATTR_MAGIC, XEntry};
use super::{Overlay, ScrambleReport, Unscrambled, crc32c_raw};
use crate::blockmap::{BlockMapBuilder, BlockRun};
use crate::error::CorruptKind;
use crate::ext4::csum::csum_seed;
use crate::ext4::damage::{DirRegion, HtreeProblem, Problem, ProblemKind, Role, XattrAt};
use crate::ext4::dirhash::{HASH_TEA_UNSIGNED, effective_version};
use crate::ext4::inode::{self, EXT4_CASEFOLD_FL, EXT4_INDEX_FL, I_BLOCK, Inode};
use crate::ext4::itable::{self, Item, TableOptions};
use crate::ext4::superblock::{SUPERBLOCK_OFFSET, feature};
use crate::ext4::walk::{Visit, Walked, walk_inode};
use crate::ext4::{Filesystem, le};
use crate::io::ReadAt;
use crate::units::FsBlock;
use crate::{Error, Result};

const EXT4_ENCRYPT_FL: u32 = 0x0000_0800;
/// The superblock's free-text fields, all cleared by `-s` (the scrambled mark then goes
/// into `s_last_mounted`): nothing else in it is text a user or the kernel wrote.
pub const SUPERBLOCK_TEXT_FIELDS: [(&str, std::ops::Range<usize>); 5] = [
    ("s_volume_name", 0x78..0x88),
    ("s_last_mounted", 0x88..0xC8),
    ("s_first_error_func", 0x1A8..0x1C8),
    ("s_last_error_func", 0x1E0..0x200),
    ("s_mount_opts", 0x200..0x240),
];
const MMP_MAGIC: u32 = 0x004D_4D50;
/// `i_extra_isize` and the checksum halves in the inode.
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_LO: usize = 0x7C;
const I_CHECKSUM_HI: usize = 0x82;
const I_GENERATION: usize = 0x64;

/// Compute the scrambled blocks of `fs` for `seed`.
pub fn plan<S: ReadAt>(fs: &Filesystem<S>, seed: u64) -> Result<(Overlay, ScrambleReport)> {
    let sb = &fs.sb;
    let mut p = Planner {
        fs,
        seed,
        ov: Overlay::new(sb.block_size),
        rep: ScrambleReport::default(),
        csum: sb.has_metadata_csum(),
        csum_seed: csum_seed(sb),
        xattr_done: HashSet::new(),
        filetype: sb.has_incompat(feature::INCOMPAT_FILETYPE),
        fixed: fixed_metadata(fs),
        claims: Claims::new(sb),
        kinds: HashMap::new(),
    };
    p.inodes()?;
    p.release_shared();
    p.superblocks()?;
    p.mmp()?;
    p.rep.patched_blocks = p.ov.patched_blocks() as u64;
    Ok((p.ov, p.rep))
}

struct Planner<'a, S> {
    fs: &'a Filesystem<S>,
    seed: u64,
    ov: Overlay,
    rep: ScrambleReport,
    csum: bool,
    csum_seed: u32,
    xattr_done: HashSet<FsBlock>,
    filetype: bool,
    /// The filesystem's fixed metadata (see [`fixed_metadata`]): no directory, symlink,
    /// xattr or journal block of a damaged map may change it.
    fixed: Vec<Range<FsBlock>>,
    /// Who claims which blocks (see [`Claims`]).
    claims: Claims,
    /// The private blocks read so far, with what they were read as and whether their
    /// content is that kind's (see [`Planner::put_private`]).
    kinds: HashMap<FsBlock, (Kind, bool)>,
}

/// What a private block is read as. Where a cross-linked block is claimed as more than
/// one kind, the kind whose structure its content has wins (see [`recognised`]), then the
/// later kind in this order: a directory's scrub zeros most, so it leaves least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Symlink,
    Xattr,
    Dir,
}

/// Who may have a block rewritten: a slow symlink or journal inode for its data blocks,
/// the directory pass for directory blocks (two directories that claim one block read it
/// alike, as entries: it is renamed once), or the xattr pass for an xattr block (any
/// number of inodes share one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Inode(u32),
    Directories,
    Xattr,
}

/// The blocks every in-use inode claims, as the scan attributes them: the blocks the
/// scrambler rewrites (candidates, with their owner), the mapping blocks of every inode
/// (extent tree nodes, indirect blocks) and the other data blocks (of regular files...).
/// A candidate also claimed otherwise, or by two owners, is cross-linked: its bytes are
/// one content read in several ways, and the private reading wins (names never leak),
/// except over a map whose content is not the private kind's (see
/// [`Planner::release_shared`]). Memory follows the runs of the maps (metadata).
struct Claims {
    maps: BlockMapBuilder,
    data: BlockMapBuilder,
    candidates: Vec<(u64, u64, Owner)>,
    blocks_count: u64,
}

/// Cross-linked candidate blocks: those a map also claims, and the others.
struct Shared {
    mapped: Vec<BlockRun>,
    others: Vec<BlockRun>,
}

impl Claims {
    fn new(sb: &crate::ext4::superblock::Superblock) -> Self {
        let last = FsBlock(sb.blocks_count.saturating_sub(1));
        Claims {
            maps: BlockMapBuilder::new(FsBlock(0), last, 0),
            data: BlockMapBuilder::new(FsBlock(0), last, 0),
            candidates: Vec::new(),
            blocks_count: sb.blocks_count,
        }
    }

    fn candidate(&mut self, start: FsBlock, len: u64, owner: Owner) {
        let start = start.get();
        let end = start.saturating_add(len).min(self.blocks_count);
        if start < end {
            self.candidates.push((start, end, owner));
        }
    }

    /// The candidate blocks that are cross-linked, as runs.
    fn shared(mut self) -> Shared {
        let maps = self.maps.build(FsBlock(0), self.blocks_count);
        let data = self.data.build(FsBlock(0), self.blocks_count);
        self.candidates.sort_unstable();
        let last = FsBlock(self.blocks_count.saturating_sub(1));
        let mut multi = BlockMapBuilder::new(FsBlock(0), last, 0);
        let mut mapped = BlockMapBuilder::new(FsBlock(0), last, 0);
        // Candidates still open at the current start, to compare owners.
        let mut open: Vec<(u64, u64, Owner)> = Vec::new();
        for &(s, e, o) in &self.candidates {
            open.retain(|&(_, oe, _)| oe > s);
            for &(_, oe, oo) in &open {
                if oo != o {
                    multi.mark_range(FsBlock(s), oe.min(e).saturating_sub(s));
                }
            }
            open.push((s, e, o));
            for r in data.runs_in(FsBlock(s)..FsBlock(e)) {
                multi.mark_range(r.start, r.len);
            }
            for r in maps.runs_in(FsBlock(s)..FsBlock(e)) {
                mapped.mark_range(r.start, r.len);
            }
        }
        let mapped = mapped.build(FsBlock(0), self.blocks_count);
        let others = multi.build(FsBlock(0), self.blocks_count).minus(&mapped);
        Shared {
            mapped: mapped.runs().to_vec(),
            others,
        }
    }
}

/// The blocks of the filesystem's fixed metadata, sorted and merged: the superblock's
/// block and the descriptor blocks (of the superblock used, and of the primary), the
/// bitmaps and the inode tables. Their bytes change only through their own passes (the
/// inode-table pass, the superblock pass); a damaged map that claims one of them as a
/// directory, symlink, xattr or journal block does not get it, so the image stays
/// readable.
fn fixed_metadata<S: ReadAt>(fs: &Filesystem<S>) -> Vec<Range<FsBlock>> {
    let sb = &fs.sb;
    let one = |b: FsBlock| b..b.saturating_add(1);
    // The primary superblock's block: byte 1024 is in block 1 with 1 KiB blocks (also on
    // bigalloc filesystems, whose first data block is 0), else in block 0.
    let mut v: Vec<Range<FsBlock>> = vec![one(sb.block_size.block_of(SUPERBLOCK_OFFSET))];
    let first = sb.first_block();
    for group_block in [Some(first), fs.backup_superblock].into_iter().flatten() {
        v.push(one(group_block));
        for j in 0..sb.desc_blocks {
            v.push(one(sb.descriptor_block_loc(group_block, j)));
        }
    }
    let ipbg = u64::from(sb.inode_blocks_per_group);
    for g in 0..sb.group_count {
        let it = fs.desc.inode_table(g);
        let locs = [
            one(fs.desc.block_bitmap(g)),
            one(fs.desc.inode_bitmap(g)),
            it..it.saturating_add(ipbg),
        ];
        // A location of 0 means "none".
        v.extend(locs.into_iter().filter(|r| r.start != FsBlock(0)));
    }
    v.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<FsBlock>> = Vec::with_capacity(v.len());
    for r in v {
        match merged.last_mut() {
            Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// A mapped piece of a file: `len` blocks from logical `lblk` at physical `pblk`.
#[derive(Debug, Clone, Copy)]
struct Piece {
    lblk: u64,
    pblk: FsBlock,
    len: u64,
}

impl Piece {
    /// The physical block of logical block `l`, if this piece maps it.
    fn lookup(&self, l: u64) -> Option<FsBlock> {
        let k = l.checked_sub(self.lblk).filter(|&k| k < self.len)?;
        self.pblk.checked_add(k)
    }

    /// Its blocks: (logical, physical).
    fn blocks(&self) -> impl Iterator<Item = (u64, FsBlock)> + '_ {
        (0..self.len).map_while(|k| Some((self.lblk.checked_add(k)?, self.pblk.checked_add(k)?)))
    }
}

/// The pieces of a directory as runs in logical order, each logical block once (where a
/// damaged map gives one twice, the piece that starts first has it) and each physical
/// block once (a damaged map that maps one block at many places has it scrambled once).
/// Work and memory follow the pieces and the distinct blocks, never what a damaged map
/// claims over and over.
fn unique_runs(pieces: &mut [Piece]) -> Vec<Piece> {
    pieces.sort_unstable_by_key(|p| (p.lblk, p.pblk));
    let mut out = Vec::new();
    // Physical ranges already taken: start → end, disjoint and not touching.
    let mut taken: std::collections::BTreeMap<FsBlock, FsBlock> = std::collections::BTreeMap::new();
    let mut next_lblk = 0u64;
    for p in pieces.iter() {
        let end_l = p.lblk.saturating_add(p.len);
        let from = p.lblk.max(next_lblk);
        if from >= end_l {
            continue;
        }
        next_lblk = end_l;
        let skip = from.saturating_sub(p.lblk);
        let start = p.pblk.saturating_add(skip);
        let end = p.pblk.saturating_add(p.len);
        // Emit the parts of start..end no earlier run took.
        let (mut pb, mut lb) = (start, from);
        while pb < end {
            let covering = taken
                .range(..=pb)
                .next_back()
                .map(|(_, &e)| e)
                .filter(|&e| e > pb);
            let step = match covering {
                Some(e) => e.min(end).saturating_since(pb),
                None => {
                    let gap_end = taken.range(pb..).next().map_or(end, |(&s, _)| s.min(end));
                    let len = gap_end.saturating_since(pb);
                    out.push(Piece {
                        lblk: lb,
                        pblk: pb,
                        len,
                    });
                    len
                }
            };
            if step == 0 {
                break;
            }
            pb = pb.saturating_add(step);
            lb = lb.saturating_add(step);
        }
        // Take start..end, merging with the ranges it overlaps or touches.
        let (mut s, mut e) = (start, end);
        let touching: Vec<FsBlock> = taken
            .range(..=end)
            .rev()
            .take_while(|&(_, &re)| re >= start)
            .map(|(&rs, _)| rs)
            .collect();
        for rs in touching {
            if let Some(re) = taken.remove(&rs) {
                s = s.min(rs);
                e = e.max(re);
            }
        }
        if s < e {
            taken.insert(s, e);
        }
    }
    out
}

/// Damage met while handling inode `ino`, as a skipped item; errors that are not damage
/// (an unsupported source) end the plan.
fn damaged(ino: Option<u32>, e: Error) -> Result<Unscrambled> {
    Ok(Unscrambled::Damaged(Problem::from_error(ino, e)?))
}

fn corrupt(ino: Option<u32>, kind: CorruptKind) -> Unscrambled {
    Unscrambled::Damaged(Problem {
        ino,
        kind: ProblemKind::Corrupt(kind),
    })
}

impl<S: ReadAt> Planner<'_, S> {
    fn bs(&self) -> usize {
        self.fs.sb.block_size.as_usize()
    }

    fn skip(&mut self, what: Unscrambled) {
        self.rep.not_scrambled.push(what);
    }

    /// A block as the overlay has it so far.
    fn block(&self, blk: FsBlock, role: Role) -> Result<Vec<u8>> {
        if let Some(b) = self.ov.get(blk) {
            return Ok(b.to_vec());
        }
        let mut buf = vec![0u8; self.bs()];
        self.fs.read_block(blk, &mut buf, role)?;
        Ok(buf)
    }

    /// Block `blk` as `kind` reads it: as rewritten so far by that kind, else the source's
    /// bytes (what another kind made of a cross-linked block is not this kind's content).
    fn block_as(&self, blk: FsBlock, role: Role, kind: Kind) -> Result<Vec<u8>> {
        if matches!(self.kinds.get(&blk), Some((k, _)) if *k == kind) {
            return self.block(blk, role);
        }
        let mut buf = vec![0u8; self.bs()];
        self.fs.read_block(blk, &mut buf, role)?;
        Ok(buf)
    }

    /// A block that holds private strings (directory entries, a symlink target) as the
    /// image will have it: where the source ends inside the block, its first bytes and
    /// zeros after them (the writers copy what is there); `None` where nothing of it can
    /// be read (reported; nothing of it is in the image either).
    fn private_block(
        &mut self,
        ino: u32,
        blk: FsBlock,
        role: Role,
        kind: Kind,
    ) -> Result<Option<Vec<u8>>> {
        let e = match self.block_as(blk, role, kind) {
            Ok(b) => return Ok(Some(b)),
            Err(e) => e,
        };
        let what = damaged(Some(ino), e)?;
        let mut buf = vec![0u8; self.bs()];
        let got = self
            .fs
            .sb
            .block_size
            .offset_of(blk)
            .and_then(|at| self.fs.src.read_at(&mut buf, at).ok())
            .unwrap_or(0);
        if got == 0 {
            // Htree directories read their leaves twice: said once.
            if !self.rep.not_scrambled.contains(&what) {
                self.skip(what);
            }
            return Ok(None);
        }
        Ok(Some(buf))
    }

    fn valid_block(&self, blk: FsBlock) -> bool {
        blk >= self.fs.sb.first_block() && blk.get() < self.fs.sb.blocks_count
    }

    /// The part of `r` that is fixed metadata, if any (its first range).
    fn fixed_in(&self, r: &Range<FsBlock>) -> Option<Range<FsBlock>> {
        let i = self.fixed.partition_point(|f| f.end <= r.start);
        let f = self.fixed.get(i)?;
        (f.start < r.end).then(|| f.start.max(r.start)..f.end.min(r.end))
    }

    /// Whether block `blk` is fixed metadata; if so, skipped as damage held in `role`.
    fn is_fixed(&mut self, ino: Option<u32>, role: Role, blk: FsBlock) -> bool {
        if self.fixed_in(&(blk..blk.saturating_add(1))).is_none() {
            return false;
        }
        self.skip(corrupt(
            ino,
            CorruptKind::BlockIsMetadata {
                role,
                block: blk.get(),
            },
        ));
        true
    }

    fn outside(&self, role: Role, block: FsBlock) -> CorruptKind {
        CorruptKind::BlockOutside {
            role,
            block: block.get(),
            fs_blocks: self.fs.sb.blocks_count,
        }
    }

    /// The used part of every inode table, chunk by chunk; changed blocks go to the overlay.
    /// Every inode of the used part is handled, linked or not, and also those in blocks the
    /// bad-blocks inode lists: their bytes are in the image all the same.
    fn inodes(&mut self) -> Result<()> {
        let fs = self.fs;
        itable::for_each_chunk(fs, TableOptions::default(), &mut |item| {
            let chunk = match item {
                Item::Problem(p) => {
                    self.skip(Unscrambled::Damaged(p));
                    return Ok(());
                }
                Item::Chunk(c) => c,
            };
            let mut dirty = vec![false; chunk.blocks()];
            for (ino, j, raw) in chunk.inodes_mut() {
                let before = raw.to_vec();
                match self.inode(ino, raw) {
                    Ok(true) => {
                        if let Some(d) = dirty.get_mut(j) {
                            *d = true;
                        }
                    }
                    Ok(false) => {}
                    // A block this inode points at cannot be read (a truncated or
                    // damaged source): what was not read is not in the image either.
                    Err(e) => {
                        raw.copy_from_slice(&before);
                        let what = damaged(Some(ino), e)?;
                        self.skip(what);
                    }
                }
            }
            for (j, _) in dirty.iter().enumerate().filter(|(_, d)| **d) {
                if let Some((blk, bytes)) = chunk.block(j) {
                    self.ov.put(blk, bytes.to_vec());
                }
            }
            Ok(())
        })
    }

    /// One inode; returns whether its bytes changed.
    fn inode(&mut self, ino: u32, raw: &mut [u8]) -> Result<bool> {
        let sb = &self.fs.sb;
        let inode = Inode::parse(raw);
        if inode.links_count == 0 {
            return self.unlinked_inode(ino, raw);
        }
        let journal = sb.has_compat(feature::COMPAT_HAS_JOURNAL) && ino == sb.journal_inum();
        self.claim(ino, &inode, journal);
        if journal {
            self.journal(ino, &inode)?;
            return Ok(false);
        }
        if ino < sb.first_ino() && ino != inode::ROOT_INO {
            return Ok(false);
        }
        let orig = raw.to_vec();
        let is64 = sb.is_64bit();
        let encrypted = self.encrypted(&inode);
        let ibody = self.ibody_xattrs(ino, raw);
        if inode.has_inline_data() {
            self.inline(ino, raw, &inode, ibody.as_ref(), encrypted);
        } else if inode.is_symlink() && !encrypted {
            if !inode.has_valid_blocks(is64) {
                match usize::try_from(inode.size).ok().filter(|&n| n <= 60) {
                    Some(n) => {
                        let slot = self.slot(b"link", ino);
                        scrub_target(self.seed, slot, &mut raw[I_BLOCK][..n]);
                        self.rep.symlinks = self.rep.symlinks.saturating_add(1);
                    }
                    None => self.skip(Unscrambled::FastSymlinkTooLong {
                        ino,
                        len: inode.size,
                    }),
                }
            } else {
                self.slow_symlink(ino, &inode)?;
            }
        } else if inode.is_symlink() {
            self.skip(Unscrambled::EncryptedSymlink { ino });
        }
        if inode.is_dir() && !inode.has_inline_data() {
            if encrypted {
                self.skip(Unscrambled::EncryptedNames { ino });
            } else {
                let generation = le::u32(raw, I_GENERATION);
                self.directory(ino, &inode, generation)?;
            }
        }
        if let Some((entries, _)) = &ibody {
            let mut ea = |i: u32| self.ea_inode_hash(i);
            let c = xattr::scramble_entries(raw, entries, self.seed, u64::from(ino), &mut ea);
            self.count_xattrs(XattrAt::Inode { ino }, &c);
        }
        let acl = inode.file_acl(is64);
        if acl != FsBlock(0) {
            self.xattr_block(acl)?;
        }
        if raw != &orig[..] {
            if self.csum {
                self.inode_csum(ino, raw, &orig);
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Record what inode `ino` claims (see [`Claims`]): the data blocks of a directory,
    /// of a slow symlink's first block and of the journal are candidates for rewriting;
    /// every other block it maps is someone else's as far as they are concerned. A map
    /// that cannot be walked claims what was visited before the damage.
    fn claim(&mut self, ino: u32, inode: &Inode, journal: bool) {
        let is64 = self.fs.sb.is_64bit();
        let acl = inode.file_acl(is64);
        if acl != FsBlock(0) {
            self.claims.candidate(acl, 1, Owner::Xattr);
        }
        if !inode.has_valid_blocks(is64) || inode.has_inline_data() {
            return;
        }
        let (dir, link) = (inode.is_dir(), inode.is_symlink());
        let owner = if dir {
            Owner::Directories
        } else {
            Owner::Inode(ino)
        };
        let claims = &mut self.claims;
        let _ = walk_inode(self.fs, ino, inode, true, &mut |v| match v {
            Visit::Meta(b) => claims.maps.mark(b),
            Visit::Data {
                lblk, pblk, len, ..
            } => {
                if dir || journal {
                    claims.candidate(pblk, len, owner);
                } else if link && lblk == 0 {
                    claims.candidate(pblk, 1, owner);
                    claims
                        .data
                        .mark_range(pblk.saturating_add(1), len.saturating_sub(1));
                } else {
                    claims.data.mark_range(pblk, len);
                }
            }
        });
    }

    /// Settle the cross-linked blocks (see [`Claims`]). A block is one content, whoever
    /// claims it: where a directory, symlink, xattr or journal reads it, its names, target
    /// or log are private whatever else maps it, so it stays scrambled (another file's
    /// copy of it, with `-a`, is the scrambled one too) and is reported. Only a mapping
    /// block (extent node, indirect block) whose content is not the private kind's is
    /// given back to the source: its bytes are block numbers, and rewriting them would
    /// change what e2fsck walks.
    fn release_shared(&mut self) {
        let claims = std::mem::replace(&mut self.claims, Claims::new(&self.fs.sb));
        let shared = claims.shared();
        // (first, last, scrambled), coalesced. Fixed metadata (an inode table a damaged
        // map claims) is left out: its own pass scrambled it (its inodes), and the claim
        // was reported as such.
        let mut runs: Vec<(FsBlock, FsBlock, bool)> = Vec::new();
        let mut add = |b: FsBlock, e: FsBlock, scrambled: bool| match runs.last_mut() {
            Some((_, l, s)) if *s == scrambled && l.checked_add(1) == Some(b) => *l = e,
            _ => runs.push((b, e, scrambled)),
        };
        for (r, mapped) in shared
            .mapped
            .iter()
            .map(|r| (r, true))
            .chain(shared.others.iter().map(|r| (r, false)))
        {
            let mut b = r.start;
            while b < r.end() {
                let one = b..b.saturating_add(1);
                let fixed = self.fixed_in(&(b..r.end()));
                if let Some(f) = fixed.as_ref().filter(|f| f.start == b) {
                    b = f.end;
                    continue;
                }
                if !mapped {
                    // Scrambled as it is, up to the next fixed block: added as a run
                    // (these follow data claims, which may be long).
                    let upto = fixed.map_or(r.end(), |f| f.start);
                    add(b, FsBlock(upto.get().saturating_sub(1)), true);
                    b = upto;
                    continue;
                }
                let kept = !matches!(self.kinds.get(&b), Some((_, true)));
                if kept {
                    self.ov.release(one);
                }
                add(b, b, !kept);
                b = b.saturating_add(1);
            }
        }
        runs.sort_unstable();
        for (first, last, scrambled) in runs {
            self.skip(if scrambled {
                Unscrambled::SharedScrambled { first, last }
            } else {
                Unscrambled::Shared { first, last }
            });
        }
    }

    /// Store `buf`, block `blk` read as `kind` (`recognised`: its content has that kind's
    /// structure; `changed`: it differs from what was read). A block a different kind
    /// already claimed is one cross-linked: the content decides (a recognised reading
    /// beats one that is not), then the order of [`Kind`]; the winner's bytes are stored
    /// even when unchanged, so that the loser's rewrite is undone.
    fn put_private(
        &mut self,
        blk: FsBlock,
        buf: Vec<u8>,
        kind: Kind,
        recognised: bool,
        changed: bool,
    ) {
        let wins = match self.kinds.get(&blk).copied() {
            None => changed,
            Some((k, r)) if k == kind => {
                self.kinds.insert(blk, (kind, r || recognised));
                if changed {
                    self.ov.put(blk, buf);
                }
                return;
            }
            Some((k, r)) => (recognised, kind) > (r, k),
        };
        if !self.kinds.contains_key(&blk) || wins {
            self.kinds.insert(blk, (kind, recognised));
        }
        if wins {
            self.ov.put(blk, buf);
        }
    }

    /// An inode with no links (deleted, or an orphan): e2image copies its bytes with the
    /// inode table, so a leftover fast symlink target, inline data or in-inode xattrs are
    /// scrubbed as in a live inode. Its blocks are not imaged and stay as they are.
    fn unlinked_inode(&mut self, ino: u32, raw: &mut [u8]) -> Result<bool> {
        if raw.iter().all(|&b| b == 0) || ino < self.fs.sb.first_ino() {
            return Ok(false);
        }
        let inode = Inode::parse(raw);
        let orig = raw.to_vec();
        let ibody = self.ibody_xattrs(ino, raw);
        let encrypted = self.encrypted(&inode);
        if inode.has_inline_data() {
            self.inline(ino, raw, &inode, ibody.as_ref(), encrypted);
        } else if inode.is_symlink() && !encrypted && !inode.has_valid_blocks(self.fs.sb.is_64bit())
        {
            let n = usize::try_from(inode.size).unwrap_or(usize::MAX).min(60);
            let slot = self.slot(b"link", ino);
            scrub_target(self.seed, slot, &mut raw[I_BLOCK][..n]);
        }
        if let Some((entries, _)) = &ibody {
            let mut ea = |i: u32| self.ea_inode_hash(i);
            xattr::scramble_entries(raw, entries, self.seed, u64::from(ino), &mut ea);
        }
        if raw != &orig[..] {
            if self.csum {
                self.inode_csum(ino, raw, &orig);
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether `inode`'s names, target or inline data are ciphertext (kept as they are):
    /// the encrypt flag counts only on a filesystem with the encrypt feature, elsewhere
    /// it is damage and the plaintext under it is scrambled like any other.
    fn encrypted(&self, inode: &Inode) -> bool {
        inode.flags & EXT4_ENCRYPT_FL != 0 && self.fs.sb.has_incompat(feature::INCOMPAT_ENCRYPT)
    }

    fn slot(&self, kind: &'static [u8], owner: u32) -> Slot {
        Slot {
            kind,
            owner: u64::from(owner),
            block: 0,
            offset: 0,
        }
    }

    fn count_xattrs(&mut self, at: XattrAt, c: &xattr::XCounts) {
        self.rep.xattr_names = self.rep.xattr_names.saturating_add(c.names);
        self.rep.xattr_values = self.rep.xattr_values.saturating_add(c.values);
        if c.ea_inode_values > 0 {
            self.skip(Unscrambled::EaInodeValues {
                at,
                count: c.ea_inode_values,
            });
        }
    }

    /// The xattrs in the inode body: (entries, offset of the entry table).
    /// A table that cannot be parsed is scrubbed (see [`xattr::scrub`]) and reported.
    fn ibody_xattrs(&mut self, ino: u32, raw: &mut [u8]) -> Option<(Vec<XEntry>, usize)> {
        let isz = raw.len();
        if isz <= 128 {
            return None;
        }
        let start = usize::from(le::u16(raw, I_EXTRA_ISIZE)).checked_add(128)?;
        let table = start.checked_add(4)?;
        if table > isz || le::u32(raw, start) != XATTR_MAGIC {
            return None;
        }
        match xattr::parse(raw, table, table, isz) {
            Ok(e) => Some((e, table)),
            Err(problem) => {
                xattr::scrub(raw, table, table, isz);
                let at = XattrAt::Inode { ino };
                self.skip(Unscrambled::Scrubbed(Problem {
                    ino: Some(ino),
                    kind: ProblemKind::Corrupt(CorruptKind::Xattr { at, problem }),
                }));
                None
            }
        }
    }

    /// Inline data: directory entries get new names, symlink targets new bytes, file data zeros.
    fn inline(
        &mut self,
        ino: u32,
        raw: &mut [u8],
        inode: &Inode,
        ibody: Option<&(Vec<XEntry>, usize)>,
        encrypted: bool,
    ) {
        let data = ibody.and_then(|(es, _)| es.iter().find(|e| e.is_system_data(raw)).cloned());
        // The system.data value (checked by the xattr parser to lie inside the inode).
        let value = data.as_ref().map_or(0..0, XEntry::value_range);
        if encrypted {
            self.skip(Unscrambled::EncryptedInlineData { ino });
            return;
        }
        let data_ok = data.as_ref().is_some_and(|e| xattr::hash_ok(raw, e, None));
        if inode.is_dir() {
            let casefold = inode.flags & EXT4_CASEFOLD_FL != 0;
            let mut names = DirNames::new(self.seed, ino, None, casefold, self.filetype);
            names.max_inode = self.fs.sb.inodes_count;
            // The first 4 bytes of i_block are the parent's inode number.
            let body = &mut raw[I_BLOCK.start.saturating_add(4)..I_BLOCK.end];
            let out = names.scramble_region(body, DirRegion::InlineBody, 0, 0, 4, None);
            self.scrubbed(ino, out);
            if !value.is_empty() {
                let mut v = raw[value.clone()].to_vec();
                let out = names.scramble_region(&mut v, DirRegion::InlineXattr, 0, 1, 0, None);
                self.scrubbed(ino, out);
                raw[value.clone()].copy_from_slice(&v);
            }
            self.rep.directories = self.rep.directories.saturating_add(1);
            self.finish_names(names);
        } else if inode.is_symlink() {
            let size = usize::try_from(inode.size).unwrap_or(usize::MAX);
            let slot = self.slot(b"link", ino);
            scrub_target(self.seed, slot, &mut raw[I_BLOCK][..size.min(60)]);
            let rest = size.saturating_sub(60).min(value.len());
            let slot = Slot { offset: 60, ..slot };
            let start = value.start;
            scrub_target(self.seed, slot, &mut raw[start..start.saturating_add(rest)]);
            self.rep.symlinks = self.rep.symlinks.saturating_add(1);
        } else {
            let nonzero = raw[I_BLOCK]
                .iter()
                .chain(&raw[value.clone()])
                .any(|&b| b != 0);
            raw[I_BLOCK].fill(0);
            raw[value].fill(0);
            if nonzero {
                self.rep.inline_files = self.rep.inline_files.saturating_add(1);
            }
        }
        if let Some(e) = &data {
            xattr::fix_hash(raw, e, data_ok, None);
        }
    }

    /// A directory region with damage `damage` was scrubbed (see
    /// [`DirNames::scramble_region`]): counted and reported.
    fn scrubbed(&mut self, ino: u32, damage: Option<CorruptKind>) {
        if let Some(kind) = damage {
            self.rep.scrubbed_regions = self.rep.scrubbed_regions.saturating_add(1);
            self.skip(Unscrambled::Scrubbed(Problem {
                ino: Some(ino),
                kind: ProblemKind::Corrupt(kind),
            }));
        }
    }

    fn finish_names(&mut self, names: DirNames) {
        self.rep.names = self.rep.names.saturating_add(names.names);
        self.rep.names_out_of_range = self
            .rep
            .names_out_of_range
            .saturating_add(names.out_of_range);
        if names.out_of_range > 0 {
            self.skip(Unscrambled::OutOfRange {
                ino: names.ino,
                count: names.out_of_range,
            });
        }
        self.rep.not_scrambled.extend(names.failures);
    }

    fn slow_symlink(&mut self, ino: u32, inode: &Inode) -> Result<()> {
        let bs = self.bs();
        let n = match usize::try_from(inode.size) {
            Ok(n) if n < bs => n,
            _ => {
                self.skip(Unscrambled::SymlinkTooLong {
                    ino,
                    len: inode.size,
                });
                return Ok(());
            }
        };
        let pieces = match self.map(ino, inode, 1) {
            Ok(p) => p,
            Err(e) => {
                let what = damaged(Some(ino), e)?;
                self.skip(what);
                return Ok(());
            }
        };
        let Some(pblk) = pieces.iter().find_map(|p| p.lookup(0)) else {
            self.skip(corrupt(Some(ino), CorruptKind::SymlinkUnmapped { ino }));
            return Ok(());
        };
        let role = Role::SymlinkBlock { ino };
        if !self.valid_block(pblk) {
            self.skip(corrupt(Some(ino), self.outside(role, pblk)));
            return Ok(());
        }
        if self.is_fixed(Some(ino), role, pblk) {
            return Ok(());
        }
        let Some(mut buf) = self.private_block(ino, pblk, role, Kind::Symlink)? else {
            return Ok(());
        };
        // A target is its bytes up to the first NUL: `n` of them, for a valid one.
        let recognised = !buf[..n].contains(&0) && buf.get(n).is_some_and(|&b| b == 0);
        let orig = buf.clone();
        let slot = self.slot(b"link", ino);
        scrub_target(self.seed, slot, &mut buf[..n]);
        let changed = buf != orig;
        self.put_private(pblk, buf, Kind::Symlink, recognised, changed);
        self.rep.symlinks = self.rep.symlinks.saturating_add(1);
        Ok(())
    }

    /// libext2fs `ext2fs_inode_csum`: (value, whether the high half is stored).
    fn inode_csum_value(&self, ino: u32, raw: &[u8]) -> (u32, bool) {
        let has_hi = raw.len() > 128 && le::u16(raw, I_EXTRA_ISIZE) >= 4;
        let mut tmp = raw.to_vec();
        le::set_u16(&mut tmp, I_CHECKSUM_LO, 0);
        if has_hi {
            le::set_u16(&mut tmp, I_CHECKSUM_HI, 0);
        }
        let mut crc = crc32c_raw(self.csum_seed, &le::bytes_u32(ino));
        crc = crc32c_raw(crc, &tmp[I_GENERATION..I_GENERATION + 4]);
        crc = crc32c_raw(crc, &tmp);
        if !has_hi {
            crc &= 0xFFFF;
        }
        (crc, has_hi)
    }

    fn inode_csum_ok(&self, ino: u32, raw: &[u8]) -> bool {
        let (crc, has_hi) = self.inode_csum_value(ino, raw);
        let mut stored = u32::from(le::u16(raw, I_CHECKSUM_LO));
        if has_hi {
            stored |= u32::from(le::u16(raw, I_CHECKSUM_HI)) << 16;
        }
        stored == crc
    }

    /// Store a new inode checksum, but only where the source's verified: a wrong checksum
    /// stays wrong, so that e2fsck's verdict does not change.
    fn inode_csum(&self, ino: u32, raw: &mut [u8], orig: &[u8]) {
        if !self.inode_csum_ok(ino, orig) {
            return;
        }
        let (crc, has_hi) = self.inode_csum_value(ino, raw);
        let [lo, hi] = crate::ext4::csum::halves(crc);
        le::set_u16(raw, I_CHECKSUM_LO, lo);
        if has_hi {
            le::set_u16(raw, I_CHECKSUM_HI, hi);
        }
    }

    /// The logical-to-physical map of inode `ino` below logical block `max_lblk`, from the
    /// block-map walker.
    fn map(&self, ino: u32, inode: &Inode, max_lblk: u64) -> Result<Vec<Piece>> {
        let mut out = Vec::new();
        let walked = walk_inode(self.fs, ino, inode, true, &mut |v| {
            // Unwritten extents too: e2image copies their blocks, whatever they hold.
            if let Visit::Data {
                lblk, pblk, len, ..
            } = v
            {
                let len = len.min(max_lblk.saturating_sub(lblk));
                if len > 0 {
                    out.push(Piece { lblk, pblk, len });
                }
            }
        })?;
        match walked {
            Walked::Complete => Ok(out),
            Walked::RootIgnored(problem) => Err(CorruptKind::ExtentHeader {
                ino,
                node: None,
                problem,
            }
            .into()),
        }
    }

    /// A block-based directory: every leaf block gets new names (in its hash range for htree
    /// directories); index blocks are kept.
    fn directory(&mut self, ino: u32, inode: &Inode, generation: u32) -> Result<()> {
        let sb = &self.fs.sb;
        let bs = self.bs();
        // Every mapped block, also those beyond i_size: e2image copies them all, and
        // e2fsck reads them as directory blocks.
        let mut pieces = match self.map(ino, inode, u64::MAX) {
            Ok(p) => p,
            Err(e) => {
                let what = damaged(Some(ino), e)?;
                self.skip(what);
                return Ok(());
            }
        };
        let lookup = |pieces: &[Piece], l: u64| pieces.iter().find_map(|p| p.lookup(l));
        let casefold =
            inode.flags & EXT4_CASEFOLD_FL != 0 && sb.has_incompat(feature::INCOMPAT_CASEFOLD);
        let mut tree = None;
        let mut spec = None;
        if inode.flags & EXT4_INDEX_FL != 0 && sb.has_compat(feature::COMPAT_DIR_INDEX) {
            let max_levels = if sb.has_incompat(feature::INCOMPAT_LARGEDIR) {
                3
            } else {
                2
            };
            let unmapped = |problem| Error::from(CorruptKind::Htree { ino, problem });
            let parsed = match lookup(&pieces, 0) {
                Some(b0) if self.valid_block(b0) => {
                    let root = self.block(b0, Role::DirBlock { ino, lblk: 0 })?;
                    let mut read = |l: u64| -> Result<Vec<u8>> {
                        let p = lookup(&pieces, l)
                            .filter(|&p| self.valid_block(p))
                            .ok_or_else(|| unmapped(HtreeProblem::NodeUnmapped { lblk: l }))?;
                        self.block(p, Role::DirBlock { ino, lblk: l })
                    };
                    parse_htree(ino, &root, max_levels, &mut read)
                }
                _ => Err(unmapped(HtreeProblem::RootUnmapped)),
            };
            match parsed {
                Ok(t) => {
                    let version = effective_version(t.root_version, sb.flags());
                    if version <= HASH_TEA_UNSIGNED {
                        spec = Some(HashSpec {
                            version,
                            seed: sb.hash_seed(),
                            casefold,
                        });
                    } else {
                        self.skip(Unscrambled::HashVersion { ino, version });
                    }
                    tree = Some(t);
                }
                Err(e) => {
                    let problem = Problem::from_error(Some(ino), e)?;
                    self.skip(Unscrambled::HtreeIgnored { ino, problem });
                }
            }
        }
        let mut names = DirNames::new(self.seed, ino, spec, casefold, self.filetype);
        names.indexed = inode.flags & EXT4_INDEX_FL != 0;
        names.max_inode = sb.inodes_count;
        let runs = unique_runs(&mut pieces);
        let blocks = || runs.iter().flat_map(Piece::blocks);
        if let (Some(t), Some(_)) = (&mut tree, spec) {
            // First pass over the leaves: which names each must receive.
            let mut needs = Vec::new();
            // Leaves all of whose names get new ones, and how many: their bounds may move.
            let mut free: HashMap<u64, u64> = HashMap::new();
            for (lblk, pblk) in blocks() {
                if lblk == 0 || t.nodes.contains(&lblk) || !self.valid_block(pblk) {
                    continue;
                }
                if let Some(&range) = t.leaves.get(&lblk) {
                    let Some(b) =
                        self.private_block(ino, pblk, Role::DirBlock { ino, lblk }, Kind::Dir)?
                    else {
                        continue;
                    };
                    let limit = self.leaf_limit(&b);
                    let before = needs.len();
                    // (A leaf in fixed metadata is not rewritten: its names stay.)
                    if names.collect_needs(&b[..limit], bs, lblk, range, &mut needs)
                        && self.fixed_in(&(pblk..pblk.saturating_add(1))).is_none()
                    {
                        let count = needs.len().saturating_sub(before) as u64;
                        free.insert(lblk, count);
                    }
                }
            }
            // Which names were in their range is judged above, by the original ranges;
            // the new names go into the widened ones.
            // Index blocks the image will not have rewritten keep their bounds.
            let locked: HashSet<u64> = std::iter::once(0)
                .chain(t.nodes.iter().copied())
                .filter(|&l| {
                    lookup(&pieces, l).is_none_or(|p| {
                        !self.valid_block(p) || self.fixed_in(&(p..p.saturating_add(1))).is_some()
                    })
                })
                .collect();
            let bounds = t.widen(&free, &locked);
            names.preassign(needs, &t.leaves);
            self.rewrite_bounds(ino, generation, &pieces, &bounds)?;
        }
        for (lblk, pblk) in blocks() {
            if let Some(t) = &tree
                && (lblk == 0 || t.nodes.contains(&lblk))
            {
                // An index block: kept, and claimed as a directory's (see put_private).
                let role = Role::DirBlock { ino, lblk };
                if self.valid_block(pblk)
                    && self.fixed_in(&(pblk..pblk.saturating_add(1))).is_none()
                    && let Ok(b) = self.block_as(pblk, role, Kind::Dir)
                {
                    self.put_private(pblk, b, Kind::Dir, true, false);
                }
                continue;
            }
            let role = Role::DirBlock { ino, lblk };
            if !self.valid_block(pblk) {
                self.skip(corrupt(Some(ino), self.outside(role, pblk)));
                continue;
            }
            if self.is_fixed(Some(ino), role, pblk) {
                continue;
            }
            let Some(orig) = self.private_block(ino, pblk, role, Kind::Dir)? else {
                continue;
            };
            let recognised = dir_head_ok(&orig);
            // An index block (of an index that could not be read): no names, kept whole.
            if names.indexed && is_index_block(&orig, lblk) {
                self.put_private(pblk, orig, Kind::Dir, recognised, false);
                continue;
            }
            let mut buf = orig.clone();
            let limit = self.leaf_limit(&buf);
            let tail = limit < bs;
            let range = tree.as_ref().and_then(|t| t.leaves.get(&lblk).copied());
            let place = DirRegion::Block { lblk };
            let out = names.scramble_region(&mut buf[..limit], place, bs, lblk, 0, range);
            self.scrubbed(ino, out);
            if buf != orig {
                let body = bs.saturating_sub(12);
                let leaf_csum = |b: &[u8]| {
                    let mut crc = crc32c_raw(self.csum_seed, &le::bytes_u32(ino));
                    crc = crc32c_raw(crc, &le::bytes_u32(generation));
                    crc32c_raw(crc, &b[..body])
                };
                // Only a checksum that verified is recomputed (a bad one stays bad).
                let at = bs.saturating_sub(4);
                if tail && le::u32(&orig, at) == leaf_csum(&orig) {
                    let crc = leaf_csum(&buf);
                    le::set_u32(&mut buf, at, crc);
                }
            }
            let changed = buf != orig;
            self.put_private(pblk, buf, Kind::Dir, recognised, changed);
        }
        self.rep.directories = self.rep.directories.saturating_add(1);
        self.finish_names(names);
        Ok(())
    }

    /// Store the moved hash boundaries of [`Htree::widen`] in their index blocks; the
    /// index checksum (dx tail) is recomputed where it verified.
    fn rewrite_bounds(
        &mut self,
        ino: u32,
        generation: u32,
        pieces: &[Piece],
        bounds: &[Boundary],
    ) -> Result<()> {
        let mut blocks: Vec<u64> = bounds.iter().map(|b| b.lblk).collect();
        blocks.sort_unstable();
        blocks.dedup();
        for lblk in blocks {
            let role = Role::DirBlock { ino, lblk };
            let Some(pblk) = pieces.iter().find_map(|p| p.lookup(lblk)) else {
                continue;
            };
            if !self.valid_block(pblk) || self.is_fixed(Some(ino), role, pblk) {
                continue;
            }
            let mut buf = self.block_as(pblk, role, Kind::Dir)?;
            let verified = self.dx_csum(ino, generation, &buf, bounds, lblk);
            for b in bounds.iter().filter(|b| b.lblk == lblk) {
                let Some(field) = b.entry.checked_mul(8).and_then(|o| o.checked_add(b.at)) else {
                    continue;
                };
                if field.checked_add(4).is_some_and(|e| e <= buf.len()) {
                    le::set_u32(&mut buf, field, b.hash);
                }
            }
            // Only a checksum that verified is recomputed (a bad one stays bad).
            if let Some((tail, true)) = verified
                && let Some(crc) = self.dx_crc(ino, generation, &buf, bounds, lblk)
            {
                le::set_u32(&mut buf, tail, crc);
            }
            self.put_private(pblk, buf, Kind::Dir, true, true);
        }
        Ok(())
    }

    /// The dx tail of index block `lblk` (count/limit at the offset `bounds` gives):
    /// where its checksum is, and whether it verifies.
    fn dx_csum(
        &self,
        ino: u32,
        generation: u32,
        buf: &[u8],
        bounds: &[Boundary],
        lblk: u64,
    ) -> Option<(usize, bool)> {
        if !self.csum {
            return None;
        }
        let at = bounds.iter().find(|b| b.lblk == lblk)?.at;
        let limit = usize::from(le::get_u16(buf, at)?);
        let tail = limit.checked_mul(8)?.checked_add(at)?;
        let stored = le::get_u32(buf, tail.checked_add(4)?)?;
        let crc = self.dx_crc(ino, generation, buf, bounds, lblk)?;
        Some((tail.checked_add(4)?, stored == crc))
    }

    /// libext2fs `ext2fs_dx_csum` of an index block.
    fn dx_crc(
        &self,
        ino: u32,
        generation: u32,
        buf: &[u8],
        bounds: &[Boundary],
        lblk: u64,
    ) -> Option<u32> {
        let at = bounds.iter().find(|b| b.lblk == lblk)?.at;
        let limit = usize::from(le::get_u16(buf, at)?);
        let count = usize::from(le::get_u16(buf, at.checked_add(2)?)?);
        let size = count.checked_mul(8)?.checked_add(at)?;
        let tail = limit.checked_mul(8)?.checked_add(at)?;
        let mut crc = crc32c_raw(self.csum_seed, &le::bytes_u32(ino));
        crc = crc32c_raw(crc, &le::bytes_u32(generation));
        crc = crc32c_raw(crc, buf.get(..size)?);
        // The whole dx tail, its checksum field read as zero.
        crc = crc32c_raw(crc, buf.get(tail..tail.checked_add(4)?)?);
        Some(crc32c_raw(crc, &[0; 4]))
    }

    /// The value hash an EA inode keeps in `i_atime`.
    fn ea_inode_hash(&self, ino: u32) -> Option<u32> {
        let (group, blk, at) = itable::locate(self.fs, ino)?;
        if !self.valid_block(blk) {
            return None;
        }
        let b = self.block(blk, Role::InodeTable { group }).ok()?;
        le::get_u32(&b, at.checked_add(0x08)?)
    }

    /// Where the entries of a leaf block end: before the checksum tail, if it has one. A
    /// tail whose `name_len` or type bytes are damaged is still a tail (its inode and
    /// `rec_len` say so): its bytes stay as they are, damage included, and its checksum is
    /// no name.
    fn leaf_limit(&self, buf: &[u8]) -> usize {
        let bs = buf.len();
        let Some(t) = bs.checked_sub(12).and_then(|at| buf.get(at..)) else {
            return bs;
        };
        let tail = self.csum && le::u32(t, 0) == 0 && le::u16(t, 4) == 12;
        if tail { bs.saturating_sub(12) } else { bs }
    }

    fn xattr_block(&mut self, blk: FsBlock) -> Result<()> {
        if !self.xattr_done.insert(blk) {
            return Ok(());
        }
        let at = XattrAt::Block { block: blk.get() };
        if !self.valid_block(blk) {
            self.skip(corrupt(None, self.outside(Role::XattrBlock, blk)));
            return Ok(());
        }
        if self.is_fixed(None, Role::XattrBlock, blk) {
            return Ok(());
        }
        let bs = self.bs();
        let orig = self.block_as(blk, Role::XattrBlock, Kind::Xattr)?;
        let mut buf = orig.clone();
        let (magic, blocks) = (le::u32(&buf, 0), le::u32(&buf, 8));
        if magic != XATTR_MAGIC {
            // Not an xattr block: nothing in it is known to be anything but private bytes
            // (a stale directory block, file data), so it is zeroed. e2fsck refuses it for
            // its magic, which stays wrong (zero), then still compares h_refcount with the
            // references it counted and h_blocks with 1 (a mismatch makes it abort): those
            // are kept where they are small numbers, else made a large one (text is never
            // a small number; any large one mismatches alike).
            let number = |v: u32| if v < 1 << 16 { v } else { u32::MAX };
            let refcount = le::u32(&buf, 4);
            buf.fill(0);
            le::set_u32(&mut buf, 4, number(refcount));
            le::set_u32(&mut buf, 8, number(blocks));
            let problem = crate::ext4::damage::XattrProblem::Header { magic, blocks };
            self.xattr_scrubbed(blk, &orig, buf, false, CorruptKind::Xattr { at, problem });
            return Ok(());
        }
        if blocks != 1 {
            // e2fsck -n, told not to clear the block, goes on to judge its other header
            // fields and its entries: their headers are kept (the reserved bytes, which it
            // does not judge, zeroed), names and values zeroed.
            buf[20..32].fill(0);
            xattr::scrub(&mut buf, 32, 0, bs);
            let problem = crate::ext4::damage::XattrProblem::Header { magic, blocks };
            self.xattr_scrubbed(blk, &orig, buf, true, CorruptKind::Xattr { at, problem });
            return Ok(());
        }
        let entries = match xattr::parse(&buf, 32, 0, bs) {
            Ok(e) => e,
            Err(problem) => {
                xattr::scrub(&mut buf, 32, 0, bs);
                self.xattr_scrubbed(blk, &orig, buf, true, CorruptKind::Xattr { at, problem });
                return Ok(());
            }
        };
        let seed = self.csum_seed;
        let block_csum = move |b: &[u8]| {
            let mut t = b.to_vec();
            le::set_u32(&mut t, 16, 0);
            crc32c_raw(crc32c_raw(seed, &le::bytes_u64(blk.get())), &t)
        };
        let csum_ok = self.csum && le::u32(&buf, 16) == block_csum(&buf);
        let mut ea = |i: u32| self.ea_inode_hash(i);
        let slot = blk.get() | 1 << 63;
        let c = xattr::scramble_entries(&mut buf, &entries, self.seed, slot, &mut ea);
        self.count_xattrs(at, &c);
        let unused = xattr::zero_unused(&mut buf, 32, bs, &entries);
        if c.changed || unused {
            if c.changed {
                xattr::block_rehash(&mut buf, &entries);
            }
            if csum_ok {
                let crc = block_csum(&buf);
                le::set_u32(&mut buf, 16, crc);
            }
        }
        let changed = buf != orig;
        self.put_private(blk, buf, Kind::Xattr, true, changed);
        Ok(())
    }

    /// A damaged xattr block whose names and values were zeroed (`buf`, the block as it
    /// now is; `orig`, as it was read; `recognised`: its magic is the xattr one): stored,
    /// reported as scrubbed.
    fn xattr_scrubbed(
        &mut self,
        blk: FsBlock,
        orig: &[u8],
        buf: Vec<u8>,
        recognised: bool,
        kind: CorruptKind,
    ) {
        let changed = orig != &buf[..];
        self.put_private(blk, buf, Kind::Xattr, recognised, changed);
        self.skip(Unscrambled::Scrubbed(Problem {
            ino: None,
            kind: ProblemKind::Corrupt(kind),
        }));
    }

    /// The journal: everything after its superblock becomes zeros (a clean journal holds
    /// only stale copies; a journal needing recovery can no longer be replayed).
    fn journal(&mut self, ino: u32, inode: &Inode) -> Result<()> {
        // Every mapped block, also those beyond i_size: e2image copies them all, and an old
        // log there is as private as inside.
        let pieces = match self.map(ino, inode, u64::MAX) {
            Ok(p) => p,
            Err(e) => {
                let problem = Problem::from_error(Some(ino), e)?;
                self.skip(Unscrambled::JournalKept { ino, problem });
                return Ok(());
            }
        };
        for p in pieces {
            // Logical block 0 is the journal superblock: kept.
            let (s, n) = if p.lblk == 0 {
                (p.pblk.saturating_add(1), p.len.saturating_sub(1))
            } else {
                (p.pblk, p.len)
            };
            let e = s.saturating_add(n).min(FsBlock(self.fs.sb.blocks_count));
            // Zero s..e but the fixed metadata a damaged map may claim (named once).
            let mut at = s;
            while at < e {
                let (upto, next) = match self.fixed_in(&(at..e)) {
                    Some(f) => {
                        let role = Role::JournalBlock { ino };
                        self.skip(corrupt(
                            Some(ino),
                            CorruptKind::BlockIsMetadata {
                                role,
                                block: f.start.get(),
                            },
                        ));
                        (f.start, f.end)
                    }
                    None => (e, e),
                };
                if at < upto {
                    self.ov.zero(at..upto);
                    self.rep.journal_blocks = self
                        .rep
                        .journal_blocks
                        .saturating_add(upto.saturating_since(at));
                }
                at = next;
            }
        }
        if self.fs.sb.has_incompat(feature::INCOMPAT_RECOVER) {
            self.skip(Unscrambled::JournalNeededRecovery);
        }
        Ok(())
    }

    /// Clear the free-text fields of the superblock(s) the image holds
    /// ([`SUPERBLOCK_TEXT_FIELDS`]).
    fn superblocks(&mut self) -> Result<()> {
        let bs = self.fs.sb.block_size;
        // The primary superblock is at byte 1024: block 1, or inside block 0.
        let blk = bs.block_of(SUPERBLOCK_OFFSET);
        let off = if bs.get() == 1024 { 0 } else { 1024 };
        let mut locs = vec![(blk, off)];
        if let Some(s) = self.fs.backup_superblock {
            locs.push((s, 0));
        }
        for (blk, off) in locs {
            let mut buf = self.block(blk, Role::Superblock)?;
            let Some(sbb) = buf.get_mut(off..).and_then(|b| b.get_mut(..1024)) else {
                continue;
            };
            if le::u16(sbb, 0x38) != 0xEF53 {
                continue;
            }
            let text = || SUPERBLOCK_TEXT_FIELDS.iter().map(|(_, r)| r.clone());
            if text().all(|r| sbb[r].iter().all(|&b| b == 0)) {
                continue;
            }
            let ok = le::u32(sbb, 0x3FC) == crc32c_raw(!0, &sbb[..0x3FC]);
            for r in text() {
                sbb[r].fill(0);
            }
            if self.csum && ok {
                let crc = crc32c_raw(!0, &sbb[..0x3FC]);
                le::set_u32(sbb, 0x3FC, crc);
            }
            self.ov.put(blk, buf);
            self.rep.superblock_strings = true;
        }
        Ok(())
    }

    /// The MMP block names the host and device that last used the filesystem.
    fn mmp(&mut self) -> Result<()> {
        let sb = &self.fs.sb;
        if !sb.has_incompat(feature::INCOMPAT_MMP) {
            return Ok(());
        }
        let blk = sb.mmp_block();
        if !self.valid_block(blk) {
            return Ok(());
        }
        let mut buf = self.block(blk, Role::MmpBlock)?;
        if le::u32(&buf, 0) != MMP_MAGIC {
            return Ok(());
        }
        // mmp_nodename[64] at 16, mmp_bdevname[32] at 80; checksum at 1020 (mmp is 1 KiB).
        if buf[16..112].iter().all(|&b| b == 0) {
            return Ok(());
        }
        let ok = le::u32(&buf, 1020) == crc32c_raw(self.csum_seed, &buf[..1020]);
        buf[16..112].fill(0);
        if self.csum && ok {
            let crc = crc32c_raw(self.csum_seed, &buf[..1020]);
            le::set_u32(&mut buf, 1020, crc);
        }
        self.ov.put(blk, buf);
        Ok(())
    }
}

/// Whether a block starts as a directory block does: its first entry's header is one
/// e2fsck accepts (a `rec_len` of at least 12, a multiple of 4 inside the block, with room
/// for the name). Text, block numbers and xattr headers do not form one.
fn dir_head_ok(b: &[u8]) -> bool {
    let bs = b.len();
    let (Some(raw), Some(&name_len)) = (le::get_u16(b, 4), b.get(6)) else {
        return false;
    };
    let r = rec_len(raw, bs);
    r >= 12 && r.is_multiple_of(4) && r <= bs && usize::from(name_len).saturating_add(8) <= r
}

/// Whether directory block `lblk` of an indexed directory is an index block: the dx_root
/// (`.` and `..` in place) or a node (one empty entry over the whole block). Their bytes
/// are hashes and block numbers, never names; damage in them stays as it is.
fn is_index_block(b: &[u8], lblk: u64) -> bool {
    let bs = b.len();
    if lblk == 0 {
        return b.get(8..9) == Some(b".") && b.get(20..22) == Some(b"..");
    }
    le::get_u32(b, 0) == Some(0)
        && le::get_u16(b, 4).is_some_and(|r| rec_len(r, bs) == bs)
        && b.get(6..8) == Some(&[0, 0])
}

/// Replace a symlink target with generated characters of the same length; NUL bytes stay
/// where they were (e2fsck judges a target by its length up to the first NUL).
fn scrub_target(seed: u64, slot: Slot, dst: &mut [u8]) {
    let zeros: Vec<usize> = (0..dst.len()).filter(|&i| dst[i] == 0).collect();
    generate(seed, slot, 0, NAME_CHARS, dst);
    for i in zeros {
        dst[i] = 0;
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn dir_head_ok_tells_directory_blocks_from_other_content() {
        let mut b = vec![0u8; 1024];
        // `.`: inode 2, rec_len 12, name_len 1.
        le::set_u32(&mut b, 0, 2);
        le::set_u16(&mut b, 4, 12);
        b[6] = 1;
        b[8] = b'.';
        assert!(dir_head_ok(&b));
        // One entry over the whole block (an empty block, an htree node).
        le::set_u16(&mut b, 4, 1024);
        assert!(dir_head_ok(&b));
        // A rec_len that is not a multiple of 4, runs past the block, or leaves no room
        // for the name.
        for (rec, name_len) in [(14u16, 1u8), (1028, 1), (12, 5)] {
            le::set_u16(&mut b, 4, rec);
            b[6] = name_len;
            assert!(!dir_head_ok(&b), "rec_len {rec}, name_len {name_len}");
        }
        // Text, an xattr block header, an indirect block.
        assert!(!dir_head_ok(
            &b"zqxmark file data, plain text...".repeat(32)
        ));
        let mut x = vec![0u8; 1024];
        le::set_u32(&mut x, 0, XATTR_MAGIC);
        le::set_u32(&mut x, 4, 1);
        le::set_u32(&mut x, 8, 1);
        assert!(!dir_head_ok(&x));
        let ind: Vec<u8> = (1700u32..1956).flat_map(le::bytes_u32).collect();
        assert!(!dir_head_ok(&ind));
    }

    #[test]
    fn kinds_order_content_first() {
        // A recognised reading beats any that is not; among equals the later kind wins.
        assert!((true, Kind::Symlink) > (false, Kind::Dir));
        assert!((false, Kind::Dir) > (false, Kind::Xattr));
        assert!((true, Kind::Dir) > (true, Kind::Xattr));
    }
}
