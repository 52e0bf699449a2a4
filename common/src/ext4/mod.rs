//! The ext2/3/4 on-disk model: only what navigation needs is decoded; raw bytes are kept.
//!
//! One reader per structure: [`superblock`], [`desc`] (group descriptors), [`inode`];
//! [`itable`] walks the used part of the inode tables and [`walk`] an inode's block map
//! (extent tree or indirect blocks), both with libext2fs's rules, for the scanner
//! ([`scan`]: filesystem → block map) and the scrambler alike. Damage is a located
//! [`crate::error::CorruptKind`]; what it is about is named in [`damage`].
//!
//! Every number read from the disk goes through checked (or explicitly saturating)
//! arithmetic here: a value out of range is a located [`crate::error::CorruptKind`], never
//! a panic or a silent wrap. The lints below hold this module to it.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

pub mod bitmap;
pub mod csum;
pub mod damage;
pub mod desc;
pub mod dirhash;
pub mod fs;
pub mod inode;
pub mod itable;
pub mod scan;
pub mod superblock;
pub mod walk;

pub use fs::{Filesystem, OpenOptions};
pub use inode::Inode;
pub use superblock::Superblock;

/// Little-endian field access (see [`crate::bytes`]).
pub(crate) use crate::bytes::le;

/// `a × b` in 64 bits: two 32-bit factors always fit, so this never saturates.
pub(crate) fn mul32(a: u32, b: u32) -> u64 {
    u64::from(a).saturating_mul(u64::from(b))
}
