//! Reading the selected blocks of a source in large pieces: consecutive blocks coalesced
//! into reads of up to [`IO_CHUNK`] bytes, holes of the source skipped (SEEK_DATA), unreadable
//! blocks salvaged one by one. Every writer (raw, qcow2, stream, normal) reads through here.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use crate::blockmap::{BlockMap, BlockRun};
use crate::io::ReadAt;
use crate::progress::Progress;
use crate::readplan;
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// Largest single read or write.
pub const IO_CHUNK: usize = 4 << 20;

/// Blocks in one [`IO_CHUNK`] (64 to 4096).
pub fn chunk_blocks(bs: BlockSize) -> u64 {
    bs.blocks_in(IO_CHUNK as u64)
}

/// The byte offset of block `b`; a map built with a block count whose bytes overflow 64
/// bits (which no validated header allows) is refused rather than wrapped.
fn offset(bs: BlockSize, b: FsBlock) -> Result<u64> {
    bs.offset_of(b).ok_or_else(|| {
        Error::InvalidInput(format!(
            "block {b} of {bs} bytes lies past the largest byte offset"
        ))
    })
}

/// `n` blocks as a buffer length (at most [`IO_CHUNK`] here).
fn buf_len(bs: BlockSize, n: u64) -> usize {
    bs.len_of(n).unwrap_or(IO_CHUNK)
}

/// Call `f(first_block, data)` for the selected blocks in order, in pieces of at most
/// [`IO_CHUNK`] bytes of consecutive blocks. Holes in the source are not read.
/// Returns the number of blocks that lay past the end of the source (read as zeros).
pub fn for_each_chunk<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    bs: BlockSize,
    f: &mut dyn FnMut(FsBlock, &[u8]) -> Result<()>,
) -> Result<u64> {
    let per = chunk_blocks(bs);
    let mut buf = Vec::new();
    let mut past_end = 0u64;
    let mut ahead = readplan::for_map(src, map, bs);
    for run in map.runs() {
        let mut b = run.start;
        while b < run.end() {
            let n = per.min(run.end().saturating_since(b));
            let len = buf_len(bs, n);
            let off = offset(bs, b)?;
            ahead.at(off);
            buf.resize(len, 0);
            let past = src.read_sparse_at(&mut buf[..len], off)?;
            past_end = past_end.saturating_add(bs.blocks_covering(past as u64));
            f(b, &buf[..len])?;
            b = b.saturating_add(n);
        }
    }
    Ok(past_end)
}

/// A piece of the selected blocks, in block order.
#[derive(Debug)]
pub enum Piece<'a> {
    /// Consecutive blocks from `.0` with their bytes.
    Data(FsBlock, &'a [u8]),
    /// `.1` consecutive blocks from `.0` known to read as zeros (holes in the source, or
    /// past its end) without having been read.
    Zero(FsBlock, u64),
}

/// What a pass over the selected blocks could not read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadReport {
    /// Blocks past the end of the source (read as zeros).
    pub past_end_blocks: u64,
    /// Blocks whose read failed (I/O error); passed on as zeros.
    pub unreadable_blocks: u64,
    /// The first unreadable block numbers (at most [`UNREADABLE_SAMPLE`]).
    pub unreadable: Vec<FsBlock>,
}

/// How many unreadable block numbers a [`ReadReport`] lists.
pub const UNREADABLE_SAMPLE: usize = 1000;

impl ReadReport {
    fn past_end(&mut self, bs: BlockSize, bytes: usize) {
        self.past_end_blocks = self
            .past_end_blocks
            .saturating_add(bs.blocks_covering(bytes as u64));
    }
}

/// Read `buf` at block `first`; if the read fails, retry block by block, zero-filling and
/// recording the blocks that cannot be read.
fn read_salvaging<S: ReadAt + ?Sized>(
    src: &S,
    buf: &mut [u8],
    first: FsBlock,
    bs: BlockSize,
    rep: &mut ReadReport,
) -> Result<()> {
    match src.read_sparse_at(buf, offset(bs, first)?) {
        Ok(past) => {
            rep.past_end(bs, past);
            Ok(())
        }
        Err(Error::Io { .. }) => {
            let blocks = (first.get()..).map(FsBlock);
            for (b, blk) in blocks.zip(buf.chunks_mut(bs.as_usize())) {
                match src.read_sparse_at(blk, offset(bs, b)?) {
                    Ok(past) => rep.past_end(bs, past),
                    Err(Error::Io { .. }) => {
                        blk.fill(0);
                        rep.unreadable_blocks = rep.unreadable_blocks.saturating_add(1);
                        if rep.unreadable.len() < UNREADABLE_SAMPLE {
                            rep.unreadable.push(b);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Walk the selected blocks in order, reading data in pieces of at most [`IO_CHUNK`] bytes
/// and reporting holes of the source as [`Piece::Zero`] without reading or materialising
/// them. Blocks that cannot be read are passed on as zeros and listed in the report.
pub fn for_each_piece<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    bs: BlockSize,
    f: &mut dyn FnMut(Piece<'_>) -> Result<()>,
) -> Result<ReadReport> {
    let per = chunk_blocks(bs);
    // The first block the source does not hold (whole or in part).
    let src_end = FsBlock(bs.blocks_covering(src.size()));
    let mut buf = Vec::new();
    let mut rep = ReadReport::default();
    let mut ahead = readplan::for_map(src, map, bs);
    for run in map.runs() {
        let end = run.end();
        let mut b = run.start;
        while b < end {
            let off = offset(bs, b)?;
            ahead.at(off);
            match src.data_region(off)? {
                None => {
                    rep.past_end_blocks = rep
                        .past_end_blocks
                        .saturating_add(end.saturating_since(b.max(src_end).min(end)));
                    f(Piece::Zero(b, end.saturating_since(b)))?;
                    b = end;
                }
                Some(r) if r.start >= off.saturating_add(bs.bytes()) => {
                    // Whole blocks before the next data are zeros.
                    let z_end = bs.block_of(r.start).min(end);
                    rep.past_end_blocks = rep
                        .past_end_blocks
                        .saturating_add(z_end.saturating_since(b.max(src_end).min(z_end)));
                    f(Piece::Zero(b, z_end.saturating_since(b)))?;
                    b = z_end;
                }
                Some(r) => {
                    let data_end = FsBlock(bs.blocks_covering(r.end)).max(b.saturating_add(1));
                    let n = per
                        .min(end.saturating_since(b))
                        .min(data_end.saturating_since(b));
                    let len = buf_len(bs, n);
                    buf.resize(len, 0);
                    read_salvaging(src, &mut buf[..len], b, bs, &mut rep)?;
                    f(Piece::Data(b, &buf[..len]))?;
                    b = b.saturating_add(n);
                }
            }
        }
    }
    Ok(rep)
}

/// The first pass of every format that must know its data before writing it (the stream's
/// map, the qcow2 layout): the selected blocks as runs of data (`false`) and of all-zero
/// blocks (`true`), in order. Holes are not read; unreadable blocks count as zeros and are
/// listed in the report.
pub fn classify_runs<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    bs: BlockSize,
    progress: &mut dyn Progress,
) -> Result<(Vec<(BlockRun, bool)>, ReadReport)> {
    let bsz = bs.as_usize();
    let mut out: Vec<(BlockRun, bool)> = Vec::new();
    let mut done = 0u64;
    let mut push = |start: FsBlock, len: u64, zero: bool| match out.last_mut() {
        Some((r, z)) if *z == zero && r.end() == start => r.len = r.len.saturating_add(len),
        _ => out.push((BlockRun::new(start, len), zero)),
    };
    let rep = for_each_piece(src, map, bs, &mut |p| {
        match p {
            Piece::Zero(blk, n) => {
                push(blk, n, true);
                done = done.saturating_add(n);
            }
            Piece::Data(blk, data) => {
                zero_runs(data, bsz, &mut |i, n, z| {
                    push(blk.saturating_add(i as u64), n as u64, z);
                    Ok(())
                })?;
                done = done.saturating_add(bs.blocks_in(data.len() as u64));
            }
        }
        progress.update(done);
        Ok(())
    })?;
    Ok((out, rep))
}

/// Call `f(first_index, count, value)` for each run of equal values of `items`.
fn runs_of(
    items: impl Iterator<Item = bool>,
    f: &mut dyn FnMut(usize, usize, bool) -> Result<()>,
) -> Result<()> {
    let mut cur: Option<(usize, usize, bool)> = None;
    for v in items {
        cur = match cur {
            // Counts of blocks of one buffer: cannot saturate.
            Some((i, n, c)) if c == v => Some((i, n.saturating_add(1), c)),
            Some((i, n, c)) => {
                f(i, n, c)?;
                Some((i.saturating_add(n), 1, v))
            }
            None => Some((0, 1, v)),
        };
    }
    match cur {
        Some((i, n, c)) => f(i, n, c),
        None => Ok(()),
    }
}

/// Split a piece of consecutive blocks into runs of zero and non-zero blocks:
/// calls `f(block_index_in_piece, count, all_zero)`. A last partial block (an image that
/// ends inside its last block) is a block too.
pub fn zero_runs(
    data: &[u8],
    block_size: usize,
    f: &mut dyn FnMut(usize, usize, bool) -> Result<()>,
) -> Result<()> {
    runs_of(data.chunks(block_size.max(1)).map(block_is_zero), f)
}

/// Split `data` (whole blocks) into runs equal to what the target already holds (`old`, of
/// which the first `old_len` bytes were read; blocks past that count as different) and runs
/// that differ: calls `f(first_block_index, count, same)`. A last partial block is compared
/// as far as it goes.
pub fn same_runs(
    data: &[u8],
    old: &[u8],
    old_len: usize,
    block_size: usize,
    f: &mut dyn FnMut(usize, usize, bool) -> Result<()>,
) -> Result<()> {
    let bs = block_size.max(1);
    let old = &old[..old_len.min(old.len())];
    let mut olds = old.chunks(bs);
    let same = data.chunks(bs).map(|d| olds.next().is_some_and(|o| o == d));
    runs_of(same, f)
}

/// Fast all-zero test of one block.
pub fn block_is_zero(b: &[u8]) -> bool {
    let mut it = b.chunks_exact(32);
    for c in &mut it {
        let mut acc = 0u8;
        for &x in c {
            acc |= x;
        }
        if acc != 0 {
            return false;
        }
    }
    it.remainder().iter().all(|&x| x == 0)
}
