//! The block map: which filesystem blocks an image holds, as sorted, disjoint runs.
//!
//! The scanner marks blocks and ranges in any order; [`BlockMapBuilder::build`] sorts and
//! merges them once. Memory follows the number of distinct runs (the metadata), never the
//! filesystem size.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::ops::Range;

/// A run of consecutive selected blocks: `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Run {
    pub start: u64,
    pub len: u64,
}

impl Run {
    pub fn end(&self) -> u64 {
        // Runs are built from ranges clipped to the filesystem, so this cannot overflow.
        self.start.saturating_add(self.len)
    }
}

/// The selected blocks of a filesystem, sorted and coalesced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockMap {
    runs: Vec<Run>,
    /// Filesystem size in blocks; every run lies below it.
    blocks_count: u64,
    /// e2image's "meta_blocks_count": the number of mark operations (its progress total).
    marks: u64,
}

impl BlockMap {
    /// A map from already sorted, disjoint runs (merged here when adjacent).
    pub fn from_runs(runs: impl IntoIterator<Item = Run>, blocks_count: u64) -> Self {
        let mut b = BlockMapBuilder::new(0, blocks_count.saturating_sub(1), 0);
        for r in runs {
            b.mark_range(r.start, r.len);
        }
        b.build(0, blocks_count)
    }

    pub fn runs(&self) -> &[Run] {
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

    pub fn contains(&self, block: u64) -> bool {
        let i = self.runs.partition_point(|r| r.end() <= block);
        self.runs.get(i).is_some_and(|r| r.start <= block)
    }

    /// The runs of `self` outside `other`, in order.
    pub fn minus(&self, other: &BlockMap) -> Vec<Run> {
        let mut out = Vec::new();
        for r in &self.runs {
            let mut pos = r.start;
            for o in other.runs_in(r.start..r.end()) {
                if o.start > pos {
                    out.push(Run {
                        start: pos,
                        len: o.start.saturating_sub(pos),
                    });
                }
                pos = o.end();
            }
            if pos < r.end() {
                out.push(Run {
                    start: pos,
                    len: r.end().saturating_sub(pos),
                });
            }
        }
        out
    }

    /// The selected runs that intersect `range`, clipped to it.
    pub fn runs_in(&self, range: Range<u64>) -> impl Iterator<Item = Run> + '_ {
        let i = self.runs.partition_point(|r| r.end() <= range.start);
        self.runs[i..]
            .iter()
            .take_while(move |r| r.start < range.end)
            .map(move |r| {
                let s = r.start.max(range.start);
                let e = r.end().min(range.end);
                Run {
                    start: s,
                    len: e.saturating_sub(s),
                }
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
}

const COMPACT_AT: usize = 1 << 20;

impl BlockMapBuilder {
    /// A builder accepting blocks `first_block ..= last_block`, rounded to clusters of
    /// `2^cluster_bits` blocks.
    pub fn new(first_block: u64, last_block: u64, cluster_bits: u32) -> Self {
        BlockMapBuilder {
            pending: Vec::new(),
            sorted_prefix: 0,
            cluster_bits,
            first_cluster: first_block >> cluster_bits,
            last_cluster: last_block >> cluster_bits,
            marks: 0,
        }
    }

    /// Mark one block (its whole cluster). Out-of-range blocks are ignored; the mark counts.
    pub fn mark(&mut self, block: u64) {
        self.mark_range(block, 1);
    }

    /// Mark `len` blocks from `start`; counts `len` marks, like a per-block loop would.
    pub fn mark_range(&mut self, start: u64, len: u64) {
        self.marks = self.marks.saturating_add(len);
        if len == 0 {
            return;
        }
        let last = start.saturating_add(len.saturating_sub(1));
        let c0 = (start >> self.cluster_bits).max(self.first_cluster);
        let c1 = (last >> self.cluster_bits).min(self.last_cluster);
        if c0 > c1 || self.last_cluster < self.first_cluster {
            return;
        }
        // c1 ≤ last_cluster < 2^64 >> cluster_bits: the end cannot overflow unless
        // cluster_bits is 0 and the range reaches u64::MAX, where it saturates.
        let end = c1.saturating_add(1);
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
        self.pending.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.pending.len());
        for &(s, e) in &self.pending {
            match out.last_mut() {
                Some(l) if s <= l.1 => l.1 = l.1.max(e),
                _ => out.push((s, e)),
            }
        }
        out.shrink_to_fit();
        self.pending = out;
        self.sorted_prefix = self.pending.len();
    }

    /// The final map in blocks, clipped to `[first_data_block, blocks_count)`.
    pub fn build(mut self, first_data_block: u64, blocks_count: u64) -> BlockMap {
        self.compact();
        let cb = self.cluster_bits;
        let mut runs: Vec<Run> = Vec::with_capacity(self.pending.len());
        for &(c0, c1) in &self.pending {
            let s = (c0 << cb).max(first_data_block);
            let e = c1.checked_shl(cb).unwrap_or(u64::MAX).min(blocks_count);
            if s >= e {
                continue;
            }
            match runs.last_mut() {
                Some(l) if l.end() >= s => l.len = e.max(l.end()).saturating_sub(l.start),
                _ => runs.push(Run {
                    start: s,
                    len: e.saturating_sub(s),
                }),
            }
        }
        BlockMap {
            runs,
            blocks_count,
            marks: self.marks,
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn minus_leaves_what_the_other_map_lacks() {
        let r = |start, len| Run { start, len };
        let a = BlockMap::from_runs([r(0, 10), r(20, 5)], 100);
        let b = BlockMap::from_runs([r(2, 3), r(8, 14), r(24, 1)], 100);
        assert_eq!(a.minus(&b), vec![r(0, 2), r(5, 3), r(22, 2)]);
        assert_eq!(b.minus(&a), vec![r(10, 10)]);
    }

    #[test]
    fn merges_and_clips() {
        let mut b = BlockMapBuilder::new(1, 99, 0);
        b.mark(5);
        b.mark(0); // below first block: ignored, still counted
        b.mark_range(6, 4);
        b.mark(200);
        b.mark_range(95, 10);
        b.mark(3);
        let m = b.build(1, 100);
        assert_eq!(
            m.runs(),
            &[
                Run { start: 3, len: 1 },
                Run { start: 5, len: 5 },
                Run { start: 95, len: 5 }
            ]
        );
        assert_eq!(m.marks(), 1 + 1 + 4 + 1 + 10 + 1);
        assert!(m.contains(9) && !m.contains(10) && !m.contains(4));
    }

    #[test]
    fn clusters_select_whole_clusters() {
        // 16 blocks per cluster, fs of 40 blocks: last cluster is partial.
        let mut b = BlockMapBuilder::new(0, 39, 4);
        b.mark(17);
        b.mark(33);
        let m = b.build(0, 40);
        assert_eq!(m.runs(), &[Run { start: 16, len: 24 }]);
    }

    #[test]
    fn runs_in_clips() {
        let m = BlockMap::from_runs([Run { start: 0, len: 10 }, Run { start: 20, len: 5 }], 30);
        let v: Vec<_> = m.runs_in(5..22).collect();
        assert_eq!(v, vec![Run { start: 5, len: 5 }, Run { start: 20, len: 2 }]);
    }
}
