//! The block map: which filesystem blocks an image holds, as sorted, disjoint runs.
//!
//! The scanner marks blocks and ranges in any order; [`BlockMapBuilder::build`] sorts and
//! merges them once. Memory follows the number of distinct runs (the metadata), never the
//! filesystem size.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::ops::Range;

use crate::units::{BlockSize, FsBlock};

/// Consecutive filesystem blocks `[start, start + len)`: `len` counts blocks. (Not the
/// guest clusters of [`crate::qcow2::types::ClusterRun`]; byte ranges are `Range<u64>`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockRun {
    pub start: FsBlock,
    pub len: u64,
}

impl BlockRun {
    pub const fn new(start: FsBlock, len: u64) -> Self {
        BlockRun { start, len }
    }

    /// One past the last block (saturating: runs of a map are clipped to the filesystem;
    /// use [`Self::checked_end`] on runs that are not).
    pub const fn end(&self) -> FsBlock {
        self.start.saturating_add(self.len)
    }

    /// One past the last block, if it exists.
    pub fn checked_end(&self) -> Option<FsBlock> {
        self.start.checked_add(self.len)
    }

    /// The bytes of the run in the filesystem, if they are addressable.
    pub fn bytes(&self, bs: BlockSize) -> Option<Range<u64>> {
        Some(bs.offset_of(self.start)?..bs.offset_of(self.checked_end()?)?)
    }
}

/// The selected blocks of a filesystem, sorted and coalesced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockMap {
    runs: Vec<BlockRun>,
    /// Filesystem size in blocks; every run lies below it.
    blocks_count: u64,
    /// e2image's "meta_blocks_count": the number of mark operations (its progress total).
    marks: u64,
}

impl BlockMap {
    /// A map from already sorted, disjoint runs (merged here when adjacent).
    pub fn from_runs(runs: impl IntoIterator<Item = BlockRun>, blocks_count: u64) -> Self {
        let mut b = BlockMapBuilder::new(FsBlock(0), FsBlock(blocks_count.saturating_sub(1)), 0);
        for r in runs {
            b.mark_range(r.start, r.len);
        }
        b.build(FsBlock(0), blocks_count)
    }

    pub fn runs(&self) -> &[BlockRun] {
        &self.runs
    }

    pub fn blocks_count(&self) -> u64 {
        self.blocks_count
    }

    /// Number of selected blocks.
    pub fn selected_blocks(&self) -> u64 {
        self.runs.iter().map(|r| r.len).sum()
    }

    /// e2image's mark count (progress total; can differ from [`Self::selected_blocks`]).
    pub fn marks(&self) -> u64 {
        self.marks
    }

    pub fn contains(&self, block: FsBlock) -> bool {
        let i = self.runs.partition_point(|r| r.end() <= block);
        self.runs.get(i).is_some_and(|r| r.start <= block)
    }

    /// The runs of `self` outside `other`, in order.
    pub fn minus(&self, other: &BlockMap) -> Vec<BlockRun> {
        let mut out = Vec::new();
        for r in &self.runs {
            let mut pos = r.start;
            for o in other.runs_in(r.start..r.end()) {
                if o.start > pos {
                    out.push(BlockRun::new(pos, o.start.saturating_since(pos)));
                }
                pos = o.end();
            }
            if pos < r.end() {
                out.push(BlockRun::new(pos, r.end().saturating_since(pos)));
            }
        }
        out
    }

    /// The selected runs that intersect `range`, clipped to it.
    pub fn runs_in(&self, range: Range<FsBlock>) -> impl Iterator<Item = BlockRun> + '_ {
        let i = self.runs.partition_point(|r| r.end() <= range.start);
        self.runs[i..]
            .iter()
            .take_while(move |r| r.start < range.end)
            .map(move |r| {
                let s = r.start.max(range.start);
                let e = r.end().min(range.end);
                BlockRun::new(s, e.saturating_since(s))
            })
    }
}

/// Collects marks in cluster units, as e2image's cluster bitmap does.
#[derive(Debug)]
pub struct BlockMapBuilder {
    /// Cluster ranges `[start, end)`, unsorted until compacted.
    pending: Vec<(u64, u64)>,
    sorted_prefix: usize,
    cluster_bits: u32,
    /// Lowest and highest (inclusive) cluster a mark may set; others are ignored like
    /// e2image's out-of-range bitmap marks.
    first_cluster: u64,
    last_cluster: u64,
    marks: u64,
    /// Cluster ranges marked since the last [`Self::take_fresh`], when tracked.
    fresh: Option<Vec<(u64, u64)>>,
}

const COMPACT_AT: usize = 1 << 20;

impl BlockMapBuilder {
    /// A builder accepting blocks `first_block ..= last_block`, rounded to clusters of
    /// `2^cluster_bits` blocks.
    pub fn new(first_block: FsBlock, last_block: FsBlock, cluster_bits: u32) -> Self {
        BlockMapBuilder {
            pending: Vec::new(),
            sorted_prefix: 0,
            cluster_bits,
            first_cluster: first_block.0 >> cluster_bits,
            last_cluster: last_block.0 >> cluster_bits,
            marks: 0,
            fresh: None,
        }
    }

    /// Also keep the marks made from now on for [`Self::take_fresh`].
    pub fn track_fresh(&mut self) {
        self.fresh.get_or_insert_with(Vec::new);
    }

    /// The blocks marked since the last call (or since [`Self::track_fresh`]), as
    /// [`Self::build`] would give them: sorted runs clipped to `[first_data_block,
    /// blocks_count)`. Blocks may repeat ones taken before. Every block of the built map
    /// is in some call's runs, and every block of those runs is in the built map.
    pub fn take_fresh(&mut self, first_data_block: FsBlock, blocks_count: u64) -> Vec<BlockRun> {
        let Some(fresh) = self.fresh.as_mut() else {
            return Vec::new();
        };
        let mut f = std::mem::take(fresh);
        merge_sorted(&mut f);
        cluster_runs(&f, self.cluster_bits, first_data_block, blocks_count)
    }

    /// Mark one block (its whole cluster). Out-of-range blocks are ignored; the mark counts.
    pub fn mark(&mut self, block: FsBlock) {
        self.mark_range(block, 1);
    }

    /// Mark `len` blocks from `start`; counts `len` marks, like a per-block loop would.
    pub fn mark_range(&mut self, start: FsBlock, len: u64) {
        self.marks = self.marks.saturating_add(len);
        if len == 0 {
            return;
        }
        let start = start.0;
        let last = start.saturating_add(len.saturating_sub(1));
        let c0 = (start >> self.cluster_bits).max(self.first_cluster);
        let c1 = (last >> self.cluster_bits).min(self.last_cluster);
        if c0 > c1 || self.last_cluster < self.first_cluster {
            return;
        }
        // c1 ≤ last_cluster < 2^64 >> cluster_bits: the end cannot overflow unless
        // cluster_bits is 0 and the range reaches u64::MAX, where it saturates.
        let end = c1.saturating_add(1);
        if let Some(f) = self.fresh.as_mut() {
            match f.last_mut() {
                Some(l) if l.0 <= c0 && c0 <= l.1 => l.1 = l.1.max(end),
                _ => f.push((c0, end)),
            }
        }
        if let Some(l) = self.pending.last_mut() {
            // Cheap merge for the common case of ascending, touching marks.
            if l.0 <= c0 && c0 <= l.1 {
                l.1 = l.1.max(end);
                return;
            }
        }
        self.pending.push((c0, end));
        if self.pending.len().saturating_sub(self.sorted_prefix) >= COMPACT_AT {
            self.compact();
        }
    }

    /// Add to the mark count without marking (e2image counts some marks that set nothing).
    pub fn count_marks(&mut self, n: u64) {
        self.marks = self.marks.saturating_add(n);
    }

    pub fn marks(&self) -> u64 {
        self.marks
    }

    fn compact(&mut self) {
        merge_sorted(&mut self.pending);
        self.pending.shrink_to_fit();
        self.sorted_prefix = self.pending.len();
    }

    /// The final map in blocks, clipped to `[first_data_block, blocks_count)`.
    pub fn build(mut self, first_data_block: FsBlock, blocks_count: u64) -> BlockMap {
        self.compact();
        BlockMap {
            runs: cluster_runs(
                &self.pending,
                self.cluster_bits,
                first_data_block,
                blocks_count,
            ),
            blocks_count,
            marks: self.marks,
        }
    }
}

/// Sort cluster ranges and merge those that overlap or touch.
fn merge_sorted(v: &mut Vec<(u64, u64)>) {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for &(s, e) in v.iter() {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    *v = out;
}

/// Sorted, merged cluster ranges as block runs clipped to `[first_data_block, blocks_count)`.
fn cluster_runs(
    clusters: &[(u64, u64)],
    cb: u32,
    first_data_block: FsBlock,
    blocks_count: u64,
) -> Vec<BlockRun> {
    let mut runs: Vec<BlockRun> = Vec::with_capacity(clusters.len());
    for &(c0, c1) in clusters {
        let s = FsBlock(c0 << cb).max(first_data_block);
        let e = FsBlock(c1.checked_shl(cb).unwrap_or(u64::MAX).min(blocks_count));
        if s >= e {
            continue;
        }
        match runs.last_mut() {
            Some(l) if l.end() >= s => l.len = e.max(l.end()).saturating_since(l.start),
            _ => runs.push(BlockRun::new(s, e.saturating_since(s))),
        }
    }
    runs
}

/// A set of blocks built up run by run, which tells what each new run adds to it.
#[derive(Debug, Default)]
pub struct RunSet {
    /// Disjoint, non-touching `[start, end)` by start.
    runs: std::collections::BTreeMap<u64, u64>,
}

impl RunSet {
    /// Add `run`; push onto `new` (in order) the parts of it that were not in the set.
    pub fn add(&mut self, run: BlockRun, new: &mut Vec<BlockRun>) {
        let (s, Some(e)) = (run.start.0, run.checked_end().map(|e| e.0)) else {
            return;
        };
        if s >= e {
            return;
        }
        // Runs that overlap or touch [s, e): from the last one starting at or before s.
        let first = self.runs.range(..=s).next_back().map(|(&a, _)| a);
        let from = match first {
            Some(a) if self.runs.get(&a).is_some_and(|&b| b >= s) => a,
            _ => s,
        };
        let touching: Vec<(u64, u64)> = self.runs.range(from..=e).map(|(&a, &b)| (a, b)).collect();
        let mut pos = s;
        let (mut lo, mut hi) = (s, e);
        for &(a, b) in &touching {
            if a > pos && pos < e {
                let to = a.min(e);
                new.push(BlockRun::new(FsBlock(pos), to.saturating_sub(pos)));
            }
            pos = pos.max(b);
            lo = lo.min(a);
            hi = hi.max(b);
            self.runs.remove(&a);
        }
        if pos < e {
            new.push(BlockRun::new(FsBlock(pos), e.saturating_sub(pos)));
        }
        self.runs.insert(lo, hi);
    }

    /// The set as sorted runs.
    pub fn runs(&self) -> impl Iterator<Item = BlockRun> + '_ {
        self.runs
            .iter()
            .map(|(&a, &b)| BlockRun::new(FsBlock(a), b.saturating_sub(a)))
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn r(start: u64, len: u64) -> BlockRun {
        BlockRun::new(FsBlock(start), len)
    }

    #[test]
    fn minus_leaves_what_the_other_map_lacks() {
        let a = BlockMap::from_runs([r(0, 10), r(20, 5)], 100);
        let b = BlockMap::from_runs([r(2, 3), r(8, 14), r(24, 1)], 100);
        assert_eq!(a.minus(&b), vec![r(0, 2), r(5, 3), r(22, 2)]);
        assert_eq!(b.minus(&a), vec![r(10, 10)]);
    }

    #[test]
    fn fresh_marks_cover_the_built_map_exactly() {
        let mut b = BlockMapBuilder::new(FsBlock(1), FsBlock(99), 1);
        b.mark(FsBlock(51));
        b.track_fresh();
        let mut taken = RunSet::default();
        let add = |runs: Vec<BlockRun>, t: &mut RunSet| {
            let mut new = Vec::new();
            for r in runs {
                t.add(r, &mut new);
            }
            new
        };
        // Marked before tracking: not fresh.
        assert_eq!(add(b.take_fresh(FsBlock(1), 99), &mut taken), vec![]);
        b.mark_range(FsBlock(0), 3); // clusters 0-1: blocks 1-3 after the first-block clip
        b.mark(FsBlock(98)); // cluster 49: block 98 (99 lies past blocks_count)
        b.mark(FsBlock(500)); // out of range
        assert_eq!(
            add(b.take_fresh(FsBlock(1), 99), &mut taken),
            vec![r(1, 3), r(98, 1)]
        );
        b.mark_range(FsBlock(2), 10); // clusters 1-5: blocks 2-11, 2-3 already taken
        assert_eq!(add(b.take_fresh(FsBlock(1), 99), &mut taken), vec![r(4, 8)]);
        b.mark(FsBlock(6)); // cluster 3, taken
        assert_eq!(add(b.take_fresh(FsBlock(1), 99), &mut taken), vec![]);
        let all: Vec<BlockRun> = taken.runs().collect();
        let map = b.build(FsBlock(1), 99);
        // Cluster 25 was marked before tracking began; the rest is exactly what was taken.
        assert_eq!(
            map.minus(&BlockMap::from_runs(all.clone(), 99)),
            vec![r(50, 2)]
        );
        assert_eq!(BlockMap::from_runs(all, 99).minus(&map), vec![]);
    }

    #[test]
    fn run_set_reports_only_what_is_new() {
        let mut s = RunSet::default();
        let mut new = Vec::new();
        s.add(r(10, 5), &mut new);
        s.add(r(20, 5), &mut new);
        assert_eq!(new, vec![r(10, 5), r(20, 5)]);
        new.clear();
        s.add(r(5, 30), &mut new);
        assert_eq!(new, vec![r(5, 5), r(15, 5), r(25, 10)]);
        new.clear();
        s.add(r(12, 3), &mut new);
        s.add(r(35, 1), &mut new); // touches the end: merged, new
        assert_eq!(new, vec![r(35, 1)]);
        assert_eq!(s.runs().collect::<Vec<_>>(), vec![r(5, 31)]);
        new.clear();
        s.add(r(3, 1), &mut new);
        s.add(r(u64::MAX - 1, 5), &mut new); // end overflows: ignored
        assert_eq!(new, vec![r(3, 1)]);
        assert_eq!(s.runs().collect::<Vec<_>>(), vec![r(3, 1), r(5, 31)]);
    }

    #[test]
    fn merges_and_clips() {
        let mut b = BlockMapBuilder::new(FsBlock(1), FsBlock(99), 0);
        b.mark(FsBlock(5));
        b.mark(FsBlock(0)); // below first block: ignored, still counted
        b.mark_range(FsBlock(6), 4);
        b.mark(FsBlock(200));
        b.mark_range(FsBlock(95), 10);
        b.mark(FsBlock(3));
        let m = b.build(FsBlock(1), 100);
        assert_eq!(m.runs(), &[r(3, 1), r(5, 5), r(95, 5)]);
        assert_eq!(m.marks(), 1 + 1 + 4 + 1 + 10 + 1);
        assert!(m.contains(FsBlock(9)) && !m.contains(FsBlock(10)) && !m.contains(FsBlock(4)));
    }

    #[test]
    fn clusters_select_whole_clusters() {
        // 16 blocks per cluster, fs of 40 blocks: last cluster is partial.
        let mut b = BlockMapBuilder::new(FsBlock(0), FsBlock(39), 4);
        b.mark(FsBlock(17));
        b.mark(FsBlock(33));
        let m = b.build(FsBlock(0), 40);
        assert_eq!(m.runs(), &[r(16, 24)]);
    }

    #[test]
    fn runs_in_clips() {
        let m = BlockMap::from_runs([r(0, 10), r(20, 5)], 30);
        let v: Vec<_> = m.runs_in(FsBlock(5)..FsBlock(22)).collect();
        assert_eq!(v, vec![r(5, 5), r(20, 2)]);
    }
}
