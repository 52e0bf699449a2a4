//! Backing chains: a qcow2 image whose unallocated clusters read through to its backing
//! file, another qcow2 image (itself possibly backed) or a raw image, as qemu reads it.
//!
//! [`Qcow2Image`] sits above the single-file [`Qcow2Reader`]: the reader maps the clusters
//! of one file; the chain decides where the bytes of an unallocated cluster come from.
//! qemu's rules, followed here:
//! - a relative backing name resolves against the folder of the overlay's name as given
//!   (a symlinked overlay's folder is the link's, not its target's); an overlay read from a
//!   pipe has no folder, and its relative backing names resolve from the current one. A
//!   relative external data file name resolves the same way ([`resolve`]), but needs the
//!   folder (see [`super::reader::DataFile`]);
//! - the backing format extension says "qcow2" or "raw"; without it the format is probed;
//! - bytes past the end of a shorter backing file read as zeros, and a zero-flagged cluster
//!   reads as zeros whatever the backing file holds.
//!
//! A chain is followed at most [`MAX_CHAIN_DEPTH`] files deep; a file met twice (by device
//! and inode, so also under another name) is a loop. Both are refused, as is a missing file,
//! with the file named ([`Error::Backing`], [`Error::BackingLoop`], [`Error::BackingTooDeep`]).
//!
//! qcow2 records only a backing file's name, so qemu reads an overlay through whatever file
//! has that name now: a base replaced by another capture, restored from an older backup or
//! changed in place gives a wrong disk, silently. An overlay e2i writes records the digest of
//! its chain's disk ([`chain_digest`]); [`Qcow2Image::open_host`] checks it and refuses a
//! chain that no longer gives those bytes ([`Error::BackingChanged`]).

use std::ffi::OsStr;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::entry::Mapping;
use super::reader::{Qcow2Reader, is_qcow2};
use super::types::ClusterBits;
use crate::error::CorruptKind;
use crate::io::{FileSource, ObjectId, ReadAt};
use crate::{Error, Result};

/// Backing files followed below an overlay.
pub const MAX_CHAIN_DEPTH: usize = 64;
/// "Must not be longer than 1023 bytes."
pub const MAX_BACKING_NAME: u32 = 1023;

/// What a qcow2 image's unallocated clusters read from.
pub enum Backing {
    Qcow2(Box<Qcow2Image<FileSource>>),
    Raw(FileSource),
}

impl Backing {
    /// The format name qemu records for it.
    pub fn format(&self) -> &'static str {
        match self {
            Backing::Qcow2(_) => "qcow2",
            Backing::Raw(_) => "raw",
        }
    }

    /// Byte ranges, sorted and disjoint, outside which the disk reads as zeros.
    pub fn stored_ranges(&self) -> Result<Vec<Range<u64>>> {
        match self {
            Backing::Qcow2(q) => q.stored_ranges(false),
            Backing::Raw(f) => {
                let mut v: Vec<Range<u64>> = Vec::new();
                let mut at = 0;
                while let Some(r) = f.data_region(at)? {
                    let r = r.start.max(at)..r.end.min(f.size());
                    if r.start >= r.end {
                        break;
                    }
                    at = r.end;
                    push_merged(&mut v, r);
                }
                Ok(v)
            }
        }
    }
}

impl ReadAt for Backing {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        match self {
            Backing::Qcow2(q) => q.read_at(buf, offset),
            Backing::Raw(f) => f.read_at(buf, offset),
        }
    }

    fn size(&self) -> u64 {
        match self {
            Backing::Qcow2(q) => q.size(),
            Backing::Raw(f) => f.size(),
        }
    }

    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        match self {
            Backing::Qcow2(q) => q.data_region(offset),
            Backing::Raw(f) => f.data_region(offset),
        }
    }

    fn will_need(&self, offset: u64, len: u64) {
        match self {
            Backing::Qcow2(q) => q.will_need(offset, len),
            Backing::Raw(f) => f.will_need(offset, len),
        }
    }
}

/// A qcow2 image and the chain of backing files below it, read as qemu reads the image.
pub struct Qcow2Image<S: ReadAt> {
    top: Qcow2Reader<S>,
    backing: Option<Backing>,
    /// The files below the top one, nearest first, as opened.
    below: Vec<PathBuf>,
}

impl Qcow2Image<FileSource> {
    /// Open the qcow2 image at `path` and its backing chain.
    pub fn open(path: &Path) -> Result<Self> {
        let id = ObjectId::of_path(path).ok();
        let host = FileSource::open(path, 0)?;
        Self::open_host(host, Some(folder_of(path)), id)
    }
}

/// The folder relative backing names of the image named `path` resolve against.
pub fn folder_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// qemu's resolution of a backing name recorded in an image whose folder is `dir`.
pub fn resolve(dir: &Path, name: &Path) -> PathBuf {
    if name.is_absolute() {
        name.to_path_buf()
    } else {
        dir.join(name)
    }
}

impl<S: ReadAt> Qcow2Image<S> {
    /// Open the qcow2 image in `host` and its chain to read it; relative backing and data
    /// file names resolve against `dir`, the image's folder (`None` for an image read from
    /// a pipe: backing names then resolve from the current folder, and a relative data file
    /// name is refused); `id` is the identity of `host`'s file when known (a loop back to
    /// it is found). A chain whose disk is no longer the one the image was written on is
    /// refused ([`Self::check_backing`]).
    pub fn open_host(host: S, dir: Option<&Path>, id: Option<ObjectId>) -> Result<Self> {
        let img = Self::open_layers(host, dir, id)?;
        img.check_backing()?;
        Ok(img)
    }

    /// As [`Self::open_host`], without reading the chain's content: for looking at headers
    /// and at which files the chain holds.
    pub fn open_layers(host: S, dir: Option<&Path>, id: Option<ObjectId>) -> Result<Self> {
        let mut seen: Vec<ObjectId> = id.into_iter().collect();
        Self::open_chain(host, dir, &mut seen)
    }

    /// Check the disk of the top image's backing chain against the digest e2i recorded when
    /// it wrote the overlay on it. Only the nearest link that has a digest is checked (links
    /// made by qemu or an older e2i have none): it covers the whole disk below that link,
    /// whichever file of the chain holds each byte.
    pub fn check_backing(&self) -> Result<()> {
        let Some(backing) = &self.backing else {
            return Ok(());
        };
        let Some(want) = self.header().backing_digest() else {
            // A link without a digest (qemu's, an older e2i's): the nearest link below with
            // one still guards the files below it.
            return match backing {
                Backing::Qcow2(q) => q.check_backing(),
                Backing::Raw(_) => Ok(()),
            };
        };
        let got = chain_digest(backing, self.top.cluster_size_bits(), self.virtual_size())?;
        if got == want {
            return Ok(());
        }
        Err(Error::BackingChanged {
            path: self.below.first().cloned().unwrap_or_default(),
        })
    }

    fn open_chain(host: S, dir: Option<&Path>, seen: &mut Vec<ObjectId>) -> Result<Self> {
        let top = Qcow2Reader::open_layer_in(host, dir)?;
        let Some(name) = backing_name(&top)? else {
            return Ok(Qcow2Image {
                top,
                backing: None,
                below: Vec::new(),
            });
        };
        let path = resolve(dir.unwrap_or(Path::new("")), &name);
        // seen holds the top file when its identity is known: depth counts backing files.
        if seen.len() > MAX_CHAIN_DEPTH {
            return Err(Error::BackingTooDeep {
                path,
                max: MAX_CHAIN_DEPTH,
            });
        }
        let wrap = |e: Error| match e {
            // Already name the file they are about.
            Error::BackingLoop { .. } | Error::BackingTooDeep { .. } => e,
            e => Error::Backing {
                path: path.clone(),
                source: Box::new(e),
            },
        };
        let id = ObjectId::of_path(&path).map_err(|e| wrap(Error::io("open", e)))?;
        if seen.contains(&id) {
            return Err(Error::BackingLoop { path });
        }
        seen.push(id);
        // A FIFO would wait for a writer forever; a character device is not a disk (qemu's
        // file driver refuses both).
        let file = FileSource::open_plain(&path).map_err(wrap)?;
        let format = top.header().backing_format().map(<[u8]>::to_vec);
        let backing =
            open_backing(file, format.as_deref(), Some(folder_of(&path)), seen).map_err(wrap)?;
        let mut below = vec![path.clone()];
        if let Backing::Qcow2(q) = &backing {
            below.extend(q.below.iter().cloned());
        }
        Ok(Qcow2Image {
            top,
            backing: Some(backing),
            below,
        })
    }

    /// The top file of the chain.
    pub fn top(&self) -> &Qcow2Reader<S> {
        &self.top
    }

    /// The top file's header.
    pub fn header(&self) -> &super::Header {
        self.top.header()
    }

    pub fn backing(&self) -> Option<&Backing> {
        self.backing.as_ref()
    }

    /// The files below the top one, nearest first.
    pub fn backing_files(&self) -> &[PathBuf] {
        &self.below
    }

    /// The external data files of the chain's qcow2 files, the top one's first.
    pub fn data_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .top
            .data_file()
            .map(|d| d.path().to_path_buf())
            .into_iter()
            .collect();
        if let Some(Backing::Qcow2(q)) = &self.backing {
            v.extend(q.data_files());
        }
        v
    }

    pub fn virtual_size(&self) -> u64 {
        self.top.virtual_size()
    }

    /// The top file's cluster bits.
    pub fn cluster_bits(&self) -> u32 {
        self.top.cluster_bits()
    }

    /// Byte ranges of the virtual disk, sorted and disjoint, outside which it reads as
    /// zeros: the top file's stored clusters (with `zero`, its zero-flagged ones too) and
    /// what the chain below stores, within the virtual size. Memory follows the runs.
    pub fn stored_ranges(&self, zero: bool) -> Result<Vec<Range<u64>>> {
        let size = self.virtual_size();
        let cb = self.top.cluster_size_bits();
        let mut all: Vec<Range<u64>> = Vec::new();
        for r in self.top.allocated_runs(zero)? {
            // Allocated clusters lie below the virtual size, whose offsets fit.
            let (Some(s), Some(e)) = (r.start.offset(cb), r.end().offset(cb)) else {
                continue;
            };
            all.push(s.0..e.0.min(size));
        }
        if let Some(b) = &self.backing {
            all.extend(
                b.stored_ranges()?
                    .into_iter()
                    .map(|r| r.start..r.end.min(size))
                    .filter(|r| r.start < r.end),
            );
            all.sort_unstable_by_key(|r| r.start);
        }
        let mut merged = Vec::with_capacity(all.len());
        for r in all {
            push_merged(&mut merged, r);
        }
        Ok(merged)
    }
}

/// The BLAKE3 of the disk an overlay with clusters of `cb` and a disk of `virtual_size`
/// bytes is written on: for every cluster where `backing` holds a non-zero byte, in order,
/// the cluster's number (8 bytes, little-endian) and its bytes (zeros past the disk's end).
/// The writer and the readers share this one definition. The whole disk counts, not only
/// the clusters the overlay reads through, so that the overlay's own clusters may change
/// (`qemu-img commit` into it) without its chain being taken for changed; and all-zero
/// clusters read the same from any chain, so only the chain's stored ranges are read.
pub fn chain_digest(backing: &Backing, cb: ClusterBits, virtual_size: u64) -> Result<[u8; 32]> {
    let cs = cb.size();
    let total = virtual_size.div_ceil(cs);
    let per = ((crate::pieces::IO_CHUNK as u64) >> cb.get()).max(1);
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::new();
    // Hash clusters `run`, read in one piece.
    let mut hash_run = |run: Range<u64>| -> Result<()> {
        // run lies below `total`: its offsets lie below the virtual size; at most `per`
        // clusters, IO_CHUNK bytes.
        let at = run.start << cb.get();
        let len = (run.end << cb.get()).min(virtual_size).saturating_sub(at) as usize;
        // Zeros where the chain's disk ends early or the virtual size ends the last cluster.
        buf.clear();
        buf.resize((run.end.saturating_sub(run.start) << cb.get()) as usize, 0);
        backing.read_at(&mut buf[..len], at)?;
        for (g, c) in run.zip(buf.chunks(cb.size_usize())) {
            if !crate::pieces::block_is_zero(c) {
                hasher.update(&crate::bytes::le::bytes_u64(g));
                hasher.update(c);
            }
        }
        Ok(())
    };
    // The next cluster not yet looked at: ranges may share a cluster.
    let mut next = 0u64;
    for r in backing.stored_ranges()? {
        let first = (r.start >> cb.get()).max(next);
        let end = r.end.div_ceil(cs).min(total);
        let mut g = first;
        while g < end {
            let stop = g.saturating_add(per).min(end);
            hash_run(g..stop)?;
            g = stop;
        }
        next = next.max(end);
    }
    Ok(*hasher.finalize().as_bytes())
}

/// Append `r` to sorted ranges, merging it with the last one when they touch.
fn push_merged(v: &mut Vec<Range<u64>>, r: Range<u64>) {
    match v.last_mut() {
        Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
        _ => v.push(r),
    }
}

/// Open `file` as a backing file of format `format` (probed when `None`).
fn open_backing(
    file: FileSource,
    format: Option<&[u8]>,
    dir: Option<&Path>,
    seen: &mut Vec<ObjectId>,
) -> Result<Backing> {
    let mut magic = [0u8; 4];
    let n = file.read_at(&mut magic, 0)?;
    let looks_qcow2 = is_qcow2(&magic[..n]);
    match format {
        Some(b"qcow2") if !looks_qcow2 => Err(Error::InvalidInput(
            "not a qcow2 image, though the overlay records it as one".into(),
        )),
        Some(b"qcow2") => Ok(Backing::Qcow2(Box::new(Qcow2Image::open_chain(
            file, dir, seen,
        )?))),
        Some(b"raw") => Ok(Backing::Raw(file)),
        None if looks_qcow2 => Ok(Backing::Qcow2(Box::new(Qcow2Image::open_chain(
            file, dir, seen,
        )?))),
        None => Ok(Backing::Raw(file)),
        Some(other) => Err(Error::Unsupported(format!(
            "backing format {:?} (e2i reads qcow2 and raw backing files)",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// The backing file name recorded in `top`'s header, if any.
fn backing_name<S: ReadAt>(top: &Qcow2Reader<S>) -> Result<Option<PathBuf>> {
    let h = top.header();
    if !h.has_backing_file() {
        return Ok(None);
    }
    let (host_offset, len) = (h.backing_file_offset.0, h.backing_file_size);
    let bad = CorruptKind::Qcow2BackingName { host_offset, len };
    // qemu: "Invalid backing file offset" past the first cluster, "too long" past 1023.
    if len == 0 || len > MAX_BACKING_NAME || host_offset > h.cluster_size() {
        return Err(bad.into());
    }
    // At most 1023 bytes.
    let mut name = vec![0u8; len as usize];
    if top.host().read_at(&mut name, host_offset)? < name.len() || name.contains(&0) {
        return Err(bad.into());
    }
    Ok(Some(PathBuf::from(OsStr::from_bytes(&name))))
}

impl<S: ReadAt> ReadAt for Qcow2Image<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let Some(backing) = &self.backing else {
            return self.top.read_at(buf, offset);
        };
        let size = self.top.virtual_size();
        if offset >= size {
            return Ok(0);
        }
        // Bounded by buf.len().
        let n = (buf.len() as u64).min(size.saturating_sub(offset)) as usize;
        // Units (subclusters with extended L2 entries, else clusters) read from one place.
        let ub = self.top.unit_bits();
        let cs = 1u64 << ub;
        let end = offset.saturating_add(n as u64);
        let mut pos = offset;
        let from_backing =
            |p: u64| -> Result<bool> { Ok(self.top.mapping_at(p)? == Mapping::Unallocated) };
        while pos < end {
            let below = from_backing(pos)?;
            // Extend over the following units read from the same place.
            let mut stop = (pos | cs.saturating_sub(1)).saturating_add(1).min(end);
            while stop < end && from_backing(stop)? == below {
                stop = stop.saturating_add(cs).min(end);
            }
            // pos and stop lie within buf's span from offset.
            let part =
                &mut buf[pos.saturating_sub(offset) as usize..stop.saturating_sub(offset) as usize];
            let got = if below {
                backing.read_at(part, pos)?
            } else {
                self.top.read_at(part, pos)?
            };
            // Past the end of a shorter backing file: zeros.
            if let Some(rest) = part.get_mut(got..) {
                rest.fill(0);
            }
            pos = stop;
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.top.virtual_size()
    }

    // The backing chain only: a qcow2 layer takes no hints (Qcow2Reader), a raw backing
    // file does. Its share of the range is not known without the top's tables, and a hint
    // for bytes the top overrides only costs a read.
    fn will_need(&self, offset: u64, len: u64) {
        if let Some(b) = &self.backing {
            b.will_need(offset, len);
        }
    }

    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        let Some(backing) = &self.backing else {
            return self.top.data_region(offset);
        };
        let size = self.top.virtual_size();
        if offset >= size {
            return Ok(None);
        }
        // Either layer's data may show (a zero-flagged cluster over backing data is reported
        // as data here: it reads as zeros, which a caller may always find in a region).
        let t = self.top.data_region(offset)?;
        let b = backing
            .data_region(offset)?
            .map(|r| r.start.max(offset)..r.end.min(size))
            .filter(|r| r.start < r.end);
        Ok(match (t, b) {
            (None, x) | (x, None) => x,
            (Some(t), Some(b)) => Some(if t.start <= b.start { t } else { b }),
        })
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // tests compute expected values freely
mod tests {
    use super::*;

    /// An overlay on a shorter raw file: unallocated clusters read the raw bytes, past its
    /// end zeros; zero flags hide the raw bytes; stored ranges cover both layers.
    #[test]
    fn overlay_on_a_short_raw_file() {
        use crate::qcow2::{ClusterRun, GuestCluster, Qcow2Layout, SequentialWriter};
        let d = tempfile::tempdir().unwrap();
        let cb = 9u32;
        // Raw: 8 clusters of 0x11, then the file ends; the overlay's disk is 16 clusters.
        std::fs::write(d.path().join("base.raw"), vec![0x11u8; 8 << cb]).unwrap();
        let run = |start, len| ClusterRun {
            start: GuestCluster(start),
            len,
        };
        let mut l =
            Qcow2Layout::plan_full(16 << cb, cb, &[run(2, 1)], &[run(3, 1)], false).unwrap();
        l.set_backing(b"base.raw", "raw").unwrap();
        let mut img = Vec::new();
        let mut w = SequentialWriter::new(&mut img, &l).unwrap();
        w.write_clusters(GuestCluster(2), &[0x22u8; 512]).unwrap();
        w.finish().unwrap();
        let ov = d.path().join("ov.qcow2");
        std::fs::write(&ov, img).unwrap();
        let q = Qcow2Image::open(&ov).unwrap();
        assert_eq!(q.backing_files(), [d.path().join("base.raw")]);
        let mut all = vec![0u8; 16 << cb];
        assert_eq!(q.read_at(&mut all, 0).unwrap(), all.len());
        let cluster = |c: usize| &all[c << cb..(c + 1) << cb];
        assert!(cluster(0).iter().all(|&b| b == 0x11));
        assert!(cluster(2).iter().all(|&b| b == 0x22));
        assert!(cluster(3).iter().all(|&b| b == 0));
        assert!(cluster(7).iter().all(|&b| b == 0x11));
        assert!(cluster(8).iter().all(|&b| b == 0));
        // A read across layers, starting inside a cluster.
        let mut part = vec![0u8; 1024];
        q.read_at(&mut part, (2 << cb) - 100).unwrap();
        assert!(part[..100].iter().all(|&b| b == 0x11));
        assert!(part[100..612].iter().all(|&b| b == 0x22));
        assert!(part[612..].iter().all(|&b| b == 0));
        let ranges = q.stored_ranges(false).unwrap();
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert!(ranges.iter().all(|r| r.end <= 8 << cb));
        // Missing: named.
        std::fs::remove_file(d.path().join("base.raw")).unwrap();
        match Qcow2Image::open(&ov) {
            Err(Error::Backing { path, .. }) => assert_eq!(path, d.path().join("base.raw")),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened without its backing file"),
        }
    }

    #[test]
    fn relative_names_resolve_from_the_overlay_folder() {
        assert_eq!(
            resolve(
                folder_of(Path::new("a/b/ov.qcow2")),
                Path::new("base.qcow2")
            ),
            PathBuf::from("a/b/base.qcow2")
        );
        assert_eq!(
            resolve(folder_of(Path::new("ov.qcow2")), Path::new("base.qcow2")),
            PathBuf::from("base.qcow2")
        );
        assert_eq!(
            resolve(folder_of(Path::new("a/ov.qcow2")), Path::new("/x/base")),
            PathBuf::from("/x/base")
        );
    }
}
