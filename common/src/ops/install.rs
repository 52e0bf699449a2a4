//! `e2i-install`: write the metadata of a normal e2image image back onto a device
//! (`e2image -I`, behaviour spec §8), with the safety checks e2image lacks.
//!
//! What is written, in this order (exactly what `e2image -I` writes through libext2fs):
//! 1. every group's whole inode table, from the image, at the location the *image's*
//!    descriptors give (zero blocks written as zeros);
//! 2. the bitmap blocks of every group that is not BLOCK_UNINIT (INODE_UNINIT) on a
//!    filesystem with descriptor checksums, and whose bitmap location is non-zero and inside
//!    the filesystem: the group's bits from the image, then 0xFF to the end of the block, with
//!    the bits past the end of the filesystem set in the last group's block bitmap. Each
//!    written group's bitmap checksums (metadata_csum) and descriptor checksum are recomputed;
//! 3. the primary descriptors: the old-style descriptor blocks after group 0's superblock
//!    (`first_meta_bg` of them with meta_bg), and with meta_bg every meta group's descriptor
//!    block in each of its three locations (first, second and last group); backup
//!    superblocks and backup old-style descriptors are not written;
//! 4. the primary superblock (1024 bytes at byte 1024): the image's, with `s_wtime` = now
//!    (`SOURCE_DATE_EPOCH`, else `E2FSPROGS_FAKE_TIME`, else the clock),
//!    `s_block_group_nr` = 0, `s_kbytes_written` (when non-zero) increased by the KiB of
//!    steps 1–2 plus `(desc_blocks + 1) / (bs / 1024)`, and the checksum recomputed.
//!
//! Before any of it: DEVICE must not be mounted; the image must be a complete, valid normal
//! image; DEVICE's filesystem (its primary superblock, or the first valid backup) must have
//! the image's UUID, block size, block count and inode count, and must not be newer than the
//! image (its last write time, mount count or lifetime writes past the image's superblock's:
//! what was written since would be lost), unless `force`; the image must not be scrambled
//! ([`crate::mark`]: its inode tables and superblock would replace the real inline names,
//! symlink targets, inline data, in-inode xattrs and label), whatever the options; every
//! write must lie inside DEVICE; the undo file must not exist (under any kind). With an undo
//! file, the old contents of every block written, the device's superblock bytes as they are
//! and as they will be are saved and synced first, and the file is committed
//! ([`crate::undo::commit_undo`]) after the superblock write, so that `e2undo` restores the
//! device after an install interrupted at any point.
//!
//! [`Install::prepare`] runs every check and plans the writes without writing (what a dry run
//! shows, with an [`Overview`] of what will be replaced); [`Install::run`] then writes.

// Every number here comes from the image or the device: no unchecked arithmetic.
#![deny(clippy::arithmetic_side_effects)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::blockmap::{BlockMap, BlockRun};
use crate::bytes::le;
use crate::error::CorruptKind;
use crate::ext4::Superblock;
use crate::ext4::bitmap::{self, super_and_bgd_loc};
use crate::ext4::csum::{self, Checksummer};
use crate::ext4::desc::{BG_BLOCK_UNINIT, BG_INODE_UNINIT};
use crate::ext4::superblock::feature;
use crate::ext4::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::io::{FileSource, ReadAt, pwrite_all};
use crate::mark;
use crate::mount::{MountState, mount_state};
use crate::normal::NormalImage;
use crate::normal::reader::read_image;
use crate::progress::{Progress, Unit};
use crate::undo::{self, UndoStats};
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// How to install.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Skip the UUID/geometry match check (never the mount check).
    pub force: bool,
    /// Plan and check only; open nothing for writing.
    pub dry_run: bool,
    /// Save the overwritten blocks here first, in e2undo's format.
    pub undo: Option<PathBuf>,
    /// `-P`: the filesystem starts at this byte of DEVICE (its partition's start)...
    pub offset: u64,
    /// ...and nothing may be written past this many bytes from there (the partition's size).
    pub limit: Option<u64>,
}

/// Where the data of a planned write comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteData {
    /// Bytes of the image file starting at this offset.
    Image(u64),
    /// Computed bytes (bitmaps, descriptors, superblock).
    Bytes(Vec<u8>),
}

/// One write onto the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWrite {
    /// What it is ("inode tables of groups 0-15", "block bitmap of group 3", …).
    pub what: String,
    /// Byte offset on the device.
    pub offset: u64,
    pub len: u64,
    pub data: WriteData,
}

/// Which superblock of the device identified its filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSuper {
    Primary,
    /// A backup at this block (of `block_size` bytes).
    Backup {
        block: FsBlock,
        block_size: BlockSize,
    },
    /// No valid superblock found (only accepted with `force`).
    None,
}

/// What an install did (or, with `dry_run`, would do).
#[derive(Debug)]
pub struct InstallReport {
    pub writes: Vec<PlannedWrite>,
    pub bytes: u64,
    pub block_size: BlockSize,
    pub device_super: DeviceSuper,
    /// Differences between the device's filesystem and the image, ignored under `force`.
    pub mismatches: Vec<String>,
    /// How the device's filesystem is newer than the image (written, mounted since),
    /// ignored under `force`.
    pub newer: Vec<String>,
    pub undo: Option<UndoStats>,
    /// What the install replaces.
    pub overview: Overview,
}

/// What an install replaces, for the line printed before anything is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overview {
    /// Groups whose inode tables (and bitmaps) are replaced.
    pub groups: u32,
    /// When the image was taken (seconds; 0 when the header does not say).
    pub image_time: u64,
    /// When DEVICE's filesystem was last written (`s_wtime`), if it has a valid superblock.
    pub device_write_time: Option<u64>,
    /// Inodes in use according to DEVICE's superblock, and to the image's.
    pub device_inodes_used: Option<u64>,
    pub image_inodes_used: u64,
    /// DEVICE's label and the image's, when they differ.
    pub label_change: Option<(String, String)>,
    /// DEVICE's journal needs recovery (an unclean shutdown) and the image's superblock,
    /// which replaces DEVICE's, does not say so: the journal would never be replayed.
    pub journal_dropped: bool,
}

impl Overview {
    /// DEVICE's filesystem was written after the image was taken: what was created or
    /// changed since is lost (its inodes are replaced, its blocks marked free).
    pub fn device_is_newer(&self) -> bool {
        self.image_time != 0 && self.device_write_time.is_some_and(|t| t > self.image_time)
    }
}

/// The time libext2fs stamps into `s_wtime`.
fn now() -> u64 {
    for var in ["SOURCE_DATE_EPOCH", "E2FSPROGS_FAKE_TIME"] {
        if let Ok(v) = std::env::var(var) {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse::<u64>().ok(),
            };
            if let Some(t) = parsed {
                return t;
            }
        }
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Byte offset of block `b`. The plan only computes offsets of blocks inside the
/// filesystem, whose byte size [`crate::normal::Layout::new`] checked, so this fails only on
/// a bug; it fails as a located error all the same.
fn offset(b: FsBlock, bs: BlockSize, what: &'static str) -> Result<u64> {
    bs.offset_of(b)
        .ok_or_else(|| CorruptKind::NormalLayoutOverflow { field: what }.into())
}

/// Bytes of `n` blocks (as [`offset`]).
fn length(n: u64, bs: BlockSize, what: &'static str) -> Result<u64> {
    bs.bytes_of(n)
        .ok_or_else(|| CorruptKind::NormalLayoutOverflow { field: what }.into())
}

/// Plan every write of an install (see the module documentation), in order.
pub fn plan<R: ReadAt>(img: &NormalImage<R>, now: u64) -> Result<Vec<PlannedWrite>> {
    let sb = img.superblock();
    let layout = img.layout();
    let bs = layout.block_size;
    let ipb = u64::from(sb.inode_blocks_per_group);
    let mut desc = img.desc().clone();
    let mut writes = Vec::new();

    // 1. Inode tables, coalesced where consecutive groups' tables are back to back.
    struct Tables {
        first: u32,
        last: u32,
        block: FsBlock,
        /// One past the last block.
        end: FsBlock,
        image_offset: u64,
    }
    let flush = |run: Option<Tables>, writes: &mut Vec<PlannedWrite>| -> Result<()> {
        if let Some(t) = run {
            // end > block: each table lies inside the filesystem.
            let n = t.end.saturating_since(t.block);
            writes.push(PlannedWrite {
                what: if t.first == t.last {
                    format!("inode table of group {}", t.first)
                } else {
                    format!("inode tables of groups {}-{}", t.first, t.last)
                },
                offset: offset(t.block, bs, "an inode table offset")?,
                len: length(n, bs, "an inode table size")?,
                data: WriteData::Image(t.image_offset),
            });
        }
        Ok(())
    };
    let mut run: Option<Tables> = None;
    for group in 0..sb.group_count {
        let table = img.inode_table(group)?;
        // inode_table checked that the run ends inside the filesystem.
        let (block, end) = (table.start, table.end());
        let image_offset =
            layout
                .inode_table_offset(group)
                .ok_or(CorruptKind::NormalLayoutOverflow {
                    field: "an inode table offset",
                })?;
        run = match run {
            Some(t) if t.end == block => Some(Tables {
                last: group,
                end,
                ..t
            }),
            prev => {
                flush(prev, &mut writes)?;
                Some(Tables {
                    first: group,
                    last: group,
                    block,
                    end,
                    image_offset,
                })
            }
        };
    }
    flush(run, &mut writes)?;
    // The write calls libext2fs makes for the inode tables: up to 32 blocks at a time.
    // (Every table was checked above to end inside the filesystem.)
    let mut io_ops: Vec<(FsBlock, u64)> = Vec::new();
    for g in 0..sb.group_count {
        let mut blk = desc.inode_table(g);
        let mut left = ipb;
        while left > 0 {
            let c = left.min(32);
            io_ops.push((blk, c));
            blk = blk.saturating_add(c);
            left = left.saturating_sub(c);
        }
    }

    // 2. Bitmaps, with their checksums and the descriptor checksums.
    let cs = Checksummer::new(sb);
    let csum = sb.has_group_desc_csum();
    let bmaps = img.bitmaps();
    // inodes_per_group / 8, rounded up: fits a usize.
    let inode_csum_len = sb.inodes_per_group.div_ceil(8) as usize;
    for g in 0..sb.group_count {
        if !(csum && desc.has_flag(g, BG_BLOCK_UNINIT)) {
            let blk = bitmap::block_bitmap_block(sb, &bmaps.block, g);
            cs.block_bitmap_csum_set(&mut desc, g, &blk[..bitmap::block_nbytes(sb)]);
            cs.group_desc_csum_set(&mut desc, g);
            let loc = desc.block_bitmap(g);
            if loc != FsBlock(0) && loc.get() < sb.blocks_count {
                io_ops.push((loc, 1));
                writes.push(PlannedWrite {
                    what: format!("block bitmap of group {g}"),
                    offset: offset(loc, bs, "a block bitmap offset")?,
                    len: bs.bytes(),
                    data: WriteData::Bytes(blk),
                });
            }
        }
        if !(csum && desc.has_flag(g, BG_INODE_UNINIT)) {
            let blk = bitmap::inode_bitmap_block(sb, &bmaps.inode, g);
            cs.inode_bitmap_csum_set(&mut desc, g, &blk[..inode_csum_len.min(blk.len())]);
            cs.group_desc_csum_set(&mut desc, g);
            let loc = desc.inode_bitmap(g);
            if loc != FsBlock(0) && loc.get() < sb.blocks_count {
                io_ops.push((loc, 1));
                writes.push(PlannedWrite {
                    what: format!("inode bitmap of group {g}"),
                    offset: offset(loc, bs, "an inode bitmap offset")?,
                    len: bs.bytes(),
                    data: WriteData::Bytes(blk),
                });
            }
        }
    }

    // 3. Primary descriptors (and meta_bg descriptor blocks in all their locations).
    let raw = desc.raw();
    let old_desc_blocks = if sb.has_meta_bg() {
        sb.first_meta_bg.min(sb.desc_blocks)
    } else {
        sb.desc_blocks
    };
    let mbs = std::num::NonZeroU32::new(sb.desc_per_block).unwrap_or(std::num::NonZeroU32::MIN);
    for g in 0..sb.group_count {
        let (_, old, new) = super_and_bgd_loc(sb, g);
        if g == 0 && old != FsBlock(0) && old_desc_blocks > 0 {
            let len = length(u64::from(old_desc_blocks), bs, "the descriptors")?;
            let data = usize::try_from(len)
                .ok()
                .and_then(|l| raw.get(..l))
                .ok_or(CorruptKind::NormalDescriptorBlock { meta_group: 0 })?;
            writes.push(PlannedWrite {
                what: format!("group descriptors ({old_desc_blocks} blocks)"),
                offset: offset(old, bs, "the descriptors' offset")?,
                len,
                data: WriteData::Bytes(data.to_vec()),
            });
        }
        if new != FsBlock(0) {
            let mb = u64::from(g / mbs);
            // Descriptor block `mb` of the table, `bs` bytes into it per block.
            let at = length(mb, bs, "a meta_bg descriptor block")?;
            let block = usize::try_from(at)
                .ok()
                .and_then(|at| raw.get(at..at.checked_add(bs.as_usize())?))
                .ok_or(CorruptKind::NormalDescriptorBlock { meta_group: mb })?;
            writes.push(PlannedWrite {
                what: format!("meta_bg {mb} group descriptors (in group {g})"),
                offset: offset(new, bs, "a meta_bg descriptor block")?,
                len: bs.bytes(),
                data: WriteData::Bytes(block.to_vec()),
            });
        }
    }

    // Nothing goes outside the filesystem, whatever the image's geometry says: past its end
    // DEVICE holds what follows it (the next partition). A meta_bg descriptor copy in a
    // last group of one block would (e2fsck: "Illegal block number ... for check_desc map").
    let fs_bytes = sb.fs_bytes();
    if let Some(w) = writes
        .iter()
        .find(|w| w.offset.checked_add(w.len).is_none_or(|end| end > fs_bytes))
    {
        return Err(CorruptKind::NormalWriteOutside {
            what: w.what.clone(),
            block: bs.block_of(w.offset).get(),
            fs_blocks: sb.blocks_count,
        }
        .into());
    }

    // 4. Primary superblock.
    let mut sup = *sb.raw();
    // s_wtime and s_wtime_hi.
    le::set_u32(&mut sup, 0x30, now as u32);
    sup[0x274] = (now >> 32) as u8;
    // s_block_group_nr.
    le::set_u16(&mut sup, 0x5A, 0);
    let kb = le::u64(&sup, 0x178);
    let counted = unix_io_bytes_written(&io_ops, bs);
    if kb != 0 && counted != 0 {
        // libext2fs adds (desc_blocks + 1) / (bs / 1024) for the descriptors and superblock.
        let meta = u64::from(sb.desc_blocks).saturating_add(1) >> bs.bits().saturating_sub(10);
        let add = (counted >> 10).saturating_add(meta);
        // s_kbytes_written is a counter that wraps, as libext2fs's does.
        le::set_u64(&mut sup, 0x178, kb.wrapping_add(add));
    }
    csum::superblock_csum_set(&mut sup);
    writes.push(PlannedWrite {
        what: "primary superblock".into(),
        offset: SUPERBLOCK_OFFSET,
        len: SUPERBLOCK_SIZE as u64,
        data: WriteData::Bytes(sup.to_vec()),
    });
    Ok(writes)
}

/// The bytes libext2fs's Unix I/O manager has written after the write calls `ops`
/// (`(block, count)`): writes of more than 4 blocks go straight to the device (after flushing
/// the cache), smaller ones into its 8-block write-back cache, which writes a dirty block only
/// when evicting it (least recently used first). `ext2fs_close2` adds this count, in KiB, to
/// `s_kbytes_written` before the cache is flushed; reproducing it keeps the superblock
/// byte-identical to the one `e2image -I` writes. The byte count saturates (it is a
/// statistic; the planned writes fit 64 bits).
fn unix_io_bytes_written(ops: &[(FsBlock, u64)], block_size: BlockSize) -> u64 {
    #[derive(Clone, Copy, Default)]
    struct Slot {
        in_use: bool,
        dirty: bool,
        block: FsBlock,
        time: u64,
    }
    let bs = block_size.bytes();
    let mut slots = [Slot::default(); 8];
    let mut clock = 0u64;
    let mut bytes = 0u64;
    for &(blk, count) in ops {
        if count > 4 {
            for s in slots.iter_mut().filter(|s| s.in_use && s.dirty) {
                bytes = bytes.saturating_add(bs);
                s.dirty = false;
                s.in_use = false;
            }
            bytes = bytes.saturating_add(count.saturating_mul(bs));
            continue;
        }
        for b in (blk.get()..blk.get().saturating_add(count)).map(FsBlock) {
            // One tick per block written: far below 2^64.
            clock = clock.saturating_add(1);
            if let Some(s) = slots.iter_mut().find(|s| s.in_use && s.block == b) {
                s.time = clock;
                s.dirty = true;
                continue;
            }
            let victim = match slots.iter().position(|s| !s.in_use) {
                Some(i) => i,
                None => {
                    let mut i = 0;
                    for (j, s) in slots.iter().enumerate() {
                        if s.time < slots[i].time {
                            i = j;
                        }
                    }
                    i
                }
            };
            let s = &mut slots[victim];
            if s.in_use && s.dirty {
                bytes = bytes.saturating_add(bs);
            }
            *s = Slot {
                in_use: true,
                dirty: true,
                block: b,
                time: clock,
            };
        }
    }
    bytes
}

/// Standard backup superblock locations e2fsck tries: group 1 at the default geometry of
/// every block size (`bs * 8` blocks per group), as `(block, block_size)`.
pub fn standard_backup_locations() -> Vec<(FsBlock, BlockSize)> {
    (0..=6)
        .filter_map(BlockSize::from_log)
        .map(|bs| {
            // At most 2^19 + 1.
            let blk = (bs.bytes() << 3) | u64::from(bs.get() == 1024);
            (FsBlock(blk), bs)
        })
        .collect()
}

fn valid_super(raw: &[u8; SUPERBLOCK_SIZE], bs: Option<BlockSize>) -> Option<Superblock> {
    let sb = Superblock::parse(raw, bs).ok()?;
    csum::superblock_csum_verify(raw).then_some(sb)
}

/// Find the filesystem on `dev`: its primary superblock if valid, else the first valid
/// backup at the standard locations, then at the backup groups of `geometry` (the image's
/// filesystem, when known).
pub fn find_superblock<D: ReadAt + ?Sized>(
    dev: &D,
    geometry: Option<&Superblock>,
) -> (DeviceSuper, Option<Superblock>) {
    let mut raw = [0u8; SUPERBLOCK_SIZE];
    if dev.read_at(&mut raw, SUPERBLOCK_OFFSET).ok() == Some(SUPERBLOCK_SIZE)
        && let Some(sb) = valid_super(&raw, None)
    {
        return (DeviceSuper::Primary, Some(sb));
    }
    let mut cands = standard_backup_locations();
    if let Some(image_sb) = geometry {
        let mut found = 0u32;
        for g in 1..image_sb.group_count {
            if found == 8 {
                break;
            }
            if image_sb.group_has_super(g) {
                cands.push((image_sb.group_first_block(g), image_sb.block_size));
                found = found.saturating_add(1);
            }
        }
    }
    for (blk, bs) in cands {
        let Some(off) = bs.offset_of(blk) else {
            continue;
        };
        if dev.read_at(&mut raw, off).ok() == Some(SUPERBLOCK_SIZE)
            && let Some(sb) = valid_super(&raw, Some(bs))
        {
            return (
                DeviceSuper::Backup {
                    block: blk,
                    block_size: bs,
                },
                Some(sb),
            );
        }
    }
    (DeviceSuper::None, None)
}

fn hex(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// How the device's filesystem differs from the image's.
fn mismatches(dev: &Superblock, img: &Superblock) -> Vec<String> {
    let mut m = Vec::new();
    if dev.uuid() != img.uuid() {
        m.push(format!(
            "UUID {} (image: {})",
            hex(&dev.uuid()),
            hex(&img.uuid())
        ));
    }
    if dev.block_size != img.block_size {
        m.push(format!(
            "block size {} (image: {})",
            dev.block_size, img.block_size
        ));
    }
    if dev.blocks_count != img.blocks_count {
        m.push(format!(
            "block count {} (image: {})",
            dev.blocks_count, img.blocks_count
        ));
    }
    if dev.inodes_count != img.inodes_count {
        m.push(format!(
            "inode count {} (image: {})",
            dev.inodes_count, img.inodes_count
        ));
    }
    m
}

/// The device blocks the writes touch (whole blocks of `bs`). Planned writes lie inside
/// the filesystem or at the superblock: their ends fit.
fn touched_blocks(writes: &[PlannedWrite], bs: BlockSize, blocks: u64) -> BlockMap {
    let mut runs: Vec<BlockRun> = writes
        .iter()
        .map(|w| {
            let b0 = bs.block_of(w.offset);
            let b1 = FsBlock(bs.blocks_covering(w.offset.saturating_add(w.len)));
            BlockRun::new(b0, b1.saturating_since(b0))
        })
        .collect();
    runs.sort();
    let mut merged: Vec<BlockRun> = Vec::new();
    for r in runs {
        match merged.last_mut() {
            Some(m) if m.end() >= r.start => m.len = m.len.max(r.end().saturating_since(m.start)),
            _ => merged.push(r),
        }
    }
    BlockMap::from_runs(merged, blocks)
}

/// Seconds of a superblock's `s_wtime` (with `s_wtime_hi`).
fn write_time(raw: &[u8; SUPERBLOCK_SIZE]) -> u64 {
    u64::from(le::u32(raw, 0x30)) | u64::from(raw[0x274]) << 32
}

/// Inodes in use by a superblock's counts (which the kernel may keep slightly stale).
fn inodes_used(sb: &Superblock) -> u64 {
    u64::from(sb.inodes_count).saturating_sub(u64::from(le::u32(sb.raw(), 0x10)))
}

/// A checked, planned install, not yet written.
pub struct Install {
    img: NormalImage<FileSource>,
    dev: FileSource,
    report: InstallReport,
    undo: Option<PathBuf>,
    dry_run: bool,
}

impl Install {
    /// Run every check and plan every write (see the module documentation); nothing is
    /// written. With `dry_run`, DEVICE is opened read-only.
    pub fn prepare(device: &Path, image: &Path, opts: &InstallOptions) -> Result<Install> {
        let dev_name = device.display();
        let state = mount_state(device);
        if state != MountState::NotMounted {
            return Err(Error::InvalidInput(format!(
                "{dev_name} is mounted {}; refusing to write to a mounted filesystem",
                state.place()
            )));
        }
        let img = NormalImage::open_file(image)?;
        let sb = img.superblock();
        let writes = plan(&img, now())?;
        // Only the last write may change the superblock bytes: the undo file's commit after
        // it depends on that (a table or bitmap there is a damaged image's).
        final_superblock(&writes)?;
        let (sb_lo, sb_hi) = (SUPERBLOCK_OFFSET, SUPERBLOCK_OFFSET.saturating_add(1024));
        if let Some(w) = writes
            .iter()
            .rev()
            .skip(1)
            .find(|w| w.offset < sb_hi && w.offset.saturating_add(w.len) > sb_lo)
        {
            return Err(Error::InvalidInput(format!(
                "{}: the image's {} overlaps the primary superblock (byte {}); nothing written",
                image.display(),
                w.what,
                w.offset
            )));
        }

        let is_blockdev = std::fs::metadata(device).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device()
        });
        let file = if opts.dry_run {
            File::open(device)
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            let mut o = OpenOptions::new();
            o.read(true).write(true);
            if is_blockdev {
                // Exclusive open: the kernel refuses it while the device is mounted or claimed.
                o.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
            }
            o.open(device)
        }
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                // The exclusive open: something holds DEVICE or a partition of it.
                Error::InvalidInput(format!(
                    "{}: in use (it or a partition of it is mounted, or another program holds it); nothing written",
                    device.display()
                ))
            } else {
                Error::io("open device", e)
            }
        })?;
        let dev = FileSource::from_file(file, opts.offset)?;
        let (device_super, dev_sb) = find_superblock(&dev, Some(sb));
        let mism = match &dev_sb {
            Some(d) => mismatches(d, sb),
            None => vec!["no valid ext2/3/4 superblock (primary or backup)".to_string()],
        };
        if !mism.is_empty() && !opts.force {
            return Err(Error::InvalidInput(format!(
                "{dev_name} does not hold the image's filesystem: {}; nothing written (use --force to install anyway)",
                mism.join(", ")
            )));
        }
        // Never overridden (--force included): the loss is silent, e2fsck finds nothing.
        if let Some(ev) = mark::refusal(
            &img.header().image_facts(sb.raw()),
            dev_sb.as_ref().map(Superblock::raw),
            false,
        ) {
            return Err(Error::InvalidInput(mark::refusal_message(
                &ev,
                &dev_name.to_string(),
                mark::Action::Install,
            )));
        }
        let newer = dev_sb
            .as_ref()
            .map(|d| newer_than_image(d, sb, &device_super))
            .unwrap_or_default();
        if !newer.is_empty() && !opts.force {
            return Err(Error::InvalidInput(format!(
                "{dev_name} holds a newer state of the filesystem than the image: {}; installing would lose what was written since; nothing written (use --force to install anyway)",
                newer.join(", ")
            )));
        }
        // Planned writes lie inside the image's filesystem, whose byte size fits: saturation
        // cannot happen (and would only make the device check below stricter).
        let end = writes
            .iter()
            .map(|w| w.offset.saturating_add(w.len))
            .max()
            .unwrap_or(0);
        if end > dev.size() {
            return Err(Error::InvalidInput(format!(
                "{dev_name} is {} bytes, but the image's metadata reaches byte {end}; nothing written",
                dev.size()
            )));
        }
        if let Some(limit) = opts.limit
            && end > limit
        {
            return Err(Error::InvalidInput(format!(
                "{dev_name}: the partition is {limit} bytes, but the image's metadata reaches byte {end} of it; nothing written"
            )));
        }
        if let Some(path) = &opts.undo {
            refuse_existing_undo(path)?;
        }
        let (dev_label, img_label) = (
            dev_sb.as_ref().map(|d| mark::label(d.raw())),
            mark::label(sb.raw()),
        );
        let overview = Overview {
            groups: sb.group_count,
            image_time: img.header().image_time,
            device_write_time: dev_sb.as_ref().map(|d| write_time(d.raw())),
            device_inodes_used: dev_sb.as_ref().map(inodes_used),
            image_inodes_used: inodes_used(sb),
            label_change: dev_label
                .filter(|d| *d != img_label)
                .map(|d| (d, img_label)),
            journal_dropped: dev_sb
                .as_ref()
                .is_some_and(|d| d.has_incompat(feature::INCOMPAT_RECOVER))
                && !sb.has_incompat(feature::INCOMPAT_RECOVER),
        };
        let bytes = writes.iter().fold(0u64, |a, w| a.saturating_add(w.len));
        let report = InstallReport {
            writes,
            bytes,
            block_size: sb.block_size,
            device_super,
            mismatches: mism,
            newer,
            undo: None,
            overview,
        };
        Ok(Install {
            img,
            dev,
            report,
            undo: opts.undo.clone(),
            dry_run: opts.dry_run,
        })
    }

    /// What will be written (or, in a dry run, would be).
    pub fn report(&self) -> &InstallReport {
        &self.report
    }

    /// Write everything planned (nothing in a dry run): the undo file first, then the
    /// inode tables, bitmaps and descriptors, a sync, and the superblock last.
    pub fn run(self, progress: &mut dyn Progress) -> Result<InstallReport> {
        let Install {
            img,
            dev,
            mut report,
            undo,
            dry_run,
        } = self;
        if dry_run {
            return Ok(report);
        }
        let sb = img.superblock();
        let bs = img.layout().block_size;
        let mut undo_file = None;
        if let Some(path) = &undo {
            let final_super = final_superblock(&report.writes)?;
            // prepare() refused an existing path; O_EXCL refuses one created since (and
            // does not follow a symlink put there).
            // 0600 like e2fsprogs' undo files: it holds DEVICE's old inode tables (names of
            // inline directories, symlink targets, inline data) for anyone who can read it.
            use std::os::unix::fs::OpenOptionsExt;
            let uf = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::io("create undo file", e))?;
            // Until it is complete, DEVICE is untouched and the undo file useless: removed
            // if its writing fails (a full disk) or a signal ends the run, rather than left
            // to block the rerun as "already exists".
            crate::output::pending::add(path);
            let end = report
                .writes
                .iter()
                .map(|w| w.offset.saturating_add(w.len))
                .max()
                .unwrap_or(0);
            let touched = touched_blocks(
                &report.writes,
                bs,
                sb.blocks_count.max(bs.blocks_covering(end)),
            );
            let stats = undo::write_undo(
                &uf,
                &dev,
                sb.block_size,
                touched.runs(),
                &final_super,
                dev.base(),
            )
            .map_err(|e| {
                let _ = std::fs::remove_file(path);
                let mut why = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    why = format!("{why}: {s}");
                    src = s.source();
                }
                Error::InvalidInput(format!(
                    "{}: {why}; nothing written to the device, the partial undo file removed",
                    path.display()
                ))
            });
            crate::output::pending::remove(path);
            let stats = stats?;
            report.undo = Some(stats);
            undo_file = Some((uf, stats, final_super));
        }

        // From the superblock's write to the undo file's switch (below), a SIGINT or
        // SIGTERM waits: killed in between, the undo file no longer matches DEVICE and
        // plain e2undo refuses it.
        let _critical = write_device(&img, &dev, &report, progress)
            .map_err(|e| Error::InstallUnfinished(Box::new(e)))?;
        if let Some((uf, stats, final_super)) = &undo_file {
            undo::commit_undo(uf, stats, sb.block_size, final_super, dev.base())
                .map_err(|e| Error::InstallUnfinished(Box::new(e)))?;
        }
        // Complete: a signal that waited for the switch ends the run only once the tool has
        // said the install is complete.
        crate::output::pending::hand_over();
        progress.finish();
        Ok(report)
    }
}

/// Write `report`'s planned writes onto DEVICE: the inode tables, bitmaps and descriptors,
/// a sync, the superblock last, a sync. Returns holding the signal-deferring lock taken
/// before the superblock's write ([`crate::output::pending::critical`]).
fn write_device(
    img: &NormalImage<FileSource>,
    dev: &FileSource,
    report: &InstallReport,
    progress: &mut dyn Progress,
) -> Result<std::sync::MutexGuard<'static, ()>> {
    let mut critical = None;
    {
        let bs = img.layout().block_size;
        let f = dev.file();
        // Planned offsets are the filesystem's; DEVICE's are `-P`'s partition start further.
        let base = dev.base();
        let host = |off: u64| {
            off.checked_add(base).ok_or_else(|| {
                Error::InvalidInput(format!("byte {off} of the partition overflows"))
            })
        };
        let total = bs.blocks_in(report.bytes);
        progress.block_size(bs.get());
        progress.phase("installing", total, Unit::Blocks);
        // Progress and positions below stay inside writes whose ends were checked.
        let mut done = 0u64;
        let mut buf = Vec::new();
        let last = report.writes.len().saturating_sub(1);
        for (i, w) in report.writes.iter().enumerate() {
            if i == last {
                // Everything else reaches the device before the superblock.
                f.sync_data().map_err(|e| Error::io("sync", e))?;
                critical = Some(crate::output::pending::critical());
            }
            match &w.data {
                WriteData::Bytes(b) => {
                    let at = host(w.offset)?;
                    pwrite_all(f, b, at, "write")?;
                }
                WriteData::Image(off) => {
                    let mut pos = 0u64;
                    while pos < w.len {
                        // At most IO_CHUNK.
                        let n = w
                            .len
                            .saturating_sub(pos)
                            .min(crate::pieces::IO_CHUNK as u64)
                            as usize;
                        buf.resize(n, 0);
                        read_image(img.source(), &mut buf, off.saturating_add(pos))?;
                        let at = host(w.offset.saturating_add(pos))?;
                        pwrite_all(f, &buf, at, "write")?;
                        pos = pos.saturating_add(n as u64);
                        progress.update(done.saturating_add(bs.blocks_in(pos)));
                    }
                }
            }
            done = done.saturating_add(bs.blocks_in(w.len));
            progress.update(done);
        }
        f.sync_all().map_err(|e| Error::io("sync", e))?;
    }
    // Hidden, for tests only: stop here (SIGSTOP), the superblock written and the undo
    // file not yet switched, so that a test can signal the run at that instant.
    if std::env::var_os("E2I_TEST_STOP_AFTER_SUPERBLOCK").is_some() {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
    }
    Ok(critical.unwrap_or_else(crate::output::pending::critical))
}

/// The superblock an install leaves: its last planned write (see [`plan`]).
fn final_superblock(writes: &[PlannedWrite]) -> Result<[u8; SUPERBLOCK_SIZE]> {
    match writes.last() {
        Some(PlannedWrite {
            offset: SUPERBLOCK_OFFSET,
            data: WriteData::Bytes(b),
            ..
        }) if b.len() == SUPERBLOCK_SIZE => {
            let mut a = [0u8; SUPERBLOCK_SIZE];
            a.copy_from_slice(b);
            Ok(a)
        }
        _ => Err(Error::InvalidInput("no superblock write planned".into())),
    }
}

/// Refuse an undo file name that exists, whatever it is (a file, empty or not, a device, a
/// FIFO, a symlink, dangling or not): it is never written through, truncated or replaced.
pub fn refuse_existing_undo(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("stat undo file", e)),
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            let t = m.file_type();
            let kind = if t.is_symlink() {
                "a symbolic link"
            } else if t.is_block_device() {
                "a block device"
            } else if t.is_char_device() {
                "a character device"
            } else if t.is_fifo() {
                "a FIFO"
            } else if t.is_dir() {
                "a folder"
            } else if t.is_socket() {
                "a socket"
            } else {
                "a file"
            };
            Err(Error::InvalidInput(format!(
                "undo file {} already exists ({kind}); nothing written (remove it or choose a new name)",
                path.display()
            )))
        }
    }
}

/// How `dev` (the device's superblock, found as `which`) is newer than `img`: written,
/// mounted or written to since the image was taken. Fields the image leaves at zero
/// (never set) compare as unknown.
fn newer_than_image(dev: &Superblock, img: &Superblock, which: &DeviceSuper) -> Vec<String> {
    let (d, i) = (dev.raw(), img.raw());
    let mut out = Vec::new();
    let (dw, iw) = (write_time(d), write_time(i));
    if dw > iw {
        out.push(format!(
            "last written {} (image: {})",
            time_text(dw),
            time_text(iw)
        ));
    }
    let (dm, im) = (le::u16(d, S_MNT_COUNT), le::u16(i, S_MNT_COUNT));
    if dm > im {
        out.push(format!("mount count {dm} (image: {im})"));
    }
    let (dk, ik) = (le::u64(d, S_KBYTES_WRITTEN), le::u64(i, S_KBYTES_WRITTEN));
    if ik != 0 && dk > ik {
        out.push(format!("lifetime writes {dk} KiB (image: {ik} KiB)"));
    }
    if !out.is_empty()
        && let DeviceSuper::Backup { block, .. } = which
    {
        out.push(format!("by the backup superblock at block {block}"));
    }
    out
}

/// `s_mnt_count`.
const S_MNT_COUNT: usize = 0x34;
/// `s_kbytes_written`.
const S_KBYTES_WRITTEN: usize = 0x178;

/// A superblock time as UTC text with its seconds (`2023-11-14 22:13:20 UTC (1700000000)`).
fn time_text(t: u64) -> String {
    format!("{} ({t})", crate::progress::utc(t))
}

/// Install `image` onto `device`: [`Install::prepare`], then [`Install::run`].
pub fn install(
    device: &Path,
    image: &Path,
    opts: &InstallOptions,
    progress: &mut dyn Progress,
) -> Result<InstallReport> {
    Install::prepare(device, image, opts)?.run(progress)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // tests compute expected values freely
mod tests {
    use super::*;

    fn bs(n: u32) -> BlockSize {
        BlockSize::new(n).unwrap()
    }

    fn ops(v: &[(u64, u64)]) -> Vec<(FsBlock, u64)> {
        v.iter().map(|&(b, n)| (FsBlock(b), n)).collect()
    }

    #[test]
    fn unix_io_cache_accounting() {
        // Large writes count at once; small ones only when evicted from the 8-block cache.
        let k = bs(1024);
        assert_eq!(unix_io_bytes_written(&ops(&[(100, 32)]), k), 32 * 1024);
        assert_eq!(unix_io_bytes_written(&ops(&[(100, 4)]), k), 0);
        let ten: Vec<(u64, u64)> = (0..10).map(|b| (b, 1)).collect();
        assert_eq!(unix_io_bytes_written(&ops(&ten), k), 2 * 1024);
        // Rewriting a cached block does not evict anything.
        let mut same = ten.clone();
        same.extend([(9, 1), (8, 1)]);
        assert_eq!(unix_io_bytes_written(&ops(&same), k), 2 * 1024);
        // A large write flushes the dirty cache first.
        let mut flush = vec![(0u64, 1u64), (1, 1), (2, 1)];
        flush.push((50, 5));
        assert_eq!(unix_io_bytes_written(&ops(&flush), bs(4096)), 8 * 4096);
    }

    #[test]
    fn standard_backups_are_group_one_of_each_block_size() {
        let l = standard_backup_locations();
        assert_eq!(l[0], (FsBlock(8193), bs(1024)));
        assert_eq!(l[2], (FsBlock(32768), bs(4096)));
        assert_eq!(l.len(), 7);
    }
}
