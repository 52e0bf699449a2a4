//! Read planning for cold sources.
//!
//! A capture knows what it will read before it reads it: the inode tables from the
//! descriptors, the selected blocks from the block map. On a cold disk, reading them one
//! request at a time leaves the device idle between requests (a 4 KiB read at queue depth 1
//! runs at a few percent of the device's sequential bandwidth). A [`Readahead`] walks the
//! same ranges ahead of the reader and tells the source ([`ReadAt::will_need`]) what comes
//! next: neighbouring ranges merged (small gaps read through, which costs less than another
//! request), at most [`WINDOW`] bytes ahead. For files and block devices the hint is
//! `posix_fadvise(WILLNEED)`, which starts the reads without waiting for them: the device
//! gets many requests at once while the reader parses or writes what has arrived, and the
//! reads themselves then come from the page cache. The bytes read are the same as without
//! hints; only their timing changes.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::collections::VecDeque;
use std::ops::Range;

use crate::blockmap::{BlockMap, BlockRun};
use crate::io::ReadAt;
use crate::units::BlockSize;

/// Bytes hinted ahead of the reader: enough requests to keep a disk's queue full, small
/// next to the page cache of a machine in trouble.
pub const WINDOW: u64 = 64 << 20;

/// Gaps up to this many bytes between two ranges are read through: at a sequential rate
/// of ~1 GB/s, 64 KiB cost less than the setup of one more request.
pub const BRIDGE: u64 = 64 << 10;

/// Largest single hint, so that one hint never runs far ahead of the others. A file source
/// cuts it further into what the kernel reads per WILLNEED call (`max(io_pages,
/// ra_pages)`, 128 KiB on many SSDs; see `io::FileSource`).
pub const HINT_MAX: u64 = 2 << 20;

/// Most hints ahead of the reader, whatever their size. A WILLNEED call waits once the
/// device's request queue is full (often 64–256 requests; FUSE 12 by default), so past
/// that the reading thread would sit in hints instead of handing over what has arrived.
/// On a disk of 2 ms requests, a cold `-Q` of a filesystem with its directory blocks
/// scattered took 3.1 s with thousands of 4 KiB hints ahead and 1.8 s with 64 (see
/// ci/bench.d/README.md); long ranges are bounded by [`WINDOW`] first.
pub const HINTS_AHEAD: usize = 64;

/// Hints for byte ranges that a reader goes through in ascending order.
pub struct Readahead<'s, S: ReadAt + ?Sized, I: Iterator<Item = Range<u64>>> {
    src: &'s S,
    ranges: std::iter::Peekable<I>,
    /// The rest of a range longer than [`HINT_MAX`], not yet hinted.
    carry: Option<Range<u64>>,
    window: u64,
    /// Hints issued that the reader has not passed: (end, bytes).
    ahead: VecDeque<(u64, u64)>,
    ahead_bytes: u64,
}

impl<'s, S: ReadAt + ?Sized, I: Iterator<Item = Range<u64>>> Readahead<'s, S, I> {
    /// Hints for `ranges` (ascending, byte offsets of `src`), at most `window` bytes ahead.
    pub fn new(src: &'s S, ranges: I, window: u64) -> Self {
        Readahead {
            src,
            ranges: ranges.peekable(),
            carry: None,
            window,
            ahead: VecDeque::new(),
            ahead_bytes: 0,
        }
    }

    /// The reader is about to read at byte `pos`: hints it has passed are retired, and
    /// more are issued until `window` bytes or [`HINTS_AHEAD`] hints lie ahead of it (or
    /// none are left).
    pub fn at(&mut self, pos: u64) {
        while let Some(&(end, n)) = self.ahead.front() {
            if end > pos {
                break;
            }
            self.ahead.pop_front();
            self.ahead_bytes = self.ahead_bytes.saturating_sub(n);
        }
        while self.ahead_bytes < self.window && self.ahead.len() < HINTS_AHEAD {
            let Some(r) = self.next_hint() else {
                break;
            };
            let n = r.end.saturating_sub(r.start);
            if r.end <= pos {
                continue;
            }
            self.src.will_need(r.start, n);
            self.ahead.push_back((r.end, n));
            self.ahead_bytes = self.ahead_bytes.saturating_add(n);
        }
    }

    /// The next hint: ranges merged across gaps of at most [`BRIDGE`] bytes, cut at
    /// [`HINT_MAX`] bytes.
    fn next_hint(&mut self) -> Option<Range<u64>> {
        let mut cur = match self.carry.take() {
            Some(c) => c,
            None => loop {
                let r = self.ranges.next()?;
                if r.start < r.end {
                    break r;
                }
            },
        };
        while let Some(n) = self.ranges.peek() {
            let joins = n.start >= cur.end
                && n.start.saturating_sub(cur.end) <= BRIDGE
                && n.end.max(cur.end).saturating_sub(cur.start) <= HINT_MAX;
            if !joins {
                break;
            }
            cur.end = cur.end.max(n.end);
            self.ranges.next();
        }
        if cur.end.saturating_sub(cur.start) > HINT_MAX {
            let cut = cur.start.saturating_add(HINT_MAX);
            self.carry = Some(cut..cur.end);
            cur.end = cut;
        }
        Some(cur)
    }
}

/// Runs of `bs`-byte blocks as byte ranges of a source (a run whose bytes overflow ends the
/// list: nothing past it can be read either).
pub fn run_ranges(runs: &[BlockRun], bs: BlockSize) -> impl Iterator<Item = Range<u64>> + '_ {
    runs.iter()
        .map_while(move |r| Some(bs.offset_of(r.start)?..bs.offset_of(r.end())?))
}

/// A [`Readahead`] over `runs` (read in that order), for one pass of a writer.
pub fn for_runs<'s, S: ReadAt + ?Sized>(
    src: &'s S,
    runs: &'s [BlockRun],
    bs: BlockSize,
) -> Readahead<'s, S, impl Iterator<Item = Range<u64>> + 's> {
    Readahead::new(src, run_ranges(runs, bs), WINDOW)
}

/// A [`Readahead`] over the selected blocks of `map`, for one pass of a writer.
pub fn for_map<'s, S: ReadAt + ?Sized>(
    src: &'s S,
    map: &'s BlockMap,
    bs: BlockSize,
) -> Readahead<'s, S, impl Iterator<Item = Range<u64>> + 's> {
    for_runs(src, map.runs(), bs)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::Result;
    use std::sync::Mutex;

    /// Records the hints it gets.
    #[derive(Default)]
    struct Recorder {
        hints: Mutex<Vec<Range<u64>>>,
    }

    impl ReadAt for Recorder {
        fn read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<usize> {
            Ok(0)
        }
        fn size(&self) -> u64 {
            u64::MAX
        }
        fn will_need(&self, offset: u64, len: u64) {
            self.hints.lock().unwrap().push(offset..offset + len);
        }
    }

    #[test]
    fn small_gaps_are_bridged_and_large_ranges_cut() {
        let src = Recorder::default();
        let ranges = vec![
            0..4096,
            8192..12288,                         // 4 KiB gap: bridged
            12288 + BRIDGE + 1..1 << 20,         // gap just over BRIDGE: a new hint
            (1 << 20)..(1 << 20) + 5 * HINT_MAX, // long: cut
            u64::MAX - 1..u64::MAX - 1,          // empty: skipped
        ];
        let mut ra = Readahead::new(&src, ranges.into_iter(), u64::MAX);
        ra.at(0);
        let h = src.hints.lock().unwrap().clone();
        assert_eq!(h[0], 0..12288);
        assert_eq!(h[1].start, 12288 + BRIDGE + 1);
        assert!(h.iter().all(|r| r.end - r.start <= HINT_MAX));
        // Every byte of every range is hinted once, in order.
        assert!(h.windows(2).all(|w| w[0].end <= w[1].start));
        assert_eq!(h.last().unwrap().end, (1 << 20) + 5 * HINT_MAX);
    }

    #[test]
    fn small_hints_are_bounded_by_count() {
        let src = Recorder::default();
        // 1,000 one-block ranges, 1 MiB apart: 4 MB in all, far below the window.
        let mb = 1u64 << 20;
        let ranges = (0..1000u64).map(|i| i * mb..i * mb + 4096);
        let mut ra = Readahead::new(&src, ranges, WINDOW);
        ra.at(0);
        assert_eq!(src.hints.lock().unwrap().len(), HINTS_AHEAD);
        // The reader passes ten ranges: ten more hints, the count still HINTS_AHEAD ahead.
        ra.at(10 * mb);
        let h = src.hints.lock().unwrap();
        assert_eq!(h.len(), HINTS_AHEAD + 10);
        assert_eq!(
            *h.last().unwrap(),
            (HINTS_AHEAD as u64 + 9) * mb..(HINTS_AHEAD as u64 + 9) * mb + 4096
        );
    }

    #[test]
    fn window_bounds_the_hints_ahead_of_the_reader() {
        let src = Recorder::default();
        let mb = 1u64 << 20;
        // 100 one-MiB ranges, 1 MiB apart (never bridged).
        let ranges = (0..100u64).map(|i| 2 * i * mb..(2 * i + 1) * mb);
        let mut ra = Readahead::new(&src, ranges, 8 * mb);
        ra.at(0);
        assert_eq!(src.hints.lock().unwrap().len(), 8);
        // The reader passes three ranges: three more hints.
        ra.at(6 * mb);
        assert_eq!(src.hints.lock().unwrap().len(), 11);
        // The reader jumps to 30 MiB: ranges 11..=14 end before it and are not hinted
        // late; 15..=22 fill the window.
        ra.at(30 * mb);
        let h = src.hints.lock().unwrap();
        assert_eq!(h.len(), 19);
        assert_eq!(h[11], 30 * mb..31 * mb);
        drop(h);
        // A reader past a range that was never hinted: it is not hinted late.
        let src2 = Recorder::default();
        let ranges = (0..10u64).map(|i| 2 * i * mb..(2 * i + 1) * mb);
        let mut ra = Readahead::new(&src2, ranges, mb);
        ra.at(10 * mb);
        assert!(src2.hints.lock().unwrap().iter().all(|r| r.end > 10 * mb));
    }
}
