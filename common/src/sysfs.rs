//! Facts about block devices from sysfs.

use std::path::{Path, PathBuf};

/// The sysfs directory of block device `rdev` (a disk or a partition), if it has one.
pub(crate) fn dir(rdev: u64) -> Option<PathBuf> {
    let (ma, mi) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    std::fs::canonicalize(format!("/sys/dev/block/{ma}:{mi}")).ok()
}

/// A sysfs file holding one unsigned number.
pub(crate) fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}
