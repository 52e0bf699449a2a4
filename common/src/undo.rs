//! Undo files in e2fsprogs' format (`E2UNDO02`, lib/ext2fs/undo_io.c), so that the stock
//! `e2undo FILE DEVICE` puts back every block a tool overwrote.
//!
//! Layout, in blocks of the undo block size (here the filesystem block size):
//! * block 0: the 512-byte header (magic, key count, superblock and first key block
//!   positions, block sizes, crc32c of the superblock copy, state FINISHED, feature words,
//!   filesystem offset, crc32c of the header), then zeros;
//! * block 1: the superblock the device holds *after* the tool ran, with `s_magic` inverted:
//!   e2undo refuses to replay unless the device's current superblock equals it;
//! * block 2 on: a key block (magic 0xCADECADE, crc32c of the block, then up to
//!   `block_size/16 - 1` keys of {filesystem block, crc32c of the data, data length}), followed
//!   by the data its keys describe, then the next key block, and so on.
//!
//! All checksums are libext2fs's `ext2fs_crc32c_le(~0, …)` (no final inversion).
//! [`write_undo`] writes the whole file before the tool changes anything: the old contents of
//! every block to be written, and the superblock the device will have once it is done.

// The offsets and counts here come from a plan of the image: no unchecked arithmetic.
#![deny(clippy::arithmetic_side_effects)]

use std::fs::File;

use crate::blockmap::Run;
use crate::bytes::le;
use crate::ext4::csum::crc32c_raw;
use crate::io::{ReadAt, pwrite_full};
use crate::{Error, Result};

pub const E2UNDO_MAGIC: &[u8; 8] = b"E2UNDO02";
pub const KEYBLOCK_MAGIC: u32 = 0xCADE_CADE;
pub const E2UNDO_STATE_FINISHED: u32 = 0x1;
/// Size of `struct undo_header`.
pub const HEADER_SIZE: usize = 512;
/// Longest key, in blocks (libext2fs extends a key while it stays below 512 blocks).
pub const MAX_KEY_BLOCKS: u64 = 511;

/// Byte offsets of the header fields (`struct undo_header`).
mod hdr {
    pub const MAGIC: usize = 0;
    pub const NUM_KEYS: usize = 8;
    pub const SUPER_OFFSET: usize = 16;
    pub const KEY_OFFSET: usize = 24;
    pub const BLOCK_SIZE: usize = 32;
    pub const FS_BLOCK_SIZE: usize = 36;
    pub const SB_CRC: usize = 40;
    pub const STATE: usize = 44;
    pub const F_COMPAT: usize = 48;
    pub const FS_OFFSET: usize = 64;
    pub const HEADER_CRC: usize = super::HEADER_SIZE - 4;
}

/// Key blocks: magic, crc32c of the block, then 16-byte keys from byte 16.
mod key {
    pub const MAGIC: usize = 0;
    pub const CRC: usize = 4;
    pub const FIRST: usize = 16;
    pub const LEN: usize = 16;
    /// In a key: filesystem block, crc32c of the data, data length.
    pub const FSBLK: usize = 0;
    pub const DATA_CRC: usize = 8;
    pub const SIZE: usize = 12;
}

/// `s_magic` in the superblock copy.
const S_MAGIC: usize = 0x38;

/// What [`write_undo`] saved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UndoStats {
    pub keys: u64,
    pub blocks: u64,
    pub file_size: u64,
}

fn too_large() -> Error {
    Error::InvalidInput("the undo file would be larger than 2^64 bytes".into())
}

/// Save the current contents of the filesystem blocks in `runs` (sorted, disjoint, in units
/// of `block_size`) of `device` into the empty file `out`, as an undo file for the device
/// whose superblock (bytes 1024..2048) will be `final_super` once the tool is done.
pub fn write_undo<D: ReadAt + ?Sized>(
    out: &File,
    device: &D,
    block_size: u32,
    runs: &[Run],
    final_super: &[u8; 1024],
) -> Result<UndoStats> {
    if !block_size.is_power_of_two() || block_size < 1024 {
        return Err(Error::InvalidInput(format!(
            "undo block size {block_size} is invalid"
        )));
    }
    let bs = u64::from(block_size);
    let bsz = block_size as usize;
    // At least 63 keys per block.
    let keys_per_block = (bsz / key::LEN).saturating_sub(1);
    let mut stats = UndoStats::default();
    let at = |blk: u64| blk.checked_mul(bs).ok_or_else(too_large);
    let wr = |buf: &[u8], blk: u64| -> Result<()> {
        let off = at(blk)?;
        pwrite_full(out, buf, off).map_err(|e| Error::io("write undo file", off, e))
    };

    // Split the runs into keys of at most MAX_KEY_BLOCKS blocks.
    let mut keys: Vec<(u64, u64)> = Vec::new();
    for r in runs {
        let end = r.start.checked_add(r.len).ok_or_else(too_large)?;
        let mut b = r.start;
        while b < end {
            let n = MAX_KEY_BLOCKS.min(end.saturating_sub(b));
            keys.push((b, n));
            b = b.saturating_add(n);
        }
    }
    let mut next = 2u64; // block 0 header, block 1 superblock copy
    let mut data = Vec::new();
    for chunk in keys.chunks(keys_per_block) {
        let key_blk = next;
        next = next.checked_add(1).ok_or_else(too_large)?;
        let mut kb = vec![0u8; bsz];
        le::set_u32(&mut kb, key::MAGIC, KEYBLOCK_MAGIC);
        for (rec, &(fsblk, n)) in kb[key::FIRST..].chunks_exact_mut(key::LEN).zip(chunk) {
            // n <= 511 blocks of at most 64 KiB: the length fits 32 bits.
            let len = n.checked_mul(bs).ok_or_else(too_large)?;
            data.resize(len as usize, 0);
            let from = at(fsblk)?;
            device.read_exact_at(&mut data, from, &|| {
                format!(
                    "saving blocks {fsblk}..{} for the undo file",
                    fsblk.saturating_add(n)
                )
            })?;
            wr(&data, next)?;
            next = next.checked_add(n).ok_or_else(too_large)?;
            le::set_u64(rec, key::FSBLK, fsblk);
            le::set_u32(rec, key::DATA_CRC, crc32c_raw(!0, &data));
            le::set_u32(rec, key::SIZE, len as u32);
            stats.keys = stats.keys.saturating_add(1);
            stats.blocks = stats.blocks.saturating_add(n);
        }
        let crc = crc32c_raw(!0, &kb);
        le::set_u32(&mut kb, key::CRC, crc);
        wr(&kb, key_blk)?;
    }

    // Superblock copy, magic inverted.
    let mut sbb = vec![0u8; bsz];
    sbb[..1024].copy_from_slice(final_super);
    le::set_u16(&mut sbb, S_MAGIC, !le::u16(final_super, S_MAGIC));
    wr(&sbb, 1)?;

    let mut h = vec![0u8; bsz];
    h[hdr::MAGIC..hdr::MAGIC + 8].copy_from_slice(E2UNDO_MAGIC);
    le::set_u64(&mut h, hdr::NUM_KEYS, stats.keys);
    le::set_u64(&mut h, hdr::SUPER_OFFSET, 1);
    le::set_u64(&mut h, hdr::KEY_OFFSET, 2);
    le::set_u32(&mut h, hdr::BLOCK_SIZE, block_size);
    le::set_u32(&mut h, hdr::FS_BLOCK_SIZE, block_size);
    le::set_u32(&mut h, hdr::SB_CRC, crc32c_raw(!0, final_super));
    le::set_u32(&mut h, hdr::STATE, E2UNDO_STATE_FINISHED);
    // f_compat, f_incompat, f_rocompat, pad32, fs_offset: zero (no filesystem offset).
    let hcrc = crc32c_raw(!0, &h[..hdr::HEADER_CRC]);
    le::set_u32(&mut h, hdr::HEADER_CRC, hcrc);
    wr(&h, 0)?;
    stats.file_size = at(next.max(3))?;
    out.sync_all()
        .map_err(|e| Error::io("sync undo file", 0, e))?;
    Ok(stats)
}

/// `E2UNDO_FEATURE_COMPAT_FS_OFFSET`: the header's `fs_offset` holds the filesystem's byte
/// offset on the device, which e2undo then replays at unless given `-o`.
pub const FEATURE_COMPAT_FS_OFFSET: u32 = 0x1;

/// Record in the undo file `out` (written by [`write_undo`]) that the filesystem starts at
/// byte `fs_offset` of the device (a partition of `e2i-install -P`), and re-checksum its
/// header.
pub fn set_fs_offset(out: &File, fs_offset: u64) -> Result<()> {
    let mut h = [0u8; HEADER_SIZE];
    let n = crate::io::pread_full(out, &mut h, 0).map_err(|e| Error::io("read undo file", 0, e))?;
    if n < HEADER_SIZE || &h[hdr::MAGIC..hdr::MAGIC + 8] != E2UNDO_MAGIC {
        return Err(Error::InvalidInput(
            "the undo file has no header to update".into(),
        ));
    }
    let compat = le::u32(&h, hdr::F_COMPAT) | FEATURE_COMPAT_FS_OFFSET;
    le::set_u32(&mut h, hdr::F_COMPAT, compat);
    le::set_u64(&mut h, hdr::FS_OFFSET, fs_offset);
    let hcrc = crc32c_raw(!0, &h[..hdr::HEADER_CRC]);
    le::set_u32(&mut h, hdr::HEADER_CRC, hcrc);
    pwrite_full(out, &h, 0).map_err(|e| Error::io("write undo file", 0, e))?;
    out.sync_all()
        .map_err(|e| Error::io("sync undo file", 0, e))
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // tests compute expected values freely
mod tests {
    use super::*;
    use crate::io::{FileSource, MemSource, pread_full};

    #[test]
    fn layout_keys_and_checksums() {
        let bs = 1024u32;
        let dev = MemSource((0..64 * 1024).map(|i| (i / 1024) as u8).collect());
        let f = tempfile::tempfile().unwrap();
        let mut sb = [0u8; 1024];
        le::set_u16(&mut sb, S_MAGIC, 0xEF53);
        let runs = [Run { start: 3, len: 2 }, Run { start: 10, len: 1 }];
        let st = write_undo(&f, &dev, bs, &runs, &sb).unwrap();
        assert_eq!((st.keys, st.blocks), (2, 3));
        let src = FileSource::from_file(f.try_clone().unwrap(), 0).unwrap();
        let mut all = vec![0u8; src.size() as usize];
        pread_full(&f, &mut all, 0).unwrap();
        assert_eq!(&all[..8], E2UNDO_MAGIC);
        let hcrc = le::u32(&all, 508);
        assert_eq!(hcrc, crc32c_raw(!0, &all[..508]));
        // superblock copy has the magic inverted
        assert_eq!(le::u16(&all, 1024 + S_MAGIC), !0xEF53u16);
        // key block at block 2, data right after it
        let kb = &all[2048..3072];
        assert_eq!(le::u32(kb, 0), KEYBLOCK_MAGIC);
        let mut z = kb.to_vec();
        z[4..8].fill(0);
        assert_eq!(le::u32(kb, 4), crc32c_raw(!0, &z));
        assert_eq!(le::u64(kb, 16), 3);
        assert_eq!(le::u32(kb, 28), 2048);
        assert_eq!(all[3 * 1024], 3);
        assert_eq!(all[5 * 1024], 10);
    }
}
