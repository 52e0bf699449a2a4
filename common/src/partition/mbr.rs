//! MBR (DOS) partition tables, with extended partitions' chains of extended boot records,
//! numbered as Linux numbers them (block/partitions/msdos.c): primaries by slot 1–4, then
//! the logical partitions from 5 in chain order.

use std::collections::HashSet;

use super::{MBR_SECTOR, Note, PartType, Partition, Scheme, Table};
use crate::Result;
use crate::bytes::le;
use crate::error::CorruptKind;
use crate::io::ReadAt;

/// Most logical partitions read (Linux stops at 256 partitions a disk; the chain is cut
/// there with a note).
pub const MAX_LOGICAL: usize = 252;

/// Most extended boot records visited in one chain (empty links count too, so that a
/// chain of empty EBRs through a large extended partition is not walked sector by sector).
const MAX_EBRS: usize = 2 * MAX_LOGICAL;

const TABLE: usize = 446;
const ENTRY: usize = 16;
const SIGNATURE: usize = 510;
const PROTECTIVE: u8 = 0xEE;

/// Entry field offsets.
mod ent {
    pub const BOOT: usize = 0;
    pub const TYPE: usize = 4;
    pub const START: usize = 8;
    pub const SECTORS: usize = 12;
}

/// Extended-partition ids: DOS, W95 (LBA), Linux.
pub(super) fn is_extended(id: u8) -> bool {
    matches!(id, 0x05 | 0x0F | 0x85)
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    boot: u8,
    id: u8,
    start: u32,
    sectors: u32,
}

fn entries(sector: &[u8]) -> Option<[Entry; 4]> {
    if sector.len() < 512 || le::u16(sector, SIGNATURE) != 0xAA55 {
        return None;
    }
    let table = sector.get(TABLE..SIGNATURE)?;
    let mut es = table.chunks_exact(ENTRY);
    Some(std::array::from_fn(|_| {
        // Four 16-byte entries fill the 64 bytes before the signature.
        let e = es.next().unwrap_or(&[0u8; ENTRY]);
        Entry {
            boot: e[ent::BOOT],
            id: e[ent::TYPE],
            start: le::u32(e, ent::START),
            sectors: le::u32(e, ent::SECTORS),
        }
    }))
}

impl Entry {
    fn used(&self) -> bool {
        self.id != 0 && self.sectors != 0
    }
}

/// Sector 0 is an MBR with a GPT-protective entry.
pub(super) fn is_protective(sector0: &[u8]) -> bool {
    entries(sector0).is_some_and(|es| es.iter().any(|e| e.id == PROTECTIVE))
}

fn bytes(sectors: u64) -> u64 {
    // Sector numbers here are sums of two u32s at most: far below 2^55.
    sectors.saturating_mul(MBR_SECTOR)
}

/// The MBR table in `sector0`, if it is one: the boot signature, boot flags 0 or 0x80, at
/// least one partition.
pub(super) fn read(disk: &dyn ReadAt, sector0: &[u8]) -> Result<Option<Table>> {
    let Some(es) = entries(sector0) else {
        return Ok(None);
    };
    if es.iter().any(|e| e.boot & 0x7F != 0) || !es.iter().any(Entry::used) {
        return Ok(None);
    }
    let mut partitions = Vec::new();
    let mut notes = Vec::new();
    let mut next_number = 5u32;
    for (i, e) in (1u32..).zip(es.iter()) {
        if !e.used() {
            continue;
        }
        partitions.push(Partition {
            number: i,
            start: bytes(e.start.into()),
            size: bytes(e.sectors.into()),
            ptype: PartType::Mbr(e.id),
        });
        if is_extended(e.id) {
            let cut = logical(disk, e, &mut partitions, &mut next_number)?;
            notes.extend(cut.map(|damage| Note::EbrChainCut { damage }));
        }
    }
    Ok(Some(Table {
        scheme: Scheme::Mbr,
        disk_bytes: disk.size(),
        partitions,
        notes,
    }))
}

fn ebr_damage(sector: u64, problem: &'static str) -> CorruptKind {
    CorruptKind::MbrEbr {
        offset: bytes(sector),
        problem,
    }
}

/// Follow the chain of the extended partition `ext`, adding its logical partitions. Returns
/// the damage that cut the chain, if any (what was read before it stays).
fn logical(
    disk: &dyn ReadAt,
    ext: &Entry,
    out: &mut Vec<Partition>,
    number: &mut u32,
) -> Result<Option<CorruptKind>> {
    let ext_start = u64::from(ext.start);
    let ext_end = ext_start.saturating_add(ext.sectors.into());
    let mut this = ext_start;
    let mut this_size = u64::from(ext.sectors);
    let mut seen = HashSet::new();
    let mut found = 0usize;
    loop {
        if seen.len() == MAX_EBRS {
            return Ok(Some(ebr_damage(
                this,
                "is past the 504th link of the chain",
            )));
        }
        if !seen.insert(this) {
            return Ok(Some(ebr_damage(this, "the chain loops back to it")));
        }
        if !(ext_start..ext_end).contains(&this) {
            return Ok(Some(ebr_damage(
                this,
                "lies outside its extended partition",
            )));
        }
        let mut s = [0u8; 512];
        if disk.read_at(&mut s, bytes(this))? < s.len() {
            return Ok(Some(ebr_damage(this, "lies past the end of the disk")));
        }
        let Some(es) = entries(&s) else {
            // An empty extended partition need not hold an EBR (Linux reads none then).
            if this == ext_start {
                return Ok(None);
            }
            return Ok(Some(ebr_damage(this, "has no 0x55AA signature")));
        };
        for (i, e) in es.iter().enumerate() {
            if !e.used() || is_extended(e.id) {
                continue;
            }
            let (rel, n) = (u64::from(e.start), u64::from(e.sectors));
            // Entries 3 and 4 often hold garbage: Linux takes them only when they lie
            // inside this EBR's part of the extended partition.
            if i >= 2
                && (rel.saturating_add(n) > this_size
                    || this.saturating_add(rel).saturating_add(n) > ext_end)
            {
                continue;
            }
            if found == MAX_LOGICAL {
                return Ok(Some(ebr_damage(
                    this,
                    "is past the 252nd logical partition",
                )));
            }
            found = found.saturating_add(1);
            out.push(Partition {
                number: *number,
                start: bytes(this.saturating_add(rel)),
                size: bytes(n),
                ptype: PartType::Mbr(e.id),
            });
            *number = number.saturating_add(1);
        }
        // The next link: the first extended entry, relative to the extended partition.
        let Some(link) = es.iter().find(|e| e.sectors != 0 && is_extended(e.id)) else {
            return Ok(None);
        };
        this = ext_start.saturating_add(link.start.into());
        this_size = link.sectors.into();
    }
}

/// For tests: an MBR or EBR sector holding `entries` (boot flag, id, start, sectors).
#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(super) fn sector(entries: &[(u8, u8, u32, u32)]) -> [u8; 512] {
    let mut s = [0u8; 512];
    for (i, &(boot, id, start, n)) in entries.iter().enumerate() {
        let e = TABLE + i * ENTRY;
        s[e + ent::BOOT] = boot;
        s[e + ent::TYPE] = id;
        le::set_u32(&mut s, e + ent::START, start);
        le::set_u32(&mut s, e + ent::SECTORS, n);
    }
    le::set_u16(&mut s, SIGNATURE, 0xAA55);
    s
}
