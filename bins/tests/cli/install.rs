//! e2i-install: restoring metadata from a normal image, its refusals, and its undo files.

use super::util::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UUID: &str = "0b9d8f4e-2a61-4c3b-8e5d-7f1a2b3c4d5e";

fn make(dir: &Path, name: &str, size: &str, opts: &[&str]) -> PathBuf {
    let mut all = vec!["-U", UUID];
    all.extend_from_slice(opts);
    mkfs(dir, name, size, &all)
}

fn capture(img: &Path, out: &Path) {
    let o = run(tool_cmd("e2i-capture").arg(img).arg(out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn install(args: &[&str], dev: &Path, image: &Path) -> Output {
    run(tool_cmd("e2i-install")
        .args(args)
        .arg(dev)
        .arg(image)
        .env("E2FSPROGS_FAKE_TIME", "1800000000"))
}

/// SHA-256 of a file (through sha256sum, so large images are not held in memory).
fn sha256(p: &Path) -> String {
    let o = run(Command::new("sha256sum").arg(p));
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn patch(img: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

/// Zero group 0's inode table, both its bitmaps and the primary descriptor blocks (and the
/// primary superblock when `superblock`).
fn damage(img: &Path, superblock: bool) {
    let src = e2i::io::FileSource::open(img, 0).unwrap();
    let fs = e2i::ext4::Filesystem::open(src, Default::default()).unwrap();
    let bs = fs.sb.block_size;
    let at = |b| bs.offset_of(b).unwrap();
    let it = fs.desc.inode_table(0);
    patch(
        img,
        at(it),
        &vec![0; (u64::from(fs.sb.inode_blocks_per_group) * bs.bytes()) as usize],
    );
    for b in [fs.desc.block_bitmap(0), fs.desc.inode_bitmap(0)] {
        patch(img, at(b), &vec![0; bs.as_usize()]);
    }
    for b in e2i::normal::reader::primary_descriptor_blocks(&fs.sb) {
        patch(img, at(b), &vec![0; bs.as_usize()]);
    }
    if superblock {
        patch(img, 1024, &[0; 1024]);
    }
}

fn dumpe2fs(img: &Path) -> String {
    let o = run(Command::new("dumpe2fs").arg(img));
    assert!(
        o.status.success(),
        "dumpe2fs {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| {
            !["Last write time:", "Lifetime writes:", "Checksum:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn fsck_clean(img: &Path) {
    let o = run(Command::new("e2fsck").arg("-fn").arg(img));
    assert!(
        o.status.success(),
        "e2fsck -fn: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// Damage a copy, install the image with an undo file, check the result, then undo.
fn restore_and_undo(size: &str, opts: &[&str], zero_superblock: bool) {
    let d = tempdir();
    let orig = make(d.path(), "orig.img", size, opts);
    let image = d.path().join("orig.e2i");
    capture(&orig, &image);
    let dev = d.path().join("dev.img");
    std::fs::copy(&orig, &dev).unwrap();
    damage(&dev, zero_superblock);
    let before = sha256(&dev);
    let undo = d.path().join("dev.undo");
    let o = install(&["-z", undo.to_str().unwrap()], &dev, &image);
    assert!(
        o.status.success(),
        "install: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    fsck_clean(&dev);
    assert_eq!(dumpe2fs(&orig), dumpe2fs(&dev));
    let o = run(Command::new("e2undo").arg(&undo).arg(&dev));
    assert!(
        o.status.success(),
        "e2undo: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        sha256(&dev) == before,
        "e2undo did not restore the device exactly"
    );
}

macro_rules! restores {
    ($($name:ident: $size:expr, [$($opt:expr),*], $zsb:expr;)*) => {$(
        #[test]
        fn $name() {
            restore_and_undo($size, &[$($opt),*], $zsb);
        }
    )*};
}

restores! {
    install_ext2_1k: "16M", ["-t", "ext2", "-b", "1024"], false;
    install_ext3_2k: "96M", ["-t", "ext3", "-b", "2048"], false;
    install_ext4_1k: "64M", ["-b", "1024"], false;
    install_ext4_4k: "600M", ["-b", "4096"], false;
    install_ext4_uninit_bg: "200M", ["-O", "^metadata_csum,uninit_bg"], false;
    install_ext4_64bit_meta_bg: "300M", ["-b", "1024", "-O", "64bit,meta_bg,^resize_inode"], false;
    install_ext4_bigalloc: "512M", ["-O", "bigalloc", "-C", "65536"], false;
    install_ext4_64k_blocks: "512M", ["-b", "65536"], false;
    install_ext4_no_flex_bg_no_superblock: "300M", ["-O", "^flex_bg"], true;
    install_ext2_1k_no_superblock: "16M", ["-t", "ext2", "-b", "1024"], true;
    install_ext4_1k_no_superblock: "64M", ["-b", "1024"], true;
    install_ext4_4k_no_superblock: "600M", ["-b", "4096"], true;
    install_ext4_meta_bg_no_superblock: "600M", ["-b", "4096", "-O", "meta_bg,^resize_inode"], true;
}

/// The bytes written are exactly e2image -I's (same time): after changes to the filesystem,
/// both put back the same superblock (lifetime-writes count included), descriptors, bitmaps and
/// inode tables.
#[test]
fn install_writes_the_same_bytes_as_e2image_dash_i() {
    for opts in [
        vec!["-b", "1024"],
        vec!["-b", "4096"],
        vec!["-O", "^metadata_csum,uninit_bg"],
        vec!["-O", "^flex_bg"],
        vec!["-b", "1024", "-O", "64bit,meta_bg,^resize_inode"],
        vec!["-O", "bigalloc", "-C", "65536"],
    ] {
        let d = tempdir();
        let orig = make(d.path(), "orig.img", "300M", &opts);
        let image = d.path().join("orig.e2i");
        let o = run(Command::new("e2image").arg(&orig).arg(&image));
        assert!(o.status.success());
        for req in ["mkdir newdir", "rm f3", "rm f7"] {
            let o = run(Command::new("debugfs").args(["-w", "-R", req]).arg(&orig));
            assert!(o.status.success());
        }
        let a = d.path().join("a.img");
        let b = d.path().join("b.img");
        std::fs::copy(&orig, &a).unwrap();
        std::fs::copy(&orig, &b).unwrap();
        let o = run(Command::new("e2image")
            .arg("-I")
            .arg(&a)
            .arg(&image)
            .env("E2FSPROGS_FAKE_TIME", "1800000000"));
        assert!(o.status.success());
        // The filesystem changed after the image: refused without -f (see
        // install_refuses_a_newer_state_of_the_filesystem).
        let o = install(&["-f"], &b, &image);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            sha256(&a) == sha256(&b),
            "{opts:?}: e2i-install and e2image -I wrote different bytes"
        );
    }
}

#[test]
fn install_refuses_another_filesystem_and_dry_run_changes_nothing() {
    let d = tempdir();
    let a = make(d.path(), "a.img", "64M", &[]);
    let b = mkfs(d.path(), "b.img", "64M", &[]);
    let image = d.path().join("a.e2i");
    capture(&a, &image);
    let before = sha256(&b);
    let o = install(&[], &b, &image);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("UUID") && err.contains("--force"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(sha256(&b) == before, "refused install changed the device");

    // Same filesystem, damaged, dry run: lists the writes, touches nothing.
    let dev = d.path().join("dev.img");
    std::fs::copy(&a, &dev).unwrap();
    damage(&dev, false);
    let before = sha256(&dev);
    let mtime = std::fs::metadata(&dev).unwrap().modified().unwrap();
    let undo = d.path().join("u.undo");
    let o = install(&["-n", "-z", undo.to_str().unwrap()], &dev, &image);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("inode table") && out.contains("primary superblock"),
        "{out}"
    );
    assert!(sha256(&dev) == before);
    assert_eq!(std::fs::metadata(&dev).unwrap().modified().unwrap(), mtime);
    assert!(!undo.exists(), "dry run created the undo file");

    // --force installs onto the other filesystem anyway (with a warning).
    let o = install(&["-f"], &b, &image);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning"));
}

#[test]
fn install_refuses_truncated_or_corrupt_images() {
    let d = tempdir();
    let a = make(d.path(), "a.img", "64M", &[]);
    let image = d.path().join("a.e2i");
    capture(&a, &image);
    let full = std::fs::read(&image).unwrap();
    let before = sha256(&a);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", full[..full.len() - 4096].to_vec()),
        ("bad magic", {
            let mut v = full.clone();
            v[0] ^= 1;
            v
        }),
        ("bad offset", {
            let mut v = full.clone();
            v[288] ^= 4;
            v
        }),
        ("bad superblock", {
            let mut v = full.clone();
            let bs = u32::from_le_bytes(v[204..208].try_into().unwrap()) as usize;
            v[bs + 0x38] = 0;
            v
        }),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in cases {
        let bad = d.path().join("bad.e2i");
        std::fs::write(&bad, &bytes).unwrap();
        let o = install(&[], &a, &bad);
        assert_eq!(o.status.code(), Some(1), "{what}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(sha256(&a) == before, "{what}: device changed");
    }
}

/// `-z` never writes over anything: an existing path of any kind (a file, empty or not, a
/// FIFO, a character device, a symlink to a file, to a device or dangling, a folder) is
/// refused with exit 1 in a real run and a dry run, with or without -f, before DEVICE is
/// touched; the path is left as it was. (Block devices: install_undo_onto_a_loop_device_is_refused.)
#[test]
fn install_refuses_an_existing_undo_file() {
    use std::os::unix::fs::FileTypeExt;
    let d = tempdir();
    let a = make(d.path(), "a.img", "16M", &[]);
    let image = d.path().join("a.e2i");
    capture(&a, &image);
    // The device is damaged, so that an install would change it.
    damage(&a, false);
    let before = sha256(&a);
    let p = |n: &str| d.path().join(n);
    std::fs::write(p("full.undo"), b"previous undo record").unwrap();
    std::fs::write(p("empty.undo"), b"").unwrap();
    std::fs::write(p("target"), b"keep me").unwrap();
    std::os::unix::fs::symlink(p("target"), p("link.undo")).unwrap();
    std::os::unix::fs::symlink(p("nowhere"), p("dangling.undo")).unwrap();
    std::os::unix::fs::symlink("/dev/null", p("null.undo")).unwrap();
    std::fs::create_dir(p("dir.undo")).unwrap();
    let st = Command::new("mkfifo").arg(p("fifo.undo")).status().unwrap();
    assert!(st.success());
    let names = [
        "full.undo",
        "empty.undo",
        "link.undo",
        "dangling.undo",
        "null.undo",
        "dir.undo",
        "fifo.undo",
        "/dev/null",
    ];
    for name in names {
        let undo = p(name);
        for extra in [&[][..], &["-n"], &["-f"]] {
            let mut args = extra.to_vec();
            args.extend(["-z", undo.to_str().unwrap()]);
            let o = install(&args, &a, &image);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{name} {extra:?}: {err}");
            assert!(
                err.contains("already exists") && err.lines().count() == 1,
                "{name} {extra:?}: {err}"
            );
            assert!(sha256(&a) == before, "{name} {extra:?}: device changed");
        }
    }
    assert_eq!(
        std::fs::read(p("full.undo")).unwrap(),
        b"previous undo record"
    );
    assert!(std::fs::read(p("empty.undo")).unwrap().is_empty());
    assert_eq!(std::fs::read(p("target")).unwrap(), b"keep me");
    assert!(!p("nowhere").exists(), "the dangling link was followed");
    assert!(std::fs::read_dir(p("dir.undo")).unwrap().next().is_none());
    let ft = std::fs::symlink_metadata(p("fifo.undo"))
        .unwrap()
        .file_type();
    assert!(ft.is_fifo());
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    // A new name works.
    let o = install(&["-z", p("new.undo").to_str().unwrap()], &a, &image);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `-z` naming a block device (here a loop device over a file with a filesystem on it, and a
/// symlink to it) is refused untouched, as is DEVICE. Needs root.
#[test]
fn install_undo_onto_a_loop_device_is_refused() {
    if !is_root() {
        eprintln!("install_undo_onto_a_loop_device_is_refused: needs root; not run");
        return;
    }
    let d = tempdir();
    let a = make(d.path(), "a.img", "16M", &[]);
    let image = d.path().join("a.e2i");
    capture(&a, &image);
    damage(&a, false);
    let victim = mkfs(d.path(), "victim.img", "16M", &[]);
    let o = run(Command::new("losetup").args(["-f", "--show"]).arg(&victim));
    assert!(o.status.success(), "losetup failed");
    let lo = Loop(String::from_utf8_lossy(&o.stdout).trim().to_string());
    let lop = PathBuf::from(&lo.0);
    let link = d.path().join("lo.undo");
    std::os::unix::fs::symlink(&lop, &link).unwrap();
    let (dev_before, lo_before) = (sha256(&a), sha256(&lop));
    for undo in [&lop, &link] {
        for extra in [&[][..], &["-n"], &["-f"]] {
            let mut args = extra.to_vec();
            args.extend(["-z", undo.to_str().unwrap()]);
            let o = install(&args, &a, &image);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{undo:?} {extra:?}: {err}");
            assert!(err.contains("already exists"), "{undo:?}: {err}");
        }
    }
    assert!(sha256(&a) == dev_before, "DEVICE changed");
    assert!(
        sha256(&lop) == lo_before,
        "the loop device named by -z changed"
    );
    let o = run(Command::new("e2fsck").arg("-fn").arg(&lop));
    assert!(
        o.status.success(),
        "the loop device's filesystem was damaged"
    );
}

/// Set superblock fields of `img` with debugfs at the image's time (so that only the fields
/// named change, not the write time).
fn set_super(img: &Path, field: &str, value: &str, time: &str) {
    let o = run(Command::new("debugfs")
        .args(["-w", "-R", &format!("ssv {field} {value}")])
        .arg(img)
        .env("E2FSPROGS_FAKE_TIME", time));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A device holding a newer state of the filesystem than the image (written since: a later
/// write time; mounted since: a higher mount count; more lifetime writes) is refused, exit
/// 1, with both values in the one-line message, by a real run and by -n alike, the device
/// untouched; -f installs (with a warning naming both). The same state, or an older one, is
/// accepted.
#[test]
fn install_refuses_a_newer_state_of_the_filesystem() {
    let d = tempdir();
    // mkfs at 1700000000 (util::mkfs); the image is taken at that state.
    let orig = make(d.path(), "orig.img", "32M", &["-b", "1024"]);
    let image = d.path().join("orig.e2i");
    capture(&orig, &image);
    // (what, change, words in the refusal)
    type Change = fn(&Path);
    let cases: [(&str, Change, &[&str]); 4] = [
        (
            "files added since (debugfs, a later write time)",
            |p| {
                let o = run(Command::new("debugfs")
                    .args(["-w", "-R", "mkdir added-since"])
                    .arg(p)
                    .env("E2FSPROGS_FAKE_TIME", "1750000000"));
                assert!(o.status.success());
            },
            &[
                "last written 2025-06-15 15:06:40 UTC (1750000000)",
                "image: 2023-11-14 22:13:20 UTC (1700000000)",
            ],
        ),
        (
            "mounted since",
            |p| set_super(p, "mnt_count", "3", "1700000000"),
            &["mount count 3 (image: 0)"],
        ),
        (
            "more lifetime writes",
            |p| set_super(p, "kbytes_written", "999999", "1700000000"),
            &["lifetime writes 9999", "KiB (image: "],
        ),
        (
            "only the write time",
            // libext2fs stamps the write time when it writes the superblock.
            |p| set_super(p, "mnt_count", "0", "1735689600"),
            &["last written 2025-01-01 00:00:00 UTC (1735689600)"],
        ),
    ];
    for (what, change, words) in cases {
        let dev = d.path().join("dev.img");
        std::fs::copy(&orig, &dev).unwrap();
        change(&dev);
        let before = sha256(&dev);
        for args in [&[][..], &["-n"]] {
            let o = install(args, &dev, &image);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{what} {args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{what} {args:?}: {err}");
            for w in words.iter().chain(&["newer state", "--force"]) {
                assert!(err.contains(w), "{what} {args:?}: {w:?} not in {err}");
            }
            assert!(o.stdout.is_empty(), "{what} {args:?}");
            assert!(sha256(&dev) == before, "{what} {args:?}: device changed");
        }
        let o = install(&["-f", "-n"], &dev, &image);
        assert!(
            o.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(sha256(&dev) == before, "{what}: -f -n changed the device");
        let o = install(&["-f"], &dev, &image);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{what}: {err}");
        assert!(
            err.contains("warning") && words.iter().all(|w| err.contains(w)),
            "{what}: {err}"
        );
        // (What was added since is now unreachable: e2fsck would say so; that is the loss
        // the refusal is about.)
    }
    // The image's own state (damaged metadata, same superblock) and an older state install.
    let dev = d.path().join("same.img");
    std::fs::copy(&orig, &dev).unwrap();
    damage(&dev, false);
    let o = install(&[], &dev, &image);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let newer = d.path().join("newer.img");
    std::fs::copy(&orig, &newer).unwrap();
    set_super(&newer, "mnt_count", "5", "1760000000");
    let later = d.path().join("later.e2i");
    capture(&newer, &later);
    let o = install(&[], &orig, &later);
    assert!(
        o.status.success(),
        "an older device: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Kill an install with an undo file before each of its write calls in turn (strace's fault
/// injection: SIGKILL on the Nth pwrite64), then run plain `e2undo UNDO DEVICE`: the device
/// is back to its exact original bytes. The one exception is the last write, the undo
/// file's commit after the superblock (one system call after the install finished): there
/// the device holds the finished install and e2undo refuses, changing nothing.
#[test]
fn install_killed_at_any_write_is_undone_by_e2undo() {
    assert!(
        Command::new("strace")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "strace is missing (ci/setup.sh installs it)"
    );
    for (size, opts, zero_sb) in [
        ("16M", &["-b", "1024"][..], false),
        (
            "48M",
            &["-b", "1024", "-O", "meta_bg,^resize_inode"][..],
            true,
        ),
    ] {
        let d = tempdir();
        let orig = make(d.path(), "orig.img", size, opts);
        let image = d.path().join("orig.e2i");
        capture(&orig, &image);
        let damaged = d.path().join("damaged.img");
        std::fs::copy(&orig, &damaged).unwrap();
        damage(&damaged, zero_sb);
        let before = sha256(&damaged);
        // A finished install, for the one window.
        let done = d.path().join("done.img");
        std::fs::copy(&damaged, &done).unwrap();
        let o = install(
            &["-z", d.path().join("done.undo").to_str().unwrap()],
            &done,
            &image,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let finished = sha256(&done);

        let dev = d.path().join("dev.img");
        let undo = d.path().join("dev.undo");
        // (device changed by the killed run, e2undo succeeded, device after e2undo)
        let mut results = Vec::new();
        for n in 1.. {
            assert!(n < 500, "{opts:?}: the install never finished");
            std::fs::copy(&damaged, &dev).unwrap();
            let _ = std::fs::remove_file(&undo);
            let o = run(Command::new("strace")
                .args(["-f", "-o", "/dev/null", "-e"])
                .arg(format!("inject=pwrite64:signal=KILL:when={n}"))
                .arg(tool("e2i-install"))
                .args(["-q", "-z"])
                .arg(&undo)
                .arg(&dev)
                .arg(&image)
                .env("E2FSPROGS_FAKE_TIME", "1800000000"));
            if o.status.success() {
                break;
            }
            let changed = sha256(&dev) != before;
            let u = run(Command::new("e2undo").arg(&undo).arg(&dev));
            results.push((changed, u.status.success(), sha256(&dev)));
        }
        let last = results.len() - 1;
        assert!(last > 4, "{opts:?}: only {} writes", results.len());
        for (i, (changed, undone, sum)) in results[..last].iter().enumerate() {
            assert!(
                *sum == before,
                "{opts:?}: killed at write {} (device changed: {changed}, e2undo ok: {undone}): not restored",
                i + 1
            );
        }
        // Kills land in the middle: some runs had changed the device, and e2undo put it back.
        assert!(
            results[..last].iter().any(|(c, u, _)| *c && *u),
            "{opts:?}: no kill landed after a device write"
        );
        let (changed, undone, sum) = &results[last];
        assert!(*changed && !*undone, "{opts:?}: the commit window");
        assert!(
            *sum == finished,
            "{opts:?}: the window holds a finished install"
        );
    }
}

/// A mounted device is refused, with or without --force and in a dry run; the image file
/// behind a loop mount counts as mounted. Needs root (loop mounts).
#[test]
fn install_refuses_a_mounted_device() {
    if !is_root() {
        eprintln!("install_refuses_a_mounted_device: needs root for a loop mount; not run");
        return;
    }
    let d = tempdir();
    let img = make(d.path(), "m.img", "16M", &[]);
    let image = d.path().join("m.e2i");
    capture(&img, &image);
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(&img)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "loop mount failed");
    let _guard = Mount(mnt.clone());
    let before = sha256(&img);
    for args in [&[][..], &["-f"][..], &["-n"][..]] {
        let o = install(args, &img, &image);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("mounted"), "{args:?}: {err}");
    }
    assert!(sha256(&img) == before);
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// On a real block device (a loop device): restore, e2fsck clean, e2undo back to the same
/// bytes. Needs root.
#[test]
fn install_onto_a_block_device_and_undo() {
    if !is_root() {
        eprintln!("install_onto_a_block_device_and_undo: needs root for a loop device; not run");
        return;
    }
    let d = tempdir();
    let orig = make(d.path(), "o.img", "64M", &["-b", "1024"]);
    let image = d.path().join("o.e2i");
    capture(&orig, &image);
    let img = d.path().join("dev.img");
    std::fs::copy(&orig, &img).unwrap();
    damage(&img, true);
    let o = run(Command::new("losetup").args(["-f", "--show"]).arg(&img));
    assert!(o.status.success(), "losetup failed");
    let dev = Loop(String::from_utf8_lossy(&o.stdout).trim().to_string());
    let devp = PathBuf::from(&dev.0);
    let before = sha256(&devp);
    let undo = d.path().join("u.undo");
    let o = install(&["-p", "-z", undo.to_str().unwrap()], &devp, &image);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fsck_clean(&devp);
    assert_eq!(dumpe2fs(&orig), dumpe2fs(&devp));
    let o = run(Command::new("e2undo").arg(&undo).arg(&devp));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha256(&devp), before);
}

/// A geometry that puts a meta_bg descriptor copy one block past the filesystem's end (the
/// last group, of one block, is the second of its meta group and holds a superblock
/// backup): the install wrote that block over whatever follows the filesystem on DEVICE (the
/// next partition); e2fsck calls the block illegal. Now refused before anything is written,
/// naming the copy; what follows the filesystem is intact, also with --force.
#[test]
fn install_never_writes_past_the_filesystems_end() {
    let d = tempdir();
    let img = d.path().join("fs.img");
    // 50 groups of 256 blocks; the 16 descriptors of a 1 KiB block (64bit) make groups
    // 48-63 meta group 3, whose copies are in groups 48, 49 and 63.
    std::fs::File::create(&img)
        .unwrap()
        .set_len((50 * 256 + 1) * 1024)
        .unwrap();
    sh(Command::new("mkfs.ext4")
        .args([
            "-q", "-F", "-b", "1024", "-g", "256", "-N", "800", "-U", UUID,
        ])
        .args([
            "-O",
            "meta_bg,64bit,^resize_inode,^metadata_csum,^has_journal",
        ])
        .arg(&img)
        .env("E2FSPROGS_FAKE_TIME", "1700000000"));
    // Group 49 cut to its first block (its superblock backup): its descriptor copy would
    // be the block after, the first one past the end.
    let blocks: u32 = 49 * 256 + 2;
    patch(&img, 1024 + 4, &blocks.to_le_bytes());
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(u64::from(blocks) * 1024).unwrap();
    let image = d.path().join("fs.e2i");
    capture(&img, &image);
    // DEVICE: the filesystem, then 64 KiB of what follows it.
    let mut dev = read(&img);
    dev.extend(std::iter::repeat_n(0xAA, 65536));
    let devp = d.path().join("dev.img");
    std::fs::write(&devp, &dev).unwrap();
    for args in [vec!["-n"], vec![], vec!["-f"]] {
        let err = failed(&install(&args, &devp, &image), &format!("install {args:?}"));
        assert!(
            err.contains("meta_bg 3 group descriptors (in group 49)")
                && err.contains(&format!("block {blocks}, outside")),
            "install {args:?}: {err}"
        );
        assert!(read(&devp) == dev, "install {args:?} changed DEVICE");
    }
}

/// The overview compares DEVICE's last write with the time the image was taken, both in
/// whole seconds. Written in the very second of the capture, it said "has not been written
/// since", which the times cannot tell: it now says the second is the same and that what
/// was written after the capture in it is lost. Earlier and later writes keep their words.
#[test]
fn install_overview_says_when_the_last_write_and_the_capture_share_a_second() {
    let d = tempdir();
    // mkfs (and so the last write) at 1700000000 (util::mkfs).
    let dev = make(d.path(), "dev.img", "8M", &[]);
    let cases = [
        (
            "1700000000",
            "in that same second, before or after the capture",
        ),
        ("1700000001", "has not been written since"),
        ("1699999999", "the filesystem was written after that"),
    ];
    let phrases: Vec<&str> = cases.iter().map(|c| c.1).collect();
    for (taken, words) in cases {
        let image = d.path().join(format!("{taken}.e2i"));
        run_ok(
            tool_cmd("e2i-capture")
                .arg(&dev)
                .arg(&image)
                .env("SOURCE_DATE_EPOCH", taken),
        );
        let o = install(&["-n"], &dev, &image);
        ok(&o, &format!("install -n, image taken at {taken}"));
        let err = text(&o.stderr);
        let line = err
            .lines()
            .find(|l| l.contains("replacing the inode tables"))
            .unwrap_or_else(|| panic!("{taken}: no overview line: {err}"));
        for p in &phrases {
            assert_eq!(line.contains(p), *p == words, "{taken}: {p:?} in {line}");
        }
    }
}
