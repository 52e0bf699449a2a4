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
//! once, so `qemu-img check` finds no leaks. [`FileWriter`] writes to a seekable file with
//! the same metadata layout, placing (and compressing) clusters as they arrive.
//!
//! [`write_qcow2`] ties it to the capture. To a new file it reads the selected blocks once:
//! the tables are planned for all of them and the zero blocks skipped as they are found
//! ([`FileWriter`]). To a pipe or a device, where the tables go out first and must be
//! exact, a first pass finds the non-zero blocks and a second writes them; so do overlays
//! and images whose clusters hold several blocks.

use std::fs::File;
use std::io::Write;

use super::entry::{L1Entry, L2Entry, RefcountTableEntry};
use super::grouping::{Assembler, Grouping, Masked};
use super::header::{
    COMPRESSION_ZSTD, ClusterCompression, EXT_BACKING_FORMAT, Extension, Header,
    INCOMPAT_COMPRESSION_TYPE, e2i_extension, encode_extensions,
};
use super::types::{ClusterBits, ClusterRun, GuestCluster, HostOffset};
use crate::blockmap::{BlockMap, BlockRun};
use crate::bytes::be;
use crate::io::{Counted, ReadAt, SeqWrite, pwrite_all, write_error};
use crate::pieces;
use crate::progress::{Progress, Unit};
use crate::sparse::CopyStats;
use crate::units::BlockSize;
use crate::{Error, Result};

/// qemu refuses L1 tables larger than 32 MiB.
const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu refuses refcount tables larger than 8 MiB.
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Refcount entries are 16 bits (refcount_order 4, the only width of version 2).
const REFCOUNT_BITS: u32 = 1;
/// Host offsets are bits 9–55 of a table entry.
const MAX_HOST_BYTES: u64 = 1 << 56;

/// Runs sorted, disjoint, non-empty and inside `guest_clusters`.
fn check_runs(runs: &[ClusterRun], guest_clusters: u64) -> Result<()> {
    let mut prev_end = 0u64;
    for (i, r) in runs.iter().enumerate() {
        let end = r
            .checked_end()
            .filter(|e| r.len > 0 && (i == 0 || r.start.0 >= prev_end) && e.0 <= guest_clusters)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "qcow2 run {}+{} is empty, unsorted or past the disk end",
                    r.start, r.len
                ))
            })?;
        prev_end = end.0;
    }
    Ok(())
}

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
    /// Guest clusters flagged as reading zeros (v3 overlays), sorted, disjoint from `data`.
    zero: Vec<ClusterRun>,
    /// Version 3 (overlays, zstd) rather than 2.
    v3: bool,
    /// Compression type recorded in a v3 header.
    compression: ClusterCompression,
    /// The backing file name as recorded, and its format ("qcow2" or "raw").
    backing: Option<(Vec<u8>, &'static str)>,
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
        Self::plan_with_capacity(virtual_size, cluster_bits, data, &[], 1)
    }

    /// As [`Self::plan`], with `zero` clusters flagged as reading zeros (an overlay's
    /// clusters that its backing chain holds and the new image does not); with `compressed`,
    /// room for [`FileWriter`]. Zero flags need version 3: [`Self::set_backing`] or
    /// [`Self::set_compression`] must follow when `zero` is not empty.
    pub fn plan_full(
        virtual_size: u64,
        cluster_bits: u32,
        data: &[ClusterRun],
        zero: &[ClusterRun],
        compressed: bool,
    ) -> Result<Self> {
        let factor = if compressed { 2 } else { 1 };
        Self::plan_with_capacity(virtual_size, cluster_bits, data, zero, factor)
    }

    /// As [`Self::plan`], with refcount blocks for `data_factor` host clusters per data
    /// cluster (the compressed writer may use up to two).
    fn plan_with_capacity(
        virtual_size: u64,
        cluster_bits: u32,
        data: &[ClusterRun],
        zero: &[ClusterRun],
        data_factor: u64,
    ) -> Result<Self> {
        Self::plan_within_limits(virtual_size, cluster_bits, data, zero, data_factor, false)?
    }

    /// As [`Self::plan_with_capacity`]; the inner error says that qemu would refuse the
    /// tables (L1 above 32 MiB, refcount table above 8 MiB) at this cluster size. With
    /// `all_tables`, room is counted for an L2 table under every L1 entry (the most an
    /// overlay's zero flags can add).
    fn plan_within_limits(
        virtual_size: u64,
        cluster_bits: u32,
        data: &[ClusterRun],
        zero: &[ClusterRun],
        data_factor: u64,
        all_tables: bool,
    ) -> Result<Result<Self>> {
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
            return Ok(Err(Error::InvalidInput(format!(
                "a {virtual_size}-byte disk needs an L1 table of {l1_bytes} bytes with {cs}-byte clusters (qemu's limit is 32 MiB)"
            ))));
        }
        let mut l2_tables: Vec<u64> = Vec::new();
        let mut data_clusters = 0u64;
        check_runs(zero, guest_clusters)?;
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
        if !zero.is_empty() {
            // Zero-flagged clusters need their tables too.
            for r in zero {
                let first = r.start.l1_index(cb);
                let last = GuestCluster(r.end().0.saturating_sub(1)).l1_index(cb);
                l2_tables.extend(first..=last);
            }
            l2_tables.sort_unstable();
            l2_tables.dedup();
            let mut all: Vec<ClusterRun> = data.iter().chain(zero).copied().collect();
            all.sort_unstable();
            if all.windows(2).any(|w| w[0].end() > w[1].start) {
                return Err(Error::InvalidInput(
                    "qcow2 writer: a cluster planned as data and as zero".into(),
                ));
            }
        }
        let l1_clusters = l1_bytes.div_ceil(cs).max(1);
        let l2n = l2_tables.len() as u64;
        // The room counted in refcounts (only a check: such a plan is not written).
        let l2_room = if all_tables { l1_entries.max(l2n) } else { l2n };
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
            let total = sum(&[1, l1_clusters, rt_clusters, rb_count, l2_room, data_cap])?;
            let rb = total.div_ceil(per_rb);
            let rt = rb.checked_mul(8).ok_or_else(too_big)?.div_ceil(cs).max(1);
            if rb == rb_count && rt == rt_clusters {
                break;
            }
            rb_count = rb;
            rt_clusters = rt;
        }
        if rt_clusters
            .checked_mul(cs)
            .is_none_or(|b| b > MAX_REFTABLE_BYTES)
        {
            return Ok(Err(Error::InvalidInput(format!(
                "a {virtual_size}-byte disk with {data_clusters} data clusters of {cs} bytes needs a refcount table of {rt_clusters} clusters (qemu's limit is 8 MiB)"
            ))));
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
        Ok(Ok(Qcow2Layout {
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
            zero: zero.to_vec(),
            v3: false,
            compression: ClusterCompression::Deflate,
            backing: None,
            data_clusters,
            file_size: after(data_offset, data_clusters)?.0,
            extensions: Vec::new(),
        }))
    }

    /// The layout after writing only the clusters `data` (of `2^cluster_bits` bytes; a
    /// subset of the planned data clusters, the rest skipped by [`FileWriter`]): same
    /// tables, fewer data clusters.
    pub fn with_data(mut self, cluster_bits: u32, data: &[ClusterRun]) -> Result<Self> {
        if cluster_bits != self.cb.get() {
            return Err(Error::InvalidInput(format!(
                "qcow2 writer: data in clusters of 2^{cluster_bits} bytes for a layout of 2^{}",
                self.cb.get()
            )));
        }
        let (mut j, mut n, mut prev_end) = (0usize, 0u64, GuestCluster(0));
        for r in data {
            while self.data.get(j).is_some_and(|p| p.end() <= r.start) {
                j = j.saturating_add(1);
            }
            let inside = self.data.get(j).is_some_and(|p| {
                p.start <= r.start && r.checked_end().is_some_and(|e| r.len > 0 && e <= p.end())
            });
            if !inside || r.start < prev_end {
                return Err(Error::InvalidInput(format!(
                    "qcow2 writer: data run {}+{} is not among the planned clusters",
                    r.start, r.len
                )));
            }
            prev_end = r.end();
            n = n.saturating_add(r.len);
        }
        let end = n
            .checked_mul(self.cb.size())
            .and_then(|b| self.data_offset.checked_add(b))
            .ok_or_else(layout_overflow)?;
        self.data = data.to_vec();
        self.data_clusters = n;
        self.file_size = end.0;
        Ok(self)
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

    /// Record a backing file: `name` exactly as the header will hold it (qemu resolves it
    /// from the image's folder when relative) and its format. Makes a version 3 image.
    pub fn set_backing(&mut self, name: &[u8], format: &'static str) -> Result<()> {
        if name.is_empty() || name.len() > 1023 || name.contains(&0) {
            return Err(Error::InvalidInput(format!(
                "backing file name of {} bytes: qcow2 holds 1 to 1023 bytes, without NUL",
                name.len()
            )));
        }
        self.backing = Some((name.to_vec(), format));
        self.v3 = true;
        Ok(())
    }

    /// The compression type of compressed clusters; zstd makes a version 3 image.
    pub fn set_compression(&mut self, c: ClusterCompression) {
        self.compression = c;
        if c == ClusterCompression::Zstd {
            self.v3 = true;
        }
    }

    /// 2 or 3.
    pub fn version(&self) -> u32 {
        if self.v3 { 3 } else { 2 }
    }

    /// Record the digest of the disk of this overlay's backing chain (see
    /// [`super::chain::chain_digest`]), which readers check before trusting the chain.
    pub fn set_backing_digest(&mut self, digest: [u8; 32]) {
        self.extensions
            .retain(|e| e.kind != super::header::EXT_E2I_BACKING_DIGEST);
        self.extensions
            .push(super::header::backing_digest_extension(digest));
    }

    /// Clusters flagged as zero.
    pub fn zero_clusters(&self) -> u64 {
        self.zero.iter().map(|r| r.len).sum()
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
        if self.v3 {
            h.version = 3;
            if self.compression == ClusterCompression::Zstd {
                h.incompatible_features |= INCOMPAT_COMPRESSION_TYPE;
                h.compression_type = COMPRESSION_ZSTD;
            }
        }
        h
    }

    /// Cluster 0's bytes before padding: the header, its extensions (the backing format
    /// first, as qemu writes it), the end marker, then the backing file name.
    fn header_bytes(&self) -> Result<Vec<u8>> {
        let mut h = self.header();
        let mut exts = Vec::new();
        if let Some((_, format)) = &self.backing {
            exts.push(Extension {
                kind: EXT_BACKING_FORMAT,
                data: format.as_bytes().to_vec(),
            });
        }
        exts.extend(self.extensions.iter().cloned());
        let ext_bytes = if exts.is_empty() && self.backing.is_none() {
            Vec::new()
        } else {
            encode_extensions(&exts)
        };
        let head_len = if self.v3 {
            super::header::V3_WRITTEN_HEADER_LEN
        } else {
            super::header::V2_HEADER_LEN
        };
        if let Some((name, _)) = &self.backing {
            // Both below a cluster (checked when written).
            h.backing_file_offset = HostOffset(head_len.saturating_add(ext_bytes.len()) as u64);
            h.backing_file_size = name.len() as u32;
        }
        let mut out = if self.v3 {
            h.encode_v3().to_vec()
        } else {
            h.encode_v2().to_vec()
        };
        out.extend(ext_bytes);
        if let Some((name, _)) = &self.backing {
            out.extend_from_slice(name);
        }
        if out.len() as u64 > self.cb.size() {
            return Err(Error::InvalidInput(format!(
                "the qcow2 header, its extensions and the backing file name take {} bytes, more than a {}-byte cluster",
                out.len(),
                self.cb.size()
            )));
        }
        Ok(out)
    }

    /// Flag the zero clusters of L2 table `li` in `table` (one table's bytes).
    fn fill_zero_entries(&self, li: u64, table: &mut [u8]) -> Result<()> {
        let cb = self.cb;
        let lo = GuestCluster::first_of_l1(li, cb).ok_or_else(layout_overflow)?;
        let hi = li
            .checked_add(1)
            .and_then(|n| GuestCluster::first_of_l1(n, cb))
            .unwrap_or(GuestCluster(u64::MAX));
        let from = self.zero.partition_point(|r| r.end() <= lo);
        for r in self.zero.get(from..).unwrap_or(&[]) {
            if r.start >= hi {
                break;
            }
            for g in (r.start.max(lo).0..r.end().min(hi).0).map(GuestCluster) {
                be::set_u64(table, g.l2_slot(cb) << 3, L2Entry::ZERO);
            }
        }
        Ok(())
    }

    /// Write header, L1, refcount table and refcount blocks (everything before the L2
    /// tables). `refcount(host_cluster)` gives each cluster's refcount; every cluster from
    /// `zero_from` on has refcount 0 and, when `holes` (a new file, read as zeros where
    /// nothing was written), its refcount blocks are not written at all: planned for every
    /// cluster a stream claims, they can be gigabytes of zeros.
    fn write_head(
        &self,
        out: &mut dyn SeqWrite,
        refcount: &dyn Fn(u64) -> u16,
        zero_from: u64,
        holes: bool,
    ) -> Result<()> {
        let cb = self.cb;
        let mut buf = vec![0u8; cb.size_usize()];
        let emit = |out: &mut dyn SeqWrite, buf: &[u8]| -> Result<()> {
            out.write_all(buf).map_err(|e| write_error(out, e))
        };
        let header = self.header_bytes()?;
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
            if first >= zero_from {
                // The refcount blocks are the head's last part: the rest stays a hole.
                if holes {
                    break;
                }
                buf.fill(0);
                emit(out, &buf)?;
                continue;
            }
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
        self.skip(data, g, 1)
    }

    /// Accept `n` clusters from `first` as the next planned ones, a run at a time (a
    /// stream's zero segment may claim billions of clusters).
    fn skip(&mut self, data: &[ClusterRun], first: GuestCluster, n: u64) -> Result<()> {
        let (mut g, mut left) = (first, n);
        while left > 0 {
            let Some(r) = data.get(self.run).copied().filter(|_| g == self.next) else {
                return Err(Error::InvalidInput(format!(
                    "qcow2 writer: cluster {g} is not the next planned data cluster"
                )));
            };
            // `next` lies inside run `r`: at least one cluster of it is left.
            let k = left.min(r.end().0.saturating_sub(g.0)).max(1);
            g = g.checked_add(k).ok_or_else(layout_overflow)?;
            left = left.saturating_sub(k);
            self.next = g;
            if self.next >= r.end() {
                self.run = self.run.saturating_add(1);
                if let Some(n) = data.get(self.run) {
                    self.next = n.start;
                }
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
    out: &'a mut dyn SeqWrite,
    layout: &'a Qcow2Layout,
    order: PlanOrder,
    pos: u64,
}

impl<'a> SequentialWriter<'a> {
    /// Write the header and all tables of `layout` to `out`.
    pub fn new(out: &'a mut dyn SeqWrite, layout: &'a Qcow2Layout) -> Result<Self> {
        let used = layout
            .meta_clusters()
            .checked_add(layout.data_clusters)
            .ok_or_else(layout_overflow)?;
        layout.write_head(out, &|c| u16::from(c < used), used, false)?;
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
            layout.fill_zero_entries(li, &mut buf)?;
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
            out.write_all(&buf).map_err(|e| write_error(out, e))?;
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
        // Every cluster must be the next planned one; then the piece goes out in one write
        // (the planned clusters lie back to back in the file), not copied cluster by
        // cluster through the caller's buffer.
        for i in 0..(data.len() as u64) >> cb.get() {
            let g = first.checked_add(i).ok_or_else(layout_overflow)?;
            self.order.take(&self.layout.data, g)?;
        }
        self.out
            .write_all(data)
            .map_err(|e| write_error(self.out, e))?;
        // Planned clusters only: below the planned file size.
        self.pos = self.pos.saturating_add(data.len() as u64);
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
        self.out.flush().map_err(|e| write_error(self.out, e))?;
        Ok(self.pos)
    }
}

/// Writes an image to a new, seekable file, placing each data cluster as it arrives: the
/// clusters of a layout planned for more data than arrives (every selected block, before
/// knowing which are zeros) can be skipped with [`FileWriter::skip_clusters`], so a capture
/// reads its source once. Uncompressed, the clusters lie back to back after the metadata;
/// compressed (deflate — qemu's raw deflate, window 2^12 — or zstd), they are packed byte by
/// byte, a cluster that does not shrink stored as it is at the next cluster boundary. Tables
/// planned for clusters that were all skipped are written empty. Otherwise the same feeding
/// protocol as [`SequentialWriter`].
pub struct FileWriter<'a> {
    file: &'a File,
    layout: Qcow2Layout,
    /// The L2 table being filled (its L1 index) and its bytes.
    l2_current: Option<u64>,
    l2_table: Vec<u8>,
    l2_index: u64,
    /// An entry of `l2_table` may be set (else it is all zeros, without looking: the
    /// tables of billions of skipped clusters are not scanned).
    l2_dirty: bool,
    /// Next free host byte.
    pos: HostOffset,
    /// Refcounts of host clusters from `data_offset` on.
    refcounts: Vec<u16>,
    order: PlanOrder,
    /// `None`: clusters stored as they are.
    comp: Option<Compressor>,
    cbuf: Vec<u8>,
    /// The bytes of one piece, written at once.
    wbuf: Vec<u8>,
    /// Bytes of compressed data written.
    pub compressed_bytes: u64,
    /// Clusters skipped (planned, never written).
    skipped: u64,
}

/// The compressed clusters of a piece: their bytes back to back, and each cluster's length
/// (`None`: it does not shrink and is stored as it is).
struct Packed {
    bytes: Vec<u8>,
    lens: Vec<Option<usize>>,
}

/// zstd level for clusters: zstd's default, which compresses filesystem metadata as well as
/// deflate does in a fraction of its time.
pub const ZSTD_LEVEL: i32 = 3;

/// Room for deflate's worst case on an incompressible cluster of `cs` bytes (< 2 MiB +
/// 256 KiB + 64).
fn scratch_len(cs: usize) -> usize {
    cs.saturating_add(cs >> 3).saturating_add(64)
}

/// One cluster compressor.
enum Compressor {
    Deflate(flate2::Compress),
    Zstd(Box<zstd::bulk::Compressor<'static>>),
}

impl Compressor {
    fn new(c: ClusterCompression) -> Result<Self> {
        Ok(match c {
            // qemu's raw deflate, window 2^12.
            ClusterCompression::Deflate => Compressor::Deflate(
                flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12),
            ),
            ClusterCompression::Zstd => Compressor::Zstd(Box::new(
                zstd::bulk::Compressor::new(ZSTD_LEVEL)
                    .map_err(|e| Error::InvalidInput(format!("zstd: {e}")))?,
            )),
        })
    }

    /// Compress each `cs`-byte cluster of `clusters`, using `cbuf` as scratch space.
    fn pack_into(&mut self, clusters: &[u8], cs: usize, cbuf: &mut [u8]) -> Result<Packed> {
        let mut p = Packed {
            bytes: Vec::with_capacity(clusters.len() / 2),
            lens: Vec::with_capacity(clusters.len().checked_div(cs).unwrap_or(0)),
        };
        for c in clusters.chunks(cs) {
            let n = self.compress(c, cbuf, cs)?;
            if let Some(n) = n {
                p.bytes.extend_from_slice(&cbuf[..n]);
            }
            p.lens.push(n);
        }
        Ok(p)
    }

    /// Compress `src` into `dst`: the compressed length when it is shorter than `limit`.
    fn compress(&mut self, src: &[u8], dst: &mut [u8], limit: usize) -> Result<Option<usize>> {
        match self {
            Compressor::Deflate(c) => {
                c.reset();
                let st = c
                    .compress(src, dst, flate2::FlushCompress::Finish)
                    .map_err(|e| Error::InvalidInput(format!("deflate: {e}")))?;
                // At most dst's length.
                let n = c.total_out() as usize;
                Ok((st == flate2::Status::StreamEnd && n < limit).then_some(n))
            }
            // A frame that does not fit below the limit is an error here: stored as is.
            Compressor::Zstd(c) => {
                let room = limit.min(dst.len());
                Ok(c.compress_to_buffer(src, &mut dst[..room])
                    .ok()
                    .filter(|&n| n < limit))
            }
        }
    }
}

impl<'a> FileWriter<'a> {
    /// A deflate-compressed image planned with room for the worst case.
    pub fn new(
        file: &'a File,
        virtual_size: u64,
        cluster_bits: u32,
        data: &[ClusterRun],
    ) -> Result<Self> {
        let layout = Qcow2Layout::plan_with_capacity(virtual_size, cluster_bits, data, &[], 2)?;
        Self::for_layout(file, layout, Some(ClusterCompression::Deflate))
    }

    /// Write `layout` (planned by [`Qcow2Layout::plan_full`], with `compressed` when
    /// `compression` is given) with clusters compressed by `compression` (recorded in the
    /// layout's header) or stored as they are.
    pub fn for_layout(
        file: &'a File,
        mut layout: Qcow2Layout,
        compression: Option<ClusterCompression>,
    ) -> Result<Self> {
        let cs = layout.cb.size_usize();
        let comp = match compression {
            Some(c) => {
                layout.set_compression(c);
                Some(Compressor::new(c)?)
            }
            None => None,
        };
        Ok(FileWriter {
            file,
            l2_current: None,
            l2_table: vec![0; cs],
            l2_index: 0,
            l2_dirty: false,
            pos: layout.data_offset,
            refcounts: Vec::new(),
            order: PlanOrder::new(&layout.data),
            cbuf: if comp.is_some() {
                vec![0; scratch_len(cs)]
            } else {
                Vec::new()
            },
            comp,
            wbuf: Vec::new(),
            compressed_bytes: 0,
            skipped: 0,
            layout,
        })
    }

    /// Step past `n` planned clusters from `first` without writing them: they read as
    /// zeros (their L2 entries stay empty).
    pub fn skip_clusters(&mut self, first: GuestCluster, n: u64) -> Result<()> {
        self.order.skip(&self.layout.data, first, n)?;
        self.skipped = self.skipped.saturating_add(n);
        Ok(())
    }

    /// Write whole clusters from `first`, skipping the all-zero ones (see
    /// [`FileWriter::skip_clusters`]); returns how many were skipped.
    pub fn write_or_skip(&mut self, first: GuestCluster, data: &[u8]) -> Result<u64> {
        let csz = self.layout.cb.size_usize();
        let mut skipped = 0u64;
        pieces::zero_runs(data, csz, &mut |i, n, zero| {
            let g = first.checked_add(i as u64).ok_or_else(layout_overflow)?;
            if zero {
                skipped = skipped.saturating_add(n as u64);
                return self.skip_clusters(g, n as u64);
            }
            // Whole clusters of `data` (i + n of them lie inside it).
            let bytes = data
                .get(i.saturating_mul(csz)..i.saturating_add(n).saturating_mul(csz))
                .ok_or_else(layout_overflow)?;
            self.write_clusters(g, bytes)
        })?;
        Ok(skipped)
    }

    /// Store whole clusters from `first` back to back at the next free (cluster-aligned)
    /// offset, in one write from the caller's buffer.
    fn write_stored(&mut self, first: GuestCluster, data: &[u8]) -> Result<()> {
        let cb = self.layout.cb;
        let cs = cb.size();
        let start = self.pos;
        let mut host = start;
        for i in 0..(data.len() as u64) >> cb.get() {
            let g = first.checked_add(i).ok_or_else(layout_overflow)?;
            self.order.take(&self.layout.data, g)?;
            self.start_l2(g.l1_index(cb))?;
            be::set_u64(
                &mut self.l2_table,
                g.l2_slot(cb) << 3,
                L2Entry::data(host).0,
            );
            self.l2_dirty = true;
            host = host.checked_add(cs).ok_or_else(layout_overflow)?;
        }
        pwrite_all(self.file, data, start.0, "write")?;
        self.pos = host;
        Ok(())
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

    /// Write the table being filled and step to the next planned one.
    fn flush_l2(&mut self) -> Result<()> {
        let off = self.layout.l2_table_offset(self.l2_index)?.0;
        // A table whose clusters were all skipped stays a hole of the new, empty file.
        if self.l2_dirty && self.l2_table.iter().any(|&b| b != 0) {
            pwrite_all(self.file, &self.l2_table, off, "write")?;
            self.l2_table.fill(0);
        }
        self.l2_dirty = false;
        self.l2_index = self.l2_index.saturating_add(1);
        self.l2_current = None;
        Ok(())
    }

    /// Make the planned table of L1 entry `li` the one being filled, writing the tables
    /// before it (tables of zero-flagged clusters only included).
    fn start_l2(&mut self, li: u64) -> Result<()> {
        loop {
            match self.l2_current {
                Some(cur) if cur == li => return Ok(()),
                Some(_) => self.flush_l2()?,
                None => {
                    let next = usize::try_from(self.l2_index)
                        .ok()
                        .and_then(|i| self.layout.l2_tables.get(i))
                        .copied()
                        .filter(|&n| n <= li)
                        .ok_or_else(layout_overflow)?;
                    if !self.layout.zero.is_empty() {
                        self.layout.fill_zero_entries(next, &mut self.l2_table)?;
                        self.l2_dirty = true;
                    }
                    self.l2_current = Some(next);
                }
            }
        }
    }

    /// Compress and write whole clusters from guest cluster `first` (the next planned ones);
    /// the bytes of the piece go to the file in one write.
    pub fn write_clusters(&mut self, first: GuestCluster, data: &[u8]) -> Result<()> {
        let cb = self.layout.cb;
        let cs = cb.size();
        let csz = cb.size_usize();
        if !data.len().is_multiple_of(csz) {
            return Err(Error::InvalidInput(
                "qcow2 writer: not a whole number of clusters".into(),
            ));
        }
        let Some(comp) = self.comp.as_mut() else {
            return self.write_stored(first, data);
        };
        // One thread: compression is not what a capture waits for (measured on the 16 GiB
        // bench image: 0.40 s of CPU for deflate, 0.09 s for zstd, in captures of 1.3 to
        // 1.9 s; a second compressing thread gave no measurable gain on 2 shared cores).
        let packs = [comp.pack_into(data, csz, &mut self.cbuf)?];
        // Everything from self.pos on is written as one contiguous piece.
        let start = self.pos;
        let mut out = std::mem::take(&mut self.wbuf);
        out.clear();
        let mut raw = data.chunks(csz);
        let mut i = 0u64;
        for pack in &packs {
            let mut at = 0usize;
            for &len in &pack.lens {
                let g = first.checked_add(i).ok_or_else(layout_overflow)?;
                i = i.saturating_add(1);
                let c = raw.next().ok_or_else(layout_overflow)?;
                self.order.take(&self.layout.data, g)?;
                let entry = if let Some(n) = len {
                    let clen = n as u64;
                    let off = self.pos;
                    let bytes = pack
                        .bytes
                        .get(at..at.saturating_add(n))
                        .ok_or_else(layout_overflow)?;
                    at = at.saturating_add(n);
                    out.extend_from_slice(bytes);
                    let e = L2Entry::compressed(off, clen, cb).ok_or_else(layout_overflow)?;
                    // clen >= 1 (a finished compressed stream is never empty).
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
                    // Padding up to the boundary, then the cluster as it is.
                    let pad = off.0.saturating_sub(self.pos.0) as usize;
                    out.resize(out.len().saturating_add(pad), 0);
                    out.extend_from_slice(c);
                    let end = off.checked_add(cs).ok_or_else(layout_overflow)?;
                    self.count(off, HostOffset(end.0.saturating_sub(1)))?;
                    self.pos = end;
                    L2Entry::data(off)
                };
                self.start_l2(g.l1_index(cb))?;
                be::set_u64(&mut self.l2_table, g.l2_slot(cb) << 3, entry.0);
                self.l2_dirty = true;
            }
        }
        pwrite_all(self.file, &out, start.0, "write")?;
        self.wbuf = out;
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
        // Tables after the last data cluster (zero-flagged clusters only).
        while let Some(&li) = usize::try_from(self.l2_index)
            .ok()
            .and_then(|i| self.layout.l2_tables.get(i))
        {
            self.start_l2(li)?;
            self.flush_l2()?;
        }
        let meta = self.layout.meta_clusters();
        let refcounts = std::mem::take(&mut self.refcounts);
        // Stored clusters lie back to back from the metadata's end: no list needed.
        let stored = self.pos.cluster(self.layout.cb).saturating_sub(meta);
        let compressed = self.comp.is_some();
        let rc = |c: u64| -> u16 {
            match c.checked_sub(meta) {
                None => 1,
                Some(i) if !compressed => u16::from(i < stored),
                Some(i) => usize::try_from(i)
                    .ok()
                    .and_then(|i| refcounts.get(i))
                    .copied()
                    .unwrap_or(0),
            }
        };
        // Through a buffer, not gathered whole: the L1 table alone is 8 MiB at 2 TiB.
        let mut head = std::io::BufWriter::with_capacity(
            HEAD_BUFFER,
            WriteAt {
                file: self.file,
                pos: 0,
            },
        );
        // Nothing is referenced past the stored (or compressed) clusters.
        let used = meta.saturating_add(if compressed {
            refcounts.len() as u64
        } else {
            stored
        });
        self.layout.write_head(&mut head, &rc, used, true)?;
        head.flush().map_err(|e| write_error(&head, e))?;
        let end = self
            .pos
            .0
            .checked_next_multiple_of(self.layout.cb.size())
            .ok_or_else(layout_overflow)?;
        self.file
            .set_len(end)
            .map_err(|e| Error::io_at("truncate", end, e))?;
        Ok(end)
    }
}

/// Bytes of the compressed image's head (header, L1, refcounts) written at a time.
const HEAD_BUFFER: usize = 1 << 20;

/// Sequential writes to `file` from byte `pos` on, positioned (the file is shared).
struct WriteAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Write for WriteAt<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.write_at(buf, self.pos)?;
        self.pos = self
            .pos
            .checked_add(n as u64)
            .ok_or_else(|| std::io::Error::other("qcow2 writer: position overflows"))?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SeqWrite for WriteAt<'_> {
    fn taken(&self) -> u64 {
        self.pos
    }
}

/// Where [`write_qcow2`] writes.
pub enum Qcow2Target<'a> {
    /// Any writer, front to back (uncompressed), counting what it took (where a failed
    /// write began).
    Sequential(&'a mut dyn SeqWrite),
    /// A block device, written front to back (uncompressed); an image larger than the
    /// device is refused before the first write.
    Device(&'a File),
    /// A new, empty, seekable file; `compress` selects compressed clusters.
    File {
        file: &'a File,
        compress: Option<ClusterCompression>,
    },
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

/// The clusters of an image of a filesystem of `blocks_count` blocks whose non-zero selected
/// blocks are `data`: one per block when qemu can open that image, else the smallest larger
/// cluster size (up to 2 MiB) whose tables qemu accepts. `compressed`: room for
/// [`FileWriter`]; `overlay`: room for the tables an overlay's zero flags may add.
pub fn choose_grouping(
    bs: BlockSize,
    blocks_count: u64,
    data: &[BlockRun],
    compressed: bool,
    overlay: bool,
) -> Result<Grouping> {
    let vsize = bs
        .bytes_of(blocks_count)
        .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))?;
    let factor = if compressed { 2 } else { 1 };
    let mut refused = None;
    for bits in bs.bits()..=ClusterBits::MAX {
        let g = ClusterBits::new(bits)
            .and_then(|cb| Grouping::new(bs, cb))
            .ok_or_else(|| Error::InvalidInput(format!("block size {bs}")))?;
        // The L1 table first (it depends on the size only): no runs built in vain.
        if let Err(e) = Qcow2Layout::plan_within_limits(vsize, bits, &[], &[], factor, overlay)? {
            refused = Some(e);
            continue;
        }
        let runs = g.clusters(data)?;
        match Qcow2Layout::plan_within_limits(vsize, bits, &runs, &[], factor, overlay)? {
            Ok(_) => return Ok(g),
            Err(e) => refused = Some(e),
        }
    }
    Err(refused.unwrap_or_else(|| Error::InvalidInput(format!("block size {bs}"))))
}

/// An image of clusters of several blocks is refused when it would take more than this many
/// times the bytes of its data blocks...
const MAX_INFLATION: u64 = 16;
/// ...and more than this: small images are never refused.
const INFLATION_FLOOR: u64 = 1 << 30;

/// Refuse, before anything is written, an image whose clusters of several blocks make it
/// absurdly larger than its `data_blocks` (filesystems far past 8 TiB whose metadata blocks
/// lie scattered: each costs a whole cluster, and an L2 table maps few of them). One cluster
/// per block is never refused. A compressed image is estimated (zeros compress away; its
/// tables and a sector per cluster stay).
pub fn check_inflation(
    layout: &Qcow2Layout,
    block_size: BlockSize,
    data_blocks: u64,
    compressed: bool,
) -> Result<()> {
    let cs = layout.cluster_size();
    if cs <= block_size.bytes() {
        return Ok(());
    }
    let data = block_size.bytes_of(data_blocks).unwrap_or(u64::MAX);
    let estimate = if compressed {
        let clusters = layout.data_clusters();
        let packed = data
            .saturating_add(clusters.saturating_mul(512))
            .min(clusters.saturating_mul(cs));
        layout.data_offset().saturating_add(packed)
    } else {
        layout.file_size()
    };
    if estimate > INFLATION_FLOOR && estimate / MAX_INFLATION > data {
        return Err(Error::InvalidInput(format!(
            "a qcow2 image of this filesystem needs {cs}-byte clusters (qemu's table limits) and would take about {estimate} bytes for {data} bytes of data blocks, more than {MAX_INFLATION} times; use the raw or stream format{}",
            if compressed { "" } else { " (or --compress)" }
        )));
    }
    Ok(())
}

/// The grouping, data clusters and zero-flagged clusters of the image of `src`, whose
/// non-zero selected blocks are `runs`; with `overlay`, the clusters that differ from that
/// base (read through the data blocks only: a cluster's other blocks are zeros).
pub fn plan_clusters<S: ReadAt + ?Sized>(
    src: &S,
    runs: &[BlockRun],
    block_size: BlockSize,
    blocks_count: u64,
    compressed: bool,
    overlay: Option<&super::overlay::Base>,
    progress: &mut dyn Progress,
) -> Result<(Grouping, Vec<ClusterRun>, Vec<ClusterRun>)> {
    let g = choose_grouping(
        block_size,
        blocks_count,
        runs,
        compressed,
        overlay.is_some(),
    )?;
    let clusters = g.clusters(runs)?;
    let Some(base) = overlay else {
        return Ok((g, clusters, Vec::new()));
    };
    let vsize = block_size
        .bytes_of(blocks_count)
        .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))?;
    let n = clusters.iter().map(|r| r.len).sum();
    progress.phase("comparing with the backing file", n, Unit::Blocks);
    let cb = g.cluster_bits();
    let o = if g.shift() == 0 {
        super::overlay::compare(src, &clusters, cb, vsize, base, progress)?
    } else {
        let masked = Masked::new(src, runs, block_size, vsize)?;
        super::overlay::compare(&masked, &clusters, cb, vsize, base, progress)?
    };
    Ok((g, o.data, o.zero))
}

/// Write the non-zero selected blocks of `src` (a filesystem of `blocks_count` blocks) as a
/// qcow2 image with one cluster per block (several when qemu needs larger clusters, see
/// [`choose_grouping`]): version 2, or with `overlay` a version 3 overlay on that base
/// holding only the clusters that differ from it.
pub fn write_qcow2<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    block_size: BlockSize,
    target: Qcow2Target<'_>,
    marks: crate::mark::Marks,
    overlay: Option<&super::overlay::Base>,
    progress: &mut dyn Progress,
) -> Result<CopyStats> {
    let vsize = block_size
        .bytes_of(map.blocks_count())
        .ok_or_else(|| Error::InvalidInput("filesystem size overflows".into()))?;
    write_qcow2_sized(
        src, map, block_size, vsize, target, marks, overlay, progress,
    )
}

/// [`write_qcow2`] of a disk of `vsize` bytes (the virtual size), which the map's last block
/// may reach past: a qcow2 INPUT converted as it is, whose size need not be whole blocks.
#[allow(clippy::too_many_arguments)]
pub fn write_qcow2_sized<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    block_size: BlockSize,
    vsize: u64,
    target: Qcow2Target<'_>,
    marks: crate::mark::Marks,
    overlay: Option<&super::overlay::Base>,
    progress: &mut dyn Progress,
) -> Result<CopyStats> {
    let compress = match &target {
        Qcow2Target::File { compress, .. } => *compress,
        _ => None,
    };
    let one_pass = one_pass_layout(
        block_size,
        map.blocks_count(),
        vsize,
        map.runs(),
        compress.is_some(),
        overlay.is_some(),
    )?;
    if let (Some(layout), Qcow2Target::File { file, compress }) = (&one_pass, &target) {
        let layout = layout.clone();
        return write_one_pass(
            src, map, block_size, file, layout, *compress, marks, progress,
        );
    }
    let (runs, mut stats) = nonzero_blocks(src, map, block_size, progress)?;
    let (grouping, data, zero) = plan_clusters(
        src,
        &runs,
        block_size,
        map.blocks_count(),
        compress.is_some(),
        overlay,
        progress,
    )?;
    let cb = grouping.cluster_bits().get();
    // The data blocks of the data clusters, fed to the assembler.
    let data_map = BlockMap::from_runs(grouping.blocks_within(&runs, &data)?, map.blocks_count());
    let mut layout = image_layout(one_pass, vsize, cb, &data, &zero, compress.is_some())?;
    layout.set_marks(marks);
    if let Some(base) = overlay {
        base.record(&mut layout)?;
    }
    check_inflation(
        &layout,
        block_size,
        data_map.selected_blocks(),
        compress.is_some(),
    )?;
    progress.phase("copying", data_map.selected_blocks(), Unit::Blocks);
    let mut done = 0u64;
    let mut feed = |write: &mut dyn FnMut(GuestCluster, &[u8]) -> Result<()>| {
        let mut asm = Assembler::new(grouping);
        pieces::for_each_chunk(src, &data_map, block_size, &mut |blk, data| {
            asm.push(blk, data, &mut *write)?;
            done = done.saturating_add(block_size.blocks_in(data.len() as u64));
            progress.update(done);
            Ok(())
        })?;
        asm.flush(write)
    };
    let mut buffered;
    let mut room = None;
    let sequential: Option<&mut dyn SeqWrite> = match target {
        Qcow2Target::Sequential(out) => Some(out),
        Qcow2Target::Device(file) => {
            room = crate::io::block_device_size(file)?;
            buffered = std::io::BufWriter::with_capacity(1 << 20, Counted::new(file));
            Some(&mut buffered)
        }
        Qcow2Target::File {
            file,
            compress: None,
        } => {
            buffered = std::io::BufWriter::with_capacity(1 << 20, Counted::new(file));
            Some(&mut buffered)
        }
        Qcow2Target::File {
            file,
            compress: Some(c),
        } => {
            let mut w = FileWriter::for_layout(file, layout.clone(), Some(c))?;
            feed(&mut |blk, data| w.write_clusters(blk, data))?;
            stats.bytes_written = w.finish()?;
            None
        }
    };
    if let Some(out) = sequential {
        crate::output::check_room(room, layout.file_size())?;
        let mut w = SequentialWriter::new(out, &layout)?;
        feed(&mut |blk, data| w.write_clusters(blk, data))?;
        stats.bytes_written = w.finish()?;
        out.flush().map_err(|e| write_error(out, e))?;
    }
    progress.finish();
    Ok(stats)
}

/// The layout of an image of the `selected` blocks (sorted, disjoint runs) of a filesystem
/// of `blocks_count` blocks (a virtual size of `vsize` bytes, which the last block may reach
/// past) with one cluster per block: tables and refcount blocks for every
/// selected block, zero or not, so that a new file can be written in one pass, skipping the
/// zero blocks as they are found ([`FileWriter`]). Every target uses it (with
/// [`Qcow2Layout::with_data`] once the data is known), so an image has the same bytes in a
/// file, on a pipe or from a stream. `None` when qemu's limits need clusters of several
/// blocks, and for an overlay: those are planned from their data clusters.
pub fn one_pass_layout(
    block_size: BlockSize,
    blocks_count: u64,
    vsize: u64,
    selected: &[BlockRun],
    compressed: bool,
    overlay: bool,
) -> Result<Option<Qcow2Layout>> {
    if overlay {
        return Ok(None);
    }
    let g = choose_grouping(block_size, blocks_count, selected, compressed, false)?;
    if g.shift() != 0 {
        return Ok(None);
    }
    let clusters = g.clusters(selected)?;
    Qcow2Layout::plan_full(vsize, g.cluster_bits().get(), &clusters, &[], compressed).map(Some)
}

/// The layout an image is written with once its data clusters `data` (zero-flagged `zero`,
/// clusters of `2^cluster_bits` bytes) are known: the one-pass layout holding them when there
/// is one ([`one_pass_layout`]), so that every target writes the same bytes; else planned
/// from the data clusters.
pub fn image_layout(
    one_pass: Option<Qcow2Layout>,
    virtual_size: u64,
    cluster_bits: u32,
    data: &[ClusterRun],
    zero: &[ClusterRun],
    compressed: bool,
) -> Result<Qcow2Layout> {
    match one_pass {
        Some(l) => l.with_data(cluster_bits, data),
        None => Qcow2Layout::plan_full(virtual_size, cluster_bits, data, zero, compressed),
    }
}

/// Read the selected blocks of `src` once, writing the non-zero ones as they come and
/// skipping the zeros (see [`FileWriter`]); `layout` is [`one_pass_layout`]'s.
#[allow(clippy::too_many_arguments)]
fn write_one_pass<S: ReadAt + ?Sized>(
    src: &S,
    map: &BlockMap,
    block_size: BlockSize,
    file: &File,
    mut layout: Qcow2Layout,
    compress: Option<ClusterCompression>,
    marks: crate::mark::Marks,
    progress: &mut dyn Progress,
) -> Result<CopyStats> {
    layout.set_marks(marks);
    // One cluster per block: guest cluster numbers are block numbers.
    let cluster = |b: crate::units::FsBlock| GuestCluster(b.get());
    let mut w = FileWriter::for_layout(file, layout, compress)?;
    progress.phase("copying", map.selected_blocks(), Unit::Blocks);
    let (mut done, mut zero_blocks) = (0u64, 0u64);
    let rep = pieces::for_each_piece(src, map, block_size, &mut |p| {
        match p {
            pieces::Piece::Zero(b, n) => {
                w.skip_clusters(cluster(b), n)?;
                zero_blocks = zero_blocks.saturating_add(n);
                done = done.saturating_add(n);
            }
            pieces::Piece::Data(b, data) => {
                let skipped = w.write_or_skip(cluster(b), data)?;
                zero_blocks = zero_blocks.saturating_add(skipped);
                done = done.saturating_add(block_size.blocks_in(data.len() as u64));
            }
        }
        progress.update(done);
        Ok(())
    })?;
    let bytes_written = w.finish()?;
    progress.finish();
    Ok(CopyStats {
        blocks: map.selected_blocks(),
        zero_blocks,
        past_end_blocks: rep.past_end_blocks,
        unreadable_blocks: rep.unreadable_blocks,
        unreadable: rep.unreadable,
        bytes_written,
        ..CopyStats::default()
    })
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
            // Whole 512-byte sectors (the reader cuts any other size down, as qemu does).
            let size = (guest << cb) - next() % (cs as u64 / 512) * 512;
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
            let mut cw = FileWriter::new(&f, size, cb, &runs).unwrap();
            for r in &runs {
                for g in r.clusters() {
                    cw.write_clusters(g, &fill(g)).unwrap();
                }
            }
            cw.finish().unwrap();
            let mut comp = Vec::new();
            std::io::Read::read_to_end(&mut &f, &mut comp).unwrap();
            check_refcounts(&comp, cb, true);
            // Stored, planned for more than arrives (one pass): every cluster skipped or
            // written at random, in pieces of up to 4 clusters.
            let f = tempfile::tempfile().unwrap();
            let mut sw = FileWriter::for_layout(&f, l.clone(), None).unwrap();
            let mut written: Vec<ClusterRun> = Vec::new();
            // Its own sequence: the cases above stay the ones they were.
            let mut y = 0x9E37_79B9_7F4A_7C15u64 ^ case;
            let mut next = move || {
                y ^= y << 13;
                y ^= y >> 7;
                y ^= y << 17;
                y
            };
            for r in &runs {
                let mut g = r.start;
                while g < r.end() {
                    let n = (1 + next() % 4).min(r.end().0 - g.0);
                    if next() % 3 == 0 {
                        sw.skip_clusters(g, n).unwrap();
                    } else {
                        let data: Vec<u8> =
                            (g.0..g.0 + n).flat_map(|c| fill(GuestCluster(c))).collect();
                        sw.write_clusters(g, &data).unwrap();
                        match written.last_mut() {
                            Some(w) if w.end() == g => w.len += n,
                            _ => written.push(run(g.0, n)),
                        }
                    }
                    g = GuestCluster(g.0 + n);
                }
            }
            let len = sw.finish().unwrap();
            assert_eq!(l.clone().with_data(cb, &written).unwrap().file_size(), len);
            let mut stored = Vec::new();
            std::io::Read::read_to_end(&mut &f, &mut stored).unwrap();
            assert_eq!(stored.len() as u64, len);
            check_refcounts(&stored, cb, false);
            let r = Qcow2Reader::open(MemSource(stored)).unwrap();
            assert_eq!(r.allocated_runs(false).unwrap(), written, "case {case}");
            for w in &written {
                for g in w.clusters() {
                    let mut buf = vec![0u8; cs];
                    let got = r.read_at(&mut buf, g.0 << cb).unwrap();
                    assert_eq!(buf[..got], fill(g)[..got], "case {case} cluster {g}");
                }
            }
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

    /// A v3 overlay layout: zero-flagged clusters (also in tables holding no data), the
    /// backing name and format in cluster 0, zstd or deflate clusters; read back as one layer.
    #[test]
    fn overlay_layouts_round_trip() {
        use crate::qcow2::entry::Mapping;
        let cb = 10;
        let cs = 1usize << cb;
        let data = [run(3, 2), run(600, 1)];
        // Table 2 (clusters 256..384) holds zero flags only; 5 is next to data.
        let zero = [run(5, 1), run(300, 10), run(999, 1)];
        for compress in [
            None,
            Some(ClusterCompression::Deflate),
            Some(ClusterCompression::Zstd),
        ] {
            let mut l =
                Qcow2Layout::plan_full(1000 << cb, cb, &data, &zero, compress.is_some()).unwrap();
            l.set_backing(b"../base.qcow2", "qcow2").unwrap();
            assert_eq!(l.version(), 3);
            assert_eq!(l.zero_clusters(), 12);
            let img = match compress {
                None => {
                    let mut out = Vec::new();
                    let mut w = SequentialWriter::new(&mut out, &l).unwrap();
                    w.write_clusters(GuestCluster(3), &vec![7u8; 2 * cs])
                        .unwrap();
                    w.write_clusters(GuestCluster(600), &vec![9u8; cs]).unwrap();
                    w.finish().unwrap();
                    check_refcounts(&out, cb, false);
                    out
                }
                Some(c) => {
                    let f = tempfile::tempfile().unwrap();
                    let mut w = FileWriter::for_layout(&f, l.clone(), Some(c)).unwrap();
                    w.write_clusters(GuestCluster(3), &vec![7u8; 2 * cs])
                        .unwrap();
                    w.write_clusters(GuestCluster(600), &vec![9u8; cs]).unwrap();
                    w.finish().unwrap();
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(&mut &f, &mut out).unwrap();
                    check_refcounts(&out, cb, true);
                    out
                }
            };
            assert!(Qcow2Reader::open(MemSource(img.clone())).is_err());
            let r = Qcow2Reader::open_layer(MemSource(img.clone())).unwrap();
            let h = r.header();
            assert_eq!(h.version, 3);
            assert_eq!(h.backing_format(), Some(&b"qcow2"[..]));
            let (off, len) = (
                h.backing_file_offset.0 as usize,
                h.backing_file_size as usize,
            );
            assert_eq!(&img[off..off + len], b"../base.qcow2");
            let want_c = match compress {
                Some(ClusterCompression::Zstd) => ClusterCompression::Zstd,
                _ => ClusterCompression::Deflate,
            };
            assert_eq!(h.cluster_compression().unwrap(), want_c);
            for g in [5u64, 300, 309, 999] {
                assert_eq!(r.mapping(GuestCluster(g)).unwrap(), Mapping::Zero, "{g}");
            }
            for g in [2u64, 310, 998] {
                assert_eq!(r.mapping(GuestCluster(g)).unwrap(), Mapping::Unallocated);
            }
            let mut buf = vec![0u8; cs];
            r.read_at(&mut buf, 4 << cb).unwrap();
            assert!(buf.iter().all(|&b| b == 7));
            r.read_at(&mut buf, 600 << cb).unwrap();
            assert!(buf.iter().all(|&b| b == 9));
        }
        // A cluster planned as data and zero, and names qcow2 cannot hold, are refused.
        assert!(Qcow2Layout::plan_full(1000 << cb, cb, &data, &[run(4, 1)], false).is_err());
        let mut l = Qcow2Layout::plan(1000 << cb, cb, &data).unwrap();
        assert!(l.set_backing(&[b'a'; 1024], "raw").is_err());
        assert!(l.set_backing(b"a\0b", "raw").is_err());
        assert!(l.set_backing(b"", "raw").is_err());
    }

    /// The cluster size stays the block size up to qemu's limits, exactly, then grows to the
    /// smallest that fits (L1 table ≤ 32 MiB, refcount table ≤ 8 MiB), up to 2 MiB.
    #[test]
    fn grouping_thresholds() {
        let bits = |bs: u32, blocks: u64, data: &[BlockRun], compressed: bool| {
            choose_grouping(BlockSize::new(bs).unwrap(), blocks, data, compressed, false)
                .map(|g| g.cluster_bits().get())
        };
        let some = [BlockRun::new(crate::units::FsBlock(0), 3)];
        for (bs, blocks, want) in [
            (4096, 1u64 << 31, 12),
            (4096, (1 << 31) + 1, 13),
            (4096, 9 << 28, 13),
            (4096, 1 << 32, 13),
            (4096, 1 << 33, 13),
            (4096, (1 << 33) + 1, 14),
            (4096, 1 << 34, 14),
            (1024, 1 << 29, 10),
            (1024, (1 << 29) + 1, 11),
            (2048, 1 << 30, 11),
            (65536, 1 << 35, 16),
            (65536, (1 << 35) + 1, 17),
            // 2^61 bytes: the largest disk qemu maps (2 MiB clusters).
            (65536, 1 << 45, 21),
            (4096, 1 << 49, 21),
        ] {
            assert_eq!(
                bits(bs, blocks, &some, false).unwrap(),
                want,
                "{bs} x {blocks}"
            );
        }
        for (bs, blocks, why) in [
            (65536, (1u64 << 45) + 1, "qemu's limit is 32 MiB"),
            (4096, 1 << 50, "qemu's limit is 32 MiB"),
            // Past qcow2's signed 64-bit size.
            (4096, u64::MAX / 4096, "too large"),
        ] {
            let e = bits(bs, blocks, &some, false).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        assert!(bits(4096, u64::MAX, &some, false).is_err());
        // The refcount table decides: 4 TiB of data fits 4 KiB clusters uncompressed; the
        // compressed writer's room for twice that does not.
        let full = [BlockRun::new(crate::units::FsBlock(0), 1 << 30)];
        assert_eq!(bits(4096, 1 << 30, &full, false).unwrap(), 12);
        assert_eq!(bits(4096, 1 << 30, &full, true).unwrap(), 13);
        // Every plan chosen is one qemu opens.
        let g = choose_grouping(BlockSize::new(4096).unwrap(), 1 << 30, &full, true, true).unwrap();
        let runs = g.clusters(&full).unwrap();
        let l = Qcow2Layout::plan_full(1 << 42, g.cluster_bits().get(), &runs, &[], true).unwrap();
        assert!(u64::from(l.rt_clusters) * l.cluster_size() <= MAX_REFTABLE_BYTES);
        assert!(u64::from(l.l1_entries) * 8 <= MAX_L1_BYTES);
    }

    /// Clusters of several blocks holding one block each: refused past 16 times the data
    /// (and 1 GiB); full clusters, small images and one cluster per block never are.
    #[test]
    fn inflation_is_bounded() {
        let bs = BlockSize::new(4096).unwrap();
        // 1000 scattered 2 MiB clusters: a 2 GB image.
        let runs: Vec<ClusterRun> = (0..1000).map(|i| run(i * 7, 1)).collect();
        let l = Qcow2Layout::plan(1 << 40, 21, &runs).unwrap();
        let e = check_inflation(&l, bs, 1000, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2097152-byte clusters") && e.contains("--compress"),
            "{e}"
        );
        // Compressed, the zeros shrink away.
        check_inflation(&l, bs, 1000, true).unwrap();
        check_inflation(&l, bs, 1000 * 512, false).unwrap();
        check_inflation(&l, bs, 1000 * 512 / 8, false).unwrap();
        assert!(check_inflation(&l, bs, 1000 * 512 / 17, false).is_err());
        let small = Qcow2Layout::plan(1 << 40, 21, &runs[..100]).unwrap();
        check_inflation(&small, bs, 100, false).unwrap();
        let one = Qcow2Layout::plan(1 << 40, 12, &runs).unwrap();
        check_inflation(&one, bs, 1, false).unwrap();
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
