//! qcow2 overlays (`--backing`) and zstd clusters (`--compress=zstd`), judged against
//! e2image -r of the changed filesystem, qemu-img convert, qemu-img check and qemu-img info.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::util::*;

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// `debugfs -w -R REQUEST img` (one request each: write, mkdir, rm).
fn debugfs_requests(img: &Path, requests: &[String]) {
    for r in requests {
        let o = sh(Command::new("debugfs").arg("-w").arg("-R").arg(r).arg(img));
        let err = String::from_utf8_lossy(&o.stderr);
        // debugfs reports most failures on stderr with status 0.
        assert!(
            !err.lines().skip(1).any(|l| !l.trim().is_empty()),
            "debugfs {r}: {err}"
        );
    }
}

/// `qemu-img info --output=json` of `q`.
fn qemu_info(q: &Path) -> String {
    let o = sh(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(q));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every reader's view of `q`: qemu-img convert, qcow2-to-raw, e2i-to-raw and
/// e2i-capture -r (the qcow2 as a SOURCE) must each equal `want`.
fn assert_reads_as(q: &Path, want: &[u8], what: &str) {
    let d = q.parent().unwrap();
    let out = d.join("readback.raw");
    let _ = std::fs::remove_file(&out);
    assert!(
        qemu_to_raw(q, &out) == want,
        "{what}: qemu-img convert differs"
    );
    for (t, args) in [
        ("qcow2-to-raw", &[][..]),
        ("e2i-to-raw", &[][..]),
        ("e2i-capture", &["-r"][..]),
    ] {
        let _ = std::fs::remove_file(&out);
        sh(tool_cmd(t).args(args).arg(q).arg(&out));
        assert!(read(&out) == want, "{what}: {t} differs");
    }
}

/// A filesystem with `files` small files in a few folders (inode tables and directories
/// worth imaging).
fn populated(dir: &Path, name: &str, size: &str, files: usize, extra: &[&str]) -> PathBuf {
    let tree = dir.join(format!("{name}.tree"));
    for i in 0..files {
        let sub = tree.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{i}")), format!("{i}\n").repeat(i % 50)).unwrap();
    }
    let img = dir.join(name);
    mkfs_from(&tree, &img, size, extra);
    std::fs::remove_dir_all(&tree).unwrap();
    img
}

/// A change of a few files: a write, a mkdir, a rm.
fn change(img: &Path, round: usize) {
    let src = img.with_extension(format!("src{round}"));
    std::fs::write(&src, format!("round {round}\n").repeat(300)).unwrap();
    debugfs_requests(
        img,
        &[
            format!("write {} new{round}", src.display()),
            format!("mkdir dir{round}"),
            format!("rm d{}/f{}", round % 7, round + 7),
        ],
    );
}

/// On several kinds of filesystem: change files, capture an overlay on the previous
/// capture; the overlay is clean, names its backing file, and every reader (qemu-img and
/// ours) gives exactly e2image -r of the changed filesystem.
#[test]
fn overlay_reads_back_as_the_changed_filesystem() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let kinds: [(&str, &[&str]); 4] = [
        ("k4.img", &["-b", "4096"]),
        ("k1.img", &["-b", "1024"]),
        ("ext2.img", &["-t", "ext2", "-b", "2048"]),
        ("big.img", &["-b", "4096", "-O", "bigalloc", "-C", "16384"]),
    ];
    for (name, extra) in kinds {
        let img = populated(d.path(), name, "48M", 200, extra);
        let base = p(&format!("{name}.base.qcow2"));
        sh(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&base));
        change(&img, 1);
        let want = e2image_bytes(&["-r"], &img, &p("want.raw"));
        let ov = p(&format!("{name}.ov.qcow2"));
        sh(tool_cmd("e2i-capture")
            .args(["-Q", "--backing"])
            .arg(&base)
            .arg(&img)
            .arg(&ov));
        assert_eq!(qemu_check(&ov), 0, "{name}: qemu-img check");
        let info = qemu_info(&ov);
        assert!(
            info.contains(&format!("\"backing-filename\": \"{}\"", base.display())),
            "{name}: {info}"
        );
        assert!(
            info.contains("\"backing-filename-format\": \"qcow2\""),
            "{info}"
        );
        assert!(
            info.contains("\"compat\": \"1.1\""),
            "{name}: not v3: {info}"
        );
        assert_reads_as(&ov, &want, name);
        // The same overlay from e2i-to-qcow2 of a raw image and of a stream on a pipe.
        let ov2 = p(&format!("{name}.ov2.qcow2"));
        sh(tool_cmd("e2i-to-qcow2")
            .arg("--backing")
            .arg(&base)
            .arg(p("want.raw"))
            .arg(&ov2));
        assert!(
            read(&ov2) == read(&ov),
            "{name}: e2i-to-qcow2 of the raw image differs"
        );
        // The dry run plans the same overlay, and --json names the backing file.
        let o = sh(tool_cmd("e2i-to-qcow2")
            .args(["-n", "--json", "--backing"])
            .arg(&base)
            .arg(p("want.raw"))
            .arg(p("never.qcow2")));
        let said = String::from_utf8_lossy(&o.stdout);
        let json = String::from_utf8_lossy(&o.stderr);
        assert!(
            said.contains("qcow2 v3")
                && said.contains(&format!("{} bytes, an overlay on", size(&ov)))
                && json.contains(&format!("\"backing\":\"{}\"", base.display())),
            "{name}: {said} {json}"
        );
        assert!(!p("never.qcow2").exists());
        let ov3 = p(&format!("{name}.ov3.qcow2"));
        let o = sh(Command::new("sh").arg("-c").arg(format!(
            "'{}' '{}' - | '{}' --backing '{}' - '{}'",
            tool("e2i-capture").display(),
            img.display(),
            tool("e2i-to-qcow2").display(),
            base.display(),
            ov3.display()
        )));
        assert!(o.status.success());
        assert!(
            read(&ov3) == read(&ov),
            "{name}: overlay from a pipe differs"
        );
        // Nothing changed since: the overlay stores no data cluster.
        let same = p(&format!("{name}.same.qcow2"));
        sh(tool_cmd("e2i-capture")
            .args(["-Q", "--backing"])
            .arg(&ov)
            .arg(&img)
            .arg(&same));
        assert_eq!(qemu_check(&same), 0);
        let map = sh(Command::new("qemu-img")
            .args(["map", "--output=json"])
            .arg(&same));
        let map = String::from_utf8_lossy(&map.stdout);
        assert!(
            !map.lines()
                .any(|l| l.contains("\"depth\": 0") && l.contains("\"data\": true")),
            "{name}: an unchanged filesystem's overlay stores data: {map}"
        );
        assert_reads_as(&same, &want, &format!("{name} unchanged"));
    }
}

/// With file data (-a): the overlay holds the changed data blocks too, and e2i-move clones
/// the overlay as e2image -ra clones the filesystem.
#[test]
fn overlay_with_file_data_clones_like_e2image_ra() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let img = populated(d.path(), "fs.img", "32M", 100, &["-b", "4096"]);
    let base = p("base.qcow2");
    sh(tool_cmd("e2i-capture").arg("-Qa").arg(&img).arg(&base));
    change(&img, 2);
    let want = e2image_bytes(&["-ra"], &img, &p("want.raw"));
    let ov = p("ov.qcow2");
    sh(tool_cmd("e2i-capture")
        .args(["-Qa", "--backing", "base.qcow2"])
        .arg(&img)
        .arg(&ov));
    assert_eq!(qemu_check(&ov), 0);
    // Recorded as given: relative, found from the overlay's folder.
    assert!(qemu_info(&ov).contains("\"backing-filename\": \"base.qcow2\""));
    let out = p("out.raw");
    assert!(
        qemu_to_raw(&ov, &out) == want,
        "qemu-img convert of the -a overlay"
    );
    let clone = p("clone.raw");
    let state = tempdir();
    sh(tool_cmd("e2i-move")
        .arg(&ov)
        .arg(&clone)
        .env("XDG_STATE_HOME", state.path()));
    assert!(read(&clone) == want, "e2i-move clone of the overlay");
}

/// Weekly captures: a chain three deep (one link made from a pipe, one with zstd clusters)
/// on a qcow2 base, and one on a raw base; each link reads back as its week's filesystem.
/// The overlay of a change of about 15 blocks is under a tenth of the base.
#[test]
fn chains_three_deep_read_back_and_stay_small() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let img = populated(
        d.path(),
        "fs.img",
        "256M",
        3000,
        &["-b", "4096", "-I", "256"],
    );
    sh(tool_cmd("e2i-capture")
        .arg("-Q")
        .arg(&img)
        .arg(p("w0.qcow2")));
    // A raw base as well.
    e2image(&["-r"], &img, &p("w0.raw"));
    let mut wants = vec![];
    for week in 1..=3 {
        change(&img, week);
        let want = e2image_bytes(&["-r"], &img, &p(&format!("want{week}.raw")));
        let prev = format!("w{}.qcow2", week - 1);
        let this = p(&format!("w{week}.qcow2"));
        match week {
            2 => {
                let o = sh(Command::new("sh")
                    .current_dir(d.path())
                    .arg("-c")
                    .arg(format!(
                        "'{}' '{}' - | '{}' --backing {prev} - w2.qcow2",
                        tool("e2i-capture").display(),
                        img.display(),
                        tool("e2i-to-qcow2").display(),
                    )));
                assert!(o.status.success());
            }
            _ => {
                let mut c = tool_cmd("e2i-capture");
                c.args(["-Q", "--backing", &prev]);
                if week == 3 {
                    c.arg("--compress=zstd");
                }
                sh(c.arg(&img).arg(&this));
            }
        }
        assert_eq!(qemu_check(&this), 0, "week {week}");
        assert_reads_as(&this, &want, &format!("week {week}"));
        // On the raw base too.
        let raw_ov = p(&format!("r{week}.qcow2"));
        let raw_prev = if week == 1 {
            "w0.raw".to_string()
        } else {
            format!("r{}.qcow2", week - 1)
        };
        sh(tool_cmd("e2i-capture")
            .args(["-Q", "--backing", &raw_prev])
            .arg(&img)
            .arg(&raw_ov));
        assert_eq!(qemu_check(&raw_ov), 0, "raw chain week {week}");
        assert_reads_as(&raw_ov, &want, &format!("raw chain week {week}"));
        wants.push(want);
    }
    let chain = sh(Command::new("qemu-img")
        .args(["info", "--backing-chain"])
        .arg(p("w3.qcow2")));
    let chain = String::from_utf8_lossy(&chain.stdout);
    assert_eq!(chain.matches("backing file:").count(), 3, "{chain}");
    // Earlier links are untouched by later captures.
    assert_reads_as(&p("w1.qcow2"), &wants[0], "week 1 after week 3");
    // Small: the week-1 overlay against the base.
    let (base, ov) = (size(&p("w0.qcow2")), size(&p("w1.qcow2")));
    eprintln!("base {base} bytes, overlay of one week's change {ov} bytes");
    assert!(ov * 10 < base, "overlay {ov} bytes, base {base} bytes");
    // Flattening: e2i-to-qcow2 of the overlay without --backing is a full image.
    let flat = p("flat.qcow2");
    sh(tool_cmd("e2i-to-qcow2").arg(p("w3.qcow2")).arg(&flat));
    assert!(!qemu_info(&flat).contains("backing-filename"));
    assert_reads_as(&flat, &wants[2], "flattened");
}

/// A filesystem grown since the base: the overlay has the new size and reads back exactly.
#[test]
fn overlay_on_a_smaller_base() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let img = populated(d.path(), "fs.img", "24M", 50, &["-b", "1024"]);
    sh(tool_cmd("e2i-capture")
        .arg("-Q")
        .arg(&img)
        .arg(p("b.qcow2")));
    sh(Command::new("resize2fs").arg(&img).arg("40M"));
    change(&img, 3);
    let want = e2image_bytes(&["-r"], &img, &p("want.raw"));
    let ov = p("ov.qcow2");
    sh(tool_cmd("e2i-capture")
        .args(["-Q", "--backing", "b.qcow2"])
        .arg(&img)
        .arg(&ov));
    assert_eq!(qemu_check(&ov), 0);
    assert!(qemu_info(&ov).contains("\"virtual-size\": 41943040"));
    assert_reads_as(&ov, &want, "grown");
}

/// Missing backing files, loops, chains too deep, an OUTPUT in the chain, a relative name
/// that exists only from the current folder: one line, exit 1, nothing left behind.
#[test]
fn backing_errors_are_clean() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let img = populated(d.path(), "fs.img", "16M", 20, &[]);
    sh(tool_cmd("e2i-capture")
        .arg("-Q")
        .arg(&img)
        .arg(p("base.qcow2")));
    change(&img, 1);
    sh(tool_cmd("e2i-capture")
        .args(["-Q", "--backing", "base.qcow2"])
        .arg(&img)
        .arg(p("ov.qcow2")));
    let fails = |args: &[&Path], tool_name: &str, what: &str| {
        let out = p("out.raw");
        let _ = std::fs::remove_file(&out);
        let o = run(tool_cmd(tool_name).args(args).arg(&out));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{tool_name}: {err}");
        assert_eq!(err.lines().count(), 1, "{tool_name}: {err}");
        assert!(err.contains(what), "{tool_name}: {err}");
        assert!(!out.exists(), "{tool_name}: left {}", out.display());
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    };
    let ov = p("ov.qcow2");
    let readers: [(&str, &[&str]); 4] = [
        ("qcow2-to-raw", &[]),
        ("e2i-to-raw", &[]),
        ("e2i-capture", &["-r"]),
        ("e2i-to-qcow2", &[]),
    ];
    // Missing.
    std::fs::rename(p("base.qcow2"), p("gone.qcow2")).unwrap();
    let missing = format!("backing file {}", p("base.qcow2").display());
    for (t, a) in readers {
        let mut args: Vec<&Path> = a.iter().map(Path::new).collect();
        args.push(&ov);
        fails(&args, t, &missing);
    }
    std::fs::rename(p("gone.qcow2"), p("base.qcow2")).unwrap();
    // A loop: the base made to point back at the overlay.
    sh(Command::new("qemu-img")
        .args(["rebase", "-u", "-F", "qcow2", "-b"])
        .arg(&ov)
        .arg(p("base.qcow2")));
    for (t, a) in readers {
        let mut args: Vec<&Path> = a.iter().map(Path::new).collect();
        args.push(&ov);
        fails(&args, t, "loop");
    }
    // Capturing on a looping base is refused too.
    fails(
        &[Path::new("-Q"), Path::new("--backing"), &ov, &img],
        "e2i-capture",
        "loop",
    );
    // Too deep: 66 empty overlays on an empty base.
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(p("c0.qcow2"))
        .arg("16M"));
    for i in 1..=66 {
        sh(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(format!("c{}.qcow2", i - 1))
            .arg(p(&format!("c{i}.qcow2"))));
    }
    fails(&[&p("c66.qcow2")], "qcow2-to-raw", "deeper than 64");
    // 64 backing files are read.
    let out = p("deep.raw");
    sh(tool_cmd("qcow2-to-raw").arg(p("c64.qcow2")).arg(&out));
    assert_eq!(size(&out), 16 << 20);
    // OUTPUT may not be a file of the chain: the base, or under another name.
    let good = p("good.qcow2");
    sh(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&good));
    let before = read(&good);
    std::os::unix::fs::symlink(&good, p("alias.qcow2")).unwrap();
    for target in ["good.qcow2", "alias.qcow2"] {
        let o = run(tool_cmd("e2i-capture")
            .args(["-Q", "--backing", "good.qcow2"])
            .arg(&img)
            .arg(p(target)));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{target}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert!(read(&good) == before, "the base was changed");
    // A relative name is found from OUTPUT's folder: given from the current folder, the
    // miss says so.
    std::fs::create_dir(p("sub")).unwrap();
    let o = run(tool_cmd("e2i-capture")
        .current_dir(d.path())
        .args(["-Q", "--backing", "good.qcow2"])
        .arg(&img)
        .arg("sub/ov.qcow2"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("the folder OUTPUT is written to"), "{err}");
    assert!(!p("sub/ov.qcow2").exists());
    sh(tool_cmd("e2i-capture")
        .current_dir(d.path())
        .args(["-Q", "--backing", "../good.qcow2"])
        .arg(&img)
        .arg("sub/ov.qcow2"));
    assert_eq!(qemu_check(&p("sub/ov.qcow2")), 0);
    // SOURCE itself (a raw filesystem image) is no previous capture.
    fails(
        &[Path::new("-Q"), Path::new("--backing"), &img, &img],
        "e2i-capture",
        "being captured",
    );
    // Not a previous capture: a stream is refused as a base.
    sh(Command::new("sh").arg("-c").arg(format!(
        "'{}' '{}' - > '{}'",
        tool("e2i-capture").display(),
        img.display(),
        p("s.e2i").display()
    )));
    fails(
        &[Path::new("-Q"), Path::new("--backing"), &p("s.e2i"), &img],
        "e2i-capture",
        "e2i stream",
    );
}

/// zstd clusters: qemu-img sees compression type zstd and a clean image that converts to
/// e2image's raw image; our readers decode it; it is no larger than the deflate image.
/// Images qemu-img compresses with zstd read back too.
#[test]
fn zstd_clusters() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    for (name, extra) in [
        ("k4.img", &["-b", "4096"][..]),
        ("k1.img", &["-b", "1024"][..]),
    ] {
        let img = populated(d.path(), name, "64M", 1500, extra);
        let want = e2image_bytes(&["-r"], &img, &p("want.raw"));
        let z = p(&format!("{name}.z.qcow2"));
        let dfl = p(&format!("{name}.d.qcow2"));
        sh(tool_cmd("e2i-capture")
            .args(["-Q", "--compress=zstd"])
            .arg(&img)
            .arg(&z));
        sh(tool_cmd("e2i-capture")
            .args(["-Q", "--compress"])
            .arg(&img)
            .arg(&dfl));
        let info = qemu_info(&z);
        assert!(info.contains("\"compression-type\": \"zstd\""), "{info}");
        assert!(qemu_info(&dfl).contains("\"compression-type\": \"zlib\""));
        assert_eq!(qemu_check(&z), 0);
        assert_reads_as(&z, &want, &format!("{name} zstd"));
        assert_reads_as(&dfl, &want, &format!("{name} deflate"));
        let (zs, ds) = (size(&z), size(&dfl));
        eprintln!("{name}: zstd {zs} bytes, deflate {ds} bytes");
        if name == "k4.img" {
            assert!(zs <= ds, "{name}: zstd {zs} > deflate {ds}");
        } else {
            // 1 KiB clusters: each zstd frame carries about 10 bytes of header that raw
            // deflate does not (measured: 8 % larger at every zstd level).
            assert!(zs * 10 <= ds * 11, "{name}: zstd {zs} vs deflate {ds}");
        }
        // From a stream, and as an overlay.
        let zs2 = p(&format!("{name}.zs.qcow2"));
        let o = sh(Command::new("sh").arg("-c").arg(format!(
            "'{}' '{}' - | '{}' --compress=zstd - '{}'",
            tool("e2i-capture").display(),
            img.display(),
            tool("e2i-to-qcow2").display(),
            zs2.display()
        )));
        assert!(o.status.success());
        assert_eq!(qemu_check(&zs2), 0);
        assert_reads_as(&zs2, &want, &format!("{name} zstd from a stream"));
        // qemu-img's own zstd clusters (64 KiB).
        let qz = p(&format!("{name}.qz.qcow2"));
        sh(Command::new("qemu-img")
            .args([
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                "compression_type=zstd",
            ])
            .arg(p("want.raw"))
            .arg(&qz));
        assert_reads_as(&qz, &want, &format!("{name} qemu-img zstd"));
    }
    // Bare --compress stays deflate; a bad name is a usage error.
    let o = run(tool_cmd("e2i-capture")
        .args(["-Q", "--compress=lz4"])
        .arg(p("k4.img"))
        .arg(p("x.qcow2")));
    assert_eq!(o.status.code(), Some(2));
    assert!(!p("x.qcow2").exists());
}

/// A backing chain that is no longer what an overlay was written on — a base replaced by a
/// later capture, a link restored from an older one, a byte of a raw base changed in place —
/// is refused by every reader (one line, exit 1, nothing left), never read into a wrong
/// image; the original put back reads again, a base renamed with `qemu-img rebase -u`
/// (same bytes) is fine, and so is a link whose own clusters `qemu-img commit` changed.
#[test]
fn a_changed_backing_chain_is_refused() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let img = populated(d.path(), "fs.img", "16M", 40, &["-b", "1024"]);
    let capture = |args: &[&str], out: &str| {
        sh(tool_cmd("e2i-capture").args(args).arg(&img).arg(p(out)));
    };
    capture(&["-Q"], "base.qcow2");
    change(&img, 1);
    capture(&["-Q", "--backing", "base.qcow2"], "ov1.qcow2");
    change(&img, 2);
    let want = e2image_bytes(&["-r"], &img, &p("want.raw"));
    capture(
        &["-Q", "--compress=zstd", "--backing", "ov1.qcow2"],
        "ov2.qcow2",
    );
    assert_reads_as(&p("ov2.qcow2"), &want, "untouched chain");
    // qemu's own (empty) overlay on top carries no digest: the nearest e2i link's is checked.
    sh(Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "ov2.qcow2",
        ])
        .arg(p("q3.qcow2")));
    assert_reads_as(&p("q3.qcow2"), &want, "qemu's overlay on the chain");
    let refused = |what: &str| {
        // qemu reads the chain as it is now: a wrong image, which is why e2i refuses it.
        assert!(
            qemu_to_raw(&p("ov2.qcow2"), &p("qemu.raw")) != want,
            "{what}: the change does not show"
        );
        let readers: [(&str, &[&str]); 5] = [
            ("qcow2-to-raw", &[]),
            ("e2i-to-raw", &[]),
            ("e2i-capture", &["-r"]),
            ("e2i-to-qcow2", &[]),
            ("e2i-move", &[]),
        ];
        for (t, a) in readers {
            let out = p("out.img");
            let o = run(tool_cmd(t)
                .args(a)
                .arg(p("ov2.qcow2"))
                .arg(&out)
                .env("XDG_STATE_HOME", d.path()));
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{what}: {t}: {err}");
            assert_eq!(err.lines().count(), 1, "{what}: {t}: {err}");
            assert!(
                err.contains("changed since this overlay was written on it"),
                "{what}: {t}: {err}"
            );
            assert!(!out.exists(), "{what}: {t} left its output");
        }
        let o = run(tool_cmd("qcow2-to-raw")
            .arg(p("q3.qcow2"))
            .arg(p("out.img")));
        assert_eq!(o.status.code(), Some(1), "{what}: qemu's overlay on top");
    };
    let keep = |n: &str| std::fs::copy(p(n), p(&format!("{n}.orig"))).unwrap();
    let restore = |n: &str| std::fs::rename(p(&format!("{n}.orig")), p(n)).unwrap();
    // The base replaced by a later capture (of the filesystem as it is now, the chain would
    // read right: the same bytes where the overlays read through it).
    keep("base.qcow2");
    std::fs::remove_file(p("base.qcow2")).unwrap();
    std::fs::copy(&img, p("later.img")).unwrap();
    change(&p("later.img"), 3);
    sh(tool_cmd("e2i-capture")
        .arg("-Q")
        .arg(p("later.img"))
        .arg(p("base.qcow2")));
    refused("base recaptured later");
    restore("base.qcow2");
    assert_reads_as(&p("ov2.qcow2"), &want, "base put back");
    // The middle link restored from an older state: a flattened copy of the base.
    keep("ov1.qcow2");
    std::fs::remove_file(p("ov1.qcow2")).unwrap();
    sh(tool_cmd("e2i-to-qcow2")
        .arg(p("base.qcow2"))
        .arg(p("ov1.qcow2")));
    refused("middle link older");
    restore("ov1.qcow2");
    // The same bytes under another name: still the chain the overlay was made on.
    std::fs::rename(p("base.qcow2"), p("moved.qcow2")).unwrap();
    sh(Command::new("qemu-img")
        .args(["rebase", "-u", "-F", "qcow2", "-b", "moved.qcow2"])
        .arg(p("ov1.qcow2")));
    assert_reads_as(&p("ov2.qcow2"), &want, "base renamed");
    // qemu-img commit of the top into the middle link: that link's own chain is untouched,
    // so it reads (now as the top did); the top's chain changed under it.
    sh(Command::new("qemu-img")
        .args(["commit", "-q"])
        .arg(p("ov2.qcow2")));
    assert_reads_as(&p("ov1.qcow2"), &want, "middle link after commit");
    let o = run(tool_cmd("qcow2-to-raw")
        .arg(p("ov2.qcow2"))
        .arg(p("out.img")));
    assert_eq!(o.status.code(), Some(1), "top after commit");
    // A raw base changed in place where the overlay reads through it: one byte of a block
    // both hold, not the superblock's.
    let old = e2image_bytes(&["-r"], &img, &p("raw-base.raw"));
    change(&img, 4);
    let want3 = e2image_bytes(&["-r"], &img, &p("want3.raw"));
    sh(tool_cmd("e2i-capture")
        .args(["-Q", "--backing", "raw-base.raw"])
        .arg(&img)
        .arg(p("ov2.qcow2")));
    assert_reads_as(&p("ov2.qcow2"), &want3, "overlay on a raw base");
    let shared = old
        .chunks(1024)
        .zip(want3.chunks(1024))
        .enumerate()
        .skip(2)
        .find(|(_, (a, b))| a == b && a.iter().any(|&x| x != 0))
        .map(|(i, _)| i)
        .expect("a block both hold");
    let mut changed = old.clone();
    changed[shared * 1024 + 100] ^= 0x5a;
    std::fs::write(p("raw-base.raw"), &changed).unwrap();
    let o = run(tool_cmd("qcow2-to-raw")
        .arg(p("ov2.qcow2"))
        .arg(p("out.img")));
    assert_eq!(o.status.code(), Some(1), "raw base changed in place");
    assert!(!p("out.img").exists());
    std::fs::write(p("raw-base.raw"), &old).unwrap();
    assert_reads_as(&p("ov2.qcow2"), &want3, "raw base put back");
}

/// Flattening an overlay of `-a` captures (README: `e2i-to-qcow2 week03.qcow2 full.qcow2`)
/// keeps the file data it reads as, as e2i-to-raw and qcow2-to-raw do; a qcow2 INPUT is
/// converted as it is, not cut back to the filesystem's metadata.
#[test]
fn flattening_an_all_data_overlay_keeps_file_data() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let img = populated(d.path(), "fs.img", "16M", 60, &["-b", "4096"]);
    sh(tool_cmd("e2i-capture")
        .arg("-Qa")
        .arg(&img)
        .arg(p("base.qcow2")));
    change(&img, 1);
    sh(tool_cmd("e2i-capture")
        .args(["-Qa", "--backing", "base.qcow2"])
        .arg(&img)
        .arg(p("ov.qcow2")));
    let want = e2image_bytes(&["-ra"], &img, &p("want.raw"));
    assert!(
        want != e2image_bytes(&["-r"], &img, &p("meta.raw")),
        "the filesystem holds file data"
    );
    for (q, what) in [("ov.qcow2", "the overlay"), ("base.qcow2", "a -Qa image")] {
        let flat = p("flat.qcow2");
        let _ = std::fs::remove_file(&flat);
        sh(tool_cmd("e2i-to-qcow2").arg(p(q)).arg(&flat));
        assert_eq!(qemu_check(&flat), 0);
        assert!(!qemu_info(&flat).contains("backing-filename"), "{what}");
        let got = qemu_to_raw(&flat, &p("flat.raw"));
        if q == "ov.qcow2" {
            assert!(got == want, "{what} flattened lost bytes");
        } else {
            let base = qemu_to_raw(&p("base.qcow2"), &p("base.raw"));
            assert!(got == base, "{what} converted lost bytes");
        }
    }
}

/// An overlay written to stdout redirected to a file (`-`, `/dev/stdout`) in another folder:
/// its relative backing name is checked from that file's folder, where qemu-img finds it
/// when it reads the overlay. It was checked from the current folder (or /dev): a name
/// right there was refused, and one that existed only from the current folder was accepted
/// into an overlay qemu-img could not open. For both tools; a pipe keeps the current folder.
#[test]
fn an_overlay_on_stdout_finds_its_backing_from_where_stdout_lands() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let img = populated(d.path(), "fs.img", "8M", 20, &[]);
    std::fs::create_dir(p("sub")).unwrap();
    sh(tool_cmd("e2i-capture")
        .arg("-Q")
        .arg(&img)
        .arg(p("sub/b.qcow2")));
    change(&img, 1);
    let want = e2image_bytes(&["-r"], &img, &p("want.raw"));
    let stdout_to = |f: &Path| std::fs::File::create(f).unwrap();
    for (t, out) in [
        ("e2i-capture", "-"),
        ("e2i-capture", "/dev/stdout"),
        ("e2i-to-qcow2", "-"),
        ("e2i-to-qcow2", "/dev/stdout"),
    ] {
        let what = format!("{t} --backing b.qcow2 fs.img {out} > sub/ov.qcow2");
        let ov = p("sub/ov.qcow2");
        run_ok(
            c_for(t)
                .current_dir(d.path())
                .args(["--backing", "b.qcow2"])
                .arg(&img)
                .arg(out)
                .stdout(stdout_to(&ov)),
        );
        assert_eq!(qemu_check(&ov), 0, "{what}");
        assert_reads_as(&ov, &want, &what);
        // A name found only from the current folder is refused: the overlay would not
        // find it where it lies.
        std::fs::copy(p("sub/b.qcow2"), p("b2.qcow2")).unwrap();
        let o = run(c_for(t)
            .current_dir(d.path())
            .args(["--backing", "b2.qcow2"])
            .arg(&img)
            .arg(out)
            .stdout(stdout_to(&p("sub/ov2.qcow2"))));
        let err = failed(&o, &what);
        assert!(
            err.contains("found from the folder OUTPUT is written to") && err.contains("sub"),
            "{what}: {err}"
        );
    }
    // To a pipe, the current folder: b2.qcow2 there is found.
    let o = run_ok(
        c_for("e2i-capture")
            .current_dir(d.path())
            .args(["--backing", "b2.qcow2"])
            .arg(&img)
            .arg("-"),
    );
    assert!(o.stdout.starts_with(b"QFI\xfb"), "a qcow2 on the pipe");
}

/// `tool`, with `-Q` for e2i-capture (an overlay is a qcow2).
fn c_for(tool: &str) -> Command {
    let mut c = tool_cmd(tool);
    if tool == "e2i-capture" {
        c.arg("-Q");
    }
    c
}
