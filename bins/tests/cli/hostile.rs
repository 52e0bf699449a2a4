//! What a hostile administrator does to the tools on a broken system, and what each must do:
//! outputs named through the kernel's own links (`/dev/stdout`, `/proc/self/fd/N`), files
//! that cannot be renamed over (append-only, bind-mounted, in a sticky folder), loop devices
//! over loop devices, read-only devices, qcow2 containers as raw targets, offsets no file can
//! reach; and for e2i-move, finished journals over half-moved copies, two movers at once,
//! and journals that cannot be written. Each test failed on the tools before the fix it
//! guards (run with `E2I_TEST_BIN_DIR` pointing at an older build to see it).

use super::util::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const MIB: u64 = 1 << 20;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: exit {:?}: {}{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn failed(o: &Output, what: &str) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}: expected exit 1: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stderr)
}

/// A loop device over `file` (extra `losetup` options), detached on drop.
struct Loop(String);

impl Loop {
    fn new(file: &Path, extra: &[&str]) -> Loop {
        let o = run(Command::new("losetup")
            .args(["-f", "--show"])
            .args(extra)
            .arg(file));
        ok(&o, "losetup");
        Loop(text(&o.stdout).trim().to_string())
    }
    fn path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A mount (`mount ARGS… TARGET`), undone on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(args: &[&Path], target: &Path, opts: &[&str]) -> Mount {
        ok(
            &run(Command::new("mount").args(opts).args(args).arg(target)),
            "mount",
        );
        Mount(target.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `chattr FLAGS FILE`, undone on drop (a test that fails must not leave an undeletable file).
struct Attr(PathBuf, &'static str);

impl Attr {
    fn set(file: &Path, flag: &'static str) -> Attr {
        ok(
            &run(Command::new("chattr").arg(format!("+{flag}")).arg(file)),
            "chattr",
        );
        Attr(file.to_path_buf(), flag)
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .arg(format!("-{}", self.1))
            .arg(&self.0)
            .status();
    }
}

/// A small filesystem and its images.
struct Fx {
    dir: tempfile::TempDir,
    img: PathBuf,
    qcow2: PathBuf,
}

impl Fx {
    fn new() -> Fx {
        let dir = tempdir();
        let img = mkfs(dir.path(), "fs.img", "4M", &[]);
        let qcow2 = dir.path().join("fs.qcow2");
        ok(
            &run(Command::new("e2image").arg("-Q").arg(&img).arg(&qcow2)),
            "e2image -Q",
        );
        Fx { dir, img, qcow2 }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// e2image -r of the filesystem: what every raw output must hold.
    fn raw(&self) -> Vec<u8> {
        let want = self.path("want.raw");
        if !want.exists() {
            ok(
                &run(Command::new("e2image").arg("-r").arg(&self.img).arg(&want)),
                "e2image -r",
            );
        }
        fs::read(want).unwrap()
    }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Tools that write a stream, with what they read.
fn stream_writers(fx: &Fx) -> Vec<(&'static str, Vec<&'static str>, PathBuf)> {
    vec![
        ("e2i-capture", vec![], fx.img.clone()),
        ("e2i-capture", vec!["-r"], fx.img.clone()),
        ("e2i-capture", vec!["-Q"], fx.img.clone()),
        ("e2i-to-raw", vec![], fx.img.clone()),
        ("e2i-to-qcow2", vec![], fx.img.clone()),
        ("qcow2-to-raw", vec![], fx.qcow2.clone()),
    ]
}

/// `/dev/stdout`, `/dev/fd/1`, `/proc/self/fd/1` are the kernel's links to whatever fd 1
/// is: a pipe is written as a pipe (the text of the link, `pipe:[N]`, names no file), a
/// deleted file is written where it is (not as a new file named `x (deleted)`).
#[test]
fn the_kernels_links_to_stdout_are_written_through() {
    let fx = Fx::new();
    for (t, args, input) in stream_writers(&fx) {
        let what = format!("{t} {args:?}");
        let want = run(Command::new(tool(t)).args(&args).arg(&input).arg("-"));
        ok(&want, &format!("{what} to -"));
        for name in ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"] {
            let o = run(Command::new(tool(t))
                .args(&args)
                .arg(&input)
                .arg(name)
                .stdout(Stdio::piped()));
            ok(&o, &format!("{what} to {name} on a pipe"));
            assert!(
                o.stdout == want.stdout,
                "{what} to {name} on a pipe: {} bytes, '-' gives {}",
                o.stdout.len(),
                want.stdout.len()
            );
        }
    }
    // A deleted file on fd 1: written there, as e2image writes it; nothing new in the folder.
    let raw = fx.raw();
    for (t, args, input) in [
        ("e2i-capture", vec!["-r"], fx.img.clone()),
        ("e2i-to-raw", vec![], fx.img.clone()),
        ("qcow2-to-raw", vec![], fx.qcow2.clone()),
        ("e2i-move", vec!["--metadata-only"], fx.img.clone()),
    ] {
        let sub = fx.path(&format!("deleted-{t}"));
        fs::create_dir(&sub).unwrap();
        let gone = sub.join("gone.raw");
        let mut f = fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&gone)
            .unwrap();
        fs::remove_file(&gone).unwrap();
        let o = run(Command::new(tool(t))
            .args(&args)
            .arg(&input)
            .arg("/dev/stdout")
            .stdout(Stdio::from(f.try_clone().unwrap())));
        ok(&o, &format!("{t} to /dev/stdout on a deleted file"));
        assert!(
            names(&sub).is_empty(),
            "{t}: wrote a new file instead: {:?}",
            names(&sub)
        );
        let mut got = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut got).unwrap();
        assert!(got == raw, "{t}: the deleted file does not hold the image");
    }
}

/// A file whose name cannot be replaced by a rename is found out before the work, not at
/// its end: an append-only or immutable file is refused as open(2) refuses it (e2image's
/// answer); a file bind-mounted over another name, and another user's writable file in a
/// sticky folder (/tmp), are written in place, as e2image writes them.
#[test]
fn files_that_cannot_be_renamed_over_are_found_out_first() {
    let fx = Fx::new();
    let raw = fx.raw();
    for (flag, _) in [("a", "append-only"), ("i", "immutable")] {
        for (i, (t, args, input)) in stream_writers(&fx).into_iter().enumerate() {
            let sub = fx.path(&format!("attr-{flag}-{i}"));
            fs::create_dir(&sub).unwrap();
            let out = sub.join("old.img");
            fs::write(&out, b"precious").unwrap();
            let _a = Attr::set(&out, flag);
            let what = format!("{t} {args:?} over a +{flag} file");
            let err = failed(
                &run(Command::new(tool(t)).args(&args).arg(&input).arg(&out)),
                &what,
            );
            assert!(err.contains("Operation not permitted"), "{what}: {err}");
            assert!(err.contains("open"), "{what}: refused at open: {err}");
            assert_eq!(fs::read(&out).unwrap(), b"precious", "{what}");
            assert_eq!(names(&sub), ["old.img"], "{what}: temporary files left");
        }
    }
    // A file bind-mounted over another name: the mounted file is written.
    let shown = fx.path("shown.img");
    let hidden = fx.path("under.img");
    fs::write(&shown, b"old").unwrap();
    fs::write(&hidden, b"hidden").unwrap();
    {
        let _m = Mount::new(&[&shown], &hidden, &["--bind"]);
        for (t, args) in [
            ("e2i-capture", vec!["-r"]),
            ("e2i-to-raw", vec![]),
            ("e2i-move", vec!["--metadata-only"]),
        ] {
            fs::write(&shown, b"").unwrap();
            let o = run(Command::new(tool(t)).args(&args).arg(&fx.img).arg(&hidden));
            ok(&o, &format!("{t} onto a bind-mounted file"));
            assert!(fs::read(&shown).unwrap() == raw, "{t}: bind-mounted file");
        }
    }
    assert_eq!(fs::read(&hidden).unwrap(), b"hidden");
    // Another user's writable file in a sticky folder, written by nobody.
    let sticky = fx.path("sticky");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(fx.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    let input = sticky.join("in.img");
    fs::copy(&fx.img, &input).unwrap();
    fs::set_permissions(&input, fs::Permissions::from_mode(0o644)).unwrap();
    let out = sticky.join("roots.raw");
    fs::write(&out, b"old").unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o666)).unwrap();
    let o = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tool("e2i-to-raw"))
        .arg(&input)
        .arg(&out));
    ok(&o, "e2i-to-raw over root's 0666 file in a sticky folder");
    assert!(fs::read(&out).unwrap() == raw);
    assert_eq!(names(&sticky), ["in.img", "roots.raw"]);
}

/// `x/` names a folder: a missing one is reported at once, not after the whole image has
/// been written under a temporary name that cannot be renamed to it.
#[test]
fn a_trailing_slash_is_a_folder() {
    let fx = Fx::new();
    for (t, args, input) in stream_writers(&fx) {
        for dry in [false, true] {
            let mut c = Command::new(tool(t));
            c.args(&args);
            if dry && t != "e2i-capture" {
                c.arg("-n");
            }
            let o = run(c.arg(&input).arg(fx.path("new.raw/")));
            let err = failed(&o, &format!("{t} {args:?} to new.raw/"));
            assert!(err.contains("Is a directory"), "{t}: {err}");
        }
    }
    assert!(!names(fx.dir.path()).iter().any(|n| n.contains("new.raw")));
}

/// A loop device over a loop device over SOURCE is SOURCE's bytes; a read-only device is
/// refused before anything is opened for writing, also in a dry run.
#[test]
fn loops_over_loops_and_read_only_devices() {
    let fx = Fx::new();
    let src = fx.path("src.img");
    let mut disk = vec![0u8; MIB as usize];
    disk.extend_from_slice(&fs::read(&fx.img).unwrap());
    disk.resize(disk.len() + MIB as usize, 0);
    fs::write(&src, &disk).unwrap();
    let l1 = Loop::new(&src, &[]);
    let l2 = Loop::new(l1.path(), &[]);
    for (t, args) in [
        ("e2i-capture", vec!["-r", "-o", "1048576"]),
        ("e2i-move", vec!["-o", "1048576"]),
    ] {
        let o = run(Command::new(tool(t)).args(&args).arg(&src).arg(l2.path()));
        let err = failed(&o, &format!("{t}: OUTPUT a loop over a loop over SOURCE"));
        assert!(err.contains("is SOURCE"), "{t}: {err}");
        assert!(fs::read(&src).unwrap() == disk, "{t}: SOURCE changed");
    }
    // Loop devices over OUTPUT do not make it INPUT: writing SOURCE's file is not refused
    // because something else reads it.
    let o = run(Command::new(tool("e2i-to-raw"))
        .args(["-O", "1048576"])
        .arg(&fx.img)
        .arg(&src));
    ok(&o, "e2i-to-raw into a file that loop devices stand on");
    drop(l2);
    drop(l1);
    let target = fx.path("ro.img");
    fs::write(&target, vec![0x5au8; 6 * MIB as usize]).unwrap();
    let ro = Loop::new(&target, &["-r"]);
    for dry in [false, true] {
        for (t, args) in [
            ("e2i-to-raw", vec![]),
            ("e2i-capture", vec!["-r"]),
            ("e2i-move", vec![]),
        ] {
            let mut c = Command::new(tool(t));
            c.args(&args);
            if dry && t != "e2i-capture" {
                c.arg("-n");
            }
            let o = run(c.arg(&fx.img).arg(ro.path()));
            let err = failed(&o, &format!("{t} onto a read-only device (dry run {dry})"));
            assert!(err.contains("read-only"), "{t}: {err}");
        }
    }
    drop(ro);
    assert!(fs::read(&target).unwrap().iter().all(|&b| b == 0x5a));
}

/// An existing qcow2 image given as a target written by position (e2i-move's DEST, `-O`,
/// `-c`) would have raw bytes written into its container: refused, nothing written. Given
/// as a plain OUTPUT it is replaced by the new image, as asked.
#[test]
fn an_existing_qcow2_is_never_written_by_position() {
    let fx = Fx::new();
    let before = fs::read(&fx.qcow2).unwrap();
    let target = fx.path("target.qcow2");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("e2i-move", vec![]),
        ("e2i-move", vec!["-O", "4096"]),
        ("e2i-move", vec!["-n"]),
        ("e2i-to-raw", vec!["-O", "0"]),
        ("e2i-to-raw", vec!["-c"]),
        ("e2i-to-raw", vec!["-c", "-n"]),
    ];
    for (t, args) in cases {
        fs::write(&target, &before).unwrap();
        let o = run(Command::new(tool(t)).args(&args).arg(&fx.img).arg(&target));
        let err = failed(&o, &format!("{t} {args:?} into a qcow2 image"));
        assert!(err.contains("is a qcow2 image"), "{t} {args:?}: {err}");
        assert!(
            fs::read(&target).unwrap() == before,
            "{t} {args:?}: changed"
        );
    }
    fs::write(&target, &before).unwrap();
    let o = run(Command::new(tool("qcow2-to-raw"))
        .args(["-O", "0"])
        .arg(&fx.qcow2)
        .arg(&target));
    failed(&o, "qcow2-to-raw -O into a qcow2 image");
    ok(
        &run(Command::new(tool("e2i-to-raw")).arg(&fx.img).arg(&target)),
        "e2i-to-raw replacing a qcow2 file",
    );
    assert!(fs::read(&target).unwrap() == fx.raw());
}

/// An offset no file can reach (past 2^63 - 1, or past the largest file of the filesystem
/// holding the target) is refused before anything is created or written — for an in-place
/// move, before its journal exists (it would otherwise fail at its first write and leave
/// an unfinished journal that blocks every other move).
#[test]
fn offsets_no_file_can_reach_are_refused_first() {
    let fx = Fx::new();
    // A filesystem whose largest file is known: ext4 with 1 KiB blocks, 4 TiB.
    let small = fx.path("small.ext4");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "1024"])
        .arg(&small)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let mnt = fx.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let lo = Loop::new(&small, &[]);
    let _m = Mount::new(&[lo.path()], &mnt, &[]);
    let state = fx.path("state");
    for off in ["9223372036854775808", "5T"] {
        for (t, args, input) in [
            ("e2i-to-raw", vec!["-O", off], fx.img.clone()),
            ("qcow2-to-raw", vec!["-O", off], fx.qcow2.clone()),
            ("e2i-move", vec!["-O", off], fx.img.clone()),
        ] {
            for existing in [false, true] {
                let out = mnt.join("out.raw");
                let _ = fs::remove_file(&out);
                if existing {
                    fs::write(&out, b"old").unwrap();
                }
                let what = format!("{t} -O {off} (existing {existing})");
                let o = run(Command::new(tool(t))
                    .args(&args)
                    .arg(&input)
                    .arg(&out)
                    .env("XDG_STATE_HOME", &state));
                let err = failed(&o, &what);
                assert!(err.contains("cannot reach"), "{what}: {err}");
                assert!(err.contains("out.raw"), "{what}: names OUTPUT: {err}");
                let left = names(&mnt);
                let want: &[&str] = if existing {
                    &["lost+found", "out.raw"]
                } else {
                    &["lost+found"]
                };
                assert_eq!(left, want, "{what}");
                if existing {
                    assert_eq!(fs::read(&out).unwrap(), b"old", "{what}");
                }
            }
        }
        // In place: no journal, nothing written, and the next (sane) move is not blocked.
        fs::remove_file(mnt.join("out.raw")).unwrap();
        let img = mnt.join("fs.img");
        fs::copy(&fx.img, &img).unwrap();
        let o = run(Command::new(tool("e2i-move"))
            .args(["-O", off])
            .arg(&img)
            .env("XDG_STATE_HOME", &state));
        let err = failed(&o, &format!("e2i-move in place -O {off}"));
        assert!(err.contains("cannot reach"), "{err}");
        assert_eq!(names(&mnt), ["fs.img", "lost+found"], "-O {off}: a journal");
        assert!(fs::read(&img).unwrap() == fs::read(&fx.img).unwrap());
        let o = run(Command::new(tool("e2i-move"))
            .args(["-O", "1M"])
            .arg(&img)
            .env("XDG_STATE_HOME", &state));
        ok(&o, "the move after it");
        fs::remove_file(&img).unwrap();
        let _ = fs::remove_file(mnt.join("fs.img.e2i-move"));
    }
}
