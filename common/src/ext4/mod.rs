//! The ext2/3/4 on-disk model: only what navigation needs is decoded; raw bytes are kept.

pub mod bitmap;
pub mod csum;
pub mod desc;
pub mod dirhash;
pub mod extent;
pub mod fs;
pub mod indirect;
pub mod inode;
pub mod scan;
pub mod superblock;

pub use fs::{Filesystem, OpenOptions};
pub use inode::Inode;
pub use superblock::Superblock;

/// Little-endian field access (see [`crate::bytes`]).
pub(crate) use crate::bytes::le;
