//! `e2i-to-qcow2` helpers beyond the capture itself (which is `capture(.., Format::Qcow2, ..)`).

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use crate::mark::MarkedSource;
use crate::ops::capture::{CaptureOptions, open_source, scan_source, source_is_marked};
use crate::progress::Progress;
use crate::qcow2::writer::nonzero_blocks;
use crate::qcow2::{ClusterRun, GuestCluster, Qcow2Layout};
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// Plan the qcow2 image of any input without writing anything (`--dry-run`). A stream is
/// read to its end and verified; other inputs are scanned and their data blocks found.
pub fn plan(
    input: crate::ops::input::Input,
    opts: &CaptureOptions,
    progress: &mut dyn Progress,
) -> Result<Qcow2Layout> {
    use crate::blockmap::BlockRun;
    use crate::ops::input::{Input, Kind};
    let layout = |blocks_count: u64, bs: BlockSize, runs: &[BlockRun]| {
        let vsize = bs
            .bytes_of(blocks_count)
            .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))?;
        // One cluster per filesystem block.
        let clusters: Vec<ClusterRun> = runs
            .iter()
            .copied()
            .map(ClusterRun::one_per_block)
            .collect();
        Qcow2Layout::plan(vsize, bs.bits(), &clusters)
    };
    match input {
        Input::Stream(mut r) => {
            let runs = r.data_runs();
            let l = layout(r.header.blocks_count, r.header.block_size, &runs)?;
            r.for_each(crate::pieces::IO_CHUNK, &mut |_, _| Ok(()))?;
            Ok(l)
        }
        Input::File {
            kind: Kind::Normal,
            path,
            ..
        } => {
            let img = crate::normal::NormalImage::open_file(&path)?;
            let view = img.fs_view();
            let map = view.block_map();
            let sb = img.superblock();
            let (runs, _) = nonzero_blocks(&view, &map, sb.block_size, progress)?;
            layout(sb.blocks_count, sb.block_size, &runs)
        }
        Input::File { path, .. } => {
            let src = open_source(&path, opts.offset)?;
            let (fs, res) = scan_source(src, opts, false, progress)?;
            let bs = fs.sb.block_size;
            let (runs, _) = nonzero_blocks(&fs.src, &res.map, bs, progress)?;
            layout(res.map.blocks_count(), bs, &runs)
        }
    }
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
///
/// `room`: a block device target's size, checked against the image's before the first write.
pub fn stream_to_qcow2<R: std::io::Read>(
    mut r: crate::stream::StreamReader<R>,
    out: Qcow2Out<'_>,
    room: Option<u64>,
    progress: &mut dyn Progress,
) -> Result<StreamToQcow2> {
    use crate::qcow2::writer::{CompressedWriter, SequentialWriter};
    let h = r.header;
    // A scrambled stream makes a scrambled qcow2 (the flag becomes the header extension).
    let marks = crate::mark::Marks {
        scrambled: h.is_scrambled(),
    };
    let bs = h.block_size;
    let vsize = bs
        .bytes_of(h.blocks_count)
        .ok_or_else(|| Error::InvalidInput("image size overflows".into()))?;
    let cb = bs.bits();
    // One cluster per filesystem block.
    let runs: Vec<ClusterRun> = r
        .data_runs()
        .into_iter()
        .map(ClusterRun::one_per_block)
        .collect();
    let mut report = StreamToQcow2 {
        block_size: bs.get(),
        blocks_count: h.blocks_count,
        data_blocks: r.data_blocks(),
        zero_blocks: r.zero_blocks(),
        ..Default::default()
    };
    progress.phase("copying", r.data_blocks(), crate::progress::Unit::Blocks);
    let mut done = 0u64;
    match out {
        Qcow2Out::Sequential(w) => {
            let mut layout = Qcow2Layout::plan(vsize, cb, &runs)?;
            layout.set_marks(marks);
            crate::output::check_room(room, layout.file_size())?;
            let mut qw = SequentialWriter::new(w, &layout)?;
            report.stream_sha256 = r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| {
                if let Some(d) = data {
                    let d = with_mark(marks, e.start, bs, d);
                    qw.write_clusters(GuestCluster::one_per_block(e.start), &d)?;
                    done = done.saturating_add(bs.blocks_in(d.len() as u64));
                    progress.update(done);
                }
                Ok(())
            })?;
            report.file_size = qw.finish()?;
            w.flush().map_err(|e| Error::io("write", 0, e))?;
        }
        Qcow2Out::Compressed(file) => {
            let mut qw = CompressedWriter::new(file, vsize, cb, &runs)?;
            qw.set_marks(marks);
            report.stream_sha256 = r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| {
                if let Some(d) = data {
                    let d = with_mark(marks, e.start, bs, d);
                    qw.write_clusters(GuestCluster::one_per_block(e.start), &d)?;
                    done = done.saturating_add(bs.blocks_in(d.len() as u64));
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

/// Data blocks from block `start` of a scrambled stream, its superblock marked when it is
/// among them and lacks the mark (a stream made before the superblock mark existed).
fn with_mark(
    marks: crate::mark::Marks,
    start: FsBlock,
    bs: BlockSize,
    data: &[u8],
) -> std::borrow::Cow<'_, [u8]> {
    match bs.offset_of(start) {
        Some(first) if marks.scrambled => crate::mark::chunk_with_mark(first, data),
        _ => std::borrow::Cow::Borrowed(data),
    }
}

/// What [`to_qcow2`] converted.
#[derive(Debug)]
pub struct ToQcow2Report {
    pub input: crate::ops::input::Kind,
    pub block_size: u32,
    pub blocks_count: u64,
    /// Blocks the input selected (data and zero).
    pub blocks: u64,
    /// The verified checksum of a stream input.
    pub stream_sha256: Option<[u8; 32]>,
    /// Damaged structures skipped while scanning a filesystem input.
    pub problems: Vec<crate::ext4::scan::Problem>,
}

/// Convert any input to a qcow2: a stream by its map (front to back), a normal image by the
/// blocks it holds, a raw or qcow2 filesystem image by scanning it as `e2i-capture -Q` does.
pub fn to_qcow2(
    input: crate::ops::input::Input,
    target: crate::qcow2::writer::Qcow2Target<'_>,
    opts: &CaptureOptions,
    progress: &mut dyn Progress,
) -> Result<ToQcow2Report> {
    use crate::ops::input::{Input, Kind};
    use crate::qcow2::writer::{Qcow2Target, write_qcow2};
    match input {
        Input::Stream(r) => {
            let mut buffered;
            let mut room = None;
            let out = match target {
                Qcow2Target::Sequential(w) => Qcow2Out::Sequential(w),
                Qcow2Target::Device(file) => {
                    room = crate::io::block_device_size(file)?;
                    buffered = std::io::BufWriter::with_capacity(1 << 20, file);
                    Qcow2Out::Sequential(&mut buffered)
                }
                Qcow2Target::File {
                    file,
                    compress: true,
                } => Qcow2Out::Compressed(file),
                Qcow2Target::File {
                    file,
                    compress: false,
                } => {
                    buffered = std::io::BufWriter::with_capacity(1 << 20, file);
                    Qcow2Out::Sequential(&mut buffered)
                }
            };
            let rep = stream_to_qcow2(r, out, room, progress)?;
            Ok(ToQcow2Report {
                input: Kind::Stream,
                block_size: rep.block_size,
                blocks_count: rep.blocks_count,
                blocks: rep.data_blocks.saturating_add(rep.zero_blocks),
                stream_sha256: Some(rep.stream_sha256),
                problems: Vec::new(),
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
            let sb = img.superblock();
            progress.block_size(sb.block_size.get());
            let marks = img.header().image_facts(sb.raw()).marks();
            let src = MarkedSource::new(&view, marks.scrambled);
            let st = write_qcow2(&src, &map, sb.block_size, target, marks, progress)?;
            Ok(ToQcow2Report {
                input: Kind::Normal,
                block_size: sb.block_size.get(),
                blocks_count: sb.blocks_count,
                blocks: st.blocks,
                stream_sha256: None,
                problems: Vec::new(),
            })
        }
        Input::File { kind, path, .. } => {
            let src = open_source(&path, opts.offset)?;
            let marks = crate::mark::Marks {
                scrambled: source_is_marked(&path, &*src),
            };
            let src = MarkedSource::new(src, marks.scrambled);
            let (fs, res) = scan_source(src, opts, false, progress)?;
            let bs = fs.sb.block_size;
            write_qcow2(&fs.src, &res.map, bs, target, marks, progress)?;
            Ok(ToQcow2Report {
                input: kind,
                block_size: bs.get(),
                blocks_count: fs.sb.blocks_count,
                blocks: res.map.selected_blocks(),
                stream_sha256: None,
                problems: res.problems,
            })
        }
    }
}
