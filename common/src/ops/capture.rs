//! `e2i-capture`: filesystem → block map → image writer.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::blockmap::{BlockMap, BlockRun};
use crate::ext4::scan::{self, Problem, ProblemKind, ScanOptions, Warning};
use crate::ext4::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::ext4::{Filesystem, OpenOptions};
use crate::io::{FileSource, ReadAt};
use crate::mark::{self, Marks};
use crate::progress::{NoProgress, Progress, Unit};
use crate::qcow2::{self, Qcow2Target};
use crate::scramble::{self, Overlay, ScrambleReport, ScrambledSource};
use crate::sparse::{self, CopyStats, RawTarget};
use crate::stream;
use crate::{Error, Result};

/// Image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Normal,
    Raw,
    Qcow2,
    Stream,
}

/// What to capture and how.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    /// `-a`: regular-file data too.
    pub all_data: bool,
    /// `-b`/`-B`.
    pub open: OpenOptions,
    /// `-o`: byte offset of the filesystem in the source.
    pub offset: u64,
    /// `-P`: bytes from `offset` on that may be read (the partition); nothing past them is.
    pub limit: Option<u64>,
    /// Stop at the first damaged structure.
    pub strict: bool,
    /// qcow2 only: compressed clusters (needs a seekable new file).
    pub compress: Option<qcow2::header::ClusterCompression>,
    /// qcow2 only: write an overlay on this previous capture.
    pub backing: Option<std::rc::Rc<qcow2::overlay::Base>>,
    /// `-s`: scramble with this seed ([`crate::scramble::DEFAULT_SEED`] by default). Every
    /// writer reads through [`crate::scramble::ScrambledSource`]; the normal format's writer
    /// also blanks the header's hostname and device name when this is set.
    pub scramble: Option<u64>,
    /// Stream only: the format version written (`--stream-version`).
    pub stream_version: stream::Version,
}

/// Where the image goes.
pub enum Output<'a> {
    /// A new regular file (zero blocks become holes).
    NewFile(&'a File),
    /// A block device of `size` bytes: every selected block written, inode tables whole (as
    /// e2image does); an image larger than the device is refused before the first write.
    Device { file: &'a File, size: u64 },
    /// A pipe, stdout, a character device: counting what it took (where a failed write
    /// began).
    Stream(&'a mut dyn crate::io::SeqWrite),
}

/// What a capture did.
#[derive(Debug, Default)]
pub struct CaptureReport {
    pub block_size: u32,
    pub blocks_count: u64,
    /// Blocks selected by the scan.
    pub selected_blocks: u64,
    /// Runs in the block map.
    pub runs: usize,
    pub copy: CopyStats,
    /// Damaged structures skipped (the capture is usable but incomplete: exit 3).
    pub problems: Vec<Problem>,
    /// Damage noticed that leaves the selection as e2image's (reported, exit 0).
    pub warnings: Vec<Warning>,
    /// What `-s` scrambled, and what it could not.
    pub scramble: Option<ScrambleReport>,
}

/// Open the source at `path` for reading the filesystem at byte `offset`. A qcow2 image
/// (detected by its magic) is read through its virtual disk, `offset` applying inside it.
///
/// A pipe, a compressed file or an offset past the end is refused with what to do instead.
pub fn open_source(path: &Path, offset: u64) -> Result<Box<dyn ReadAt>> {
    open_source_in(path, offset, Some(qcow2::chain::folder_of(path)))
}

/// As [`open_source`], with the relative backing and data file names of a qcow2 image
/// resolved against `dir` (a spooled converter input's original folder; `None` for one
/// read from a pipe).
pub fn open_source_in(path: &Path, offset: u64, dir: Option<&Path>) -> Result<Box<dyn ReadAt>> {
    // Refused before opening: opening a FIFO would wait for a writer.
    let seekable = |m: &std::fs::Metadata| {
        use std::os::unix::fs::FileTypeExt;
        m.is_file() || m.file_type().is_block_device()
    };
    let meta = std::fs::metadata(path).map_err(|e| Error::io("open", e))?;
    let whole = if seekable(&meta) {
        Some(FileSource::open(path, 0)?)
    } else {
        None
    };
    let Some(whole) = whole.filter(|w| w.is_seekable()) else {
        return Err(Error::InvalidInput(
            "not a seekable file or block device (a pipe or process substitution?): a filesystem is read by position; save it to a file first, or pipe an e2i stream or image into e2i-to-raw or e2i-to-qcow2 (INPUT -)".into(),
        ));
    };
    let mut magic = [0u8; 6];
    let n = whole.read_at(&mut magic, 0)?;
    if qcow2::is_qcow2(&magic[..n]) {
        let id = crate::io::ObjectId::of_path(path).ok();
        return open_qcow2_source(whole, id, offset, dir);
    }
    if let Some(c) = crate::ops::input::compression_name(&magic[..n]) {
        return Err(Error::InvalidInput(format!(
            "{c}-compressed: a filesystem is read in place, so decompress it first, or convert it with e2i-to-raw or e2i-to-qcow2, which decompress {c}"
        )));
    }
    past_end(offset, whole.size(), "the source")?;
    let src = FileSource::open(path, offset)?;
    refuse_normal_image(&src)?;
    Ok(Box::new(src))
}

/// The virtual disk of the qcow2 image in `host` (the file `id`, if it is one) from byte
/// `offset` on, read through its backing chain, whose relative names resolve against `dir`.
fn open_qcow2_source<S: ReadAt + 'static>(
    host: S,
    id: Option<crate::io::ObjectId>,
    offset: u64,
    dir: Option<&Path>,
) -> Result<Box<dyn ReadAt>> {
    let image = qcow2::Qcow2Image::open_host(host, dir, id)?;
    past_end(
        offset,
        image.virtual_size(),
        "the qcow2 image's virtual disk",
    )?;
    let src = qcow2::Shifted {
        inner: image,
        base: offset,
    };
    refuse_normal_image(&src)?;
    Ok(Box::new(src))
}

/// A normal e2image image is no filesystem to read in place: its superblock is at byte
/// 1024 as a filesystem's is, but its inode tables and bitmaps are not where that
/// superblock says (e2image -r reads it as a filesystem all the same, into garbage, exit
/// 0). Known as the converters know it: by its magic at the start.
fn refuse_normal_image(src: &dyn ReadAt) -> Result<()> {
    let mut head = [0u8; 4];
    let n = src.read_at(&mut head, 0)?;
    if crate::ops::input::detect(&head[..n]) == Some(crate::ops::input::Kind::Normal) {
        return Err(Error::InvalidInput(
            "a normal e2image image, not a filesystem: convert it with e2i-to-raw or e2i-to-qcow2, or capture the filesystem it was taken from".into(),
        ));
    }
    Ok(())
}

/// [`open_source`], reading at most `limit` bytes from `offset` on (a partition of `-P`):
/// reads past them come back short, as at the end of a file.
pub fn open_source_within(path: &Path, offset: u64, limit: Option<u64>) -> Result<Box<dyn ReadAt>> {
    let src = open_source(path, offset)?;
    Ok(match limit {
        Some(len) => Box::new(crate::partition::Window::new(src, 0, len)),
        None => src,
    })
}

/// `-o` at or past the end of what holds the filesystem: say where that ends.
fn past_end(offset: u64, size: u64, what: &str) -> Result<()> {
    if offset > 0 && offset >= size {
        return Err(Error::InvalidInput(format!(
            "offset {offset} lies past the end of {what}, which ends at byte {size}"
        )));
    }
    Ok(())
}

/// Open the filesystem and compute its block map.
pub fn scan_source<S: ReadAt>(
    src: S,
    opts: &CaptureOptions,
    output_is_block_device: bool,
    progress: &mut dyn Progress,
) -> Result<(Filesystem<S>, scan::ScanResult)> {
    let fs = Filesystem::open(src, opts.open)?;
    let res = scan_fs(&fs, opts, output_is_block_device, progress, None)?;
    Ok((fs, res))
}

/// The scan of [`scan_source`] on an open filesystem, publishing as it goes if asked.
fn scan_fs<S: ReadAt>(
    fs: &Filesystem<S>,
    opts: &CaptureOptions,
    output_is_block_device: bool,
    progress: &mut dyn Progress,
    publish: Option<scan::Publish<'_>>,
) -> Result<scan::ScanResult> {
    let sopts = ScanOptions {
        all_data: opts.all_data,
        output_is_block_device,
        strict: opts.strict,
        want_dir_blocks: false,
        walkers: None,
    };
    progress.block_size(fs.sb.block_size.get());
    progress.phase("scanning inodes", 0, Unit::Inodes);
    let mut started = false;
    let mut cb = |done: u64, total: u64| {
        if !started {
            progress.phase("scanning inodes", total, Unit::Inodes);
            started = true;
        }
        progress.update(done);
    };
    let res = match publish {
        Some(p) => scan::scan_publishing(fs, sopts, Some(&mut cb), p)?,
        None => scan::scan(fs, sopts, Some(&mut cb))?,
    };
    progress.finish();
    Ok(res)
}

/// Scan and write a raw image to a new file at once: the blocks the scan has found are
/// copied on a second thread while it reads on (a cold disk then streams the inode tables
/// once for both, and the copy's CPU runs beside the scan's waits). The file is the one
/// [`sparse::write_raw`] after [`scan_source`] would make. Only for a new file: a device
/// keeps its old contents if the scan fails.
fn scan_and_write_raw<S: ReadAt>(
    src: S,
    opts: &CaptureOptions,
    file: &File,
    progress: &mut dyn Progress,
) -> Result<(Filesystem<S>, scan::ScanResult, CopyStats)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    let fs = Filesystem::open(src, opts.open)?;
    let bs = fs.sb.block_size;
    let blocks_count = fs.sb.blocks_count;
    // A filesystem too large for the file is refused before the scan.
    sparse::check_raw_file(file, bs, blocks_count)?;
    // Set when the scan failed: the copy stops at its next piece.
    let stop = AtomicBool::new(false);
    // Set when the scan is done: the copy reports its progress from then on.
    let scanned = AtomicBool::new(false);
    let (batch_tx, batch_rx) = mpsc::channel::<Vec<BlockRun>>();
    let (map_tx, map_rx) = mpsc::channel::<BlockMap>();
    let (done_tx, done_rx) = mpsc::channel::<u64>();
    // Hidden, for tests only: stop the process (SIGSTOP) once this many blocks are copied,
    // the copy under way, so that a test can signal it at that moment.
    let mut stop_at: Option<u64> = std::env::var("E2I_TEST_STOP_AFTER_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok());
    std::thread::scope(|scope| {
        let fsr = &fs;
        let (stop, scanned) = (&stop, &scanned);
        let copier = scope.spawn(move || -> Result<CopyStats> {
            let mut each = |blocks: u64| {
                if stop.load(Ordering::Relaxed) {
                    return Err(Error::InvalidInput(
                        "the copy stopped: the scan failed".into(),
                    ));
                }
                if scanned.load(Ordering::Relaxed) {
                    let _ = done_tx.send(blocks);
                }
                if stop_at.is_some_and(|n| blocks >= n) {
                    stop_at = None;
                    let me = rustix::process::getpid();
                    let _ = rustix::process::kill_process(me, rustix::process::Signal::STOP);
                }
                Ok(())
            };
            sparse::write_raw_as_found(
                &fsr.src,
                file,
                bs,
                blocks_count,
                move || batch_rx.recv().ok(),
                move || {
                    map_rx
                        .recv()
                        .map_err(|_| Error::InvalidInput("the scan ended without a map".into()))
                },
                &mut each,
            )
        });
        let mut copier_failed = false;
        let mut publish = |runs: Vec<BlockRun>| {
            batch_tx.send(runs).map_err(|_| {
                copier_failed = true;
                Error::InvalidInput("the copying thread stopped".into())
            })
        };
        let scanned_res = scan_fs(&fs, opts, false, progress, Some(&mut publish));
        drop(batch_tx);
        let res = match scanned_res {
            Ok(res) => res,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                drop(map_tx);
                return match copier.join() {
                    // The copy's own failure is what stopped the scan.
                    Ok(Err(ce)) if copier_failed => Err(ce),
                    Ok(_) => Err(e),
                    Err(p) => std::panic::resume_unwind(p),
                };
            }
        };
        progress.phase("copying", res.map.selected_blocks(), Unit::Blocks);
        scanned.store(true, Ordering::Relaxed);
        let _ = map_tx.send(res.map.clone());
        for blocks in done_rx {
            progress.update(blocks);
        }
        let stats = match copier.join() {
            Ok(r) => r?,
            Err(p) => std::panic::resume_unwind(p),
        };
        progress.update(stats.blocks);
        progress.finish();
        Ok((res, stats))
    })
    .map(|(res, stats)| (fs, res, stats))
}

/// Capture SOURCE in `format` to `out`. Each format's writer consumes the same
/// filesystem and block map.
pub fn capture(
    source: &Path,
    opts: &CaptureOptions,
    format: Format,
    out: Output<'_>,
    progress: &mut dyn Progress,
) -> Result<CaptureReport> {
    let src = open_source_within(source, opts.offset, opts.limit)?;
    let marked_source = source_is_marked(source, &*src);
    let marks = Marks {
        scrambled: opts.scramble.is_some() || marked_source,
    };
    // A scrambled SOURCE whose superblock lacks the mark (a marked qcow2 made from an image
    // scrambled before the superblock mark existed) gets it; `-s` marks it while scrambling.
    let src: Box<dyn ReadAt> = if marked_source && opts.scramble.is_none() {
        Box::new(mark::MarkedSource::new(src, true))
    } else {
        src
    };
    if format == Format::Normal {
        // The normal format copies metadata by location: no block-map scan.
        return capture_normal(source, src, opts, marks, out, progress);
    }
    let is_dev = matches!(out, Output::Device { .. });
    if let (Format::Raw, Output::NewFile(file), None) = (format, &out, opts.scramble) {
        let (fs, res, copy) = scan_and_write_raw(src, opts, file, progress)?;
        return Ok(CaptureReport::new(&fs, res, copy, None));
    }
    let (fs, res) = scan_source(src, opts, is_dev, progress)?;
    let (fs, scramble_report) = match opts.scramble {
        Some(seed) => {
            let (fs, rep) = scramble_fs(fs, seed, opts)?;
            (fs, Some(rep))
        }
        None => (fs, None),
    };
    let map: &BlockMap = &res.map;
    let copy = match format {
        Format::Raw => {
            let target = match out {
                Output::NewFile(file) => RawTarget::NewFile {
                    file,
                    dest_offset: 0,
                },
                Output::Device { file, size } => RawTarget::InPlace {
                    file,
                    dest_offset: 0,
                    check: false,
                    room: Some(size),
                },
                Output::Stream(w) => RawTarget::Stream(w),
            };
            sparse::write_raw(&fs.src, map, fs.sb.block_size, target, progress)?
        }
        Format::Stream => {
            let mut room = None;
            // Unbuffered: the stream writer gathers its own writes, and a failed one names
            // the byte where it began only when no buffer below it holds bytes back.
            let mut file;
            let w: &mut dyn Write = match out {
                Output::Stream(w) => w,
                Output::NewFile(f) => {
                    file = f;
                    &mut file
                }
                Output::Device { file: f, size } => {
                    room = Some(size);
                    file = f;
                    &mut file
                }
            };
            let header = stream::Header {
                version: opts.stream_version,
                flags: if opts.all_data {
                    stream::flags::ALL_DATA
                } else {
                    0
                } | if marks.scrambled {
                    stream::flags::SCRAMBLED
                } else {
                    0
                },
                incompat: 0,
                block_size: fs.sb.block_size,
                blocks_count: fs.sb.blocks_count,
                uuid: fs.sb.uuid(),
                extents: 0,
            };
            write_stream(&fs.src, map, header, w, room, progress)?
        }
        Format::Qcow2 => {
            let pipe_refusal = || {
                Error::InvalidInput(
                    "--compress needs a seekable output file; a compressed qcow2 cannot be written to a pipe or device".into(),
                )
            };
            let bs = fs.sb.block_size;
            match out {
                Output::NewFile(f) => qcow2::write_qcow2(
                    &fs.src,
                    map,
                    bs,
                    Qcow2Target::File {
                        file: f,
                        compress: opts.compress,
                    },
                    marks,
                    opts.backing.as_deref(),
                    progress,
                )?,
                Output::Device { .. } | Output::Stream(_) if opts.compress.is_some() => {
                    return Err(pipe_refusal());
                }
                Output::Device { file, .. } => qcow2::write_qcow2(
                    &fs.src,
                    map,
                    bs,
                    Qcow2Target::Device(file),
                    marks,
                    opts.backing.as_deref(),
                    progress,
                )?,
                Output::Stream(w) => qcow2::write_qcow2(
                    &fs.src,
                    map,
                    bs,
                    Qcow2Target::Sequential(w),
                    marks,
                    opts.backing.as_deref(),
                    progress,
                )?,
            }
        }
        other => return Err(CaptureReport::unsupported(other)),
    };
    Ok(CaptureReport::new(&fs, res, copy, scramble_report))
}

/// The normal e2image format ([`crate::normal`]).
fn capture_normal(
    source: &Path,
    src: Box<dyn ReadAt>,
    opts: &CaptureOptions,
    marks: Marks,
    out: Output<'_>,
    progress: &mut dyn Progress,
) -> Result<CaptureReport> {
    use crate::normal::{HeaderInfo, NormalTarget, write_normal};
    let fs = Filesystem::open(src, opts.open)?;
    let (fs, scramble_report) = match opts.scramble {
        Some(seed) => {
            let (fs, rep) = scramble_fs(fs, seed, opts)?;
            (fs, Some(rep))
        }
        None => (fs, None),
    };
    let (target, file) = match out {
        Output::NewFile(f) => (NormalTarget::NewFile(f), Some(f)),
        Output::Device { file, .. } => (NormalTarget::Device(file), Some(file)),
        Output::Stream(w) => (NormalTarget::Stream(w), None),
    };
    let mut info = HeaderInfo::collect(source, file);
    info.marks = marks;
    if opts.scramble.is_some() {
        // Where the image was made says who made it.
        info.hostname.clear();
        info.device_name.clear();
    }
    let st = write_normal(&fs, &info, target, progress)?;
    let blocks = fs.sb.block_size.blocks_in(st.size);
    Ok(CaptureReport {
        block_size: fs.sb.block_size.get(),
        blocks_count: fs.sb.blocks_count,
        selected_blocks: blocks,
        runs: 0,
        copy: CopyStats {
            blocks,
            zero_blocks: st.zero_blocks,
            bytes_written: st.bytes_written,
            ..CopyStats::default()
        },
        problems: Vec::new(),
        warnings: Vec::new(),
        scramble: scramble_report,
    })
}

/// The scrambling transform layer: plan the changed blocks, wrap the source so that every
/// read sees them, and reopen the filesystem through the wrapper (so that the superblock and
/// descriptors writers take from `fs.sb`/`fs.desc` are the scrambled ones too).
pub fn scramble_fs(
    fs: Filesystem<Box<dyn ReadAt>>,
    seed: u64,
    opts: &CaptureOptions,
) -> Result<(Filesystem<Box<dyn ReadAt>>, ScrambleReport)> {
    let (mut overlay, rep) = scramble::plan(&fs, seed)?;
    mark_superblocks(&fs, &mut overlay)?;
    let wrapped: Box<dyn ReadAt> = Box::new(ScrambledSource::new(fs.src, overlay));
    let fs = Filesystem::open(wrapped, opts.open)?;
    Ok((fs, rep))
}

/// Put the scrambled mark ([`crate::mark`]) into the superblocks the image holds — the
/// primary, and the backup the filesystem was opened through — on top of what scrambling
/// changed there. The mark then travels with the filesystem through every format, and
/// through re-captures of a raw image made from it.
fn mark_superblocks<S: ReadAt>(fs: &Filesystem<S>, ov: &mut Overlay) -> Result<()> {
    let bs = fs.sb.block_size;
    let primary = (
        bs.block_of(SUPERBLOCK_OFFSET),
        SUPERBLOCK_OFFSET.checked_rem(bs.bytes()).unwrap_or(0),
    );
    let backup = fs.backup_superblock.map(|b| (b, 0));
    for (blk, off) in std::iter::once(primary).chain(backup) {
        let mut buf = match ov.get(blk) {
            Some(b) => b.to_vec(),
            None => {
                // The filesystem was opened through this block: its offset fits.
                let Some(at) = bs.offset_of(blk) else {
                    continue;
                };
                let len = bs.as_usize();
                let mut b = vec![0u8; len];
                if fs.src.read_at(&mut b, at)? < len {
                    continue;
                }
                b
            }
        };
        // off < bs, and a block holds the 1024 superblock bytes from `off` (bs >= 2048
        // when off = 1024).
        let Some(raw) = usize::try_from(off)
            .ok()
            .and_then(|o| buf.get_mut(o..o.checked_add(SUPERBLOCK_SIZE)?))
            .and_then(|r| <&mut [u8; SUPERBLOCK_SIZE]>::try_from(r).ok())
        else {
            continue;
        };
        if mark::mark_superblock(raw) {
            ov.put(blk, buf);
        }
    }
    Ok(())
}

/// SOURCE is itself a scrambled image: its superblock carries the mark, or it is a qcow2
/// image with e2i's scrambled extension. A capture of it carries the mark on.
pub fn source_is_marked(source: &Path, src: &dyn ReadAt) -> bool {
    superblock_is_marked(src) || qcow2_is_marked(source)
}

/// The filesystem `src` has the mark in its superblock.
pub fn superblock_is_marked(src: &dyn ReadAt) -> bool {
    let mut raw = [0u8; SUPERBLOCK_SIZE];
    src.read_at(&mut raw, SUPERBLOCK_OFFSET).ok() == Some(SUPERBLOCK_SIZE)
        && mark::superblock_is_marked(&raw)
}

/// `path` is a qcow2 image whose header carries e2i's scrambled extension.
pub fn qcow2_is_marked(path: &Path) -> bool {
    let Ok(whole) = FileSource::open(path, 0) else {
        return false;
    };
    let mut magic = [0u8; 8];
    if whole.read_at(&mut magic, 0).ok() != Some(magic.len()) || !qcow2::is_qcow2(&magic) {
        return false;
    }
    qcow2_host_is_marked(whole, Some(qcow2::chain::folder_of(path)))
}

/// The qcow2 image in `host` (its data file found from `dir`) carries e2i's scrambled
/// extension.
pub fn qcow2_host_is_marked<S: ReadAt>(host: S, dir: Option<&Path>) -> bool {
    qcow2::Qcow2Reader::open_layer_in(host, dir)
        .is_ok_and(|q| q.header().e2i_flags() & mark::QCOW2_FLAG_SCRAMBLED != 0)
}

impl CaptureReport {
    /// The report of a capture of `fs` whose scan gave `res` and whose copy gave `copy`.
    fn new<S>(
        fs: &Filesystem<S>,
        res: scan::ScanResult,
        copy: CopyStats,
        scramble: Option<ScrambleReport>,
    ) -> Self {
        let mut report = CaptureReport {
            block_size: fs.sb.block_size.get(),
            blocks_count: fs.sb.blocks_count,
            selected_blocks: res.map.selected_blocks(),
            runs: res.map.runs().len(),
            copy,
            problems: Vec::new(),
            warnings: Vec::new(),
            scramble,
        };
        report.problems = res.problems;
        report.warnings = res.warnings;
        // One line per run of unreadable blocks (a dead stretch of disk is thousands).
        for r in &report.copy.unreadable {
            report.problems.push(Problem {
                ino: None,
                kind: ProblemKind::CopyUnreadable {
                    first: r.start.get(),
                    count: r.len,
                },
            });
        }
        let unlisted = report
            .copy
            .unreadable_blocks
            .saturating_sub(report.copy.unreadable.iter().map(|r| r.len).sum());
        if unlisted > 0 {
            report.problems.push(Problem {
                ino: None,
                kind: ProblemKind::CopyUnreadableMore { count: unlisted },
            });
        }
        report
    }

    /// Fail if the format cannot be produced (used until every writer exists).
    pub fn unsupported(format: Format) -> Error {
        Error::Unsupported(format!(
            "the {format:?} format is not available in this build"
        ))
    }
}

/// Write the selected blocks of `src` as an e2i stream: the map first, then the data.
///
/// Version 2 reads the selection once: the map names the selected runs, and each run's
/// all-zero blocks are found as it is read and sent as zero segments. Version 1 reads it twice
/// (the map names the all-zero runs, so they are found first); memory stays bounded by the
/// map either way.
/// `room`: the size of a block device target, checked before the first byte is written
/// against the stream's size (version 1) or the most it can take (version 2: the zeros are
/// found first for that, a second read of the selection, as devices are rare stream targets).
pub fn write_stream<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    header: stream::Header,
    out: &mut dyn Write,
    room: Option<u64>,
    progress: &mut dyn Progress,
) -> Result<CopyStats> {
    let bs = header.block_size;
    let v1 = header.version == stream::Version::V1;
    let classified = if v1 || room.is_some() {
        Some(crate::pieces::classify_runs(src, map, bs, &mut NoProgress)?)
    } else {
        None
    };
    let extent = |r: &BlockRun, zero: bool| stream::Extent {
        start: r.start,
        len: r.len,
        kind: if zero {
            stream::Kind::Zero
        } else {
            stream::Kind::Data
        },
    };
    let extents: Vec<stream::Extent> = match &classified {
        Some((runs, _)) if v1 => runs.iter().map(|(r, z)| extent(r, *z)).collect(),
        _ => map.runs().iter().map(|r| extent(r, false)).collect(),
    };
    if let Some((runs, _)) = &classified {
        let data = runs.iter().filter(|(_, z)| !*z).map(|(r, _)| r);
        let data_blocks: u64 = data.clone().map(|r| r.len).sum();
        // Version 2: a segment per zero run, and per data run and piece read (a data run
        // may start and end inside pieces).
        let per = crate::pieces::piece_blocks(bs);
        let segments = if v1 {
            0
        } else {
            data.fold(runs.len() as u64, |n, r| {
                n.saturating_add(r.len.checked_div(per).unwrap_or(r.len))
                    .saturating_add(2)
            })
        };
        let size = (extents.len() as u64)
            .checked_mul(stream::EXTENT_LEN as u64)
            .and_then(|m| bs.bytes_of(data_blocks)?.checked_add(m))
            .and_then(|n| n.checked_add(segments.checked_mul(stream::SEGMENT_LEN as u64)?))
            .and_then(|n| n.checked_add((stream::HEADER_LEN + 32 + stream::TRAILER_LEN) as u64))
            .ok_or_else(|| Error::InvalidInput("stream size overflows".into()))?;
        crate::output::check_room(room, size)?;
    }
    let mut w = stream::StreamWriter::new(out, header, extents)?;
    progress.phase("copying", map.selected_blocks(), Unit::Blocks);
    let mut done = 0u64;
    let rep = match classified {
        Some((runs, past)) if v1 => {
            // Version 1 sends the bytes of its data extents.
            let data: Vec<BlockRun> = runs
                .into_iter()
                .filter(|(_, z)| !*z)
                .map(|(r, _)| r)
                .collect();
            crate::pieces::for_each_chunk_of_runs(src, &data, bs, &mut |b, d| {
                w.write_blocks(b, d)?;
                done = done.saturating_add(bs.blocks_in(d.len() as u64));
                progress.update(done);
                Ok(())
            })?;
            past
        }
        _ => crate::pieces::for_each_piece(src, map, bs, &mut |p| {
            match p {
                crate::pieces::Piece::Zero(b, n) => {
                    w.write_zeros(b, n)?;
                    done = done.saturating_add(n);
                }
                crate::pieces::Piece::Data(b, d) => {
                    w.write_blocks(b, d)?;
                    done = done.saturating_add(bs.blocks_in(d.len() as u64));
                }
            }
            progress.update(done);
            Ok(())
        })?,
    };
    let counts = w.counts();
    w.finish()?;
    progress.finish();
    Ok(CopyStats {
        blocks: counts.data_blocks.saturating_add(counts.zero_blocks),
        zero_blocks: counts.zero_blocks,
        past_end_blocks: rep.past_end_blocks,
        unreadable_blocks: rep.unreadable_blocks,
        unreadable: rep.unreadable,
        identical_blocks: 0,
        bytes_written: bs.bytes_of(counts.data_blocks).unwrap_or(u64::MAX),
    })
}
