//! The one error type of the library. Messages are lower-case and say what and where.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::io;
use std::path::PathBuf;

pub mod ext4;

/// Everything that can go wrong in `e2i`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed. (The source error is printed by the error chain.) `offset` is
    /// the byte of the file it failed at, `None` for calls that have no position (open,
    /// stat): byte 0 is a position like any other.
    #[error("{op}{}", at_byte(*offset))]
    Io {
        op: &'static str,
        offset: Option<u64>,
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
    /// A system call on an e2i-move journal failed (the source error is printed by the
    /// error chain): named by the journal, not the file the run moves.
    #[error("journal {}: {op}", path.display())]
    JournalIo {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The target (a block device) is smaller than what must be written; checked before the
    /// first write.
    #[error("it holds {have} bytes, but {need} bytes must be written; nothing written")]
    NoRoom { have: u64, need: u64 },
    /// A file of a qcow2 backing chain cannot be used; the source says why.
    #[error("backing file {}", path.display())]
    Backing {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    /// An overlay's backing chain no longer holds the disk the overlay was written on (a
    /// backing file replaced, restored from another time or changed in place): the overlay
    /// would read as another image than the one it was made as.
    #[error(
        "backing chain from {}: changed since this overlay was written on it (a file of it replaced, restored or modified), so the overlay no longer reads as it was made; put the chain back (or, if the change was meant, flatten it with qemu-img convert)",
        path.display()
    )]
    BackingChanged { path: PathBuf },
    /// A qcow2 backing chain names a file already in it.
    #[error("backing file {}: it is already in the backing chain (a loop)", path.display())]
    BackingLoop { path: PathBuf },
    /// The temporary file in `dir` (`TMPDIR`) where a run keeps what it cannot write yet
    /// (a stream's data until it is verified, an input read twice) failed; the message
    /// says where and what to do, since the user never named that file.
    #[error(
        "temporary file in {} (TMPDIR): {op}{}: {error}; set TMPDIR to a writable folder with room",
        dir.display(),
        at_byte(*offset)
    )]
    TempFile {
        dir: PathBuf,
        op: &'static str,
        offset: Option<u64>,
        /// Printed in the message, before the advice (not a `source`, which would follow it).
        error: io::Error,
    },
    /// A file or device being read ended at byte `end` although it held `was` bytes when
    /// the run opened it: it was truncated (or shrunk) during the run.
    #[error(
        "it ends at byte {end} but held {was} bytes when the run opened it: it was truncated during the run, and what was read of it no longer holds together"
    )]
    SourceShrank { end: u64, was: u64 },
    /// e2i-install failed after its first write to DEVICE (the error inside says why):
    /// DEVICE holds part of the image's metadata over its own, and its undo file, when one
    /// was asked for, is complete.
    #[error(transparent)]
    InstallUnfinished(Box<Error>),
    /// A qcow2 backing chain deeper than e2i follows.
    #[error("backing file {}: the backing chain is deeper than {max} files", path.display())]
    BackingTooDeep { path: PathBuf, max: usize },
    /// The external data file of a qcow2 image cannot be used; the source says why.
    #[error("data file {}", path.display())]
    DataFile {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
}

/// What is damaged, and where: every variant carries its location (group, inode, block,
/// byte offset) as fields, so callers and tests can tell one damage from another.
/// Sections by format; keep each variant's message in the form "what: what is wrong".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptKind {
    // ---- any source ----
    /// A read that must be whole ([`crate::io::ReadAt::read_exact_at`]) reached the end of
    /// the source: `what` was read, `len` bytes at byte `offset`.
    #[error(
        "{what}: {len} bytes at byte {offset} cannot be read: the source ends at byte {source_bytes}"
    )]
    ShortRead {
        what: &'static str,
        offset: u64,
        len: u64,
        source_bytes: u64,
    },

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
    /// The descriptor table claims more bytes than the source holds as data: its size is a
    /// claim over holes (a qcow2's virtual disk, a sparse file), not descriptors to load.
    #[error(
        "superblock: {desc_blocks} descriptor blocks are more than the {stored_bytes} bytes of data the source holds"
    )]
    DescTableNotStored { desc_blocks: u32, stored_bytes: u64 },
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
        role: ext4::Role,
        block: u64,
        fs_blocks: u64,
    },
    /// A block the source does not hold (a truncated image or device).
    #[error("{role} at block {block} lies past the end of the source ({source_bytes} bytes)")]
    BlockPastSource {
        role: ext4::Role,
        block: u64,
        source_bytes: u64,
    },
    /// A block a map claims (as what `role` says) that holds the filesystem's own metadata:
    /// its superblock, descriptors, a bitmap or an inode table.
    #[error(
        "{role} at block {block} is the filesystem's own metadata (superblock, descriptors, bitmap or inode table)"
    )]
    BlockIsMetadata { role: ext4::Role, block: u64 },
    /// A bad extent header: in the inode's root (`node: None`) or in node block `node`.
    #[error("inode {ino}: extent {}: {problem}", match node { Some(b) => format!("node at block {b}"), None => "root".to_string() })]
    ExtentHeader {
        ino: u32,
        node: Option<u64>,
        problem: ext4::ExtentHeaderProblem,
    },
    #[error("inode {ino}: extent tree loops back to block {block}")]
    ExtentLoop { ino: u32, block: u64 },
    #[error("inode {ino}: extent tree deeper than {depth} levels")]
    ExtentTooDeep { ino: u32, depth: u16 },
    #[error("inode {ino}: extent node at block {block} is empty")]
    ExtentNodeEmpty { ino: u32, block: u64 },
    /// A directory entry that does not fit where it is.
    #[error("inode {ino}: {region}: entry at byte {offset}: {}", match problem {
        ext4::DirEntryProblem::Truncated { end } => format!("runs past byte {end}"),
        ext4::DirEntryProblem::Lengths { rec_len, name_len } =>
            format!("rec_len {rec_len} and name_len {name_len} do not fit"),
    })]
    DirEntry {
        ino: u32,
        region: ext4::DirRegion,
        offset: usize,
        problem: ext4::DirEntryProblem,
    },
    #[error("inode {ino}: htree index: {problem}")]
    Htree {
        ino: u32,
        problem: ext4::HtreeProblem,
    },
    #[error("{at}: {problem}")]
    Xattr {
        at: ext4::XattrAt,
        problem: ext4::XattrProblem,
    },
    /// A slow symlink whose first block is not mapped.
    #[error("inode {ino}: symlink block 0 is not mapped")]
    SymlinkUnmapped { ino: u32 },

    // ---- qcow2 ----
    /// The file is shorter than a version 2 header.
    #[error("qcow2 header: the file is {len} bytes, shorter than a header")]
    Qcow2HeaderShort { len: u64 },
    #[error("qcow2 header: bad magic (not a qcow2 image)")]
    Qcow2Magic,
    #[error("qcow2 header: cluster_bits {cluster_bits} is outside 9..=21")]
    Qcow2ClusterBits { cluster_bits: u32 },
    #[error("qcow2 header: the file ends at byte {len}, inside the {needed}-byte version 3 header")]
    Qcow2HeaderTruncated { len: u64, needed: u64 },
    #[error("qcow2 header: header_length {header_length} is invalid")]
    Qcow2HeaderLength { header_length: u32 },
    #[error("qcow2 header: refcount_order {refcount_order} is above 6")]
    Qcow2RefcountOrder { refcount_order: u32 },
    #[error("qcow2 header: virtual size {size} is too large")]
    Qcow2VirtualSize { size: u64 },
    /// The type and length of a header extension do not fit in the first cluster (or the
    /// file ends inside them).
    #[error(
        "qcow2 header extension at byte {offset}: its type and length run past the first cluster or the file"
    )]
    Qcow2ExtensionHeader { offset: u64 },
    #[error(
        "qcow2 header extension {kind:#x} at byte {offset}: its {len} bytes run past the first cluster"
    )]
    Qcow2ExtensionData { offset: u64, kind: u32, len: u32 },
    #[error(
        "qcow2 L1 table: {entries} entries cannot map a virtual size of {size} bytes (needs {needed})"
    )]
    Qcow2L1TooSmall {
        entries: u32,
        size: u64,
        needed: u64,
    },
    #[error("qcow2 L1 table: offset {host_offset} is not a cluster boundary after the header")]
    Qcow2L1Misaligned { host_offset: u64 },
    #[error(
        "qcow2 L1 table: {entries} entries at byte {host_offset} extend past the end of the file ({file_size} bytes)"
    )]
    Qcow2L1Outside {
        entries: u32,
        host_offset: u64,
        file_size: u64,
    },
    /// qemu's checks of the refcount table location: aligned, at most 8 MiB, addressable.
    #[error(
        "qcow2 refcount table: {clusters} clusters at byte {host_offset} are misaligned or too large"
    )]
    Qcow2RefcountTable { host_offset: u64, clusters: u32 },
    #[error("qcow2 L1 entries {first} and {second}: both use the L2 table at byte {host_offset}")]
    Qcow2L2Shared {
        first: u64,
        second: u64,
        host_offset: u64,
    },
    #[error("qcow2 L1 entry {l1_index}: reserved bits set ({entry:#x})")]
    Qcow2L1Reserved { l1_index: u64, entry: u64 },
    #[error("qcow2 L1 entry {l1_index}: L2 table offset {host_offset} is not cluster-aligned")]
    Qcow2L2Misaligned { l1_index: u64, host_offset: u64 },
    #[error(
        "qcow2 L1 entry {l1_index}: L2 table at byte {host_offset} lies past the end of the file ({file_size} bytes)"
    )]
    Qcow2L2Outside {
        l1_index: u64,
        host_offset: u64,
        file_size: u64,
    },
    #[error(
        "qcow2 L1 entry {l1_index}: L2 table at byte {host_offset} overlaps the image's own metadata at bytes {meta_start}..{meta_end}"
    )]
    Qcow2L2OnMetadata {
        l1_index: u64,
        host_offset: u64,
        meta_start: u64,
        meta_end: u64,
    },
    #[error(
        "qcow2 L2 entry of guest cluster {guest_cluster} (L2 table at byte {l2_offset}): reserved bits set ({entry:#x})"
    )]
    Qcow2L2Reserved {
        guest_cluster: u64,
        l2_offset: u64,
        entry: u64,
    },
    #[error(
        "qcow2 L2 entry of guest cluster {guest_cluster} (L2 table at byte {l2_offset}): data offset {host_offset} is not cluster-aligned"
    )]
    Qcow2DataMisaligned {
        guest_cluster: u64,
        l2_offset: u64,
        host_offset: u64,
    },
    #[error(
        "qcow2 L2 entry of guest cluster {guest_cluster} (L2 table at byte {l2_offset}): data cluster at byte {host_offset} overlaps the image's metadata"
    )]
    Qcow2DataOnMetadata {
        guest_cluster: u64,
        l2_offset: u64,
        host_offset: u64,
    },
    #[error(
        "qcow2 L2 entry of guest cluster {guest_cluster} (L2 table at byte {l2_offset}): data cluster at byte {host_offset} lies past the end of the file ({file_size} bytes)"
    )]
    Qcow2DataOutside {
        guest_cluster: u64,
        l2_offset: u64,
        host_offset: u64,
        file_size: u64,
    },
    #[error(
        "qcow2 L2 entry of guest cluster {guest_cluster} (L2 table at byte {l2_offset}): compressed data at byte {host_offset} lies in the header or past the end of the file ({file_size} bytes)"
    )]
    Qcow2CompressedOutside {
        guest_cluster: u64,
        l2_offset: u64,
        host_offset: u64,
        file_size: u64,
    },
    /// An extended L2 entry marks a subcluster both allocated and reading as zeros.
    #[error(
        "qcow2 extended L2 entry of guest cluster {guest_cluster} (guest byte {guest_offset}, L2 table at byte {l2_offset}): subcluster bitmap {bitmap:#018x} marks subclusters both allocated and zero"
    )]
    Qcow2SubclusterAllocatedAndZero {
        guest_cluster: u64,
        guest_offset: u64,
        l2_offset: u64,
        bitmap: u64,
    },
    /// An extended L2 entry without a host offset marks subclusters allocated.
    #[error(
        "qcow2 extended L2 entry of guest cluster {guest_cluster} (guest byte {guest_offset}, L2 table at byte {l2_offset}): subcluster bitmap {bitmap:#018x} marks subclusters allocated in a cluster without a host offset"
    )]
    Qcow2SubclusterWithoutHost {
        guest_cluster: u64,
        guest_offset: u64,
        l2_offset: u64,
        bitmap: u64,
    },
    /// Extended L2 entries need clusters of at least 16 KiB (subclusters of 512 bytes).
    #[error(
        "qcow2 header: extended L2 entries with clusters of 2^{cluster_bits} bytes (at least 16 KiB needed)"
    )]
    Qcow2ExtendedL2ClusterSize { cluster_bits: u32 },
    #[error(
        "qcow2 compressed cluster {guest_cluster} at byte {host_offset}: bad compressed data: {detail}"
    )]
    Qcow2Inflate {
        guest_cluster: u64,
        host_offset: u64,
        detail: String,
    },
    #[error(
        "qcow2 compressed cluster {guest_cluster} at byte {host_offset}: inflates to {got} bytes instead of {want}"
    )]
    Qcow2InflatedSize {
        guest_cluster: u64,
        host_offset: u64,
        got: u64,
        want: u64,
    },
    /// An image with an external data file has a compressed cluster (qemu: "Compressed
    /// cluster entry found in image with external data file").
    #[error(
        "qcow2 L2 entry of guest cluster {guest_cluster} (L2 table at byte {l2_offset}): compressed cluster {entry:#018x} in an image with an external data file, which cannot hold compressed clusters"
    )]
    Qcow2CompressedWithDataFile {
        guest_cluster: u64,
        l2_offset: u64,
        entry: u64,
    },
    /// A data cluster of an image with an external data file is not at its guest offset in
    /// that file (qemu: "External data file host cluster offset … does not match guest
    /// cluster offset"): qemu allocates every data file cluster there and refuses any other.
    #[error(
        "qcow2 L2 entry of guest cluster {guest_cluster} (L2 table at byte {l2_offset}): data cluster at byte {data_offset} of the external data file {}, not at its guest offset {guest_offset} (qemu refuses it)",
        data_file.display()
    )]
    Qcow2DataFileOffset {
        guest_cluster: u64,
        l2_offset: u64,
        data_file: PathBuf,
        data_offset: u64,
        guest_offset: u64,
    },
    /// The external data file bit is set, but no header extension names the file.
    #[error(
        "qcow2 header: the external data file bit is set, but no header extension names the data file"
    )]
    Qcow2DataFileUnnamed,
    /// The external data file name extension is empty, too long or holds a NUL byte.
    #[error("qcow2 header: external data file name of {len} bytes is invalid: {why}")]
    Qcow2DataFileName { len: u64, why: &'static str },
    /// The raw external data bit (autoclear bit 1) without the external data file bit
    /// (qemu: "data-file-raw requires a data file").
    #[error(
        "qcow2 header: the raw external data bit is set, but the image has no external data file"
    )]
    Qcow2DataFileRawWithoutDataFile,
    /// The backing file name's location or length is invalid (qemu's limits: at most 1023
    /// bytes, inside the first cluster), or it holds a NUL byte.
    #[error("qcow2 header: backing file name of {len} bytes at byte {host_offset} is invalid")]
    Qcow2BackingName { host_offset: u64, len: u32 },
    /// A table checked to lie inside the file could not be read whole (the file shrank).
    #[error(
        "qcow2 image: {len} bytes at byte {host_offset} cannot be read: the file ends at byte {file_size}"
    )]
    Qcow2ShortRead {
        host_offset: u64,
        len: u64,
        file_size: u64,
    },

    // ---- normal e2image images ----
    #[error("normal e2image image: the file is {len} bytes, shorter than its 332-byte header")]
    NormalHeaderShort { len: u64 },
    #[error("normal e2image header: wrong magic number {magic:#010x} (not a normal e2image image)")]
    NormalMagic { magic: u32 },
    #[error("normal e2image header: block size {block_size} is invalid")]
    NormalBlockSize { block_size: u32 },
    #[error("normal e2image image: the header's filesystem UUID differs from the superblock's")]
    NormalUuid,
    /// A section offset in the header is not where e2image puts that section.
    #[error(
        "normal e2image header: field {field} is {value}, but this filesystem's image has it at {expected}"
    )]
    NormalHeaderOffset {
        field: &'static str,
        value: u32,
        expected: u64,
    },
    /// The image is shorter than its header and superblock say.
    #[error(
        "normal e2image image: truncated: {len} bytes, but the filesystem's image is {expected} bytes"
    )]
    NormalTruncated { len: u64, expected: u64 },
    /// A section of the layout the superblock describes lies beyond 64-bit offsets.
    #[error("normal e2image layout: {field} overflows 64-bit byte offsets")]
    NormalLayoutOverflow { field: &'static str },
    #[error("group {group} descriptor: the group is missing an inode table")]
    NormalInodeTableMissing { group: u32 },
    #[error(
        "group {group} descriptor: inode table at block {block} ({blocks} blocks) lies outside the filesystem's {fs_blocks} blocks"
    )]
    NormalInodeTableOutside {
        group: u32,
        block: u64,
        blocks: u64,
        fs_blocks: u64,
    },
    /// Inode-table blocks the descriptors place inside the filesystem lie past the end of the
    /// source (a truncated filesystem image).
    #[error(
        "inode table: blocks {start}..{end} lie past the end of the source ({source_size} bytes)"
    )]
    NormalInodeTablePastSource {
        start: u64,
        end: u64,
        source_size: u64,
    },
    /// A meta_bg descriptor block lies outside the image's descriptor section.
    #[error("normal e2image image: meta_bg {meta_group} descriptor block is past the descriptors")]
    NormalDescriptorBlock { meta_group: u64 },
    /// The descriptor section is (partly) holes: no real filesystem has zero descriptors.
    #[error(
        "normal e2image image: the descriptors ({len} bytes) are only {stored} bytes of data; the rest is holes"
    )]
    NormalDescriptorsMissing { len: u64, stored: u64 },
    /// The image's geometry puts something an install writes outside the filesystem (where
    /// DEVICE holds whatever follows it, such as the next partition).
    #[error(
        "normal e2image image: {what} would go to block {block}, outside the filesystem's {fs_blocks} blocks"
    )]
    NormalWriteOutside {
        what: String,
        block: u64,
        fs_blocks: u64,
    },

    // ---- e2i streams ----
    #[error("e2i stream: truncated: ends at byte {offset} inside the {part}")]
    StreamTruncated { part: StreamPart, offset: u64 },
    #[error("e2i stream header: bad magic (not an e2i stream)")]
    StreamMagic,
    #[error("e2i stream header: header length {len} (expected 64)")]
    StreamHeaderLength { len: u16 },
    #[error("e2i stream header: block size {block_size} is invalid")]
    StreamBlockSize { block_size: u32 },
    #[error(
        "e2i stream header: {blocks_count} blocks of {block_size} bytes overflow the image size"
    )]
    StreamTooLarge { blocks_count: u64, block_size: u32 },
    #[error("e2i stream header: {extents} extents in a {blocks_count}-block image")]
    StreamExtentCount { extents: u64, blocks_count: u64 },
    #[error("e2i stream extent {index} (byte {offset}): kind {kind} is unknown")]
    StreamExtentKind { index: u64, offset: u64, kind: u8 },
    #[error(
        "e2i stream extent {index} (byte {offset}): blocks {start}+{len} lie past the image end ({blocks_count} blocks)"
    )]
    StreamExtentOutside {
        index: u64,
        offset: u64,
        start: u64,
        len: u64,
        blocks_count: u64,
    },
    #[error(
        "e2i stream extent {index} (byte {offset}): blocks {start}+{len} are empty, overlapping or out of order"
    )]
    StreamExtentOrder {
        index: u64,
        offset: u64,
        start: u64,
        len: u64,
    },
    #[error(
        "e2i stream data segment at byte {offset}: {count} blocks from block {block}, where its extent has {left} left"
    )]
    StreamSegment {
        offset: u64,
        block: u64,
        count: u64,
        left: u64,
    },
    #[error(
        "e2i stream map checksum at byte {offset}: the header or extent map is corrupt (checksum mismatch)"
    )]
    StreamMapChecksum { offset: u64 },
    #[error("e2i stream: no trailer at byte {offset} (data corrupt or stream cut)")]
    StreamNoTrailer { offset: u64 },
    #[error(
        "e2i stream trailer at byte {offset}: counts ({extents} extents, {data_blocks} data and {zero_blocks} zero blocks) do not match what the stream carried"
    )]
    StreamTrailerCounts {
        offset: u64,
        extents: u64,
        data_blocks: u64,
        zero_blocks: u64,
    },
    #[error("e2i stream trailer at byte {offset}: checksum mismatch: the stream was altered")]
    StreamChecksum { offset: u64 },
    #[error("e2i stream: unexpected bytes after the trailer at byte {offset}")]
    StreamTrailingBytes { offset: u64 },

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
    /// A save record that was intact when the move checked the journal no longer holds the
    /// piece when the move reads it (another process wrote or cut the journal meanwhile).
    /// Nothing of the piece has been written.
    #[error(
        "move journal {}: the save record of piece {piece} changed while the move ran (another program wrote the journal?); nothing of that piece was written: run the move again",
        path.display()
    )]
    MoveJournalSaveChanged { path: PathBuf, piece: u64 },
    // ---- partition tables (GPT, MBR) ----
    /// A GPT header whose CRC32 does not match (`lba` in sectors of `sector_size` bytes).
    #[error(
        "gpt header at lba {lba} ({sector_size}-byte sectors): crc32 {stored:#010x}, computed {computed:#010x}"
    )]
    GptHeaderChecksum {
        lba: u64,
        sector_size: u32,
        stored: u32,
        computed: u32,
    },
    /// A GPT header field outside what the specification (or a sane disk) allows.
    #[error("gpt header at lba {lba} ({sector_size}-byte sectors): {field} {value} {problem}")]
    GptHeaderField {
        lba: u64,
        sector_size: u32,
        field: &'static str,
        value: u64,
        problem: &'static str,
    },
    /// No "EFI PART" signature where a GPT header must be.
    #[error("gpt header at lba {lba} ({sector_size}-byte sectors): no \"EFI PART\" signature")]
    GptSignature { lba: u64, sector_size: u32 },
    /// The partition entry array's CRC32 does not match its header's.
    #[error(
        "gpt entries at lba {lba} ({sector_size}-byte sectors): crc32 {stored:#010x}, computed {computed:#010x}"
    )]
    GptEntriesChecksum {
        lba: u64,
        sector_size: u32,
        stored: u32,
        computed: u32,
    },
    /// Neither GPT header can be used.
    #[error("gpt: primary header damaged ({primary}); backup header damaged too ({backup})")]
    GptHeadersDamaged {
        primary: Box<CorruptKind>,
        backup: Box<CorruptKind>,
    },
    /// A link of an MBR's extended-partition chain that cannot be followed.
    #[error("mbr: extended boot record at byte {offset}: {problem}")]
    MbrEbr { offset: u64, problem: &'static str },
}

/// ` at byte N` after an operation that has a position, nothing after one that has none.
pub(crate) fn at_byte(offset: Option<u64>) -> String {
    offset.map_or_else(String::new, |o| format!(" at byte {o}"))
}

impl Error {
    /// A system call without a position (open, stat, sync) failed.
    pub fn io(op: &'static str, source: io::Error) -> Self {
        Error::Io {
            op,
            offset: None,
            source,
        }
    }

    /// A read or write that began at byte `offset` of its file failed there.
    pub fn io_at(op: &'static str, offset: u64, source: io::Error) -> Self {
        Error::Io {
            op,
            offset: Some(offset),
            source,
        }
    }

    /// [`Error::TempFile`] in the temporary folder, for a call without a position.
    pub fn temp_file(op: &'static str, source: io::Error) -> Self {
        Error::TempFile {
            dir: std::env::temp_dir(),
            op,
            offset: None,
            error: source,
        }
    }

    /// [`Error::TempFile`] in the temporary folder, for a read or write at `offset`.
    pub fn temp_file_at(op: &'static str, offset: u64, source: io::Error) -> Self {
        Error::TempFile {
            dir: std::env::temp_dir(),
            op,
            offset: Some(offset),
            error: source,
        }
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

    /// True for a failed write (or the flush or sync that completes writes) to the target:
    /// what a run that updates a target in place has begun to change by then.
    pub fn is_write_failure(&self) -> bool {
        matches!(self, Error::Io { op, .. } if WRITE_OPS.contains(op))
    }

    /// True when the system ran out of room (ENOSPC, or the user's quota: EDQUOT): the same
    /// run succeeds once space is freed.
    pub fn is_out_of_room(&self) -> bool {
        let full = [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT].map(|e| e.raw_os_error());
        match self {
            Error::Io { source, .. } | Error::JournalIo { source, .. } => {
                source.raw_os_error().is_some_and(|c| full.contains(&c))
            }
            Error::InstallUnfinished(e) => e.is_out_of_room(),
            _ => false,
        }
    }

    /// True for a write to a closed pipe.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// The parts of an e2i stream, in order (where a truncation happened); `crate::stream::Part`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPart {
    Header,
    ExtentMap,
    MapChecksum,
    Data,
    Trailer,
}

impl std::fmt::Display for StreamPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StreamPart::Header => "header",
            StreamPart::ExtentMap => "extent map",
            StreamPart::MapChecksum => "map checksum",
            StreamPart::Data => "data",
            StreamPart::Trailer => "trailer",
        })
    }
}

/// `Error::Io` operations on the target being written.
pub const OUTPUT_OPS: &[&str] = &[
    "write",
    "truncate",
    "flush",
    "sync",
    "read back",
    // A new OUTPUT's last steps (commit): its mode, its name.
    "chmod",
    "rename",
    OP_TOO_LARGE,
    OP_PAST_OFFSETS,
];

/// The operations of [`OUTPUT_OPS`] that change the target (or complete changing it).
const WRITE_OPS: &[&str] = &["write", "flush", "sync"];

/// The operation of [`Error::too_large`].
const OP_TOO_LARGE: &str = "a file there cannot reach the end of what must be written";

/// The operation of [`Error::past_offsets`].
const OP_PAST_OFFSETS: &str = "no file or device reaches the end of what must be written";

impl Error {
    /// The target is a regular file that cannot reach byte `need` (past the largest file
    /// offset, or past its filesystem's largest file); found before the first write.
    pub fn too_large(need: u64) -> Error {
        Error::beyond_target(
            OP_TOO_LARGE,
            format!(
                "{need} bytes lie past the largest file its filesystem allows; nothing written"
            ),
        )
    }

    /// `-O dest_offset` plus the `size` bytes to write there passes the largest byte offset
    /// (2^64 - 1): no target can hold it; found before anything is created or written. An
    /// error about the target, so that messages name it (OUTPUT, DEST, a moved SOURCE).
    pub fn past_offsets(dest_offset: u64, size: u64) -> Error {
        Error::beyond_target(
            OP_PAST_OFFSETS,
            format!(
                "destination offset {dest_offset} plus the {size} bytes to write there pass byte 2^64 - 1; nothing written"
            ),
        )
    }

    /// An error about the target (its messages name it): what must be written cannot fit.
    fn beyond_target(op: &'static str, what: String) -> Error {
        Error::Io {
            op,
            offset: None,
            source: io::Error::new(io::ErrorKind::FileTooLarge, what),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte 0 is a position like any other: a write that failed there says so, while a call
    /// without a position (open, stat) names none.
    #[test]
    fn byte_zero_is_a_position_and_none_is_none() {
        let enospc = || io::Error::from_raw_os_error(28);
        assert_eq!(
            Error::io_at("write", 0, enospc()).to_string(),
            "write at byte 0"
        );
        assert_eq!(
            Error::io_at("write", 7, enospc()).to_string(),
            "write at byte 7"
        );
        assert_eq!(Error::io("open", enospc()).to_string(), "open");
        let t = Error::temp_file_at("write", 0, enospc()).to_string();
        assert!(t.contains("): write at byte 0: "), "{t}");
        let t = Error::temp_file("create", enospc()).to_string();
        assert!(t.contains("): create: "), "{t}");
    }
}
