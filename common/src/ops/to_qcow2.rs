//! `e2i-to-qcow2` helpers beyond the capture itself (which is `capture(.., Format::Qcow2, ..)`).

use std::path::Path;

use crate::ops::capture::{CaptureOptions, open_source, scan_source};
use crate::progress::Progress;
use crate::qcow2::Qcow2Layout;
use crate::qcow2::writer::nonzero_blocks;
use crate::{Error, Result};

/// Scan `source` and plan its qcow2 image without writing anything (`--dry-run`).
pub fn plan(
    source: &Path,
    opts: &CaptureOptions,
    progress: &mut dyn Progress,
) -> Result<Qcow2Layout> {
    let src = open_source(source, opts.offset)?;
    let (fs, res) = scan_source(src, opts, false, progress)?;
    let bs = fs.sb.block_size;
    let (runs, _) = nonzero_blocks(&fs.src, &res.map, bs, progress)?;
    let vsize = res
        .map
        .blocks_count()
        .checked_mul(u64::from(bs))
        .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))?;
    Qcow2Layout::plan(vsize, bs.trailing_zeros(), &runs)
}

/// Where a stream conversion writes its qcow2.
pub enum Qcow2Out<'a> {
    /// Front to back (a pipe, stdout, a device or a new file), uncompressed.
    Sequential(&'a mut dyn std::io::Write),
    /// A new seekable file with deflate-compressed clusters.
    Compressed(&'a std::fs::File),
}

/// What a stream conversion wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamToQcow2 {
    pub block_size: u32,
    pub blocks_count: u64,
    pub data_blocks: u64,
    pub zero_blocks: u64,
    pub file_size: u64,
    pub stream_sha256: [u8; 32],
}

/// Convert an e2i stream to a qcow2 image. The layout is planned from the stream's map
/// before the first data byte arrives, so an uncompressed image is written strictly front
/// to back — to a pipe if need be. The stream is verified at the end; on failure the caller
/// must discard the output.
pub fn stream_to_qcow2<R: std::io::Read>(
    mut r: crate::stream::StreamReader<R>,
    out: Qcow2Out<'_>,
    progress: &mut dyn Progress,
) -> Result<StreamToQcow2> {
    use crate::blockmap::Run;
    use crate::qcow2::writer::{CompressedWriter, SequentialWriter};
    use crate::stream::Kind;
    let h = r.header;
    let vsize = h
        .blocks_count
        .checked_mul(u64::from(h.block_size))
        .ok_or_else(|| Error::InvalidInput("image size overflows".into()))?;
    let cb = h.block_size.trailing_zeros();
    let runs: Vec<Run> = r
        .extents
        .iter()
        .filter(|e| e.kind == Kind::Data)
        .map(|e| Run {
            start: e.start,
            len: e.len,
        })
        .collect();
    let mut report = StreamToQcow2 {
        block_size: h.block_size,
        blocks_count: h.blocks_count,
        data_blocks: r.data_blocks(),
        zero_blocks: r.zero_blocks(),
        ..Default::default()
    };
    progress.phase("copying", r.data_blocks(), crate::progress::Unit::Blocks);
    let mut done = 0u64;
    let bs = u64::from(h.block_size);
    match out {
        Qcow2Out::Sequential(w) => {
            let layout = Qcow2Layout::plan(vsize, cb, &runs)?;
            let mut qw = SequentialWriter::new(w, &layout)?;
            report.stream_sha256 = r.for_each(crate::sparse::IO_CHUNK, &mut |e, data| {
                if let Some(d) = data {
                    qw.write_clusters(e.start, d)?;
                    done += d.len() as u64 / bs;
                    progress.update(done);
                }
                Ok(())
            })?;
            report.file_size = qw.finish()?;
        }
        Qcow2Out::Compressed(file) => {
            let mut qw = CompressedWriter::new(file, vsize, cb, &runs)?;
            report.stream_sha256 = r.for_each(crate::sparse::IO_CHUNK, &mut |e, data| {
                if let Some(d) = data {
                    qw.write_clusters(e.start, d)?;
                    done += d.len() as u64 / bs;
                    progress.update(done);
                }
                Ok(())
            })?;
            report.file_size = qw.finish()?;
        }
    }
    progress.finish();
    Ok(report)
}

/// Convert a normal e2image image to a qcow2 holding the blocks it carries (superblock,
/// descriptors, bitmaps, inode tables) at their filesystem positions.
pub fn normal_to_qcow2(
    path: &Path,
    target: crate::qcow2::writer::Qcow2Target<'_>,
    progress: &mut dyn Progress,
) -> Result<crate::sparse::CopyStats> {
    let img = crate::normal::NormalImage::open(crate::io::FileSource::open(path, 0)?)?;
    let view = img.fs_view();
    let map = view.block_map();
    crate::qcow2::writer::write_qcow2(&view, &map, img.superblock().block_size, target, progress)
}
