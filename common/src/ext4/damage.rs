//! Where damage is and what it is, for the ext2/3/4 kinds of [`crate::error::CorruptKind`],
//! and the [`Problem`]s a lenient scan collects instead of failing.
//!
//! Every type here names a location (group, inode, block, logical block, byte) in fields,
//! so that callers and tests can tell one damage from another without parsing messages.

use std::fmt;

use crate::Error;
use crate::error::CorruptKind;

/// What a block holds, as far as the reader knows: the "what" of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The superblock's block (primary, or the backup named with `-b`).
    Superblock,
    /// Descriptor block `index` of the table (0-based).
    DescriptorBlock {
        index: u32,
    },
    /// Part of group `group`'s inode table.
    InodeTable {
        group: u32,
    },
    BlockBitmap {
        group: u32,
    },
    InodeBitmap {
        group: u32,
    },
    /// An extent index or leaf node below the root in the inode.
    ExtentNode {
        ino: u32,
    },
    /// An indirect block: `level` 1 single, 2 double, 3 triple.
    IndirectBlock {
        ino: u32,
        level: u8,
    },
    /// Logical block `lblk` of a directory.
    DirBlock {
        ino: u32,
        lblk: u64,
    },
    /// The block holding a slow symlink's target.
    SymlinkBlock {
        ino: u32,
    },
    /// An extended-attribute block (shared by any number of inodes).
    XattrBlock,
    /// A block of the journal (inode `ino`).
    JournalBlock {
        ino: u32,
    },
    /// The multi-mount protection block.
    MmpBlock,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Role::Superblock => f.write_str("superblock"),
            Role::DescriptorBlock { index } => write!(f, "group descriptor block {index}"),
            Role::InodeTable { group } => write!(f, "group {group}: inode table"),
            Role::BlockBitmap { group } => write!(f, "group {group}: block bitmap"),
            Role::InodeBitmap { group } => write!(f, "group {group}: inode bitmap"),
            Role::ExtentNode { ino } => write!(f, "inode {ino}: extent node"),
            Role::IndirectBlock { ino, level } => {
                let kind = match level {
                    1 => "indirect",
                    2 => "double indirect",
                    _ => "triple indirect",
                };
                write!(f, "inode {ino}: {kind} block")
            }
            Role::DirBlock { ino, lblk } => write!(f, "inode {ino}: directory block {lblk}"),
            Role::SymlinkBlock { ino } => write!(f, "inode {ino}: symlink block"),
            Role::XattrBlock => f.write_str("xattr block"),
            Role::JournalBlock { ino } => write!(f, "inode {ino}: journal block"),
            Role::MmpBlock => f.write_str("mmp block"),
        }
    }
}

/// What is wrong with an extent header (libext2fs `ext2fs_extent_header_verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentHeaderProblem {
    /// The node is shorter than a header.
    Short,
    Magic {
        magic: u16,
    },
    /// More entries than room.
    Entries {
        entries: u16,
        max: u16,
    },
    /// The room claimed does not match the node's size.
    Max {
        max: u16,
        node_bytes: usize,
    },
}

impl fmt::Display for ExtentHeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Short => f.write_str("node shorter than an extent header"),
            Self::Magic { magic } => write!(f, "bad extent header magic {magic:#06x}"),
            Self::Entries { entries, max } => {
                write!(f, "extent header has {entries} entries but room for {max}")
            }
            Self::Max { max, node_bytes } => write!(
                f,
                "extent header claims room for {max} entries in a {node_bytes}-byte node"
            ),
        }
    }
}

/// Where directory entries are: a block of a block-based directory, or inline data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirRegion {
    /// Logical block `lblk`.
    Block { lblk: u64 },
    /// The inline entries in `i_block`.
    InlineBody,
    /// The inline entries continued in the `system.data` xattr.
    InlineXattr,
}

impl fmt::Display for DirRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DirRegion::Block { lblk } => write!(f, "directory block {lblk}"),
            DirRegion::InlineBody => f.write_str("inline directory"),
            DirRegion::InlineXattr => f.write_str("inline directory (system.data)"),
        }
    }
}

/// What is wrong with a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirEntryProblem {
    /// The 8-byte header does not fit before `end`.
    Truncated { end: usize },
    /// `rec_len` and `name_len` do not describe an entry inside the region.
    Lengths { rec_len: usize, name_len: usize },
}

/// What is wrong with an htree index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HtreeProblem {
    /// Logical block 0 (the dx_root) is not mapped or lies outside the filesystem.
    RootUnmapped,
    /// The dx_root block is smaller than its fixed fields.
    RootTooSmall { block_bytes: usize },
    /// More index levels than the filesystem allows.
    Levels { levels: u8 },
    /// The count/limit header of index block `lblk` lies past the block.
    EntriesPastBlock { lblk: u64 },
    /// Index block `lblk` has a count of 0, above its limit, or past the block.
    Count { lblk: u64, count: u16, limit: u16 },
    /// Index block `lblk` is referenced twice (or is block 0).
    NodeTwice { lblk: u64 },
    /// Index block `lblk` is not mapped, or lies outside the filesystem.
    NodeUnmapped { lblk: u64 },
}

impl fmt::Display for HtreeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::RootUnmapped => f.write_str("block 0 is not mapped"),
            Self::RootTooSmall { block_bytes } => {
                write!(f, "a {block_bytes}-byte dx_root is too small")
            }
            Self::Levels { levels } => {
                write!(f, "dx_root claims {} index levels", u16::from(levels) + 1)
            }
            Self::EntriesPastBlock { lblk } => {
                write!(f, "index block {lblk}: entries start past the block")
            }
            Self::Count { lblk, count, limit } => write!(
                f,
                "index block {lblk}: count {count} and limit {limit} do not fit"
            ),
            Self::NodeTwice { lblk } => write!(f, "index block {lblk} is referenced twice"),
            Self::NodeUnmapped { lblk } => write!(f, "index block {lblk} is not mapped"),
        }
    }
}

/// Where an xattr entry table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrAt {
    /// In the body of inode `ino` (after `i_extra_isize`).
    Inode { ino: u32 },
    /// In xattr block `block`.
    Block { block: u64 },
}

impl fmt::Display for XattrAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            XattrAt::Inode { ino } => write!(f, "inode {ino}: in-inode xattrs"),
            XattrAt::Block { block } => write!(f, "xattr block {block}"),
        }
    }
}

/// What is wrong with an xattr table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrProblem {
    /// Bad magic or block count in an xattr block header.
    Header { magic: u32, blocks: u32 },
    /// The table runs past byte `end` without its terminating zero word.
    Unterminated { end: usize },
    /// The entry at byte `offset` (header or name) runs past byte `end`.
    Entry { offset: usize, end: usize },
    /// The value of the entry at byte `offset` runs past byte `end`.
    Value {
        offset: usize,
        value_offset: usize,
        value_size: usize,
        end: usize,
    },
}

impl fmt::Display for XattrProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Header { magic, blocks } => {
                write!(f, "bad header (magic {magic:#010x}, {blocks} blocks)")
            }
            Self::Unterminated { end } => write!(f, "entries run past byte {end}"),
            Self::Entry { offset, end } => {
                write!(f, "entry at byte {offset} runs past byte {end}")
            }
            Self::Value {
                offset,
                value_offset,
                value_size,
                end,
            } => write!(
                f,
                "value of entry at byte {offset} ({value_size} bytes at byte {value_offset}) runs past byte {end}"
            ),
        }
    }
}

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
        offset: u64,
        error: std::io::ErrorKind,
        message: String,
    },
    /// Block `block` could not be read while copying; zeros were written in its place.
    CopyUnreadable { block: u64 },
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
                offset: 0,
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
                write!(f, "{op} at byte {offset}: {message}")
            }
            ProblemKind::CopyUnreadable { block } => {
                write!(f, "block {block}: read error; written as zeros")
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
