//! Is a device or image file mounted? Read from /proc/self/mountinfo (and loop devices'
//! backing files), as libext2fs's `ext2fs_check_if_mounted` does from /proc/mounts.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// How a filesystem is mounted. `device` names the mounted block device when it is not the
/// path asked about itself (a partition of a loop device over an image file, the loop
/// device of `mount -o loop`, a partition of the disk asked about): messages name it, so the
/// user knows what to unmount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountState {
    NotMounted,
    ReadOnly {
        mount_point: String,
        device: Option<String>,
    },
    ReadWrite {
        mount_point: String,
        device: Option<String>,
    },
}

impl MountState {
    /// Where it is mounted, for a message after "mounted" (or "mounted read-write"):
    /// `as /dev/loop0p1 on /mnt`, or `on /mnt` when the path is the mounted device.
    pub fn place(&self) -> String {
        match self {
            MountState::NotMounted => String::new(),
            MountState::ReadOnly {
                mount_point,
                device,
            }
            | MountState::ReadWrite {
                mount_point,
                device,
            } => match device {
                Some(d) => format!("as {d} on {mount_point}"),
                None => format!("on {mount_point}"),
            },
        }
    }
}

/// A mounted block device `dev` by name: `/dev/` and the kernel's name for it (as sysfs gives
/// it), else the source mountinfo gives, else its number.
fn device_name(dev: u64, source: &str) -> String {
    let (ma, mi) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let kernel = fs::read_to_string(format!("/sys/dev/block/{ma}:{mi}/uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(|n| format!("/dev/{n}")))
        })
        .filter(|n| {
            fs::metadata(n).is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == dev)
        });
    kernel.unwrap_or_else(|| {
        if source.starts_with('/') {
            source.to_string()
        } else {
            format!("block device {ma}:{mi}")
        }
    })
}

/// The state for a mount of `dev` (described by mountinfo's `source`) found for a path
/// whose own device number is `own` (0: a file).
fn mounted(dev: u64, source: &str, mount_point: String, rw: bool, own: u64) -> MountState {
    let device = (dev != own).then(|| device_name(dev, source));
    if rw {
        MountState::ReadWrite {
            mount_point,
            device,
        }
    } else {
        MountState::ReadOnly {
            mount_point,
            device,
        }
    }
}

fn dev_of(major: u64, minor: u64) -> u64 {
    // Linux majors and minors are 12 and 20 bits; anything larger matches no device.
    let part = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    rustix::fs::makedev(part(major), part(minor))
}

/// The block devices (as `st_rdev`) that stand for `path`: itself if it is a block device,
/// else every loop device whose backing file is `path`.
fn devices_for(path: &Path) -> Vec<u64> {
    let Ok(meta) = fs::metadata(path) else {
        return Vec::new();
    };
    if meta.file_type().is_block_device() {
        return vec![meta.rdev()];
    }
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/sys/block") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end();
        let same =
            fs::metadata(backing).is_ok_and(|b| b.dev() == meta.dev() && b.ino() == meta.ino());
        if !same {
            continue;
        }
        if let Ok(d) = fs::read_to_string(e.path().join("dev"))
            && let Some((ma, mi)) = d.trim().split_once(':')
            && let (Ok(ma), Ok(mi)) = (ma.parse(), mi.parse())
        {
            out.push(dev_of(ma, mi));
        }
    }
    out
}

/// Check whether `path` (a block device or an image file) holds, anywhere in it, a mounted
/// filesystem: a mounted block device sharing bytes with it under any alias — itself, a
/// loop device over the file, a partition of such a loop device or of the disk, the disk
/// of a partition, a loop device over a loop device (see [`crate::footprint::Footprint`]).
/// What writes `path` in place asks this: a byte written into a mounted filesystem
/// corrupts it whichever name it was written through.
pub fn mount_state(path: &Path) -> MountState {
    mount_state_in(path, 0..u64::MAX)
}

/// Check whether the filesystem starting at byte `offset` of `path` is mounted: a mounted
/// block device shares bytes with its superblock's first 2 KiB (the one readers of that
/// filesystem ask about; another partition of the same disk mounted says nothing of it).
pub fn mount_state_at(path: &Path, offset: u64) -> MountState {
    mount_state_in(path, offset..offset.saturating_add(2048))
}

fn mount_state_in(path: &Path, range: std::ops::Range<u64>) -> MountState {
    let Ok(meta) = fs::metadata(path) else {
        return MountState::NotMounted;
    };
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return MountState::NotMounted;
    }
    let target = crate::footprint::Footprint::of_range(path, &meta, range);
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return MountState::NotMounted;
    };
    let own = if meta.file_type().is_block_device() {
        meta.rdev()
    } else {
        0
    };
    let mut state = MountState::NotMounted;
    // One footprint per mounted device (a device mounted on several points is looked at once).
    let mut seen: Vec<(u64, bool)> = Vec::new();
    for line in info.lines() {
        let Some((dev, mp, rw, source)) = parse_mountinfo(line) else {
            continue;
        };
        let hit = match seen.iter().find(|(d, _)| *d == dev) {
            Some((_, hit)) => *hit,
            None => {
                let hit = crate::footprint::Footprint::of_device(dev)
                    .is_some_and(|m| target.overlap(&m).is_some());
                seen.push((dev, hit));
                hit
            }
        };
        if !hit {
            continue;
        }
        if rw {
            return mounted(dev, source, mp, true, own);
        }
        state = mounted(dev, source, mp, false, own);
    }
    state
}

/// A mountinfo line's device (`st_dev` of what is mounted), mount point, whether it is
/// mounted read-write, and its mount source (`/dev/loop0p1`, or a word such as `tmpfs`).
fn parse_mountinfo(line: &str) -> Option<(u64, String, bool, &str)> {
    // id parent major:minor root mount-point options [optional...] - type source super-options
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() < 6 {
        return None;
    }
    let (ma, mi) = f[2].split_once(':')?;
    let (ma, mi) = (ma.parse::<u64>().ok()?, mi.parse::<u64>().ok()?);
    let rw = f[5].split(',').any(|o| o == "rw");
    let source = f
        .iter()
        .skip(6)
        .skip_while(|&&w| w != "-")
        .nth(2)
        .copied()
        .unwrap_or("");
    Some((dev_of(ma, mi), f[4].to_string(), rw, source))
}

/// Check whether partition `number` of `path` is mounted: the kernel's partition device of
/// the disk `path` is, or of a loop device (`losetup -P`) backed by the image `path`.
pub fn partition_mount_state(path: &Path, number: u32) -> MountState {
    let mut parts = Vec::new();
    for disk in devices_for(path) {
        let sys = format!(
            "/sys/dev/block/{}:{}",
            rustix::fs::major(disk),
            rustix::fs::minor(disk)
        );
        let Ok(dir) = fs::read_dir(&sys) else {
            continue;
        };
        for e in dir.flatten() {
            let is_it = fs::read_to_string(e.path().join("partition"))
                .is_ok_and(|n| n.trim().parse::<u32>() == Ok(number));
            if is_it
                && let Ok(d) = fs::read_to_string(e.path().join("dev"))
                && let Some((ma, mi)) = d.trim().split_once(':')
                && let (Ok(ma), Ok(mi)) = (ma.parse(), mi.parse())
            {
                parts.push(dev_of(ma, mi));
            }
        }
    }
    state_of(&parts)
}

/// A mounted filesystem, as found by the device number its files carry (`st_dev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    /// Where it is mounted (the first mount of it: a bind mount shows it again).
    pub mount_point: String,
    /// Its type (`ext4`, `devtmpfs`, `tmpfs`).
    pub fstype: String,
    /// The block device it is mounted from, named as [`MountState::place`] names one.
    pub device: String,
}

/// A loop device over the regular file `path` (or a partition of one) that another program
/// holds exclusively — device mapper, md, an `O_EXCL` open — by name: writing the file
/// changes what that holder sees under it, as writing the device would (which the
/// exclusive open refuses). Asked by opening each with `O_EXCL` (read-only, at once
/// closed): the kernel refuses it (EBUSY) only while a holder has it.
pub fn held_loop_device(path: &Path) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    for e in fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let same = fs::metadata(backing.trim_end())
            .is_ok_and(|b| b.dev() == meta.dev() && b.ino() == meta.ino());
        if !same {
            continue;
        }
        // The device and its partitions (`losetup -P`: loop0p1 …, folders of loop0).
        let mut names = vec![name.clone()];
        if let Ok(parts) = fs::read_dir(e.path()) {
            names.extend(
                parts
                    .flatten()
                    .map(|p| p.file_name().to_string_lossy().into_owned())
                    .filter(|p| p.starts_with(&name) && p.len() > name.len()),
            );
        }
        for n in names {
            let dev = format!("/dev/{n}");
            let busy = fs::OpenOptions::new()
                .read(true)
                .custom_flags(
                    (rustix::fs::OFlags::EXCL | rustix::fs::OFlags::CLOEXEC).bits() as i32,
                )
                .open(&dev)
                .is_err_and(|e| e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()));
            if busy {
                return Some(dev);
            }
        }
    }
    None
}

/// The filesystem whose files carry `st_dev` `dev`, if it is mounted.
pub fn mounted_by_dev(dev: u64) -> Option<Mounted> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (d, mp, _, source) = parse_mountinfo(line)?;
        (d == dev).then(|| Mounted {
            mount_point: mp,
            fstype: mountinfo_fstype(line).to_string(),
            device: device_name(dev, source),
        })
    })
}

/// A mountinfo line's filesystem type (the word after ` - `).
fn mountinfo_fstype(line: &str) -> &str {
    line.split(' ')
        .skip(6)
        .skip_while(|&w| w != "-")
        .nth(1)
        .unwrap_or("")
}

/// The mount state of whichever of `devs` is mounted (read-write first).
fn state_of(devs: &[u64]) -> MountState {
    if devs.is_empty() {
        return MountState::NotMounted;
    }
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return MountState::NotMounted;
    };
    let mut state = MountState::NotMounted;
    for line in info.lines() {
        let Some((dev, mp, rw, source)) = parse_mountinfo(line) else {
            continue;
        };
        if !devs.contains(&dev) {
            continue;
        }
        // A partition's device is never the disk or image asked about.
        if rw {
            return mounted(dev, source, mp, true, 0);
        }
        state = mounted(dev, source, mp, false, 0);
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mount source follows the ` - type` separator, after any optional fields.
    #[test]
    fn mountinfo_lines_give_device_point_mode_and_source() {
        let line = "36 35 7:1 / /mnt/a rw,noatime shared:1 master:2 - ext4 /dev/loop0p1 rw";
        let (dev, mp, rw, source) = parse_mountinfo(line).unwrap();
        assert_eq!(dev, dev_of(7, 1));
        assert_eq!((mp.as_str(), rw, source), ("/mnt/a", true, "/dev/loop0p1"));
        let line = "40 35 0:52 / /run ro,nosuid - tmpfs tmpfs ro";
        let (_, _, rw, source) = parse_mountinfo(line).unwrap();
        assert_eq!((rw, source), (false, "tmpfs"));
        assert_eq!(mountinfo_fstype(line), "tmpfs");
        assert_eq!(parse_mountinfo("1 2 3"), None);
        // A device sysfs does not know is named by its mount source, else by its number.
        let gone = dev_of(4095, 1_048_000);
        assert_eq!(device_name(gone, "/dev/sdz9"), "/dev/sdz9");
        assert_eq!(device_name(gone, "none"), "block device 4095:1048000");
    }
}
