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

use crate::blockmap::BlockRun;
use crate::bytes::le;
use crate::ext4::csum::crc32c_raw;
use crate::io::{ReadAt, pwrite_full};
use crate::units::BlockSize;
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

/// Save the current contents of the filesystem blocks in `runs` (sorted, disjoint) of
/// `device` into the empty file `out`, as an undo file for the device whose superblock
/// (bytes 1024..2048) will be `final_super` once the tool is done.
///
/// Two kinds of block numbers meet here: the filesystem's ([`crate::units::FsBlock`], what is saved) and
/// the undo file's own (`u64`, where it is saved); both count blocks of `block_size`.
pub fn write_undo<D: ReadAt + ?Sized>(
    out: &File,
    device: &D,
    block_size: BlockSize,
    runs: &[BlockRun],
    final_super: &[u8; 1024],
) -> Result<UndoStats> {
    let bsz = block_size.as_usize();
    // At least 63 keys per block.
    let keys_per_block = bsz.checked_div(key::LEN).unwrap_or(0).saturating_sub(1);
    let mut stats = UndoStats::default();
    // Byte offset of block `blk` of the undo file.
    let at = |blk: u64| block_size.bytes_of(blk).ok_or_else(too_large);
    let wr = |buf: &[u8], blk: u64| -> Result<()> {
        let off = at(blk)?;
        pwrite_full(out, buf, off).map_err(|e| Error::io("write undo file", off, e))
    };

    // Split the runs into keys of at most MAX_KEY_BLOCKS blocks.
    let mut keys: Vec<BlockRun> = Vec::new();
    for r in runs {
        let end = r.checked_end().ok_or_else(too_large)?;
        let mut b = r.start;
        while b < end {
            let n = MAX_KEY_BLOCKS.min(end.saturating_since(b));
            keys.push(BlockRun::new(b, n));
            b = b.saturating_add(n);
        }
    }
    // Undo-file blocks: 0 header, 1 superblock copy.
    let mut next = 2u64;
    let mut data = Vec::new();
    for chunk in keys.chunks(keys_per_block) {
        let key_blk = next;
        next = next.checked_add(1).ok_or_else(too_large)?;
        let mut kb = vec![0u8; bsz];
        le::set_u32(&mut kb, key::MAGIC, KEYBLOCK_MAGIC);
        for (rec, key) in kb[key::FIRST..].chunks_exact_mut(key::LEN).zip(chunk) {
            let (fsblk, n) = (key.start, key.len);
            // n <= 511 blocks of at most 64 KiB: the length fits 32 bits.
            let len = block_size.bytes_of(n).ok_or_else(too_large)?;
            data.resize(len as usize, 0);
            let from = block_size.offset_of(fsblk).ok_or_else(too_large)?;
            device.read_exact_at(&mut data, from, "blocks saved for the undo file")?;
            wr(&data, next)?;
            next = next.checked_add(n).ok_or_else(too_large)?;
            le::set_u64(rec, key::FSBLK, fsblk.get());
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
    le::set_u32(&mut h, hdr::BLOCK_SIZE, block_size.get());
    le::set_u32(&mut h, hdr::FS_BLOCK_SIZE, block_size.get());
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

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // tests compute expected values freely
mod tests {
    use super::*;
    use crate::io::{FileSource, MemSource, pread_full};
    use crate::units::FsBlock;

    #[test]
    fn layout_keys_and_checksums() {
        let bs = BlockSize::new(1024).unwrap();
        let dev = MemSource((0..64 * 1024).map(|i| (i / 1024) as u8).collect());
        let f = tempfile::tempfile().unwrap();
        let mut sb = [0u8; 1024];
        le::set_u16(&mut sb, S_MAGIC, 0xEF53);
        let runs = [BlockRun::new(FsBlock(3), 2), BlockRun::new(FsBlock(10), 1)];
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

    #[test]
    fn blocks_past_the_device_end_are_a_located_short_read() {
        let dev = MemSource(vec![7u8; 64 * 1024]);
        let f = tempfile::tempfile().unwrap();
        let runs = [BlockRun::new(FsBlock(63), 2)];
        let bs = BlockSize::new(1024).unwrap();
        let e = write_undo(&f, &dev, bs, &runs, &[0u8; 1024]).unwrap_err();
        assert_eq!(
            e.corrupt_kind(),
            Some(&crate::error::CorruptKind::ShortRead {
                what: "blocks saved for the undo file",
                offset: 63 * 1024,
                len: 2048,
                source_bytes: 64 * 1024,
            })
        );
        assert_eq!(
            e.to_string(),
            "blocks saved for the undo file: 2048 bytes at byte 64512 cannot be read: the source ends at byte 65536"
        );
    }
}
