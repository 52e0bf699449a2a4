//! Classic block maps: 12 direct pointers, then single, double and triple indirect blocks.

use super::extent::Visit;
use super::inode::{EXT2_DIND_BLOCK, EXT2_IND_BLOCK, EXT2_NDIR_BLOCKS, EXT2_TIND_BLOCK};
use super::le;
use crate::{Error, Result};

struct Walker<'a> {
    block_size: usize,
    first_data_block: u64,
    blocks_count: u64,
    want_data: bool,
    read: &'a mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    visit: &'a mut dyn FnMut(Visit),
    /// libext2fs keeps one error code that every later indirect-block read overwrites;
    /// the walk fails only if the last one assigned is an error.
    last: Option<Error>,
    bufs: [Vec<u8>; 3],
    run: Option<(u64, u64)>,
    /// Indirect blocks already walked, by (block, level): the error a walk produced, if any.
    /// A damaged map that points many times at one subtree is walked once.
    done: std::collections::HashMap<(u32, usize), Option<String>>,
}

impl Walker<'_> {
    fn data(&mut self, blk: u64) {
        if !self.want_data {
            return;
        }
        match &mut self.run {
            Some((s, n)) if *s + *n == blk => *n += 1,
            _ => {
                self.flush();
                self.run = Some((blk, 1));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((pblk, len)) = self.run.take() {
            (self.visit)(Visit::Data { pblk, len });
        }
    }

    /// Walk an indirect block of `level` (1 = single). Returns true on error.
    fn walk(&mut self, blk: u32, level: usize, what: &dyn Fn() -> String) -> bool {
        self.flush();
        (self.visit)(Visit::Meta(u64::from(blk)));
        let b = u64::from(blk);
        if b >= self.blocks_count || b < self.first_data_block {
            let kind = ["", "indirect", "double indirect", "triple indirect"][level];
            self.last = Some(Error::corrupt(
                what(),
                format!("{kind} block {blk} is outside the filesystem"),
            ));
            return true;
        }
        if let Some(prev) = self.done.get(&(blk, level)) {
            // Same outcome as walking it again: marks already made, same error (if any).
            self.last = prev.as_ref().map(|m| match m.split_once(": ") {
                Some((w, d)) => Error::corrupt(w, d),
                None => Error::corrupt(what(), m.clone()),
            });
            return prev.is_some();
        }
        let r = self.walk_uncached(blk, level, what);
        let outcome = if r {
            Some(
                self.last
                    .as_ref()
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
            )
        } else {
            None
        };
        self.done.insert((blk, level), outcome);
        r
    }

    fn walk_uncached(&mut self, blk: u32, level: usize, what: &dyn Fn() -> String) -> bool {
        let b = u64::from(blk);
        let mut buf = std::mem::take(&mut self.bufs[level - 1]);
        buf.resize(self.block_size, 0);
        let r = (self.read)(b, &mut buf);
        let failed = r.is_err();
        self.last = r.err();
        if failed {
            self.bufs[level - 1] = buf;
            return true;
        }
        let mut err = false;
        for i in 0..self.block_size / 4 {
            let e = le::u32(&buf, 4 * i);
            if e == 0 {
                continue;
            }
            if level == 1 {
                self.data(u64::from(e));
            } else if self.walk(e, level - 1, what) {
                err = true;
                break;
            }
        }
        self.bufs[level - 1] = buf;
        err
    }
}

/// Walk a block-mapped inode's `i_block` like libext2fs's block iterator: data blocks
/// (with `want_data`) and every indirect block, with its error semantics.
#[allow(clippy::too_many_arguments)]
pub fn walk(
    block: &[u32; 15],
    block_size: usize,
    first_data_block: u64,
    blocks_count: u64,
    want_data: bool,
    read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    visit: &mut dyn FnMut(Visit),
    what: &dyn Fn() -> String,
) -> Result<()> {
    let mut w = Walker {
        block_size,
        first_data_block,
        blocks_count,
        want_data,
        read,
        visit,
        last: None,
        bufs: [Vec::new(), Vec::new(), Vec::new()],
        run: None,
        done: std::collections::HashMap::new(),
    };
    for &b in &block[..EXT2_NDIR_BLOCKS] {
        if b != 0 {
            w.data(u64::from(b));
        }
    }
    let mut err = false;
    for (slot, level) in [
        (EXT2_IND_BLOCK, 1),
        (EXT2_DIND_BLOCK, 2),
        (EXT2_TIND_BLOCK, 3),
    ] {
        if block[slot] != 0 {
            err |= w.walk(block[slot], level, what);
        }
    }
    w.flush();
    match (err, w.last) {
        (true, Some(e)) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ind(entries: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        for (i, e) in entries.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&e.to_le_bytes());
        }
        b
    }

    fn run(block: [u32; 15], blocks: &[(u64, Vec<u8>)]) -> (Result<()>, Vec<Visit>) {
        let mut out = Vec::new();
        let mut read = |b: u64, buf: &mut [u8]| match blocks.iter().find(|(n, _)| *n == b) {
            Some((_, d)) => {
                buf.copy_from_slice(d);
                Ok(())
            }
            None => Err(Error::corrupt("read", "short")),
        };
        let r = walk(
            &block,
            1024,
            1,
            1000,
            true,
            &mut read,
            &mut |v| out.push(v),
            &|| "inode 5".into(),
        );
        (r, out)
    }

    #[test]
    fn direct_and_indirect_coalesce() {
        let mut b = [0u32; 15];
        b[0] = 10;
        b[1] = 11;
        b[2] = 13;
        b[12] = 50;
        let (r, v) = run(b, &[(50, ind(&[14, 15, 0, 16]))]);
        assert!(r.is_ok());
        assert_eq!(
            v,
            vec![
                Visit::Data { pblk: 10, len: 2 },
                Visit::Data { pblk: 13, len: 1 },
                Visit::Meta(50),
                Visit::Data { pblk: 14, len: 3 },
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
                Visit::Meta(5000),
                Visit::Meta(60),
                Visit::Meta(61),
                Visit::Data { pblk: 70, len: 1 }
            ]
        );
        // Without the DIND the error stands.
        let mut b2 = [0u32; 15];
        b2[12] = 5000;
        assert!(run(b2, &[]).0.is_err());
    }

    #[test]
    fn error_inside_dind_stops_that_dind() {
        let mut b = [0u32; 15];
        b[13] = 60;
        let (r, v) = run(b, &[(60, ind(&[0, 9999, 61])), (61, ind(&[70]))]);
        assert!(r.is_err());
        assert_eq!(v, vec![Visit::Meta(60), Visit::Meta(9999)]);
    }

    #[test]
    fn shared_subtrees_are_walked_once() {
        // A TIND whose 256 entries all point to one DIND whose entries all point to one IND.
        let mut reads = 0;
        let all = |v: u32| ind(&[v; 256]);
        let blocks = [(60u64, all(61)), (61, all(62)), (62, ind(&[70]))];
        let mut read = |b: u64, buf: &mut [u8]| {
            reads += 1;
            let (_, d) = blocks
                .iter()
                .find(|(n, _)| *n == b)
                .ok_or_else(|| Error::corrupt("read", "short"))?;
            buf.copy_from_slice(d);
            Ok(())
        };
        let mut b = [0u32; 15];
        b[14] = 60;
        let mut data = 0;
        walk(
            &b,
            1024,
            1,
            1000,
            true,
            &mut read,
            &mut |v| {
                if matches!(v, Visit::Data { .. }) {
                    data += 1;
                }
            },
            &|| "inode 9".into(),
        )
        .unwrap();
        assert_eq!(reads, 3);
        assert_eq!(data, 1);
    }
}
