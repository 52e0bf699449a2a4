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

use std::fs::File;

use crate::blockmap::Run;
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

/// What [`write_undo`] saved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UndoStats {
    pub keys: u64,
    pub blocks: u64,
    pub file_size: u64,
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
    let bs = u64::from(block_size);
    let bsz = block_size as usize;
    let keys_per_block = bsz / 16 - 1;
    let mut stats = UndoStats::default();
    let wr = |buf: &[u8], blk: u64| -> Result<()> {
        let off = blk * bs;
        pwrite_full(out, buf, off).map_err(|e| Error::io("write undo file", off, e))
    };

    // Split the runs into keys of at most MAX_KEY_BLOCKS blocks.
    let mut keys: Vec<(u64, u64)> = Vec::new();
    for r in runs {
        let mut b = r.start;
        while b < r.end() {
            let n = MAX_KEY_BLOCKS.min(r.end() - b);
            keys.push((b, n));
            b += n;
        }
    }
    let mut next = 2u64; // block 0 header, block 1 superblock copy
    let mut data = Vec::new();
    for chunk in keys.chunks(keys_per_block) {
        let key_blk = next;
        next += 1;
        let mut kb = vec![0u8; bsz];
        kb[0..4].copy_from_slice(&KEYBLOCK_MAGIC.to_le_bytes());
        for (j, &(fsblk, n)) in chunk.iter().enumerate() {
            let len = (n * bs) as usize;
            data.resize(len, 0);
            device.read_exact_at(&mut data, fsblk * bs, &|| {
                format!("saving blocks {fsblk}..{} for the undo file", fsblk + n)
            })?;
            wr(&data, next)?;
            next += n;
            let k = 16 + j * 16;
            kb[k..k + 8].copy_from_slice(&fsblk.to_le_bytes());
            kb[k + 8..k + 12].copy_from_slice(&crc32c_raw(!0, &data).to_le_bytes());
            kb[k + 12..k + 16].copy_from_slice(&(len as u32).to_le_bytes());
            stats.keys += 1;
            stats.blocks += n;
        }
        let crc = crc32c_raw(!0, &kb);
        kb[4..8].copy_from_slice(&crc.to_le_bytes());
        wr(&kb, key_blk)?;
    }

    // Superblock copy, magic inverted.
    let mut sbb = vec![0u8; bsz];
    sbb[..1024].copy_from_slice(final_super);
    let magic = u16::from_le_bytes([final_super[0x38], final_super[0x39]]);
    sbb[0x38..0x3A].copy_from_slice(&(!magic).to_le_bytes());
    wr(&sbb, 1)?;

    let mut h = vec![0u8; bsz];
    h[0..8].copy_from_slice(E2UNDO_MAGIC);
    h[8..16].copy_from_slice(&stats.keys.to_le_bytes());
    h[16..24].copy_from_slice(&1u64.to_le_bytes()); // super_offset
    h[24..32].copy_from_slice(&2u64.to_le_bytes()); // key_offset
    h[32..36].copy_from_slice(&block_size.to_le_bytes());
    h[36..40].copy_from_slice(&block_size.to_le_bytes()); // fs_block_size
    h[40..44].copy_from_slice(&crc32c_raw(!0, final_super).to_le_bytes());
    h[44..48].copy_from_slice(&E2UNDO_STATE_FINISHED.to_le_bytes());
    // f_compat, f_incompat, f_rocompat, pad32, fs_offset: zero (no filesystem offset).
    let hcrc = crc32c_raw(!0, &h[..HEADER_SIZE - 4]);
    h[HEADER_SIZE - 4..HEADER_SIZE].copy_from_slice(&hcrc.to_le_bytes());
    wr(&h, 0)?;
    stats.file_size = next.max(3) * bs;
    out.sync_all()
        .map_err(|e| Error::io("sync undo file", 0, e))?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{FileSource, MemSource, pread_full};

    #[test]
    fn layout_keys_and_checksums() {
        let bs = 1024u32;
        let dev = MemSource((0..64 * 1024).map(|i| (i / 1024) as u8).collect());
        let f = tempfile::tempfile().unwrap();
        let mut sb = [0u8; 1024];
        sb[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        let runs = [Run { start: 3, len: 2 }, Run { start: 10, len: 1 }];
        let st = write_undo(&f, &dev, bs, &runs, &sb).unwrap();
        assert_eq!((st.keys, st.blocks), (2, 3));
        let src = FileSource::from_file(f.try_clone().unwrap(), 0).unwrap();
        let mut all = vec![0u8; src.size() as usize];
        pread_full(&f, &mut all, 0).unwrap();
        assert_eq!(&all[..8], E2UNDO_MAGIC);
        let hcrc = u32::from_le_bytes(all[508..512].try_into().unwrap());
        assert_eq!(hcrc, crc32c_raw(!0, &all[..508]));
        // superblock copy has the magic inverted
        assert_eq!(&all[1024 + 0x38..1024 + 0x3A], &(!0xEF53u16).to_le_bytes());
        // key block at block 2, data right after it
        let kb = &all[2048..3072];
        assert_eq!(
            u32::from_le_bytes(kb[0..4].try_into().unwrap()),
            KEYBLOCK_MAGIC
        );
        let mut z = kb.to_vec();
        z[4..8].fill(0);
        assert_eq!(
            u32::from_le_bytes(kb[4..8].try_into().unwrap()),
            crc32c_raw(!0, &z)
        );
        assert_eq!(u64::from_le_bytes(kb[16..24].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(kb[28..32].try_into().unwrap()), 2048);
        assert_eq!(all[3 * 1024], 3);
        assert_eq!(all[5 * 1024], 10);
    }
}
