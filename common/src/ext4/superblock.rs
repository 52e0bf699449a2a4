//! The superblock: 1024 bytes at byte 1024 (or at a backup location given with `-b`).
//!
//! [`Superblock::parse`] applies, in the same order, the checks libext2fs makes when it opens
//! a filesystem, so that e2i refuses exactly what e2image refuses.

use super::{le, mul32};
use crate::error::CorruptKind;
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: usize = 1024;
pub const EXT2_SUPER_MAGIC: u16 = 0xEF53;

// Feature bits (kernel names without prefixes).
pub mod feature {
    pub const COMPAT_HAS_JOURNAL: u32 = 0x0004;
    pub const COMPAT_EXT_ATTR: u32 = 0x0008;
    pub const COMPAT_RESIZE_INODE: u32 = 0x0010;
    pub const COMPAT_DIR_INDEX: u32 = 0x0020;
    pub const COMPAT_SPARSE_SUPER2: u32 = 0x0200;
    pub const COMPAT_FAST_COMMIT: u32 = 0x0400;
    pub const COMPAT_ORPHAN_FILE: u32 = 0x1000;

    pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
    pub const RO_COMPAT_LARGE_FILE: u32 = 0x0002;
    pub const RO_COMPAT_HUGE_FILE: u32 = 0x0008;
    pub const RO_COMPAT_GDT_CSUM: u32 = 0x0010;
    pub const RO_COMPAT_QUOTA: u32 = 0x0100;
    pub const RO_COMPAT_BIGALLOC: u32 = 0x0200;
    pub const RO_COMPAT_METADATA_CSUM: u32 = 0x0400;
    pub const RO_COMPAT_PROJECT: u32 = 0x2000;

    pub const INCOMPAT_COMPRESSION: u32 = 0x0001;
    pub const INCOMPAT_FILETYPE: u32 = 0x0002;
    pub const INCOMPAT_RECOVER: u32 = 0x0004;
    pub const INCOMPAT_JOURNAL_DEV: u32 = 0x0008;
    pub const INCOMPAT_META_BG: u32 = 0x0010;
    pub const INCOMPAT_EXTENTS: u32 = 0x0040;
    pub const INCOMPAT_64BIT: u32 = 0x0080;
    pub const INCOMPAT_MMP: u32 = 0x0100;
    pub const INCOMPAT_FLEX_BG: u32 = 0x0200;
    pub const INCOMPAT_EA_INODE: u32 = 0x0400;
    pub const INCOMPAT_DIRDATA: u32 = 0x1000;
    pub const INCOMPAT_CSUM_SEED: u32 = 0x2000;
    pub const INCOMPAT_LARGEDIR: u32 = 0x4000;
    pub const INCOMPAT_INLINE_DATA: u32 = 0x8000;
    pub const INCOMPAT_ENCRYPT: u32 = 0x10000;
    pub const INCOMPAT_CASEFOLD: u32 = 0x20000;

    /// The INCOMPAT features libext2fs 1.47 opens.
    pub const INCOMPAT_SUPPORTED: u32 = INCOMPAT_FILETYPE
        | INCOMPAT_JOURNAL_DEV
        | INCOMPAT_META_BG
        | INCOMPAT_RECOVER
        | INCOMPAT_EXTENTS
        | INCOMPAT_FLEX_BG
        | INCOMPAT_EA_INODE
        | INCOMPAT_MMP
        | INCOMPAT_64BIT
        | INCOMPAT_INLINE_DATA
        | INCOMPAT_ENCRYPT
        | INCOMPAT_CASEFOLD
        | INCOMPAT_CSUM_SEED
        | INCOMPAT_LARGEDIR;
}

pub const EXT2_OS_HURD: u32 = 1;
pub const EXT2_GOOD_OLD_REV: u32 = 0;
pub const EXT2_GOOD_OLD_INODE_SIZE: u32 = 128;
const EXT2_LIB_CURRENT_REV: u32 = 1;
const EXT2_MAX_BLOCK_LOG_SIZE: u32 = 16;
const EXT2_MIN_BLOCK_LOG_SIZE: u32 = 10;
const EXT2_MAX_CLUSTER_LOG_SIZE: u32 = 29;

/// A validated superblock, with the original bytes kept verbatim.
#[derive(Clone)]
pub struct Superblock {
    raw: Box<[u8; SUPERBLOCK_SIZE]>,
    pub blocks_count: u64,
    pub inodes_count: u32,
    pub first_data_block: u32,
    pub log_block_size: u32,
    pub block_size: BlockSize,
    /// log2(blocks per cluster); 0 without bigalloc.
    pub cluster_bits: u32,
    pub blocks_per_group: u32,
    pub clusters_per_group: u32,
    pub inodes_per_group: u32,
    pub inode_size: u32,
    pub rev_level: u32,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    /// Descriptor size in bytes: 32, or `s_desc_size` with 64bit.
    pub desc_size: u32,
    pub group_count: u32,
    pub desc_per_block: u32,
    pub desc_blocks: u32,
    pub inode_blocks_per_group: u32,
    pub first_meta_bg: u32,
    pub creator_os: u32,
}

impl std::fmt::Debug for Superblock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Superblock")
            .field("blocks_count", &self.blocks_count)
            .field("block_size", &self.block_size)
            .field("cluster_bits", &self.cluster_bits)
            .field("group_count", &self.group_count)
            .field("inodes_per_group", &self.inodes_per_group)
            .field("inode_size", &self.inode_size)
            .field(
                "feature_incompat",
                &format_args!("{:#x}", self.feature_incompat),
            )
            .finish_non_exhaustive()
    }
}

impl Superblock {
    /// Validate `raw` as libext2fs's `ext2fs_open2` does (checksums ignored, as e2image does).
    /// `expect_block_size` is the `-B` value: the filesystem's must match it.
    ///
    /// Beyond libext2fs, a filesystem whose size in bytes does not fit in 64 bits is
    /// refused, so that every block below `blocks_count` has a byte offset.
    pub fn parse(
        raw: &[u8; SUPERBLOCK_SIZE],
        expect_block_size: Option<BlockSize>,
    ) -> Result<Self> {
        let r = &raw[..];
        let magic = le::u16(r, 0x38);
        if magic != EXT2_SUPER_MAGIC {
            return Err(CorruptKind::SuperblockMagic { magic }.into());
        }
        let rev_level = le::u32(r, 0x4C);
        if rev_level > EXT2_LIB_CURRENT_REV {
            return Err(CorruptKind::SuperblockRevision { rev_level }.into());
        }
        let feature_compat = le::u32(r, 0x5C);
        let feature_incompat = le::u32(r, 0x60);
        let feature_ro_compat = le::u32(r, 0x64);
        let unsupported = feature_incompat & !feature::INCOMPAT_SUPPORTED;
        if unsupported != 0 {
            return Err(Error::Unsupported(format!(
                "superblock: unsupported incompatible features {unsupported:#x}"
            )));
        }
        if feature_incompat & feature::INCOMPAT_JOURNAL_DEV != 0 {
            return Err(Error::Unsupported(
                "superblock: this is an external journal device, not a filesystem".into(),
            ));
        }
        let log_block_size = le::u32(r, 0x18);
        let log_cluster_size = le::u32(r, 0x1C);
        let log_groups_per_flex = r[0x174];
        let sizes_bad = CorruptKind::SuperblockSizeLogs {
            log_block_size,
            log_cluster_size,
            log_groups_per_flex,
        };
        if log_block_size > EXT2_MAX_BLOCK_LOG_SIZE - EXT2_MIN_BLOCK_LOG_SIZE
            || log_cluster_size > EXT2_MAX_CLUSTER_LOG_SIZE - EXT2_MIN_BLOCK_LOG_SIZE
            || log_block_size > log_cluster_size
            || log_groups_per_flex > 31
        {
            return Err(sizes_bad.into());
        }
        let bigalloc = feature_ro_compat & feature::RO_COMPAT_BIGALLOC != 0;
        if !bigalloc && log_block_size != log_cluster_size {
            return Err(CorruptKind::SuperblockClusterSize {
                log_block_size,
                log_cluster_size,
            }
            .into());
        }
        // Both logs were bounded above: no shift or subtraction below can fail.
        let block_size = BlockSize::from_log(log_block_size).ok_or(sizes_bad.clone())?;
        let cluster_bits = log_cluster_size
            .checked_sub(log_block_size)
            .ok_or(sizes_bad)?;
        let inode_size = if rev_level == EXT2_GOOD_OLD_REV {
            EXT2_GOOD_OLD_INODE_SIZE
        } else {
            u32::from(le::u16(r, 0x58))
        };
        if inode_size < EXT2_GOOD_OLD_INODE_SIZE
            || inode_size > block_size.get()
            || !inode_size.is_power_of_two()
        {
            return Err(CorruptKind::SuperblockInodeSize { inode_size }.into());
        }
        let is64 = feature_incompat & feature::INCOMPAT_64BIT != 0;
        let desc_size = if is64 {
            u32::from(le::u16(r, 0xFE))
        } else {
            32
        };
        if is64 && (!(64..=1024).contains(&desc_size) || !desc_size.is_power_of_two()) {
            return Err(CorruptKind::SuperblockDescSize { desc_size }.into());
        }
        let blocks_per_group = le::u32(r, 0x20);
        let clusters_per_group = le::u32(r, 0x24);
        if Some(u64::from(blocks_per_group))
            != u64::from(clusters_per_group).checked_shl(cluster_bits)
        {
            return Err(CorruptKind::SuperblockClustersPerGroup {
                blocks_per_group,
                clusters_per_group,
            }
            .into());
        }
        let inodes_per_group = le::u32(r, 0x28);
        let inode_blocks_per_group_u64 =
            block_size.blocks_covering(mul32(inodes_per_group, inode_size));
        // libext2fs keeps this in an unsigned int; larger values fail the range check below.
        let inode_blocks_per_group = u32::try_from(inode_blocks_per_group_u64).unwrap_or(u32::MAX);
        if let Some(expected) = expect_block_size
            && expected != block_size
        {
            return Err(CorruptKind::SuperblockBlockSize {
                block_size: block_size.get(),
                expected: expected.get(),
            }
            .into());
        }
        if inodes_per_group == 0 {
            return Err(CorruptKind::SuperblockNoInodes.into());
        }
        let blocks_count = u64::from(le::u32(r, 0x04))
            | if is64 {
                u64::from(le::u32(r, 0x150)) << 32
            } else {
                0
            };
        let first_data_block = le::u32(r, 0x14);
        // 0 for a zero descriptor size: refused with the geometry below.
        let desc_per_block = block_size.get().checked_div(desc_size & !7).unwrap_or(0);
        let inodes_per_block = block_size.get().checked_div(inode_size).unwrap_or(0);
        let geometry = CorruptKind::SuperblockGeometry {
            blocks_per_group,
            inode_blocks_per_group: inode_blocks_per_group_u64,
            first_data_block,
            blocks_count,
        };
        let max_blocks_per_group = ((1u64 << 16) - 8)
            .checked_shl(cluster_bits)
            .ok_or(geometry.clone())?;
        let max_inodes_per_group = (1u64 << 16).saturating_sub(u64::from(inodes_per_block));
        if blocks_per_group < 8
            || u64::from(blocks_per_group) > max_blocks_per_group
            || inode_blocks_per_group_u64 > max_inodes_per_group
            || desc_per_block == 0
            || u64::from(first_data_block) >= blocks_count
        {
            return Err(geometry.into());
        }
        if block_size.bytes_of(blocks_count).is_none() {
            return Err(CorruptKind::SuperblockTooLarge {
                blocks_count,
                block_size: block_size.get(),
            }
            .into());
        }
        let groups = blocks_count
            .checked_sub(u64::from(first_data_block))
            .ok_or(geometry)?
            .div_ceil(u64::from(blocks_per_group));
        let group_count =
            u32::try_from(groups).map_err(|_| CorruptKind::SuperblockGroupCount { groups })?;
        let inodes_count = le::u32(r, 0x00);
        if groups.checked_mul(u64::from(inodes_per_group)) != Some(u64::from(inodes_count)) {
            return Err(CorruptKind::SuperblockInodeCount {
                inodes_count,
                groups,
                inodes_per_group,
            }
            .into());
        }
        let desc_blocks = group_count.div_ceil(desc_per_block);
        let first_meta_bg = le::u32(r, 0x104);
        if feature_incompat & feature::INCOMPAT_META_BG != 0 && first_meta_bg > desc_blocks {
            return Err(CorruptKind::SuperblockFirstMetaBg {
                first_meta_bg,
                desc_blocks,
            }
            .into());
        }
        Ok(Superblock {
            raw: Box::new(*raw),
            blocks_count,
            inodes_count,
            first_data_block,
            log_block_size,
            block_size,
            cluster_bits,
            blocks_per_group,
            clusters_per_group,
            inodes_per_group,
            inode_size,
            rev_level,
            feature_compat,
            feature_incompat,
            feature_ro_compat,
            desc_size,
            group_count,
            desc_per_block,
            desc_blocks,
            inode_blocks_per_group,
            first_meta_bg,
            creator_os: le::u32(r, 0x48),
        })
    }

    /// The original 1024 bytes.
    pub fn raw(&self) -> &[u8; SUPERBLOCK_SIZE] {
        &self.raw
    }

    pub fn uuid(&self) -> [u8; 16] {
        let mut u = [0u8; 16];
        u.copy_from_slice(&self.raw[0x68..0x78]);
        u
    }

    pub fn has_compat(&self, f: u32) -> bool {
        self.feature_compat & f != 0
    }
    pub fn has_incompat(&self, f: u32) -> bool {
        self.feature_incompat & f != 0
    }
    pub fn has_ro_compat(&self, f: u32) -> bool {
        self.feature_ro_compat & f != 0
    }

    pub fn is_64bit(&self) -> bool {
        self.has_incompat(feature::INCOMPAT_64BIT)
    }
    pub fn has_meta_bg(&self) -> bool {
        self.has_incompat(feature::INCOMPAT_META_BG)
    }
    pub fn is_bigalloc(&self) -> bool {
        self.has_ro_compat(feature::RO_COMPAT_BIGALLOC)
    }
    /// Group descriptors carry checksums (gdt_csum or metadata_csum): UNINIT flags and
    /// itable_unused are trusted.
    pub fn has_group_desc_csum(&self) -> bool {
        self.has_ro_compat(feature::RO_COMPAT_METADATA_CSUM | feature::RO_COMPAT_GDT_CSUM)
    }
    pub fn has_metadata_csum(&self) -> bool {
        self.has_ro_compat(feature::RO_COMPAT_METADATA_CSUM)
    }

    pub fn inodes_per_block(&self) -> u32 {
        // The inode size was checked to be at least 128.
        self.block_size
            .get()
            .checked_div(self.inode_size)
            .unwrap_or(0)
    }
    pub fn cluster_ratio(&self) -> u64 {
        // cluster_bits ≤ 19 (validated): the shift cannot fail.
        1u64.checked_shl(self.cluster_bits).unwrap_or(1)
    }

    pub fn journal_inum(&self) -> u32 {
        le::u32(&self.raw[..], 0xE0)
    }
    pub fn prj_quota_inum(&self) -> u32 {
        le::u32(&self.raw[..], 0x26C)
    }
    pub fn orphan_file_inum(&self) -> u32 {
        le::u32(&self.raw[..], 0x280)
    }
    pub fn mmp_block(&self) -> FsBlock {
        FsBlock(le::u64(&self.raw[..], 0x168))
    }
    pub fn backup_bgs(&self) -> [u32; 2] {
        [le::u32(&self.raw[..], 0x24C), le::u32(&self.raw[..], 0x250)]
    }
    pub fn first_ino(&self) -> u32 {
        if self.rev_level == EXT2_GOOD_OLD_REV {
            11
        } else {
            le::u32(&self.raw[..], 0x54)
        }
    }
    pub fn hash_seed(&self) -> [u32; 4] {
        let r = &self.raw[..];
        [
            le::u32(r, 0xEC),
            le::u32(r, 0xF0),
            le::u32(r, 0xF4),
            le::u32(r, 0xF8),
        ]
    }
    pub fn def_hash_version(&self) -> u8 {
        self.raw[0xFC]
    }
    /// `s_flags` (signed/unsigned directory hash, test filesystem).
    pub fn flags(&self) -> u32 {
        le::u32(&self.raw[..], 0x160)
    }
    pub fn encoding(&self) -> u16 {
        le::u16(&self.raw[..], 0x27C)
    }
    pub fn reserved_gdt_blocks(&self) -> u16 {
        le::u16(&self.raw[..], 0xCE)
    }

    /// Does group `g` hold a superblock backup (and old-style descriptors)?
    pub fn group_has_super(&self, g: u32) -> bool {
        if g == 0 {
            return true;
        }
        if self.has_compat(feature::COMPAT_SPARSE_SUPER2) {
            let b = self.backup_bgs();
            return g == b[0] || g == b[1];
        }
        if g <= 1 || !self.has_ro_compat(feature::RO_COMPAT_SPARSE_SUPER) {
            return true;
        }
        if g & 1 == 0 {
            return false;
        }
        is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)
    }

    /// `s_first_data_block`: the block of the superblock (1 with 1 KiB blocks, else 0),
    /// where group 0 starts.
    pub fn first_block(&self) -> FsBlock {
        FsBlock(u64::from(self.first_data_block))
    }

    /// The size of the filesystem in bytes (checked to fit when the superblock was parsed).
    pub fn fs_bytes(&self) -> u64 {
        self.block_size
            .bytes_of(self.blocks_count)
            .unwrap_or(u64::MAX)
    }

    /// First block of group `g`; saturates at `u64::MAX` (never a valid block) for groups
    /// far past the last.
    pub fn group_first_block(&self, g: u32) -> FsBlock {
        self.first_block()
            .saturating_add(mul32(g, self.blocks_per_group))
    }

    /// Block holding descriptor block `i`, for descriptors belonging to the superblock at
    /// `group_block` (libext2fs `ext2fs_descriptor_block_loc2`). Saturates at `u64::MAX`
    /// (never a valid block) where the computation would overflow.
    pub fn descriptor_block_loc(&self, group_block: FsBlock, i: u32) -> FsBlock {
        let zero_adjust =
            u64::from(i == 0 && self.block_size.get() == 1024 && self.cluster_bits > 0);
        if !self.has_meta_bg() || i < self.first_meta_bg {
            return group_block
                .saturating_add(u64::from(i))
                .saturating_add(1)
                .saturating_add(zero_adjust);
        }
        // libext2fs computes the group in a C int.
        let bg = self.desc_per_block.wrapping_mul(i);
        let mut has_super = u64::from(self.group_has_super(bg));
        let mut ret = self.group_first_block(bg);
        let bpg = u64::from(self.blocks_per_group);
        if group_block != self.first_block()
            && ret.saturating_add(has_super).saturating_add(bpg).0 < self.blocks_count
        {
            ret = ret.saturating_add(bpg);
            has_super = u64::from(self.group_has_super(bg.wrapping_add(1)));
        }
        ret.saturating_add(has_super).saturating_add(zero_adjust)
    }
}

fn is_power_of(mut n: u32, base: u32) -> bool {
    while n.is_multiple_of(base) && n > 1 {
        n = n.checked_div(base).unwrap_or(0);
    }
    n == 1
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    /// A valid superblock: 1 KiB blocks, 8192 blocks in one group, 2048 inodes of 256 bytes.
    fn good() -> [u8; SUPERBLOCK_SIZE] {
        let mut r = [0u8; SUPERBLOCK_SIZE];
        le::set_u32(&mut r, 0x00, 2048); // inodes
        le::set_u32(&mut r, 0x04, 8192); // blocks
        le::set_u32(&mut r, 0x14, 1); // first data block
        le::set_u32(&mut r, 0x20, 8192); // blocks per group
        le::set_u32(&mut r, 0x24, 8192); // clusters per group
        le::set_u32(&mut r, 0x28, 2048); // inodes per group
        le::set_u16(&mut r, 0x38, EXT2_SUPER_MAGIC);
        le::set_u32(&mut r, 0x4C, 1); // dynamic revision
        le::set_u16(&mut r, 0x58, 256); // inode size
        r
    }

    fn kind(r: &[u8; SUPERBLOCK_SIZE], bs: Option<u32>) -> CorruptKind {
        match Superblock::parse(r, bs.and_then(BlockSize::new)) {
            Err(Error::Corrupt(k)) => k,
            other => panic!("not a corruption: {other:?}"),
        }
    }

    fn with(f: impl FnOnce(&mut [u8; SUPERBLOCK_SIZE])) -> [u8; SUPERBLOCK_SIZE] {
        let mut r = good();
        f(&mut r);
        r
    }

    #[test]
    fn a_good_superblock_parses() {
        let sb = Superblock::parse(&good(), BlockSize::new(1024)).unwrap();
        assert_eq!(
            (sb.group_count, sb.desc_blocks, sb.inode_blocks_per_group),
            (1, 1, 512)
        );
    }

    #[test]
    fn each_damage_has_its_kind() {
        let r = with(|r| le::set_u16(r, 0x38, 0));
        assert_eq!(kind(&r, None), CorruptKind::SuperblockMagic { magic: 0 });
        let r = with(|r| le::set_u32(r, 0x4C, u32::MAX));
        assert_eq!(
            kind(&r, None),
            CorruptKind::SuperblockRevision {
                rev_level: u32::MAX
            }
        );
        let r = with(|r| le::set_u32(r, 0x18, u32::MAX));
        assert_eq!(
            kind(&r, None),
            CorruptKind::SuperblockSizeLogs {
                log_block_size: u32::MAX,
                log_cluster_size: 0,
                log_groups_per_flex: 0
            }
        );
        let r = with(|r| le::set_u32(r, 0x1C, 2));
        assert_eq!(
            kind(&r, None),
            CorruptKind::SuperblockClusterSize {
                log_block_size: 0,
                log_cluster_size: 2
            }
        );
        let r = with(|r| le::set_u16(r, 0x58, u16::MAX));
        assert_eq!(
            kind(&r, None),
            CorruptKind::SuperblockInodeSize { inode_size: 65535 }
        );
        let r = with(|r| {
            le::set_u32(r, 0x60, feature::INCOMPAT_64BIT);
            le::set_u16(r, 0xFE, u16::MAX);
        });
        assert_eq!(
            kind(&r, None),
            CorruptKind::SuperblockDescSize { desc_size: 65535 }
        );
        let r = with(|r| le::set_u32(r, 0x24, u32::MAX));
        assert_eq!(
            kind(&r, None),
            CorruptKind::SuperblockClustersPerGroup {
                blocks_per_group: 8192,
                clusters_per_group: u32::MAX
            }
        );
        assert_eq!(
            kind(&good(), Some(4096)),
            CorruptKind::SuperblockBlockSize {
                block_size: 1024,
                expected: 4096
            }
        );
        let r = with(|r| le::set_u32(r, 0x28, 0));
        assert_eq!(kind(&r, None), CorruptKind::SuperblockNoInodes);
        let r = with(|r| le::set_u32(r, 0x14, u32::MAX));
        assert_eq!(
            kind(&r, None),
            CorruptKind::SuperblockGeometry {
                blocks_per_group: 8192,
                inode_blocks_per_group: 512,
                first_data_block: u32::MAX,
                blocks_count: 8192
            }
        );
        let r = with(|r| le::set_u32(r, 0x00, u32::MAX));
        assert_eq!(
            kind(&r, None),
            CorruptKind::SuperblockInodeCount {
                inodes_count: u32::MAX,
                groups: 1,
                inodes_per_group: 2048
            }
        );
        let r = with(|r| {
            le::set_u32(r, 0x60, feature::INCOMPAT_META_BG);
            le::set_u32(r, 0x104, u32::MAX);
        });
        assert_eq!(
            kind(&r, None),
            CorruptKind::SuperblockFirstMetaBg {
                first_meta_bg: u32::MAX,
                desc_blocks: 1
            }
        );
    }

    #[test]
    fn both_halves_of_the_block_count() {
        // 64bit, blocks_count lo and hi all ones: its byte size overflows 64 bits.
        let r = with(|r| {
            le::set_u32(r, 0x60, feature::INCOMPAT_64BIT);
            le::set_u16(r, 0xFE, 64);
            le::set_u32(r, 0x04, u32::MAX);
            le::set_u32(r, 0x150, u32::MAX);
        });
        assert_eq!(
            kind(&r, None),
            CorruptKind::SuperblockTooLarge {
                blocks_count: u64::MAX,
                block_size: 1024
            }
        );
        // The high half alone, with groups of the largest size: too many groups.
        let r = with(|r| {
            le::set_u32(r, 0x60, feature::INCOMPAT_64BIT);
            le::set_u16(r, 0xFE, 64);
            le::set_u32(r, 0x150, 0x0000_FFFF);
        });
        assert_eq!(
            kind(&r, None),
            CorruptKind::SuperblockGroupCount {
                groups: ((0xFFFFu64 << 32) + 8192 - 1).div_ceil(8192)
            }
        );
    }

    #[test]
    fn locations_saturate_instead_of_wrapping() {
        let sb = Superblock::parse(&good(), None).unwrap();
        assert_eq!(
            sb.group_first_block(u32::MAX),
            FsBlock(1 + u64::from(u32::MAX) * 8192)
        );
        assert_eq!(
            sb.descriptor_block_loc(FsBlock(u64::MAX), 5),
            FsBlock(u64::MAX)
        );
    }

    #[test]
    fn sparse_super_groups() {
        let yes: Vec<u32> = (0..100)
            .filter(|&g| is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7))
            .collect();
        assert_eq!(yes, vec![1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }
}
