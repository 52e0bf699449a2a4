//! `e2i-to-qcow2` helpers beyond the capture itself (which is `capture(.., Format::Qcow2, ..)`).

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use crate::io::ReadAt;
use crate::mark::MarkedSource;
use crate::ops::capture::{
    CaptureOptions, open_source_in, qcow2_host_is_marked, scan_source, superblock_is_marked,
};
use crate::ops::input::{Input, Kind};
use crate::progress::Progress;
use crate::qcow2::grouping::{Assembler, Grouping};
use crate::qcow2::header::ClusterCompression;
use crate::qcow2::overlay::{Base, Differ, Spool};
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
    input: Input,
    opts: &CaptureOptions,
    progress: &mut dyn Progress,
) -> Result<(Qcow2Layout, BlockSize)> {
    let compressed = opts.compress.is_some();
    let overlay = opts.backing.is_some();
    // The layout of the selected blocks `sel` holding `data`, as the real run plans it.
    let finish = |sel: &[crate::blockmap::BlockRun],
                  blocks_count: u64,
                  vsize: u64,
                  g: Grouping,
                  data: &[ClusterRun],
                  zero: &[ClusterRun],
                  n: u64| {
        let bs = g.block_size();
        let cb = g.cluster_bits().get();
        let one_pass = one_pass_layout(bs, blocks_count, vsize, sel, compressed, overlay)?;
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
                      vsize: u64,
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
        finish(map.runs(), map.blocks_count(), vsize, g, &data, &zero, n)
    };
    match input {
        Input::Stream(mut r) => {
            let (bs, blocks_count) = (r.header.block_size, r.header.blocks_count);
            let vsize = virtual_size(bs, blocks_count)?;
            let sel = r.selected_runs();
            match opts.backing.as_deref() {
                None => {
                    // The blocks the real run stores: the data blocks that are not all zeros.
                    let bsz = bs.as_usize();
                    let mut runs: Vec<crate::blockmap::BlockRun> = Vec::new();
                    r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| match data {
                        Some(d) => crate::pieces::zero_runs(d, bsz, &mut |i, n, zero| {
                            let (b, n) = (e.start.saturating_add(i as u64), n as u64);
                            match runs.last_mut() {
                                _ if zero => {}
                                Some(l) if l.end() == b => l.len = l.len.saturating_add(n),
                                _ => runs.push(crate::blockmap::BlockRun::new(b, n)),
                            }
                            Ok(())
                        }),
                        None => Ok(()),
                    })?;
                    let g = choose_grouping(bs, blocks_count, &runs, compressed, false)?;
                    let clusters = g.clusters(&runs)?;
                    let n = runs.iter().map(|r| r.len).sum();
                    finish(&sel, blocks_count, vsize, g, &clusters, &[], n)
                }
                Some(base) => {
                    let blocks = r.data_runs().unwrap_or_else(|| sel.clone());
                    let g = choose_grouping(bs, blocks_count, &blocks, compressed, true)?;
                    let mut differ = Differ::new(base, g.cluster_bits())?;
                    let mut asm = Assembler::new(g);
                    let mut n = 0u64;
                    r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| match data {
                        Some(d) => {
                            n = n.saturating_add(e.len);
                            asm.push(e.start, d, &mut |c, d| differ.feed(c, d))
                        }
                        None => Ok(()),
                    })?;
                    asm.flush(&mut |c, d| differ.feed(c, d))?;
                    let (o, _) = differ.finish(vsize)?;
                    finish(&sel, blocks_count, vsize, g, &o.data, &o.zero, n)
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
            let bs = img.superblock().block_size;
            let vsize = virtual_size(bs, map.blocks_count())?;
            from_image(&view, &map, bs, vsize, progress)
        }
        Input::File {
            kind: Kind::Qcow2, ..
        } => {
            let (img, disk) = qcow2_disk(&input)?;
            from_image(&img, &disk.map, disk.unit, disk.size, progress)
        }
        // A raw filesystem (a stream and the other kinds are matched above).
        Input::File { path, dir, .. } => {
            let src = open_source_in(&path, opts.offset, dir.as_deref())?;
            let (fs, res) = scan_source(src, opts, false, progress)?;
            let bs = fs.sb.block_size;
            let vsize = virtual_size(bs, res.map.blocks_count())?;
            from_image(&fs.src, &res.map, bs, vsize, progress)
        }
    }
}

/// A qcow2 INPUT's virtual disk, to be converted as it is (as `e2i-to-raw` and
/// `qcow2-to-raw` convert it: whatever it holds, a whole disk with a partition table
/// included): every block it stores, its virtual size kept. The blocks are the filesystem's
/// when the disk starts with one (one cluster per block, as a capture gets), else the
/// image's clusters.
fn qcow2_disk(
    input: &Input,
) -> Result<(
    crate::qcow2::Qcow2Image<crate::ops::input::Host>,
    crate::ops::qcow2_to_raw::RawPlan,
)> {
    use crate::ops::qcow2_to_raw::{cluster_unit, plan_in};
    let host = input.host()?;
    let id = host.id();
    let img = crate::qcow2::Qcow2Image::open_host(host, input.dir(), id)?;
    let mut raw = [0u8; crate::ext4::superblock::SUPERBLOCK_SIZE];
    let fs_block = (img
        .read_at(&mut raw, crate::ext4::superblock::SUPERBLOCK_OFFSET)
        .ok()
        == Some(raw.len()))
    .then(|| crate::ext4::Superblock::parse(&raw, None).ok())
    .flatten()
    .map(|sb| sb.block_size);
    let unit = match fs_block {
        Some(bs) => bs,
        None => cluster_unit(&img)?,
    };
    let disk = plan_in(&img, unit, false, false)?;
    Ok((img, disk))
}

/// Where a stream conversion writes its qcow2.
pub enum Qcow2Out<'a> {
    /// Front to back (a pipe, stdout, a device), uncompressed.
    Sequential(&'a mut dyn crate::io::SeqWrite),
    /// A new seekable file; compressed clusters when given.
    File(&'a std::fs::File, Option<ClusterCompression>),
}

/// What a stream conversion wrote.
#[derive(Debug, Clone, Copy)]
pub struct StreamToQcow2 {
    pub block_size: u32,
    pub blocks_count: u64,
    pub data_blocks: u64,
    pub zero_blocks: u64,
    pub file_size: u64,
    pub stream_digest: crate::stream::Digest,
}

/// Where the data clusters of a stream conversion come from once the layout is known.
enum Clusters<R: std::io::Read> {
    /// The stream itself (its map names its data: version 1), read now.
    Stream(crate::stream::StreamReader<R>),
    /// A spool of the data blocks of `runs`, in order (version 2, read and verified).
    Blocks(Spool),
    /// A spool of the clusters that differ from the base (an overlay, verified).
    Differing(Spool),
}

/// Convert an e2i stream to a qcow2 image; the stream is verified at the end, and on
/// failure the caller must discard the output.
///
/// A new file is written as the stream arrives, in one pass, when qcow2's limits allow one
/// cluster per block: tables planned for every selected block, all-zero blocks skipped (the
/// bytes `e2i-capture -Q` writes). Otherwise the layout needs the data first: a version 1
/// stream's map names it; a version 2 stream's data is kept in a temporary file (`TMPDIR`)
/// until the stream is verified, then written front to back — to a pipe if need be.
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
    let compressed = matches!(out, Qcow2Out::File(_, Some(_)));
    let selected = r.selected_runs();
    let selected_blocks = r.selected_blocks();
    let one_pass = one_pass_layout(
        bs,
        h.blocks_count,
        vsize,
        &selected,
        compressed,
        overlay.is_some(),
    )?;
    let mut done = 0u64;
    if let (Qcow2Out::File(file, c), Some(mut layout)) = (&out, one_pass.clone()) {
        layout.set_marks(marks);
        let mut w = FileWriter::for_layout(file, layout, *c)?;
        progress.phase(
            "copying",
            r.selected_blocks(),
            crate::progress::Unit::Blocks,
        );
        let (mut data_blocks, mut zero_blocks) = (0u64, 0u64);
        let digest = r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| {
            // One cluster per block: guest clusters are block numbers.
            let g = GuestCluster(e.start.get());
            match data {
                Some(d) => {
                    let d = with_mark(marks, e.start, bs, d);
                    let n = bs.blocks_in(d.len() as u64);
                    let skipped = w.write_or_skip(g, &d)?;
                    data_blocks = data_blocks.saturating_add(n.saturating_sub(skipped));
                    zero_blocks = zero_blocks.saturating_add(skipped);
                }
                None => {
                    w.skip_clusters(g, e.len)?;
                    zero_blocks = zero_blocks.saturating_add(e.len);
                }
            }
            done = done.saturating_add(e.len);
            progress.update(done);
            Ok(())
        })?;
        let file_size = w.finish()?;
        progress.finish();
        return Ok(StreamToQcow2 {
            block_size: bs.get(),
            blocks_count: h.blocks_count,
            data_blocks,
            zero_blocks,
            file_size,
            stream_digest: digest,
        });
    }
    // The data blocks, and (when the stream must be read first) where they are kept.
    let (blocks, mut source, mut digest) = match (r.data_runs(), overlay) {
        (Some(runs), None) => (runs, Clusters::Stream(r), None),
        // An overlay groups by the selected blocks when the data is not yet known.
        (known, Some(_)) => (known.unwrap_or(selected), Clusters::Stream(r), None),
        (None, None) => {
            progress.phase(
                "receiving",
                r.selected_blocks(),
                crate::progress::Unit::Blocks,
            );
            let mut spool = Spool::new()?;
            let mut runs: Vec<crate::blockmap::BlockRun> = Vec::new();
            let d = r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| {
                if let Some(d) = data {
                    spool.push(&with_mark(marks, e.start, bs, d))?;
                    let n = bs.blocks_in(d.len() as u64);
                    match runs.last_mut() {
                        Some(l) if l.end() == e.start => l.len = l.len.saturating_add(n),
                        _ => runs.push(crate::blockmap::BlockRun::new(e.start, n)),
                    }
                }
                done = done.saturating_add(e.len);
                progress.update(done);
                Ok(())
            })?;
            progress.finish();
            (runs, Clusters::Blocks(spool), Some(d))
        }
    };
    let grouping = choose_grouping(bs, h.blocks_count, &blocks, compressed, overlay.is_some())?;
    let cbits = grouping.cluster_bits();
    let cb = cbits.get();
    let runs = grouping.clusters(&blocks)?;
    let mut data_blocks: u64 = blocks.iter().map(|r| r.len).sum();
    // Overlay: compare first (the stream is read and verified here), then write from the
    // spool of differing clusters.
    let (data, zero) = match (overlay, source) {
        (Some(base), Clusters::Stream(mut r)) => {
            progress.phase(
                "comparing with the backing file",
                r.selected_blocks(),
                crate::progress::Unit::Blocks,
            );
            let mut differ = Differ::new(base, cbits)?;
            let mut asm = Assembler::new(grouping);
            done = 0;
            data_blocks = 0;
            digest = Some(r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| {
                if let Some(d) = data {
                    data_blocks = data_blocks.saturating_add(e.len);
                    let d = with_mark(marks, e.start, bs, d);
                    asm.push(e.start, &d, &mut |c, d| differ.feed(c, d))?;
                }
                done = done.saturating_add(e.len);
                progress.update(done);
                Ok(())
            })?);
            asm.flush(&mut |c, d| differ.feed(c, d))?;
            let (o, spool) = differ.finish(vsize)?;
            source = Clusters::Differing(spool);
            (o.data, o.zero)
        }
        (_, s) => {
            source = s;
            (runs, Vec::new())
        }
    };
    let mut layout = image_layout(one_pass, vsize, cb, &data, &zero, compressed)?;
    layout.set_marks(marks);
    if let Some(base) = overlay {
        base.record(&mut layout)?;
    }
    check_inflation(&layout, bs, data_blocks, compressed)?;
    progress.phase(
        "copying",
        data.iter().map(|r| r.len).sum(),
        crate::progress::Unit::Blocks,
    );
    done = 0;
    // Feed the data clusters to `write`: from a spool or the stream.
    let mut feed = |write: &mut dyn FnMut(GuestCluster, &[u8]) -> Result<()>| -> Result<()> {
        match &mut source {
            Clusters::Differing(sp) => {
                let mut buf = vec![0u8; cbits.size_usize()];
                for g in data.iter().flat_map(|r| r.clusters()) {
                    sp.next(&mut buf)?;
                    write(g, &buf)?;
                    done = done.saturating_add(1);
                    progress.update(done);
                }
            }
            Clusters::Blocks(sp) => {
                let mut asm = Assembler::new(grouping);
                let mut buf = Vec::new();
                let per = crate::pieces::chunk_blocks(bs);
                for run in &blocks {
                    let mut b = run.start;
                    while b < run.end() {
                        let n = per.min(run.end().saturating_since(b));
                        buf.resize(bs.len_of(n).unwrap_or(crate::pieces::IO_CHUNK), 0);
                        sp.next(&mut buf)?;
                        asm.push(b, &buf, &mut *write)?;
                        b = b.saturating_add(n);
                        done = done.saturating_add(n);
                        progress.update(done);
                    }
                }
                asm.flush(write)?;
            }
            Clusters::Stream(r) => {
                let mut asm = Assembler::new(grouping);
                let d = r.for_each(crate::pieces::IO_CHUNK, &mut |e, data| {
                    if let Some(d) = data {
                        let d = with_mark(marks, e.start, bs, d);
                        asm.push(e.start, &d, &mut *write)?;
                        done = done.saturating_add(bs.blocks_in(d.len() as u64));
                        progress.update(done);
                    }
                    Ok(())
                })?;
                asm.flush(write)?;
                digest = Some(d);
            }
        }
        Ok(())
    };
    let file_size = match out {
        Qcow2Out::Sequential(w) => {
            crate::output::check_room(room, layout.file_size())?;
            let mut qw = SequentialWriter::new(w, &layout)?;
            feed(&mut |g, d| qw.write_clusters(g, d))?;
            let n = qw.finish()?;
            w.flush().map_err(|e| crate::io::write_error(w, e))?;
            n
        }
        Qcow2Out::File(file, c) => {
            let mut qw = FileWriter::for_layout(file, layout, c)?;
            feed(&mut |g, d| qw.write_clusters(g, d))?;
            qw.finish()?
        }
    };
    progress.finish();
    let stream_digest =
        digest.ok_or_else(|| Error::InvalidInput("the stream was not read".into()))?;
    Ok(StreamToQcow2 {
        block_size: bs.get(),
        blocks_count: h.blocks_count,
        data_blocks,
        // The data blocks are among the selected ones.
        zero_blocks: selected_blocks.saturating_sub(data_blocks),
        file_size,
        stream_digest,
    })
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
    pub stream_digest: Option<crate::stream::Digest>,
    /// Damaged structures skipped while scanning a filesystem input.
    pub problems: Vec<crate::ext4::scan::Problem>,
}

/// Convert any input to a qcow2: a stream by its map (front to back), a normal image by the
/// blocks it holds, a raw or qcow2 filesystem image by scanning it as `e2i-capture -Q` does.
pub fn to_qcow2(
    input: Input,
    target: crate::qcow2::writer::Qcow2Target<'_>,
    opts: &CaptureOptions,
    progress: &mut dyn Progress,
) -> Result<ToQcow2Report> {
    use crate::qcow2::writer::{Qcow2Target, write_qcow2, write_qcow2_sized};
    match input {
        Input::Stream(r) => {
            let mut buffered;
            let mut room = None;
            let out = match target {
                Qcow2Target::Sequential(w) => Qcow2Out::Sequential(w),
                Qcow2Target::Device(file) => {
                    room = crate::io::block_device_size(file)?;
                    buffered =
                        std::io::BufWriter::with_capacity(1 << 20, crate::io::Counted::new(file));
                    Qcow2Out::Sequential(&mut buffered)
                }
                Qcow2Target::File { file, compress } => Qcow2Out::File(file, compress),
            };
            let rep = stream_to_qcow2(r, out, room, opts.backing.as_deref(), progress)?;
            Ok(ToQcow2Report {
                input: Kind::Stream,
                block_size: rep.block_size,
                blocks_count: rep.blocks_count,
                blocks: rep.data_blocks.saturating_add(rep.zero_blocks),
                stream_digest: Some(rep.stream_digest),
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
                stream_digest: None,
                problems: Vec::new(),
            })
        }
        Input::File {
            kind: Kind::Qcow2, ..
        } => {
            let (img, disk) = qcow2_disk(&input)?;
            let marks = crate::mark::Marks {
                scrambled: source_is_marked(&input, &img),
            };
            progress.block_size(disk.unit.get());
            write_qcow2_sized(
                &MarkedSource::new(&img, marks.scrambled),
                &disk.map,
                disk.unit,
                disk.size,
                target,
                marks,
                opts.backing.as_deref(),
                progress,
            )?;
            Ok(ToQcow2Report {
                input: Kind::Qcow2,
                block_size: disk.unit.get(),
                blocks_count: disk.map.blocks_count(),
                blocks: disk.map.selected_blocks(),
                stream_digest: None,
                problems: Vec::new(),
            })
        }
        // A raw filesystem (a stream and the other kinds are matched above).
        Input::File {
            kind,
            ref path,
            ref dir,
            ..
        } => {
            let src = open_source_in(path, opts.offset, dir.as_deref())?;
            let marks = crate::mark::Marks {
                scrambled: source_is_marked(&input, &*src),
            };
            let src = MarkedSource::new(src, marks.scrambled);
            let (fs, res) = scan_source(src, opts, false, progress)?;
            let bs = fs.sb.block_size;
            let map = res.map;
            write_qcow2(
                &fs.src,
                &map,
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
                blocks: map.selected_blocks(),
                stream_digest: None,
                problems: res.problems,
            })
        }
    }
}
/// The filesystem or disk `src` of `inp` is marked as scrambled: in its superblock, or by a
/// qcow2 input's header extension.
fn source_is_marked(inp: &Input, src: &dyn ReadAt) -> bool {
    superblock_is_marked(src)
        || (inp.kind() == Kind::Qcow2
            && inp.host().is_ok_and(|h| qcow2_host_is_marked(h, inp.dir())))
}
