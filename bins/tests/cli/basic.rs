//! Command-line contract: exit codes, one-line errors, `-`, numbers.

use super::util::*;
use std::process::Command;

fn one_line_error(o: &std::process::Output, code: i32, tool_name: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with(&format!("{tool_name}: ")), "{err}");
    if code == 1 {
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    err
}

#[test]
fn capture_errors_and_usage() {
    let d = tempdir();
    let c = tool("e2i-capture");
    // Missing source.
    let o = run(Command::new(&c)
        .args(["-r", "/nonexistent/x"])
        .arg(d.path().join("o")));
    let e = one_line_error(&o, 1, "e2i-capture");
    assert!(
        e.contains("/nonexistent/x") && e.contains("No such file"),
        "{e}"
    );
    assert!(!d.path().join("o").exists());
    // Not a filesystem.
    let junk = d.path().join("junk");
    std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
    let o = run(Command::new(&c)
        .arg("-r")
        .arg(&junk)
        .arg(d.path().join("o")));
    let e = one_line_error(&o, 1, "e2i-capture");
    assert!(e.contains("superblock") && e.contains("magic"), "{e}");
    // Empty file.
    let empty = d.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let o = run(Command::new(&c)
        .arg("-r")
        .arg(&empty)
        .arg(d.path().join("o")));
    one_line_error(&o, 1, "e2i-capture");
    // Usage errors exit 2.
    for args in [
        &["-r", "-b", "8193"][..],
        &["-r", "-o", "12abc"],
        &["-r", "-Q"],
        &["-r", "--no-such-flag"],
        &["-a"],
    ] {
        let o = run(Command::new(&c)
            .args(args)
            .arg(&junk)
            .arg(d.path().join("o")));
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Help and version.
    assert!(run(Command::new(&c).arg("--help")).status.success());
    assert!(run(Command::new(&c).arg("--version")).status.success());
}

#[test]
fn offsets_and_suffixes() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    // The filesystem at 1 MiB inside a bigger file, addressed as -o 1M and -o 0x100000.
    let mut big = vec![0xA5u8; 1 << 20];
    big.extend(std::fs::read(&img).unwrap());
    let host = d.path().join("host.img");
    std::fs::write(&host, &big).unwrap();
    let want = d.path().join("want.raw");
    assert!(
        Command::new("e2image")
            .arg("-r")
            .arg(&img)
            .arg(&want)
            .output()
            .unwrap()
            .status
            .success()
    );
    for off in ["1M", "1MiB", "0x100000", "1048576"] {
        let got = d.path().join(format!("got-{off}.raw"));
        let o = run(tool_cmd("e2i-capture")
            .args(["-r", "-o", off])
            .arg(&host)
            .arg(&got));
        assert!(
            o.status.success(),
            "{off}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            std::fs::read(&got).unwrap(),
            std::fs::read(&want).unwrap(),
            "-o {off}"
        );
    }
}

#[test]
fn a_truncated_image_is_captured_or_refused_cleanly() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &["-b", "1024"]);
    let bytes = std::fs::read(&img).unwrap();
    for cut in [1500usize, 3000, 70_000, 300_000, 2_000_000] {
        let t = d.path().join("t.img");
        std::fs::write(&t, &bytes[..cut]).unwrap();
        let out = d.path().join("t.raw");
        std::fs::remove_file(&out).ok();
        let o = run(tool_cmd("e2i-capture").arg("-r").arg(&t).arg(&out));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            matches!(o.status.code(), Some(0 | 1 | 3)),
            "cut {cut}: {err}"
        );
        assert!(!err.contains("panicked"), "cut {cut}: {err}");
        if o.status.code() == Some(1) {
            assert!(!out.exists(), "cut {cut}: failed capture left an output");
        }
    }
}
