//! `-s` leaks nothing, whatever the damage: a marker planted in every private string (names,
//! symlink targets, xattr names and values, inline data, the label, the last-mounted path,
//! the mount options, the error function names) must not appear in a scrambled image of any
//! format, for directories damaged in many ways (fixed seeds: the same cases every run).
//! Also: the free-text superblock fields, a stray encrypt flag, cross-linked blocks.

use super::util::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// In every private string; looked for without regard to case.
const MARK: &[u8] = b"zqxmark";

fn marks(data: &[u8]) -> usize {
    data.windows(MARK.len())
        .filter(|w| w.eq_ignore_ascii_case(MARK))
        .count()
}

/// An 8 MiB filesystem of `tree` (`mkfs.ext4 -d`), `args` its mkfs options. The UUID
/// (the checksums' seed), the directory hash seed (the htree order, the names the scrambler
/// may pick) and the time are fixed: every run damages and checks the same layout, not one
/// drawn at random.
fn mkfs_tree(tree: &Path, img: &Path, args: &[&str]) {
    let o = run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", "3f0c2a8e-5b1d-4e7a-9c64-2d8f1b7e0a53"])
        .args(["-E", "hash_seed=8a41d7c2-0e9b-4f35-b6a8-71c3e5d92f04"])
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .args(args)
        .arg("-d")
        .arg(tree)
        .arg(img)
        .arg("8M"));
    assert!(o.status.success(), "mkfs: {}", output_text(&o));
}

/// A small deterministic generator (xorshift64*): the damage of case `seed`.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A filesystem with the marker in every private string. `inline`: with inline data
/// (small directories and files live in the inode).
fn planted(dir: &Path, name: &str, mkfs_args: &[&str]) -> PathBuf {
    let t = dir.join(format!("{name}.tree"));
    for d in 0..3 {
        let sub = t.join(format!("zqxmark_dir{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        for i in 0..(20 + 30 * d) {
            std::fs::write(sub.join(format!("ZqXmArK_entry_{d}_{i:03}")), b"").unwrap();
        }
    }
    let small = t.join("small_zqxmark");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("zqxmark_a"), b"zqxmark inline content").unwrap();
    std::os::unix::fs::symlink("zqxmark/fast", t.join("fast_zqxmark")).unwrap();
    let long = format!("/zqxmark/{}", "slow_zqxmark_target/".repeat(6));
    std::os::unix::fs::symlink(long, t.join("slow_zqxmark")).unwrap();
    let img = dir.join(name);
    let o = run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "zqxmark_lbl", "-E", "root_owner=0:0"])
        .args(["-U", "6f1e8f2a-1d1b-4c55-9d0e-3b7a2c9e5f10"])
        .args(mkfs_args)
        .arg("-d")
        .arg(&t)
        .arg(&img)
        .arg("8M")
        .env("E2FSPROGS_FAKE_TIME", "1700000000"));
    assert!(o.status.success(), "mkfs: {}", output_text(&o));
    debugfs_w(
        &img,
        "ea_set / user.zqxmark_root zqxmark_value\n\
         ea_set /zqxmark_dir0 trusted.zqxmark_t zqxmark_tv\n\
         ssv last_mounted /mnt/zqxmark_mount\n\
         ssv mount_opts zqxmark_opts\n\
         ssv first_error_func zqxmark_first\n\
         ssv last_error_func zqxmark_last\n",
    );
    // Index the big directories (htree), as a long-lived filesystem has them.
    let o = run(Command::new("e2fsck").arg("-fyD").arg(&img));
    assert!(
        o.status.code().unwrap_or(8) <= 1,
        "e2fsck -fyD: {}",
        output_text(&o)
    );
    img
}

/// The physical blocks of `path` in `img` (debugfs `blocks`).
fn blocks(img: &Path, path: &str) -> Vec<u64> {
    debugfs(img, &format!("blocks {path}"))
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

fn block_size(img: &Path) -> u64 {
    debugfs(img, "stats")
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("block size")
}

/// Offsets of the entries of a directory block (followed by rec_len while it makes sense).
fn entry_offsets(b: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 8 <= b.len() {
        out.push(off);
        let rl = usize::from(u16::from_le_bytes([b[off + 4], b[off + 5]]));
        if rl < 8 {
            break;
        }
        off += rl;
    }
    out
}

/// Damage one directory block of `img` in the way case `seed` says; returns what it did.
fn damage(img: &Path, dir_blocks: &[u64], bs: u64, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let blk = dir_blocks[rng.below(dir_blocks.len() as u64) as usize];
    let mut b = vec![0u8; bs as usize];
    f.read_exact_at(&mut b, blk * bs).unwrap();
    let offs = entry_offsets(&b);
    // A live entry other than the first two (`.` and `..` of block 0 stay findable).
    let off =
        offs[(2 + rng.below(offs.len().saturating_sub(2) as u64) as usize).min(offs.len() - 1)];
    let what = match seed % 6 {
        0 => {
            let v = rng.next() as u16;
            b[off + 4..off + 6].copy_from_slice(&v.to_le_bytes());
            format!("rec_len {v}")
        }
        1 => {
            b[off + 6] = rng.next() as u8;
            format!("name_len {}", b[off + 6])
        }
        2 => {
            let v = rng.next() as u32;
            b[off..off + 4].copy_from_slice(&v.to_le_bytes());
            format!("inode {v}")
        }
        3 => {
            // Header bytes of several entries at once.
            for &o in offs.iter().skip(1).step_by(3) {
                b[o + 4] = rng.next() as u8;
            }
            "several rec_lens".to_string()
        }
        4 => {
            // Ones over the first half: a block torn by a partial write.
            let cut = bs as usize / 2;
            b[..cut].fill(0xFF);
            "first half 0xFF".to_string()
        }
        _ => {
            let v = 1 + rng.below(3) as u16;
            b[off + 4..off + 6].copy_from_slice(&v.to_le_bytes());
            format!("rec_len {v} (not a multiple of 4)")
        }
    };
    f.write_all_at(&b, blk * bs).unwrap();
    format!("block {blk} entry at {off}: {what}")
}

/// Capture `img` with `-s` in every format; no marker may be in any output, and the
/// scrambled capture fails only where the plain one does.
fn check_formats(dir: &Path, img: &Path, case: &str) {
    let plain = dir.join("plain.raw");
    let p = run(tool_cmd("e2i-capture").arg("-r").arg(img).arg(&plain))
        .status
        .code();
    let _ = std::fs::remove_file(&plain);
    for fmt in ["raw", "normal", "qcow2", "stream"] {
        let out = dir.join(format!("scr.{fmt}"));
        let _ = std::fs::remove_file(&out);
        let o = run(tool_cmd("e2i-capture")
            .args(["-s", "--format", fmt])
            .arg(img)
            .arg(&out));
        let s = o.status.code();
        assert!(
            s == p || !matches!(p, Some(0) | Some(3)),
            "{case}: {fmt}: -s exits {s:?}, the plain capture {p:?}: {}",
            output_text(&o)
        );
        if fmt == "raw" && s == Some(0) && p == Some(0) {
            // The damage is kept as it was: e2fsck judges both alike.
            assert_eq!(e2fsck(&out), e2fsck(img), "{case}: e2fsck -fn verdict");
        }
        if let Ok(data) = std::fs::read(&out) {
            assert_eq!(
                marks(&data),
                0,
                "{case}: {fmt}: the marker is in the scrambled image: {}",
                output_text(&o)
            );
        }
    }
}

#[test]
fn damaged_directories_leak_nothing_in_any_format() {
    let d = tempdir();
    let variants: [(&str, &[&str]); 3] = [
        ("csum1k.img", &["-b", "1024"]),
        (
            "ext3.img",
            &["-b", "4096", "-O", "^extent,^64bit,^metadata_csum"],
        ),
        (
            "inline.img",
            &["-b", "1024", "-I", "256", "-O", "inline_data"],
        ),
    ];
    let mut cases = 0;
    for (name, args) in variants {
        let img = planted(d.path(), name, args);
        let bs = block_size(&img);
        let raw = std::fs::read(&img).unwrap();
        assert!(marks(&raw) > 100, "{name}: the marker is planted");
        let dir_blocks: Vec<u64> = (0..3)
            .flat_map(|i| blocks(&img, &format!("/zqxmark_dir{i}")))
            .collect();
        assert!(!dir_blocks.is_empty(), "{name}: directory blocks");
        // Undamaged first, then each case of damage on a fresh copy.
        let work = d.path().join("work.img");
        std::fs::write(&work, &raw).unwrap();
        check_formats(d.path(), &work, &format!("{name} undamaged"));
        for seed in 0..20u64 {
            std::fs::write(&work, &raw).unwrap();
            let what = damage(&work, &dir_blocks, bs, seed);
            check_formats(d.path(), &work, &format!("{name} case {seed}: {what}"));
            cases += 1;
        }
        if name.starts_with("inline") {
            // Damaged inline directory entries (the first entry's rec_len and name_len).
            for v in [0x0003_0007u32, 0xFFFF_0101, 0x0000_0C08] {
                std::fs::write(&work, &raw).unwrap();
                debugfs_w(&work, &format!("sif /small_zqxmark block[2] {v:#x}\n"));
                check_formats(d.path(), &work, &format!("{name}: inline entry {v:#x}"));
                cases += 1;
            }
        }
        // A source cut in the middle of a directory block.
        let cut = dir_blocks[dir_blocks.len() / 2] * bs + bs / 2;
        std::fs::write(&work, &raw[..cut as usize]).unwrap();
        check_formats(d.path(), &work, &format!("{name} cut at byte {cut}"));
        cases += 1;
    }
    eprintln!("leaks: {cases} damaged filesystems, 4 formats each: no marker");
}

/// The exact 50-name block of the report: one bad rec_len used to leave 39 names.
#[test]
fn one_bad_rec_len_leaves_no_name() {
    let d = tempdir();
    let t = d.path().join("tree");
    std::fs::create_dir_all(t.join("dir")).unwrap();
    for i in 0..50 {
        std::fs::write(t.join("dir").join(format!("private-name-{i}")), b"").unwrap();
    }
    let img = d.path().join("fs.img");
    mkfs_tree(&t, &img, &["-b", "4096"]);
    let blk = blocks(&img, "/dir")[0];
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&img)
        .unwrap();
    let mut b = vec![0u8; 4096];
    f.read_exact_at(&mut b, blk * 4096).unwrap();
    let off = entry_offsets(&b)[4];
    b[off + 4..off + 6].copy_from_slice(&3u16.to_le_bytes());
    f.write_all_at(&b, blk * 4096).unwrap();
    let out = d.path().join("s.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-s"])
        .arg(&img)
        .arg(&out));
    assert!(o.status.success(), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("1 damaged directory blocks scrubbed"), "{err}");
    let data = std::fs::read(&out).unwrap();
    let left = data
        .windows(b"private-name-".len())
        .filter(|w| w == b"private-name-")
        .count();
    assert_eq!(left, 0, "names left in the scrambled image");
    // The damage is kept: e2fsck judges the scrambled image as the source.
    assert_eq!(e2fsck(&out), e2fsck(&img));
    let mut s = vec![0u8; 8];
    std::fs::File::open(&out)
        .unwrap()
        .read_exact_at(&mut s, blk * 4096 + off as u64)
        .unwrap();
    assert_eq!(&s[..], &b[off..off + 8], "the damaged header is kept");
}

/// Every free-text field of the superblock is cleared; the scrambled mark is in
/// s_last_mounted; the checksum still verifies (e2fsck's verdict is kept).
#[test]
fn superblock_text_fields_are_cleared() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &["-L", "zqxmark_lbl"]);
    debugfs_w(
        &img,
        "ssv last_mounted /zqxmark_mnt\nssv mount_opts zqxmark_opts\n\
         ssv first_error_func zqxmark_first\nssv last_error_func zqxmark_last\n",
    );
    let out = d.path().join("s.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-s"])
        .arg(&img)
        .arg(&out));
    assert!(o.status.success(), "{}", output_text(&o));
    let data = std::fs::read(&out).unwrap();
    let sb = &data[1024..2048];
    assert_eq!(marks(sb), 0, "marker in the superblock");
    assert_eq!(marks(&data), 0, "marker in the image");
    for (name, at) in [
        ("s_volume_name", 0x78..0x88),
        ("s_first_error_func", 0x1A8..0x1C8),
        ("s_last_error_func", 0x1E0..0x200),
        ("s_mount_opts", 0x200..0x240),
    ] {
        assert!(sb[at].iter().all(|&b| b == 0), "{name} not cleared");
    }
    assert!(sb[0x88..0xC8].starts_with(b"<scrambled by e2i-capture -s>"));
    assert_eq!(e2fsck(&out), e2fsck(&img));
    let dump = run(Command::new("dumpe2fs").arg("-h").arg(&out));
    assert!(
        !output_text(&dump)
            .to_lowercase()
            .contains("checksum does not match")
    );
}

/// The encrypt flag on a directory of a filesystem without the encrypt feature protects
/// nothing: its names are plaintext and get scrambled.
#[test]
fn stray_encrypt_flag_keeps_no_name() {
    let d = tempdir();
    let t = d.path().join("tree");
    std::fs::create_dir_all(t.join("dir")).unwrap();
    for i in 0..20 {
        std::fs::write(t.join("dir").join(format!("zqxmark_{i}")), b"").unwrap();
    }
    let img = d.path().join("fs.img");
    mkfs_tree(&t, &img, &[]);
    let flags = debugfs(&img, "stat /dir");
    let flags = flags
        .split("Flags: 0x")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .expect("flags");
    debugfs_w(&img, &format!("sif /dir flags {:#x}\n", flags | 0x800));
    let out = d.path().join("s.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-s"])
        .arg(&img)
        .arg(&out));
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(
        marks(&std::fs::read(&out).unwrap()),
        0,
        "{}",
        output_text(&o)
    );
    assert_eq!(e2fsck(&out), e2fsck(&img));
}

/// A slow symlink whose block is also a regular file's data block: one content, read by
/// the symlink as a target, so its first i_size bytes are scrambled (the file's copy too)
/// and the rest of the block stays; reported; e2fsck's verdict kept. A symlink whose block
/// is a file's indirect block (block numbers, not a target) keeps it as it is, reported.
#[test]
fn cross_linked_symlink_block() {
    let d = tempdir();
    let t = d.path().join("tree");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("file"), vec![b'd'; 3000]).unwrap();
    std::fs::write(t.join("big"), vec![b'b'; 20 * 1024]).unwrap();
    let target = "/x/".repeat(40);
    std::os::unix::fs::symlink(&target, t.join("slow")).unwrap();
    for (name, args) in [
        ("ext4.img", &["-b", "1024"][..]),
        ("ext3.img", &["-b", "1024", "-O", "^extent,^64bit"][..]),
    ] {
        let img = d.path().join(name);
        mkfs_tree(&t, &img, args);
        let ext4 = name == "ext4.img";
        let field = if ext4 { 5 } else { 0 };
        let mut cases = vec![(blocks(&img, "/file")[0], true)];
        if !ext4 {
            cases.push((ind_block(&img, "/big"), false));
        }
        let clean = std::fs::read(&img).unwrap();
        for (fb, scrambled) in cases {
            std::fs::write(&img, &clean).unwrap();
            // The symlink's map points at the other block.
            debugfs_w(&img, &format!("sif /slow block[{field}] {fb}\n"));
            let src = std::fs::read(&img).unwrap();
            let out = d.path().join("s.raw");
            let o = run(tool_cmd("e2i-capture")
                .args(["-r", "-s"])
                .arg(&img)
                .arg(&out));
            assert!(o.status.success(), "{name}: {}", output_text(&o));
            let err = String::from_utf8_lossy(&o.stderr);
            let said = if scrambled {
                format!("scrambled: {}: block {fb} cross-linked", img.display())
            } else {
                format!(
                    "block {fb} cross-linked (claimed by more than one owner) with a mapping block: kept"
                )
            };
            assert!(err.contains(&said), "{name}: {said}: {err}");
            let data = std::fs::read(&out).unwrap();
            let at = (fb * 1024) as usize;
            let n = if scrambled { target.len() } else { 0 };
            assert_eq!(&data[at + n..at + 1024], &src[at + n..at + 1024], "{name}");
            if scrambled {
                assert_ne!(&data[at..at + n], &src[at..at + n], "{name}: not scrambled");
            }
            assert_eq!(e2fsck(&out), e2fsck(&img), "{name}");
        }
    }
}

/// Unmounts when dropped (lazily: a failing test cannot leave it busy); the loop device
/// of `mount -o loop` goes with it.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A 48,000-entry 3-level htree directory of 255-byte names (large_dir, 1 KiB blocks, made
/// by the kernel, whose splits leave clusters of leaves only a few hash values wide, some
/// of them at the edge of their index block): every name gets one in its leaf's range (none
/// reported out of range), e2fsck -fn stays clean, no original name is left. The UUIDs and
/// hash seeds are layouts where one name lost its range before leaves were widened across
/// neighbours and index blocks (fixed, so that the kernel builds the same tree every run).
#[test]
fn huge_three_level_htree_keeps_every_range() {
    let layouts = [
        (
            "d80642be-edc3-42df-90ae-8e97c7cf547c",
            "767a08c0-2a58-417e-b5cb-533461f37683",
        ),
        (
            "49c1bdc7-055a-4746-b51b-b719b691ec3b",
            "d3b36937-1f68-4267-98a8-ee42ef12f23e",
        ),
        (
            "2b31a809-276e-48f5-9ebc-1ec75bf2db30",
            "c93941a9-073a-4dc8-b8ab-c2ba929b8b3e",
        ),
        (
            "758003a6-73bb-4542-ab1b-be69615617fc",
            "29a25a97-f310-4103-bb5d-98841c81a933",
        ),
    ];
    for (uuid, hash_seed) in layouts {
        huge_three_level_htree(uuid, hash_seed);
    }
}

fn huge_three_level_htree(uuid: &str, hash_seed: &str) {
    let d = tempdir();
    let img = d.path().join("fs.img");
    let o = run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "1024",
            "-O",
            "large_dir,^has_journal",
            "-N",
            "60000",
            "-U",
            uuid,
            "-E",
            &format!("hash_seed={hash_seed}"),
        ])
        .arg(&img)
        .arg("120M"));
    assert!(o.status.success(), "{uuid}: {}", output_text(&o));
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let o = run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt));
    assert!(o.status.success(), "{uuid}: mount: {}", output_text(&o));
    {
        let _m = Mounted(mnt.clone());
        let big = mnt.join("big");
        std::fs::create_dir(&big).unwrap();
        for i in 0..48_000 {
            let mut name = format!("zqxmark-{i:06}-");
            name.push_str(&"x".repeat(255 - name.len()));
            std::fs::File::create(big.join(name)).unwrap();
        }
    }
    let dump = debugfs(&img, "htree_dump /big");
    assert!(
        dump.contains("Indirect levels: 2"),
        "{uuid}: not a 3-level htree"
    );
    assert_eq!(e2fsck(&img), 0, "{uuid}");
    let out = d.path().join("s.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-s", "--seed", "1"])
        .arg(&img)
        .arg(&out));
    assert!(o.status.success(), "{uuid}: {}", output_text(&o));
    let err = output_text(&o);
    assert!(err.contains("scrambled 48001 names"), "{uuid}: {err}");
    assert!(!err.contains("hash range"), "{uuid}: {err}");
    assert_eq!(e2fsck(&out), 0, "{uuid}: e2fsck -fn on the scrambled image");
    assert_eq!(marks(&std::fs::read(&out).unwrap()), 0, "{uuid}");
}

/// Directory blocks mapped beyond the directory's i_size are in the image all the same
/// (e2image copies every mapped block): their names are scrambled like any other, and
/// e2fsck judges the scrambled image as the source (it reads them as directory blocks).
#[test]
fn directory_blocks_beyond_i_size_leak_nothing() {
    let d = tempdir();
    let variants: [(&str, &[&str]); 2] = [
        ("csum1k.img", &["-b", "1024"]),
        (
            "ext3.img",
            &["-b", "1024", "-O", "^extent,^64bit,^metadata_csum"],
        ),
    ];
    for (name, args) in variants {
        let img = planted(d.path(), name, args);
        // zqxmark_dir2 spans several blocks; only its first is left inside i_size.
        assert!(blocks(&img, "/zqxmark_dir2").len() > 2, "{name}");
        debugfs_w(&img, "sif /zqxmark_dir2 size 1024\n");
        check_formats(d.path(), &img, &format!("{name}: i_size of one block"));
        // And a directory whose i_size is 0 (all its blocks beyond it).
        debugfs_w(&img, "sif /zqxmark_dir1 size 0\n");
        check_formats(d.path(), &img, &format!("{name}: i_size 0"));
    }
}

/// The xattr block of `path` (debugfs `stat`: "File ACL: N").
fn acl_block(img: &Path, path: &str) -> u64 {
    debugfs(img, &format!("stat {path}"))
        .split("File ACL: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("File ACL")
}

/// A damaged xattr block (bad magic, block count, entry offsets or lengths, a lost
/// terminator, bad checksum or hashes) keeps no name or value in any format: what can be
/// parsed is scrambled, what cannot is zeroed but the headers e2fsck judges; its verdict
/// is kept, and the summary says "scrubbed:".
#[test]
fn damaged_xattr_blocks_leak_nothing() {
    let d = tempdir();
    let variants: [(&str, &[&str]); 2] = [
        ("csum1k.img", &["-b", "1024"]),
        (
            "ext3.img",
            &["-b", "1024", "-O", "^extent,^64bit,^metadata_csum"],
        ),
    ];
    let mut cases = 0;
    for (name, args) in variants {
        let img = planted(d.path(), name, args);
        let v1 = d.path().join("v1");
        let v2 = d.path().join("v2");
        std::fs::write(&v1, "zqxmark_value_one/".repeat(16)).unwrap();
        std::fs::write(&v2, "zqxmark_value_two/".repeat(10)).unwrap();
        debugfs_w(
            &img,
            &format!(
                "ea_set -f {} /zqxmark_dir1 user.zqxmark_blk1\n\
                 ea_set -f {} /zqxmark_dir1 user.zqxmark_blk2\n",
                v1.display(),
                v2.display()
            ),
        );
        let blk = acl_block(&img, "/zqxmark_dir1");
        assert!(blk > 0, "{name}: an xattr block");
        let raw = std::fs::read(&img).unwrap();
        let at = (blk * 1024) as usize;
        assert!(
            marks(&raw[at..at + 1024]) >= 4,
            "{name}: planted in the block"
        );
        let work = d.path().join("work.img");
        // Each case: (what, byte offset in the block, new bytes).
        let first = 32usize;
        let second = first + ((16 + raw[at + first] as usize + 3) & !3);
        let cases_of: Vec<(&str, usize, Vec<u8>)> = vec![
            ("bad magic", 0, vec![0x5A, 0x51, 0x58, 0x4D]),
            ("h_blocks 2", 8, 2u32.to_le_bytes().to_vec()),
            ("value offset past the block", first + 2, vec![0xF0, 0xFF]),
            (
                "value size past the block",
                second + 8,
                0x0001_0000u32.to_le_bytes().to_vec(),
            ),
            ("name_len past the block", second, vec![0xFF]),
            ("name index 0", second + 1, vec![0]),
            ("checksum", 16, vec![0xDE, 0xAD]),
            ("entry hash", first + 12, vec![0x11, 0x22]),
            ("entry table 0xFF", first, vec![0xFF; 40]),
        ];
        for (what, off, bytes) in cases_of {
            let mut b = raw.clone();
            b[at + off..at + off + bytes.len()].copy_from_slice(&bytes);
            std::fs::write(&work, &b).unwrap();
            let case = format!("{name}: xattr block {blk}: {what}");
            check_formats(d.path(), &work, &case);
            cases += 1;
        }
        // The summary names a block it scrubbed.
        let mut b = raw.clone();
        b[at + 8] = 2;
        std::fs::write(&work, &b).unwrap();
        let out = d.path().join("s.raw");
        let o = run(tool_cmd("e2i-capture")
            .args(["-r", "-s"])
            .arg(&work)
            .arg(&out));
        assert!(o.status.success(), "{}", output_text(&o));
        assert!(
            output_text(&o).contains(&format!("scrubbed: {}: xattr block {blk}", work.display())),
            "{}",
            output_text(&o)
        );
    }
    eprintln!("leaks: {cases} damaged xattr blocks, 4 formats each: no marker");
}

/// A damaged xattr table in the inode body (a value past the inode's end) keeps no name or
/// value: it is scrubbed as a damaged xattr block is, e2fsck's verdict kept.
#[test]
fn damaged_in_inode_xattrs_leak_nothing() {
    let d = tempdir();
    let img = planted(d.path(), "ibody.img", &["-b", "1024", "-I", "256"]);
    let imap = debugfs(&img, "imap /zqxmark_dir0");
    let num = |key: &str| -> u64 {
        let v = imap
            .split(key)
            .nth(1)
            .and_then(|s| s.split([',', ' ', '\n']).find(|w| !w.is_empty()));
        let v = v.expect("imap");
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).unwrap(),
            None => v.parse().unwrap(),
        }
    };
    let at = (num("located at block ") * 1024 + num("offset ")) as usize;
    let mut raw = std::fs::read(&img).unwrap();
    let extra = usize::from(u16::from_le_bytes([raw[at + 0x80], raw[at + 0x81]]));
    let table = at + 128 + extra + 4;
    assert_eq!(
        &raw[table - 4..table],
        &0xEA02_0000u32.to_le_bytes(),
        "in-inode xattrs"
    );
    assert!(marks(&raw[at..at + 256]) > 0, "planted in the inode");
    // The first entry's value size runs past the inode.
    raw[table + 8..table + 12].copy_from_slice(&0xFFFFu32.to_le_bytes());
    std::fs::write(&img, &raw).unwrap();
    check_formats(d.path(), &img, "in-inode value size past the inode");
}

/// Journal blocks mapped beyond the journal inode's i_size are copied by e2image like the
/// rest: an old log there leaks as much as one inside, so they are zeroed too.
#[test]
fn journal_blocks_beyond_i_size_leak_nothing() {
    let d = tempdir();
    let img = planted(d.path(), "csum1k.img", &["-b", "1024"]);
    let bs = block_size(&img);
    let jblocks = blocks(&img, "<8>");
    assert!(jblocks.len() > 8, "the journal has blocks: {jblocks:?}");
    // Old log text in the last block and in one past the half, both beyond the new i_size.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    for b in [jblocks[jblocks.len() / 2 + 1], jblocks[jblocks.len() - 1]] {
        f.write_all_at(b"old log: zqxmark_journal_text", b * bs)
            .unwrap();
    }
    drop(f);
    debugfs_w(&img, &format!("sif <8> size {}\n", bs * 2));
    check_formats(d.path(), &img, "journal i_size of two blocks");
}

/// The mapping block of `path` that debugfs `stat` names `(IND)`.
fn ind_block(img: &Path, path: &str) -> u64 {
    debugfs(img, &format!("stat {path}"))
        .split("(IND):")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .expect("an indirect block")
}

/// The inode-table block that holds the inode of `path` (debugfs `imap`).
fn inode_table_block(img: &Path, path: &str) -> u64 {
    let imap = debugfs(img, &format!("imap {path}"));
    let v = imap
        .split("located at block ")
        .nth(1)
        .and_then(|s| s.split([',', ' ', '\n']).find(|w| !w.is_empty()))
        .expect("imap");
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => v.parse().unwrap(),
    }
}

/// The scrambled captures of `img` in every format (and raw with `-a`): the marker count
/// in each, and where e2fsck -fn judges a scrambled capture otherwise than the plain one
/// of the same format (each read back as raw: qcow2 by qemu-img, stream and normal by
/// e2i-to-raw) or the raw one otherwise than the source.
fn cross_check(dir: &Path, img: &Path, case: &str) -> (usize, Vec<String>) {
    let mut leaked = 0;
    let mut wrong = Vec::new();
    let source = e2fsck(img);
    let as_raw = |out: &Path, fmt: &str, tag: &str| -> PathBuf {
        let r = dir.join(format!("{tag}.{fmt}.raw"));
        let _ = std::fs::remove_file(&r);
        let o = match fmt {
            "qcow2" => run(Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(out)
                .arg(&r)),
            _ => run(tool_cmd("e2i-to-raw").arg(out).arg(&r)),
        };
        assert!(
            o.status.success(),
            "{case}: {fmt} to raw: {}",
            output_text(&o)
        );
        r
    };
    for (fmt, all) in [
        ("raw", false),
        ("raw", true),
        ("normal", false),
        ("qcow2", false),
        ("stream", false),
    ] {
        let mut verdicts = Vec::new();
        for scramble in [false, true] {
            let tag = if scramble { "scr" } else { "plain" };
            let out = dir.join(format!("{tag}.{fmt}"));
            let _ = std::fs::remove_file(&out);
            let mut cmd = tool_cmd("e2i-capture");
            cmd.args(["--format", fmt]);
            if all {
                cmd.arg("-a");
            }
            if scramble {
                cmd.arg("-s");
            }
            let o = run(cmd.arg(img).arg(&out));
            assert!(
                matches!(o.status.code(), Some(0) | Some(3)),
                "{case}: {fmt}{}: {}",
                if scramble { " -s" } else { "" },
                output_text(&o)
            );
            if scramble {
                leaked += marks(&std::fs::read(&out).unwrap());
            }
            let raw = if fmt == "raw" {
                out
            } else {
                as_raw(&out, fmt, tag)
            };
            verdicts.push(e2fsck(&raw));
        }
        let what = format!("{fmt}{}", if all { " -a" } else { "" });
        if verdicts[0] != verdicts[1] {
            wrong.push(format!("{case}: {what}: e2fsck {verdicts:?}"));
        }
        if fmt == "raw" && verdicts[1] != source {
            wrong.push(format!(
                "{case}: {what}: e2fsck {} on the source, {} scrambled",
                source, verdicts[1]
            ));
        }
    }
    (leaked, wrong)
}

/// Cross-linked blocks (a damaged filesystem's maps claiming one block twice) leak nothing:
/// a directory, symlink or xattr block that a regular file's extent or indirect map also
/// claims, two directories sharing blocks, a symlink or an xattr block onto a directory
/// block and a directory onto an xattr block, a file's indirect block that is a directory
/// block and a directory block that is a file's indirect block. In every format no marker
/// is left and e2fsck -fn judges each scrambled capture as the plain one.
#[test]
fn cross_linked_blocks_leak_nothing_in_any_format() {
    let d = tempdir();
    let t = d.path().join("tree");
    for x in ["a", "b"] {
        let sub = t.join(format!("zqxmark_dir_{x}"));
        std::fs::create_dir_all(&sub).unwrap();
        for i in 0..40 {
            std::fs::write(sub.join(format!("zqxmark_{x}_entry_{i:03}")), b"").unwrap();
        }
    }
    std::fs::write(t.join("file"), vec![b'd'; 3000]).unwrap();
    std::fs::write(t.join("big"), vec![b'b'; 20 * 1024]).unwrap();
    std::fs::write(t.join("xfile"), b"x").unwrap();
    let long = format!("/zqxmark/{}", "slow_zqxmark_target/".repeat(6));
    std::os::unix::fs::symlink(long, t.join("slow")).unwrap();
    std::os::unix::fs::symlink("zqxmark_fast", t.join("fast")).unwrap();
    let value = d.path().join("value");
    std::fs::write(&value, "zqxmark_value/".repeat(20)).unwrap();
    let variants: [(&str, &[&str]); 2] = [
        ("ext4.img", &["-b", "1024"]),
        ("ext3.img", &["-b", "1024", "-O", "^extent,^64bit"]),
    ];
    let (mut cases, mut leaked, mut wrong) = (0, 0, Vec::new());
    for (name, args) in variants {
        let img = d.path().join(name);
        mkfs_tree(&t, &img, args);
        debugfs_w(
            &img,
            &format!("ea_set -f {} /xfile user.zqxmark_name\n", value.display()),
        );
        let ext4 = name == "ext4.img";
        // The first extent's start (ext4) or the first direct block pointer (ext3).
        let first = if ext4 { "block[5]" } else { "block[0]" };
        let dir_a = blocks(&img, "/zqxmark_dir_a");
        let dir_b = blocks(&img, "/zqxmark_dir_b");
        let link = blocks(&img, "/slow")[0];
        let acl = acl_block(&img, "/xfile");
        assert!(dir_a.len() > 1 && dir_b.len() > 1 && acl > 0, "{name}");
        let (a0, a1, b0) = (dir_a[0], dir_a[1], dir_b[0]);
        // (what, inode, field, the block it is made to name)
        let mut edits = vec![
            ("a file maps a directory's blocks", "/file", first, a0),
            ("a file maps a directory's second block", "/file", first, a1),
            ("a file maps the symlink's block", "/file", first, link),
            ("two directories share blocks", "/zqxmark_dir_a", first, b0),
            (
                "an xattr block is a directory block",
                "/xfile",
                "file_acl",
                a1,
            ),
            (
                "a directory maps the xattr block",
                "/zqxmark_dir_b",
                first,
                acl,
            ),
            ("a symlink maps a directory block", "/slow", first, a1),
            (
                "a directory maps the symlink's block",
                "/zqxmark_dir_b",
                first,
                link,
            ),
        ];
        if !ext4 {
            let ind = ind_block(&img, "/big");
            edits.push((
                "a file's indirect block is a directory block",
                "/big",
                "block[IND]",
                a1,
            ));
            edits.push((
                "a directory block is a file's indirect block",
                "/zqxmark_dir_b",
                "block[1]",
                ind,
            ));
        }
        let raw = std::fs::read(&img).unwrap();
        assert!(marks(&raw) > 80, "{name}: the marker is planted");
        let work = d.path().join("work.img");
        // The inode-table block of the fast symlink, claimed by a directory and by a
        // file's map (ext3: as its indirect block).
        let itable = inode_table_block(&img, "/fast");
        let (map, field) = if ext4 {
            ("/file", first)
        } else {
            ("/big", "block[IND]")
        };
        let mut edits: Vec<_> = edits
            .into_iter()
            .map(|(what, inode, field, block)| (what, format!("sif {inode} {field} {block}")))
            .collect();
        edits.push((
            "a directory and a file's map claim an inode-table block",
            format!("sif /zqxmark_dir_b {first} {itable}\nsif {map} {field} {itable}"),
        ));
        for (what, cmd) in edits {
            std::fs::write(&work, &raw).unwrap();
            debugfs_w(&work, &format!("{cmd}\n"));
            let case = format!("{name}: {what} ({cmd})");
            let (l, w) = cross_check(d.path(), &work, &case);
            if l > 0 {
                wrong.push(format!("{case}: {l} markers left"));
            }
            leaked += l;
            wrong.extend(w);
            cases += 1;
        }
    }
    eprintln!(
        "leaks: {cases} cross-linked filesystems, 5 captures each: {leaked} markers left, {} wrong",
        wrong.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
