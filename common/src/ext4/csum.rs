//! Checksums as libext2fs computes them: crc16 group descriptor checksums (gdt_csum /
//! uninit_bg), crc32c metadata checksums (metadata_csum), the superblock checksum.
//!
//! libext2fs's `ext2fs_crc32c_le(seed, buf, len)` is the raw reflected CRC-32C update: no
//! inversion on entry or exit. [`crc32c_raw`] is that function.

use super::desc::DescTable;
use super::le;
use super::superblock::{Superblock, feature};

/// Offset of `bg_checksum` in a group descriptor.
const BG_CHECKSUM: usize = 0x1E;
/// Offset of `s_checksum` in the superblock.
pub const SB_CHECKSUM: usize = 0x3FC;
const SB_CHECKSUM_SEED: usize = 0x270;

/// libext2fs `ext2fs_crc32c_le`: CRC-32C update of `crc` over `data`, without the
/// customary inversions.
pub fn crc32c_raw(crc: u32, data: &[u8]) -> u32 {
    // crc32c_append(c, d) computes !update(!c, d); invert around it to get the bare update.
    !crc32c::crc32c_append(!crc, data)
}

static CRC16_TABLE: [u16; 256] = crc16_table();

// A constant table built at compile time over 0..256: no input reaches this arithmetic.
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]
const fn crc16_table() -> [u16; 256] {
    // CRC-16 with polynomial 0x8005, reflected (0xA001): the table of libext2fs's crc16.c.
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u16;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xA001
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// The low and high 16 bits of a checksum (descriptors and inodes keep crc32c halves).
pub fn halves(c: u32) -> [u16; 2] {
    let b = le::bytes_u32(c);
    [le::u16(&b, 0), le::u16(&b, 2)]
}

fn low16(c: u32) -> u16 {
    halves(c)[0]
}

/// libext2fs `ext2fs_crc16`.
pub fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc = (crc >> 8) ^ CRC16_TABLE[usize::from((crc ^ u16::from(b)) & 0xFF)];
    }
    crc
}

/// The seed of metadata checksums (`fs->csum_seed`): `s_checksum_seed` with the csum_seed
/// feature, else crc32c of the UUID.
pub fn csum_seed(sb: &Superblock) -> u32 {
    let r = sb.raw();
    if sb.has_incompat(feature::INCOMPAT_CSUM_SEED) {
        return le::u32(&r[..], SB_CHECKSUM_SEED);
    }
    crc32c_raw(!0, &sb.uuid())
}

/// Checksums of one filesystem: the feature bits and seed they need.
#[derive(Debug, Clone)]
pub struct Checksummer {
    metadata_csum: bool,
    gdt_csum: bool,
    seed: u32,
    uuid: [u8; 16],
    desc_size: usize,
}

impl Checksummer {
    pub fn new(sb: &Superblock) -> Self {
        Checksummer {
            metadata_csum: sb.has_metadata_csum(),
            gdt_csum: sb.has_group_desc_csum(),
            seed: csum_seed(sb),
            uuid: sb.uuid(),
            desc_size: sb.desc_size as usize,
        }
    }

    /// Do group descriptors carry checksums (`ext2fs_has_group_desc_csum`)?
    pub fn has_group_desc_csum(&self) -> bool {
        self.gdt_csum
    }

    /// `ext2fs_group_desc_csum` of descriptor record `rec` (at least `desc_size` bytes) of
    /// group `g`.
    pub fn group_desc_csum(&self, g: u32, rec: &[u8]) -> u16 {
        let size = self.desc_size.min(rec.len());
        let gb = le::bytes_u32(g);
        let head = rec.get(..BG_CHECKSUM).unwrap_or_default();
        // The bytes after bg_checksum (none in a 32-byte record).
        let tail = rec.get(BG_CHECKSUM + 2..size).unwrap_or_default();
        if self.metadata_csum {
            let mut c = crc32c_raw(self.seed, &gb);
            c = crc32c_raw(c, head);
            c = crc32c_raw(c, &[0, 0]);
            c = crc32c_raw(c, tail);
            return low16(c);
        }
        let mut c = crc16(!0, &self.uuid);
        c = crc16(c, &gb);
        c = crc16(c, head);
        crc16(c, tail)
    }

    /// `ext2fs_group_desc_csum_verify`: true when the filesystem has no descriptor checksums
    /// or group `g`'s checksum is right.
    pub fn group_desc_csum_verify(&self, desc: &DescTable, g: u32) -> bool {
        if !self.gdt_csum {
            return true;
        }
        let rec = desc.record(g);
        le::get_u16(rec, BG_CHECKSUM) == Some(self.group_desc_csum(g, rec))
    }

    /// `ext2fs_group_desc_csum_set`.
    pub fn group_desc_csum_set(&self, desc: &mut DescTable, g: u32) {
        if !self.gdt_csum {
            return;
        }
        let c = self.group_desc_csum(g, desc.record(g));
        if let Some(rec) = desc.record_mut(g) {
            le::set_u16(rec, BG_CHECKSUM, c);
        }
    }

    /// `ext2fs_block_bitmap_csum_set`: store the crc32c of the first `nbytes` bytes of the
    /// group's block bitmap in its descriptor (metadata_csum only).
    pub fn block_bitmap_csum_set(&self, desc: &mut DescTable, g: u32, bitmap: &[u8]) {
        if !self.metadata_csum {
            return;
        }
        let c = crc32c_raw(self.seed, bitmap);
        let size = self.desc_size;
        let Some(rec) = desc.record_mut(g) else {
            return;
        };
        le::set_u16(rec, 0x18, low16(c));
        if size >= 0x3A && rec.len() >= 0x3A {
            le::set_u16(rec, 0x38, halves(c)[1]);
        }
    }

    /// `ext2fs_inode_bitmap_csum_set`.
    pub fn inode_bitmap_csum_set(&self, desc: &mut DescTable, g: u32, bitmap: &[u8]) {
        if !self.metadata_csum {
            return;
        }
        let c = crc32c_raw(self.seed, bitmap);
        let size = self.desc_size;
        let Some(rec) = desc.record_mut(g) else {
            return;
        };
        le::set_u16(rec, 0x1A, low16(c));
        if size >= 0x3C && rec.len() >= 0x3C {
            le::set_u16(rec, 0x3A, halves(c)[1]);
        }
    }
}

/// Is the metadata_csum feature on in these raw superblock bytes?
fn raw_has_metadata_csum(raw: &[u8; 1024]) -> bool {
    le::u32(&raw[..], 0x64) & feature::RO_COMPAT_METADATA_CSUM != 0
}

/// The superblock checksum (`ext2fs_superblock_csum`).
pub fn superblock_csum(raw: &[u8; 1024]) -> u32 {
    crc32c_raw(!0, &raw[..SB_CHECKSUM])
}

/// `ext2fs_superblock_csum_set`: recompute `s_checksum` when metadata_csum is on.
pub fn superblock_csum_set(raw: &mut [u8; 1024]) {
    if raw_has_metadata_csum(raw) {
        let c = superblock_csum(raw);
        le::set_u32(&mut raw[..], SB_CHECKSUM, c);
    }
}

/// `ext2fs_superblock_csum_verify`: true without metadata_csum or when `s_checksum` is right.
pub fn superblock_csum_verify(raw: &[u8; 1024]) -> bool {
    if !raw_has_metadata_csum(raw) {
        return true;
    }
    le::u32(&raw[..], SB_CHECKSUM) == superblock_csum(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_raw_matches_the_test_suite_crcsum() {
        // behaviour §10: crcsum("123456789") with seed ~0 and no final xor is 486108540.
        assert_eq!(crc32c_raw(!0, b"123456789"), 486108540);
        assert_eq!(crc32c_raw(!0, b""), u32::MAX);
        // Chaining equals one pass.
        assert_eq!(
            crc32c_raw(crc32c_raw(7, b"1234"), b"56789"),
            crc32c_raw(7, b"123456789")
        );
    }

    #[test]
    fn crc16_check_value() {
        // CRC-16/ARC ("123456789", init 0, reflected 0x8005) is 0xBB3D; the table matches.
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
        assert_eq!(CRC16_TABLE[1], 0xC0C1);
        assert_eq!(CRC16_TABLE[255], 0x4040);
    }
}
