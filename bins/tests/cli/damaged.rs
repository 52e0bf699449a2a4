//! Damaged filesystems: the capture skips what is broken, names it, and keeps every block
//! e2image would take from the undamaged inodes.

use super::util::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const BS: usize = 1024;

fn debugfs(img: &Path, write: bool, cmd: &str) -> String {
    let mut c = Command::new("debugfs");
    if write {
        c.arg("-w");
    }
    let o = c.arg("-R").arg(cmd).arg(img).output().expect("debugfs");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A 1 KiB-block ext4 with 300 small files and a fragmented file (an extent tree of depth 1).
fn fragmented_fs(dir: &Path) -> PathBuf {
    let img = dir.join("frag.img");
    let st = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "1024",
            "-U",
            "1b2c3d4e-0000-4000-8000-000000000001",
        ])
        .arg(&img)
        .arg("16M")
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .status()
        .unwrap();
    assert!(st.success());
    let small = dir.join("small");
    std::fs::write(&small, vec![0x11u8; 1024]).unwrap();
    let big = dir.join("big");
    std::fs::write(
        &big,
        (0..300_000u32)
            .map(|i| (i % 253) as u8 + 1)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut cmds = String::new();
    for i in 1..=600 {
        cmds += &format!("write {} s{i}\n", small.display());
    }
    for i in (1..=600).step_by(2) {
        cmds += &format!("rm s{i}\n");
    }
    cmds += &format!("write {} bigfile\nmkdir d\n", big.display());
    let f = dir.join("cmds");
    std::fs::write(&f, cmds).unwrap();
    let st = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&f)
        .arg(&img)
        .output()
        .unwrap();
    assert!(st.status.success());
    img
}

fn ino_of(img: &Path, name: &str) -> u32 {
    let out = debugfs(img, false, &format!("stat {name}"));
    let line = out.lines().next().unwrap_or_default();
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no inode for {name}: {out}"))
}

/// The inode-table block that holds inode `ino`.
fn itable_block(img: &Path, ino: u32) -> usize {
    let out = debugfs(img, false, &format!("imap <{ino}>"));
    let w: Vec<&str> = out.split_whitespace().collect();
    // "Inode N is part of block group G / located at block B, offset 0xO"
    let i = w.iter().position(|&x| x == "located").expect("imap output");
    w[i + 3].trim_end_matches(',').parse().unwrap()
}

fn e2image_r(img: &Path, out: &Path) -> bool {
    std::fs::remove_file(out).ok();
    Command::new("e2image")
        .arg("-r")
        .arg(img)
        .arg(out)
        .output()
        .unwrap()
        .status
        .success()
}

/// Every non-zero block of `want` is in `got`, except blocks listed in `skip`.
fn assert_superset(got: &[u8], want: &[u8], skip: &[usize]) {
    assert_eq!(got.len(), want.len());
    for (b, (g, w)) in got.chunks(BS).zip(want.chunks(BS)).enumerate() {
        if skip.contains(&b) || w.iter().all(|&x| x == 0) {
            continue;
        }
        assert!(
            g == w,
            "block {b} differs from e2image's capture of the repaired copy"
        );
    }
}

#[test]
fn broken_extent_node_is_skipped_and_named() {
    let d = tempdir();
    let img = fragmented_fs(d.path());
    let ino = ino_of(&img, "bigfile");
    let ex = debugfs(&img, false, "ex bigfile");
    // The first level-1 node: "0/ 1   1/  4     0 -  N  LEAFBLK  ..."
    let leaf: usize = ex
        .lines()
        .find(|l| l.trim_start().starts_with("0/"))
        .and_then(|l| l.split_whitespace().nth(7))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no index level: {ex}"));
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[leaf * BS..leaf * BS + 2].fill(0); // break the node's magic
    let damaged = d.path().join("damaged.img");
    std::fs::write(&damaged, &bytes).unwrap();
    assert!(
        !e2image_r(&damaged, &d.path().join("x.raw")),
        "e2image should fail on this image"
    );

    let ours = d.path().join("ours.raw");
    let o = run(tool_cmd("e2i-capture").arg("-r").arg(&damaged).arg(&ours));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("inode {ino}")), "{err}");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "--strict"])
        .arg(&damaged)
        .arg(d.path().join("s.raw")));
    assert_eq!(o.status.code(), Some(1));
    assert!(!d.path().join("s.raw").exists());

    let repaired = d.path().join("repaired.img");
    std::fs::write(&repaired, &bytes).unwrap();
    debugfs(&repaired, true, &format!("clri <{ino}>"));
    let want = d.path().join("want.raw");
    assert!(e2image_r(&repaired, &want));
    let skip = [itable_block(&img, ino)];
    assert_superset(
        &std::fs::read(&ours).unwrap(),
        &std::fs::read(&want).unwrap(),
        &skip,
    );
}

#[test]
fn garbage_inode_table_range_is_skipped_and_named() {
    let d = tempdir();
    let img = fragmented_fs(d.path());
    let first = ino_of(&img, "s2");
    let b0 = itable_block(&img, first);
    let isz: usize = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&img)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Inode size:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("inode size");
    let ipb = BS / isz;
    let mut bytes = std::fs::read(&img).unwrap();
    // Deterministic garbage over four inode-table blocks.
    let mut x: u32 = 0x1234_5678;
    for b in bytes[b0 * BS..(b0 + 4) * BS].iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let damaged = d.path().join("damaged.img");
    std::fs::write(&damaged, &bytes).unwrap();
    assert!(
        !e2image_r(&damaged, &d.path().join("x.raw")),
        "e2image should fail on this image"
    );

    let ours = d.path().join("ours.raw");
    let o = run(tool_cmd("e2i-capture").arg("-r").arg(&damaged).arg(&ours));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    // Every inode the summary names lies in the garbage blocks.
    let group_first = (first as usize - 1) / ipb * ipb + 1;
    let named: Vec<u32> = err
        .lines()
        .filter_map(|l| l.split("inode ").nth(1))
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    assert!(!named.is_empty(), "{err}");
    for n in &named {
        assert!(
            (*n as usize) >= group_first && (*n as usize) < group_first + 4 * ipb,
            "inode {n} named: {err}"
        );
    }

    // The repair: clear every inode in the garbage blocks (debugfs clri refuses inodes
    // whose checksum fails, so zero the blocks, which is the same).
    let mut fixed = bytes.clone();
    fixed[b0 * BS..(b0 + 4) * BS].fill(0);
    let repaired = d.path().join("repaired.img");
    std::fs::write(&repaired, &fixed).unwrap();
    let want = d.path().join("want.raw");
    assert!(e2image_r(&repaired, &want));
    let skip: Vec<usize> = (b0..b0 + 4).collect();
    assert_superset(
        &std::fs::read(&ours).unwrap(),
        &std::fs::read(&want).unwrap(),
        &skip,
    );
}
