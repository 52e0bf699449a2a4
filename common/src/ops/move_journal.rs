//! The durable journal of an in-place move (`e2i-move -o S -O D SOURCE`): the move's plan,
//! what SOURCE is, and checkpoints — and the check that SOURCE is still in a state the
//! journal can finish. docs/move-journal.md explains the protocol and why the check accepts
//! every state a killed move leaves, and nothing else.
//!
//! Layout (all integers little-endian):
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 4096 | header: move parameters, SOURCE's identity and size, counts, SHA-256 of what follows, CRC-32C |
//! | 4096 | 16 × spans | spans `(first block, block count)` in filesystem blocks |
//! | after the spans | 4 × pieces | CRC-32C of each piece's bytes, read when the move started |
//! | `A` = 4096-aligned end of that | 2 × 4096 | two checkpoint slots (sequence, next piece, state) |
//! | `A + 8192` | 4096 + piece size | save slot 0: header (piece, length, data CRC), then the bytes |
//! | after slot 0 | 4096 + piece size | save slot 1 (piece `k` is saved in slot `k % 2`) |
//!
//! The header, spans and checksums are written once, to a temporary file that is synced and
//! renamed into place. Checkpoints alternate between the two slots, so a torn write can
//! only damage the slot being written; the valid slot with the highest sequence wins.
//!
//! Every number read from a journal is checked before use: counts against the file's size
//! (nothing is allocated for a count the file cannot hold), offsets with checked arithmetic,
//! and damage is a [`CorruptKind`] naming the journal and the field.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::blockmap::BlockRun;
use crate::bytes::le;
use crate::error::CorruptKind;
use crate::io::{
    ObjectId, ReadAt, pread_full, pwrite_all, pwrite_full, reopen_direct, write_maybe_direct,
};
use crate::progress::{Progress, Unit};
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// Largest piece of a move (the unit of copying, saving and checking).
pub const PIECE_BYTES: u64 = 32 << 20;

const MAGIC: &[u8; 8] = b"E2IMOVE\0";
const CKPT_MAGIC: &[u8; 8] = b"E2ICKPT\0";
const SAVE_MAGIC: &[u8; 8] = b"E2ISAVE\0";
/// Version 1 (no identity, no checksums of the bytes) is refused: it cannot be verified.
const VERSION: u32 = 2;
const PAGE: u64 = 4096;
const PAGE_LEN: usize = 4096;
const SPAN_BYTES: u64 = 16;
const SPAN_LEN: usize = 16;
const DIGEST_BYTES: u64 = 4;
const DIGEST_LEN: usize = 4;

// Header fields.
const H_VERSION: usize = 8;
const H_BLOCK_SIZE: usize = 12;
const H_SRC_OFFSET: usize = 16;
const H_DEST_OFFSET: usize = 24;
const H_BLOCKS_COUNT: usize = 32;
const H_UUID: usize = 40;
const H_PIECE_BLOCKS: usize = 56;
const H_SPANS: usize = 64;
const H_PIECES: usize = 72;
const H_ID_KIND: usize = 80;
const H_ID_DEV: usize = 88;
const H_ID_INO: usize = 96;
const H_SOURCE_SIZE: usize = 104;
const H_HASH: usize = 112;
const H_CRC: usize = 144;

const ID_INODE: u32 = 1;
const ID_BLOCK_DEVICE: u32 = 2;

// Checkpoint record: magic, sequence, next piece (a done record: SOURCE's change stamp,
// see [`Journal::finish`]), state, CRC.
const CKPT_LEN: usize = 32;
const STATE_RUNNING: u32 = 1;
const STATE_DONE: u32 = 2;

// Save-record header: magic, piece, length, data CRC, 4 bytes of the header hash, CRC.
const SAVE_LEN: usize = 36;

/// The checksum of a piece's bytes (CRC-32C: hardware-accelerated, so checking a whole move
/// costs about as much as reading it).
pub fn digest(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Bytes per read when checksumming (small enough to stay in the CPU's cache).
pub const CHECK_CHUNK: usize = 1 << 20;

/// The checksum of the bytes `at` of `src` (holes and bytes past its end read as zeros),
/// read in chunks of `buf`'s size: equal to [`digest`] of those bytes.
pub fn checksum_range(src: &dyn ReadAt, at: &Range<u64>, buf: &mut [u8]) -> Result<u32> {
    let mut crc = 0u32;
    let mut pos = at.start;
    let step = buf.len().max(1);
    while pos < at.end {
        let left = at.end.saturating_sub(pos);
        let n = usize::try_from(left).map_or(step, |l| l.min(step));
        src.read_sparse_at(&mut buf[..n], pos)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        pos = pos.saturating_add(n as u64);
    }
    Ok(crc)
}

/// A stretch of filesystem blocks `[start, start + len)` that a move copies, as its journal
/// records it: selected runs of the block map merged across small gaps (so it may cover free
/// blocks: not a [`BlockRun`] of the map), then cut into pieces. `len` counts blocks; where
/// a span lies in SOURCE is a byte range, [`Span::bytes_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    pub start: FsBlock,
    pub len: u64,
}

impl Span {
    pub const fn new(start: FsBlock, len: u64) -> Self {
        Span { start, len }
    }

    /// The span covering a run of the block map.
    pub const fn covering(r: BlockRun) -> Self {
        Span {
            start: r.start,
            len: r.len,
        }
    }

    /// One past the last block (saturating: the spans of a plan are checked to end inside
    /// the filesystem; use [`Self::checked_end`] on spans that are not).
    pub const fn end(&self) -> FsBlock {
        self.start.saturating_add(self.len)
    }

    /// One past the last block, if it exists.
    pub fn checked_end(&self) -> Option<FsBlock> {
        self.start.checked_add(self.len)
    }

    /// The bytes of SOURCE the span occupies when the filesystem starts at byte `fs_at`.
    pub fn bytes_at(&self, bs: BlockSize, fs_at: u64) -> Option<Range<u64>> {
        let at = |b: FsBlock| bs.offset_of(b)?.checked_add(fs_at);
        Some(at(self.start)?..at(self.checked_end()?)?)
    }
}

/// What the move is: everything needed to finish it without reading the old filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveParams {
    pub block_size: BlockSize,
    pub src_offset: u64,
    pub dest_offset: u64,
    pub blocks_count: u64,
    pub uuid: [u8; 16],
    /// Blocks per piece (the unit of copying and of progress).
    pub piece_blocks: u64,
    /// The blocks to move, sorted and disjoint (selected runs, small gaps merged).
    pub spans: Vec<Span>,
}

/// One piece of a move: a run of filesystem blocks, and the bytes of SOURCE it is read from
/// and written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub blocks: Span,
    pub src: Range<u64>,
    pub dst: Range<u64>,
}

impl Piece {
    /// Length in bytes.
    pub fn bytes(&self) -> u64 {
        self.src.end.saturating_sub(self.src.start)
    }

    /// Length in bytes, as a buffer length (a piece is at most [`PIECE_BYTES`]).
    pub fn buf_len(&self) -> usize {
        usize::try_from(self.bytes()).unwrap_or(usize::MAX)
    }

    /// Does the destination overlap the piece's own source (a shift shorter than the piece)?
    pub fn overlaps_itself(&self) -> bool {
        overlaps(&self.src, &self.dst)
    }
}

/// Do two byte ranges share a byte?
pub fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Why a move's parameters are unusable (mapped to [`CorruptKind`] for a journal, to
/// [`Error::InvalidInput`] for a new move).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bad {
    Field(&'static str, u64),
    Span(u64, Span),
}

impl MoveParams {
    /// Bytes of the filesystem.
    pub fn fs_bytes(&self) -> Option<u64> {
        self.block_size.bytes_of(self.blocks_count)
    }

    /// The byte just past the filesystem at its destination.
    pub fn dest_end(&self) -> Option<u64> {
        self.dest_offset.checked_add(self.fs_bytes()?)
    }

    /// Is the move to the right (towards higher offsets)?
    pub fn moves_right(&self) -> bool {
        self.dest_offset > self.src_offset
    }

    /// Check everything the plan depends on (the block size is valid by its type): piece
    /// size, offsets that must not overflow, spans sorted, disjoint, non-empty and inside
    /// the filesystem.
    fn check(&self) -> std::result::Result<(), Bad> {
        let piece_bytes = self.block_size.bytes_of(self.piece_blocks);
        if self.piece_blocks == 0 || piece_bytes.is_none_or(|b| b > PIECE_BYTES) {
            return Err(Bad::Field("blocks per piece", self.piece_blocks));
        }
        if self.src_offset == self.dest_offset {
            return Err(Bad::Field("destination offset", self.dest_offset));
        }
        let fs = self
            .fs_bytes()
            .ok_or(Bad::Field("blocks count", self.blocks_count))?;
        if self.src_offset.checked_add(fs).is_none() {
            return Err(Bad::Field("source offset", self.src_offset));
        }
        if self.dest_offset.checked_add(fs).is_none() {
            return Err(Bad::Field("destination offset", self.dest_offset));
        }
        let mut prev_end = FsBlock(0);
        for (i, r) in self.spans.iter().enumerate() {
            let end = r.checked_end();
            if r.len == 0 || r.start < prev_end || end.is_none_or(|e| e.get() > self.blocks_count) {
                return Err(Bad::Span(i as u64, *r));
            }
            prev_end = end.unwrap_or(FsBlock(u64::MAX));
        }
        Ok(())
    }

    /// How many pieces the spans make (without building them), or `None` on overflow.
    fn piece_count(&self) -> Option<u64> {
        let pb = self.piece_blocks.max(1);
        self.spans
            .iter()
            .try_fold(0u64, |n, r| n.checked_add(r.len.div_ceil(pb)))
    }

    /// The pieces in the order they are copied: from the end backwards when the filesystem
    /// moves right, from the start forwards when it moves left. In that order no piece's
    /// destination overlaps the source of a piece copied after it (docs/move-journal.md).
    fn plan(&self) -> std::result::Result<Vec<Piece>, Bad> {
        self.check()?;
        // `check` bounded every byte offset below (offset + fs size), so these cannot
        // overflow; they stay checked so that a future change cannot make them wrap.
        let bytes = |off: u64, r: &Span| -> std::result::Result<Range<u64>, Bad> {
            r.bytes_at(self.block_size, off)
                .ok_or(Bad::Field("span", r.start.get()))
        };
        let mut out = Vec::new();
        for blocks in split_pieces(&self.spans, self.piece_blocks, self.moves_right()) {
            out.push(Piece {
                src: bytes(self.src_offset, &blocks)?,
                dst: bytes(self.dest_offset, &blocks)?,
                blocks,
            });
        }
        Ok(out)
    }

    /// SHA-256 of the spans and piece checksums, as stored in the header.
    fn body_hash(&self, digests: &[u32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(encode_body(&self.spans, digests));
        h.finalize().into()
    }

    /// The pieces of a new move, or why its parameters are unusable.
    pub fn pieces(&self) -> Result<Vec<Piece>> {
        self.plan().map_err(|b| match b {
            Bad::Field(f, v) => Error::InvalidInput(format!("the move's {f} {v} is out of range")),
            Bad::Span(i, r) => Error::InvalidInput(format!(
                "span {i} (blocks {}, {} long) lies outside the filesystem",
                r.start, r.len
            )),
        })
    }
}

/// Cut sorted spans into pieces of at most `piece_blocks` blocks, in copy order.
fn split_pieces(spans: &[Span], piece_blocks: u64, right: bool) -> Vec<Span> {
    let pb = piece_blocks.max(1);
    let mut out = Vec::new();
    if right {
        for s in spans.iter().rev() {
            let mut e = s.end();
            while e > s.start {
                let b = FsBlock(e.get().saturating_sub(pb)).max(s.start);
                out.push(Span::new(b, e.saturating_since(b)));
                e = b;
            }
        }
    } else {
        for s in spans {
            let mut b = s.start;
            while b < s.end() {
                let e = b.saturating_add(pb).min(s.end());
                out.push(Span::new(b, e.saturating_since(b)));
                b = e;
            }
        }
    }
    out
}

fn encode_body(spans: &[Span], digests: &[u32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(
        spans
            .len()
            .saturating_mul(16)
            .saturating_add(digests.len().saturating_mul(4)),
    );
    for r in spans {
        b.extend_from_slice(&le::bytes_u64(r.start.get()));
        b.extend_from_slice(&le::bytes_u64(r.len));
    }
    for d in digests {
        b.extend_from_slice(&le::bytes_u32(*d));
    }
    b
}

/// SOURCE as the journal knows it: which object, and how large it was when the move began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceId {
    pub object: ObjectId,
    pub size: u64,
}

/// State recorded by a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Pieces `[0, next)` are durably at the destination.
    Running { next: u64 },
    /// Every piece is at the destination and the data is synced.
    Done,
}

/// An intact save record ([`Journal::saved`]): piece `piece`'s source bytes, with the
/// checksum the journal records for it, are in the piece's save slot. Only the piece number
/// is held: a record is up to a piece (32 MiB), and a resumed move reads it a slice at a
/// time ([`Records::read`]) as it copies, so it holds no more memory than a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    pub piece: u64,
}

/// Reads save records from another thread than the journal's ([`Journal::records`]).
pub struct Records {
    file: File,
    path: PathBuf,
    /// Where save slots 0 and 1 start.
    slots: [u64; 2],
    /// Bytes of data a slot holds.
    room: u64,
}

impl Records {
    /// Read bytes `at..at + buf.len()` of piece `piece`'s save record into `buf`. The caller
    /// checks the piece's checksum over all its bytes: a record changed since
    /// [`Journal::saved`] found it intact is [`CorruptKind::MoveJournalSaveChanged`], as is
    /// one cut short.
    pub fn read(&self, piece: u64, at: u64, buf: &mut [u8]) -> Result<()> {
        let changed = || self.changed(piece);
        let end = at.checked_add(buf.len() as u64).filter(|&e| e <= self.room);
        if end.is_none() {
            return Err(changed());
        }
        // Inside the slot (checked above).
        let off = self.slots[usize::from(piece % 2 == 1)]
            .saturating_add(PAGE)
            .saturating_add(at);
        let n =
            pread_full(&self.file, buf, off).map_err(|e| Error::io_at("read journal", off, e))?;
        if n < buf.len() {
            return Err(changed());
        }
        Ok(())
    }

    /// The error for a record of `piece` that no longer holds the piece.
    pub fn changed(&self, piece: u64) -> Error {
        Error::Corrupt(CorruptKind::MoveJournalSaveChanged {
            path: self.path.clone(),
            piece,
        })
    }
}

/// Writes save records of a [`Journal`] ([`Journal::saver`]): a piece's bytes in parts, then
/// the header that makes the record count. Not synced: the journal's next sync or checkpoint
/// (the same file) makes them durable.
pub struct Saver {
    file: File,
    /// A handle around the page cache (opened on first use), as [`Journal::save`] has.
    direct: Mutex<(bool, Option<File>)>,
    /// Where save slots 0 and 1 start.
    slots: [u64; 2],
    /// Bytes of data a slot holds.
    room: u64,
    /// The first bytes of the journal header's hash.
    hash: [u8; 4],
    crash_point: Option<fn()>,
    slice_bytes: usize,
}

impl Saver {
    fn crash_point(&self) {
        if let Some(f) = self.crash_point {
            f();
        }
    }

    /// Where the record of `piece` starts (slot `piece % 2`).
    fn slot(&self, piece: u64) -> u64 {
        self.slots[usize::from(piece % 2 == 1)]
    }

    /// Write `data`, bytes `at..` of piece `piece`'s source, into its slot. The slot's old
    /// record stops counting as soon as its bytes change (its checksum no longer matches).
    pub fn part(&self, piece: u64, at: u64, data: &[u8]) -> Result<()> {
        let end = at
            .checked_add(data.len() as u64)
            .filter(|&e| e <= self.room);
        if end.is_none() {
            return Err(Error::InvalidInput(format!(
                "piece {piece}: bytes {at}.. do not fit a save slot"
            )));
        }
        let mut direct = self.direct.lock().unwrap_or_else(|e| e.into_inner());
        if !direct.0 {
            *direct = (true, reopen_direct(&self.file));
        }
        let slice = if self.slice_bytes > 0 {
            self.slice_bytes
        } else {
            data.len().max(1)
        };
        // Inside the slot (checked above).
        let mut off = self.slot(piece).saturating_add(PAGE).saturating_add(at);
        for chunk in data.chunks(slice) {
            self.crash_point();
            write_maybe_direct(&self.file, &mut direct.1, chunk, off)?;
            off = off.saturating_add(chunk.len() as u64);
        }
        Ok(())
    }

    /// Write the header of piece `piece`'s record, once all its `len` bytes are written:
    /// `crc` must be the checksum the journal records for the piece (the caller checked the
    /// bytes), so other bytes never count as saved.
    pub fn seal(&self, piece: u64, len: u64, crc: u32) -> Result<()> {
        let at = self.slot(piece);
        let mut h = [0u8; SAVE_LEN];
        h[0..8].copy_from_slice(SAVE_MAGIC);
        le::set_u64(&mut h, 8, piece);
        le::set_u64(&mut h, 16, len);
        le::set_u32(&mut h, 24, crc);
        h[28..32].copy_from_slice(&self.hash);
        let hcrc = crc32c::crc32c(&h[..32]);
        le::set_u32(&mut h, 32, hcrc);
        self.crash_point();
        pwrite_all(&self.file, &h, at, "write journal")
    }

    /// The whole record of `piece` at once.
    fn save(&self, piece: u64, data: &[u8], crc: u32) -> Result<()> {
        self.part(piece, 0, data)?;
        self.seal(piece, data.len() as u64, crc)
    }
}

/// Why SOURCE is not in a state this journal can finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// SOURCE is another file or device than the one the journal was written for.
    Identity {
        recorded: ObjectId,
        actual: ObjectId,
    },
    /// SOURCE's size is outside what the move can have made of it.
    Size { recorded: u64, actual: u64 },
    /// Every piece is at its destination: the move was finished (by another run, under
    /// another journal), and sources it still has to read were overwritten since.
    AlreadyMoved,
    /// SOURCE holds every piece at its source, but the `moved` pieces the journal records as
    /// moved are not at their destination: SOURCE is as before the move (restored from a
    /// backup?).
    Unmoved { moved: u64 },
    /// Neither: `pieces` pieces are not where the journal expects them; the first is piece
    /// `piece`, whose bytes `at` (at its destination when `destination`) differ.
    Changed {
        piece: u64,
        at: Range<u64>,
        destination: bool,
        pieces: u64,
    },
}

/// An open journal file.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    params: MoveParams,
    pieces: Vec<Piece>,
    digests: Vec<u32>,
    source: SourceId,
    hash: [u8; 32],
    ckpt_at: u64,
    seq: u64,
    state: State,
    /// A done record's stamp of SOURCE ([`Journal::finish`]); 0 when none.
    stamp: u64,
    writable: bool,
    /// Test hooks: see [`Journal::set_test_hooks`].
    crash_point: Option<fn()>,
    slice_bytes: usize,
}

fn sync_dir(path: &Path) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(d) = File::open(dir) {
        // Best effort: some filesystems refuse fsync on directories.
        let _ = d.sync_all();
    }
}

/// Where the checkpoint slots start: after the header, spans and checksums, page-aligned.
fn ckpt_offset(nspans: u64, npieces: u64) -> Option<u64> {
    let end = nspans
        .checked_mul(SPAN_BYTES)?
        .checked_add(npieces.checked_mul(DIGEST_BYTES)?)?
        .checked_add(PAGE)?;
    end.checked_next_multiple_of(PAGE)
}

/// Where checkpoint slot `slot` (0 or 1) starts. `ckpt_at` lies inside the journal file
/// (checked when it is read), so adding a page cannot overflow.
fn slot_offset(ckpt_at: u64, slot: u64) -> u64 {
    ckpt_at.saturating_add(slot.saturating_mul(PAGE))
}

fn encode_ckpt(seq: u64, state: State, stamp: u64) -> [u8; CKPT_LEN] {
    let mut b = [0u8; CKPT_LEN];
    b[0..8].copy_from_slice(CKPT_MAGIC);
    le::set_u64(&mut b, 8, seq);
    let (next, st) = match state {
        State::Running { next } => (next, STATE_RUNNING),
        State::Done => (stamp, STATE_DONE),
    };
    le::set_u64(&mut b, 16, next);
    le::set_u32(&mut b, 24, st);
    let crc = crc32c::crc32c(&b[..28]);
    le::set_u32(&mut b, 28, crc);
    b
}

/// A checkpoint record: its sequence, state and (a done record's) change stamp.
fn decode_ckpt(b: &[u8; CKPT_LEN]) -> Option<(u64, State, u64)> {
    if &b[0..8] != CKPT_MAGIC || crc32c::crc32c(&b[..28]) != le::u32(b, 28) {
        return None;
    }
    let (state, stamp) = match le::u32(b, 24) {
        STATE_RUNNING => (
            State::Running {
                next: le::u64(b, 16),
            },
            0,
        ),
        STATE_DONE => (State::Done, le::u64(b, 16)),
        _ => return None,
    };
    Some((le::u64(b, 8), state, stamp))
}

/// Take the one-writer lock of an open journal: two movers must never write one journal
/// (a rerun under another name of SOURCE, a copy adopted with --journal, while the first
/// still runs). Released by the kernel when the process ends, also when it is killed.
fn lock(file: &File, path: &Path) -> Result<()> {
    use rustix::fs::{FlockOperation, flock};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        Error::InvalidInput(format!(
            "journal {}: another e2i-move is using it",
            path.display()
        ))
    })
}

fn encode_id(head: &mut [u8], id: &SourceId) {
    let (kind, dev, ino) = match id.object {
        ObjectId::Inode { dev, ino } => (ID_INODE, dev, ino),
        ObjectId::BlockDevice { rdev } => (ID_BLOCK_DEVICE, rdev, 0),
    };
    le::set_u32(head, H_ID_KIND, kind);
    le::set_u64(head, H_ID_DEV, dev);
    le::set_u64(head, H_ID_INO, ino);
    le::set_u64(head, H_SOURCE_SIZE, id.size);
}

impl Journal {
    /// Create the journal at `path` for a new move, durably: written to a temporary file,
    /// synced, renamed over `path` (replacing a finished journal), directory synced. The
    /// folder must exist. `digests` are the checksums of the pieces' bytes, in copy order.
    pub fn create(
        path: &Path,
        params: MoveParams,
        source: SourceId,
        digests: Vec<u32>,
    ) -> Result<Journal> {
        let pieces = params.pieces()?;
        if pieces.len() != digests.len() {
            return Err(Error::InvalidInput(format!(
                "{} piece checksums for {} pieces",
                digests.len(),
                pieces.len()
            )));
        }
        let nspans = params.spans.len() as u64;
        let npieces = pieces.len() as u64;
        let ckpt_at = ckpt_offset(nspans, npieces)
            .ok_or_else(|| Error::InvalidInput("too many spans for a move journal".into()))?;
        let hash = params.body_hash(&digests);
        let mut head = vec![0u8; PAGE_LEN];
        head[0..8].copy_from_slice(MAGIC);
        le::set_u32(&mut head, H_VERSION, VERSION);
        le::set_u32(&mut head, H_BLOCK_SIZE, params.block_size.get());
        le::set_u64(&mut head, H_SRC_OFFSET, params.src_offset);
        le::set_u64(&mut head, H_DEST_OFFSET, params.dest_offset);
        le::set_u64(&mut head, H_BLOCKS_COUNT, params.blocks_count);
        head[H_UUID..H_UUID + 16].copy_from_slice(&params.uuid);
        le::set_u64(&mut head, H_PIECE_BLOCKS, params.piece_blocks);
        le::set_u64(&mut head, H_SPANS, nspans);
        le::set_u64(&mut head, H_PIECES, npieces);
        encode_id(&mut head, &source);
        head[H_HASH..H_HASH + 32].copy_from_slice(&hash);
        let crc = crc32c::crc32c(&head[..H_CRC]);
        le::set_u32(&mut head, H_CRC, crc);
        let body = encode_body(&params.spans, &digests);

        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A fixed temporary name: one left by a killed run is simply replaced (one mover
        // per SOURCE holds the lock). Removed, then created exclusively: never opened
        // through whatever is there (a symlink another user planted in /tmp would have
        // root truncate and write its target).
        // "." + NAME + ".tmp".
        let room = crate::io::NAME_MAX.saturating_sub(5);
        let tmp = path.with_file_name(format!(".{}.tmp", crate::io::fit_name(&name, room)));
        let io = |op, e| Error::io_at(op, 0, e);
        let _ = std::fs::remove_file(&tmp);
        // 0600: its save slots hold copies of SOURCE's bytes (file data of a moved disk
        // only root may read), next to SOURCE, in a folder others may read.
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("create journal", e))?;
        let res = (|| {
            pwrite_full(&file, &head, 0).map_err(|e| io("write journal", e))?;
            pwrite_full(&file, &body, PAGE).map_err(|e| io("write journal", e))?;
            // Sequence 1 lives in slot 1 (slots are seq % 2), so the next checkpoint
            // never overwrites the only valid one.
            lock(&file, path)?;
            let ck = encode_ckpt(1, State::Running { next: 0 }, 0);
            pwrite_full(&file, &ck, slot_offset(ckpt_at, 1)).map_err(|e| io("write journal", e))?;
            file.sync_all().map_err(|e| io("sync journal", e))?;
            std::fs::rename(&tmp, path).map_err(|e| io("rename journal", e))
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res?;
        sync_dir(path);
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            params,
            pieces,
            digests,
            source,
            hash,
            ckpt_at,
            seq: 1,
            state: State::Running { next: 0 },
            stamp: 0,
            writable: true,
            crash_point: None,
            slice_bytes: 0,
        })
    }

    /// Open an existing journal (`writable`: to continue its move); `Ok(None)` when there
    /// is none. Damage is a [`CorruptKind`] naming the journal and what is wrong.
    pub fn open(path: &Path, writable: bool) -> Result<Option<Journal>> {
        // Looked at before it is opened: opening a FIFO to read waits for a writer (a dry
        // run, or a capture checking SOURCE's journal, hung on one), and opening a device
        // can act.
        match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => {
                return Err(Error::InvalidInput(format!(
                    "{} is not a regular file",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            _ => {}
        }
        let file = match OpenOptions::new().read(true).write(writable).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open journal", e)),
        };
        let p = || path.to_path_buf();
        let meta = file.metadata().map_err(|e| Error::io("stat journal", e))?;
        if !meta.is_file() {
            return Err(Error::InvalidInput(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        if writable {
            lock(&file, path)?;
        }
        let flen = meta.len();
        let read = |buf: &mut [u8], off: u64, what: &'static str| -> Result<()> {
            let n =
                pread_full(&file, buf, off).map_err(|e| Error::io_at("read journal", off, e))?;
            if n < buf.len() {
                return Err(CorruptKind::MoveJournalTruncated {
                    path: p(),
                    what,
                    need: off.saturating_add(buf.len() as u64),
                    len: flen,
                }
                .into());
            }
            Ok(())
        };
        let mut head = vec![0u8; PAGE_LEN];
        read(&mut head, 0, "header")?;
        if &head[0..8] != MAGIC {
            return Err(CorruptKind::MoveJournalMagic { path: p() }.into());
        }
        let version = le::u32(&head, H_VERSION);
        if version != VERSION {
            return Err(CorruptKind::MoveJournalVersion {
                path: p(),
                version,
                supported: VERSION,
            }
            .into());
        }
        if crc32c::crc32c(&head[..H_CRC]) != le::u32(&head, H_CRC) {
            return Err(CorruptKind::MoveJournalHeaderChecksum { path: p() }.into());
        }
        let nspans = le::u64(&head, H_SPANS);
        let npieces = le::u64(&head, H_PIECES);
        let ckpt_at = ckpt_offset(nspans, npieces).ok_or(CorruptKind::MoveJournalField {
            path: p(),
            field: "span or piece count",
            value: nspans.max(npieces),
        })?;
        // The body must lie inside the file before anything is allocated for it. (A new
        // journal ends with the record in the second checkpoint slot.)
        let slots_end = slot_offset(ckpt_at, 1).saturating_add(CKPT_LEN as u64);
        if slots_end > flen {
            return Err(CorruptKind::MoveJournalTruncated {
                path: p(),
                what: "span list, checksums and checkpoints",
                need: slots_end,
                len: flen,
            }
            .into());
        }
        let body_len = usize::try_from(ckpt_at.saturating_sub(PAGE)).map_err(|_| {
            Error::from(CorruptKind::MoveJournalField {
                path: p(),
                field: "span count",
                value: nspans,
            })
        })?;
        let mut body = vec![0u8; body_len];
        read(&mut body, PAGE, "span list")?;
        // Both lengths fit in `body` (its length is their sum, computed checked above).
        let spans_len = usize::try_from(nspans.saturating_mul(SPAN_BYTES)).unwrap_or(usize::MAX);
        let digests_len =
            usize::try_from(npieces.saturating_mul(DIGEST_BYTES)).unwrap_or(usize::MAX);
        let short = || CorruptKind::MoveJournalTruncated {
            path: p(),
            what: "span list",
            need: ckpt_at,
            len: flen,
        };
        let (span_bytes, rest) = body.split_at_checked(spans_len).ok_or_else(short)?;
        let digest_bytes = rest.get(..digests_len).ok_or_else(short)?;
        let spans: Vec<Span> = span_bytes
            .chunks_exact(SPAN_LEN)
            .map(|c| Span::new(FsBlock(le::u64(c, 0)), le::u64(c, 8)))
            .collect();
        let digests: Vec<u32> = digest_bytes
            .chunks_exact(DIGEST_LEN)
            .map(|c| le::u32(c, 0))
            .collect();
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&head[H_UUID..H_UUID + 16]);
        let block_size = le::u32(&head, H_BLOCK_SIZE);
        let block_size = BlockSize::new(block_size).ok_or(CorruptKind::MoveJournalField {
            path: p(),
            field: "block size",
            value: u64::from(block_size),
        })?;
        let params = MoveParams {
            block_size,
            src_offset: le::u64(&head, H_SRC_OFFSET),
            dest_offset: le::u64(&head, H_DEST_OFFSET),
            blocks_count: le::u64(&head, H_BLOCKS_COUNT),
            uuid,
            piece_blocks: le::u64(&head, H_PIECE_BLOCKS),
            spans,
        };
        let hash = params.body_hash(&digests);
        if hash[..] != head[H_HASH..H_HASH + 32] {
            return Err(CorruptKind::MoveJournalHash { path: p() }.into());
        }
        // The pieces are built only when their count matches the checksums the file holds,
        // so a damaged count cannot make us build billions of them.
        let computed = params.piece_count().unwrap_or(u64::MAX);
        if computed != npieces {
            return Err(CorruptKind::MoveJournalPieceCount {
                path: p(),
                recorded: npieces,
                computed,
            }
            .into());
        }
        let pieces = params.plan().map_err(|b| {
            Error::from(match b {
                Bad::Field(field, value) => CorruptKind::MoveJournalField {
                    path: p(),
                    field,
                    value,
                },
                Bad::Span(index, r) => CorruptKind::MoveJournalSpan {
                    path: p(),
                    index,
                    start: r.start.get(),
                    len: r.len,
                    blocks_count: params.blocks_count,
                },
            })
        })?;
        let object = match le::u32(&head, H_ID_KIND) {
            ID_INODE => ObjectId::Inode {
                dev: le::u64(&head, H_ID_DEV),
                ino: le::u64(&head, H_ID_INO),
            },
            ID_BLOCK_DEVICE => ObjectId::BlockDevice {
                rdev: le::u64(&head, H_ID_DEV),
            },
            k => {
                return Err(CorruptKind::MoveJournalField {
                    path: p(),
                    field: "source kind",
                    value: u64::from(k),
                }
                .into());
            }
        };
        let source = SourceId {
            object,
            size: le::u64(&head, H_SOURCE_SIZE),
        };
        let mut best: Option<(u64, State, u64)> = None;
        for slot in 0..2u64 {
            let off = slot_offset(ckpt_at, slot);
            let mut b = [0u8; CKPT_LEN];
            read(&mut b, off, "checkpoint")?;
            if let Some((seq, st, stamp)) = decode_ckpt(&b)
                && best.is_none_or(|(s, ..)| seq > s)
            {
                best = Some((seq, st, stamp));
            }
        }
        let (seq, state, stamp) = best.ok_or(CorruptKind::MoveJournalNoCheckpoint {
            path: p(),
            offset: ckpt_at,
        })?;
        if let State::Running { next } = state
            && next > npieces
        {
            return Err(CorruptKind::MoveJournalCheckpoint {
                path: p(),
                offset: slot_offset(ckpt_at, seq % 2),
                next,
                pieces: npieces,
            }
            .into());
        }
        Ok(Some(Journal {
            file,
            path: path.to_path_buf(),
            params,
            pieces,
            digests,
            source,
            hash,
            ckpt_at,
            seq,
            state,
            stamp,
            writable,
            crash_point: None,
            slice_bytes: 0,
        }))
    }

    /// Test hooks: `crash_point` is called before every write to the journal (a test kills
    /// the process there); data is written in slices of `slice_bytes` (0: at once), so that
    /// a kill can tear it.
    pub fn set_test_hooks(&mut self, crash_point: Option<fn()>, slice_bytes: usize) {
        self.crash_point = crash_point;
        self.slice_bytes = slice_bytes;
    }

    fn crash_point(&self) {
        if let Some(f) = self.crash_point {
            f();
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn params(&self) -> &MoveParams {
        &self.params
    }

    /// The pieces in copy order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The checksum of each piece's bytes, in copy order.
    pub fn digests(&self) -> &[u32] {
        &self.digests
    }

    pub fn source(&self) -> SourceId {
        self.source
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// A finished move's stamp of SOURCE as the move left it ([`Journal::finish`]), if
    /// recorded.
    pub fn done_stamp(&self) -> Option<u64> {
        (self.state == State::Done && self.stamp != 0).then_some(self.stamp)
    }

    /// The first piece not yet durably at its destination.
    pub fn next_piece(&self) -> u64 {
        match self.state {
            State::Running { next } => next,
            State::Done => self.pieces.len() as u64,
        }
    }

    fn need_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "{}: opened read-only",
                self.path.display()
            )))
        }
    }

    /// Durably record `state` (the caller has already synced the data it covers).
    pub fn checkpoint(&mut self, state: State) -> Result<()> {
        self.record(state, 0)
    }

    fn record(&mut self, state: State, stamp: u64) -> Result<()> {
        self.need_writable()?;
        let seq = self.seq.checked_add(1).ok_or_else(|| {
            Error::from(CorruptKind::MoveJournalField {
                path: self.path.clone(),
                field: "checkpoint sequence",
                value: self.seq,
            })
        })?;
        let off = slot_offset(self.ckpt_at, seq % 2);
        self.crash_point();
        pwrite_all(
            &self.file,
            &encode_ckpt(seq, state, stamp),
            off,
            "write journal",
        )?;
        self.file
            .sync_data()
            .map_err(|e| Error::io_at("sync journal", off, e))?;
        self.seq = seq;
        self.state = state;
        self.stamp = stamp;
        Ok(())
    }

    /// Bytes from one save slot to the next: a header page and room for the largest piece.
    fn save_stride(&self) -> u64 {
        let piece = self
            .params
            .block_size
            .bytes_of(self.params.piece_blocks)
            .and_then(|b| b.checked_next_multiple_of(PAGE))
            .unwrap_or(u64::MAX);
        PAGE.saturating_add(piece)
    }

    /// Where save slot `slot` (0 or 1) starts.
    fn save_at(&self, slot: u64) -> u64 {
        self.ckpt_at
            .saturating_add(2 * PAGE)
            .saturating_add(slot.saturating_mul(self.save_stride()))
    }

    /// Save the source bytes of piece `piece` (in slot `piece % 2`) before its destination
    /// overwrites them. Not synced: the caller makes it durable ([`Journal::sync`] or the
    /// next checkpoint) before the first byte of that destination is written. `data` must be
    /// the bytes whose checksum the journal records (the caller checked them): the record
    /// carries that checksum, so other bytes never count as saved. Takes `&self`, so one
    /// thread can save the next piece while another writes the current one.
    pub fn save(&self, piece: u64, data: &[u8]) -> Result<()> {
        self.need_writable()?;
        let crc = usize::try_from(piece)
            .ok()
            .and_then(|i| self.digests.get(i).copied())
            .ok_or_else(|| Error::InvalidInput(format!("piece {piece}: no such piece")))?;
        if data.len() as u64 > self.save_stride().saturating_sub(PAGE) {
            return Err(Error::InvalidInput(format!(
                "piece {piece}: {} bytes do not fit a save slot",
                data.len()
            )));
        }
        self.saver()?.save(piece, data, crc)
    }

    /// A handle that saves pieces ([`Saver::part`], [`Saver::seal`]) from another thread
    /// while this journal records checkpoints: the same file and slots as
    /// [`Journal::save`], the same test hooks.
    pub fn saver(&self) -> Result<Saver> {
        self.need_writable()?;
        let mut hash = [0u8; 4];
        hash.copy_from_slice(&self.hash[..4]);
        Ok(Saver {
            file: self
                .file
                .try_clone()
                .map_err(|e| Error::io("dup journal", e))?,
            direct: Mutex::new((false, None)),
            slots: [self.save_at(0), self.save_at(1)],
            room: self.save_stride().saturating_sub(PAGE),
            hash,
            crash_point: self.crash_point,
            slice_bytes: self.slice_bytes,
        })
    }

    /// Make what was written to the journal durable.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("sync journal", e))
    }

    /// The saved pieces (at most two), in piece order: the complete save records of this
    /// journal's move whose bytes are the ones the journal records for their piece. Anything
    /// else (a record torn by a crash, a stale one) counts as no record.
    pub fn saved(&self) -> Result<Vec<Saved>> {
        let mut out = Vec::new();
        for slot in 0..2 {
            if let Some(s) = self.saved_in(slot)? {
                out.push(s);
            }
        }
        out.sort_by_key(|s| s.piece);
        Ok(out)
    }

    fn saved_in(&self, slot: u64) -> Result<Option<Saved>> {
        let at = self.save_at(slot);
        let mut h = [0u8; SAVE_LEN];
        let n =
            pread_full(&self.file, &mut h, at).map_err(|e| Error::io_at("read journal", at, e))?;
        if n < SAVE_LEN
            || &h[0..8] != SAVE_MAGIC
            || crc32c::crc32c(&h[..32]) != le::u32(&h, 32)
            || h[28..32] != self.hash[..4]
        {
            return Ok(None);
        }
        let piece = le::u64(&h, 8);
        let Some(i) = usize::try_from(piece)
            .ok()
            .filter(|&i| i < self.pieces.len())
        else {
            return Ok(None);
        };
        let len = le::u64(&h, 16);
        let want = self.digests[i];
        if piece % 2 != slot || len != self.pieces[i].bytes() || le::u32(&h, 24) != want {
            return Ok(None);
        }
        // Checked a chunk at a time: a record is up to a piece, and a resumed move must not
        // hold two of them besides its buffers.
        let data_at = at.saturating_add(PAGE);
        let mut buf = vec![0u8; CHECK_CHUNK];
        let mut crc = 0u32;
        let mut off = data_at;
        let end = data_at.saturating_add(len);
        while off < end {
            let n = usize::try_from(end.saturating_sub(off))
                .map_or(CHECK_CHUNK, |l| l.min(CHECK_CHUNK));
            let got = pread_full(&self.file, &mut buf[..n], off)
                .map_err(|e| Error::io_at("read journal", off, e))?;
            if got < n {
                return Ok(None);
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            off = off.saturating_add(n as u64);
        }
        if crc != want {
            return Ok(None);
        }
        Ok(Some(Saved { piece }))
    }

    /// A reader of this journal's save records for another thread (the move's reader).
    pub fn records(&self) -> Result<Records> {
        Ok(Records {
            file: self
                .file
                .try_clone()
                .map_err(|e| Error::io("dup journal", e))?,
            path: self.path.clone(),
            slots: [self.save_at(0), self.save_at(1)],
            room: self.save_stride().saturating_sub(PAGE),
        })
    }

    /// Mark the move finished and drop the save slots (the small done record stays, so a
    /// rerun of the same command can say there is nothing left to do). `stamp` (non-zero)
    /// identifies SOURCE's state as the move left it — a regular file's change time, which
    /// every write, truncation or restore changes and no user can set — so that a rerun can
    /// tell without reading the data that nothing has touched SOURCE since; 0 records none.
    pub fn finish(&mut self, stamp: u64) -> Result<()> {
        self.record(State::Done, stamp)?;
        let keep = self.save_at(0);
        self.crash_point();
        self.file
            .set_len(keep)
            .map_err(|e| Error::io_at("truncate journal", keep, e))?;
        Ok(())
    }

    /// Compare SOURCE's identity and size with the journal's. Sizes: a regular file may
    /// have grown up to the end of the moved filesystem (writes past its end, and the last
    /// step grows it), never shrunk; a block device keeps its size.
    pub fn check_identity(&self, now: SourceId) -> Option<Mismatch> {
        if now.object != self.source.object {
            return Some(Mismatch::Identity {
                recorded: self.source.object,
                actual: now.object,
            });
        }
        self.check_size(now)
    }

    /// The size part of [`Journal::check_identity`].
    pub fn check_size(&self, now: SourceId) -> Option<Mismatch> {
        let rec = self.source.size;
        let ok = match now.object {
            ObjectId::BlockDevice { .. } => now.size == rec,
            ObjectId::Inode { .. } => {
                let max = rec.max(self.params.dest_end().unwrap_or(u64::MAX));
                (rec..=max).contains(&now.size)
            }
        };
        (!ok).then_some(Mismatch::Size {
            recorded: rec,
            actual: now.size,
        })
    }

    /// Check that SOURCE (`src`, read from byte 0) is in a state this journal's move can be
    /// finished from: with `next` pieces done, every piece before `next` is at its
    /// destination, and every later piece is at its source — except pieces with an intact
    /// save record, whose source an interrupted write may have half overwritten. Every state
    /// a killed move leaves is one of these, and resuming from one of these ends with every
    /// piece at its destination (docs/move-journal.md). Reads each piece once.
    ///
    /// Returns the save records to use, or why SOURCE does not match.
    pub fn verify(
        &self,
        src: &dyn ReadAt,
        progress: &mut dyn Progress,
    ) -> Result<std::result::Result<Vec<Saved>, Mismatch>> {
        let next = self.next_piece();
        let mut saved = self.saved()?;
        saved.retain(|s| s.piece >= next);
        let skip: Vec<u64> = saved.iter().map(|s| s.piece).collect();
        let total: u64 = self.pieces.iter().map(Piece::bytes).sum();
        progress.phase("checking the journal", total, Unit::Bytes);
        let mut buf = vec![0u8; CHECK_CHUNK];
        let mut done = 0u64;
        let mut ok = true;
        for (i, pc) in self.pieces.iter().enumerate() {
            let i = i as u64;
            done = done.saturating_add(pc.bytes());
            if skip.contains(&i) {
                continue;
            }
            let at = if i < next { &pc.dst } else { &pc.src };
            if !self.holds(src, &mut buf, i, at)? {
                ok = false;
                break;
            }
            progress.update(done);
        }
        progress.finish();
        if ok {
            return Ok(Ok(saved));
        }
        self.diagnose(src, next, &skip, &mut buf).map(Err)
    }

    /// Does SOURCE (`src`, read from byte 0) hold every piece at its source: the filesystem
    /// exactly as it was before this journal's move (a backup restored after it finished,
    /// say)? Reads each piece once.
    pub fn unmoved(&self, src: &dyn ReadAt, progress: &mut dyn Progress) -> Result<bool> {
        let total: u64 = self.pieces.iter().map(Piece::bytes).sum();
        progress.phase("checking the journal", total, Unit::Bytes);
        let mut buf = vec![0u8; CHECK_CHUNK];
        let mut done = 0u64;
        for (i, pc) in self.pieces.iter().enumerate() {
            if !self.holds(src, &mut buf, i as u64, &pc.src)? {
                progress.finish();
                return Ok(false);
            }
            done = done.saturating_add(pc.bytes());
            progress.update(done);
        }
        progress.finish();
        Ok(true)
    }

    /// Does SOURCE (`src`, read from byte 0) hold every piece at its destination: the
    /// filesystem as this journal's move left it? Returns that, and how many pieces differ.
    /// Reads each piece once.
    pub fn check_moved(
        &self,
        src: &dyn ReadAt,
        progress: &mut dyn Progress,
    ) -> Result<(bool, u64)> {
        let total: u64 = self.pieces.iter().map(Piece::bytes).sum();
        progress.phase("checking the journal", total, Unit::Bytes);
        let mut buf = vec![0u8; CHECK_CHUNK];
        let (mut done, mut differ) = (0u64, 0u64);
        for (i, pc) in self.pieces.iter().enumerate() {
            if !self.holds(src, &mut buf, i as u64, &pc.dst)? {
                differ = differ.saturating_add(1);
            }
            done = done.saturating_add(pc.bytes());
            progress.update(done);
        }
        progress.finish();
        Ok((differ == 0, differ))
    }

    /// Does SOURCE hold piece `i`'s bytes at `at`?
    fn holds(&self, src: &dyn ReadAt, buf: &mut [u8], i: u64, at: &Range<u64>) -> Result<bool> {
        let want = usize::try_from(i).ok().and_then(|i| self.digests.get(i));
        Ok(want == Some(&checksum_range(src, at, buf)?))
    }

    /// Why SOURCE does not match: look at every piece at both places.
    fn diagnose(
        &self,
        src: &dyn ReadAt,
        next: u64,
        skip: &[u64],
        buf: &mut [u8],
    ) -> Result<Mismatch> {
        let (mut all_dst, mut all_src) = (true, true);
        let mut first: Option<(u64, Range<u64>, bool)> = None;
        let mut bad = 0u64;
        for (i, pc) in self.pieces.iter().enumerate() {
            let i = i as u64;
            let at_dst = self.holds(src, buf, i, &pc.dst)?;
            let at_src = skip.contains(&i) || self.holds(src, buf, i, &pc.src)?;
            all_dst &= at_dst;
            all_src &= at_src;
            let (good, at, dest) = if i < next {
                (at_dst, &pc.dst, true)
            } else {
                (at_src, &pc.src, false)
            };
            if !good {
                bad = bad.saturating_add(1);
                first.get_or_insert((i, at.clone(), dest));
            }
        }
        Ok(if all_dst {
            Mismatch::AlreadyMoved
        } else if all_src {
            Mismatch::Unmoved { moved: next }
        } else {
            let (piece, at, destination) = first.unwrap_or((0, 0..0, false));
            Mismatch::Changed {
                piece,
                at,
                destination,
                pieces: bad,
            }
        })
    }
}

/// The state folder of e2i: `$XDG_STATE_HOME/e2i`, else `~/.local/state/e2i` (absolute
/// paths only).
pub fn state_dir(
    xdg_state_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    // The XDG spec: a relative path in the variable is invalid and ignored.
    if let Some(d) = xdg_state_home
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
    {
        return Some(d.join("e2i"));
    }
    home.map(PathBuf::from)
        .filter(|h| h.is_absolute())
        .map(|h| h.join(".local/state/e2i"))
}

/// A name for an object that every name of it shares: `blockdev-8:16`, `file-8:1-1234`.
pub fn id_key(object: ObjectId) -> String {
    use rustix::fs::{major, minor};
    match object {
        ObjectId::BlockDevice { rdev } => format!("blockdev-{}:{}", major(rdev), minor(rdev)),
        ObjectId::Inode { dev, ino } => format!("file-{}:{}-{ino}", major(dev), minor(dev)),
    }
}

/// `8:16 inode 1234` / `device 8:16`, for messages.
pub fn describe(object: ObjectId) -> String {
    use rustix::fs::{major, minor};
    match object {
        ObjectId::BlockDevice { rdev } => format!("block device {}:{}", major(rdev), minor(rdev)),
        ObjectId::Inode { dev, ino } => {
            format!("inode {ino} on device {}:{}", major(dev), minor(dev))
        }
    }
}

/// Where a journal is looked for and recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    /// The default journal: next to the resolved SOURCE when it is a regular file
    /// (`/real/path/disk.img.e2i-move`), else `STATE/blockdev-M:m.e2i-move`; `None` for a
    /// block device when there is no state folder.
    pub default: Option<PathBuf>,
    /// The index entry for SOURCE's identity (`STATE/index/KEY`, a symlink to the journal of
    /// its latest move), so that a name of SOURCE that leads elsewhere (a hard link, a
    /// renamed file) still finds the journal. `None` without a state folder.
    pub index: Option<PathBuf>,
    /// The state folder.
    pub state: Option<PathBuf>,
}

/// The journal locations of SOURCE (`resolved`: its path with every symlink resolved).
pub fn locations(resolved: &Path, object: ObjectId, state: Option<PathBuf>) -> Locations {
    let key = id_key(object);
    let default = match object {
        ObjectId::Inode { .. } => {
            // NAME.e2i-move, and its temporary .NAME.e2i-move.tmp, must fit a folder entry:
            // a longer NAME is cut (a SOURCE named with 250 bytes can be moved).
            let room = crate::io::NAME_MAX.saturating_sub(14); // "." + NAME + ".e2i-move" + ".tmp"
            let name = resolved.file_name().unwrap_or_default();
            let mut p = if name.len() <= room {
                resolved.as_os_str().to_owned()
            } else {
                let short = crate::io::fit_name(&name.to_string_lossy(), room).into_owned();
                resolved.with_file_name(short).into_os_string()
            };
            p.push(".e2i-move");
            Some(PathBuf::from(p))
        }
        ObjectId::BlockDevice { .. } => state.as_ref().map(|s| s.join(format!("{key}.e2i-move"))),
    };
    Locations {
        default,
        index: state.as_ref().map(|s| s.join("index").join(&key)),
        state,
    }
}

/// Point the index entry `index` at `journal` (atomically: a new symlink renamed over it),
/// creating the index folder inside the state folder if needed, and drop the entries whose
/// journal no longer exists.
pub fn register(index: &Path, journal: &Path) -> std::io::Result<()> {
    let dir = index
        .parent()
        .ok_or_else(|| std::io::Error::other("no folder"))?;
    std::fs::create_dir_all(dir)?;
    let name = index
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(journal, &tmp)?;
    std::fs::rename(&tmp, index)?;
    sync_dir(index);
    // Entries whose journal is gone (deleted with its image) only clutter the folder.
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if std::fs::read_link(&p).is_ok()
            && std::fs::metadata(&p).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(())
}

/// Every journal the state folder knows: its own journals (`*.e2i-move`) and the targets of
/// its index entries.
pub fn known_journals(state: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let list = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        v.sort();
        v
    };
    out.extend(
        list(state)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "e2i-move")),
    );
    out.extend(
        list(&state.join("index"))
            .into_iter()
            .filter_map(|l| std::fs::read_link(&l).ok()),
    );
    out
}

/// The readable journals among `paths`, with the name each was found under: every object
/// once, none of those in `seen`. A journal that cannot be read is skipped: not ours to
/// judge where this is used (before a move, and by readers and writers of a moved file).
pub fn open_distinct(
    paths: Vec<PathBuf>,
    mut seen: Vec<ObjectId>,
) -> impl Iterator<Item = (PathBuf, Journal)> {
    paths.into_iter().filter_map(move |c| {
        let id = ObjectId::of_path(&c).ok()?;
        if seen.contains(&id) {
            return None;
        }
        seen.push(id);
        Journal::open(&c, false).ok().flatten().map(|j| (c, j))
    })
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)] // tests compute expected values freely
mod tests {
    use super::*;
    use crate::io::MemSource;
    use crate::progress::NoProgress;

    const BS: u64 = 1024;

    fn r(start: u64, len: u64) -> Span {
        Span::new(FsBlock(start), len)
    }

    fn params(src: u64, dst: u64) -> MoveParams {
        MoveParams {
            block_size: BlockSize::new(BS as u32).unwrap(),
            src_offset: src,
            dest_offset: dst,
            blocks_count: 64,
            uuid: [7; 16],
            piece_blocks: 4,
            spans: vec![r(0, 10), r(20, 5), r(40, 16)],
        }
    }

    fn id() -> SourceId {
        SourceId {
            object: ObjectId::Inode { dev: 5, ino: 9 },
            size: 200 * BS,
        }
    }

    /// An image with a filesystem of random-ish bytes at `src`, and the checksums of the
    /// pieces of `p` as a new move computes them.
    fn image(p: &MoveParams) -> (Vec<u8>, Vec<u32>) {
        let mut img: Vec<u8> = (0..200 * BS).map(|i| (i * 7 + i / 1000) as u8).collect();
        img[..].iter_mut().step_by(333).for_each(|b| *b ^= 0x5a);
        let ds = p
            .pieces()
            .unwrap()
            .iter()
            .map(|pc| digest(&img[pc.src.start as usize..pc.src.end as usize]))
            .collect();
        (img, ds)
    }

    /// Copy pieces `[from, to)` of `j` inside `img`.
    fn copy(img: &mut [u8], j: &Journal, from: usize, to: usize) {
        for pc in &j.pieces()[from..to] {
            let data = img[pc.src.start as usize..pc.src.end as usize].to_vec();
            img[pc.dst.start as usize..pc.dst.end as usize].copy_from_slice(&data);
        }
    }

    fn verdict(j: &Journal, img: &[u8]) -> std::result::Result<Vec<Saved>, Mismatch> {
        j.verify(&MemSource(img.to_vec()), &mut NoProgress).unwrap()
    }

    #[test]
    fn round_trip_and_torn_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        let (img, ds) = image(&params(8 * BS, 10 * BS));
        let mut j = Journal::create(&p, params(8 * BS, 10 * BS), id(), ds.clone()).unwrap();
        j.checkpoint(State::Running { next: 3 }).unwrap();
        let pc = j.pieces()[4].clone();
        let data = img[pc.src.start as usize..pc.src.end as usize].to_vec();
        j.save(4, &data).unwrap();
        let j2 = Journal::open(&p, false).unwrap().unwrap();
        assert_eq!(j2.params(), &params(8 * BS, 10 * BS));
        assert_eq!(j2.digests(), &ds[..]);
        assert_eq!(j2.source(), id());
        assert_eq!(j2.state(), State::Running { next: 3 });
        let four = Saved { piece: 4 };
        assert_eq!(j2.saved().unwrap(), vec![four]);
        // The record reads back as the piece's bytes, from another handle.
        let mut back = vec![0u8; data.len()];
        j2.records().unwrap().read(4, 0, &mut back).unwrap();
        assert!(back == data);
        let over = j2
            .records()
            .unwrap()
            .read(4, j2.save_stride(), &mut [0u8; 1]);
        assert!(
            matches!(
                over,
                Err(Error::Corrupt(CorruptKind::MoveJournalSaveChanged {
                    piece: 4,
                    ..
                }))
            ),
            "{over:?}"
        );
        // Bytes that are not the piece's never count as saved; the other slot keeps its own.
        j.save(5, b"not the piece").unwrap();
        assert_eq!(j.saved().unwrap(), vec![four]);
        j.save(4, b"not the piece").unwrap();
        assert_eq!(j.saved().unwrap(), vec![]);
        assert!(j.save(1000, b"no such piece").is_err());
        j.save(4, &data).unwrap();
        let pc5 = j.pieces()[5].clone();
        let five = Saved { piece: 5 };
        j.save(5, &img[pc5.src.start as usize..pc5.src.end as usize])
            .unwrap();
        j.sync().unwrap();
        assert_eq!(j.saved().unwrap(), vec![four, five]);
        // Tear the newest checkpoint slot: the older one wins.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        pwrite_full(&f, &[0xff; 4], j.ckpt_at + (j.seq % 2) * PAGE + 16).unwrap();
        let j3 = Journal::open(&p, false).unwrap().unwrap();
        assert_eq!(j3.state(), State::Running { next: 0 });
        // Damage the saved data: the record no longer counts.
        pwrite_full(&f, b"J", j.save_at(0) + PAGE).unwrap();
        assert_eq!(j3.saved().unwrap().len(), 1);
        j.finish(0).unwrap();
        assert_eq!(
            Journal::open(&p, false).unwrap().unwrap().state(),
            State::Done
        );
        assert!(
            Journal::open(&d.path().join("none"), false)
                .unwrap()
                .is_none()
        );
    }

    /// Each damage gives its own kind, located.
    #[test]
    fn damage_is_typed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        let pr = params(8 * BS, 10 * BS);
        let (_, ds) = image(&pr);
        let good = {
            Journal::create(&p, pr.clone(), id(), ds).unwrap();
            std::fs::read(&p).unwrap()
        };
        let kind = |bytes: &[u8]| -> CorruptKind {
            std::fs::write(&p, bytes).unwrap();
            match Journal::open(&p, false) {
                Err(Error::Corrupt(k)) => k,
                other => panic!("expected a corruption, got {other:?}"),
            }
        };
        let path = p.clone();
        let npieces = pr.piece_count().unwrap();
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(
            kind(&b),
            CorruptKind::MoveJournalMagic { path: path.clone() }
        );
        let mut b = good.clone();
        le::set_u32(&mut b, H_VERSION, 1);
        assert_eq!(
            kind(&b),
            CorruptKind::MoveJournalVersion {
                path: path.clone(),
                version: 1,
                supported: VERSION
            }
        );
        let mut b = good.clone();
        b[H_UUID] ^= 1;
        assert_eq!(
            kind(&b),
            CorruptKind::MoveJournalHeaderChecksum { path: path.clone() }
        );
        // A field changed with its CRC fixed: the checks behind the CRC must catch it.
        let refix = |b: &mut Vec<u8>| {
            let crc = crc32c::crc32c(&b[..H_CRC]);
            le::set_u32(b, H_CRC, crc);
        };
        let mut b = good.clone();
        le::set_u64(&mut b, H_SPANS, u64::MAX);
        refix(&mut b);
        assert_eq!(
            kind(&b),
            CorruptKind::MoveJournalField {
                path: path.clone(),
                field: "span or piece count",
                value: u64::MAX
            }
        );
        let mut b = good.clone();
        le::set_u64(&mut b, H_SPANS, 1 << 40);
        refix(&mut b);
        assert!(matches!(
            kind(&b),
            CorruptKind::MoveJournalTruncated { need, len, .. } if need > len
        ));
        let mut b = good.clone();
        b[PAGE as usize] ^= 1;
        assert_eq!(
            kind(&b),
            CorruptKind::MoveJournalHash { path: path.clone() }
        );
        let mut b = good.clone();
        le::set_u64(&mut b, H_PIECE_BLOCKS, 5);
        refix(&mut b);
        assert_eq!(
            kind(&b),
            CorruptKind::MoveJournalPieceCount {
                path: path.clone(),
                recorded: npieces,
                computed: MoveParams {
                    piece_blocks: 5,
                    ..pr.clone()
                }
                .piece_count()
                .unwrap()
            }
        );
        let mut b = good.clone();
        le::set_u32(&mut b, H_BLOCK_SIZE, 3000);
        refix(&mut b);
        assert_eq!(
            kind(&b),
            CorruptKind::MoveJournalField {
                path: path.clone(),
                field: "block size",
                value: 3000
            }
        );
        let mut b = good.clone();
        le::set_u64(&mut b, H_DEST_OFFSET, u64::MAX - 10);
        refix(&mut b);
        assert_eq!(
            kind(&b),
            CorruptKind::MoveJournalField {
                path: path.clone(),
                field: "destination offset",
                value: u64::MAX - 10
            }
        );
        // A span past the filesystem, with hash and CRC made consistent.
        let mut bad = pr.clone();
        bad.spans[2] = r(40, 30);
        let ds_bad: Vec<u32> = vec![0; bad.piece_count().unwrap() as usize];
        let mut b = good.clone();
        b.truncate(PAGE as usize);
        le::set_u64(&mut b, H_PIECES, ds_bad.len() as u64);
        let body = encode_body(&bad.spans, &ds_bad);
        b[H_HASH..H_HASH + 32].copy_from_slice(&bad.body_hash(&ds_bad));
        refix(&mut b);
        b.extend_from_slice(&body);
        let at = ckpt_offset(3, ds_bad.len() as u64).unwrap();
        b.resize(at as usize + 3 * PAGE as usize, 0);
        b[at as usize + PAGE as usize..][..CKPT_LEN].copy_from_slice(&encode_ckpt(
            1,
            State::Running { next: 0 },
            0,
        ));
        assert_eq!(
            kind(&b),
            CorruptKind::MoveJournalSpan {
                path: path.clone(),
                index: 2,
                start: 40,
                len: 30,
                blocks_count: 64
            }
        );
        let mut b = good.clone();
        let at = ckpt_offset(3, npieces).unwrap() as usize;
        b[at + PAGE as usize] ^= 0xff;
        assert_eq!(
            kind(&b),
            CorruptKind::MoveJournalNoCheckpoint {
                path: path.clone(),
                offset: at as u64
            }
        );
        let mut b = good.clone();
        b[at + PAGE as usize..][..CKPT_LEN].copy_from_slice(&encode_ckpt(
            1,
            State::Running { next: npieces + 1 },
            0,
        ));
        assert_eq!(
            kind(&b),
            CorruptKind::MoveJournalCheckpoint {
                path: path.clone(),
                offset: at as u64 + PAGE,
                next: npieces + 1,
                pieces: npieces
            }
        );
        let mut b = good.clone();
        b.truncate(100);
        assert!(matches!(
            kind(&b),
            CorruptKind::MoveJournalTruncated {
                what: "header",
                need: 4096,
                len: 100,
                ..
            }
        ));
    }

    #[test]
    fn pieces_cover_spans_in_safe_order() {
        let spans = vec![r(0, 6), r(100, 10)];
        let right = split_pieces(&spans, 4, true);
        assert_eq!(
            right,
            vec![r(106, 4), r(102, 4), r(100, 2), r(2, 4), r(0, 2)]
        );
        let left = split_pieces(&spans, 4, false);
        assert_eq!(
            left,
            vec![r(0, 4), r(4, 2), r(100, 4), r(104, 4), r(108, 2)]
        );
        // In either order, no destination overlaps the source of a later piece, for any
        // shift, also shorter than a block.
        for shift in [
            -100_000i64,
            -9000,
            -4096,
            -1024,
            -1,
            1,
            3,
            1000,
            8192,
            100_000,
        ] {
            let p = MoveParams {
                src_offset: 1 << 20,
                dest_offset: ((1 << 20) + shift) as u64,
                spans: spans.clone(),
                blocks_count: 200,
                ..params(0, 1)
            };
            let ps = p.pieces().unwrap();
            for (i, a) in ps.iter().enumerate() {
                for b in &ps[i + 1..] {
                    assert!(!overlaps(&a.dst, &b.src), "shift {shift}: {a:?} over {b:?}");
                }
            }
        }
    }

    /// The verification accepts exactly the states the protocol can leave, and tells a
    /// restored, a finished and a changed SOURCE apart.
    #[test]
    fn verify_accepts_crash_states_and_refuses_others() {
        let d = tempfile::tempdir().unwrap();
        // Right by half a piece (pieces overlap themselves) and left by more than a piece.
        for (s, t) in [(8 * BS, 10 * BS), (100 * BS, 20 * BS)] {
            let p = d.path().join(format!("j{s}"));
            let pr = params(s, t);
            let (orig, ds) = image(&pr);
            let mut j = Journal::create(&p, pr.clone(), id(), ds).unwrap();
            let n = j.pieces().len();
            assert_eq!(verdict(&j, &orig), Ok(vec![]));
            // Three pieces copied and checkpointed.
            let mut img = orig.clone();
            copy(&mut img, &j, 0, 3);
            j.checkpoint(State::Running { next: 3 }).unwrap();
            assert_eq!(verdict(&j, &img), Ok(vec![]));
            let pc = j.pieces()[3].clone();
            if !pc.overlaps_itself() {
                // Pieces that do not overlap their own source may be copied before the next
                // checkpoint: their sources stay intact.
                let mut more = img.clone();
                copy(&mut more, &j, 3, 5);
                assert_eq!(verdict(&j, &more), Ok(vec![]));
            }
            // A save record of piece 3 and its destination half written.
            let data = img[pc.src.start as usize..pc.src.end as usize].to_vec();
            j.save(3, &data).unwrap();
            let half = (pc.bytes() / 2) as usize;
            img[pc.dst.start as usize..][..half].copy_from_slice(&data[..half]);
            let three = Saved { piece: 3 };
            assert_eq!(verdict(&j, &img), Ok(vec![three]));
            // The next piece saved meanwhile (its source is still intact); then its save torn.
            let pc4 = j.pieces()[4].clone();
            let four = Saved { piece: 4 };
            j.save(4, &img[pc4.src.start as usize..pc4.src.end as usize])
                .unwrap();
            assert_eq!(verdict(&j, &img), Ok(vec![three, four]));
            j.save(4, &vec![0xee; pc4.bytes() as usize]).unwrap();
            assert_eq!(verdict(&j, &img), Ok(vec![three]));
            // Restored from a backup: the moved pieces are gone from their destination.
            assert_eq!(verdict(&j, &orig), Err(Mismatch::Unmoved { moved: 3 }));
            let unmoved = |img: &[u8]| {
                j.unmoved(&MemSource(img.to_vec()), &mut NoProgress)
                    .unwrap()
            };
            assert!(unmoved(&orig));
            assert_eq!(unmoved(&img), !pr.moves_right() && !pc.overlaps_itself());
            // Finished by another run: everything at the destination.
            let mut done = orig.clone();
            copy(&mut done, &j, 0, n);
            let v = verdict(&j, &done);
            if pr.moves_right() {
                assert_eq!(v, Err(Mismatch::AlreadyMoved));
            } else {
                // Left by more than the filesystem's spread: finishing again is harmless,
                // and the sources are untouched, so it is accepted.
                assert!(v.is_ok() || v == Err(Mismatch::AlreadyMoved), "{v:?}");
            }
            // One byte changed in a piece still to be read.
            let mut changed = img.clone();
            let last = j.pieces()[n - 1].clone();
            changed[last.src.start as usize + 5] ^= 1;
            match verdict(&j, &changed) {
                Err(Mismatch::Changed {
                    piece,
                    destination: false,
                    pieces: 1,
                    ..
                }) => assert_eq!(piece, n as u64 - 1),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn identity_and_size() {
        let d = tempfile::tempdir().unwrap();
        let pr = params(8 * BS, 10 * BS);
        let (_, ds) = image(&pr);
        let j = Journal::create(&d.path().join("j"), pr, id(), ds).unwrap();
        assert_eq!(j.check_identity(id()), None);
        let end = 10 * BS + 64 * BS;
        assert_eq!(
            j.check_identity(SourceId {
                size: end.max(id().size),
                ..id()
            }),
            None
        );
        let other = ObjectId::Inode { dev: 5, ino: 10 };
        assert_eq!(
            j.check_identity(SourceId {
                object: other,
                ..id()
            }),
            Some(Mismatch::Identity {
                recorded: id().object,
                actual: other
            })
        );
        assert_eq!(
            j.check_identity(SourceId { size: 10, ..id() }),
            Some(Mismatch::Size {
                recorded: id().size,
                actual: 10
            })
        );
    }

    #[test]
    fn index_entries_point_at_journals_and_dangling_ones_go() {
        let d = tempfile::tempdir().unwrap();
        let (j1, j2) = (d.path().join("a.e2i-move"), d.path().join("b.e2i-move"));
        std::fs::write(&j1, b"1").unwrap();
        std::fs::write(&j2, b"2").unwrap();
        let idx = d.path().join("state/index");
        register(&idx.join("file-1:1-5"), &j1).unwrap();
        register(&idx.join("file-1:1-5"), &j2).unwrap();
        assert_eq!(std::fs::read_link(idx.join("file-1:1-5")).unwrap(), j2);
        register(&idx.join("file-1:1-6"), &j1).unwrap();
        std::fs::remove_file(&j2).unwrap();
        register(&idx.join("file-1:1-7"), &j1).unwrap();
        assert!(std::fs::symlink_metadata(idx.join("file-1:1-5")).is_err());
        assert_eq!(
            known_journals(&d.path().join("state")),
            vec![j1.clone(), j1]
        );
    }

    #[test]
    fn journal_locations() {
        let st = state_dir(Some("/st".into()), Some("/home/u".into())).unwrap();
        assert_eq!(st, PathBuf::from("/st/e2i"));
        assert_eq!(
            state_dir(Some("".into()), Some("/home/u".into())).unwrap(),
            PathBuf::from("/home/u/.local/state/e2i")
        );
        assert_eq!(state_dir(None, None), None);
        assert_eq!(
            state_dir(Some("rel".into()), Some("/h".into())).unwrap(),
            PathBuf::from("/h/.local/state/e2i")
        );
        let file = ObjectId::Inode {
            dev: rustix::fs::makedev(8, 1),
            ino: 12,
        };
        let l = locations(Path::new("/x/disk.raw"), file, Some(st.clone()));
        assert_eq!(l.default, Some(PathBuf::from("/x/disk.raw.e2i-move")));
        assert_eq!(l.index, Some(PathBuf::from("/st/e2i/index/file-8:1-12")));
        let dev = ObjectId::BlockDevice {
            rdev: rustix::fs::makedev(8, 16),
        };
        let l = locations(Path::new("/dev/sdb"), dev, Some(st));
        assert_eq!(
            l.default,
            Some(PathBuf::from("/st/e2i/blockdev-8:16.e2i-move"))
        );
        assert_eq!(locations(Path::new("/dev/sdb"), dev, None).default, None);
        assert!(locations(Path::new("/x/d"), file, None).index.is_none());
    }
}
