//! The raw (sparse) writer: a sink that takes the selected blocks in order and writes them
//! to a new file (zero blocks as holes), an existing file or block device (in place), a
//! stream (holes as zeros), or lists them (`-n`).

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::fs::File;
use std::io::Write;

use crate::blockmap::{BlockMap, BlockRun};
use crate::io::{ReadAt, SeqWrite, pread_full, pwrite_all, write_error};
use crate::pieces::{
    IO_CHUNK, Piece, block_is_zero, chunk_blocks, for_each_piece, for_each_piece_of_maps,
    same_runs, zero_runs,
};
use crate::progress::Progress;
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// Counts from a pass over the selected blocks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyStats {
    /// Selected blocks visited.
    pub blocks: u64,
    /// Of those, blocks that were all zeros.
    pub zero_blocks: u64,
    /// Blocks that lay (partly) past the end of the source and read as zeros.
    pub past_end_blocks: u64,
    /// Blocks that could not be read (I/O errors) and were written as zeros.
    pub unreadable_blocks: u64,
    /// The first runs of them (see [`crate::pieces::ReadReport`]).
    pub unreadable: Vec<BlockRun>,
    /// Blocks skipped because the target already held the same bytes (`-c`).
    pub identical_blocks: u64,
    /// Bytes written to the output.
    pub bytes_written: u64,
}

/// Where a raw image goes.
pub enum RawTarget<'a> {
    /// A file created empty for this run: zero blocks become holes, the size is set at the
    /// end (to `dest_offset` + the image size).
    NewFile { file: &'a File, dest_offset: u64 },
    /// An existing file or block device updated in place at `dest_offset`: every selected
    /// block is written (zeros too), nothing outside `[dest_offset, dest_offset + image size)`
    /// is touched, the file is never shortened. With `check`, blocks already equal are
    /// skipped. `room` is a block device's size (checked before the first write); a file
    /// (`None`) grows to the image's end.
    InPlace {
        file: &'a File,
        dest_offset: u64,
        check: bool,
        room: Option<u64>,
    },
    /// A stream (pipe, stdout, character device): every byte, holes as zeros. A failed
    /// write is named by the byte the stream's destination had taken.
    Stream(&'a mut dyn SeqWrite),
    /// `-n`: write nothing; list on `list` the blocks the same run would write (`Writing
    /// blocks A-B (N blocks)`). `target` is the existing target (for `check`, which then
    /// lists only the blocks that differ from it), `new_file` that zero blocks would be
    /// holes, `room` as for [`RawTarget::InPlace`]: the same checks as the real run.
    DryRun {
        list: &'a mut dyn Write,
        target: Option<&'a File>,
        dest_offset: u64,
        check: bool,
        new_file: bool,
        room: Option<u64>,
    },
}

impl RawTarget<'_> {
    /// Every selected block is written, zeros included (a target updated in place, or its
    /// dry run): such targets also want the blocks e2image writes only to devices.
    pub fn updates_in_place(&self) -> bool {
        match self {
            RawTarget::InPlace { .. } => true,
            RawTarget::DryRun { new_file, .. } => !new_file,
            _ => false,
        }
    }

    /// The target is a block device (its size is fixed).
    pub fn is_block_device(&self) -> bool {
        matches!(
            self,
            RawTarget::InPlace { room: Some(_), .. } | RawTarget::DryRun { room: Some(_), .. }
        )
    }
}

/// `blocks A-B (N blocks)`, or `block A (1 block)`: the one notation of block ranges in
/// every listing (inclusive bounds).
pub fn range_text(first: FsBlock, count: u64) -> String {
    if count == 1 {
        format!("block {first} (1 block)")
    } else {
        format!(
            "blocks {first}-{} ({count} blocks)",
            first.get().saturating_add(count).saturating_sub(1)
        )
    }
}

/// Counts of blocks and bytes of one run's buffers: far below 2^64, so the additions
/// that keep statistics cannot saturate.
fn add(counter: &mut u64, n: u64) {
    *counter = counter.saturating_add(n);
}

/// Accepts the blocks of a raw image in ascending order and writes them to a [`RawTarget`].
pub struct RawSink<'a> {
    target: RawTarget<'a>,
    bs: BlockSize,
    /// Bytes of the image.
    total: u64,
    /// Bytes of its blocks: `total`, or up to a block more when the image ends inside its
    /// last block (a virtual disk of an odd number of sectors).
    limit: u64,
    /// Next byte a stream target expects; the end of the last block put.
    pos: u64,
    cmp: Vec<u8>,
    zeros: Vec<u8>,
    /// A dry run's range not yet listed (first block, count).
    listed: Option<(FsBlock, u64)>,
    stats: CopyStats,
    /// Blocks may come in any order (a new file written while the scan goes on).
    any_order: bool,
}

impl<'a> RawSink<'a> {
    /// A sink for an image of `blocks_count` blocks of `block_size` bytes. A target with a
    /// fixed size that cannot hold the image is refused here, before anything is written.
    pub fn new(target: RawTarget<'a>, bs: BlockSize, blocks_count: u64) -> Result<Self> {
        let total = bs
            .bytes_of(blocks_count)
            .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))?;
        Self::sized(target, bs, total)
    }

    /// A sink for an image of `total` bytes in blocks of `bs` bytes, the last of which may
    /// be partial: its bytes past `total` are never written.
    pub fn sized(target: RawTarget<'a>, bs: BlockSize, total: u64) -> Result<Self> {
        let limit = bs
            .bytes_of(bs.blocks_covering(total))
            .ok_or_else(|| Error::InvalidInput("image size overflows".into()))?;
        let (offset, room) = match &target {
            RawTarget::NewFile { dest_offset, .. } => (*dest_offset, None),
            RawTarget::InPlace {
                dest_offset, room, ..
            }
            | RawTarget::DryRun {
                dest_offset, room, ..
            } => (*dest_offset, *room),
            RawTarget::Stream(_) => (0, None),
        };
        let end = offset
            .checked_add(total)
            .ok_or_else(|| Error::past_offsets(offset, total))?;
        crate::output::check_room(room, end)?;
        // A file must be able to reach the image's end (a block device's room is above).
        let file = match &target {
            RawTarget::NewFile { file, .. } => Some(*file),
            RawTarget::InPlace {
                file, room: None, ..
            } => Some(*file),
            RawTarget::DryRun {
                target, room: None, ..
            } => *target,
            _ => None,
        };
        match file {
            Some(f) => crate::output::check_file_end(f, end)?,
            None if i64::try_from(end).is_err() && !matches!(target, RawTarget::Stream(_)) => {
                return Err(Error::too_large(end));
            }
            None => {}
        }
        Ok(RawSink {
            target,
            bs,
            total,
            limit,
            pos: 0,
            cmp: Vec::new(),
            zeros: Vec::new(),
            listed: None,
            stats: CopyStats::default(),
            any_order: false,
        })
    }

    pub fn stats(&self) -> &CopyStats {
        &self.stats
    }

    /// The bytes of `count` blocks from `block` in the image, checked to lie inside it.
    fn image_bytes(&self, block: FsBlock, count: u64) -> Result<std::ops::Range<u64>> {
        BlockRun::new(block, count)
            .bytes(self.bs)
            .filter(|r| r.end <= self.limit)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{} lie past the end of the image",
                    range_text(block, count)
                ))
            })
    }

    /// [`Self::image_bytes`] of blocks that must come after those already put.
    fn check_range(&self, block: FsBlock, count: u64) -> Result<std::ops::Range<u64>> {
        let r = self.image_bytes(block, count)?;
        if r.start < self.pos && !self.any_order {
            return Err(Error::InvalidInput(format!(
                "block {block} arrives out of order"
            )));
        }
        Ok(r)
    }

    /// The part of `data` (from image byte `at`) that lies inside the image.
    fn clip<'d>(&self, at: u64, data: &'d [u8]) -> &'d [u8] {
        let room = usize::try_from(self.total.saturating_sub(at)).unwrap_or(usize::MAX);
        &data[..data.len().min(room)]
    }

    /// The target's byte of image byte `at` (the image starts at `dest_offset`).
    fn dest(dest_offset: u64, at: u64) -> Result<u64> {
        dest_offset.checked_add(at).ok_or_else(|| {
            Error::InvalidInput(format!(
                "destination offset {dest_offset} plus image byte {at} overflows"
            ))
        })
    }

    fn fill_stream(&mut self, to: u64) -> Result<()> {
        if let RawTarget::Stream(w) = &mut self.target {
            if self.zeros.is_empty() {
                self.zeros = vec![0u8; IO_CHUNK];
            }
            let to = to.min(self.total);
            while self.pos < to {
                let n = usize::try_from(to.saturating_sub(self.pos))
                    .map_or(IO_CHUNK, |n| n.min(IO_CHUNK));
                w.write_all(&self.zeros[..n])
                    .map_err(|e| write_error(*w, e))?;
                add(&mut self.pos, n as u64);
                add(&mut self.stats.bytes_written, n as u64);
            }
        }
        Ok(())
    }

    /// A dry run: note that `count` blocks from `first` would be written.
    fn list(&mut self, first: FsBlock, count: u64) -> Result<()> {
        match &mut self.listed {
            Some((f, n)) if f.checked_add(*n) == Some(first) => add(n, count),
            _ => {
                self.flush_list()?;
                self.listed = Some((first, count));
            }
        }
        Ok(())
    }

    fn flush_list(&mut self) -> Result<()> {
        if let (Some((f, n)), RawTarget::DryRun { list, .. }) =
            (self.listed.take(), &mut self.target)
        {
            writeln!(list, "Writing {}", range_text(f, n)).map_err(|e| Error::io("listing", e))?;
        }
        Ok(())
    }

    /// Write (or list) the consecutive blocks `data` at `block`, in place: with `-c`, only
    /// the runs that differ from what the target holds (end of file counts as different).
    fn put_in_place(&mut self, block: FsBlock, data: &[u8]) -> Result<()> {
        let bsz = self.bs.as_usize();
        let (file, dest_offset, check, dry) = match &self.target {
            RawTarget::InPlace {
                file,
                dest_offset,
                check,
                ..
            } => (Some(*file), *dest_offset, *check, false),
            RawTarget::DryRun {
                target,
                dest_offset,
                check,
                ..
            } => (*target, *dest_offset, *check, true),
            _ => return Ok(()),
        };
        let count = self.bs.blocks_covering(data.len() as u64);
        let start = self.image_bytes(block, count)?.start;
        let data = self.clip(start, data);
        let off = Self::dest(dest_offset, start)?;
        let mut runs: Vec<(usize, usize, bool)> = Vec::new();
        match file.filter(|_| check) {
            Some(f) => {
                self.cmp.resize(data.len(), 0);
                let got = pread_full(f, &mut self.cmp, off)
                    .map_err(|e| Error::io_at("read back", off, e))?;
                same_runs(data, &self.cmp, got, bsz, &mut |i, n, same| {
                    runs.push((i, n, same));
                    Ok(())
                })?;
            }
            None => runs.push((0, data.len().div_ceil(bsz.max(1)), false)),
        }
        for (i, n, same) in runs {
            if same {
                add(&mut self.stats.identical_blocks, n as u64);
            } else if dry {
                self.list(block.saturating_add(i as u64), n as u64)?;
            } else if let Some(f) = file {
                let (at, part) = blocks_of(data, bsz, i, n);
                let o = Self::dest(off, at)?;
                pwrite_all(f, part, o, "write")?;
                add(&mut self.stats.bytes_written, part.len() as u64);
            }
        }
        Ok(())
    }

    /// Write consecutive blocks starting at `block`.
    pub fn put(&mut self, block: FsBlock, data: &[u8]) -> Result<()> {
        let bsz = self.bs.as_usize();
        let count = self.bs.blocks_in(data.len() as u64);
        let std::ops::Range { start, end } = self.check_range(block, count)?;
        // The last block of an image that ends inside it: written up to the image's end.
        let data = self.clip(start, data);
        add(&mut self.stats.blocks, count);
        let new_file = match &self.target {
            RawTarget::NewFile { .. } => true,
            RawTarget::DryRun { new_file, .. } => *new_file,
            _ => false,
        };
        if new_file {
            // Zero blocks become holes; the rest is written (or listed).
            let mut runs: Vec<(usize, usize, bool)> = Vec::new();
            zero_runs(data, bsz, &mut |i, n, z| {
                runs.push((i, n, z));
                Ok(())
            })?;
            for (i, n, z) in runs {
                if z {
                    add(&mut self.stats.zero_blocks, n as u64);
                    continue;
                }
                match &self.target {
                    RawTarget::NewFile { file, dest_offset } => {
                        let (at, part) = blocks_of(data, bsz, i, n);
                        let off = Self::dest(*dest_offset, start.saturating_add(at))?;
                        pwrite_all(file, part, off, "write")?;
                        add(&mut self.stats.bytes_written, part.len() as u64);
                    }
                    _ => self.list(block.saturating_add(i as u64), n as u64)?,
                }
            }
        } else if let RawTarget::Stream(_) = self.target {
            self.fill_stream(start)?;
            if let RawTarget::Stream(w) = &mut self.target {
                w.write_all(data).map_err(|e| write_error(*w, e))?;
            }
            add(&mut self.stats.bytes_written, data.len() as u64);
        } else {
            let zeros = data.chunks(bsz).filter(|b| block_is_zero(b)).count();
            add(&mut self.stats.zero_blocks, zeros as u64);
            self.put_in_place(block, data)?;
        }
        self.pos = end;
        Ok(())
    }

    /// `count` selected blocks from `block` that are all zeros.
    pub fn put_zeros(&mut self, block: FsBlock, count: u64) -> Result<()> {
        let end = self.check_range(block, count)?.end;
        match &self.target {
            RawTarget::NewFile { .. } | RawTarget::DryRun { new_file: true, .. } => {
                add(&mut self.stats.blocks, count);
                add(&mut self.stats.zero_blocks, count);
                self.pos = end;
            }
            RawTarget::Stream(_) => {
                add(&mut self.stats.blocks, count);
                add(&mut self.stats.zero_blocks, count);
                self.fill_stream(end)?;
            }
            RawTarget::InPlace { .. } | RawTarget::DryRun { .. } => {
                // With -c, the target's holes already read as zeros: identical, not read.
                let mut b = block;
                let end = block.saturating_add(count);
                while b < end {
                    let left = end.saturating_since(b);
                    let (n, hole) = match self.checked_hole(b)? {
                        Some(h) if h > 0 => (h.min(left), true),
                        _ => (left, false),
                    };
                    if hole {
                        add(&mut self.stats.blocks, n);
                        add(&mut self.stats.zero_blocks, n);
                        add(&mut self.stats.identical_blocks, n);
                        self.pos = self.image_bytes(b, n)?.end;
                    } else {
                        // Up to the next hole, or all that is left where there is none.
                        let n = match self.next_hole_block(b, end)? {
                            Some(h) => h.saturating_since(b).max(1),
                            None => n,
                        };
                        self.zero_blocks_at(b, n, |s, b, d| s.put(b, d))?;
                        b = b.saturating_add(n);
                        continue;
                    }
                    b = b.saturating_add(n);
                }
            }
        }
        Ok(())
    }

    /// With -c on a regular file: how many whole blocks from `block` lie in a hole of the
    /// target (inside its size: past it, blocks differ). `None` without -c, or where the
    /// target cannot tell (a block device: all data).
    fn checked_hole(&self, block: FsBlock) -> Result<Option<u64>> {
        let Some((file, dest_offset)) = self.check_file() else {
            return Ok(None);
        };
        let off = Self::dest(dest_offset, self.image_bytes(block, 1)?.start)?;
        let size = file.metadata().map_err(|e| Error::io("stat", e))?.len();
        if off >= size {
            return Ok(None);
        }
        use rustix::fs::{SeekFrom, seek};
        let data = match seek(file, SeekFrom::Data(off)) {
            Ok(d) => d.min(size),
            Err(rustix::io::Errno::NXIO) => size,
            Err(_) => return Ok(None),
        };
        Ok(Some(self.bs.blocks_in(data.saturating_sub(off))))
    }

    /// With -c on a regular file: the first block after `block` (before `end`) that starts
    /// a hole of the target at least a block long, if any.
    fn next_hole_block(&self, block: FsBlock, end: FsBlock) -> Result<Option<FsBlock>> {
        let Some((file, dest_offset)) = self.check_file() else {
            return Ok(None);
        };
        let off = Self::dest(dest_offset, self.image_bytes(block, 1)?.start)?;
        use rustix::fs::{SeekFrom, seek};
        let Ok(hole) = seek(file, SeekFrom::Hole(off)) else {
            return Ok(None);
        };
        // The first whole block at or after the hole's start.
        let at = hole.saturating_sub(dest_offset).div_ceil(self.bs.bytes());
        let b = FsBlock(at).max(block.saturating_add(1));
        Ok((b < end).then_some(b))
    }

    /// The target file and its offset when blocks are compared before writing (-c).
    fn check_file(&self) -> Option<(&File, u64)> {
        match &self.target {
            RawTarget::InPlace {
                file,
                dest_offset,
                check: true,
                ..
            } => Some((*file, *dest_offset)),
            RawTarget::DryRun {
                target: Some(file),
                dest_offset,
                check: true,
                ..
            } => Some((*file, *dest_offset)),
            _ => None,
        }
        .filter(|(f, _)| f.metadata().is_ok_and(|m| m.is_file()))
    }

    /// Call `f(self, first_block, zeros)` over `count` zero blocks from `block`, in pieces.
    fn zero_blocks_at<F>(&mut self, block: FsBlock, count: u64, mut f: F) -> Result<()>
    where
        F: FnMut(&mut Self, FsBlock, &[u8]) -> Result<()>,
    {
        if self.zeros.is_empty() {
            self.zeros = vec![0u8; IO_CHUNK];
        }
        let per = chunk_blocks(self.bs);
        let zeros = std::mem::take(&mut self.zeros);
        // Callers checked that the blocks lie inside the image.
        let end = block.saturating_add(count);
        let mut b = block;
        let mut res = Ok(());
        while b < end && res.is_ok() {
            let n = per.min(end.saturating_since(b));
            let len = self.bs.len_of(n).unwrap_or(IO_CHUNK);
            res = f(self, b, &zeros[..len]);
            b = b.saturating_add(n);
        }
        self.zeros = zeros;
        res
    }

    /// After the ordered pass: write zeros to `runs` (blocks a block device must receive that
    /// the input did not carry: e2image's whole inode tables), in any order. Only targets
    /// updated in place (and their dry runs) take them; blocks already put are the caller's
    /// to leave out.
    pub fn put_zero_runs(&mut self, runs: &[BlockRun]) -> Result<()> {
        if !self.target.updates_in_place() {
            return Ok(());
        }
        for r in runs {
            self.image_bytes(r.start, r.len)?;
            self.zero_blocks_at(r.start, r.len, |s, b, d| {
                let n = s.bs.blocks_in(d.len() as u64);
                add(&mut s.stats.blocks, n);
                add(&mut s.stats.zero_blocks, n);
                s.put_in_place(b, d)
            })?;
        }
        Ok(())
    }

    /// Complete the image: a new file gets its full size, a stream its trailing zeros, an
    /// in-place file grows (never shrinks) to the image end; a dry run lists its last range.
    pub fn finish(mut self) -> Result<CopyStats> {
        let total = self.total;
        match &mut self.target {
            RawTarget::NewFile { file, dest_offset } => {
                // Checked when the sink was made.
                let end = dest_offset.saturating_add(total);
                file.set_len(end)
                    .map_err(|e| Error::io_at("truncate", end, e))?;
            }
            RawTarget::InPlace {
                file,
                dest_offset,
                room: None,
                ..
            } => {
                let end = dest_offset.saturating_add(total);
                let meta = file.metadata().map_err(|e| Error::io("stat", e))?;
                if meta.is_file() && meta.len() < end {
                    file.set_len(end)
                        .map_err(|e| Error::io_at("truncate", end, e))?;
                }
            }
            RawTarget::Stream(_) => {
                self.fill_stream(total)?;
                if let RawTarget::Stream(w) = &mut self.target {
                    w.flush().map_err(|e| write_error(*w, e))?;
                }
            }
            RawTarget::DryRun { .. } => {
                self.flush_list()?;
                if let RawTarget::DryRun { list, .. } = &mut self.target {
                    list.flush().map_err(|e| Error::io("listing", e))?;
                }
            }
            RawTarget::InPlace { .. } => {}
        }
        Ok(self.stats)
    }
}

/// Blocks `i .. i + n` of `data` (whole blocks of `bsz` bytes): their byte offset in
/// `data` and their bytes (clipped to `data`).
fn blocks_of(data: &[u8], bsz: usize, i: usize, n: usize) -> (u64, &[u8]) {
    let start = i.saturating_mul(bsz).min(data.len());
    let end = i.saturating_add(n).saturating_mul(bsz).min(data.len());
    (start as u64, &data[start..end])
}

/// Write the selected blocks of `src` as a raw image of `map.blocks_count()` blocks.
pub fn write_raw<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    bs: BlockSize,
    target: RawTarget<'_>,
    progress: &mut dyn Progress,
) -> Result<CopyStats> {
    let total = bs
        .bytes_of(map.blocks_count())
        .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))?;
    write_raw_sized(src, map, bs, total, target, progress)
}

/// [`write_raw`] of an image of `total` bytes whose last block may be partial (`map`
/// covers `total` bytes in blocks of `bs`).
pub fn write_raw_sized<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    bs: BlockSize,
    total: u64,
    target: RawTarget<'_>,
    progress: &mut dyn Progress,
) -> Result<CopyStats> {
    let mut sink = RawSink::sized(target, bs, total)?;
    progress.block_size(bs.get());
    progress.phase(
        "copying",
        map.selected_blocks(),
        crate::progress::Unit::Blocks,
    );
    let past = for_each_piece(src, map, bs, &mut |p| {
        match p {
            Piece::Data(blk, data) => sink.put(blk, data)?,
            Piece::Zero(blk, n) => sink.put_zeros(blk, n)?,
        }
        progress.update(sink.stats().blocks);
        Ok(())
    })?;
    let mut stats = sink.finish()?;
    stats.past_end_blocks = past.past_end_blocks;
    stats.unreadable_blocks = past.unreadable_blocks;
    stats.unreadable = past.unreadable;
    progress.finish();
    Ok(stats)
}

/// The checks [`write_raw_as_found`] makes before it writes (a filesystem too large for
/// `file`), alone: made before a scan, so that nothing is read for nothing.
pub fn check_raw_file(file: &File, bs: BlockSize, blocks_count: u64) -> Result<()> {
    let target = RawTarget::NewFile {
        file,
        dest_offset: 0,
    };
    RawSink::new(target, bs, blocks_count).map(drop)
}

/// A raw image written to a new file while the scan is still finding its blocks
/// ([`crate::ext4::scan::scan_publishing`]). A new file takes blocks in any order, so each
/// batch of runs that `batches` hands over is read and written as it arrives, while the
/// scan reads on; a block that comes again is not copied again. When `batches` ends (the
/// scan is done), `final_map` gives the block map: what no batch held is copied, and a
/// block copied that the map lacks is refused as the bug it would be. The file ends up as
/// [`write_raw`] of that map makes it. `each` is called after every piece with the blocks
/// copied so far (progress, cancellation).
pub fn write_raw_as_found<S: ReadAt + ?Sized>(
    src: &S,
    file: &File,
    bs: BlockSize,
    blocks_count: u64,
    mut batches: impl FnMut() -> Option<Vec<BlockRun>> + Send,
    final_map: impl FnOnce() -> Result<BlockMap> + Send,
    each: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<CopyStats> {
    let target = RawTarget::NewFile {
        file,
        dest_offset: 0,
    };
    let mut sink = RawSink::new(target, bs, blocks_count)?;
    sink.any_order = true;
    let mut copied = crate::blockmap::RunSet::default();
    let mut final_map = Some(final_map);
    let next = move || -> Result<Option<BlockMap>> {
        while let Some(batch) = batches() {
            let mut new = Vec::new();
            for r in batch {
                copied.add(r, &mut new);
            }
            if !new.is_empty() {
                return Ok(Some(BlockMap::from_runs(new, blocks_count)));
            }
        }
        let Some(fin) = final_map.take() else {
            return Ok(None);
        };
        let map = fin()?;
        let done = BlockMap::from_runs(copied.runs(), blocks_count);
        if let Some(r) = done.minus(&map).first() {
            return Err(Error::InvalidInput(format!(
                "internal error: {} were copied but are not in the block map",
                range_text(r.start, r.len)
            )));
        }
        Ok(Some(BlockMap::from_runs(map.minus(&done), blocks_count)))
    };
    let rep = for_each_piece_of_maps(src, bs, next, &mut |p| {
        match p {
            Piece::Data(blk, data) => sink.put(blk, data)?,
            Piece::Zero(blk, n) => sink.put_zeros(blk, n)?,
        }
        each(sink.stats().blocks)
    })?;
    let mut stats = sink.finish()?;
    stats.past_end_blocks = rep.past_end_blocks;
    stats.unreadable_blocks = rep.unreadable_blocks;
    stats.unreadable = rep.unreadable;
    Ok(stats)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)] // tests compute expected values freely
mod tests {
    use super::*;
    use crate::io::{Counted, MemSource, pwrite_full};
    use crate::progress::NoProgress;
    use std::ops::Range;

    /// A source whose reads touching `bad` fail with EIO, like a disk with bad sectors.
    struct Faulty {
        inner: MemSource,
        bad: Range<u64>,
    }

    impl ReadAt for Faulty {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
            let end = offset + buf.len() as u64;
            if offset < self.bad.end && self.bad.start < end {
                return Err(Error::io_at(
                    "read",
                    offset,
                    std::io::Error::from_raw_os_error(5),
                ));
            }
            self.inner.read_at(buf, offset)
        }
        fn size(&self) -> u64 {
            self.inner.size()
        }
    }

    /// A source whose every even block fails to read (EIO).
    struct Striped(MemSource);

    impl ReadAt for Striped {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
            let (first, last) = (offset / 1024, (offset + buf.len() as u64 - 1) / 1024);
            if (first..=last).any(|b| b % 2 == 0) {
                return Err(Error::io_at(
                    "read",
                    offset,
                    std::io::Error::from_raw_os_error(5),
                ));
            }
            self.0.read_at(buf, offset)
        }
        fn size(&self) -> u64 {
            self.0.size()
        }
    }

    /// More runs of unreadable blocks than are listed, met in batches that come high blocks
    /// first (as a scan finds them): the list held the first runs met, not the lowest, and
    /// the capture's `read error` lines differed from an ordered pass's. The lowest are
    /// listed, as write_raw lists them, whatever the order of the batches.
    #[test]
    fn unreadable_runs_listed_are_the_lowest_whatever_the_batch_order() {
        let bsz = BlockSize::new(1024).unwrap();
        let n = 6000u64;
        let src = Striped(MemSource(
            (0..n * 1024).map(|i| (i / 1024) as u8 | 1).collect(),
        ));
        let map = BlockMap::from_runs([BlockRun::new(FsBlock(0), n)], n);
        let d = tempfile::tempdir().unwrap();
        let want_file = File::create(d.path().join("want")).unwrap();
        let target = RawTarget::NewFile {
            file: &want_file,
            dest_offset: 0,
        };
        let want = write_raw(&src, &map, bsz, target, &mut NoProgress).unwrap();
        assert_eq!(want.unreadable.len(), crate::pieces::UNREADABLE_SAMPLE);
        assert_eq!(want.unreadable[0], BlockRun::new(FsBlock(0), 1));
        // Batches of 500 blocks, the highest first; then the odd blocks between the
        // listed ones of a batch already copied come again (nothing new).
        let mut batches: Vec<Vec<BlockRun>> = (0..n / 500)
            .rev()
            .map(|k| vec![BlockRun::new(FsBlock(k * 500), 500)])
            .collect();
        batches.push(vec![BlockRun::new(FsBlock(1), 1)]);
        let mut it = batches.into_iter();
        let got_file = File::create(d.path().join("got")).unwrap();
        let got = write_raw_as_found(
            &src,
            &got_file,
            bsz,
            n,
            move || it.next(),
            || Ok(map.clone()),
            &mut |_| Ok(()),
        )
        .unwrap();
        assert!(
            got == want,
            "listed {} runs from {:?}, not {} from {:?}",
            got.unreadable.len(),
            got.unreadable.first(),
            want.unreadable.len(),
            want.unreadable.first()
        );
    }

    /// A destination that takes `left` bytes, then fails every write with ENOSPC.
    struct FullAfter {
        left: usize,
    }

    impl std::io::Write for FullAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            let n = buf.len().min(self.left);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Behind a 1 MiB buffer, a stream whose destination fills up was named by the image
    /// byte of the block being put (the buffer's fill, far past what the destination took):
    /// the error names the first byte the destination did not take, byte 0 included.
    #[test]
    fn a_failed_stream_write_names_the_first_byte_not_taken() {
        let bs = 1024u64;
        let data: Vec<u8> = (0..64 * bs).map(|i| (i / bs) as u8 | 1).collect();
        let map = BlockMap::from_runs(
            [BlockRun::new(FsBlock(1), 3), BlockRun::new(FsBlock(40), 2)],
            64,
        );
        for left in [0usize, 1, 1500, 40 * 1024 + 7, 64 * 1024 - 1] {
            let mut out =
                std::io::BufWriter::with_capacity(1 << 20, Counted::new(FullAfter { left }));
            let e = write_raw(
                &MemSource(data.clone()),
                &map,
                BlockSize::new(1024).unwrap(),
                RawTarget::Stream(&mut out),
                &mut NoProgress,
            )
            .unwrap_err();
            assert_eq!(e.to_string(), format!("write at byte {left}"), "{left}");
        }
    }

    #[test]
    fn ranges_are_inclusive_and_singular_for_one_block() {
        assert_eq!(range_text(FsBlock(5), 1), "block 5 (1 block)");
        assert_eq!(range_text(FsBlock(1), 258), "blocks 1-258 (258 blocks)");
    }

    #[test]
    fn check_dry_run_lists_only_blocks_that_differ() {
        let bs = 1024usize;
        let data: Vec<u8> = (0..16 * bs).map(|i| (i / bs) as u8 + 1).collect();
        let src = MemSource(data.clone());
        let map = BlockMap::from_runs([BlockRun::new(FsBlock(2), 10)], 16);
        let mut target = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut target, &data).unwrap();
        // Block 4 differs; blocks 10-11 lie past the target's end (EOF counts as different).
        pwrite_full(&target, &[0u8; 7], 4 * bs as u64 + 3).unwrap();
        target.set_len(10 * bs as u64).unwrap();
        let mut list = Vec::new();
        let st = write_raw(
            &src,
            &map,
            BlockSize::new(bs as u32).unwrap(),
            RawTarget::DryRun {
                list: &mut list,
                target: Some(&target),
                dest_offset: 0,
                check: true,
                new_file: false,
                room: None,
            },
            &mut NoProgress,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(list).unwrap(),
            "Writing block 4 (1 block)\nWriting blocks 10-11 (2 blocks)\n"
        );
        assert_eq!(st.identical_blocks, 7);
        assert_eq!(st.bytes_written, 0);
        // A device too small for the image is refused before anything happens.
        let mut list = Vec::new();
        let r = RawSink::new(
            RawTarget::DryRun {
                list: &mut list,
                target: None,
                dest_offset: 4096,
                check: false,
                new_file: false,
                room: Some(16 * 1024),
            },
            BlockSize::new(1024).unwrap(),
            16,
        );
        assert!(matches!(
            r.err(),
            Some(Error::NoRoom {
                have: 16384,
                need: 20480
            })
        ));
    }

    /// Batches out of order, overlapping and repeating, with zero blocks, unreadable
    /// blocks and blocks past the source's end: the same file and counts as [`write_raw`]
    /// of the final map, every block copied once.
    #[test]
    fn a_file_written_as_found_is_the_one_written_in_order() {
        let bs = 1024u64;
        let bsz = BlockSize::new(1024).unwrap();
        // 60 blocks of source in a 64-block filesystem; blocks 30-33 are zeros.
        let data: Vec<u8> = (0..60 * bs)
            .map(|i| {
                if (30..34).contains(&(i / bs)) {
                    0
                } else {
                    (i / bs) as u8 + 1
                }
            })
            .collect();
        let src = Faulty {
            inner: MemSource(data),
            bad: 12 * bs..12 * bs + 1,
        };
        let r = |s: u64, n: u64| BlockRun::new(FsBlock(s), n);
        let batches = vec![
            vec![r(40, 4), r(58, 6)],
            vec![r(2, 20)],
            vec![r(10, 5), r(28, 8)],
            vec![],
            vec![r(2, 1), r(41, 1)],
        ];
        // The final map holds a run no batch had (50-51).
        let map = BlockMap::from_runs([r(2, 20), r(28, 8), r(40, 4), r(50, 2), r(58, 6)], 64);
        let d = tempfile::tempdir().unwrap();
        let (want_path, got_path) = (d.path().join("want"), d.path().join("got"));
        let want_file = File::create(&want_path).unwrap();
        let target = RawTarget::NewFile {
            file: &want_file,
            dest_offset: 0,
        };
        let want = write_raw(&src, &map, bsz, target, &mut NoProgress).unwrap();
        let got_file = File::create(&got_path).unwrap();
        let mut it = batches.into_iter();
        let mut seen = Vec::new();
        let got = write_raw_as_found(
            &src,
            &got_file,
            bsz,
            64,
            move || it.next(),
            || Ok(map.clone()),
            &mut |n| {
                seen.push(n);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got, want);
        assert_eq!(got.blocks, map.selected_blocks());
        assert_eq!(got.unreadable, vec![BlockRun::new(FsBlock(12), 1)]);
        assert_eq!(got.past_end_blocks, 4);
        assert_eq!(
            std::fs::read(&got_path).unwrap(),
            std::fs::read(&want_path).unwrap()
        );
        assert_eq!(seen.last(), Some(&map.selected_blocks()));

        // A batch block the final map lacks: refused.
        let f = File::create(d.path().join("bad")).unwrap();
        let mut once = Some(vec![r(5, 2)]);
        let e = write_raw_as_found(
            &src,
            &f,
            bsz,
            64,
            move || once.take(),
            || Ok(BlockMap::from_runs([r(5, 1)], 64)),
            &mut |_| Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("block 6 (1 block)"), "{e}");
    }

    #[test]
    fn read_errors_are_reported_per_block_and_the_rest_copied() {
        let bs = 1024u64;
        let data: Vec<u8> = (0..64 * bs).map(|i| (i / bs) as u8 + 1).collect();
        // Blocks 10 and 11 are unreadable.
        let src = Faulty {
            inner: MemSource(data.clone()),
            bad: 10 * bs + 100..11 * bs + 5,
        };
        let map = BlockMap::from_runs(
            [BlockRun::new(FsBlock(2), 20), BlockRun::new(FsBlock(40), 3)],
            64,
        );
        let mut out = Vec::new();
        let st = write_raw(
            &src,
            &map,
            BlockSize::new(1024).unwrap(),
            RawTarget::Stream(&mut out),
            &mut NoProgress,
        )
        .unwrap();
        assert_eq!(st.unreadable_blocks, 2);
        assert_eq!(st.unreadable, vec![BlockRun::new(FsBlock(10), 2)]);
        assert_eq!(out.len(), 64 * 1024);
        for b in 0..64u64 {
            let got = &out[(b * bs) as usize..((b + 1) * bs) as usize];
            let selected = (2..22).contains(&b) || (40..43).contains(&b);
            let want: Vec<u8> = if selected && b != 10 && b != 11 {
                data[(b * bs) as usize..((b + 1) * bs) as usize].to_vec()
            } else {
                vec![0; bs as usize]
            };
            assert!(got == &want[..], "block {b}");
        }
    }
}
