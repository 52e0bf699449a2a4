//! Where damage is and what it is, for the ext2/3/4 kinds of [`crate::error::CorruptKind`],
//! and the [`Problem`]s a lenient scan collects instead of failing.
//!
//! Every type here names a location (group, inode, block, logical block, byte) in fields,
//! so that callers and tests can tell one damage from another without parsing messages.

use std::fmt;

use crate::Error;
use crate::error::CorruptKind;
pub use crate::error::ext4::{
    DirEntryProblem, DirRegion, ExtentHeaderProblem, HtreeProblem, Role, XattrAt, XattrProblem,
};

/// A damaged structure a lenient scan skipped (or a read that failed), and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The inode it belongs to, if any.
    pub ino: Option<u32>,
    pub kind: ProblemKind,
}

/// What was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// Damaged metadata.
    Corrupt(CorruptKind),
    /// Blocks `first ..= last` of group `group`'s inode table could not be read: the
    /// inodes `first_ino ..= last_ino` they hold are skipped.
    InodeTableUnreadable {
        group: u32,
        first: u64,
        last: u64,
        first_ino: u32,
        last_ino: u32,
    },
    /// A read failed (an I/O error of the source); `op` and `offset` say where.
    Read {
        op: &'static str,
        offset: Option<u64>,
        error: std::io::ErrorKind,
        message: String,
    },
    /// `count` consecutive blocks from `first` could not be read while copying; zeros were
    /// written in their place.
    CopyUnreadable { first: u64, count: u64 },
    /// `count` more blocks could not be read while copying (not listed one by one).
    CopyUnreadableMore { count: u64 },
}

impl Problem {
    /// A problem from an error met while reading or walking; the error itself back when it
    /// is not damage (unsupported input, an invalid request): those end the run.
    pub fn from_error(ino: Option<u32>, e: Error) -> std::result::Result<Problem, Error> {
        let kind = match e {
            Error::Corrupt(k) => ProblemKind::Corrupt(k),
            Error::Io { op, offset, source } => ProblemKind::Read {
                op,
                offset,
                error: source.kind(),
                message: source.to_string(),
            },
            other => return Err(other),
        };
        Ok(Problem { ino, kind })
    }

    /// The problem as an error, for callers that stop at the first damage.
    pub fn into_error(self) -> Error {
        let text = self.to_string();
        match self.kind {
            ProblemKind::Corrupt(k) => Error::Corrupt(k),
            ProblemKind::Read {
                op,
                offset,
                error,
                message,
            } => Error::Io {
                op,
                offset,
                source: std::io::Error::new(error, message),
            },
            _ => Error::Io {
                op: "reading the source",
                offset: None,
                source: std::io::Error::other(text),
            },
        }
    }

    /// The corruption kind, when the problem is one.
    pub fn corrupt_kind(&self) -> Option<&CorruptKind> {
        match &self.kind {
            ProblemKind::Corrupt(k) => Some(k),
            _ => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ProblemKind::Corrupt(k) => write!(f, "{k}"),
            ProblemKind::InodeTableUnreadable {
                group,
                first,
                last,
                first_ino,
                last_ino,
            } => {
                write!(f, "group {group}: inode table ")?;
                write_range(f, "block", *first, *last)?;
                f.write_str(" cannot be read; ")?;
                write_range(f, "inode", u64::from(*first_ino), u64::from(*last_ino))?;
                f.write_str(" skipped")
            }
            ProblemKind::Read {
                op,
                offset,
                message,
                ..
            } => {
                if let Some(ino) = self.ino {
                    write!(f, "inode {ino}: ")?;
                }
                write!(f, "{op}{}: {message}", crate::error::at_byte(*offset))
            }
            ProblemKind::CopyUnreadable { first, count } => {
                write_range(
                    f,
                    "block",
                    *first,
                    first.saturating_add(count.saturating_sub(1)),
                )?;
                write!(f, ": read error; written as zeros")
            }
            ProblemKind::CopyUnreadableMore { count } => {
                write!(f, "{count} more blocks could not be read; written as zeros")
            }
        }
    }
}

/// `block 5`, or `blocks 5-9 (5 blocks)`: the one inclusive range notation of the tools.
/// Never prints a backwards range: `last < first` prints the first alone.
pub fn write_range(f: &mut fmt::Formatter<'_>, unit: &str, first: u64, last: u64) -> fmt::Result {
    match last.checked_sub(first) {
        Some(0) | None => write!(f, "{unit} {first}"),
        Some(d) => write!(
            f,
            "{unit}s {first}-{last} ({} {unit}s)",
            d.saturating_add(1)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_never_backwards() {
        struct R(u64, u64);
        impl fmt::Display for R {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_range(f, "block", self.0, self.1)
            }
        }
        assert_eq!(R(5, 5).to_string(), "block 5");
        assert_eq!(R(5, 9).to_string(), "blocks 5-9 (5 blocks)");
        assert_eq!(R(9, 5).to_string(), "block 9");
        assert_eq!(
            R(0, u64::MAX).to_string(),
            format!("blocks 0-{} ({} blocks)", u64::MAX, u64::MAX)
        );
    }

    #[test]
    fn roles_name_their_place() {
        assert_eq!(
            Role::InodeTable { group: 0 }.to_string(),
            "group 0: inode table"
        );
        assert_eq!(
            Role::IndirectBlock { ino: 12, level: 2 }.to_string(),
            "inode 12: double indirect block"
        );
    }
}
