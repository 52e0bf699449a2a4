//! `e2i`: image the metadata of ext2/3/4 filesystems.
//!
//! Data flows one way: **source → block map → writer**.
//! 1. A [`io::ReadAt`] source (file, block device, qcow2 image, memory) holds the filesystem.
//! 2. [`ext4::scan`] reads its superblock, descriptors and inodes and builds a [`blockmap::BlockMap`]:
//!    the sorted extents of blocks e2image would copy.
//! 3. A writer (sparse raw, qcow2, normal e2image, stream) consumes the map and the source.
//!    The normal e2image format ([`normal`]) needs no map: it copies the superblock,
//!    descriptors, inode tables and bitmaps by their locations.
//!    With `-s`, [`scramble::ScrambledSource`] wraps the source between 2 and 3: every writer
//!    reads the scrambled blocks through it (see [`ops::capture::scramble_fs`]).
//!
//! Glossary of units ([`units`]): a *block* is [`units::BlockSize`] bytes of the filesystem
//! (1 KiB–64 KiB), numbered by [`units::FsBlock`]; a [`blockmap::BlockRun`] is consecutive
//! blocks; a *cluster* is `2^cluster_bits` blocks with bigalloc, else one block (qcow2
//! clusters have their own types in [`qcow2::types`]); *byte offsets* are `u64`, relative
//! to the start of the filesystem unless a name says `host` or `dest`.

#![deny(unsafe_code)]

pub mod blockmap;
pub mod bytes;
pub mod error;
pub mod ext4;
pub mod footprint;
pub mod io;
pub mod mark;
pub mod mount;
pub mod normal;
pub mod ops;
pub mod output;
pub mod partition;
pub mod pieces;
pub mod progress;
pub mod qcow2;
pub mod readplan;
pub mod scramble;
pub mod sparse;
pub mod stream;
mod sysfs;
pub mod undo;
pub mod units;

pub use error::{Error, Result};

#[cfg(test)]
mod structure;
