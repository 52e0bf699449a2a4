//! Partition tables: where the filesystem of `-P N` lies on a disk (a device, a dd image, or
//! the virtual disk of a qcow2 image — anything behind [`ReadAt`]).
//!
//! [`read_table`] finds a GPT (primary header, else the backup at the disk's end; 512- or
//! 4096-byte logical sectors, told apart by where the "EFI PART" signature is) or an MBR
//! (primaries 1–4, logical partitions of the extended chains from 5, as Linux numbers them).
//! A disk with neither is one entry, number 0, the whole disk. Damage that leaves a usable
//! table (a bad primary GPT header, a cut EBR chain, overlapping entries, entries past the
//! disk's end) is reported in [`Table::notes`]; damage that leaves none is an error.
//!
//! Every size read from the disk is bounded before anything is allocated or read: a GPT
//! entry array of at most [`MAX_GPT_ARRAY_BYTES`], at most [`MAX_LOGICAL`] logical
//! partitions, each EBR visited once.
//!
//! Hand-written rather than `gptman`/`mbrman` (both evaluated at 3.1.1/0.6.1): they read
//! through `Read + Seek`, not a positioned reader; `gptman` allocates the header's entry
//! count unchecked and `mbrman` adds disk-derived `u32` sector numbers unchecked (a panic
//! with overflow checks on); both pull in serialisation crates (bincode 1, wincode) and `nix`.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

mod gpt;
mod mbr;
mod names;

use std::fmt;
use std::ops::Range;

use crate::error::CorruptKind;
use crate::ext4::Superblock;
use crate::ext4::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, feature};
use crate::io::ReadAt;
use crate::units::BlockSize;
use crate::{Error, Result};

pub use gpt::MAX_GPT_ARRAY_BYTES;
pub use mbr::MAX_LOGICAL;

/// The sector size of MBR tables (Linux reads them in 512-byte units whatever the device).
pub const MBR_SECTOR: u64 = 512;

/// Which table a disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// A GUID partition table read through its primary or (`backup`) its backup header.
    Gpt { sector_size: u32, backup: bool },
    /// An MBR (DOS) table.
    Mbr,
    /// No table: the disk is one filesystem (or nothing known).
    None,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::Gpt { sector_size, .. } => write!(f, "gpt ({sector_size}-byte sectors)"),
            Scheme::Mbr => f.write_str("mbr"),
            Scheme::None => f.write_str("none"),
        }
    }
}

/// A GPT partition type GUID, as stored (the first three fields little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        b[10..].iter().try_for_each(|x| write!(f, "{x:02X}"))
    }
}

/// What a partition's table says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartType {
    Gpt(Guid),
    Mbr(u8),
    /// The whole disk of a disk without a table.
    Disk,
}

impl PartType {
    /// A common type's name ("Linux filesystem", "EFI System", "Linux swap", ...).
    pub fn name(&self) -> Option<&'static str> {
        match self {
            PartType::Gpt(g) => names::gpt_name(g),
            PartType::Mbr(id) => names::mbr_name(*id),
            PartType::Disk => Some("whole disk"),
        }
    }

    /// An MBR container of logical partitions (ids 0x05, 0x0f, 0x85).
    pub fn is_extended(&self) -> bool {
        matches!(self, PartType::Mbr(id) if mbr::is_extended(*id))
    }
}

impl fmt::Display for PartType {
    /// `Linux filesystem`, `0x83 Linux`, or the bare GUID / id when it has no name here.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.name()) {
            (PartType::Gpt(_), Some(n)) | (PartType::Disk, Some(n)) => f.write_str(n),
            (PartType::Gpt(g), None) => write!(f, "{g}"),
            (PartType::Mbr(id), Some(n)) => write!(f, "{id:#04x} {n}"),
            (PartType::Mbr(id), None) => write!(f, "{id:#04x}"),
            (PartType::Disk, None) => f.write_str("-"),
        }
    }
}

/// One partition: where it is in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Linux's number: GPT slot + 1; MBR primaries 1–4, logical from 5; 0 for a whole disk.
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    pub ptype: PartType,
}

impl Partition {
    /// The byte after its last (saturating: a table cannot make this overflow, sizes are
    /// checked when read).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }

    pub fn range(&self) -> Range<u64> {
        self.start..self.end()
    }
}

/// Damage or oddities in a table that still leaves it usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The primary GPT header (or its entries) is damaged: the backup header was used.
    GptBackupUsed { primary: CorruptKind },
    /// The primary GPT is fine, its backup is not (repair with `sgdisk -e` or `gdisk`).
    GptBackupDamaged { backup: CorruptKind },
    /// A GPT entry whose sectors are no byte range (last before first, or past 64-bit
    /// byte offsets): not listed.
    GptEntryInvalid {
        slot: u32,
        first_lba: u64,
        last_lba: u64,
    },
    /// An extended-partition chain that stops early: the logical partitions read before the
    /// damage are listed.
    EbrChainCut { damage: CorruptKind },
    /// Two partitions share bytes.
    Overlap { first: u32, second: u32 },
    /// A partition runs past the disk's end (a truncated image, a wrong table).
    PastDisk {
        number: u32,
        end: u64,
        disk_bytes: u64,
    },
    /// Notes past the first [`MAX_NOTES`], not listed one by one.
    More { count: usize },
}

/// Notes kept one by one (a hostile table can have thousands of odd entries).
pub const MAX_NOTES: usize = 32;

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::GptBackupUsed { primary } => {
                write!(f, "{primary}; using the backup GPT header")
            }
            Note::GptBackupDamaged { backup } => {
                write!(f, "backup GPT damaged ({backup}); the primary is used")
            }
            Note::GptEntryInvalid {
                slot,
                first_lba,
                last_lba,
            } => write!(
                f,
                "gpt entry {}: lbas {first_lba} to {last_lba} are not a byte range; ignored",
                u64::from(*slot).saturating_add(1)
            ),
            Note::EbrChainCut { damage } => {
                write!(f, "{damage}; logical partitions after it are not listed")
            }
            Note::Overlap { first, second } => {
                write!(f, "partitions {first} and {second} overlap")
            }
            Note::PastDisk {
                number,
                end,
                disk_bytes,
            } => write!(
                f,
                "partition {number} ends at byte {end}, past the end of the disk ({disk_bytes} bytes)"
            ),
            Note::More { count } => write!(f, "{count} more problems with the table"),
        }
    }
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub scheme: Scheme,
    /// Size of the disk read.
    pub disk_bytes: u64,
    /// In number order. A disk without a table has one entry, number 0.
    pub partitions: Vec<Partition>,
    pub notes: Vec<Note>,
}

impl Table {
    /// Partition `number`; a missing one is an error naming those that exist.
    pub fn get(&self, number: u32) -> Result<&Partition> {
        if let Some(p) = self.partitions.iter().find(|p| p.number == number) {
            return Ok(p);
        }
        let have: Vec<String> = self
            .partitions
            .iter()
            .map(|p| p.number.to_string())
            .collect();
        let table = match self.scheme {
            Scheme::Gpt { .. } => "the GPT",
            Scheme::Mbr => "the MBR table",
            Scheme::None => {
                return Err(Error::InvalidInput(format!(
                    "no partition {number}: no partition table found (GPT or MBR); the whole disk is partition 0"
                )));
            }
        };
        Err(Error::InvalidInput(match have.len() {
            0 => format!("no partition {number}: {table} is empty"),
            1 => format!("no partition {number}: {table} has partition {}", have[0]),
            _ => format!(
                "no partition {number}: {table} has partitions {}",
                have.join(", ")
            ),
        }))
    }
}

/// Read the partition table of `disk`.
pub fn read_table(disk: &dyn ReadAt) -> Result<Table> {
    let disk_bytes = disk.size();
    let mut sector0 = [0u8; 512];
    let n = disk.read_at(&mut sector0, 0)?;
    let sector0 = &sector0[..n];
    let protective = mbr::is_protective(sector0);
    let mut t = match gpt::read(disk, protective)? {
        Some(t) => t,
        None => match mbr::read(disk, sector0)? {
            Some(t) => t,
            None => Table {
                scheme: Scheme::None,
                disk_bytes,
                partitions: vec![Partition {
                    number: 0,
                    start: 0,
                    size: disk_bytes,
                    ptype: PartType::Disk,
                }],
                notes: Vec::new(),
            },
        },
    };
    t.partitions.sort_by_key(|p| p.number);
    check_layout(&mut t);
    if t.notes.len() > MAX_NOTES {
        let count = t.notes.len().saturating_sub(MAX_NOTES);
        t.notes.truncate(MAX_NOTES);
        t.notes.push(Note::More { count });
    }
    Ok(t)
}

/// Note partitions that overlap (an extended container and its logical partitions aside) or
/// run past the disk's end.
fn check_layout(t: &mut Table) {
    let mut by_start: Vec<&Partition> = t
        .partitions
        .iter()
        .filter(|p| !p.ptype.is_extended() && p.size > 0)
        .collect();
    by_start.sort_by_key(|p| (p.start, p.number));
    let mut notes = Vec::new();
    // The partition reaching furthest so far: any later start before its end overlaps it.
    let mut reach: Option<&Partition> = None;
    for p in by_start {
        if let Some(r) = reach
            && p.start < r.end()
            && notes.len() < 16
        {
            notes.push(Note::Overlap {
                first: r.number.min(p.number),
                second: r.number.max(p.number),
            });
        }
        if reach.is_none_or(|r| p.end() > r.end()) {
            reach = Some(p);
        }
    }
    for p in &t.partitions {
        if p.end() > t.disk_bytes && t.scheme != Scheme::None {
            notes.push(Note::PastDisk {
                number: p.number,
                end: p.end(),
                disk_bytes: t.disk_bytes,
            });
        }
    }
    t.notes.extend(notes);
}

/// The ext2/3/4 filesystem a partition holds, by its primary superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// "ext2", "ext3" or "ext4", as blkid tells them apart.
    pub kind: &'static str,
    pub block_size: BlockSize,
    pub blocks_count: u64,
    pub uuid: [u8; 16],
}

impl FsInfo {
    /// Size in bytes (`None` if it does not fit in 64 bits: the superblock parser refuses
    /// those, so this does not happen for a parsed one).
    pub fn bytes(&self) -> Option<u64> {
        self.block_size.bytes_of(self.blocks_count)
    }

    /// The UUID as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub fn uuid_text(&self) -> String {
        let mut s = String::with_capacity(36);
        for (i, b) in self.uuid.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// The filesystem at the start of `src`, if its primary superblock is a valid ext2/3/4 one.
pub fn probe_fs(src: &dyn ReadAt) -> Option<FsInfo> {
    let mut raw = [0u8; SUPERBLOCK_SIZE];
    if src.read_at(&mut raw, SUPERBLOCK_OFFSET).ok()? != SUPERBLOCK_SIZE {
        return None;
    }
    let sb = Superblock::parse(&raw, None).ok()?;
    Some(FsInfo {
        kind: ext_kind(&sb),
        block_size: sb.block_size,
        blocks_count: sb.blocks_count,
        uuid: sb.uuid(),
    })
}

/// ext4 when it has a feature ext3 lacks, ext3 with a journal, else ext2 (as blkid names
/// them).
fn ext_kind(sb: &Superblock) -> &'static str {
    const EXT3_INCOMPAT: u32 = feature::INCOMPAT_FILETYPE
        | feature::INCOMPAT_RECOVER
        | feature::INCOMPAT_META_BG
        | feature::INCOMPAT_JOURNAL_DEV;
    const EXT3_RO_COMPAT: u32 =
        feature::RO_COMPAT_SPARSE_SUPER | feature::RO_COMPAT_LARGE_FILE | 0x0004; // btree_dir, never used but allowed
    if sb.feature_incompat & !EXT3_INCOMPAT != 0 || sb.feature_ro_compat & !EXT3_RO_COMPAT != 0 {
        "ext4"
    } else if sb.has_compat(feature::COMPAT_HAS_JOURNAL) {
        "ext3"
    } else {
        "ext2"
    }
}

/// Partition `number` of a disk, with its table and the filesystem found in it.
#[derive(Debug, Clone)]
pub struct Located {
    pub table: Table,
    pub partition: Partition,
    /// The filesystem in the partition (read within it), if any.
    pub fs: Option<FsInfo>,
}

impl Located {
    /// How many bytes the filesystem runs past the partition's end (a partition shrunk
    /// under its filesystem), or `None` when it fits (or none was found).
    pub fn overrun(&self) -> Option<u64> {
        let fs = self.fs.as_ref()?.bytes()?;
        fs.checked_sub(self.partition.size).filter(|&n| n > 0)
    }
}

/// Find partition `number` of `disk` and the filesystem in it. A missing partition, or one
/// that starts past the disk's end, is an error saying what there is.
pub fn locate(disk: &dyn ReadAt, number: u32) -> Result<Located> {
    let table = read_table(disk)?;
    let partition = *table.get(number)?;
    if partition.ptype.is_extended() {
        return Err(Error::InvalidInput(format!(
            "partition {number} is an extended partition (a container of logical partitions, numbered from 5), not a filesystem"
        )));
    }
    if partition.start >= table.disk_bytes && partition.size > 0 {
        return Err(Error::InvalidInput(format!(
            "partition {number} starts at byte {}, past the end of the disk ({} bytes)",
            partition.start, table.disk_bytes
        )));
    }
    let fs = probe_fs(&Window::new(disk, partition.start, partition.size));
    Ok(Located {
        table,
        partition,
        fs,
    })
}

/// `inner` seen from byte `start`, `len` bytes long: reads stop at the window's end (short
/// reads, as at the end of a file), so nothing past a partition is read through it.
#[derive(Debug)]
pub struct Window<S: ReadAt> {
    inner: S,
    start: u64,
    len: u64,
}

impl<S: ReadAt> Window<S> {
    /// `len` is cut to what `inner` holds past `start`.
    pub fn new(inner: S, start: u64, len: u64) -> Self {
        let len = len.min(inner.size().saturating_sub(start));
        Window { inner, start, len }
    }
}

impl<S: ReadAt> ReadAt for Window<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let room = self.len.saturating_sub(offset);
        let n = usize::try_from(room).map_or(buf.len(), |r| r.min(buf.len()));
        if n == 0 {
            return Ok(0);
        }
        // offset < len ≤ inner.size() - start: no overflow.
        let at = self.start.saturating_add(offset);
        let got = self.inner.read_at(&mut buf[..n], at)?;
        Ok(got)
    }

    fn size(&self) -> u64 {
        self.len
    }

    fn will_need(&self, offset: u64, len: u64) {
        if offset < self.len {
            let n = len.min(self.len.saturating_sub(offset));
            self.inner.will_need(self.start.saturating_add(offset), n);
        }
    }

    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        if offset >= self.len {
            return Ok(None);
        }
        let at = self.start.saturating_add(offset);
        Ok(self.inner.data_region(at)?.and_then(|r| {
            let s = r.start.saturating_sub(self.start).max(offset);
            let e = r.end.saturating_sub(self.start).min(self.len);
            (s < e).then_some(s..e)
        }))
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]
mod tests;
