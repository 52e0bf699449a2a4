//! `e2i-to-qcow2` helpers beyond the capture itself (which is `capture(.., Format::Qcow2, ..)`).

use std::path::Path;

use crate::ops::capture::{CaptureOptions, open_source, scan_source};
use crate::progress::Progress;
use crate::qcow2::Qcow2Layout;
use crate::qcow2::writer::nonzero_blocks;
use crate::{Error, Result};

/// Scan `source` and plan its qcow2 image without writing anything (`--dry-run`).
pub fn plan(
    source: &Path,
    opts: &CaptureOptions,
    progress: &mut dyn Progress,
) -> Result<Qcow2Layout> {
    let src = open_source(source, opts.offset)?;
    let (fs, res) = scan_source(src, opts, false, progress)?;
    let bs = fs.sb.block_size;
    let (runs, _) = nonzero_blocks(&fs.src, &res.map, bs, progress)?;
    let vsize = res
        .map
        .blocks_count()
        .checked_mul(u64::from(bs))
        .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))?;
    Qcow2Layout::plan(vsize, bs.trailing_zeros(), &runs)
}
