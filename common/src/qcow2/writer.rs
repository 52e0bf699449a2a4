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
use super::header::{Extension, Header, e2i_extension, encode_extensions};
use super::types::{ClusterBits, ClusterRun, GuestCluster, HostOffset};
use crate::blockmap::{BlockMap, BlockRun};
use crate::bytes::be;
use crate::io::{ReadAt, pwrite_full};
use crate::pieces;
use crate::progress::{Progress, Unit};
use crate::sparse::CopyStats;
use crate::units::BlockSize;
use crate::{Error, Result};

/// qemu refuses L1 tables larger than 32 MiB.
const MAX_L1_BYTES: u64 = 32 << 20;
/// Refcount entries are 16 bits (refcount_order 4, the only width of version 2).
const REFCOUNT_BITS: u32 = 1;
/// Host offsets are bits 9–55 of a table entry.
const MAX_HOST_BYTES: u64 = 1 << 56;

/// Arithmetic on a layout [`Qcow2Layout::plan`] accepted cannot overflow (it checked the
/// file size); this error is what it would be if it did.
fn layout_overflow() -> Error {
    Error::InvalidInput("qcow2 writer: the image layout overflows".into())
}

/// Where every cluster of the image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Layout {
    cb: ClusterBits,
    virtual_size: u64,
    l1_entries: u32,
    l1_offset: HostOffset,
    l1_clusters: u64,
    rt_offset: HostOffset,
    rt_clusters: u32,
    rb_offset: HostOffset,
    rb_count: u64,
    l2_offset: HostOffset,
    /// L1 indices that have an L2 table, ascending; table k lives at `l2_offset + k * cs`.
    l2_tables: Vec<u64>,
    data_offset: HostOffset,
    /// Guest clusters holding data, sorted and disjoint.
    data: Vec<ClusterRun>,
    data_clusters: u64,
    /// Size of the uncompressed image file.
    file_size: u64,
    /// Header extensions written after the header (e2i's marks).
    extensions: Vec<Extension>,
}

impl Qcow2Layout {
    /// Plan an image of `virtual_size` bytes with clusters of `2^cluster_bits` bytes whose
    /// data clusters are the guest clusters in `data` (sorted, disjoint runs). Every other
    /// cluster reads as zeros.
    pub fn plan(virtual_size: u64, cluster_bits: u32, data: &[ClusterRun]) -> Result<Self> {
        Self::plan_with_capacity(virtual_size, cluster_bits, data, 1)
    }

    /// As [`Self::plan`], with refcount blocks for `data_factor` host clusters per data
    /// cluster (the compressed writer may use up to two).
    fn plan_with_capacity(
        virtual_size: u64,
        cluster_bits: u32,
        data: &[ClusterRun],
        data_factor: u64,
    ) -> Result<Self> {
        let cb = ClusterBits::new(cluster_bits).ok_or_else(|| {
            Error::InvalidInput(format!(
                "qcow2 cluster size 2^{cluster_bits} is outside 512 B..2 MiB"
            ))
        })?;
        let cs = cb.size();
        let too_big =
            || Error::InvalidInput(format!("a {virtual_size}-byte qcow2 image is too large"));
        if i64::try_from(virtual_size).is_err() {
            return Err(too_big());
        }
        let guest_clusters = virtual_size.div_ceil(cs);
        let l1_entries = guest_clusters.div_ceil(cb.l2_entries());
        let l1_bytes = l1_entries.checked_mul(8).ok_or_else(too_big)?;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Error::InvalidInput(format!(
                "a {virtual_size}-byte disk needs an L1 table of {l1_bytes} bytes with {cs}-byte clusters (qemu's limit is 32 MiB)"
            )));
        }
        let mut l2_tables: Vec<u64> = Vec::new();
        let mut data_clusters = 0u64;
        let mut prev_end = 0u64;
        for (i, r) in data.iter().enumerate() {
            let end = r
                .checked_end()
                .filter(|e| r.len > 0 && (i == 0 || r.start.0 >= prev_end) && e.0 <= guest_clusters)
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "qcow2 data run {}+{} is empty, unsorted or past the disk end",
                        r.start, r.len
                    ))
                })?;
            prev_end = end.0;
            data_clusters = data_clusters.checked_add(r.len).ok_or_else(too_big)?;
            let first = r.start.l1_index(cb);
            // len > 0: end >= 1.
            let last = GuestCluster(end.0.saturating_sub(1)).l1_index(cb);
            let from = match l2_tables.last() {
                Some(&l) if l >= first => l.saturating_add(1),
                _ => first,
            };
            l2_tables.extend(from..=last);
        }
        let l1_clusters = l1_bytes.div_ceil(cs).max(1);
        let l2n = l2_tables.len() as u64;
        let data_cap = data_clusters.checked_mul(data_factor).ok_or_else(too_big)?;
        let per_rb = cs >> REFCOUNT_BITS;
        let sum = |parts: &[u64]| {
            parts
                .iter()
                .try_fold(0u64, |a, &b| a.checked_add(b))
                .ok_or_else(too_big)
        };
        let (mut rt_clusters, mut rb_count) = (1u64, 0u64);
        loop {
            let total = sum(&[1, l1_clusters, rt_clusters, rb_count, l2n, data_cap])?;
            let rb = total.div_ceil(per_rb);
            let rt = rb.checked_mul(8).ok_or_else(too_big)?.div_ceil(cs).max(1);
            if rb == rb_count && rt == rt_clusters {
                break;
            }
            rb_count = rb;
            rt_clusters = rt;
        }
        let after = |off: HostOffset, clusters: u64| {
            clusters
                .checked_mul(cs)
                .and_then(|b| off.checked_add(b))
                .filter(|e| e.0 <= MAX_HOST_BYTES)
                .ok_or_else(too_big)
        };
        let l1_offset = HostOffset(cs);
        let rt_offset = after(l1_offset, l1_clusters)?;
        let rb_offset = after(rt_offset, rt_clusters)?;
        let l2_offset = after(rb_offset, rb_count)?;
        let data_offset = after(l2_offset, l2n)?;
        // The compressed writer's worst case must be addressable too.
        after(data_offset, data_cap)?;
        Ok(Qcow2Layout {
            cb,
            virtual_size,
            // At most 32 MiB / 8 entries.
            l1_entries: u32::try_from(l1_entries).map_err(|_| too_big())?,
            l1_offset,
            l1_clusters,
            rt_offset,
            rt_clusters: u32::try_from(rt_clusters).map_err(|_| too_big())?,
            rb_offset,
            rb_count,
            l2_offset,
            l2_tables,
            data_offset,
            data: data.to_vec(),
            data_clusters,
            file_size: after(data_offset, data_clusters)?.0,
            extensions: Vec::new(),
        })
    }

    /// Record `marks` in the header (an e2i header extension, which qemu ignores and keeps,
    /// and stock e2image never reads); no extension when there is nothing to record.
    pub fn set_marks(&mut self, marks: crate::mark::Marks) {
        self.extensions
            .retain(|e| e.kind != crate::mark::QCOW2_EXTENSION);
        if marks.scrambled {
            self.extensions
                .push(e2i_extension(crate::mark::QCOW2_FLAG_SCRAMBLED));
        }
    }

    pub fn cluster_bits(&self) -> u32 {
        self.cb.get()
    }

    pub fn cluster_size(&self) -> u64 {
        self.cb.size()
    }

    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// The guest clusters that hold data, in the order they are written.
    pub fn data_runs(&self) -> &[ClusterRun] {
        &self.data
    }

    pub fn data_clusters(&self) -> u64 {
        self.data_clusters
    }

    /// Host offset of the first data cluster (= bytes of metadata).
    pub fn data_offset(&self) -> u64 {
        self.data_offset.0
    }

    /// Size of the uncompressed image file.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Host offset of the `k`-th L2 table.
    fn l2_table_offset(&self, k: u64) -> Result<HostOffset> {
        k.checked_mul(self.cb.size())
            .and_then(|b| self.l2_offset.checked_add(b))
            .ok_or_else(layout_overflow)
    }

    fn header(&self) -> Header {
        let mut h = Header::v2(self.cb, self.virtual_size);
        h.l1_size = self.l1_entries;
        h.l1_table_offset = self.l1_offset;
        h.refcount_table_offset = self.rt_offset;
        h.refcount_table_clusters = self.rt_clusters;
        h
    }

    /// Write header, L1, refcount table and refcount blocks (everything before the L2
    /// tables). `refcount(host_cluster)` gives each cluster's refcount.
    fn write_head(&self, out: &mut dyn Write, refcount: &dyn Fn(u64) -> u16) -> Result<()> {
        let cb = self.cb;
        let mut buf = vec![0u8; cb.size_usize()];
        let mut pos = 0u64;
        let mut emit = |out: &mut dyn Write, buf: &[u8]| -> Result<()> {
            out.write_all(buf).map_err(|e| Error::io("write", pos, e))?;
            // Below the planned file size.
            pos = pos.saturating_add(buf.len() as u64);
            Ok(())
        };
        let mut header = self.header().encode_v2().to_vec();
        if !self.extensions.is_empty() {
            header.extend(encode_extensions(&self.extensions));
        }
        buf.get_mut(..header.len())
            .ok_or_else(|| {
                Error::InvalidInput("qcow2 writer: the header extensions exceed a cluster".into())
            })?
            .copy_from_slice(&header);
        emit(out, &buf)?;
        // 8-byte entries, cluster by cluster: slot i of a cluster is at byte i * 8 (< 2 MiB).
        let per = cb.l2_entries();
        let at = |slot: u64| (slot << 3) as usize;
        // L1: the tables in order, each at its L1 index.
        let mut tables = self.l2_tables.iter().copied().zip(0u64..).peekable();
        for c in 0..self.l1_clusters {
            buf.fill(0);
            let first = c.checked_mul(per).ok_or_else(layout_overflow)?;
            while let Some(&(li, k)) = tables.peek() {
                let Some(slot) = li.checked_sub(first).filter(|&s| s < per) else {
                    break;
                };
                let e = L1Entry::table(self.l2_table_offset(k)?);
                be::set_u64(&mut buf, at(slot), e.0);
                tables.next();
            }
            emit(out, &buf)?;
        }
        // Refcount table: the refcount blocks in order.
        for c in 0..u64::from(self.rt_clusters) {
            buf.fill(0);
            let first = c.checked_mul(per).ok_or_else(layout_overflow)?;
            let last = first.saturating_add(per).min(self.rb_count);
            for (slot, rb) in (0..).zip(first..last) {
                let off = HostOffset::of_cluster(rb, cb)
                    .and_then(|b| self.rb_offset.checked_add(b.0))
                    .ok_or_else(layout_overflow)?;
                be::set_u64(&mut buf, at(slot), RefcountTableEntry::block(off).0);
            }
            emit(out, &buf)?;
        }
        // Refcount blocks: 16-bit entries.
        let per_rb = cb.size() >> REFCOUNT_BITS;
        for b in 0..self.rb_count {
            let first = b.checked_mul(per_rb).ok_or_else(layout_overflow)?;
            for (slot, c) in (0..cb.size_usize() >> REFCOUNT_BITS).zip(first..) {
                be::set_u16(&mut buf, slot << REFCOUNT_BITS, refcount(c));
            }
            emit(out, &buf)?;
        }
        Ok(())
    }

    /// Number of metadata clusters (all refcounted once).
    fn meta_clusters(&self) -> u64 {
        self.data_offset.cluster(self.cb)
    }
}

/// The order in which planned data clusters must arrive: guest order, run by run.
#[derive(Debug, Clone, Copy)]
struct PlanOrder {
    run: usize,
    next: GuestCluster,
}

impl PlanOrder {
    fn new(data: &[ClusterRun]) -> Self {
        PlanOrder {
            run: 0,
            next: data.first().map_or(GuestCluster(0), |r| r.start),
        }
    }

    /// Accept guest cluster `g` if it is the next planned one, and step past it.
    fn take(&mut self, data: &[ClusterRun], g: GuestCluster) -> Result<()> {
        let planned = data.get(self.run).copied().filter(|_| g == self.next);
        let (Some(r), Some(after)) = (planned, g.checked_add(1)) else {
            return Err(Error::InvalidInput(format!(
                "qcow2 writer: cluster {g} is not the next planned data cluster"
            )));
        };
        self.next = after;
        if self.next >= r.end() {
            self.run = self.run.saturating_add(1);
            if let Some(n) = data.get(self.run) {
                self.next = n.start;
            }
        }
        Ok(())
    }

    fn done(&self, data: &[ClusterRun]) -> bool {
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
        let used = layout
            .meta_clusters()
            .checked_add(layout.data_clusters)
            .ok_or_else(layout_overflow)?;
        layout.write_head(out, &|c| u16::from(c < used))?;
        // L2 tables: entries point at data clusters in guest order.
        let cb = layout.cb;
        let cs = cb.size();
        let mut buf = vec![0u8; cb.size_usize()];
        let mut host = layout.data_offset;
        let mut runs = layout.data.iter().copied();
        let mut cur = runs.next();
        let mut pos = layout.l2_offset;
        for &li in &layout.l2_tables {
            buf.fill(0);
            let lo = GuestCluster::first_of_l1(li, cb).ok_or_else(layout_overflow)?;
            let hi = li
                .checked_add(1)
                .and_then(|n| GuestCluster::first_of_l1(n, cb))
                .unwrap_or(GuestCluster(u64::MAX));
            while let Some(r) = cur {
                let s = r.start.max(lo);
                let e = r.end().min(hi);
                if s >= hi {
                    break;
                }
                for g in (s.0..e.0).map(GuestCluster) {
                    let entry = L2Entry::data(host);
                    be::set_u64(&mut buf, g.l2_slot(cb) << 3, entry.0);
                    host = host.checked_add(cs).ok_or_else(layout_overflow)?;
                }
                cur = if r.end() <= hi {
                    runs.next()
                } else {
                    Some(ClusterRun {
                        start: hi,
                        len: r.end().0.saturating_sub(hi.0),
                    })
                };
            }
            out.write_all(&buf)
                .map_err(|e| Error::io("write", pos.0, e))?;
            pos = pos.checked_add(cs).ok_or_else(layout_overflow)?;
        }
        Ok(SequentialWriter {
            out,
            layout,
            order: PlanOrder::new(&layout.data),
            pos: pos.0,
        })
    }

    /// Write whole clusters starting at guest cluster `first`: they must be the next
    /// planned data clusters, in order (a piece may span several runs only if contiguous).
    pub fn write_clusters(&mut self, first: GuestCluster, data: &[u8]) -> Result<()> {
        let cb = self.layout.cb;
        if !data.len().is_multiple_of(cb.size_usize()) {
            return Err(Error::InvalidInput(format!(
                "qcow2 writer: {} bytes is not a whole number of clusters",
                data.len()
            )));
        }
        for (i, c) in (0u64..).zip(data.chunks(cb.size_usize())) {
            let g = first.checked_add(i).ok_or_else(layout_overflow)?;
            self.order.take(&self.layout.data, g)?;
            self.out
                .write_all(c)
                .map_err(|e| Error::io("write", self.pos, e))?;
            // Planned clusters only: below the planned file size.
            self.pos = self.pos.saturating_add(cb.size());
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
    l2_index: u64,
    /// Next free host byte.
    pos: HostOffset,
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
    pub fn new(
        file: &'a File,
        virtual_size: u64,
        cluster_bits: u32,
        data: &[ClusterRun],
    ) -> Result<Self> {
        let layout = Qcow2Layout::plan_with_capacity(virtual_size, cluster_bits, data, 2)?;
        let cs = layout.cb.size_usize();
        Ok(CompressedWriter {
            file,
            l2_current: None,
            l2_table: vec![0; cs],
            l2_index: 0,
            pos: layout.data_offset,
            refcounts: Vec::new(),
            order: PlanOrder::new(&layout.data),
            comp: flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12),
            // Room for deflate's worst case on incompressible data (< 2 MiB + 256 KiB + 64).
            cbuf: vec![0; cs.saturating_add(cs >> 3).saturating_add(64)],
            compressed_bytes: 0,
            layout,
        })
    }

    /// Record `marks` in the header ([`Qcow2Layout::set_marks`]).
    pub fn set_marks(&mut self, marks: crate::mark::Marks) {
        self.layout.set_marks(marks);
    }

    /// Count one more reference to each host cluster holding bytes `from..=to_incl`.
    fn count(&mut self, from: HostOffset, to_incl: HostOffset) -> Result<()> {
        let cb = self.layout.cb;
        let base = self.layout.data_offset.cluster(cb);
        for c in from.cluster(cb)..=to_incl.cluster(cb) {
            let i = c
                .checked_sub(base)
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(layout_overflow)?;
            if self.refcounts.len() <= i {
                self.refcounts.resize(i.saturating_add(1), 0);
            }
            self.refcounts[i] = self.refcounts[i]
                .checked_add(1)
                .ok_or_else(|| Error::InvalidInput("qcow2 refcount overflow".into()))?;
        }
        Ok(())
    }

    fn flush_l2(&mut self) -> Result<()> {
        let off = self.layout.l2_table_offset(self.l2_index)?.0;
        pwrite_full(self.file, &self.l2_table, off).map_err(|e| Error::io("write", off, e))?;
        self.l2_table.fill(0);
        self.l2_index = self.l2_index.saturating_add(1);
        Ok(())
    }

    /// Compress and write whole clusters from guest cluster `first` (the next planned ones).
    pub fn write_clusters(&mut self, first: GuestCluster, data: &[u8]) -> Result<()> {
        let cb = self.layout.cb;
        let cs = cb.size();
        if !data.len().is_multiple_of(cb.size_usize()) {
            return Err(Error::InvalidInput(
                "qcow2 writer: not a whole number of clusters".into(),
            ));
        }
        for (i, c) in (0u64..).zip(data.chunks(cb.size_usize())) {
            let g = first.checked_add(i).ok_or_else(layout_overflow)?;
            self.order.take(&self.layout.data, g)?;
            self.comp.reset();
            let st = self
                .comp
                .compress(c, &mut self.cbuf, flate2::FlushCompress::Finish)
                .map_err(|e| Error::InvalidInput(format!("deflate: {e}")))?;
            // At most the buffer's length.
            let clen = self.comp.total_out();
            let entry = if st == flate2::Status::StreamEnd && clen < cs {
                let off = self.pos;
                let bytes = &self.cbuf[..clen as usize];
                pwrite_full(self.file, bytes, off.0).map_err(|e| Error::io("write", off.0, e))?;
                let e = L2Entry::compressed(off, clen, cb).ok_or_else(layout_overflow)?;
                // clen >= 1 (a finished deflate stream is never empty).
                let last = off
                    .checked_add(clen.saturating_sub(1))
                    .ok_or_else(layout_overflow)?;
                self.count(HostOffset(off.0 & !511), HostOffset(last.0 | 511).max(off))?;
                self.pos = off.checked_add(clen).ok_or_else(layout_overflow)?;
                self.compressed_bytes = self.compressed_bytes.saturating_add(clen);
                e
            } else {
                let off = self
                    .pos
                    .0
                    .checked_next_multiple_of(cs)
                    .map(HostOffset)
                    .ok_or_else(layout_overflow)?;
                pwrite_full(self.file, c, off.0).map_err(|e| Error::io("write", off.0, e))?;
                let end = off.checked_add(cs).ok_or_else(layout_overflow)?;
                self.count(off, HostOffset(end.0.saturating_sub(1)))?;
                self.pos = end;
                L2Entry::data(off)
            };
            let li = g.l1_index(cb);
            if self.l2_current != Some(li) {
                if self.l2_current.is_some() {
                    self.flush_l2()?;
                }
                self.l2_current = Some(li);
            }
            be::set_u64(&mut self.l2_table, g.l2_slot(cb) << 3, entry.0);
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
            match c.checked_sub(meta) {
                None => 1,
                Some(i) => usize::try_from(i)
                    .ok()
                    .and_then(|i| refcounts.get(i))
                    .copied()
                    .unwrap_or(0),
            }
        };
        let mut head = Vec::new();
        self.layout.write_head(&mut head, &rc)?;
        pwrite_full(self.file, &head, 0).map_err(|e| Error::io("write", 0, e))?;
        let end = self
            .pos
            .0
            .checked_next_multiple_of(self.layout.cb.size())
            .ok_or_else(layout_overflow)?;
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
    block_size: BlockSize,
    progress: &mut dyn Progress,
) -> Result<(Vec<BlockRun>, CopyStats)> {
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
    block_size: BlockSize,
    target: Qcow2Target<'_>,
    marks: crate::mark::Marks,
    progress: &mut dyn Progress,
) -> Result<CopyStats> {
    // One cluster per filesystem block: 1 KiB to 64 KiB, inside qcow2's 512 B to 2 MiB.
    let cb = block_size.bits();
    let vsize = block_size
        .bytes_of(map.blocks_count())
        .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))?;
    let (runs, mut stats) = nonzero_blocks(src, map, block_size, progress)?;
    let data_map = BlockMap::from_runs(runs.iter().copied(), map.blocks_count());
    // One cluster per filesystem block.
    let clusters: Vec<ClusterRun> = runs.into_iter().map(ClusterRun::one_per_block).collect();
    progress.phase("copying", data_map.selected_blocks(), Unit::Blocks);
    let mut done = 0u64;
    let mut feed = |write: &mut dyn FnMut(GuestCluster, &[u8]) -> Result<()>| {
        pieces::for_each_chunk(src, &data_map, block_size, &mut |blk, data| {
            write(GuestCluster::one_per_block(blk), data)?;
            done = done.saturating_add(block_size.blocks_in(data.len() as u64));
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
            let mut w = CompressedWriter::new(file, vsize, cb, &clusters)?;
            w.set_marks(marks);
            feed(&mut |blk, data| w.write_clusters(blk, data))?;
            stats.bytes_written = w.finish()?;
            None
        }
    };
    if let Some(out) = sequential {
        let mut layout = Qcow2Layout::plan(vsize, cb, &clusters)?;
        layout.set_marks(marks);
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
#[allow(clippy::arithmetic_side_effects)] // tests compute expected values freely
mod tests {
    use super::*;
    use crate::io::MemSource;
    use crate::qcow2::header::field;
    use crate::qcow2::reader::Qcow2Reader;

    fn run(start: u64, len: u64) -> ClusterRun {
        ClusterRun {
            start: GuestCluster(start),
            len,
        }
    }

    #[test]
    fn plan_places_metadata_first() {
        let runs = [run(3, 2), run(600, 1)];
        let l = Qcow2Layout::plan(1000 * 1024, 10, &runs).unwrap();
        // 1000 clusters, 128 per L2: 8 L1 entries; tables for L1 0 and 4.
        assert_eq!(l.l1_entries, 8);
        assert_eq!(l.l2_tables, vec![0, 4]);
        assert_eq!(l.l1_offset, HostOffset(1024));
        assert_eq!(l.rt_offset, HostOffset(2048));
        assert_eq!(l.rb_offset, HostOffset(3072));
        assert_eq!(l.rb_count, 1);
        assert_eq!(l.l2_offset, HostOffset(4096));
        assert_eq!(l.data_offset, HostOffset(6144));
        assert_eq!(l.file_size(), 6144 + 3 * 1024);
        assert!(Qcow2Layout::plan(1 << 20, 10, &[run(5, 1), run(5, 1)]).is_err());
        assert!(Qcow2Layout::plan(1 << 20, 10, &[run(1024, 1)]).is_err());
        assert!(Qcow2Layout::plan(1 << 20, 10, &[run(3, 0)]).is_err());
        assert!(Qcow2Layout::plan(1 << 20, 10, &[run(u64::MAX, 2)]).is_err());
        assert!(Qcow2Layout::plan(u64::MAX, 16, &[]).is_err());
        assert!(Qcow2Layout::plan(i64::MAX as u64, 21, &[]).is_err());
        assert!(Qcow2Layout::plan(1 << 20, 8, &[]).is_err());
        assert!(Qcow2Layout::plan(1 << 20, 64, &[]).is_err());
    }

    /// Refcounts as stored: every cluster of the file exactly once, nothing past its end.
    fn check_refcounts(out: &[u8], cb: u32, compressed: bool) {
        let cs = 1usize << cb;
        let clusters = out.len().div_ceil(cs) as u64;
        let rt = be::u64(out, field::REFCOUNT_TABLE_OFFSET) as usize;
        let rtc = be::u32(out, field::REFCOUNT_TABLE_CLUSTERS) as usize;
        let per_rb = (cs / 2) as u64;
        let mut counted = 0u64;
        for i in 0..rtc * cs / 8 {
            let rb = be::u64(out, rt + 8 * i) as usize;
            if rb == 0 {
                continue;
            }
            for j in 0..per_rb {
                let c = i as u64 * per_rb + j;
                let r = be::u16(out, rb + 2 * j as usize);
                if compressed {
                    // Several compressed clusters may share a host cluster.
                    assert_eq!(r > 0, c < clusters, "cluster {c}");
                } else {
                    assert_eq!(r, u16::from(c < clusters), "cluster {c}");
                }
                counted += u64::from(r > 0);
            }
        }
        assert_eq!(counted, clusters);
    }

    /// Whatever the number of refcount blocks the plan needed.
    #[test]
    fn refcounts_cover_exactly_the_file() {
        for n in [
            0u64, 1, 200, 240, 250, 251, 252, 253, 254, 255, 256, 300, 509, 510, 511, 600, 70000,
        ] {
            let runs = if n == 0 { vec![] } else { vec![run(0, n)] };
            let l = Qcow2Layout::plan(n.max(1) << 9, 9, &runs).unwrap();
            let mut out = Vec::new();
            let mut w = SequentialWriter::new(&mut out, &l).unwrap();
            for g in 0..n {
                w.write_clusters(GuestCluster(g), &[0x5a; 512]).unwrap();
            }
            w.finish().unwrap();
            check_refcounts(&out, 9, false);
        }
    }

    /// Property: random sorted run sets at every cluster size are planned, written (both
    /// writers) and read back: the same runs, the same bytes, refcounts covering the file.
    #[test]
    fn random_layouts_round_trip() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for case in 0..40 {
            let cb = 9 + (next() % 5) as u32 + if case % 8 == 0 { 8 } else { 0 };
            let cs = 1usize << cb;
            let per_l2 = (cs / 8) as u64;
            let guest = 1 + next() % (per_l2 * 5);
            let size = (guest << cb) - next() % cs as u64;
            let mut runs = Vec::new();
            let mut at = next() % guest;
            while at < guest && runs.len() < 12 {
                let len =
                    1 + next() % (guest - at).min(if next() % 4 == 0 { per_l2 * 2 } else { 3 });
                runs.push(run(at, len));
                at += len + 1 + next() % per_l2;
            }
            let fill = |g: GuestCluster| vec![(g.0 % 253) as u8 + 1; cs];
            // Sequential.
            let l = Qcow2Layout::plan(size, cb, &runs).unwrap();
            let mut out = Vec::new();
            let mut w = SequentialWriter::new(&mut out, &l).unwrap();
            for r in &runs {
                let data: Vec<u8> = r.clusters().flat_map(fill).collect();
                w.write_clusters(r.start, &data).unwrap();
            }
            assert_eq!(w.finish().unwrap(), out.len() as u64);
            check_refcounts(&out, cb, false);
            // Compressed.
            let f = tempfile::tempfile().unwrap();
            let mut cw = CompressedWriter::new(&f, size, cb, &runs).unwrap();
            for r in &runs {
                for g in r.clusters() {
                    cw.write_clusters(g, &fill(g)).unwrap();
                }
            }
            cw.finish().unwrap();
            let mut comp = Vec::new();
            std::io::Read::read_to_end(&mut &f, &mut comp).unwrap();
            check_refcounts(&comp, cb, true);
            for img in [out, comp] {
                let r = Qcow2Reader::open(MemSource(img)).unwrap();
                assert_eq!(r.virtual_size(), size);
                assert_eq!(r.allocated_runs(false).unwrap(), runs, "case {case}");
                for rr in &runs {
                    for g in [rr.start, GuestCluster(rr.end().0 - 1)] {
                        let mut buf = vec![0u8; cs];
                        let got = r.read_at(&mut buf, g.0 << cb).unwrap();
                        assert_eq!(buf[..got], fill(g)[..got], "case {case} cluster {g}");
                    }
                }
            }
        }
    }

    #[test]
    fn sequential_rejects_out_of_order() {
        let runs = [run(1, 2)];
        let l = Qcow2Layout::plan(8 * 512, 9, &runs).unwrap();
        let mut out = Vec::new();
        let mut w = SequentialWriter::new(&mut out, &l).unwrap();
        assert!(w.write_clusters(GuestCluster(2), &[1; 512]).is_err());
        assert!(
            w.write_clusters(GuestCluster(u64::MAX), &[1; 1024])
                .is_err()
        );
        w.write_clusters(GuestCluster(1), &[1; 512]).unwrap();
        assert!(w.finish().is_err());
    }
}
