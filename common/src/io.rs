//! Positioned reads from files, block devices and memory, with hole detection.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::num::NonZeroU64;
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::CorruptKind;
use crate::{Error, Result};

/// A byte-addressed, read-only source.
pub trait ReadAt: Sync {
    /// Read into `buf` from `offset`; returns the bytes read, fewer only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;

    /// Size in bytes.
    fn size(&self) -> u64;

    /// Whether the source holds at least `end` bytes. A source that learns its size only
    /// by reading to its end (a spooled pipe) reads no further than `end` to answer, where
    /// [`Self::size`] reads all of it.
    fn reaches(&self, end: u64) -> Result<bool> {
        Ok(end <= self.size())
    }

    /// The next region at or after `offset` that may hold non-zero bytes, or `None` when
    /// only zeros (holes) follow. Sources that cannot tell return `offset..u64::MAX`.
    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        Ok(Some(offset..u64::MAX))
    }

    /// A hint that `len` bytes from `offset` will be read soon: sources that can start
    /// reading them in the background do (see [`crate::readplan`]). Never changes what a
    /// read returns; the default does nothing.
    fn will_need(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }

    /// Read exactly `buf.len()` bytes of what `what` names; a short read (the source ends
    /// inside them) is [`CorruptKind::ShortRead`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64, what: &'static str) -> Result<()> {
        let n = self.read_at(buf, offset)?;
        if n < buf.len() {
            return Err(CorruptKind::ShortRead {
                what,
                offset,
                len: buf.len() as u64,
                source_bytes: self.size(),
            }
            .into());
        }
        Ok(())
    }

    /// Read `buf.len()` bytes, zero-filling holes and anything past the end without reading
    /// it. Returns the number of bytes that lie past the end.
    fn read_sparse_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let len = buf.len();
        let end = offset.saturating_add(len as u64);
        // Source byte `p` (in `offset..=end`) as an index of `buf`; byte counts inside
        // `buf` likewise.
        let idx = |p: u64| usize::try_from(p.saturating_sub(offset)).map_or(len, |i| i.min(len));
        let count = |n: u64| usize::try_from(n).map_or(len, |n| n.min(len));
        let mut pos = offset;
        while pos < end {
            match self.data_region(pos)? {
                Some(r) if r.start < end => {
                    let ds = r.start.max(pos);
                    // An empty region would not advance: read the rest as data instead.
                    let de = match r.end.min(end) {
                        de if de > ds => de,
                        _ => end,
                    };
                    buf[idx(pos)..idx(ds)].fill(0);
                    let slice = &mut buf[idx(ds)..idx(de)];
                    let n = self.read_at(slice, ds)?;
                    if n < slice.len() {
                        slice[n..].fill(0);
                        return Ok(count(end.saturating_sub(ds).saturating_sub(n as u64)));
                    }
                    pos = de;
                }
                _ => {
                    buf[idx(pos)..].fill(0);
                    return Ok(count(end.saturating_sub(self.size().max(pos))));
                }
            }
        }
        Ok(0)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn reaches(&self, end: u64) -> Result<bool> {
        (**self).reaches(end)
    }
    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        (**self).data_region(offset)
    }
    fn will_need(&self, offset: u64, len: u64) {
        (**self).will_need(offset, len)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn reaches(&self, end: u64) -> Result<bool> {
        (**self).reaches(end)
    }
    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        (**self).data_region(offset)
    }
    fn will_need(&self, offset: u64, len: u64) {
        (**self).will_need(offset, len)
    }
}

/// Fill `buf` by positioned reads until it is full or the file ends.
pub fn pread_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        match file.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            // n is at most what is left of `buf`.
            Ok(n) => done = done.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Write all of `buf` at `offset`.
pub fn pwrite_full(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    file.write_all_at(buf, offset)
}

/// [`pwrite_full`] whose error (`op`) names the byte where the failing write began: after
/// a short write (a full disk, a file-size limit), the first byte not written, not `offset`.
pub fn pwrite_all(file: &File, buf: &[u8], offset: u64, op: &'static str) -> Result<()> {
    let mut done = 0usize;
    while let Some(rest) = buf.get(done..).filter(|r| !r.is_empty()) {
        // Inside `buf`, which lies in the file's range (u64) by the caller's arithmetic.
        let at = offset.saturating_add(done as u64);
        match file.write_at(rest, at) {
            Ok(0) => return Err(Error::io_at(op, at, io::ErrorKind::WriteZero.into())),
            Ok(n) => done = done.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io_at(op, at, e)),
        }
    }
    Ok(())
}

/// An output written front to back (a pipe, stdout, a character device, a file through a
/// buffer) that knows how many bytes its destination has taken, below any buffer: the
/// output byte where a failed write began (a buffered writer's own position runs ahead).
pub trait SeqWrite: io::Write {
    /// Bytes the destination has taken so far.
    fn taken(&self) -> u64;
}

/// A writer counting the bytes `inner` takes: the [`SeqWrite`] of any writer.
pub struct Counted<W> {
    inner: W,
    taken: u64,
}

impl<W: io::Write> Counted<W> {
    pub fn new(inner: W) -> Self {
        Counted { inner, taken: 0 }
    }
}

impl<W: io::Write> io::Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Bytes that went through memory: far below 2^64.
        self.taken = self.taken.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: io::Write> SeqWrite for Counted<W> {
    fn taken(&self) -> u64 {
        self.taken
    }
}

impl<W: SeqWrite> SeqWrite for io::BufWriter<W> {
    fn taken(&self) -> u64 {
        self.get_ref().taken()
    }
}

impl SeqWrite for Vec<u8> {
    fn taken(&self) -> u64 {
        self.len() as u64
    }
}

impl<W: SeqWrite + ?Sized> SeqWrite for &mut W {
    fn taken(&self) -> u64 {
        (**self).taken()
    }
}

/// The error of a failed write (or flush) to `out`: at the first byte it did not take.
pub fn write_error(out: &dyn SeqWrite, e: io::Error) -> Error {
    Error::io_at("write", out.taken(), e)
}

/// Memory alignment of [`AlignedBuf`]: O_DIRECT needs buffers aligned to the device's
/// logical block size, which is at most the page size.
pub const DIRECT_ALIGN: usize = 4096;

/// A heap buffer whose usable part starts on a [`DIRECT_ALIGN`] boundary, so it can be
/// written with O_DIRECT.
#[derive(Debug)]
pub struct AlignedBuf {
    v: Vec<u8>,
    off: usize,
    cap: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `cap` usable bytes.
    pub fn new(cap: usize) -> Self {
        let v = vec![0u8; cap.saturating_add(DIRECT_ALIGN)];
        // Below DIRECT_ALIGN: u8 pointers can always be aligned.
        let off = v.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        AlignedBuf { v, off, cap }
    }

    /// Usable bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The first `n` usable bytes (`n` at most [`AlignedBuf::capacity`]).
    pub fn get(&self, n: usize) -> &[u8] {
        &self.v[self.off..][..n.min(self.cap)]
    }

    pub fn get_mut(&mut self, n: usize) -> &mut [u8] {
        &mut self.v[self.off..][..n.min(self.cap)]
    }
}

/// A second handle on `file` that writes around the page cache (O_DIRECT), if `file` is a
/// regular file or block device and the system allows it.
pub fn reopen_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let meta = file.metadata().ok()?;
    if !(meta.file_type().is_file() || meta.file_type().is_block_device()) {
        return None;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

/// Write `data` at `off` through the O_DIRECT handle `direct` when offset, length and memory
/// are aligned for it; otherwise, or when the system refuses (EINVAL: then `direct` is
/// dropped for good), through `file`. Writes through `file` are buffered: the caller syncs.
pub fn write_maybe_direct(
    file: &File,
    direct: &mut Option<File>,
    data: &[u8],
    off: u64,
) -> Result<()> {
    const SECTOR: usize = 512;
    if let Some(d) = direct.as_ref()
        && off.is_multiple_of(SECTOR as u64)
        && data.len().is_multiple_of(SECTOR)
        && data.as_ptr().align_offset(SECTOR) == 0
    {
        // Refused (EINVAL), even part way: all of `data` goes through `file` instead.
        match pwrite_all(d, data, off, "write") {
            Ok(()) => return Ok(()),
            Err(Error::Io { source, .. })
                if source.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
            {
                *direct = None;
            }
            Err(e) => return Err(e),
        }
    }
    pwrite_all(file, data, off, "write")
}

/// Write `data` at `off` through the page cache and start writing it back at once
/// (`posix_fadvise(DONTNEED)` on dirty pages queues their writeback without waiting, and
/// drops pages already clean). A long copy then keeps the device's queue full of large
/// writes while the reader goes on, and leaves little dirty behind it: on a disk of
/// ~600 MB/s, a 2 GiB clone took 4.5-6.2 s this way against 8-10 s with one O_DIRECT
/// write in flight at a time (see ci/bench.d/README.md).
pub fn write_behind(file: &File, data: &[u8], off: u64) -> Result<()> {
    pwrite_all(file, data, off, "write")?;
    // A hint: a file system that ignores it only loses the early start.
    let _ = rustix::fs::fadvise(
        file,
        off,
        std::num::NonZeroU64::new(data.len() as u64),
        rustix::fs::Advice::DontNeed,
    );
    Ok(())
}

/// Grow the pipe behind `fd` (if it is one) to 1 MiB, best effort: images cross pipes in
/// megabytes, and the default 64 KiB costs a context switch every 64 KiB.
pub fn grow_pipe<Fd: std::os::fd::AsFd>(fd: Fd) {
    if rustix::fs::fstat(&fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
    }) {
        let _ = rustix::pipe::fcntl_setpipe_size(&fd, 1 << 20);
    }
}

/// What a file is, by identity rather than by name: every name of one object (a symlink, a
/// hard link, `./x` and `x`, a second device node) gives the same value. Used to refuse an
/// OUTPUT that is the SOURCE and to find a move's journal under any name of SOURCE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectId {
    /// A block device, by its device number (`st_rdev`).
    BlockDevice { rdev: u64 },
    /// Anything else (regular file, character device, FIFO), by `st_dev` and `st_ino`.
    Inode { dev: u64, ino: u64 },
}

impl ObjectId {
    pub fn of_metadata(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        if meta.file_type().is_block_device() {
            ObjectId::BlockDevice { rdev: meta.rdev() }
        } else {
            ObjectId::Inode {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }

    /// The object `path` names, symlinks followed.
    pub fn of_path(path: &Path) -> io::Result<Self> {
        std::fs::metadata(path).map(|m| Self::of_metadata(&m))
    }

    /// The object an open file is.
    pub fn of_file(file: &File) -> io::Result<Self> {
        file.metadata().map(|m| Self::of_metadata(&m))
    }
}

/// The size of `file` if it is a block device (a target whose size is fixed), else `None`.
pub fn block_device_size(file: &File) -> Result<Option<u64>> {
    let meta = file.metadata().map_err(|e| Error::io("stat", e))?;
    if !meta.file_type().is_block_device() {
        return Ok(None);
    }
    // Through a second open of the same device: seeking the caller's handle would move the
    // offset its sequential writes use (and that of every handle sharing it).
    let dev = File::open(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(file)
    ))
    .map_err(|e| Error::io("open", e))?;
    let mut f = &dev;
    f.seek(SeekFrom::End(0))
        .map(Some)
        .map_err(|e| Error::io("seek", e))
}

/// A regular file or block device, read from byte `base` on (the `-o` offset).
#[derive(Debug)]
pub struct FileSource {
    file: File,
    base: u64,
    size: u64,
    block_device: bool,
    /// Last data region found by SEEK_DATA/SEEK_HOLE, in file offsets; saves syscalls.
    cached: Mutex<(u64, u64)>,
    /// The same for [`ReadAt::will_need`], which runs ahead of the reads.
    hint_cached: Mutex<(u64, u64)>,
    /// Bytes per `posix_fadvise(WILLNEED)` call (see [`willneed_cap`]).
    hint_chunk: u64,
    seekable_holes: AtomicBool,
}

/// `range` as (offset, length) pieces of at most `chunk` bytes (at least one byte each).
fn hint_calls(range: Range<u64>, chunk: u64) -> impl Iterator<Item = (u64, u64)> {
    let chunk = chunk.max(1);
    let mut c = range.start;
    std::iter::from_fn(move || {
        let n = range.end.checked_sub(c).filter(|&n| n > 0)?.min(chunk);
        let at = c;
        c = c.saturating_add(n);
        Some((at, n))
    })
}

/// Default readahead of a Linux device (`VM_READAHEAD_PAGES`): what a WILLNEED call reads
/// at least.
const DEFAULT_READAHEAD: u64 = 128 << 10;

/// The most one `posix_fadvise(WILLNEED)` call reads on the device behind `meta`: the
/// kernel caps each call at the larger of the device's readahead and its largest request
/// (`max(ra_pages, io_pages)` in mm/readahead.c) and drops the rest of the range. On a
/// typical SSD (128 KiB readahead, 128 KiB–1.25 MiB requests) a 2 MiB hint would start only
/// a part of its reads, and the reader would then wait for the others one readahead window
/// at a time. Found in sysfs: the device's queue for block devices and files on them, the
/// filesystem's own entry (FUSE, NFS) otherwise; where neither is found, the kernel's
/// default readahead, which every device reads at least.
fn willneed_cap(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let dev = if meta.file_type().is_block_device() {
        meta.rdev()
    } else {
        meta.dev()
    };
    let kib = |p: &Path| crate::sysfs::read_u64(p).and_then(|k| k.checked_mul(1024));
    let from_queue = crate::sysfs::dir(dev).and_then(|mut d| {
        // A partition's queue is its disk's.
        if d.join("partition").exists() {
            d.pop();
        }
        let q = d.join("queue");
        let ra = kib(&q.join("read_ahead_kb"))?;
        Some(ra.max(kib(&q.join("max_sectors_kb")).unwrap_or(0)))
    });
    let cap = from_queue.or_else(|| {
        let (ma, mi) = (rustix::fs::major(dev), rustix::fs::minor(dev));
        kib(Path::new(&format!(
            "/sys/class/bdi/{ma}:{mi}/read_ahead_kb"
        )))
    });
    cap.unwrap_or(DEFAULT_READAHEAD).max(DEFAULT_READAHEAD)
}

/// The longest name of a folder entry (Linux NAME_MAX), in bytes.
pub const NAME_MAX: usize = 255;

/// `name`, or when it is longer than `max` bytes, its start and `~` and a digest of the
/// whole, `max` bytes at most: for names made from a user's name (a temporary file, a
/// journal next to SOURCE) that must fit a folder entry. Two long names that share their
/// start still differ.
pub fn fit_name(name: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if name.len() <= max {
        return name.into();
    }
    let digest = blake3::hash(name.as_bytes()).to_hex();
    let digest = &digest.as_str()[..16];
    let mut cut = max.saturating_sub(1usize.saturating_add(digest.len()));
    while !name.is_char_boundary(cut) {
        cut = cut.saturating_sub(1);
    }
    format!("{}~{digest}", &name[..cut]).into()
}

impl FileSource {
    pub fn open(path: &Path, base: u64) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open", e))?;
        Self::from_file(file, base)
    }

    /// Open a file the caller did not choose (a name recorded in an image): only a
    /// regular file or block device. The open does not block, so a FIFO (which would wait
    /// for a writer forever) or a device that waits on open is refused, not waited for.
    pub fn open_plain(path: &Path) -> Result<Self> {
        use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
        use std::os::unix::fs::OpenOptionsExt;
        let plain = |t: std::fs::FileType| t.is_file() || t.is_block_device();
        // Looked at before it is opened: opening a device can act (a tape rewinds when
        // closed); checked again once open, in case the name changed in between.
        let t = std::fs::metadata(path)
            .map_err(|e| Error::io("open", e))?
            .file_type();
        if !plain(t) {
            return Err(Error::InvalidInput(
                "not a regular file or block device".into(),
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(|e| Error::io("open", e))?;
        let t = file
            .metadata()
            .map_err(|e| Error::io("stat", e))?
            .file_type();
        if !plain(t) {
            return Err(Error::InvalidInput(
                "not a regular file or block device".into(),
            ));
        }
        let fl = fcntl_getfl(&file).map_err(|e| Error::io("fcntl", e.into()))?;
        fcntl_setfl(&file, fl.difference(OFlags::NONBLOCK))
            .map_err(|e| Error::io("fcntl", e.into()))?;
        Self::from_file(file, 0)
    }

    pub fn from_file(mut file: File, base: u64) -> Result<Self> {
        let meta = file.metadata().map_err(|e| Error::io("stat", e))?;
        let block_device = meta.file_type().is_block_device();
        let total = if block_device {
            file.seek(SeekFrom::End(0))
                .map_err(|e| Error::io("seek", e))?
        } else {
            meta.len()
        };
        Ok(FileSource {
            file,
            base,
            size: total.saturating_sub(base),
            block_device,
            cached: Mutex::new((0, 0)),
            hint_cached: Mutex::new((0, 0)),
            hint_chunk: willneed_cap(&meta),
            seekable_holes: AtomicBool::new(meta.file_type().is_file()),
        })
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// A regular file or block device (read by position); not a pipe, socket or tty.
    pub fn is_seekable(&self) -> bool {
        self.block_device
            || self.seekable_holes.load(Ordering::Relaxed)
            || self.file.metadata().is_ok_and(|m| m.is_file())
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn base(&self) -> u64 {
        self.base
    }
}

impl ReadAt for FileSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let host = offset.checked_add(self.base).ok_or_else(|| {
            Error::InvalidInput(format!(
                "read at byte {offset} overflows with offset {}",
                self.base
            ))
        })?;
        let n = pread_full(&self.file, buf, host).map_err(|e| Error::io_at("read", host, e))?;
        if n < buf.len() {
            let end = host.saturating_add(n as u64);
            // Named by where the file ends now, not where this read stopped.
            let now = match self.file.metadata() {
                Ok(m) if m.is_file() => m.len().min(end),
                _ => end,
            };
            self.refuse_shrunk(now)?;
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.size
    }

    // posix_fadvise(WILLNEED) queues the reads and returns: many hints in a row give the
    // device a real queue depth without threads. Errors are ignored (a hint).
    // Holes are left out: reading ahead through one would fill the page cache with zeros.
    // Each call covers at most `hint_chunk` bytes, the most the kernel reads for one.
    fn will_need(&self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.size);
        let mut pos = offset;
        while pos < end {
            let r = match self.region_cached(pos, &self.hint_cached) {
                Ok(Some(r)) if r.start < end => r,
                _ => return,
            };
            let (s, e) = (r.start.max(pos), r.end.min(end));
            for (c, n) in hint_calls(s..e, self.hint_chunk) {
                if let (Some(host), Some(n)) = (c.checked_add(self.base), NonZeroU64::new(n)) {
                    let _ = rustix::fs::fadvise(
                        &self.file,
                        host,
                        Some(n),
                        rustix::fs::Advice::WillNeed,
                    );
                }
            }
            pos = e;
        }
    }

    // SEEK_DATA/SEEK_HOLE also cover unwritten (fallocated) extents: ext4, XFS and btrfs
    // report them as holes unless the page cache holds data for them, so FIEMAP (an unsafe
    // ioctl) would add nothing here.
    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        self.region_cached(offset, &self.cached)
    }
}

impl FileSource {
    /// A read that found the end of the file at byte `end`, before the size it had when it
    /// was opened: it was truncated during the run (what was read of it no longer holds
    /// together, and zeros in its place would make a wrong image look right).
    fn refuse_shrunk(&self, end: u64) -> Result<()> {
        let was = self.base.saturating_add(self.size);
        if end < was {
            return Err(Error::SourceShrank { end, was });
        }
        Ok(())
    }

    /// [`ReadAt::data_region`] with the last region found kept in `cached`.
    fn region_cached(&self, offset: u64, cached: &Mutex<(u64, u64)>) -> Result<Option<Range<u64>>> {
        if offset >= self.size {
            return Ok(None);
        }
        if !self.seekable_holes.load(Ordering::Relaxed) {
            return Ok(Some(offset..self.size));
        }
        let host = offset.saturating_add(self.base);
        // A poisoned lock only means another reader panicked: the pair is still whole.
        let (cs, ce) = *cached.lock().unwrap_or_else(|p| p.into_inner());
        if cs <= host && host < ce {
            // cs <= host = offset + base: ce - base > offset.
            return Ok(Some(offset..ce.saturating_sub(self.base)));
        }
        use rustix::fs::{SeekFrom as RSeek, seek};
        let start = match seek(&self.file, RSeek::Data(host)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => {
                // Only holes up to the end, or the end moved below `host` since the open.
                let now = self.file.metadata().map_or(u64::MAX, |m| m.len());
                self.refuse_shrunk(now)?;
                return Ok(None);
            }
            Err(_) => {
                // The filesystem cannot report holes: everything may be data.
                self.seekable_holes.store(false, Ordering::Relaxed);
                return Ok(Some(offset..self.size));
            }
        };
        let end = match seek(&self.file, RSeek::Hole(start)) {
            Ok(e) => e,
            Err(_) => self.size.saturating_add(self.base),
        };
        if end <= start {
            return Ok(Some(offset..self.size));
        }
        *cached.lock().unwrap_or_else(|p| p.into_inner()) = (start, end);
        let s = start.saturating_sub(self.base).max(offset);
        let e = end.saturating_sub(self.base).min(self.size);
        if s >= e {
            return Ok(None);
        }
        Ok(Some(s..e))
    }
}

/// An in-memory source that records the hints it gets (tests of hint forwarding).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct HintRecorder {
    pub inner: MemSource,
    /// (offset, len) of every [`ReadAt::will_need`] call, in order.
    pub hints: Mutex<Vec<(u64, u64)>>,
}

#[cfg(test)]
impl HintRecorder {
    pub fn new(bytes: Vec<u8>) -> Self {
        HintRecorder {
            inner: MemSource(bytes),
            hints: Mutex::default(),
        }
    }

    /// The hints so far, cleared.
    pub fn take(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.hints.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
impl ReadAt for HintRecorder {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn will_need(&self, offset: u64, len: u64) {
        self.hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((offset, len));
    }
}

/// An in-memory source, for tests and small images.
#[derive(Debug, Clone, Default)]
pub struct MemSource(pub Vec<u8>);

impl ReadAt for MemSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let Some(src) = usize::try_from(offset).ok().and_then(|o| self.0.get(o..)) else {
            return Ok(0);
        };
        let n = buf.len().min(src.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        let len = self.0.len() as u64;
        Ok((offset < len).then_some(offset..len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sparse_reads_fill_holes_and_eof() {
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(3 << 20).unwrap();
        f.write_all_at(b"hello", (1 << 20) + 7).unwrap();
        f.flush().unwrap();
        let src = FileSource::from_file(f, 1 << 20).unwrap();
        let mut buf = vec![0xAAu8; 4096];
        assert_eq!(src.read_sparse_at(&mut buf, 0).unwrap(), 0);
        assert_eq!(&buf[7..12], b"hello");
        assert!(buf[..7].iter().all(|&b| b == 0) && buf[12..].iter().all(|&b| b == 0));
        let mut tail = vec![0xAAu8; 8192];
        let past = src.read_sparse_at(&mut tail, (2 << 20) - 4096).unwrap();
        assert_eq!(past, 4096);
        assert!(tail.iter().all(|&b| b == 0));
    }

    /// A file truncated while it is read read as zeros (the end looked like a trailing
    /// hole, or a short read like the end of a short image): a capture of an image
    /// truncated mid-run exited 0 with zeros for everything past the cut. Found now, by
    /// plain and sparse reads, in data and in holes.
    #[test]
    fn a_file_truncated_while_read_is_an_error() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(&[7u8; 8192], 0).unwrap();
        f.write_all_at(&[9u8; 8192], 512 << 10).unwrap();
        let src = FileSource::from_file(f.try_clone().unwrap(), 4096).unwrap();
        let mut buf = vec![0u8; 8192];
        // The file's own end is no error.
        let mut tail = vec![0u8; 8192];
        assert_eq!(src.read_at(&mut tail, (1 << 20) - 8192).unwrap(), 4096);
        f.set_len(600 << 10).unwrap();
        let shrank = |r: Result<usize>| {
            assert!(
                matches!(r, Err(Error::SourceShrank { was, .. }) if was == 1 << 20),
                "{r:?}"
            );
        };
        // Data cut short; a hole past the new end.
        shrank(src.read_at(&mut buf, 596 << 10));
        shrank(src.read_sparse_at(&mut buf, 596 << 10));
        shrank(src.read_sparse_at(&mut buf, 800 << 10));
        // Before the cut, reads are as before.
        assert_eq!(src.read_sparse_at(&mut buf, (512 << 10) - 4096).unwrap(), 0);
        assert!(buf.iter().all(|&b| b == 9));
    }

    #[test]
    fn hints_are_cut_at_what_the_kernel_reads_per_call() {
        let calls: Vec<_> = hint_calls(100..100 + 300_000, 128 << 10).collect();
        assert_eq!(
            calls,
            [(100, 131_072), (131_172, 131_072), (262_244, 37_856)]
        );
        assert_eq!(hint_calls(5..5, 4096).count(), 0);
        assert_eq!(
            hint_calls(u64::MAX - 3..u64::MAX, 2).collect::<Vec<_>>(),
            [(u64::MAX - 3, 2), (u64::MAX - 1, 1)]
        );
        // Every device reads at least the kernel's default readahead per call; this
        // machine's (wherever the test runs) is found or defaulted, never below it.
        let f = tempfile::tempfile().unwrap();
        assert!(willneed_cap(&f.metadata().unwrap()) >= DEFAULT_READAHEAD);
    }

    #[test]
    fn hints_over_holes_and_past_the_end_change_nothing() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(b"data", (2 << 20) + 1).unwrap();
        let src = FileSource::from_file(f, 4096).unwrap();
        for (off, len) in [
            (0, u64::MAX),
            (u64::MAX - 1, 10),
            (1 << 20, 3 << 20),
            (5 << 20, 1),
        ] {
            src.will_need(off, len);
        }
        let mut buf = vec![0xAAu8; 8];
        assert_eq!(src.read_at(&mut buf, (2 << 20) + 1 - 4096).unwrap(), 8);
        assert_eq!(&buf[..4], b"data");
        assert_eq!(
            src.data_region(0).unwrap().map(|r| r.start),
            Some((2 << 20) - 4096)
        );
    }
}
