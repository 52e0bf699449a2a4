//! `qcow2-to-raw`: the virtual disk of a qcow2 image as a raw image.
//!
//! The input is any image [`Qcow2Reader`] accepts; [`crate::ops::input`] opens it (a qcow2
//! on stdin, in a FIFO or compressed is spooled first, since qcow2 needs random access). The
//! output goes through [`sparse::write_raw`]: a new file gets holes for unallocated, zero and
//! all-zero clusters; an existing target is updated in place.

use crate::blockmap::{BlockMap, Run};
use crate::io::ReadAt;
use crate::progress::Progress;
use crate::qcow2::Qcow2Reader;
use crate::sparse::{self, CopyStats, RawTarget};
use crate::{Error, Result};

/// The raw image to produce: which units of `unit` bytes hold stored data.
#[derive(Debug, Clone)]
pub struct RawPlan {
    /// Bytes per map block: the cluster size when it divides the virtual size, else 512.
    pub unit: u32,
    /// Units to copy; `blocks_count * unit` is the virtual size.
    pub map: BlockMap,
}

/// Plan the conversion. `with_zero_clusters` also selects clusters flagged as zero (v3), so
/// that an in-place update writes zeros there; new files leave them as holes either way.
/// A target updated in place (`with_zero_clusters`) also gets, when the virtual disk holds an
/// ext2/3/4 filesystem, every block `e2image -r` of that filesystem selects (`device`: as
/// for a block device, whole inode tables): it then receives zeros where the image stores
/// none, rather than keeping what an earlier filesystem left there, and `-c` compares what
/// e2image compares.
pub fn plan<S: ReadAt>(
    image: &Qcow2Reader<S>,
    with_zero_clusters: bool,
    device: bool,
) -> Result<RawPlan> {
    let size = image.virtual_size();
    let cb = image.cluster_bits();
    let cs = 1u64 << cb;
    let unit: u64 = if size.is_multiple_of(cs) {
        cs
    } else if size.is_multiple_of(512) {
        512
    } else {
        return Err(Error::Unsupported(format!(
            "virtual size {size} is not a multiple of 512 bytes"
        )));
    };
    let per = cs / unit;
    let units = size / unit;
    let runs = image.allocated_runs(with_zero_clusters)?;
    let scaled = runs.into_iter().filter_map(|r| {
        let s = r.start.get().checked_mul(per)?;
        let e = r.end().get().checked_mul(per)?.min(units);
        (s < e).then(|| Run {
            start: s,
            len: e - s,
        })
    });
    let mut all: Vec<Run> = scaled.collect();
    if with_zero_clusters && let Some(extra) = fs_selection(image, unit, device) {
        all.extend(extra);
    }
    Ok(RawPlan {
        unit: unit as u32,
        map: BlockMap::from_runs(all, units),
    })
}

/// The blocks e2image -r selects in the filesystem of the virtual disk (for a block-device
/// target when `device`), in units of `unit` bytes; `None` when the disk holds no readable
/// filesystem (any qcow2 is accepted: then the stored clusters are all there is to write).
fn fs_selection<S: ReadAt>(image: &Qcow2Reader<S>, unit: u64, device: bool) -> Option<Vec<Run>> {
    use crate::ext4::scan::{ScanOptions, scan};
    let fs = crate::ext4::Filesystem::open(image, crate::ext4::OpenOptions::default()).ok()?;
    let opts = ScanOptions {
        all_data: false,
        output_is_block_device: device,
        strict: false,
        want_dir_blocks: false,
    };
    let res = scan(&fs, opts, None).ok()?;
    let bs = u64::from(fs.sb.block_size);
    let runs = res
        .map
        .runs()
        .iter()
        .filter_map(|r| {
            let s = r.start.checked_mul(bs)? / unit;
            let e = r.end().checked_mul(bs)?.div_ceil(unit);
            Some(Run {
                start: s,
                len: e - s,
            })
        })
        .collect();
    Some(runs)
}

/// Write the raw image of `image` (a qcow2 image's virtual disk) to `target`.
pub fn convert<S: ReadAt>(
    image: &S,
    plan: &RawPlan,
    target: RawTarget<'_>,
    progress: &mut dyn Progress,
) -> Result<CopyStats> {
    sparse::write_raw(image, &plan.map, plan.unit, target, progress)
}
