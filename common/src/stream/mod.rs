//! The e2i stream: a compact, verifiable pipe format between the tools.
//!
//! Layout (all integers little-endian; see `docs/stream-format.md`):
//! header (64 bytes) · extent map (16 bytes per extent) · checksum of header+map (32 bytes) ·
//! the blocks of every data extent in map order · trailer (64 bytes) with counts and the
//! checksum of header, map and data. Holes are never hashed or sent, so the cost follows the
//! metadata.
//!
//! Version 2 (written by default) sends each data extent as segments, each either a run of
//! blocks with their bytes or a run of all-zero blocks without them, and checksums with
//! BLAKE3: the capture reads its source once and finds the zeros as it goes. Version 1 (read
//! always, written on request for older readers) sends data extents as bare bytes, marks
//! all-zero runs in the map (so the capture reads twice), and checksums with SHA-256.

// Every number here comes from a stream or feeds one: no unchecked arithmetic.
#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::blockmap::BlockRun;
use crate::bytes::le;
use crate::error::CorruptKind;
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

pub const MAGIC: [u8; 8] = *b"E2ISTRM\0";
pub const TRAILER_MAGIC: [u8; 8] = *b"E2IEND\0\0";
/// The version written by default.
pub const VERSION: Version = Version::V2;
pub const HEADER_LEN: usize = 64;
pub const EXTENT_LEN: usize = 16;
pub const TRAILER_LEN: usize = 64;
/// Extent lengths are stored in 7 bytes.
pub const MAX_EXTENT_LEN: u64 = (1 << 56) - 1;

/// Byte offsets of the header fields.
mod hdr {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const HEADER_LEN: usize = 10;
    pub const FLAGS: usize = 12;
    pub const INCOMPAT: usize = 16;
    pub const BLOCK_SIZE: usize = 20;
    pub const BLOCKS_COUNT: usize = 24;
    pub const UUID: usize = 32;
    pub const EXTENTS: usize = 48;
}

/// Byte offsets of the trailer fields.
mod trl {
    pub const MAGIC: usize = 0;
    pub const EXTENTS: usize = 8;
    pub const DATA_BLOCKS: usize = 16;
    pub const ZERO_BLOCKS: usize = 24;
    pub const DIGEST: usize = 32;
}

/// Header flags a reader may ignore (informational).
pub mod flags {
    /// The capture included regular-file data (`-a`).
    pub const ALL_DATA: u32 = 1 << 0;
    /// Names and private strings were scrambled (`-s`).
    pub const SCRAMBLED: u32 = 1 << 1;
    /// Every flag this version knows.
    pub const KNOWN: u32 = ALL_DATA | SCRAMBLED;
}

/// The parts of a stream, in order (where a truncation happened).
pub use crate::error::StreamPart as Part;

/// A stream format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// Data extents as bare bytes, zero runs in the map, SHA-256.
    V1,
    /// Data extents as segments of data or zero blocks, BLAKE3.
    #[default]
    V2,
}

impl Version {
    pub fn number(self) -> u16 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }

    fn from_number(n: u16) -> Option<Self> {
        match n {
            1 => Some(Version::V1),
            2 => Some(Version::V2),
            _ => None,
        }
    }

    /// The checksum this version uses.
    pub fn algorithm(self) -> Algorithm {
        match self {
            Version::V1 => Algorithm::Sha256,
            Version::V2 => Algorithm::Blake3,
        }
    }
}

/// A stream's checksum algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Blake3,
}

impl Algorithm {
    /// Its name as the tools print it (`sha256`, `blake3`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        }
    }
}

/// A stream's verified checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub algorithm: Algorithm,
    pub bytes: [u8; 32],
}

/// The running checksum of a stream.
#[derive(Clone)]
enum Hasher {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    fn new(v: Version) -> Self {
        match v.algorithm() {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => sha2::Digest::update(h, b),
            Hasher::Blake3(h) => {
                h.update(b);
            }
        }
    }

    fn digest(&self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                bytes: h.clone().finalize().into(),
            },
            Hasher::Blake3(h) => Digest {
                algorithm: Algorithm::Blake3,
                bytes: *h.finalize().as_bytes(),
            },
        }
    }
}

/// Filesystem geometry and capture flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub flags: u32,
    /// Flags a reader must understand to proceed; none are defined in versions 1 and 2.
    pub incompat: u32,
    pub block_size: BlockSize,
    pub blocks_count: u64,
    pub uuid: [u8; 16],
    pub extents: u64,
}

/// What an extent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `len` blocks follow in the data section: as bytes (version 1), as segments of data
    /// and zero blocks (version 2).
    Data,
    /// `len` selected blocks that are all zeros; no data is sent.
    Zero,
}

/// A run of selected blocks: `len` blocks from block `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: FsBlock,
    pub len: u64,
    pub kind: Kind,
}

impl Extent {
    /// One past the last block (saturating: the reader checked that it lies in the image).
    pub fn end(&self) -> FsBlock {
        self.start.saturating_add(self.len)
    }

    /// Its blocks, as a run of the block map.
    pub fn run(&self) -> BlockRun {
        BlockRun::new(self.start, self.len)
    }
}

impl Header {
    /// The capture was scrambled (`-s`, or made from a scrambled image).
    pub fn is_scrambled(&self) -> bool {
        self.flags & flags::SCRAMBLED != 0
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[hdr::MAGIC..hdr::MAGIC + 8].copy_from_slice(&MAGIC);
        le::set_u16(&mut b, hdr::VERSION, self.version.number());
        le::set_u16(
            &mut b,
            hdr::HEADER_LEN,
            u16::try_from(HEADER_LEN).unwrap_or(u16::MAX),
        );
        le::set_u32(&mut b, hdr::FLAGS, self.flags);
        le::set_u32(&mut b, hdr::INCOMPAT, self.incompat);
        le::set_u32(&mut b, hdr::BLOCK_SIZE, self.block_size.get());
        le::set_u64(&mut b, hdr::BLOCKS_COUNT, self.blocks_count);
        b[hdr::UUID..hdr::UUID + 16].copy_from_slice(&self.uuid);
        le::set_u64(&mut b, hdr::EXTENTS, self.extents);
        b
    }

    /// Check what a reader relies on: image size, extent count (the block size is valid
    /// by its type).
    fn check(&self) -> Result<()> {
        let Header {
            block_size,
            blocks_count,
            extents,
            ..
        } = *self;
        if block_size.bytes_of(blocks_count).is_none() {
            return Err(CorruptKind::StreamTooLarge {
                blocks_count,
                block_size: block_size.get(),
            }
            .into());
        }
        if extents > blocks_count {
            return Err(CorruptKind::StreamExtentCount {
                extents,
                blocks_count,
            }
            .into());
        }
        Ok(())
    }

    fn decode(b: &[u8; HEADER_LEN]) -> Result<Self> {
        if b[hdr::MAGIC..hdr::MAGIC + 8] != MAGIC {
            return Err(CorruptKind::StreamMagic.into());
        }
        let number = le::u16(b, hdr::VERSION);
        let version = Version::from_number(number).ok_or_else(|| {
            Error::Unsupported(format!(
                "e2i stream: version {number} (this reader understands versions 1 and 2)"
            ))
        })?;
        let len = le::u16(b, hdr::HEADER_LEN);
        if usize::from(len) != HEADER_LEN {
            return Err(CorruptKind::StreamHeaderLength { len }.into());
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[hdr::UUID..hdr::UUID + 16]);
        let raw_block_size = le::u32(b, hdr::BLOCK_SIZE);
        let block_size = BlockSize::new(raw_block_size).ok_or(CorruptKind::StreamBlockSize {
            block_size: raw_block_size,
        })?;
        let h = Header {
            version,
            flags: le::u32(b, hdr::FLAGS),
            incompat: le::u32(b, hdr::INCOMPAT),
            block_size,
            blocks_count: le::u64(b, hdr::BLOCKS_COUNT),
            uuid,
            extents: le::u64(b, hdr::EXTENTS),
        };
        if h.incompat != 0 {
            return Err(Error::Unsupported(format!(
                "e2i stream: needs features {:#x} this reader does not understand",
                h.incompat
            )));
        }
        h.check()?;
        Ok(h)
    }
}

impl Extent {
    /// The 16-byte record; the length must be at most [`MAX_EXTENT_LEN`].
    fn encode(&self) -> [u8; EXTENT_LEN] {
        let mut b = [0u8; EXTENT_LEN];
        le::set_u64(&mut b, 0, self.start.get());
        // Length in 7 bytes (far beyond any filesystem); byte 15 is the kind.
        le::set_u64(&mut b, 8, self.len & MAX_EXTENT_LEN);
        b[15] = match self.kind {
            Kind::Data => 1,
            Kind::Zero => 2,
        };
        b
    }

    /// Decode record `index`, which starts at stream byte `offset`.
    fn decode(b: &[u8; EXTENT_LEN], index: u64, offset: u64) -> Result<Self> {
        let kind = match b[15] {
            1 => Kind::Data,
            2 => Kind::Zero,
            kind => {
                return Err(CorruptKind::StreamExtentKind {
                    index,
                    offset,
                    kind,
                }
                .into());
            }
        };
        Ok(Extent {
            start: FsBlock(le::u64(b, 0)),
            len: le::u64(b, 8) & MAX_EXTENT_LEN,
            kind,
        })
    }
}

/// Counts kept in the trailer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Blocks sent with their bytes.
    pub data_blocks: u64,
    /// Selected blocks sent as zeros (zero extents, and zero segments of version 2).
    pub zero_blocks: u64,
}

/// Length of a version 2 segment header: a count of blocks, with [`SEGMENT_ZERO`] set for a
/// run of all-zero blocks (no bytes follow) and clear for data (the blocks' bytes follow).
pub const SEGMENT_LEN: usize = 8;
/// The zero flag of a segment header.
pub const SEGMENT_ZERO: u64 = 1 << 63;

/// A segment header.
fn segment(v: u64) -> [u8; SEGMENT_LEN] {
    let mut b = [0u8; SEGMENT_LEN];
    le::set_u64(&mut b, 0, v);
    b
}

/// Pieces of data at least this long go to the output directly; shorter ones (and segment
/// headers) are gathered into one write.
const DIRECT: usize = 64 << 10;
/// Gathered bytes are written once they reach this size.
const GATHER: usize = 1 << 20;

fn io_err(op: &'static str, offset: u64) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::io_at(op, offset, e)
}

/// Bytes written or read so far: counts of bytes that went through memory, so they stay
/// far below 2^64 and the additions below cannot saturate.
fn advance(pos: &mut u64, n: usize) {
    *pos = pos.saturating_add(n as u64);
}

/// Write all of `b` to `out`, `written` counting the bytes `out` accepted: a failed write
/// names the stream byte where it began (a short write followed by ENOSPC or EPIPE names
/// the first byte not taken, not the start of the gathered buffer). `out` must not buffer
/// (the writer gathers its own writes), or the position is that of its buffer.
fn send<W: Write>(out: &mut W, b: &[u8], written: &mut u64) -> Result<()> {
    let mut rest = b;
    while !rest.is_empty() {
        match out.write(rest) {
            Ok(0) => {
                return Err(Error::io_at(
                    "write",
                    *written,
                    io::ErrorKind::WriteZero.into(),
                ));
            }
            Ok(n) => {
                advance(written, n);
                rest = rest.get(n..).unwrap_or_default();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io_at("write", *written, e)),
        }
    }
    Ok(())
}

/// Writes a stream: header and map first, then the blocks of the data extents in map
/// order, then the trailer.
pub struct StreamWriter<W: Write> {
    out: W,
    version: Version,
    hash: Hasher,
    extents: Vec<Extent>,
    /// The data extent being written (`extents.len()` once all are written).
    cur: usize,
    /// The next block expected.
    at: FsBlock,
    /// All-zero blocks from `zero_from` not yet written as a segment (version 2).
    zeros: u64,
    zero_from: FsBlock,
    /// Gathered bytes not yet written (see [`DIRECT`]).
    buf: Vec<u8>,
    block_size: BlockSize,
    counts: Counts,
    written: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Write the header and the map. `extents` must be sorted, disjoint, non-empty runs
    /// inside the image; `header.version` chooses the format.
    pub fn new(out: W, mut header: Header, extents: Vec<Extent>) -> Result<Self> {
        header.extents = extents.len() as u64;
        let invalid = |what: String| Error::InvalidInput(format!("e2i stream writer: {what}"));
        header
            .check()
            .map_err(|e| invalid(format!("bad header: {e}")))?;
        let mut prev_end = FsBlock(0);
        for (i, e) in extents.iter().enumerate() {
            let end = e.start.checked_add(e.len);
            if e.len == 0
                || e.len > MAX_EXTENT_LEN
                || e.start < prev_end
                || end.is_none_or(|end| end.get() > header.blocks_count)
            {
                return Err(invalid(format!(
                    "extent {i} ({}+{}) is empty, unsorted or outside the image",
                    e.start, e.len
                )));
            }
            prev_end = e.end();
        }
        // Disjoint extents inside the image: the sum is at most its block count.
        let zero_extents = extents
            .iter()
            .filter(|e| e.kind == Kind::Zero)
            .fold(0u64, |a, e| a.saturating_add(e.len));
        let mut w = StreamWriter {
            out,
            version: header.version,
            hash: Hasher::new(header.version),
            extents,
            cur: 0,
            at: FsBlock(0),
            zeros: 0,
            zero_from: FsBlock(0),
            buf: Vec::with_capacity(GATHER),
            block_size: header.block_size,
            counts: Counts {
                data_blocks: 0,
                zero_blocks: zero_extents,
            },
            written: 0,
        };
        w.put(&header.encode())?;
        for i in 0..w.extents.len() {
            let rec = w.extents[i].encode();
            w.put(&rec)?;
        }
        // The map's own checksum lets a reader trust the layout before any data arrives;
        // it is not part of the running checksum.
        let map_sum = w.hash.digest().bytes;
        w.flush_buf()?;
        send(&mut w.out, &map_sum, &mut w.written)?;
        w.cur = w.next_data(0);
        w.at = w.extents.get(w.cur).map_or(FsBlock(0), |e| e.start);
        Ok(w)
    }

    /// The first data extent from index `i` (`extents.len()` if none).
    fn next_data(&self, i: usize) -> usize {
        self.extents
            .get(i..)
            .and_then(|rest| rest.iter().position(|e| e.kind == Kind::Data))
            .map_or(self.extents.len(), |p| i.saturating_add(p))
    }

    /// When the current data extent has all its blocks, end its zero run and move to the
    /// next data extent (`at` to its start).
    fn close_complete_extent(&mut self) -> Result<()> {
        if self
            .extents
            .get(self.cur)
            .is_some_and(|e| self.at == e.end())
        {
            self.flush_zeros()?;
            self.cur = self.next_data(self.cur.saturating_add(1));
            self.at = self.extents.get(self.cur).map_or(self.at, |e| e.start);
        }
        Ok(())
    }

    /// Blocks left in the current data extent at block `b`, which must be the next one
    /// expected (moving to the next data extent when this one is complete).
    fn left_at(&mut self, b: FsBlock) -> Result<u64> {
        self.close_complete_extent()?;
        match self.extents.get(self.cur) {
            Some(e) if b == self.at => Ok(e.end().saturating_since(b)),
            Some(_) => Err(Error::InvalidInput(format!(
                "e2i stream writer: block {b} given where block {} was expected",
                self.at
            ))),
            None => Err(Error::InvalidInput(format!(
                "e2i stream writer: block {b} lies past the map's data"
            ))),
        }
    }

    /// Append the blocks from `first` (whole blocks, continuing the data extents in map
    /// order). Version 2 sends the all-zero ones as zero segments.
    pub fn write_blocks(&mut self, first: FsBlock, data: &[u8]) -> Result<()> {
        let bs = self.block_size;
        if !bs.divides(data.len() as u64) {
            return Err(Error::InvalidInput(
                "stream data must be whole blocks".into(),
            ));
        }
        match self.version {
            Version::V1 => self.put_blocks(first, data, false),
            Version::V2 => {
                let bsz = bs.as_usize();
                crate::pieces::zero_runs(data, bsz, &mut |i, n, zero| {
                    let (from, len) = (i.saturating_mul(bsz), n.saturating_mul(bsz));
                    let piece = data.get(from..from.saturating_add(len)).unwrap_or_default();
                    self.put_blocks(first.saturating_add(i as u64), piece, zero)
                })
            }
        }
    }

    /// Append `n` all-zero blocks from `first` without their bytes (version 2 only: a
    /// version 1 map names its zero runs).
    pub fn write_zeros(&mut self, first: FsBlock, n: u64) -> Result<()> {
        if self.version == Version::V1 {
            return Err(Error::InvalidInput(
                "e2i stream writer: version 1 sends zeros as zero extents of its map".into(),
            ));
        }
        let mut b = first;
        let mut left = n;
        while left > 0 {
            let k = left.min(self.left_at(b)?);
            self.add_zeros(b, k)?;
            b = b.saturating_add(k);
            left = left.saturating_sub(k);
        }
        Ok(())
    }

    /// Send whole blocks from `first`, split at the ends of data extents: as bytes, or
    /// (`zero`, version 2) as zero segments.
    fn put_blocks(&mut self, first: FsBlock, data: &[u8], zero: bool) -> Result<()> {
        let bs = self.block_size;
        let mut b = first;
        let mut rest = data;
        while !rest.is_empty() {
            let k = bs.blocks_in(rest.len() as u64).min(self.left_at(b)?);
            // At most rest.len().
            let len = bs.len_of(k).unwrap_or(rest.len()).min(rest.len());
            let (now, later) = rest.split_at(len);
            if zero {
                self.add_zeros(b, k)?;
            } else {
                if self.version == Version::V2 {
                    self.flush_zeros()?;
                    self.put(&segment(k))?;
                }
                self.put(now)?;
                self.counts.data_blocks = self.counts.data_blocks.saturating_add(k);
                self.at = self.at.saturating_add(k);
            }
            b = b.saturating_add(k);
            rest = later;
        }
        Ok(())
    }

    /// `k` zero blocks from `b`, inside the current extent: merged with the zeros before
    /// them.
    fn add_zeros(&mut self, b: FsBlock, k: u64) -> Result<()> {
        if self.zeros == 0 {
            self.zero_from = b;
        }
        self.zeros = self.zeros.saturating_add(k);
        self.counts.zero_blocks = self.counts.zero_blocks.saturating_add(k);
        self.at = self.at.saturating_add(k);
        Ok(())
    }

    fn flush_zeros(&mut self) -> Result<()> {
        if self.zeros > 0 {
            let n = self.zeros;
            self.zeros = 0;
            self.put(&segment(n | SEGMENT_ZERO))?;
        }
        Ok(())
    }

    /// Hash and send `b`: gathered when short, directly when long.
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.hash.update(b);
        if b.len() >= DIRECT {
            self.flush_buf()?;
            send(&mut self.out, b, &mut self.written)?;
        } else {
            self.buf.extend_from_slice(b);
            if self.buf.len() >= GATHER {
                self.flush_buf()?;
            }
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> Result<()> {
        send(&mut self.out, &self.buf, &mut self.written)?;
        self.buf.clear();
        Ok(())
    }

    /// What was sent so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Write the trailer and return the output and the stream's checksum.
    pub fn finish(mut self) -> Result<(W, Digest)> {
        self.close_complete_extent()?;
        if self.cur < self.extents.len() {
            return Err(Error::InvalidInput(format!(
                "e2i stream writer: finished before block {} of the map's data",
                self.at
            )));
        }
        let digest = self.hash.digest();
        let mut t = [0u8; TRAILER_LEN];
        t[trl::MAGIC..trl::MAGIC + 8].copy_from_slice(&TRAILER_MAGIC);
        le::set_u64(&mut t, trl::EXTENTS, self.extents.len() as u64);
        le::set_u64(&mut t, trl::DATA_BLOCKS, self.counts.data_blocks);
        le::set_u64(&mut t, trl::ZERO_BLOCKS, self.counts.zero_blocks);
        t[trl::DIGEST..].copy_from_slice(&digest.bytes);
        self.buf.extend_from_slice(&t);
        self.flush_buf()?;
        self.out.flush().map_err(io_err("write", self.written))?;
        Ok((self.out, digest))
    }
}

/// Receives each extent of a stream and, for data, a piece of its bytes.
pub type ExtentVisitor<'a> = dyn FnMut(Extent, Option<&[u8]>) -> Result<()> + 'a;

/// Reads a stream, verifying the map checksum before any data and everything at the end.
pub struct StreamReader<R: Read> {
    input: R,
    pub header: Header,
    pub extents: Vec<Extent>,
    hash: Hasher,
    pos: u64,
    /// Known from the map (version 1), or counted as the data arrives (version 2).
    counts: Counts,
    selected_blocks: u64,
}

/// Fill `buf` from `r`, which is at stream byte `pos` inside `part`.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8], pos: u64, part: Part) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let mut at = pos;
        advance(&mut at, done);
        match r.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(CorruptKind::StreamTruncated { part, offset: at }.into());
            }
            Ok(n) => done = done.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io_at("read", at, e)),
        }
    }
    Ok(())
}

impl<R: Read> StreamReader<R> {
    /// Read the header and map.
    pub fn open(mut input: R) -> Result<Self> {
        let mut h = [0u8; HEADER_LEN];
        read_full(&mut input, &mut h, 0, Part::Header)?;
        let header = Header::decode(&h)?;
        let mut hash = Hasher::new(header.version);
        hash.update(&h);
        let mut pos = HEADER_LEN as u64;
        // Grow as entries arrive: a lying count cannot make us allocate up front.
        let mut extents: Vec<Extent> = Vec::new();
        let mut prev_end = FsBlock(0);
        // Disjoint extents inside the image: no sum can exceed its block count.
        let (mut data_blocks, mut zero_blocks) = (0u64, 0u64);
        let mut rec = [0u8; EXTENT_LEN];
        for index in 0..header.extents {
            let offset = pos;
            read_full(&mut input, &mut rec, pos, Part::ExtentMap)?;
            hash.update(&rec);
            advance(&mut pos, EXTENT_LEN);
            let e = Extent::decode(&rec, index, offset)?;
            let (start, len) = (e.start.get(), e.len);
            let end = e
                .start
                .checked_add(e.len)
                .filter(|&end| end.get() <= header.blocks_count)
                .ok_or(CorruptKind::StreamExtentOutside {
                    index,
                    offset,
                    start,
                    len,
                    blocks_count: header.blocks_count,
                })?;
            if e.len == 0 || e.start < prev_end {
                return Err(CorruptKind::StreamExtentOrder {
                    index,
                    offset,
                    start,
                    len,
                }
                .into());
            }
            prev_end = end;
            match e.kind {
                Kind::Data => data_blocks = data_blocks.saturating_add(e.len),
                Kind::Zero => zero_blocks = zero_blocks.saturating_add(e.len),
            }
            extents.push(e);
        }
        let mut mh = [0u8; 32];
        read_full(&mut input, &mut mh, pos, Part::MapChecksum)?;
        if hash.digest().bytes != mh {
            return Err(CorruptKind::StreamMapChecksum { offset: pos }.into());
        }
        advance(&mut pos, mh.len());
        let selected_blocks = data_blocks.saturating_add(zero_blocks);
        let counts = match header.version {
            Version::V1 => Counts {
                data_blocks,
                zero_blocks,
            },
            // The data extents' blocks are counted as their segments arrive.
            Version::V2 => Counts {
                data_blocks: 0,
                zero_blocks,
            },
        };
        Ok(StreamReader {
            input,
            header,
            extents,
            hash,
            pos,
            counts,
            selected_blocks,
        })
    }

    /// Every extent of the map (data and zero), in block order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Every extent (data and zero: the blocks the capture selected), as block-map runs,
    /// adjacent ones merged.
    pub fn selected_runs(&self) -> Vec<BlockRun> {
        let mut out: Vec<BlockRun> = Vec::new();
        for e in &self.extents {
            match out.last_mut() {
                Some(r) if r.end() == e.start => r.len = r.len.saturating_add(e.len),
                _ => out.push(e.run()),
            }
        }
        out
    }

    /// The blocks the capture selected (data and zero).
    pub fn selected_blocks(&self) -> u64 {
        self.selected_blocks
    }

    /// The blocks sent with their bytes, as block-map runs, when the map says (version 1);
    /// `None` when they are known only as the data arrives (version 2).
    pub fn data_runs(&self) -> Option<Vec<BlockRun>> {
        (self.header.version == Version::V1).then(|| {
            self.extents
                .iter()
                .filter(|e| e.kind == Kind::Data)
                .map(Extent::run)
                .collect()
        })
    }

    /// Blocks sent with their bytes and blocks sent as zeros: from the map (version 1), or
    /// once [`StreamReader::for_each`] returned (version 2).
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Read every extent in order: `f(extent, Some(data piece))` for data (in pieces of at
    /// most `chunk` bytes (and [`crate::pieces::PIECE_MAX`]), the extent's start advanced),
    /// `f(extent, None)` for zeros (zero extents, and zero segments of version 2). Then
    /// verify the trailer. Nothing is trusted until this returns `Ok`. The input is read and
    /// hashed on a second thread, ahead of `f`.
    pub fn for_each(&mut self, chunk: usize, f: &mut ExtentVisitor<'_>) -> Result<Digest>
    where
        R: Send,
    {
        use crate::pieces::{PIECE_MAX, Piece, read_ahead};
        let bs = self.header.block_size;
        let version = self.header.version;
        let per = bs.blocks_in(chunk.min(PIECE_MAX) as u64).max(1);
        let extents = std::mem::take(&mut self.extents);
        let (input, hash, pos) = (&mut self.input, &mut self.hash, &mut self.pos);
        let produce = |out: &mut crate::pieces::Producer| {
            // Blocks sent as bytes and as zero segments (version 2).
            let (mut data_blocks, mut zero_blocks) = (0u64, 0u64);
            let data = |out: &mut crate::pieces::Producer,
                        input: &mut R,
                        hash: &mut Hasher,
                        pos: &mut u64,
                        b: FsBlock,
                        n: u64| {
                let end = b.saturating_add(n);
                let mut b = b;
                while b < end {
                    let k = per.min(end.saturating_since(b));
                    // At most PIECE_MAX.
                    let len = bs.len_of(k).unwrap_or(PIECE_MAX);
                    out.data(b, len, &mut |buf| {
                        read_full(input, buf, *pos, Part::Data)?;
                        hash.update(buf);
                        advance(pos, buf.len());
                        Ok(())
                    })?;
                    b = b.saturating_add(k);
                }
                Ok::<_, Error>(())
            };
            for e in &extents {
                match (e.kind, version) {
                    (Kind::Zero, _) => out.zero(e.start, e.len)?,
                    (Kind::Data, Version::V1) => data(out, input, hash, pos, e.start, e.len)?,
                    (Kind::Data, Version::V2) => {
                        let mut b = e.start;
                        while b < e.end() {
                            let mut seg = [0u8; SEGMENT_LEN];
                            let offset = *pos;
                            read_full(input, &mut seg, offset, Part::Data)?;
                            hash.update(&seg);
                            advance(pos, SEGMENT_LEN);
                            let v = le::u64(&seg, 0);
                            let count = v & !SEGMENT_ZERO;
                            let left = e.end().saturating_since(b);
                            if count == 0 || count > left {
                                return Err(CorruptKind::StreamSegment {
                                    offset,
                                    block: b.get(),
                                    count,
                                    left,
                                }
                                .into());
                            }
                            if v & SEGMENT_ZERO != 0 {
                                out.zero(b, count)?;
                                zero_blocks = zero_blocks.saturating_add(count);
                            } else {
                                data(out, input, hash, pos, b, count)?;
                                data_blocks = data_blocks.saturating_add(count);
                            }
                            b = b.saturating_add(count);
                        }
                    }
                }
            }
            Ok((data_blocks, zero_blocks))
        };
        let res = read_ahead(produce, &mut |p| match p {
            Piece::Zero(start, len) => f(
                Extent {
                    start,
                    len,
                    kind: Kind::Zero,
                },
                None,
            ),
            Piece::Data(start, d) => f(
                Extent {
                    start,
                    len: bs.blocks_in(d.len() as u64),
                    kind: Kind::Data,
                },
                Some(d),
            ),
        });
        self.extents = extents;
        let (data_blocks, zero_blocks) = res?;
        if version == Version::V2 {
            // Both sums are of disjoint runs inside the image.
            self.counts.data_blocks = data_blocks;
            self.counts.zero_blocks = self.counts.zero_blocks.saturating_add(zero_blocks);
        }
        self.finish()
    }

    /// Read and check the trailer after the data.
    fn finish(&mut self) -> Result<Digest> {
        let mut t = [0u8; TRAILER_LEN];
        let offset = self.pos;
        read_full(&mut self.input, &mut t, offset, Part::Trailer)?;
        if t[trl::MAGIC..trl::MAGIC + 8] != TRAILER_MAGIC {
            return Err(CorruptKind::StreamNoTrailer { offset }.into());
        }
        let (extents, data_blocks, zero_blocks) = (
            le::u64(&t, trl::EXTENTS),
            le::u64(&t, trl::DATA_BLOCKS),
            le::u64(&t, trl::ZERO_BLOCKS),
        );
        if extents != self.header.extents
            || data_blocks != self.counts.data_blocks
            || zero_blocks != self.counts.zero_blocks
        {
            return Err(CorruptKind::StreamTrailerCounts {
                offset,
                extents,
                data_blocks,
                zero_blocks,
            }
            .into());
        }
        let digest = self.hash.digest();
        if t[trl::DIGEST..] != digest.bytes {
            return Err(CorruptKind::StreamChecksum { offset }.into());
        }
        let mut end = offset;
        advance(&mut end, TRAILER_LEN);
        let mut extra = [0u8; 1];
        loop {
            match self.input.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => return Err(CorruptKind::StreamTrailingBytes { offset: end }.into()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io_at("read", end, e)),
            }
        }
        Ok(digest)
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)] // tests compute expected values freely
mod tests {
    use super::*;

    const VERSIONS: [Version; 2] = [Version::V1, Version::V2];

    fn header(version: Version) -> Header {
        Header {
            version,
            flags: flags::ALL_DATA,
            incompat: 0,
            block_size: BlockSize::new(1024).unwrap(),
            blocks_count: 100,
            uuid: [7; 16],
            extents: 0,
        }
    }

    fn ext(start: u64, len: u64, kind: Kind) -> Extent {
        Extent {
            start: FsBlock(start),
            len,
            kind,
        }
    }

    /// Three extents (data 1+2, zero 5+3, data 50+1) and the data's 3 blocks.
    fn sample() -> (Vec<Extent>, Vec<u8>) {
        let ex = vec![
            ext(1, 2, Kind::Data),
            ext(5, 3, Kind::Zero),
            ext(50, 1, Kind::Data),
        ];
        let data: Vec<u8> = (0..3 * 1024).map(|i| (i % 251) as u8 + 1).collect();
        (ex, data)
    }

    fn encode(version: Version) -> Vec<u8> {
        let (ex, data) = sample();
        let mut w = StreamWriter::new(Vec::new(), header(version), ex).unwrap();
        w.write_blocks(FsBlock(1), &data[..1024]).unwrap();
        w.write_blocks(FsBlock(2), &data[1024..2048]).unwrap();
        w.write_blocks(FsBlock(50), &data[2048..]).unwrap();
        w.finish().unwrap().0
    }

    /// What a stream carries, block by block for data, in runs for zeros.
    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Block(u64, Vec<u8>),
        Zeros(u64, u64),
    }

    /// Add zero blocks `start..start + len` to `v`, merged with zeros just before them.
    fn push_zeros(v: &mut Vec<Got>, start: u64, len: u64) {
        match v.last_mut() {
            Some(Got::Zeros(s, n)) if *s + *n == start => *n += len,
            _ => v.push(Got::Zeros(start, len)),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Vec<Got>> {
        let mut r = StreamReader::open(bytes)?;
        let bsz = r.header.block_size.as_usize();
        let mut out = Vec::new();
        r.for_each(1024, &mut |e, d| {
            match d {
                Some(d) => {
                    for (i, b) in d.chunks(bsz).enumerate() {
                        out.push(Got::Block(e.start.get() + i as u64, b.to_vec()));
                    }
                }
                None => push_zeros(&mut out, e.start.get(), e.len),
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn kind<T: std::fmt::Debug>(r: Result<T>) -> CorruptKind {
        match r {
            Err(Error::Corrupt(k)) => k,
            other => panic!("expected a corruption, got {other:?}"),
        }
    }

    /// xorshift64: deterministic "random" numbers for the property tests.
    fn rng(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn round_trip() {
        let (_, data) = sample();
        for v in VERSIONS {
            let got = decode(&encode(v)).unwrap();
            let want = vec![
                Got::Block(1, data[..1024].to_vec()),
                Got::Block(2, data[1024..2048].to_vec()),
                Got::Zeros(5, 3),
                Got::Block(50, data[2048..].to_vec()),
            ];
            assert_eq!(got, want, "{v:?}");
        }
    }

    /// Version 2 sends all-zero blocks inside data extents as zero segments (merged across
    /// calls), and its checksum is BLAKE3; version 1 sends their bytes under SHA-256.
    #[test]
    fn version_2_sends_zero_blocks_as_segments() {
        let ex = vec![ext(1, 6, Kind::Data), ext(50, 2, Kind::Data)];
        let mut blocks = vec![vec![0u8; 1024]; 8];
        blocks[0][5] = 1;
        blocks[3][1023] = 9;
        blocks[7][0] = 3;
        let all: Vec<u8> = blocks.concat();
        let mut sizes = Vec::new();
        for v in VERSIONS {
            let mut w = StreamWriter::new(Vec::new(), header(v), ex.clone()).unwrap();
            // Blocks 1..=4 in two calls (a zero run across them), 5..=6 and 50..=51.
            w.write_blocks(FsBlock(1), &all[..2048]).unwrap();
            w.write_blocks(FsBlock(3), &all[2048..4096]).unwrap();
            w.write_blocks(FsBlock(5), &all[4096..6144]).unwrap();
            w.write_blocks(FsBlock(50), &all[6144..]).unwrap();
            let counts = w.counts();
            let (bytes, digest) = w.finish().unwrap();
            assert_eq!(digest.algorithm, v.algorithm());
            let mut want = Vec::new();
            for (b, block) in [1u64, 2, 3, 4, 5, 6, 50, 51].into_iter().zip(&blocks) {
                if v == Version::V2 && block.iter().all(|&x| x == 0) {
                    push_zeros(&mut want, b, 1);
                } else {
                    want.push(Got::Block(b, block.clone()));
                }
            }
            assert_eq!(decode(&bytes).unwrap(), want, "{v:?}");
            let (data, zero) = match v {
                Version::V1 => (8, 0),
                Version::V2 => (3, 5),
            };
            assert_eq!(
                counts,
                Counts {
                    data_blocks: data,
                    zero_blocks: zero
                }
            );
            sizes.push(bytes.len());
        }
        // Version 2: 3 data blocks, and segments: data 1, zeros 2-3, data 4, zeros 5-6,
        // zeros 50, data 51 (zero runs end at extent ends).
        assert_eq!(sizes[0] - sizes[1], 5 * 1024 - 6 * SEGMENT_LEN);
    }

    #[test]
    fn every_truncation_and_flip_is_caught() {
        for v in VERSIONS {
            let bytes = encode(v);
            for cut in 0..bytes.len() {
                let k = kind(decode(&bytes[..cut]));
                assert!(
                    matches!(k, CorruptKind::StreamTruncated { offset, .. } if offset == cut as u64),
                    "{v:?} cut at {cut}: {k:?}"
                );
            }
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x40;
                assert!(decode(&b).is_err(), "{v:?} flip at {i} accepted");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                kind(decode(&longer)),
                CorruptKind::StreamTrailingBytes {
                    offset: bytes.len() as u64
                }
            );
        }
    }

    /// Damage at a known place gives the kind naming that place.
    #[test]
    fn damage_is_located() {
        let bytes = encode(Version::V1);
        let map_end = HEADER_LEN + 3 * EXTENT_LEN;
        let trailer = bytes.len() - TRAILER_LEN;
        let with = |at: usize, v: u8| {
            let mut b = bytes.clone();
            b[at] = v;
            decode(&b)
        };
        let cut_part = |cut: usize| match kind(decode(&bytes[..cut])) {
            CorruptKind::StreamTruncated { part, .. } => part,
            k => panic!("{k:?}"),
        };
        assert_eq!(cut_part(10), Part::Header);
        assert_eq!(cut_part(HEADER_LEN + 17), Part::ExtentMap);
        assert_eq!(cut_part(map_end + 5), Part::MapChecksum);
        assert_eq!(cut_part(map_end + 32 + 100), Part::Data);
        assert_eq!(cut_part(trailer + 1), Part::Trailer);
        assert_eq!(kind(with(0, b'X')), CorruptKind::StreamMagic);
        assert_eq!(
            kind(with(hdr::HEADER_LEN, 65)),
            CorruptKind::StreamHeaderLength { len: 65 }
        );
        assert_eq!(
            kind(with(hdr::BLOCK_SIZE, 1)),
            CorruptKind::StreamBlockSize { block_size: 1025 }
        );
        assert_eq!(
            kind(with(hdr::EXTENTS, 200)),
            CorruptKind::StreamExtentCount {
                extents: 200,
                blocks_count: 100
            }
        );
        assert!(matches!(with(hdr::VERSION, 3), Err(Error::Unsupported(_))));
        // Second extent (index 1, at byte 80): its kind, then its start.
        assert_eq!(
            kind(with(HEADER_LEN + EXTENT_LEN + 15, 9)),
            CorruptKind::StreamExtentKind {
                index: 1,
                offset: 80,
                kind: 9
            }
        );
        assert_eq!(
            kind(with(HEADER_LEN + EXTENT_LEN, 99)),
            CorruptKind::StreamExtentOutside {
                index: 1,
                offset: 80,
                start: 99,
                len: 3,
                blocks_count: 100
            }
        );
        assert_eq!(
            kind(with(HEADER_LEN + EXTENT_LEN, 2)),
            CorruptKind::StreamExtentOrder {
                index: 1,
                offset: 80,
                start: 2,
                len: 3
            }
        );
        assert_eq!(
            kind(with(HEADER_LEN + 2 * EXTENT_LEN, 60)),
            CorruptKind::StreamMapChecksum {
                offset: map_end as u64
            }
        );
        assert_eq!(
            kind(with(map_end + 32 + 7, 0)),
            CorruptKind::StreamChecksum {
                offset: trailer as u64
            }
        );
        assert_eq!(
            kind(with(trailer, b'X')),
            CorruptKind::StreamNoTrailer {
                offset: trailer as u64
            }
        );
        assert_eq!(
            kind(with(trailer + trl::ZERO_BLOCKS, 4)),
            CorruptKind::StreamTrailerCounts {
                offset: trailer as u64,
                extents: 3,
                data_blocks: 3,
                zero_blocks: 4
            }
        );
        // Version 2: the first segment (right after the map checksum) claims 0 blocks, then
        // more than its extent holds.
        let bytes = encode(Version::V2);
        let seg = map_end + 32;
        for (count, what) in [(0u8, "empty"), (3, "too long")] {
            let mut b = bytes.clone();
            b[seg] = count;
            assert_eq!(
                kind(decode(&b)),
                CorruptKind::StreamSegment {
                    offset: seg as u64,
                    block: 1,
                    count: u64::from(count),
                    left: 2
                },
                "{what}"
            );
        }
    }

    /// Property: any valid header and sorted map (full-width values included) written by
    /// the writer reads back the same, with the same blocks (version 2: zeros as zeros).
    #[test]
    fn random_maps_round_trip() {
        let mut next = rng(0x2545_F491_4F6C_DD1D);
        for case in 0..400 {
            let version = VERSIONS[case % 2];
            let block_size = BlockSize::new(1024u32 << (next() % 7)).unwrap();
            let max_blocks = u64::MAX / block_size.bytes();
            let blocks_count = match case % 3 {
                0 => max_blocks,
                1 => 1 + next() % 64,
                _ => 1 + next() % max_blocks,
            };
            let mut extents = Vec::new();
            let mut at = if case % 5 == 0 {
                0
            } else {
                next() % blocks_count
            };
            while extents.len() < 6 && at < blocks_count {
                let room = (blocks_count - at).min(MAX_EXTENT_LEN);
                // Mostly short data extents, sometimes one as long as what is left.
                let (len, kind) = if next().is_multiple_of(4) {
                    (1 + next() % room, Kind::Zero)
                } else {
                    (1 + next() % room.min(5), Kind::Data)
                };
                extents.push(ext(at, len, kind));
                at = at
                    .saturating_add(len)
                    .saturating_add(next() % (1 << (next() % 64)));
            }
            let header = Header {
                version,
                flags: next() as u32,
                incompat: 0,
                block_size,
                blocks_count,
                uuid: [case as u8; 16],
                extents: extents.len() as u64,
            };
            let mut w = StreamWriter::new(Vec::new(), header, extents.clone()).unwrap();
            let mut want = Vec::new();
            for e in extents.iter() {
                if e.kind == Kind::Zero {
                    push_zeros(&mut want, e.start.get(), e.len);
                    continue;
                }
                for b in e.start.get()..e.end().get() {
                    // Some blocks all zero; version 2 may also be told so directly.
                    let fill = if next().is_multiple_of(3) {
                        0
                    } else {
                        (b % 251) as u8 + 1
                    };
                    let block = vec![fill; block_size.as_usize()];
                    if fill == 0 && version == Version::V2 && next().is_multiple_of(2) {
                        w.write_zeros(FsBlock(b), 1).unwrap();
                    } else {
                        w.write_blocks(FsBlock(b), &block).unwrap();
                    }
                    if fill != 0 || version == Version::V1 {
                        want.push(Got::Block(b, block));
                    } else {
                        push_zeros(&mut want, b, 1);
                    }
                }
            }
            let (bytes, digest) = w.finish().unwrap();
            let mut r = StreamReader::open(&bytes[..]).unwrap();
            assert_eq!(r.header, header);
            assert_eq!(r.extents, extents);
            let d = r
                .for_each(block_size.as_usize(), &mut |_, _| Ok(()))
                .unwrap();
            assert_eq!(d, digest);
            assert_eq!(decode(&bytes).unwrap(), want, "case {case}");
        }
    }

    /// Accepts `left` bytes, at most `step` a call (and one EINTR first), then fails each
    /// write with ENOSPC, as a file on a full disk does after its short write.
    struct FullAfter {
        got: Vec<u8>,
        left: usize,
        step: usize,
        interrupted: bool,
    }

    impl Write for FullAfter {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if !self.interrupted {
                self.interrupted = true;
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.left == 0 {
                return Err(io::Error::from_raw_os_error(28));
            }
            let n = b.len().min(self.left).min(self.step);
            self.got.extend_from_slice(&b[..n]);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Header, map, gathered pieces, direct pieces (64 KiB and more), zero segments and the
    /// trailer of one stream, written to `out`.
    fn write_mixed<W: Write>(out: W, version: Version) -> Result<W> {
        let mut h = header(version);
        h.blocks_count = 4096;
        let ex = vec![ext(1, 300, Kind::Data), ext(400, 2, Kind::Data)];
        let mut w = StreamWriter::new(out, h, ex)?;
        let block = |i: u64| vec![(i % 250) as u8 + 1; 1024];
        w.write_blocks(FsBlock(1), &block(1))?;
        let big: Vec<u8> = (2..102).flat_map(block).collect();
        w.write_blocks(FsBlock(2), &big)?;
        w.write_blocks(FsBlock(102), &vec![0; 50 * 1024])?;
        let mut mixed: Vec<u8> = (152..301).flat_map(block).collect();
        mixed[10 * 1024..20 * 1024].fill(0);
        w.write_blocks(FsBlock(152), &mixed)?;
        w.write_blocks(FsBlock(400), &[block(400), block(401)].concat())?;
        Ok(w.finish()?.0)
    }

    /// A write that fails names the stream byte where it began: the first byte the output
    /// did not take, wherever it falls (header, map, a gathered buffer, a piece written
    /// directly, the trailer), not the start of the buffer being flushed.
    #[test]
    fn a_failed_write_names_the_first_byte_not_written() {
        for version in [Version::V1, Version::V2] {
            let whole = write_mixed(Vec::new(), version).unwrap();
            let len = whole.len();
            let mut cuts = vec![0, 1, HEADER_LEN, HEADER_LEN + 5, len - 1, len - TRAILER_LEN];
            let mut next = rng(len as u64);
            cuts.extend((0..40).map(|_| (next() % len as u64) as usize));
            for cut in cuts {
                for step in [1 << 20, 4093] {
                    let out = FullAfter {
                        got: Vec::new(),
                        left: cut,
                        step,
                        interrupted: false,
                    };
                    match write_mixed(out, version) {
                        Err(Error::Io { op, offset, source }) => {
                            assert_eq!(op, "write");
                            assert_eq!(
                                offset,
                                Some(cut as u64),
                                "{version:?} cut {cut} step {step}"
                            );
                            assert_eq!(source.raw_os_error(), Some(28));
                        }
                        other => panic!("{version:?} cut {cut}: {:?}", other.map(|o| o.got.len())),
                    }
                }
            }
            // Interrupted writes are retried: the whole stream arrives.
            let out = FullAfter {
                got: Vec::new(),
                left: len,
                step: 999,
                interrupted: false,
            };
            assert!(write_mixed(out, version).unwrap().got == whole);
        }
    }

    #[test]
    fn writer_refuses_maps_it_cannot_encode() {
        let h = header(Version::V2);
        let bad = |ex: Vec<Extent>, h: Header| StreamWriter::new(Vec::new(), h, ex).is_err();
        let e = |start, len| ext(start, len, Kind::Data);
        assert!(bad(vec![e(0, 0)], h));
        assert!(bad(vec![e(5, 2), e(6, 1)], h));
        assert!(bad(vec![e(99, 2)], h));
        assert!(bad(vec![e(u64::MAX, 2)], h));
        let huge = Header {
            blocks_count: u64::MAX >> 10,
            ..h
        };
        // No image has more blocks than 7 bytes can count (2^54 at most, of 1 KiB).
        assert!(huge.blocks_count < MAX_EXTENT_LEN);
        assert!(!bad(vec![e(0, huge.blocks_count)], huge));
        // An image whose bytes overflow 64 bits.
        let overflow = Header {
            blocks_count: (u64::MAX >> 10) + 1,
            ..h
        };
        assert!(bad(vec![], overflow));
        // Blocks out of map order, past the map, half blocks; finishing early.
        let block = vec![1u8; 1024];
        let mut w = StreamWriter::new(Vec::new(), h, vec![e(5, 2), e(9, 1)]).unwrap();
        assert!(w.write_blocks(FsBlock(6), &block).is_err());
        assert!(w.write_blocks(FsBlock(5), &block[..100]).is_err());
        w.write_blocks(FsBlock(5), &block).unwrap();
        assert!(w.write_blocks(FsBlock(7), &block).is_err());
        assert!(w.finish().is_err());
        let mut w = StreamWriter::new(Vec::new(), h, vec![e(5, 1)]).unwrap();
        assert!(w.write_zeros(FsBlock(5), 2).is_err());
        let mut w = StreamWriter::new(Vec::new(), header(Version::V1), vec![e(5, 1)]).unwrap();
        assert!(w.write_zeros(FsBlock(5), 1).is_err());
    }

    /// Random damage (extreme values in header, map and segment fields, bit flips, cuts)
    /// never panics; run by the debug test build, it checks every addition for overflow.
    #[test]
    fn mutated_streams_never_panic() {
        for v in VERSIONS {
            let good = encode(v);
            let mut next = rng(0x9E37_79B9_7F4A_7C15);
            let mut past_map = 0;
            let map_end = HEADER_LEN + 3 * EXTENT_LEN;
            for _ in 0..5000 {
                let mut b = good.clone();
                match next() % 3 {
                    0 => {
                        // A full-width field of the header, an extent or the first segment.
                        let at = [
                            hdr::BLOCK_SIZE,
                            hdr::BLOCKS_COUNT,
                            hdr::EXTENTS,
                            64,
                            72,
                            80,
                            88,
                            map_end + 32,
                        ][(next() % 8) as usize];
                        let v = [u64::MAX, 0, 1 << 63, u64::from(u32::MAX), next()]
                            [(next() % 5) as usize];
                        if at == hdr::BLOCK_SIZE {
                            le::set_u32(&mut b, at, v as u32);
                        } else {
                            le::set_u64(&mut b, at, v);
                        }
                    }
                    1 => {
                        for _ in 0..(1 + next() % 4) {
                            let at = (next() % b.len() as u64) as usize;
                            b[at] = next() as u8;
                        }
                    }
                    _ => b.truncate((next() % b.len() as u64) as usize),
                }
                // Usually make the map checksum match again, so that the damage reaches
                // the data and trailer checks instead of stopping at the checksum.
                if let Some(end) = le::get_u64(&b, hdr::EXTENTS)
                    .filter(|&n| n <= 8)
                    .map(|n| HEADER_LEN + n as usize * EXTENT_LEN)
                    .filter(|&end| end + 32 <= b.len() && !next().is_multiple_of(4))
                {
                    let mut h = Hasher::new(v);
                    h.update(&b[..end]);
                    let sum = h.digest().bytes;
                    b[end..end + 32].copy_from_slice(&sum);
                }
                if StreamReader::open(&b[..]).is_ok() {
                    past_map += 1;
                }
                let _ = decode(&b);
            }
            // Much of the damage must get past the map, into data and trailer checks.
            assert!(
                past_map > 1000,
                "{v:?}: only {past_map} of 5000 streams got past the map"
            );
        }
    }
}
