//! The raw (sparse) writer: a sink that takes the selected blocks in order and writes them
//! to a new file (zero blocks as holes), an existing file or block device (in place), a
//! stream (holes as zeros), or lists them (`-n`).

use std::fs::File;
use std::io::Write;

use crate::blockmap::BlockMap;
use crate::io::{ReadAt, pread_full, pwrite_full};
use crate::pieces::{IO_CHUNK, Piece, block_is_zero, for_each_piece, same_runs, zero_runs};
use crate::progress::Progress;
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
    /// The first of them.
    pub unreadable: Vec<u64>,
    /// Blocks skipped because the target already held the same bytes (`-c`).
    pub identical_blocks: u64,
    /// Bytes written to the output.
    pub bytes_written: u64,
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
    /// Write nothing; describe each write on the given stream instead (`-n`).
    DryRun(&'a mut dyn Write),
}

/// Accepts the blocks of a raw image in ascending order and writes them to a [`RawTarget`].
pub struct RawSink<'a> {
    target: RawTarget<'a>,
    bs: u64,
    total: u64,
    /// Next byte a stream target expects.
    pos: u64,
    cmp: Vec<u8>,
    zeros: Vec<u8>,
    stats: CopyStats,
}

impl<'a> RawSink<'a> {
    /// A sink for an image of `blocks_count` blocks of `block_size` bytes.
    pub fn new(target: RawTarget<'a>, block_size: u32, blocks_count: u64) -> Result<Self> {
        let bs = u64::from(block_size);
        let total = blocks_count
            .checked_mul(bs)
            .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))?;
        if let RawTarget::InPlace { dest_offset, .. } = &target {
            dest_offset
                .checked_add(total)
                .ok_or_else(|| Error::InvalidInput("destination offset overflows".into()))?;
        }
        Ok(RawSink {
            target,
            bs,
            total,
            pos: 0,
            cmp: Vec::new(),
            zeros: Vec::new(),
            stats: CopyStats::default(),
        })
    }

    pub fn stats(&self) -> &CopyStats {
        &self.stats
    }

    fn check_range(&self, block: u64, count: u64) -> Result<u64> {
        let end = block
            .checked_add(count)
            .and_then(|e| e.checked_mul(self.bs))
            .filter(|&e| e <= self.total)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "blocks {block}+{count} lie past the end of the image"
                ))
            })?;
        let start = block * self.bs;
        if start < self.pos {
            return Err(Error::InvalidInput(format!(
                "block {block} arrives out of order"
            )));
        }
        Ok(end)
    }

    fn fill_stream(&mut self, to: u64) -> Result<()> {
        if let RawTarget::Stream(w) = &mut self.target {
            if self.zeros.is_empty() {
                self.zeros = vec![0u8; IO_CHUNK];
            }
            while self.pos < to {
                let n = (to - self.pos).min(IO_CHUNK as u64) as usize;
                w.write_all(&self.zeros[..n])
                    .map_err(|e| Error::io("write", self.pos, e))?;
                self.pos += n as u64;
                self.stats.bytes_written += n as u64;
            }
        }
        Ok(())
    }

    /// Write consecutive blocks starting at `block`.
    pub fn put(&mut self, block: u64, data: &[u8]) -> Result<()> {
        let bsz = self.bs as usize;
        let count = (data.len() / bsz) as u64;
        let end = self.check_range(block, count)?;
        let start = block * self.bs;
        self.stats.blocks += count;
        match &mut self.target {
            RawTarget::NewFile(file) => {
                let file: &File = file;
                let mut zero = 0;
                zero_runs(data, bsz, &mut |i, n, z| {
                    if z {
                        zero += n as u64;
                    } else {
                        let off = start + (i * bsz) as u64;
                        pwrite_full(file, &data[i * bsz..(i + n) * bsz], off)
                            .map_err(|e| Error::io("write", off, e))?;
                    }
                    Ok(())
                })?;
                self.stats.zero_blocks += zero;
                self.stats.bytes_written += (count - zero) * self.bs;
            }
            RawTarget::InPlace {
                file,
                dest_offset,
                check,
                ..
            } => {
                let file: &File = file;
                let off = *dest_offset + start;
                self.stats.zero_blocks +=
                    data.chunks(bsz).filter(|b| block_is_zero(b)).count() as u64;
                if *check {
                    self.cmp.resize(data.len(), 0);
                    let got = pread_full(file, &mut self.cmp, off)
                        .map_err(|e| Error::io("read", off, e))?;
                    let stats = &mut self.stats;
                    same_runs(data, &self.cmp, got, bsz, &mut |i, n, same| {
                        if same {
                            stats.identical_blocks += n as u64;
                        } else {
                            let o = off + (i * bsz) as u64;
                            pwrite_full(file, &data[i * bsz..(i + n) * bsz], o)
                                .map_err(|e| Error::io("write", o, e))?;
                            stats.bytes_written += (n * bsz) as u64;
                        }
                        Ok(())
                    })?;
                } else {
                    pwrite_full(file, data, off).map_err(|e| Error::io("write", off, e))?;
                    self.stats.bytes_written += data.len() as u64;
                }
            }
            RawTarget::Stream(_) => {
                self.fill_stream(start)?;
                if let RawTarget::Stream(w) = &mut self.target {
                    w.write_all(data)
                        .map_err(|e| Error::io("write", start, e))?;
                }
                self.stats.bytes_written += data.len() as u64;
            }
            RawTarget::DryRun(w) => {
                writeln!(
                    w,
                    "would write blocks {block}..{} ({count} blocks)",
                    block + count
                )
                .map_err(|e| Error::io("write", 0, e))?;
            }
        }
        self.pos = end;
        Ok(())
    }

    /// `count` selected blocks from `block` that are all zeros.
    pub fn put_zeros(&mut self, block: u64, count: u64) -> Result<()> {
        let end = self.check_range(block, count)?;
        match &mut self.target {
            RawTarget::NewFile(_) => {
                self.stats.blocks += count;
                self.stats.zero_blocks += count;
                self.pos = end;
            }
            RawTarget::Stream(_) => {
                self.stats.blocks += count;
                self.stats.zero_blocks += count;
                self.fill_stream(end)?;
            }
            RawTarget::DryRun(w) => {
                writeln!(
                    w,
                    "would write blocks {block}..{} ({count} zero blocks)",
                    block + count
                )
                .map_err(|e| Error::io("write", 0, e))?;
                self.stats.blocks += count;
                self.stats.zero_blocks += count;
                self.pos = end;
            }
            RawTarget::InPlace { .. } => {
                if self.zeros.is_empty() {
                    self.zeros = vec![0u8; IO_CHUNK];
                }
                let per = (IO_CHUNK as u64 / self.bs).max(1);
                let mut b = block;
                let zeros = std::mem::take(&mut self.zeros);
                while b < block + count {
                    let n = per.min(block + count - b);
                    self.put(b, &zeros[..(n * self.bs) as usize])?;
                    b += n;
                }
                self.zeros = zeros;
            }
        }
        Ok(())
    }

    /// Complete the image: a new file gets its full size, a stream its trailing zeros, an
    /// in-place target grows (never shrinks) to the image end when asked.
    pub fn finish(mut self) -> Result<CopyStats> {
        let total = self.total;
        match &mut self.target {
            RawTarget::NewFile(file) => {
                file.set_len(total)
                    .map_err(|e| Error::io("truncate", total, e))?;
            }
            RawTarget::InPlace {
                file,
                dest_offset,
                grow_to_end: true,
                ..
            } => {
                let end = dest_offset.saturating_add(total);
                let meta = file.metadata().map_err(|e| Error::io("stat", 0, e))?;
                if meta.is_file() && meta.len() < end {
                    file.set_len(end)
                        .map_err(|e| Error::io("truncate", end, e))?;
                }
            }
            RawTarget::Stream(_) => {
                self.fill_stream(total)?;
                if let RawTarget::Stream(w) = &mut self.target {
                    w.flush().map_err(|e| Error::io("write", total, e))?;
                }
            }
            _ => {}
        }
        Ok(self.stats)
    }
}

/// Write the selected blocks of `src` as a raw image of `map.blocks_count()` blocks.
pub fn write_raw<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    block_size: u32,
    target: RawTarget<'_>,
    progress: &mut dyn Progress,
) -> Result<CopyStats> {
    let mut sink = RawSink::new(target, block_size, map.blocks_count())?;
    progress.block_size(block_size);
    progress.phase(
        "copying",
        map.selected_blocks(),
        crate::progress::Unit::Blocks,
    );
    let past = for_each_piece(src, map, block_size, &mut |p| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockmap::Run;
    use crate::io::MemSource;
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
                return Err(Error::io(
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

    #[test]
    fn read_errors_are_reported_per_block_and_the_rest_copied() {
        let bs = 1024u64;
        let data: Vec<u8> = (0..64 * bs).map(|i| (i / bs) as u8 + 1).collect();
        // Blocks 10 and 11 are unreadable.
        let src = Faulty {
            inner: MemSource(data.clone()),
            bad: 10 * bs + 100..11 * bs + 5,
        };
        let map = BlockMap::from_runs([Run { start: 2, len: 20 }, Run { start: 40, len: 3 }], 64);
        let mut out = Vec::new();
        let st = write_raw(
            &src,
            &map,
            1024,
            RawTarget::Stream(&mut out),
            &mut NoProgress,
        )
        .unwrap();
        assert_eq!(st.unreadable_blocks, 2);
        assert_eq!(st.unreadable, vec![10, 11]);
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
