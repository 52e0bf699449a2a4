//! GUID partition tables (UEFI 2.10, section 5.3).

use super::{Guid, Note, PartType, Partition, Scheme, Table};
use crate::bytes::le;
use crate::error::CorruptKind;
use crate::io::ReadAt;
use crate::{Error, Result};

/// Largest partition entry array read (entries × entry size): 8192 entries of 128 bytes.
/// The specification's minimum is 16 KiB; tools write 16 KiB. A larger one is refused
/// rather than allocated.
pub const MAX_GPT_ARRAY_BYTES: u64 = 1 << 20;

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The header fields a CRC covers at least (UEFI: HeaderSize ≥ 92).
const MIN_HEADER_SIZE: u32 = 92;
const ENTRY_MIN: u32 = 128;

/// Header field offsets.
mod hdr {
    pub const SIGNATURE: usize = 0;
    pub const HEADER_SIZE: usize = 12;
    pub const HEADER_CRC: usize = 16;
    pub const MY_LBA: usize = 24;
    pub const ALTERNATE_LBA: usize = 32;
    pub const FIRST_USABLE: usize = 40;
    pub const LAST_USABLE: usize = 48;
    pub const ENTRY_LBA: usize = 72;
    pub const ENTRY_COUNT: usize = 80;
    pub const ENTRY_SIZE: usize = 84;
    pub const ENTRIES_CRC: usize = 88;
}

/// Entry field offsets.
mod ent {
    pub const TYPE: usize = 0;
    pub const FIRST_LBA: usize = 32;
    pub const LAST_LBA: usize = 40;
}

/// A header that passed its checks, with its entry array.
struct Header {
    alternate_lba: u64,
    entries: Vec<u8>,
    entry_size: u32,
}

fn field(lba: u64, ss: u32, field: &'static str, value: u64, problem: &'static str) -> Error {
    Error::Corrupt(CorruptKind::GptHeaderField {
        lba,
        sector_size: ss,
        field,
        value,
        problem,
    })
}

/// Byte offset of `lba` in sectors of `ss` bytes.
fn at(lba: u64, ss: u32, what: &'static str) -> Result<u64> {
    lba.checked_mul(u64::from(ss))
        .ok_or_else(|| field(lba, ss, what, lba, "overflows a byte offset"))
}

/// Does a GPT header signature sit at `lba`?
fn has_signature(disk: &dyn ReadAt, lba: u64, ss: u32) -> Result<bool> {
    let mut sig = [0u8; 8];
    let n = disk.read_at(&mut sig, at(lba, ss, "lba")?)?;
    Ok(n == sig.len() && &sig == SIGNATURE)
}

/// Read and check the header at `lba` and its entry array.
fn read_header(disk: &dyn ReadAt, lba: u64, ss: u32) -> Result<Header> {
    let ssz = ss as usize;
    let mut h = vec![0u8; ssz];
    let off = at(lba, ss, "lba")?;
    if disk.read_at(&mut h, off)? < ssz || &h[hdr::SIGNATURE..hdr::SIGNATURE + 8] != SIGNATURE {
        return Err(Error::Corrupt(CorruptKind::GptSignature {
            lba,
            sector_size: ss,
        }));
    }
    let hsize = le::u32(&h, hdr::HEADER_SIZE);
    if !(MIN_HEADER_SIZE..=ss).contains(&hsize) {
        return Err(field(
            lba,
            ss,
            "header size",
            hsize.into(),
            "is not 92 to a sector",
        ));
    }
    let stored = le::u32(&h, hdr::HEADER_CRC);
    let mut copy = h[..hsize as usize].to_vec();
    le::set_u32(&mut copy, hdr::HEADER_CRC, 0);
    let computed = crc32fast::hash(&copy);
    if stored != computed {
        return Err(Error::Corrupt(CorruptKind::GptHeaderChecksum {
            lba,
            sector_size: ss,
            stored,
            computed,
        }));
    }
    let my_lba = le::u64(&h, hdr::MY_LBA);
    if my_lba != lba {
        return Err(field(
            lba,
            ss,
            "its own lba",
            my_lba,
            "is not where it lies",
        ));
    }
    let (first, last) = (
        le::u64(&h, hdr::FIRST_USABLE),
        le::u64(&h, hdr::LAST_USABLE),
    );
    if first > last {
        return Err(field(
            lba,
            ss,
            "first usable lba",
            first,
            "lies after the last usable lba",
        ));
    }
    let entry_size = le::u32(&h, hdr::ENTRY_SIZE);
    if entry_size < ENTRY_MIN || !entry_size.is_power_of_two() {
        return Err(field(
            lba,
            ss,
            "entry size",
            entry_size.into(),
            "is not 128 × 2^n",
        ));
    }
    let count = le::u32(&h, hdr::ENTRY_COUNT);
    let array = u64::from(count).saturating_mul(u64::from(entry_size));
    if array > MAX_GPT_ARRAY_BYTES {
        return Err(field(
            lba,
            ss,
            "entry count",
            count.into(),
            "makes an entry array larger than 1 MiB",
        ));
    }
    let entry_lba = le::u64(&h, hdr::ENTRY_LBA);
    let array_at = at(entry_lba, ss, "entry array lba")?;
    if array_at
        .checked_add(array)
        .is_none_or(|end| end > disk.size())
    {
        return Err(field(
            lba,
            ss,
            "entry array lba",
            entry_lba,
            "puts the entries past the end of the disk",
        ));
    }
    let array = usize::try_from(array)
        .map_err(|_| field(lba, ss, "entry count", count.into(), "is too large"))?;
    let mut entries = vec![0u8; array];
    if disk.read_at(&mut entries, array_at)? < entries.len() {
        return Err(field(
            lba,
            ss,
            "entry array lba",
            entry_lba,
            "cannot be read whole",
        ));
    }
    let stored = le::u32(&h, hdr::ENTRIES_CRC);
    let computed = crc32fast::hash(&entries);
    if stored != computed {
        return Err(Error::Corrupt(CorruptKind::GptEntriesChecksum {
            lba: entry_lba,
            sector_size: ss,
            stored,
            computed,
        }));
    }
    Ok(Header {
        alternate_lba: le::u64(&h, hdr::ALTERNATE_LBA),
        entries,
        entry_size,
    })
}

/// The disk's last sector of `ss` bytes (where the backup header belongs).
fn last_lba(disk: &dyn ReadAt, ss: u32) -> Option<u64> {
    disk.size()
        .checked_div(u64::from(ss))
        .and_then(|n| n.checked_sub(1))
}

/// A corruption error's kind (I/O errors are passed on by the caller).
fn kind(e: Error) -> Result<CorruptKind> {
    match e {
        Error::Corrupt(k) => Ok(k),
        e => Err(e),
    }
}

/// The GPT of `disk`, if it has one. `protective` says sector 0 holds an MBR entry of type
/// 0xEE: then a missing primary header is damage (the backup is looked for), not the
/// absence of a GPT.
pub(super) fn read(disk: &dyn ReadAt, protective: bool) -> Result<Option<Table>> {
    // The primary header is at LBA 1: byte 512 or byte 4096.
    let ss = if has_signature(disk, 1, 512)? {
        Some(512)
    } else if has_signature(disk, 1, 4096)? {
        Some(4096)
    } else {
        None
    };
    if ss.is_none() && !protective {
        return Ok(None);
    }
    let sizes: &[u32] = match ss {
        Some(512) => &[512],
        Some(_) => &[4096],
        None => &[512, 4096],
    };
    let primary_err = match ss {
        Some(s) => match read_header(disk, 1, s) {
            Ok(h) => {
                let mut notes = Vec::new();
                if let Some(e) = check_backup(disk, s, h.alternate_lba)? {
                    notes.push(Note::GptBackupDamaged { backup: e });
                }
                return table(disk, s, false, &h, notes).map(Some);
            }
            Err(e) => kind(e)?,
        },
        None => CorruptKind::GptSignature {
            lba: 1,
            sector_size: 512,
        },
    };
    // The primary is damaged: the backup sits in the disk's last sector.
    let mut backup_err = None;
    for &s in sizes {
        let Some(lba) = last_lba(disk, s) else {
            continue;
        };
        match read_header(disk, lba, s) {
            Ok(h) => {
                let notes = vec![Note::GptBackupUsed {
                    primary: primary_err,
                }];
                return table(disk, s, true, &h, notes).map(Some);
            }
            Err(e) => {
                let k = kind(e)?;
                // Keep the most telling error: a header that is there but damaged.
                if backup_err.is_none() || !matches!(k, CorruptKind::GptSignature { .. }) {
                    backup_err = Some(k);
                }
            }
        }
    }
    let backup = backup_err.unwrap_or(CorruptKind::GptSignature {
        lba: 0,
        sector_size: 512,
    });
    Err(Error::Corrupt(CorruptKind::GptHeadersDamaged {
        primary: Box::new(primary_err),
        backup: Box::new(backup),
    }))
}

/// Check the backup header the primary points to; its damage, if any (only noted: the
/// primary is used).
fn check_backup(disk: &dyn ReadAt, ss: u32, alternate: u64) -> Result<Option<CorruptKind>> {
    match read_header(disk, alternate, ss) {
        Ok(_) => Ok(None),
        Err(e) => kind(e).map(Some),
    }
}

fn table(
    disk: &dyn ReadAt,
    ss: u32,
    backup: bool,
    h: &Header,
    mut notes: Vec<Note>,
) -> Result<Table> {
    let mut partitions = Vec::new();
    let esz = h.entry_size as usize;
    for (slot, e) in h.entries.chunks_exact(esz).enumerate() {
        let mut g = [0u8; 16];
        g.copy_from_slice(&e[ent::TYPE..ent::TYPE + 16]);
        if g == [0u8; 16] {
            continue;
        }
        // At most 1 MiB / 128 entries.
        let slot = u32::try_from(slot).unwrap_or(u32::MAX);
        let (first, last) = (le::u64(e, ent::FIRST_LBA), le::u64(e, ent::LAST_LBA));
        let start = first.checked_mul(u64::from(ss));
        let size = last
            .checked_sub(first)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(u64::from(ss)));
        let (Some(start), Some(size)) = (start, size) else {
            notes.push(Note::GptEntryInvalid {
                slot,
                first_lba: first,
                last_lba: last,
            });
            continue;
        };
        partitions.push(Partition {
            number: slot.saturating_add(1),
            start,
            size,
            ptype: PartType::Gpt(Guid(g)),
        });
    }
    Ok(Table {
        scheme: Scheme::Gpt {
            sector_size: ss,
            backup,
        },
        disk_bytes: disk.size(),
        partitions,
        notes,
    })
}
