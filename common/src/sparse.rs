//! Reading the selected blocks in large pieces, and the raw (sparse) writer.

use std::fs::File;
use std::io::Write;

use crate::blockmap::BlockMap;
use crate::io::{ReadAt, pread_full, pwrite_full};
use crate::progress::Progress;
use crate::{Error, Result};

/// Largest single read or write.
pub const IO_CHUNK: usize = 4 << 20;

/// Counts from a pass over the selected blocks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    /// Selected blocks visited.
    pub blocks: u64,
    /// Of those, blocks that were all zeros.
    pub zero_blocks: u64,
    /// Blocks that lay (partly) past the end of the source and read as zeros.
    pub past_end_blocks: u64,
    /// Blocks skipped because the target already held the same bytes (`-c`).
    pub identical_blocks: u64,
    /// Bytes written to the output.
    pub bytes_written: u64,
}

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
    for run in map.runs() {
        let mut b = run.start;
        while b < run.end() {
            let n = per.min(run.end() - b);
            let len = (n * bs) as usize;
            buf.resize(len, 0);
            let past = src.read_sparse_at(&mut buf[..len], b * bs)? as u64;
            past_end += past.div_ceil(bs);
            f(b, &buf[..len])?;
            b += n;
        }
    }
    Ok(past_end)
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

/// Where a raw image goes.
pub enum RawTarget<'a> {
    /// A file created empty for this run: zero blocks become holes, the size is set at the end.
    NewFile(&'a File),
    /// An existing file or block device updated in place at `dest_offset`: every selected
    /// block is written (zeros too), nothing outside `[dest_offset, dest_offset + fs size)`
    /// is touched, the file is never shortened. With `check`, blocks already equal are skipped.
    InPlace {
        file: &'a File,
        dest_offset: u64,
        check: bool,
        grow_to_end: bool,
    },
    /// A stream (pipe, stdout): every byte, holes as zeros.
    Stream(&'a mut dyn Write),
}

/// Write the selected blocks of `src` as a raw image of `blocks_count` blocks.
pub fn write_raw<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    block_size: u32,
    target: RawTarget<'_>,
    progress: &mut dyn Progress,
) -> Result<CopyStats> {
    let bs = u64::from(block_size);
    let total = map
        .blocks_count()
        .checked_mul(bs)
        .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))?;
    let mut stats = CopyStats::default();
    let bsz = block_size as usize;
    progress.phase(
        "copying",
        map.selected_blocks(),
        crate::progress::Unit::Blocks,
    );
    match target {
        RawTarget::NewFile(file) => {
            stats.past_end_blocks = for_each_chunk(src, map, block_size, &mut |blk, data| {
                zero_runs(data, bsz, &mut |i, n, z| {
                    if z {
                        stats.zero_blocks += n as u64;
                    } else {
                        let off = (blk + i as u64) * bs;
                        pwrite_full(file, &data[i * bsz..(i + n) * bsz], off)
                            .map_err(|e| Error::io("write", off, e))?;
                        stats.bytes_written += (n * bsz) as u64;
                    }
                    Ok(())
                })?;
                stats.blocks += (data.len() / bsz) as u64;
                progress.update(stats.blocks);
                Ok(())
            })?;
            file.set_len(total)
                .map_err(|e| Error::io("truncate", total, e))?;
        }
        RawTarget::InPlace {
            file,
            dest_offset,
            check,
            grow_to_end,
        } => {
            let mut cmp = Vec::new();
            stats.past_end_blocks = for_each_chunk(src, map, block_size, &mut |blk, data| {
                let off = dest_offset
                    .checked_add(blk * bs)
                    .ok_or_else(|| Error::InvalidInput("destination offset overflows".into()))?;
                if check {
                    cmp.resize(data.len(), 0);
                    let got =
                        pread_full(file, &mut cmp, off).map_err(|e| Error::io("read", off, e))?;
                    // Past the end of the target counts as different.
                    let mut i = 0;
                    while i < data.len() / bsz {
                        let same = |k: usize| {
                            (k + 1) * bsz <= got
                                && cmp[k * bsz..(k + 1) * bsz] == data[k * bsz..(k + 1) * bsz]
                        };
                        let s = same(i);
                        let mut j = i + 1;
                        while j < data.len() / bsz && same(j) == s {
                            j += 1;
                        }
                        if s {
                            stats.identical_blocks += (j - i) as u64;
                        } else {
                            let o = off + (i * bsz) as u64;
                            pwrite_full(file, &data[i * bsz..j * bsz], o)
                                .map_err(|e| Error::io("write", o, e))?;
                            stats.bytes_written += ((j - i) * bsz) as u64;
                        }
                        i = j;
                    }
                } else {
                    pwrite_full(file, data, off).map_err(|e| Error::io("write", off, e))?;
                    stats.bytes_written += data.len() as u64;
                }
                stats.zero_blocks += data.chunks(bsz).filter(|b| block_is_zero(b)).count() as u64;
                stats.blocks += (data.len() / bsz) as u64;
                progress.update(stats.blocks);
                Ok(())
            })?;
            if grow_to_end {
                let end = dest_offset.saturating_add(total);
                let len = file.metadata().map_err(|e| Error::io("stat", 0, e))?.len();
                if file.metadata().map(|m| m.is_file()).unwrap_or(false) && len < end {
                    file.set_len(end)
                        .map_err(|e| Error::io("truncate", end, e))?;
                }
            }
        }
        RawTarget::Stream(w) => {
            let zeros = vec![0u8; IO_CHUNK];
            let mut pos: u64 = 0;
            let fill = |w: &mut dyn Write, from: u64, to: u64| -> Result<()> {
                let mut p = from;
                while p < to {
                    let n = (to - p).min(IO_CHUNK as u64) as usize;
                    w.write_all(&zeros[..n])
                        .map_err(|e| Error::io("write", p, e))?;
                    p += n as u64;
                }
                Ok(())
            };
            stats.past_end_blocks = for_each_chunk(src, map, block_size, &mut |blk, data| {
                let off = blk * bs;
                fill(&mut *w, pos, off)?;
                w.write_all(data).map_err(|e| Error::io("write", off, e))?;
                pos = off + data.len() as u64;
                stats.blocks += (data.len() / bsz) as u64;
                progress.update(stats.blocks);
                Ok(())
            })?;
            fill(&mut *w, pos, total)?;
            w.flush().map_err(|e| Error::io("write", total, e))?;
            stats.bytes_written = total;
        }
    }
    progress.finish();
    Ok(stats)
}
