//! Version 2 streams as a hostile sender makes them (valid map checksum and trailer, so a
//! reader gets past both to what was made), the temporary file a front-to-back qcow2 keeps
//! their data in, and stdout redirected to a new file. Each test failed on the tools before
//! the fix it guards (run with `E2I_TEST_BIN_DIR` pointing at an older build to see it).

use super::util::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The segment header of `n` blocks, a zero segment when `zero`.
fn seg(n: u64, zero: bool) -> Vec<u8> {
    (n | if zero { 1 << 63 } else { 0 }).to_le_bytes().to_vec()
}

/// A sealed version 2 stream: block size `bs`, `count` blocks, the map `extents`
/// (start, length, kind 1 data / 2 zero), the data section `body` as given, the trailer
/// counts as given; the map checksum and the trailer's checksum computed (BLAKE3).
fn v2(bs: u32, count: u64, extents: &[(u64, u64, u8)], body: &[u8], counts: (u64, u64)) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(b"E2ISTRM\0");
    s.extend_from_slice(&2u16.to_le_bytes());
    s.extend_from_slice(&64u16.to_le_bytes());
    s.extend_from_slice(&[0; 8]);
    s.extend_from_slice(&bs.to_le_bytes());
    s.extend_from_slice(&count.to_le_bytes());
    s.extend_from_slice(&[0; 16]);
    s.extend_from_slice(&(extents.len() as u64).to_le_bytes());
    s.extend_from_slice(&[0; 8]);
    for &(start, len, kind) in extents {
        s.extend_from_slice(&start.to_le_bytes());
        s.extend_from_slice(&len.to_le_bytes()[..7]);
        s.push(kind);
    }
    let map = blake3::hash(&s);
    let mut all = blake3::Hasher::new();
    all.update(&s);
    all.update(body);
    s.extend_from_slice(map.as_bytes());
    s.extend_from_slice(body);
    s.extend_from_slice(b"E2IEND\0\0");
    s.extend_from_slice(&(extents.len() as u64).to_le_bytes());
    s.extend_from_slice(&counts.0.to_le_bytes());
    s.extend_from_slice(&counts.1.to_le_bytes());
    s.extend_from_slice(all.finalize().as_bytes());
    s
}

/// A capture with file data (`-a`, a version 2 stream) of a filesystem holding `mib` MiB
/// of data that is not zeros.
fn stream_with_data(dir: &Path, mib: usize) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let mut x = 0x1234_5678_9abc_def0u64;
    let data: Vec<u8> = noise(&mut x, mib << 20);
    std::fs::write(tree.join("data"), data).unwrap();
    let img = dir.join("fs.img");
    mkfs_from(&tree, &img, &format!("{}M", mib + 8), &["-b", "4096"]);
    let s = dir.join("fs.e2is");
    run_ok(
        tool_cmd("e2i-capture")
            .args(["-a", "--format", "stream"])
            .arg(&img)
            .arg(&s),
    );
    s
}

/// The files in `dir`.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// `e2i-to-qcow2 STREAM -` into a pipe, the temporary folder `tmp`: its output.
fn to_qcow2_pipe(stream: &Path, tmp: &Path) -> std::process::Output {
    run(tool_cmd("e2i-to-qcow2")
        .arg(stream)
        .arg("-")
        .env("TMPDIR", tmp)
        .stdout(Stdio::piped()))
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(at),
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The temporary file that keeps a version 2 stream's data for a qcow2 written front to
/// back: when it cannot be made or filled, one line names the temporary folder (TMPDIR,
/// which the user never named on the command line) and what to do; nothing reaches stdout.
#[test]
fn spool_failures_name_the_temporary_folder() {
    let d = tempdir();
    let s = stream_with_data(d.path(), 3);
    let full = Tmpfs::new(&d.path().join("small"), "1m");
    let missing = d.path().join("missing");
    for (tmp, why) in [
        (&full.0, "No space left"),
        (&missing, "No such file or directory"),
    ] {
        let o = to_qcow2_pipe(&s, tmp);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{}: {err}", tmp.display());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("{} (TMPDIR)", tmp.display()))
                && err.contains(why)
                && err.contains("set TMPDIR"),
            "{err}"
        );
        assert!(o.stdout.is_empty(), "{} bytes on stdout", o.stdout.len());
    }
    assert!(entries(&full.0).is_empty(), "{:?}", entries(&full.0));
}

/// The temporary file has no name: a run killed by SIGKILL (the OOM killer) while it holds
/// a stream's data leaves nothing in the temporary folder. A named one stayed there, as
/// large as the stream's data.
#[test]
fn spool_leaves_nothing_after_sigkill() {
    let d = tempdir();
    let s = stream_with_data(d.path(), 2);
    let tmp = d.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut child = tool_cmd("e2i-to-qcow2")
        .args(["-", "-"])
        .env("TMPDIR", &tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The whole stream but not its end: the tool holds the data, waiting for more.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&read(&s)).unwrap();
    // Until the temporary file is open and holds the data (named or not).
    let fds = PathBuf::from(format!("/proc/{}/fd", child.id()));
    let holds = || {
        std::fs::read_dir(&fds).unwrap().flatten().any(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.starts_with(&tmp))
                && std::fs::metadata(e.path()).is_ok_and(|m| m.len() >= 2 << 20)
        })
    };
    let mut waited = 0;
    while !holds() {
        assert!(waited < 6000, "the tool never kept the data in TMPDIR");
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 1;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    assert!(entries(&tmp).is_empty(), "left behind: {:?}", entries(&tmp));
}

/// Stdout redirected to a new file is written by position as the stream arrives; when the
/// stream then fails its checksum, or a signal stops the run, the file is emptied again (it
/// was empty and the run's own), as a new OUTPUT's temporary name is removed: no image that
/// looks complete is left where the user looks for one. A front-to-back qcow2 waited for
/// the checksum and wrote nothing; the by-position writers left a whole raw image.
#[test]
fn stdout_file_is_emptied_when_the_run_fails() {
    let d = tempdir();
    let s = stream_with_data(d.path(), 2);
    let mut bad = read(&s);
    let at = bad.len() - 100;
    bad[at] ^= 1;
    let bad_path = d.path().join("bad.e2is");
    std::fs::write(&bad_path, &bad).unwrap();
    let out = d.path().join("out");
    for t in ["e2i-to-raw", "e2i-to-qcow2"] {
        let f = std::fs::File::create(&out).unwrap();
        let o = run(tool_cmd(t).arg(&bad_path).arg("-").stdout(f));
        assert_eq!(o.status.code(), Some(1), "{t}: {}", output_text(&o));
        assert!(
            output_text(&o).contains("checksum"),
            "{t}: {}",
            output_text(&o)
        );
        assert_eq!(
            std::fs::metadata(&out).unwrap().len(),
            0,
            "{t}: left behind"
        );
        // Killed by SIGTERM while the data arrives.
        let f = std::fs::File::create(&out).unwrap();
        let mut child = tool_cmd(t)
            .args(["-", "-"])
            .stdin(Stdio::piped())
            .stdout(f)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let good = read(&s);
        stdin.write_all(&good[..good.len() - 64]).unwrap();
        // Until the file is written and stops changing: the run waits for the stream's
        // last bytes, which are not sent.
        let size = || std::fs::metadata(&out).unwrap().len();
        let (mut last, mut steady) = (0, 0);
        for _ in 0..600 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = size();
            steady = if now == last && now > 0 {
                steady + 1
            } else {
                0
            };
            last = now;
            if steady == 4 {
                break;
            }
        }
        assert_eq!(steady, 4, "{t}: nothing written, or never done writing");
        send_signal(child.id(), "TERM");
        let st = child.wait().unwrap();
        drop(stdin);
        assert!(!st.success(), "{t}: {st:?}");
        assert_eq!(
            std::fs::metadata(&out).unwrap().len(),
            0,
            "{t}: left behind after SIGTERM"
        );
    }
}

/// Stdout opened for reading only (`1< FILE`, a typo for `1> FILE`) is refused, a dry run's
/// listing included: every write failed with EBADF, which Rust's stdout discards as if
/// stdout were closed, so each tool wrote nothing and exited 0.
#[test]
fn read_only_stdout_is_refused() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let s = d.path().join("fs.e2is");
    run_ok(
        tool_cmd("e2i-capture")
            .args(["--format", "stream"])
            .arg(&img)
            .arg(&s),
    );
    let q = d.path().join("fs.qcow2");
    run_ok(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&q));
    let ro = d.path().join("ro");
    std::fs::write(&ro, b"keep").unwrap();
    let runs: [(&str, &[&str], &Path); 7] = [
        ("e2i-capture", &["-Q"], &img),
        ("e2i-to-raw", &["-n"], &s),
        ("e2i-to-qcow2", &["-n"], &s),
        ("e2i-capture", &["--format", "stream"], &img),
        ("e2i-to-raw", &[], &s),
        ("e2i-to-qcow2", &[], &s),
        ("qcow2-to-raw", &[], &q),
    ];
    for (t, args, input) in runs {
        let o = run(tool_cmd(t)
            .args(args)
            .arg(input)
            .arg("-")
            .stdout(std::fs::File::open(&ro).unwrap()));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{t} {args:?}: {err}");
        assert!(
            err.lines().count() == 1 && err.contains("open for reading only"),
            "{t} {args:?}: {err}"
        );
        assert_eq!(read(&ro), b"keep");
    }
}

/// A version 2 stream may claim billions of selected blocks for a few bytes (one zero
/// segment). The qcow2 written from it in one pass plans its tables for all of them, as
/// `e2i-capture -Q` would, but writes only what holds something: a stream of 2^26 blocks of
/// 64 KiB (4 TiB) with two data blocks wrote 128 MiB of refcount blocks of zeros and stepped
/// through the skipped clusters one by one (with 2^32 blocks: 8 GiB written, over a minute).
#[test]
fn a_huge_zero_segment_costs_no_huge_qcow2() {
    let d = tempdir();
    let bs = 65536u32;
    let n = 1u64 << 26;
    let mut body = seg(1, false);
    body.extend(vec![0xab; bs as usize]);
    body.extend(seg(n - 2, true));
    body.extend(seg(1, false));
    body.extend(vec![0xcd; bs as usize]);
    let s = d.path().join("claim.e2is");
    std::fs::write(&s, v2(bs, n, &[(0, n, 1)], &body, (2, n - 2))).unwrap();
    for extra in [&[][..], &["--compress"][..]] {
        let q = d.path().join("claim.qcow2");
        let _ = std::fs::remove_file(&q);
        run_ok(tool_cmd("e2i-to-qcow2").args(extra).arg(&s).arg(&q));
        let allocated =
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&q).unwrap()) * 512;
        assert!(
            allocated < 8 << 20,
            "{extra:?}: {allocated} bytes allocated for two data blocks"
        );
        assert_eq!(qemu_check(&q), 0, "{extra:?}: qemu-img check");
        // The two blocks where the stream put them, zeros between.
        let raw = d.path().join("claim.raw");
        run_ok(tool_cmd("qcow2-to-raw").arg(&q).arg(&raw));
        let f = std::fs::File::open(&raw).unwrap();
        let mut b = vec![0u8; bs as usize];
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 0xab));
        f.read_exact_at(&mut b, (n - 1) * u64::from(bs)).unwrap();
        assert!(b.iter().all(|&x| x == 0xcd));
        f.read_exact_at(&mut b, (n / 2) * u64::from(bs)).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        std::fs::remove_file(&raw).unwrap();
    }
}
