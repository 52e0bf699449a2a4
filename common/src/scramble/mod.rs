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

mod dir;
mod names;
mod plan;
mod xattr;

use std::collections::BTreeMap;
use std::ops::Range;

use crate::Result;
use crate::io::ReadAt;

pub use plan::plan;

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
    /// The superblock's label or last-mounted path was cleared.
    pub superblock_strings: bool,
    /// Blocks whose bytes the overlay replaces.
    pub patched_blocks: u64,
    /// Things left as they were, each with the reason.
    pub not_scrambled: Vec<String>,
}

/// Changed blocks: new bytes, or zeros for whole ranges.
#[derive(Debug, Default)]
pub struct Overlay {
    block_size: u64,
    blocks: BTreeMap<u64, Box<[u8]>>,
    /// Sorted, disjoint block ranges read as zeros.
    zeros: Vec<Range<u64>>,
}

impl Overlay {
    pub fn new(block_size: u32) -> Self {
        Overlay {
            block_size: u64::from(block_size),
            ..Default::default()
        }
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The replacement of block `blk`, if any.
    pub fn get(&self, blk: u64) -> Option<&[u8]> {
        self.blocks.get(&blk).map(|b| &b[..])
    }

    /// Replace block `blk` (must be exactly one block).
    pub fn put(&mut self, blk: u64, data: Vec<u8>) {
        debug_assert_eq!(data.len() as u64, self.block_size);
        self.blocks.insert(blk, data.into_boxed_slice());
    }

    /// Make blocks `r` read as zeros (ranges must be added in increasing order or merged).
    pub fn zero(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        self.zeros.push(r);
    }

    fn finish(&mut self) {
        self.zeros.sort_by_key(|r| r.start);
        let mut out: Vec<Range<u64>> = Vec::with_capacity(self.zeros.len());
        for r in self.zeros.drain(..) {
            match out.last_mut() {
                Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
                _ => out.push(r),
            }
        }
        self.zeros = out;
        // A block both patched and zeroed reads as its patch.
    }

    pub fn patched_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Apply the overlay to `buf`, which holds the source's bytes from `offset`.
    pub fn apply(&self, buf: &mut [u8], offset: u64) {
        let bs = self.block_size;
        if buf.is_empty() || bs == 0 {
            return;
        }
        let end = offset.saturating_add(buf.len() as u64);
        let first = offset / bs;
        let last = (end - 1) / bs;
        // Zero ranges.
        let mut i = self.zeros.partition_point(|r| r.end <= first);
        while let Some(r) = self.zeros.get(i) {
            if r.start > last {
                break;
            }
            let s = r.start.max(first).saturating_mul(bs).max(offset);
            let e = r.end.saturating_mul(bs).min(end);
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize].fill(0);
            }
            i += 1;
        }
        for (&blk, data) in self.blocks.range(first..=last) {
            let bstart = blk.saturating_mul(bs);
            let s = bstart.max(offset);
            let e = bstart.saturating_add(bs).min(end);
            buf[(s - offset) as usize..(e - offset) as usize]
                .copy_from_slice(&data[(s - bstart) as usize..(e - bstart) as usize]);
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

    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        let bs = self.overlay.block_size.max(1);
        let inner = self.inner.data_region(offset)?;
        // A patched block inside a hole of the source is data too.
        let next_patch = self
            .overlay
            .blocks
            .range(offset / bs..)
            .next()
            .map(|(&b, _)| {
                b.saturating_mul(bs).max(offset)..b.saturating_add(1).saturating_mul(bs)
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

/// libext2fs's `ext2fs_crc32c_le`: CRC32C without the initial and final inversion.
pub(crate) fn crc32c_raw(crc: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemSource;

    #[test]
    fn overlay_patches_and_zeros() {
        let src = MemSource((0..8192u32).map(|i| (i % 251) as u8 + 1).collect());
        let mut ov = Overlay::new(1024);
        ov.put(2, vec![0xAB; 1024]);
        ov.zero(5..7);
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
