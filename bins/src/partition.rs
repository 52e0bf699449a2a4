//! `-P N` and `--list`: partitions of a SOURCE or DEVICE (a disk, a disk image, or a qcow2
//! image of one), for every tool.

use std::path::Path;

use e2i::io::ReadAt;
use e2i::partition::{self, Located, Partition, Table};

use crate::json;

/// Where `-P N` puts the filesystem: its byte offset, and how far it may be read.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub start: u64,
    /// The partition's size, or `None` with `--past-partition-end` when the filesystem runs
    /// past its end.
    pub limit: Option<u64>,
    pub located: Located,
}

/// Open `source` (a file, device or qcow2 image) as a whole disk.
pub fn open_disk(source: &Path) -> anyhow::Result<Box<dyn ReadAt>> {
    e2i::ops::capture::open_source(source, 0)
        .map_err(|e| anyhow::Error::new(e).context(source.display().to_string()))
}

/// Read `source`'s table and find partition `number`. The table's notes, and a filesystem
/// that runs past the partition's end, are said on stderr as warnings (unless `quiet`).
/// Past the end nothing is read unless `past_end` (`--past-partition-end`).
pub fn choose(
    tool: &str,
    source: &Path,
    number: u32,
    past_end: bool,
    quiet: bool,
) -> anyhow::Result<Chosen> {
    let name = source.display().to_string();
    let disk = open_disk(source)?;
    let located = partition::locate(&*disk, number)
        .map_err(|e| anyhow::Error::new(e).context(name.clone()))?;
    if !quiet {
        for n in &located.table.notes {
            eprintln!("{tool}: warning: {name}: {n}");
        }
    }
    let p = located.partition;
    let mut limit = Some(p.size);
    if let (Some(over), Some(fs)) = (located.overrun(), &located.fs) {
        if past_end {
            limit = None;
        }
        if !quiet {
            eprintln!(
                "{tool}: warning: {name}: {}",
                overrun_text(&p, fs, over, past_end)
            );
        }
    }
    Ok(Chosen {
        start: p.start,
        limit,
        located,
    })
}

/// "partition 2 is N bytes, but its ext4 filesystem is M bytes (...)".
pub fn overrun_text(p: &Partition, fs: &partition::FsInfo, over: u64, past_end: bool) -> String {
    format!(
        "partition {} is {} bytes, but its {} filesystem is {} blocks of {} bytes, {over} bytes more: {}",
        p.number,
        p.size,
        fs.kind,
        fs.blocks_count,
        fs.block_size,
        if past_end {
            "reading past the partition's end (--past-partition-end)"
        } else {
            "nothing past the partition's end is read (--past-partition-end reads on)"
        }
    )
}

/// One `--list` line: number, start, size, type, and the filesystem or `-`.
pub fn list_line(p: &Partition, fs: Option<&partition::FsInfo>) -> String {
    let what = match fs {
        Some(f) => {
            let mut s = format!(
                "{}, {} blocks of {} bytes, UUID {}",
                f.kind,
                f.blocks_count,
                f.block_size,
                f.uuid_text()
            );
            if let Some(over) = f
                .bytes()
                .and_then(|b| b.checked_sub(p.size))
                .filter(|&n| n > 0)
            {
                s.push_str(&format!(" (runs {over} bytes past the partition's end)"));
            }
            s
        }
        None => "-".to_string(),
    };
    format!(
        "{:>3} {:>14} {:>14}  {:<24} {what}",
        p.number,
        p.start,
        p.size,
        p.ptype.to_string()
    )
}

/// One `--list --json` element.
pub fn list_json(t: &Table, p: &Partition, fs: Option<&partition::FsInfo>) -> String {
    let mut o = json::Obj::new()
        .num("number", u64::from(p.number))
        .num("start", p.start)
        .num("size", p.size)
        .str("table", scheme_name(t.scheme))
        .str("type", &type_code(p.ptype))
        .opt_str("type_name", p.ptype.name());
    o = match fs {
        Some(f) => o
            .str("fs", f.kind)
            .num("block_size", f.block_size.bytes())
            .num("blocks_count", f.blocks_count)
            .str("uuid", &f.uuid_text()),
        None => o.null("fs"),
    };
    o.finish()
}

/// "gpt", "mbr" or "none".
fn scheme_name(s: partition::Scheme) -> &'static str {
    match s {
        partition::Scheme::Gpt { .. } => "gpt",
        partition::Scheme::Mbr => "mbr",
        partition::Scheme::None => "none",
    }
}

/// The type as the table stores it: a GPT type GUID, an MBR id as `0x83`, `-` for a disk.
fn type_code(t: partition::PartType) -> String {
    match t {
        partition::PartType::Gpt(g) => g.to_string(),
        partition::PartType::Mbr(id) => format!("{id:#04x}"),
        partition::PartType::Disk => "-".to_string(),
    }
}

/// The filesystem each partition holds (read within the partition).
pub fn probe_all(disk: &dyn ReadAt, t: &Table) -> Vec<Option<partition::FsInfo>> {
    t.partitions
        .iter()
        .map(|p| {
            if p.ptype.is_extended() {
                None
            } else {
                partition::probe_fs(&partition::Window::new(disk, p.start, p.size))
            }
        })
        .collect()
}

/// Refuse partition `number` of `source` when its kernel partition device (of the disk, or
/// of a loop device over the image) is mounted read-write, or mounted at all with `any`.
/// `why` ends the message ("an image of it would be inconsistent (use -f ...)").
pub fn refuse_mounted(source: &Path, number: u32, any: bool, why: &str) -> anyhow::Result<()> {
    use e2i::mount::{MountState, partition_mount_state};
    let state = partition_mount_state(source, number);
    let rw = match state {
        MountState::NotMounted => return Ok(()),
        MountState::ReadOnly { .. } => false,
        MountState::ReadWrite { .. } => true,
    };
    if rw || any {
        anyhow::bail!(
            "{}: partition {number} is mounted{} {}; {why}",
            source.display(),
            if rw { " read-write" } else { "" },
            state.place()
        );
    }
    Ok(())
}
