//! Writing a normal e2image image (`e2image DEV FILE`; behaviour spec §2).
//!
//! Unlike e2image, which writes the header last after seeking back, every offset is computed
//! first, so the image can be written strictly sequentially (to a pipe) as well as into a
//! sparse file (all-zero inode-table blocks become holes, as e2image leaves them) or onto a
//! block device (zero blocks written, so no stale bytes remain).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{HEADER_SIZE, Header, Layout};
use crate::blockmap::BlockRun;
use crate::error::CorruptKind;
use crate::ext4::bitmap;
use crate::ext4::desc::DescTable;
use crate::ext4::{Filesystem, Superblock};
use crate::io::{ReadAt, SeqWrite, pwrite_all, write_error};
use crate::pieces::zero_runs;
use crate::progress::{Progress, Unit};
use crate::units::FsBlock;
use crate::{Error, Result};

/// The host-specific header fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderInfo {
    /// `gethostname()`, at most 64 bytes.
    pub hostname: Vec<u8>,
    /// `st_rdev` of the source (0 for a regular file), truncated to 32 bits.
    pub fs_device: u32,
    /// The source operand as typed; at most 63 bytes are stored.
    pub device_name: Vec<u8>,
    /// `st_dev` and `st_ino` of the image file (0 for a pipe we cannot stat).
    pub image_device: u32,
    pub image_inode: u32,
    /// Seconds since the epoch.
    pub time: u64,
    /// e2i's marks, stored in the header's reserved words (nothing when none is set).
    pub marks: crate::mark::Marks,
}

impl HeaderInfo {
    /// Gather the fields as e2image does: the host name, `stat(source)`, `fstat(output)` and
    /// the current time (or `SOURCE_DATE_EPOCH` when set, for reproducible images).
    pub fn collect(source: &Path, output: Option<&File>) -> HeaderInfo {
        use std::os::unix::ffi::OsStrExt;
        let hostname = std::fs::read("/proc/sys/kernel/hostname")
            .map(|mut h| {
                while h.last().is_some_and(|&c| c == b'\n' || c == 0) {
                    h.pop();
                }
                h.truncate(64);
                h
            })
            .unwrap_or_default();
        // e2image stores the low 32 bits of these (its fields are __u32).
        let low = |v: u64| u32::try_from(v & u64::from(u32::MAX)).unwrap_or(u32::MAX);
        let fs_device = std::fs::metadata(source).map_or(0, |m| low(m.rdev()));
        let (image_device, image_inode) = output
            .and_then(|f| f.metadata().ok())
            .map_or((0, 0), |m| (low(m.dev()), low(m.ino())));
        let time = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            });
        HeaderInfo {
            hostname,
            fs_device,
            device_name: source.as_os_str().as_bytes().to_vec(),
            image_device,
            image_inode,
            time,
            marks: crate::mark::Marks::default(),
        }
    }
}

/// Where the image goes.
pub enum NormalTarget<'a> {
    /// A new, empty regular file: zero inode-table blocks are left as holes.
    NewFile(&'a File),
    /// A block device (or an existing file to overwrite): every byte is written.
    Device(&'a File),
    /// A pipe: written sequentially, zeros included. A failed write is named by the byte
    /// the pipe had taken.
    Stream(&'a mut dyn SeqWrite),
}

/// What [`write_normal`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NormalStats {
    /// Image size in bytes.
    pub size: u64,
    /// Inode-table blocks copied.
    pub itable_blocks: u64,
    /// Of those, all-zero blocks (holes in a new file).
    pub zero_blocks: u64,
    /// Bytes actually written.
    pub bytes_written: u64,
}

/// Sequential output with hole support.
struct Out<'a, 'b> {
    target: &'b mut NormalTarget<'a>,
    pos: u64,
    written: u64,
    zero_buf: Vec<u8>,
}

impl Out<'_, '_> {
    fn data(&mut self, buf: &[u8]) -> Result<()> {
        match self.target {
            NormalTarget::NewFile(f) | NormalTarget::Device(f) => {
                pwrite_all(f, buf, self.pos, "write")?;
            }
            NormalTarget::Stream(w) => {
                w.write_all(buf).map_err(|e| write_error(*w, e))?;
            }
        }
        // Byte counts of what went through memory: far below 2^64.
        self.pos = self.pos.saturating_add(buf.len() as u64);
        self.written = self.written.saturating_add(buf.len() as u64);
        Ok(())
    }

    /// `n` zero bytes: a hole in a new file, written elsewhere.
    fn zeros(&mut self, mut n: u64) -> Result<()> {
        if let NormalTarget::NewFile(_) = self.target {
            // At most the planned image size.
            self.pos = self.pos.saturating_add(n);
            return Ok(());
        }
        while n > 0 {
            // At most the buffer's length.
            let k = usize::try_from(n).map_or(self.zero_buf.len(), |n| n.min(self.zero_buf.len()));
            let z = std::mem::take(&mut self.zero_buf);
            let r = self.data(&z[..k]);
            self.zero_buf = z;
            r?;
            n = n.saturating_sub(k as u64);
        }
        Ok(())
    }
}

/// Check every group's inode table location as e2image does before copying it.
fn check_inode_tables(sb: &Superblock, desc: &DescTable) -> Result<()> {
    let ipb = u64::from(sb.inode_blocks_per_group);
    for group in 0..sb.group_count {
        let block = desc.inode_table(group);
        if block == FsBlock(0) {
            return Err(CorruptKind::NormalInodeTableMissing { group }.into());
        }
        if block < sb.first_block()
            || block
                .checked_add(ipb)
                .is_none_or(|e| e.get() > sb.blocks_count)
        {
            return Err(CorruptKind::NormalInodeTableOutside {
                group,
                block: block.get(),
                blocks: ipb,
                fs_blocks: sb.blocks_count,
            }
            .into());
        }
    }
    Ok(())
}

/// Runs of inode tables that lie back to back on disk (flex_bg): `(first block, blocks)`.
/// The tables passed [`check_inode_tables`]: every end lies inside the filesystem, so no
/// sum here can overflow.
fn itable_runs(sb: &Superblock, desc: &DescTable) -> Vec<BlockRun> {
    let ipb = u64::from(sb.inode_blocks_per_group);
    let mut runs: Vec<BlockRun> = Vec::new();
    for g in 0..sb.group_count {
        let it = desc.inode_table(g);
        match runs.last_mut() {
            Some(r) if r.checked_end() == Some(it) => r.len = r.len.saturating_add(ipb),
            _ => runs.push(BlockRun::new(it, ipb)),
        }
    }
    runs
}

/// Write the normal image of `fs` to `target`.
pub fn write_normal<S: ReadAt>(
    fs: &Filesystem<S>,
    info: &HeaderInfo,
    mut target: NormalTarget<'_>,
    progress: &mut dyn Progress,
) -> Result<NormalStats> {
    let sb = &fs.sb;
    let layout = Layout::new(sb)?;
    layout.check_offsets_fit()?;
    if let NormalTarget::Device(f) = &target {
        crate::output::check_room(crate::io::block_device_size(f)?, layout.size)?;
    }
    bitmap::check_geometry(sb)?;
    if let Some(b) = fs.backup_superblock {
        // libext2fs clears every group's UNINIT flags when it opens through a backup, so the
        // bitmaps of never-initialised groups would be read as garbage (e2image refuses -b
        // here too).
        return Err(Error::InvalidInput(format!(
            "a normal image cannot be made through the backup superblock at block {b}: use the raw or qcow2 format"
        )));
    }
    let desc = fs.desc.clone();
    check_inode_tables(sb, &desc)?;
    let bitmaps = bitmap::read_bitmaps(&fs.src, sb, &desc)?;

    let bs = layout.block_size.as_usize();
    let mut hostname = [0u8; 64];
    let hl = info.hostname.len().min(64);
    hostname[..hl].copy_from_slice(&info.hostname[..hl]);
    let mut fs_device_name = [0u8; 64];
    let dl = info.device_name.len().min(63);
    fs_device_name[..dl].copy_from_slice(&info.device_name[..dl]);
    // check_offsets_fit: every offset is at most offset_inodemap, which fits 32 bits.
    let offset32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let header = Header {
        hostname,
        fs_device: info.fs_device,
        fs_device_name,
        fs_uuid: sb.uuid(),
        fs_blocksize: sb.block_size,
        image_device: info.image_device,
        image_inode: info.image_inode,
        image_time: info.time,
        offset_super: offset32(layout.offset_super),
        offset_inode: offset32(layout.offset_inode),
        offset_inodemap: offset32(layout.offset_inodemap),
        offset_blockmap: offset32(layout.offset_blockmap),
        e2i_flags: if info.marks.scrambled {
            super::E2I_FLAG_SCRAMBLED
        } else {
            0
        },
    };

    let mut out = Out {
        target: &mut target,
        pos: 0,
        written: 0,
        zero_buf: vec![0u8; bs.max(64 << 10)],
    };
    let mut stats = NormalStats {
        size: layout.size,
        ..NormalStats::default()
    };

    // Header block, superblock block, descriptors.
    let mut block = vec![0u8; bs];
    block[..HEADER_SIZE].copy_from_slice(&header.encode());
    out.data(&block)?;
    block.fill(0);
    block[..1024].copy_from_slice(sb.raw());
    out.data(&block)?;
    out.data(desc.raw())?;
    debug_assert_eq!(out.pos, layout.offset_inode);

    // Inode tables, read in large pieces; all-zero blocks are holes in a new file. Every
    // table lies inside the filesystem (check_inode_tables), whose byte size fits
    // (Layout::new): the block arithmetic below cannot overflow.
    let total = u64::from(sb.group_count).saturating_mul(u64::from(sb.inode_blocks_per_group));
    progress.phase("copying inode tables", total, Unit::Blocks);
    let block_size = layout.block_size;
    let runs = itable_runs(sb, &desc);
    // A table past the end of the source is refused before anything is read.
    let src_size = fs.src.size();
    if let Some(r) = runs
        .iter()
        .find(|r| block_size.offset_of(r.end()).is_none_or(|e| e > src_size))
    {
        return Err(CorruptKind::NormalInodeTablePastSource {
            // The first block the source does not hold whole.
            start: r.start.get().max(block_size.block_of(src_size).get()),
            end: r.end().get(),
            source_size: fs.src.size(),
        }
        .into());
    }
    crate::pieces::for_each_chunk_of_runs(&fs.src, &runs, block_size, &mut |_, data| {
        zero_runs(data, bs, &mut |i, k, zero| {
            // i and k count blocks of this buffer.
            let piece = i.saturating_mul(bs)..i.saturating_add(k).saturating_mul(bs);
            if zero {
                stats.zero_blocks = stats.zero_blocks.saturating_add(k as u64);
                out.zeros(piece.len() as u64)
            } else {
                out.data(&data[piece])
            }
        })?;
        let n = block_size.blocks_in(data.len() as u64);
        stats.itable_blocks = stats.itable_blocks.saturating_add(n);
        progress.update(stats.itable_blocks);
        Ok(())
    })?;
    progress.finish();
    debug_assert_eq!(out.pos, layout.offset_blockmap);

    // Bitmaps, each padded with zeros to a whole block.
    for map in [&bitmaps.block, &bitmaps.inode] {
        out.data(map)?;
        // To the next block boundary.
        let len = map.len() as u64;
        let pad = block_size
            .bytes_of(block_size.blocks_covering(len))
            .unwrap_or(len)
            .saturating_sub(len);
        if pad > 0 {
            // Below one block.
            let z = vec![0u8; usize::try_from(pad).unwrap_or(0)];
            out.data(&z)?;
        }
    }
    debug_assert_eq!(out.pos, layout.size);
    stats.bytes_written = out.written;
    match &mut target {
        NormalTarget::NewFile(f) => f
            .set_len(layout.size)
            .map_err(|e| Error::io_at("truncate", layout.size, e))?,
        NormalTarget::Device(_) => {}
        NormalTarget::Stream(w) => w.flush().map_err(|e| write_error(*w, e))?,
    }
    Ok(stats)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)] // tests compute expected values freely
mod tests {
    use super::*;
    use crate::ext4::OpenOptions;
    use crate::io::MemSource;
    use crate::progress::NoProgress;

    /// Damaged superblocks, descriptors and bitmaps: the writer fails or writes an image of
    /// exactly the announced size, never panics (run in debug for overflow checks).
    #[test]
    fn mutated_filesystems_never_panic() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/sample.ext4");
        let fsb = std::fs::read(path).expect("testdata/sample.ext4");
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut m = fsb.clone();
            for _ in 0..(1 + next() % 3) {
                // superblock, descriptors, the bitmaps and the start of the inode tables
                let at = 1024 + (next() % (6 * 1024)) as usize;
                m[at] = next() as u8;
            }
            let Ok(fs) = Filesystem::open(MemSource(m), OpenOptions::default()) else {
                continue;
            };
            let mut out = Vec::new();
            if let Ok(st) = write_normal(
                &fs,
                &HeaderInfo::default(),
                NormalTarget::Stream(&mut out),
                &mut NoProgress,
            ) {
                assert_eq!(st.size, out.len() as u64);
            }
        }
    }
}
