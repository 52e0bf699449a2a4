//! qcow2: e2i-capture -Q, e2i-to-qcow2, qcow2-to-raw and qcow2 capture sources, judged
//! against e2image, qemu-img convert and qemu-img check.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::util::*;

/// Our qcow2 of `img` (with `extra` capture options) must be clean and expand, with qemu-img
/// and with stock e2image, to e2image's raw image; returns (plain size, compressed size).
fn check_capture(d: &Path, img: &Path, all: bool) -> (u64, u64) {
    let tag = img.file_name().unwrap().to_string_lossy().into_owned() + if all { "-a" } else { "" };
    let flags: &[&str] = if all { &["-ra"] } else { &["-r"] };
    let reference = e2image_bytes(flags, img, &d.join(format!("{tag}.ref")));
    let q = d.join(format!("{tag}.qcow2"));
    let mut cmd = tool_cmd("e2i-capture");
    cmd.arg("-Q");
    if all {
        cmd.arg("-a");
    }
    sh(cmd.arg(img).arg(&q));
    assert_eq!(qemu_check(&q), 0, "{tag}: qemu-img check");
    assert!(
        qemu_to_raw(&q, &d.join(format!("{tag}.conv"))) == reference,
        "{tag}: qemu-img convert"
    );
    assert!(
        e2image_bytes(&["-r"], &q, &d.join(format!("{tag}.back"))) == reference,
        "{tag}: stock e2image -r of our qcow2"
    );
    // One image whatever the way: the file (read once, zeros skipped as found), stdout (zeros
    // found first), from a stream of either version to a file (version 2: as it arrives) or
    // stdout (version 2: kept until verified); the dry run names its size.
    let image = read(&q);
    let streams: Vec<PathBuf> = ["2", "1"]
        .iter()
        .map(|v| {
            let stream = d.join(format!("{tag}.v{v}.e2i"));
            let mut cmd = tool_cmd("e2i-capture");
            if all {
                cmd.arg("-a");
            }
            cmd.args(["--stream-version", v]);
            std::fs::write(&stream, sh(cmd.arg(img).arg("-")).stdout).unwrap();
            let raw = d.join(format!("{tag}.v{v}.raw"));
            sh(tool_cmd("e2i-to-raw").arg(&stream).arg(&raw));
            assert!(read(&raw) == reference, "{tag}: version {v} stream to raw");
            stream
        })
        .collect();
    for input in [img]
        .into_iter()
        .chain(streams.iter().map(PathBuf::as_path))
    {
        let to_qcow2 = || {
            let mut c = tool_cmd("e2i-to-qcow2");
            if all && input == img {
                c.arg("-a");
            }
            c
        };
        let o = sh(to_qcow2().arg(input).arg("-"));
        assert!(
            o.stdout == image,
            "{tag}: {} to stdout differs",
            input.display()
        );
        let f = d.join(format!("{tag}.again.qcow2"));
        let _ = std::fs::remove_file(&f);
        let o = sh(to_qcow2().args(["-n", "--json"]).arg(input).arg(&f));
        let said = format!("\"output_bytes\":{},", image.len());
        assert!(
            text(&o.stderr).contains(&said),
            "{tag}: dry run {}",
            text(&o.stderr)
        );
        sh(to_qcow2().arg(input).arg(&f));
        assert!(
            read(&f) == image,
            "{tag}: {} to a file differs",
            input.display()
        );
    }
    let z = d.join(format!("{tag}.z.qcow2"));
    let mut cmd = tool_cmd("e2i-capture");
    cmd.args(["-Q", "--compress"]);
    if all {
        cmd.arg("-a");
    }
    sh(cmd.arg(img).arg(&z));
    assert_eq!(qemu_check(&z), 0, "{tag}: qemu-img check (compressed)");
    for stream in &streams {
        let f = d.join(format!("{tag}.z2.qcow2"));
        let _ = std::fs::remove_file(&f);
        sh(tool_cmd("e2i-to-qcow2")
            .arg("--compress")
            .arg(stream)
            .arg(&f));
        assert!(
            read(&f) == read(&z),
            "{tag}: {} compressed",
            stream.display()
        );
    }
    assert!(
        qemu_to_raw(&z, &d.join(format!("{tag}.zconv"))) == reference,
        "{tag}: compressed content"
    );
    let (a, b) = (
        std::fs::metadata(&q).unwrap().len(),
        std::fs::metadata(&z).unwrap().len(),
    );
    assert!(b < a, "{tag}: compressed {b} not smaller than {a}");
    eprintln!(
        "{tag}: qcow2 {a} bytes, compressed {b} bytes ({:.2})",
        b as f64 / a as f64
    );
    (a, b)
}

#[test]
fn capture_qcow2_is_clean_and_matches_e2image() {
    let d = tempdir();
    for (name, size, opts) in [
        ("b1k", "8M", &["-b", "1024"][..]),
        ("b2k", "8M", &["-b", "2048"][..]),
        ("b4k", "16M", &["-b", "4096"][..]),
        ("b64k", "64M", &["-b", "65536"][..]),
        ("no64", "16M", &["-O", "^64bit"][..]),
        ("b64bit", "16M", &["-O", "64bit"][..]),
        ("bigalloc", "32M", &["-O", "bigalloc", "-C", "16384"][..]),
    ] {
        let img = mkfs(d.path(), name, size, opts);
        check_capture(d.path(), &img, false);
        check_capture(d.path(), &img, true);
    }
}

#[test]
fn nearly_full_fs_with_all_data() {
    // No journal, few inodes: almost every block holds data, so the qcow2 is larger than the
    // virtual disk and only tables placed before the data stay readable by stock e2image.
    let d = tempdir();
    let tree = d.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = noise(&mut x, 32720 << 10);
    std::fs::write(tree.join("big"), data).unwrap();
    let img = d.path().join("full.img");
    sh(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-m",
            "0",
            "-N",
            "16",
            "-O",
            "^has_journal,^resize_inode",
        ])
        .args(["-E", "root_owner=0:0", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("32M")
        .env("E2FSPROGS_FAKE_TIME", "1700000000"));
    let q = d.path().join("full.qcow2");
    sh(tool_cmd("e2i-capture").arg("-Qa").arg(&img).arg(&q));
    assert!(
        std::fs::metadata(&q).unwrap().len() > 32 << 20,
        "image not larger than the disk"
    );
    check_capture(d.path(), &img, true);
}

#[test]
fn to_qcow2_tool_file_and_stdout() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let reference = e2image_bytes(&["-r"], &img, &d.path().join("ref.raw"));
    let q = d.path().join("o.qcow2");
    sh(tool_cmd("e2i-to-qcow2").arg(&img).arg(&q));
    assert_eq!(qemu_check(&q), 0);
    assert!(qemu_to_raw(&q, &d.path().join("c.raw")) == reference);
    // The sequential writer gives the same bytes to a pipe.
    let o = sh(tool_cmd("e2i-to-qcow2").arg(&img).arg("-"));
    assert!(o.stdout == read(&q), "stdout qcow2 differs from the file");
    let o = run(tool_cmd("e2i-to-qcow2")
        .arg("--compress")
        .arg(&img)
        .arg("-"));
    assert_eq!(o.status.code(), Some(2));
    let o = run(tool_cmd("e2i-capture")
        .args(["-Q", "--compress"])
        .arg(&img)
        .arg("-"));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);
}

/// qcow2 files made by qemu-img with every option the reader must handle, and by e2image.
fn qcow2_variants(d: &Path, raw: &Path, img: &Path) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    let e = d.join("e2image.qcow2");
    sh(Command::new("e2image").arg("-Q").arg(img).arg(&e));
    v.push(("e2image -Q".to_string(), e));
    for o in [
        "compat=0.10",
        "compat=1.1",
        "cluster_size=512",
        "cluster_size=2M",
        "refcount_bits=1",
        "refcount_bits=64",
        "-c",
    ] {
        let q = d.join(format!("v{}.qcow2", v.len()));
        let mut cmd = Command::new("qemu-img");
        cmd.args(["convert", "-O", "qcow2"]);
        if o == "-c" {
            cmd.arg("-c");
        } else {
            cmd.args(["-o", o]);
        }
        sh(cmd.arg(raw).arg(&q));
        v.push((o.to_string(), q));
    }
    let s = d.join("snap.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2", "-o", "compat=1.1"])
        .arg(raw)
        .arg(&s));
    sh(Command::new("qemu-img")
        .args(["snapshot", "-c", "one"])
        .arg(&s));
    // Change the active layer after the snapshot: data, and a zero cluster.
    sh(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 4096 64k",
            "-c",
            "write -z 1M 64k",
        ])
        .arg(&s));
    v.push(("snapshot".to_string(), s));
    v
}

#[test]
fn qcow2_to_raw_matches_qemu_img() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "16M", &[]);
    let raw = d.path().join("all.raw");
    e2image(&["-ra"], &img, &raw);
    for (what, q) in qcow2_variants(d.path(), &raw, &img) {
        let expect = qemu_to_raw(&q, &d.path().join("expect.raw"));
        let out = d.path().join("out.raw");
        let _ = std::fs::remove_file(&out);
        sh(tool_cmd("qcow2-to-raw").arg(&q).arg(&out));
        assert!(
            read(&out) == expect,
            "{what}: qcow2-to-raw differs from qemu-img convert"
        );
        let o = sh(tool_cmd("qcow2-to-raw").arg(&q).arg("-"));
        assert!(o.stdout == expect, "{what}: stdout differs");
    }
}

/// Virtual disks whose size is an odd number of 512-byte sectors, with 512-byte, 64 KiB and
/// 2 MiB clusters: the raw image (copied in blocks of 1 KiB to 64 KiB) ends where the disk
/// ends, data in the last sector included, and an in-place update touches nothing past it.
#[test]
fn qcow2_to_raw_of_odd_sizes_and_cluster_sizes() {
    let d = tempdir();
    for (cluster, size, writes) in [
        (
            "512",
            1536u64,
            &["write -P 0x11 0 512", "write -P 0x5a 1024 512"][..],
        ),
        (
            "65536",
            100 * 1024 + 512,
            &["write -P 0x22 4096 8k", "write -P 0x5b 102400 512"][..],
        ),
        (
            "2M",
            5 * 1024 * 1024 + 512,
            &["write -P 0x33 2101248 4k", "write -P 0x5c 5242880 512"][..],
        ),
    ] {
        let q = d.path().join(format!("odd-{cluster}.qcow2"));
        sh(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!("cluster_size={cluster}"))
            .arg(&q)
            .arg(size.to_string()));
        let mut io = Command::new("qemu-io");
        io.args(["-f", "qcow2"]);
        for w in writes {
            io.args(["-c", w]);
        }
        sh(io.arg(&q));
        let expect = qemu_to_raw(&q, &d.path().join("expect.raw"));
        assert_eq!(expect.len() as u64, size, "{cluster}: qemu-img's size");
        assert!(
            expect[size as usize - 1] != 0,
            "{cluster}: last sector written"
        );
        let out = d.path().join("out.raw");
        let _ = std::fs::remove_file(&out);
        sh(tool_cmd("qcow2-to-raw").arg(&q).arg(&out));
        assert!(read(&out) == expect, "{cluster}: new file differs");
        let o = sh(tool_cmd("qcow2-to-raw").arg(&q).arg("-"));
        assert!(o.stdout == expect, "{cluster}: stdout differs");
        // In place over a longer file of 0xAA: the disk's bytes inside, nothing past it.
        let target = d.path().join("target.bin");
        std::fs::write(&target, vec![0xAAu8; size as usize + 4096]).unwrap();
        sh(tool_cmd("qcow2-to-raw")
            .args(["-O", "0"])
            .arg(&q)
            .arg(&target));
        let got = read(&target);
        assert_eq!(got.len() as u64, size + 4096, "{cluster}: target length");
        assert!(
            got[size as usize..].iter().all(|&b| b == 0xAA),
            "{cluster}: bytes past the disk were written"
        );
        for w in writes {
            // "write -P PATTERN OFFSET LEN": the written bytes arrive.
            let f: Vec<&str> = w.split_whitespace().collect();
            let at: usize = f[3].parse().unwrap();
            let len = match f[4].strip_suffix('k') {
                Some(k) => k.parse::<usize>().unwrap() * 1024,
                None => f[4].parse().unwrap(),
            };
            assert!(
                got[at..at + len] == expect[at..at + len],
                "{cluster}: {w} not in place"
            );
        }
    }
}

#[test]
fn capture_from_qcow2_sources() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "16M", &[]);
    let reference = e2image_bytes(&["-r"], &img, &d.path().join("ref.raw"));
    let raw = d.path().join("all.raw");
    e2image(&["-ra"], &img, &raw);
    let mut sources = vec![d.path().join("e.qcow2"), d.path().join("v3.qcow2")];
    sh(Command::new("e2image").arg("-Q").arg(&img).arg(&sources[0]));
    sh(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2", "-o", "compat=1.1"])
        .arg(&raw)
        .arg(&sources[1]));
    let c = d.path().join("c.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-c", "-O", "qcow2"])
        .arg(&raw)
        .arg(&c));
    sources.push(c);
    for s in &sources {
        let out = d.path().join("cap.raw");
        let _ = std::fs::remove_file(&out);
        sh(tool_cmd("e2i-capture").arg("-r").arg(s).arg(&out));
        assert!(read(&out) == reference, "capture from {}", s.display());
    }
    // -o applies inside the virtual disk: a filesystem at 1 MiB of a qcow2 disk.
    let mut disk = vec![0u8; 1 << 20];
    disk.extend(read(&raw));
    let dr = d.path().join("disk.raw");
    std::fs::write(&dr, disk).unwrap();
    let dq = d.path().join("disk.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&dr)
        .arg(&dq));
    let out = d.path().join("off.raw");
    sh(tool_cmd("e2i-capture")
        .args(["-r", "-o", "1M"])
        .arg(&dq)
        .arg(&out));
    assert!(read(&out) == reference, "capture with -o inside a qcow2");
}

#[test]
fn qcow2_input_on_stdin_plain_gzip_bzip2() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let reference = e2image_bytes(&["-r"], &img, &d.path().join("ref.raw"));
    let q = d.path().join("e.qcow2");
    sh(Command::new("e2image").arg("-Q").arg(&img).arg(&q));
    for wrap in ["cat", "gzip -c", "bzip2 -c"] {
        let out = d.path().join("o.raw");
        let _ = std::fs::remove_file(&out);
        let script = format!("{wrap} < \"$1\" | \"$2\" - \"$3\"");
        sh(Command::new("sh")
            .args(["-c", &script, "_"])
            .arg(&q)
            .arg(tool("qcow2-to-raw"))
            .arg(&out));
        assert!(read(&out) == reference, "{wrap}");
        if wrap != "cat" {
            // A wrapped file is accepted too.
            let w = d.path().join("w.qcow2.x");
            sh(Command::new("sh")
                .args(["-c", &format!("{wrap} < \"$1\" > \"$2\""), "_"])
                .arg(&q)
                .arg(&w));
            let _ = std::fs::remove_file(&out);
            sh(tool_cmd("qcow2-to-raw").arg(&w).arg(&out));
            assert!(read(&out) == reference, "{wrap} file");
        }
    }
}

#[test]
fn qcow2_to_raw_in_place_check_and_dry_run() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let q = d.path().join("v3.qcow2");
    let raw = d.path().join("all.raw");
    e2image(&["-ra"], &img, &raw);
    sh(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2", "-o", "compat=1.1"])
        .arg(&raw)
        .arg(&q));
    let image = read(&raw);
    let m = 1usize << 20;
    // The target: a full copy of the raw image at 1 MiB, surrounded by 0xAA.
    let mut t = vec![0xAAu8; m];
    t.extend(&image);
    t.extend(vec![0xAAu8; m]);
    let target = d.path().join("target.bin");
    std::fs::write(&target, &t).unwrap();
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    // -c on an identical target writes nothing at all.
    let before = mtime(&target);
    std::thread::sleep(std::time::Duration::from_millis(20));
    sh(tool_cmd("qcow2-to-raw")
        .args(["-c", "-O", "1M"])
        .arg(&q)
        .arg(&target));
    assert_eq!(mtime(&target), before, "-c wrote to an identical target");
    assert!(read(&target) == t);
    // Damage some bytes inside and outside the range; -O restores the inside only.
    let mut damaged = t.clone();
    damaged[m + 1024..m + 3072].fill(0x11);
    damaged[10] = 0x22;
    std::fs::write(&target, &damaged).unwrap();
    let o = sh(tool_cmd("qcow2-to-raw")
        .args(["-n", "-c", "-O", "1M"])
        .arg(&q)
        .arg(&target));
    // Only the damaged cluster (64 KiB, qemu-img's default) is listed, then e2image's line.
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        listed.starts_with("Writing block 0 (1 block)\n")
            && listed.lines().count() == 2
            && listed.ends_with("blocks already contained the data to be copied\n"),
        "dry run lists the writes: {listed}"
    );
    assert!(read(&target) == damaged, "dry run changed the target");
    sh(tool_cmd("qcow2-to-raw")
        .args(["-c", "-O", "1M"])
        .arg(&q)
        .arg(&target));
    let got = read(&target);
    assert_eq!(got.len(), t.len(), "target length changed");
    assert!(got[m..m + image.len()] == image[..], "range not restored");
    assert_eq!(got[10], 0x22, "byte outside the range touched");
    // -n creates nothing.
    let none = d.path().join("none.raw");
    sh(tool_cmd("qcow2-to-raw").arg("-n").arg(&q).arg(&none));
    assert!(!none.exists());
    // A new output is sparse where the disk is unallocated.
    let out = d.path().join("new.raw");
    sh(tool_cmd("qcow2-to-raw").arg(&q).arg(&out));
    assert!(read(&out) == image);
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&out).unwrap().blocks() * 512 < image.len() as u64);
}

/// Mutate the header or tables of a valid image.
fn hostile(good: &[u8], kind: &str) -> Vec<u8> {
    let mut b = good.to_vec();
    use e2i::bytes::be;
    let be64 = |b: &[u8], o: usize| be::u64(b, o);
    let put32 = |b: &mut Vec<u8>, o: usize, v: u32| be::set_u32(b, o, v);
    let put64 = |b: &mut Vec<u8>, o: usize, v: u64| be::set_u64(b, o, v);
    let cs = 1usize << be::u32(&b, 20);
    let l1 = be64(&b, 40) as usize;
    let e0 = be64(&b, l1);
    let l2 = (e0 & 0x00ff_ffff_ffff_fe00) as usize;
    let first_data = (0..cs / 8)
        .map(|i| l2 + 8 * i)
        .find(|&o| be64(&b, o) != 0)
        .unwrap();
    let len = b.len() as u64;
    match kind {
        "l1_size 2^32-1" => put32(&mut b, 36, u32::MAX),
        "cluster_bits 40" => put32(&mut b, 20, 40),
        "size 2^64-1" => put64(&mut b, 24, u64::MAX),
        "L1 past EOF" => put64(&mut b, 40, len + cs as u64),
        "L2 past EOF" => put64(&mut b, l1, (len + 8 * cs as u64) | 1 << 63),
        "L2 far past EOF" => put64(&mut b, l1, 1 << 50 | 1 << 63),
        "L2 on the L1 table" => put64(&mut b, l1, l1 as u64 | 1 << 63),
        "L2 shared by two L1 entries" => put64(&mut b, l1 + 8, e0),
        "data on an L2 table" => put64(&mut b, first_data, l2 as u64 | 1 << 63),
        "data past EOF" => put64(&mut b, first_data, (len + 4 * cs as u64) | 1 << 63),
        "data far past EOF" => put64(&mut b, first_data, 1 << 50 | 1 << 63),
        "compressed garbage" => put64(&mut b, first_data, 1 << 62 | (cs as u64 + 16)),
        "reserved L1 bits" => put64(&mut b, l1, e0 | 1 << 60),
        "truncated in L2" => b.truncate(l2 + 100),
        "truncated in data" => b.truncate(b.len() / 2 + 17),
        "truncated header" => b.truncate(50),
        "backing file" => {
            put64(&mut b, 8, 200);
            put32(&mut b, 16, 5);
        }
        "encrypted" => put32(&mut b, 32, 1),
        "version 9" => put32(&mut b, 4, 9),
        other => panic!("{other}"),
    }
    b
}

/// Open `b` in-process and read all of it: the first error.
fn read_all_in_process(b: Vec<u8>) -> Result<(), e2i::Error> {
    use e2i::io::ReadAt;
    let r = e2i::qcow2::Qcow2Image::open_host(e2i::io::MemSource(b), Some(Path::new("")), None)?;
    r.stored_ranges(true)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < r.size() {
        r.read_at(&mut buf, at)?;
        at += buf.len() as u64;
    }
    Ok(())
}

/// What each hostile image must be reported as (the kind, with its location).
fn hostile_kind_ok(kind: &str, e: &e2i::Error, good: &[u8]) -> bool {
    use e2i::error::CorruptKind as K;
    let be64 = |o: usize| e2i::bytes::be::u64(good, o);
    let len = good.len() as u64;
    let l1 = be64(40);
    let l2 = be64(l1 as usize) & 0x00ff_ffff_ffff_fe00;
    let Some(k) = e.corrupt_kind() else {
        return matches!(e, e2i::Error::Unsupported(_))
            && ["encrypted", "version 9"].contains(&kind);
    };
    match kind {
        // Any L1 size the format allows is read; this one does not fit the file.
        "l1_size 2^32-1" => matches!(
            k,
            K::Qcow2L1Outside {
                entries: u32::MAX,
                ..
            }
        ),
        "cluster_bits 40" => matches!(k, K::Qcow2ClusterBits { cluster_bits: 40 }),
        "size 2^64-1" => matches!(k, K::Qcow2VirtualSize { size: u64::MAX }),
        "L1 past EOF" => {
            matches!(k, K::Qcow2L1Outside { host_offset, file_size, .. } if *file_size == len && *host_offset > len)
        }
        "L2 past EOF" | "L2 far past EOF" => {
            matches!(k, K::Qcow2L2Outside { l1_index: 0, host_offset, file_size } if *file_size == len && *host_offset > len)
        }
        "L2 on the L1 table" => {
            matches!(k, K::Qcow2L2OnMetadata { l1_index: 0, host_offset, meta_start, .. } if *host_offset == l1 && *meta_start == l1)
        }
        "L2 shared by two L1 entries" => {
            matches!(k, K::Qcow2L2Shared { first: 0, second: 1, host_offset } if *host_offset == l2)
        }
        "data on an L2 table" => {
            matches!(k, K::Qcow2DataOnMetadata { l2_offset, host_offset, .. } if *l2_offset == l2 && *host_offset == l2)
        }
        "data past EOF" | "data far past EOF" => {
            matches!(k, K::Qcow2DataOutside { l2_offset, host_offset, file_size, .. } if *l2_offset == l2 && *file_size == len && *host_offset > len)
        }
        "compressed garbage" => {
            matches!(k, K::Qcow2Inflate { .. } | K::Qcow2InflatedSize { .. })
        }
        "reserved L1 bits" => matches!(k, K::Qcow2L1Reserved { l1_index: 0, .. }),
        "truncated in L2" => {
            matches!(k, K::Qcow2L2Outside { l1_index: 0, host_offset, file_size } if *host_offset == l2 && *file_size == l2 + 100)
        }
        "truncated in data" => {
            matches!(k, K::Qcow2DataOutside { file_size, .. } if *file_size == len / 2 + 17)
        }
        "truncated header" => matches!(k, K::Qcow2HeaderShort { len: 50 }),
        // The name's bytes are zeros (NUL) in the header cluster.
        "backing file" => matches!(
            k,
            K::Qcow2BackingName {
                host_offset: 200,
                len: 5
            }
        ),
        _ => false,
    }
}

#[test]
fn hostile_qcow2_fails_cleanly() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let q = d.path().join("good.qcow2");
    sh(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&q));
    let good = read(&q);
    read_all_in_process(good.clone()).unwrap();
    for kind in [
        "l1_size 2^32-1",
        "cluster_bits 40",
        "size 2^64-1",
        "L1 past EOF",
        "L2 past EOF",
        "L2 far past EOF",
        "L2 on the L1 table",
        "L2 shared by two L1 entries",
        "data on an L2 table",
        "data past EOF",
        "data far past EOF",
        "compressed garbage",
        "reserved L1 bits",
        "truncated in L2",
        "truncated in data",
        "truncated header",
        "backing file",
        "encrypted",
        "version 9",
    ] {
        let bytes = hostile(&good, kind);
        let e = read_all_in_process(bytes.clone()).expect_err(kind);
        assert!(hostile_kind_ok(kind, &e, &good), "{kind}: {e:?}");
        let h = d.path().join("h.qcow2");
        std::fs::write(&h, bytes).unwrap();
        for (t, args) in [("qcow2-to-raw", &[][..]), ("e2i-capture", &["-r"][..])] {
            let out = d.path().join("h.out");
            let o = run(tool_cmd(t).args(args).arg(&h).arg(&out));
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{t} {kind}: {err}");
            assert_eq!(err.lines().count(), 1, "{t} {kind}: {err}");
            assert!(!err.contains("panicked"), "{t} {kind}: {err}");
            // The message is the kind's, whatever context the tool adds.
            assert!(err.contains(&e.to_string()), "{t} {kind}: {err}");
            assert!(!out.exists(), "{t} {kind}: left an output");
        }
    }
}

#[test]
fn refuses_encryption() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let create = |name: &str, args: &[&str]| {
        let q = p(name);
        sh(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .args(args)
            .arg(&q)
            .arg("1M"));
        q
    };
    // Backing files and zstd clusters are read (see overlay.rs), external data files too
    // (see data_file.rs).
    let cases = [(
        create(
            "e.qcow2",
            &[
                "--object",
                "secret,id=s0,data=abc",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            ],
        ),
        "encrypted",
    )];
    for (q, what) in cases {
        for (t, args) in [("qcow2-to-raw", &[][..]), ("e2i-capture", &["-r"][..])] {
            let out = p("o.raw");
            let o = run(tool_cmd(t).args(args).arg(&q).arg(&out));
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{t} {what}: {err}");
            assert_eq!(err.lines().count(), 1, "{t} {what}: {err}");
            assert!(err.contains(what), "{t} {what}: {err}");
            assert!(!out.exists());
        }
    }
}

/// `e2image -Q` of a 16 TiB filesystem (less 1 MiB where the temporary folder's
/// filesystem cannot hold a 16 TiB file, as ext4 cannot) has a 64 MiB L1 table, over qemu's
/// 32 MiB: both qcow2 readers convert it to exactly the bytes `e2image -r` writes, in
/// little memory (the L1 table is read in pieces, only its non-zero entries kept).
/// bigalloc and few inodes keep mkfs and e2image quick; 4 KiB blocks make the clusters 4 KiB.
#[test]
fn e2image_qcow2_of_a_16_tib_filesystem_converts() {
    let d = tempdir();
    let img = d.path().join("fs16t.img");
    let f = std::fs::File::create(&img).unwrap();
    if f.set_len(16 << 40).is_err() {
        f.set_len((16 << 40) - (1 << 20)).unwrap();
    }
    drop(f);
    let o = sh(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-O",
            "64bit,bigalloc,^has_journal,^resize_inode",
        ])
        .args([
            "-C",
            "1M",
            "-N",
            "65536",
            "-E",
            "lazy_itable_init=1,nodiscard",
        ])
        .arg(&img));
    assert!(
        o.status.success(),
        "mkfs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let q = d.path().join("fs16t.qcow2");
    e2image(&["-Q"], &img, &q);
    // The L1 table is larger than qemu's limit (it refuses the image).
    let l1_size = e2i::bytes::be::u32(&read_head(&q), 36);
    assert!(u64::from(l1_size) * 8 > 32 << 20, "L1 of {l1_size} entries");
    let want = d.path().join("e2image.raw");
    e2image(&["-r"], &q, &want);
    for t in ["qcow2-to-raw", "e2i-to-raw"] {
        let out = d.path().join(format!("{t}.raw"));
        let o = run(tool_cmd(t).arg(&q).arg(&out));
        assert!(
            o.status.success(),
            "{t}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let n = same_sparse(&want, &out).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert!(n > 0, "{t}: nothing compared");
    }
}

/// The first 4 KiB of a file.
pub(super) fn read_head(p: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0u8; 4096];
    std::fs::File::open(p).unwrap().read_exact(&mut b).unwrap();
    b
}

/// A superblock claiming 2^31 groups (128 GiB of descriptors) inside a qcow2 whose virtual
/// disk is large enough for them (256 PiB in a file of a few MiB): the descriptor table was
/// allocated from the claim, and the allocation aborted the process (SIGABRT, "memory
/// allocation of 137438953472 bytes failed"). The same claim over a sparse raw file took
/// 80 MiB and seconds to skip half a million groups. Both are refused at once: the table is
/// more than the data the source holds.
#[test]
fn descriptors_claimed_over_holes_are_refused_not_allocated() {
    use e2i::bytes::le;
    let d = tempdir();
    let img = mkfs(
        d.path(),
        "fs.img",
        "8M",
        &["-b", "4096", "-O", "64bit,^metadata_csum,^has_journal"],
    );
    let mut head = read(&img)[..1 << 20].to_vec();
    let (groups, ipg): (u64, u32) = ((1 << 31) - 1, 2);
    let blocks = groups * u64::from(le::u32(&head, 1024 + 32));
    le::set_u32(&mut head, 1024 + 4, blocks as u32);
    le::set_u32(&mut head, 1024 + 0x150, (blocks >> 32) as u32);
    le::set_u32(&mut head, 1024 + 40, ipg);
    le::set_u32(&mut head, 1024, (groups * u64::from(ipg)) as u32);
    let headp = d.path().join("head.img");
    std::fs::write(&headp, &head).unwrap();
    let q = d.path().join("claim.qcow2");
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "cluster_size=2M"])
        .arg(&q)
        .arg((blocks * 4096).to_string()));
    sh(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "qcow2"])
        .arg(&headp)
        .arg(&q));
    // The same superblock over a sparse raw file (1 KiB blocks, 2^32 - 1 of them).
    let mut head1k = read(&mkfs(
        d.path(),
        "fs1k.img",
        "8M",
        &["-b", "1024", "-O", "^metadata_csum"],
    ))[..1 << 20]
        .to_vec();
    let blocks1k = u32::MAX;
    let groups1k = (u64::from(blocks1k) - 1).div_ceil(u64::from(le::u32(&head1k, 1024 + 32)));
    le::set_u32(&mut head1k, 1024 + 4, blocks1k);
    let inodes1k = groups1k * u64::from(le::u32(&head1k, 1024 + 40));
    le::set_u32(&mut head1k, 1024, inodes1k as u32);
    let sparse = d.path().join("sparse.img");
    std::fs::write(&sparse, &head1k).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&sparse)
        .unwrap()
        .set_len(u64::from(blocks1k) * 1024)
        .unwrap();
    let out = d.path().join("out");
    for (t, args, src) in [
        ("e2i-capture", vec!["-r"], &q),
        ("e2i-capture", vec!["-Q"], &q),
        ("e2i-move", vec![], &q),
        ("e2i-capture", vec!["-r"], &sparse),
    ] {
        let what = format!("{t} {args:?} {}", src.display());
        let o = run(tool_cmd(t).args(&args).arg(src).arg(&out));
        let err = failed(&o, &what);
        assert!(
            err.contains("descriptor blocks are more than the") && err.contains("bytes of data"),
            "{what}: {err}"
        );
        assert!(!out.exists(), "{what}: an output was left");
    }
    // e2i-to-qcow2 converts a qcow2 INPUT as it is, as qemu-img convert and e2i-to-raw do:
    // the superblock's claim is never read, the 256 PiB disk keeps its size and its one
    // stored MiB.
    run_ok(tool_cmd("e2i-to-qcow2").arg(&q).arg(&out));
    assert_eq!(qemu_check(&out), 0);
    let virtual_size = |p: &Path| e2i::bytes::be::u64(&read_head(p), 24);
    assert_eq!(virtual_size(&out), virtual_size(&q));
    let first = d.path().join("first.raw");
    sh(Command::new("qemu-img")
        .args(["dd", "-f", "qcow2", "-O", "raw", "bs=1M", "count=1"])
        .arg(format!("if={}", out.display()))
        .arg(format!("of={}", first.display())));
    assert!(read(&first) == head, "the stored MiB differs");
}

/// A qcow2 whose virtual size is not a whole number of 512-byte sectors is the disk qemu
/// reads: cut down to the last whole sector, by every tool that reads qcow2 (the
/// converters refused it, e2i-capture and e2i-to-qcow2 took it as it was).
#[test]
fn a_virtual_size_between_sectors_is_cut_down_as_qemu_does() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let fs = mkfs(d.path(), "fs.img", "4M", &[]);
    sh(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&fs)
        .arg(p("fs.qcow2")));
    let mut b = read(&p("fs.qcow2"));
    // The header's size field (bytes 24..32, big-endian): 100 bytes past the 4 MiB.
    b[24..32].copy_from_slice(&((4u64 << 20) + 100).to_be_bytes());
    let odd = p("odd.qcow2");
    std::fs::write(&odd, &b).unwrap();
    sh(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&odd)
        .arg(p("qemu.raw")));
    let disk = read(&p("qemu.raw"));
    assert!(disk == read(&fs), "qemu changed: it reads another disk");
    for t in ["qcow2-to-raw", "e2i-to-raw"] {
        let out = p(&format!("{t}.raw"));
        run_ok(tool_cmd(t).arg(&odd).arg(&out));
        assert!(read(&out) == disk, "{t}");
    }
    let want = e2image_bytes(&["-r"], &fs, &p("want.raw"));
    run_ok(
        tool_cmd("e2i-capture")
            .arg("-r")
            .arg(&odd)
            .arg(p("cap.raw")),
    );
    assert!(read(&p("cap.raw")) == want, "e2i-capture -r");
    run_ok(tool_cmd("e2i-to-qcow2").arg(&odd).arg(p("back.qcow2")));
    let info = sh(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(p("back.qcow2")));
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 4u64 << 20)),
        "e2i-to-qcow2: {info}"
    );
}

/// e2i-to-qcow2 converts a qcow2 INPUT as it is, as e2i-to-raw and qemu-img convert do:
/// a whole disk (partition table, filesystem inside a partition) was refused for the bad
/// magic at byte 1024; a disk shrunk below its filesystem got the filesystem's size, one
/// grown past it lost the bytes past the filesystem; a virtual size of an odd number of
/// sectors is kept. A pipe gets the same bytes as a file.
#[test]
fn a_qcow2_input_is_converted_as_it_is_whatever_it_holds() {
    use super::partitions::{blank, mbr_sector};
    use std::os::unix::fs::FileExt;
    const MIB: u64 = 1 << 20;
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let fs = mkfs(d.path(), "fs.img", "8M", &[]);
    // A 20 MiB disk, its filesystem at 1 MiB; bytes past the partition too.
    let disk = p("disk.raw");
    let f = blank(&disk, 20 * MIB);
    f.write_all_at(&mbr_sector(&[(0x83, 2048, 16384)]), 0)
        .unwrap();
    f.write_all_at(&read(&fs), MIB).unwrap();
    f.write_all_at(b"past the partition", 19 * MIB + 100)
        .unwrap();
    drop(f);
    // The filesystem's image, then its disk shrunk to 4 MiB and grown to 16 MiB (a sector
    // of data past the filesystem), and one 8 MiB and one sector long (an odd sector count).
    let grown = p("grown.raw");
    std::fs::copy(&fs, &grown).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&grown)
        .unwrap();
    f.set_len(16 * MIB).unwrap();
    f.write_all_at(b"past the filesystem", 12 * MIB).unwrap();
    drop(f);
    let odd = p("odd.raw");
    std::fs::copy(&fs, &odd).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&odd).unwrap();
    f.set_len(8 * MIB + 512).unwrap();
    f.write_all_at(b"last sector", 8 * MIB + 7).unwrap();
    drop(f);
    let shrunk = p("shrunk.qcow2");
    qemu_to_qcow2(&fs, &shrunk, "cluster_size=64k");
    sh(Command::new("qemu-img")
        .args(["resize", "-q", "--shrink"])
        .arg(&shrunk)
        .arg("4M"));
    let mut inputs = vec![shrunk];
    for raw in [&disk, &grown, &odd] {
        let q = raw.with_extension("qcow2");
        qemu_to_qcow2(raw, &q, "cluster_size=64k");
        inputs.push(q);
    }
    for q in &inputs {
        let what = q.file_name().unwrap().to_string_lossy().into_owned();
        let out = q.with_extension("out.qcow2");
        run_ok(tool_cmd("e2i-to-qcow2").arg(q).arg(&out));
        assert_eq!(qemu_check(&out), 0, "{what}");
        assert_eq!(
            e2i::bytes::be::u64(&read_head(&out), 24),
            e2i::bytes::be::u64(&read_head(q), 24),
            "{what}: virtual size"
        );
        let want = qemu_to_raw(q, &q.with_extension("want.raw"));
        let got = qemu_to_raw(&out, &q.with_extension("got.raw"));
        assert!(got == want, "{what}: the disk differs");
        let piped = run_ok(tool_cmd("e2i-to-qcow2").arg(q).arg("-")).stdout;
        assert!(piped == read(&out), "{what}: a pipe got other bytes");
    }
}

/// Run `cmd` (a converter reading `-`) with `head` on its stdin, then `pad` bytes of noise,
/// through `gzip -1` when `gzip`. Returns how many of those bytes the pipe accepted before
/// it closed (whole 64 KiB writes: what the tool read, what the pipes and gzip hold) and
/// the tool's output.
fn feed_stdin(cmd: &mut Command, head: &[u8], pad: u64, gzip: bool) -> (u64, std::process::Output) {
    use std::io::Write;
    use std::process::Stdio;
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let (mut sink, child, zip): (Box<dyn Write>, _, _) = if gzip {
        let mut z = Command::new("gzip")
            .args(["-1", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("gzip is needed by this test (ci/setup.sh installs it)");
        let child = cmd.stdin(z.stdout.take().unwrap()).spawn().unwrap();
        // The Command holds the pipe's read end until replaced: gzip would never see it
        // close.
        cmd.stdin(Stdio::null());
        (Box::new(z.stdin.take().unwrap()), child, Some(z))
    } else {
        let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
        (Box::new(child.stdin.take().unwrap()), child, None)
    };
    let mut accepted = 0u64;
    let mut put = |b: &[u8]| match sink.write_all(b) {
        Ok(()) => {
            accepted += b.len() as u64;
            true
        }
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
            false
        }
    };
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = pad;
    let mut open = head.chunks(1 << 16).all(&mut put);
    while open && left > 0 {
        let n = left.min(1 << 16);
        open = put(&noise(&mut state, n as usize));
        left -= n;
    }
    drop(sink);
    let o = child.wait_with_output().unwrap();
    if let Some(mut z) = zip {
        let _ = z.wait();
    }
    (accepted, o)
}

/// A qcow2 on stdin (plain or gzip-compressed) followed by 256 MiB of noise converts as
/// the same image from a file, reading little past the image: a piped or compressed qcow2
/// was spooled whole before anything else began (the noise filled `TMPDIR` and took the
/// time of reading and inflating all of it). The tool reads until the last byte its tables
/// point to, in 1 MiB pieces, then closes its input: the writer gets EPIPE.
#[test]
fn a_piped_qcow2_is_read_no_further_than_its_image() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let q = p("fs.qcow2");
    run_ok(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&q));
    let head = read(&q);
    let pad = 256u64 << 20;
    for t in ["qcow2-to-raw", "e2i-to-raw", "e2i-to-qcow2"] {
        let want = p(&format!("{t}.want"));
        run_ok(tool_cmd(t).arg(&q).arg(&want));
        for gzip in [false, true] {
            let what = format!("{t} (gzip: {gzip})");
            let out = p(&format!("{t}-{gzip}.out"));
            let (accepted, o) = feed_stdin(tool_cmd(t).arg("-").arg(&out), &head, pad, gzip);
            ok(&o, &what);
            assert!(o.stderr.is_empty(), "{what}: {}", text(&o.stderr));
            assert!(
                read(&out) == read(&want),
                "{what}: not the file's conversion"
            );
            // The image, a 1 MiB piece and the pipes' buffers; not the 256 MiB after it.
            assert!(
                accepted < 16 << 20,
                "{what}: read {accepted} bytes of a {}-byte image",
                head.len()
            );
        }
    }
}

/// A qcow2 cut short or pointing past its end, on stdin (plain or gzip-compressed), fails
/// as the same bytes do in a file: one line with the same error, exit 1, no output left.
/// The spool is read as far as each table and cluster needs, so an offset past the end
/// reads the input to its end (the last byte a file would also have) before saying so.
#[test]
fn a_piped_qcow2_cut_short_or_pointing_past_its_end_fails_as_a_file_does() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let q = p("good.qcow2");
    run_ok(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&q));
    let good = read(&q);
    for kind in [
        "L1 past EOF",
        "L2 past EOF",
        "L2 far past EOF",
        "data past EOF",
        "data far past EOF",
        "truncated in L2",
        "truncated in data",
        "truncated header",
    ] {
        let bytes = hostile(&good, kind);
        let e = read_all_in_process(bytes.clone()).expect_err(kind);
        assert!(hostile_kind_ok(kind, &e, &good), "{kind}: {e:?}");
        for t in ["qcow2-to-raw", "e2i-to-raw", "e2i-to-qcow2"] {
            for gzip in [false, true] {
                let what = format!("{t} {kind} (gzip: {gzip})");
                let out = p("h.out");
                let (_, o) = feed_stdin(tool_cmd(t).arg("-").arg(&out), &bytes, 0, gzip);
                let err = failed(&o, &what);
                assert_eq!(err.lines().count(), 1, "{what}: {err}");
                assert!(err.contains(&e.to_string()), "{what}: {err}");
                assert!(!out.exists(), "{what}: left an output");
            }
        }
    }
}
