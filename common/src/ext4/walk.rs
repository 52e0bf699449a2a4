//! The one block-map walker: an inode's extent tree or indirect blocks, visited the way
//! libext2fs's block iterator (`ext2fs_block_iterate3`, read-only) visits them.
//!
//! The scanner marks what it is told ([`Visit::Meta`] and, when it wants data, every
//! [`Visit::Data`]); the scrambler takes the logical-to-physical mappings of directories,
//! symlinks and the journal from the same walk. libext2fs's quirks on damaged trees are
//! kept (see [`extent`] and [`indirect`], the two kinds of block map, which use the types
//! here), so both see exactly the blocks e2image selects.

use super::damage::{ExtentHeaderProblem, Role};
use super::fs::Filesystem;
use super::inode::Inode;
use super::superblock::EXT2_OS_HURD;
use crate::io::ReadAt;
use crate::units::FsBlock;
use crate::{Error, Result};

pub mod extent;
pub mod indirect;

/// What a walk reports, in libext2fs's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// A mapping block (an extent index or leaf node below the root, an indirect block),
    /// or the Hurd translator block; reported before it is read, as libext2fs does.
    Meta(FsBlock),
    /// `len` blocks mapped from logical block `lblk` at physical block `pblk`; `uninit`
    /// for an unwritten extent (its blocks read as zeros through the filesystem).
    Data {
        lblk: u64,
        pblk: FsBlock,
        len: u64,
        uninit: bool,
    },
}

/// How a walk ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walked {
    /// Every block of the map was visited.
    Complete,
    /// The extent root's header is invalid: libext2fs's iterator then visits nothing and
    /// reports success (the open fails before any error is recorded), so e2image takes
    /// none of the inode's blocks and goes on. Callers say so.
    RootIgnored(ExtentHeaderProblem),
}

/// Reads one whole block holding what `Role` says into the buffer.
pub type ReadBlock<'a> = dyn FnMut(FsBlock, &mut [u8], Role) -> Result<()> + 'a;

/// Walk inode `ino`'s block map: extents or indirect blocks, with the Hurd translator
/// block first on Hurd filesystems. With `want_data`, data mappings are reported too;
/// without, only mapping blocks (libext2fs's iterator visits the same nodes either way).
pub fn walk_inode<S: ReadAt>(
    fs: &Filesystem<S>,
    ino: u32,
    inode: &Inode,
    want_data: bool,
    visit: &mut dyn FnMut(Visit),
) -> Result<Walked> {
    let sb = &fs.sb;
    if sb.creator_os == EXT2_OS_HURD && inode.osd1 != 0 {
        visit(Visit::Meta(FsBlock(u64::from(inode.osd1))));
    }
    let mut read = |blk: FsBlock, buf: &mut [u8], role: Role| fs.read_block(blk, buf, role);
    if inode.has_extents() {
        extent::walk(
            ino,
            &inode.block_bytes(),
            sb.block_size,
            want_data,
            &mut read,
            visit,
        )
    } else {
        indirect::walk(
            ino,
            &inode.block,
            indirect::Geometry {
                block_size: sb.block_size,
                first_data_block: sb.first_block(),
                blocks_count: sb.blocks_count,
            },
            want_data,
            &mut read,
            visit,
            &mut |blk, n| {
                let bs = sb.block_size;
                if let (Some(off), Some(len)) = (bs.offset_of(blk), bs.bytes_of(n)) {
                    fs.src.will_need(off, len);
                }
            },
        )
        .map(|()| Walked::Complete)
    }
}

/// A copy of `e` (errors are not `Clone`: an I/O error keeps its kind and message).
pub(crate) fn copy_error(e: &Error) -> Error {
    match e {
        Error::Io { op, offset, source } => Error::Io {
            op,
            offset: *offset,
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::JournalIo { path, op, source } => Error::JournalIo {
            path: path.clone(),
            op,
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Corrupt(k) => Error::Corrupt(k.clone()),
        Error::Unsupported(s) => Error::Unsupported(s.clone()),
        Error::InvalidInput(s) => Error::InvalidInput(s.clone()),
        Error::NoRoom { have, need } => Error::NoRoom {
            have: *have,
            need: *need,
        },
        Error::SourceShrank { end, was } => Error::SourceShrank {
            end: *end,
            was: *was,
        },
        Error::InstallUnfinished(e) => Error::InstallUnfinished(Box::new(copy_error(e))),
        Error::Backing { path, source } => Error::Backing {
            path: path.clone(),
            source: Box::new(copy_error(source)),
        },
        Error::BackingChanged { path } => Error::BackingChanged { path: path.clone() },
        Error::DataFile { path, source } => Error::DataFile {
            path: path.clone(),
            source: Box::new(copy_error(source)),
        },
        Error::TempFile {
            dir,
            op,
            offset,
            error,
        } => Error::TempFile {
            dir: dir.clone(),
            op,
            offset: *offset,
            error: std::io::Error::new(error.kind(), error.to_string()),
        },
        Error::BackingLoop { path } => Error::BackingLoop { path: path.clone() },
        Error::BackingTooDeep { path, max } => Error::BackingTooDeep {
            path: path.clone(),
            max: *max,
        },
    }
}
