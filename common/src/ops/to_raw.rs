//! `e2i-to-raw`: any input (stream, raw filesystem, qcow2, normal image) → raw image.

use crate::ext4::OpenOptions;
use crate::ops::capture::{self, CaptureOptions};
use crate::ops::input::{Input, Kind};
use crate::progress::{Progress, Unit};
use crate::sparse::{self, CopyStats, RawSink, RawTarget};
use crate::stream;
use crate::{Error, Result};

/// Options of the converters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvertOptions {
    /// Raw filesystem input: include regular-file data.
    pub all_data: bool,
}

/// What a conversion did.
#[derive(Debug, Default)]
pub struct ConvertReport {
    pub input: Option<Kind>,
    pub block_size: u32,
    pub blocks_count: u64,
    pub copy: CopyStats,
    /// SHA-256 of a verified stream input.
    pub stream_sha256: Option<[u8; 32]>,
    /// Damaged structures skipped while scanning a raw filesystem input.
    pub problems: Vec<crate::ext4::scan::Problem>,
}

/// Geometry of an input without converting it (for choosing a target).
pub fn geometry(input: &Input) -> Option<(u32, u64)> {
    match input {
        Input::Stream(r) => Some((r.header.block_size, r.header.blocks_count)),
        _ => None,
    }
}

/// Convert `input` to a raw image on `target`.
pub fn to_raw(
    input: Input,
    target: RawTarget<'_>,
    opts: ConvertOptions,
    progress: &mut dyn Progress,
) -> Result<ConvertReport> {
    match input {
        Input::Stream(mut r) => {
            let h = r.header;
            let mut sink = RawSink::new(target, h.block_size, h.blocks_count)?;
            progress.phase("copying", r.data_blocks() + r.zero_blocks(), Unit::Blocks);
            let digest = r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| {
                match data {
                    Some(d) => sink.put(e.start, d)?,
                    None => sink.put_zeros(e.start, e.len)?,
                }
                progress.update(sink.stats().blocks);
                Ok(())
            })?;
            let copy = sink.finish()?;
            progress.finish();
            Ok(ConvertReport {
                input: Some(Kind::Stream),
                block_size: h.block_size,
                blocks_count: h.blocks_count,
                copy,
                stream_sha256: Some(digest),
                problems: Vec::new(),
            })
        }
        Input::File {
            kind: Kind::Raw,
            path,
            ..
        } => {
            let opts = CaptureOptions {
                all_data: opts.all_data,
                open: OpenOptions::default(),
                offset: 0,
                strict: false,
                ..CaptureOptions::default()
            };
            let src = capture::open_source(&path, 0)?;
            // Select as a capture to a file does, whatever the target.
            let (fs, res) = capture::scan_source(src, &opts, false, progress)?;
            let copy = sparse::write_raw(&fs.src, &res.map, fs.sb.block_size, target, progress)?;
            Ok(ConvertReport {
                input: Some(Kind::Raw),
                block_size: fs.sb.block_size,
                blocks_count: fs.sb.blocks_count,
                copy,
                stream_sha256: None,
                problems: res.problems,
            })
        }
        Input::File {
            kind: Kind::Normal,
            path,
            ..
        } => {
            let img = crate::normal::NormalImage::open_file(&path)?;
            let view = img.fs_view();
            let map = view.block_map();
            let bs = img.superblock().block_size;
            let copy = sparse::write_raw(&view, &map, bs, target, progress)?;
            Ok(ConvertReport {
                input: Some(Kind::Normal),
                block_size: bs,
                blocks_count: img.superblock().blocks_count,
                copy,
                stream_sha256: None,
                problems: Vec::new(),
            })
        }
        Input::File {
            kind: Kind::Qcow2,
            path,
            ..
        } => {
            // The qcow2's virtual disk, as qcow2-to-raw writes it (in-place targets get
            // zeros for zero clusters).
            let img = crate::qcow2::Qcow2Reader::open(crate::io::FileSource::open(&path, 0)?)?;
            let in_place = matches!(target, RawTarget::InPlace { .. });
            let plan = crate::ops::qcow2_to_raw::plan(&img, in_place)?;
            let copy = crate::ops::qcow2_to_raw::convert(&img, &plan, target, progress)?;
            Ok(ConvertReport {
                input: Some(Kind::Qcow2),
                block_size: plan.unit,
                blocks_count: plan.map.blocks_count(),
                copy,
                stream_sha256: None,
                problems: Vec::new(),
            })
        }
        Input::File { kind, .. } => Err(Error::Unsupported(format!(
            "converting a {kind} is not available in this build"
        ))),
    }
}

/// Header for a stream made from a filesystem.
pub fn stream_header(
    block_size: u32,
    blocks_count: u64,
    uuid: [u8; 16],
    all_data: bool,
) -> stream::Header {
    stream::Header {
        flags: if all_data { stream::flags::ALL_DATA } else { 0 },
        incompat: 0,
        block_size,
        blocks_count,
        uuid,
        extents: 0,
    }
}
