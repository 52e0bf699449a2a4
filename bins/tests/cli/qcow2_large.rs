//! qcow2 images of filesystems past qemu's limits for one cluster per block (an L1 table of
//! 32 MiB: 8 TiB with 4 KiB blocks, 512 GiB with 1 KiB blocks): e2i writes larger clusters,
//! which qemu-img checks clean and converts, like our qcow2-to-raw, to exactly the bytes of
//! `e2image -r`. Sparse filesystems in the temporary folder (ext4 holds files up to 16 TiB);
//! few inodes (and bigalloc for the 4 KiB one) keep mkfs and e2image quick.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::qcow2::read_head;
use super::util::*;

/// A sparse filesystem of `blocks` blocks with `mkfs_opts`, a folder and two files written
/// with debugfs.
fn big_fs(d: &Path, name: &str, blocks: u64, bs: u64, mkfs_opts: &[&str]) -> PathBuf {
    let img = d.join(name);
    std::fs::File::create(&img)
        .unwrap()
        .set_len(blocks * bs)
        .unwrap();
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", &bs.to_string(), "-N", "65536"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .args(mkfs_opts)
        .arg(&img)
        .arg(blocks.to_string())
        .env("E2FSPROGS_FAKE_TIME", "1700000000"));
    let data = d.join(format!("{name}.data"));
    // Not a multiple of any block size; no zero bytes.
    let bytes: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&data, bytes).unwrap();
    for req in [
        "mkdir /d1".to_string(),
        format!("write {} /d1/data", data.display()),
        format!("write {} /top", data.display()),
    ] {
        sh(Command::new("debugfs").args(["-w", "-R", &req]).arg(&img));
    }
    img
}

/// log2 of the cluster size in a qcow2 header.
fn cluster_bits(q: &Path) -> u32 {
    e2i::bytes::be::u32(&read_head(q), 20)
}

/// `e2i-capture -Q IMG Q`, whose clusters are `2^bits` bytes.
fn capture_q(img: &Path, q: &Path, bits: u32) {
    sh(tool_cmd("e2i-capture").arg("-Q").arg(img).arg(q));
    assert_eq!(cluster_bits(q), bits, "{}", img.display());
}

/// `qemu-img convert -O raw q out`, left on disk (a multi-TiB sparse file: never read whole).
fn qemu_raw(q: &Path, out: &Path) {
    sh(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(q)
        .arg(out));
}

/// `q` is clean and converts, with qemu-img and with qcow2-to-raw, to the bytes of `want`.
fn converts_to(q: &Path, want: &Path) {
    assert_eq!(qemu_check(q), 0, "qemu-img check {}", q.display());
    let out = q.with_extension("conv");
    qemu_raw(q, &out);
    let n = same_sparse(want, &out).unwrap_or_else(|e| panic!("qemu-img {}: {e}", q.display()));
    assert!(n > 0);
    std::fs::remove_file(&out).unwrap();
    sh(tool_cmd("qcow2-to-raw").arg(q).arg(&out));
    same_sparse(want, &out).unwrap_or_else(|e| panic!("qcow2-to-raw {}: {e}", q.display()));
    std::fs::remove_file(&out).unwrap();
}

/// qcow2-to-raw's planning and copying of `q` (whose L2 tables add up to several MiB) keep
/// a bounded heap: the L2 cache, not every table met; the copy adds its buffer pool. Counted
/// on this thread (the copy's reads run on a second one, whose buffers this one makes).
fn conversion_heap_is_bounded(q: &Path, want: &Path) {
    use crate::ALLOC;
    use e2i::ops::qcow2_to_raw::{convert, plan};
    let ranges = e2i::qcow2::Qcow2Image::open(q)
        .unwrap()
        .stored_ranges(false)
        .unwrap()
        .len();
    assert!(
        ranges > 4000,
        "{ranges} stored ranges: too few L2 tables to tell"
    );
    let mut peaks = Vec::new();
    for in_place in [false, true] {
        ALLOC.reset_peak();
        let base = ALLOC.peak();
        let image = e2i::qcow2::Qcow2Image::open(q).unwrap();
        // In place: with the filesystem's selection, read through the cache by the scan.
        let p = plan(&image, in_place, false).unwrap();
        peaks.push(("plan", in_place, ALLOC.peak() - base));
        if !in_place {
            let out = q.with_extension("heap.raw");
            let f = std::fs::File::create(&out).unwrap();
            let target = e2i::sparse::RawTarget::NewFile {
                file: &f,
                dest_offset: 0,
            };
            ALLOC.reset_peak();
            let base = ALLOC.peak();
            convert(&image, &p, target, &mut e2i::progress::NoProgress).unwrap();
            peaks.push(("convert", false, ALLOC.peak() - base));
            drop(f);
            same_sparse(want, &out).unwrap();
            std::fs::remove_file(&out).unwrap();
        }
    }
    // The copy's pool is 6 MiB; the L2 cache (here 512 KiB) and the header cluster 1 MiB
    // at most; the rest follows the stored runs and, in place, the filesystem's metadata
    // runs (65536 groups here: 4 MiB). Caching every table met would add 8 MiB.
    for &(what, in_place, peak) in &peaks {
        let limit = match (what, in_place) {
            ("plan", false) => 2 << 20,
            _ => 7 << 20,
        };
        assert!(
            peak < limit,
            "{what} (in place {in_place}): {peak} bytes; {peaks:?}"
        );
    }
}

/// `e2i-capture SRC - | e2i-to-qcow2 [extra] - OUT`.
fn via_stream(src: &Path, extra: &[&str], out: &Path) {
    let mut cap = tool_cmd("e2i-capture")
        .arg(src)
        .arg("-")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let o = tool_cmd("e2i-to-qcow2")
        .args(extra)
        .arg("-")
        .arg(out)
        .stdin(cap.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(cap.wait().unwrap().success());
    assert!(
        o.status.success(),
        "e2i-to-qcow2: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// 9 TiB with 4 KiB blocks: 8 KiB clusters, the same image through a pipe, compressed
/// (deflate and zstd) clusters, and an overlay on it for a changed filesystem.
#[test]
fn nine_tib_filesystem_gets_8_kib_clusters() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let img = big_fs(
        d.path(),
        "fs9t.img",
        9 << 28,
        4096,
        &["-O", "64bit,bigalloc,^resize_inode", "-C", "1M"],
    );
    let want = p("e2image.raw");
    e2image(&["-r"], &img, &want);
    let q = p("fs.qcow2");
    capture_q(&img, &q, 13);
    converts_to(&q, &want);
    // From a stream, to a pipe: the same bytes.
    let piped = p("piped.qcow2");
    let o = sh(Command::new("sh").arg("-c").arg(format!(
        "{} {} - | {} - - > {}",
        tool("e2i-capture").display(),
        img.display(),
        tool("e2i-to-qcow2").display(),
        piped.display()
    )));
    assert!(o.status.success());
    assert!(std::fs::read(&piped).unwrap() == std::fs::read(&q).unwrap());
    for c in ["deflate", "zstd"] {
        let z = p(&format!("{c}.qcow2"));
        sh(tool_cmd("e2i-capture")
            .args(["-Q", &format!("--compress={c}")])
            .arg(&img)
            .arg(&z));
        assert_eq!(cluster_bits(&z), 13, "{c}");
        converts_to(&z, &want);
    }
    // The dry run plans the same image.
    let o = sh(tool_cmd("e2i-to-qcow2")
        .arg("-n")
        .arg(&img)
        .arg(p("never.qcow2")));
    let said =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    let size = std::fs::metadata(&q).unwrap().len();
    assert!(
        said.contains("cluster size 8192") && said.contains(&format!("{size} bytes")),
        "{said}"
    );
    // An overlay for the filesystem changed: a file removed, one added.
    sh(Command::new("debugfs")
        .args(["-w", "-R", "rm /top"])
        .arg(&img));
    sh(Command::new("debugfs")
        .args([
            "-w",
            "-R",
            &format!("write {} /d1/new", p("fs9t.img.data").display()),
        ])
        .arg(&img));
    let full = p("full2.qcow2");
    sh(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&full));
    let want2 = p("full2.raw");
    qemu_raw(&full, &want2);
    let ov = p("ov.qcow2");
    sh(tool_cmd("e2i-capture")
        .args(["-Q", "--backing", "fs.qcow2"])
        .arg(&img)
        .arg(&ov));
    assert_eq!(cluster_bits(&ov), 13);
    assert!(std::fs::metadata(&ov).unwrap().len() < size);
    converts_to(&ov, &want2);
}

/// 1 KiB blocks, an odd block count just past 512 GiB: 2 KiB clusters, the last one half
/// outside the disk; an overlay from a stream on a base with 64 KiB clusters (made by
/// qemu-img), and one with 1 KiB clusters on a base with 2 KiB clusters.
#[test]
fn one_kib_blocks_past_512_gib_get_2_kib_clusters() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let blocks = (512 << 20) + 51_203;
    let img = big_fs(
        d.path(),
        "fs1k.img",
        blocks,
        1024,
        &["-O", "64bit,^has_journal,^resize_inode"],
    );
    let want = p("e2image.raw");
    e2image(&["-r"], &img, &want);
    let q = p("fs.qcow2");
    capture_q(&img, &q, 11);
    converts_to(&q, &want);
    conversion_heap_is_bounded(&q, &want);
    let base64k = p("base64k.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2", "-o", "cluster_size=65536"])
        .arg(&want)
        .arg(&base64k));
    sh(Command::new("debugfs")
        .args(["-w", "-R", "rm /d1/data"])
        .arg(&img));
    sh(Command::new("debugfs")
        .args(["-w", "-R", "mkdir /d2"])
        .arg(&img));
    let full = p("full2.qcow2");
    sh(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&full));
    let want2 = p("full2.raw");
    qemu_raw(&full, &want2);
    for (base, name) in [(&base64k, "ov64k.qcow2"), (&q, "ov2k.qcow2")] {
        let ov = p(name);
        via_stream(&img, &["--backing", base.to_str().unwrap()], &ov);
        assert_eq!(cluster_bits(&ov), 11, "{name}");
        converts_to(&ov, &want2);
    }
}

/// At exactly 8 TiB one cluster per 4 KiB block still fits (an L1 table of exactly 32 MiB):
/// clusters stay 4 KiB. One bigalloc cluster more needs 8 KiB clusters.
#[test]
fn the_8_tib_threshold() {
    let d = tempdir();
    for (blocks, bits) in [(1u64 << 31, 12), ((1 << 31) + 256, 13)] {
        let img = d.path().join(format!("fs{blocks}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(blocks * 4096)
            .unwrap();
        sh(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-N", "65536", "-C", "1M"])
            .args(["-O", "64bit,bigalloc,^has_journal,^resize_inode"])
            .args(["-E", "lazy_itable_init=1,nodiscard"])
            .arg(&img));
        let q = img.with_extension("qcow2");
        capture_q(&img, &q, bits);
        let raw = img.with_extension("raw");
        sh(tool_cmd("e2i-capture").arg("-r").arg(&img).arg(&raw));
        converts_to(&q, &raw);
    }
}

/// `-Q` of an empty 2 TiB filesystem keeps the heap of a plain capture when clusters are
/// compressed: the image's head (an L1 table of 8 MiB here) goes out through a buffer.
/// Counted on this thread, where the capture runs (its reader thread's buffers are made here).
#[test]
fn compressed_capture_heap_stays_that_of_a_plain_one() {
    use crate::ALLOC;
    use e2i::ops::capture::{CaptureOptions, Format, Output, capture};
    use e2i::qcow2::header::ClusterCompression;
    let d = tempdir();
    let img = d.path().join("fs2t.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(2 << 40)
        .unwrap();
    sh(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ])
        .arg(&img));
    let mut peaks = Vec::new();
    for compress in [
        None,
        Some(ClusterCompression::Deflate),
        Some(ClusterCompression::Zstd),
    ] {
        let out = d.path().join("fs.qcow2");
        let f = std::fs::File::create(&out).unwrap();
        let opts = CaptureOptions {
            compress,
            ..Default::default()
        };
        ALLOC.reset_peak();
        let base = ALLOC.peak();
        capture(
            &img,
            &opts,
            Format::Qcow2,
            Output::NewFile(&f),
            &mut e2i::progress::NoProgress,
        )
        .unwrap();
        peaks.push((compress, ALLOC.peak() - base));
        drop(f);
        assert_eq!(qemu_check(&out), 0, "{compress:?}");
        std::fs::remove_file(&out).unwrap();
    }
    // Measured: 7.1 MiB plain, 8.6 MiB deflate, 8.3 MiB zstd (17.5 MiB deflate when the
    // head was gathered in memory). The block map and pieces' pool dominate.
    for &(compress, peak) in &peaks {
        assert!(peak < 12 << 20, "{compress:?}: {peak} bytes; {peaks:?}");
    }
}
