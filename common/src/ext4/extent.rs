//! Extent trees: walk every node and leaf extent the way libext2fs's block iterator does.

use super::le;
use crate::{Error, Result};

pub const EXT3_EXT_MAGIC: u16 = 0xF30A;
/// Longest initialized extent; larger `ee_len` values mark unwritten extents.
pub const EXT_INIT_MAX_LEN: u16 = 1 << 15;
/// Real trees are at most 5 deep (the kernel's limit); deeper claims are refused so that
/// memory stays bounded (one block buffer per level).
pub const MAX_DEPTH: usize = 32;

/// What a walk reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// A mapping block: extent index or leaf node, or an indirect block.
    Meta(u64),
    /// `len` consecutive data blocks from `pblk`.
    Data { pblk: u64, len: u64 },
}

/// Check an extent header in a node of `size` bytes (libext2fs `ext2fs_extent_header_verify`).
pub fn header_ok(node: &[u8], size: usize) -> std::result::Result<(), String> {
    if node.len() < 12 {
        return Err("node shorter than an extent header".into());
    }
    let magic = le::u16(node, 0);
    let entries = le::u16(node, 2);
    let max = le::u16(node, 4);
    if magic != EXT3_EXT_MAGIC {
        return Err(format!("bad extent header magic {magic:#06x}"));
    }
    if entries > max {
        return Err(format!(
            "extent header has {entries} entries but room for {max}"
        ));
    }
    let fit = (size.saturating_sub(12) / 12) as i64;
    let max_i = i64::from(max);
    if max_i > fit || max_i < fit - 2 {
        return Err(format!(
            "extent header claims room for {max} entries in a {size}-byte node"
        ));
    }
    Ok(())
}

/// One level of the path being walked.
struct Level {
    buf: Vec<u8>,
    blk: u64,
    next: usize,
    entries: usize,
}

/// Walk the extent tree whose root is `root` (the 60-byte `i_block`).
///
/// Reports every index/leaf node below the root as [`Visit::Meta`] (before reading it, as
/// libext2fs does), and, with `want_data`, the data blocks with libext2fs's quirks kept: an
/// extent that ends at or before the logical block reached so far is skipped together with
/// the extent that follows it in the same leaf, and a partially overlapping extent is shifted.
/// `read` fills a whole filesystem block.
pub fn walk(
    root: &[u8; 60],
    block_size: usize,
    want_data: bool,
    read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    visit: &mut dyn FnMut(Visit),
    what: &dyn Fn() -> String,
) -> Result<()> {
    let corrupt = |d: String| Error::corrupt(what(), d);
    // libext2fs treats an all-zero i_block as an empty tree, and its block iterator returns
    // success without visiting anything when the root header is invalid (the open fails
    // before any error is recorded), so e2image copies nothing of such an inode and goes on.
    if root.iter().all(|&b| b == 0) || header_ok(root, 60).is_err() {
        return Ok(());
    }
    let root_buf = root.to_vec();
    let max_depth = usize::from(le::u16(&root_buf, 6));
    let mut path: Vec<Level> = vec![Level {
        entries: usize::from(le::u16(&root_buf, 2)),
        buf: root_buf,
        blk: 0,
        next: 0,
    }];
    let mut seen: std::collections::HashSet<u64> = std::collections::HashSet::new();
    // Logical block reached so far (libext2fs's running `blockcnt`).
    let mut blockcnt: u64 = 0;
    // Set after a skipped extent: the following sibling was consumed by the look-ahead.
    let mut lose_next = false;
    while !path.is_empty() {
        let depth = path.len() - 1;
        let node = &mut path[depth];
        if node.next >= node.entries {
            path.pop();
            lose_next = false;
            continue;
        }
        let i = node.next;
        node.next += 1;
        let e = &node.buf[12 + 12 * i..24 + 12 * i];
        if depth < max_depth {
            let child = u64::from(le::u32(e, 4)) | u64::from(le::u16(e, 8)) << 32;
            visit(Visit::Meta(child));
            if path.iter().skip(1).any(|l| l.blk == child) {
                return Err(corrupt(format!("extent tree loops back to block {child}")));
            }
            // A node reached a second time (a damaged tree sharing subtrees) was read and
            // checked already and its blocks marked; walking it again could take
            // exponential time, so it is not descended into twice.
            if !seen.insert(child) {
                continue;
            }
            if path.len() > MAX_DEPTH {
                return Err(corrupt(format!(
                    "extent tree deeper than {MAX_DEPTH} levels"
                )));
            }
            let mut buf = vec![0u8; block_size];
            read(child, &mut buf)?;
            header_ok(&buf, block_size)
                .map_err(|e| corrupt(format!("extent node at block {child}: {e}")))?;
            let entries = usize::from(le::u16(&buf, 2));
            if entries == 0 {
                return Err(corrupt(format!("extent node at block {child} is empty")));
            }
            path.push(Level {
                buf,
                blk: child,
                next: 0,
                entries,
            });
            continue;
        }
        if !want_data {
            node.next = node.entries;
            continue;
        }
        if lose_next {
            lose_next = false;
            continue;
        }
        let lblk = u64::from(le::u32(e, 0));
        let mut len = u64::from(le::u16(e, 4));
        if len > u64::from(EXT_INIT_MAX_LEN) {
            len -= u64::from(EXT_INIT_MAX_LEN);
        }
        let pblk = u64::from(le::u32(e, 8)) | u64::from(le::u16(e, 6)) << 32;
        if lblk + len <= blockcnt {
            lose_next = true;
            continue;
        }
        let shift = blockcnt.saturating_sub(lblk);
        if len > 0 {
            visit(Visit::Data {
                pblk: pblk.wrapping_add(shift),
                len,
            });
        }
        blockcnt = lblk + len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(entries: &[(u32, u16, u64)], size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        b[0..2].copy_from_slice(&EXT3_EXT_MAGIC.to_le_bytes());
        b[2..4].copy_from_slice(&(entries.len() as u16).to_le_bytes());
        b[4..6].copy_from_slice(&(((size - 12) / 12) as u16).to_le_bytes());
        for (i, &(l, n, p)) in entries.iter().enumerate() {
            let o = 12 + 12 * i;
            b[o..o + 4].copy_from_slice(&l.to_le_bytes());
            b[o + 4..o + 6].copy_from_slice(&n.to_le_bytes());
            b[o + 6..o + 8].copy_from_slice(&((p >> 32) as u16).to_le_bytes());
            b[o + 8..o + 12].copy_from_slice(&(p as u32).to_le_bytes());
        }
        b
    }

    fn run(root: &[u8], blocks: &[(u64, Vec<u8>)]) -> Result<Vec<Visit>> {
        let mut r = [0u8; 60];
        r.copy_from_slice(&root[..60]);
        let mut out = Vec::new();
        let mut read = |b: u64, buf: &mut [u8]| {
            let (_, d) = blocks
                .iter()
                .find(|(n, _)| *n == b)
                .ok_or_else(|| Error::corrupt("t", "missing"))?;
            buf.copy_from_slice(d);
            Ok(())
        };
        walk(&r, 1024, true, &mut read, &mut |v| out.push(v), &|| {
            "inode 12".into()
        })?;
        Ok(out)
    }

    #[test]
    fn depth_zero_and_uninit() {
        let root = leaf(&[(0, 4, 100), (4, 32768 + 2, 200)], 60);
        assert_eq!(
            run(&root, &[]).unwrap(),
            vec![
                Visit::Data { pblk: 100, len: 4 },
                Visit::Data { pblk: 200, len: 2 }
            ]
        );
    }

    #[test]
    fn backwards_extent_loses_its_successor() {
        let root = leaf(&[(10, 2, 100), (0, 2, 200), (12, 1, 300), (13, 1, 400)], 60);
        assert_eq!(
            run(&root, &[]).unwrap(),
            vec![
                Visit::Data { pblk: 100, len: 2 },
                Visit::Data { pblk: 400, len: 1 }
            ]
        );
    }

    #[test]
    fn overlap_shifts_physical_start() {
        let root = leaf(&[(0, 4, 100), (2, 4, 200)], 60);
        assert_eq!(
            run(&root, &[]).unwrap(),
            vec![
                Visit::Data { pblk: 100, len: 4 },
                Visit::Data { pblk: 202, len: 4 }
            ]
        );
    }

    #[test]
    fn index_nodes_reported_and_cycles_caught() {
        let mut root = leaf(&[], 60);
        root[2] = 1;
        root[6] = 1; // depth 1
        root[12 + 4..12 + 8].copy_from_slice(&50u32.to_le_bytes());
        let child = leaf(&[(0, 1, 7)], 1024);
        assert_eq!(
            run(&root, &[(50, child)]).unwrap(),
            vec![Visit::Meta(50), Visit::Data { pblk: 7, len: 1 }]
        );
        // A depth-2 root whose child points at itself.
        let mut root2 = root.clone();
        root2[6] = 2;
        let mut node = leaf(&[], 1024);
        node[2] = 1;
        node[6] = 1;
        node[12 + 4..12 + 8].copy_from_slice(&50u32.to_le_bytes());
        assert!(run(&root2, &[(50, node)]).is_err());
    }

    #[test]
    fn bad_root_header_is_an_empty_tree() {
        let mut root = leaf(&[(0, 1, 1)], 60);
        root[0] = 0;
        assert_eq!(run(&root, &[]).unwrap(), vec![]);
    }
}
