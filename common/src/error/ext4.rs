//! What damaged ext2/3/4 structures are and where they lie: the vocabulary of the ext2/3/4
//! kinds of [`super::CorruptKind`] (re-exported by [`crate::ext4::damage`]). Plain data:
//! nothing here depends on the rest of the crate, so the error type stays a leaf.

use std::fmt;

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
