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

/// A 12 MiB tmpfs mounted at `dir/small` (for writes that run out of room).
fn small_tmpfs(dir: &Path) -> (PathBuf, Mount) {
    let mnt = dir.join("small");
    fs::create_dir(&mnt).unwrap();
    let m = Mount::new(
        &[Path::new("tmpfs")],
        &mnt,
        &["-t", "tmpfs", "-o", "size=12m"],
    );
    (mnt, m)
}

/// `chattr FLAGS FILE`, undone on drop (a test that fails must not leave an undeletable file).
struct Attr(PathBuf, &'static str);

impl Attr {
    fn set(file: &Path, flag: &'static str) -> Attr {
        run_ok(Command::new("chattr").arg(format!("+{flag}")).arg(file));
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
        run_ok(Command::new("e2image").arg("-Q").arg(&img).arg(&qcow2));
        Fx { dir, img, qcow2 }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// e2image -r of the filesystem: what every raw output must hold.
    fn raw(&self) -> Vec<u8> {
        let want = self.path("want.raw");
        if !want.exists() {
            run_ok(Command::new("e2image").arg("-r").arg(&self.img).arg(&want));
        }
        fs::read(want).unwrap()
    }
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
        let want = run(tool_cmd(t).args(&args).arg(&input).arg("-"));
        ok(&want, &format!("{what} to -"));
        for name in ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"] {
            let o = run(tool_cmd(t)
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
        let o = run(tool_cmd(t)
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
            let err = failed(&run(tool_cmd(t).args(&args).arg(&input).arg(&out)), &what);
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
            let o = run(tool_cmd(t).args(&args).arg(&fx.img).arg(&hidden));
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
    run_ok(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(tool("e2i-to-raw"))
            .arg(&input)
            .arg(&out),
    );
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
            let mut c = tool_cmd(t);
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
        let o = run(tool_cmd(t).args(&args).arg(&src).arg(l2.path()));
        let err = failed(&o, &format!("{t}: OUTPUT a loop over a loop over SOURCE"));
        assert!(err.contains("is SOURCE"), "{t}: {err}");
        assert!(fs::read(&src).unwrap() == disk, "{t}: SOURCE changed");
    }
    // Loop devices over OUTPUT do not make it INPUT: writing SOURCE's file is not refused
    // because something else reads it.
    run_ok(
        tool_cmd("e2i-to-raw")
            .args(["-O", "1048576"])
            .arg(&fx.img)
            .arg(&src),
    );
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
            let mut c = tool_cmd(t);
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
    // Moved in place: refused before a journal is begun (it failed at its first write).
    let state = fx.path("state");
    let ro = Loop::new(&src, &["-r"]);
    let o = run(tool_cmd("e2i-move")
        .args(["-o", "1048576", "-O", "2097152"])
        .arg(ro.path())
        .env("XDG_STATE_HOME", &state));
    let err = failed(&o, "e2i-move in place on a read-only device");
    assert!(err.contains("read-only"), "{err}");
    assert!(!state.exists(), "a journal was begun: {:?}", names(&state));
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
        let o = run(tool_cmd(t).args(&args).arg(&fx.img).arg(&target));
        let err = failed(&o, &format!("{t} {args:?} into a qcow2 image"));
        assert!(err.contains("is a qcow2 image"), "{t} {args:?}: {err}");
        assert!(
            fs::read(&target).unwrap() == before,
            "{t} {args:?}: changed"
        );
    }
    fs::write(&target, &before).unwrap();
    let o = run(tool_cmd("qcow2-to-raw")
        .args(["-O", "0"])
        .arg(&fx.qcow2)
        .arg(&target));
    failed(&o, "qcow2-to-raw -O into a qcow2 image");
    run_ok(tool_cmd("e2i-to-raw").arg(&fx.img).arg(&target));
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
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024"])
            .arg(&small)
            .arg("16M"),
    );
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
                let o = run(tool_cmd(t)
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
        let o = run(tool_cmd("e2i-move")
            .args(["-O", off])
            .arg(&img)
            .env("XDG_STATE_HOME", &state));
        let err = failed(&o, &format!("e2i-move in place -O {off}"));
        assert!(err.contains("cannot reach"), "{err}");
        assert_eq!(names(&mnt), ["fs.img", "lost+found"], "-O {off}: a journal");
        assert!(fs::read(&img).unwrap() == fs::read(&fx.img).unwrap());
        run_ok(
            tool_cmd("e2i-move")
                .args(["-O", "1M"])
                .arg(&img)
                .env("XDG_STATE_HOME", &state),
        );
        fs::remove_file(&img).unwrap();
        let _ = fs::remove_file(mnt.join("fs.img.e2i-move"));
    }
}

/// Wait until `dir` has a name containing `part` (true), or `child` ends without one
/// (false). No time limit: the child is held by its test hook, and a loaded machine only
/// makes it slower.
fn wait_for_name(dir: &Path, part: &str, child: &mut std::process::Child) -> bool {
    loop {
        if names(dir).iter().any(|n| n.contains(part)) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// SIGKILL (the OOM killer) leaves a run's temporary file behind — possibly gigabytes on a
/// disk already short of room. The next run writing the same OUTPUT removes it; it never
/// touches the temporary file of a run that is still alive.
#[test]
fn a_killed_runs_temporary_file_is_removed_by_the_next_run() {
    let fx = Fx::new();
    let outs = fx.path("outs");
    fs::create_dir(&outs).unwrap();
    let out = outs.join("new.raw");
    let paused = |name: &Path| {
        tool_cmd("e2i-to-raw")
            .arg(&fx.img)
            .arg(name)
            .env("E2I_TEST_PAUSE_AFTER_OPEN_MS", "600000")
            .spawn()
            .unwrap()
    };
    let mut killed = Reaper::new(paused(&out));
    assert!(
        wait_for_name(&outs, "partial", killed.child_mut()),
        "no temporary file"
    );
    killed.child_mut().kill().unwrap();
    killed.take().wait().unwrap();
    assert!(names(&outs).iter().any(|n| n.contains("partial")));
    // A live run on the same OUTPUT keeps its file while another run finishes.
    let mut live = Reaper::new(paused(&out));
    let live_name = format!("e2i-partial-{}-", live.child().id());
    assert!(
        wait_for_name(&outs, &live_name, live.child_mut()),
        "no live temporary file"
    );
    run_ok(tool_cmd("e2i-to-raw").arg(&fx.img).arg(&out));
    let left = names(&outs);
    assert!(fs::read(&out).unwrap() == fx.raw());
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|n| n.contains(&live_name)), "{left:?}");
    drop(live);
}

/// Opening a FIFO waits for its reader, as e2image's open does; on a terminal the tool says
/// so instead of seeming to hang, then writes the stream once a reader comes.
#[test]
fn a_fifo_without_a_reader_is_announced_on_a_terminal() {
    let fx = Fx::new();
    let fifo = fx.path("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    // `script` gives the tool a terminal; its output (the terminal's) is collected here.
    let cmd = format!(
        "{} {} {}",
        tool("e2i-to-raw").display(),
        fx.img.display(),
        fifo.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut term = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = term.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if text(&seen).contains("waiting for one") {
                let _ = tx.send(());
            }
        }
        seen
    });
    // Two minutes of polls: the note comes at once, but no note must not hang the test.
    let announced = poll_until(6000, || rx.try_recv().is_ok());
    let mut got = Vec::new();
    fs::File::open(&fifo)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let seen = text(&reader.join().unwrap());
    assert!(announced, "no note on the terminal: {seen}");
    assert!(got == fx.raw(), "the reader got {} bytes", got.len());
    // A reader already there gets everything, and no note is printed: finding out whether
    // a reader is there must not open and close the FIFO (its reader would read end of file
    // and go). `holder` is that reader; the data is read through a second descriptor.
    let holder = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&fifo)
            .unwrap()
    };
    let f2 = fifo.clone();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        fs::File::open(&f2).unwrap().read_to_end(&mut v).unwrap();
        v
    });
    let o = run_ok(
        Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null()),
    );
    assert!(!text(&o.stdout).contains("waiting"), "{}", text(&o.stdout));
    let got = reader.join().unwrap();
    drop(holder);
    assert!(got == fx.raw(), "a waiting reader got {} bytes", got.len());
}

/// Run `cmd`; when it is still running after two minutes of polls (stuck in the open of
/// `fifo`, for reading or for writing), unblock it by opening the FIFO read-write (both ends
/// at once, which never blocks on Linux), kill it and return `None`.
fn run_unless_stuck(cmd: &mut Command, fifo: &Path) -> Option<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if !poll_until(6000, || child.try_wait().unwrap().is_some()) {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(fifo);
        child.kill().unwrap();
        child.wait().unwrap();
        return None;
    }
    Some(child.wait_with_output().unwrap())
}

/// A FIFO OUTPUT of a run that writes by position (`-O`, `-c`) or needs a new regular file
/// (`--compress`) is refused before it is opened: the open waited for a reader, forever
/// when none came, only for the run to be refused then.
#[test]
fn a_fifo_the_run_cannot_use_is_refused_unopened() {
    let fx = Fx::new();
    let fifo = fx.path("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let cases: Vec<(&str, Vec<&str>, &Path)> = vec![
        ("e2i-to-raw", vec!["-O", "0"], &fx.img),
        ("e2i-to-raw", vec!["-c"], &fx.img),
        ("e2i-to-raw", vec!["-c", "-n"], &fx.img),
        ("qcow2-to-raw", vec!["-O", "4096"], &fx.qcow2),
        ("e2i-to-qcow2", vec!["--compress"], &fx.img),
        ("e2i-capture", vec!["-Q", "--compress"], &fx.img),
    ];
    for (t, args, input) in cases {
        let what = format!("{t} {args:?} to a FIFO without a reader");
        let o = run_unless_stuck(tool_cmd(t).args(&args).arg(input).arg(&fifo), &fifo)
            .unwrap_or_else(|| panic!("{what}: waited for a reader"));
        let err = failed(&o, &what);
        assert!(err.contains("FIFO"), "{what}: {err}");
    }
}

// ---- e2i-move ----

/// Test sizes: pieces of 64 KiB written in 16 KiB slices, so a small filesystem has many
/// pieces and crash points.
const PIECE_KIB: u64 = 64;
const SLICE_KIB: &str = "16";

/// A disk: `head` bytes of a pattern, a filesystem with some data, 1 MiB of pattern; and
/// `e2image -ra` of the filesystem alone (what the moved filesystem must hold).
fn move_disk(dir: &Path, head: u64) -> (PathBuf, Vec<u8>) {
    let tree = dir.join("tree");
    fs::create_dir_all(&tree).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..24 {
        let v: Vec<u8> = noise(&mut x, 20_000 + i * 7_000);
        fs::write(tree.join(format!("f{i}")), v).unwrap();
    }
    let img = dir.join("fs.img");
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("6M"),
    );
    let want = dir.join("want.raw");
    run_ok(Command::new("e2image").arg("-ra").arg(&img).arg(&want));
    let mut d: Vec<u8> = (0..head).map(|i| (i % 253) as u8).collect();
    d.extend_from_slice(&fs::read(&img).unwrap());
    d.extend((0..MIB).map(|i| (i % 241) as u8));
    let disk = dir.join("disk.img");
    fs::write(&disk, d).unwrap();
    (disk, fs::read(want).unwrap())
}

/// e2i-move with the test sizes, its own state folder, killed at crash point `kill_at`
/// (0: not killed).
fn mv(args: &[&str], disk: &Path, state: &Path, kill_at: u64) -> Output {
    run(tool_cmd("e2i-move")
        .args(args)
        .arg(disk)
        .env("XDG_STATE_HOME", state)
        .env("E2I_MOVE_PIECE_KIB", PIECE_KIB.to_string())
        .env("E2I_MOVE_SLICE_KIB", SLICE_KIB)
        .env("E2I_MOVE_KILL_AT", kill_at.to_string()))
}

fn crash_points(o: &Output) -> u64 {
    text(&o.stderr)
        .lines()
        .find_map(|l| {
            l.strip_suffix(" crash points")?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("crash point count")
}

fn was_killed(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

/// Does `disk` hold, at byte `off`, the filesystem `want` (e2image -ra) that passes e2fsck?
fn holds_fs(disk: &Path, off: u64, want: &[u8], scratch: &Path) -> bool {
    let got = scratch.join("got.raw");
    let _ = fs::remove_file(&got);
    let o = run(Command::new("e2image")
        .args(["-ra", "-o", &off.to_string()])
        .arg(disk)
        .arg(&got));
    let fsck = run(Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={off}", disk.display())));
    o.status.success() && fsck.status.success() && fs::read(&got).unwrap() == want
}

/// A finished journal is "finished" only when the moved filesystem is there. A copy of the
/// image taken while the move ran and put back afterwards (in place, or as a new file) can
/// already hold the moved superblock at D — a move to the left writes it first — and was
/// called finished (exit 0, e2fsck failing at D). Every such rerun must now refuse (nothing
/// written) or end with the right filesystem; the moved filesystem used since is refused
/// with what to do, an untouched one is still "already finished".
#[test]
fn a_finished_journal_never_calls_a_half_moved_copy_finished() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = move_disk(d.path(), 2 * MIB);
    let orig = fs::read(&disk).unwrap();
    let args = ["-o", "2097152", "-O", "1048576"];
    let total = crash_points(&mv(&args, &disk, &state, u64::MAX));
    let (mut refused, mut moved) = (0, 0);
    for c in [2, 3, 4, 6, total / 4, total / 2, total - 2] {
        for new_inode in [false, true] {
            let what = format!("killed at {c} of {total}, put back as a new inode: {new_inode}");
            fs::write(&disk, &orig).unwrap();
            let _ = fs::remove_file(journal_of(&disk));
            assert!(
                was_killed(&mv(&args, &disk, &state, c)),
                "{what}: not killed"
            );
            let half = fs::read(&disk).unwrap();
            ok(&mv(&args, &disk, &state, 0), &format!("{what}: finishing"));
            assert!(
                holds_fs(&disk, MIB, &want, d.path()),
                "{what}: finished move"
            );
            if new_inode {
                let tmp = d.path().join("half.img");
                fs::write(&tmp, &half).unwrap();
                fs::rename(&tmp, &disk).unwrap();
            } else {
                fs::write(&disk, &half).unwrap();
            }
            let o = mv(&args, &disk, &state, 0);
            if o.status.success() {
                moved += 1;
                assert!(
                    !text(&o.stdout).contains("already finished")
                        || holds_fs(&disk, MIB, &want, d.path()),
                    "{what}: called finished: {}",
                    text(&o.stdout)
                );
                assert!(holds_fs(&disk, MIB, &want, d.path()), "{what}: corrupted");
            } else {
                let err = failed(&o, &what);
                assert!(err.contains("half-moved"), "{what}: {err}");
                assert!(
                    fs::read(&disk).unwrap() == half,
                    "{what}: the refusal wrote"
                );
                refused += 1;
            }
        }
    }
    assert!(refused >= 2, "{refused} refused, {moved} moved");
    // The moved filesystem, untouched since: finished, without a word about anything else.
    fs::write(&disk, &orig).unwrap();
    let _ = fs::remove_file(journal_of(&disk));
    ok(&mv(&args, &disk, &state, 0), "move");
    let o = mv(&args, &disk, &state, 0);
    ok(&o, "rerun");
    assert!(
        text(&o.stdout).contains("already finished"),
        "{}",
        text(&o.stdout)
    );
    // Used since (its label changed, as tune2fs -L would): not finished, not moved, said
    // why. (A change in a free block is no change to what the move wrote.)
    let mut used = fs::read(&disk).unwrap();
    let at = (MIB + 1024 + 0x78) as usize;
    used[at] ^= 0xff;
    fs::write(&disk, &used).unwrap();
    let err = failed(&mv(&args, &disk, &state, 0), "rerun over a used filesystem");
    assert!(err.contains("used since"), "{err}");
    assert!(fs::read(&disk).unwrap() == used);
}

/// The identity index finds unfinished journals only. A finished one found through it (a
/// move finished under --journal, SOURCE restored from its backup; or a deleted file whose
/// inode number SOURCE reuses) was used as the new move's journal: the new move's journal
/// went into that other folder and overwrote the file there.
#[test]
fn the_index_never_hands_a_new_move_an_old_finished_journal() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = move_disk(d.path(), MIB);
    let orig = fs::read(&disk).unwrap();
    let other = d.path().join("elsewhere");
    fs::create_dir(&other).unwrap();
    let named = other.join("j");
    let args = ["-o", "1048576", "-O", "1052672"];
    let mut a = args.to_vec();
    a.extend(["--journal", named.to_str().unwrap()]);
    ok(&mv(&a, &disk, &state, 0), "move with --journal");
    let kept = fs::read(&named).unwrap();
    fs::write(&disk, &orig).unwrap();
    ok(
        &mv(&args, &disk, &state, 0),
        "the same move, restored, default journal",
    );
    assert!(holds_fs(&disk, MIB + 4096, &want, d.path()));
    assert!(
        journal_of(&disk).exists(),
        "the new journal is next to SOURCE"
    );
    assert!(
        fs::read(&named).unwrap() == kept,
        "the other journal was overwritten"
    );
}

/// One mover per SOURCE and per journal, under every name: a move through a loop device
/// over the file being moved (with the file's journal named, or not) is refused while the
/// first runs — it used to adopt the journal and move the same bytes at the same time.
#[test]
fn two_movers_never_share_a_file_or_a_journal() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = move_disk(d.path(), MIB);
    // Within the loop device's size (the disk's size when it is set up).
    let args = ["-o", "1048576", "-O", "2097152"];
    // Held before its third write until the checks are done.
    let first = held_mover(&args, &disk, &state, PIECE_KIB);
    let journal = journal_of(&disk);
    assert!(journal.exists(), "the first move never started");
    let lo = Loop::new(&disk, &[]);
    for extra in [vec!["--journal", journal.to_str().unwrap()], vec![]] {
        let mut a = args.to_vec();
        a.extend(extra.iter());
        let o = run(tool_cmd("e2i-move")
            .args(&a)
            .arg(lo.path())
            .env("XDG_STATE_HOME", &state));
        let what = format!("a second mover through {} {extra:?}", lo.0);
        let err = failed(&o, &what);
        assert!(err.contains("another e2i-move"), "{what}: {err}");
    }
    resume_stopped(first.child());
    let o = first.take().wait_with_output().unwrap();
    ok(&o, "the first mover");
    drop(lo);
    assert!(holds_fs(&disk, 2 * MIB, &want, d.path()));
}

/// An unfinished move that changed nothing (every piece still at its source: killed before
/// its first write, or failed there) does not block a move with other offsets: it is given
/// up with a note. One that moved something still blocks.
#[test]
fn a_move_that_changed_nothing_does_not_block_another() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = move_disk(d.path(), MIB);
    let orig = fs::read(&disk).unwrap();
    let first = ["-o", "1048576", "-O", "1050624"];
    assert!(was_killed(&mv(&first, &disk, &state, 1)), "not killed");
    assert!(journal_of(&disk).exists());
    assert!(fs::read(&disk).unwrap() == orig);
    let o = mv(&["-o", "1048576", "-O", "2097152"], &disk, &state, 0);
    ok(&o, "a move with other offsets");
    assert!(text(&o.stderr).contains("given up"), "{}", text(&o.stderr));
    assert!(holds_fs(&disk, 2 * MIB, &want, d.path()));
    // Half done: still blocks, and says how to finish it.
    fs::write(&disk, &orig).unwrap();
    let _ = fs::remove_file(journal_of(&disk));
    let total = crash_points(&mv(&first, &disk, &state, u64::MAX));
    fs::write(&disk, &orig).unwrap();
    let _ = fs::remove_file(journal_of(&disk));
    assert!(was_killed(&mv(&first, &disk, &state, total / 2)));
    let half = fs::read(&disk).unwrap();
    let err = failed(
        &mv(&["-o", "1048576", "-O", "2097152"], &disk, &state, 0),
        "a move over a half-done one",
    );
    assert!(err.contains("finish it first"), "{err}");
    assert!(fs::read(&disk).unwrap() == half);
    ok(&mv(&first, &disk, &state, 0), "finishing the first");
    assert!(holds_fs(&disk, MIB + 2048, &want, d.path()));
}

/// A FIFO SOURCE of e2i-move is refused before it is opened: a dry run, and any run with
/// `-o` (to say where SOURCE ends), opened it to read, which waits forever for a writer.
#[test]
fn a_fifo_source_of_a_move_is_refused_without_waiting() {
    let d = tempdir();
    let fifo = d.path().join("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let out = d.path().join("out.img");
    let (f, o) = (fifo.to_str().unwrap(), out.to_str().unwrap());
    let cases: [&[&str]; 4] = [
        &["-n", "-O", "1M", f],
        &["-o", "1M", "-O", "2M", f],
        &["-n", "-o", "1M", "-O", "2M", f],
        &["-o", "1M", f, o],
    ];
    for args in cases {
        let o = run_unless_stuck(
            tool_cmd("e2i-move")
                .args(args)
                .env("XDG_STATE_HOME", d.path().join("state")),
            &fifo,
        )
        .unwrap_or_else(|| panic!("{args:?}: waited for a writer"));
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = text(&o.stderr);
        assert!(
            err.contains("not a regular file or block device") || err.contains("not a seekable"),
            "{args:?}: {err}"
        );
        assert!(!out.exists(), "{args:?}");
    }
}

/// A journal that cannot be created is reported before the filesystem is scanned and read,
/// naming the journal (and, for the default place, how to give another).
#[test]
fn a_journal_that_cannot_be_created_is_found_out_first() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, _) = move_disk(d.path(), MIB);
    let orig = fs::read(&disk).unwrap();
    let ro = d.path().join("ro");
    fs::create_dir(&ro).unwrap();
    let _m = Mount::new(&[&ro], &ro, &["--bind"]);
    run_ok(
        Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&ro),
    );
    let j = ro.join("j");
    let o = mv(
        &[
            "-o",
            "1048576",
            "-O",
            "1052672",
            "--journal",
            j.to_str().unwrap(),
        ],
        &disk,
        &state,
        0,
    );
    let err = failed(&o, "--journal in a read-only folder");
    assert!(
        err.contains("cannot be created: Read-only file system"),
        "{err}"
    );
    assert!(!err.contains("another place"), "{err}");
    assert!(fs::read(&disk).unwrap() == orig);
    // The default place next to SOURCE, in a folder nobody may write.
    let locked = d.path().join("locked");
    fs::create_dir(&locked).unwrap();
    let img = locked.join("disk.img");
    fs::write(&img, &orig).unwrap();
    fs::set_permissions(&img, fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    let o = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tool("e2i-move"))
        .args(["-o", "1048576", "-O", "1052672"])
        .arg(&img)
        .env("XDG_STATE_HOME", &state));
    let err = failed(&o, "default journal in a locked folder");
    assert!(
        err.contains("cannot be created: Permission denied"),
        "{err}"
    );
    assert!(err.contains("--journal"), "{err}");
    assert!(fs::read(&img).unwrap() == orig);
}

/// A move killed after its superblock reached D (a move to the left writes it first), rerun
/// under another identity — a loop device over the file, a copy of it in another folder —
/// found no filesystem at S and said "was it moved already?" without naming the journal
/// that can finish it. It is found by the UUID at D, as it is by the one at S earlier in
/// the move: refused, nothing written, naming the journal; with that journal, finished.
#[test]
fn a_half_moved_source_under_another_identity_names_its_journal() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = move_disk(d.path(), 2 * MIB);
    let orig = fs::read(&disk).unwrap();
    let args = ["-o", "2097152", "-O", "1048576"];
    let total = crash_points(&mv(&args, &disk, &state, u64::MAX));
    let other = d.path().join("other");
    fs::create_dir(&other).unwrap();
    let copy = other.join("copy.img");
    for c in [3, total / 2, total - 2] {
        let what = format!("killed at {c} of {total}");
        fs::write(&disk, &orig).unwrap();
        let _ = fs::remove_file(journal_of(&disk));
        let _ = fs::remove_dir_all(&state);
        assert!(
            was_killed(&mv(&args, &disk, &state, c)),
            "{what}: not killed"
        );
        let half = fs::read(&disk).unwrap();
        fs::write(&copy, &half).unwrap();
        let j = journal_of(&disk);
        let lo = Loop::new(&disk, &[]);
        for (name, path) in [("a loop device", lo.path()), ("a copy", copy.as_path())] {
            let err = failed(&mv(&args, path, &state, 0), &format!("{what}: via {name}"));
            assert!(
                err.contains(&format!("finish it with --journal {}", j.display())),
                "{what}: via {name}: {err}"
            );
        }
        assert!(fs::read(&disk).unwrap() == half, "{what}: SOURCE changed");
        assert!(fs::read(&copy).unwrap() == half, "{what}: the copy changed");
        let mut a = args.to_vec();
        a.extend(["--journal", j.to_str().unwrap()]);
        ok(
            &mv(&a, lo.path(), &state, 0),
            &format!("{what}: finished via the loop"),
        );
        drop(lo);
        assert!(holds_fs(&disk, MIB, &want, d.path()), "{what}: moved");
    }
}

/// A SOURCE being moved in place holds no consistent filesystem anywhere until the move
/// ends: a clone or a capture of it taken meanwhile (a move to the right keeps a valid
/// superblock at S until its last piece) was silently corrupt, exit 0. Readers of SOURCE
/// (e2i-move's clone form, e2i-capture, the converters) are refused while a mover runs on
/// it — under any name, a loop device too — and while an unfinished move has left it half
/// moved; a journal SOURCE no longer matches (a backup restored) does not stand in the way.
#[test]
fn a_source_being_moved_is_not_read_as_a_filesystem() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = move_disk(d.path(), MIB);
    let orig = fs::read(&disk).unwrap();
    let args = ["-o", "1048576", "-O", "1052672"];
    let out = d.path().join("out.img");
    let readers = |src: &Path| -> Vec<(String, Command)> {
        let mut v = Vec::new();
        for (t, a) in [
            ("e2i-move", vec!["-o", "1048576"]),
            ("e2i-capture", vec!["-r", "-a", "-o", "1048576"]),
            ("e2i-to-raw", vec![]),
            ("e2i-to-qcow2", vec![]),
        ] {
            let mut c = tool_cmd(t);
            c.args(&a).arg(src).arg(&out).env("XDG_STATE_HOME", &state);
            v.push((format!("{t} {a:?} {}", src.display()), c));
        }
        v
    };
    // While a mover runs.
    // Held before its third write until every reader has been tried.
    let first = held_mover(&args, &disk, &state, PIECE_KIB);
    let journal = journal_of(&disk);
    assert!(journal.exists(), "the move never started");
    let lo = Loop::new(&disk, &[]);
    for src in [disk.as_path(), lo.path()] {
        for (what, mut c) in readers(src) {
            let err = failed(&run(&mut c), &format!("{what} during a move"));
            assert!(
                err.contains("an in-place e2i-move is moving"),
                "{what}: {err}"
            );
            assert!(!out.exists(), "{what}: wrote OUTPUT");
        }
    }
    drop(lo);
    resume_stopped(first.child());
    ok(&first.take().wait_with_output().unwrap(), "the move");
    assert!(holds_fs(&disk, MIB + 4096, &want, d.path()));
    // Half moved by a killed move: refused, naming the journal; finished, read as usual.
    fs::write(&disk, &orig).unwrap();
    fs::remove_file(&journal).unwrap();
    let total = crash_points(&mv(&args, &disk, &state, u64::MAX));
    for c in [4, total / 2, total - 2] {
        fs::write(&disk, &orig).unwrap();
        let _ = fs::remove_file(&journal);
        assert!(
            was_killed(&mv(&args, &disk, &state, c)),
            "not killed at {c}"
        );
        for (what, mut c) in readers(&disk) {
            let err = failed(&run(&mut c), &format!("{what} of a half-moved SOURCE"));
            // A converter's is its INPUT.
            let role = if what.starts_with("e2i-to-") {
                "INPUT"
            } else {
                "SOURCE"
            };
            assert!(
                err.contains(&format!("{role} is half-moved")),
                "{what}: {err}"
            );
            assert!(
                err.contains(&journal.display().to_string()),
                "{what}: {err}"
            );
            assert!(!out.exists(), "{what}: wrote OUTPUT");
        }
    }
    // A backup put back over the half-moved file: the journal is stale, SOURCE is read.
    fs::write(&disk, &orig).unwrap();
    let mut clone = readers(&disk).remove(0).1;
    run_ok(&mut clone);
    assert!(fs::read(&out).unwrap() == want, "the clone");
    fs::remove_file(&out).unwrap();
    // Finished: read as usual.
    fs::write(&disk, &orig).unwrap();
    let _ = fs::remove_file(&journal);
    ok(&mv(&args, &disk, &state, 0), "the move");
    let mut clone = tool_cmd("e2i-move");
    clone.args(["-o", "1052672"]).arg(&disk).arg(&out);
    run_ok(&mut clone);
    assert!(fs::read(&out).unwrap() == want, "the clone after the move");
}

/// The other side of the same lock: a target being moved in place is not written either. A
/// clone into it (e2i-move SRC DEST) wrote its blocks into a file the mover was rearranging,
/// and into a half-moved one, leaving a move that could no longer be finished. Every writer
/// of an existing target — e2i-move's DEST, the converters' in-place (-O, -c) and replaced
/// OUTPUT, e2i-capture's, e2i-install's DEVICE, and their dry runs — is refused while a
/// mover runs on it and while an unfinished move has left it half moved (naming the
/// journal), under any name: a symlink, a hard link, a loop device over it. Nothing is
/// written; a restored backup (a stale journal) and a finished move write as usual.
#[test]
fn a_target_being_moved_is_not_written() {
    let d = tempdir();
    let dir = d.path();
    let state = dir.join("state");
    let (disk, want) = move_disk(dir, MIB);
    let orig = fs::read(&disk).unwrap();
    let args = ["-o", "1048576", "-O", "1052672"];
    // What the writers write: the same filesystem, in each input format they take.
    let src = dir.join("fs.img");
    let qcow2 = dir.join("src.qcow2");
    run_ok(tool_cmd("e2i-capture").arg("-Q").arg(&src).arg(&qcow2));
    let normal = dir.join("src.e2i");
    run_ok(tool_cmd("e2i-capture").arg(&src).arg(&normal));
    let writers = |target: &Path| -> Vec<(String, Command)> {
        let mut v = Vec::new();
        for (t, a, input) in [
            ("e2i-move", vec!["-O", "1048576"], &src),
            ("e2i-move", vec!["-n", "-O", "1048576"], &src),
            ("e2i-to-raw", vec!["-O", "1048576"], &src),
            ("e2i-to-raw", vec!["-c", "-n"], &src),
            ("qcow2-to-raw", vec!["-c"], &qcow2),
            ("e2i-to-qcow2", vec![], &src),
            ("e2i-capture", vec!["-r"], &src),
        ] {
            let mut c = tool_cmd(t);
            c.args(&a)
                .arg(input)
                .arg(target)
                .env("XDG_STATE_HOME", &state);
            v.push((format!("{t} {a:?} into {}", target.display()), c));
        }
        for a in [vec!["-f"], vec!["-f", "-n"]] {
            let mut c = tool_cmd("e2i-install");
            c.args(&a)
                .arg(target)
                .arg(&normal)
                .env("XDG_STATE_HOME", &state);
            v.push((format!("e2i-install {a:?} onto {}", target.display()), c));
        }
        v
    };
    let link = dir.join("link.img");
    std::os::unix::fs::symlink(&disk, &link).unwrap();
    let hard = dir.join("hard.img");
    fs::hard_link(&disk, &hard).unwrap();
    let ino = || std::os::unix::fs::MetadataExt::ino(&fs::metadata(&disk).unwrap());
    let disk_ino = ino();
    // Every writer through every name is refused with `why`, and nothing changes.
    let refused = |why: &[&str], names: &[&Path]| {
        let before = fs::read(&disk).unwrap();
        let mut n = 0;
        for name in names {
            for (what, mut c) in writers(name) {
                let err = failed(&run(&mut c), &what);
                assert!(why.iter().all(|w| err.contains(w)), "{what}: {err}");
                assert!(err.contains(&name.display().to_string()), "{what}: {err}");
                assert!(
                    fs::read(&disk).unwrap() == before,
                    "{what}: the target changed"
                );
                assert_eq!(ino(), disk_ino, "{what}: the target was replaced");
                n += 1;
            }
        }
        n
    };

    // While a mover runs (held before its third write, its lock taken).
    let first = held_mover(&args, &disk, &state, PIECE_KIB);
    let journal = journal_of(&disk);
    assert!(journal.exists(), "the move never started");
    let lo = Loop::new(&disk, &[]);
    let n = refused(
        &["an in-place e2i-move is moving"],
        &[&disk, &link, &hard, lo.path()],
    );
    assert_eq!(n, 4 * writers(&disk).len());
    drop(lo);
    resume_stopped(first.child());
    ok(&first.take().wait_with_output().unwrap(), "the move");
    assert!(holds_fs(&disk, MIB + 4096, &want, dir));

    // Half moved by a killed move: refused, naming the journal.
    fs::write(&disk, &orig).unwrap();
    fs::remove_file(&journal).unwrap();
    let total = crash_points(&mv(&args, &disk, &state, u64::MAX));
    fs::write(&disk, &orig).unwrap();
    fs::remove_file(&journal).unwrap();
    assert!(
        was_killed(&mv(&args, &disk, &state, total / 2)),
        "not killed"
    );
    let j = journal.display().to_string();
    let lo = Loop::new(&disk, &[]);
    refused(&["half-moved", &j], &[&disk, &link, &hard, lo.path()]);
    drop(lo);
    // A backup put back over the half-moved file: the journal is stale, the clone writes.
    fs::write(&disk, &orig).unwrap();
    let mut clone = writers(&disk).remove(0).1;
    run_ok(&mut clone);
    assert!(holds_fs(&disk, MIB, &want, dir), "the clone");
    // Finished: written as usual.
    fs::write(&disk, &orig).unwrap();
    let _ = fs::remove_file(&journal);
    ok(&mv(&args, &disk, &state, 0), "the move");
    let mut clone = writers(&disk).remove(0).1;
    run_ok(&mut clone);
    assert!(holds_fs(&disk, MIB, &want, dir), "the clone after the move");
}

/// A move that fails after its journal is begun (here: the disk fills while it saves a
/// piece) is unfinished; its error line said only "No space left on device". It now says
/// that the move is unfinished, names the kept journal and what to do; doing that (space
/// freed, the same command) finishes the move.
#[test]
fn a_move_stopped_by_a_full_disk_says_how_to_finish_it() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = move_disk(d.path(), MIB);
    let (mnt, _m) = small_tmpfs(d.path());
    let img = mnt.join("disk.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&disk)
            .arg(&img),
    );
    // Leave less room than one saved piece (a shift of 4 KiB saves every piece first).
    let st = rustix::fs::statvfs(&mnt).unwrap();
    let free = st.f_bavail * st.f_frsize;
    let filler = mnt.join("filler");
    fs::write(&filler, vec![0x55u8; (free - 32 * 1024) as usize]).unwrap();
    let args = ["-o", "1048576", "-O", "1044480"];
    let o = mv(&args, &img, &state, 0);
    let err = failed(&o, "a move on a full disk");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("the move is unfinished"), "{err}");
    // What the journal allows, and when.
    assert!(err.contains("SOURCE may be partly moved"), "{err}");
    assert!(
        err.contains("lets the move resume where it stopped: once there is room"),
        "{err}"
    );
    assert!(
        err.contains("run the same command again to finish it"),
        "{err}"
    );
    let lines = err.lines().filter(|l| !l.contains("test hook")).count();
    assert_eq!(lines, 1, "one line: {err}");
    free_and_remove(&filler);
    ok(&mv(&args, &img, &state, 0), "the same command, space freed");
    assert!(holds_fs(&img, MIB - 4096, &want, d.path()));
}

/// An existing target updated in place (a converter's -O OUTPUT, with or without -c; a
/// clone's DEST) that a full disk stops once the writes have begun holds part of the image
/// over its old bytes, and the run said only "No space left on device". The error now says
/// the target is partly written and what to do; doing it (space freed, the same command)
/// writes it whole. Nothing outside the image's range is touched.
#[test]
fn an_in_place_target_stopped_by_a_full_disk_says_it_is_partly_written() {
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "an_in_place_target_stopped_by_a_full_disk…: needs root to mount a tmpfs; not run"
        );
        return;
    }
    let d = tempdir();
    let (_, want) = move_disk(d.path(), MIB);
    let fs_img = d.path().join("fs.img");
    let (mnt, _m) = small_tmpfs(d.path());
    let target = mnt.join("target.img");
    let head: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let filler = mnt.join("filler");
    let cases: [(&str, &[&str], &str); 3] = [
        ("e2i-to-raw", &["-a", "-O", "1M"], "OUTPUT"),
        ("e2i-to-raw", &["-a", "-c", "-O", "1M"], "OUTPUT"),
        ("e2i-move", &["-O", "1M"], "DEST"),
    ];
    for (t, args, role) in cases {
        let what = format!("{t} {args:?}");
        // The target: 1 MiB of pattern, then a hole up to 8 MiB; too little room for the
        // image's data (about 2.5 MiB).
        free_and_remove(&target);
        free_and_remove(&filler);
        let f = fs::File::create(&target).unwrap();
        f.set_len(8 * MIB).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &head, 0).unwrap();
        drop(f);
        let st = rustix::fs::statvfs(&mnt).unwrap();
        let free = st.f_bavail * st.f_frsize;
        fs::write(&filler, vec![0x55u8; (free - 512 * 1024) as usize]).unwrap();
        let run_it = || run(tool_cmd(t).args(args).arg(&fs_img).arg(&target));
        let err = failed(&run_it(), &format!("{what} onto a full disk"));
        assert!(err.contains("No space left on device"), "{what}: {err}");
        let said = format!("{role} {} is partly written", target.display());
        assert!(err.contains(&said), "{what}: {err}");
        assert!(
            err.contains("nothing outside that range was touched"),
            "{what}: {err}"
        );
        assert!(
            err.contains("once there is room (free space on the filesystem it lives on), run the same command again"),
            "{what}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
        let got = read(&target);
        assert!(
            got[..MIB as usize] == head[..],
            "{what}: bytes before -O changed"
        );
        assert_eq!(
            got.len() as u64,
            8 * MIB,
            "{what}: the target's size changed"
        );
        // Room made: the same command writes it whole.
        free_and_remove(&filler);
        ok(&run_it(), &format!("{what}, space freed"));
        let got = read(&target);
        assert!(
            got[..MIB as usize] == head[..],
            "{what}: bytes before -O changed"
        );
        assert!(
            got[MIB as usize..][..want.len()] == want[..],
            "{what}: the image, once written whole"
        );
    }
}

/// A block device that cannot take the writes (a loop device over a sparse file on a full
/// filesystem; a thin volume out of space; a failing disk) reports the error at the write
/// or, for buffered writes, only when they are synced: e2i-capture and e2i-to-qcow2 did not
/// sync and exited 0 with the image lost. Every tool writing a device fails, naming it.
#[test]
fn a_device_that_cannot_take_the_writes_fails_the_run() {
    let fx = Fx::new();
    // Enough data that the writes cannot fit into the folder under the device.
    let tree = fx.path("tree");
    fs::create_dir(&tree).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..6 {
        let v: Vec<u8> = noise(&mut x, 400_000);
        fs::write(tree.join(format!("f{i}")), v).unwrap();
    }
    let img = fx.path("data.img");
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("16M"),
    );
    let stream = fx.path("data.e2s");
    run_ok(
        tool_cmd("e2i-capture")
            .args(["--format", "stream", "-a"])
            .arg(&img)
            .arg(&stream),
    );
    let mnt = fx.path("small");
    fs::create_dir(&mnt).unwrap();
    let _m = Mount::new(
        &[Path::new("tmpfs")],
        &mnt,
        &["-t", "tmpfs", "-o", "size=1m"],
    );
    let backing = mnt.join("dev.img");
    fs::File::create(&backing)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    let lo = Loop::new(&backing, &[]);
    let cases: Vec<(&str, Vec<&str>, &Path)> = vec![
        ("e2i-capture", vec!["-r", "-a"], &img),
        ("e2i-capture", vec!["-Q", "-a"], &img),
        ("e2i-to-raw", vec![], &stream),
        ("e2i-to-qcow2", vec![], &stream),
        ("e2i-move", vec![], &img),
    ];
    for (t, args, input) in cases {
        let what = format!("{t} {args:?} onto a device that cannot take it");
        let o = run(tool_cmd(t).args(&args).arg(input).arg(lo.path()));
        let err = failed(&o, &what);
        assert!(err.contains(&lo.0), "{what}: names the device: {err}");
        assert!(
            err.contains("Input/output error") || err.contains("No space left"),
            "{what}: {err}"
        );
    }
}

/// The journal is first written under a fixed temporary name next to it. That name was
/// opened with O_CREAT|O_TRUNC, following whatever was there: a symlink planted there
/// (SOURCE in a shared folder) had the move truncate and write the link's target. It is
/// now removed and created anew; the target is untouched and the move goes on.
#[test]
fn a_link_planted_at_the_journals_temporary_name_is_not_followed() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = move_disk(d.path(), MIB);
    let victim = d.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let tmp = d.path().join(".disk.img.e2i-move.tmp");
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    ok(
        &mv(&["-o", "1048576", "-O", "2097152"], &disk, &state, 0),
        "the move",
    );
    assert!(
        fs::read(&victim).unwrap() == b"precious",
        "the link's target was written"
    );
    assert!(holds_fs(&disk, 2 * MIB, &want, d.path()));
}

/// An image file mounted through a loop device (`mount -o loop disk.img /mnt`) is a mounted
/// filesystem: `-O`/`-c` into it wrote its bytes under the mounted filesystem, exit 0 (the
/// exclusive open that refuses a mounted device does not see a file). Every in-place
/// writer now refuses it, also with `-n`, nothing written; replacing the file (a new inode:
/// the mounted one is left alone) is still allowed.
#[test]
fn a_file_mounted_through_a_loop_device_is_not_written_in_place() {
    let fx = Fx::new();
    let disk = fx.path("mounted.img");
    fs::copy(&fx.img, &disk).unwrap();
    let lo = Loop::new(&disk, &[]);
    let mnt = fx.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let _m = Mount::new(&[lo.path()], &mnt, &[]);
    let normal = fx.path("fs.e2i");
    run_ok(tool_cmd("e2i-capture").arg(&fx.img).arg(&normal));
    let before = fs::read(&disk).unwrap();
    let cases: Vec<(&str, Vec<&str>, &Path)> = vec![
        ("e2i-to-raw", vec!["-O", "0"], &fx.img),
        ("e2i-to-raw", vec!["-c"], &fx.img),
        ("e2i-to-raw", vec!["-c", "-n"], &fx.img),
        ("qcow2-to-raw", vec!["-O", "0"], &fx.qcow2),
        ("e2i-move", vec![], &fx.img),
        ("e2i-move", vec!["-n"], &fx.img),
    ];
    for (t, args, input) in cases {
        let what = format!("{t} {args:?} into a loop-mounted file");
        let o = run(tool_cmd(t).args(&args).arg(input).arg(&disk));
        let err = failed(&o, &what);
        assert!(err.contains("mounted"), "{what}: {err}");
        assert!(fs::read(&disk).unwrap() == before, "{what}: written");
    }
    for dry in [true, false] {
        let mut c = tool_cmd("e2i-install");
        if dry {
            c.arg("-n");
        }
        let err = failed(&run(c.arg(&disk).arg(&normal)), "e2i-install");
        assert!(err.contains("mounted"), "e2i-install: {err}");
        assert!(fs::read(&disk).unwrap() == before, "e2i-install: written");
    }
    run_ok(tool_cmd("e2i-to-raw").arg(&fx.img).arg(&disk));
}

/// The other ways a loop-mounted image file is written in place: stdout redirected to it
/// (`1<> disk.img` keeps its bytes, `>>` appends to them: nothing is replaced), and a file
/// that cannot be renamed over (its folder immutable), which a run truncates and writes
/// under its own name. Both were written, the mounted filesystem overwritten under the
/// kernel; now refused like `-O`, also with `-n`, nothing written.
#[test]
fn a_loop_mounted_file_is_not_written_through_stdout_or_in_place() {
    let fx = Fx::new();
    let folder = fx.path("folder");
    fs::create_dir(&folder).unwrap();
    let disk = folder.join("mounted.img");
    fs::copy(&fx.img, &disk).unwrap();
    let lo = Loop::new(&disk, &[]);
    let mnt = fx.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let _m = Mount::new(&[lo.path()], &mnt, &[]);
    let before = fs::read(&disk).unwrap();
    let tools: Vec<(&str, &Path)> = vec![
        ("e2i-capture", &fx.img),
        ("e2i-to-raw", &fx.img),
        ("qcow2-to-raw", &fx.qcow2),
        ("e2i-to-qcow2", &fx.img),
    ];
    for (t, input) in &tools {
        for redirect in ["1<>", ">>"] {
            for dry in [false, true] {
                let what = format!("{t} -n={dry} - {redirect} a loop-mounted file");
                let script = format!("exec \"$@\" - {redirect}\"$E2I_DISK\"");
                let mut c = tool_in_sh(&script, t);
                if *t == "e2i-capture" {
                    c.arg("-r");
                }
                if dry {
                    if *t == "e2i-capture" {
                        continue;
                    }
                    c.arg("-n");
                }
                let o = run(c.arg(input).env("E2I_DISK", &disk));
                let err = failed(&o, &what);
                assert!(err.contains("mounted"), "{what}: {err}");
                assert!(fs::read(&disk).unwrap() == before, "{what}: written");
            }
        }
    }
    let _i = Attr::set(&folder, "i");
    for (t, input) in &tools {
        for dry in [false, true] {
            // e2i-capture has no dry run.
            if dry && *t == "e2i-capture" {
                continue;
            }
            let what = format!("{t} -n={dry} into a loop-mounted file in an immutable folder");
            let mut c = tool_cmd(t);
            if *t == "e2i-capture" {
                c.arg("-r");
            }
            if dry {
                c.arg("-n");
            }
            let o = run(c.arg(input).arg(&disk));
            let err = failed(&o, &what);
            assert!(err.contains("mounted"), "{what}: {err}");
            assert!(fs::read(&disk).unwrap() == before, "{what}: written");
        }
    }
}

/// A FIFO where SOURCE's journal would be (`disk.img.e2i-move`): the journal was opened to
/// read before its type was looked at, which waits for a writer — `e2i-move -n` hung, and
/// so would every reader of SOURCE that looks for an unfinished move. Now a dry run refuses
/// it like the real run, and a capture is not held up by it.
#[test]
fn a_fifo_at_the_journals_place_hangs_nothing() {
    let d = tempdir();
    let (disk, _) = move_disk(d.path(), MIB);
    let fifo = journal_of(&disk);
    run_ok(Command::new("mkfifo").arg(&fifo));
    let out = d.path().join("out.raw");
    let state = d.path().join("state");
    let cases: Vec<(&str, Vec<&str>, bool)> = vec![
        ("e2i-move", vec!["-n", "-o", "1M", "-O", "2M"], false),
        ("e2i-move", vec!["-o", "1M", "-O", "2M"], false),
        ("e2i-capture", vec!["-r", "-o", "1M"], true),
    ];
    for (t, args, succeeds) in cases {
        let what = format!("{t} {args:?} with a FIFO as the journal");
        let mut c = tool_cmd(t);
        c.args(&args).arg(&disk);
        if t == "e2i-capture" {
            c.arg(&out);
        }
        let o = run_unless_stuck(c.env("XDG_STATE_HOME", &state), &fifo)
            .unwrap_or_else(|| panic!("{what}: hung"));
        let (status, err) = (o.status, text(&o.stderr));
        if succeeds {
            assert!(status.success(), "{what}: {err}");
        } else {
            assert_eq!(status.code(), Some(1), "{what}: {err}");
            assert!(err.contains("not a regular file"), "{what}: {err}");
        }
    }
}

/// A loop device over a half-moved file at an offset (`losetup -o`, as a partition is
/// often reached) shows the file's bytes shifted, which the journal's check never matched:
/// it was taken for a file that was not half-moved, so a capture read a half-moved
/// filesystem, and an in-place move through it rearranged the file and lost the moved
/// filesystem for good. Every reader and writer, and a move through it, is refused, naming
/// the file to finish; the move then finishes.
#[test]
fn a_half_moved_file_under_an_offset_loop_device_is_refused() {
    let d = tempdir();
    let (disk, want) = move_disk(d.path(), MIB);
    let state = d.path().join("state");
    let args = ["-o", "1M", "-O", "1028K"];
    let orig = read(&disk);
    // The count run finishes the move: start over from the unmoved disk.
    let total = crash_points(&mv(&args, &disk, &state, u64::MAX));
    fs::write(&disk, &orig).unwrap();
    fs::remove_file(journal_of(&disk)).unwrap();
    assert!(was_killed(&mv(&args, &disk, &state, total / 2)));
    let half = read(&disk);
    let image = d.path().join("fs.e2i");
    run_ok(
        tool_cmd("e2i-capture")
            .arg(d.path().join("fs.img"))
            .arg(&image),
    );
    let lo = Loop::new(&disk, &["-o", "1048576"]);
    let dev = lo.path().to_str().unwrap();
    let real = disk.canonicalize().unwrap();
    for (t, a) in [
        ("e2i-capture", vec![dev, "x.e2i"]),
        ("e2i-to-raw", vec![dev, "x.raw"]),
        ("e2i-move", vec!["-o", "0", "-O", "8K", dev]),
        ("e2i-move", vec!["-n", "-o", "0", "-O", "8K", dev]),
        ("e2i-move", vec![dev, "y.raw"]),
        ("e2i-install", vec!["-n", dev, image.to_str().unwrap()]),
    ] {
        let o = run(tool_cmd(t)
            .args(&a)
            .current_dir(d.path())
            .env("XDG_STATE_HOME", &state));
        let err = failed(&o, &format!("{t} {a:?}"));
        assert!(
            err.contains("half-moved") && err.contains(&real.display().to_string()),
            "{t} {a:?}: {err}"
        );
        assert!(read(&disk) == half, "{t} {a:?} changed the half-moved file");
    }
    drop(lo);
    ok(&mv(&args, &disk, &state, 0), "the move, finished");
    assert!(holds_fs(&disk, MIB + 4096, &want, d.path()));
}

/// A raw capture to a new file copies while it scans (on a second thread). When the disk
/// fills, the copy's error is the one reported (not the scan's "the copying thread
/// stopped"), on one line, and no OUTPUT or temporary file is left behind. The same with
/// the filesystem's damage stopping a strict scan while the copy runs.
#[test]
fn a_raw_capture_that_fails_while_copying_leaves_nothing() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("a_raw_capture_that_fails_while_copying…: needs root to mount a tmpfs; not run");
        return;
    }
    let d = tempdir();
    // A journal of 4 MiB: more than the room left below.
    let img = mkfs(d.path(), "fs.img", "64M", &["-J", "size=4"]);
    let (mnt, _m) = small_tmpfs(d.path());
    let st = rustix::fs::statvfs(&mnt).unwrap();
    let free = st.f_bavail * st.f_frsize;
    let filler = mnt.join("filler");
    fs::write(&filler, vec![0x55u8; (free - 256 * 1024) as usize]).unwrap();
    let out = mnt.join("out.img");
    let o = run(tool_cmd("e2i-capture").arg("-r").arg(&img).arg(&out));
    let err = failed(&o, "a raw capture onto a full disk");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("thread"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(names(&mnt), ["filler"], "nothing left behind");
    free_and_remove(&filler);

    // Damage met by a strict scan after the copy has begun (the fixed metadata is
    // published before the inodes are read).
    let bad = d.path().join("bad.img");
    fs::copy(&img, &bad).unwrap();
    // Depth 1: the first extent becomes an index entry pointing at block 1 (a descriptor
    // block, no extent node).
    debugfs_w(&bad, "set_inode_field /sub block[1] 0x00010004");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "--strict"])
        .arg(&bad)
        .arg(&out));
    let err = failed(&o, "a strict raw capture of a damaged filesystem");
    assert!(
        !err.contains("thread") && !err.contains("copy stopped"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(names(&mnt), Vec::<String>::new(), "nothing left behind");
}

/// A backing file recorded in a qcow2 (or given as `--backing`) that is a FIFO or a
/// character device is refused without being waited for: the open of a FIFO waited for a
/// writer forever, and `/dev/zero` read as an empty disk. qemu's file driver refuses both.
#[test]
fn a_backing_file_that_is_no_disk_is_refused_without_waiting() {
    let fx = Fx::new();
    let fifo = fx.path("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let mut cases: Vec<(&str, Vec<String>)> = Vec::new();
    for (name, base, fmt) in [
        ("fifo-raw.qcow2", "fifo", "raw"),
        ("fifo-q.qcow2", "fifo", "qcow2"),
        ("zero.qcow2", "/dev/zero", "raw"),
    ] {
        run_ok(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-u", "-F", fmt, "-b", base])
                .arg(fx.path(name))
                .arg("4M"),
        );
        for t in ["qcow2-to-raw", "e2i-to-raw", "e2i-to-qcow2"] {
            cases.push((t, vec![fx.path(name).display().to_string()]));
        }
        cases.push((
            "e2i-capture",
            vec!["-r".into(), fx.path(name).display().to_string()],
        ));
    }
    for base in [fifo.display().to_string(), "/dev/zero".into()] {
        let img = fx.img.display().to_string();
        cases.push((
            "e2i-capture",
            vec!["-Q".into(), "--backing".into(), base.clone(), img.clone()],
        ));
        cases.push(("e2i-to-qcow2", vec!["--backing".into(), base, img]));
    }
    for (t, args) in cases {
        let what = format!("{t} {args:?}");
        let out = fx.path("out.img");
        let o = run_unless_stuck(tool_cmd(t).args(&args).arg(&out), &fifo)
            .unwrap_or_else(|| panic!("{what}: waited on its backing file"));
        let err = failed(&o, &what);
        assert!(
            err.contains("not a regular file or block device") && err.lines().count() == 1,
            "{what}: {err}"
        );
        assert!(!out.exists(), "{what}: left OUTPUT");
    }
}

/// A compressed raw filesystem image that inflates to far more than its filesystem (a gzip
/// bomb; a dd of a partition larger than its filesystem) is spooled only up to the end its
/// superblock gives (a normal image, its layout's): the bytes past it, which nothing reads,
/// filled `TMPDIR` (here a 12 MiB tmpfs, with 64 MiB of 0xff after a 4 MiB filesystem) and
/// failed the run.
#[test]
fn a_compressed_image_is_spooled_no_further_than_its_filesystem() {
    let fx = Fx::new();
    let (tmp, _m) = small_tmpfs(fx.dir.path());
    let gz = fx.path("bomb.img.gz");
    sh(Command::new("sh").arg("-c").arg(format!(
        "(cat '{}'; head -c 64M /dev/zero | tr '\\0' '\\377') | gzip -1 > '{}'",
        fx.img.display(),
        gz.display()
    )));
    for t in ["e2i-to-raw", "e2i-to-qcow2"] {
        let out = fx.path(&format!("{t}.out"));
        run_ok(tool_cmd(t).arg(&gz).arg(&out).env("TMPDIR", &tmp));
        let raw = if t == "e2i-to-qcow2" {
            qemu_to_raw(&out, &fx.path("q.raw"))
        } else {
            fs::read(&out).unwrap()
        };
        assert!(raw == fx.raw(), "{t}: not the filesystem's image");
    }
    // Piped through stdin too.
    let out = fx.path("stdin.raw");
    run_ok(
        tool_cmd("e2i-to-raw")
            .arg("-")
            .arg(&out)
            .env("TMPDIR", &tmp)
            .stdin(fs::File::open(&gz).unwrap()),
    );
    assert!(
        fs::read(&out).unwrap() == fx.raw(),
        "stdin: not the filesystem's image"
    );
    // A normal image is read up to the end of its layout.
    let normal = fx.path("fs.e2i");
    run_ok(Command::new("e2image").arg(&fx.img).arg(&normal));
    let gz = fx.path("normal.e2i.gz");
    sh(Command::new("sh").arg("-c").arg(format!(
        "(cat '{}'; head -c 64M /dev/zero | tr '\\0' '\\377') | gzip -1 > '{}'",
        normal.display(),
        gz.display()
    )));
    let (want, got) = (fx.path("want-n.raw"), fx.path("got-n.raw"));
    run_ok(tool_cmd("e2i-to-raw").arg(&normal).arg(&want));
    run_ok(
        tool_cmd("e2i-to-raw")
            .arg(&gz)
            .arg(&got)
            .env("TMPDIR", &tmp),
    );
    assert!(read(&got) == read(&want), "normal image: not its raw image");
}

/// A compressed qcow2 followed by far more than its image (64 MiB of 0xff after a few
/// hundred KiB) is spooled only as far as its tables point: the whole input was spooled
/// before the conversion began, and filled `TMPDIR` (a 12 MiB tmpfs here), failing the run.
#[test]
fn a_compressed_qcow2_is_spooled_no_further_than_its_last_cluster() {
    let fx = Fx::new();
    let (tmp, _m) = small_tmpfs(fx.dir.path());
    let gz = fx.path("padded.qcow2.gz");
    sh(Command::new("sh").arg("-c").arg(format!(
        "(cat '{}'; head -c 64M /dev/zero | tr '\\0' '\\377') | gzip -1 > '{}'",
        fx.qcow2.display(),
        gz.display()
    )));
    for t in ["qcow2-to-raw", "e2i-to-raw", "e2i-to-qcow2"] {
        let want = fx.path(&format!("{t}.want"));
        run_ok(tool_cmd(t).arg(&fx.qcow2).arg(&want));
        let out = fx.path(&format!("{t}.out"));
        run_ok(tool_cmd(t).arg(&gz).arg(&out).env("TMPDIR", &tmp));
        assert!(read(&out) == read(&want), "{t}: not the image's conversion");
        let out = fx.path(&format!("{t}.stdin"));
        run_ok(
            tool_cmd(t)
                .arg("-")
                .arg(&out)
                .env("TMPDIR", &tmp)
                .stdin(fs::File::open(&gz).unwrap()),
        );
        assert!(
            read(&out) == read(&want),
            "{t} from stdin: not the image's conversion"
        );
    }
}

/// Names an image records (a qcow2's backing file, its external data file) are the image
/// author's text: in an error line their control characters are escaped, so a crafted name
/// neither breaks the one line (a carriage return) nor sends the terminal commands (escape
/// sequences that clear the line or set the window title).
#[test]
fn names_from_an_image_cannot_drive_the_terminal() {
    let fx = Fx::new();
    let evil = "x\u{1b}]0;owned\u{7}\u{1b}[2K\rz";
    let backed = fx.path("backed.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", evil])
            .arg(&backed)
            .arg("4M"),
    );
    let data = fx.path(evil);
    let with_data = fx.path("data.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!("data_file={}", data.display()))
            .arg(&with_data)
            .arg("4M"),
    );
    fs::remove_file(&data).unwrap();
    for img in [&backed, &with_data] {
        for t in ["qcow2-to-raw", "e2i-to-raw", "e2i-to-qcow2"] {
            let what = format!("{t} {}", img.display());
            let o = run(tool_cmd(t).arg(img).arg(fx.path("out")));
            let err = failed(&o, &what);
            let body = err.strip_suffix('\n').unwrap_or(&err);
            assert!(
                !body.chars().any(char::is_control) && body.contains("\\u{1b}]0;owned"),
                "{what}: {err:?}"
            );
        }
    }
}

/// An in-place move of a loop device given, as its `--journal`, the file under that loop
/// device (also by another name, and under a loop over the loop) is refused for what it
/// is: the journal would hold SOURCE's bytes. It was refused as "another e2i-move is using
/// it" (the run's own lock on the file under SOURCE), and with -n as a damaged journal.
#[test]
fn a_journal_that_holds_a_loop_sources_bytes_is_named_for_it() {
    let d = tempdir();
    let (disk, _) = move_disk(d.path(), MIB);
    let link = d.path().join("link.img");
    fs::hard_link(&disk, &link).unwrap();
    let orig = fs::read(&disk).unwrap();
    let lo = Loop::new(&disk, &[]);
    let lo2 = Loop::new(lo.path(), &[]);
    for src in [lo.path(), lo2.path()] {
        for journal in [&disk, &link] {
            for dry in [false, true] {
                let mut c = tool_cmd("e2i-move");
                if dry {
                    c.arg("-n");
                }
                c.args(["-o", "1048576", "-O", "0", "--journal"])
                    .arg(journal)
                    .arg(src);
                let what = format!("{c:?}");
                let err = failed(&run(&mut c), &what);
                assert!(err.contains("holds SOURCE's bytes"), "{what}: {err}");
            }
        }
    }
    drop(lo2);
    drop(lo);
    assert!(fs::read(&disk).unwrap() == orig, "SOURCE changed");
}

/// e2i-install's IMAGE is read by position: a FIFO without a writer is refused without
/// waiting for one (the open waited forever), and a pipe (a process substitution) is
/// refused with what to do (it failed with "read at byte 0: Illegal seek").
#[test]
fn an_install_image_that_is_a_pipe_is_refused_with_what_to_do() {
    let fx = Fx::new();
    let img = fx.path("fs.e2i");
    run_ok(Command::new("e2image").arg(&fx.img).arg(&img));
    let orig = fs::read(&fx.img).unwrap();
    let fifo = fx.path("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let want = "not a seekable file or block device";
    for dry in [true, false] {
        let mut c = tool_cmd("e2i-install");
        if dry {
            c.arg("-n");
        }
        let what = format!("FIFO IMAGE, -n {dry}");
        let o = run_unless_stuck(c.arg(&fx.img).arg(&fifo), &fifo)
            .unwrap_or_else(|| panic!("{what}: waited for a writer"));
        let err = failed(&o, &what);
        assert!(err.contains(want), "{what}: {err}");
        let script = format!(
            "exec '{}' {} '{}' <(cat '{}')",
            tool("e2i-install").display(),
            if dry { "-n" } else { "" },
            fx.img.display(),
            img.display()
        );
        let what = format!("process substitution IMAGE, -n {dry}");
        let err = failed(&run(Command::new("bash").arg("-c").arg(&script)), &what);
        assert!(err.contains(want), "{what}: {err}");
    }
    assert!(fs::read(&fx.img).unwrap() == orig, "DEVICE changed");
}

/// A new OUTPUT whose name is as long as a folder entry allows (255 bytes, also in
/// multi-byte characters) is written: its temporary name `.NAME.e2i-partial-PID-N` passed
/// 255 bytes and the run failed, `File name too long`, where e2image writes the file.
#[test]
fn an_output_name_of_255_bytes_is_written() {
    let fx = Fx::new();
    let long = ["b".repeat(255), "é".repeat(127), "c".repeat(231)];
    for name in &long {
        for (t, args) in [
            ("e2i-capture", vec!["-r"]),
            ("e2i-to-raw", vec![]),
            ("e2i-to-qcow2", vec![]),
        ] {
            let out = fx.path(name);
            run_ok(tool_cmd(t).args(&args).arg(&fx.img).arg(&out));
            let raw = if t == "e2i-to-qcow2" {
                qemu_to_raw(&out, &fx.path("q.raw"))
            } else {
                fs::read(&out).unwrap()
            };
            assert!(raw == fx.raw(), "{t} to a {}-byte name", name.len());
            let left: Vec<String> = names(fx.dir.path())
                .into_iter()
                .filter(|n| n.contains("e2i-partial"))
                .collect();
            assert!(left.is_empty(), "{t}: left {left:?}");
            fs::remove_file(&out).unwrap();
        }
    }
}

/// A SOURCE named with 250 bytes is moved in place: its journal `NAME.e2i-move` (and the
/// journal's temporary name) passed 255 bytes and the move failed, `File name too long`.
/// The shortened journal is the one every tool finds: a half-moved SOURCE is refused by a
/// reader, and a rerun finishes the move.
#[test]
fn a_source_with_a_long_name_is_moved_in_place() {
    let d = tempdir();
    let state = d.path().join("state");
    let (short, want) = move_disk(d.path(), MIB);
    let disk = d.path().join("d".repeat(250));
    fs::rename(&short, &disk).unwrap();
    let orig = fs::read(&disk).unwrap();
    let args = ["-o", "1048576", "-O", "0"];
    // A whole move that counts its crash points, then the disk as it was, without journal.
    let total = crash_points(&mv(&args, &disk, &state, u64::MAX));
    assert!(holds_fs(&disk, 0, &want, d.path()), "not moved");
    fs::write(&disk, &orig).unwrap();
    for n in names(d.path()).iter().filter(|n| n.ends_with(".e2i-move")) {
        fs::remove_file(d.path().join(n)).unwrap();
    }
    assert!(
        was_killed(&mv(&args, &disk, &state, total / 2)),
        "not killed"
    );
    let out = d.path().join("out.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-o", "0"])
        .arg(&disk)
        .arg(&out)
        .env("XDG_STATE_HOME", &state));
    let err = failed(&o, "capture of the half-moved SOURCE");
    assert!(err.contains("e2i-move"), "{err}");
    ok(&mv(&args, &disk, &state, 0), "finishing the move");
    assert!(holds_fs(&disk, 0, &want, d.path()), "not moved");
}

/// `-` as the name of a file the tool creates and writes by position (install's undo file,
/// an in-place move's journal) created a file named `-` in the current folder, and the run
/// went ahead (`undo with: e2undo - DEVICE`), where `-` means stdout everywhere else and a
/// tool that needs a seekable file refuses it. Now a usage error (exit 2) before anything
/// is written, saying how to name a file called `-`.
#[test]
fn a_dash_for_an_undo_file_or_a_journal_is_a_usage_error() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let normal = d.path().join("fs.e2i");
    run_ok(tool_cmd("e2i-capture").arg(&img).arg(&normal));
    let m = d.path().join("m");
    fs::create_dir(&m).unwrap();
    let (disk, _) = move_disk(&m, MIB);
    let cases: Vec<(&str, Vec<&std::ffi::OsStr>, &Path)> = vec![
        (
            "e2i-install",
            vec![
                "-f".as_ref(),
                "-z".as_ref(),
                "-".as_ref(),
                img.as_ref(),
                normal.as_ref(),
            ],
            &img,
        ),
        (
            "e2i-move",
            vec![
                "-o".as_ref(),
                "1M".as_ref(),
                "-O".as_ref(),
                "2M".as_ref(),
                "--journal".as_ref(),
                "-".as_ref(),
                disk.as_ref(),
            ],
            &disk,
        ),
    ];
    for (t, args, target) in cases {
        let what = format!("{t} {args:?}");
        let before = fs::read(target).unwrap();
        let o = run(tool_cmd(t).args(&args).current_dir(d.path()));
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(err.contains("./-"), "{what}: {err}");
        assert!(
            !d.path().join("-").exists(),
            "{what}: a file named - was created"
        );
        assert!(fs::read(target).unwrap() == before, "{what}: written");
    }
}
