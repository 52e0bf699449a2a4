//! The e2i stream: a compact, verifiable pipe format between the tools.
//!
//! Layout (all integers little-endian; see `docs/stream-format.md`):
//! header (64 bytes) · extent map (16 bytes per extent) · SHA-256 of header+map (32 bytes) ·
//! data of every data extent in map order · trailer (64 bytes) with counts and the SHA-256
//! of header, map and data. Holes are never hashed or sent, so the cost follows the metadata.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

pub const MAGIC: [u8; 8] = *b"E2ISTRM\0";
pub const TRAILER_MAGIC: [u8; 8] = *b"E2IEND\0\0";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 64;
pub const EXTENT_LEN: usize = 16;
pub const TRAILER_LEN: usize = 64;

/// Header flags a reader may ignore (informational).
pub mod flags {
    /// The capture included regular-file data (`-a`).
    pub const ALL_DATA: u32 = 1 << 0;
    /// Names and private strings were scrambled (`-s`).
    pub const SCRAMBLED: u32 = 1 << 1;
    /// Every flag this version knows.
    pub const KNOWN: u32 = ALL_DATA | SCRAMBLED;
}

/// Filesystem geometry and capture flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    /// Flags a reader must understand to proceed; none are defined in version 1.
    pub incompat: u32,
    pub block_size: u32,
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

/// A run of selected blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
    pub kind: Kind,
}

fn bad(detail: impl Into<String>) -> Error {
    Error::corrupt("e2i stream", detail)
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..20].copy_from_slice(&self.incompat.to_le_bytes());
        b[20..24].copy_from_slice(&self.block_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.blocks_count.to_le_bytes());
        b[32..48].copy_from_slice(&self.uuid);
        b[48..56].copy_from_slice(&self.extents.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_LEN]) -> Result<Self> {
        if b[0..8] != MAGIC {
            return Err(bad("bad magic (not an e2i stream)"));
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let version = u16_at(8);
        if version != VERSION {
            return Err(Error::Unsupported(format!(
                "e2i stream: version {version} (this reader understands version {VERSION})"
            )));
        }
        if usize::from(u16_at(10)) != HEADER_LEN {
            return Err(bad(format!(
                "header length {} (expected {HEADER_LEN})",
                u16_at(10)
            )));
        }
        let h = Header {
            flags: u32_at(12),
            incompat: u32_at(16),
            block_size: u32_at(20),
            blocks_count: u64_at(24),
            uuid: b[32..48].try_into().unwrap_or([0; 16]),
            extents: u64_at(48),
        };
        if h.incompat != 0 {
            return Err(Error::Unsupported(format!(
                "e2i stream: needs features {:#x} this reader does not understand",
                h.incompat
            )));
        }
        if !h.block_size.is_power_of_two() || !(1024..=65536).contains(&h.block_size) {
            return Err(bad(format!("block size {} is invalid", h.block_size)));
        }
        if h.blocks_count
            .checked_mul(u64::from(h.block_size))
            .is_none()
        {
            return Err(bad(format!(
                "{} blocks overflow the image size",
                h.blocks_count
            )));
        }
        if h.extents > h.blocks_count {
            return Err(bad(format!(
                "{} extents in a {}-block image",
                h.extents, h.blocks_count
            )));
        }
        Ok(h)
    }
}

impl Extent {
    fn encode(&self) -> [u8; EXTENT_LEN] {
        let mut b = [0u8; EXTENT_LEN];
        b[0..8].copy_from_slice(&self.start.to_le_bytes());
        // Length in 7 bytes: far beyond any filesystem.
        b[8..15].copy_from_slice(&self.len.to_le_bytes()[..7]);
        b[15] = match self.kind {
            Kind::Data => 1,
            Kind::Zero => 2,
        };
        b
    }

    fn decode(b: &[u8; EXTENT_LEN]) -> Result<Self> {
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[0..8]);
        let mut l = [0u8; 8];
        l[..7].copy_from_slice(&b[8..15]);
        let kind = match b[15] {
            1 => Kind::Data,
            2 => Kind::Zero,
            k => return Err(bad(format!("extent kind {k} is unknown"))),
        };
        Ok(Extent {
            start: u64::from_le_bytes(s),
            len: u64::from_le_bytes(l),
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

/// Writes a stream: header and map first, then the data in map order, then the trailer.
pub struct StreamWriter<W: Write> {
    out: W,
    hash: Sha256,
    extents: Vec<Extent>,
    next: usize,
    /// Blocks of data still expected for `extents[next - 1]`.
    pending: u64,
    block_size: u32,
    counts: Counts,
    written: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Write the header and the map. `extents` must be sorted, disjoint, non-empty runs.
    pub fn new(mut out: W, mut header: Header, extents: Vec<Extent>) -> Result<Self> {
        header.extents = extents.len() as u64;
        let mut hash = Sha256::new();
        let h = header.encode();
        hash.update(h);
        out.write_all(&h).map_err(io_err("write", 0))?;
        let mut counts = Counts::default();
        let mut buf = Vec::with_capacity(extents.len().min(1 << 16) * EXTENT_LEN);
        let mut written = HEADER_LEN as u64;
        for e in &extents {
            match e.kind {
                Kind::Data => counts.data_blocks += e.len,
                Kind::Zero => counts.zero_blocks += e.len,
            }
            buf.extend_from_slice(&e.encode());
            if buf.len() >= 1 << 20 {
                hash.update(&buf);
                out.write_all(&buf).map_err(io_err("write", written))?;
                written += buf.len() as u64;
                buf.clear();
            }
        }
        hash.update(&buf);
        out.write_all(&buf).map_err(io_err("write", written))?;
        written += buf.len() as u64;
        // The map's own hash lets a reader trust the layout before any data arrives.
        let map_hash = hash.clone().finalize();
        out.write_all(&map_hash).map_err(io_err("write", written))?;
        written += 32;
        let _ = counts;
        Ok(StreamWriter {
            out,
            hash,
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
        let bs = self.block_size as usize;
        if !data.len().is_multiple_of(bs) {
            return Err(Error::InvalidInput(
                "stream data must be whole blocks".into(),
            ));
        }
        let mut blocks = (data.len() / bs) as u64;
        while blocks > 0 {
            if self.pending == 0 {
                while self.next < self.extents.len() && self.extents[self.next].kind != Kind::Data {
                    self.next += 1;
                }
                let Some(e) = self.extents.get(self.next) else {
                    return Err(Error::InvalidInput(
                        "more stream data than the map holds".into(),
                    ));
                };
                self.pending = e.len;
                self.next += 1;
            }
            let n = blocks.min(self.pending);
            self.pending -= n;
            blocks -= n;
        }
        self.hash.update(data);
        self.out
            .write_all(data)
            .map_err(io_err("write", self.written))?;
        self.written += data.len() as u64;
        self.counts.data_blocks += (data.len() / bs) as u64;
        Ok(())
    }

    /// Write the trailer and return the output and the SHA-256 of the stream content.
    pub fn finish(mut self) -> Result<(W, [u8; 32])> {
        let rest_data = self.pending != 0
            || self.extents[self.next..]
                .iter()
                .any(|e| e.kind == Kind::Data);
        if rest_data {
            return Err(Error::InvalidInput(
                "stream finished before all mapped data was written".into(),
            ));
        }
        self.counts.zero_blocks = self
            .extents
            .iter()
            .filter(|e| e.kind == Kind::Zero)
            .map(|e| e.len)
            .sum();
        let digest: [u8; 32] = self.hash.finalize().into();
        let mut t = [0u8; TRAILER_LEN];
        t[0..8].copy_from_slice(&TRAILER_MAGIC);
        t[8..16].copy_from_slice(&(self.extents.len() as u64).to_le_bytes());
        t[16..24].copy_from_slice(&self.counts.data_blocks.to_le_bytes());
        t[24..32].copy_from_slice(&self.counts.zero_blocks.to_le_bytes());
        t[32..64].copy_from_slice(&digest);
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

fn read_full<R: Read>(r: &mut R, buf: &mut [u8], pos: u64, what: &str) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(bad(format!(
                    "truncated: ends at byte {} inside the {what}",
                    pos + done as u64
                )));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", pos + done as u64, e)),
        }
    }
    Ok(())
}

impl<R: Read> StreamReader<R> {
    /// Read the header and map. `prefix` holds bytes already consumed for format detection.
    pub fn open(mut input: R) -> Result<Self> {
        let mut h = [0u8; HEADER_LEN];
        read_full(&mut input, &mut h, 0, "header")?;
        let header = Header::decode(&h)?;
        let mut hash = Sha256::new();
        hash.update(h);
        let mut pos = HEADER_LEN as u64;
        // Grow as entries arrive: a lying count cannot make us allocate up front.
        let mut extents: Vec<Extent> = Vec::new();
        let mut prev_end = 0u64;
        let mut data_blocks = 0u64;
        let mut zero_blocks = 0u64;
        let mut rec = [0u8; EXTENT_LEN];
        for i in 0..header.extents {
            read_full(&mut input, &mut rec, pos, "extent map")?;
            hash.update(rec);
            pos += EXTENT_LEN as u64;
            let e = Extent::decode(&rec)?;
            let end = e
                .start
                .checked_add(e.len)
                .filter(|&end| end <= header.blocks_count);
            let Some(end) = end else {
                return Err(bad(format!(
                    "extent {i} ({}+{}) lies past the image end",
                    e.start, e.len
                )));
            };
            if e.len == 0 || (i > 0 && e.start < prev_end) {
                return Err(bad(format!(
                    "extent {i} at block {} is empty, overlapping or out of order",
                    e.start
                )));
            }
            prev_end = end;
            match e.kind {
                Kind::Data => data_blocks += e.len,
                Kind::Zero => zero_blocks += e.len,
            }
            extents.push(e);
        }
        let mut mh = [0u8; 32];
        read_full(&mut input, &mut mh, pos, "map checksum")?;
        pos += 32;
        if hash.clone().finalize()[..] != mh[..] {
            return Err(bad(
                "the header or extent map is corrupt (checksum mismatch)",
            ));
        }
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

    /// The data extents, as block-map runs (what a qcow2 layout needs).
    pub fn data_runs(&self) -> Vec<crate::blockmap::Run> {
        self.extents
            .iter()
            .filter(|e| e.kind == Kind::Data)
            .map(|e| crate::blockmap::Run {
                start: e.start,
                len: e.len,
            })
            .collect()
    }

    /// Blocks of data the stream carries.
    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    pub fn zero_blocks(&self) -> u64 {
        self.zero_blocks
    }

    /// Read the next `buf.len()` bytes of the data section (whole blocks).
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<()> {
        read_full(&mut self.input, buf, self.pos, "data")?;
        self.hash.update(&*buf);
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Read every extent in order: `f(extent, Some(data piece))` for data (in pieces of at
    /// most `chunk` bytes, the extent's start advanced), `f(extent, None)` for zeros. Then
    /// verify the trailer. Nothing is trusted until this returns `Ok`.
    pub fn for_each(&mut self, chunk: usize, f: &mut ExtentVisitor<'_>) -> Result<[u8; 32]> {
        let bs = u64::from(self.header.block_size);
        let per = (chunk as u64 / bs).max(1);
        let mut buf = Vec::new();
        let extents = std::mem::take(&mut self.extents);
        let res = (|| {
            for e in &extents {
                match e.kind {
                    Kind::Zero => f(*e, None)?,
                    Kind::Data => {
                        let mut b = e.start;
                        while b < e.start + e.len {
                            let n = per.min(e.start + e.len - b);
                            buf.resize((n * bs) as usize, 0);
                            self.read_data(&mut buf)?;
                            f(
                                Extent {
                                    start: b,
                                    len: n,
                                    kind: Kind::Data,
                                },
                                Some(&buf),
                            )?;
                            b += n;
                        }
                    }
                }
            }
            self.finish()
        })();
        self.extents = extents;
        res
    }

    /// Read and check the trailer after the data.
    pub fn finish(&mut self) -> Result<[u8; 32]> {
        let mut t = [0u8; TRAILER_LEN];
        read_full(&mut self.input, &mut t, self.pos, "trailer")?;
        if t[0..8] != TRAILER_MAGIC {
            return Err(bad(format!(
                "no trailer at byte {} (data corrupt or stream cut)",
                self.pos
            )));
        }
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&t[o..o + 8]);
            u64::from_le_bytes(a)
        };
        if u64_at(8) != self.header.extents
            || u64_at(16) != self.data_blocks
            || u64_at(24) != self.zero_blocks
        {
            return Err(bad("trailer counts do not match the map"));
        }
        let digest: [u8; 32] = self.hash.clone().finalize().into();
        if t[32..64] != digest {
            return Err(bad("checksum mismatch: the stream was altered"));
        }
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => {
                return Err(bad(format!(
                    "unexpected bytes after the trailer at byte {}",
                    self.pos + TRAILER_LEN as u64
                )));
            }
            Err(e) => return Err(Error::io("read", self.pos, e)),
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Header, Vec<Extent>, Vec<u8>) {
        let h = Header {
            flags: flags::ALL_DATA,
            incompat: 0,
            block_size: 1024,
            blocks_count: 100,
            uuid: [7; 16],
            extents: 0,
        };
        let ex = vec![
            Extent {
                start: 1,
                len: 2,
                kind: Kind::Data,
            },
            Extent {
                start: 5,
                len: 3,
                kind: Kind::Zero,
            },
            Extent {
                start: 50,
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

    #[test]
    fn every_truncation_and_flip_is_caught() {
        let bytes = encode();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b).is_err(), "flip at {i} accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }
}
