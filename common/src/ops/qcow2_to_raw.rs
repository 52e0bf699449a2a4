//! `qcow2-to-raw`: the virtual disk of a qcow2 image as a raw image.
//!
//! The input is any image [`Qcow2Reader`] accepts. A qcow2 on stdin, or wrapped in gzip or
//! bzip2, is first spooled (decompressed) to an unlinked temporary file, since qcow2 needs
//! random access. The output goes through [`sparse::write_raw`]: a new file gets holes for
//! unallocated, zero and all-zero clusters; an existing target is updated in place.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::blockmap::{BlockMap, Run};
use crate::io::{FileSource, ReadAt, pread_full};
use crate::progress::Progress;
use crate::qcow2::{Qcow2Reader, is_qcow2};
use crate::sparse::{self, CopyStats, RawTarget};
use crate::{Error, Result};

/// Open `path` (`-` for stdin) as a qcow2 image, spooling stdin and gzip/bzip2-wrapped
/// input to a temporary file.
pub fn open_input(path: &Path) -> Result<Qcow2Reader<FileSource>> {
    let file = if path == Path::new("-") {
        spool(&mut io::stdin().lock())?
    } else {
        let f = File::open(path).map_err(|e| Error::io("open", 0, e))?;
        let mut magic = [0u8; 4];
        let n = pread_full(&f, &mut magic, 0).map_err(|e| Error::io("read", 0, e))?;
        if is_qcow2(&magic[..n]) {
            f
        } else if is_wrapped(&magic[..n]) {
            spool(&mut io::BufReader::new(f))?
        } else {
            return Err(not_qcow2());
        }
    };
    Qcow2Reader::open(FileSource::from_file(file, 0)?)
}

fn not_qcow2() -> Error {
    Error::InvalidInput("not a qcow2 image (no QFI\\xfb magic)".into())
}

fn is_wrapped(m: &[u8]) -> bool {
    m.starts_with(&[0x1f, 0x8b]) || m.starts_with(b"BZh")
}

/// Copy `input` (a qcow2, possibly gzip- or bzip2-compressed) to an unlinked temporary file
/// in `$TMPDIR`.
pub fn spool(input: &mut dyn Read) -> Result<File> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        match input.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", n as u64, e)),
        }
    }
    let head = &magic[..n];
    let mut chained = io::Read::chain(head, input);
    let mut reader: Box<dyn Read + '_> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(chained))
    } else if head.starts_with(b"BZh") {
        Box::new(bzip2::read::MultiBzDecoder::new(chained))
    } else if is_qcow2(head) {
        Box::new(&mut chained)
    } else {
        return Err(not_qcow2());
    };
    let dir = std::env::temp_dir();
    let mut file = None;
    for i in 0..100u32 {
        let p = dir.join(format!(".e2i-spool-{}-{i}", std::process::id()));
        match File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => {
                let _ = std::fs::remove_file(&p);
                file = Some(f);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create temporary file", 0, e)),
        }
    }
    let mut file =
        file.ok_or_else(|| Error::InvalidInput("cannot create a temporary file".into()))?;
    let mut w = io::BufWriter::with_capacity(1 << 20, &mut file);
    let copied = io::copy(&mut reader, &mut w).map_err(|e| Error::io("spool input", 0, e))?;
    w.flush().map_err(|e| Error::io("write", copied, e))?;
    drop(w);
    let mut m2 = [0u8; 4];
    let k = pread_full(&file, &mut m2, 0).map_err(|e| Error::io("read", 0, e))?;
    if !is_qcow2(&m2[..k]) {
        return Err(not_qcow2());
    }
    Ok(file)
}

/// The raw image to produce: which units of `unit` bytes hold stored data.
#[derive(Debug, Clone)]
pub struct RawPlan {
    /// Bytes per map block: the cluster size when it divides the virtual size, else 512.
    pub unit: u32,
    /// Units to copy; `blocks_count * unit` is the virtual size.
    pub map: BlockMap,
}

/// Plan the conversion. `with_zero_clusters` also selects clusters flagged as zero (v3), so
/// that an in-place update writes zeros there; new files leave them as holes either way.
pub fn plan<S: ReadAt>(image: &Qcow2Reader<S>, with_zero_clusters: bool) -> Result<RawPlan> {
    let size = image.virtual_size();
    let cb = image.cluster_bits();
    let cs = 1u64 << cb;
    let unit: u64 = if size.is_multiple_of(cs) {
        cs
    } else if size.is_multiple_of(512) {
        512
    } else {
        return Err(Error::Unsupported(format!(
            "virtual size {size} is not a multiple of 512 bytes"
        )));
    };
    let per = cs / unit;
    let units = size / unit;
    let runs = image.allocated_runs(with_zero_clusters)?;
    let scaled = runs.into_iter().filter_map(|r| {
        let s = r.start.get().checked_mul(per)?;
        let e = r.end().get().checked_mul(per)?.min(units);
        (s < e).then(|| Run {
            start: s,
            len: e - s,
        })
    });
    Ok(RawPlan {
        unit: unit as u32,
        map: BlockMap::from_runs(scaled, units),
    })
}

/// Write the raw image of `image` to `target`.
pub fn convert<S: ReadAt>(
    image: &Qcow2Reader<S>,
    plan: &RawPlan,
    target: RawTarget<'_>,
    progress: &mut dyn Progress,
) -> Result<CopyStats> {
    sparse::write_raw(image, &plan.map, plan.unit, target, progress)
}

/// What a dry run found.
#[derive(Debug, Default, Clone, Copy)]
pub struct DryRun {
    /// Bytes that would be written.
    pub bytes: u64,
    /// Bytes already equal in the target (with `check`).
    pub identical: u64,
}

/// Print (to `out`) the byte ranges that would be written to the target at `dest_offset`,
/// without writing anything. With `check` and an existing `target`, ranges already equal
/// there are left out.
pub fn dry_run<S: ReadAt>(
    image: &Qcow2Reader<S>,
    plan: &RawPlan,
    target: Option<&File>,
    dest_offset: u64,
    check: bool,
    new_file: bool,
    out: &mut dyn Write,
) -> Result<DryRun> {
    let unit = u64::from(plan.unit);
    let bsz = plan.unit as usize;
    let mut res = DryRun::default();
    let mut pending: Option<(u64, u64)> = None;
    let mut cmp = Vec::new();
    let emit = |out: &mut dyn Write, r: (u64, u64)| -> Result<()> {
        writeln!(out, "write bytes {}..{} ({} bytes)", r.0, r.1, r.1 - r.0)
            .map_err(|e| Error::io("write", 0, e))
    };
    sparse::for_each_chunk(image, &plan.map, plan.unit, &mut |blk, data| {
        let base = dest_offset.saturating_add(blk * unit);
        let mut same = vec![false; data.len() / bsz];
        if check && let Some(t) = target {
            cmp.resize(data.len(), 0);
            let got = pread_full(t, &mut cmp, base).map_err(|e| Error::io("read", base, e))?;
            for (k, s) in same.iter_mut().enumerate() {
                *s = (k + 1) * bsz <= got
                    && cmp[k * bsz..(k + 1) * bsz] == data[k * bsz..(k + 1) * bsz];
            }
        }
        for (k, s) in same.iter().enumerate() {
            let block = &data[k * bsz..(k + 1) * bsz];
            if *s || (new_file && sparse::block_is_zero(block)) {
                if *s {
                    res.identical += unit;
                }
                continue;
            }
            let o = base + k as u64 * unit;
            res.bytes += unit;
            match &mut pending {
                Some(p) if p.1 == o => p.1 += unit,
                _ => {
                    if let Some(p) = pending.take() {
                        emit(out, p)?;
                    }
                    pending = Some((o, o + unit));
                }
            }
        }
        Ok(())
    })?;
    if let Some(p) = pending {
        emit(out, p)?;
    }
    Ok(res)
}
