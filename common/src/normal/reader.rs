//! Reading a normal e2image image: the header, superblock, descriptors, inode tables and
//! bitmaps, and [`FsView`], the blocks the image holds placed at their filesystem positions.
//!
//! Positions inside a buffer or below an end that was itself checked use `saturating_*`,
//! which cannot saturate there; everything derived from the image is checked.

use std::collections::BTreeMap;
use std::ops::Range;

use super::{HEADER_SIZE, Header, Layout};
use crate::blockmap::{BlockMap, BlockRun};
use crate::error::CorruptKind;
use crate::ext4::Superblock;
use crate::ext4::bitmap::{self, Bitmaps};
use crate::ext4::desc::{BG_BLOCK_UNINIT, BG_INODE_UNINIT, DescTable};
use crate::ext4::superblock::SUPERBLOCK_SIZE;
use crate::io::ReadAt;
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// An opened, validated normal image.
pub struct NormalImage<R> {
    src: R,
    header: Header,
    sb: Superblock,
    desc: DescTable,
    layout: Layout,
    bitmaps: Bitmaps,
}

/// Read `buf.len()` bytes of the image at `offset`; a short read means the image is shorter
/// than its superblock says.
pub(crate) fn read_image<R: ReadAt + ?Sized>(src: &R, buf: &mut [u8], offset: u64) -> Result<()> {
    let n = src.read_at(buf, offset)?;
    if n < buf.len() {
        return Err(CorruptKind::NormalTruncated {
            len: src.size(),
            expected: offset.saturating_add(buf.len() as u64),
        }
        .into());
    }
    Ok(())
}

/// A buffer of `len` bytes for a section whose size was checked against the image size.
fn section(len: u64) -> Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| CorruptKind::NormalLayoutOverflow {
        field: "a section size",
    })?;
    Ok(vec![0u8; len])
}

impl NormalImage<crate::io::FileSource> {
    /// Open the normal image in the file at `path`: a regular file or block device, since
    /// the image is read by position. A pipe (a process substitution, `/dev/stdin`) is
    /// refused with what to do, and a FIFO without a writer is refused, not waited for.
    pub fn open_file(path: &std::path::Path) -> Result<Self> {
        // open_plain refuses anything else unopened; here with what to do instead.
        let file = crate::io::FileSource::open_plain(path).map_err(|e| match e {
            Error::InvalidInput(_) => Error::InvalidInput(
                "not a seekable file or block device (a pipe or process substitution?): a normal image is read by position; save it to a file first".into(),
            ),
            e => e,
        })?;
        Self::open(file)
    }
}

impl<R: ReadAt> NormalImage<R> {
    /// Open and validate: the header's magic and block size, the superblock (libext2fs's
    /// checks, block size equal to the header's), the section offsets (exactly where e2image
    /// puts them) and the length (a truncated image is refused). Loads the descriptors and the
    /// bitmaps as libext2fs does for an image file (then marks BLOCK_UNINIT groups' metadata).
    pub fn open(src: R) -> Result<Self> {
        let mut hb = [0u8; HEADER_SIZE];
        let n = src.read_at(&mut hb, 0)?;
        let header = Header::parse(&hb[..n.min(HEADER_SIZE)])?;
        // The superblock is the image's second block.
        let mut raw = [0u8; SUPERBLOCK_SIZE];
        read_image(&src, &mut raw, header.fs_blocksize.bytes())?;
        let sb = Superblock::parse(&raw, Some(header.fs_blocksize))?;
        if sb.uuid() != header.fs_uuid {
            return Err(CorruptKind::NormalUuid.into());
        }
        bitmap::check_geometry(&sb)?;
        let layout = Layout::new(&sb)?;
        let expect = [
            ("offset_inode", header.offset_inode, layout.offset_inode),
            (
                "offset_blockmap",
                header.offset_blockmap,
                layout.offset_blockmap,
            ),
            (
                "offset_inodemap",
                header.offset_inodemap,
                layout.offset_inodemap,
            ),
        ];
        for (field, value, expected) in expect {
            if u64::from(value) != expected {
                return Err(CorruptKind::NormalHeaderOffset {
                    field,
                    value,
                    expected,
                }
                .into());
            }
        }
        if src.size() < layout.size {
            return Err(CorruptKind::NormalTruncated {
                len: src.size(),
                expected: layout.size,
            }
            .into());
        }
        // Every section lies inside the image, whose size was just checked. That size may
        // be holes (normal images are sparse): the sections below are allocated from the
        // superblock's claims, so its descriptors, which a real filesystem never leaves
        // zero, must be data in the image first (a 264 KiB image claiming 2^32 blocks took
        // 560 MiB of bitmaps before failing on its first descriptor).
        if layout.desc_len > crate::ext4::fs::DESC_CHECK_FROM as u64 {
            let desc = layout.offset_desc..layout.offset_desc.saturating_add(layout.desc_len);
            let stored = crate::ext4::fs::stored_in(&src, desc, layout.desc_len)?;
            if stored < layout.desc_len {
                return Err(CorruptKind::NormalDescriptorsMissing {
                    len: layout.desc_len,
                    stored,
                }
                .into());
            }
        }
        let mut raw_desc = section(layout.desc_len)?;
        read_image(&src, &mut raw_desc, layout.offset_desc)?;
        let desc = DescTable::new(raw_desc, &sb);
        let mut bitmaps = Bitmaps {
            block: section(layout.blockmap_bytes)?,
            inode: section(layout.inodemap_bytes)?,
        };
        read_image(&src, &mut bitmaps.block, layout.offset_blockmap)?;
        read_image(&src, &mut bitmaps.inode, layout.offset_inodemap)?;
        bitmap::mark_uninit_group_metadata(&sb, &desc, &mut bitmaps.block);
        Ok(NormalImage {
            src,
            header,
            sb,
            desc,
            layout,
            bitmaps,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }
    pub fn desc(&self) -> &DescTable {
        &self.desc
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    /// The in-memory bitmaps (as libext2fs loads them from the image).
    pub fn bitmaps(&self) -> &Bitmaps {
        &self.bitmaps
    }
    pub fn source(&self) -> &R {
        &self.src
    }

    /// Group `g`'s inode table where its descriptor puts it, which must be inside the
    /// filesystem. The image holds every group's table; one that cannot be placed makes an
    /// image no tool writes out (e2image -r refuses it too: "Corrupt group descriptor"),
    /// rather than a raw image or an install silently without those inodes.
    pub fn inode_table(&self, group: u32) -> Result<BlockRun> {
        let block = self.desc.inode_table(group);
        if block == FsBlock(0) {
            return Err(CorruptKind::NormalInodeTableMissing { group }.into());
        }
        let blocks = u64::from(self.sb.inode_blocks_per_group);
        block
            .checked_add(blocks)
            .filter(|&e| block >= self.sb.first_block() && e.get() <= self.sb.blocks_count)
            .map(|_| BlockRun::new(block, blocks))
            .ok_or_else(|| {
                CorruptKind::NormalInodeTableOutside {
                    group,
                    block: block.get(),
                    blocks,
                    fs_blocks: self.sb.blocks_count,
                }
                .into()
            })
    }

    /// Read from group `g`'s inode table, starting `offset` bytes into it.
    pub fn read_inode_table(&self, g: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let at = self
            .layout
            .inode_table_offset(g)
            .and_then(|t| t.checked_add(offset))
            .filter(|_| {
                g < self.sb.group_count
                    && offset.saturating_add(buf.len() as u64) <= self.layout.itable_len
            })
            .ok_or_else(|| {
                Error::InvalidInput(format!("inode table read past group {g}'s table"))
            })?;
        read_image(&self.src, buf, at)
    }

    /// Group `g`'s block bitmap block as libext2fs writes it, or `None` when the library would
    /// not write it (BLOCK_UNINIT with descriptor checksums, or no valid location).
    pub fn block_bitmap_block(&self, g: u32) -> Option<Vec<u8>> {
        let loc = self.desc.block_bitmap(g);
        if loc == FsBlock(0)
            || loc.get() >= self.sb.blocks_count
            || (self.sb.has_group_desc_csum() && self.desc.has_flag(g, BG_BLOCK_UNINIT))
        {
            return None;
        }
        Some(bitmap::block_bitmap_block(&self.sb, &self.bitmaps.block, g))
    }

    /// Group `g`'s inode bitmap block as libext2fs writes it, or `None`.
    pub fn inode_bitmap_block(&self, g: u32) -> Option<Vec<u8>> {
        let loc = self.desc.inode_bitmap(g);
        if loc == FsBlock(0)
            || loc.get() >= self.sb.blocks_count
            || (self.sb.has_group_desc_csum() && self.desc.has_flag(g, BG_INODE_UNINIT))
        {
            return None;
        }
        Some(bitmap::inode_bitmap_block(&self.sb, &self.bitmaps.inode, g))
    }

    /// The blocks the image holds, at their filesystem positions: see [`FsView`]. Fails on
    /// an inode table that cannot be placed (see [`Self::inode_table`]).
    pub fn fs_view(&self) -> Result<FsView<'_, R>> {
        FsView::new(self)
    }
}

/// Where a piece of a [`FsView`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    /// Image bytes.
    Image,
    /// A group's block bitmap block as libext2fs writes it.
    BlockBitmap(u32),
    /// A group's inode bitmap block as libext2fs writes it.
    InodeBitmap(u32),
}

/// A piece of a [`FsView`]: `[start, end)` in filesystem bytes, from `src` starting at byte
/// `base` of that source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    end: u64,
    src: Src,
    base: u64,
}

/// The filesystem as far as a normal image knows it, as a [`ReadAt`] over filesystem byte
/// offsets (size `blocks_count * bs`):
/// * the primary superblock at byte 1024 (the rest of its block reads as zeros);
/// * the descriptor blocks at their primary locations (meta_bg: in the first group of each
///   meta group, after its superblock backup);
/// * every group's inode table at its descriptor location;
/// * block and inode bitmap blocks (as libext2fs writes them: the group's bits, then 0xFF)
///   of groups that are not BLOCK_UNINIT/INODE_UNINIT under descriptor checksums.
///
/// Everything else reads as zeros. [`FsView::block_map`] lists the blocks that hold something.
/// Should damaged descriptors make pieces overlap, the superblock wins over descriptors, which
/// win over bitmaps, which win over inode tables (the order `e2i-install` writes them in).
pub struct FsView<'a, R> {
    img: &'a NormalImage<R>,
    /// start byte → piece; disjoint.
    pieces: BTreeMap<u64, Piece>,
    size: u64,
    bs: BlockSize,
}

impl<'a, R: ReadAt> FsView<'a, R> {
    fn new(img: &'a NormalImage<R>) -> Result<Self> {
        let sb = &img.sb;
        let bs = img.layout.block_size;
        let mut v = FsView {
            img,
            pieces: BTreeMap::new(),
            // Layout::new checked that this product fits.
            size: sb.fs_bytes(),
            bs,
        };
        // Lowest precedence first. Blocks below blocks_count have byte offsets (the
        // product above fits), so `v.blocks` finds every range that passes these checks.
        for g in 0..sb.group_count {
            let t = img.inode_table(g)?;
            let base =
                img.layout
                    .inode_table_offset(g)
                    .ok_or(CorruptKind::NormalLayoutOverflow {
                        field: "an inode table offset",
                    })?;
            if let Some(r) = v.blocks(t.start, t.len) {
                v.paint(r, Src::Image, base);
            }
        }
        for g in 0..sb.group_count {
            if img.block_bitmap_block(g).is_some()
                && let Some(r) = v.blocks(img.desc.block_bitmap(g), 1)
            {
                v.paint(r, Src::BlockBitmap(g), 0);
            }
            if img.inode_bitmap_block(g).is_some()
                && let Some(r) = v.blocks(img.desc.inode_bitmap(g), 1)
            {
                v.paint(r, Src::InodeBitmap(g), 0);
            }
        }
        for (i, blk) in (0u64..).zip(primary_descriptor_blocks(sb)) {
            let base = bs
                .bytes_of(i)
                .and_then(|o| o.checked_add(img.layout.offset_desc));
            if blk.get() < sb.blocks_count
                && let (Some(r), Some(base)) = (v.blocks(blk, 1), base)
            {
                v.paint(r, Src::Image, base);
            }
        }
        v.paint(1024..2048, Src::Image, img.layout.offset_super);
        Ok(v)
    }

    /// Filesystem bytes of `n` blocks from `block`.
    fn blocks(&self, block: FsBlock, n: u64) -> Option<Range<u64>> {
        BlockRun::new(block, n).bytes(self.bs)
    }

    /// Insert `r`, cutting away whatever it overlaps.
    fn paint(&mut self, r: Range<u64>, src: Src, base: u64) {
        let Range { start, end } = r;
        let over: Vec<(u64, Piece)> = self
            .pieces
            .range(..end)
            .rev()
            .take_while(|(_, p)| p.end > start)
            .map(|(s, p)| (*s, *p))
            .collect();
        for (s, p) in over {
            self.pieces.remove(&s);
            if s < start {
                self.pieces.insert(s, Piece { end: start, ..p });
            }
            if p.end > end {
                // s < end (the range above): the tail starts end - s bytes into the piece,
                // whose source offsets were checked when it was painted.
                self.pieces.insert(
                    end,
                    Piece {
                        base: p.base.saturating_add(end.saturating_sub(s)),
                        ..p
                    },
                );
            }
        }
        self.pieces.insert(start, Piece { end, src, base });
    }

    /// The filesystem blocks that hold image data.
    pub fn block_map(&self) -> BlockMap {
        let bs = self.bs;
        let mut runs: Vec<BlockRun> = Vec::new();
        for (&s, p) in &self.pieces {
            // Pieces are sorted and disjoint: b1 > b0 >= the last run's start.
            let (b0, b1) = (bs.block_of(s), FsBlock(bs.blocks_covering(p.end)));
            match runs.last_mut() {
                Some(r) if r.end() >= b0 => r.len = r.len.max(b1.saturating_since(r.start)),
                _ => runs.push(BlockRun::new(b0, b1.saturating_since(b0))),
            }
        }
        BlockMap::from_runs(runs, self.img.sb.blocks_count)
    }
}

impl<R: ReadAt> ReadAt for FsView<'_, R> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let left = self.size.saturating_sub(offset);
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let buf = &mut buf[..n];
        buf.fill(0);
        // offset + n <= size: below, every position lies in offset..end.
        let end = offset.saturating_add(n as u64);
        let first = self
            .pieces
            .range(..=offset)
            .next_back()
            .map_or(offset, |(&s, _)| s);
        for (&s, p) in self.pieces.range(first..end) {
            if p.end <= offset {
                continue;
            }
            let lo = s.max(offset);
            let hi = p.end.min(end);
            // Both lie in offset..=end: indexes of `buf`.
            let at = |p: u64| {
                usize::try_from(p.saturating_sub(offset))
                    .unwrap_or(n)
                    .min(n)
            };
            let Some(dst) = buf.get_mut(at(lo)..at(hi)) else {
                continue;
            };
            let from = p.base.saturating_add(lo.saturating_sub(s));
            let block = match p.src {
                Src::Image => {
                    read_image(&self.img.src, dst, from)?;
                    continue;
                }
                Src::BlockBitmap(g) => self.img.block_bitmap_block(g),
                Src::InodeBitmap(g) => self.img.inode_bitmap_block(g),
            };
            let at = usize::try_from(from).ok();
            if let Some(b) = block.as_deref().and_then(|b| {
                let at = at?;
                b.get(at..at.checked_add(dst.len())?)
            }) {
                dst.copy_from_slice(b);
            }
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        let first = self
            .pieces
            .range(..=offset)
            .next_back()
            .filter(|(_, p)| p.end > offset)
            .or_else(|| self.pieces.range(offset..).next())
            .map(|(&s, p)| (s, p.end));
        let Some((s, mut e)) = first else {
            return Ok(None);
        };
        for (&s2, p) in self.pieces.range(e..) {
            if s2 != e {
                break;
            }
            e = p.end;
        }
        Ok(Some(s.max(offset)..e))
    }
}

/// The primary location of every descriptor block, in order (what e2image gathers). A
/// location past the 64-bit range saturates, and lies past the filesystem for the callers.
pub fn primary_descriptor_blocks(sb: &Superblock) -> Vec<FsBlock> {
    let (_, old0, _) = bitmap::super_and_bgd_loc(sb, 0);
    let first_meta = if sb.has_meta_bg() {
        sb.first_meta_bg.min(sb.desc_blocks)
    } else {
        sb.desc_blocks
    };
    (0..sb.desc_blocks)
        .map(|i| {
            if i < first_meta {
                old0.saturating_add(u64::from(i))
            } else {
                sb.descriptor_block_loc(sb.first_block(), i)
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)] // tests compute expected values freely
mod tests {
    use super::*;
    use crate::ext4::{Filesystem, OpenOptions};
    use crate::io::MemSource;
    use crate::normal::{HeaderInfo, NormalTarget, write_normal};
    use crate::progress::NoProgress;

    fn sample_image() -> (Vec<u8>, Vec<u8>) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/sample.ext4");
        let fsb = std::fs::read(path).expect("testdata/sample.ext4");
        let fs = Filesystem::open(MemSource(fsb.clone()), OpenOptions::default()).unwrap();
        let mut out = Vec::new();
        write_normal(
            &fs,
            &HeaderInfo::default(),
            NormalTarget::Stream(&mut out),
            &mut NoProgress,
        )
        .unwrap();
        (fsb, out)
    }

    #[test]
    fn round_trip_of_the_sample() {
        let (fsb, img) = sample_image();
        let ni = NormalImage::open(MemSource(img)).unwrap();
        assert_eq!(ni.superblock().raw()[..], fsb[1024..2048]);
        let view = ni.fs_view().unwrap();
        let map = view.block_map();
        assert!(map.contains(FsBlock(1)) && map.contains(FsBlock(2)));
        let bs = 1024usize;
        for r in map.runs() {
            for b in r.start.get()..r.end().get() {
                let mut got = vec![0u8; bs];
                view.read_at(&mut got, b * 1024).unwrap();
                let at = b as usize * bs;
                assert_eq!(got, fsb[at..at + bs], "block {b}");
            }
        }
        // A read straddling pieces and holes.
        let mut big = vec![0xEEu8; 300 * 1024];
        assert_eq!(view.read_at(&mut big, 512).unwrap(), big.len());
        for r in map.runs_in(FsBlock(0)..FsBlock(301)) {
            let (s, e) = (
                r.start.get() as usize * bs,
                r.end().get().min(300) as usize * bs,
            );
            if s >= 512 && e > s {
                assert_eq!(big[s - 512..e - 512], fsb[s..e]);
            }
        }
        let plan = crate::ops::install::plan(&ni, 1).unwrap();
        assert_eq!(plan.last().map(|w| w.offset), Some(1024));
    }

    fn kind<T>(r: Result<T>) -> CorruptKind {
        match r {
            Err(Error::Corrupt(k)) => k,
            Err(e) => panic!("not a corruption: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    /// Each damage of the image is reported as the kind naming it, with its location. The
    /// sample has one group of 1 KiB blocks: header, superblock and one descriptor block,
    /// then 16 inode-table blocks at 3072, bitmaps at 19456 and 20480, 21504 bytes in all.
    #[test]
    fn damage_is_located() {
        use super::super::field;
        use crate::bytes::le;
        let (_, img) = sample_image();
        assert_eq!(img.len(), 21504);
        let open = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = img.clone();
            f(&mut b);
            NormalImage::open(MemSource(b)).map(|_| ())
        };
        use CorruptKind as K;
        assert_eq!(
            kind(open(&|b| b.truncate(100))),
            K::NormalHeaderShort { len: 100 }
        );
        assert_eq!(
            kind(open(&|b| b.truncate(1500))),
            K::NormalTruncated {
                len: 1500,
                expected: 2048
            }
        );
        assert_eq!(
            kind(open(&|b| b.truncate(21503))),
            K::NormalTruncated {
                len: 21503,
                expected: 21504
            }
        );
        assert_eq!(
            kind(open(&|b| le::set_u32(b, field::MAGIC, 1))),
            K::NormalMagic { magic: 1 }
        );
        assert_eq!(
            kind(open(&|b| le::set_u32(b, field::FS_BLOCKSIZE, 0))),
            K::NormalBlockSize { block_size: 0 }
        );
        assert_eq!(kind(open(&|b| b[field::FS_UUID] ^= 1)), K::NormalUuid);
        for (name, at, expected) in [
            ("offset_inode", field::OFFSET_INODE, 3072),
            ("offset_blockmap", field::OFFSET_BLOCKMAP, 19456),
            ("offset_inodemap", field::OFFSET_INODEMAP, 20480),
        ] {
            assert_eq!(
                kind(open(&|b| le::set_u32(b, at, u32::MAX))),
                K::NormalHeaderOffset {
                    field: name,
                    value: u32::MAX,
                    expected
                }
            );
        }
        // The install plan checks the image's descriptors (group 0's inode table, lo and
        // hi halves at bytes 8 and 0x28 of the 64-byte descriptor at 2048).
        let plan = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = img.clone();
            f(&mut b);
            let ni = NormalImage::open(MemSource(b)).unwrap();
            crate::ops::install::plan(&ni, 1).map(|_| ())
        };
        assert_eq!(
            kind(plan(&|b| {
                le::set_u32(b, 2048 + 8, 0);
                le::set_u32(b, 2048 + 0x28, 0);
            })),
            K::NormalInodeTableMissing { group: 0 }
        );
        assert_eq!(
            kind(plan(&|b| {
                le::set_u32(b, 2048 + 8, u32::MAX);
                le::set_u32(b, 2048 + 0x28, u32::MAX);
            })),
            K::NormalInodeTableOutside {
                group: 0,
                block: u64::MAX,
                blocks: 16,
                fs_blocks: 768
            }
        );
        assert_eq!(
            kind(plan(&|b| le::set_u32(b, 2048 + 8, 760))),
            K::NormalInodeTableOutside {
                group: 0,
                block: 760,
                blocks: 16,
                fs_blocks: 768
            }
        );
        plan(&|_| {}).unwrap();
    }

    /// Damage in the metadata part of an image — flipped bytes, and full-width values (both
    /// halves of 64-bit fields at once) in header, superblock (checksum then fixed, so the
    /// values get used) and descriptor fields, cuts: open, view, read and plan either work or
    /// fail with an error, never a panic (the debug test build checks overflow).
    #[test]
    fn mutated_images_never_panic() {
        use super::super::field;
        use crate::bytes::le;
        let (_, img) = sample_image();
        let meta_end = 4 * 1024 + 3 * 1024;
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // (image offset of the low half, of the high half or none)
        let sb = |o: usize| 1024 + o;
        let dsc = |o: usize| 2048 + o;
        let wide: [(usize, Option<usize>); 20] = [
            (field::OFFSET_SUPER, None),
            (field::OFFSET_INODE, None),
            (field::OFFSET_BLOCKMAP, None),
            (field::OFFSET_INODEMAP, None),
            (field::IMAGE_TIME, Some(field::IMAGE_TIME_HI)),
            (sb(0x00), None),             // s_inodes_count
            (sb(0x04), Some(sb(0x150))),  // s_blocks_count
            (sb(0x14), None),             // s_first_data_block
            (sb(0x18), None),             // s_log_block_size
            (sb(0x1C), None),             // s_log_cluster_size
            (sb(0x20), None),             // s_blocks_per_group
            (sb(0x24), None),             // s_clusters_per_group
            (sb(0x28), None),             // s_inodes_per_group
            (sb(0x58), None),             // s_inode_size (and block group nr)
            (sb(0xFC), None),             // s_desc_size and default mount options
            (sb(0x104), None),            // s_first_meta_bg
            (dsc(0x00), Some(dsc(0x20))), // block bitmap
            (dsc(0x04), Some(dsc(0x24))), // inode bitmap
            (dsc(0x08), Some(dsc(0x28))), // inode table
            (dsc(0x0C), Some(dsc(0x2C))), // free counts
        ];
        let values = [u32::MAX, 0, 1 << 31, 1, 0x8000, 767];
        let mut opened = 0;
        for _ in 0..3000 {
            let mut m = img.clone();
            for _ in 0..(1 + next() % 4) {
                if next() % 2 == 0 {
                    let (lo, hi) = wide[(next() % wide.len() as u64) as usize];
                    let v = values[(next() % values.len() as u64) as usize];
                    le::set_u32(&mut m, lo, v);
                    if let Some(hi) = hi {
                        le::set_u32(&mut m, hi, values[(next() % values.len() as u64) as usize]);
                    }
                } else {
                    let at = (next() % meta_end as u64) as usize;
                    m[at] = next() as u8;
                }
            }
            if next() % 2 == 0 {
                let mut raw = [0u8; 1024];
                raw.copy_from_slice(&m[1024..2048]);
                crate::ext4::csum::superblock_csum_set(&mut raw);
                m[1024..2048].copy_from_slice(&raw);
            }
            if next() % 8 == 0 {
                m.truncate((next() % m.len() as u64) as usize);
            }
            let Ok(ni) = NormalImage::open(MemSource(m)) else {
                continue;
            };
            opened += 1;
            let mut buf = vec![0u8; 8192];
            if let Ok(view) = ni.fs_view() {
                let map = view.block_map();
                for r in map.runs().iter().take(8) {
                    let _ = view.read_at(&mut buf, r.start.get() * 1024);
                }
                let _ = view.read_at(&mut buf, next());
                let _ = view.data_region(0);
                let _ = view.data_region(next());
            }
            let mut it = vec![0u8; 1024];
            let _ = ni.read_inode_table(0, next() % 20_000, &mut it);
            let _ = crate::ops::install::plan(&ni, 1);
        }
        // Most damage must get past open, or this would test only the header checks.
        assert!(opened > 300, "only {opened} of 3000 damaged images opened");
    }
}
