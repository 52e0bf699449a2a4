//! Filesystem blocks in guest clusters of one or more blocks.
//!
//! e2i writes one cluster per block while qemu can open that image (cluster size = block
//! size, as `e2image -Q`). qemu refuses L1 tables above 32 MiB and refcount tables above
//! 8 MiB, which one cluster per 4 KiB block exceeds past 8 TiB (past 512 GiB with 1 KiB
//! blocks). Larger filesystems get the smallest larger cluster size that fits
//! ([`super::writer::choose_grouping`]): a cluster then holds `2^shift` blocks, is stored
//! when any of them is selected and non-zero, and its other blocks read as zeros, so the
//! image still converts to exactly the raw image.
//!
//! [`Assembler`] builds those clusters, one at a time, from the data blocks arriving in
//! order; [`Masked`] shows a source as such an image would (zeros outside the data blocks)
//! for comparing clusters with an overlay's base.

use std::ops::Range;

use super::types::{ClusterBits, ClusterRun, GuestCluster};
use crate::blockmap::BlockRun;
use crate::io::ReadAt;
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// How filesystem blocks map to guest clusters: `2^shift` blocks per cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouping {
    bs: BlockSize,
    cb: ClusterBits,
    shift: u32,
}

fn overflow() -> Error {
    Error::InvalidInput("qcow2 writer: cluster numbers overflow".into())
}

impl Grouping {
    /// Clusters of `cb` holding blocks of `bs`, if a cluster holds whole blocks.
    pub fn new(bs: BlockSize, cb: ClusterBits) -> Option<Grouping> {
        let shift = cb.get().checked_sub(bs.bits())?;
        Some(Grouping { bs, cb, shift })
    }

    /// One cluster per block (1 KiB to 64 KiB blocks: always a qcow2 cluster size).
    pub fn one_per_block(bs: BlockSize) -> Result<Grouping> {
        ClusterBits::new(bs.bits())
            .and_then(|cb| Grouping::new(bs, cb))
            .ok_or_else(|| Error::InvalidInput(format!("block size {bs}")))
    }

    pub fn cluster_bits(&self) -> ClusterBits {
        self.cb
    }

    pub fn block_size(&self) -> BlockSize {
        self.bs
    }

    /// log2 of the blocks per cluster (0: one cluster per block).
    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// The cluster holding block `b`.
    pub fn cluster_of(&self, b: FsBlock) -> GuestCluster {
        // shift <= 11.
        GuestCluster(b.0 >> self.shift)
    }

    /// The first block of cluster `g`, if it exists.
    fn first_block(&self, g: GuestCluster) -> Option<FsBlock> {
        g.0.checked_shl(self.shift)
            .filter(|&b| b >> self.shift == g.0)
            .map(FsBlock)
    }

    /// The clusters holding any block of `runs` (sorted, disjoint), as sorted, disjoint runs.
    pub fn clusters(&self, runs: &[BlockRun]) -> Result<Vec<ClusterRun>> {
        if self.shift == 0 {
            return Ok(runs.iter().map(|r| ClusterRun::one_per_block(*r)).collect());
        }
        let mut out: Vec<ClusterRun> = Vec::new();
        for r in runs.iter().filter(|r| r.len > 0) {
            let last = r
                .checked_end()
                .and_then(|e| e.0.checked_sub(1))
                .ok_or_else(overflow)?;
            let (first, last) = (self.cluster_of(r.start), self.cluster_of(FsBlock(last)));
            // last < 2^64 >> shift: the length cannot overflow.
            let len = last.0.saturating_sub(first.0).saturating_add(1);
            match out.last_mut() {
                Some(l) if l.end() >= first => {
                    l.len = last
                        .0
                        .saturating_add(1)
                        .saturating_sub(l.start.0)
                        .max(l.len);
                }
                _ => out.push(ClusterRun { start: first, len }),
            }
        }
        Ok(out)
    }

    /// The blocks of `blocks` (sorted, disjoint) that lie in `clusters` (sorted, disjoint).
    pub fn blocks_within(
        &self,
        blocks: &[BlockRun],
        clusters: &[ClusterRun],
    ) -> Result<Vec<BlockRun>> {
        let mut out = Vec::new();
        let mut bi = blocks.iter().copied().peekable();
        for c in clusters {
            let lo = self.first_block(c.start).ok_or_else(overflow)?;
            let hi = self.first_block(c.end()).unwrap_or(FsBlock(u64::MAX));
            while let Some(b) = bi.peek().copied() {
                if b.end() <= lo {
                    bi.next();
                    continue;
                }
                if b.start >= hi {
                    break;
                }
                let (s, e) = (b.start.max(lo), b.end().min(hi));
                out.push(BlockRun::new(s, e.saturating_since(s)));
                if b.end() <= hi {
                    bi.next();
                } else {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// Builds whole clusters from data blocks fed in ascending order, holding at most one
/// cluster: the blocks of a cluster that are not fed read as zeros.
pub struct Assembler {
    g: Grouping,
    /// The cluster being filled and its bytes.
    cur: Option<GuestCluster>,
    buf: Vec<u8>,
    /// The block after the last one fed.
    next: FsBlock,
}

impl Assembler {
    pub fn new(g: Grouping) -> Self {
        Assembler {
            g,
            cur: None,
            buf: Vec::new(),
            next: FsBlock(0),
        }
    }

    /// Feed the blocks from `first` held in `data` (whole blocks, after those fed before);
    /// `emit(cluster, bytes)` receives whole clusters, in order, as they are complete.
    pub fn push(
        &mut self,
        first: FsBlock,
        data: &[u8],
        emit: &mut dyn FnMut(GuestCluster, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let bs = self.g.bs;
        let n = bs.blocks_in(data.len() as u64);
        if first < self.next || !bs.divides(data.len() as u64) {
            return Err(Error::InvalidInput(format!(
                "qcow2 writer: blocks from {first} arrive out of order or split"
            )));
        }
        self.next = first.checked_add(n).ok_or_else(overflow)?;
        if self.g.shift == 0 {
            return emit(GuestCluster(first.0), data);
        }
        let cs = self.g.cb.size_usize();
        let mut b = first;
        let mut rest = data;
        while !rest.is_empty() {
            let g = self.g.cluster_of(b);
            let start = self.g.first_block(g).ok_or_else(overflow)?;
            if self.cur != Some(g) {
                self.flush(emit)?;
                // Whole clusters pass through without a copy.
                if b == start && rest.len() >= cs {
                    // cs is a power of two.
                    let whole = rest.len() & !(cs.saturating_sub(1));
                    let (now, later) = rest.split_at(whole);
                    emit(g, now)?;
                    b = b
                        .checked_add(bs.blocks_in(whole as u64))
                        .ok_or_else(overflow)?;
                    rest = later;
                    continue;
                }
                self.buf.clear();
                self.buf.resize(cs, 0);
                self.cur = Some(g);
            }
            // Below the blocks per cluster (at most 2^11), times the block size.
            let at = bs.len_of(b.saturating_since(start)).ok_or_else(overflow)?;
            let take = rest.len().min(cs.saturating_sub(at));
            let (now, later) = rest.split_at(take);
            self.buf
                .get_mut(at..at.saturating_add(take))
                .ok_or_else(overflow)?
                .copy_from_slice(now);
            b = b
                .checked_add(bs.blocks_in(take as u64))
                .ok_or_else(overflow)?;
            rest = later;
        }
        Ok(())
    }

    /// Emit the cluster being filled, if any.
    pub fn flush(&mut self, emit: &mut dyn FnMut(GuestCluster, &[u8]) -> Result<()>) -> Result<()> {
        if let Some(g) = self.cur.take() {
            emit(g, &self.buf)?;
        }
        Ok(())
    }
}

/// A source seen through its data blocks: zeros everywhere else (the image of clusters of
/// several blocks, read back).
pub struct Masked<'a, S: ?Sized> {
    src: &'a S,
    /// Byte ranges of the data blocks, sorted and disjoint.
    ranges: Vec<Range<u64>>,
    size: u64,
}

impl<'a, S: ReadAt + ?Sized> Masked<'a, S> {
    /// `src` with only `runs` (blocks of `bs`) visible, `size` bytes long.
    pub fn new(src: &'a S, runs: &[BlockRun], bs: BlockSize, size: u64) -> Result<Self> {
        let ranges = runs
            .iter()
            .map(|r| r.bytes(bs).ok_or_else(overflow))
            .collect::<Result<_>>()?;
        Ok(Masked { src, ranges, size })
    }
}

impl<S: ReadAt + ?Sized> ReadAt for Masked<'_, S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let end = offset.saturating_add(buf.len() as u64).min(self.size);
        let n = usize::try_from(end.saturating_sub(offset)).unwrap_or(0);
        buf.fill(0);
        let i = self.ranges.partition_point(|r| r.end <= offset);
        for r in self.ranges.get(i..).unwrap_or(&[]) {
            if r.start >= end {
                break;
            }
            let (s, e) = (r.start.max(offset), r.end.min(end));
            // Inside buf: s - offset < n.
            let (a, b) = (
                s.saturating_sub(offset) as usize,
                e.saturating_sub(offset) as usize,
            );
            // Past the source's end: zeros, as the capture reads them.
            if let Some(part) = buf.get_mut(a..b) {
                self.src.read_at(part, s)?;
            }
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::io::MemSource;

    fn br(s: u64, l: u64) -> BlockRun {
        BlockRun::new(FsBlock(s), l)
    }

    fn cr(s: u64, l: u64) -> ClusterRun {
        ClusterRun {
            start: GuestCluster(s),
            len: l,
        }
    }

    #[test]
    fn clusters_cover_blocks() {
        let bs = BlockSize::new(1024).unwrap();
        let g = Grouping::new(bs, ClusterBits::new(12).unwrap()).unwrap();
        assert_eq!(g.shift(), 2);
        let runs = [br(1, 1), br(3, 2), br(9, 1), br(12, 9), br(40, 1)];
        assert_eq!(
            g.clusters(&runs).unwrap(),
            vec![cr(0, 1), cr(1, 1), cr(2, 1), cr(3, 3), cr(10, 1)]
                .into_iter()
                .fold(Vec::<ClusterRun>::new(), |mut v, r| {
                    match v.last_mut() {
                        Some(l) if l.end() == r.start => l.len += r.len,
                        _ => v.push(r),
                    }
                    v
                })
        );
        assert_eq!(
            g.blocks_within(&runs, &[cr(1, 1), cr(4, 1), cr(10, 1)])
                .unwrap(),
            vec![br(4, 1), br(16, 4), br(40, 1)]
        );
        assert!(g.clusters(&[br(u64::MAX, 1)]).is_err());
        let one = Grouping::one_per_block(bs).unwrap();
        assert_eq!(one.clusters(&runs).unwrap()[1], cr(3, 2));
    }

    /// Random block pieces assemble into the clusters a masked read of the same blocks gives.
    #[test]
    fn assembler_matches_masked_reads() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for case in 0..30 {
            let bs = BlockSize::new(1024 << (next() % 3)).unwrap();
            let cb = ClusterBits::new(bs.bits() + (next() % 4) as u32).unwrap();
            let g = Grouping::new(bs, cb).unwrap();
            let blocks = 200 + next() % 200;
            let disk: Vec<u8> = (0..blocks * bs.bytes())
                .map(|i| (i % 251) as u8 + 1)
                .collect();
            let mut runs = Vec::new();
            let mut at = next() % 5;
            while at < blocks {
                let len = (1 + next() % 20).min(blocks - at);
                runs.push(br(at, len));
                at += len + next() % 30;
            }
            let src = MemSource(disk.clone());
            let size = blocks * bs.bytes();
            let masked = Masked::new(&src, &runs, bs, size).unwrap();
            let mut a = Assembler::new(g);
            let mut got = Vec::new();
            for r in &runs {
                // Pieces of random length inside the run.
                let mut b = r.start.0;
                while b < r.end().0 {
                    let n = (1 + next() % 7).min(r.end().0 - b);
                    let bytes = &disk[(b * bs.bytes()) as usize..((b + n) * bs.bytes()) as usize];
                    a.push(FsBlock(b), bytes, &mut |c, d| {
                        for (i, piece) in d.chunks(cb.size_usize()).enumerate() {
                            got.push((c.0 + i as u64, piece.to_vec()));
                        }
                        Ok(())
                    })
                    .unwrap();
                    b += n;
                }
            }
            a.flush(&mut |c, d| {
                got.push((c.0, d.to_vec()));
                Ok(())
            })
            .unwrap();
            let want: Vec<u64> = g
                .clusters(&runs)
                .unwrap()
                .iter()
                .flat_map(|r| r.clusters())
                .map(|c| c.0)
                .collect();
            assert_eq!(
                got.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
                want,
                "case {case}"
            );
            for (c, d) in &got {
                let mut buf = vec![0xffu8; cb.size_usize()];
                let n = masked.read_at(&mut buf, c << cb.get()).unwrap();
                buf[n..].fill(0);
                assert_eq!(&buf, d, "case {case} cluster {c}");
            }
            // Out of order is refused.
            assert!(
                a.push(FsBlock(0), &vec![0; bs.as_usize()], &mut |_, _| Ok(()))
                    .is_err()
            );
        }
    }
}
