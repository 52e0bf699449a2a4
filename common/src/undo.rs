//! Undo files in e2fsprogs' format (`E2UNDO02`, lib/ext2fs/undo_io.c), so that the stock
//! `e2undo FILE DEVICE` puts back every block a tool overwrote.
//!
//! Layout, in blocks of the undo block size (here the filesystem block size):
//! * block 0: the 512-byte header (magic, key count, superblock and first key block
//!   positions, block sizes, crc32c of the superblock copy, state FINISHED, feature words,
//!   filesystem offset, crc32c of the header), then zeros;
//! * blocks 1 and 2: two copies of the bytes at 1024..2048 of the device, `s_magic`
//!   inverted: as they are before the tool writes (block 1) and as they will be once it is
//!   done (block 2). e2undo replays only when the device's current bytes there equal the copy
//!   the header points at;
//! * block 3 on: a key block (magic 0xCADECADE, crc32c of the block, then up to
//!   `block_size/16 - 1` keys of {filesystem block, crc32c of the data, data length}), followed
//!   by the data its keys describe, then the next key block, and so on.
//!
//! All checksums are libext2fs's `ext2fs_crc32c_le(~0, …)` (no final inversion).
//!
//! Surviving an interruption: [`write_undo`] writes and syncs the whole file, its header
//! pointing at the copy of the device's *current* superblock, before the tool changes
//! anything; the tool writes its superblock last and then calls [`commit_undo`], which
//! rewrites the header (one 512-byte write) to point at the final copy. Killed before its
//! superblock write, the device still holds the superblock the header names, and e2undo
//! restores every block; once committed, it does so after a finished run. Between the
//! superblock write and the commit (one system call) the run is complete and e2undo refuses
//! to replay, changing nothing.

// The offsets and counts here come from a plan of the image: no unchecked arithmetic.
#![deny(clippy::arithmetic_side_effects)]

use std::fs::File;

use crate::blockmap::BlockRun;
use crate::bytes::le;
use crate::ext4::csum::crc32c_raw;
use crate::io::{ReadAt, pwrite_all};
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

/// Block of the copy of the device's superblock bytes before the tool writes.
const SUPER_BEFORE: u64 = 1;
/// Block of the copy of the superblock bytes the tool will leave.
const SUPER_AFTER: u64 = 2;
/// First key block.
const FIRST_KEY: u64 = 3;

/// Save the current contents of the filesystem blocks in `runs` (sorted, disjoint, in units
/// of `block_size`) of `device` into the empty file `out`, as an undo file for the device as
/// it is now (its bytes 1024..2048 are read here), and sync it. `final_super` is what the
/// tool will leave at 1024..2048: [`commit_undo`] switches to it once the tool wrote it.
/// `fs_offset` is the filesystem's byte offset on the device (a partition's start; block
/// numbers and the superblock are relative to it); every header carries it, so that e2undo
/// replays there without `-o`.
///
/// Two kinds of block numbers meet here: the filesystem's ([`crate::units::FsBlock`], what is
/// saved) and the undo file's own (`u64`, where it is saved); both count blocks of `block_size`.
pub fn write_undo<D: ReadAt + ?Sized>(
    out: &File,
    device: &D,
    block_size: BlockSize,
    runs: &[BlockRun],
    final_super: &[u8; 1024],
    fs_offset: u64,
) -> Result<UndoStats> {
    let bsz = block_size.as_usize();
    // At least 63 keys per block.
    let keys_per_block = bsz.checked_div(key::LEN).unwrap_or(0).saturating_sub(1);
    let mut stats = UndoStats::default();
    // Byte offset of block `blk` of the undo file.
    let at = |blk: u64| block_size.bytes_of(blk).ok_or_else(too_large);
    let wr = |buf: &[u8], blk: u64| -> Result<()> {
        let off = at(blk)?;
        pwrite_all(out, buf, off, "write undo file")
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
    // Undo-file blocks: 0 header, 1 and 2 superblock copies, then keys and data.
    let mut next = FIRST_KEY;
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

    // The device's superblock bytes as they are (whatever they hold: a damaged primary is
    // compared byte for byte all the same), and as they will be.
    let mut before = [0u8; 1024];
    device.read_exact_at(&mut before, 1024, "the superblock saved for the undo file")?;
    for (blk, sb) in [(SUPER_BEFORE, &before), (SUPER_AFTER, final_super)] {
        let mut sbb = vec![0u8; bsz];
        sbb[..1024].copy_from_slice(sb);
        le::set_u16(&mut sbb, S_MAGIC, !le::u16(sb, S_MAGIC));
        wr(&sbb, blk)?;
    }
    stats.file_size = at(next)?;
    // Everything the header points at is on disk before the header names it.
    out.sync_data()
        .map_err(|e| Error::io("sync undo file", e))?;
    let h = header(stats.keys, SUPER_BEFORE, block_size, &before, fs_offset);
    pwrite_all(out, &h, 0, "write undo file")?;
    out.sync_all().map_err(|e| Error::io("sync undo file", e))?;
    Ok(stats)
}

/// After the tool wrote `final_super` (the one given to [`write_undo`]) at 1024..2048 of the
/// device: point the header at its copy, so that e2undo replays onto the finished device.
pub fn commit_undo(
    out: &File,
    stats: &UndoStats,
    block_size: BlockSize,
    final_super: &[u8; 1024],
    fs_offset: u64,
) -> Result<()> {
    let h = header(stats.keys, SUPER_AFTER, block_size, final_super, fs_offset);
    // One write of one sector: the header is either the old or the new one.
    pwrite_all(out, &h, 0, "write undo file")?;
    out.sync_all().map_err(|e| Error::io("sync undo file", e))
}

/// The 512-byte header: `keys` keys from block [`FIRST_KEY`], the superblock copy `sb` at
/// block `super_block`, the filesystem at byte `fs_offset` of the device.
fn header(
    keys: u64,
    super_block: u64,
    block_size: BlockSize,
    sb: &[u8; 1024],
    fs_offset: u64,
) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[hdr::MAGIC..hdr::MAGIC + 8].copy_from_slice(E2UNDO_MAGIC);
    le::set_u64(&mut h, hdr::NUM_KEYS, keys);
    le::set_u64(&mut h, hdr::SUPER_OFFSET, super_block);
    le::set_u64(&mut h, hdr::KEY_OFFSET, FIRST_KEY);
    le::set_u32(&mut h, hdr::BLOCK_SIZE, block_size.get());
    le::set_u32(&mut h, hdr::FS_BLOCK_SIZE, block_size.get());
    // e2undo checksums the copy with its magic restored: the device's bytes.
    le::set_u32(&mut h, hdr::SB_CRC, crc32c_raw(!0, sb));
    le::set_u32(&mut h, hdr::STATE, E2UNDO_STATE_FINISHED);
    // f_incompat, f_rocompat, pad32: zero. The offset only when there is one, as libext2fs
    // writes it (e2undo honours it unless given -o).
    if fs_offset > 0 {
        le::set_u32(&mut h, hdr::F_COMPAT, FEATURE_COMPAT_FS_OFFSET);
        le::set_u64(&mut h, hdr::FS_OFFSET, fs_offset);
    }
    let hcrc = crc32c_raw(!0, &h[..hdr::HEADER_CRC]);
    le::set_u32(&mut h, hdr::HEADER_CRC, hcrc);
    h
}

/// `E2UNDO_FEATURE_COMPAT_FS_OFFSET`: the header's `fs_offset` holds the filesystem's byte
/// offset on the device, which e2undo then replays at unless given `-o`.
pub const FEATURE_COMPAT_FS_OFFSET: u32 = 0x1;

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
        let st = write_undo(&f, &dev, bs, &runs, &sb, 0).unwrap();
        assert_eq!((st.keys, st.blocks), (2, 3));
        let src = FileSource::from_file(f.try_clone().unwrap(), 0).unwrap();
        let mut all = vec![0u8; src.size() as usize];
        pread_full(&f, &mut all, 0).unwrap();
        assert_eq!(&all[..8], E2UNDO_MAGIC);
        let hcrc = le::u32(&all, 508);
        assert_eq!(hcrc, crc32c_raw(!0, &all[..508]));
        // The header points at the copy of the device's bytes 1024..2048 (block 1 of the
        // device, all 1s), magic inverted, and checksums them as they are on the device.
        assert_eq!(le::u64(&all, 16), 1);
        assert_eq!(le::u16(&all, 1024 + S_MAGIC), !0x0101u16);
        assert_eq!(all[1024], 1);
        assert_eq!(le::u32(&all, 40), crc32c_raw(!0, &[1u8; 1024]));
        // The final copy: `sb` with the magic inverted.
        assert_eq!(le::u16(&all, 2048 + S_MAGIC), !0xEF53u16);
        // key block at block 3, data right after it
        let kb = &all[3072..4096];
        assert_eq!(le::u32(kb, 0), KEYBLOCK_MAGIC);
        let mut z = kb.to_vec();
        z[4..8].fill(0);
        assert_eq!(le::u32(kb, 4), crc32c_raw(!0, &z));
        assert_eq!(le::u64(kb, 16), 3);
        assert_eq!(le::u32(kb, 28), 2048);
        assert_eq!(all[4 * 1024], 3);
        assert_eq!(all[6 * 1024], 10);

        // The commit points the header at the final copy; nothing else changes.
        commit_undo(&f, &st, bs, &sb, 0).unwrap();
        let mut after = vec![0u8; all.len()];
        pread_full(&f, &mut after, 0).unwrap();
        assert_eq!(le::u64(&after, 16), 2);
        assert_eq!(le::u32(&after, 40), crc32c_raw(!0, &sb));
        assert_eq!(le::u32(&after, 508), crc32c_raw(!0, &after[..508]));
        assert_eq!(after[512..], all[512..]);
    }

    #[test]
    fn blocks_past_the_device_end_are_a_located_short_read() {
        let dev = MemSource(vec![7u8; 64 * 1024]);
        let f = tempfile::tempfile().unwrap();
        let runs = [BlockRun::new(FsBlock(63), 2)];
        let bs = BlockSize::new(1024).unwrap();
        let e = write_undo(&f, &dev, bs, &runs, &[0u8; 1024], 0).unwrap_err();
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
