//! Classic block maps: 12 direct pointers, then single, double and triple indirect blocks,
//! walked the way libext2fs's block iterator does. Callers use
//! [`super::walk_inode`].

use std::collections::HashMap;

use super::{ReadBlock, Visit, copy_error};
use crate::error::CorruptKind;
use crate::ext4::damage::Role;
use crate::ext4::inode::{EXT2_DIND_BLOCK, EXT2_IND_BLOCK, EXT2_NDIR_BLOCKS, EXT2_TIND_BLOCK};
use crate::ext4::le;
use crate::units::{BlockSize, FsBlock};
use crate::{Error, Result};

/// What an indirect walk needs of the filesystem.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub block_size: BlockSize,
    pub first_data_block: FsBlock,
    pub blocks_count: u64,
}

/// A data mapping being coalesced: `len` blocks from logical `lblk` at physical `pblk`.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    lblk: u64,
    pblk: FsBlock,
    len: u64,
}

struct Walker<'a, 'r> {
    ino: u32,
    geo: Geometry,
    /// Block numbers per indirect block.
    per_block: u64,
    want_data: bool,
    read: &'a mut ReadBlock<'r>,
    visit: &'a mut dyn FnMut(Visit),
    /// Told the runs of blocks about to be read (the children of a double or triple
    /// indirect block), so that a cold disk gets them as one request, not one each.
    ahead: &'a mut dyn FnMut(FsBlock, u64),
    /// libext2fs keeps one error code that every later indirect-block read overwrites;
    /// the walk fails only if the last one assigned is an error.
    last: Option<Error>,
    bufs: [Vec<u8>; 3],
    run: Option<Mapping>,
    /// Indirect blocks already walked, by (block, level): the error a walk produced, if
    /// any. A damaged map that points many times at one subtree is walked once (its data
    /// at a second logical position is not reported again: its blocks are the same).
    done: HashMap<(u32, u8), Option<Error>>,
}

impl Walker<'_, '_> {
    fn data(&mut self, lblk: u64, pblk: FsBlock) {
        if !self.want_data {
            return;
        }
        match &mut self.run {
            Some(r)
                if r.pblk.checked_add(r.len) == Some(pblk)
                    && r.lblk.checked_add(r.len) == Some(lblk) =>
            {
                r.len = r.len.saturating_add(1);
            }
            _ => {
                self.flush();
                self.run = Some(Mapping { lblk, pblk, len: 1 });
            }
        }
    }

    fn flush(&mut self) {
        if let Some(r) = self.run.take() {
            (self.visit)(Visit::Data {
                lblk: r.lblk,
                pblk: r.pblk,
                len: r.len,
                uninit: false,
            });
        }
    }

    /// Logical blocks one entry of a `level` block spans: per_block^(level-1).
    fn span(&self, level: u8) -> u64 {
        self.per_block
            .saturating_pow(u32::from(level.saturating_sub(1)))
    }

    /// Walk indirect block `blk` of `level` (1 = single) whose first entry maps logical
    /// block `base`. Returns true on error.
    fn walk(&mut self, blk: u32, level: u8, base: u64) -> bool {
        self.flush();
        let b = FsBlock(u64::from(blk));
        (self.visit)(Visit::Meta(b));
        if b.get() >= self.geo.blocks_count || b < self.geo.first_data_block {
            self.last = Some(
                CorruptKind::BlockOutside {
                    role: Role::IndirectBlock {
                        ino: self.ino,
                        level,
                    },
                    block: b.get(),
                    fs_blocks: self.geo.blocks_count,
                }
                .into(),
            );
            return true;
        }
        if let Some(prev) = self.done.get(&(blk, level)) {
            // Same outcome as walking it again: marks already made, same error (if any).
            self.last = prev.as_ref().map(copy_error);
            return prev.is_some();
        }
        let r = self.walk_uncached(blk, level, base);
        let outcome = if r {
            self.last.as_ref().map(copy_error)
        } else {
            None
        };
        self.done.insert((blk, level), outcome);
        r
    }

    /// Tell `ahead` the indirect blocks `buf` points to, as runs (gaps of up to
    /// [`HINT_GAP`] blocks read through). Entries outside the filesystem are left to the walk.
    fn hint_children(&mut self, buf: &[u8]) {
        let mut run: Option<(u64, u64)> = None;
        for c in buf.chunks_exact(4) {
            let e = u64::from(le::u32(c, 0));
            if e == 0 || e >= self.geo.blocks_count || e < self.geo.first_data_block.get() {
                continue;
            }
            run = match run {
                // Forward, within HINT_GAP of the run's end: read through.
                Some((s, n))
                    if e.checked_sub(s.saturating_add(n))
                        .is_some_and(|g| g <= HINT_GAP) =>
                {
                    Some((s, e.saturating_add(1).saturating_sub(s)))
                }
                // Inside the run already.
                Some((s, n)) if e >= s && e < s.saturating_add(n) => Some((s, n)),
                Some((s, n)) => {
                    (self.ahead)(FsBlock(s), n);
                    Some((e, 1))
                }
                None => Some((e, 1)),
            };
        }
        if let Some((s, n)) = run {
            (self.ahead)(FsBlock(s), n);
        }
    }

    fn walk_uncached(&mut self, blk: u32, level: u8, base: u64) -> bool {
        let slot = usize::from(level.saturating_sub(1)).min(2);
        let mut buf = std::mem::take(&mut self.bufs[slot]);
        buf.resize(self.geo.block_size.as_usize(), 0);
        let r = (self.read)(
            FsBlock(u64::from(blk)),
            &mut buf,
            Role::IndirectBlock {
                ino: self.ino,
                level,
            },
        );
        let failed = r.is_err();
        self.last = r.err();
        if failed {
            self.bufs[slot] = buf;
            return true;
        }
        if level >= 2 {
            self.hint_children(&buf);
        }
        let span = self.span(level);
        let mut err = false;
        // Indirect blocks are mostly zeros (holes, unused reserved-GDT slots): skip them
        // 8 entries at a time.
        'groups: for (gi, group) in buf.chunks_exact(32).enumerate() {
            if group.iter().fold(0u8, |a, &b| a | b) == 0 {
                continue;
            }
            for (j, c) in group.chunks_exact(4).enumerate() {
                let e = le::u32(c, 0);
                if e == 0 {
                    continue;
                }
                // Below 12 + 16384 + 16384² + 16384³ < 2^43: never saturates.
                let i = (gi as u64).saturating_mul(8).saturating_add(j as u64);
                let lblk = base.saturating_add(i.saturating_mul(span));
                if level <= 1 {
                    self.data(lblk, FsBlock(u64::from(e)));
                } else if self.walk(e, level.saturating_sub(1), lblk) {
                    err = true;
                    break 'groups;
                }
            }
        }
        self.bufs[slot] = buf;
        err
    }
}

/// Blocks between two hinted children read through rather than hinted apart.
const HINT_GAP: u64 = 16;

/// Walk inode `ino`'s `i_block` like libext2fs's block iterator: data blocks (with
/// `want_data`, with their logical numbers) and every indirect block, with its error
/// semantics: an indirect block outside the filesystem or unreadable fails the walk unless
/// a later indirect block reads well. `ahead` hears of indirect blocks before they are read.
pub fn walk(
    ino: u32,
    block: &[u32; 15],
    geo: Geometry,
    want_data: bool,
    read: &mut ReadBlock<'_>,
    visit: &mut dyn FnMut(Visit),
    ahead: &mut dyn FnMut(FsBlock, u64),
) -> Result<()> {
    let per_block = geo.block_size.bytes() >> 2;
    let mut w = Walker {
        ino,
        geo,
        per_block,
        want_data,
        read,
        visit,
        ahead,
        last: None,
        bufs: [Vec::new(), Vec::new(), Vec::new()],
        run: None,
        done: HashMap::new(),
    };
    let mut lblk = 0u64;
    for &b in &block[..EXT2_NDIR_BLOCKS] {
        if b != 0 {
            w.data(lblk, FsBlock(u64::from(b)));
        }
        lblk = lblk.saturating_add(1);
    }
    let mut err = false;
    for (slot, level) in [
        (EXT2_IND_BLOCK, 1u8),
        (EXT2_DIND_BLOCK, 2),
        (EXT2_TIND_BLOCK, 3),
    ] {
        if block[slot] != 0 {
            err |= w.walk(block[slot], level, lblk);
        }
        // The logical blocks this slot covers: per_block^level.
        lblk = lblk.saturating_add(w.span(level).saturating_mul(per_block));
    }
    w.flush();
    match (err, w.last) {
        (true, Some(e)) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn ind(entries: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        for (i, &e) in entries.iter().enumerate() {
            le::set_u32(&mut b, 4 * i, e);
        }
        b
    }

    const GEO: Geometry = Geometry {
        block_size: BlockSize::new(1024).unwrap(),
        first_data_block: FsBlock(1),
        blocks_count: 1000,
    };

    fn past(role: Role, block: u64) -> Error {
        CorruptKind::BlockPastSource {
            role,
            block,
            source_bytes: 0,
        }
        .into()
    }

    fn run(block: [u32; 15], blocks: &[(u64, Vec<u8>)]) -> (Result<()>, Vec<Visit>) {
        let mut out = Vec::new();
        let mut read =
            |b: FsBlock, buf: &mut [u8], role: Role| match blocks.iter().find(|(n, _)| *n == b.0) {
                Some((_, d)) => {
                    buf.copy_from_slice(d);
                    Ok(())
                }
                None => Err(past(role, b.0)),
            };
        let r = walk(
            5,
            &block,
            GEO,
            true,
            &mut read,
            &mut |v| out.push(v),
            &mut |_, _| {},
        );
        (r, out)
    }

    /// The children of double and triple indirect blocks are hinted before they are read:
    /// as runs across small gaps, outside blocks left out; a single indirect block's data
    /// blocks are not hinted.
    #[test]
    fn children_of_double_indirect_blocks_are_hinted() {
        let mut b = [0u32; 15];
        b[12] = 40;
        b[13] = 60;
        b[14] = 70;
        let blocks = [
            (40, ind(&[41, 42])),
            (60, ind(&[100, 101, 102, 0, 110, 3000, 130, 105, 500])),
            (70, ind(&[71])),
            (71, ind(&[])),
        ];
        let mut read = |b: FsBlock, buf: &mut [u8], _: Role| {
            match blocks.iter().find(|(n, _)| *n == b.0) {
                Some((_, d)) => buf.copy_from_slice(d),
                None => buf.fill(0),
            }
            Ok(())
        };
        let mut hints = Vec::new();
        let r = walk(5, &b, GEO, true, &mut read, &mut |_| {}, &mut |s, n| {
            hints.push((s.0, n))
        });
        assert!(r.is_ok());
        assert_eq!(hints, [(100, 11), (130, 1), (105, 1), (500, 1), (71, 1)]);
    }

    fn data(lblk: u64, pblk: u64, len: u64) -> Visit {
        Visit::Data {
            lblk,
            pblk: FsBlock(pblk),
            len,
            uninit: false,
        }
    }

    #[test]
    fn direct_and_indirect_coalesce() {
        let mut b = [0u32; 15];
        b[0] = 10;
        b[1] = 11;
        b[2] = 13;
        b[11] = 14;
        b[12] = 50;
        let (r, v) = run(b, &[(50, ind(&[15, 16, 0, 17]))]);
        assert!(r.is_ok());
        assert_eq!(
            v,
            vec![
                data(0, 10, 2),
                data(2, 13, 1),
                // Physically contiguous with 13 but logically 9 blocks on: a new run.
                data(11, 14, 1),
                Visit::Meta(FsBlock(50)),
                data(12, 15, 2),
                data(15, 17, 1),
            ]
        );
    }

    #[test]
    fn logical_numbers_in_double_and_triple_blocks() {
        let mut b = [0u32; 15];
        b[13] = 60;
        b[14] = 70;
        // DIND entry 1 → IND whose entry 2 maps a block: 12 + 256 + 1·256 + 2.
        // TIND entry 0 → DIND entry 0 → IND entry 0: 12 + 256 + 256².
        let blocks = [
            (60, ind(&[0, 61])),
            (61, ind(&[0, 0, 99])),
            (70, ind(&[71])),
            (71, ind(&[72])),
            (72, ind(&[98])),
        ];
        let (r, v) = run(b, &blocks);
        assert!(r.is_ok(), "{r:?}");
        let d: Vec<Visit> = v
            .into_iter()
            .filter(|v| matches!(v, Visit::Data { .. }))
            .collect();
        assert_eq!(
            d,
            vec![
                data(12 + 256 + 256 + 2, 99, 1),
                data(12 + 256 + 65536, 98, 1)
            ]
        );
    }

    #[test]
    fn later_good_read_clears_error() {
        // A bad IND block followed by a readable DIND: libext2fs reports success.
        let mut b = [0u32; 15];
        b[12] = 5000;
        b[13] = 60;
        let (r, v) = run(b, &[(60, ind(&[61])), (61, ind(&[70]))]);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            v,
            vec![
                Visit::Meta(FsBlock(5000)),
                Visit::Meta(FsBlock(60)),
                Visit::Meta(FsBlock(61)),
                data(12 + 256, 70, 1)
            ]
        );
        // Without the DIND the error stands, naming the block and its level.
        let mut b2 = [0u32; 15];
        b2[12] = 5000;
        let e = run(b2, &[]).0.unwrap_err();
        assert_eq!(
            e.corrupt_kind(),
            Some(&CorruptKind::BlockOutside {
                role: Role::IndirectBlock { ino: 5, level: 1 },
                block: 5000,
                fs_blocks: 1000
            })
        );
    }

    #[test]
    fn error_inside_dind_stops_that_dind() {
        let mut b = [0u32; 15];
        b[13] = 60;
        let (r, v) = run(b, &[(60, ind(&[0, 999, 61])), (61, ind(&[70]))]);
        assert_eq!(
            r.unwrap_err().corrupt_kind(),
            Some(&CorruptKind::BlockPastSource {
                role: Role::IndirectBlock { ino: 5, level: 1 },
                block: 999,
                source_bytes: 0
            })
        );
        assert_eq!(v, vec![Visit::Meta(FsBlock(60)), Visit::Meta(FsBlock(999))]);
    }

    #[test]
    fn shared_subtrees_are_walked_once() {
        // A TIND whose 256 entries all point to one DIND whose entries all point to one IND.
        let mut reads = 0;
        let all = |v: u32| ind(&[v; 256]);
        let blocks = [(60u64, all(61)), (61, all(62)), (62, ind(&[70]))];
        let mut read = |b: FsBlock, buf: &mut [u8], role: Role| {
            reads += 1;
            let (_, d) = blocks
                .iter()
                .find(|(n, _)| *n == b.0)
                .ok_or_else(|| past(role, b.0))?;
            buf.copy_from_slice(d);
            Ok(())
        };
        let mut b = [0u32; 15];
        b[14] = 60;
        let mut data = 0;
        let mut count = |v| {
            if matches!(v, Visit::Data { .. }) {
                data += 1;
            }
        };
        walk(9, &b, GEO, true, &mut read, &mut count, &mut |_, _| {}).unwrap();
        assert_eq!(reads, 3);
        assert_eq!(data, 1);
    }
}
