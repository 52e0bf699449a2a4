//! Extent trees: the header check and the walk of every node and leaf extent, the way
//! libext2fs's block iterator does it. Callers use [`super::walk_inode`].

use std::collections::HashSet;

use super::{ReadBlock, Visit, Walked};
use crate::Result;
use crate::error::CorruptKind;
use crate::ext4::damage::{ExtentHeaderProblem, Role};
use crate::ext4::le;
use crate::units::{BlockSize, FsBlock};

pub const EXT3_EXT_MAGIC: u16 = 0xF30A;
/// Longest initialized extent; larger `ee_len` values mark unwritten extents.
pub const EXT_INIT_MAX_LEN: u16 = 1 << 15;
/// Real trees are at most 5 deep (the kernel's limit); deeper claims are refused so that
/// memory stays bounded (one block buffer per level).
pub const MAX_DEPTH: u16 = 32;
/// Bytes of a header and of each entry.
const HEADER: usize = 12;
const ENTRY: usize = 12;

/// Check an extent header in a node of `size` bytes (libext2fs `ext2fs_extent_header_verify`).
pub fn header_ok(node: &[u8], size: usize) -> std::result::Result<(), ExtentHeaderProblem> {
    if node.len() < HEADER {
        return Err(ExtentHeaderProblem::Short);
    }
    let magic = le::u16(node, 0);
    let entries = le::u16(node, 2);
    let max = le::u16(node, 4);
    if magic != EXT3_EXT_MAGIC {
        return Err(ExtentHeaderProblem::Magic { magic });
    }
    if entries > max {
        return Err(ExtentHeaderProblem::Entries { entries, max });
    }
    // libext2fs: eh_max must lie in [fit - 2, fit] (in a signed int).
    let fit = size.saturating_sub(HEADER) / ENTRY;
    let max_u = usize::from(max);
    if max_u > fit || max_u.saturating_add(2) < fit {
        return Err(ExtentHeaderProblem::Max {
            max,
            node_bytes: size,
        });
    }
    Ok(())
}

/// Entry `i` of a node (the header was checked: `i < entries ≤ max` lies inside it).
fn entry(node: &[u8], i: usize) -> Option<&[u8]> {
    node.get(HEADER..)?.chunks_exact(ENTRY).nth(i)
}

/// The blocks the root `root` (an `i_block`) points to when it is an index (depth > 0):
/// the nodes a walk reads first. Nothing for a leaf root or an invalid header.
pub fn root_children(root: &[u8; 60]) -> impl Iterator<Item = FsBlock> + '_ {
    let index = header_ok(root, root.len()).is_ok() && le::u16(root, 6) > 0;
    let entries = if index {
        usize::from(le::u16(root, 2))
    } else {
        0
    };
    (0..entries)
        .filter_map(|i| entry(root, i))
        .map(|e| FsBlock(u64::from(le::u32(e, 4)) | u64::from(le::u16(e, 8)) << 32))
}

/// One level of the path being walked.
struct Level {
    buf: Vec<u8>,
    blk: FsBlock,
    next: usize,
    entries: usize,
}

/// Walk the extent tree of inode `ino` whose root is `root` (the 60-byte `i_block`).
///
/// Reports every index/leaf node below the root as [`Visit::Meta`] (before reading it, as
/// libext2fs does), and, with `want_data`, the data blocks with libext2fs's quirks kept: an
/// extent that ends at or before the logical block reached so far is skipped together with
/// the extent that follows it in the same leaf, and a partially overlapping extent keeps
/// its logical start but has its physical start shifted by the overlap.
pub fn walk(
    ino: u32,
    root: &[u8; 60],
    block_size: BlockSize,
    want_data: bool,
    read: &mut ReadBlock<'_>,
    visit: &mut dyn FnMut(Visit),
) -> Result<Walked> {
    // libext2fs treats an all-zero i_block as an empty tree.
    if root.iter().all(|&b| b == 0) {
        return Ok(Walked::Complete);
    }
    if let Err(p) = header_ok(root, root.len()) {
        return Ok(Walked::RootIgnored(p));
    }
    let max_depth = le::u16(root, 6);
    let mut path: Vec<Level> = vec![Level {
        entries: usize::from(le::u16(root, 2)),
        buf: root.to_vec(),
        blk: FsBlock(0),
        next: 0,
    }];
    let mut seen: HashSet<FsBlock> = HashSet::new();
    // Logical block reached so far (libext2fs's running `blockcnt`).
    let mut blockcnt: u64 = 0;
    // Set after a skipped extent: the following sibling was consumed by the look-ahead.
    let mut lose_next = false;
    loop {
        // Levels below the root: at most MAX_DEPTH (checked before each push).
        let depth = u16::try_from(path.len().saturating_sub(1)).unwrap_or(u16::MAX);
        let Some(node) = path.last_mut() else { break };
        if node.next >= node.entries {
            path.pop();
            lose_next = false;
            continue;
        }
        let i = node.next;
        node.next = i.saturating_add(1);
        let Some(e) = entry(&node.buf, i) else {
            // Ruled out by the header check; end this node rather than trust it.
            node.next = node.entries;
            continue;
        };
        if depth < max_depth {
            let child = FsBlock(u64::from(le::u32(e, 4)) | u64::from(le::u16(e, 8)) << 32);
            visit(Visit::Meta(child));
            if path.iter().skip(1).any(|l| l.blk == child) {
                return Err(CorruptKind::ExtentLoop {
                    ino,
                    block: child.get(),
                }
                .into());
            }
            // A node reached a second time (a damaged tree sharing subtrees) was read and
            // checked already and its blocks marked; walking it again could take
            // exponential time, so it is not descended into twice.
            if !seen.insert(child) {
                continue;
            }
            if depth >= MAX_DEPTH {
                return Err(CorruptKind::ExtentTooDeep {
                    ino,
                    depth: MAX_DEPTH,
                }
                .into());
            }
            let mut buf = vec![0u8; block_size.as_usize()];
            read(child, &mut buf, Role::ExtentNode { ino })?;
            header_ok(&buf, block_size.as_usize()).map_err(|problem| {
                CorruptKind::ExtentHeader {
                    ino,
                    node: Some(child.get()),
                    problem,
                }
            })?;
            let entries = usize::from(le::u16(&buf, 2));
            if entries == 0 {
                return Err(CorruptKind::ExtentNodeEmpty {
                    ino,
                    block: child.get(),
                }
                .into());
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
        let raw_len = le::u16(e, 4);
        let (len, uninit) = match raw_len.checked_sub(EXT_INIT_MAX_LEN) {
            Some(l) if l > 0 => (u64::from(l), true),
            _ => (u64::from(raw_len), false),
        };
        let pblk = FsBlock(u64::from(le::u32(e, 8)) | u64::from(le::u16(e, 6)) << 32);
        // lblk < 2^32 and len ≤ 2^15: the sum cannot saturate.
        let end = lblk.saturating_add(len);
        if end <= blockcnt {
            lose_next = true;
            continue;
        }
        // pblk < 2^48 and the shift < 2^33: no saturation either.
        let shift = blockcnt.saturating_sub(lblk);
        if len > 0 {
            visit(Visit::Data {
                lblk,
                pblk: pblk.saturating_add(shift),
                len,
                uninit,
            });
        }
        blockcnt = end;
    }
    Ok(Walked::Complete)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::Error;

    fn leaf(entries: &[(u32, u16, u64)], size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        le::set_u16(&mut b, 0, EXT3_EXT_MAGIC);
        le::set_u16(&mut b, 2, entries.len() as u16);
        le::set_u16(&mut b, 4, ((size - 12) / 12) as u16);
        for (i, &(l, n, p)) in entries.iter().enumerate() {
            let o = 12 + 12 * i;
            le::set_u32(&mut b, o, l);
            le::set_u16(&mut b, o + 4, n);
            le::set_u16(&mut b, o + 6, (p >> 32) as u16);
            le::set_u32(&mut b, o + 8, p as u32);
        }
        b
    }

    fn run(root: &[u8], blocks: &[(u64, Vec<u8>)]) -> Result<(Walked, Vec<Visit>)> {
        let mut r = [0u8; 60];
        r.copy_from_slice(&root[..60]);
        let mut out = Vec::new();
        let mut read = |b: FsBlock, buf: &mut [u8], role: Role| {
            let (_, d) = blocks.iter().find(|(n, _)| *n == b.0).ok_or_else(|| {
                Error::from(CorruptKind::BlockPastSource {
                    role,
                    block: b.0,
                    source_bytes: 0,
                })
            })?;
            buf.copy_from_slice(d);
            Ok(())
        };
        let bs = BlockSize::new(1024).unwrap();
        let w = walk(12, &r, bs, true, &mut read, &mut |v| out.push(v))?;
        Ok((w, out))
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
    fn depth_zero_and_uninit() {
        let root = leaf(&[(0, 4, 100), (4, 32768 + 2, 200), (6, 32768, 300)], 60);
        assert_eq!(
            run(&root, &[]).unwrap().1,
            vec![
                data(0, 100, 4),
                Visit::Data {
                    lblk: 4,
                    pblk: FsBlock(200),
                    len: 2,
                    uninit: true
                },
                // 32768 exactly is the longest initialized extent.
                data(6, 300, 32768),
            ]
        );
    }

    #[test]
    fn backwards_extent_loses_its_successor() {
        let root = leaf(&[(10, 2, 100), (0, 2, 200), (12, 1, 300), (13, 1, 400)], 60);
        assert_eq!(
            run(&root, &[]).unwrap().1,
            vec![data(10, 100, 2), data(13, 400, 1)]
        );
    }

    #[test]
    fn overlap_shifts_physical_start() {
        let root = leaf(&[(0, 4, 100), (2, 4, 200)], 60);
        assert_eq!(
            run(&root, &[]).unwrap().1,
            vec![data(0, 100, 4), data(2, 202, 4)]
        );
    }

    #[test]
    fn extreme_fields_do_not_overflow() {
        // ee_block and ee_start at their maxima: the shift and the end stay in range.
        let root = leaf(
            &[(u32::MAX, 32768, (1 << 48) - 1), (u32::MAX - 1, 3, 1 << 40)],
            60,
        );
        let (_, v) = run(&root, &[]).unwrap();
        assert_eq!(v, vec![data(u64::from(u32::MAX), (1 << 48) - 1, 32768)]);
    }

    #[test]
    fn index_nodes_reported_and_cycles_caught() {
        let mut root = leaf(&[], 60);
        root[2] = 1;
        root[6] = 1; // depth 1
        le::set_u32(&mut root, 12 + 4, 50);
        let child = leaf(&[(0, 1, 7)], 1024);
        assert_eq!(
            run(&root, &[(50, child)]).unwrap().1,
            vec![Visit::Meta(FsBlock(50)), data(0, 7, 1)]
        );
        // A depth-2 root whose child points at itself.
        let mut root2 = root.clone();
        root2[6] = 2;
        let mut node = leaf(&[], 1024);
        node[2] = 1;
        node[6] = 1;
        le::set_u32(&mut node, 12 + 4, 50);
        let e = run(&root2, &[(50, node)]).unwrap_err();
        assert_eq!(
            e.corrupt_kind(),
            Some(&CorruptKind::ExtentLoop { ino: 12, block: 50 })
        );
    }

    #[test]
    fn bad_node_header_names_the_node() {
        let mut root = leaf(&[], 60);
        root[2] = 1;
        root[6] = 1;
        le::set_u32(&mut root, 12 + 4, 50);
        let mut child = leaf(&[(0, 1, 7)], 1024);
        child[0] = 0;
        let e = run(&root, &[(50, child)]).unwrap_err();
        assert_eq!(
            e.corrupt_kind(),
            Some(&CorruptKind::ExtentHeader {
                ino: 12,
                node: Some(50),
                problem: ExtentHeaderProblem::Magic { magic: 0xF300 }
            })
        );
        // A child the source does not hold: the read's error, naming the node.
        let e = run(&root, &[]).unwrap_err();
        assert_eq!(
            e.corrupt_kind(),
            Some(&CorruptKind::BlockPastSource {
                role: Role::ExtentNode { ino: 12 },
                block: 50,
                source_bytes: 0
            })
        );
    }

    #[test]
    fn too_deep_is_refused() {
        // Every node points at a new child, deeper than MAX_DEPTH.
        let mut root = leaf(&[], 60);
        root[2] = 1;
        le::set_u16(&mut root, 6, u16::MAX);
        le::set_u32(&mut root, 12 + 4, 1000);
        let blocks: Vec<(u64, Vec<u8>)> = (1000..1100)
            .map(|b| {
                let mut n = leaf(&[], 1024);
                n[2] = 1;
                le::set_u32(&mut n, 12 + 4, b as u32 + 1);
                (b, n)
            })
            .collect();
        let e = run(&root, &blocks).unwrap_err();
        assert_eq!(
            e.corrupt_kind(),
            Some(&CorruptKind::ExtentTooDeep {
                ino: 12,
                depth: MAX_DEPTH
            })
        );
    }

    #[test]
    fn bad_root_header_is_an_empty_tree() {
        let mut root = leaf(&[(0, 1, 1)], 60);
        root[0] = 0;
        assert_eq!(
            run(&root, &[]).unwrap(),
            (
                Walked::RootIgnored(ExtentHeaderProblem::Magic { magic: 0xF300 }),
                vec![]
            )
        );
        assert_eq!(run(&[0; 60], &[]).unwrap(), (Walked::Complete, vec![]));
    }
}
