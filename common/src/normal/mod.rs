//! The "normal" e2image image format (e2image without `-r`/`-Q`; behaviour spec §2).
//!
//! A flat file of whole filesystem blocks:
//!
//! | section | image offset |
//! |---|---|
//! | header (332 bytes, then zeros) | 0 |
//! | superblock (1024 bytes, then zeros) | `bs` (`offset_super`) |
//! | group descriptors, gathered (meta_bg) | `2*bs` |
//! | every group's whole inode table | `offset_inode` |
//! | in-memory block (cluster) bitmap, padded to `bs` | `offset_blockmap` |
//! | in-memory inode bitmap, padded to `bs` | `offset_inodemap` |
//!
//! [`writer`] produces it (byte-identical to e2image's apart from the header fields that name
//! the host, the source device, the image file and the time); [`reader`] opens one and gives
//! its superblock, descriptors, inode tables and bitmaps, and the blocks it holds at their
//! filesystem positions. The header's offsets are 32-bit: images whose bitmaps would start
//! past 4 GiB are refused ([`Layout::check_offsets_fit`]), where e2image writes a corrupt file.
//!
//! Where e2i deliberately differs from e2image (decisions.md):
//! * the header is computed first and the image written sequentially, so it can go to a pipe
//!   (e2image fails with `seek_set: Illegal seek`);
//! * images whose offsets do not fit the 32-bit header fields are refused before anything is
//!   written (about a 256 GiB filesystem at default settings);
//! * on a block device every byte is written (zeros too), so no stale bytes remain;
//! * `image_time` honours `SOURCE_DATE_EPOCH` (reproducible images); the other host fields are
//!   filled as e2image fills them ([`HOST_SPECIFIC_FIELDS`]);
//! * a capture through a backup superblock (`-b`) is refused, as e2image refuses it.
//!
//! Module name: `e2i::normal`, in `src/normal/` (the format is the one e2fsprogs' sources call
//! the "e2image" or "e2i" format).

pub mod reader;
pub mod writer;

use crate::ext4::Superblock;
use crate::{Error, Result};

pub use reader::{FsView, NormalImage};
pub use writer::{HeaderInfo, NormalStats, NormalTarget, write_normal};

/// `EXT2_ET_MAGIC_E2IMAGE`: the header's magic number.
pub const E2IMAGE_MAGIC: u32 = 0x7F2B_B710;
/// `magic_descriptor`.
pub const MAGIC_DESCRIPTOR: &[u8] = b"Ext2 Image 1.0";
/// Size of `struct ext2_image_hdr`.
pub const HEADER_SIZE: usize = 332;

/// Byte offsets of the header fields (`struct ext2_image_hdr`).
pub mod field {
    pub const MAGIC: usize = 0;
    pub const DESCRIPTOR: usize = 4;
    pub const HOSTNAME: usize = 20;
    pub const FS_DEVICE: usize = 120;
    pub const FS_DEVICE_NAME: usize = 124;
    pub const FS_UUID: usize = 188;
    pub const FS_BLOCKSIZE: usize = 204;
    pub const IMAGE_DEVICE: usize = 240;
    pub const IMAGE_INODE: usize = 244;
    pub const IMAGE_TIME: usize = 248;
    pub const IMAGE_TIME_HI: usize = 252;
    pub const OFFSET_SUPER: usize = 284;
    pub const OFFSET_INODE: usize = 288;
    pub const OFFSET_INODEMAP: usize = 292;
    pub const OFFSET_BLOCKMAP: usize = 296;
}

/// The header fields that identify the host, source device, image file and time: the only
/// bytes in which e2i's normal image may differ from e2image's (`(offset, length)` pairs:
/// fs_hostname, fs_device, fs_device_name, image_device, image_inode, image_time lo and hi).
pub const HOST_SPECIFIC_FIELDS: [(usize, usize); 5] = [
    (field::HOSTNAME, 64),
    (field::FS_DEVICE, 4 + 64),
    (field::IMAGE_DEVICE, 4),
    (field::IMAGE_INODE, 4),
    (field::IMAGE_TIME, 8),
];

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub hostname: [u8; 64],
    pub fs_device: u32,
    pub fs_device_name: [u8; 64],
    pub fs_uuid: [u8; 16],
    pub fs_blocksize: u32,
    pub image_device: u32,
    pub image_inode: u32,
    /// Seconds; the high 32 bits are stored in e2fsprogs ≥ 1.47.1's `image_time_hi`.
    pub image_time: u64,
    pub offset_super: u32,
    pub offset_inode: u32,
    pub offset_inodemap: u32,
    pub offset_blockmap: u32,
}

impl Header {
    /// The 332 header bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        let put = |h: &mut [u8; HEADER_SIZE], off: usize, v: u32| {
            h[off..off + 4].copy_from_slice(&v.to_le_bytes());
        };
        put(&mut h, field::MAGIC, E2IMAGE_MAGIC);
        h[field::DESCRIPTOR..field::DESCRIPTOR + MAGIC_DESCRIPTOR.len()]
            .copy_from_slice(MAGIC_DESCRIPTOR);
        h[field::HOSTNAME..field::HOSTNAME + 64].copy_from_slice(&self.hostname);
        put(&mut h, field::FS_DEVICE, self.fs_device);
        h[field::FS_DEVICE_NAME..field::FS_DEVICE_NAME + 64].copy_from_slice(&self.fs_device_name);
        h[field::FS_UUID..field::FS_UUID + 16].copy_from_slice(&self.fs_uuid);
        put(&mut h, field::FS_BLOCKSIZE, self.fs_blocksize);
        put(&mut h, field::IMAGE_DEVICE, self.image_device);
        put(&mut h, field::IMAGE_INODE, self.image_inode);
        put(&mut h, field::IMAGE_TIME, self.image_time as u32);
        put(&mut h, field::IMAGE_TIME_HI, (self.image_time >> 32) as u32);
        put(&mut h, field::OFFSET_SUPER, self.offset_super);
        put(&mut h, field::OFFSET_INODE, self.offset_inode);
        put(&mut h, field::OFFSET_INODEMAP, self.offset_inodemap);
        put(&mut h, field::OFFSET_BLOCKMAP, self.offset_blockmap);
        h
    }

    /// Parse and check the magic number and block size.
    pub fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_SIZE {
            return Err(Error::corrupt(
                "e2image header",
                format!("the image is only {} bytes long", b.len()),
            ));
        }
        let magic = le32(b, field::MAGIC);
        if magic != E2IMAGE_MAGIC {
            return Err(Error::corrupt(
                "e2image header",
                format!("wrong magic number {magic:#010x} (not a normal e2image image)"),
            ));
        }
        let fs_blocksize = le32(b, field::FS_BLOCKSIZE);
        if !(1024..=65536).contains(&fs_blocksize) || !fs_blocksize.is_power_of_two() {
            return Err(Error::corrupt(
                "e2image header",
                format!("block size {fs_blocksize} is invalid"),
            ));
        }
        let arr64 = |off: usize| {
            let mut a = [0u8; 64];
            a.copy_from_slice(&b[off..off + 64]);
            a
        };
        let mut fs_uuid = [0u8; 16];
        fs_uuid.copy_from_slice(&b[field::FS_UUID..field::FS_UUID + 16]);
        Ok(Header {
            hostname: arr64(field::HOSTNAME),
            fs_device: le32(b, field::FS_DEVICE),
            fs_device_name: arr64(field::FS_DEVICE_NAME),
            fs_uuid,
            fs_blocksize,
            image_device: le32(b, field::IMAGE_DEVICE),
            image_inode: le32(b, field::IMAGE_INODE),
            image_time: u64::from(le32(b, field::IMAGE_TIME))
                | u64::from(le32(b, field::IMAGE_TIME_HI)) << 32,
            offset_super: le32(b, field::OFFSET_SUPER),
            offset_inode: le32(b, field::OFFSET_INODE),
            offset_inodemap: le32(b, field::OFFSET_INODEMAP),
            offset_blockmap: le32(b, field::OFFSET_BLOCKMAP),
        })
    }
}

/// Where each section of a normal image lies (64-bit byte offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub block_size: u64,
    pub offset_super: u64,
    pub offset_desc: u64,
    pub desc_len: u64,
    pub offset_inode: u64,
    /// Bytes of one group's inode table (`inode_blocks_per_group * bs`).
    pub itable_len: u64,
    pub offset_blockmap: u64,
    /// Bitmap bytes (`groups * clusters_per_group / 8`), before padding.
    pub blockmap_bytes: u64,
    pub offset_inodemap: u64,
    pub inodemap_bytes: u64,
    /// Total image size.
    pub size: u64,
}

impl Layout {
    /// The layout e2image writes for this superblock.
    pub fn new(sb: &Superblock) -> Result<Layout> {
        let ovf = || Error::corrupt("superblock", "the image size overflows");
        let bs = u64::from(sb.block_size);
        let groups = u64::from(sb.group_count);
        // Every block number below blocks_count must have a byte offset.
        sb.blocks_count.checked_mul(bs).ok_or_else(ovf)?;
        let desc_len = u64::from(sb.desc_blocks).checked_mul(bs).ok_or_else(ovf)?;
        let offset_inode = desc_len.checked_add(2 * bs).ok_or_else(ovf)?;
        let itable_len = u64::from(sb.inode_blocks_per_group) * bs;
        let offset_blockmap = groups
            .checked_mul(itable_len)
            .and_then(|t| t.checked_add(offset_inode))
            .ok_or_else(ovf)?;
        let blockmap_bytes = groups * u64::from(sb.clusters_per_group / 8);
        let inodemap_bytes = groups * u64::from(sb.inodes_per_group / 8);
        let offset_inodemap = offset_blockmap
            .checked_add(blockmap_bytes.div_ceil(bs) * bs)
            .ok_or_else(ovf)?;
        let size = offset_inodemap
            .checked_add(inodemap_bytes.div_ceil(bs) * bs)
            .ok_or_else(ovf)?;
        Ok(Layout {
            block_size: bs,
            offset_super: bs,
            offset_desc: 2 * bs,
            desc_len,
            offset_inode,
            itable_len,
            offset_blockmap,
            blockmap_bytes,
            offset_inodemap,
            inodemap_bytes,
            size,
        })
    }

    /// The header's offset fields are 32-bit: refuse layouts they cannot describe.
    pub fn check_offsets_fit(&self) -> Result<()> {
        if self.offset_inodemap > u64::from(u32::MAX) {
            return Err(Error::Unsupported(format!(
                "a normal e2image image of this filesystem would need its bitmaps at byte {}, past \
                 the 4 GiB its 32-bit offsets can address (e2image writes a corrupt image here); \
                 use the raw, qcow2 or stream format instead (--format raw|qcow2|stream)",
                self.offset_inodemap
            )));
        }
        Ok(())
    }

    /// Image offset of group `g`'s inode table.
    pub fn inode_table_offset(&self, g: u32) -> u64 {
        self.offset_inode + u64::from(g) * self.itable_len
    }
}
