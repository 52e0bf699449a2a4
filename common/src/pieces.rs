//! Reading the selected blocks of a source in large pieces: consecutive blocks coalesced
//! into reads of up to [`PIECE_MAX`] bytes, holes of the source skipped (SEEK_DATA), unreadable
//! blocks salvaged one by one. Every writer (raw, qcow2, stream, normal) reads through here.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use crate::blockmap::{BlockMap, BlockRun};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::io::{AlignedBuf, DIRECT_ALIGN, ReadAt};
use crate::progress::Progress;
use crate::readplan;
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// Largest single read or write.
pub const IO_CHUNK: usize = 4 << 20;

/// Largest piece a [`read_ahead`] pass hands over, and the size of its buffers: 2 MiB
/// reads cost no more than 4 MiB ones from the page cache (the device sees the hints'
/// sizes), and the pool stays at 6 MiB (peak RSS).
pub const PIECE_MAX: usize = 2 << 20;

/// Blocks in one [`PIECE_MAX`] (32 to 2048).
pub fn piece_blocks(bs: BlockSize) -> u64 {
    bs.blocks_in(PIECE_MAX as u64).max(1)
}

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
/// [`PIECE_MAX`] bytes of consecutive blocks. Holes in the source are not read.
/// Returns the number of blocks that lay past the end of the source (read as zeros).
/// The reads run on a second thread, ahead of `f` (see [`read_ahead`]).
pub fn for_each_chunk<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    bs: BlockSize,
    f: &mut dyn FnMut(FsBlock, &[u8]) -> Result<()>,
) -> Result<u64> {
    for_each_chunk_of_runs(src, map.runs(), bs, f)
}

/// [`for_each_chunk`] over `runs` in the order given (the normal format's inode tables go
/// in group order, which need not be block order).
pub fn for_each_chunk_of_runs<S: ReadAt + ?Sized>(
    src: &S,
    runs: &[BlockRun],
    bs: BlockSize,
    f: &mut dyn FnMut(FsBlock, &[u8]) -> Result<()>,
) -> Result<u64> {
    let per = piece_blocks(bs);
    let produce = |out: &mut Producer| {
        let mut past_end = 0u64;
        let mut ahead = readplan::for_runs(src, runs, bs);
        for run in runs {
            let mut b = run.start;
            while b < run.end() {
                let n = per.min(run.end().saturating_since(b));
                let len = buf_len(bs, n);
                let off = offset(bs, b)?;
                ahead.at(off);
                out.data(b, len, &mut |buf| {
                    let past = src.read_sparse_at(buf, off)?;
                    past_end = past_end.saturating_add(bs.blocks_covering(past as u64));
                    Ok(())
                })?;
                b = b.saturating_add(n);
            }
        }
        Ok(past_end)
    };
    read_ahead(produce, &mut |p| match p {
        Piece::Data(b, data) => f(b, data),
        Piece::Zero(..) => Ok(()),
    })
}

/// Buffers of [`PIECE_MAX`] bytes in flight between the reading thread and the caller: one
/// being filled, one being used, one ready. Peak memory stays a few MiB whatever the size
/// of the filesystem.
const POOL: usize = 3;
/// Pieces per batch at most (a batch is handed over when full or when its buffer is).
const BATCH_ITEMS: usize = 512;
/// Small pieces are packed into the first MiB of a buffer only: a selection of small
/// pieces then touches 3 MiB of the pool rather than 6 (peak RSS on a 2 TiB filesystem).
const PACK_BYTES: usize = 1 << 20;

/// One piece of a [`Batch`]: data at `start..start + len` of the batch's buffer, or zeros.
#[derive(Debug, Clone, Copy)]
enum Item {
    Data {
        block: FsBlock,
        start: usize,
        len: usize,
    },
    Zero {
        block: FsBlock,
        count: u64,
    },
}

/// Consecutive pieces, packed into one buffer so that small pieces cost one hand-over
/// between them rather than one each.
struct Batch {
    buf: Option<AlignedBuf>,
    used: usize,
    items: Vec<Item>,
}

/// The reading side of [`read_ahead`]: packs pieces into batches and hands them over.
pub struct Producer {
    free: Receiver<AlignedBuf>,
    out: Option<SyncSender<Batch>>,
    cur: Batch,
    /// Buffers of batches the caller no longer took (it failed).
    kept: Vec<AlignedBuf>,
}

/// The caller stopped (its own error is the one reported).
fn stopped() -> Error {
    Error::InvalidInput("the reader stopped: its consumer failed".into())
}

impl Producer {
    fn flush(&mut self) -> Result<()> {
        if self.cur.items.is_empty() {
            return Ok(());
        }
        let b = std::mem::replace(
            &mut self.cur,
            Batch {
                buf: None,
                used: 0,
                items: Vec::new(),
            },
        );
        let sent = match &self.out {
            Some(out) => out.send(b).map_err(|e| e.0),
            None => Err(b),
        };
        sent.map_err(|b| {
            self.kept.extend(b.buf);
            stopped()
        })
    }

    fn push(&mut self, item: Item) -> Result<()> {
        self.cur.items.push(item);
        if self.cur.items.len() >= BATCH_ITEMS {
            self.flush()?;
        }
        Ok(())
    }

    /// `count` blocks from `block` that read as zeros (not read).
    pub fn zero(&mut self, block: FsBlock, count: u64) -> Result<()> {
        self.push(Item::Zero { block, count })
    }

    /// `len` bytes (at most [`PIECE_MAX`]) of blocks from `block`, filled by `fill`. Each
    /// piece starts on a [`crate::io::DIRECT_ALIGN`] boundary of its buffer, so that
    /// writers can pass it on with O_DIRECT.
    pub fn data(
        &mut self,
        block: FsBlock,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        if len > PIECE_MAX {
            return Err(Error::InvalidInput(format!(
                "a {len}-byte piece is larger than the reader's {PIECE_MAX}-byte buffers"
            )));
        }
        let start = self
            .cur
            .used
            .checked_next_multiple_of(DIRECT_ALIGN)
            .unwrap_or(PIECE_MAX);
        let fits =
            self.cur.buf.is_some() && start.checked_add(len).is_some_and(|e| e <= PACK_BYTES);
        let start = if fits {
            start
        } else {
            self.flush()?;
            if self.cur.buf.is_none() {
                self.cur.buf = Some(self.free.recv().map_err(|_| stopped())?);
            }
            0
        };
        let end = start.saturating_add(len);
        let buf = self.cur.buf.as_mut().ok_or_else(stopped)?;
        fill(buf.get_mut(end).get_mut(start..).unwrap_or_default())?;
        self.cur.used = end;
        self.push(Item::Data { block, start, len })
    }
}

/// Run `produce` on a second thread, which reads pieces into a small pool of buffers
/// ([`POOL`] × [`PIECE_MAX`]), while `f` takes them in order on this one: the device works
/// while the caller hashes, compares or writes, and on two cores the copies into and out of
/// the page cache run side by side. Returns what `produce` returns; an error of `f` stops
/// the reader and is the one returned.
pub fn read_ahead<T: Send>(
    produce: impl FnOnce(&mut Producer) -> Result<T> + Send,
    f: &mut dyn FnMut(Piece<'_>) -> Result<()>,
) -> Result<T> {
    let (free_tx, free_rx) = sync_channel::<AlignedBuf>(POOL);
    let (out_tx, out_rx) = sync_channel::<Batch>(POOL);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut p = Producer {
                free: free_rx,
                out: Some(out_tx),
                cur: Batch {
                    buf: None,
                    used: 0,
                    items: Vec::new(),
                },
                kept: Vec::new(),
            };
            // The pieces read before an error are delivered too (as a single-threaded pass
            // would have).
            let r = produce(&mut p);
            let flushed = p.flush();
            // Ends the caller's loop; the buffers go back to the caller's thread, which made
            // them (allocators that count per thread see them freed where they were made).
            p.out = None;
            p.kept.extend(p.cur.buf.take());
            (r.and_then(|v| flushed.map(|()| v)), p.free, p.kept)
        });
        let mut failed = None;
        // Zeroed allocations of this size are fresh mappings: a buffer costs memory only as
        // far as reads fill it (a small filesystem touches a few pages).
        for _ in 0..POOL {
            let _ = free_tx.send(AlignedBuf::new(PIECE_MAX));
        }
        for batch in out_rx.iter() {
            for item in &batch.items {
                let r = match *item {
                    Item::Zero { block, count } => f(Piece::Zero(block, count)),
                    Item::Data { block, start, len } => {
                        let data = batch
                            .buf
                            .as_ref()
                            .and_then(|b| b.get(PIECE_MAX).get(start..start.saturating_add(len)))
                            .unwrap_or_default();
                        f(Piece::Data(block, data))
                    }
                };
                if let Err(e) = r {
                    failed = Some(e);
                    break;
                }
            }
            if failed.is_some() {
                break;
            }
            if let Some(b) = batch.buf {
                let _ = free_tx.send(b);
            }
        }
        // Unblock a reader waiting for a buffer or for room to hand a batch over.
        drop(free_tx);
        drop(out_rx);
        let (produced, free, kept) = match reader.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        drop(kept);
        drop(free);
        match failed {
            Some(e) => Err(e),
            None => produced,
        }
    })
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
    /// The first runs of unreadable blocks met (at most [`UNREADABLE_SAMPLE`]).
    pub unreadable: Vec<BlockRun>,
}

/// How many runs of unreadable blocks a [`ReadReport`] lists.
pub const UNREADABLE_SAMPLE: usize = 1000;

/// Add unreadable block `b` to `list`: it extends the last run when it follows it, else
/// starts a run while there is room.
fn note_unreadable(list: &mut Vec<BlockRun>, b: FsBlock) {
    if let Some(r) = list.last_mut()
        && r.checked_end() == Some(b)
    {
        r.len = r.len.saturating_add(1);
    } else if list.len() < UNREADABLE_SAMPLE {
        list.push(BlockRun::new(b, 1));
    }
}

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
                        note_unreadable(&mut rep.unreadable, b);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Walk the selected blocks in order, reading data in pieces of at most [`PIECE_MAX`] bytes
/// and reporting holes of the source as [`Piece::Zero`] without reading or materialising
/// them. Blocks that cannot be read are passed on as zeros and listed in the report.
/// The reads run on a second thread, ahead of `f` (see [`read_ahead`]).
pub fn for_each_piece<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    bs: BlockSize,
    f: &mut dyn FnMut(Piece<'_>) -> Result<()>,
) -> Result<ReadReport> {
    let produce = |out: &mut Producer| {
        let mut rep = ReadReport::default();
        produce_map(src, map, bs, out, &mut rep)?;
        Ok(rep)
    };
    read_ahead(produce, f)
}

/// [`for_each_piece`] over the maps `next` hands over one after another (each in order;
/// together in any order), on one reading thread with one pool of buffers: a caller that
/// learns its blocks as it goes (a scan) has them read as soon as they are known. `next`
/// runs on the reading thread and ends the pass with `None`.
pub fn for_each_piece_of_maps<S: ReadAt + ?Sized>(
    src: &S,
    bs: BlockSize,
    mut next: impl FnMut() -> Result<Option<BlockMap>> + Send,
    f: &mut dyn FnMut(Piece<'_>) -> Result<()>,
) -> Result<ReadReport> {
    let produce = |out: &mut Producer| {
        let mut rep = ReadReport::default();
        while let Some(map) = next()? {
            // Each map's own first runs (a map is in block order, the maps are not): the
            // report keeps the lowest of them all, as one ordered pass would have listed
            // them (one shared list filled up with whatever maps came first).
            let mut one = ReadReport::default();
            produce_map(src, &map, bs, out, &mut one)?;
            rep.past_end_blocks = rep.past_end_blocks.saturating_add(one.past_end_blocks);
            rep.unreadable_blocks = rep.unreadable_blocks.saturating_add(one.unreadable_blocks);
            rep.unreadable.extend(one.unreadable);
            if rep.unreadable.len() > UNREADABLE_SAMPLE.saturating_mul(2) {
                keep_lowest_runs(&mut rep.unreadable);
            }
        }
        keep_lowest_runs(&mut rep.unreadable);
        Ok(rep)
    };
    read_ahead(produce, f)
}

/// Sort `runs`, join those that touch, and keep the first [`UNREADABLE_SAMPLE`].
fn keep_lowest_runs(runs: &mut Vec<BlockRun>) {
    let joined = BlockMap::from_runs(runs.drain(..), u64::MAX);
    runs.extend(joined.runs().iter().take(UNREADABLE_SAMPLE).copied());
}

/// The reading side of [`for_each_piece`] for one map.
fn produce_map<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    bs: BlockSize,
    out: &mut Producer,
    rep: &mut ReadReport,
) -> Result<()> {
    let per = piece_blocks(bs);
    // The first block the source does not hold (whole or in part).
    let src_end = FsBlock(bs.blocks_covering(src.size()));
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
                    out.zero(b, end.saturating_since(b))?;
                    b = end;
                }
                Some(r) if r.start >= off.saturating_add(bs.bytes()) => {
                    // Whole blocks before the next data are zeros.
                    let z_end = bs.block_of(r.start).min(end);
                    rep.past_end_blocks = rep
                        .past_end_blocks
                        .saturating_add(z_end.saturating_since(b.max(src_end).min(z_end)));
                    out.zero(b, z_end.saturating_since(b))?;
                    b = z_end;
                }
                Some(r) => {
                    let data_end = FsBlock(bs.blocks_covering(r.end)).max(b.saturating_add(1));
                    let n = per
                        .min(end.saturating_since(b))
                        .min(data_end.saturating_since(b));
                    let len = buf_len(bs, n);
                    out.data(b, len, &mut |buf| read_salvaging(src, buf, b, bs, rep))?;
                    b = b.saturating_add(n);
                }
            }
        }
    }
    Ok(())
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

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)] // tests compute expected values freely
mod tests {
    use super::*;
    use crate::io::MemSource;

    /// 2,000 one-block runs with gaps, a long run and a run past the source's end: the
    /// pieces arrive in order with the source's bytes, several batches and buffers deep.
    #[test]
    fn pieces_arrive_in_order_with_their_bytes() {
        let bs = BlockSize::new(1024).unwrap();
        let blocks = 12_000u64;
        let bytes: Vec<u8> = (0..blocks * 1024)
            .map(|i| (i * 7 / 1024 + i) as u8)
            .collect();
        let src = MemSource(bytes[..(blocks as usize - 100) * 1024].to_vec());
        let mut runs: Vec<BlockRun> = (0..2000)
            .map(|i| BlockRun::new(FsBlock(i * 3), 1))
            .collect();
        runs.push(BlockRun::new(FsBlock(6000), 5950));
        let map = BlockMap::from_runs(runs.iter().copied(), blocks);
        let mut seen = Vec::new();
        let rep = for_each_piece(&src, &map, bs, &mut |p| {
            match p {
                Piece::Data(b, d) => {
                    assert_eq!(d.as_ptr().align_offset(DIRECT_ALIGN), 0);
                    let at = b.get() as usize * 1024;
                    let want: Vec<u8> = (at..at + d.len())
                        .map(|i| if i < src.0.len() { bytes[i] } else { 0 })
                        .collect();
                    assert_eq!(d, &want[..], "block {b}");
                    seen.push((b.get(), d.len() as u64 / 1024));
                }
                Piece::Zero(b, n) => seen.push((b.get(), n)),
            }
            Ok(())
        })
        .unwrap();
        // Every selected block exactly once, in order.
        let mut next = Vec::new();
        for (b, n) in &seen {
            next.extend(*b..b + n);
        }
        let want: Vec<u64> = runs
            .iter()
            .flat_map(|r| r.start.get()..r.end().get())
            .collect();
        assert_eq!(next, want);
        assert_eq!(rep.past_end_blocks, 50);

        let mut chunks = Vec::new();
        let past = for_each_chunk(&src, &map, bs, &mut |b, d| {
            chunks.push((b.get(), d.len() as u64 / 1024));
            Ok(())
        })
        .unwrap();
        assert_eq!(past, 50);
        let mut next = Vec::new();
        for (b, n) in &chunks {
            next.extend(*b..b + n);
        }
        assert_eq!(next, want);
    }

    /// An error of the caller stops the reader and is the one returned; an error of the
    /// reader is returned after the pieces before it.
    #[test]
    fn errors_stop_both_sides() {
        let bs = BlockSize::new(4096).unwrap();
        let src = MemSource(vec![1u8; 64 << 20]);
        let map = BlockMap::from_runs((0..4000).map(|i| BlockRun::new(FsBlock(i * 4), 2)), 16384);
        let mut calls = 0;
        let r = for_each_piece(&src, &map, bs, &mut |_| {
            calls += 1;
            if calls == 700 {
                return Err(Error::InvalidInput("consumer says no".into()));
            }
            Ok(())
        });
        assert!(matches!(r, Err(Error::InvalidInput(m)) if m == "consumer says no"));
        assert_eq!(calls, 700);

        let mut got = 0;
        let r = read_ahead(
            |p: &mut Producer| {
                for i in 0..100u64 {
                    p.data(FsBlock(i), 4096, &mut |b| {
                        b.fill(i as u8);
                        Ok(())
                    })?;
                }
                Err::<(), _>(Error::InvalidInput("reader says no".into()))
            },
            &mut |p| {
                if let Piece::Data(b, d) = p {
                    assert!(d.iter().all(|&x| x == b.get() as u8));
                    got += 1;
                }
                Ok(())
            },
        );
        assert!(matches!(r, Err(Error::InvalidInput(m)) if m == "reader says no"));
        assert_eq!(got, 100, "pieces read before the error are delivered");
    }
}
