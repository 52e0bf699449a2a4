//! Reading the selected blocks of a source in large pieces: consecutive blocks coalesced
//! into reads of up to [`IO_CHUNK`] bytes, holes of the source skipped (SEEK_DATA), unreadable
//! blocks salvaged one by one. Every writer (raw, qcow2, stream, normal) reads through here.

use crate::blockmap::{BlockMap, Run};
use crate::io::ReadAt;
use crate::progress::Progress;
use crate::readplan;
use crate::{Error, Result};

/// Largest single read or write.
pub const IO_CHUNK: usize = 4 << 20;

/// Call `f(first_block, data)` for the selected blocks in order, in pieces of at most
/// [`IO_CHUNK`] bytes of consecutive blocks. Holes in the source are not read.
/// Returns the number of blocks that lay past the end of the source (read as zeros).
pub fn for_each_chunk<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    block_size: u32,
    f: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<u64> {
    let bs = u64::from(block_size);
    let per = (IO_CHUNK as u64 / bs).max(1);
    let mut buf = Vec::new();
    let mut past_end = 0;
    let mut ahead = readplan::for_map(src, map, block_size);
    for run in map.runs() {
        let mut b = run.start;
        while b < run.end() {
            let n = per.min(run.end() - b);
            let len = (n * bs) as usize;
            ahead.at(b * bs);
            buf.resize(len, 0);
            let past = src.read_sparse_at(&mut buf[..len], b * bs)? as u64;
            past_end += past.div_ceil(bs);
            f(b, &buf[..len])?;
            b += n;
        }
    }
    Ok(past_end)
}

/// A piece of the selected blocks, in block order.
#[derive(Debug)]
pub enum Piece<'a> {
    /// Consecutive blocks from `.0` with their bytes.
    Data(u64, &'a [u8]),
    /// `.1` consecutive blocks from `.0` known to read as zeros (holes in the source, or
    /// past its end) without having been read.
    Zero(u64, u64),
}

/// What a pass over the selected blocks could not read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadReport {
    /// Blocks past the end of the source (read as zeros).
    pub past_end_blocks: u64,
    /// Blocks whose read failed (I/O error); passed on as zeros.
    pub unreadable_blocks: u64,
    /// The first unreadable block numbers (at most [`UNREADABLE_SAMPLE`]).
    pub unreadable: Vec<u64>,
}

/// How many unreadable block numbers a [`ReadReport`] lists.
pub const UNREADABLE_SAMPLE: usize = 1000;

/// Read `buf` at block `first`; if the read fails, retry block by block, zero-filling and
/// recording the blocks that cannot be read.
fn read_salvaging<S: ReadAt + ?Sized>(
    src: &S,
    buf: &mut [u8],
    first: u64,
    bs: u64,
    rep: &mut ReadReport,
) -> Result<()> {
    match src.read_sparse_at(buf, first * bs) {
        Ok(past) => {
            rep.past_end_blocks += (past as u64).div_ceil(bs);
            Ok(())
        }
        Err(Error::Io { .. }) => {
            for (i, blk) in buf.chunks_mut(bs as usize).enumerate() {
                let b = first + i as u64;
                match src.read_sparse_at(blk, b * bs) {
                    Ok(past) => rep.past_end_blocks += (past as u64).div_ceil(bs),
                    Err(Error::Io { .. }) => {
                        blk.fill(0);
                        rep.unreadable_blocks += 1;
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
    block_size: u32,
    f: &mut dyn FnMut(Piece<'_>) -> Result<()>,
) -> Result<ReadReport> {
    let bs = u64::from(block_size);
    let per = (IO_CHUNK as u64 / bs).max(1);
    let size = src.size();
    let mut buf = Vec::new();
    let mut rep = ReadReport::default();
    let mut ahead = readplan::for_map(src, map, block_size);
    for run in map.runs() {
        let end = run.end();
        let mut b = run.start;
        while b < end {
            let off = b * bs;
            ahead.at(off);
            match src.data_region(off)? {
                None => {
                    rep.past_end_blocks += end - b.max(size.div_ceil(bs)).min(end);
                    f(Piece::Zero(b, end - b))?;
                    b = end;
                }
                Some(r) if r.start >= off.saturating_add(bs) => {
                    // Whole blocks before the next data are zeros.
                    let z_end = (r.start / bs).min(end);
                    rep.past_end_blocks += z_end - b.max(size.div_ceil(bs)).min(z_end);
                    f(Piece::Zero(b, z_end - b))?;
                    b = z_end;
                }
                Some(r) => {
                    let data_end = r.end.div_ceil(bs).max(b + 1);
                    let n = per.min(end - b).min(data_end - b);
                    let len = (n * bs) as usize;
                    buf.resize(len, 0);
                    read_salvaging(src, &mut buf[..len], b, bs, &mut rep)?;
                    f(Piece::Data(b, &buf[..len]))?;
                    b += n;
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
    block_size: u32,
    progress: &mut dyn Progress,
) -> Result<(Vec<(Run, bool)>, ReadReport)> {
    let bsz = block_size as usize;
    let mut out: Vec<(Run, bool)> = Vec::new();
    let mut done = 0u64;
    let mut push = |start: u64, len: u64, zero: bool| match out.last_mut() {
        Some((r, z)) if *z == zero && r.end() == start => r.len += len,
        _ => out.push((Run { start, len }, zero)),
    };
    let rep = for_each_piece(src, map, block_size, &mut |p| {
        match p {
            Piece::Zero(blk, n) => {
                push(blk, n, true);
                done += n;
            }
            Piece::Data(blk, data) => {
                zero_runs(data, bsz, &mut |i, n, z| {
                    push(blk + i as u64, n as u64, z);
                    Ok(())
                })?;
                done += (data.len() / bsz) as u64;
            }
        }
        progress.update(done);
        Ok(())
    })?;
    Ok((out, rep))
}

/// Split a piece of consecutive blocks into runs of zero and non-zero blocks:
/// calls `f(block_index_in_piece, count, all_zero)`.
pub fn zero_runs(
    data: &[u8],
    block_size: usize,
    f: &mut dyn FnMut(usize, usize, bool) -> Result<()>,
) -> Result<()> {
    let n = data.len() / block_size;
    let mut i = 0;
    while i < n {
        let z = block_is_zero(&data[i * block_size..(i + 1) * block_size]);
        let mut j = i + 1;
        while j < n && block_is_zero(&data[j * block_size..(j + 1) * block_size]) == z {
            j += 1;
        }
        f(i, j - i, z)?;
        i = j;
    }
    Ok(())
}

/// Split `data` (whole blocks) into runs equal to what the target already holds (`old`, of
/// which the first `old_len` bytes were read; blocks past that count as different) and runs
/// that differ: calls `f(first_block_index, count, same)`.
pub fn same_runs(
    data: &[u8],
    old: &[u8],
    old_len: usize,
    block_size: usize,
    f: &mut dyn FnMut(usize, usize, bool) -> Result<()>,
) -> Result<()> {
    let n = data.len() / block_size;
    let same = |k: usize| {
        let r = k * block_size..(k + 1) * block_size;
        r.end <= old_len && old[r.clone()] == data[r]
    };
    let mut i = 0;
    while i < n {
        let s = same(i);
        let mut j = i + 1;
        while j < n && same(j) == s {
            j += 1;
        }
        f(i, j - i, s)?;
        i = j;
    }
    Ok(())
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
