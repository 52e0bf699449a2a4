//! The qcow2 writer: a clean version 2 image, laid out up front and written in one pass.
//!
//! [`Qcow2Layout::plan`] takes the virtual size, the cluster size and the sorted list of
//! guest clusters that hold data, and fixes every offset before a byte is written:
//!
//! ```text
//! header | L1 table | refcount table | refcount blocks | L2 tables | data clusters (guest order)
//! ```
//!
//! All metadata precedes the data, so every L2 table offset is small (stock `e2image -r`
//! ignores tables past the virtual size), and the image can be written front to back to a
//! pipe by [`SequentialWriter`]. Every cluster is referenced exactly once and refcounted
//! once, so `qemu-img check` finds no leaks. [`CompressedWriter`] writes deflate-compressed
//! clusters to a seekable file with the same metadata layout.
//!
//! [`write_qcow2`] ties it to the capture: a first pass finds the non-zero blocks of the
//! block map, a second pass writes them.

use std::fs::File;
use std::io::Write;

use super::entry::{L1Entry, L2Entry, RefcountTableEntry};
use super::header::{Header, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS};
use crate::blockmap::{BlockMap, Run};
use crate::io::{ReadAt, pwrite_full};
use crate::pieces;
use crate::progress::{Progress, Unit};
use crate::sparse::CopyStats;
use crate::{Error, Result};

/// qemu refuses L1 tables larger than 32 MiB.
const MAX_L1_BYTES: u64 = 32 << 20;
/// Refcount entries are 16 bits (refcount_order 4, the only width of version 2).
const REFCOUNT_BYTES: u64 = 2;

/// Where every cluster of the image goes. Offsets are host byte offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Layout {
    cluster_bits: u32,
    virtual_size: u64,
    l1_entries: u64,
    l1_offset: u64,
    l1_clusters: u64,
    rt_offset: u64,
    rt_clusters: u64,
    rb_offset: u64,
    rb_count: u64,
    l2_offset: u64,
    /// L1 indices that have an L2 table, ascending; table k lives at `l2_offset + k * cs`.
    l2_tables: Vec<u64>,
    data_offset: u64,
    /// Guest clusters holding data, sorted and disjoint.
    data: Vec<Run>,
    data_clusters: u64,
}

impl Qcow2Layout {
    /// Plan an image of `virtual_size` bytes with clusters of `2^cluster_bits` bytes whose
    /// data clusters are the guest clusters in `data` (sorted, disjoint runs of cluster
    /// indices). Every other cluster reads as zeros.
    pub fn plan(virtual_size: u64, cluster_bits: u32, data: &[Run]) -> Result<Self> {
        Self::plan_with_capacity(virtual_size, cluster_bits, data, 1)
    }

    /// As [`Self::plan`], with refcount blocks for `data_factor` host clusters per data
    /// cluster (the compressed writer may use up to two).
    fn plan_with_capacity(
        virtual_size: u64,
        cluster_bits: u32,
        data: &[Run],
        data_factor: u64,
    ) -> Result<Self> {
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Error::InvalidInput(format!(
                "qcow2 cluster size 2^{cluster_bits} is outside 512 B..2 MiB"
            )));
        }
        let cs = 1u64 << cluster_bits;
        let too_big =
            || Error::InvalidInput(format!("a {virtual_size}-byte qcow2 image is too large"));
        if virtual_size > i64::MAX as u64 {
            return Err(too_big());
        }
        let guest_clusters = virtual_size.div_ceil(cs);
        let per_l2 = cs / 8;
        let l1_entries = guest_clusters.div_ceil(per_l2);
        if l1_entries * 8 > MAX_L1_BYTES {
            return Err(Error::InvalidInput(format!(
                "a {virtual_size}-byte disk needs an L1 table of {} bytes with {cs}-byte clusters (qemu's limit is 32 MiB)",
                l1_entries * 8
            )));
        }
        let mut l2_tables: Vec<u64> = Vec::new();
        let mut data_clusters = 0u64;
        let mut prev_end = 0u64;
        for (i, r) in data.iter().enumerate() {
            if r.len == 0 || (i > 0 && r.start < prev_end) || r.end() > guest_clusters {
                return Err(Error::InvalidInput(format!(
                    "qcow2 data run {}+{} is empty, unsorted or past the disk end",
                    r.start, r.len
                )));
            }
            prev_end = r.end();
            data_clusters += r.len;
            let first = r.start / per_l2;
            let last = (r.end() - 1) / per_l2;
            let from = match l2_tables.last() {
                Some(&l) if l >= first => l + 1,
                _ => first,
            };
            l2_tables.extend(from..=last);
        }
        let l1_clusters = (l1_entries * 8).div_ceil(cs).max(1);
        let l2n = l2_tables.len() as u64;
        let data_cap = data_clusters.checked_mul(data_factor).ok_or_else(too_big)?;
        let per_rb = cs / REFCOUNT_BYTES;
        let (mut rt_clusters, mut rb_count) = (1u64, 0u64);
        loop {
            let total = 1 + l1_clusters + rt_clusters + rb_count + l2n + data_cap;
            let rb = total.div_ceil(per_rb);
            let rt = (rb * 8).div_ceil(cs).max(1);
            if rb == rb_count && rt == rt_clusters {
                break;
            }
            rb_count = rb;
            rt_clusters = rt;
        }
        let l1_offset = cs;
        let rt_offset = l1_offset + l1_clusters * cs;
        let rb_offset = rt_offset + rt_clusters * cs;
        let l2_offset = rb_offset + rb_count * cs;
        let data_offset = l2_offset + l2n * cs;
        Ok(Qcow2Layout {
            cluster_bits,
            virtual_size,
            l1_entries,
            l1_offset,
            l1_clusters,
            rt_offset,
            rt_clusters,
            rb_offset,
            rb_count,
            l2_offset,
            l2_tables,
            data_offset,
            data: data.to_vec(),
            data_clusters,
        })
    }

    pub fn cluster_bits(&self) -> u32 {
        self.cluster_bits
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// The guest clusters that hold data, in the order they are written.
    pub fn data_runs(&self) -> &[Run] {
        &self.data
    }

    pub fn data_clusters(&self) -> u64 {
        self.data_clusters
    }

    /// Host offset of the first data cluster (= bytes of metadata).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the uncompressed image file.
    pub fn file_size(&self) -> u64 {
        self.data_offset + self.data_clusters * self.cluster_size()
    }

    fn header(&self) -> Header {
        let mut h = Header::v2(self.cluster_bits, self.virtual_size);
        h.l1_size = self.l1_entries as u32;
        h.l1_table_offset = self.l1_offset;
        h.refcount_table_offset = self.rt_offset;
        h.refcount_table_clusters = self.rt_clusters as u32;
        h
    }

    /// Write header, L1, refcount table and refcount blocks (everything before the L2
    /// tables). `refcount(host_cluster)` gives each cluster's refcount.
    fn write_head(&self, out: &mut dyn Write, refcount: &dyn Fn(u64) -> u16) -> Result<()> {
        let cs = self.cluster_size() as usize;
        let mut buf = vec![0u8; cs];
        let mut pos = 0u64;
        let mut emit = |out: &mut dyn Write, buf: &[u8]| -> Result<()> {
            out.write_all(buf).map_err(|e| Error::io("write", pos, e))?;
            pos += buf.len() as u64;
            Ok(())
        };
        buf[..72].copy_from_slice(&self.header().encode_v2());
        emit(out, &buf)?;
        // L1: one cluster at a time.
        let per = (cs / 8) as u64;
        let mut k = 0usize;
        for c in 0..self.l1_clusters {
            buf.fill(0);
            let first = c * per;
            while let Some(&li) = self.l2_tables.get(k) {
                if li >= first + per {
                    break;
                }
                let e = L1Entry::table(self.l2_offset + k as u64 * self.cluster_size());
                let at = ((li - first) * 8) as usize;
                buf[at..at + 8].copy_from_slice(&e.0.to_be_bytes());
                k += 1;
            }
            emit(out, &buf)?;
        }
        for c in 0..self.rt_clusters {
            buf.fill(0);
            for i in 0..per {
                let rb = c * per + i;
                if rb >= self.rb_count {
                    break;
                }
                let e = RefcountTableEntry::block(self.rb_offset + rb * self.cluster_size());
                buf[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&e.0.to_be_bytes());
            }
            emit(out, &buf)?;
        }
        let per_rb = self.cluster_size() / REFCOUNT_BYTES;
        for b in 0..self.rb_count {
            for i in 0..per_rb {
                let r = refcount(b * per_rb + i);
                buf[(i * 2) as usize..(i * 2 + 2) as usize].copy_from_slice(&r.to_be_bytes());
            }
            emit(out, &buf)?;
        }
        Ok(())
    }

    /// Number of metadata clusters (all refcounted once).
    fn meta_clusters(&self) -> u64 {
        self.data_offset >> self.cluster_bits
    }
}

/// The order in which planned data clusters must arrive: guest order, run by run.
#[derive(Debug, Clone, Copy)]
struct PlanOrder {
    run: usize,
    next: u64,
}

impl PlanOrder {
    fn new(data: &[Run]) -> Self {
        PlanOrder {
            run: 0,
            next: data.first().map_or(0, |r| r.start),
        }
    }

    /// Accept guest cluster `g` if it is the next planned one, and step past it.
    fn take(&mut self, data: &[Run], g: u64) -> Result<()> {
        let Some(r) = data.get(self.run).copied().filter(|_| g == self.next) else {
            return Err(Error::InvalidInput(format!(
                "qcow2 writer: cluster {g} is not the next planned data cluster"
            )));
        };
        self.next = g + 1;
        if self.next >= r.end() {
            self.run += 1;
            if let Some(n) = data.get(self.run) {
                self.next = n.start;
            }
        }
        Ok(())
    }

    fn done(&self, data: &[Run]) -> bool {
        self.run >= data.len()
    }
}

/// Writes an image planned by [`Qcow2Layout::plan`] front to back to any [`Write`] (a
/// pipe, stdout, a new file). Create it (this writes all metadata), feed the data clusters
/// in guest order with [`SequentialWriter::write_clusters`], then call
/// [`SequentialWriter::finish`].
pub struct SequentialWriter<'a> {
    out: &'a mut dyn Write,
    layout: &'a Qcow2Layout,
    order: PlanOrder,
    pos: u64,
}

impl<'a> SequentialWriter<'a> {
    /// Write the header and all tables of `layout` to `out`.
    pub fn new(out: &'a mut dyn Write, layout: &'a Qcow2Layout) -> Result<Self> {
        let used = layout.meta_clusters() + layout.data_clusters;
        layout.write_head(out, &|c| u16::from(c < used))?;
        // L2 tables: entries point at data clusters in guest order.
        let cs = layout.cluster_size() as usize;
        let per = (cs / 8) as u64;
        let mut buf = vec![0u8; cs];
        let mut host = layout.data_offset;
        let mut runs = layout.data.iter().peekable();
        let mut cur: Option<Run> = runs.next().copied();
        let mut pos = layout.l2_offset;
        for &li in &layout.l2_tables {
            buf.fill(0);
            let (lo, hi) = (li * per, (li + 1) * per);
            while let Some(r) = cur {
                let s = r.start.max(lo);
                let e = r.end().min(hi);
                if s >= hi {
                    break;
                }
                for g in s..e {
                    let at = ((g - lo) * 8) as usize;
                    buf[at..at + 8].copy_from_slice(&L2Entry::data(host).0.to_be_bytes());
                    host += layout.cluster_size();
                }
                if r.end() <= hi {
                    cur = runs.next().copied();
                } else {
                    cur = Some(Run {
                        start: hi,
                        len: r.end() - hi,
                    });
                }
            }
            out.write_all(&buf)
                .map_err(|e| Error::io("write", pos, e))?;
            pos += cs as u64;
        }
        Ok(SequentialWriter {
            out,
            layout,
            order: PlanOrder::new(&layout.data),
            pos,
        })
    }

    /// Write whole clusters starting at guest cluster `first`: they must be the next
    /// planned data clusters, in order (a piece may span several runs only if contiguous).
    pub fn write_clusters(&mut self, first: u64, data: &[u8]) -> Result<()> {
        let cs = self.layout.cluster_size();
        if !(data.len() as u64).is_multiple_of(cs) {
            return Err(Error::InvalidInput(format!(
                "qcow2 writer: {} bytes is not a whole number of clusters",
                data.len()
            )));
        }
        for (g, c) in (first..).zip(data.chunks(cs as usize)) {
            self.order.take(&self.layout.data, g)?;
            self.out
                .write_all(c)
                .map_err(|e| Error::io("write", self.pos, e))?;
            self.pos += cs;
        }
        Ok(())
    }

    /// Check that every planned cluster was written and flush; returns the file size.
    pub fn finish(self) -> Result<u64> {
        if !self.order.done(&self.layout.data) {
            return Err(Error::InvalidInput(format!(
                "qcow2 writer: finished before data cluster {}",
                self.order.next
            )));
        }
        self.out
            .flush()
            .map_err(|e| Error::io("write", self.pos, e))?;
        Ok(self.pos)
    }
}

/// Writes deflate-compressed clusters (qemu's raw deflate, window 2^12..2^15) to a new,
/// seekable file, packed byte by byte after the metadata; a cluster that does not shrink is
/// stored uncompressed at the next cluster boundary. Same feeding protocol as
/// [`SequentialWriter`].
pub struct CompressedWriter<'a> {
    file: &'a File,
    layout: Qcow2Layout,
    /// The L2 table being filled (its L1 index) and its bytes.
    l2_current: Option<u64>,
    l2_table: Vec<u8>,
    l2_index: usize,
    /// Next free host byte.
    pos: u64,
    /// Refcounts of host clusters from `data_offset` on.
    refcounts: Vec<u16>,
    order: PlanOrder,
    comp: flate2::Compress,
    cbuf: Vec<u8>,
    /// Bytes of compressed data written.
    pub compressed_bytes: u64,
}

impl<'a> CompressedWriter<'a> {
    /// Plan with room for the worst case and position after the metadata.
    pub fn new(file: &'a File, virtual_size: u64, cluster_bits: u32, data: &[Run]) -> Result<Self> {
        let layout = Qcow2Layout::plan_with_capacity(virtual_size, cluster_bits, data, 2)?;
        let cs = layout.cluster_size() as usize;
        Ok(CompressedWriter {
            file,
            l2_current: None,
            l2_table: vec![0; cs],
            l2_index: 0,
            pos: layout.data_offset,
            refcounts: Vec::new(),
            order: PlanOrder::new(&layout.data),
            comp: flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12),
            cbuf: vec![0; cs + cs / 8 + 64],
            compressed_bytes: 0,
            layout,
        })
    }

    fn count(&mut self, from: u64, to_incl: u64) -> Result<()> {
        let cb = self.layout.cluster_bits;
        let base = self.layout.data_offset >> cb;
        for c in (from >> cb)..=(to_incl >> cb) {
            let i = (c - base) as usize;
            if self.refcounts.len() <= i {
                self.refcounts.resize(i + 1, 0);
            }
            self.refcounts[i] = self.refcounts[i]
                .checked_add(1)
                .ok_or_else(|| Error::InvalidInput("qcow2 refcount overflow".into()))?;
        }
        Ok(())
    }

    fn flush_l2(&mut self) -> Result<()> {
        let off = self.layout.l2_offset + self.l2_index as u64 * self.layout.cluster_size();
        pwrite_full(self.file, &self.l2_table, off).map_err(|e| Error::io("write", off, e))?;
        self.l2_table.fill(0);
        self.l2_index += 1;
        Ok(())
    }

    /// Compress and write whole clusters from guest cluster `first` (the next planned ones).
    pub fn write_clusters(&mut self, first: u64, data: &[u8]) -> Result<()> {
        let cs = self.layout.cluster_size();
        let cb = self.layout.cluster_bits;
        if !(data.len() as u64).is_multiple_of(cs) {
            return Err(Error::InvalidInput(
                "qcow2 writer: not a whole number of clusters".into(),
            ));
        }
        for (g, c) in (first..).zip(data.chunks(cs as usize)) {
            self.order.take(&self.layout.data, g)?;
            self.comp.reset();
            let st = self
                .comp
                .compress(c, &mut self.cbuf, flate2::FlushCompress::Finish)
                .map_err(|e| Error::InvalidInput(format!("deflate: {e}")))?;
            let clen = self.comp.total_out() as usize;
            let entry = if st == flate2::Status::StreamEnd && (clen as u64) < cs {
                let off = self.pos;
                pwrite_full(self.file, &self.cbuf[..clen], off)
                    .map_err(|e| Error::io("write", off, e))?;
                let e = L2Entry::compressed(off, clen as u64, cb);
                self.count(off & !511, ((off + clen as u64 - 1) | 511).max(off))?;
                self.pos += clen as u64;
                self.compressed_bytes += clen as u64;
                e
            } else {
                let off = self.pos.div_ceil(cs) * cs;
                pwrite_full(self.file, c, off).map_err(|e| Error::io("write", off, e))?;
                self.count(off, off + cs - 1)?;
                self.pos = off + cs;
                L2Entry::data(off)
            };
            let per = cs / 8;
            let li = g / per;
            if self.l2_current != Some(li) {
                if self.l2_current.is_some() {
                    self.flush_l2()?;
                }
                self.l2_current = Some(li);
            }
            let at = ((g % per) * 8) as usize;
            self.l2_table[at..at + 8].copy_from_slice(&entry.0.to_be_bytes());
        }
        Ok(())
    }

    /// Write the last L2 table, the header, L1 and refcounts; pad the file to a whole
    /// cluster. Returns the file size.
    pub fn finish(mut self) -> Result<u64> {
        if !self.order.done(&self.layout.data) {
            return Err(Error::InvalidInput(format!(
                "qcow2 writer: finished before data cluster {}",
                self.order.next
            )));
        }
        if self.l2_current.is_some() {
            self.flush_l2()?;
        }
        let meta = self.layout.meta_clusters();
        let refcounts = std::mem::take(&mut self.refcounts);
        let rc = |c: u64| -> u16 {
            if c < meta {
                1
            } else {
                refcounts.get((c - meta) as usize).copied().unwrap_or(0)
            }
        };
        let mut head = Vec::new();
        self.layout.write_head(&mut head, &rc)?;
        pwrite_full(self.file, &head, 0).map_err(|e| Error::io("write", 0, e))?;
        let cs = self.layout.cluster_size();
        let end = self.pos.div_ceil(cs) * cs;
        self.file
            .set_len(end)
            .map_err(|e| Error::io("truncate", end, e))?;
        Ok(end)
    }
}

/// Where [`write_qcow2`] writes.
pub enum Qcow2Target<'a> {
    /// Any writer, front to back (uncompressed).
    Sequential(&'a mut dyn Write),
    /// A block device, written front to back (uncompressed); an image larger than the
    /// device is refused before the first write.
    Device(&'a File),
    /// A new, empty, seekable file; `compress` selects deflate clusters.
    File { file: &'a File, compress: bool },
}

/// Find the non-zero blocks among the selected blocks of `map` (one pass over them, holes
/// not read). Memory follows the number of runs.
pub fn nonzero_blocks<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    block_size: u32,
    progress: &mut dyn Progress,
) -> Result<(Vec<Run>, CopyStats)> {
    progress.phase("finding data", map.selected_blocks(), Unit::Blocks);
    let (runs, rep) = pieces::classify_runs(src, map, block_size, progress)?;
    progress.finish();
    let zero_blocks = runs.iter().filter(|(_, z)| *z).map(|(r, _)| r.len).sum();
    let stats = CopyStats {
        blocks: map.selected_blocks(),
        zero_blocks,
        past_end_blocks: rep.past_end_blocks,
        unreadable_blocks: rep.unreadable_blocks,
        unreadable: rep.unreadable,
        ..CopyStats::default()
    };
    Ok((
        runs.into_iter()
            .filter(|(_, z)| !z)
            .map(|(r, _)| r)
            .collect(),
        stats,
    ))
}

/// Write the non-zero selected blocks of `src` (a filesystem of `blocks_count` blocks) as a
/// version 2 qcow2 image with one cluster per block.
pub fn write_qcow2<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    block_size: u32,
    target: Qcow2Target<'_>,
    progress: &mut dyn Progress,
) -> Result<CopyStats> {
    let cb = block_size.trailing_zeros();
    if !block_size.is_power_of_two() {
        return Err(Error::InvalidInput(format!("block size {block_size}")));
    }
    let vsize = map
        .blocks_count()
        .checked_mul(u64::from(block_size))
        .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))?;
    let (runs, mut stats) = nonzero_blocks(src, map, block_size, progress)?;
    let data_map = BlockMap::from_runs(runs.iter().copied(), map.blocks_count());
    progress.phase("copying", data_map.selected_blocks(), Unit::Blocks);
    let mut done = 0u64;
    let mut feed = |write: &mut dyn FnMut(u64, &[u8]) -> Result<()>| {
        pieces::for_each_chunk(src, &data_map, block_size, &mut |blk, data| {
            write(blk, data)?;
            done += (data.len() / block_size as usize) as u64;
            progress.update(done);
            Ok(())
        })
    };
    let mut buffered;
    let mut room = None;
    let sequential: Option<&mut dyn Write> = match target {
        Qcow2Target::Sequential(out) => Some(out),
        Qcow2Target::Device(file) => {
            room = crate::io::block_device_size(file)?;
            buffered = std::io::BufWriter::with_capacity(1 << 20, file);
            Some(&mut buffered)
        }
        Qcow2Target::File {
            file,
            compress: false,
        } => {
            buffered = std::io::BufWriter::with_capacity(1 << 20, file);
            Some(&mut buffered)
        }
        Qcow2Target::File {
            file,
            compress: true,
        } => {
            let mut w = CompressedWriter::new(file, vsize, cb, &runs)?;
            feed(&mut |blk, data| w.write_clusters(blk, data))?;
            stats.bytes_written = w.finish()?;
            None
        }
    };
    if let Some(out) = sequential {
        let layout = Qcow2Layout::plan(vsize, cb, &runs)?;
        crate::output::check_room(room, layout.file_size())?;
        let mut w = SequentialWriter::new(out, &layout)?;
        feed(&mut |blk, data| w.write_clusters(blk, data))?;
        stats.bytes_written = w.finish()?;
        out.flush().map_err(|e| Error::io("write", 0, e))?;
    }
    progress.finish();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_places_metadata_first() {
        let runs = [Run { start: 3, len: 2 }, Run { start: 600, len: 1 }];
        let l = Qcow2Layout::plan(1000 * 1024, 10, &runs).unwrap();
        // 1000 clusters, 128 per L2: 8 L1 entries; tables for L1 0 and 4.
        assert_eq!(l.l1_entries, 8);
        assert_eq!(l.l2_tables, vec![0, 4]);
        assert_eq!(l.l1_offset, 1024);
        assert_eq!(l.rt_offset, 2048);
        assert_eq!(l.rb_offset, 3072);
        assert_eq!(l.rb_count, 1);
        assert_eq!(l.l2_offset, 4096);
        assert_eq!(l.data_offset, 6144);
        assert_eq!(l.file_size(), 6144 + 3 * 1024);
        assert!(
            Qcow2Layout::plan(
                1 << 20,
                10,
                &[Run { start: 5, len: 1 }, Run { start: 5, len: 1 }]
            )
            .is_err()
        );
        assert!(
            Qcow2Layout::plan(
                1 << 20,
                10,
                &[Run {
                    start: 1024,
                    len: 1
                }]
            )
            .is_err()
        );
        assert!(Qcow2Layout::plan(u64::MAX, 16, &[]).is_err());
    }

    /// Refcounts as stored: every cluster of the file exactly once, nothing past its end,
    /// whatever the number of refcount blocks the plan needed.
    #[test]
    fn refcounts_cover_exactly_the_file() {
        let be = |b: &[u8], o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
        for n in [
            0u64, 1, 200, 240, 250, 251, 252, 253, 254, 255, 256, 300, 509, 510, 511, 600, 70000,
        ] {
            let runs: Vec<Run> = if n == 0 {
                vec![]
            } else {
                vec![Run { start: 0, len: n }]
            };
            let l = Qcow2Layout::plan(n.max(1) << 9, 9, &runs).unwrap();
            let mut out = Vec::new();
            let mut w = SequentialWriter::new(&mut out, &l).unwrap();
            for g in 0..n {
                w.write_clusters(g, &[0x5a; 512]).unwrap();
            }
            w.finish().unwrap();
            let clusters = (out.len() / 512) as u64;
            let rt = be(&out, 48) as usize;
            let rtc = u32::from_be_bytes(out[56..60].try_into().unwrap()) as usize;
            let mut counted = 0u64;
            for i in 0..rtc * 64 {
                let rb = be(&out, rt + 8 * i) as usize;
                if rb == 0 {
                    continue;
                }
                for j in 0..256u64 {
                    let c = i as u64 * 256 + j;
                    let r = u16::from_be_bytes([
                        out[rb + 2 * j as usize],
                        out[rb + 2 * j as usize + 1],
                    ]);
                    assert_eq!(r, u16::from(c < clusters), "n={n} cluster {c}");
                    counted += u64::from(r);
                }
            }
            assert_eq!(counted, clusters, "n={n}");
        }
    }

    #[test]
    fn sequential_rejects_out_of_order() {
        let runs = [Run { start: 1, len: 2 }];
        let l = Qcow2Layout::plan(8 * 512, 9, &runs).unwrap();
        let mut out = Vec::new();
        let mut w = SequentialWriter::new(&mut out, &l).unwrap();
        assert!(w.write_clusters(2, &[1; 512]).is_err());
        w.write_clusters(1, &[1; 512]).unwrap();
        assert!(w.finish().is_err());
    }
}
