//! `-s`: scrambling as a transform layer between the source and every image writer.
//!
//! [`plan`] reads the filesystem's metadata once (inode tables, directories, xattr blocks,
//! symlinks, the journal's map) and computes an [`Overlay`]: the new bytes of every block it
//! changes, plus block ranges that become zeros (the journal's log). [`ScrambledSource`]
//! wraps any [`ReadAt`] and serves the overlay on top of it, so a writer that reads through
//! it produces a scrambled image without knowing about scrambling:
//!
//! ```text
//! let (overlay, report) = scramble::plan(&fs, seed)?;
//! let src = ScrambledSource::new(fs.src, overlay);   // then open/write from `src`
//! ```
//!
//! Memory holds only the changed metadata blocks (directory blocks, xattr blocks, slow
//! symlink blocks, changed inode-table blocks, the superblock's block), never data.
//! Everything is deterministic for a given source and seed.
//!
//! The tree walks and the inode-table pass are ext4's ([`crate::ext4::walk`],
//! [`crate::ext4::itable`]); this module keeps only what is specific to scrambling.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

mod dir;
mod names;
mod plan;
mod xattr;

use std::collections::BTreeMap;
use std::ops::Range;

use std::fmt;

use crate::Result;
use crate::ext4::damage::{DirRegion, Problem, ProblemKind, XattrAt};
use crate::io::ReadAt;
use crate::units::{BlockSize, FsBlock};

pub(crate) use crate::ext4::csum::crc32c_raw;
pub use plan::{SUPERBLOCK_TEXT_FIELDS, plan};

/// The seed used when none is given (a fixed value: two runs give identical images).
pub const DEFAULT_SEED: u64 = 0x6532_6953_6372_616d;

/// What scrambling did, for the summary the tools print.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScrambleReport {
    /// Directory entries renamed (block and inline directories).
    pub names: u64,
    /// Of those, names that could not be made to hash into their htree leaf's range
    /// (renamed anyway; the index no longer finds them).
    pub names_out_of_range: u64,
    /// Directories scanned (block-based and inline).
    pub directories: u64,
    /// Symlink targets replaced (fast, slow and inline).
    pub symlinks: u64,
    /// Extended-attribute names replaced.
    pub xattr_names: u64,
    /// Extended-attribute values replaced.
    pub xattr_values: u64,
    /// Regular files whose inline data was zeroed.
    pub inline_files: u64,
    /// Journal blocks zeroed (everything after the journal superblock).
    pub journal_blocks: u64,
    /// The superblock's free-text fields (label, last-mounted path, error function names,
    /// mount options) were cleared.
    pub superblock_strings: bool,
    /// Blocks whose bytes the overlay replaces.
    pub patched_blocks: u64,
    /// Damaged directory blocks (and inline regions) scrubbed: the entries located after
    /// the damage renamed, every other byte after it zeroed.
    pub scrubbed_regions: u64,
    /// Things left as they were, each with the reason.
    pub not_scrambled: Vec<Unscrambled>,
}

/// Something `-s` left as it was, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unscrambled {
    /// Damaged or unreadable metadata: what could not be parsed stays as it was.
    Damaged(Problem),
    /// A damaged directory region, scrubbed: its damaged entry header stays as it was, the
    /// entries located after it were renamed, every other byte after it zeroed. Or a
    /// damaged xattr table (its problem is an xattr one): names and values zeroed, the
    /// headers e2fsck judges kept.
    Scrubbed(Problem),
    /// The directory's htree index could not be read: its names were renamed without
    /// their hash ranges.
    HtreeIgnored { ino: u32, problem: Problem },
    /// The journal's map could not be read: the journal is kept as it is.
    JournalKept { ino: u32, problem: Problem },
    /// Names of an encrypted directory (ciphertext) are kept.
    EncryptedNames { ino: u32 },
    /// An encrypted symlink target (ciphertext) is kept.
    EncryptedSymlink { ino: u32 },
    /// Encrypted inline data (ciphertext) is kept.
    EncryptedInlineData { ino: u32 },
    /// A fast symlink whose size claims more than `i_block` holds.
    FastSymlinkTooLong { ino: u32, len: u64 },
    /// A slow symlink whose size claims a block or more.
    SymlinkTooLong { ino: u32, len: u64 },
    /// Xattr values stored in EA inodes (file data) are kept.
    EaInodeValues { at: XattrAt, count: u64 },
    /// A directory hashed with a version e2i does not compute: renamed without hash ranges.
    HashVersion { ino: u32, version: u8 },
    /// Names that could not be made to hash into their htree leaf's range (renamed anyway).
    OutOfRange { ino: u32, count: u64 },
    /// No unused replacement exists for a `len`-byte name: renamed to one another entry
    /// has (the original is never kept).
    NoReplacement {
        ino: u32,
        region: DirRegion,
        offset: usize,
        len: usize,
    },
    /// The journal needed recovery: its log was zeroed, so the image cannot replay it.
    JournalNeededRecovery,
    /// Blocks `first..=last` are claimed by more than one owner (a directory, symlink,
    /// journal or xattr block that is also another inode's mapping block, and whose
    /// content is a map, not the private kind's): left as they are.
    Shared { first: FsBlock, last: FsBlock },
    /// Blocks `first..=last` are claimed by more than one owner (a directory, symlink,
    /// journal or xattr block that is also another file's data, or read as two private
    /// kinds): scrambled as the kind their content is, so another file's copy of them
    /// (with `-a`) is the scrambled one too.
    SharedScrambled { first: FsBlock, last: FsBlock },
}

impl fmt::Display for Unscrambled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Damaged(p) => write!(f, "{p}"),
            Self::Scrubbed(
                p @ Problem {
                    kind: ProblemKind::Corrupt(crate::error::CorruptKind::Xattr { .. }),
                    ..
                },
            ) => write!(
                f,
                "{p}; its names and values zeroed, the entry headers e2fsck judges kept"
            ),
            Self::Scrubbed(p) => write!(
                f,
                "{p}; the entries after it renamed where they could be located, their other bytes zeroed"
            ),
            Self::HtreeIgnored { problem, .. } => write!(
                f,
                "{problem}; names renamed without their htree hash ranges"
            ),
            Self::JournalKept { ino, problem } => {
                write!(f, "journal inode {ino}: {problem}; journal kept")
            }
            Self::EncryptedNames { ino } => {
                write!(
                    f,
                    "directory inode {ino}: encrypted names kept (ciphertext)"
                )
            }
            Self::EncryptedSymlink { ino } => {
                write!(f, "inode {ino}: encrypted symlink kept (ciphertext)")
            }
            Self::EncryptedInlineData { ino } => {
                write!(f, "inode {ino}: encrypted inline data kept (ciphertext)")
            }
            Self::FastSymlinkTooLong { ino, len } => {
                write!(f, "inode {ino}: fast symlink of {len} bytes")
            }
            Self::SymlinkTooLong { ino, len } => {
                write!(
                    f,
                    "inode {ino}: symlink of {len} bytes is longer than a block"
                )
            }
            Self::EaInodeValues { at, count } => {
                write!(
                    f,
                    "{at}: {count} values stored in EA inodes kept (file data)"
                )
            }
            Self::HashVersion { ino, version } => write!(
                f,
                "directory inode {ino}: hash version {version} not computed; names renamed without their hash range"
            ),
            Self::OutOfRange { ino, count } => write!(
                f,
                "directory inode {ino}: {count} names could not be made to hash into their htree leaf's range (renamed anyway)"
            ),
            Self::NoReplacement {
                ino,
                region,
                offset,
                len,
            } => write!(
                f,
                "inode {ino}: {region}: the {len}-byte name at byte {offset} has no unused replacement; renamed to one another entry has"
            ),
            Self::Shared { first, last } => {
                crate::ext4::damage::write_range(f, "block", first.get(), last.get())?;
                f.write_str(
                    " cross-linked (claimed by more than one owner) with a mapping block: kept as it is",
                )
            }
            Self::SharedScrambled { first, last } => {
                crate::ext4::damage::write_range(f, "block", first.get(), last.get())?;
                f.write_str(
                    " cross-linked (claimed by more than one owner): scrambled as the directory, symlink, xattr or journal block it holds, for every owner",
                )
            }
            Self::JournalNeededRecovery => f.write_str(
                "the journal needed recovery: its log was zeroed, so the image cannot replay it",
            ),
        }
    }
}

/// Changed blocks: new bytes, or zeros for whole ranges.
#[derive(Debug)]
pub struct Overlay {
    block_size: BlockSize,
    blocks: BTreeMap<FsBlock, Box<[u8]>>,
    /// Sorted, disjoint block ranges read as zeros.
    zeros: Vec<Range<FsBlock>>,
}

impl Overlay {
    pub fn new(block_size: BlockSize) -> Self {
        Overlay {
            block_size,
            blocks: BTreeMap::new(),
            zeros: Vec::new(),
        }
    }

    pub fn block_size(&self) -> BlockSize {
        self.block_size
    }

    /// The replacement of block `blk`, if any.
    pub fn get(&self, blk: FsBlock) -> Option<&[u8]> {
        self.blocks.get(&blk).map(|b| &b[..])
    }

    /// Replace block `blk` (must be exactly one block; anything else is ignored).
    pub fn put(&mut self, blk: FsBlock, data: Vec<u8>) {
        debug_assert_eq!(data.len(), self.block_size.as_usize());
        if data.len() == self.block_size.as_usize() {
            self.blocks.insert(blk, data.into_boxed_slice());
        }
    }

    /// Make blocks `r` read as zeros (ranges must be added in increasing order or merged).
    pub fn zero(&mut self, r: Range<FsBlock>) {
        if r.is_empty() {
            return;
        }
        self.zeros.push(r);
    }

    fn finish(&mut self) {
        self.zeros.sort_by_key(|r| r.start);
        let mut out: Vec<Range<FsBlock>> = Vec::with_capacity(self.zeros.len());
        for r in self.zeros.drain(..) {
            match out.last_mut() {
                Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
                _ => out.push(r),
            }
        }
        self.zeros = out;
        // A block both patched and zeroed reads as its patch.
    }

    /// Leave blocks `r` as the source has them: no patch, no zeros. Returns whether the
    /// overlay changed any of them.
    pub fn release(&mut self, r: Range<FsBlock>) -> bool {
        let patched: Vec<FsBlock> = self.blocks.range(r.clone()).map(|(&b, _)| b).collect();
        let mut changed = !patched.is_empty();
        for b in patched {
            self.blocks.remove(&b);
        }
        let mut out = Vec::with_capacity(self.zeros.len());
        for z in self.zeros.drain(..) {
            if z.end <= r.start || r.end <= z.start {
                out.push(z);
                continue;
            }
            changed = true;
            if z.start < r.start {
                out.push(z.start..r.start);
            }
            if r.end < z.end {
                out.push(r.end..z.end);
            }
        }
        self.zeros = out;
        changed
    }

    pub fn patched_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Apply the overlay to `buf`, which holds the source's bytes from `offset`.
    pub fn apply(&self, buf: &mut [u8], offset: u64) {
        let bs = self.block_size;
        if buf.is_empty() {
            return;
        }
        let end = offset.saturating_add(buf.len() as u64);
        let first = bs.block_of(offset);
        let last = bs.block_of(end.saturating_sub(1));
        // Where a block starts; blocks past 64-bit offsets lie past `end`.
        let start_of = |b: FsBlock| bs.offset_of(b).unwrap_or(u64::MAX);
        // `s..e` (bytes of the source, inside `offset..end`) as a range of `buf`.
        let in_buf = |s: u64, e: u64| -> Option<std::ops::Range<usize>> {
            let a = usize::try_from(s.checked_sub(offset)?).ok()?;
            let b = usize::try_from(e.checked_sub(offset)?).ok()?;
            Some(a..b)
        };
        // Zero ranges.
        let i = self.zeros.partition_point(|r| r.end <= first);
        for r in self.zeros.iter().skip(i).take_while(|r| r.start <= last) {
            let s = start_of(r.start.max(first)).max(offset);
            let e = start_of(r.end).min(end);
            if s < e
                && let Some(dst) = in_buf(s, e).and_then(|x| buf.get_mut(x))
            {
                dst.fill(0);
            }
        }
        for (&blk, data) in self.blocks.range(first..=last) {
            let bstart = start_of(blk);
            let s = bstart.max(offset);
            let e = bstart.saturating_add(bs.bytes()).min(end);
            let src = (|| {
                let a = usize::try_from(s.checked_sub(bstart)?).ok()?;
                let b = usize::try_from(e.checked_sub(bstart)?).ok()?;
                data.get(a..b)
            })();
            if let (Some(dst), Some(src)) = (in_buf(s, e).and_then(|x| buf.get_mut(x)), src)
                && dst.len() == src.len()
            {
                dst.copy_from_slice(src);
            }
        }
    }
}

/// A source with the scrambler's overlay applied: what every writer reads with `-s`.
pub struct ScrambledSource<S> {
    inner: S,
    overlay: Overlay,
}

impl<S: ReadAt> ScrambledSource<S> {
    pub fn new(inner: S, mut overlay: Overlay) -> Self {
        overlay.finish();
        ScrambledSource { inner, overlay }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }
}

impl<S: ReadAt> ReadAt for ScrambledSource<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        self.overlay.apply(&mut buf[..n], offset);
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn will_need(&self, offset: u64, len: u64) {
        self.inner.will_need(offset, len)
    }

    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        let bs = self.overlay.block_size;
        let inner = self.inner.data_region(offset)?;
        // A patched block inside a hole of the source is data too.
        let next_patch = self
            .overlay
            .blocks
            .range(bs.block_of(offset)..)
            .next()
            .map(|(&b, _)| {
                let start = bs.offset_of(b).unwrap_or(u64::MAX);
                start.max(offset)..start.saturating_add(bs.bytes())
            });
        Ok(match (inner, next_patch) {
            (Some(r), Some(p)) if p.start < r.start => Some(p.start..p.end.min(r.start)),
            (None, Some(p)) if p.start < self.size() => Some(p.start..p.end.min(self.size())),
            (r, _) => r,
        })
    }
}

impl<S> std::fmt::Debug for ScrambledSource<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrambledSource")
            .field("patched_blocks", &self.overlay.blocks.len())
            .field("zero_ranges", &self.overlay.zeros.len())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::io::MemSource;

    #[test]
    fn overlay_patches_and_zeros() {
        let src = MemSource((0..8192u32).map(|i| (i % 251) as u8 + 1).collect());
        let mut ov = Overlay::new(BlockSize::new(1024).unwrap());
        ov.put(FsBlock(2), vec![0xAB; 1024]);
        ov.zero(FsBlock(5)..FsBlock(7));
        let s = ScrambledSource::new(src.clone(), ov);
        let mut buf = vec![0u8; 8192];
        assert_eq!(s.read_at(&mut buf, 0).unwrap(), 8192);
        for (i, &b) in buf.iter().enumerate() {
            let blk = i / 1024;
            let want = match blk {
                2 => 0xAB,
                5 | 6 => 0,
                _ => src.0[i],
            };
            assert_eq!(b, want, "byte {i}");
        }
        // Unaligned read across a patched block.
        let mut small = vec![0u8; 100];
        s.read_at(&mut small, 2048 - 50).unwrap();
        assert_eq!(&small[..50], &src.0[1998..2048]);
        assert!(small[50..].iter().all(|&b| b == 0xAB));
        // ext2fs_crc32c_le(~0, "") is ~0; the seed of an all-zero UUID.
        assert_eq!(crc32c_raw(!0, b""), !0);
    }
}
