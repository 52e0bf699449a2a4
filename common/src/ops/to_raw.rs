//! `e2i-to-raw`: any input (stream, raw filesystem, qcow2, normal image) → raw image.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;

use crate::blockmap::{BlockMap, BlockMapBuilder};
use crate::ext4::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, Superblock};
use crate::ext4::{Filesystem, OpenOptions};
use crate::io::ReadAt;
use crate::mark::{self, MarkedSource};
use crate::ops::capture::{self, CaptureOptions};
use crate::ops::input::{Input, Kind};
use crate::progress::{Progress, Unit};
use crate::sparse::{self, CopyStats, RawSink, RawTarget};
use crate::stream;
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// Options of the converters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvertOptions {
    /// Raw filesystem input: include regular-file data.
    pub all_data: bool,
}

/// What a conversion did.
#[derive(Debug, Default)]
pub struct ConvertReport {
    pub input: Option<Kind>,
    pub block_size: u32,
    pub blocks_count: u64,
    pub copy: CopyStats,
    /// The verified checksum of a stream input.
    pub stream_digest: Option<stream::Digest>,
    /// Damaged structures skipped while scanning a raw filesystem input.
    pub problems: Vec<crate::ext4::scan::Problem>,
}

/// Geometry of an input without converting it (for choosing a target).
pub fn geometry(input: &Input) -> Option<(u32, u64)> {
    match input {
        Input::Stream(r) => Some((r.header.block_size.get(), r.header.blocks_count)),
        _ => None,
    }
}

/// Convert `input` to a raw image on `target`.
///
/// A block device (or its dry run) receives exactly what `e2image -r` writes to one, whatever
/// the input: every selected block, all-zero ones included, and every group's whole inode
/// table (e2image selects them whole for devices), so no stale bytes of an earlier
/// filesystem survive at metadata positions.
pub fn to_raw(
    input: Input,
    target: RawTarget<'_>,
    opts: ConvertOptions,
    progress: &mut dyn Progress,
) -> Result<ConvertReport> {
    let device = target.is_block_device();
    // A scrambled image made before the superblock mark existed gets it in the raw image,
    // which has no other place for it (see crate::mark).
    let add_mark = crate::ops::input::facts(&input).is_scrambled();
    match input {
        Input::Stream(mut r) => {
            let h = r.header;
            let bs = h.block_size;
            let mut sink = RawSink::new(target, bs, h.blocks_count)?;
            let selected = r.selected_blocks();
            progress.phase("copying", selected, Unit::Blocks);
            let carried =
                BlockMap::from_runs(r.extents().iter().map(stream::Extent::run), h.blocks_count);
            let mut meta = device.then(|| MetaBlocks::new(h.block_size, h.blocks_count));
            let digest = r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| {
                match data {
                    Some(d) => {
                        let d = match bs.offset_of(e.start) {
                            Some(first) if add_mark => mark::chunk_with_mark(first, d),
                            _ => std::borrow::Cow::Borrowed(d),
                        };
                        let d = &d[..];
                        if let Some(m) = &mut meta {
                            m.offer(e.start, d);
                        }
                        sink.put(e.start, d)?
                    }
                    None => sink.put_zeros(e.start, e.len)?,
                }
                progress.update(sink.stats().blocks);
                Ok(())
            })?;
            // The inode-table blocks the capture left out (unused ones), as zeros. A stream
            // whose superblock or descriptors cannot be read back (a capture through a
            // backup superblock, damage) has nothing more to say: its own blocks are written.
            if let Some(Ok(tables)) = meta.map(MetaBlocks::inode_tables) {
                sink.put_zero_runs(&tables.minus(&carried))?;
            }
            let copy = sink.finish()?;
            progress.finish();
            Ok(ConvertReport {
                input: Some(Kind::Stream),
                block_size: bs.get(),
                blocks_count: h.blocks_count,
                copy,
                stream_digest: Some(digest),
                problems: Vec::new(),
            })
        }
        Input::File {
            kind: Kind::Raw,
            path,
            ..
        } => {
            let opts = CaptureOptions {
                all_data: opts.all_data,
                open: OpenOptions::default(),
                offset: 0,
                strict: false,
                ..CaptureOptions::default()
            };
            let src = MarkedSource::new(capture::open_source(&path, 0)?, add_mark);
            // Select as e2image -r selects for this target.
            let (fs, res) = capture::scan_source(src, &opts, device, progress)?;
            let copy = sparse::write_raw(&fs.src, &res.map, fs.sb.block_size, target, progress)?;
            Ok(ConvertReport {
                input: Some(Kind::Raw),
                block_size: fs.sb.block_size.get(),
                blocks_count: fs.sb.blocks_count,
                copy,
                stream_digest: None,
                problems: res.problems,
            })
        }
        Input::File {
            kind: Kind::Normal,
            path,
            ..
        } => {
            // The view holds whole inode tables already (a normal image carries them).
            let img = crate::normal::NormalImage::open_file(&path)?;
            let view = img.fs_view()?;
            let map = view.block_map();
            let bs = img.superblock().block_size;
            let copy = sparse::write_raw(
                &MarkedSource::new(&view, add_mark),
                &map,
                bs,
                target,
                progress,
            )?;
            Ok(ConvertReport {
                input: Some(Kind::Normal),
                block_size: bs.get(),
                blocks_count: img.superblock().blocks_count,
                copy,
                stream_digest: None,
                problems: Vec::new(),
            })
        }
        Input::File {
            kind: Kind::Qcow2, ..
        } => {
            // The qcow2's virtual disk (through its backing chain), as qcow2-to-raw writes it.
            let host = input.host()?;
            let id = host.id();
            let img = crate::qcow2::Qcow2Image::open_host(host, input.dir(), id)?;
            let plan = crate::ops::qcow2_to_raw::plan(&img, target.updates_in_place(), device)?;
            let copy = crate::ops::qcow2_to_raw::convert(
                &MarkedSource::new(&img, add_mark),
                &plan,
                target,
                progress,
            )?;
            Ok(ConvertReport {
                input: Some(Kind::Qcow2),
                block_size: plan.unit.get(),
                blocks_count: plan.map.blocks_count(),
                copy,
                stream_digest: None,
                problems: Vec::new(),
            })
        }
        Input::File { kind, .. } => Err(Error::Unsupported(format!(
            "converting a {kind} is not available in this build"
        ))),
    }
}

/// The superblock and descriptor blocks of a filesystem arriving in block order (a stream),
/// kept as they pass so that the inode tables can be located afterwards.
struct MetaBlocks {
    bs: BlockSize,
    blocks_count: u64,
    /// Descriptor blocks to keep, known once the superblock has passed.
    wanted: Option<Vec<FsBlock>>,
    kept: BTreeMap<FsBlock, Vec<u8>>,
}

impl MetaBlocks {
    fn new(bs: BlockSize, blocks_count: u64) -> Self {
        MetaBlocks {
            bs,
            blocks_count,
            wanted: None,
            kept: BTreeMap::new(),
        }
    }

    /// Consecutive blocks from `first` pass by.
    fn offer(&mut self, first: FsBlock, data: &[u8]) {
        let sb_block = self.bs.block_of(SUPERBLOCK_OFFSET);
        let blocks = (first.get()..).map(FsBlock);
        for (blk, b) in blocks.zip(data.chunks(self.bs.as_usize())) {
            if blk == sb_block && self.wanted.is_none() {
                self.kept.insert(blk, b.to_vec());
                // 1024 in the superblock's block, or 0 in block 1 (1 KiB blocks).
                let at: usize = if self.bs.get() == 1024 { 0 } else { 1024 };
                let mut raw = [0u8; SUPERBLOCK_SIZE];
                if let Some(s) = b.get(at..at.saturating_add(SUPERBLOCK_SIZE)) {
                    raw.copy_from_slice(s);
                }
                let mut wanted = match Superblock::parse(&raw, None) {
                    Ok(sb) => crate::normal::reader::primary_descriptor_blocks(&sb),
                    Err(_) => Vec::new(),
                };
                // Looked up for every block that passes: sorted, so that a superblock
                // claiming millions of descriptor blocks costs a search, not a scan.
                wanted.sort_unstable();
                self.wanted = Some(wanted);
            } else if self
                .wanted
                .as_ref()
                .is_some_and(|w| w.binary_search(&blk).is_ok())
            {
                self.kept.insert(blk, b.to_vec());
            }
        }
    }

    /// Every group's whole inode table, in whole clusters (bigalloc), as e2image marks them.
    fn inode_tables(self) -> Result<BlockMap> {
        let blocks_count = self.blocks_count;
        let fs = Filesystem::open(self, OpenOptions::default())?;
        let ipb = u64::from(fs.sb.inode_blocks_per_group);
        let last = FsBlock(blocks_count.saturating_sub(1));
        let mut b = BlockMapBuilder::new(FsBlock(0), last, fs.sb.cluster_bits);
        for g in 0..fs.sb.group_count {
            let it = fs.desc.inode_table(g);
            if it != FsBlock(0) && it.checked_add(ipb).is_some_and(|e| e.get() <= blocks_count) {
                b.mark_range(it, ipb);
            }
        }
        Ok(b.build(fs.sb.first_block(), blocks_count))
    }
}

impl ReadAt for MetaBlocks {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let size = self.size();
        let Some(left) = size.checked_sub(offset).filter(|&l| l > 0) else {
            return Ok(0);
        };
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let buf = &mut buf[..n];
        buf.fill(0);
        let end = offset.saturating_add(n as u64);
        let (first, last) = (
            self.bs.block_of(offset),
            FsBlock(self.bs.blocks_covering(end)),
        );
        // Differences of positions inside `buf` or one block: they fit a usize.
        let at = |a: u64, b: u64| usize::try_from(a.saturating_sub(b)).unwrap_or(usize::MAX);
        for (&blk, data) in self.kept.range(first..last) {
            // Kept blocks lie below blocks_count, whose bytes fit (the superblock's check).
            let bstart = self.bs.offset_of(blk).unwrap_or(u64::MAX);
            let lo = bstart.max(offset);
            let hi = bstart.saturating_add(self.bs.bytes()).min(end);
            if let (Some(d), Some(s)) = (
                buf.get_mut(at(lo, offset)..at(hi, offset)),
                data.get(at(lo, bstart)..at(hi, bstart)),
            ) && d.len() == s.len()
            {
                d.copy_from_slice(s);
            }
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.bs.bytes_of(self.blocks_count).unwrap_or(u64::MAX)
    }
}
