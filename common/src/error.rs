//! The one error type of the library. Messages are lower-case and say what and where.

use std::io;

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
    /// The source ends before the superblock does.
    #[error("superblock at byte {offset}: the source ends at byte {source_bytes}")]
    SuperblockPastSource { offset: u64, source_bytes: u64 },
    #[error("superblock: bad magic number {magic:#06x} (not an ext2/3/4 filesystem)")]
    SuperblockMagic { magic: u16 },
    #[error("superblock: revision level {rev_level} is too new")]
    SuperblockRevision { rev_level: u32 },
    #[error(
        "superblock: block size log {log_block_size}, cluster size log {log_cluster_size} or flex group log {log_groups_per_flex} out of range"
    )]
    SuperblockSizeLogs {
        log_block_size: u32,
        log_cluster_size: u32,
        log_groups_per_flex: u8,
    },
    #[error(
        "superblock: cluster size log {log_cluster_size} differs from block size log {log_block_size} without bigalloc"
    )]
    SuperblockClusterSize {
        log_block_size: u32,
        log_cluster_size: u32,
    },
    #[error("superblock: inode size {inode_size} is invalid")]
    SuperblockInodeSize { inode_size: u32 },
    #[error("superblock: group descriptor size {desc_size} is invalid")]
    SuperblockDescSize { desc_size: u32 },
    #[error(
        "superblock: {blocks_per_group} blocks per group does not match {clusters_per_group} clusters per group"
    )]
    SuperblockClustersPerGroup {
        blocks_per_group: u32,
        clusters_per_group: u32,
    },
    /// The block size differs from the one given with `-B`.
    #[error("superblock: block size is {block_size}, not the expected {expected}")]
    SuperblockBlockSize { block_size: u32, expected: u32 },
    #[error("superblock: zero inodes per group")]
    SuperblockNoInodes,
    #[error(
        "superblock: geometry out of range: {blocks_per_group} blocks per group, {inode_blocks_per_group} inode table blocks per group, first data block {first_data_block} of {blocks_count}"
    )]
    SuperblockGeometry {
        blocks_per_group: u32,
        inode_blocks_per_group: u64,
        first_data_block: u32,
        blocks_count: u64,
    },
    /// The filesystem's size in bytes does not fit in 64 bits.
    #[error("superblock: {blocks_count} blocks of {block_size} bytes is too large")]
    SuperblockTooLarge { blocks_count: u64, block_size: u32 },
    #[error("superblock: {groups} block groups is too many")]
    SuperblockGroupCount { groups: u64 },
    #[error(
        "superblock: inode count {inodes_count} is not {groups} groups × {inodes_per_group} inodes per group"
    )]
    SuperblockInodeCount {
        inodes_count: u32,
        groups: u64,
        inodes_per_group: u32,
    },
    #[error(
        "superblock: first meta_bg {first_meta_bg} is past the {desc_blocks} descriptor blocks"
    )]
    SuperblockFirstMetaBg {
        first_meta_bg: u32,
        desc_blocks: u32,
    },
    /// Per-group bitmaps that are not whole bytes or do not fit in a block.
    #[error(
        "superblock: {clusters_per_group} clusters or {inodes_per_group} inodes per group do not make whole-byte bitmaps of at most a {block_size}-byte block"
    )]
    SuperblockBitmapGeometry {
        clusters_per_group: u32,
        inodes_per_group: u32,
        block_size: u32,
    },
    #[error(
        "superblock: {desc_blocks} descriptor blocks do not fit in a {source_bytes}-byte source"
    )]
    DescTableTooLarge { desc_blocks: u32, source_bytes: u64 },
    /// A descriptor's inode table is not inside `[first_data_block, blocks_count)`.
    #[error(
        "group {group}: inode table at block {block} lies outside the filesystem ({fs_blocks} blocks)"
    )]
    InodeTableOutside {
        group: u32,
        block: u64,
        fs_blocks: u64,
    },
    #[error("group {group}: the group has no inode table")]
    InodeTableMissing { group: u32 },
    /// A block (of the kind `role` says) outside `[first_data_block, blocks_count)`.
    #[error("{role} at block {block} lies outside the filesystem ({fs_blocks} blocks)")]
    BlockOutside {
        role: crate::ext4::damage::Role,
        block: u64,
        fs_blocks: u64,
    },
    /// A block the source does not hold (a truncated image or device).
    #[error("{role} at block {block} lies past the end of the source ({source_bytes} bytes)")]
    BlockPastSource {
        role: crate::ext4::damage::Role,
        block: u64,
        source_bytes: u64,
    },
    /// A block a map claims (as what `role` says) that holds the filesystem's own metadata:
    /// its superblock, descriptors, a bitmap or an inode table.
    #[error(
        "{role} at block {block} is the filesystem's own metadata (superblock, descriptors, bitmap or inode table)"
    )]
    BlockIsMetadata {
        role: crate::ext4::damage::Role,
        block: u64,
    },
    /// A bad extent header: in the inode's root (`node: None`) or in node block `node`.
    #[error("inode {ino}: extent {}: {problem}", match node { Some(b) => format!("node at block {b}"), None => "root".to_string() })]
    ExtentHeader {
        ino: u32,
        node: Option<u64>,
        problem: crate::ext4::damage::ExtentHeaderProblem,
    },
    #[error("inode {ino}: extent tree loops back to block {block}")]
    ExtentLoop { ino: u32, block: u64 },
    #[error("inode {ino}: extent tree deeper than {depth} levels")]
    ExtentTooDeep { ino: u32, depth: u16 },
    #[error("inode {ino}: extent node at block {block} is empty")]
    ExtentNodeEmpty { ino: u32, block: u64 },
    /// A directory entry that does not fit where it is.
    #[error("inode {ino}: {region}: entry at byte {offset}: {}", match problem {
        crate::ext4::damage::DirEntryProblem::Truncated { end } => format!("runs past byte {end}"),
        crate::ext4::damage::DirEntryProblem::Lengths { rec_len, name_len } =>
            format!("rec_len {rec_len} and name_len {name_len} do not fit"),
    })]
    DirEntry {
        ino: u32,
        region: crate::ext4::damage::DirRegion,
        offset: usize,
        problem: crate::ext4::damage::DirEntryProblem,
    },
    #[error("inode {ino}: htree index: {problem}")]
    Htree {
        ino: u32,
        problem: crate::ext4::damage::HtreeProblem,
    },
    #[error("{at}: {problem}")]
    Xattr {
        at: crate::ext4::damage::XattrAt,
        problem: crate::ext4::damage::XattrProblem,
    },
    /// A slow symlink whose first block is not mapped.
    #[error("inode {ino}: symlink block 0 is not mapped")]
    SymlinkUnmapped { ino: u32 },

    // ---- qcow2 ----

    // ---- normal e2image images ----

    // ---- e2i streams ----

    // ---- move journal, undo files ----
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
