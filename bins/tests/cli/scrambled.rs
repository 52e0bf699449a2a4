//! Scrambled images are never written over the filesystem they were taken from by accident:
//! every format carries the mark, `e2i-install` refuses a scrambled (or probably scrambled)
//! image, the converters and `e2i-capture -s` refuse an existing target holding the image's
//! filesystem, and the mark survives conversions and re-captures. Every test here failed on
//! the tools before the mark existed (`E2I_TEST_BIN_DIR` points the tests at another build).
//!
//! The filesystem is the one of the report: a label, a small file, a symlink to a secret
//! target, and a directory of 50 files, with inline data (so that a normal image holds the
//! names, the target and the file contents in its inode tables).

use super::util::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const UUID: &str = "5c1d3a2b-7e4f-4a60-9b8c-0d1e2f3a4b5c";
const OTHER_UUID: &str = "9e8d7c6b-5a49-4838-a726-15f4e3d2c1b0";

fn p(x: &Path) -> &str {
    x.to_str().expect("utf-8 path")
}

/// Exit 1 with one line on stderr that says the image is scrambled and how to proceed.
fn refused(o: &Output, what: &str) -> String {
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}: expected a refusal: {}{err}",
        text(&o.stdout)
    );
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    // A converter says how to write anyway; e2i-install never does.
    assert!(
        err.contains("scrambled")
            && (err.contains("--allow-scrambled")
                || err.contains("never installed, --force or not")),
        "{what}: {err}"
    );
    err
}

/// The report's filesystem (8 MiB, 1 KiB blocks, inline data, label MYLABEL).
fn report_fs(dir: &Path, name: &str, uuid: &str) -> PathBuf {
    let tree = dir.join(format!("{name}.tree"));
    std::fs::create_dir_all(tree.join("d")).unwrap();
    std::fs::write(tree.join("small"), "hello\n").unwrap();
    std::os::unix::fs::symlink("/very/secret/target", tree.join("link")).unwrap();
    for i in 1..=50 {
        std::fs::write(tree.join("d").join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    let img = dir.join(name);
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "MYLABEL", "-U", uuid, "-O", "inline_data"])
            .args(["-E", "root_owner=0:0", "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("8M")
            .env("E2FSPROGS_FAKE_TIME", "1700000000"),
    );
    img
}

/// What scrambling would destroy, as debugfs and dumpe2fs show it: the label, the symlink
/// target, the small file and every inline file of `d`.
fn contents(img: &Path) -> String {
    let o = run_ok(Command::new("dumpe2fs").arg("-h").arg(img));
    let mut s: String = text(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("Filesystem volume name:"))
        .collect();
    let mut req = vec!["stat /link".to_string(), "cat /small".to_string()];
    req.extend((1..=50).map(|i| format!("cat /d/f{i}")));
    for r in req {
        let o = run(Command::new("debugfs").args(["-R", &r]).arg(img));
        let out = text(&o.stdout);
        s.push_str(&format!("\n{r}: "));
        s.push_str(if r.starts_with("stat") {
            out.lines()
                .find(|l| l.starts_with("Fast link dest"))
                .unwrap_or("")
        } else {
            &out
        });
    }
    s
}

fn sha256(p: &Path) -> String {
    let o = run_ok(Command::new("sha256sum").arg(p));
    text(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn capture(args: &[&str], src: &Path, out: &Path) {
    let o = run(tool_cmd("e2i-capture")
        .arg("-q")
        .args(args)
        .arg(src)
        .arg(out));
    ok(&o, &format!("e2i-capture {args:?}"));
}

fn install(args: &[&str], dev: &Path, image: &Path) -> Output {
    run(tool_cmd("e2i-install")
        .args(args)
        .arg(dev)
        .arg(image)
        .env("E2FSPROGS_FAKE_TIME", "1800000000"))
}

fn patch(f: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(f).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

/// Blank the superblock's last-mounted path at byte `at` of `f` (the checksum kept right),
/// as `-s` left it before the mark existed.
fn strip_superblock_mark(f: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(f).unwrap();
    let mut sb = [0u8; 1024];
    file.read_exact_at(&mut sb, at).unwrap();
    let valid = e2i::ext4::csum::superblock_csum_verify(&sb);
    sb[0x88..0xC8].fill(0);
    if valid {
        e2i::ext4::csum::superblock_csum_set(&mut sb);
    }
    patch(f, at, &sb);
}

/// A normal image as `-s` made it before the mark: no header mark, no superblock mark,
/// blank host fields.
fn old_style_normal(image: &Path, out: &Path) {
    std::fs::copy(image, out).unwrap();
    patch(out, 208, &[0; 8]);
    let bs = u64::from(u32::from_le_bytes(
        std::fs::read(out).unwrap()[204..208].try_into().unwrap(),
    ));
    strip_superblock_mark(out, bs);
}

/// The flags of e2i's qcow2 header extension (0 without one).
fn qcow2_flags(f: &Path) -> u32 {
    let r = e2i::qcow2::Qcow2Reader::open(e2i::io::FileSource::open(f, 0).unwrap()).unwrap();
    r.header().e2i_flags()
}

fn normal_flags(f: &Path) -> u32 {
    let b = std::fs::read(f).unwrap();
    e2i::normal::Header::parse(&b[..332]).unwrap().e2i_flags
}

fn stream_flags(f: &Path) -> u32 {
    let b = std::fs::read(f).unwrap();
    u32::from_le_bytes(b[12..16].try_into().unwrap())
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).stdout.starts_with(b"0\n")
}

/// `e2i-install` of a scrambled normal image: refused always (also with -n, -f, -z, -f -z),
/// the device untouched, its label, symlink target and inline files intact; there is no
/// option to install it anyway, except onto a scrambled copy (where nothing real is lost),
/// which works and is what the refusal protected against elsewhere.
#[test]
fn install_refuses_a_scrambled_image() {
    let d = tempdir();
    let fs = report_fs(d.path(), "fs.img", UUID);
    let before = contents(&fs);
    for needle in [
        "MYLABEL",
        "/very/secret/target",
        "hello",
        "file 1\n",
        "file 50\n",
    ] {
        assert!(before.contains(needle), "{needle} missing from {before}");
    }
    let image = d.path().join("s.e2i");
    capture(&["-s"], &fs, &image);
    let sum = sha256(&fs);
    let undo = d.path().join("u.undo");
    for args in [
        &[][..],
        &["-n"],
        &["-f"],
        &["-f", "-n"],
        &["-n", "-q"],
        &["-z", p(&undo)],
        &["-f", "-z", p(&undo)],
    ] {
        let o = install(args, &fs, &image);
        let err = refused(&o, &format!("install {args:?}"));
        assert!(
            err.contains("inline") && err.contains("symlink") && err.contains("label"),
            "{args:?}: the refusal says what would be lost: {err}"
        );
        assert!(o.stdout.is_empty(), "{args:?}: {}", text(&o.stdout));
        assert_eq!(
            sha256(&fs),
            sum,
            "{args:?}: refused install changed the device"
        );
        assert!(
            !undo.exists(),
            "{args:?}: refused install created the undo file"
        );
    }
    assert_eq!(contents(&fs), before);

    // Scrambled images in the other formats are not normal images: refused as such (with
    // -f too), the device untouched.
    for (fmt, args) in [
        ("qcow2", &["-Q"][..]),
        ("stream", &["--format", "stream"]),
        ("raw", &["-r"]),
    ] {
        let other = d.path().join(format!("s.{fmt}"));
        let mut a = vec!["-s"];
        a.extend_from_slice(args);
        capture(&a, &fs, &other);
        for extra in [&[][..], &["-f"]] {
            let o = install(extra, &fs, &other);
            assert_eq!(o.status.code(), Some(1), "{fmt} {extra:?}");
            assert!(
                text(&o.stderr).contains("not a normal e2image image"),
                "{fmt}: {}",
                text(&o.stderr)
            );
            assert_eq!(sha256(&fs), sum, "{fmt} {extra:?}: device changed");
        }
    }

    // No way around it: --allow-scrambled is not an install option.
    let o = install(&["--allow-scrambled"], &fs, &image);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert_eq!(sha256(&fs), sum);

    // Onto a scrambled copy of the filesystem (its superblock marked): nothing real to
    // lose, so it installs, and the copy stays consistent.
    let copy = d.path().join("copy.raw");
    capture(&["-s", "-r"], &fs, &copy);
    let o = install(&[], &copy, &image);
    ok(&o, "install onto a scrambled copy");
    let after = contents(&copy);
    assert!(
        !after.contains("MYLABEL") && !after.contains("/very/secret/target"),
        "{after}"
    );
    run_ok(Command::new("e2fsck").arg("-fn").arg(&copy));
}

/// Images scrambled before the mark existed (blank host fields), and images that kept only
/// one of their two marks, are refused too; the message says which sign it went by.
#[test]
fn install_refuses_old_and_partly_marked_scrambled_images() {
    let d = tempdir();
    let fs = report_fs(d.path(), "fs.img", UUID);
    let image = d.path().join("s.e2i");
    capture(&["-s"], &fs, &image);
    let bs = 1024;
    let sum = sha256(&fs);
    // (what, strip the header's mark, strip the superblock's, expected words)
    let cases = [
        (
            "old style",
            true,
            true,
            "probably scrambled (its header names neither",
        ),
        (
            "header mark only",
            false,
            true,
            "its header carries e2i's scrambled mark",
        ),
        (
            "superblock mark only",
            true,
            false,
            "last-mounted path reads",
        ),
    ];
    for (what, header, superblock, words) in cases {
        let img = d.path().join(format!("{}.e2i", what.replace(' ', "_")));
        std::fs::copy(&image, &img).unwrap();
        if header {
            patch(&img, 208, &[0; 8]);
        }
        if superblock {
            strip_superblock_mark(&img, bs);
        }
        for args in [&[][..], &["-n"]] {
            let err = refused(&install(args, &fs, &img), &format!("{what} {args:?}"));
            assert!(err.contains(words), "{what}: {err}");
        }
        assert_eq!(sha256(&fs), sum, "{what}");
    }
    let old = d.path().join("old.e2i");
    old_style_normal(&image, &old);
    for args in [&["-f"][..], &["-f", "-n"]] {
        refused(&install(args, &fs, &old), &format!("old style {args:?}"));
    }
    assert_eq!(sha256(&fs), sum);
}

/// An unscrambled normal image is still e2image's, byte for byte (host fields masked; the
/// reserved words where the mark goes stay zero), and installs; before writing (and with
/// -n) one line says what it replaces, and that the filesystem changed since the capture,
/// and a warning says when the journal that needs recovery would be dropped.
#[test]
fn unscrambled_image_installs_and_says_what_it_replaces() {
    let d = tempdir();
    let fs = report_fs(d.path(), "fs.img", UUID);
    let ours = d.path().join("ours.e2i");
    let theirs = d.path().join("theirs.e2i");
    run_ok(
        tool_cmd("e2i-capture")
            .arg(&fs)
            .arg(&ours)
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    );
    run_ok(Command::new("e2image").arg(&fs).arg(&theirs));
    let (mut a, mut b) = (
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap(),
    );
    assert!(a[208..240].iter().all(|&c| c == 0), "fs_reserved written");
    for (off, len) in e2i::normal::HOST_SPECIFIC_FIELDS {
        a[off..off + len].fill(0);
        b[off..off + len].fill(0);
    }
    assert!(
        a == b,
        "the unscrambled normal image differs from e2image's"
    );

    // The filesystem changes after the capture: a new directory, a new label.
    run_ok(
        Command::new("debugfs")
            .args(["-w", "-R", "mkdir newdir"])
            .arg(&fs)
            .env("E2FSPROGS_FAKE_TIME", "1750000000"),
    );
    run_ok(Command::new("tune2fs").args(["-L", "NEWLABEL"]).arg(&fs));
    // An unclean shutdown: the journal needs recovery, which the image's superblock does
    // not say.
    run_ok(
        Command::new("debugfs")
            .args(["-w", "-R", "feature needs_recovery"])
            .arg(&fs),
    );
    let sum = sha256(&fs);
    for args in [&["-f", "-n"][..], &["-f"]] {
        let o = install(args, &fs, &ours);
        ok(&o, &format!("install {args:?}"));
        let err = text(&o.stderr);
        let line = err
            .lines()
            .find(|l| l.contains("replacing the inode tables and bitmaps of 1 group"))
            .unwrap_or_else(|| panic!("{args:?}: no overview line: {err}"));
        for words in [
            "from 2023-11-14 22:13:20 UTC",
            "written after that",
            "become unreachable",
            "inodes in use: ",
            "the label \"NEWLABEL\" becomes \"MYLABEL\"",
        ] {
            assert!(line.contains(words), "{args:?}: {words:?} not in {line}");
        }
        assert!(
            err.contains("journal needs recovery") && err.contains("will not be replayed"),
            "{args:?}: {err}"
        );
        if args == ["-f", "-n"] {
            assert_eq!(sha256(&fs), sum, "dry run wrote");
        }
    }
    // Back at the image's state: the labels agree, the inode counts too. (The install
    // stamped its own write time, so installing again takes -f.)
    let o = install(&["-f"], &fs, &ours);
    ok(&o, "install again");
    let err = text(&o.stderr);
    assert!(
        err.contains("replacing the inode tables")
            && !err.contains("label")
            && !err.contains("inodes in use")
            && !err.contains("journal"),
        "{err}"
    );
    let o = install(&["-q", "-f"], &fs, &ours);
    ok(&o, "install -q");
    assert!(o.stderr.is_empty(), "-q: {}", text(&o.stderr));
}

/// The mark survives every conversion: stream → qcow2, stream → raw → normal / qcow2 /
/// stream re-captures, normal → qcow2, qcow2 → qcow2, and an old-style normal image (blank
/// host fields) → qcow2. Each qcow2 stays clean for qemu-img and readable by stock e2image.
#[test]
fn the_mark_survives_conversions_and_recaptures() {
    let d = tempdir();
    let fs = report_fs(d.path(), "fs.img", UUID);
    let f = |n: &str| d.path().join(n);
    capture(&["-s", "--format", "stream"], &fs, &f("s.stream"));
    capture(&["-s"], &fs, &f("s.e2i"));
    capture(&["-s", "-Q"], &fs, &f("s.qcow2"));
    capture(&["-s", "-r"], &fs, &f("s.raw"));
    old_style_normal(&f("s.e2i"), &f("old.e2i"));
    assert_eq!(stream_flags(&f("s.stream")) & 2, 2);
    assert_eq!(normal_flags(&f("s.e2i")), 1);
    assert_eq!(qcow2_flags(&f("s.qcow2")), 1);

    let convert = |tool_: &str, input: &Path, out: &Path| {
        let o = run(tool_cmd(tool_).arg("-q").arg(input).arg(out));
        ok(&o, &format!("{tool_} {}", input.display()));
    };
    convert("e2i-to-raw", &f("s.stream"), &f("r.raw"));
    assert!(
        std::fs::read(f("r.raw")).unwrap() == std::fs::read(f("s.raw")).unwrap(),
        "stream → raw differs from the scrambled raw capture"
    );
    capture(&[], &f("r.raw"), &f("re.e2i"));
    capture(&["-Q"], &f("r.raw"), &f("re.qcow2"));
    capture(&["--format", "stream"], &f("r.raw"), &f("re.stream"));
    assert_eq!(normal_flags(&f("re.e2i")), 1, "raw → normal lost the mark");
    assert_eq!(qcow2_flags(&f("re.qcow2")), 1, "raw → qcow2 lost the mark");
    assert_eq!(
        stream_flags(&f("re.stream")) & 2,
        2,
        "raw → stream lost the mark"
    );
    // A capture of a marked qcow2 SOURCE keeps it too.
    capture(&["--format", "stream"], &f("s.qcow2"), &f("q.stream"));
    assert_eq!(
        stream_flags(&f("q.stream")) & 2,
        2,
        "qcow2 → stream lost the mark"
    );

    for (input, out) in [
        ("s.stream", "a.qcow2"),
        ("s.e2i", "b.qcow2"),
        ("s.qcow2", "c.qcow2"),
        ("s.raw", "d.qcow2"),
        ("old.e2i", "e.qcow2"),
    ] {
        convert("e2i-to-qcow2", &f(input), &f(out));
        assert_eq!(qcow2_flags(&f(out)), 1, "{input} → qcow2 lost the mark");
        assert_eq!(qemu_check(&f(out)), 0, "qemu-img check");
    }
    // Stock e2image reads a marked qcow2 (it ignores header extensions).
    run_ok(
        Command::new("e2image")
            .arg("-r")
            .arg(f("a.qcow2"))
            .arg(f("e2image.raw")),
    );
    assert!(std::fs::read(f("e2image.raw")).unwrap() == std::fs::read(f("s.raw")).unwrap());
    // Unscrambled images carry no mark anywhere.
    capture(&["-Q"], &fs, &f("plain.qcow2"));
    capture(&["--format", "stream"], &fs, &f("plain.stream"));
    assert_eq!(qcow2_flags(&f("plain.qcow2")), 0);
    assert_eq!(stream_flags(&f("plain.stream")) & 2, 0);
    let o = run(Command::new("dumpe2fs").arg("-h").arg(f("s.raw")));
    assert!(
        text(&o.stdout).contains("Last mounted on:          <scrambled by e2i-capture -s>"),
        "{}",
        text(&o.stdout)
    );
}

/// Re-encode the stream `from` as `to` with the scrambled flag set (what `-s` wrote before
/// the superblock mark existed, given a stream of an image without the mark).
fn flag_stream(from: &Path, to: &Path) {
    use e2i::stream::{StreamReader, StreamWriter, flags};
    let mut r = StreamReader::open(std::fs::File::open(from).unwrap()).unwrap();
    let mut h = r.header;
    h.flags |= flags::SCRAMBLED;
    let out = std::io::BufWriter::new(std::fs::File::create(to).unwrap());
    let mut w = StreamWriter::new(out, h, r.extents.clone()).unwrap();
    // Our version 2 captures send zeros as segments (never zero extents); version 1
    // names them in its map.
    let v2 = h.version == e2i::stream::Version::V2;
    r.for_each(1 << 20, &mut |e, data| match data {
        Some(d) => w.write_blocks(e.start, d),
        None if v2 => w.write_zeros(e.start, e.len),
        None => Ok(()),
    })
    .unwrap();
    let (mut out, _) = w.finish().unwrap();
    std::io::Write::flush(&mut out).unwrap();
}

/// Images scrambled before the superblock mark existed (a flagged stream, a normal image
/// with blank host fields) gain it when converted, so that it survives where the container
/// does not: stream → raw → capture → install is refused at the end of the chain.
#[test]
fn old_style_images_gain_the_superblock_mark() {
    let d = tempdir();
    let fs = report_fs(d.path(), "fs.img", UUID);
    let f = |n: &str| d.path().join(n);
    capture(&["-s", "-r"], &fs, &f("s.raw"));
    capture(&["-s"], &fs, &f("s.e2i"));
    std::fs::copy(f("s.raw"), f("old.raw")).unwrap();
    strip_superblock_mark(&f("old.raw"), 1024);
    capture(&["--format", "stream"], &f("old.raw"), &f("plain.stream"));
    assert_eq!(stream_flags(&f("plain.stream")) & 2, 0);
    flag_stream(&f("plain.stream"), &f("old.stream"));
    old_style_normal(&f("s.e2i"), &f("old.e2i"));
    let marked = |raw: &Path| {
        let o = run(Command::new("dumpe2fs").arg("-h").arg(raw));
        text(&o.stdout).contains("<scrambled by e2i-capture -s>")
    };
    assert!(!marked(&f("old.raw")));
    let convert = |t: &str, input: &str, out: &str| {
        let o = run(tool_cmd(t).arg("-q").arg(f(input)).arg(f(out)));
        ok(&o, &format!("{t} {input} {out}"));
    };
    convert("e2i-to-raw", "old.stream", "a.raw");
    convert("e2i-to-raw", "old.e2i", "b.raw");
    convert("e2i-to-qcow2", "old.stream", "c.qcow2");
    convert("e2i-to-qcow2", "old.e2i", "d.qcow2");
    convert("qcow2-to-raw", "c.qcow2", "c.raw");
    convert("qcow2-to-raw", "d.qcow2", "d.raw");
    for raw in ["a.raw", "b.raw", "c.raw", "d.raw"] {
        assert!(marked(&f(raw)), "{raw}: no superblock mark");
    }
    // (A normal image holds no directory or journal blocks: only the stream's are whole.)
    for raw in ["a.raw", "c.raw"] {
        let o = run(Command::new("e2fsck").arg("-fn").arg(f(raw)));
        ok(&o, &format!("e2fsck -fn {raw}"));
    }
    for q in ["c.qcow2", "d.qcow2"] {
        assert_eq!(qcow2_flags(&f(q)), 1, "{q}");
        assert_eq!(qemu_check(&f(q)), 0, "qemu-img check");
    }
    // Apart from the superblock, the conversion is the image's.
    let (a, old) = (
        std::fs::read(f("a.raw")).unwrap(),
        std::fs::read(f("old.raw")).unwrap(),
    );
    assert_eq!(a.len(), old.len());
    assert!(a[..1024] == old[..1024] && a[2048..] == old[2048..]);
    // The end of the chain: a normal image captured from the converted raw is refused.
    capture(&[], &f("a.raw"), &f("re.e2i"));
    assert_eq!(normal_flags(&f("re.e2i")), 1);
    refused(
        &install(&[], &fs, &f("re.e2i")),
        "install of the re-capture",
    );
}

/// Converters (and e2i-move's clones) onto regular files: an existing file holding the
/// image's filesystem is refused whether it would be replaced or updated in place (`-O`,
/// `-c`, `-n`); a new file, stdout, and a file holding another filesystem are fine.
#[test]
fn converters_refuse_files_holding_the_filesystem() {
    let d = tempdir();
    let fs = report_fs(d.path(), "fs.img", UUID);
    let other = report_fs(d.path(), "other.img", OTHER_UUID);
    let f = |n: &str| d.path().join(n);
    capture(&["-s", "--format", "stream"], &fs, &f("s.stream"));
    capture(&["-s", "-Q"], &fs, &f("s.qcow2"));
    capture(&["-s", "-r"], &fs, &f("s.raw"));
    // The filesystem at byte 1 MiB of a disk image.
    let mut disk = vec![0u8; 1 << 20];
    disk.extend(std::fs::read(&fs).unwrap());
    std::fs::write(f("disk.img"), &disk).unwrap();
    std::fs::copy(&fs, f("copy.img")).unwrap();
    let sums = [sha256(&fs), sha256(&f("disk.img")), sha256(&f("copy.img"))];
    // (tool, args, input, target)
    let refusals: &[(&str, &[&str], &str, &Path)] = &[
        ("e2i-to-raw", &[], "s.stream", &fs),
        ("e2i-to-raw", &["-c"], "s.stream", &fs),
        ("e2i-to-raw", &["-c", "-n"], "s.qcow2", &fs),
        ("e2i-to-raw", &["-O", "0"], "s.qcow2", &fs),
        ("e2i-to-raw", &["-O", "1M"], "s.stream", &f("disk.img")),
        (
            "e2i-to-raw",
            &["-n", "-O", "1M"],
            "s.stream",
            &f("disk.img"),
        ),
        ("qcow2-to-raw", &[], "s.qcow2", &fs),
        (
            "qcow2-to-raw",
            &["-c", "-O", "1M"],
            "s.qcow2",
            &f("disk.img"),
        ),
    ];
    for (t, args, input, target) in refusals {
        let o = run(tool_cmd(t).args(*args).arg(f(input)).arg(target));
        refused(&o, &format!("{t} {args:?} {input} {}", target.display()));
    }
    assert_eq!(
        [sha256(&fs), sha256(&f("disk.img")), sha256(&f("copy.img"))],
        sums,
        "a refusal wrote"
    );

    // Through a pipe, as in `e2i-capture -s DEV - | e2i-to-raw - DEV`.
    let mut cap = tool_cmd("e2i-capture")
        .args(["-q", "-s"])
        .arg(&fs)
        .arg("-")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let o = tool_cmd("e2i-to-raw")
        .args(["-c", "-"])
        .arg(&fs)
        .stdin(cap.stdout.take().unwrap())
        .output()
        .unwrap();
    let _ = cap.wait();
    // Refused either way: while the capture still reads fs.img, the converter may not hold
    // it for writing (busy); once the capture has finished, the image is scrambled.
    let err = text(&o.stderr);
    if err.contains("another e2i tool is reading or writing it") {
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    } else {
        refused(&o, "capture -s | e2i-to-raw - fs.img");
    }
    assert_eq!(sha256(&fs), sums[0]);

    // Allowed: a new file, stdout, another filesystem, and anything with --allow-scrambled.
    let allowed: &[(&str, &[&str], &str, &Path)] = &[
        ("e2i-to-raw", &[], "s.stream", &f("new.raw")),
        ("qcow2-to-raw", &["-c"], "s.qcow2", &other),
        (
            "e2i-to-raw",
            &["-O", "1M", "--allow-scrambled"],
            "s.stream",
            &f("disk.img"),
        ),
    ];
    for (t, args, input, target) in allowed {
        let o = run(tool_cmd(t).args(*args).arg(f(input)).arg(target));
        ok(&o, &format!("{t} {args:?} {input} {}", target.display()));
    }
    run_ok(tool_cmd("qcow2-to-raw").arg(f("s.qcow2")).arg("-"));
    // The new file holds the scrambled filesystem, marked: writing it again over itself (a
    // scratch copy) is fine.
    run_ok(
        tool_cmd("e2i-to-raw")
            .arg("-c")
            .arg(f("s.stream"))
            .arg(f("new.raw")),
    );
}

/// On block devices (loop devices; root only): every converter, every input kind refuses a
/// device holding the image's filesystem, also in a dry run, and writes onto a device
/// holding another one; `e2i-capture -s` refuses a clone of SOURCE. Old-style scrambled
/// qcow2 images (no mark) are refused by the blank label and last-mounted path.
#[test]
fn converters_refuse_a_device_holding_the_filesystem() {
    if !is_root() {
        eprintln!("converters_refuse_a_device_holding_the_filesystem: needs root; not run");
        return;
    }
    let d = tempdir();
    let fs = report_fs(d.path(), "fs.img", UUID);
    let f = |n: &str| d.path().join(n);
    capture(&["-s", "--format", "stream"], &fs, &f("s.stream"));
    capture(&["-s"], &fs, &f("s.e2i"));
    capture(&["-s", "-Q"], &fs, &f("s.qcow2"));
    capture(&["-s", "-r"], &fs, &f("s.raw"));
    // An old-style scrambled qcow2: the scrambled raw without its mark, captured plainly.
    std::fs::copy(f("s.raw"), f("old.raw")).unwrap();
    strip_superblock_mark(&f("old.raw"), 1024);
    capture(&["-Q"], &f("old.raw"), &f("old.qcow2"));
    assert_eq!(qcow2_flags(&f("old.qcow2")), 0);

    std::fs::copy(&fs, f("dev.img")).unwrap();
    let dev = Loop::new(&f("dev.img"), &[]);
    // Another filesystem; the loop device's file is a copy, so that the pristine one can be
    // put back before each case.
    let other_img = report_fs(d.path(), "other.img", OTHER_UUID);
    std::fs::copy(&other_img, f("other-dev.img")).unwrap();
    let other = Loop::new(&f("other-dev.img"), &[]);
    let before = contents(dev.path());
    let sum = sha256(dev.path());
    let cases: &[(&str, &[&str], &str)] = &[
        ("e2i-to-raw", &[], "s.stream"),
        ("e2i-to-raw", &["-c"], "s.e2i"),
        ("e2i-to-raw", &["-n"], "s.qcow2"),
        ("e2i-to-raw", &["-c", "-n"], "s.raw"),
        ("e2i-to-raw", &[], "old.qcow2"),
        ("qcow2-to-raw", &[], "s.qcow2"),
        ("qcow2-to-raw", &["-n"], "old.qcow2"),
    ];
    for (t, args, input) in cases {
        let what = format!("{t} {args:?} {input}");
        let o = run(tool_cmd(t).args(*args).arg(f(input)).arg(&dev.0));
        let err = refused(&o, &what);
        if input.starts_with("old") {
            assert!(err.contains("probably") && err.contains("MYLABEL"), "{err}");
        }
        assert_eq!(sha256(dev.path()), sum, "{what}: the device changed");
        // Another filesystem (fresh for each case) takes it.
        std::fs::write(other.path(), std::fs::read(&other_img).unwrap()).unwrap();
        let o = run(tool_cmd(t).args(*args).arg(f(input)).arg(&other.0));
        ok(&o, &format!("{what} onto another filesystem"));
    }
    // e2i-capture -s onto a clone of SOURCE.
    let o = run(tool_cmd("e2i-capture")
        .args(["-s", "-r"])
        .arg(&fs)
        .arg(&dev.0));
    refused(&o, "e2i-capture -s -r onto a clone");
    assert_eq!(sha256(dev.path()), sum);
    assert_eq!(contents(dev.path()), before);
    // --allow-scrambled writes; the device then holds the (marked) scrambled filesystem,
    // over which the image may go again without the flag.
    run_ok(
        tool_cmd("e2i-to-raw")
            .arg("--allow-scrambled")
            .arg(f("s.stream"))
            .arg(&dev.0),
    );
    assert!(!contents(dev.path()).contains("MYLABEL"));
    run_ok(
        tool_cmd("qcow2-to-raw")
            .arg("-c")
            .arg(f("s.qcow2"))
            .arg(&dev.0),
    );
}
