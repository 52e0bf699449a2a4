//! scripts/e2i-bug-report: the bundle holds a clean scrambled qcow2 stock e2image reads, the
//! scrambled image's dumpe2fs -h, the geometry and checksums, and no private string.

use super::util::*;
use std::path::Path;
use std::process::Command;

#[test]
fn bundle_is_complete_and_leaks_nothing() {
    let d = tempdir();
    let tree = d.path().join("tree");
    std::fs::create_dir_all(tree.join("PrivateDirXyz")).unwrap();
    for i in 0..300 {
        std::fs::write(tree.join(format!("PrivateDirXyz/privatefilexyz_{i}")), b"x").unwrap();
    }
    std::os::unix::fs::symlink("/privatetargetxyz/path", tree.join("privatelinkxyz")).unwrap();
    let img = d.path().join("fs.img");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "privatelabelxyz", "-d"])
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
            !hay.contains("xyz"),
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
    let v = run(Command::new(tool("e2i-capture")).arg("--version"));
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
