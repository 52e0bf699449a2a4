//! scripts/e2i-bug-report: the bundle holds a clean scrambled qcow2 stock e2image reads, the
//! scrambled image's dumpe2fs -h, the geometry and checksums, and no private string.

use super::util::*;
use std::path::Path;
use std::process::Command;

#[test]
fn bundle_is_complete_and_leaks_nothing() {
    let d = tempdir();
    let tree = d.path().join("tree");
    std::fs::create_dir_all(tree.join("PrivateDirXyzqjv")).unwrap();
    for i in 0..300 {
        std::fs::write(
            tree.join(format!("PrivateDirXyzqjv/privatefilexyzqjv_{i}")),
            b"x",
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("/privatetargetxyzqjv/path", tree.join("privatelinkxyzqjv"))
        .unwrap();
    let img = d.path().join("fs.img");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "labelxyzqjv", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/e2i-bug-report");
    let tar = d.path().join("bundle.tar");
    let bin_dir = tool("e2i-capture").parent().unwrap().to_path_buf();
    let o = run(Command::new(&script)
        .arg(&img)
        .arg(&tar)
        .env("E2I_BIN", &bin_dir));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    assert!(
        Command::new("tar")
            .arg("xf")
            .arg(&tar)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap()
            .success()
    );
    for m in ["SHA256SUMS", "fs.qcow2.xz", "dumpe2fs.txt", "geometry.txt"] {
        assert!(x.join(m).is_file(), "{m} missing");
    }
    assert!(
        Command::new("sha256sum")
            .args(["-c", "--quiet", "SHA256SUMS"])
            .current_dir(&x)
            .status()
            .unwrap()
            .success()
    );
    let q = x.join("fs.qcow2");
    let xz = Command::new("xz")
        .arg("-dc")
        .arg(x.join("fs.qcow2.xz"))
        .output()
        .unwrap();
    std::fs::write(&q, &xz.stdout).unwrap();
    assert!(
        Command::new("qemu-img")
            .args(["check", "-q"])
            .arg(&q)
            .status()
            .unwrap()
            .success()
    );
    let raw = x.join("back.raw");
    assert!(
        Command::new("e2image")
            .arg("-r")
            .arg(&q)
            .arg(&raw)
            .output()
            .unwrap()
            .status
            .success()
    );
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&raw)
        .output()
        .unwrap();
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    for f in [
        q.as_path(),
        &raw,
        &x.join("dumpe2fs.txt"),
        &x.join("geometry.txt"),
    ] {
        let bytes = std::fs::read(f).unwrap();
        let hay = String::from_utf8_lossy(&bytes).to_lowercase();
        assert!(
            !hay.contains("xyzqjv"),
            "{} leaks a private string",
            f.display()
        );
    }
}

/// The script answers --help and --version, checks where the bundle goes before the long
/// capture, never overwrites, and names the file it actually wrote.
#[test]
fn bug_report_help_version_and_output_checks() {
    let d = tempdir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/e2i-bug-report");
    let bin_dir = tool("e2i-capture").parent().unwrap().to_path_buf();
    let o = run(Command::new(&script).arg("--help"));
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("Usage: e2i-bug-report"));
    let o = run(Command::new(&script).arg("--version"));
    assert!(o.status.success());
    let v = run(tool_cmd("e2i-capture").arg("--version"));
    let tools_version = String::from_utf8_lossy(&v.stdout)
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("e2i-bug-report {tools_version}")
    );
    let img = d.path().join("fs.img");
    assert!(
        Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .arg("8M")
            .status()
            .unwrap()
            .success()
    );
    // A folder that does not exist: refused at once, naming it.
    let o = run(Command::new(&script)
        .arg(&img)
        .arg(d.path().join("nowhere/b.tar"))
        .env("E2I_BIN", &bin_dir));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nowhere: no such folder"));
    // A folder: the bundle goes inside, and the message names the file.
    let o = run(Command::new(&script)
        .arg(&img)
        .arg(d.path())
        .env("E2I_BIN", &bin_dir));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let written = err
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("e2i-bug-report: wrote "))
        .expect("names the file written");
    assert!(Path::new(written).is_file(), "{written}");
    assert!(Path::new(written).starts_with(d.path().canonicalize().unwrap()));
    // An existing file is never overwritten.
    let before = std::fs::read(written).unwrap();
    let o = run(Command::new(&script)
        .arg(&img)
        .arg(written)
        .env("E2I_BIN", &bin_dir));
    assert_eq!(o.status.code(), Some(1));
    assert!(std::fs::read(written).unwrap() == before);
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/e2i-bug-report")
}

fn bin_dir() -> std::path::PathBuf {
    tool("e2i-capture").parent().unwrap().to_path_buf()
}

/// Extract `tar` into a new folder `x` next to it; check its SHA256SUMS.
fn extract(tar: &Path, x: &Path) {
    std::fs::create_dir(x).unwrap();
    let o = run(Command::new("tar").arg("xf").arg(tar).arg("-C").arg(x));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(x));
    assert!(o.status.success(), "SHA256SUMS");
}

/// A filesystem with private names (and a label) in 1k blocks, truncated to `keep` bytes
/// (`None`: whole).
fn private_fs(dir: &Path, name: &str, keep: Option<u64>) -> std::path::PathBuf {
    let tree = dir.join(format!("{name}.tree"));
    std::fs::create_dir_all(tree.join("SecretDirQwvjzk")).unwrap();
    for i in 0..40 {
        std::fs::write(tree.join(format!("SecretDirQwvjzk/secretqwvjzk_{i}")), b"x").unwrap();
    }
    let img = dir.join(name);
    let o = run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "1024", "-L", "labelqwvjzk", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("32M"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    if let Some(n) = keep {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(n)
            .unwrap();
    }
    img
}

/// No member of the extracted bundle (the image decompressed, and converted to raw) holds
/// a private string.
fn assert_no_leak(x: &Path) {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(x)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for (ext, tool) in [("xz", "xz"), ("bz2", "bzip2")] {
        let packed = x.join(format!("fs.qcow2.{ext}"));
        if packed.exists() {
            let o = run(Command::new(tool).arg("-dc").arg(&packed));
            assert!(o.status.success());
            let q = x.join("fs.qcow2");
            std::fs::write(&q, &o.stdout).unwrap();
            let raw = x.join("fs.raw");
            let o = run(Command::new("e2image").arg("-r").arg(&q).arg(&raw));
            assert!(o.status.success());
            files.extend([q, raw]);
        }
    }
    // The compressed members are checked through their decompressed contents: their own
    // bytes are noise in which any short string turns up now and then.
    for f in files
        .into_iter()
        .filter(|f| !matches!(f.extension().and_then(|e| e.to_str()), Some("xz" | "bz2")))
    {
        let hay = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).to_lowercase();
        assert!(
            !hay.contains("qwvjzk"),
            "{} leaks a private string",
            f.display()
        );
    }
}

/// A truncated filesystem (the capture skips damage and exits 3) is bundled: exit 0, a note
/// on stderr, capture.txt with the exit status and what was skipped (DEVICE's name masked),
/// dumpe2fs.txt kept although dumpe2fs complains, and no private string anywhere.
#[test]
fn bug_report_bundles_a_damaged_filesystem() {
    let d = tempdir();
    let img = private_fs(d.path(), "private-disk.img", Some(1 << 20));
    let o = run(tool_cmd("e2i-capture")
        .args(["-s", "-Q"])
        .arg(&img)
        .arg(d.path().join("probe.qcow2")));
    assert_eq!(
        o.status.code(),
        Some(3),
        "the truncated fs must make the capture exit 3"
    );
    let tar = d.path().join("b.tar");
    let o = run(Command::new(script())
        .arg(&img)
        .arg(&tar)
        .env("E2I_BIN", bin_dir()));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("damaged") && err.contains("exit status 3"),
        "{err}"
    );
    let x = d.path().join("x");
    extract(&tar, &x);
    for m in ["fs.qcow2.xz", "dumpe2fs.txt", "geometry.txt", "capture.txt"] {
        assert!(x.join(m).is_file(), "{m} missing");
    }
    let cap = std::fs::read_to_string(x.join("capture.txt")).unwrap();
    assert!(cap.contains("exit-status: 3"), "{cap}");
    assert!(cap.contains("skipped") && cap.contains("DEVICE"), "{cap}");
    assert!(
        !cap.contains("private-disk"),
        "DEVICE's name in capture.txt: {cap}"
    );
    let dump = std::fs::read_to_string(x.join("dumpe2fs.txt")).unwrap();
    assert!(dump.contains("Block count:"), "{dump}");
    assert_no_leak(&x);
}

/// Names starting with '-': without '--' a usage error (exit 2, nothing captured, nothing
/// written); after '--' the bundle is made and lands under the name given.
#[test]
fn bug_report_takes_dash_names_after_double_dash() {
    let d = tempdir();
    private_fs(d.path(), "-src.img", None);
    let run_in = |args: &[&str]| {
        run(Command::new(script())
            .args(args)
            .current_dir(d.path())
            .env("E2I_BIN", bin_dir()))
    };
    for args in [
        &["-src.img", "out.tar"][..],
        &["-src.img"],
        &["x.img", "-out.tar"],
    ] {
        let o = run_in(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("'--'"), "{args:?}: {err}");
    }
    let o = run_in(&["--", "-src.img", "-out.tar"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let out = d.path().join("-out.tar");
    assert!(out.is_file(), "{err}");
    assert!(
        err.trim_end()
            .ends_with(&format!("wrote {}", out.canonicalize().unwrap().display()))
    );
    let x = d.path().join("x");
    extract(&out, &x);
    assert_no_leak(&x);
    // Only the bundle was created.
    let mut names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".tree"))
        .collect();
    names.sort();
    assert_eq!(names, ["-out.tar", "-src.img", "x"]);
}

/// Without xz on PATH the image is compressed with bzip2 (fs.qcow2.bz2), said on stderr;
/// with neither, a failure that leaves nothing behind.
#[test]
fn bug_report_falls_back_to_bzip2() {
    let d = tempdir();
    let img = private_fs(d.path(), "fs.img", None);
    // A PATH with what the script needs, but no xz.
    let path = d.path().join("path");
    std::fs::create_dir(&path).unwrap();
    for t in [
        "bash",
        "basename",
        "date",
        "dirname",
        "mktemp",
        "rm",
        "mkdir",
        "grep",
        "dumpe2fs",
        "sha256sum",
        "tar",
        "mv",
        "realpath",
        "stat",
        "readlink",
        "cat",
        "awk",
        "sed",
        "tail",
        "blkid",
        "bzip2",
    ] {
        let o = run(Command::new("sh").args(["-c", &format!("command -v {t}")]));
        let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !p.is_empty() {
            std::os::unix::fs::symlink(&p, path.join(t)).unwrap();
        }
    }
    let tar = d.path().join("b.tar");
    let o = run(Command::new("bash")
        .arg(script())
        .arg(&img)
        .arg(&tar)
        .env("PATH", &path)
        .env("E2I_BIN", bin_dir()));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("bzip2"), "{err}");
    let x = d.path().join("x");
    extract(&tar, &x);
    assert!(x.join("fs.qcow2.bz2").is_file() && !x.join("fs.qcow2.xz").exists());
    assert_no_leak(&x);
    // The image inside is the scrambled qcow2 qemu-img accepts.
    let o = run(Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(x.join("fs.qcow2")));
    assert!(o.status.success());

    std::fs::remove_file(path.join("bzip2")).unwrap();
    let tar2 = d.path().join("c.tar");
    let o = run(Command::new("bash")
        .arg(script())
        .arg(&img)
        .arg(&tar2)
        .env("PATH", &path)
        .env("E2I_BIN", bin_dir()));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("neither xz nor bzip2"));
    assert!(!tar2.exists());
}

/// An e2i-capture that cannot scramble (an older build first on E2I_BIN, or one whose
/// `--help` fails) stops the bug report: it was bundled unscrambled, names and label
/// included, with a warning.
#[test]
fn a_capture_that_cannot_scramble_stops_the_bug_report() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempdir();
    let img = private_fs(d.path(), "fs.img", None);
    for (name, help) in [
        ("old", "echo 'Usage: e2i-capture [OPTIONS] SOURCE OUTPUT'"),
        ("broken", "exit 1"),
    ] {
        let bin = d.path().join(name);
        std::fs::create_dir(&bin).unwrap();
        // --help as given; anything else runs the real capture (unscrambled unless asked).
        let fake = bin.join("e2i-capture");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nif [ \"$1\" = --help ]; then {help}; exit; fi\nexec '{}' \"$@\"\n",
                tool("e2i-capture").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(tool("qcow2-to-raw"), bin.join("qcow2-to-raw")).unwrap();
        let tar = d.path().join(format!("{name}.tar"));
        let o = run(Command::new(script())
            .arg(&img)
            .arg(&tar)
            .env("E2I_BIN", &bin));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("cannot scramble"), "{name}: {err}");
        assert!(!tar.exists(), "{name}: a bundle was made");
    }
}
