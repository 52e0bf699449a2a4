//! `e2i-move`: clone a filesystem between offsets (e2image -ra -o S -O D SRC DST), or move
//! it inside one file or device, crash-safely (e2image -ra -o S -O D SRC).
//!
//! Both read the block map of `e2image -ra` (`--metadata-only`: of `e2image -r`) and copy
//! the selected blocks in large coalesced pieces. The in-place move is driven by a durable
//! journal ([`super::move_journal`]); docs/move-journal.md explains why it survives a kill
//! at any instant.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::blockmap::{BlockMap, Run};
use crate::ext4::{Filesystem, OpenOptions as FsOpen};
use crate::io::{FileSource, ReadAt, pread_full, pwrite_full};
use crate::ops::capture::{CaptureOptions, scan_source};
use crate::ops::move_journal::{Journal, MoveParams, State};
use crate::pieces::{same_runs, zero_runs};
use crate::progress::{Progress, Unit};
use crate::{Error, Result};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Bytes per piece of an in-place move (the unit of copying, saving and progress).
pub const PIECE_BYTES: u64 = 32 << 20;
/// Selected runs closer than this are moved as one span (free blocks between them are
/// copied too, which is harmless and saves pieces and checkpoints).
pub const MERGE_GAP_BYTES: u64 = 256 << 10;

/// Options shared by clones and moves.
#[derive(Debug, Clone, Default)]
pub struct MoveOptions {
    /// `-o`: byte offset of the filesystem in SOURCE.
    pub src_offset: u64,
    /// `-O`: byte offset of the copy in DEST (or in SOURCE for a move).
    pub dest_offset: u64,
    /// Clone the metadata only (e2image -r), not the file data.
    pub metadata_only: bool,
    /// `-c`: read the target first and skip blocks that already hold the data.
    pub check: bool,
    /// `-n`: report the blocks that would be written; create and change nothing.
    pub dry_run: bool,
    /// Test hook: sleep this many microseconds per MiB moved (so a test can kill a move
    /// in the middle). Zero in normal use.
    pub throttle_us_per_mib: u64,
    /// Test hook: piece size in bytes for a new move (0: [`PIECE_BYTES`]), so that a small
    /// test filesystem still has many pieces. Rounded down to whole blocks.
    pub piece_bytes: u64,
}

/// Where a clone goes.
#[derive(Debug, Clone, Copy)]
pub enum CloneTarget<'a> {
    /// A file created for this run: all-zero blocks stay holes; the caller sets the name.
    NewFile(&'a File),
    /// An existing file or block device, updated inside `[O, O + fs size)` only.
    Existing(&'a File),
}

/// What a clone or move did.
#[derive(Debug, Default, Clone)]
pub struct MoveReport {
    pub block_size: u32,
    pub blocks_count: u64,
    /// Blocks selected by the scan.
    pub selected_blocks: u64,
    /// Selected blocks visited.
    pub blocks: u64,
    /// Blocks skipped because the target already held them (`-c`).
    pub identical_blocks: u64,
    /// Bytes written to the target.
    pub bytes_written: u64,
    /// Blocks written with copy_file_range (no trip through user space).
    pub offloaded_blocks: u64,
    /// Selected blocks past the end of the source, copied as zeros.
    pub past_end_blocks: u64,
    /// A move: pieces in all, and the piece this run started at (non-zero: resumed).
    pub pieces: u64,
    pub started_at_piece: u64,
    /// A move resumed from its journal.
    pub resumed: bool,
    /// The move recorded in the journal was already finished: nothing was done.
    pub already_done: bool,
    /// Durable checkpoints and saved pieces written by a move.
    pub checkpoints: u64,
    pub saved_pieces: u64,
    /// A clone of a damaged filesystem: the structures skipped (as e2image skips them).
    pub problems: Vec<String>,
}

fn overflow(what: &str) -> Error {
    Error::InvalidInput(format!("{what} overflows"))
}

fn file_size(file: &File) -> Result<(u64, bool)> {
    let meta = file.metadata().map_err(|e| Error::io("stat", 0, e))?;
    if meta.file_type().is_block_device() {
        let src = FileSource::from_file(file.try_clone().map_err(|e| Error::io("dup", 0, e))?, 0)?;
        Ok((src.size(), true))
    } else {
        Ok((meta.len(), false))
    }
}

fn fs_bytes(bs: u32, blocks: u64) -> Result<u64> {
    blocks
        .checked_mul(u64::from(bs))
        .ok_or_else(|| overflow("filesystem size"))
}

/// Clone the filesystem at `opts.src_offset` in `source` to `target` at `opts.dest_offset`.
/// `on_write(first_block, count)` is told each run of blocks that is (or with `dry_run`
/// would be) written.
pub fn clone_fs(
    source: &Path,
    target: CloneTarget<'_>,
    opts: &MoveOptions,
    on_write: &mut dyn FnMut(u64, u64),
    progress: &mut dyn Progress,
) -> Result<MoveReport> {
    let (out, new_file) = match target {
        CloneTarget::NewFile(f) => (f, true),
        CloneTarget::Existing(f) => (f, false),
    };
    let (out_len, out_dev) = file_size(out)?;
    let src = FileSource::open(source, opts.src_offset)?;
    let copts = CaptureOptions {
        all_data: !opts.metadata_only,
        open: FsOpen::default(),
        offset: opts.src_offset,
        // Like e2image -ra, a clone copies what it can of a damaged filesystem (the
        // problems are reported); a move refuses one.
        strict: false,
        ..CaptureOptions::default()
    };
    let (fs, res) = scan_source(src, &copts, out_dev, progress)?;
    let bs = fs.sb.block_size;
    let bsu = u64::from(bs);
    let bsz = bs as usize;
    let total = fs_bytes(bs, fs.sb.blocks_count)?;
    let end = opts
        .dest_offset
        .checked_add(total)
        .ok_or_else(|| overflow("destination offset plus filesystem size"))?;
    if out_dev && end > out_len {
        return Err(Error::NoRoom {
            have: out_len,
            need: end,
        });
    }
    let map: &BlockMap = &res.map;
    let mut rep = MoveReport {
        block_size: bs,
        blocks_count: fs.sb.blocks_count,
        selected_blocks: map.selected_blocks(),
        problems: res.problems.iter().map(|p| p.to_string()).collect(),
        ..MoveReport::default()
    };
    // Progress counts bytes (the binaries do not know the block size up front).
    progress.phase(
        "copying",
        rep.selected_blocks.saturating_mul(bsu),
        Unit::Bytes,
    );
    let dest = opts.dest_offset;
    // Writes bypass the page cache (O_DIRECT) where the target and alignment allow: the
    // copy then costs one memory copy per byte instead of two, and leaves no dirty pages.
    let mut direct = if opts.dry_run {
        None
    } else {
        reopen_direct(out)
    };
    let mut cmp = Vec::new();
    let mut write = |rep: &mut MoveReport, blk: u64, data: &[u8]| -> Result<()> {
        let n = (data.len() / bsz) as u64;
        on_write(blk, n);
        if !opts.dry_run {
            let off = dest + blk * bsu;
            write_maybe_direct(out, &mut direct, data, off)?;
            rep.bytes_written += data.len() as u64;
        }
        Ok(())
    };
    let runs = map.runs();
    let (src_path, src_off) = (source.to_path_buf(), opts.src_offset);
    rep.past_end_blocks = std::thread::scope(|scope| -> Result<u64> {
        let (full_tx, full_rx) = sync_channel::<Result<Chunk>>(POOL);
        let (free_tx, free_rx) = sync_channel::<AlignedBuf>(POOL);
        for _ in 0..POOL {
            let _ = free_tx.send(AlignedBuf::new(CLONE_CHUNK));
        }
        scope.spawn(move || read_ahead(&src_path, src_off, runs, bs, full_tx, free_rx));
        let mut past = 0;
        for chunk in full_rx {
            let chunk = chunk?;
            past += chunk.past_blocks;
            let blk = chunk.blk;
            let data = chunk.buf.get(chunk.len);
            let n = data.len() / bsz;
            if new_file {
                // A fresh file: all-zero blocks stay holes, as e2image leaves them.
                zero_runs(data, bsz, &mut |i, k, zero| {
                    if !zero {
                        write(&mut rep, blk + i as u64, &data[i * bsz..(i + k) * bsz])?;
                    }
                    Ok(())
                })?;
            } else if opts.check {
                let off = dest + blk * bsu;
                cmp.resize(data.len(), 0);
                let got = pread_full(out, &mut cmp, off).map_err(|e| Error::io("read", off, e))?;
                same_runs(data, &cmp, got, bsz, &mut |i, k, same| {
                    if same {
                        rep.identical_blocks += k as u64;
                        Ok(())
                    } else {
                        write(&mut rep, blk + i as u64, &data[i * bsz..(i + k) * bsz])
                    }
                })?;
            } else {
                write(&mut rep, blk, data)?;
            }
            rep.blocks += n as u64;
            progress.update(rep.blocks * bsu);
            // The reader may have stopped on an error already: then this send just fails.
            let _ = free_tx.send(chunk.buf);
        }
        Ok(past)
    })?;
    progress.finish();
    if !opts.dry_run && !out_dev && out_len < end {
        // A new file gets exactly O + fs size; an existing one is only ever grown.
        out.set_len(end)
            .map_err(|e| Error::io("truncate", end, e))?;
    }
    Ok(rep)
}

/// Bytes per read of a clone, and how many buffers the reader may fill ahead.
const CLONE_CHUNK: usize = 8 << 20;
const POOL: usize = 3;
/// Memory alignment of the buffers (O_DIRECT needs the device's logical block size).
const DIRECT_ALIGN: usize = 4096;

/// A heap buffer whose usable part starts on a [`DIRECT_ALIGN`] boundary.
struct AlignedBuf {
    v: Vec<u8>,
    off: usize,
}

impl AlignedBuf {
    fn new(cap: usize) -> Self {
        let v = vec![0u8; cap + DIRECT_ALIGN];
        let off = (DIRECT_ALIGN - v.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
        AlignedBuf { v, off }
    }
    fn get(&self, n: usize) -> &[u8] {
        &self.v[self.off..self.off + n]
    }
    fn get_mut(&mut self, n: usize) -> &mut [u8] {
        &mut self.v[self.off..self.off + n]
    }
}

/// Consecutive selected blocks read by the reader thread.
struct Chunk {
    blk: u64,
    len: usize,
    buf: AlignedBuf,
    past_blocks: u64,
}

/// The reader thread of a clone: reads the selected runs in chunks (holes not read) into
/// buffers from `free` and hands them on in order.
fn read_ahead(
    source: &Path,
    base: u64,
    runs: &[Run],
    bs: u32,
    full: SyncSender<Result<Chunk>>,
    free: Receiver<AlignedBuf>,
) {
    let src = match FileSource::open(source, base) {
        Ok(s) => s,
        Err(e) => {
            let _ = full.send(Err(e));
            return;
        }
    };
    let bsu = u64::from(bs);
    let per = (CLONE_CHUNK as u64 / bsu).max(1);
    for run in runs {
        let mut b = run.start;
        while b < run.end() {
            let n = per.min(run.end() - b);
            let len = (n * bsu) as usize;
            let Ok(mut buf) = free.recv() else { return };
            let res = src
                .read_sparse_at(buf.get_mut(len), b * bsu)
                .map(|past| Chunk {
                    blk: b,
                    len,
                    buf,
                    past_blocks: (past as u64).div_ceil(bsu),
                });
            let failed = res.is_err();
            if full.send(res).is_err() || failed {
                return;
            }
            b += n;
        }
    }
}

/// A second handle on `out` that writes around the page cache, if the system allows it.
pub(crate) fn reopen_direct(out: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let meta = out.metadata().ok()?;
    if !(meta.file_type().is_file() || meta.file_type().is_block_device()) {
        return None;
    }
    OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(format!("/proc/self/fd/{}", out.as_raw_fd()))
        .ok()
}

/// Write through the O_DIRECT handle when the offset, length and memory are aligned for it;
/// otherwise, or if the system refuses, through the ordinary one (and stop trying direct).
pub(crate) fn write_maybe_direct(
    out: &File,
    direct: &mut Option<File>,
    data: &[u8],
    off: u64,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    const SECTOR: u64 = 512;
    if let Some(d) = direct.as_ref()
        && off.is_multiple_of(SECTOR)
        && (data.len() as u64).is_multiple_of(SECTOR)
        && (data.as_ptr() as usize).is_multiple_of(SECTOR as usize)
    {
        match d.write_all_at(data, off) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                *direct = None;
            }
            Err(e) => return Err(Error::io("write", off, e)),
        }
    }
    pwrite_full(out, data, off).map_err(|e| Error::io("write", off, e))
}

/// Where the journal of an in-place move of `source` lives by default: next to SOURCE when
/// it is a regular file (`SOURCE.e2i-move`), else in `$XDG_STATE_HOME/e2i` (default
/// `~/.local/state/e2i`), named after the device's path.
pub fn default_journal_path(source: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(source).map_err(|e| Error::io("stat", 0, e))?;
    let canon = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    journal_path_for(
        source,
        &canon,
        meta.file_type().is_file(),
        std::env::var_os("XDG_STATE_HOME"),
        std::env::var_os("HOME"),
    )
}

/// [`default_journal_path`] with the environment given.
fn journal_path_for(
    source: &Path,
    canonical: &Path,
    regular_file: bool,
    xdg_state_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Result<PathBuf> {
    if regular_file {
        let mut p = source.as_os_str().to_owned();
        p.push(".e2i-move");
        return Ok(PathBuf::from(p));
    }
    let state = match xdg_state_home.filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = home.filter(|v| !v.is_empty()).ok_or_else(|| {
                Error::InvalidInput(
                    "neither XDG_STATE_HOME nor HOME is set; give the journal with --journal"
                        .into(),
                )
            })?;
            PathBuf::from(home).join(".local/state")
        }
    };
    let name: String = canonical
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| if c == '/' { '-' } else { c })
        .collect();
    Ok(state.join("e2i").join(format!("{name}.e2i-move")))
}

/// Merge runs whose gap is at most `gap` blocks.
fn merge_runs(runs: &[Run], gap: u64) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for r in runs {
        match out.last_mut() {
            Some(last) if r.start.saturating_sub(last.end()) <= gap => {
                last.len = r.end() - last.start;
            }
            _ => out.push(*r),
        }
    }
    out
}

/// The pieces of a move, in the order they are copied: from the end backwards when the
/// filesystem moves right, from the start forwards when it moves left. In that order no
/// piece's destination overlaps the source of a piece copied after it.
fn pieces(spans: &[Run], piece_blocks: u64, right: bool) -> Vec<Run> {
    let pb = piece_blocks.max(1);
    let mut out = Vec::new();
    if right {
        for s in spans.iter().rev() {
            let mut e = s.end();
            while e > s.start {
                let b = e.saturating_sub(pb).max(s.start);
                out.push(Run {
                    start: b,
                    len: e - b,
                });
                e = b;
            }
        }
    } else {
        for s in spans {
            let mut b = s.start;
            while b < s.end() {
                let e = b.saturating_add(pb).min(s.end());
                out.push(Run {
                    start: b,
                    len: e - b,
                });
                b = e;
            }
        }
    }
    out
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Write `data` at `off`. With the test throttle, write it in 1 MiB slices with a pause
/// after each, so that a test's kill can land in the middle of a piece (a torn piece).
fn write_throttled(
    file: &File,
    direct: &mut Option<File>,
    data: &[u8],
    off: u64,
    throttle_us_per_mib: u64,
) -> Result<()> {
    if throttle_us_per_mib == 0 {
        return write_maybe_direct(file, direct, data, off);
    }
    let mut at = 0usize;
    for slice in data.chunks(1 << 20) {
        let o = off + at as u64;
        write_maybe_direct(file, direct, slice, o)?;
        at += slice.len();
        std::thread::sleep(Duration::from_micros(
            throttle_us_per_mib.saturating_mul(slice.len() as u64) >> 20,
        ));
    }
    Ok(())
}

/// Does a filesystem with this UUID start at byte `offset` of `file`?
fn fs_uuid_at(file: &File, offset: u64) -> Option<[u8; 16]> {
    let src = FileSource::from_file(file.try_clone().ok()?, offset).ok()?;
    let fs = Filesystem::open(src, FsOpen::default()).ok()?;
    Some(fs.sb.uuid())
}

/// Move the filesystem inside `source` from `opts.src_offset` to `opts.dest_offset`,
/// journalled in `journal_path`. Rerunning after a crash finishes the move; rerunning after
/// it finished does nothing (`already_done`).
pub fn move_in_place(
    source: &Path,
    journal_path: &Path,
    opts: &MoveOptions,
    on_write: &mut dyn FnMut(u64, u64),
    progress: &mut dyn Progress,
) -> Result<MoveReport> {
    let (s_off, d_off) = (opts.src_offset, opts.dest_offset);
    if s_off == d_off {
        return Err(Error::InvalidInput(
            "the source and destination offsets are equal: nothing to move".into(),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(!opts.dry_run)
        .open(source)
        .map_err(|e| Error::io("open", 0, e))?;
    let (len, is_dev) = file_size(&file)?;
    if !opts.dry_run {
        // One mover at a time (advisory; released by the kernel if we are killed).
        use rustix::fs::{FlockOperation, flock};
        flock(&file, FlockOperation::NonBlockingLockExclusive).map_err(|_| {
            Error::InvalidInput("another e2i-move is working on this file or device".into())
        })?;
    }

    let journal = if opts.dry_run {
        Journal::open(journal_path).ok().flatten()
    } else {
        Journal::open(journal_path)?
    };
    let mut resume = None;
    if let Some(j) = journal {
        let same = j.params.src_offset == s_off && j.params.dest_offset == d_off;
        match j.state {
            State::Running { .. } if !same => {
                return Err(Error::InvalidInput(format!(
                    "an unfinished move of this filesystem from byte {} to byte {} is recorded in {}; run that move again to finish it first",
                    j.params.src_offset,
                    j.params.dest_offset,
                    journal_path.display()
                )));
            }
            State::Running { .. } => resume = Some(j),
            State::Done if same && fs_uuid_at(&file, d_off) == Some(j.params.uuid) => {
                return Ok(MoveReport {
                    block_size: j.params.block_size,
                    blocks_count: j.params.blocks_count,
                    already_done: true,
                    ..MoveReport::default()
                });
            }
            // A finished move of something else: this is a new move.
            State::Done => {}
        }
    }

    let mut j = match resume {
        Some(j) => j,
        None => {
            let src = FileSource::from_file(
                file.try_clone().map_err(|e| Error::io("dup", 0, e))?,
                s_off,
            )?;
            let copts = CaptureOptions {
                all_data: true,
                open: FsOpen::default(),
                offset: s_off,
                strict: true,
                ..CaptureOptions::default()
            };
            let (fs, res) = match scan_source(src, &copts, false, progress) {
                Ok(x) => x,
                Err(e) => {
                    if fs_uuid_at(&file, d_off).is_some() {
                        return Err(Error::InvalidInput(format!(
                            "no valid filesystem at byte {s_off} ({e}), but there is one at byte {d_off}: was it moved already?"
                        )));
                    }
                    return Err(e);
                }
            };
            let bs = fs.sb.block_size;
            let params = MoveParams {
                block_size: bs,
                src_offset: s_off,
                dest_offset: d_off,
                blocks_count: fs.sb.blocks_count,
                uuid: fs.sb.uuid(),
                piece_blocks: (match opts.piece_bytes {
                    0 => PIECE_BYTES,
                    n => n.min(PIECE_BYTES),
                } / u64::from(bs))
                .max(1),
                spans: merge_runs(res.map.runs(), MERGE_GAP_BYTES / u64::from(bs)),
            };
            let total = fs_bytes(bs, params.blocks_count)?;
            let end = d_off
                .checked_add(total)
                .ok_or_else(|| overflow("destination offset plus filesystem size"))?;
            if is_dev && end > len {
                return Err(Error::InvalidInput(format!(
                    "the device holds {len} bytes; the filesystem would end at byte {end}"
                )));
            }
            if opts.dry_run {
                let mut rep = MoveReport {
                    block_size: bs,
                    blocks_count: params.blocks_count,
                    selected_blocks: res.map.selected_blocks(),
                    ..MoveReport::default()
                };
                let ps = pieces(res.map.runs(), params.piece_blocks, d_off > s_off);
                for p in &ps {
                    on_write(p.start, p.len);
                }
                rep.pieces = ps.len() as u64;
                rep.blocks = rep.selected_blocks;
                return Ok(rep);
            }
            Journal::create(journal_path, params)?
        }
    };
    let p = j.params.clone();
    let bs = u64::from(p.block_size);
    if !(1024..=65536).contains(&p.block_size)
        || !p.block_size.is_power_of_two()
        || p.piece_blocks == 0
        || p.piece_blocks.saturating_mul(bs) > 8 * PIECE_BYTES
    {
        return Err(Error::corrupt(
            format!("move journal {}", journal_path.display()),
            "implausible block or piece size",
        ));
    }
    let total = fs_bytes(p.block_size, p.blocks_count)?;
    let end = d_off
        .checked_add(total)
        .ok_or_else(|| overflow("destination offset plus filesystem size"))?;
    s_off
        .checked_add(total)
        .ok_or_else(|| overflow("source offset plus filesystem size"))?;
    if p.spans.iter().any(|r| r.end() > p.blocks_count) {
        return Err(Error::corrupt(
            format!("move journal {}", journal_path.display()),
            "a span lies past the end of the filesystem",
        ));
    }
    let ps = pieces(&p.spans, p.piece_blocks, d_off > s_off);
    let start = match j.state {
        State::Running { next } => next.min(ps.len() as u64),
        State::Done => ps.len() as u64,
    };
    let mut rep = MoveReport {
        block_size: p.block_size,
        blocks_count: p.blocks_count,
        selected_blocks: p.spans.iter().map(|r| r.len).sum(),
        pieces: ps.len() as u64,
        started_at_piece: start,
        resumed: start > 0 || j.saved()?.is_some(),
        ..MoveReport::default()
    };
    if opts.dry_run {
        for pc in &ps[start as usize..] {
            on_write(pc.start, pc.len);
        }
        rep.blocks = ps[start as usize..].iter().map(|r| r.len).sum();
        return Ok(rep);
    }
    let src = FileSource::from_file(file.try_clone().map_err(|e| Error::io("dup", 0, e))?, s_off)?;
    let saved = j.saved()?;
    let done_before: u64 = ps[..start as usize].iter().map(|r| r.len).sum();
    progress.phase(
        "moving",
        rep.selected_blocks.saturating_mul(bs),
        Unit::Bytes,
    );
    rep.blocks = done_before;
    progress.update(rep.blocks * bs);

    let sync = |what: u64| file.sync_data().map_err(|e| Error::io("sync", what, e));
    // Source byte span of pieces copied since the last checkpoint.
    let mut uncommitted: Option<(u64, u64)> = None;
    let piece_max =
        usize::try_from(p.piece_blocks.saturating_mul(bs)).map_err(|_| overflow("piece size"))?;
    let mut abuf = AlignedBuf::new(piece_max);
    let mut direct = reopen_direct(&file);
    let mut cmp = Vec::new();
    for (k, pc) in ps.iter().enumerate().skip(start as usize) {
        let k = k as u64;
        let n = pc.len * bs;
        let rel = pc.start * bs;
        let src_r = (s_off + rel, s_off + rel + n);
        let dst_r = (d_off + rel, d_off + rel + n);
        // Write-ahead: before this piece may overwrite the source of a copied piece, make
        // that copy durable and record it, so a rerun never re-reads a clobbered source.
        if uncommitted.is_some_and(|u| overlaps(u, dst_r)) {
            sync(dst_r.0)?;
            j.checkpoint(State::Running { next: k })?;
            rep.checkpoints += 1;
            uncommitted = None;
        }
        let self_overlap = overlaps(src_r, dst_r);
        match saved
            .as_ref()
            .filter(|s| s.piece == k && s.data.len() as u64 == n)
        {
            // This piece was saved by an interrupted run: its source may be half overwritten.
            Some(s) => abuf.get_mut(n as usize).copy_from_slice(&s.data),
            None => {
                let past = src.read_sparse_at(abuf.get_mut(n as usize), rel)? as u64;
                rep.past_end_blocks += past.div_ceil(bs);
                if self_overlap {
                    // The destination overlaps this piece's own source: keep a durable copy
                    // of the source bytes before the first byte is overwritten.
                    j.save(k, abuf.get(n as usize))?;
                    rep.saved_pieces += 1;
                }
            }
        }
        let mut write_all = true;
        if opts.check {
            let buf = abuf.get(n as usize);
            cmp.resize(buf.len(), 0);
            let got =
                pread_full(&file, &mut cmp, dst_r.0).map_err(|e| Error::io("read", dst_r.0, e))?;
            if got == cmp.len() && cmp == buf {
                rep.identical_blocks += pc.len;
                write_all = false;
            }
        }
        if write_all {
            write_throttled(
                &file,
                &mut direct,
                abuf.get(n as usize),
                dst_r.0,
                opts.throttle_us_per_mib,
            )?;
            rep.bytes_written += n;
        }
        uncommitted = Some(match uncommitted {
            Some(u) => (u.0.min(src_r.0), u.1.max(src_r.1)),
            None => src_r,
        });
        if self_overlap {
            // The source is gone now: commit before the save area can be reused.
            sync(dst_r.0)?;
            j.checkpoint(State::Running { next: k + 1 })?;
            rep.checkpoints += 1;
            uncommitted = None;
        }
        rep.blocks += pc.len;
        progress.update(rep.blocks * bs);
    }
    if !is_dev && file_size(&file)?.0 < end {
        file.set_len(end)
            .map_err(|e| Error::io("truncate", end, e))?;
    }
    sync(end)?;
    j.finish()?;
    rep.checkpoints += 1;
    progress.finish();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, len: u64) -> Run {
        Run { start, len }
    }

    #[test]
    fn journal_locations() {
        let p = |s: &str| PathBuf::from(s);
        let j = journal_path_for(&p("img/disk.raw"), &p("/x/img/disk.raw"), true, None, None);
        assert_eq!(j.unwrap(), p("img/disk.raw.e2i-move"));
        let dev = p("/dev/sdb1");
        let j = journal_path_for(
            &dev,
            &dev,
            false,
            Some("/st".into()),
            Some("/home/u".into()),
        );
        assert_eq!(j.unwrap(), p("/st/e2i/dev-sdb1.e2i-move"));
        let j = journal_path_for(&dev, &dev, false, Some("".into()), Some("/home/u".into()));
        assert_eq!(j.unwrap(), p("/home/u/.local/state/e2i/dev-sdb1.e2i-move"));
        assert!(journal_path_for(&dev, &dev, false, None, None).is_err());
    }

    #[test]
    fn pieces_cover_spans_in_safe_order() {
        let spans = merge_runs(&[r(0, 3), r(4, 2), r(100, 10)], 1);
        assert_eq!(spans, vec![r(0, 6), r(100, 10)]);
        let right = pieces(&spans, 4, true);
        assert_eq!(
            right,
            vec![r(106, 4), r(102, 4), r(100, 2), r(2, 4), r(0, 2)]
        );
        let left = pieces(&spans, 4, false);
        assert_eq!(
            left,
            vec![r(0, 4), r(4, 2), r(100, 4), r(104, 4), r(108, 2)]
        );
        // In either order, no destination overlaps the source of a later piece, for any
        // shift (bytes, block size 8).
        for shift in [-100i64, -9, -4, -1, 1, 3, 8, 12, 100] {
            let ps = pieces(&spans, 4, shift > 0);
            for (i, a) in ps.iter().enumerate() {
                let dst = (
                    (a.start * 8) as i64 + 1000 + shift,
                    (a.end() * 8) as i64 + 1000 + shift,
                );
                for b in &ps[i + 1..] {
                    let src = ((b.start * 8) as i64 + 1000, (b.end() * 8) as i64 + 1000);
                    assert!(
                        !(dst.0 < src.1 && src.0 < dst.1),
                        "shift {shift}: {a:?} over {b:?}"
                    );
                }
            }
        }
    }
}
