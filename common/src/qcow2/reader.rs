//! The qcow2 reader: the active layer of any version 2 or 3 image as a random-access
//! [`ReadAt`] of its virtual disk.
//!
//! Every number taken from the file is checked before use: tables must lie inside the file
//! and outside the header, L1 and refcount tables; nothing is allocated from a size that has
//! not been bounded by the file size or a fixed limit. L2 tables are kept in a bounded LRU
//! cache; the last decompressed cluster is cached too.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;

use super::entry::{L1Entry, L2Entry, Mapping, OFFSET_MASK};
use super::header::{Header, MAX_CLUSTER_BITS};
use crate::blockmap::Run;
use crate::io::ReadAt;
use crate::{Error, Result};

/// qemu's limit on the L1 table (32 MiB).
const MAX_L1_BYTES: u64 = 32 << 20;
/// Memory for cached L2 tables.
const L2_CACHE_BYTES: u64 = 32 << 20;
const L2_CACHE_MAX_TABLES: usize = 4096;
/// Largest region reported by one `data_region` call (callers read at most this much at a
/// time, so looking further ahead would only repeat work).
const MAX_REGION: u64 = crate::pieces::IO_CHUNK as u64;

struct L2Cache {
    tables: HashMap<u64, (u64, Rc<[u64]>)>,
    clock: u64,
    capacity: usize,
}

struct Inflated {
    inflate: flate2::Decompress,
    input: Vec<u8>,
    /// Guest cluster whose data `out` holds.
    cluster: Option<u64>,
    out: Vec<u8>,
}

/// A qcow2 image read through its host file `S`.
pub struct Qcow2Reader<S: ReadAt> {
    host: S,
    header: Header,
    host_size: u64,
    l1: Vec<L1Entry>,
    /// Host byte ranges tables must not overlap: header cluster, L1, refcount table.
    reserved: Vec<Range<u64>>,
    /// Host offsets of the active L2 tables, sorted (data must not land on them).
    l2_offsets: Vec<u64>,
    cache: RefCell<L2Cache>,
    inflated: RefCell<Inflated>,
}

/// True if the first bytes of a file are the qcow2 magic.
pub fn is_qcow2(first: &[u8]) -> bool {
    first.len() >= 4 && first[..4] == super::header::MAGIC
}

impl<S: ReadAt> Qcow2Reader<S> {
    /// Open the image in `host`: parse and check the header, load the L1 table.
    pub fn open(host: S) -> Result<Self> {
        let host_size = host.size();
        let first_len = host_size.min(1 << MAX_CLUSTER_BITS) as usize;
        let mut first = vec![0u8; first_len];
        let n = host.read_at(&mut first, 0)?;
        first.truncate(n);
        // Extensions are parsed within the first cluster; cluster_bits itself is checked
        // by the parser (an out-of-range value parses the whole prefix and fails there).
        let cb = first
            .get(20..24)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let limit = if (super::header::MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cb) {
            first.len().min(1usize << cb)
        } else {
            first.len()
        };
        let header = Header::parse(&first[..limit])?;
        header.check_supported()?;
        let cs = header.cluster_size();
        let what = "qcow2 L1 table";
        let needed = header.size.div_ceil(cs).div_ceil(cs / 8);
        let l1_bytes = u64::from(header.l1_size) * 8;
        if u64::from(header.l1_size) < needed {
            return Err(Error::corrupt(
                what,
                format!(
                    "{} entries cannot map a virtual size of {} bytes (needs {needed})",
                    header.l1_size, header.size
                ),
            ));
        }
        if l1_bytes > MAX_L1_BYTES {
            return Err(Error::corrupt(
                what,
                format!("{} entries is larger than 32 MiB", header.l1_size),
            ));
        }
        let l1_off = header.l1_table_offset;
        if l1_bytes > 0 {
            if l1_off % cs != 0 || l1_off == 0 {
                return Err(Error::corrupt(
                    what,
                    format!("offset {l1_off} is not a cluster boundary after the header"),
                ));
            }
            if l1_off.checked_add(l1_bytes).is_none_or(|e| e > host_size) {
                return Err(Error::corrupt(
                    what,
                    format!(
                        "{} entries at byte {l1_off} extend past the end of the file ({host_size} bytes)",
                        header.l1_size
                    ),
                ));
            }
        }
        let mut raw = vec![0u8; l1_bytes as usize];
        host.read_exact_at(&mut raw, l1_off, &|| what.to_string())?;
        let l1: Vec<L1Entry> = raw
            .chunks_exact(8)
            .map(|c| L1Entry(u64::from_be_bytes(c.try_into().unwrap_or([0; 8]))))
            .collect();
        let mut reserved = vec![0..cs, l1_off..l1_off + l1_bytes];
        let rt_bytes = u64::from(header.refcount_table_clusters) * cs;
        if let Some(e) = header.refcount_table_offset.checked_add(rt_bytes)
            && header.refcount_table_offset != 0
        {
            reserved.push(header.refcount_table_offset..e);
        }
        let mut l2_offsets: Vec<(u64, usize)> = l1
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.l2_offset().map(|o| (o, i)))
            .collect();
        l2_offsets.sort_unstable();
        if let Some(w) = l2_offsets.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::corrupt(
                what,
                format!(
                    "entries {} and {} share the L2 table at byte {}",
                    w[0].1.min(w[1].1),
                    w[0].1.max(w[1].1),
                    w[0].0
                ),
            ));
        }
        let l2_offsets: Vec<u64> = l2_offsets.into_iter().map(|(o, _)| o).collect();
        let capacity = ((L2_CACHE_BYTES / cs) as usize).clamp(8, L2_CACHE_MAX_TABLES);
        Ok(Qcow2Reader {
            host,
            host_size,
            l1,
            reserved,
            l2_offsets,
            cache: RefCell::new(L2Cache {
                tables: HashMap::new(),
                clock: 0,
                capacity,
            }),
            inflated: RefCell::new(Inflated {
                inflate: flate2::Decompress::new(false),
                input: Vec::new(),
                cluster: None,
                out: vec![0; cs as usize],
            }),
            header,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Virtual disk size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.header.size
    }

    pub fn cluster_bits(&self) -> u32 {
        self.header.cluster_bits
    }

    fn per_l2(&self) -> u64 {
        self.header.cluster_size() / 8
    }

    /// The L2 table of L1 entry `li`, or `None` when unallocated.
    fn l2_table(&self, li: u64) -> Result<Option<Rc<[u64]>>> {
        let Some(&e) = self.l1.get(li as usize) else {
            return Ok(None);
        };
        if e.0 == 0 {
            return Ok(None);
        }
        let what = || format!("qcow2 L1 entry {li}");
        if e.reserved_bits() != 0 {
            return Err(Error::corrupt(
                what(),
                format!("reserved bits set ({:#x})", e.0),
            ));
        }
        let Some(off) = e.l2_offset() else {
            return Ok(None);
        };
        let cs = self.header.cluster_size();
        if off % cs != 0 {
            return Err(Error::corrupt(
                what(),
                format!("L2 table offset {off} is not cluster-aligned"),
            ));
        }
        if off.checked_add(cs).is_none_or(|end| end > self.host_size) {
            return Err(Error::corrupt(
                what(),
                format!(
                    "L2 table at byte {off} lies past the end of the file ({} bytes)",
                    self.host_size
                ),
            ));
        }
        if let Some(r) = self
            .reserved
            .iter()
            .find(|r| r.start < off + cs && off < r.end)
        {
            return Err(Error::corrupt(
                what(),
                format!(
                    "L2 table at byte {off} overlaps the image's own metadata at bytes {}..{}",
                    r.start, r.end
                ),
            ));
        }
        let mut cache = self.cache.borrow_mut();
        cache.clock += 1;
        let now = cache.clock;
        if let Some(t) = cache.tables.get_mut(&off) {
            t.0 = now;
            return Ok(Some(t.1.clone()));
        }
        let mut raw = vec![0u8; cs as usize];
        self.host.read_exact_at(&mut raw, off, &|| what())?;
        let table: Rc<[u64]> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if cache.tables.len() >= cache.capacity
            && let Some(&old) = cache.tables.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| k)
        {
            cache.tables.remove(&old);
        }
        cache.tables.insert(off, (now, table.clone()));
        Ok(Some(table))
    }

    fn check_entry(&self, g: u64, e: L2Entry) -> Result<Mapping> {
        let cb = self.header.cluster_bits;
        let what = || format!("qcow2 L2 entry of guest cluster {g}");
        if e.reserved_bits() != 0 {
            return Err(Error::corrupt(
                what(),
                format!("reserved bits set ({:#x})", e.0),
            ));
        }
        let m = e.mapping(cb);
        match m {
            Mapping::Data(h) => {
                if h % self.header.cluster_size() != 0 {
                    return Err(Error::corrupt(
                        what(),
                        format!("data offset {h} is not cluster-aligned"),
                    ));
                }
                if self.l2_offsets.binary_search(&h).is_ok()
                    || self
                        .reserved
                        .iter()
                        .any(|r| r.start < h + self.header.cluster_size() && h < r.end)
                {
                    return Err(Error::corrupt(
                        what(),
                        format!("data cluster at byte {h} overlaps the image's metadata"),
                    ));
                }
                if h >= self.host_size {
                    return Err(Error::corrupt(
                        what(),
                        format!(
                            "data cluster at byte {h} lies past the end of the file ({} bytes)",
                            self.host_size
                        ),
                    ));
                }
            }
            Mapping::Compressed { offset, .. }
                if offset < self.header.cluster_size() || offset >= self.host_size =>
            {
                return Err(Error::corrupt(
                    what(),
                    format!(
                        "compressed data at byte {offset} lies in the header or past the end of the file ({} bytes)",
                        self.host_size
                    ),
                ));
            }
            _ => {}
        }
        Ok(m)
    }

    /// Where guest cluster `g` is stored.
    pub fn mapping(&self, g: u64) -> Result<Mapping> {
        let per = self.per_l2();
        match self.l2_table(g / per)? {
            None => Ok(Mapping::Unallocated),
            Some(t) => self.check_entry(g, L2Entry(t[(g % per) as usize])),
        }
    }

    /// The first guest cluster at or after `g` (below `end`) that holds stored data
    /// (uncompressed or compressed; with `zero`, zero-flagged clusters too), or `None`.
    fn next_allocated(&self, mut g: u64, end: u64, zero: bool) -> Result<Option<u64>> {
        let per = self.per_l2();
        while g < end {
            let li = g / per;
            match self.l2_table(li)? {
                None => {
                    // Skip to the next allocated L1 entry.
                    let next = self.l1[(li as usize + 1).min(self.l1.len())..]
                        .iter()
                        .position(|e| e.0 & OFFSET_MASK != 0 || e.reserved_bits() != 0)
                        .map(|p| (li + 1 + p as u64) * per);
                    match next {
                        Some(n) => g = n,
                        None => return Ok(None),
                    }
                }
                Some(t) => {
                    let tend = ((li + 1) * per).min(end);
                    while g < tend {
                        let e = L2Entry(t[(g % per) as usize]);
                        if e.0 != 0 {
                            match self.check_entry(g, e)? {
                                Mapping::Data(_) | Mapping::Compressed { .. } => {
                                    return Ok(Some(g));
                                }
                                Mapping::Zero if zero => return Ok(Some(g)),
                                _ => {}
                            }
                        }
                        g += 1;
                    }
                }
            }
        }
        Ok(None)
    }

    fn guest_clusters(&self) -> u64 {
        self.header.size.div_ceil(self.header.cluster_size())
    }

    /// All guest clusters that hold stored data, as sorted runs (unallocated clusters
    /// excluded; zero-flagged clusters included only with `zero`). Memory follows the
    /// number of runs.
    pub fn allocated_runs(&self, zero: bool) -> Result<Vec<Run>> {
        let total = self.guest_clusters();
        let mut runs: Vec<Run> = Vec::new();
        let mut g = 0;
        while let Some(s) = self.next_allocated(g, total, zero)? {
            let mut e = s + 1;
            while e < total
                && match self.mapping(e)? {
                    Mapping::Data(_) | Mapping::Compressed { .. } => true,
                    Mapping::Zero => zero,
                    Mapping::Unallocated => false,
                }
            {
                e += 1;
            }
            runs.push(Run {
                start: s,
                len: e - s,
            });
            g = e;
        }
        Ok(runs)
    }

    /// Decompress guest cluster `g` stored at `offset` (`len` bytes) into the cache.
    fn inflate(&self, g: u64, offset: u64, len: u64) -> Result<std::cell::RefMut<'_, Inflated>> {
        let mut st = self.inflated.borrow_mut();
        if st.cluster == Some(g) {
            return Ok(st);
        }
        let avail = len.min(self.host_size - offset) as usize;
        let s = &mut *st;
        s.input.resize(avail, 0);
        let n = self.host.read_at(&mut s.input, offset)?;
        s.inflate.reset(false);
        s.cluster = None;
        let what = || format!("qcow2 compressed cluster {g} at byte {offset}");
        let r = s
            .inflate
            .decompress(&s.input[..n], &mut s.out, flate2::FlushDecompress::Finish);
        match r {
            Ok(_) if s.inflate.total_out() == s.out.len() as u64 => {}
            Ok(_) => {
                return Err(Error::corrupt(
                    what(),
                    format!(
                        "inflates to {} bytes instead of {}",
                        s.inflate.total_out(),
                        s.out.len()
                    ),
                ));
            }
            Err(e) => return Err(Error::corrupt(what(), format!("bad deflate data: {e}"))),
        }
        s.cluster = Some(g);
        Ok(st)
    }
}

impl<S: ReadAt> ReadAt for Qcow2Reader<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let size = self.header.size;
        if offset >= size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - offset) as usize;
        let cb = self.header.cluster_bits;
        let cs = self.header.cluster_size();
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let g = pos >> cb;
            let within = pos & (cs - 1);
            let take = ((cs - within) as usize).min(n - done);
            match self.mapping(g)? {
                Mapping::Unallocated | Mapping::Zero => buf[done..done + take].fill(0),
                Mapping::Data(h) => {
                    // Coalesce host-contiguous clusters into one read.
                    let mut len = take;
                    while done + len < n {
                        let ng = g + ((within as usize + len) as u64 >> cb);
                        let expect = h + (ng - g) * cs;
                        if self.mapping(ng)? != Mapping::Data(expect) {
                            break;
                        }
                        len += (cs as usize).min(n - done - len);
                    }
                    let dst = &mut buf[done..done + len];
                    let got = self.host.read_at(dst, h + within)?;
                    // A last cluster cut short by the end of the file reads as zeros.
                    dst[got..].fill(0);
                    done += len;
                    continue;
                }
                Mapping::Compressed { offset: co, len } => {
                    let st = self.inflate(g, co, len)?;
                    buf[done..done + take]
                        .copy_from_slice(&st.out[within as usize..within as usize + take]);
                }
            }
            done += take;
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.header.size
    }

    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        let size = self.header.size;
        if offset >= size {
            return Ok(None);
        }
        let cb = self.header.cluster_bits;
        let total = self.guest_clusters();
        let Some(s) = self.next_allocated(offset >> cb, total, false)? else {
            return Ok(None);
        };
        let limit = total.min(s + (MAX_REGION >> cb).max(1));
        let mut e = s + 1;
        while e < limit
            && matches!(
                self.mapping(e)?,
                Mapping::Data(_) | Mapping::Compressed { .. }
            )
        {
            e += 1;
        }
        let start = (s << cb).max(offset);
        let end = (e << cb).min(size);
        Ok(Some(start..end))
    }
}

/// A [`ReadAt`] window of another source from byte `base` on (the `-o` offset inside a
/// qcow2 virtual disk).
pub struct Shifted<S: ReadAt> {
    pub inner: S,
    pub base: u64,
}

impl<S: ReadAt> ReadAt for Shifted<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        match offset.checked_add(self.base) {
            Some(o) => self.inner.read_at(buf, o),
            None => Ok(0),
        }
    }

    fn size(&self) -> u64 {
        self.inner.size().saturating_sub(self.base)
    }

    fn data_region(&self, offset: u64) -> Result<Option<Range<u64>>> {
        let Some(o) = offset.checked_add(self.base) else {
            return Ok(None);
        };
        Ok(self
            .inner
            .data_region(o)?
            .map(|r| r.start.saturating_sub(self.base)..r.end.saturating_sub(self.base)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemSource;
    use crate::qcow2::writer::{CompressedWriter, Qcow2Layout, SequentialWriter};

    /// A disk of `n` clusters where cluster i (if in `runs`) is filled with a pattern.
    fn pattern(g: u64, cs: usize) -> Vec<u8> {
        (0..cs)
            .map(|i| ((g as usize * 7 + i / 13) % 251) as u8)
            .collect()
    }

    fn runs() -> Vec<Run> {
        vec![
            Run { start: 0, len: 3 },
            Run { start: 100, len: 1 },
            Run {
                start: 130,
                len: 200,
            },
            Run { start: 999, len: 1 },
        ]
    }

    fn sequential_image(cb: u32, size: u64) -> Vec<u8> {
        let cs = 1usize << cb;
        let layout = Qcow2Layout::plan(size, cb, &runs()).unwrap();
        let mut out = Vec::new();
        let mut w = SequentialWriter::new(&mut out, &layout).unwrap();
        for r in runs() {
            for g in r.start..r.end() {
                w.write_clusters(g, &pattern(g, cs)).unwrap();
            }
        }
        let n = w.finish().unwrap();
        assert_eq!(n, layout.file_size());
        assert_eq!(out.len() as u64, n);
        out
    }

    fn check_contents<S: ReadAt>(r: &Qcow2Reader<S>, cb: u32) {
        let cs = 1usize << cb;
        let mut buf = vec![0u8; cs];
        let mut want = runs().into_iter().flat_map(|r| r.start..r.end()).peekable();
        for g in 0..1000u64 {
            r.read_exact_at(&mut buf, g << cb, &|| "test".into())
                .unwrap();
            if want.peek() == Some(&g) {
                want.next();
                assert!(buf == pattern(g, cs), "cluster {g}");
            } else {
                assert!(buf.iter().all(|&b| b == 0), "cluster {g}");
            }
        }
        assert_eq!(r.allocated_runs(false).unwrap(), runs());
        // One large read across runs and holes.
        let mut big = vec![0u8; 400 << cb];
        r.read_exact_at(&mut big, 0, &|| "test".into()).unwrap();
        assert!(big[130 << cb..(130 << cb) + cs] == pattern(130, cs)[..]);
        assert_eq!(
            r.data_region(3 << cb).unwrap(),
            Some((100 << cb)..(101 << cb))
        );
        assert_eq!(r.data_region(1000 << cb).unwrap(), None);
    }

    #[test]
    fn sequential_writer_round_trips() {
        for cb in [9u32, 10, 12, 16] {
            let img = sequential_image(cb, 1000 << cb);
            let r = Qcow2Reader::open(MemSource(img)).unwrap();
            assert_eq!(r.header().version, 2);
            check_contents(&r, cb);
        }
    }

    #[test]
    fn compressed_writer_round_trips() {
        for cb in [9u32, 12, 16] {
            let cs = 1usize << cb;
            let f = tempfile::tempfile().unwrap();
            let mut w = CompressedWriter::new(&f, 1000 << cb, cb, &runs()).unwrap();
            for r in runs() {
                for g in r.start..r.end() {
                    let mut data = pattern(g, cs);
                    if g == 999 {
                        // Incompressible: stored uncompressed.
                        let mut x = 12345u32;
                        for b in &mut data {
                            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                            *b = (x >> 16) as u8;
                        }
                    }
                    w.write_clusters(g, &data).unwrap();
                }
            }
            let n = w.finish().unwrap();
            let r = Qcow2Reader::open(crate::io::FileSource::from_file(f, 0).unwrap()).unwrap();
            assert_eq!(r.size(), 1000 << cb);
            assert!(matches!(r.mapping(0).unwrap(), Mapping::Compressed { .. }));
            assert!(matches!(r.mapping(999).unwrap(), Mapping::Data(_)));
            let mut buf = vec![0u8; cs];
            r.read_exact_at(&mut buf, 130 << cb, &|| "t".into())
                .unwrap();
            assert!(buf == pattern(130, cs));
            assert!(n < (runs().iter().map(|r| r.len).sum::<u64>() << cb));
        }
    }

    #[test]
    fn mutated_images_never_panic() {
        let good = sequential_image(9, 1000 << 9);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut buf = vec![0u8; 4096];
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() % b.len() as u64) as usize;
                // Bias towards the header and tables at the front.
                let at = if next() % 2 == 0 { at % 2048 } else { at };
                b[at] = next() as u8;
            }
            if next() % 8 == 0 {
                let l = (next() % b.len() as u64) as usize;
                b.truncate(l);
            }
            if let Ok(r) = Qcow2Reader::open(MemSource(b)) {
                let _ = r.allocated_runs(true);
                let _ = r.read_at(&mut buf, next() % (1000 << 9));
                let _ = r.data_region(next() % (1000 << 9));
            }
        }
    }
}
