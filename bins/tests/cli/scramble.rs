//! `e2i-capture -s`: scrambled raw images that e2fsck and debugfs still accept, with no
//! private string left.
//!
//! Every private string planted in the source (names, symlink targets, xattr names and values,
//! inline file data, the label, the last-mounted path, a stale journal copy of a directory
//! block) contains the marker `SeCrEt`; the checks are differential against e2fsprogs.

use super::util::*;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MARKER: &[u8] = b"secret";

fn debugfs_output(img: &Path, req: &str) -> Output {
    run(Command::new("debugfs").arg("-R").arg(req).arg(img))
}

/// First physical block of logical block `lblk` of `file` (debugfs `bmap`).
fn bmap(img: &Path, file: &str, lblk: u64) -> u64 {
    let o = debugfs_output(img, &format!("bmap {file} {lblk}"));
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("bmap {file} {lblk}: {}", output_text(&o)))
}

/// The source tree: a big directory, nested directories, fast and slow symlinks, small files.
fn tree(dir: &Path, big: usize) -> PathBuf {
    let t = dir.join("tree");
    let bigdir = t.join("SeCrEt_bigdir");
    std::fs::create_dir_all(&bigdir).unwrap();
    for i in 0..big {
        std::fs::write(bigdir.join(format!("SeCrEt_file_{i:05}")), b"").unwrap();
    }
    let nested = t.join("SeCrEt_dir").join("inner_SeCrEt");
    std::fs::create_dir_all(&nested).unwrap();
    for i in 0..5 {
        std::fs::write(
            nested.join(format!("f{i}_SeCrEt")),
            b"SeCrEt inline content",
        )
        .unwrap();
    }
    std::fs::write(t.join("SeCrEt_mid"), "SeCrEt ".repeat(12)).unwrap();
    // Removed after mkfs: their names stay behind in directory slack.
    std::fs::write(t.join("SeCrEt_gone"), b"").unwrap();
    std::fs::write(t.join("SeCrEt_dir").join("SeCrEt_gone_too"), b"").unwrap();
    std::os::unix::fs::symlink("SeCrEt/fast", t.join("SeCrEt_fast")).unwrap();
    let long = format!("/SeCrEt/{}", "slow_SeCrEt_target/".repeat(8));
    std::os::unix::fs::symlink(long, t.join("SeCrEt_slow")).unwrap();
    t
}

/// Make an image of `tree`, then add xattrs, the last-mounted path, htree indexes and a
/// stale journal copy of a directory block.
fn make_image(dir: &Path, size: &str, mkfs_args: &[&str], ext: &str, tree: &Path) -> PathBuf {
    let img = dir.join("fs.img");
    let ext = format!("root_owner=0:0,hash_seed=0b5e3c1d-2a4f-4e6b-8c7d-9e0f1a2b3c4d{ext}");
    let o = run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "SeCrEt_label",
            "-U",
            "6f1e8f2a-1d1b-4c55-9d0e-3b7a2c9e5f10",
        ])
        .args(["-E", &ext])
        .args(mkfs_args)
        .arg("-d")
        .arg(tree)
        .arg(&img)
        .arg(size)
        .env("E2FSPROGS_FAKE_TIME", "1700000000"));
    assert!(o.status.success(), "mkfs: {}", output_text(&o));
    let big = dir.join("bigvalue");
    std::fs::write(&big, "SeCrEt value in a block ".repeat(30)).unwrap();
    debugfs_w(
        &img,
        &format!(
            "ea_set / user.SeCrEt_root SeCrEt_v1\n\
             ea_set /SeCrEt_dir trusted.SeCrEt_t SeCrEt_tv\n\
             ea_set -f {} /SeCrEt_dir user.SeCrEt_big\n\
             ea_set /SeCrEt_mid security.SeCrEt_s SeCrEt_sv\n\
             set_super_value last_mounted /mnt/SeCrEt_mount\n\
             rm /SeCrEt_gone\n\
             rm /SeCrEt_dir/SeCrEt_gone_too\n",
            big.display()
        ),
    );
    let copy = if tree.join("SeCrEt_bigdir").exists() {
        "/SeCrEt_bigdir"
    } else {
        "/short"
    };
    finish_image(&img, copy);
    img
}

/// Index directories (e2fsck -D) and copy a directory block into the (clean) journal, as
/// a journal holds stale copies of metadata.
fn finish_image(img: &Path, journal_copy_of: &str) {
    let o = run(Command::new("e2fsck").arg("-fyD").arg(img));
    assert!(
        o.status.code().unwrap_or(8) <= 1,
        "e2fsck -fyD: {}",
        output_text(&o)
    );
    let bs: u64 = {
        let o = debugfs_output(img, "stats");
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        let line = t
            .lines()
            .find(|l| l.starts_with("Block size:"))
            .expect("block size");
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    let has_journal = !String::from_utf8_lossy(&debugfs_output(img, "stat <8>").stdout).is_empty()
        && String::from_utf8_lossy(&debugfs_output(img, "stats").stdout).contains("has_journal");
    if has_journal {
        let from = bmap(img, journal_copy_of, 1);
        let to = bmap(img, "<8>", 3);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img)
            .unwrap();
        let mut b = vec![0u8; bs as usize];
        f.read_exact_at(&mut b, from * bs).unwrap();
        f.write_all_at(&b, to * bs).unwrap();
    }
}

fn contains_marker(data: &[u8]) -> usize {
    data.windows(MARKER.len())
        .filter(|w| w.eq_ignore_ascii_case(MARKER))
        .count()
}

/// Every directory reachable from the root: inode → its entries (inode, name), sorted.
type Dirs = BTreeMap<u32, Vec<(u32, String)>>;

fn directories(img: &Path) -> (Dirs, String) {
    let mut out = BTreeMap::new();
    let mut log = String::new();
    let mut todo = vec![2u32];
    while let Some(d) = todo.pop() {
        if out.contains_key(&d) {
            continue;
        }
        let o = debugfs_output(img, &format!("ls -l <{d}>"));
        log.push_str(&output_text(&o));
        let mut entries = Vec::new();
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 {
                continue;
            }
            let (Ok(ino), Ok(mode)) = (f[0].parse::<u32>(), u32::from_str_radix(f[1], 8)) else {
                continue;
            };
            let name = f[8..].join(" ");
            if mode & 0o170000 == 0o040000 && name != "." && name != ".." {
                todo.push(ino);
            }
            entries.push((ino, name));
        }
        entries.sort();
        out.insert(d, entries);
    }
    (out, log)
}

/// Same directories, same inode numbers in each, and no entry kept its name (except `.`,
/// `..` and the root's `lost+found`).
fn compare_dirs(before: &Dirs, after: &Dirs) -> usize {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "directories reachable"
    );
    let mut total = 0;
    for (d, b) in before {
        let a = &after[d];
        let inos = |v: &Vec<(u32, String)>| {
            let mut x: Vec<u32> = v.iter().map(|e| e.0).collect();
            x.sort_unstable();
            x
        };
        assert_eq!(inos(b), inos(a), "entries of directory {d}");
        for (ino, name) in b {
            if name == "." || name == ".." || (*d == 2 && name == "lost+found") {
                continue;
            }
            assert!(
                !a.contains(&(*ino, name.clone())),
                "directory {d}: inode {ino} kept its name {name:?}"
            );
        }
        total += a.len();
    }
    total
}

/// Capture `img` with `-r -s` and check everything the scrambled image must satisfy.
fn verify(dir: &Path, img: &Path, min_entries: usize) {
    let plain = dir.join("plain.raw");
    let o = run(tool_cmd("e2i-capture").arg("-r").arg(img).arg(&plain));
    assert!(o.status.success(), "{}", output_text(&o));
    let leaked = contains_marker(&std::fs::read(&plain).unwrap());
    assert!(
        leaked > min_entries,
        "the unscrambled image holds the marker {leaked} times"
    );

    let out = dir.join("scrambled.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-s"])
        .arg(img)
        .arg(&out));
    assert!(o.status.success(), "{}", output_text(&o));
    let summary = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(summary.contains("scrambled "), "{summary}");
    assert!(!summary.contains("could not keep"), "{summary}");

    // e2fsck gives the same verdict.
    let (want, _) = e2fsck_status(img);
    let (got, log) = e2fsck_status(&out);
    assert_eq!(got, want, "e2fsck -fn on the scrambled image:\n{log}");

    // debugfs lists it without checksum errors; every directory keeps its entries.
    let ls = debugfs_output(&out, "ls -l /");
    let ls_text = output_text(&ls);
    assert!(!ls_text.to_lowercase().contains("checksum"), "{ls_text}");
    let (before, _) = directories(img);
    let (after, log) = directories(&out);
    assert!(!log.to_lowercase().contains("checksum"), "{log}");
    assert!(!log.to_lowercase().contains("corrupt"), "{log}");
    let total = compare_dirs(&before, &after);
    assert!(total >= min_entries, "{total} entries");

    // No private string is left anywhere in the image.
    let data = std::fs::read(&out).unwrap();
    assert_eq!(
        contains_marker(&data),
        0,
        "marker found in the scrambled image"
    );
    eprintln!(
        "scramble: {} dirs, {total} entries, marker {leaked}→0, e2fsck {want}={got}; {}",
        after.len(),
        summary.lines().next().unwrap_or("")
    );

    // Deterministic; another seed gives other names.
    let again = dir.join("again.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-s"])
        .arg(img)
        .arg(&again));
    assert!(o.status.success());
    assert!(std::fs::read(&again).unwrap() == data, "two runs differ");
    let other = dir.join("other.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-s", "--seed", "12345"])
        .arg(img)
        .arg(&other));
    assert!(o.status.success());
    assert!(
        std::fs::read(&other).unwrap() != data,
        "the seed changes nothing"
    );
}

fn case(size: &str, mkfs_args: &[&str], big: usize) {
    let d = tempdir();
    let t = tree(d.path(), big);
    let img = make_image(d.path(), size, mkfs_args, "", &t);
    verify(d.path(), &img, big);
}

#[test]
fn csum_1k_htree_journal() {
    case("48M", &["-b", "1024"], 3000);
}

#[test]
fn no_csum_4k_indirect_blocks() {
    case(
        "64M",
        &["-b", "4096", "-O", "^metadata_csum,^extent,^64bit,^flex_bg"],
        2500,
    );
}

#[test]
fn csum_64k_blocks() {
    case("256M", &["-b", "65536"], 3000);
}

#[test]
fn large_dir_two_level_htree() {
    case(
        "64M",
        &["-b", "1024", "-O", "large_dir", "-N", "12000"],
        9000,
    );
}

#[test]
fn bigalloc_clusters() {
    case(
        "128M",
        &["-b", "4096", "-O", "bigalloc", "-C", "16384"],
        2000,
    );
}

#[test]
fn inline_data() {
    case(
        "32M",
        &["-b", "4096", "-O", "inline_data", "-I", "512"],
        300,
    );
}

#[test]
fn casefold_htree() {
    let d = tempdir();
    let t = tree(d.path(), 50);
    let img = make_image(
        d.path(),
        "64M",
        &["-b", "4096", "-O", "casefold"],
        ",encoding=utf8",
        &t,
    );
    debugfs_w(&img, "mkdir /cf\nset_inode_field /cf flags 0x40080000\n");
    let mut cmds = String::from("cd /cf\n");
    for i in 0..1500 {
        cmds.push_str(&format!("write /dev/null SeCrEt_MiXeD_{i}\n"));
    }
    debugfs_w(&img, &cmds);
    finish_image(&img, "/cf");
    let st = debugfs_output(&img, "stat /cf");
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("Flags: 0x40081000"),
        "{}",
        output_text(&st)
    );
    verify(d.path(), &img, 1500);
}

/// A crowded htree directory of one- and two-byte names: not every name can hash into its
/// leaf's range, but none is kept, lengths and uniqueness hold, and the summary says so
/// whenever e2fsck's verdict changes.
#[test]
fn short_names_are_never_kept() {
    let d = tempdir();
    let t = d.path().join("tree");
    let dir = t.join("short");
    std::fs::create_dir_all(&dir).unwrap();
    let chars: Vec<char> = ('a'..='z')
        .chain('0'..='9')
        .chain(['_', '=', '+', ','])
        .collect();
    for c in &chars {
        std::fs::write(dir.join(c.to_string()), b"").unwrap();
    }
    for c in chars.iter().take(20) {
        for e in &chars {
            std::fs::write(dir.join(format!("{c}{e}")), b"").unwrap();
        }
    }
    let img = make_image(d.path(), "16M", &["-b", "1024"], "", &t);
    let out = d.path().join("scrambled.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-s"])
        .arg(&img)
        .arg(&out));
    assert!(o.status.success(), "{}", output_text(&o));
    let summary = String::from_utf8_lossy(&o.stderr).to_string();
    let (before, _) = directories(&img);
    let (after, log) = directories(&out);
    assert!(!log.to_lowercase().contains("checksum"), "{log}");
    let total = compare_dirs(&before, &after);
    assert!(total > 800, "{total} entries");
    for entries in after.values() {
        let mut names: Vec<&String> = entries.iter().map(|e| &e.1).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "names stay unique");
    }
    let (want, _) = e2fsck_status(&img);
    let (got, fsck) = e2fsck_status(&out);
    let out_of_range: usize = summary
        .lines()
        .find(|l| l.contains("could not keep their htree hash range"))
        .and_then(|l| l.split(": ").nth(3))
        .and_then(|l| l.split_whitespace().next())
        .map_or(0, |n| n.parse().unwrap());
    if got != want {
        assert!(out_of_range > 0, "{summary}\n{fsck}");
    }
    assert!(
        out_of_range * 100 <= total,
        "{out_of_range} of {total} names out of range"
    );
    eprintln!("short names: {total} entries, e2fsck {want}→{got}; {summary}");
}

/// The raw image written to a pipe is the same scrambled image.
#[test]
fn scrambled_stream_matches_file() {
    let d = tempdir();
    let t = tree(d.path(), 200);
    let img = make_image(d.path(), "16M", &["-b", "1024"], "", &t);
    let file = d.path().join("file.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-s"])
        .arg(&img)
        .arg(&file));
    assert!(o.status.success(), "{}", output_text(&o));
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-s"])
        .arg(&img)
        .arg("-"));
    assert!(o.status.success(), "{}", output_text(&o));
    let f = std::fs::read(&file).unwrap();
    assert_eq!(o.stdout.len(), f.len());
    assert!(o.stdout == f, "stream and file differ");
    assert_eq!(contains_marker(&o.stdout), 0);
}

/// Damaged metadata never makes the scrambler panic: it skips and reports.
#[test]
fn damaged_sources_do_not_panic() {
    let d = tempdir();
    let t = tree(d.path(), 300);
    let img = make_image(d.path(), "8M", &["-b", "1024"], "", &t);
    let pristine = std::fs::read(&img).unwrap();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..24 {
        let mut bytes = pristine.clone();
        // Garble bytes in the first 1 MiB (superblock copies aside): inode tables, directories,
        // extent and xattr blocks live there.
        for _ in 0..(200 + round * 50) {
            let at = 4096 + (next() % (1 << 20)) as usize;
            bytes[at] = next() as u8;
        }
        let bad = d.path().join("bad.img");
        std::fs::write(&bad, &bytes).unwrap();
        let out = d.path().join("bad.raw");
        let o = run(tool_cmd("e2i-capture")
            .args(["-r", "-s"])
            .arg(&bad)
            .arg(&out));
        let code = o.status.code();
        assert!(
            matches!(code, Some(0 | 1 | 3)),
            "round {round}: exit {code:?}: {}",
            output_text(&o)
        );
        assert!(
            !output_text(&o).contains("panicked"),
            "round {round}: {}",
            output_text(&o)
        );
    }
}
