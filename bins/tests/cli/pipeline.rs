//! The e2i stream between capture and the converters.

use super::util::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn capture_stream(args: &[&str], img: &std::path::Path) -> Vec<u8> {
    let o = run(tool_cmd("e2i-capture").args(args).arg(img));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

fn to_raw(stream: &[u8], out: &std::path::Path) -> std::process::Output {
    let mut child = tool_cmd("e2i-to-raw")
        .arg("-")
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let data = stream.to_vec();
    let t = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let o = child.wait_with_output().unwrap();
    t.join().unwrap();
    o
}

#[test]
fn stream_round_trips_to_e2image_bytes() {
    let d = tempdir();
    for (name, extra) in [
        ("a.img", &["-b", "1024"][..]),
        ("b.img", &["-b", "4096", "-O", "^metadata_csum"][..]),
    ] {
        let img = mkfs(d.path(), name, "8M", extra);
        let want = e2image_bytes(&["-r"], &img, &d.path().join("ref.raw"));
        let s = capture_stream(&[], &img);
        let out = d.path().join("out.raw");
        let o = to_raw(&s, &out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(std::fs::read(&out).unwrap(), want, "{name}");
        // Compressed wrappings.
        for (c, flag) in [("gzip", "-c"), ("bzip2", "-c")] {
            let mut ch = Command::new(c)
                .arg(flag)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut sin = ch.stdin.take().unwrap();
            let s2 = s.clone();
            let t = std::thread::spawn(move || sin.write_all(&s2).unwrap());
            let z = ch.wait_with_output().unwrap().stdout;
            t.join().unwrap();
            let out2 = d.path().join("z.raw");
            std::fs::remove_file(&out2).ok();
            let o = to_raw(&z, &out2);
            assert!(
                o.status.success(),
                "{c}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert_eq!(std::fs::read(&out2).unwrap(), want, "{name} via {c}");
        }
        // All data.
        let want_a = e2image_bytes(&["-ra"], &img, &d.path().join("refa.raw"));
        let sa = capture_stream(&["-a"], &img);
        let outa = d.path().join("outa.raw");
        assert!(to_raw(&sa, &outa).status.success());
        assert_eq!(std::fs::read(&outa).unwrap(), want_a, "{name} -a");
        // A stream kept in a file, converted to stdout.
        let sf = d.path().join("s.e2is");
        let o = run(tool_cmd("e2i-capture")
            .args(["--format", "stream"])
            .arg(&img)
            .arg(&sf));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = run(tool_cmd("e2i-to-raw").arg(&sf).arg("-"));
        assert!(o.status.success());
        assert_eq!(o.stdout, want, "{name} file stream to stdout");
        for f in ["ref.raw", "refa.raw", "out.raw", "outa.raw"] {
            std::fs::remove_file(d.path().join(f)).ok();
        }
    }
}

/// Read and verify a whole stream in-process.
fn read_stream(b: &[u8]) -> Result<(), e2i::Error> {
    let mut r = e2i::stream::StreamReader::open(b)?;
    r.for_each(1 << 20, &mut |_, _| Ok(()))?;
    Ok(())
}

#[test]
fn damaged_streams_are_refused_and_leave_nothing() {
    use e2i::error::CorruptKind;
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let s = capture_stream(&[], &img);
    let out = d.path().join("out.raw");
    // Cut at many points, including inside header, map, data and trailer.
    let mut cuts: Vec<usize> = vec![
        0,
        1,
        63,
        64,
        70,
        100,
        s.len() / 2,
        s.len() - 65,
        s.len() - 64,
        s.len() - 1,
    ];
    let step = (s.len() / 40).max(1);
    cuts.extend((0..s.len()).step_by(step));
    for cut in cuts {
        let o = to_raw(&s[..cut], &out);
        assert_eq!(o.status.code(), Some(1), "cut at {cut}");
        assert!(!out.exists(), "cut at {cut} left an output");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("panicked") && err.lines().count() == 1,
            "cut at {cut}: {err}"
        );
        // Past the magic, the cut is reported where it is.
        if cut >= 8 {
            let e = read_stream(&s[..cut]).unwrap_err();
            assert!(
                matches!(
                    e.corrupt_kind(),
                    Some(CorruptKind::StreamTruncated { offset, .. }) if *offset == cut as u64
                ),
                "cut at {cut}: {e:?}"
            );
            assert!(err.contains(&e.to_string()), "cut at {cut}: {err}");
        }
    }
    let step = (s.len() / 60).max(1);
    for i in (0..s.len())
        .step_by(step)
        .chain([8, 20, 70, s.len() - 40, s.len() - 10])
    {
        let mut b = s.clone();
        b[i] ^= 0x01;
        let o = to_raw(&b, &out);
        assert_eq!(o.status.code(), Some(1), "flip at {i}");
        assert!(!out.exists(), "flip at {i} left an output");
        // Every flip is a stream corruption (or, in the version field, an unsupported one).
        let e = read_stream(&b).unwrap_err();
        use CorruptKind as K;
        let stream_kind = matches!(
            e.corrupt_kind(),
            Some(
                K::StreamMagic
                    | K::StreamHeaderLength { .. }
                    | K::StreamBlockSize { .. }
                    | K::StreamTooLarge { .. }
                    | K::StreamExtentCount { .. }
                    | K::StreamExtentKind { .. }
                    | K::StreamExtentOutside { .. }
                    | K::StreamExtentOrder { .. }
                    | K::StreamSegment { .. }
                    | K::StreamMapChecksum { .. }
                    | K::StreamNoTrailer { .. }
                    | K::StreamTrailerCounts { .. }
                    | K::StreamChecksum { .. }
                    | K::StreamTruncated { .. }
            )
        );
        assert!(
            stream_kind || matches!(e, e2i::Error::Unsupported(_)),
            "flip at {i}: {e:?}"
        );
    }
    // The intact stream still works.
    assert!(to_raw(&s, &out).status.success());
}

#[test]
fn converters_take_normal_and_qcow2_inputs() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &["-b", "1024"]);
    let want = e2image_bytes(&["-r"], &img, &d.path().join("ref.raw"));
    // qcow2 → raw through e2i-to-raw.
    let q = d.path().join("x.qcow2");
    assert!(
        run(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&q))
            .status
            .success()
    );
    let o = run(tool_cmd("e2i-to-raw").arg(&q).arg("-"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, want);
    // normal → raw: its blocks at their places; the superblock and descriptors read back.
    let n = d.path().join("x.e2i");
    assert!(
        run(tool_cmd("e2i-capture").arg(&img).arg(&n))
            .status
            .success()
    );
    let nr = d.path().join("n.raw");
    let o = run(tool_cmd("e2i-to-raw").arg(&n).arg(&nr));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = |cmd: &str, args: &[&str], p: &std::path::Path| {
        let o = Command::new(cmd).args(args).arg(p).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // Group geometry and inodes read from the placed blocks are those of the filesystem
    // (the journal's blocks are not in a normal image, so full dumpe2fs stops there).
    assert_eq!(
        out("dumpe2fs", &["-g"], &nr),
        out("dumpe2fs", &["-g"], &img)
    );
    for ino in ["<2>", "<11>", "<12>"] {
        let stat = format!("stat {ino}");
        assert_eq!(
            out("debugfs", &["-R", &stat], &nr),
            out("debugfs", &["-R", &stat], &img),
            "{ino}"
        );
    }
    // normal → qcow2 holds the same blocks.
    let nq = d.path().join("n.qcow2");
    let o = run(tool_cmd("e2i-to-qcow2").arg(&n).arg(&nq));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        Command::new("qemu-img")
            .args(["check", "-q"])
            .arg(&nq)
            .status()
            .unwrap()
            .success()
    );
    let o = run(tool_cmd("qcow2-to-raw").arg(&nq).arg("-"));
    assert!(o.status.success());
    assert_eq!(o.stdout, std::fs::read(&nr).unwrap());
}

#[test]
fn to_qcow2_dry_run_predicts_the_image_and_creates_nothing() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let s = capture_stream(&[], &img);
    let sf = d.path().join("s.e2is");
    std::fs::write(&sf, &s).unwrap();
    let q = d.path().join("out.qcow2");
    for input in [sf.as_path(), img.as_path()] {
        let o = run(tool_cmd("e2i-to-qcow2").arg("-n").arg(input).arg(&q));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!q.exists(), "a dry run created the output");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let predicted: u64 = text
            .trim_end()
            .trim_end_matches(" bytes")
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no size in: {text}"));
        let o = run(tool_cmd("e2i-to-qcow2").arg(input).arg(&q));
        assert!(o.status.success());
        assert_eq!(
            std::fs::metadata(&q).unwrap().len(),
            predicted,
            "{}",
            input.display()
        );
        std::fs::remove_file(&q).unwrap();
    }
}

/// Streams of the first release (version 1: zero runs in the map, SHA-256) still convert:
/// the committed captures of `testdata/sample.ext4` give e2image's raw images and the qcow2
/// `e2i-capture -Q` writes, report their SHA-256, and `--stream-version 1` still writes them
/// byte for byte. Version 2 (the default) reports BLAKE3 instead.
#[test]
fn version_1_streams_still_convert() {
    let d = tempdir();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
    let sample = root.join("sample.ext4");
    let hex64 = |s: &str| s.len() == 66 && s[1..65].bytes().all(|b| b.is_ascii_hexdigit());
    for (file, all) in [("sample.e2is", false), ("sample-all-data.e2is.gz", true)] {
        let v1 = root.join("stream-v1").join(file);
        let a: &[&str] = if all { &["-a"] } else { &[] };
        let flags: &[&str] = if all { &["-ra"] } else { &["-r"] };
        let reference = e2image_bytes(flags, &sample, &d.path().join("ref"));
        let raw = d.path().join(format!("{file}.raw"));
        let o = sh(tool_cmd("e2i-to-raw").arg("--json").arg(&v1).arg(&raw));
        assert!(read(&raw) == reference, "{file}: raw");
        let j = String::from_utf8_lossy(&o.stdout).into_owned();
        let digest = |k: &str| {
            j.split(&format!("\"{k}\":"))
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .unwrap_or_default()
                .to_string()
        };
        assert!(hex64(&digest("stream_sha256")), "{file}: {j}");
        assert_eq!(digest("stream_blake3"), "null", "{file}: {j}");
        let q = d.path().join(format!("{file}.qcow2"));
        sh(tool_cmd("e2i-capture")
            .arg("-Q")
            .args(a)
            .arg(&sample)
            .arg(&q));
        let q1 = d.path().join(format!("{file}.1.qcow2"));
        sh(tool_cmd("e2i-to-qcow2").arg(&v1).arg(&q1));
        assert!(read(&q1) == read(&q), "{file}: qcow2");
        // The writer of version 1 is unchanged.
        let again = capture_stream(
            &[&["--stream-version", "1"], a, &["--format", "stream"]].concat(),
            &sample,
        );
        let committed = read(&v1);
        let committed = if all {
            let o = sh(Command::new("gzip").arg("-dc").arg(&v1));
            o.stdout
        } else {
            committed
        };
        assert!(again == committed, "{file}: --stream-version 1 bytes");
        // Version 2 of the same capture: BLAKE3, the same raw image.
        let v2 = capture_stream(&[a, &["--format", "stream"]].concat(), &sample);
        assert_eq!(&v2[8..10], &[2, 0], "{file}: version 2 by default");
        let o = to_raw(&v2, &raw);
        assert!(
            o.status.success() && read(&raw) == reference,
            "{file}: v2 raw"
        );
    }
    // Only the stream format has a version.
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "--stream-version", "1"])
        .arg(&sample)
        .arg(d.path().join("x.raw")));
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(tool_cmd("e2i-capture")
        .args(["--stream-version", "3", "--format", "stream"])
        .arg(&sample)
        .arg(d.path().join("x.e2i")));
    assert_eq!(o.status.code(), Some(2));
}

/// `e2i-to-raw -c` over a sparse target: the target's holes read as zeros, so a stream's
/// zero blocks there are identical without being read (a hostile stream's claim of a
/// billion zero blocks costs nothing); a zero block where the target holds data is compared
/// and written as before.
#[test]
fn check_skips_the_targets_holes_and_still_fixes_its_data() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "16M", &["-b", "1024"]);
    let reference = e2image_bytes(&["-r"], &img, &d.path().join("ref.raw"));
    let stream = d.path().join("fs.e2i");
    std::fs::write(&stream, capture_stream(&["--format", "stream"], &img)).unwrap();
    // A journal block past its superblock: selected, all zeros.
    let o = sh(Command::new("debugfs")
        .arg("-R")
        .arg("bmap <8> 20")
        .arg(&img));
    let jblk: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!(
        reference[(jblk * 1024) as usize..][..1024]
            .iter()
            .all(|&b| b == 0)
    );
    let json = |o: &std::process::Output, k: &str| -> u64 {
        let j = String::from_utf8_lossy(&o.stdout).into_owned();
        j.split(&format!("\"{k}\":"))
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {j}"))
    };
    for damaged in [false, true] {
        let target = d.path().join("target.raw");
        let _ = std::fs::remove_file(&target);
        e2image_bytes(&["-r"], &img, &target);
        if damaged {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .unwrap();
            f.write_all_at(&[0xEE; 1024], jblk * 1024).unwrap();
        }
        let o = sh(tool_cmd("e2i-to-raw")
            .args(["-c", "--json"])
            .arg(&stream)
            .arg(&target));
        assert!(read(&target) == reference, "damaged {damaged}");
        let blocks = json(&o, "blocks");
        let identical = json(&o, "identical_blocks");
        let written = json(&o, "bytes_written");
        if damaged {
            assert_eq!((identical, written), (blocks - 1, 1024), "damaged");
        } else {
            assert_eq!((identical, written), (blocks, 0), "intact");
        }
    }
}

/// A stream claiming a TiB of selected zero blocks, checked (`-c`) against a sparse TiB
/// target: nothing is read of the target's holes (the run reads about the stream's size,
/// not 1 TiB) and nothing is written.
#[test]
fn check_against_a_sparse_target_reads_none_of_its_holes() {
    use e2i::stream::{Extent, Header, Kind as K, StreamWriter, Version};
    let d = tempdir();
    let blocks = 1u64 << 30;
    let header = Header {
        version: Version::V2,
        flags: 0,
        incompat: 0,
        block_size: e2i::units::BlockSize::new(1024).unwrap(),
        blocks_count: blocks,
        uuid: [9; 16],
        extents: 0,
    };
    let ex = vec![Extent {
        start: e2i::units::FsBlock(0),
        len: blocks,
        kind: K::Data,
    }];
    let mut w = StreamWriter::new(Vec::new(), header, ex).unwrap();
    w.write_zeros(e2i::units::FsBlock(0), blocks).unwrap();
    let (bytes, _) = w.finish().unwrap();
    let stream = d.path().join("zeros.e2i");
    std::fs::write(&stream, &bytes).unwrap();
    let target = d.path().join("target.raw");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(blocks * 1024)
        .unwrap();
    let o = sh(Command::new("sh")
        .arg("-c")
        .arg("\"$1\" -c --json \"$2\" \"$3\" && grep rchar /proc/$$/io")
        .arg("sh")
        .arg(tool("e2i-to-raw"))
        .arg(&stream)
        .arg(&target));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let rchar: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(rchar < 64 << 20, "read {rchar} bytes: {out}");
    assert!(out.contains("\"bytes_written\":0,"), "{out}");
    assert!(
        out.contains(&format!("\"identical_blocks\":{blocks},")),
        "{out}"
    );
}
