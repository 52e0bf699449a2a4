//! Damage has a typed kind that says what and where: one change to a real filesystem, the
//! exact kind (with its location) the scanner or the scrambler reports for it.

use super::util::*;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2i::error::CorruptKind;
use e2i::ext4::damage::{
    DirEntryProblem, DirRegion, ExtentHeaderProblem, Problem, ProblemKind, Role, XattrAt,
    XattrProblem,
};
use e2i::ext4::inode::Inode;
use e2i::ext4::scan::{ScanOptions, ScanResult, Warning, scan};
use e2i::ext4::{Filesystem, OpenOptions};
use e2i::io::MemSource;
use e2i::scramble::{self, Unscrambled};

fn open(img: &[u8]) -> e2i::Result<Filesystem<MemSource>> {
    Filesystem::open(MemSource(img.to_vec()), OpenOptions::default())
}

fn scan_img(img: &[u8], strict: bool) -> e2i::Result<ScanResult> {
    let fs = open(img)?;
    let opts = ScanOptions {
        strict,
        ..ScanOptions::default()
    };
    scan(&fs, opts, None)
}

fn corrupt(ino: Option<u32>, kind: CorruptKind) -> Problem {
    Problem {
        ino,
        kind: ProblemKind::Corrupt(kind),
    }
}

fn put(img: &mut [u8], at: u64, bytes: &[u8]) {
    img[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

/// The inode number of `path` and the byte offset of its inode in the image.
fn inode_at(img: &Path, bytes: &[u8], path: &str) -> (u32, u64) {
    let out = debugfs(img, &format!("stat {path}"));
    let ino: u32 = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("stat {path}: {out}"));
    let fs = open(bytes).unwrap();
    let sb = &fs.sb;
    let g = (ino - 1) / sb.inodes_per_group;
    let idx = u64::from((ino - 1) % sb.inodes_per_group);
    let table = sb.block_size.offset_of(fs.desc.inode_table(g)).unwrap();
    let at = table + idx * u64::from(sb.inode_size);
    (ino, at)
}

fn inode(bytes: &[u8], at: u64) -> Inode {
    Inode::parse(&bytes[at as usize..at as usize + 128])
}

/// The issue's case: a 64bit descriptor whose inode table is u64::MAX (both halves).
#[test]
fn inode_table_at_u64_max_is_outside() {
    let d = tempdir();
    let path = mkfs(d.path(), "fs.img", "8M", &["-b", "4096", "-O", "64bit"]);
    let mut img = std::fs::read(&path).unwrap();
    let fs = open(&img).unwrap();
    let fs_blocks = fs.sb.blocks_count;
    // Group 0's descriptor is in block 1: bg_inode_table_lo at 0x08, _hi at 0x28.
    put(&mut img, 4096 + 0x08, &[0xFF; 4]);
    put(&mut img, 4096 + 0x28, &[0xFF; 4]);
    let kind = CorruptKind::InodeTableOutside {
        group: 0,
        block: u64::MAX,
        fs_blocks,
    };
    let res = scan_img(&img, false).unwrap();
    assert_eq!(res.problems, vec![corrupt(None, kind.clone())]);
    assert_eq!(
        res.problems[0].to_string(),
        format!(
            "group 0: inode table at block 18446744073709551615 lies outside the filesystem ({fs_blocks} blocks)"
        )
    );
    let e = scan_img(&img, true).unwrap_err();
    assert_eq!(e.corrupt_kind(), Some(&kind));
}

#[test]
fn a_group_without_inode_table() {
    let d = tempdir();
    let path = mkfs(
        d.path(),
        "fs.img",
        "16M",
        &["-b", "1024", "-O", "^metadata_csum,^64bit,^flex_bg"],
    );
    let mut img = std::fs::read(&path).unwrap();
    // Group 1's descriptor (32 bytes, in block 2): inode table 0.
    put(&mut img, 2 * 1024 + 32 + 0x08, &[0; 4]);
    let res = scan_img(&img, false).unwrap();
    assert_eq!(
        res.problems,
        vec![corrupt(None, CorruptKind::InodeTableMissing { group: 1 })]
    );
}

/// A source cut inside group 0's inode table: the unreadable blocks and the inodes they
/// hold, as one inclusive range each.
#[test]
fn a_truncated_inode_table() {
    let d = tempdir();
    let path = mkfs(
        d.path(),
        "fs.img",
        "8M",
        &["-b", "1024", "-O", "^metadata_csum"],
    );
    let mut img = std::fs::read(&path).unwrap();
    let fs = open(&img).unwrap();
    let it = fs.desc.inode_table(0).get();
    let ipb = fs.sb.inodes_per_block();
    // Keep the first 3 blocks of the table.
    img.truncate(((it + 3) * 1024) as usize);
    let res = scan_img(&img, false).unwrap();
    let table = res
        .problems
        .iter()
        .find_map(|p| match p.kind {
            ProblemKind::InodeTableUnreadable { .. } => Some(p.kind.clone()),
            _ => None,
        })
        .expect("the cut is reported");
    let ProblemKind::InodeTableUnreadable {
        group,
        first,
        last,
        first_ino,
        last_ino,
    } = table
    else {
        unreachable!()
    };
    assert_eq!((group, first, first_ino), (0, it + 3, 3 * ipb + 1));
    assert!(last >= first && last_ino >= first_ino, "{table:?}");
    assert_eq!(last_ino - first_ino + 1, (last - first + 1) as u32 * ipb);
}

/// An ext2 image of 1 KiB blocks (`mkfs` with `size` and `extra` options) that also holds a
/// 40 KiB file under each of `names` in its root: each has an indirect block.
fn ext2_with_big_files(dir: &Path, size: &str, extra: &[&str], names: &[&str]) -> PathBuf {
    let opts = [&["-t", "ext2", "-b", "1024"][..], extra].concat();
    let path = mkfs(dir, "fs.img", size, &opts);
    let big = dir.join("big");
    std::fs::write(&big, vec![0x5A; 40 * 1024]).unwrap();
    for name in names {
        let o = Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("write {} {name}", big.display()))
            .arg(&path)
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    path
}

/// ext2 with a double-indirect file: its DIND pointer past the end of the filesystem.
#[test]
fn an_indirect_block_outside() {
    let d = tempdir();
    let path = ext2_with_big_files(d.path(), "8M", &[], &["big"]);
    let mut img = std::fs::read(&path).unwrap();
    let (ino, at) = inode_at(&path, &img, "big");
    assert_ne!(
        inode(&img, at).block[12],
        0,
        "a 40 KiB file has an indirect block"
    );
    put(&mut img, at + 0x28 + 12 * 4, &u32::MAX.to_le_bytes());
    let res = scan_img(&img, false).unwrap();
    assert_eq!(
        res.problems,
        vec![corrupt(
            Some(ino),
            CorruptKind::BlockOutside {
                role: Role::IndirectBlock { ino, level: 1 },
                block: u64::from(u32::MAX),
                fs_blocks: 8192,
            }
        )]
    );
}

/// A directory's extent root broken: e2image takes none of its blocks, neither does e2i,
/// and says so; a broken node below the root is skipped as damage.
#[test]
fn extent_header_damage() {
    let d = tempdir();
    let path = mkfs(d.path(), "fs.img", "8M", &["-b", "1024"]);
    let mut img = std::fs::read(&path).unwrap();
    let (ino, at) = inode_at(&path, &img, "sub");
    put(&mut img, at + 0x28, &[0x0A, 0x00]); // eh_magic 0xF30A → 0x000A
    let res = scan_img(&img, false).unwrap();
    assert!(res.problems.is_empty(), "{:?}", res.problems);
    assert_eq!(
        res.warnings,
        vec![Warning::ExtentRootIgnored {
            ino,
            kind: CorruptKind::ExtentHeader {
                ino,
                node: None,
                problem: ExtentHeaderProblem::Magic { magic: 0x000A },
            },
        }]
    );

    // A depth-1 tree (a file of many extents) whose leaf has a bad magic.
    let tree = d.path().join("frag");
    std::fs::create_dir_all(&tree).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(tree.join("sparse")).unwrap();
        for i in 0..12u64 {
            f.write_all_at(&[0xA5; 1024], i * 4096).unwrap();
        }
    }
    let path = d.path().join("frag.img");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "1024", "-d"])
        .arg(&tree)
        .arg(&path)
        .arg("8M")
        .status()
        .unwrap();
    assert!(st.success());
    let mut img = std::fs::read(&path).unwrap();
    let (ino, at) = inode_at(&path, &img, "sparse");
    let root = inode(&img, at).block_bytes();
    assert_eq!(u16::from_le_bytes([root[6], root[7]]), 1, "depth 1");
    let leaf = u64::from(u32::from_le_bytes(root[16..20].try_into().unwrap()));
    put(&mut img, leaf * 1024, &[0, 0]);
    let res = scan_img(&img, false).unwrap();
    assert_eq!(
        res.problems,
        vec![corrupt(
            Some(ino),
            CorruptKind::ExtentHeader {
                ino,
                node: Some(leaf),
                problem: ExtentHeaderProblem::Magic { magic: 0 },
            }
        )]
    );
}

#[test]
fn superblock_damage_refuses_with_its_kind() {
    let d = tempdir();
    let path = mkfs(d.path(), "fs.img", "4M", &[]);
    let mut img = std::fs::read(&path).unwrap();
    put(&mut img, 1024 + 0x38, &[0, 0]);
    let e = open(&img).err().expect("refused");
    assert_eq!(
        e.corrupt_kind(),
        Some(&CorruptKind::SuperblockMagic { magic: 0 })
    );
    let e = open(&img[..1500]).err().expect("refused");
    assert_eq!(
        e.corrupt_kind(),
        Some(&CorruptKind::SuperblockPastSource {
            offset: 1024,
            source_bytes: 1500
        })
    );
}

/// What the scrambler leaves as it was (or scrubs), with the kind of damage that made it.
#[test]
fn scrambler_damage_kinds() {
    let d = tempdir();
    let path = mkfs(d.path(), "fs.img", "8M", &["-b", "1024"]);
    let value = d.path().join("value");
    std::fs::write(&value, vec![b'v'; 900]).unwrap();
    let o = Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("ea_set -f {} /f1 user.big", value.display()))
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success());
    let mut img = std::fs::read(&path).unwrap();
    // An xattr block with a bad header.
    let (_, at) = inode_at(&path, &img, "f1");
    let xb = inode(&img, at).file_acl(true).get();
    assert_ne!(xb, 0, "f1 has an xattr block");
    put(&mut img, xb * 1024, &[0; 4]);
    // A directory entry whose rec_len cannot be: the first entry of sub's block 0.
    let (sub, at) = inode_at(&path, &img, "sub");
    let root = inode(&img, at).block_bytes();
    let dblk = u64::from(u32::from_le_bytes(root[20..24].try_into().unwrap()));
    put(&mut img, dblk * 1024 + 4, &3u16.to_le_bytes());
    let fs = open(&img).unwrap();
    let (_, rep) = scramble::plan(&fs, scramble::DEFAULT_SEED).unwrap();
    let want = [
        // Scrubbed: its names and values zeroed, the headers e2fsck judges kept.
        Unscrambled::Scrubbed(corrupt(
            None,
            CorruptKind::Xattr {
                at: XattrAt::Block { block: xb },
                problem: XattrProblem::Header {
                    magic: 0,
                    blocks: 1,
                },
            },
        )),
        Unscrambled::Scrubbed(corrupt(
            Some(sub),
            CorruptKind::DirEntry {
                ino: sub,
                region: DirRegion::Block { lblk: 0 },
                offset: 0,
                problem: DirEntryProblem::Lengths {
                    rec_len: 3,
                    name_len: 1,
                },
            },
        )),
    ];
    for w in &want {
        assert!(
            rep.not_scrambled.contains(w),
            "{w:?} not in {:?}",
            rep.not_scrambled
        );
    }
}

/// A journal whose map claims the superblock's block: zeroed everywhere else, the
/// superblock kept, and named.
#[test]
fn journal_over_metadata_is_kept_out() {
    let d = tempdir();
    let path = mkfs(d.path(), "fs.img", "8M", &["-b", "4096"]);
    let mut img = std::fs::read(&path).unwrap();
    let (ino, at) = inode_at(&path, &img, "<8>");
    assert_eq!(ino, 8);
    let root = inode(&img, at).block_bytes();
    assert_eq!(
        u16::from_le_bytes([root[6], root[7]]),
        0,
        "a depth-0 journal"
    );
    // First extent: physical start 0 (ee_start_hi at 18, ee_start_lo at 20 of i_block).
    put(&mut img, at + 0x28 + 18, &[0; 6]);
    let fs = open(&img).unwrap();
    let (_, rep) = scramble::plan(&fs, scramble::DEFAULT_SEED).unwrap();
    assert!(
        rep.not_scrambled.iter().any(|u| matches!(
            u,
            Unscrambled::Damaged(Problem {
                kind: ProblemKind::Corrupt(CorruptKind::BlockIsMetadata {
                    role: Role::JournalBlock { ino: 8 },
                    block: 1,
                }),
                ..
            })
        )),
        "{:?}",
        rep.not_scrambled
    );
    // The scrambled image opens (its superblock and descriptors are intact).
    let out = d.path().join("s.raw");
    std::fs::write(&path, &img).unwrap();
    let o = run(tool_cmd("e2i-capture")
        .args(["-q", "-r", "-s"])
        .arg(&path)
        .arg(&out));
    assert!(
        matches!(o.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    open(&std::fs::read(&out).unwrap()).expect("the scrambled image opens");
}

/// Walker threads (`ScanOptions::walkers`) give the scan without them, over many chunks of
/// inode table (the reading thread then waits for them in order), and stop with the
/// reading thread: a strict scan ends at the same first problem.
#[test]
fn walkers_give_the_same_scan_and_stop_with_it() {
    let d = tempdir();
    // ext2 (whole tables scanned: no uninit_bg), ~20 MiB of inode tables in 1 MiB chunks.
    let path = ext2_with_big_files(
        d.path(),
        "64M",
        &["-N", "80000", "-I", "256"],
        &["big", "big2"],
    );
    let mut img = std::fs::read(&path).unwrap();
    let (_, at) = inode_at(&path, &img, "big");
    put(&mut img, at + 0x28 + 12 * 4, &u32::MAX.to_le_bytes());
    let (_, at) = inode_at(&path, &img, "big2");
    put(&mut img, at + 0x28 + 13 * 4, &(u32::MAX - 1).to_le_bytes());
    let fs = open(&img).unwrap();
    for strict in [false, true] {
        let with = |walkers| {
            let opts = ScanOptions {
                strict,
                all_data: true,
                want_dir_blocks: true,
                walkers: Some(walkers),
                ..ScanOptions::default()
            };
            let mut calls = Vec::new();
            let r = scan(
                &fs,
                opts,
                Some(&mut |done, total| calls.push((done, total))),
            );
            (r, calls)
        };
        let (base, base_calls) = with(0);
        assert!(
            strict || base_calls.len() > 16,
            "strict {strict}: {} chunks: {:?}",
            base_calls.len(),
            base.as_ref().map(|r| &r.problems)
        );
        for walkers in [1, 3] {
            let (r, calls) = with(walkers);
            assert_eq!(calls, base_calls, "walkers {walkers}: progress");
            assert_same_scan(&base, &r, &format!("walkers {walkers}, strict {strict}"));
        }
        assert_eq!(base.is_err(), strict);
        if let Ok(b) = &base {
            assert_eq!(b.problems.len(), 2);
        }
    }
}

/// A source whose read of one byte range panics (a bug stand-in).
struct PanicAt {
    inner: MemSource,
    at: u64,
}

impl e2i::io::ReadAt for PanicAt {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> e2i::Result<usize> {
        if offset <= self.at && self.at < offset + buf.len() as u64 {
            panic!("test: read of byte {}", self.at);
        }
        self.inner.read_at(buf, offset)
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }
}

/// A walk that panics on a walker thread panics the scan, as on the reading thread; it
/// does not leave the reader waiting for a chunk that will never come.
#[test]
fn a_walker_panic_is_the_scans() {
    let d = tempdir();
    let path = ext2_with_big_files(d.path(), "8M", &[], &["big"]);
    let img = std::fs::read(&path).unwrap();
    let (_, at) = inode_at(&path, &img, "big");
    // The indirect block: read by the walk only.
    let ind = u64::from(inode(&img, at).block[12]) * 1024;
    for walkers in [0, 1, 3] {
        let src = PanicAt {
            inner: MemSource(img.clone()),
            at: ind,
        };
        let fs = Filesystem::open(src, OpenOptions::default()).unwrap();
        let opts = ScanOptions {
            walkers: Some(walkers),
            ..ScanOptions::default()
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scan(&fs, opts, None)));
        let msg = r
            .err()
            .and_then(|p| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        assert!(
            msg.starts_with("test: read of byte"),
            "walkers {walkers}: {msg:?}"
        );
    }
}
