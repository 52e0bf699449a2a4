//! `e2i-move`: clone a filesystem between offsets (e2image -ra -o S -O D SRC DST), or
//! move it inside one file or device, crash-safely (e2image -ra -o S -O D SRC).
//!
//! Both read the block map of `e2image -ra` (`--metadata-only`: of `e2image -r`) and copy
//! the selected blocks in large coalesced pieces. The in-place move is driven by a durable
//! journal ([`super::move_journal`], which this module uses and which knows nothing of it);
//! docs/move-journal.md explains why it survives a kill at any instant and why a journal is
//! only ever replayed over the SOURCE it belongs to.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use crate::blockmap::{BlockMap, BlockRun};
use crate::ext4::{Filesystem, OpenOptions as FsOpen};
use crate::io::{
    AlignedBuf, FileSource, ObjectId, ReadAt, pread_full, reopen_direct, write_behind,
    write_maybe_direct,
};
use crate::ops::capture::{CaptureOptions, open_source_within, scan_source};
use crate::ops::hold::loop_backing_files;
use crate::ops::move_journal::{
    self as mj, Journal, Locations, Mismatch, MoveParams, Piece, Saved, SourceId, Span, State,
};
use crate::pieces::{same_runs, zero_runs};
use crate::progress::{Progress, Unit};
use crate::readplan::{self, Readahead};
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

pub use crate::ops::move_journal::PIECE_BYTES;

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
    /// `-P`: bytes of SOURCE from `src_offset` on that a clone may read (the partition).
    pub src_limit: Option<u64>,
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
    /// Test hook: write data in slices of this many bytes (0: whole pieces; 1 MiB when
    /// throttled), so that a kill can land inside a piece.
    pub slice_bytes: usize,
    /// Test hook: called before every write to SOURCE or the journal, so a test can stop
    /// the move at an exact point (by killing the process or unwinding).
    pub crash_point: Option<fn()>,
}

/// Where an in-place move keeps its journal.
#[derive(Debug, Clone, Default)]
pub struct JournalOptions {
    /// `--journal FILE`: used as given (symlinks followed); its folder must exist.
    pub path: Option<PathBuf>,
    /// e2i's state folder ([`mj::state_dir`]): journals of block devices, and the index that
    /// lets every name of SOURCE find its journal. `None` when no folder can be named.
    pub state_dir: Option<PathBuf>,
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
    /// Pieces a resumed move copied from the save records an interrupted run left.
    pub from_saves: u64,
    /// The journal of a move.
    pub journal: Option<PathBuf>,
    /// A clone of a damaged filesystem: the structures skipped (as e2image skips them).
    pub problems: Vec<String>,
}

/// Things an in-place move tells its caller as they happen (the binary prints them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveNote {
    /// An interrupted move is resumed: pieces `[0, next)` of `pieces` are already moved.
    Resuming {
        journal: PathBuf,
        next: u64,
        pieces: u64,
    },
    /// The journal (named with `--journal`) was written for another object (a copy of the
    /// image, a device number changed by a reboot), but SOURCE holds exactly the half-moved
    /// state it records: it is used.
    Adopted {
        journal: PathBuf,
        recorded: ObjectId,
        actual: ObjectId,
    },
    /// An unfinished journal that does not match SOURCE (a stale one) was left alone.
    Stale { journal: PathBuf },
    /// An unfinished move with other offsets that had changed nothing (every piece still
    /// at its source) was given up for this one.
    Abandoned {
        journal: PathBuf,
        src_offset: u64,
        dest_offset: u64,
    },
    /// The move could not be entered in the state folder's index: a rerun under another
    /// hard link of SOURCE would not find its journal (the same name, or --journal, will).
    NotIndexed { index: PathBuf, reason: String },
    /// The move failed after its journal was begun (a full disk, a read error): it is
    /// unfinished, and the same command finishes it once the cause is fixed.
    Unfinished { journal: PathBuf },
    /// The journal lives in memory (`fstype`: tmpfs, ramfs) while SOURCE does not: a
    /// crash or power loss of the system loses it, and with it the way to finish the move.
    Volatile { journal: PathBuf, fstype: String },
}

fn overflow(what: &str) -> Error {
    Error::InvalidInput(format!("{what} overflows"))
}

fn file_size(file: &File) -> Result<(u64, bool)> {
    let meta = file.metadata().map_err(|e| Error::io("stat", e))?;
    if meta.file_type().is_block_device() {
        let src = FileSource::from_file(file.try_clone().map_err(|e| Error::io("dup", e))?, 0)?;
        Ok((src.size(), true))
    } else {
        Ok((meta.len(), false))
    }
}

fn fs_bytes(bs: BlockSize, blocks: u64) -> Result<u64> {
    bs.bytes_of(blocks)
        .ok_or_else(|| overflow("filesystem size"))
}

/// Clone the filesystem at `opts.src_offset` in `source` to `target` at `opts.dest_offset`.
/// SOURCE may be a qcow2 image: its virtual disk is read, `-o` applying inside it.
/// `on_write(first_block, count)` is told each run of blocks that is (or with `dry_run`
/// would be) written.
pub fn clone_fs(
    source: &Path,
    target: CloneTarget<'_>,
    opts: &MoveOptions,
    on_write: &mut dyn FnMut(FsBlock, u64),
    progress: &mut dyn Progress,
) -> Result<MoveReport> {
    let (out, new_file) = match target {
        CloneTarget::NewFile(f) => (f, true),
        CloneTarget::Existing(f) => (f, false),
    };
    let (out_len, out_dev) = file_size(out)?;
    let src = open_source_within(source, opts.src_offset, opts.src_limit)?;
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
    let bsz = bs.as_usize();
    let total = fs_bytes(bs, fs.sb.blocks_count)?;
    let end = opts
        .dest_offset
        .checked_add(total)
        .ok_or_else(|| Error::past_offsets(opts.dest_offset, total))?;
    if out_dev && end > out_len {
        return Err(Error::NoRoom {
            have: out_len,
            need: end,
        });
    }
    if !out_dev {
        crate::output::check_file_end(out, end)?;
    }
    let map: &BlockMap = &res.map;
    let mut rep = MoveReport {
        block_size: bs.get(),
        blocks_count: fs.sb.blocks_count,
        selected_blocks: map.selected_blocks(),
        problems: res.problems.iter().map(|p| p.to_string()).collect(),
        ..MoveReport::default()
    };
    // Progress counts bytes (the binaries do not know the block size up front).
    progress.phase(
        "copying",
        rep.selected_blocks.saturating_mul(bs.bytes()),
        Unit::Bytes,
    );
    let dest = opts.dest_offset;
    // Where block `b` goes in DEST: below `end`, checked above.
    let dest_at = |b: FsBlock| {
        bs.offset_of(b)
            .and_then(|o| o.checked_add(dest))
            .ok_or_else(|| overflow("destination offset"))
    };
    let mut cmp = Vec::new();
    let mut write = |rep: &mut MoveReport, blk: FsBlock, data: &[u8]| -> Result<()> {
        on_write(blk, bs.blocks_in(data.len() as u64));
        if !opts.dry_run {
            // Written back as it goes (many writes in flight, little left dirty), where
            // O_DIRECT kept one in flight and ran at about half the disk's rate.
            write_behind(out, data, dest_at(blk)?)?;
            rep.bytes_written = rep.bytes_written.saturating_add(data.len() as u64);
        }
        Ok(())
    };
    // The selected blocks in order, read ahead on a second thread with read hints (a cold
    // SOURCE is read with real queue depth): the pass every capture writer uses.
    rep.past_end_blocks = crate::pieces::for_each_chunk(&fs.src, map, bs, &mut |blk, data| {
        let n = bs.blocks_in(data.len() as u64);
        // Blocks `i..i + k` of the chunk: where they start, and their bytes.
        let part = |i: usize, k: usize| {
            let at = blk.saturating_add(i as u64);
            let b = i.saturating_mul(bsz);
            (at, data.get(b..b.saturating_add(k.saturating_mul(bsz))))
        };
        if new_file {
            // A fresh file: all-zero blocks stay holes, as e2image leaves them.
            zero_runs(data, bsz, &mut |i, k, zero| {
                if let (false, (at, Some(bytes))) = (zero, part(i, k)) {
                    write(&mut rep, at, bytes)?;
                }
                Ok(())
            })?;
        } else if opts.check {
            let off = dest_at(blk)?;
            cmp.resize(data.len(), 0);
            let got = pread_full(out, &mut cmp, off).map_err(|e| Error::io_at("read", off, e))?;
            same_runs(data, &cmp, got, bsz, &mut |i, k, same| {
                match (same, part(i, k)) {
                    (true, _) => {
                        rep.identical_blocks = rep.identical_blocks.saturating_add(k as u64);
                    }
                    (false, (at, Some(bytes))) => write(&mut rep, at, bytes)?,
                    (false, (_, None)) => {}
                }
                Ok(())
            })?;
        } else {
            write(&mut rep, blk, data)?;
        }
        rep.blocks = rep.blocks.saturating_add(n);
        progress.update(rep.blocks.saturating_mul(bs.bytes()));
        Ok(())
    })?;
    progress.finish();
    if !opts.dry_run && !out_dev && out_len < end {
        // A new file gets exactly O + fs size; an existing one is only ever grown.
        out.set_len(end)
            .map_err(|e| Error::io_at("truncate", end, e))?;
    }
    Ok(rep)
}

/// The spans of a move: the map's runs, merged where the gap between them is at most `gap`
/// blocks.
fn merge_runs(runs: &[BlockRun], gap: u64) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    for r in runs {
        match out.last_mut() {
            Some(last) if r.start.saturating_since(last.end()) <= gap => {
                last.len = r.end().max(last.end()).saturating_since(last.start);
            }
            _ => out.push(Span::covering(*r)),
        }
    }
    out
}

/// Does a filesystem with this UUID start at byte `offset` of `file`?
fn fs_uuid_at(file: &File, offset: u64) -> Option<[u8; 16]> {
    let src = FileSource::from_file(file.try_clone().ok()?, offset).ok()?;
    let fs = Filesystem::open(src, FsOpen::default()).ok()?;
    Some(fs.sb.uuid())
}

/// SOURCE of an in-place move, open and locked.
struct MoveSource {
    file: File,
    id: SourceId,
    is_dev: bool,
    /// The files under a loop device SOURCE (its backing file, and theirs for a loop over a
    /// loop), locked as SOURCE is: a move of the file itself must wait for this one.
    _under: Vec<File>,
}

impl MoveSource {
    /// Open SOURCE for reading and (unless `dry_run`) writing, and take the one-mover lock.
    /// A qcow2 image is refused: moving inside one is not a byte move.
    fn open(path: &Path, dry_run: bool) -> Result<MoveSource> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("stat", e))?;
        let is_dev = meta.file_type().is_block_device();
        let not_movable = || Error::InvalidInput("not a regular file or block device".into());
        if !(meta.is_file() || is_dev) {
            // Before it is opened: opening a FIFO to read waits for a writer (a dry run hung
            // on one), and opening some character devices acts (a tape rewinds).
            return Err(not_movable());
        }
        if is_dev && !dry_run && {
            use std::os::unix::fs::MetadataExt;
            crate::output::is_read_only_device(meta.rdev())
        } {
            // Opened for writing it would fail at the first write, with a journal begun.
            return Err(Error::InvalidInput(
                "the device is read-only; nothing written".into(),
            ));
        }
        let mut o = OpenOptions::new();
        o.read(true).write(!dry_run);
        if is_dev && !dry_run {
            // Exclusive open: the kernel refuses it while the device, or a partition of it,
            // is mounted or held (device-mapper, md, swap, another mover).
            use std::os::unix::fs::OpenOptionsExt;
            o.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
        }
        let file = o.open(path).map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                Error::InvalidInput(
                    "the device is in use: it or a partition of it is mounted, or device-mapper, md, swap or another e2i-move holds it".into(),
                )
            } else {
                Error::io("open", e)
            }
        })?;
        let meta = file.metadata().map_err(|e| Error::io("stat", e))?;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(not_movable());
        }
        let mut magic = [0u8; 4];
        let n = pread_full(&file, &mut magic, 0).map_err(|e| Error::io_at("read", 0, e))?;
        if crate::qcow2::is_qcow2(&magic[..n]) {
            return Err(Error::InvalidInput(
                "a qcow2 image cannot be moved in place (its bytes are not the disk's): convert it with qcow2-to-raw, or clone it with e2i-move SOURCE DEST".into(),
            ));
        }
        let (size, is_dev) = file_size(&file)?;
        let mut under = Vec::new();
        if !dry_run {
            // One mover at a time (advisory; released by the kernel if we are killed), also
            // through a loop device: its backing file is locked too.
            use rustix::fs::{FlockOperation, flock};
            let busy = || {
                Error::InvalidInput("another e2i-move is working on this file or device (or an e2i tool is reading or writing it)".into())
            };
            flock(&file, FlockOperation::NonBlockingLockExclusive).map_err(|_| busy())?;
            under = loop_backing_files(&meta);
            for f in &under {
                flock(f, FlockOperation::NonBlockingLockExclusive).map_err(|_| busy())?;
            }
        }
        Ok(MoveSource {
            id: SourceId {
                object: ObjectId::of_metadata(&meta),
                size,
            },
            file,
            is_dev,
            _under: under,
        })
    }

    /// SOURCE's change stamp for a finished journal ([`Journal::finish`]): a regular file's
    /// ctime in nanoseconds; 0 (none) for a device, whose node's times say nothing of its
    /// contents.
    fn change_stamp(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        match self.file.metadata() {
            Ok(m) if m.is_file() => u64::try_from(m.ctime())
                .ok()
                .and_then(|s| s.checked_mul(1_000_000_000))
                .and_then(|ns| ns.checked_add(u64::try_from(m.ctime_nsec()).ok()?))
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// A reader of the whole of SOURCE (byte 0 on).
    fn reader(&self) -> Result<FileSource> {
        FileSource::from_file(self.file.try_clone().map_err(|e| Error::io("dup", e))?, 0)
    }

    fn sync(&self, at: u64) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io_at("sync", at, e))
    }
}

fn crash_point(opts: &MoveOptions) {
    if let Some(f) = opts.crash_point {
        f();
    }
}

/// The journal a run uses.
struct Chosen {
    path: PathBuf,
    /// Named with `--journal`.
    explicit: bool,
    /// Found through the identity index (another name of SOURCE, or a deleted file whose
    /// inode number SOURCE now has): read there, but a new move's journal goes to the
    /// default place, never over that file.
    from_index: bool,
    loc: Locations,
}

impl Chosen {
    /// Where a new move's journal is created.
    fn for_new_move(&self) -> &Path {
        match (&self.loc.default, self.from_index) {
            (Some(d), true) => d,
            _ => &self.path,
        }
    }
}

/// The journal this run uses, resolved: `--journal` (symlinks followed, folder checked), or
/// the default for SOURCE, or — when nothing is there — the journal SOURCE's identity is
/// indexed under (so a hard link or a renamed file finds it). Never SOURCE itself.
fn choose_journal(
    source: &Path,
    src: &MoveSource,
    jopts: &JournalOptions,
    dry_run: bool,
) -> Result<Chosen> {
    let resolved = std::fs::canonicalize(source).map_err(|e| Error::io("resolve", e))?;
    let loc = mj::locations(&resolved, src.id.object, jopts.state_dir.clone());
    let chosen = match &jopts.path {
        Some(p) => Chosen {
            path: resolve_journal_path(p)?,
            explicit: true,
            from_index: false,
            loc,
        },
        None => {
            let default = loc.default.clone().ok_or_else(|| {
                Error::InvalidInput(
                    "neither XDG_STATE_HOME nor HOME is set, so a device's journal has no default place: give it with --journal".into(),
                )
            })?;
            let indexed = loc
                .index
                .as_ref()
                .and_then(|i| std::fs::read_link(i).ok())
                .filter(|t| {
                    Journal::open(t, false)
                        .is_ok_and(|j| j.is_some_and(|j| j.source().object == src.id.object))
                });
            let (path, from_index) = match indexed {
                Some(t) if !default.exists() => (t, true),
                _ => (default, false),
            };
            Chosen {
                path,
                explicit: false,
                from_index,
                loc,
            }
        }
    };
    if ObjectId::of_path(&chosen.path).is_ok_and(|id| id == src.id.object) {
        return Err(Error::InvalidInput(format!(
            "the journal {} is SOURCE itself",
            chosen.path.display()
        )));
    }
    // Nor what holds SOURCE's bytes (the file under a loop device SOURCE, the disk of a
    // partition): SOURCE's own lock on it read as another mover's.
    if let (Ok(jm), Ok(sm)) = (std::fs::metadata(&chosen.path), src.file.metadata()) {
        let journal = crate::footprint::Footprint::of(&chosen.path, &jm);
        if let Some(how) = journal.overlap(&crate::footprint::Footprint::of(source, &sm)) {
            return Err(Error::InvalidInput(format!(
                "the journal {} holds SOURCE's bytes{how}",
                chosen.path.display()
            )));
        }
    }
    if !chosen.explicit
        && !dry_run
        && let Some(st) = chosen
            .loc
            .state
            .as_ref()
            .filter(|st| chosen.path.starts_with(st))
    {
        // The state folder is e2i's own: made when a journal goes there (--journal never
        // makes a folder).
        std::fs::create_dir_all(st).map_err(|e| Error::io("create state folder", e))?;
    }
    let new_at = chosen.for_new_move();
    if !dry_run && !new_at.exists() {
        // A journal that cannot be created is found out now, not after the filesystem has
        // been scanned and every piece read.
        let dir = new_at
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        rustix::fs::accessat(
            rustix::fs::CWD,
            dir,
            rustix::fs::Access::WRITE_OK,
            rustix::fs::AtFlags::EACCESS,
        )
        .map_err(|e| {
            Error::InvalidInput(format!(
                "journal {}: cannot be created: {}{}",
                new_at.display(),
                std::io::Error::from(e),
                if chosen.explicit {
                    ""
                } else {
                    " (give the journal another place with --journal)"
                }
            ))
        })?;
    }
    Ok(chosen)
}

/// The memory filesystem (tmpfs, ramfs, devtmpfs) the journal at `journal` would live on,
/// when SOURCE does not live there too (then both go together, and nothing is lost that
/// the journal could save).
fn volatile_journal(journal: &Path, src: &MoveSource) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dir = journal
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dev = std::fs::metadata(dir).ok()?.dev();
    let m = crate::mount::mounted_by_dev(dev)?;
    if !matches!(m.fstype.as_str(), "tmpfs" | "ramfs" | "devtmpfs") {
        return None;
    }
    let meta = src.file.metadata().ok()?;
    if meta.is_file() && meta.dev() == dev {
        return None;
    }
    Some(m.fstype)
}

/// `--journal` as a path to write: symlinks followed (the link stays, its target is the
/// journal), never a folder created, never anything but a regular file.
fn resolve_journal_path(p: &Path) -> Result<PathBuf> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => std::fs::canonicalize(p).map_err(|e| Error::io("resolve", e)),
        Ok(_) => Err(Error::InvalidInput(format!(
            "journal {}: not a regular file",
            p.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(Error::InvalidInput(format!(
                    "journal {}: a symlink to a missing file",
                    p.display()
                )));
            }
            let parent = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = p.file_name().ok_or_else(|| {
                Error::InvalidInput(format!("journal {}: not a file name", p.display()))
            })?;
            match std::fs::canonicalize(parent) {
                Ok(d) if d.is_dir() => Ok(d.join(name)),
                _ => Err(Error::InvalidInput(format!(
                    "journal {}: folder {} does not exist (e2i-move creates no folders)",
                    p.display(),
                    parent.display()
                ))),
            }
        }
        Err(e) => Err(Error::io("stat journal", e)),
    }
}

/// What a move finds in its journal.
enum Start {
    /// The recorded move is finished: nothing to do.
    Done(MoveReport),
    /// An interrupted move whose state SOURCE matches: finish it (with its saved pieces).
    Resume(Journal, Vec<Saved>),
    /// No journal, or a finished one of another move: plan a new move.
    Fresh,
}

/// Read the journal and decide. A journal recording an unfinished move is resumed only when
/// SOURCE is the object it was written for, has a size the move can have given it, and holds
/// every piece where the journal says it is; otherwise the run is refused (nothing written)
/// with what differs and what to do.
fn read_journal(
    chosen: &Chosen,
    src: &MoveSource,
    opts: &MoveOptions,
    notes: &mut dyn FnMut(MoveNote),
    progress: &mut dyn Progress,
) -> Result<Start> {
    let (path, explicit) = (chosen.path.as_path(), chosen.explicit);
    let Some(j) = Journal::open(path, !opts.dry_run).map_err(|e| in_journal(path, e))? else {
        return Ok(Start::Fresh);
    };
    let p = j.params();
    let same = p.src_offset == opts.src_offset && p.dest_offset == opts.dest_offset;
    let same_object = j.source().object == src.id.object;
    match j.state() {
        State::Done if !same => {
            // A finished move with other offsets: this is a new move (the journal is
            // replaced; it holds nothing a new move needs).
            Ok(Start::Fresh)
        }
        State::Done => {
            let done = || {
                Ok(Start::Done(MoveReport {
                    block_size: p.block_size.get(),
                    blocks_count: p.blocks_count,
                    already_done: true,
                    journal: Some(path.to_path_buf()),
                    ..MoveReport::default()
                }))
            };
            // Nothing has touched SOURCE since the move finished (its change stamp is the
            // one recorded then): the moved filesystem is there, as the move left it.
            if same_object
                && j.done_stamp()
                    .is_some_and(|s| s == src.change_stamp() && src.change_stamp() != 0)
                && fs_uuid_at(&src.file, p.dest_offset) == Some(p.uuid)
            {
                return done();
            }
            // Else look: a filesystem at D is not enough (a half-moved image, killed early
            // in a move to the left, already has the moved superblock there). Every piece
            // at its destination: finished. Every piece at its source: the filesystem as
            // before the move (a backup restored), which a new move may move. Anything else
            // — a half-moved image restored from a copy taken during the move, or the moved
            // filesystem used since — must not be moved, nor called finished.
            let reader = src.reader()?;
            let (moved, differ) = j.check_moved(&reader, progress)?;
            if moved {
                return done();
            }
            if j.unmoved(&reader, progress)? {
                return Ok(Start::Fresh);
            }
            Err(Error::InvalidInput(format!(
                "{} records this move as finished, but SOURCE holds neither the moved filesystem at byte {} ({differ} of {} pieces differ from what the move wrote) nor the filesystem it moved from at byte {}: it may be half-moved (put back from a copy taken during the move?): do not move it; restore it from a backup. If the moved filesystem has been used since the move, that is expected: the move is finished; delete {}",
                path.display(),
                p.dest_offset,
                j.pieces().len(),
                p.src_offset,
                path.display()
            )))
        }
        State::Running { .. } if !same && same_object && j.unmoved(&src.reader()?, progress)? => {
            // An unfinished move that has changed nothing the filesystem needs: every piece
            // is still at its source (it failed at its first write, say, or was killed before
            // overwriting anything). Giving it up loses nothing: this move replaces it.
            notes(MoveNote::Abandoned {
                journal: path.to_path_buf(),
                src_offset: p.src_offset,
                dest_offset: p.dest_offset,
            });
            Ok(Start::Fresh)
        }
        State::Running { .. } if !same => Err(Error::InvalidInput(format!(
            "an unfinished move of {} from byte {} to byte {} is recorded in {}: finish it first by running that move again{}",
            if same_object {
                "this filesystem".to_string()
            } else {
                mj::describe(j.source().object)
            },
            p.src_offset,
            p.dest_offset,
            path.display(),
            if same_object {
                ""
            } else {
                ", or delete the journal if it belongs to a file that is gone"
            }
        ))),
        State::Running { next } => {
            if !same_object && !explicit {
                return Err(refusal(
                    &j,
                    &Mismatch::Identity {
                        recorded: j.source().object,
                        actual: src.id.object,
                    },
                ));
            }
            if let Some(m) = j.check_size(src.id) {
                return Err(refusal(&j, &m));
            }
            match j.verify(&src.reader()?, progress)? {
                Ok(saved) => {
                    if !same_object {
                        notes(MoveNote::Adopted {
                            journal: path.to_path_buf(),
                            recorded: j.source().object,
                            actual: src.id.object,
                        });
                    }
                    notes(MoveNote::Resuming {
                        journal: path.to_path_buf(),
                        next,
                        pieces: j.pieces().len() as u64,
                    });
                    Ok(Start::Resume(j, saved))
                }
                Err(m) => Err(refusal(&j, &m)),
            }
        }
    }
}

/// An I/O error on the journal, with the journal's name (damage names it already).
fn in_journal(path: &Path, e: Error) -> Error {
    match e {
        Error::Io { op, source, .. } => Error::JournalIo {
            path: path.to_path_buf(),
            op,
            source,
        },
        e => e,
    }
}

/// The message of a refused journal: what differs, and what to do.
fn refusal(j: &Journal, m: &Mismatch) -> Error {
    let jp = j.path().display();
    let d = j.params().dest_offset;
    Error::InvalidInput(match m {
        Mismatch::Identity { recorded, actual } => format!(
            "the unfinished move in {jp} was recorded for another file or device ({}; SOURCE is {}): SOURCE was replaced, e.g. restored from a backup. Delete {jp} to start the move over; if SOURCE is that half-moved image under a new name or device number, give --journal {jp} to check it and resume",
            mj::describe(*recorded),
            mj::describe(*actual)
        ),
        Mismatch::Size { recorded, actual } => format!(
            "SOURCE is {actual} bytes, but the move recorded in {jp} began at {recorded} bytes and cannot have made that: SOURCE was replaced or changed. Put back the half-moved image, or delete {jp} to start over"
        ),
        Mismatch::AlreadyMoved => format!(
            "the move recorded in {jp} is already complete at byte {d} (finished by another run or journal?), and bytes it would read again have been overwritten since: nothing to do. Delete {jp}; do not run the move again"
        ),
        Mismatch::Unmoved { moved } => format!(
            "SOURCE holds the filesystem as it was before the move (restored from a backup?): the {moved} pieces {jp} records as moved are not at byte {d}. Delete {jp} to start the move over"
        ),
        Mismatch::Changed {
            piece,
            at,
            destination,
            pieces,
        } => format!(
            "SOURCE does not hold what {jp} records: {pieces} pieces differ, the first (piece {piece}) at bytes {}-{} ({}). SOURCE was changed since the move was interrupted: put back the half-moved image this journal belongs to, or delete {jp} to give the move up (what it moved so far is lost)",
            at.start,
            at.end.saturating_sub(1),
            if *destination {
                "where it was moved to"
            } else {
                "where it is still to be read"
            }
        ),
    })
}

/// A new move: scan the filesystem at S (a damaged one is refused) and plan its pieces.
fn plan_new(
    src: &MoveSource,
    opts: &MoveOptions,
    progress: &mut dyn Progress,
) -> Result<(MoveParams, BlockMap)> {
    let (s_off, d_off) = (opts.src_offset, opts.dest_offset);
    let reader = FileSource::from_file(
        src.file.try_clone().map_err(|e| Error::io("dup", e))?,
        s_off,
    )?;
    let copts = CaptureOptions {
        all_data: true,
        open: FsOpen::default(),
        offset: s_off,
        strict: true,
        ..CaptureOptions::default()
    };
    let (fs, res) = match scan_source(reader, &copts, false, progress) {
        Ok(x) => x,
        Err(e) => {
            if fs_uuid_at(&src.file, d_off).is_some() {
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
        piece_blocks: bs
            .blocks_in(match opts.piece_bytes {
                0 => PIECE_BYTES,
                n => n.min(PIECE_BYTES),
            })
            .max(1),
        spans: merge_runs(res.map.runs(), bs.blocks_in(MERGE_GAP_BYTES)),
    };
    let end = params.dest_end().ok_or_else(|| {
        Error::past_offsets(
            params.dest_offset,
            fs_bytes(bs, params.blocks_count).unwrap_or(u64::MAX),
        )
    })?;
    params
        .src_offset
        .checked_add(fs_bytes(bs, params.blocks_count)?)
        .ok_or_else(|| overflow("source offset plus filesystem size"))?;
    if src.is_dev && end > src.id.size {
        return Err(Error::NoRoom {
            have: src.id.size,
            need: end,
        });
    }
    if !src.is_dev {
        // Before the journal exists: a move that cannot write its last byte must not start
        // (it would fail at its first write and leave an unfinished journal).
        crate::output::check_file_end(&src.file, end)?;
    }
    Ok((params, res.map))
}

/// Before a new move: is an unfinished move of SOURCE recorded in another journal, and does
/// SOURCE hold its half-moved state? Then moving afresh would scan a half-moved filesystem:
/// refuse, naming that journal. Looked at: with `uuid` unknown (before the scan), the default
/// journal while `--journal` names another, and the journal SOURCE's identity is indexed
/// under; with the scanned filesystem's `uuid`, every journal the state folder knows that
/// was recorded for another object (a device renumbered by a reboot, a copied image).
/// Unfinished journals of SOURCE that it does not match are stale: left alone, said so.
fn refuse_other_unfinished(
    src: &MoveSource,
    using: &Path,
    loc: &Locations,
    uuid: Option<[u8; 16]>,
    notes: &mut dyn FnMut(MoveNote),
    progress: &mut dyn Progress,
) -> Result<()> {
    // The files under a loop device SOURCE: a move recorded for one of them (through its
    // own name, or another loop device) is checked through that file, not through SOURCE,
    // whose bytes are shifted when the loop has an offset (`losetup -o`): a fresh move
    // through it would otherwise rearrange the half-moved file and lose its filesystem.
    let under: Vec<(ObjectId, Option<PathBuf>, File)> = src
        .file
        .metadata()
        .map(|m| loop_backing_files(&m))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| {
            use std::os::fd::AsRawFd;
            let id = ObjectId::of_metadata(&f.metadata().ok()?);
            let name = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok();
            Some((id, name, f))
        })
        .collect();
    let mut candidates = Vec::new();
    match uuid {
        None => {
            candidates.extend(loc.default.clone());
            candidates.extend(loc.index.as_ref().and_then(|i| std::fs::read_link(i).ok()));
            for (id, name, _) in &under {
                if let Some(name) = name {
                    let l = mj::locations(name, *id, loc.state.clone());
                    candidates.extend(l.default);
                    candidates.extend(l.index.and_then(|i| std::fs::read_link(i).ok()));
                }
            }
        }
        Some(_) => {
            if let Some(st) = &loc.state {
                candidates.extend(mj::known_journals(st));
            }
        }
    }
    let using = ObjectId::of_path(using).into_iter().collect();
    for (c, j) in mj::open_distinct(candidates, using) {
        let same_object = j.source().object == src.id.object;
        let under_object = under.iter().position(|(id, _, _)| *id == j.source().object);
        let relevant = match uuid {
            None => same_object || under_object.is_some(),
            Some(u) => !same_object && j.params().uuid == u,
        };
        if j.state() == State::Done || !relevant || same_object && j.check_size(src.id).is_some() {
            continue;
        }
        let p = j.params();
        // Through a file under SOURCE: the one it was recorded for, else each.
        let unders: Vec<usize> = match under_object {
            Some(k) => vec![k],
            None if same_object => Vec::new(),
            None => (0..under.len()).collect(),
        };
        for k in unders {
            let (_, name, f) = &under[k];
            let reader = FileSource::from_file(f.try_clone().map_err(|e| Error::io("dup", e))?, 0)?;
            if matches!(j.verify(&reader, progress), Ok(Ok(_))) {
                let file = name
                    .as_ref()
                    .map_or_else(|| "it".to_string(), |n| n.display().to_string());
                return Err(Error::InvalidInput(format!(
                    "SOURCE is a loop device over {file}, which holds the half-moved state of the unfinished move from byte {} to byte {} recorded in {}: finish it with --journal {} on that file (e2i-move -o {} -O {} --journal {} {file}); nothing written",
                    p.src_offset,
                    p.dest_offset,
                    c.display(),
                    c.display(),
                    p.src_offset,
                    p.dest_offset,
                    c.display()
                )));
            }
        }
        if under_object.is_some() {
            continue;
        }
        match j.verify(&src.reader()?, progress)? {
            Ok(_) => {
                return Err(Error::InvalidInput(format!(
                    "SOURCE holds the half-moved state of the unfinished move from byte {} to byte {} recorded in {}{}: finish it with --journal {}",
                    p.src_offset,
                    p.dest_offset,
                    c.display(),
                    if same_object {
                        String::new()
                    } else {
                        format!(" (recorded for {})", mj::describe(j.source().object))
                    },
                    c.display()
                )));
            }
            Err(_) if same_object => notes(MoveNote::Stale { journal: c }),
            Err(_) => {}
        }
    }
    Ok(())
}

/// SOURCE as a move reads it, for read hints. [`crate::readplan`] plans ranges that are read
/// upwards; a move to the right reads downwards, so it plans on SOURCE seen end to start
/// (`down`: byte `x` here is byte `u64::MAX - x` of SOURCE). Only hints pass through it.
struct Oriented<'a> {
    src: &'a FileSource,
    down: bool,
}

impl Oriented<'_> {
    /// A range of SOURCE as seen here, and back (the map is its own inverse).
    fn range(&self, r: &Range<u64>) -> Range<u64> {
        if self.down {
            u64::MAX.saturating_sub(r.end)..u64::MAX.saturating_sub(r.start)
        } else {
            r.clone()
        }
    }
}

impl ReadAt for Oriented<'_> {
    fn read_at(&self, _buf: &mut [u8], offset: u64) -> Result<usize> {
        Err(Error::InvalidInput(format!(
            "read at {offset} of a source seen for hints only"
        )))
    }
    fn size(&self) -> u64 {
        u64::MAX
    }
    fn will_need(&self, offset: u64, len: u64) {
        let r = self.range(&(offset..offset.saturating_add(len)));
        self.src.will_need(r.start, r.end.saturating_sub(r.start));
    }
}

/// Read hints for `ranges` of SOURCE, read in that order (upwards, or downwards when
/// `src.down`); tell it each range's start as it is read ([`Oriented::range`]).
fn hints_for<'a>(
    src: &'a Oriented<'a>,
    ranges: impl Iterator<Item = Range<u64>> + Send + 'a,
) -> Readahead<'a, Oriented<'a>, Box<dyn Iterator<Item = Range<u64>> + Send + 'a>> {
    Readahead::new(
        src,
        Box::new(ranges.map(|r| src.range(&r))),
        readplan::WINDOW,
    )
}

/// The checksum of every piece's bytes at its source, read before anything is written, so
/// the journal knows what the move has still to read (docs/move-journal.md). Two threads
/// share the pieces: this read is the price of that knowledge, so it should be quick.
fn checksum_pieces(
    src: &MoveSource,
    pieces: &[Piece],
    progress: &mut dyn Progress,
) -> Result<Vec<u32>> {
    const THREADS: usize = 2;
    let total: u64 = pieces.iter().map(Piece::bytes).sum();
    progress.phase("reading", total, Unit::Bytes);
    let readers = (0..THREADS)
        .map(|_| src.reader())
        .collect::<Result<Vec<FileSource>>>()?;
    // Pieces come in copy order: downwards when the move goes right.
    let down = pieces
        .first()
        .zip(pieces.last())
        .is_some_and(|(a, b)| a.src.start > b.src.start);
    let (tx, rx) = sync_channel::<Result<(usize, u32, u64)>>(2 * THREADS);
    let mut out = vec![0u32; pieces.len()];
    std::thread::scope(|scope| -> Result<()> {
        for (t, reader) in readers.into_iter().enumerate() {
            let tx = tx.clone();
            scope.spawn(move || {
                let mut buf = vec![0u8; mj::CHECK_CHUNK];
                // Each thread hints its own pieces (a cold SOURCE is then read with queue
                // depth, not one 1 MiB request per thread at a time).
                let seen = Oriented { src: &reader, down };
                let mine = pieces.iter().skip(t).step_by(THREADS);
                let mut hints = hints_for(&seen, mine.map(|pc| pc.src.clone()));
                for (i, pc) in pieces.iter().enumerate().skip(t).step_by(THREADS) {
                    hints.at(seen.range(&pc.src).start);
                    let res =
                        mj::checksum_range(&reader, &pc.src, &mut buf).map(|c| (i, c, pc.bytes()));
                    let failed = res.is_err();
                    if tx.send(res).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut done = 0u64;
        for res in rx {
            let (i, crc, n) = res?;
            out[i] = crc;
            done = done.saturating_add(n);
            progress.update(done);
        }
        Ok(())
    })?;
    progress.finish();
    Ok(out)
}

/// Move the filesystem inside `source` from `opts.src_offset` to `opts.dest_offset`,
/// journalled. Rerunning after a crash finishes the move (under any name of SOURCE);
/// rerunning after it finished does nothing (`already_done`); a journal SOURCE does not
/// match is refused.
pub fn move_in_place(
    source: &Path,
    jopts: &JournalOptions,
    opts: &MoveOptions,
    on_write: &mut dyn FnMut(FsBlock, u64),
    notes: &mut dyn FnMut(MoveNote),
    progress: &mut dyn Progress,
) -> Result<MoveReport> {
    if opts.src_offset == opts.dest_offset {
        return Err(Error::InvalidInput(
            "the source and destination offsets are equal: nothing to move".into(),
        ));
    }
    let src = MoveSource::open(source, opts.dry_run)?;
    let chosen = choose_journal(source, &src, jopts, opts.dry_run)?;
    if !opts.dry_run
        && let Some(fstype) = volatile_journal(&chosen.path, &src)
    {
        notes(MoveNote::Volatile {
            journal: chosen.path.clone(),
            fstype,
        });
    }
    let (mut j, saved) = match read_journal(&chosen, &src, opts, notes, progress)? {
        Start::Done(rep) => return Ok(rep),
        Start::Resume(j, saved) => (j, saved),
        Start::Fresh => match start_new_move(&src, &chosen, opts, on_write, notes, progress)? {
            New::Started(j) => (j, Vec::new()),
            New::Listed(rep) => return Ok(rep),
        },
    };
    j.set_test_hooks(opts.crash_point, opts.slice_bytes);
    let next = j.next_piece();
    // At most the number of pieces (the journal checks its checkpoint).
    let start = usize::try_from(next)
        .unwrap_or(usize::MAX)
        .min(j.pieces().len());
    let blocks = |pcs: &[Piece]| {
        pcs.iter()
            .fold(0u64, |n, pc| n.saturating_add(pc.blocks.len))
    };
    let done = blocks(&j.pieces()[..start]);
    let p = j.params();
    let mut rep = MoveReport {
        block_size: p.block_size.get(),
        blocks_count: p.blocks_count,
        selected_blocks: p.spans.iter().fold(0u64, |n, r| n.saturating_add(r.len)),
        pieces: j.pieces().len() as u64,
        started_at_piece: next,
        resumed: start > 0 || !saved.is_empty(),
        journal: Some(j.path().to_path_buf()),
        blocks: done,
        ..MoveReport::default()
    };
    if opts.dry_run {
        for pc in &j.pieces()[start..] {
            on_write(pc.blocks.start, pc.blocks.len);
        }
        rep.blocks = rep.selected_blocks.saturating_sub(done);
        return Ok(rep);
    }
    let bs = p.block_size.bytes();
    progress.phase(
        "moving",
        rep.selected_blocks.saturating_mul(bs),
        Unit::Bytes,
    );
    progress.update(done.saturating_mul(bs));
    let moved = copy_pieces(&src, &mut j, saved, opts, &mut rep, progress)
        .and_then(|()| finish_move(&src, &mut j, opts, &mut rep));
    if moved.is_err() {
        notes(MoveNote::Unfinished {
            journal: j.path().to_path_buf(),
        });
    }
    moved?;
    progress.finish();
    Ok(rep)
}

/// What [`start_new_move`] did.
enum New {
    /// The journal is created: the move can start.
    Started(Journal),
    /// `-n`: the blocks were listed.
    Listed(MoveReport),
}

/// A new move: make sure no unfinished move of SOURCE is recorded elsewhere, scan and plan
/// it, checksum every piece, create the journal and enter it in the index.
fn start_new_move(
    src: &MoveSource,
    chosen: &Chosen,
    opts: &MoveOptions,
    on_write: &mut dyn FnMut(FsBlock, u64),
    notes: &mut dyn FnMut(MoveNote),
    progress: &mut dyn Progress,
) -> Result<New> {
    let (jpath, loc) = (chosen.for_new_move(), &chosen.loc);
    refuse_other_unfinished(src, jpath, loc, None, notes, progress)?;
    let (params, map) = match plan_new(src, opts, progress) {
        Ok(x) => x,
        Err(e) => {
            // No filesystem at S: a half-moved SOURCE whose moved superblock is at D already,
            // reached under another identity (a loop device over the file, a copy). Its
            // journal is found by the UUID at D, as it is by the one at S earlier in a move.
            if let Some(u) = fs_uuid_at(&src.file, opts.dest_offset) {
                refuse_other_unfinished(src, jpath, loc, Some(u), notes, progress)?;
            }
            return Err(e);
        }
    };
    refuse_other_unfinished(src, jpath, loc, Some(params.uuid), notes, progress)?;
    if opts.dry_run {
        return Ok(New::Listed(list_new(&params, &map, on_write)));
    }
    let pieces = params.pieces()?;
    let digests = checksum_pieces(src, &pieces, progress)?;
    let mut j = Journal::create(jpath, params, src.id, digests).map_err(|e| {
        let hint = matches!(&e, Error::Io { source, .. } if matches!(source.kind(),
            std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::ReadOnlyFilesystem
                | std::io::ErrorKind::StorageFull));
        match in_journal(jpath, e) {
            Error::InvalidInput(m) if hint => Error::InvalidInput(format!(
                "{m} (give the journal another place with --journal)"
            )),
            e => e,
        }
    })?;
    j.set_test_hooks(opts.crash_point, opts.slice_bytes);
    crash_point(opts);
    // Indexed before the first byte of SOURCE is written: a run under another name that
    // finds no journal finds SOURCE untouched.
    if let Some(index) = &loc.index
        && let Err(e) = mj::register(index, jpath)
    {
        notes(MoveNote::NotIndexed {
            index: index.clone(),
            reason: e.to_string(),
        });
    }
    Ok(New::Started(j))
}

/// `-n` of a new move: the blocks it would write, in the order it would write them.
fn list_new(
    params: &MoveParams,
    map: &BlockMap,
    on_write: &mut dyn FnMut(FsBlock, u64),
) -> MoveReport {
    let plan = MoveParams {
        spans: map.runs().iter().copied().map(Span::covering).collect(),
        ..params.clone()
    };
    let pieces = plan.pieces().unwrap_or_default();
    for pc in &pieces {
        on_write(pc.blocks.start, pc.blocks.len);
    }
    MoveReport {
        block_size: params.block_size.get(),
        blocks_count: params.blocks_count,
        selected_blocks: map.selected_blocks(),
        blocks: map.selected_blocks(),
        pieces: pieces.len() as u64,
        ..MoveReport::default()
    }
}

/// Bytes of a move's buffers: pieces are read, saved, compared and written a slice at a
/// time, so that a move holds one piece and a slice (34 MiB), not whole pieces in flight
/// (three of 32 MiB, 100 MB). 2 MiB writes cost no more time than 1 MiB ones here.
const SLICE: usize = 2 << 20;
/// Slices beyond one piece's: the reader starts on the next piece while the writer checks
/// and commits the current one.
const SPARE_SLICES: usize = 1;

/// What the reader thread hands on (through the saver thread) to the writer: a piece's
/// slices in order, then the piece.
enum Msg {
    Slice {
        piece: usize,
        /// Byte of the piece the slice starts at.
        at: usize,
        /// The piece is to be saved.
        save: bool,
        buf: AlignedBuf,
    },
    Done(Result<Loaded>),
}

/// A piece read (its slices came before it).
struct Loaded {
    index: usize,
    /// The saver thread saved the piece (not yet synced).
    saved: bool,
    /// Read from its save record.
    from_save: bool,
    past_bytes: u64,
}

/// Copy the pieces from the journal's next one on (docs/move-journal.md, "The protocol").
/// A reader thread reads ahead, a slice at a time, into slices this thread frees as it
/// writes — safe, since no piece's destination overlaps the source of a later piece — and
/// checks each piece against its recorded checksum; a saver thread saves a piece that
/// overlaps itself as its slices pass. Reading, saving and writing run side by side, and the
/// memory is one piece and a few slices.
fn copy_pieces(
    src: &MoveSource,
    j: &mut Journal,
    saved: Vec<Saved>,
    opts: &MoveOptions,
    rep: &mut MoveReport,
    progress: &mut dyn Progress,
) -> Result<()> {
    // At most the number of pieces (the journal checks its checkpoint).
    let start = usize::try_from(j.next_piece()).unwrap_or(usize::MAX);
    let jp = j.path().to_path_buf();
    let pieces = j.pieces().to_vec();
    let digests = j.digests().to_vec();
    let bs = j.params().block_size;
    let piece_max = pieces.iter().map(Piece::buf_len).max().unwrap_or(0);
    let slices = piece_max.div_ceil(SLICE).saturating_add(SPARE_SLICES);
    let reader = src.reader()?;
    let saver = j.saver().map_err(|e| in_journal(&jp, e))?;
    let records = j.records().map_err(|e| in_journal(&jp, e))?;
    // With the test hooks, this thread saves a piece once it has written the piece before
    // (no saver thread): crash points come in a reproducible order, on the hooks' thread.
    let ordered = opts.crash_point.is_some() || opts.slice_bytes > 0;
    let mut direct = reopen_direct(&src.file);
    let mut cmp = Vec::new();
    // Source bytes of the pieces copied since the last checkpoint.
    let mut uncommitted: Option<Range<u64>> = None;
    std::thread::scope(|scope| -> Result<()> {
        // Room for every slice, so that no thread waits to hand one over.
        let room = slices.saturating_add(2);
        let (full_tx, full_rx) = sync_channel::<Msg>(room);
        let (free_tx, free_rx) = sync_channel::<AlignedBuf>(slices);
        // The writer tells the saver thread each piece it has finished (committed if it
        // overlapped itself), whose save slot may then be reused.
        let (mark_tx, mark_rx) = std::sync::mpsc::channel::<usize>();
        for _ in 0..slices {
            let _ = free_tx.send(AlignedBuf::new(SLICE));
        }
        let job = ReadJob {
            pieces: &pieces,
            digests: &digests,
            start,
            saved,
            records: &records,
        };
        if ordered {
            scope.spawn(move || read_pieces(reader, job, full_tx, free_rx));
        } else {
            let (read_tx, read_rx) = sync_channel::<Msg>(room);
            scope.spawn(move || read_pieces(reader, job, read_tx, free_rx));
            let save = SaveJob {
                pieces: &pieces,
                digests: &digests,
                start,
                saver: &saver,
                journal: &jp,
            };
            scope.spawn(move || save_pieces(save, read_rx, full_tx, mark_rx));
        }
        // The next piece and its slices; `None` once the reader has handed over every piece.
        let next_piece = || -> Result<Option<(Loaded, Vec<AlignedBuf>)>> {
            let mut bufs = Vec::new();
            loop {
                match full_rx.recv() {
                    Err(_) => return Ok(None),
                    Ok(Msg::Slice { buf, .. }) => bufs.push(buf),
                    Ok(Msg::Done(r)) => {
                        let l = r?;
                        if ordered && l.saved {
                            save_here(&saver, &pieces[l.index], l.index, &bufs, &digests)
                                .map_err(|e| in_journal(&jp, e))?;
                        }
                        return Ok(Some((l, bufs)));
                    }
                }
            }
        };
        let mut pending = next_piece()?;
        // Whether the journal was synced since the reader saved the pending piece.
        let mut save_synced = false;
        while let Some((cur, bufs)) = pending.take() {
            let k = cur.index;
            let pc = &pieces[k];
            let n = pc.buf_len();
            // Write-ahead: before this piece may overwrite the source of a copied piece, make
            // that copy durable and record it, so a rerun never re-reads a clobbered source.
            if uncommitted
                .as_ref()
                .is_some_and(|u| mj::overlaps(u, &pc.dst))
            {
                src.sync(pc.dst.start)?;
                j.checkpoint(State::Running { next: k as u64 })
                    .map_err(|e| in_journal(&jp, e))?;
                rep.checkpoints = rep.checkpoints.saturating_add(1);
                uncommitted = None;
                save_synced = true;
            }
            let self_overlap = pc.overlaps_itself();
            if cur.saved {
                // The destination overlaps this piece's own source: its saved bytes must be
                // durable before the first byte is overwritten.
                if !save_synced {
                    j.sync().map_err(|e| in_journal(&jp, e))?;
                }
                rep.saved_pieces = rep.saved_pieces.saturating_add(1);
            }
            rep.from_saves = rep.from_saves.saturating_add(u64::from(cur.from_save));
            rep.past_end_blocks = rep
                .past_end_blocks
                .saturating_add(bs.blocks_covering(cur.past_bytes));
            // The piece's bytes, slice by slice.
            let parts = || {
                bufs.iter()
                    .zip((0..n).step_by(SLICE))
                    .map(|(b, at)| b.get(SLICE.min(n.saturating_sub(at))))
            };
            let write = !(opts.check && holds(&src.file, parts(), pc.dst.start, &mut cmp)?);
            // Each slice goes back to the reader once written: it reads (and saves) the next
            // piece into them meanwhile. It may have stopped on an error already: then these
            // sends just fail.
            let mut at = pc.dst.start;
            for (b, from) in bufs.into_iter().zip((0..n).step_by(SLICE)) {
                let data = b.get(SLICE.min(n.saturating_sub(from)));
                if write {
                    write_sliced(&src.file, &mut direct, data, at, opts)?;
                }
                at = at.saturating_add(data.len() as u64);
                let _ = free_tx.send(b);
            }
            if write {
                rep.bytes_written = rep.bytes_written.saturating_add(n as u64);
            } else {
                rep.identical_blocks = rep.identical_blocks.saturating_add(pc.blocks.len);
            }
            let next = next_piece()?;
            uncommitted = Some(match uncommitted.take() {
                Some(u) => u.start.min(pc.src.start)..u.end.max(pc.src.end),
                None => pc.src.clone(),
            });
            save_synced = false;
            if self_overlap {
                // The source is gone now: commit before the save slot can be reused. The
                // checkpoint's sync also makes the next piece's save durable.
                src.sync(pc.dst.start)?;
                j.checkpoint(State::Running {
                    next: (k as u64).saturating_add(1),
                })
                .map_err(|e| in_journal(&jp, e))?;
                rep.checkpoints = rep.checkpoints.saturating_add(1);
                uncommitted = None;
                save_synced = true;
            }
            rep.blocks = rep.blocks.saturating_add(pc.blocks.len);
            progress.update(rep.blocks.saturating_mul(bs.bytes()));
            let _ = mark_tx.send(k);
            pending = next;
        }
        Ok(())
    })
}

/// Does `file` hold `parts` (consecutive) at `at`? Read and compared a part at a time into
/// `cmp` (a whole piece more in memory would be 32 MiB), stopping at the first difference.
fn holds<'a>(
    file: &File,
    parts: impl Iterator<Item = &'a [u8]>,
    at: u64,
    cmp: &mut Vec<u8>,
) -> Result<bool> {
    let mut off = at;
    for want in parts {
        cmp.resize(want.len(), 0);
        let n = pread_full(file, cmp, off).map_err(|e| Error::io_at("read", off, e))?;
        if n < want.len() || cmp[..] != *want {
            return Ok(false);
        }
        off = off.saturating_add(n as u64);
    }
    Ok(true)
}

/// What the reader thread reads.
struct ReadJob<'a> {
    pieces: &'a [Piece],
    digests: &'a [u32],
    start: usize,
    /// Pieces an interrupted run saved (intact records when the journal was checked).
    saved: Vec<Saved>,
    records: &'a mj::Records,
}

/// What the saver thread saves.
struct SaveJob<'a> {
    pieces: &'a [Piece],
    digests: &'a [u32],
    start: usize,
    saver: &'a mj::Saver,
    /// The journal's path, for errors.
    journal: &'a Path,
}

/// Save piece `k` (`pc`), whose slices are `bufs`, on this thread (with the test hooks).
fn save_here(
    saver: &mj::Saver,
    pc: &Piece,
    k: usize,
    bufs: &[AlignedBuf],
    digests: &[u32],
) -> Result<()> {
    let n = pc.buf_len();
    for (b, at) in bufs.iter().zip((0..n).step_by(SLICE)) {
        saver.part(k as u64, at as u64, b.get(SLICE.min(n.saturating_sub(at))))?;
    }
    saver.seal(k as u64, pc.bytes(), digests[k])
}

/// The writer (or the saver) stopped: its own error is the one reported.
fn stopped() -> Error {
    Error::InvalidInput("the move stopped".into())
}

/// The reader thread of a move: each piece from `start` on, from SOURCE — or, for a piece an
/// interrupted run saved, from its save record — a slice at a time into the `free` slices,
/// checked against its checksum.
///
/// A record is read from the journal here, not held from the check on: its slot is
/// rewritten only by saving the piece two after it (a piece before it that would use the
/// slot is committed already: the run that saved this one waited for that), and this thread
/// reads that piece only once it has read this one.
fn read_pieces(
    src: FileSource,
    job: ReadJob<'_>,
    out: SyncSender<Msg>,
    free: Receiver<AlignedBuf>,
) {
    for (k, pc) in job.pieces.iter().enumerate().skip(job.start) {
        let n = pc.buf_len();
        let record = job.saved.iter().any(|s| s.piece == k as u64);
        let save = !record && pc.overlaps_itself();
        let read = || -> Result<Loaded> {
            let mut crc = 0u32;
            let mut past = 0u64;
            for at in (0..n).step_by(SLICE) {
                let len = SLICE.min(n.saturating_sub(at));
                let mut buf = free.recv().map_err(|_| stopped())?;
                let b = buf.get_mut(len);
                if record {
                    job.records.read(k as u64, at as u64, b)?;
                } else {
                    // `at` is below the piece's length: a position inside it.
                    let pos = pc.src.start.saturating_add(at as u64);
                    let p = src.read_sparse_at(b, pos)?;
                    past = past.saturating_add(p as u64);
                }
                crc = crc32c::crc32c_append(crc, b);
                let msg = Msg::Slice {
                    piece: k,
                    at,
                    save,
                    buf,
                };
                out.send(msg).map_err(|_| stopped())?;
            }
            if record && crc != job.digests[k] {
                return Err(job.records.changed(k as u64));
            }
            if crc != job.digests[k] {
                return Err(Error::InvalidInput(format!(
                    "SOURCE changed during the move: bytes {}-{} (piece {k}) are no longer what they were when the move started",
                    pc.src.start,
                    pc.src.end.saturating_sub(1)
                )));
            }
            Ok(Loaded {
                index: k,
                saved: save,
                from_save: record,
                past_bytes: past,
            })
        };
        let res = read();
        let failed = res.is_err();
        if out.send(Msg::Done(res)).is_err() || failed {
            return;
        }
    }
}

/// The saver thread of a move: passes the reader's slices on to the writer, saving those of
/// a piece that overlaps itself on the way, and seals the record once the reader has checked
/// the piece. A piece's save slot held the piece two before it: saving waits until the
/// writer has finished that one.
fn save_pieces(job: SaveJob<'_>, from: Receiver<Msg>, to: SyncSender<Msg>, marks: Receiver<usize>) {
    // Pieces below this are finished, as far as this thread has heard.
    let mut finished = job.start;
    let mut wait = |upto: usize| {
        while finished < upto {
            match marks.recv() {
                Ok(k) => finished = finished.max(k.saturating_add(1)),
                Err(_) => return false,
            }
        }
        true
    };
    // The piece whose saving may start (its slot is free).
    let mut cleared = None;
    for msg in from {
        let msg = match msg {
            Msg::Slice {
                piece: k,
                at,
                save: true,
                buf,
            } => {
                let n = job.pieces[k].buf_len();
                let res = if cleared == Some(k) || wait(k.saturating_sub(1)) {
                    cleared = Some(k);
                    let data = buf.get(SLICE.min(n.saturating_sub(at)));
                    job.saver
                        .part(k as u64, at as u64, data)
                        .map_err(|e| in_journal(job.journal, e))
                } else {
                    Err(stopped())
                };
                match res {
                    Ok(()) => Msg::Slice {
                        piece: k,
                        at,
                        save: true,
                        buf,
                    },
                    Err(e) => Msg::Done(Err(e)),
                }
            }
            Msg::Done(Ok(l)) if l.saved => {
                let k = l.index;
                let n = job.pieces[k].bytes();
                match job.saver.seal(k as u64, n, job.digests[k]) {
                    Ok(()) => Msg::Done(Ok(l)),
                    Err(e) => Msg::Done(Err(in_journal(job.journal, e))),
                }
            }
            other => other,
        };
        let failed = matches!(msg, Msg::Done(Err(_)));
        if to.send(msg).is_err() || failed {
            return;
        }
    }
}

/// Write `data` at `off` of SOURCE. With the test hooks, in slices with a crash point (and
/// the throttle's pause) before each, so a test's kill can land in the middle of a piece.
fn write_sliced(
    file: &File,
    direct: &mut Option<File>,
    data: &[u8],
    off: u64,
    opts: &MoveOptions,
) -> Result<()> {
    let slice = match (opts.slice_bytes, opts.throttle_us_per_mib) {
        (0, 0) => data.len().max(1),
        (0, _) => 1 << 20,
        (s, _) => s,
    };
    let mut at = off;
    for chunk in data.chunks(slice) {
        crash_point(opts);
        write_maybe_direct(file, direct, chunk, at)?;
        at = at.saturating_add(chunk.len() as u64);
        if opts.throttle_us_per_mib > 0 {
            std::thread::sleep(Duration::from_micros(
                opts.throttle_us_per_mib.saturating_mul(chunk.len() as u64) >> 20,
            ));
        }
    }
    Ok(())
}

/// The last steps: grow a regular SOURCE to the moved filesystem's end (never shrink it),
/// sync, record the move as done and drop the journal's save area.
fn finish_move(
    src: &MoveSource,
    j: &mut Journal,
    opts: &MoveOptions,
    rep: &mut MoveReport,
) -> Result<()> {
    let end = j
        .params()
        .dest_end()
        .ok_or_else(|| overflow("destination offset plus filesystem size"))?;
    if !src.is_dev && file_size(&src.file)?.0 < end {
        crash_point(opts);
        src.file
            .set_len(end)
            .map_err(|e| Error::io_at("truncate", end, e))?;
    }
    src.sync(end)?;
    let jp = j.path().to_path_buf();
    j.finish(src.change_stamp())
        .map_err(|e| in_journal(&jp, e))?;
    rep.checkpoints = rep.checkpoints.saturating_add(1);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)] // tests compute expected values freely
mod tests {
    use super::*;

    fn r(start: u64, len: u64) -> BlockRun {
        BlockRun::new(FsBlock(start), len)
    }

    fn s(start: u64, len: u64) -> Span {
        Span::new(FsBlock(start), len)
    }

    #[test]
    fn runs_merge_across_small_gaps() {
        let spans = merge_runs(&[r(0, 3), r(4, 2), r(100, 10)], 1);
        assert_eq!(spans, vec![s(0, 6), s(100, 10)]);
        assert_eq!(merge_runs(&[r(0, 3), r(5, 2)], 1), vec![s(0, 3), s(5, 2)]);
        assert_eq!(merge_runs(&[], 1), vec![]);
    }

    #[test]
    fn journal_paths_follow_links_and_never_make_folders() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("j");
        std::fs::write(&real, b"x").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let canon = std::fs::canonicalize(&real).unwrap();
        assert_eq!(resolve_journal_path(&link).unwrap(), canon);
        let new = d.path().join("new.j");
        assert_eq!(
            resolve_journal_path(&new).unwrap(),
            std::fs::canonicalize(d.path()).unwrap().join("new.j")
        );
        let missing = d.path().join("no/such/folder/j");
        let e = resolve_journal_path(&missing).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(!d.path().join("no").exists());
        std::os::unix::fs::symlink(d.path().join("gone"), d.path().join("dangling")).unwrap();
        assert!(resolve_journal_path(&d.path().join("dangling")).is_err());
        assert!(resolve_journal_path(d.path()).is_err());
    }
}
