//! Reading a normal e2image image: the header, superblock, descriptors, inode tables and
//! bitmaps, and [`FsView`], the blocks the image holds placed at their filesystem positions.

use std::collections::BTreeMap;
use std::ops::Range;

use super::{HEADER_SIZE, Header, Layout};
use crate::blockmap::{BlockMap, Run};
use crate::ext4::Superblock;
use crate::ext4::bitmap::{self, Bitmaps};
use crate::ext4::desc::{BG_BLOCK_UNINIT, BG_INODE_UNINIT, DescTable};
use crate::ext4::superblock::SUPERBLOCK_SIZE;
use crate::io::ReadAt;
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

fn corrupt(detail: impl Into<String>) -> Error {
    Error::corrupt("normal e2image image", detail)
}

impl NormalImage<crate::io::FileSource> {
    /// Open the normal image in the file at `path`.
    pub fn open_file(path: &std::path::Path) -> Result<Self> {
        Self::open(crate::io::FileSource::open(path, 0)?)
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
        let header = Header::parse(&hb[..n])?;
        let bs = u64::from(header.fs_blocksize);
        let mut raw = [0u8; SUPERBLOCK_SIZE];
        src.read_exact_at(&mut raw, bs, &|| "normal e2image image: superblock".into())?;
        let sb = Superblock::parse(&raw, Some(header.fs_blocksize))?;
        if sb.uuid() != header.fs_uuid {
            return Err(corrupt(
                "the header's filesystem UUID differs from the superblock's",
            ));
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
        for (name, got, want) in expect {
            if u64::from(got) != want {
                return Err(corrupt(format!(
                    "header field {name} is {got}, but this filesystem's image has it at {want}"
                )));
            }
        }
        if src.size() < layout.size {
            return Err(corrupt(format!(
                "truncated: {} bytes, but the filesystem's image is {} bytes",
                src.size(),
                layout.size
            )));
        }
        let mut raw_desc = vec![0u8; layout.desc_len as usize];
        src.read_exact_at(&mut raw_desc, layout.offset_desc, &|| {
            "normal e2image image: group descriptors".into()
        })?;
        let desc = DescTable::new(raw_desc, &sb);
        let mut bitmaps = Bitmaps {
            block: vec![0u8; layout.blockmap_bytes as usize],
            inode: vec![0u8; layout.inodemap_bytes as usize],
        };
        src.read_exact_at(&mut bitmaps.block, layout.offset_blockmap, &|| {
            "normal e2image image: block bitmap".into()
        })?;
        src.read_exact_at(&mut bitmaps.inode, layout.offset_inodemap, &|| {
            "normal e2image image: inode bitmap".into()
        })?;
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

    /// Read from group `g`'s inode table, starting `offset` bytes into it (holes read as zeros).
    pub fn read_inode_table(&self, g: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        if g >= self.sb.group_count
            || offset.saturating_add(buf.len() as u64) > self.layout.itable_len
        {
            return Err(Error::InvalidInput(format!(
                "inode table read past group {g}'s table"
            )));
        }
        let at = self.layout.inode_table_offset(g) + offset;
        self.src.read_exact_at(buf, at, &|| {
            format!("normal e2image image: group {g} inode table")
        })
    }

    /// Group `g`'s block bitmap block as libext2fs writes it, or `None` when the library would
    /// not write it (BLOCK_UNINIT with descriptor checksums, or no valid location).
    pub fn block_bitmap_block(&self, g: u32) -> Option<Vec<u8>> {
        let loc = self.desc.block_bitmap(g);
        if loc == 0
            || loc >= self.sb.blocks_count
            || (self.sb.has_group_desc_csum() && self.desc.has_flag(g, BG_BLOCK_UNINIT))
        {
            return None;
        }
        Some(bitmap::block_bitmap_block(&self.sb, &self.bitmaps.block, g))
    }

    /// Group `g`'s inode bitmap block as libext2fs writes it, or `None`.
    pub fn inode_bitmap_block(&self, g: u32) -> Option<Vec<u8>> {
        let loc = self.desc.inode_bitmap(g);
        if loc == 0
            || loc >= self.sb.blocks_count
            || (self.sb.has_group_desc_csum() && self.desc.has_flag(g, BG_INODE_UNINIT))
        {
            return None;
        }
        Some(bitmap::inode_bitmap_block(&self.sb, &self.bitmaps.inode, g))
    }

    /// The blocks the image holds, at their filesystem positions: see [`FsView`].
    pub fn fs_view(&self) -> FsView<'_, R> {
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
}

impl<'a, R: ReadAt> FsView<'a, R> {
    fn new(img: &'a NormalImage<R>) -> Self {
        let sb = &img.sb;
        let bs = u64::from(sb.block_size);
        let mut v = FsView {
            img,
            pieces: BTreeMap::new(),
            size: sb.blocks_count.saturating_mul(bs),
        };
        // Lowest precedence first.
        let ipb = u64::from(sb.inode_blocks_per_group);
        for g in 0..sb.group_count {
            let it = img.desc.inode_table(g);
            if it != 0 && it.checked_add(ipb).is_some_and(|e| e <= sb.blocks_count) {
                v.paint(
                    it * bs,
                    ipb * bs,
                    Src::Image,
                    img.layout.inode_table_offset(g),
                );
            }
        }
        for g in 0..sb.group_count {
            if img.block_bitmap_block(g).is_some() {
                v.paint(img.desc.block_bitmap(g) * bs, bs, Src::BlockBitmap(g), 0);
            }
            if img.inode_bitmap_block(g).is_some() {
                v.paint(img.desc.inode_bitmap(g) * bs, bs, Src::InodeBitmap(g), 0);
            }
        }
        for (i, blk) in primary_descriptor_blocks(sb).into_iter().enumerate() {
            if blk < sb.blocks_count {
                v.paint(
                    blk * bs,
                    bs,
                    Src::Image,
                    img.layout.offset_desc + i as u64 * bs,
                );
            }
        }
        v.paint(1024, 1024, Src::Image, img.layout.offset_super);
        v
    }

    /// Insert `[start, start+len)`, cutting away whatever it overlaps.
    fn paint(&mut self, start: u64, len: u64, src: Src, base: u64) {
        let end = start + len;
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
                self.pieces.insert(
                    end,
                    Piece {
                        base: p.base + (end - s),
                        ..p
                    },
                );
            }
        }
        self.pieces.insert(start, Piece { end, src, base });
    }

    /// The filesystem blocks that hold image data.
    pub fn block_map(&self) -> BlockMap {
        let bs = u64::from(self.img.sb.block_size);
        let mut runs: Vec<Run> = Vec::new();
        for (&s, p) in &self.pieces {
            let (b0, b1) = (s / bs, p.end.div_ceil(bs));
            match runs.last_mut() {
                Some(r) if r.end() >= b0 => r.len = r.len.max(b1 - r.start),
                _ => runs.push(Run {
                    start: b0,
                    len: b1 - b0,
                }),
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
        let n = (buf.len() as u64).min(self.size - offset) as usize;
        let buf = &mut buf[..n];
        buf.fill(0);
        let end = offset + n as u64;
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
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            let from = p.base + (lo - s);
            let block = match p.src {
                Src::Image => {
                    self.img.src.read_exact_at(dst, from, &|| {
                        format!("normal e2image image at byte {from}")
                    })?;
                    continue;
                }
                Src::BlockBitmap(g) => self.img.block_bitmap_block(g),
                Src::InodeBitmap(g) => self.img.inode_bitmap_block(g),
            };
            if let Some(b) = block
                .as_deref()
                .and_then(|b| b.get(from as usize..from as usize + dst.len()))
            {
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

/// The primary location of every descriptor block, in order (what e2image gathers).
pub fn primary_descriptor_blocks(sb: &Superblock) -> Vec<u64> {
    let (_, old0, _) = bitmap::super_and_bgd_loc(sb, 0);
    let first_meta = if sb.has_meta_bg() {
        sb.first_meta_bg.min(sb.desc_blocks)
    } else {
        sb.desc_blocks
    };
    (0..sb.desc_blocks)
        .map(|i| {
            if i < first_meta {
                old0 + u64::from(i)
            } else {
                sb.descriptor_block_loc(u64::from(sb.first_data_block), i)
            }
        })
        .collect()
}

#[cfg(test)]
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
        let view = ni.fs_view();
        let map = view.block_map();
        assert!(map.contains(1) && map.contains(2));
        let bs = 1024usize;
        for r in map.runs() {
            for b in r.start..r.end() {
                let mut got = vec![0u8; bs];
                view.read_at(&mut got, b * 1024).unwrap();
                let at = b as usize * bs;
                assert_eq!(got, fsb[at..at + bs], "block {b}");
            }
        }
        // A read straddling pieces and holes.
        let mut big = vec![0xEEu8; 300 * 1024];
        assert_eq!(view.read_at(&mut big, 512).unwrap(), big.len());
        for r in map.runs_in(0..301) {
            let (s, e) = (r.start as usize * bs, r.end().min(300) as usize * bs);
            if s >= 512 && e > s {
                assert_eq!(big[s - 512..e - 512], fsb[s..e]);
            }
        }
        let plan = crate::ops::install::plan(&ni, 1).unwrap();
        assert_eq!(plan.last().map(|w| w.offset), Some(1024));
    }

    /// Flipped bytes anywhere in the metadata part of an image: open, view, read and plan
    /// either work or fail with an error, never a panic (run in debug for overflow checks).
    #[test]
    fn mutated_images_never_panic() {
        let (_, img) = sample_image();
        let meta_end = 4 * 1024 + 3 * 1024;
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut m = img.clone();
            for _ in 0..(1 + next() % 4) {
                let at = (next() % meta_end as u64) as usize;
                m[at] = next() as u8;
            }
            if next() % 8 == 0 {
                m.truncate((next() % m.len() as u64) as usize);
            }
            let Ok(ni) = NormalImage::open(MemSource(m)) else {
                continue;
            };
            let view = ni.fs_view();
            let map = view.block_map();
            let mut buf = vec![0u8; 8192];
            for r in map.runs().iter().take(8) {
                let _ = view.read_at(&mut buf, r.start * 1024);
            }
            let _ = view.data_region(0);
            let _ = crate::ops::install::plan(&ni, 1);
        }
    }
}
