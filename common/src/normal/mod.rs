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

// Every number here comes from an image or a superblock: no unchecked arithmetic.
#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

pub mod reader;
pub mod writer;

use crate::bytes::le;
use crate::error::CorruptKind;
use crate::ext4::Superblock;
use crate::ext4::superblock::SUPERBLOCK_SIZE;
use crate::mark::{Evidence, ImageFacts};
use crate::units::BlockSize;
use crate::{Error, Result};

pub use reader::{FsView, NormalImage};
pub use writer::{HeaderInfo, NormalStats, NormalTarget, write_normal};

/// `EXT2_ET_MAGIC_E2IMAGE`: the header's magic number.
pub const E2IMAGE_MAGIC: u32 = 0x7F2B_B710;
/// `magic_descriptor`.
pub const MAGIC_DESCRIPTOR: &[u8] = b"Ext2 Image 1.0";
/// Size of `struct ext2_image_hdr`.
pub const HEADER_SIZE: usize = 332;
/// e2i's mark in `fs_reserved[0]` (the bytes `E2IS`): `fs_reserved[1]` then holds
/// [`Header::e2i_flags`]. Nothing in e2fsprogs reads `fs_reserved`, and an image without
/// flags leaves both words zero, as e2image does (see [`crate::mark`]).
pub const E2I_MARK_MAGIC: u32 = 0x5349_3245;
/// In [`Header::e2i_flags`]: the image is scrambled (`-s`).
pub const E2I_FLAG_SCRAMBLED: u32 = 1 << 0;

/// Byte offsets of the header fields (`struct ext2_image_hdr`).
pub mod field {
    pub const MAGIC: usize = 0;
    pub const DESCRIPTOR: usize = 4;
    pub const HOSTNAME: usize = 20;
    pub const FS_DEVICE: usize = 120;
    pub const FS_DEVICE_NAME: usize = 124;
    pub const FS_UUID: usize = 188;
    pub const FS_BLOCKSIZE: usize = 204;
    /// `fs_reserved[0]` and `[1]`: e2i's mark and flags.
    pub const E2I_MARK: usize = 208;
    pub const E2I_FLAGS: usize = 212;
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

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub hostname: [u8; 64],
    pub fs_device: u32,
    pub fs_device_name: [u8; 64],
    pub fs_uuid: [u8; 16],
    pub fs_blocksize: BlockSize,
    pub image_device: u32,
    pub image_inode: u32,
    /// Seconds; the high 32 bits are stored in e2fsprogs ≥ 1.47.1's `image_time_hi`.
    pub image_time: u64,
    pub offset_super: u32,
    pub offset_inode: u32,
    pub offset_inodemap: u32,
    pub offset_blockmap: u32,
    /// e2i's flags ([`E2I_FLAG_SCRAMBLED`]), stored with [`E2I_MARK_MAGIC`] in
    /// `fs_reserved` when non-zero; 0 for an image without the mark.
    pub e2i_flags: u32,
}

impl Header {
    /// The 332 header bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        le::set_u32(&mut h, field::MAGIC, E2IMAGE_MAGIC);
        h[field::DESCRIPTOR..][..MAGIC_DESCRIPTOR.len()].copy_from_slice(MAGIC_DESCRIPTOR);
        h[field::HOSTNAME..field::HOSTNAME + 64].copy_from_slice(&self.hostname);
        le::set_u32(&mut h, field::FS_DEVICE, self.fs_device);
        h[field::FS_DEVICE_NAME..field::FS_DEVICE_NAME + 64].copy_from_slice(&self.fs_device_name);
        h[field::FS_UUID..field::FS_UUID + 16].copy_from_slice(&self.fs_uuid);
        le::set_u32(&mut h, field::FS_BLOCKSIZE, self.fs_blocksize.get());
        if self.e2i_flags != 0 {
            le::set_u32(&mut h, field::E2I_MARK, E2I_MARK_MAGIC);
            le::set_u32(&mut h, field::E2I_FLAGS, self.e2i_flags);
        }
        le::set_u32(&mut h, field::IMAGE_DEVICE, self.image_device);
        le::set_u32(&mut h, field::IMAGE_INODE, self.image_inode);
        // The low and high halves of the time.
        let [lo, hi] = [self.image_time, self.image_time >> 32]
            .map(|v| u32::try_from(v & u64::from(u32::MAX)).unwrap_or(u32::MAX));
        le::set_u32(&mut h, field::IMAGE_TIME, lo);
        le::set_u32(&mut h, field::IMAGE_TIME_HI, hi);
        le::set_u32(&mut h, field::OFFSET_SUPER, self.offset_super);
        le::set_u32(&mut h, field::OFFSET_INODE, self.offset_inode);
        le::set_u32(&mut h, field::OFFSET_INODEMAP, self.offset_inodemap);
        le::set_u32(&mut h, field::OFFSET_BLOCKMAP, self.offset_blockmap);
        h
    }

    /// Parse and check the magic number and block size.
    pub fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_SIZE {
            return Err(CorruptKind::NormalHeaderShort {
                len: b.len() as u64,
            }
            .into());
        }
        let magic = le::u32(b, field::MAGIC);
        if magic != E2IMAGE_MAGIC {
            return Err(CorruptKind::NormalMagic { magic }.into());
        }
        let raw_blocksize = le::u32(b, field::FS_BLOCKSIZE);
        let fs_blocksize = BlockSize::new(raw_blocksize).ok_or(CorruptKind::NormalBlockSize {
            block_size: raw_blocksize,
        })?;
        let arr64 = |off: usize| {
            let mut a = [0u8; 64];
            a.copy_from_slice(&b[off..][..64]);
            a
        };
        let mut fs_uuid = [0u8; 16];
        fs_uuid.copy_from_slice(&b[field::FS_UUID..field::FS_UUID + 16]);
        Ok(Header {
            hostname: arr64(field::HOSTNAME),
            fs_device: le::u32(b, field::FS_DEVICE),
            fs_device_name: arr64(field::FS_DEVICE_NAME),
            fs_uuid,
            fs_blocksize,
            image_device: le::u32(b, field::IMAGE_DEVICE),
            image_inode: le::u32(b, field::IMAGE_INODE),
            image_time: u64::from(le::u32(b, field::IMAGE_TIME))
                | u64::from(le::u32(b, field::IMAGE_TIME_HI)) << 32,
            offset_super: le::u32(b, field::OFFSET_SUPER),
            offset_inode: le::u32(b, field::OFFSET_INODE),
            offset_inodemap: le::u32(b, field::OFFSET_INODEMAP),
            offset_blockmap: le::u32(b, field::OFFSET_BLOCKMAP),
            e2i_flags: if le::u32(b, field::E2I_MARK) == E2I_MARK_MAGIC {
                le::u32(b, field::E2I_FLAGS)
            } else {
                0
            },
        })
    }

    /// What the image says about being scrambled, from this header and the image's
    /// superblock: the header's mark, or the blank host fields `-s` leaves (a header naming
    /// its host and device vouches for the image).
    pub fn image_facts(&self, superblock: &[u8; SUPERBLOCK_SIZE]) -> ImageFacts {
        let mut f = ImageFacts::from_superblock(superblock);
        f.uuid = Some(self.fs_uuid);
        if self.is_marked_scrambled() {
            f.add(Evidence::NormalHeader);
        } else if self.host_fields_blank() {
            f.add(Evidence::BlankHostFields);
        } else {
            f.vouched = true;
        }
        f
    }

    /// The image carries e2i's scrambled mark.
    pub fn is_marked_scrambled(&self) -> bool {
        self.e2i_flags & E2I_FLAG_SCRAMBLED != 0
    }

    /// Neither the host nor the source device is named: what `-s` leaves (e2image and an
    /// unscrambled capture always name the device, as typed).
    pub fn host_fields_blank(&self) -> bool {
        self.hostname.iter().all(|&c| c == 0) && self.fs_device_name.iter().all(|&c| c == 0)
    }
}

/// Where each section of a normal image lies (64-bit byte offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub block_size: BlockSize,
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
    /// The layout e2image writes for this superblock. Also checks that every block of the
    /// filesystem has a 64-bit byte offset (`blocks_count * bs` fits), which the readers of
    /// the image rely on.
    pub fn new(sb: &Superblock) -> Result<Layout> {
        let ovf = |field: &'static str| Error::from(CorruptKind::NormalLayoutOverflow { field });
        let bs = sb.block_size;
        let b = bs.bytes();
        let groups = u64::from(sb.group_count);
        sb.blocks_count
            .checked_mul(b)
            .ok_or_else(|| ovf("the filesystem size"))?;
        let blocks = |n: u64, field| n.checked_mul(b).ok_or_else(|| ovf(field));
        let round_up = |n: u64, field| n.checked_next_multiple_of(b).ok_or_else(|| ovf(field));
        let add = |a: u64, c: u64, field| a.checked_add(c).ok_or_else(|| ovf(field));
        // Header block, superblock block, then the descriptors.
        let offset_desc = blocks(2, "offset_desc")?;
        let desc_len = blocks(u64::from(sb.desc_blocks), "the descriptors")?;
        let offset_inode = add(desc_len, offset_desc, "offset_inode")?;
        let itable_len = blocks(u64::from(sb.inode_blocks_per_group), "an inode table")?;
        let offset_blockmap = groups
            .checked_mul(itable_len)
            .and_then(|t| t.checked_add(offset_inode))
            .ok_or_else(|| ovf("offset_blockmap"))?;
        let blockmap_bytes = groups
            .checked_mul(u64::from(sb.clusters_per_group / 8))
            .ok_or_else(|| ovf("the block bitmap"))?;
        let inodemap_bytes = groups
            .checked_mul(u64::from(sb.inodes_per_group / 8))
            .ok_or_else(|| ovf("the inode bitmap"))?;
        let offset_inodemap = add(
            offset_blockmap,
            round_up(blockmap_bytes, "the block bitmap")?,
            "offset_inodemap",
        )?;
        let size = add(
            offset_inodemap,
            round_up(inodemap_bytes, "the inode bitmap")?,
            "the image size",
        )?;
        Ok(Layout {
            block_size: bs,
            offset_super: b,
            offset_desc,
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
        if u32::try_from(self.offset_inodemap).is_err() {
            return Err(Error::Unsupported(format!(
                "a normal e2image image of this filesystem would need its bitmaps at byte {}, past \
                 the 4 GiB its 32-bit offsets can address (e2image writes a corrupt image here); \
                 use the raw, qcow2 or stream format instead (--format raw|qcow2|stream)",
                self.offset_inodemap
            )));
        }
        Ok(())
    }

    /// Image offset of group `g`'s inode table (`None` past the 64-bit range, which
    /// [`Layout::new`] rules out for the filesystem's groups).
    pub fn inode_table_offset(&self, g: u32) -> Option<u64> {
        u64::from(g)
            .checked_mul(self.itable_len)
            .and_then(|o| o.checked_add(self.offset_inode))
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)] // tests compute expected values freely
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            hostname: [b'h'; 64],
            fs_device: 0x0801,
            fs_device_name: [b'd'; 64],
            fs_uuid: [9; 16],
            fs_blocksize: BlockSize::new(4096).unwrap(),
            image_device: 7,
            image_inode: 12,
            image_time: 0x1_2345_6789,
            offset_super: 4096,
            offset_inode: 12288,
            offset_inodemap: 40960,
            offset_blockmap: 36864,
            e2i_flags: 0,
        }
    }

    /// Property: any header with a valid block size round-trips, full-width fields included.
    #[test]
    fn header_round_trips() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..2000u64 {
            let pick = |v: u64| match i % 3 {
                0 => u64::MAX,
                1 => 0,
                _ => v,
            };
            let h = Header {
                fs_blocksize: BlockSize::new(1024 << (next() % 7)).unwrap(),
                fs_device: pick(next()) as u32,
                image_device: pick(next()) as u32,
                image_inode: pick(next()) as u32,
                image_time: pick(next()),
                offset_super: pick(next()) as u32,
                offset_inode: pick(next()) as u32,
                offset_inodemap: pick(next()) as u32,
                offset_blockmap: pick(next()) as u32,
                fs_uuid: [next() as u8; 16],
                e2i_flags: pick(next()) as u32,
                ..header()
            };
            let b = h.encode();
            assert_eq!(Header::parse(&b).unwrap(), h);
            // Without flags, fs_reserved stays zero (as e2image writes it).
            if h.e2i_flags == 0 {
                assert!(
                    b[field::E2I_MARK..field::E2I_FLAGS + 4]
                        .iter()
                        .all(|&c| c == 0)
                );
            }
        }
    }

    #[test]
    fn header_damage_is_typed() {
        let good = header().encode();
        let kind = |b: &[u8]| Header::parse(b).unwrap_err().corrupt_kind().cloned();
        assert_eq!(
            kind(&good[..331]),
            Some(CorruptKind::NormalHeaderShort { len: 331 })
        );
        let mut b = good;
        b[0] = 0;
        assert_eq!(
            kind(&b),
            Some(CorruptKind::NormalMagic { magic: 0x7F2B_B700 })
        );
        for bad in [0u32, 512, 3000, 131072, u32::MAX] {
            let mut b = good;
            le::set_u32(&mut b, field::FS_BLOCKSIZE, bad);
            assert_eq!(
                kind(&b),
                Some(CorruptKind::NormalBlockSize { block_size: bad })
            );
        }
    }
}
