//! The one error type of the library. Messages are lower-case and say what and where.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in `e2i`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed. (The source error is printed by the error chain.)
    #[error("{op}{}", if *offset > 0 { format!(" at byte {offset}") } else { String::new() })]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The input is damaged; the kind says what and where.
    #[error(transparent)]
    Corrupt(#[from] CorruptKind),
    /// The input is valid but uses something e2i does not handle.
    #[error("{0}")]
    Unsupported(String),
    /// The caller asked for something impossible (bad option combination, wrong target).
    #[error("{0}")]
    InvalidInput(String),
    /// The target (a block device) is smaller than what must be written; checked before the
    /// first write.
    #[error("it holds {have} bytes, but {need} bytes must be written; nothing written")]
    NoRoom { have: u64, need: u64 },
}

/// What is damaged, and where: every variant carries its location (group, inode, block,
/// byte offset) as fields, so callers and tests can tell one damage from another.
/// Sections by format; keep each variant's message in the form "what: what is wrong".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptKind {
    // ---- ext2/3/4: superblock, descriptors, bitmaps, inodes, extent and indirect trees ----

    // ---- qcow2 ----

    // ---- normal e2image images ----

    // ---- e2i streams ----

    // ---- move journal, undo files ----
    /// The file is not an e2i-move journal.
    #[error("move journal {}: not an e2i-move journal (bad magic)", path.display())]
    MoveJournalMagic { path: PathBuf },
    /// A journal of another format version (an older e2i-move wrote it).
    #[error(
        "move journal {}: format version {version}, this e2i-move reads version {supported}: finish that move with the e2i-move that started it",
        path.display()
    )]
    MoveJournalVersion {
        path: PathBuf,
        version: u32,
        supported: u32,
    },
    /// The header's CRC-32C does not match.
    #[error("move journal {}: header checksum mismatch", path.display())]
    MoveJournalHeaderChecksum { path: PathBuf },
    /// The file ends before a part the header says it holds.
    #[error(
        "move journal {}: truncated: the {what} ends at byte {need}, the file at byte {len}",
        path.display()
    )]
    MoveJournalTruncated {
        path: PathBuf,
        what: &'static str,
        need: u64,
        len: u64,
    },
    /// A header field out of its range (block size, piece size, offsets that overflow).
    #[error("move journal {}: {field} {value} is out of range", path.display())]
    MoveJournalField {
        path: PathBuf,
        field: &'static str,
        value: u64,
    },
    /// A span that is empty, overlaps or precedes the one before it, or runs past the
    /// filesystem.
    #[error(
        "move journal {}: span {index} (blocks {start}, {len} long) is empty, out of order or past the filesystem's {blocks_count} blocks",
        path.display()
    )]
    MoveJournalSpan {
        path: PathBuf,
        index: u64,
        start: u64,
        len: u64,
        blocks_count: u64,
    },
    /// The piece count in the header is not what the spans and piece size give.
    #[error(
        "move journal {}: the header records {recorded} pieces, the spans make {computed}",
        path.display()
    )]
    MoveJournalPieceCount {
        path: PathBuf,
        recorded: u64,
        computed: u64,
    },
    /// The spans and piece checksums do not match the SHA-256 in the header.
    #[error(
        "move journal {}: the span list and piece checksums do not match the header's hash",
        path.display()
    )]
    MoveJournalHash { path: PathBuf },
    /// Neither checkpoint slot holds a valid record.
    #[error(
        "move journal {}: no valid checkpoint in the slots at byte {offset} and the next 4 KiB",
        path.display()
    )]
    MoveJournalNoCheckpoint { path: PathBuf, offset: u64 },
    /// A valid checkpoint that names a piece past the last one.
    #[error(
        "move journal {}: the checkpoint at byte {offset} names piece {next} of {pieces}",
        path.display()
    )]
    MoveJournalCheckpoint {
        path: PathBuf,
        offset: u64,
        next: u64,
        pieces: u64,
    },
    /// Transitional: damage described by two strings, from before the typed kinds. Every
    /// use is being replaced by a typed variant above; this variant goes when the last does.
    #[error("{what}: {detail}")]
    Other { what: String, detail: String },
}

impl Error {
    /// Transitional constructor for [`CorruptKind::Other`]; new code builds a typed kind.
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt(CorruptKind::Other {
            what: what.into(),
            detail: detail.into(),
        })
    }

    pub fn io(op: &'static str, offset: u64, source: io::Error) -> Self {
        Error::Io { op, offset, source }
    }

    /// The kind of damage, when this is a corruption error.
    pub fn corrupt_kind(&self) -> Option<&CorruptKind> {
        match self {
            Error::Corrupt(k) => Some(k),
            _ => None,
        }
    }

    /// True for an error about the target being written (a write, a truncation, a
    /// comparison read of `-c`, a lack of room), so that messages name OUTPUT, not SOURCE.
    pub fn is_output_side(&self) -> bool {
        match self {
            Error::NoRoom { .. } => true,
            Error::Io { op, .. } => OUTPUT_OPS.contains(op),
            _ => false,
        }
    }

    /// True for a write to a closed pipe.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// `Error::Io` operations on the target being written.
pub const OUTPUT_OPS: &[&str] = &["write", "truncate", "flush", "sync", "read back"];

pub type Result<T, E = Error> = std::result::Result<T, E>;
