//! The durable journal of an in-place move (`e2i-move -o S -O D SOURCE`).
//!
//! Layout (all integers little-endian; see docs/move-journal.md for the protocol):
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 4096 | header: move parameters, span count, SHA-256 of the spans, CRC-32C |
//! | 4096 | 16 × spans | spans `(first block, block count)` in filesystem blocks |
//! | `A` = 4096-aligned end of spans | 2 × 4096 | two checkpoint slots (sequence, next piece, state) |
//! | `A + 8192` | 4096 | save-record header (piece, offsets, length, data CRC) |
//! | `A + 12288` | ≤ piece size | saved source bytes of the piece being copied |
//!
//! The header and spans are written once, to a temporary file that is synced and renamed
//! into place. Checkpoints alternate between the two slots, so a torn write can only damage
//! the slot being written; the valid slot with the highest sequence number wins.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::blockmap::Run;
use crate::io::{pread_full, pwrite_full};
use crate::ops::move_fs::{reopen_direct, write_maybe_direct};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"E2IMOVE\0";
const CKPT_MAGIC: &[u8; 8] = b"E2ICKPT\0";
const SAVE_MAGIC: &[u8; 8] = b"E2ISAVE\0";
const VERSION: u32 = 1;
const PAGE: u64 = 4096;

/// What the move is: everything needed to finish it without reading the old filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveParams {
    pub block_size: u32,
    pub src_offset: u64,
    pub dest_offset: u64,
    pub blocks_count: u64,
    pub uuid: [u8; 16],
    /// Blocks per piece (the unit of copying and of progress).
    pub piece_blocks: u64,
    /// The blocks to move, sorted and disjoint (selected runs, small gaps merged).
    pub spans: Vec<Run>,
}

impl MoveParams {
    /// SHA-256 of the span list.
    pub fn spans_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for r in &self.spans {
            h.update(r.start.to_le_bytes());
            h.update(r.len.to_le_bytes());
        }
        h.finalize().into()
    }
}

/// State recorded by a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Pieces `[0, next)` are durably at the destination.
    Running { next: u64 },
    /// Every piece is at the destination and the data is synced.
    Done,
}

/// A saved copy of a piece's source bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub piece: u64,
    pub data: Vec<u8>,
}

/// An open journal file.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    pub params: MoveParams,
    ckpt_at: u64,
    seq: u64,
    pub state: State,
    /// An O_DIRECT handle for saved data, opened on first use.
    direct: Option<File>,
    direct_tried: bool,
}

fn jerr(path: &Path, what: &str) -> Error {
    Error::corrupt(format!("move journal {}", path.display()), what.to_string())
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn ckpt_offset(nspans: u64) -> Option<u64> {
    let end = nspans.checked_mul(16)?.checked_add(PAGE)?;
    end.checked_next_multiple_of(PAGE)
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

fn encode_ckpt(seq: u64, state: State) -> Vec<u8> {
    let mut b = vec![0u8; 32];
    b[0..8].copy_from_slice(CKPT_MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    let (next, st) = match state {
        State::Running { next } => (next, 1u32),
        State::Done => (0, 2u32),
    };
    b[16..24].copy_from_slice(&next.to_le_bytes());
    b[24..28].copy_from_slice(&st.to_le_bytes());
    let crc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_ckpt(b: &[u8]) -> Option<(u64, State)> {
    if b.len() < 32 || &b[0..8] != CKPT_MAGIC || crc32c::crc32c(&b[..28]) != le32(b, 28) {
        return None;
    }
    let seq = le64(b, 8);
    let state = match le32(b, 24) {
        1 => State::Running { next: le64(b, 16) },
        2 => State::Done,
        _ => return None,
    };
    Some((seq, state))
}

impl Journal {
    /// Create the journal at `path` for a new move (replacing any old, finished one),
    /// durably: written to a temporary file, synced, renamed, directory synced.
    pub fn create(path: &Path, params: MoveParams) -> Result<Journal> {
        let nspans = params.spans.len() as u64;
        let ckpt_at = ckpt_offset(nspans)
            .ok_or_else(|| Error::InvalidInput("too many spans for a move journal".into()))?;
        let mut head = vec![0u8; PAGE as usize];
        head[0..8].copy_from_slice(MAGIC);
        head[8..12].copy_from_slice(&VERSION.to_le_bytes());
        head[12..16].copy_from_slice(&params.block_size.to_le_bytes());
        head[16..24].copy_from_slice(&params.src_offset.to_le_bytes());
        head[24..32].copy_from_slice(&params.dest_offset.to_le_bytes());
        head[32..40].copy_from_slice(&params.blocks_count.to_le_bytes());
        head[40..56].copy_from_slice(&params.uuid);
        head[56..64].copy_from_slice(&params.piece_blocks.to_le_bytes());
        head[64..72].copy_from_slice(&nspans.to_le_bytes());
        head[72..104].copy_from_slice(&params.spans_hash());
        let crc = crc32c::crc32c(&head[..104]);
        head[104..108].copy_from_slice(&crc.to_le_bytes());
        let mut body = Vec::with_capacity(params.spans.len() * 16);
        for r in &params.spans {
            body.extend_from_slice(&r.start.to_le_bytes());
            body.extend_from_slice(&r.len.to_le_bytes());
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let io = |op, e| Error::io(op, 0, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io("create journal", e))?;
        let res = (|| {
            pwrite_full(&file, &head, 0).map_err(|e| io("write journal", e))?;
            pwrite_full(&file, &body, PAGE).map_err(|e| io("write journal", e))?;
            // Sequence 1 lives in slot 1 (slots are seq % 2), so the next checkpoint
            // never overwrites the only valid one.
            let ck = encode_ckpt(1, State::Running { next: 0 });
            pwrite_full(&file, &ck, ckpt_at + PAGE).map_err(|e| io("write journal", e))?;
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
            ckpt_at,
            seq: 1,
            state: State::Running { next: 0 },
            direct: None,
            direct_tried: false,
        })
    }

    /// Open an existing journal; `Ok(None)` when there is none.
    pub fn open(path: &Path) -> Result<Option<Journal>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open journal", 0, e)),
        };
        let rd = |buf: &mut [u8], off: u64| -> Result<()> {
            let n = pread_full(&file, buf, off).map_err(|e| Error::io("read journal", off, e))?;
            if n < buf.len() {
                return Err(jerr(path, "truncated"));
            }
            Ok(())
        };
        let mut head = vec![0u8; PAGE as usize];
        rd(&mut head, 0)?;
        if &head[0..8] != MAGIC {
            return Err(jerr(path, "not an e2i-move journal (bad magic)"));
        }
        if le32(&head, 8) != VERSION {
            return Err(jerr(path, "unsupported journal version"));
        }
        if crc32c::crc32c(&head[..104]) != le32(&head, 104) {
            return Err(jerr(path, "header checksum mismatch"));
        }
        let nspans = le64(&head, 64);
        let ckpt_at = ckpt_offset(nspans).ok_or_else(|| jerr(path, "span count too large"))?;
        let flen = file
            .metadata()
            .map_err(|e| Error::io("stat journal", 0, e))?
            .len();
        if ckpt_at > flen {
            return Err(jerr(path, "truncated span list"));
        }
        let mut body = vec![0u8; (nspans * 16) as usize];
        rd(&mut body, PAGE)?;
        let spans = body
            .chunks_exact(16)
            .map(|c| Run {
                start: le64(c, 0),
                len: le64(c, 8),
            })
            .collect();
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&head[40..56]);
        let params = MoveParams {
            block_size: le32(&head, 12),
            src_offset: le64(&head, 16),
            dest_offset: le64(&head, 24),
            blocks_count: le64(&head, 32),
            uuid,
            piece_blocks: le64(&head, 56),
            spans,
        };
        if params.spans_hash()[..] != head[72..104] {
            return Err(jerr(path, "span list does not match its hash"));
        }
        let mut best: Option<(u64, State)> = None;
        for slot in 0..2u64 {
            let mut b = vec![0u8; 32];
            let off = ckpt_at + slot * PAGE;
            let n =
                pread_full(&file, &mut b, off).map_err(|e| Error::io("read journal", off, e))?;
            if n < 32 {
                continue;
            }
            if let Some((seq, st)) = decode_ckpt(&b)
                && best.is_none_or(|(s, _)| seq > s)
            {
                best = Some((seq, st));
            }
        }
        let (seq, state) = best.ok_or_else(|| jerr(path, "no valid checkpoint"))?;
        Ok(Some(Journal {
            file,
            path: path.to_path_buf(),
            params,
            ckpt_at,
            seq,
            state,
            direct: None,
            direct_tried: false,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Durably record `state` (the caller has already synced the data it covers).
    pub fn checkpoint(&mut self, state: State) -> Result<()> {
        let seq = self.seq + 1;
        let slot = seq % 2;
        let off = self.ckpt_at + slot * PAGE;
        pwrite_full(&self.file, &encode_ckpt(seq, state), off)
            .map_err(|e| Error::io("write journal", off, e))?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("sync journal", off, e))?;
        self.seq = seq;
        self.state = state;
        Ok(())
    }

    fn save_at(&self) -> u64 {
        self.ckpt_at + 2 * PAGE
    }

    /// Durably save the source bytes of `piece` before its destination overwrites them.
    pub fn save(&mut self, piece: u64, data: &[u8]) -> Result<()> {
        let at = self.save_at();
        let mut h = vec![0u8; 40];
        h[0..8].copy_from_slice(SAVE_MAGIC);
        h[8..16].copy_from_slice(&piece.to_le_bytes());
        h[16..24].copy_from_slice(&(data.len() as u64).to_le_bytes());
        h[24..28].copy_from_slice(&crc32c::crc32c(data).to_le_bytes());
        h[28..32].copy_from_slice(&self.params.spans_hash()[..4]);
        let crc = crc32c::crc32c(&h[..32]);
        h[32..36].copy_from_slice(&crc.to_le_bytes());
        // The data goes around the page cache when it can (it is read back only after a
        // crash); the fsync below covers both handles.
        if !self.direct_tried {
            self.direct = reopen_direct(&self.file);
            self.direct_tried = true;
        }
        write_maybe_direct(&self.file, &mut self.direct, data, at + PAGE)?;
        pwrite_full(&self.file, &h, at).map_err(|e| Error::io("write journal", at, e))?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("sync journal", at, e))
    }

    /// The saved piece, when a complete, intact save record is present.
    pub fn saved(&self) -> Result<Option<Saved>> {
        let at = self.save_at();
        let mut h = vec![0u8; 40];
        let n = pread_full(&self.file, &mut h, at).map_err(|e| Error::io("read journal", at, e))?;
        if n < 40
            || &h[0..8] != SAVE_MAGIC
            || crc32c::crc32c(&h[..32]) != le32(&h, 32)
            || h[28..32] != self.params.spans_hash()[..4]
        {
            return Ok(None);
        }
        let piece = le64(&h, 8);
        let len = le64(&h, 16);
        let max = self
            .params
            .piece_blocks
            .saturating_mul(u64::from(self.params.block_size));
        if len > max {
            return Ok(None);
        }
        let mut data = vec![0u8; len as usize];
        let n = pread_full(&self.file, &mut data, at + PAGE)
            .map_err(|e| Error::io("read journal", at, e))?;
        if n < data.len() || crc32c::crc32c(&data) != le32(&h, 24) {
            return Ok(None);
        }
        Ok(Some(Saved { piece, data }))
    }

    /// Mark the move finished and drop the save area (the small done record stays, so a
    /// rerun of the same command can say there is nothing left to do).
    pub fn finish(&mut self) -> Result<()> {
        self.checkpoint(State::Done)?;
        let keep = self.save_at();
        self.file
            .set_len(keep)
            .map_err(|e| Error::io("truncate journal", keep, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> MoveParams {
        MoveParams {
            block_size: 4096,
            src_offset: 0,
            dest_offset: 1 << 20,
            blocks_count: 1000,
            uuid: [7; 16],
            piece_blocks: 16,
            spans: vec![Run { start: 0, len: 10 }, Run { start: 20, len: 5 }],
        }
    }

    #[test]
    fn round_trip_and_torn_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        let mut j = Journal::create(&p, params()).unwrap();
        j.checkpoint(State::Running { next: 3 }).unwrap();
        j.save(4, b"hello world").unwrap();
        let j2 = Journal::open(&p).unwrap().unwrap();
        assert_eq!(j2.params, params());
        assert_eq!(j2.state, State::Running { next: 3 });
        assert_eq!(
            j2.saved().unwrap(),
            Some(Saved {
                piece: 4,
                data: b"hello world".to_vec()
            })
        );
        // Tear the newest checkpoint slot: the older one wins.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        pwrite_full(&f, &[0xff; 4], j.ckpt_at + (j.seq % 2) * PAGE + 16).unwrap();
        let j3 = Journal::open(&p).unwrap().unwrap();
        assert_eq!(j3.state, State::Running { next: 0 });
        // Damage the saved data: the record no longer counts.
        pwrite_full(&f, b"J", j.save_at() + PAGE).unwrap();
        assert_eq!(j3.saved().unwrap(), None);
        j.finish().unwrap();
        assert_eq!(Journal::open(&p).unwrap().unwrap().state, State::Done);
        assert!(Journal::open(&d.path().join("none")).unwrap().is_none());
    }
}
