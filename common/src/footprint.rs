//! The bytes a path stands for: the object itself and the objects that hold its bytes (the
//! disk of a partition, the file under a loop device), with the byte ranges, read from
//! sysfs. Two paths overlap when their footprints share a byte of one object: the output
//! layer refuses an OUTPUT that overlaps what the run reads ([`crate::output`]), and a
//! mounted filesystem is found under any name ([`crate::mount`]).

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::io::ObjectId;
use crate::sysfs::{dir as sysfs_dir, read_u64};

/// A stretch of bytes of one object, and how a path reaches it.
#[derive(Debug, Clone)]
struct Extent {
    obj: ObjectId,
    start: u64,
    end: u64,
    /// "" when the path names the object itself; else how, e.g. "/dev/loop3p1 is a
    /// partition of /dev/loop3, a loop device backed by /tmp/fs.img".
    via: String,
}

/// The bytes a path stands for: the object itself, and the objects that hold its bytes
/// (the disk of a partition, the backing file of a loop device), with the byte ranges; and
/// the devices it is built on where the ranges are not known (device mapper, md).
#[derive(Debug, Default)]
pub struct Footprint {
    direct: Vec<Extent>,
    under: Vec<Extent>,
}

impl Footprint {
    /// The footprint of `path` (stat'ed as `meta`, symlinks followed).
    pub fn of(path: &Path, meta: &Metadata) -> Footprint {
        let mut fp = Footprint::default();
        let id = ObjectId::of_metadata(meta);
        if meta.file_type().is_block_device() {
            return Footprint::of_block(path, id, sysfs_dir(meta.rdev()));
        } else {
            fp.direct.push(Extent {
                obj: id,
                start: 0,
                end: u64::MAX,
                via: String::new(),
            });
        }
        fp
    }

    /// The footprint of bytes `range` of `path` (stat'ed as `meta`, symlinks followed): what
    /// holds those bytes only (a partition of the same disk past them is not in it).
    pub fn of_range(path: &Path, meta: &Metadata, range: std::ops::Range<u64>) -> Footprint {
        let id = ObjectId::of_metadata(meta);
        if meta.file_type().is_block_device() {
            return Footprint::of_block_range(path, id, sysfs_dir(meta.rdev()), range);
        }
        let mut fp = Footprint::default();
        fp.direct.push(Extent {
            obj: id,
            start: range.start,
            end: range.end,
            via: String::new(),
        });
        fp
    }

    /// The footprint of the block device `rdev` (a mounted filesystem's `st_dev`), named as
    /// the kernel names it; `None` when it is no block device (an anonymous device of a
    /// network or in-memory filesystem).
    pub fn of_device(rdev: u64) -> Option<Footprint> {
        let sys = sysfs_dir(rdev)?;
        let name = disk_name(&sys);
        Some(Footprint::of_block(
            Path::new(&name),
            ObjectId::BlockDevice { rdev },
            Some(sys),
        ))
    }

    /// A block device `id` named `path`, described by its sysfs folder `sys`.
    fn of_block(path: &Path, id: ObjectId, sys: Option<PathBuf>) -> Footprint {
        Footprint::of_block_range(path, id, sys, 0..u64::MAX)
    }

    /// Bytes `range` of the block device `id` (clipped to its size).
    fn of_block_range(
        path: &Path,
        id: ObjectId,
        sys: Option<PathBuf>,
        range: std::ops::Range<u64>,
    ) -> Footprint {
        let mut fp = Footprint::default();
        let name = path.display().to_string();
        let size = sys
            .as_ref()
            .and_then(|d| read_u64(&d.join("size")))
            .map_or(u64::MAX, |s| s.saturating_mul(512));
        let end = range.end.min(size);
        let start = range.start.min(end);
        fp.add_block(
            sys,
            id,
            start,
            end.saturating_sub(start),
            String::new(),
            &name,
            0,
        );
        fp
    }

    #[allow(clippy::too_many_arguments)]
    fn add_block(
        &mut self,
        sys: Option<PathBuf>,
        id: ObjectId,
        start: u64,
        len: u64,
        via: String,
        name: &str,
        depth: u32,
    ) {
        let end = start.saturating_add(len);
        self.direct.push(Extent {
            obj: id,
            start,
            end,
            via: via.clone(),
        });
        let Some(sys) = sys else { return };
        if depth > 8 {
            return;
        }
        // "X is a partition of D", then ", a loop device backed by F", ...
        let link = |v: &str, what: String| {
            if v.is_empty() {
                format!("{name} is {what}")
            } else {
                format!("{v}, {what}")
            }
        };
        // A partition: its bytes are the disk's, from its start sector.
        if sys.join("partition").exists()
            && let (Some(pstart), Some(disk)) = (read_u64(&sys.join("start")), sys.parent())
            && let Some(rdev) = read_dev(&disk.join("dev"))
        {
            let dname = disk_name(disk);
            let off = pstart.saturating_mul(512).saturating_add(start);
            let v = link(&via, format!("a partition of {dname}"));
            self.add_block(
                Some(disk.to_path_buf()),
                ObjectId::BlockDevice { rdev },
                off,
                len,
                v,
                name,
                depth + 1,
            );
        }
        // A loop device: its bytes are its backing file's, from the loop's offset.
        if let Ok(b) = std::fs::read_to_string(sys.join("loop/backing_file")) {
            let b = b.trim_end();
            if let Ok(m) = std::fs::metadata(b) {
                let off = read_u64(&sys.join("loop/offset"))
                    .unwrap_or(0)
                    .saturating_add(start);
                let v = link(&via, format!("a loop device backed by {b}"));
                if m.file_type().is_block_device() {
                    // A loop device over another device (a loop over a loop, a partition):
                    // that device's bytes, and what it stands on in turn.
                    self.add_block(
                        sysfs_dir(m.rdev()),
                        ObjectId::of_metadata(&m),
                        off,
                        len,
                        v,
                        name,
                        depth + 1,
                    );
                } else {
                    self.direct.push(Extent {
                        obj: ObjectId::of_metadata(&m),
                        start: off,
                        end: off.saturating_add(len),
                        via: v,
                    });
                }
            }
        }
        // Built on other devices (device mapper, md): where on them is not known here.
        if let Ok(dir) = std::fs::read_dir(sys.join("slaves")) {
            for e in dir.flatten() {
                let Ok(real) = std::fs::canonicalize(e.path()) else {
                    continue;
                };
                let Some(rdev) = read_dev(&real.join("dev")) else {
                    continue;
                };
                let sname = format!("/dev/{}", e.file_name().to_string_lossy());
                let v = link(&via, format!("built on {sname}"));
                // The whole device, not past its end: a partition's bytes on its disk stop
                // where the partition does (the next partition is not under it).
                let size = read_u64(&real.join("size")).map_or(u64::MAX, |s| s.saturating_mul(512));
                let mut sub = Footprint::default();
                sub.add_block(
                    Some(real),
                    ObjectId::BlockDevice { rdev },
                    0,
                    size,
                    v,
                    name,
                    depth + 1,
                );
                self.under.extend(sub.direct);
                self.under.extend(sub.under);
            }
        }
    }

    /// If the two footprints share bytes, how (the text that completes "A is B").
    pub fn overlap(&self, other: &Footprint) -> Option<String> {
        let hit = |a: &Extent, b: &Extent| a.obj == b.obj && a.start < b.end && b.start < a.end;
        for a in &self.direct {
            for b in other.direct.iter().chain(&other.under) {
                if hit(a, b) {
                    return Some(describe(a, b));
                }
            }
        }
        for a in &self.under {
            for b in &other.direct {
                if hit(a, b) {
                    return Some(describe(a, b));
                }
            }
        }
        None
    }
}

fn describe(a: &Extent, b: &Extent) -> String {
    match (a.via.is_empty(), b.via.is_empty()) {
        (true, true) => " (the same file or device)".to_string(),
        (false, true) => format!(" ({})", a.via),
        (true, false) => format!(" ({})", b.via),
        (false, false) => format!(" ({}; {})", a.via, b.via),
    }
}

fn disk_name(sys: &Path) -> String {
    sys.file_name().map_or_else(
        || sys.display().to_string(),
        |n| format!("/dev/{}", n.to_string_lossy()),
    )
}

fn read_dev(p: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(p).ok()?;
    let (ma, mi) = s.trim().split_once(':')?;
    Some(rustix::fs::makedev(ma.parse().ok()?, mi.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_under_other_names_overlaps() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::write(&a, b"x").unwrap();
        std::fs::hard_link(&a, d.path().join("b")).unwrap();
        std::os::unix::fs::symlink("a", d.path().join("l")).unwrap();
        let fa = Footprint::of(&a, &std::fs::metadata(&a).unwrap());
        for other in ["b", "l", "./a"] {
            let p = d.path().join(other);
            let fo = Footprint::of(&p, &std::fs::metadata(&p).unwrap());
            assert!(fa.overlap(&fo).is_some(), "{other}");
        }
        let c = d.path().join("c");
        std::fs::write(&c, b"x").unwrap();
        let fc = Footprint::of(&c, &std::fs::metadata(&c).unwrap());
        assert!(fa.overlap(&fc).is_none());
    }

    /// Partitions, through a sysfs tree laid out as the kernel lays it out (this kernel may
    /// have no partition support to test it with real devices): a loop disk over a file,
    /// with two partitions.
    #[test]
    fn partitions_overlap_their_disk_and_its_file_not_each_other() {
        let d = tempfile::tempdir().unwrap();
        let backing = d.path().join("disk.img");
        std::fs::write(&backing, b"disk").unwrap();
        let disk = d.path().join("devices/virtual/block/loop9");
        let w = |p: PathBuf, v: &str| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        w(disk.join("dev"), "7:9\n");
        w(disk.join("size"), "131072\n");
        w(
            disk.join("loop/backing_file"),
            &format!("{}\n", backing.display()),
        );
        w(disk.join("loop/offset"), "0\n");
        for (n, start) in [(1, 2048), (2, 43008)] {
            let p = disk.join(format!("loop9p{n}"));
            w(p.join("partition"), &format!("{n}\n"));
            w(p.join("start"), &format!("{start}\n"));
            w(p.join("size"), "40960\n");
            w(p.join("dev"), &format!("259:{n}\n"));
        }
        let dev = |maj, min| ObjectId::BlockDevice {
            rdev: rustix::fs::makedev(maj, min),
        };
        let fdisk = Footprint::of_block(Path::new("/dev/loop9"), dev(7, 9), Some(disk.clone()));
        let part = |n: u32| {
            Footprint::of_block(
                Path::new(&format!("/dev/loop9p{n}")),
                dev(259, n),
                Some(disk.join(format!("loop9p{n}"))),
            )
        };
        let file = Footprint::of(&backing, &std::fs::metadata(&backing).unwrap());
        let why = part(1)
            .overlap(&fdisk)
            .expect("a partition overlaps its disk");
        assert!(
            why.contains("/dev/loop9p1 is a partition of /dev/loop9"),
            "{why}"
        );
        assert!(fdisk.overlap(&part(2)).is_some());
        let why = part(2).overlap(&file).expect("and the disk's backing file");
        assert!(why.contains("a loop device backed by"), "{why}");
        assert!(part(1).overlap(&part(2)).is_none(), "disjoint partitions");
        // A device-mapper device built on partition 1 stands on that partition's bytes of
        // the disk only, not on the partition after it (a capture of partition 2 to a file
        // on the mapped filesystem was refused as writing into what it read).
        let dm = d.path().join("devices/virtual/block/dm-7");
        w(dm.join("dev"), "253:7\n");
        w(dm.join("size"), "40960\n");
        std::fs::create_dir_all(dm.join("slaves")).unwrap();
        std::os::unix::fs::symlink(disk.join("loop9p1"), dm.join("slaves/loop9p1")).unwrap();
        let fdm = Footprint::of_block(Path::new("/dev/dm-7"), dev(253, 7), Some(dm));
        let why = fdm
            .overlap(&part(1))
            .expect("dm overlaps what it is built on");
        assert!(why.contains("built on /dev/loop9p1"), "{why}");
        assert!(fdm.overlap(&fdisk).is_some());
        assert!(
            fdm.overlap(&part(2)).is_none(),
            "{:?}",
            fdm.overlap(&part(2))
        );
    }
}
