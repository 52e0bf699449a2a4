//! The e2i stream: a compact, verifiable pipe format between the tools.
//!
//! Layout (all integers little-endian; see `docs/stream-format.md`):
//! header (64 bytes) · extent map (16 bytes per extent) · SHA-256 of header+map (32 bytes) ·
//! data of every data extent in map order · trailer (64 bytes) with counts and the SHA-256
//! of header, map and data. Holes are never hashed or sent, so the cost follows the metadata.

// Every number here comes from a stream or feeds one: no unchecked arithmetic.
#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::blockmap::BlockRun;
use crate::bytes::le;
use crate::error::CorruptKind;
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

pub const MAGIC: [u8; 8] = *b"E2ISTRM\0";
pub const TRAILER_MAGIC: [u8; 8] = *b"E2IEND\0\0";
pub const VERSION: u16 = 1;
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
    pub const SHA256: usize = 32;
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

/// Filesystem geometry and capture flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    /// Flags a reader must understand to proceed; none are defined in version 1.
    pub incompat: u32,
    pub block_size: BlockSize,
    pub blocks_count: u64,
    pub uuid: [u8; 16],
    pub extents: u64,
}

/// What an extent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `len` blocks of data follow in the data section.
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
        le::set_u16(&mut b, hdr::VERSION, VERSION);
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
        let version = le::u16(b, hdr::VERSION);
        if version != VERSION {
            return Err(Error::Unsupported(format!(
                "e2i stream: version {version} (this reader understands version {VERSION})"
            )));
        }
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
    pub data_blocks: u64,
    pub zero_blocks: u64,
}

fn io_err(op: &'static str, offset: u64) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::io(op, offset, e)
}

/// Bytes written or read so far: counts of bytes that went through memory, so they stay
/// far below 2^64 and the additions below cannot saturate.
fn advance(pos: &mut u64, n: usize) {
    *pos = pos.saturating_add(n as u64);
}

/// Writes a stream: header and map first, then the data in map order, then the trailer.
pub struct StreamWriter<W: Write> {
    out: W,
    hash: Sha256,
    /// The data is hashed by the caller ([`StreamWriter::take_hash`]).
    hashed_outside: bool,
    extents: Vec<Extent>,
    next: usize,
    /// Blocks of data still expected for `extents[next - 1]`.
    pending: u64,
    block_size: BlockSize,
    counts: Counts,
    written: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Write the header and the map. `extents` must be sorted, disjoint, non-empty runs
    /// inside the image.
    pub fn new(mut out: W, mut header: Header, extents: Vec<Extent>) -> Result<Self> {
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
        let mut hash = Sha256::new();
        let h = header.encode();
        hash.update(h);
        out.write_all(&h).map_err(io_err("write", 0))?;
        let mut buf = Vec::with_capacity(extents.len().min(1 << 16).saturating_mul(EXTENT_LEN));
        let mut written = HEADER_LEN as u64;
        for e in &extents {
            buf.extend_from_slice(&e.encode());
            if buf.len() >= 1 << 20 {
                hash.update(&buf);
                out.write_all(&buf).map_err(io_err("write", written))?;
                advance(&mut written, buf.len());
                buf.clear();
            }
        }
        hash.update(&buf);
        out.write_all(&buf).map_err(io_err("write", written))?;
        advance(&mut written, buf.len());
        // The map's own hash lets a reader trust the layout before any data arrives.
        let map_hash = hash.clone().finalize();
        out.write_all(&map_hash).map_err(io_err("write", written))?;
        advance(&mut written, map_hash.len());
        Ok(StreamWriter {
            out,
            hash,
            hashed_outside: false,
            extents,
            next: 0,
            pending: 0,
            block_size: header.block_size,
            counts: Counts::default(),
            written,
        })
    }

    /// Append data blocks (whole blocks, continuing the data extents in order).
    pub fn write_data(&mut self, data: &[u8]) -> Result<()> {
        if !self.block_size.divides(data.len() as u64) {
            return Err(Error::InvalidInput(
                "stream data must be whole blocks".into(),
            ));
        }
        let total = self.block_size.blocks_in(data.len() as u64);
        let mut blocks = total;
        while blocks > 0 {
            if self.pending == 0 {
                let next = self.extents[self.next..]
                    .iter()
                    .position(|e| e.kind == Kind::Data)
                    .map(|p| self.next.saturating_add(p));
                let Some(e) = next.and_then(|i| self.extents.get(i)) else {
                    return Err(Error::InvalidInput(
                        "more stream data than the map holds".into(),
                    ));
                };
                self.pending = e.len;
                self.next = next.map_or(self.next, |i| i.saturating_add(1));
            }
            let n = blocks.min(self.pending);
            // n is at most both.
            self.pending = self.pending.saturating_sub(n);
            blocks = blocks.saturating_sub(n);
        }
        if !self.hashed_outside {
            self.hash.update(data);
        }
        self.out
            .write_all(data)
            .map_err(io_err("write", self.written))?;
        advance(&mut self.written, data.len());
        // Below the sum of the extents' lengths, which fits (they lie inside the image).
        self.counts.data_blocks = self.counts.data_blocks.saturating_add(total);
        Ok(())
    }

    /// Take the running hash (header and map so far): the caller feeds it exactly the
    /// bytes it passes to [`StreamWriter::write_data`], in order — on another thread if it
    /// likes — and gives it back to [`StreamWriter::finish_hashed`].
    pub fn take_hash(&mut self) -> Sha256 {
        self.hashed_outside = true;
        std::mem::take(&mut self.hash)
    }

    /// [`StreamWriter::finish`] with the hash taken by [`StreamWriter::take_hash`].
    pub fn finish_hashed(mut self, hash: Sha256) -> Result<(W, [u8; 32])> {
        self.hash = hash;
        self.hashed_outside = false;
        self.finish()
    }

    /// Write the trailer and return the output and the SHA-256 of the stream content.
    pub fn finish(mut self) -> Result<(W, [u8; 32])> {
        if self.hashed_outside {
            return Err(Error::InvalidInput(
                "e2i stream writer: the data was hashed outside; finish with its hash".into(),
            ));
        }
        let rest_data = self.pending != 0
            || self.extents[self.next..]
                .iter()
                .any(|e| e.kind == Kind::Data);
        if rest_data {
            return Err(Error::InvalidInput(
                "stream finished before all mapped data was written".into(),
            ));
        }
        // Disjoint extents inside the image: the sum is at most its block count.
        self.counts.zero_blocks = self
            .extents
            .iter()
            .filter(|e| e.kind == Kind::Zero)
            .fold(0u64, |a, e| a.saturating_add(e.len));
        let digest: [u8; 32] = self.hash.finalize().into();
        let mut t = [0u8; TRAILER_LEN];
        t[trl::MAGIC..trl::MAGIC + 8].copy_from_slice(&TRAILER_MAGIC);
        le::set_u64(&mut t, trl::EXTENTS, self.extents.len() as u64);
        le::set_u64(&mut t, trl::DATA_BLOCKS, self.counts.data_blocks);
        le::set_u64(&mut t, trl::ZERO_BLOCKS, self.counts.zero_blocks);
        t[trl::SHA256..].copy_from_slice(&digest);
        self.out
            .write_all(&t)
            .map_err(io_err("write", self.written))?;
        self.out.flush().map_err(io_err("write", self.written))?;
        Ok((self.out, digest))
    }
}

/// Receives each extent of a stream and, for data, a piece of its bytes.
pub type ExtentVisitor<'a> = dyn FnMut(Extent, Option<&[u8]>) -> Result<()> + 'a;

/// Reads a stream, verifying the map hash before any data and everything at the end.
pub struct StreamReader<R: Read> {
    input: R,
    pub header: Header,
    pub extents: Vec<Extent>,
    hash: Sha256,
    pos: u64,
    data_blocks: u64,
    zero_blocks: u64,
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
            Err(e) => return Err(Error::io("read", at, e)),
        }
    }
    Ok(())
}

impl<R: Read> StreamReader<R> {
    /// Read the header and map. `prefix` holds bytes already consumed for format detection.
    pub fn open(mut input: R) -> Result<Self> {
        let mut h = [0u8; HEADER_LEN];
        read_full(&mut input, &mut h, 0, Part::Header)?;
        let header = Header::decode(&h)?;
        let mut hash = Sha256::new();
        hash.update(h);
        let mut pos = HEADER_LEN as u64;
        // Grow as entries arrive: a lying count cannot make us allocate up front.
        let mut extents: Vec<Extent> = Vec::new();
        let mut prev_end = FsBlock(0);
        // Disjoint extents inside the image: neither sum can exceed its block count.
        let mut data_blocks = 0u64;
        let mut zero_blocks = 0u64;
        let mut rec = [0u8; EXTENT_LEN];
        for index in 0..header.extents {
            let offset = pos;
            read_full(&mut input, &mut rec, pos, Part::ExtentMap)?;
            hash.update(rec);
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
        if hash.clone().finalize()[..] != mh[..] {
            return Err(CorruptKind::StreamMapChecksum { offset: pos }.into());
        }
        advance(&mut pos, mh.len());
        Ok(StreamReader {
            input,
            header,
            extents,
            hash,
            pos,
            data_blocks,
            zero_blocks,
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

    /// The data extents, as block-map runs (filesystem blocks).
    pub fn data_runs(&self) -> Vec<BlockRun> {
        self.extents
            .iter()
            .filter(|e| e.kind == Kind::Data)
            .map(Extent::run)
            .collect()
    }

    /// Blocks of data the stream carries.
    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    pub fn zero_blocks(&self) -> u64 {
        self.zero_blocks
    }

    /// Read every extent in order: `f(extent, Some(data piece))` for data (in pieces of at
    /// most `chunk` bytes (and [`crate::pieces::PIECE_MAX`]), the extent's start advanced),
    /// `f(extent, None)` for zeros. Then verify the trailer. Nothing is trusted until this
    /// returns `Ok`. The input is read and hashed on a second thread, ahead of `f`.
    pub fn for_each(&mut self, chunk: usize, f: &mut ExtentVisitor<'_>) -> Result<[u8; 32]>
    where
        R: Send,
    {
        use crate::pieces::{PIECE_MAX, Piece, read_ahead};
        let bs = self.header.block_size;
        let per = bs.blocks_in(chunk.min(PIECE_MAX) as u64).max(1);
        let extents = std::mem::take(&mut self.extents);
        let (input, hash, pos) = (&mut self.input, &mut self.hash, &mut self.pos);
        let produce = |out: &mut crate::pieces::Producer| {
            for e in &extents {
                match e.kind {
                    Kind::Zero => out.zero(e.start, e.len)?,
                    Kind::Data => {
                        let mut b = e.start;
                        // The reader checked that every extent lies in the image.
                        while b < e.end() {
                            let n = per.min(e.end().saturating_since(b));
                            // At most PIECE_MAX.
                            let len = bs.len_of(n).unwrap_or(PIECE_MAX);
                            out.data(b, len, &mut |buf| {
                                read_full(input, buf, *pos, Part::Data)?;
                                hash.update(&*buf);
                                advance(pos, buf.len());
                                Ok(())
                            })?;
                            b = b.saturating_add(n);
                        }
                    }
                }
            }
            Ok(())
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
        res?;
        self.finish()
    }

    /// Read and check the trailer after the data.
    pub fn finish(&mut self) -> Result<[u8; 32]> {
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
            || data_blocks != self.data_blocks
            || zero_blocks != self.zero_blocks
        {
            return Err(CorruptKind::StreamTrailerCounts {
                offset,
                extents,
                data_blocks,
                zero_blocks,
            }
            .into());
        }
        let digest: [u8; 32] = self.hash.clone().finalize().into();
        if t[trl::SHA256..] != digest {
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
                Err(e) => return Err(Error::io("read", end, e)),
            }
        }
        Ok(digest)
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)] // tests compute expected values freely
mod tests {
    use super::*;

    fn sample() -> (Header, Vec<Extent>, Vec<u8>) {
        let h = Header {
            flags: flags::ALL_DATA,
            incompat: 0,
            block_size: BlockSize::new(1024).unwrap(),
            blocks_count: 100,
            uuid: [7; 16],
            extents: 0,
        };
        let ex = vec![
            Extent {
                start: FsBlock(1),
                len: 2,
                kind: Kind::Data,
            },
            Extent {
                start: FsBlock(5),
                len: 3,
                kind: Kind::Zero,
            },
            Extent {
                start: FsBlock(50),
                len: 1,
                kind: Kind::Data,
            },
        ];
        let data: Vec<u8> = (0..3 * 1024).map(|i| (i % 251) as u8 + 1).collect();
        (h, ex, data)
    }

    fn encode() -> Vec<u8> {
        let (h, ex, data) = sample();
        let mut w = StreamWriter::new(Vec::new(), h, ex).unwrap();
        w.write_data(&data[..1024]).unwrap();
        w.write_data(&data[1024..]).unwrap();
        w.finish().unwrap().0
    }

    fn decode(bytes: &[u8]) -> Result<Vec<(Extent, Option<Vec<u8>>)>> {
        let mut r = StreamReader::open(bytes)?;
        let mut out = Vec::new();
        r.for_each(1024, &mut |e, d| {
            out.push((e, d.map(|d| d.to_vec())));
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
        let bytes = encode();
        let got = decode(&bytes).unwrap();
        let (_, _, data) = sample();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].1.as_deref(), Some(&data[..1024]));
        assert_eq!(got[2].0.kind, Kind::Zero);
        assert_eq!(got[3].1.as_deref(), Some(&data[2048..]));
    }

    /// Data hashed by the caller (on another thread) gives the same stream; a writer whose
    /// hash was taken does not finish without it.
    #[test]
    fn hash_taken_outside_gives_the_same_stream() {
        let (h, ex, data) = sample();
        let mut w = StreamWriter::new(Vec::new(), h, ex.clone()).unwrap();
        let mut hash = w.take_hash();
        for d in [&data[..1024], &data[1024..]] {
            sha2::Digest::update(&mut hash, d);
            w.write_data(d).unwrap();
        }
        assert!(w.finish_hashed(hash).unwrap().0 == encode());
        let mut w = StreamWriter::new(Vec::new(), h, ex).unwrap();
        let _ = w.take_hash();
        w.write_data(&data).unwrap();
        assert!(w.finish().is_err());
    }

    #[test]
    fn every_truncation_and_flip_is_caught() {
        let bytes = encode();
        for cut in 0..bytes.len() {
            let k = kind(decode(&bytes[..cut]));
            assert!(
                matches!(k, CorruptKind::StreamTruncated { offset, .. } if offset == cut as u64),
                "cut at {cut}: {k:?}"
            );
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b).is_err(), "flip at {i} accepted");
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

    /// Damage at a known place gives the kind naming that place.
    #[test]
    fn damage_is_located() {
        let bytes = encode();
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
    }

    /// Property: any valid header and sorted map (full-width values included) written by
    /// the writer reads back the same, with the same data in the same pieces.
    #[test]
    fn random_maps_round_trip() {
        let mut next = rng(0x2545_F491_4F6C_DD1D);
        for case in 0..300 {
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
                    (1 + next() % room.min(3), Kind::Data)
                };
                extents.push(Extent {
                    start: FsBlock(at),
                    len,
                    kind,
                });
                at = at
                    .saturating_add(len)
                    .saturating_add(next() % (1 << (next() % 64)));
            }
            let header = Header {
                flags: next() as u32,
                incompat: 0,
                block_size,
                blocks_count,
                uuid: [case as u8; 16],
                extents: extents.len() as u64,
            };
            let mut w = StreamWriter::new(Vec::new(), header, extents.clone()).unwrap();
            let mut want = Vec::new();
            for e in extents.iter().filter(|e| e.kind == Kind::Data) {
                for b in e.start.get()..e.end().get() {
                    let block = vec![(b % 251) as u8; block_size.as_usize()];
                    w.write_data(&block).unwrap();
                    want.push((FsBlock(b), block));
                }
            }
            let (bytes, digest) = w.finish().unwrap();
            let mut r = StreamReader::open(&bytes[..]).unwrap();
            assert_eq!(r.header, header);
            assert_eq!(r.extents, extents);
            let mut got = Vec::new();
            let d = r
                .for_each(block_size.as_usize(), &mut |e, data| {
                    if let Some(data) = data {
                        got.push((e.start, data.to_vec()));
                    }
                    Ok(())
                })
                .unwrap();
            assert_eq!(d, digest);
            assert_eq!(got, want, "case {case}");
        }
    }

    #[test]
    fn writer_refuses_maps_it_cannot_encode() {
        let (h, _, _) = sample();
        let bad = |ex: Vec<Extent>, h: Header| StreamWriter::new(Vec::new(), h, ex).is_err();
        let e = |start, len| Extent {
            start: FsBlock(start),
            len,
            kind: Kind::Data,
        };
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
    }

    /// Random damage (extreme values in header and map fields, bit flips, cuts) never
    /// panics; run by the debug test build, it checks every addition for overflow.
    #[test]
    fn mutated_streams_never_panic() {
        let good = encode();
        let mut next = rng(0x9E37_79B9_7F4A_7C15);
        let mut past_map = 0;
        for _ in 0..5000 {
            let mut b = good.clone();
            match next() % 3 {
                0 => {
                    // A full-width field of the header or an extent.
                    let at = [
                        hdr::BLOCK_SIZE,
                        hdr::BLOCKS_COUNT,
                        hdr::EXTENTS,
                        64,
                        72,
                        80,
                        88,
                    ][(next() % 7) as usize];
                    let v =
                        [u64::MAX, 0, 1 << 63, u64::from(u32::MAX), next()][(next() % 5) as usize];
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
            // Usually make the map checksum match again, so that the damage reaches the
            // data and trailer checks instead of stopping at the checksum.
            if let Some(end) = le::get_u64(&b, hdr::EXTENTS)
                .filter(|&n| n <= 8)
                .map(|n| HEADER_LEN + n as usize * EXTENT_LEN)
                .filter(|&end| end + 32 <= b.len() && !next().is_multiple_of(4))
            {
                let sum = Sha256::digest(&b[..end]);
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
            "only {past_map} of 5000 streams got past the map"
        );
    }
}
