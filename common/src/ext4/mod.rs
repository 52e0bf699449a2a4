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

/// Little-endian field readers over byte slices. Callers pass offsets inside fixed-size
/// records whose length was checked once, so these index directly.
pub(crate) mod le {
    pub fn u16(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }
    pub fn u32(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }
    pub fn u64(b: &[u8], off: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[off..off + 8]);
        u64::from_le_bytes(a)
    }
}
