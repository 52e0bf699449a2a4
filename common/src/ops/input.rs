//! Converter inputs: detect the format by content (e2i stream, qcow2, normal e2image image,
//! raw filesystem), through gzip, bzip2, xz or zstd wrapping, from a file, stdin, a FIFO or a
//! process substitution. Anything not read front to back that is not a seekable plain file
//! (stdin, pipes, compressed files) is spooled to a temporary file without a name: a raw
//! filesystem or normal image first, up to the end its superblock or layout gives; a qcow2
//! image, whose tables may point anywhere, as reads reach into it ([`Spool`]).

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::bytes::le;
use crate::ext4::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::io::{FileSource, ObjectId, ReadAt};
use crate::mark::{Evidence, ImageFacts};
use crate::normal;
use crate::stream::{self, StreamReader};
use crate::{Error, Result};

/// What an input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stream,
    Qcow2,
    /// A normal e2image image.
    Normal,
    /// A raw filesystem image.
    Raw,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Stream => "e2i stream",
            Kind::Qcow2 => "qcow2 image",
            Kind::Normal => "normal e2image image",
            Kind::Raw => "raw filesystem image",
        })
    }
}

/// Compression wrapping found on the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrapping {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// An opened input.
pub enum Input {
    /// A stream, read sequentially.
    Stream(StreamReader<Box<dyn Read + Send>>),
    /// A random-access image: the original file, or a spooled (decompressed) temporary copy.
    File {
        kind: Kind,
        /// The file, or the whole spooled copy ([`Spooled::path`]). A qcow2 spooled as it
        /// is read has only what was read so far there: a qcow2 is read through
        /// [`Input::host`].
        path: PathBuf,
        spooled: Option<Spooled>,
        /// The folder a qcow2's relative backing and data file names resolve against: the
        /// input's own, also when spooled from a compressed file; none for stdin and pipes
        /// (backing names then resolve from the current folder; data file names cannot).
        dir: Option<PathBuf>,
    },
}

impl Input {
    pub fn kind(&self) -> Kind {
        match self {
            Input::Stream(_) => Kind::Stream,
            Input::File { kind, .. } => *kind,
        }
    }

    /// The bytes of a random-access input, read by position: its file, or the spool a
    /// qcow2 arriving through a pipe or decompression is copied into as reads need it.
    pub fn host(&self) -> Result<Host> {
        match self {
            Input::Stream(_) => Err(Error::InvalidInput(
                "an e2i stream is read front to back, not by position".into(),
            )),
            Input::File {
                spooled: Some(Spooled::Qcow2(s)),
                ..
            } => Ok(Host::Spool(Arc::clone(s))),
            Input::File { path, .. } => Ok(Host::File(
                FileSource::open(path, 0)?,
                ObjectId::of_path(path).ok(),
            )),
        }
    }

    /// The folder a qcow2's relative backing and data file names resolve against (see
    /// [`Input::File`]).
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Input::Stream(_) => None,
            Input::File { dir, .. } => dir.as_deref(),
        }
    }
}

/// A random-access input's bytes ([`Input::host`]).
pub enum Host {
    /// The input file itself, with its identity (a backing chain must not loop back to it).
    File(FileSource, Option<ObjectId>),
    /// A qcow2 image spooled as it is read.
    Spool(Arc<Spool>),
}

impl Host {
    /// The file's identity; none for a spool (no chain can name it).
    pub fn id(&self) -> Option<ObjectId> {
        match self {
            Host::File(_, id) => *id,
            Host::Spool(_) => None,
        }
    }
}

impl ReadAt for Host {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        match self {
            Host::File(f, _) => f.read_at(buf, offset),
            Host::Spool(s) => s.read_at(buf, offset),
        }
    }
    fn size(&self) -> u64 {
        match self {
            Host::File(f, _) => f.size(),
            Host::Spool(s) => s.size(),
        }
    }
    fn reaches(&self, end: u64) -> Result<bool> {
        match self {
            Host::File(f, _) => f.reaches(end),
            Host::Spool(s) => s.reaches(end),
        }
    }
    fn data_region(&self, offset: u64) -> Result<Option<std::ops::Range<u64>>> {
        match self {
            Host::File(f, _) => f.data_region(offset),
            Host::Spool(s) => s.data_region(offset),
        }
    }
    fn will_need(&self, offset: u64, len: u64) {
        match self {
            Host::File(f, _) => f.will_need(offset, len),
            Host::Spool(s) => s.will_need(offset, len),
        }
    }
}

const PEEK: usize = 2048;

/// Read up to `PEEK` bytes for detection and hand back a reader that replays them.
fn peek(mut r: Box<dyn Read + Send>) -> Result<(Vec<u8>, Box<dyn Read + Send>)> {
    let mut head = vec![0u8; PEEK];
    let mut n = 0;
    while n < PEEK {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            // k is at most what is left of `head`.
            Ok(k) => n = n.saturating_add(k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io_at("read", n as u64, e)),
        }
    }
    head.truncate(n);
    let replay: Box<dyn Read + Send> = Box::new(Cursor::new(head.clone()).chain(r));
    Ok((head, replay))
}

fn wrapping(head: &[u8]) -> Wrapping {
    if head.starts_with(&[0x1f, 0x8b]) {
        Wrapping::Gzip
    } else if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        Wrapping::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Wrapping::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Wrapping::Zstd
    } else {
        Wrapping::None
    }
}

/// The compression `head` (a file's first bytes) starts with, by name: "gzip", "bzip2",
/// "xz", "zstd".
pub fn compression_name(head: &[u8]) -> Option<&'static str> {
    compression_of(wrapping(head))
}

/// The name of a wrapping ("gzip", …); `None` for none.
fn compression_of(w: Wrapping) -> Option<&'static str> {
    match w {
        Wrapping::None => None,
        Wrapping::Gzip => Some("gzip"),
        Wrapping::Bzip2 => Some("bzip2"),
        Wrapping::Xz => Some("xz"),
        Wrapping::Zstd => Some("zstd"),
    }
}

/// Decompress `r` as `w` (anything but [`Wrapping::None`]); concatenated members or frames
/// are read as one stream, as `zcat`, `bzcat`, `xzcat` and `zstdcat` read them.
pub fn decompress(r: Box<dyn Read + Send>, w: Wrapping) -> Result<Box<dyn Read + Send>> {
    let Some(name) = compression_of(w) else {
        return Ok(r);
    };
    let ended = Arc::new(AtomicBool::new(false));
    let r: Box<dyn Read + Send> = Box::new(EndSeen {
        inner: r,
        ended: Arc::clone(&ended),
    });
    let d: Box<dyn Read + Send> = match w {
        Wrapping::None => r,
        Wrapping::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Wrapping::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        Wrapping::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        Wrapping::Zstd => Box::new(ZstdFrames::new(BufReader::new(r))?),
    };
    Ok(Box::new(Decoding {
        inner: d,
        name,
        ended,
    }))
}

/// The compressed bytes, noting when they end.
struct EndSeen {
    inner: Box<dyn Read + Send>,
    ended: Arc<AtomicBool>,
}

impl Read for EndSeen {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended.store(true, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// A decompressor whose errors say what they mean: the compressed data is cut short or
/// damaged, with the decoder's first words (each decoder words it its own way, zstd's with
/// debug dumps of nested errors: "BlockContentReadError(Error { kind: UnexpectedEof …").
struct Decoding {
    inner: Box<dyn Read + Send>,
    name: &'static str,
    ended: Arc<AtomicBool>,
}

impl Read for Decoding {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                return e;
            }
            let text = e.to_string();
            let first = text
                .split(['(', ':'])
                .next()
                .map_or("", str::trim)
                .to_string();
            let name = self.name;
            let what = if self.ended.load(Ordering::Relaxed) {
                format!("the {name} data is cut short or damaged near its end ({first})")
            } else {
                format!("the {name} data is damaged ({first})")
            };
            io::Error::new(io::ErrorKind::InvalidData, what)
        })
    }
}

/// A zstd stream of one or more frames (ruzstd decodes one frame at a time).
struct ZstdFrames<R: BufRead> {
    cur: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(r: R) -> Result<Self> {
        let d = ruzstd::decoding::StreamingDecoder::new(r).map_err(zstd_error)?;
        Ok(ZstdFrames { cur: Some(d) })
    }
}

fn zstd_error(e: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("zstd: {e}"))
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(d) = self.cur.as_mut() else {
                return Ok(0);
            };
            let n = d.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This frame is over: another may follow.
            let Some(d) = self.cur.take() else {
                return Ok(0);
            };
            let (mut r, dec) = d.into_parts();
            // ruzstd reads a frame's content checksum but does not compare it: a damaged
            // frame decoded to other bytes and the conversion ended with exit 0.
            if let (Some(stored), Some(decoded)) =
                (dec.get_checksum_from_data(), dec.get_calculated_checksum())
                && stored != decoded
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "frame checksum {stored:#010x} does not match the data's {decoded:#010x}"
                    ),
                ));
            }
            if r.fill_buf()?.is_empty() {
                return Ok(0);
            }
            let next = ruzstd::decoding::StreamingDecoder::new_with_decoder(r, dec)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            self.cur = Some(next);
        }
    }
}

/// The files a qcow2 input reads besides itself (both empty for any other input, or a
/// chain that cannot be opened: reading the input reports that).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChainFiles {
    /// The backing files it reads through to, nearest first. A compressed or piped qcow2
    /// is read from its spooled copy, whose backing names resolve where the original's do:
    /// the output layer, which sees only the original, cannot find them.
    pub backing: Vec<PathBuf>,
    /// The external data files it reads its data from, the top image's first.
    pub data: Vec<PathBuf>,
}

impl ChainFiles {
    /// Each file with the role messages name it by: what an OUTPUT must not overlap.
    pub fn reads(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        let backing = self
            .backing
            .iter()
            .map(|p| ("INPUT's backing file", p.as_path()));
        backing.chain(self.data.iter().map(|p| ("INPUT's data file", p.as_path())))
    }
}

/// The backing and data files of a qcow2 input, from one opening of its chain.
pub fn chain_files(inp: &Input) -> ChainFiles {
    qcow2_chain(inp)
        .map(|q| ChainFiles {
            backing: q.backing_files().to_vec(),
            data: q.data_files(),
        })
        .unwrap_or_default()
}

/// A qcow2 input's chain, opened as reading it would (`None` for any other input, or a
/// chain that cannot be opened).
fn qcow2_chain(inp: &Input) -> Option<crate::qcow2::chain::Qcow2Image<Host>> {
    if inp.kind() != Kind::Qcow2 {
        return None;
    }
    let src = inp.host().ok()?;
    crate::qcow2::chain::Qcow2Image::open_layers(src, inp.dir(), None).ok()
}

/// What the input says about itself ([`crate::mark`]): its filesystem's UUID and
/// superblock, and whether it is scrambled. Reads headers and the superblock only; what
/// cannot be read here yields no facts (the conversion then says what is wrong).
pub fn facts(input: &Input) -> ImageFacts {
    let mut raw = [0u8; SUPERBLOCK_SIZE];
    let mut superblock_at = |src: &dyn ReadAt, at: u64| {
        (src.read_at(&mut raw, at).ok() == Some(SUPERBLOCK_SIZE)).then_some(raw)
    };
    match input {
        Input::Stream(r) => {
            // The superblock comes later, in the data: the flag is the stream's word.
            let mut f = ImageFacts {
                uuid: Some(r.header.uuid),
                ..ImageFacts::default()
            };
            if r.header.is_scrambled() {
                f.add(Evidence::StreamFlag);
            }
            f
        }
        Input::File { kind, dir, .. } => {
            let Ok(file) = input.host() else {
                return ImageFacts::default();
            };
            match kind {
                Kind::Normal => {
                    let mut hb = [0u8; normal::HEADER_SIZE];
                    let header = file
                        .read_at(&mut hb, 0)
                        .ok()
                        .and_then(|n| normal::Header::parse(&hb[..n]).ok());
                    let Some(h) = header else {
                        return ImageFacts::default();
                    };
                    match superblock_at(&file, h.fs_blocksize.bytes()) {
                        Some(sb) => h.image_facts(&sb),
                        None => ImageFacts::default(),
                    }
                }
                Kind::Raw => superblock_at(&file, SUPERBLOCK_OFFSET)
                    .map(|sb| ImageFacts::from_superblock(&sb))
                    .unwrap_or_default(),
                Kind::Qcow2 => {
                    let id = file.id();
                    let Ok(q) = crate::qcow2::Qcow2Image::open_layers(file, dir.as_deref(), id)
                    else {
                        return ImageFacts::default();
                    };
                    let mut f = superblock_at(&q, SUPERBLOCK_OFFSET)
                        .map(|sb| ImageFacts::from_superblock(&sb))
                        .unwrap_or_default();
                    if q.header().e2i_flags() & crate::mark::QCOW2_FLAG_SCRAMBLED != 0 {
                        f.add(Evidence::Qcow2Extension);
                    }
                    f
                }
                Kind::Stream => ImageFacts::default(),
            }
        }
    }
}

/// Detect the format from the first bytes (after decompression).
pub fn detect(head: &[u8]) -> Option<Kind> {
    if head.starts_with(&stream::MAGIC) {
        return Some(Kind::Stream);
    }
    if crate::qcow2::is_qcow2(head) {
        return Some(Kind::Qcow2);
    }
    if le::get_u32(head, 0) == Some(crate::normal::E2IMAGE_MAGIC) {
        return Some(Kind::Normal);
    }
    // s_magic of a superblock at byte 1024.
    if le::get_u16(head, 1024 + 0x38) == Some(0xEF53) {
        return Some(Kind::Raw);
    }
    None
}

/// A spooled copy of an input, in a file with no name (O_TMPFILE, or unlinked as soon as
/// it is made), so that nothing is left behind however the process ends — SIGKILL and the
/// OOM killer included (a named spool file outlived them: possibly a whole decompressed disk
/// in the temporary folder).
#[derive(Debug)]
pub enum Spooled {
    /// A raw filesystem or normal image, copied up to its end before it is read, through
    /// `/proc/self/fd/N` ([`Spooled::path`]).
    Whole(File),
    /// A qcow2 image, copied as far as reads reach into it.
    Qcow2(Arc<Spool>),
}

impl Spooled {
    /// A name that opens the spooled file while it is held (for a qcow2, holding only what
    /// was read so far).
    pub fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Spooled::Whole(f) => f.as_raw_fd(),
            Spooled::Qcow2(s) => s.file.as_raw_fd(),
        };
        PathBuf::from(format!("/proc/self/fd/{fd}"))
    }
}

/// Bytes taken from the input at a time (a fixed buffer: memory does not grow with the
/// input).
const SPOOL_CHUNK: usize = 1 << 20;

/// Read from `r` until `buf` is full or the input ends: the bytes read, or the error with
/// the bytes read before it.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> std::result::Result<usize, (usize, io::Error)> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            // k is at most what is left of `buf`.
            Ok(k) => n = n.saturating_add(k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((n, e)),
        }
    }
    Ok(n)
}

/// Write `buf`, the input's bytes from `pos`, into `file`, leaving all-zero blocks as holes.
fn store(file: &File, buf: &[u8], pos: u64) -> Result<()> {
    let mut i = 0;
    while i < buf.len() {
        let j = i.saturating_add(4096).min(buf.len());
        if !crate::pieces::block_is_zero(&buf[i..j]) {
            let at = pos
                .checked_add(i as u64)
                .ok_or_else(|| Error::InvalidInput("the input is too large to spool".into()))?;
            crate::io::pwrite_full(file, &buf[i..j], at)
                .map_err(|e| Error::temp_file_at("write", at, e))?;
        }
        i = j;
    }
    Ok(())
}

/// A qcow2 image that cannot be read by position (stdin, a pipe, a compressed file), copied
/// into a temporary file without a name as reads reach into it: a read pulls from the
/// input until the bytes it asks for are copied (or the input ends), and the bytes past
/// the furthest read are never taken. Its tables may point anywhere, so nothing short of
/// reading them says how far that is; copying the whole input first filled `TMPDIR` with
/// whatever followed the image (and decompressed all of it before anything else began).
/// When the spool is dropped the input is closed: a writer still writing gets EPIPE, as
/// with `head`. Reads from several threads share one pull, under a lock.
pub struct Spool {
    file: File,
    /// Bytes copied so far: the file is final below this, and it only grows (read without
    /// the lock; stored after the bytes are written).
    have: AtomicU64,
    pull: Mutex<Pull>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("have", &self.have.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Pull {
    /// The input, until it ends or fails.
    input: Option<Box<dyn Read + Send>>,
    buf: Box<[u8]>,
    /// How the input failed, repeated to every read that needs more of it.
    failed: Option<Failed>,
}

/// A failure to copy the input, kept to be reported again (neither `Error` nor
/// `io::Error` is `Clone`).
enum Failed {
    /// Reading the input (`temp`: the temporary file) at `at`.
    Io {
        temp: bool,
        op: &'static str,
        at: Option<u64>,
        os: Option<i32>,
        kind: io::ErrorKind,
        text: String,
    },
    Other(String),
}

impl Failed {
    fn of(e: &Error) -> Failed {
        let io = |temp, op, at: &Option<u64>, e: &io::Error| Failed::Io {
            temp,
            op,
            at: *at,
            os: e.raw_os_error(),
            kind: e.kind(),
            text: e.to_string(),
        };
        match e {
            Error::Io { op, offset, source } => io(false, op, offset, source),
            Error::TempFile {
                op, offset, error, ..
            } => io(true, op, offset, error),
            e => Failed::Other(e.to_string()),
        }
    }

    fn error(&self) -> Error {
        match self {
            Failed::Other(text) => Error::InvalidInput(text.clone()),
            Failed::Io {
                temp,
                op,
                at,
                os,
                kind,
                text,
            } => {
                let e = match os {
                    Some(c) => io::Error::from_raw_os_error(*c),
                    None => io::Error::new(*kind, text.clone()),
                };
                match (temp, at) {
                    (true, Some(at)) => Error::temp_file_at(op, *at, e),
                    (true, None) => Error::temp_file(op, e),
                    (false, Some(at)) => Error::io_at(op, *at, e),
                    (false, None) => Error::io(op, e),
                }
            }
        }
    }
}

/// The lock's contents even if a reader panicked holding it: `have` is stored only after
/// the bytes below it are written, so what it says stays true.
fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Spool {
    /// A spool of `input`, nothing copied yet.
    fn new(input: Box<dyn Read + Send>) -> Result<Spool> {
        let file = tempfile::tempfile().map_err(|e| Error::temp_file("create", e))?;
        Ok(Spool {
            file,
            have: AtomicU64::new(0),
            pull: Mutex::new(Pull {
                input: Some(input),
                buf: vec![0u8; SPOOL_CHUNK].into_boxed_slice(),
                failed: None,
            }),
        })
    }

    /// Copy the input until `end` bytes are in the file or it ends; returns how many are.
    fn pull_to(&self, end: u64) -> Result<u64> {
        let have = self.have.load(Ordering::Acquire);
        if have >= end {
            return Ok(have);
        }
        let mut guard = relock(&self.pull);
        let Pull { input, buf, failed } = &mut *guard;
        loop {
            // Stored only under the lock, which this thread holds.
            let have = self.have.load(Ordering::Acquire);
            if have >= end {
                return Ok(have);
            }
            if let Some(f) = failed {
                return Err(f.error());
            }
            let Some(r) = input.as_mut() else {
                return Ok(have);
            };
            match copy_piece(r, buf, &self.file, have) {
                Ok((next, ended)) => {
                    self.have.store(next, Ordering::Release);
                    if ended {
                        // Closed at once: nothing more is read from it.
                        *input = None;
                    }
                }
                Err(e) => {
                    *failed = Some(Failed::of(&e));
                    *input = None;
                    return Err(e);
                }
            }
        }
    }
}

/// Copy the next piece of `r` into `file` at `have`: the bytes now copied, and whether
/// the input ended.
fn copy_piece(r: &mut dyn Read, buf: &mut [u8], file: &File, have: u64) -> Result<(u64, bool)> {
    let n =
        fill(r, buf).map_err(|(n, e)| Error::io_at("read", have.saturating_add(n as u64), e))?;
    let next = have
        .checked_add(n as u64)
        .ok_or_else(|| Error::InvalidInput("the input is too large to spool".into()))?;
    store(file, &buf[..n], have)?;
    // Trailing zero blocks were not written: the file's length says where the input ends.
    file.set_len(next)
        .map_err(|e| Error::temp_file_at("truncate", next, e))?;
    Ok((next, n < buf.len()))
}

impl ReadAt for Spool {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let have = self.pull_to(offset.saturating_add(buf.len() as u64))?;
        let n =
            usize::try_from(have.saturating_sub(offset)).map_or(buf.len(), |n| n.min(buf.len()));
        let got = crate::io::pread_full(&self.file, &mut buf[..n], offset)
            .map_err(|e| Error::temp_file_at("read", offset, e))?;
        // The file is `have` bytes long (set_len): nothing reads short below that.
        buf[got..n].fill(0);
        Ok(n)
    }

    /// Reads the whole input to learn it (what errors report); [`Self::reaches`] reads no
    /// further than it must. A failed input's size is what was copied of it: the failure is
    /// the next read's error.
    fn size(&self) -> u64 {
        self.pull_to(u64::MAX)
            .unwrap_or_else(|_| self.have.load(Ordering::Acquire))
    }

    fn reaches(&self, end: u64) -> Result<bool> {
        Ok(self.pull_to(end)? >= end)
    }
}

/// How many bytes of an input of `kind` that starts with `first` are ever read: a raw
/// filesystem's end (its superblock's size), a normal image's (its layout's; the reader
/// accepts a longer file and reads no further). `None`: all of it (a qcow2 is not spooled
/// here: its tables may point anywhere, and [`Spool`] copies it as far as reads reach).
fn needed_len(kind: Kind, first: &[u8]) -> Option<u64> {
    let superblock_at = |at: u64| {
        let at = usize::try_from(at).ok()?;
        first.get(at..)?.first_chunk::<SUPERBLOCK_SIZE>()
    };
    match kind {
        Kind::Raw => {
            let sb =
                crate::ext4::Superblock::parse(superblock_at(SUPERBLOCK_OFFSET)?, None).ok()?;
            Some(sb.fs_bytes())
        }
        Kind::Normal => {
            let h = normal::Header::parse(first.get(..normal::HEADER_SIZE)?).ok()?;
            let bs = h.fs_blocksize;
            let sb = crate::ext4::Superblock::parse(superblock_at(bs.bytes())?, Some(bs)).ok()?;
            Some(normal::Layout::new(&sb).ok()?.size)
        }
        Kind::Stream | Kind::Qcow2 => None,
    }
}

/// Copy `r`, an input of `kind` (a raw filesystem or normal image), into a new temporary
/// file without a name, leaving all-zero blocks as holes. Bytes past what is ever read of
/// it ([`needed_len`]) are read and dropped: a small compressed file that inflates to far
/// more than its image (a gzip bomb, a dd of a partition larger than its filesystem) does
/// not fill `TMPDIR`.
fn spool(mut r: Box<dyn Read + Send>, kind: Kind) -> Result<Spooled> {
    let mut keep = u64::MAX;
    let file = tempfile::tempfile().map_err(|e| Error::temp_file("create", e))?;
    let mut buf = vec![0u8; SPOOL_CHUNK];
    let mut pos = 0u64;
    loop {
        let n = fill(&mut r, &mut buf)
            .map_err(|(n, e)| Error::io_at("read", pos.saturating_add(n as u64), e))?;
        if n == 0 {
            break;
        }
        if pos == 0 {
            // The first MiB holds every header and superblock needed_len reads.
            keep = needed_len(kind, &buf[..n]).unwrap_or(u64::MAX);
        }
        // The part of the buffer below `keep`.
        let kept = usize::try_from(keep.saturating_sub(pos)).map_or(n, |k| k.min(n));
        store(&file, &buf[..kept], pos)?;
        pos = pos
            .checked_add(n as u64)
            .ok_or_else(|| Error::InvalidInput("the input is too large to spool".into()))?;
        if n < buf.len() {
            break;
        }
    }
    let len = pos.min(keep);
    file.set_len(len)
        .map_err(|e| Error::io_at("truncate", len, e))?;
    Ok(Spooled::Whole(file))
}

/// Open `path` (`-` for stdin) and detect its format.
pub fn open(path: &Path) -> Result<Input> {
    let stdin = path == Path::new("-");
    // Only a plain file or block device can be read by position in place; stdin, FIFOs
    // (process substitution: /dev/fd/N) and character devices are read front to back.
    let (raw, seekable): (Box<dyn Read + Send>, bool) = if stdin {
        crate::io::grow_pipe(io::stdin());
        (Box::new(io::stdin()), false)
    } else {
        let f = File::open(path).map_err(|e| Error::io("open", e))?;
        let meta = f.metadata().map_err(|e| Error::io("stat", e))?;
        let seekable = {
            use std::os::unix::fs::FileTypeExt;
            meta.is_file() || meta.file_type().is_block_device()
        };
        if !seekable {
            crate::io::grow_pipe(&f);
        }
        (Box::new(BufReader::with_capacity(1 << 20, f)), seekable)
    };
    let (head, r) = peek(raw)?;
    let wrap = wrapping(&head);
    let (head, r) = match wrap {
        Wrapping::None => (head, r),
        w => peek(decompress(r, w)?)?,
    };
    let Some(kind) = detect(&head) else {
        return Err(Error::InvalidInput(if head.is_empty() {
            "empty input: nothing to convert".into()
        } else {
            "unrecognised input: not an e2i stream, qcow2, e2image or ext2/3/4 image (gzip, bzip2, xz and zstd wrapping are detected)".into()
        }));
    };
    if kind == Kind::Stream {
        return Ok(Input::Stream(StreamReader::open(r)?));
    }
    let dir = (!stdin && seekable).then(|| crate::qcow2::chain::folder_of(path).to_path_buf());
    if !seekable || wrap != Wrapping::None {
        let tmp = match kind {
            Kind::Qcow2 => Spooled::Qcow2(Arc::new(Spool::new(r)?)),
            _ => spool(r, kind)?,
        };
        return Ok(Input::File {
            kind,
            path: tmp.path(),
            spooled: Some(tmp),
            dir,
        });
    }
    Ok(Input::File {
        kind,
        path: path.to_path_buf(),
        spooled: None,
        dir,
    })
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)] // tests compute expected values freely
mod tests {
    use super::*;
    use std::io::Write;

    /// An overlay with its own data file on a base with another: both backing files and
    /// both data files, top first; nothing for a raw filesystem image.
    #[test]
    fn chain_files_names_backing_and_data_files() {
        let d = tempfile::tempdir().unwrap();
        let qemu_img = |args: &[&str]| {
            let st = std::process::Command::new("qemu-img")
                .current_dir(d.path())
                .args(args)
                .status()
                .expect("qemu-img is needed by this test (ci/setup.sh installs it)");
            assert!(st.success(), "qemu-img {args:?}");
        };
        qemu_img(&["create", "-q", "-f", "raw", "raw.img", "1M"]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=base.data",
            "base.qcow2",
            "1M",
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=top.data",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ]);
        let top = open(&d.path().join("top.qcow2")).unwrap();
        let p = |n: &str| d.path().join(n);
        let got = chain_files(&top);
        assert_eq!(got.backing, [p("base.qcow2")]);
        assert_eq!(got.data, [p("top.data"), p("base.data")]);
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(p("raw.img"))
            .status()
            .unwrap();
        assert!(st.success(), "mkfs.ext4");
        let raw = open(&p("raw.img")).unwrap();
        assert_eq!(chain_files(&raw), ChainFiles::default());
    }

    #[test]
    fn decompresses_every_wrapping() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for (cmd, args) in [
            ("gzip", &["-c"][..]),
            ("bzip2", &["-c"]),
            ("xz", &["-c"]),
            ("zstd", &["-c", "-q"]),
        ] {
            let Ok(mut child) = std::process::Command::new(cmd)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
            else {
                panic!("{cmd} is needed by this test (ci/setup.sh installs it)");
            };
            let mut stdin = child.stdin.take().unwrap();
            let d2 = data.clone();
            let t = std::thread::spawn(move || stdin.write_all(&d2).unwrap());
            let mut packed = Vec::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_end(&mut packed)
                .unwrap();
            t.join().unwrap();
            assert!(child.wait().unwrap().success());
            // Two concatenated members or frames read as one stream.
            let twice = [packed.clone(), packed].concat();
            let w = wrapping(&twice);
            assert_ne!(w, Wrapping::None, "{cmd}");
            let mut out = Vec::new();
            decompress(Box::new(Cursor::new(twice)), w)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert!(out == [data.clone(), data.clone()].concat(), "{cmd}");
        }
    }

    /// A reader that counts what is taken from it.
    struct Counted(Cursor<Vec<u8>>, Arc<AtomicU64>);

    impl Read for Counted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }
    }

    /// The spool reads as the input does, from several threads at once, takes no more of
    /// the input than the furthest read needs (in whole pieces), and learns the input's end
    /// only when a read or `reaches` goes there.
    #[test]
    fn spool_pulls_what_reads_need() {
        let len = 5 * SPOOL_CHUNK + 12_345;
        let mut data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
        // Zero blocks stay holes and read back as zeros.
        data[SPOOL_CHUNK..SPOOL_CHUNK + 3 * 4096].fill(0);
        let taken = Arc::new(AtomicU64::new(0));
        let s = Spool::new(Box::new(Counted(
            Cursor::new(data.clone()),
            Arc::clone(&taken),
        )))
        .unwrap();
        let mut b = [0u8; 100];
        assert_eq!(s.read_at(&mut b, 10).unwrap(), 100);
        assert_eq!(b[..], data[10..110]);
        // One piece, and the peek of the next.
        assert_eq!(taken.load(Ordering::Relaxed), SPOOL_CHUNK as u64);
        assert!(s.reaches(2 * SPOOL_CHUNK as u64).unwrap());
        assert_eq!(taken.load(Ordering::Relaxed), 2 * SPOOL_CHUNK as u64);
        std::thread::scope(|sc| {
            for t in 0..4u64 {
                let (s, data) = (&s, &data);
                sc.spawn(move || {
                    let mut b = vec![0u8; 70_000];
                    let mut at = t * 1_000_003 % (len as u64);
                    for _ in 0..40 {
                        let n = s.read_at(&mut b, at).unwrap();
                        let a = (at as usize).min(len);
                        let want = &data[a..(a + b.len()).min(len)];
                        assert_eq!(n, want.len());
                        assert!(b[..n] == *want);
                        at = (at * 7 + 999_983) % (len as u64 + 1000);
                    }
                });
            }
        });
        // Past the end: short, then nothing, as a file reads.
        assert_eq!(s.read_at(&mut b, len as u64 - 40).unwrap(), 40);
        assert_eq!(s.read_at(&mut b, len as u64 + 5).unwrap(), 0);
        assert!(!s.reaches(len as u64 + 1).unwrap());
        assert!(s.reaches(len as u64).unwrap());
        assert_eq!(s.size(), len as u64);
        assert_eq!(taken.load(Ordering::Relaxed), len as u64);
        // The input is closed once it ended.
        assert!(relock(&s.pull).input.is_none());
    }

    /// A failing input fails every read that needs more of it, with the same error; what
    /// was copied before still reads.
    #[test]
    fn spool_repeats_the_inputs_failure() {
        let data = vec![7u8; SPOOL_CHUNK + 10];
        let packed = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &data).unwrap();
            e.finish().unwrap()
        };
        // Cut inside the second piece's worth of compressed data.
        let cut = packed[..packed.len() - 8].to_vec();
        let r = decompress(Box::new(Cursor::new(cut)), Wrapping::Gzip).unwrap();
        let s = Spool::new(r).unwrap();
        let mut b = [0u8; 16];
        assert_eq!(s.read_at(&mut b, 0).unwrap(), 16);
        let text = |e: Error| match e {
            Error::Io { op, offset, source } => format!("{op} {offset:?} {source}"),
            e => panic!("{e:?}"),
        };
        let e1 = text(s.read_at(&mut b, SPOOL_CHUNK as u64).unwrap_err());
        let e2 = text(s.reaches(SPOOL_CHUNK as u64 + 5).unwrap_err());
        assert_eq!(e1, e2);
        assert!(e1.contains("gzip data is cut short"), "{e1}");
        assert_eq!(s.read_at(&mut b, 100).unwrap(), 16);
    }

    #[test]
    fn detects_magics() {
        assert_eq!(detect(b"E2ISTRM\0rest"), Some(Kind::Stream));
        assert_eq!(detect(b"QFI\xfb\0\0\0\x02"), Some(Kind::Qcow2));
        assert_eq!(detect(&[0x10, 0xb7, 0x2b, 0x7f]), Some(Kind::Normal));
        let mut raw = vec![0u8; 2048];
        raw[1024 + 0x38] = 0x53;
        raw[1024 + 0x39] = 0xEF;
        assert_eq!(detect(&raw), Some(Kind::Raw));
        assert_eq!(detect(b"hello"), None);
    }
}
