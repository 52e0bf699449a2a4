//! Overlays: a qcow2 image that stores only the clusters in which a new capture differs
//! from a previous one (its backing chain), and flags as zero the clusters the chain holds
//! but the new capture does not. Reading the overlay gives exactly the new capture.
//!
//! [`Base`] opens the previous capture (qcow2 of any chain, or a raw image) under the name
//! to record. [`compare`] classifies the new capture's clusters when they can be read twice
//! (a filesystem or image file); [`Differ`] does it as they arrive once (a stream), keeping
//! the differing clusters in a temporary file so that the overlay is still written front
//! to back, metadata first. [`zero_flags`] finds what the chain holds outside the new
//! capture.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::chain::{Backing, Qcow2Image, folder_of, resolve};
use super::types::{ClusterBits, ClusterRun, GuestCluster};
use crate::io::{FileSource, ObjectId, ReadAt, pread_full, pwrite_full};
use crate::pieces::{IO_CHUNK, block_is_zero};
use crate::progress::Progress;
use crate::{Error, Result};

/// The previous capture an overlay is written on.
pub struct Base {
    /// The name recorded in the overlay, as given.
    name: PathBuf,
    /// Where it was opened: `name` resolved against the overlay's folder.
    path: PathBuf,
    image: Backing,
}

impl std::fmt::Debug for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Base")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("format", &self.image.format())
            .finish()
    }
}

impl Base {
    /// Open `name` as the backing file of an overlay in folder `overlay_dir` (relative names
    /// resolve from there, as qemu-img resolves them). It must be a qcow2 image (its own
    /// chain followed) or a raw filesystem image.
    pub fn open(name: &Path, overlay_dir: &Path) -> Result<Base> {
        let path = resolve(overlay_dir, name);
        let wrap = |e: Error| match e {
            Error::BackingLoop { .. } | Error::BackingTooDeep { .. } => e,
            e => Error::Backing {
                path: path.clone(),
                source: Box::new(e),
            },
        };
        // Not a FIFO, which would wait for a writer forever.
        let file = FileSource::open_plain(&path).map_err(wrap)?;
        let mut head = [0u8; 2048];
        let n = file.read_at(&mut head, 0).map_err(wrap)?;
        let image = match crate::ops::input::detect(&head[..n]) {
            Some(crate::ops::input::Kind::Qcow2) => {
                let id = ObjectId::of_path(&path).ok();
                Backing::Qcow2(Box::new(
                    Qcow2Image::open_host(file, Some(folder_of(&path)), id).map_err(wrap)?,
                ))
            }
            Some(crate::ops::input::Kind::Raw) => Backing::Raw(file),
            other => {
                let what = match (other, crate::ops::input::compression_name(&head[..n])) {
                    (_, Some(c)) => format!("{c}-compressed"),
                    (Some(k), None) => format!("{k}"),
                    (None, None) => "not a qcow2 or raw filesystem image".into(),
                };
                return Err(wrap(Error::InvalidInput(format!(
                    "{what}: an overlay needs a qcow2 image or a raw filesystem image as backing file"
                ))));
            }
        };
        Ok(Base {
            name: name.to_path_buf(),
            path,
            image,
        })
    }

    /// The name recorded in the overlay.
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// Where the base was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// "qcow2" or "raw".
    pub fn format(&self) -> &'static str {
        self.image.format()
    }

    /// Every file of the chain, the base first, data files after the backing files: none of
    /// them may be the overlay's output.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.path.clone()];
        if let Backing::Qcow2(q) = &self.image {
            v.extend(q.backing_files().iter().cloned());
            v.extend(q.data_files());
        }
        v
    }

    /// The chain's virtual disk.
    pub fn reader(&self) -> &Backing {
        &self.image
    }

    /// Record this base in `layout` (name as given, format) with the digest of its disk,
    /// so that a reader can tell when the chain is no longer what the overlay was made on.
    pub fn record(&self, layout: &mut super::Qcow2Layout) -> Result<()> {
        layout.set_backing(self.name.as_os_str().as_bytes(), self.format())?;
        let cb = ClusterBits::new(layout.cluster_bits())
            .ok_or_else(|| Error::InvalidInput("overlay: cluster size".into()))?;
        let digest = super::chain::chain_digest(&self.image, cb, layout.virtual_size())?;
        layout.set_backing_digest(digest);
        Ok(())
    }

    /// Read `buf.len()` bytes of the chain's disk at `offset`, zeros past its end.
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let n = self.image.read_at(buf, offset)?;
        if let Some(rest) = buf.get_mut(n..) {
            rest.fill(0);
        }
        Ok(())
    }
}

/// The clusters of an overlay: stored (they differ from the chain) and flagged as zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayRuns {
    pub data: Vec<ClusterRun>,
    pub zero: Vec<ClusterRun>,
}

/// Append cluster `g` to sorted runs, extending the last run when it ends at `g`.
fn push_cluster(v: &mut Vec<ClusterRun>, g: GuestCluster) {
    match v.last_mut() {
        Some(l) if l.end() == g => l.len = l.len.saturating_add(1),
        _ => v.push(ClusterRun { start: g, len: 1 }),
    }
}

/// Classify the clusters of one piece of the new image (`data`, from cluster `first`)
/// against the same clusters of `base`, read into `theirs`.
fn classify(
    first: GuestCluster,
    data: &[u8],
    theirs: &[u8],
    cs: usize,
    out: &mut OverlayRuns,
    mut stored: impl FnMut(GuestCluster, &[u8]) -> Result<()>,
) -> Result<()> {
    for (i, (ours, old)) in (0u64..).zip(data.chunks(cs).zip(theirs.chunks(cs))) {
        if ours == old {
            continue;
        }
        let g = first.checked_add(i).ok_or_else(overflow)?;
        if block_is_zero(ours) {
            push_cluster(&mut out.zero, g);
        } else {
            push_cluster(&mut out.data, g);
            stored(g, ours)?;
        }
    }
    Ok(())
}

fn overflow() -> Error {
    Error::InvalidInput("overlay: cluster numbers overflow".into())
}

/// Compare the clusters `runs` of the new image `new` (clusters of `cb`; with several blocks
/// a cluster, `new` reads zeros outside its data blocks: [`super::grouping::Masked`]) with
/// `base`; everything else of the new image reads as zeros. Reads each run of both in
/// pieces; memory follows the runs.
pub fn compare<S: ReadAt + ?Sized>(
    new: &S,
    runs: &[ClusterRun],
    cb: ClusterBits,
    virtual_size: u64,
    base: &Base,
    progress: &mut dyn Progress,
) -> Result<OverlayRuns> {
    let cs = cb.size_usize();
    let per = (IO_CHUNK >> cb.get()).max(1) as u64;
    let mut out = OverlayRuns::default();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut done = 0u64;
    for r in runs {
        let mut g = r.start;
        while g < r.end() {
            let n = per.min(r.end().0.saturating_sub(g.0));
            // At most IO_CHUNK bytes.
            let len = (n << cb.get()) as usize;
            let at = g.offset(cb).ok_or_else(overflow)?.0;
            ours.resize(len, 0);
            theirs.resize(len, 0);
            let got = new.read_at(&mut ours, at)?;
            ours[got..].fill(0);
            base.read(&mut theirs, at)?;
            classify(g, &ours, &theirs, cs, &mut out, |_, _| Ok(()))?;
            g = g.checked_add(n).ok_or_else(overflow)?;
            done = done.saturating_add(n);
            progress.update(done);
        }
    }
    out.zero.extend(zero_flags(base, runs, cb, virtual_size)?);
    out.zero.sort_unstable();
    Ok(out)
}

/// The clusters below `virtual_size` outside `covered` (sorted runs: the new image's
/// clusters, already classified) where the chain of `base` holds non-zero bytes: the
/// overlay flags them as zero.
pub fn zero_flags(
    base: &Base,
    covered: &[ClusterRun],
    cb: ClusterBits,
    virtual_size: u64,
) -> Result<Vec<ClusterRun>> {
    let cs = cb.size();
    let total = virtual_size.div_ceil(cs);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut cov = covered.iter().peekable();
    for r in base.image.stored_ranges()? {
        // The clusters holding any of r, within the overlay's disk.
        let (first, end) = (r.start >> cb.get(), r.end.div_ceil(cs).min(total));
        let mut g = first;
        while g < end {
            // Skip what the new image covers.
            while cov.peek().is_some_and(|c| c.end().0 <= g) {
                cov.next();
            }
            let stop = match cov.peek() {
                Some(c) if c.start.0 <= g => {
                    g = c.end().0;
                    continue;
                }
                Some(c) => c.start.0.min(end),
                None => end,
            };
            // Read g..stop in pieces.
            let mut at = g;
            while at < stop {
                let n = ((IO_CHUNK as u64) >> cb.get())
                    .max(1)
                    .min(stop.saturating_sub(at));
                // At most IO_CHUNK bytes, at a cluster below the virtual size.
                buf.resize((n << cb.get()) as usize, 0);
                base.read(&mut buf, at << cb.get())?;
                for (i, c) in (0u64..).zip(buf.chunks(cs as usize)) {
                    if !block_is_zero(c) {
                        push_cluster(&mut out, GuestCluster(at.saturating_add(i)));
                    }
                }
                at = at.saturating_add(n);
            }
            g = stop;
        }
    }
    Ok(out)
}

/// Compares a new image arriving once, in guest order (a stream), with `base`, keeping the
/// clusters that differ in a temporary file without a name ([`Spool`]).
pub struct Differ<'a> {
    base: &'a Base,
    cb: ClusterBits,
    runs: OverlayRuns,
    /// The clusters fed, as runs (for [`zero_flags`]).
    fed: Vec<ClusterRun>,
    spool: Spool,
    theirs: Vec<u8>,
}

impl<'a> Differ<'a> {
    pub fn new(base: &'a Base, cb: ClusterBits) -> Result<Self> {
        Ok(Differ {
            base,
            cb,
            runs: OverlayRuns::default(),
            fed: Vec::new(),
            spool: Spool::new()?,
            theirs: Vec::new(),
        })
    }

    /// The next clusters of the new image, from `first` (after those fed before).
    pub fn feed(&mut self, first: GuestCluster, data: &[u8]) -> Result<()> {
        let cb = self.cb;
        let cs = cb.size_usize();
        if !data.len().is_multiple_of(cs) {
            return Err(Error::InvalidInput(
                "overlay: not a whole number of clusters".into(),
            ));
        }
        let n = (data.len() >> cb.get()) as u64;
        if n == 0 {
            return Ok(());
        }
        let at = first.offset(cb).ok_or_else(overflow)?.0;
        self.theirs.resize(data.len(), 0);
        self.base.read(&mut self.theirs, at)?;
        let spool = &mut self.spool;
        classify(first, data, &self.theirs, cs, &mut self.runs, |_, c| {
            spool.push(c)
        })?;
        match self.fed.last_mut() {
            Some(l) if l.end() == first => l.len = l.len.saturating_add(n),
            _ => self.fed.push(ClusterRun {
                start: first,
                len: n,
            }),
        }
        Ok(())
    }

    /// Finish the comparison (flag what the chain holds beyond what was fed): the runs, and
    /// a reader of the stored clusters in order.
    pub fn finish(mut self, virtual_size: u64) -> Result<(OverlayRuns, Spool)> {
        self.fed.sort_unstable();
        let z = zero_flags(self.base, &self.fed, self.cb, virtual_size)?;
        self.runs.zero.extend(z);
        self.runs.zero.sort_unstable();
        Ok((self.runs, self.spool))
    }
}

/// Bytes kept in a temporary file (in `TMPDIR`) while a stream is verified, written front
/// to back and then read back in order. The file has no name (O_TMPFILE, or unlinked as soon
/// as it is made), so nothing is left behind however the run ends: SIGKILL and the OOM killer
/// included (a named spool outlived them, as large as the stream's data).
pub struct Spool {
    file: File,
    written: u64,
    pos: u64,
}

impl Spool {
    /// A new, empty spool.
    pub fn new() -> Result<Self> {
        let file = tempfile::tempfile().map_err(|e| Error::temp_file("create", e))?;
        Ok(Spool {
            file,
            written: 0,
            pos: 0,
        })
    }

    /// Keep `data` after what was kept before.
    pub fn push(&mut self, data: &[u8]) -> Result<()> {
        pwrite_full(&self.file, data, self.written)
            .map_err(|e| Error::temp_file_at("write", self.written, e))?;
        self.written = self.written.saturating_add(data.len() as u64);
        Ok(())
    }

    /// Fill `buf` with the next kept bytes.
    pub fn next(&mut self, buf: &mut [u8]) -> Result<()> {
        let n = pread_full(&self.file, buf, self.pos)
            .map_err(|e| Error::temp_file_at("read", self.pos, e))?;
        if n < buf.len() {
            return Err(Error::temp_file_at(
                "read",
                self.pos,
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            ));
        }
        self.pos = self.pos.saturating_add(n as u64);
        Ok(())
    }
}
