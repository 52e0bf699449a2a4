//! The extreme-value sweep: every superblock, group descriptor, inode and extent field of
//! several filesystems set to its full-width extreme (all ones; for 64-bit fields split
//! in two halves, both halves at once as well as the low half alone), each image run
//! through the real tools as built for the suite (release with overflow checks, see the
//! workspace Cargo.toml): `e2i-capture -r`, `e2i-capture --format stream` then
//! `e2i-to-raw`, and for inode and extent fields `e2i-capture -r -s`.
//!
//! Every run must exit 0, 1 or 3 (never a panic), say nothing that quotes a backwards range
//! ("N..M" or "blocks N-M" with M < N), and where both captures succeed, the stream
//! converted to raw must equal the raw capture.
//!
//! The default sweep takes all-ones values and a few inodes of each kind; with
//! `E2I_SLOW_TESTS=1` it also takes 0, 0x7F…F and 0x80…0, every inode kind found, and the
//! descriptors of more groups.

use super::util::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2i::ext4::inode::{EXT4_EXTENTS_FL, EXT4_INDEX_FL, EXT4_INLINE_DATA_FL, Inode};
use e2i::ext4::{Filesystem, OpenOptions};
use e2i::io::FileSource;

/// A field: its byte offset and width, and for split 64-bit values the high half's.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    off: usize,
    len: usize,
    hi: Option<(usize, usize)>,
}

const fn f(name: &'static str, off: usize, len: usize) -> Field {
    Field {
        name,
        off,
        len,
        hi: None,
    }
}

const fn split(name: &'static str, off: usize, len: usize, hi: usize, hi_len: usize) -> Field {
    Field {
        name,
        off,
        len,
        hi: Some((hi, hi_len)),
    }
}

/// The ext4 superblock (e2fsprogs lib/ext2fs/ext2_fs.h), every field.
const SUPERBLOCK: &[Field] = &[
    f("s_inodes_count", 0x00, 4),
    split("s_blocks_count", 0x04, 4, 0x150, 4),
    split("s_r_blocks_count", 0x08, 4, 0x154, 4),
    split("s_free_blocks_count", 0x0C, 4, 0x158, 4),
    f("s_free_inodes_count", 0x10, 4),
    f("s_first_data_block", 0x14, 4),
    f("s_log_block_size", 0x18, 4),
    f("s_log_cluster_size", 0x1C, 4),
    f("s_blocks_per_group", 0x20, 4),
    f("s_clusters_per_group", 0x24, 4),
    f("s_inodes_per_group", 0x28, 4),
    f("s_mtime", 0x2C, 4),
    f("s_wtime", 0x30, 4),
    f("s_mnt_count", 0x34, 2),
    f("s_max_mnt_count", 0x36, 2),
    f("s_magic", 0x38, 2),
    f("s_state", 0x3A, 2),
    f("s_errors", 0x3C, 2),
    f("s_minor_rev_level", 0x3E, 2),
    f("s_lastcheck", 0x40, 4),
    f("s_checkinterval", 0x44, 4),
    f("s_creator_os", 0x48, 4),
    f("s_rev_level", 0x4C, 4),
    f("s_def_resuid", 0x50, 2),
    f("s_def_resgid", 0x52, 2),
    f("s_first_ino", 0x54, 4),
    f("s_inode_size", 0x58, 2),
    f("s_block_group_nr", 0x5A, 2),
    f("s_feature_compat", 0x5C, 4),
    f("s_feature_incompat", 0x60, 4),
    f("s_feature_ro_compat", 0x64, 4),
    f("s_uuid", 0x68, 16),
    f("s_volume_name", 0x78, 16),
    f("s_last_mounted", 0x88, 64),
    f("s_algorithm_usage_bitmap", 0xC8, 4),
    f("s_prealloc_blocks", 0xCC, 1),
    f("s_prealloc_dir_blocks", 0xCD, 1),
    f("s_reserved_gdt_blocks", 0xCE, 2),
    f("s_journal_uuid", 0xD0, 16),
    f("s_journal_inum", 0xE0, 4),
    f("s_journal_dev", 0xE4, 4),
    f("s_last_orphan", 0xE8, 4),
    f("s_hash_seed", 0xEC, 16),
    f("s_def_hash_version", 0xFC, 1),
    f("s_jnl_backup_type", 0xFD, 1),
    f("s_desc_size", 0xFE, 2),
    f("s_default_mount_opts", 0x100, 4),
    f("s_first_meta_bg", 0x104, 4),
    f("s_mkfs_time", 0x108, 4),
    f("s_jnl_blocks", 0x10C, 68),
    f("s_blocks_count_hi", 0x150, 4),
    f("s_min_extra_isize", 0x15C, 2),
    f("s_want_extra_isize", 0x15E, 2),
    f("s_flags", 0x160, 4),
    f("s_raid_stride", 0x164, 2),
    f("s_mmp_update_interval", 0x166, 2),
    f("s_mmp_block", 0x168, 8),
    f("s_raid_stripe_width", 0x170, 4),
    f("s_log_groups_per_flex", 0x174, 1),
    f("s_checksum_type", 0x175, 1),
    f("s_encryption_level", 0x176, 1),
    f("s_reserved_pad", 0x177, 1),
    f("s_kbytes_written", 0x178, 8),
    f("s_snapshot_inum", 0x180, 4),
    f("s_snapshot_id", 0x184, 4),
    f("s_snapshot_r_blocks_count", 0x188, 8),
    f("s_snapshot_list", 0x190, 4),
    f("s_error_count", 0x194, 4),
    f("s_first_error_time", 0x198, 4),
    f("s_first_error_ino", 0x19C, 4),
    f("s_first_error_block", 0x1A0, 8),
    f("s_first_error_func", 0x1A8, 32),
    f("s_first_error_line", 0x1C8, 4),
    f("s_last_error_time", 0x1CC, 4),
    f("s_last_error_ino", 0x1D0, 4),
    f("s_last_error_line", 0x1D4, 4),
    f("s_last_error_block", 0x1D8, 8),
    f("s_last_error_func", 0x1E0, 32),
    f("s_mount_opts", 0x200, 64),
    f("s_usr_quota_inum", 0x240, 4),
    f("s_grp_quota_inum", 0x244, 4),
    f("s_overhead_clusters", 0x248, 4),
    f("s_backup_bgs", 0x24C, 8),
    f("s_encrypt_algos", 0x254, 4),
    f("s_encrypt_pw_salt", 0x258, 16),
    f("s_lpf_ino", 0x268, 4),
    f("s_prj_quota_inum", 0x26C, 4),
    f("s_checksum_seed", 0x270, 4),
    f("s_time_hi_bytes", 0x274, 6),
    f("s_error_codes", 0x27A, 2),
    f("s_encoding", 0x27C, 2),
    f("s_encoding_flags", 0x27E, 2),
    f("s_orphan_file_inum", 0x280, 4),
    f("s_reserved", 0x284, 376),
    f("s_checksum", 0x3FC, 4),
];

/// A group descriptor; `hi` halves exist with 64bit (64-byte descriptors).
const DESCRIPTOR: &[Field] = &[
    split("bg_block_bitmap", 0x00, 4, 0x20, 4),
    split("bg_inode_bitmap", 0x04, 4, 0x24, 4),
    split("bg_inode_table", 0x08, 4, 0x28, 4),
    split("bg_free_blocks_count", 0x0C, 2, 0x2C, 2),
    split("bg_free_inodes_count", 0x0E, 2, 0x2E, 2),
    split("bg_used_dirs_count", 0x10, 2, 0x30, 2),
    f("bg_flags", 0x12, 2),
    split("bg_exclude_bitmap", 0x14, 4, 0x34, 4),
    split("bg_block_bitmap_csum", 0x18, 2, 0x38, 2),
    split("bg_inode_bitmap_csum", 0x1A, 2, 0x3A, 2),
    split("bg_itable_unused", 0x1C, 2, 0x32, 2),
    f("bg_checksum", 0x1E, 2),
];

/// An inode's fields other than `i_block` (whose words are swept as extents or block
/// pointers, depending on the inode).
const INODE: &[Field] = &[
    f("i_mode", 0x00, 2),
    f("i_uid", 0x02, 2),
    split("i_size", 0x04, 4, 0x6C, 4),
    f("i_atime", 0x08, 4),
    f("i_ctime", 0x0C, 4),
    f("i_mtime", 0x10, 4),
    f("i_dtime", 0x14, 4),
    f("i_gid", 0x18, 2),
    f("i_links_count", 0x1A, 2),
    split("i_blocks", 0x1C, 4, 0x74, 2),
    f("i_flags", 0x20, 4),
    f("osd1", 0x24, 4),
    f("i_generation", 0x64, 4),
    split("i_file_acl", 0x68, 4, 0x76, 2),
    f("i_size_high", 0x6C, 4),
    f("i_faddr", 0x70, 4),
    f("l_i_uid_high", 0x78, 2),
    f("l_i_gid_high", 0x7A, 2),
    split("i_checksum", 0x7C, 2, 0x82, 2),
    f("i_extra_isize", 0x80, 2),
    f("i_extra_times", 0x84, 20),
    f("i_projid", 0x9C, 4),
];

/// An extent header and its first entries (relative to the node or to `i_block`).
fn extent_fields(entries: usize, leaf: bool) -> Vec<Field> {
    let mut v = vec![
        f("eh_magic", 0, 2),
        f("eh_entries", 2, 2),
        f("eh_max", 4, 2),
        f("eh_depth", 6, 2),
        f("eh_generation", 8, 4),
    ];
    for i in 0..entries {
        let o = 12 + 12 * i;
        if leaf {
            v.push(f("ee_block", o, 4));
            v.push(f("ee_len", o + 4, 2));
            v.push(split("ee_start", o + 8, 4, o + 6, 2));
            v.push(f("ee_start_hi", o + 6, 2));
        } else {
            v.push(f("ei_block", o, 4));
            v.push(split("ei_leaf", o + 4, 4, o + 8, 2));
            v.push(f("ei_leaf_hi", o + 8, 2));
            v.push(f("ei_unused", o + 10, 2));
        }
    }
    v
}

/// One case: a field at an absolute byte offset of the image, and the value to put there.
#[derive(Debug, Clone)]
struct Case {
    what: String,
    /// (absolute offset, width) of each part written.
    parts: Vec<(u64, usize)>,
    fill: u8,
    /// Whether the scrambler runs too.
    scramble: bool,
}

fn slow() -> bool {
    std::env::var("E2I_SLOW_TESTS").as_deref() == Ok("1")
}

/// The fill bytes to try: all ones (the extreme), and in the slow sweep 0 and the sign
/// boundaries (0x7F…F little-endian is FF…7F: the top byte differs).
fn fills() -> Vec<u8> {
    if slow() {
        vec![0xFF, 0x00, 0x7F, 0x80]
    } else {
        vec![0xFF]
    }
}

/// Cases for `field` at `base`: the field alone, and for split fields the low half alone
/// and both halves together (where the high half exists).
fn cases_for(
    out: &mut Vec<Case>,
    prefix: &str,
    base: u64,
    field: &Field,
    room: usize,
    scramble: bool,
) {
    for fill in fills() {
        let mut push = |what: String, parts: Vec<(u64, usize)>| {
            out.push(Case {
                what: format!("{prefix} {what} = {fill:#04x}.."),
                parts,
                fill,
                scramble,
            });
        };
        push(
            field.name.to_string(),
            vec![(base + field.off as u64, field.len)],
        );
        if let Some((hi, hi_len)) = field.hi
            && hi + hi_len <= room
        {
            push(
                format!("{} (lo and hi)", field.name),
                vec![
                    (base + field.off as u64, field.len),
                    (base + hi as u64, hi_len),
                ],
            );
        }
    }
}

/// The inodes worth sweeping in a filesystem, by kind (first of each kind), with the byte
/// offset of each in the image.
fn pick_inodes(img: &Path) -> Vec<(String, u32, u64, Inode)> {
    let fs = Filesystem::open(FileSource::open(img, 0).unwrap(), OpenOptions::default())
        .expect("base image opens");
    let sb = &fs.sb;
    let bs = sb.block_size.bytes();
    let isz = u64::from(sb.inode_size);
    let mut kinds: BTreeMap<String, (u32, u64, Inode)> = BTreeMap::new();
    let last = sb.inodes_count.min(4096);
    for ino in 1..=last {
        let g = (ino - 1) / sb.inodes_per_group;
        let idx = u64::from((ino - 1) % sb.inodes_per_group);
        let at = fs.desc.inode_table(g).get() * bs + idx * isz;
        let mut raw = vec![0u8; sb.inode_size as usize];
        use e2i::io::ReadAt;
        if fs.src.read_at(&mut raw, at).unwrap() < raw.len() {
            continue;
        }
        let inode = Inode::parse(&raw);
        if inode.links_count == 0 && ino != 7 {
            continue;
        }
        let mapping = if inode.flags & EXT4_INLINE_DATA_FL != 0 {
            "inline"
        } else if inode.flags & EXT4_EXTENTS_FL != 0 {
            if u16::from_le_bytes([raw[0x2E], raw[0x2F]]) > 0 {
                "extent tree"
            } else {
                "extents"
            }
        } else if inode.block[14] != 0 {
            "tind"
        } else if inode.block[13] != 0 {
            "dind"
        } else if inode.block[12] != 0 {
            "ind"
        } else {
            "direct"
        };
        let kind = match ino {
            2 => "root".to_string(),
            7 => "resize inode".to_string(),
            8 => "journal".to_string(),
            _ if inode.is_dir() && inode.flags & EXT4_INDEX_FL != 0 => {
                format!("htree dir {mapping}")
            }
            _ if inode.is_dir() => format!("dir {mapping}"),
            _ if inode.is_symlink() && inode.blocks_lo == 0 => "fast symlink".to_string(),
            _ if inode.is_symlink() => format!("slow symlink {mapping}"),
            _ if inode.file_acl(sb.is_64bit()).get() != 0 => format!("xattr block file {mapping}"),
            _ if inode.is_reg() => format!("file {mapping}"),
            _ => continue,
        };
        kinds.entry(kind).or_insert((ino, at, inode));
    }
    let keep: &[&str] = &[
        "root",
        "journal",
        "resize inode",
        "dir extents",
        "dir direct",
        "dir ind",
        "htree dir extents",
        "htree dir direct",
        "file extent tree",
        "file dind",
        "slow symlink extents",
        "slow symlink direct",
        "file inline",
        "dir inline",
        "xattr block file extents",
        "xattr block file direct",
    ];
    kinds
        .into_iter()
        .filter(|(k, _)| slow() || keep.contains(&k.as_str()))
        .map(|(k, (ino, at, inode))| (k, ino, at, inode))
        .collect()
}

/// Every case of one image.
fn cases(img: &Path) -> Vec<Case> {
    let fs = Filesystem::open(FileSource::open(img, 0).unwrap(), OpenOptions::default())
        .expect("base image opens");
    let sb = &fs.sb;
    let bs = sb.block_size.bytes();
    let mut out = Vec::new();
    for field in SUPERBLOCK {
        cases_for(&mut out, "superblock", 1024, field, 1024, false);
    }
    let desc_base = (u64::from(sb.first_data_block) + 1) * bs;
    let stride = u64::from(sb.desc_size & !7).max(32);
    let room = if sb.is_64bit() { stride as usize } else { 32 };
    let mut groups = vec![0, sb.group_count - 1];
    if slow() {
        groups.extend([1, sb.group_count / 2]);
    }
    groups.sort_unstable();
    groups.dedup();
    for g in groups.into_iter().filter(|&g| g < sb.group_count) {
        for field in DESCRIPTOR {
            let base = desc_base + u64::from(g) * stride;
            cases_for(&mut out, &format!("group {g}"), base, field, room, false);
        }
    }
    for (kind, ino, at, inode) in pick_inodes(img) {
        let prefix = format!("inode {ino} ({kind})");
        for field in INODE
            .iter()
            .filter(|f| f.off + f.len <= sb.inode_size as usize)
        {
            cases_for(&mut out, &prefix, at, field, sb.inode_size as usize, true);
        }
        let i_block = at + 0x28;
        if inode.has_extents() {
            let entries = usize::from(u16::from_le_bytes(
                inode.block_bytes()[2..4].try_into().unwrap(),
            ))
            .min(4);
            let depth = u16::from_le_bytes(inode.block_bytes()[6..8].try_into().unwrap());
            for field in extent_fields(entries, depth == 0) {
                cases_for(
                    &mut out,
                    &format!("{prefix} root"),
                    i_block,
                    &field,
                    60,
                    true,
                );
            }
            if depth > 0 {
                // The first child node.
                let root = inode.block_bytes();
                let child = u64::from(u32::from_le_bytes(root[16..20].try_into().unwrap()))
                    | u64::from(u16::from_le_bytes(root[20..22].try_into().unwrap())) << 32;
                let mut node = vec![0u8; bs as usize];
                use e2i::io::ReadAt;
                fs.src.read_at(&mut node, child * bs).unwrap();
                let n = usize::from(u16::from_le_bytes(node[2..4].try_into().unwrap()));
                let leaf = u16::from_le_bytes(node[6..8].try_into().unwrap()) == 0;
                let n = if slow() { n } else { n.min(3) };
                for field in extent_fields(n, leaf) {
                    let p = format!("{prefix} node {child}");
                    cases_for(&mut out, &p, child * bs, &field, bs as usize, true);
                }
            }
        } else if !inode.has_inline_data() {
            for w in 0..15 {
                let name = [
                    "i_block[0]",
                    "i_block[11]",
                    "i_block[12] (ind)",
                    "i_block[13] (dind)",
                    "i_block[14] (tind)",
                ];
                let label = match w {
                    12 => name[2],
                    13 => name[3],
                    14 => name[4],
                    _ if w == 0 => name[0],
                    _ if w == 11 => name[1],
                    _ if slow() => "i_block[n]",
                    _ => continue,
                };
                let field = f(label, w * 4, 4);
                cases_for(&mut out, &prefix, i_block, &field, 60, true);
            }
        }
    }
    out
}

/// The images: different features and block sizes.
fn images(dir: &Path) -> Vec<PathBuf> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("big")).unwrap();
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    // Small files (inline where inline_data is on), a file needing double indirect blocks
    // at 1 KiB (300 KiB), a sparse file of many extents (an extent tree of depth 1), a
    // directory large enough for an htree, and symlinks fast and slow.
    for i in 0..8 {
        std::fs::write(tree.join(format!("s{i}")), format!("small {i}")).unwrap();
    }
    std::fs::write(
        tree.join("large"),
        (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(tree.join("sparse")).unwrap();
        for i in 0..12u64 {
            f.write_all_at(&[0xA5; 4096], i * 3 * 65536).unwrap();
        }
    }
    for i in 0..200 {
        std::fs::write(tree.join("big").join(format!("entry-{i:04}")), b"x").unwrap();
    }
    std::os::unix::fs::symlink("s0", tree.join("fast")).unwrap();
    std::os::unix::fs::symlink("t".repeat(200), tree.join("slow")).unwrap();
    let specs: [(&str, &str, &[&str]); 5] = [
        ("ext2-1k", "8M", &["-t", "ext2", "-b", "1024"]),
        ("ext4-4k", "32M", &["-b", "4096"]),
        (
            "ext4-1k-bigalloc",
            "16M",
            &["-b", "1024", "-O", "bigalloc", "-C", "16384"],
        ),
        (
            "ext4-2k-gdtcsum",
            "16M",
            &["-b", "2048", "-O", "^metadata_csum,^64bit,uninit_bg"],
        ),
        (
            "ext4-4k-inline",
            "16M",
            &["-b", "4096", "-O", "inline_data"],
        ),
    ];
    let value = dir.join("xattr-value");
    std::fs::write(&value, vec![b'v'; 1500]).unwrap();
    specs
        .iter()
        .map(|(name, size, args)| {
            let img = dir.join(name);
            let uuid = ["-U", "8e1f0c2a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"];
            mkfs_from(&tree, &img, size, &[&uuid[..], args].concat());
            // An xattr too large for the inode: it goes to an xattr block.
            let o = Command::new("debugfs")
                .arg("-w")
                .arg("-R")
                .arg(format!("ea_set -f {} /s1 user.big", value.display()))
                .arg(&img)
                .output()
                .expect("debugfs");
            assert!(o.status.success(), "debugfs ea_set on {name}");
            img
        })
        .collect()
}

/// "N..M" or "blocks N-M" (or "inodes N-M") with M < N.
fn backwards_range(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let num = |mut i: usize| -> (Option<u128>, usize) {
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (text[s..i].parse().ok(), i)
    };
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()) {
            let (a, j) = num(i);
            let sep = if text[j..].starts_with("..=") {
                3
            } else if text[j..].starts_with("..") {
                2
            } else if text[j..].starts_with('-') && {
                let before = &text[..i];
                before.ends_with("blocks ") || before.ends_with("inodes ")
            } {
                1
            } else {
                0
            };
            if sep > 0 {
                let (c, k) = num(j + sep);
                if let (Some(a), Some(c)) = (a, c)
                    && c < a
                {
                    return Some(text[i..k].to_string());
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
    None
}

/// Run one tool; its exit code and stderr, checked for panics, exit status and ranges.
fn checked(case: &str, cmd: &mut Command) -> Result<(i32, String), String> {
    let o = cmd.output().expect("spawn");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let code = o.status.code().unwrap_or(-1);
    if err.contains("panicked") || !matches!(code, 0 | 1 | 3) {
        return Err(format!("{case}: exit {code}: {err}"));
    }
    if let Some(r) = backwards_range(&err) {
        return Err(format!("{case}: backwards range {r}: {err}"));
    }
    Ok((code, err))
}

/// Exit statuses seen, by tool run: (run, status) → count.
type Tally = std::sync::Mutex<BTreeMap<(&'static str, i32), u64>>;

/// Run `case` on `img`, a copy of `base` this thread owns: the case's bytes are written
/// into it, and the original bytes put back afterwards.
fn run_case(
    base: &[u8],
    img: &Path,
    case: &Case,
    work: &Path,
    tally: &Tally,
) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    let inside = |&&(off, len): &&(u64, usize)| off as usize + len <= base.len();
    for &(off, len) in case.parts.iter().filter(inside) {
        file.write_all_at(&vec![case.fill; len], off).unwrap();
    }
    let r = run_tools(img, case, work, tally);
    for &(off, len) in case.parts.iter().filter(inside) {
        file.write_all_at(&base[off as usize..off as usize + len], off)
            .unwrap();
    }
    r
}

fn run_tools(img: &Path, case: &Case, work: &Path, tally: &Tally) -> Result<(), String> {
    let count = |run: &'static str, code: i32| {
        *tally.lock().unwrap().entry((run, code)).or_default() += 1;
    };
    let raw = work.join("raw");
    let stream = work.join("stream");
    let back = work.join("back");
    for p in [&raw, &stream, &back] {
        std::fs::remove_file(p).ok();
    }
    let (c1, _) = checked(
        &format!("{}: capture -r", case.what),
        tool_cmd("e2i-capture")
            .args(["-q", "-r"])
            .arg(img)
            .arg(&raw),
    )?;
    count("capture -r", c1);
    let (c2, _) = checked(
        &format!("{}: capture --format stream", case.what),
        tool_cmd("e2i-capture")
            .args(["-q", "--format", "stream"])
            .arg(img)
            .arg(&stream),
    )?;
    count("capture --format stream", c2);
    if c2 != 1 {
        let (c3, err) = checked(
            &format!("{}: e2i-to-raw", case.what),
            tool_cmd("e2i-to-raw").arg("-q").arg(&stream).arg(&back),
        )?;
        count("e2i-to-raw", c3);
        if c3 != 0 {
            return Err(format!(
                "{}: e2i-to-raw of a finished stream exits {c3}: {err}",
                case.what
            ));
        }
        if c1 != 1 && same_sparse(&raw, &back).is_err() {
            return Err(format!(
                "{}: the stream converted to raw differs from the raw capture",
                case.what
            ));
        }
    }
    if case.scramble {
        std::fs::remove_file(&raw).ok();
        let (c, err) = checked(
            &format!("{}: capture -r -s", case.what),
            tool_cmd("e2i-capture")
                .args(["-q", "-r", "-s"])
                .arg(img)
                .arg(&raw),
        )?;
        count("capture -r -s", c);
        // Scrambling skips what it cannot parse: it never refuses what the plain capture
        // takes.
        if c == 1 && c1 != 1 {
            return Err(format!(
                "{}: capture -r -s refused what capture -r took: {err}",
                case.what
            ));
        }
    }
    Ok(())
}

#[test]
fn backwards_ranges_are_found() {
    assert_eq!(
        backwards_range("blocks 9-5 (5 blocks)").as_deref(),
        Some("9-5")
    );
    assert_eq!(
        backwards_range("blocks 18446744073709551615..0 cannot").as_deref(),
        Some("18446744073709551615..0")
    );
    assert_eq!(
        backwards_range("inodes 7..=3 skipped").as_deref(),
        Some("7..=3")
    );
    assert_eq!(backwards_range("blocks 5-9 (5 blocks), 0x10-0x2"), None);
    assert_eq!(backwards_range("e2i-capture: -s9-3"), None);
}

#[test]
fn extreme_values_in_every_field() {
    // Thousands of small images and outputs: in memory when /dev/shm has room.
    let d = mem_tempdir();
    let imgs = images(d.path());
    let mut all: Vec<(usize, Case)> = Vec::new();
    let bases: Vec<Vec<u8>> = imgs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    for (i, img) in imgs.iter().enumerate() {
        all.extend(cases(img).into_iter().map(|c| (i, c)));
    }
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let tally = Tally::default();
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..threads {
            let (all, bases, next, imgs, tally) = (&all, &bases, &next, &imgs, &tally);
            let failures = &failures;
            let work = d.path().join(format!("work{t}"));
            std::fs::create_dir_all(&work).unwrap();
            s.spawn(move || {
                // This thread's copy of each image, made when first needed.
                let mut copies: BTreeMap<usize, PathBuf> = BTreeMap::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((img, case)) = all.get(i) else { break };
                    let copy = copies.entry(*img).or_insert_with(|| {
                        let p = work.join(format!("image{img}"));
                        std::fs::write(&p, &bases[*img]).unwrap();
                        p
                    });
                    let name = imgs[*img].file_name().unwrap().to_string_lossy();
                    let case = Case {
                        what: format!("{name}: {}", case.what),
                        ..case.clone()
                    };
                    if let Err(e) = run_case(&bases[*img], copy, &case, &work, tally) {
                        failures.lock().unwrap().push(e);
                    }
                }
            });
        }
    });
    let tally = tally.into_inner().unwrap();
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed; the first ones:\n{}",
        failures.len(),
        all.len(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "sweep: {} cases over {} images; exit statuses {tally:?}",
        all.len(),
        imgs.len()
    );
    // The sweep reaches every outcome: clean captures, refusals and partial ones.
    for code in [0, 1, 3] {
        assert!(
            tally.get(&("capture -r", code)).is_some_and(|&n| n > 0),
            "no capture -r ended with {code}: {tally:?}"
        );
    }
}
