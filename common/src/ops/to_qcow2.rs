//! `e2i-to-qcow2` helpers beyond the capture itself (which is `capture(.., Format::Qcow2, ..)`).

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use crate::mark::MarkedSource;
use crate::ops::capture::{CaptureOptions, open_source_in, scan_source, source_is_marked};
use crate::progress::Progress;
use crate::qcow2::grouping::{Assembler, Grouping};
use crate::qcow2::header::ClusterCompression;
use crate::qcow2::overlay::{Base, Differ};
use crate::qcow2::writer::{
    check_inflation, choose_grouping, image_layout, nonzero_blocks, one_pass_layout, plan_clusters,
};
use crate::qcow2::{ClusterRun, GuestCluster, Qcow2Layout};
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// Plan the qcow2 image of any input without writing anything (`--dry-run`). A stream is
/// read to its end and verified; other inputs are scanned and their data blocks found; an
/// overlay's clusters are compared with its base as the real run compares them. Returns the
/// layout and the filesystem's block size (clusters may hold several blocks).
pub fn plan(
    input: crate::ops::input::Input,
    opts: &CaptureOptions,
    progress: &mut dyn Progress,
) -> Result<(Qcow2Layout, BlockSize)> {
    use crate::ops::input::{Input, Kind};
    let compressed = opts.compress.is_some();
    let overlay = opts.backing.is_some();
    // The layout of the selected blocks `sel` holding `data`, as the real run plans it.
    let finish = |sel: &[crate::blockmap::BlockRun],
                  blocks_count: u64,
                  g: Grouping,
                  data: &[ClusterRun],
                  zero: &[ClusterRun],
                  n: u64| {
        let bs = g.block_size();
        let vsize = virtual_size(bs, blocks_count)?;
        let cb = g.cluster_bits().get();
        let one_pass = one_pass_layout(bs, blocks_count, sel, compressed, overlay)?;
        let mut l = image_layout(one_pass, vsize, cb, data, zero, compressed)?;
        check_inflation(&l, g.block_size(), n, compressed)?;
        if let Some(c) = opts.compress {
            l.set_compression(c);
        }
        if let Some(base) = &opts.backing {
            base.record(&mut l)?;
        }
        Ok((l, g.block_size()))
    };
    // The clusters holding the data blocks; compared with the base for an overlay.
    let from_image = |src: &dyn crate::io::ReadAt,
                      map: &crate::blockmap::BlockMap,
                      bs: BlockSize,
                      progress: &mut dyn Progress| {
        let (runs, _) = nonzero_blocks(src, map, bs, progress)?;
        let base = opts.backing.as_deref();
        let (g, data, zero) = plan_clusters(
            src,
            &runs,
            bs,
            map.blocks_count(),
            compressed,
            base,
            progress,
        )?;
        let n = g.blocks_within(&runs, &data)?.iter().map(|r| r.len).sum();
        finish(map.runs(), map.blocks_count(), g, &data, &zero, n)
    };
    match input {
        Input::Stream(mut r) => {
            let (bs, blocks_count) = (r.header.block_size, r.header.blocks_count);
            let vsize = virtual_size(bs, blocks_count)?;
            let runs = r.data_runs();
            let sel = r.selected_runs();
            let base = opts.backing.as_deref();
            let g = choose_grouping(bs, blocks_count, &runs, compressed, base.is_some())?;
            match base {
                None => {
                    let clusters = g.clusters(&runs)?;
                    r.for_each(crate::pieces::IO_CHUNK, &mut |_, _| Ok(()))?;
                    let n = runs.iter().map(|r| r.len).sum();
                    finish(&sel, blocks_count, g, &clusters, &[], n)
                }
                Some(base) => {
                    let mut differ = Differ::new(base, g.cluster_bits())?;
                    let mut asm = Assembler::new(g);
                    r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| match data {
                        Some(d) => asm.push(e.start, d, &mut |c, d| differ.feed(c, d)),
                        None => Ok(()),
                    })?;
                    asm.flush(&mut |c, d| differ.feed(c, d))?;
                    let (o, _) = differ.finish(vsize)?;
                    let n = runs.iter().map(|r| r.len).sum();
                    finish(&sel, blocks_count, g, &o.data, &o.zero, n)
                }
            }
        }
        Input::File {
            kind: Kind::Normal,
            path,
            ..
        } => {
            let img = crate::normal::NormalImage::open_file(&path)?;
            let view = img.fs_view()?;
            let map = view.block_map();
            from_image(&view, &map, img.superblock().block_size, progress)
        }
        Input::File { path, dir, .. } => {
            let src = open_source_in(&path, opts.offset, &dir)?;
            let (fs, res) = scan_source(src, opts, false, progress)?;
            from_image(&fs.src, &res.map, fs.sb.block_size, progress)
        }
    }
}

/// Where a stream conversion writes its qcow2.
pub enum Qcow2Out<'a> {
    /// Front to back (a pipe, stdout, a device or a new file), uncompressed.
    Sequential(&'a mut dyn std::io::Write),
    /// A new seekable file with compressed clusters.
    Compressed(&'a std::fs::File, ClusterCompression),
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
/// With `overlay`, the stream is compared with the base as it arrives and the clusters that
/// differ are kept in a temporary file; the overlay is written once the stream is verified,
/// still front to back.
///
/// `room`: a block device target's size, checked against the image's before the first write.
pub fn stream_to_qcow2<R: std::io::Read + Send>(
    mut r: crate::stream::StreamReader<R>,
    out: Qcow2Out<'_>,
    room: Option<u64>,
    overlay: Option<&Base>,
    progress: &mut dyn Progress,
) -> Result<StreamToQcow2> {
    use crate::qcow2::writer::{FileWriter, SequentialWriter};
    let h = r.header;
    // A scrambled stream makes a scrambled qcow2 (the flag becomes the header extension).
    let marks = crate::mark::Marks {
        scrambled: h.is_scrambled(),
    };
    let bs = h.block_size;
    let vsize = virtual_size(bs, h.blocks_count)?;
    let compressed = matches!(out, Qcow2Out::Compressed(..));
    // One cluster per filesystem block, or as many as qemu's limits need.
    let blocks = r.data_runs();
    let grouping = choose_grouping(bs, h.blocks_count, &blocks, compressed, overlay.is_some())?;
    let cbits = grouping.cluster_bits();
    let cb = cbits.get();
    let runs = grouping.clusters(&blocks)?;
    drop(blocks);
    let mut report = StreamToQcow2 {
        block_size: bs.get(),
        blocks_count: h.blocks_count,
        data_blocks: r.data_blocks(),
        zero_blocks: r.zero_blocks(),
        ..Default::default()
    };
    let mut done = 0u64;
    // Overlay: compare first (the stream is read and verified here), then write from the
    // spool of differing clusters.
    let (data, zero, mut spool) = match overlay {
        None => (runs, Vec::new(), None),
        Some(base) => {
            progress.phase(
                "comparing with the backing file",
                r.data_blocks(),
                crate::progress::Unit::Blocks,
            );
            let mut differ = Differ::new(base, cbits)?;
            let mut asm = Assembler::new(grouping);
            report.stream_sha256 = r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| {
                if let Some(d) = data {
                    let d = with_mark(marks, e.start, bs, d);
                    asm.push(e.start, &d, &mut |c, d| differ.feed(c, d))?;
                    done = done.saturating_add(bs.blocks_in(d.len() as u64));
                    progress.update(done);
                }
                Ok(())
            })?;
            asm.flush(&mut |c, d| differ.feed(c, d))?;
            let (o, spool) = differ.finish(vsize)?;
            (o.data, o.zero, Some(spool))
        }
    };
    let one_pass = one_pass_layout(
        bs,
        h.blocks_count,
        &r.selected_runs(),
        compressed,
        overlay.is_some(),
    )?;
    let mut layout = image_layout(one_pass, vsize, cb, &data, &zero, compressed)?;
    layout.set_marks(marks);
    if let Some(base) = overlay {
        base.record(&mut layout)?;
    }
    check_inflation(&layout, bs, report.data_blocks, compressed)?;
    progress.phase(
        "copying",
        data.iter().map(|r| r.len).sum(),
        crate::progress::Unit::Blocks,
    );
    done = 0;
    // Feed the data clusters to `write`: from the spool (overlay) or the stream.
    let mut feed = |write: &mut dyn FnMut(GuestCluster, &[u8]) -> Result<()>| -> Result<()> {
        match spool.as_mut() {
            Some(sp) => {
                let mut buf = vec![0u8; cbits.size_usize()];
                for g in data.iter().flat_map(|r| r.clusters()) {
                    sp.next(&mut buf)?;
                    write(g, &buf)?;
                    done = done.saturating_add(1);
                    progress.update(done);
                }
            }
            None => {
                let mut asm = Assembler::new(grouping);
                report.stream_sha256 = r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| {
                    if let Some(d) = data {
                        let d = with_mark(marks, e.start, bs, d);
                        asm.push(e.start, &d, &mut *write)?;
                        done = done.saturating_add(bs.blocks_in(d.len() as u64));
                        progress.update(done);
                    }
                    Ok(())
                })?;
                asm.flush(write)?;
            }
        }
        Ok(())
    };
    match out {
        Qcow2Out::Sequential(w) => {
            crate::output::check_room(room, layout.file_size())?;
            let mut qw = SequentialWriter::new(w, &layout)?;
            feed(&mut |g, d| qw.write_clusters(g, d))?;
            report.file_size = qw.finish()?;
            w.flush().map_err(|e| Error::io("write", 0, e))?;
        }
        Qcow2Out::Compressed(file, c) => {
            let mut qw = FileWriter::for_layout(file, layout, Some(c))?;
            feed(&mut |g, d| qw.write_clusters(g, d))?;
            report.file_size = qw.finish()?;
        }
    }
    progress.finish();
    Ok(report)
}

/// The bytes of `blocks_count` blocks.
fn virtual_size(bs: BlockSize, blocks_count: u64) -> Result<u64> {
    bs.bytes_of(blocks_count)
        .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))
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
                    compress: Some(c),
                } => Qcow2Out::Compressed(file, c),
                Qcow2Target::File {
                    file,
                    compress: None,
                } => {
                    buffered = std::io::BufWriter::with_capacity(1 << 20, file);
                    Qcow2Out::Sequential(&mut buffered)
                }
            };
            let rep = stream_to_qcow2(r, out, room, opts.backing.as_deref(), progress)?;
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
            let view = img.fs_view()?;
            let map = view.block_map();
            let sb = img.superblock();
            progress.block_size(sb.block_size.get());
            let marks = img.header().image_facts(sb.raw()).marks();
            let src = MarkedSource::new(&view, marks.scrambled);
            let st = write_qcow2(
                &src,
                &map,
                sb.block_size,
                target,
                marks,
                opts.backing.as_deref(),
                progress,
            )?;
            Ok(ToQcow2Report {
                input: Kind::Normal,
                block_size: sb.block_size.get(),
                blocks_count: sb.blocks_count,
                blocks: st.blocks,
                stream_sha256: None,
                problems: Vec::new(),
            })
        }
        Input::File {
            kind, path, dir, ..
        } => {
            let src = open_source_in(&path, opts.offset, &dir)?;
            let marks = crate::mark::Marks {
                scrambled: source_is_marked(&path, &*src),
            };
            let src = MarkedSource::new(src, marks.scrambled);
            let (fs, res) = scan_source(src, opts, false, progress)?;
            let bs = fs.sb.block_size;
            write_qcow2(
                &fs.src,
                &res.map,
                bs,
                target,
                marks,
                opts.backing.as_deref(),
                progress,
            )?;
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
