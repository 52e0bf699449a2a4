//! `e2i-capture`: filesystem → block map → image writer.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::blockmap::BlockMap;
use crate::ext4::scan::{self, Problem, ScanOptions};
use crate::ext4::{Filesystem, OpenOptions};
use crate::io::{FileSource, ReadAt};
use crate::progress::{Progress, Unit};
use crate::scramble::{self, ScrambleReport, ScrambledSource};
use crate::sparse::{self, CopyStats, RawTarget};
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
    /// Stop at the first damaged structure.
    pub strict: bool,
    /// `-s`: scramble with this seed ([`crate::scramble::DEFAULT_SEED`] by default). Every
    /// writer reads through [`crate::scramble::ScrambledSource`]; the normal format's writer
    /// also blanks the header's hostname and device name when this is set.
    pub scramble: Option<u64>,
}

/// Where the image goes.
pub enum Output<'a> {
    /// A new regular file (zero blocks become holes).
    NewFile(&'a File),
    /// A block device: every selected block written, inode tables whole (as e2image does).
    Device(&'a File),
    /// A pipe or stdout.
    Stream(&'a mut dyn Write),
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
    /// What `-s` scrambled, and what it could not.
    pub scramble: Option<ScrambleReport>,
}

/// Open the source at `path` for reading the filesystem at byte `offset`.
pub fn open_source(path: &Path, offset: u64) -> Result<Box<dyn ReadAt>> {
    let src = FileSource::open(path, offset)?;
    Ok(Box::new(src))
}

/// Open the filesystem and compute its block map.
pub fn scan_source<S: ReadAt>(
    src: S,
    opts: &CaptureOptions,
    output_is_block_device: bool,
    progress: &mut dyn Progress,
) -> Result<(Filesystem<S>, scan::ScanResult)> {
    let fs = Filesystem::open(src, opts.open)?;
    let sopts = ScanOptions {
        all_data: opts.all_data,
        output_is_block_device,
        strict: opts.strict,
        want_dir_blocks: false,
    };
    progress.phase("scanning inodes", 0, Unit::Inodes);
    let mut started = false;
    let mut cb = |done: u64, total: u64| {
        if !started {
            progress.phase("scanning inodes", total, Unit::Inodes);
            started = true;
        }
        progress.update(done);
    };
    let res = scan::scan(&fs, sopts, Some(&mut cb))?;
    progress.finish();
    Ok((fs, res))
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
    let src = open_source(source, opts.offset)?;
    let is_dev = matches!(out, Output::Device(_));
    let (fs, res) = scan_source(src, opts, is_dev, progress)?;
    let (fs, scramble_report) = match opts.scramble {
        Some(seed) => {
            let (fs, rep) = scramble_fs(fs, seed, opts)?;
            (fs, Some(rep))
        }
        None => (fs, None),
    };
    let map: &BlockMap = &res.map;
    let mut report = CaptureReport {
        block_size: fs.sb.block_size,
        blocks_count: fs.sb.blocks_count,
        selected_blocks: map.selected_blocks(),
        runs: map.runs().len(),
        copy: CopyStats::default(),
        problems: Vec::new(),
        scramble: scramble_report,
    };
    report.copy = match format {
        Format::Raw => {
            let target = match out {
                Output::NewFile(f) => RawTarget::NewFile(f),
                Output::Device(f) => RawTarget::InPlace {
                    file: f,
                    dest_offset: 0,
                    check: false,
                    grow_to_end: false,
                },
                Output::Stream(w) => RawTarget::Stream(w),
            };
            sparse::write_raw(&fs.src, map, fs.sb.block_size, target, progress)?
        }
        other => return Err(CaptureReport::unsupported(other)),
    };
    report.problems = res.problems;
    Ok(report)
}

/// The scrambling transform layer: plan the changed blocks, wrap the source so that every
/// read sees them, and reopen the filesystem through the wrapper (so that the superblock and
/// descriptors writers take from `fs.sb`/`fs.desc` are the scrambled ones too).
pub fn scramble_fs(
    fs: Filesystem<Box<dyn ReadAt>>,
    seed: u64,
    opts: &CaptureOptions,
) -> Result<(Filesystem<Box<dyn ReadAt>>, ScrambleReport)> {
    let (overlay, rep) = scramble::plan(&fs, seed)?;
    let wrapped: Box<dyn ReadAt> = Box::new(ScrambledSource::new(fs.src, overlay));
    let fs = Filesystem::open(wrapped, opts.open)?;
    Ok((fs, rep))
}

impl CaptureReport {
    /// Fail if the format cannot be produced (used until every writer exists).
    pub fn unsupported(format: Format) -> Error {
        Error::Unsupported(format!(
            "the {format:?} format is not available in this build"
        ))
    }
}
