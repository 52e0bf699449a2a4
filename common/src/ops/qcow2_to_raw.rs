//! `qcow2-to-raw`: the virtual disk of a qcow2 image as a raw image.
//!
//! The input is any image [`Qcow2Image`] accepts (backing chains followed); [`crate::ops::input`] opens it (a qcow2
//! on stdin, in a FIFO or compressed is spooled as it is read, since qcow2 needs random access). The
//! output goes through [`sparse::write_raw`]: a new file gets holes for unallocated, zero and
//! all-zero clusters; an existing target is updated in place.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use crate::blockmap::{BlockMap, BlockRun};
use crate::io::ReadAt;
use crate::progress::Progress;
use crate::qcow2::Qcow2Image;
use crate::sparse::{self, CopyStats, RawTarget};
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// The raw image to produce: which blocks of `unit` bytes hold stored data.
#[derive(Debug, Clone)]
pub struct RawPlan {
    /// Bytes per map block: the cluster size, within 1 KiB..64 KiB (a 512-byte cluster is
    /// copied with its neighbour, a 2 MiB one in 32 blocks).
    pub unit: BlockSize,
    /// The virtual size: `map.blocks_count()` blocks, the last of which may be partial (a
    /// disk of an odd number of 512-byte sectors).
    pub size: u64,
    /// Blocks to copy.
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
    image: &Qcow2Image<S>,
    with_zero_clusters: bool,
    device: bool,
) -> Result<RawPlan> {
    plan_in(image, cluster_unit(image)?, with_zero_clusters, device)
}

/// The image's cluster size as a block size: cluster bits are 9..=21 (the header check),
/// clamped to 10..=16.
pub fn cluster_unit<S: ReadAt>(image: &Qcow2Image<S>) -> Result<BlockSize> {
    let cb = image.cluster_bits().clamp(10, 16);
    BlockSize::from_log(cb.saturating_sub(10))
        .ok_or_else(|| Error::InvalidInput(format!("cluster bits {cb}")))
}

/// [`plan`] in blocks of `unit` bytes.
pub fn plan_in<S: ReadAt>(
    image: &Qcow2Image<S>,
    unit: BlockSize,
    with_zero_clusters: bool,
    device: bool,
) -> Result<RawPlan> {
    // Whole 512-byte sectors: the reader cuts a size between two down, as qemu does.
    let size = image.virtual_size();
    let units = unit.blocks_covering(size);
    // What the chain stores, as bytes of the disk (a backing file's ranges need not be
    // aligned to this image's clusters): the blocks holding them.
    let ranges = image.stored_ranges(with_zero_clusters)?;
    let scaled = ranges.into_iter().filter_map(|r| covering(unit, r, units));
    let mut all: Vec<BlockRun> = scaled.collect();
    if with_zero_clusters && let Some(extra) = fs_selection(image, unit, units, device) {
        all.extend(extra);
    }
    Ok(RawPlan {
        unit,
        size,
        map: BlockMap::from_runs(all, units),
    })
}

/// The blocks of `unit` bytes that hold any of the bytes `r`, below `units` blocks.
fn covering(unit: BlockSize, r: std::ops::Range<u64>, units: u64) -> Option<BlockRun> {
    let s = unit.block_of(r.start);
    let e = FsBlock(unit.blocks_covering(r.end).min(units));
    (s < e).then(|| BlockRun::new(s, e.saturating_since(s)))
}

/// The blocks e2image -r selects in the filesystem of the virtual disk (for a block-device
/// target when `device`), in blocks of `unit` bytes; `None` when the disk holds no readable
/// filesystem (any qcow2 is accepted: then the stored clusters are all there is to write).
fn fs_selection<S: ReadAt>(
    image: &Qcow2Image<S>,
    unit: BlockSize,
    units: u64,
    device: bool,
) -> Option<Vec<BlockRun>> {
    use crate::ext4::scan::{ScanOptions, scan};
    let fs = crate::ext4::Filesystem::open(image, crate::ext4::OpenOptions::default()).ok()?;
    let opts = ScanOptions {
        all_data: false,
        output_is_block_device: device,
        strict: false,
        want_dir_blocks: false,
        walkers: None,
    };
    let res = scan(&fs, opts, None).ok()?;
    let bs = fs.sb.block_size;
    let runs = res
        .map
        .runs()
        .iter()
        .filter_map(|r| covering(unit, r.bytes(bs)?, units))
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
    let mut stats =
        sparse::write_raw_sized(image, &plan.map, plan.unit, plan.size, target, progress)?;
    // The map ends with the disk: only a partial last block reaches past it, by design.
    stats.past_end_blocks = 0;
    Ok(stats)
}
