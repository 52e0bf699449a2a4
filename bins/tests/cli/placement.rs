//! Where a run's bytes land, and who may read them: a file written onto the mounted
//! filesystem the run reads (a capture of `/` into `/root`), a second loop device over a
//! mounted image file, a new file under /dev (a disk or partition that is not there), a
//! link or file another user planted in `/tmp`, a move journal in memory, and the modes of the files that hold copies of a disk's
//! bytes (undo files, move journals). Each test failed on the tools before the fix it guards
//! (run with `E2I_TEST_BIN_DIR` pointing at an older build to see it).

use super::util::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An image or journal written into the filesystem the run reads changes it while it is
/// read (the image is of a filesystem half-way through receiving it), and a capture with
/// all data, or a raw image, can fill it — `/` full on the broken system being rescued.
/// Refused under every name of the filesystem (its loop device, the image file under it,
/// stdout redirected there), `-f` included (it allows others' writes, not the run's own);
/// a file there from another SOURCE is written as before.
#[test]
fn an_output_on_the_filesystem_being_read_is_refused() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let other = mkfs(d.path(), "other.img", "4M", &[]);
    let lo = Loop::new(&img, &[]);
    let mnt = d.path().join("mnt");
    let _m = Mount::new(&[lo.path()], &mnt, &[]);
    let before = names(&mnt);
    let dev = lo.path().to_str().unwrap().to_string();
    let img_s = img.to_str().unwrap().to_string();
    let at = |n: &str| mnt.join(n).to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("e2i-capture", vec!["-f".into(), dev.clone(), at("a.e2i")]),
        (
            "e2i-capture",
            vec!["-f".into(), "-r".into(), img_s.clone(), at("b.raw")],
        ),
        (
            "e2i-capture",
            vec!["-f".into(), "-Q".into(), dev.clone(), at("c.qcow2")],
        ),
        ("e2i-to-raw", vec![dev.clone(), at("d.raw")]),
        ("e2i-to-qcow2", vec![img_s.clone(), at("e.qcow2")]),
        ("e2i-move", vec!["-f".into(), dev.clone(), at("f.raw")]),
    ];
    for (t, args) in &cases {
        let o = run(tool_cmd(t).args(args));
        let err = failed(&o, &format!("{t} {args:?}"));
        assert!(
            err.contains("is on the filesystem being read") && err.contains("nothing written"),
            "{t} {args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(names(&mnt), before, "{t} {args:?} left a file");
    }
    // Stdout redirected into it: the shell made the file; it stays empty.
    let target = mnt.join("g.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-f", "-r", &dev, "-"])
        .stdout(Stdio::from(fs::File::create(&target).unwrap())));
    let err = failed(&o, "stdout into the mounted filesystem");
    assert!(err.contains("is on the filesystem being read"), "{err}");
    assert_eq!(fs::metadata(&target).unwrap().len(), 0);
    fs::remove_file(&target).unwrap();
    // Another filesystem's image may go there.
    run_ok(
        tool_cmd("e2i-capture")
            .arg("-r")
            .arg(&other)
            .arg(mnt.join("other.raw")),
    );
    assert!(mnt.join("other.raw").exists());
}

/// A second loop device over an image file mounted through a first one is the mounted
/// filesystem under another name: the exclusive open of the second sees nothing (nobody
/// holds it), and every tool wrote its image over the mounted filesystem. Refused for every
/// tool writing a block device (clones' DEST, `-c`, plain OUTPUT), nothing written.
#[test]
fn a_second_loop_device_of_a_mounted_file_is_refused() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let other = mkfs(d.path(), "other.img", "8M", &[]);
    let q = d.path().join("other.qcow2");
    run_ok(tool_cmd("e2i-capture").arg("-Q").arg(&other).arg(&q));
    let first = Loop::new(&img, &["-r"]);
    let _m = Mount::new(&[first.path()], &d.path().join("mnt"), &[]);
    let second = Loop::new(&img, &[]);
    let before = read(&img);
    let (o, q, dev) = (
        other.to_str().unwrap(),
        q.to_str().unwrap(),
        second.path().to_str().unwrap(),
    );
    for (t, args) in [
        ("e2i-capture", vec!["-r", o, dev]),
        ("e2i-to-raw", vec![q, dev]),
        ("e2i-to-raw", vec!["-c", q, dev]),
        ("qcow2-to-raw", vec![q, dev]),
        ("e2i-move", vec![o, dev]),
    ] {
        let out = run(tool_cmd(t).args(&args));
        let err = failed(&out, &format!("{t} {args:?}"));
        assert!(
            err.contains(" mounted as ") && err.contains("nothing written"),
            "{t} {args:?}: {err}"
        );
        assert!(
            read(&img) == before,
            "{t} {args:?} wrote the mounted filesystem"
        );
    }
}

/// Removes a path on drop (a test that fails must not leave a file in /dev).
struct Gone(PathBuf);

impl Drop for Gone {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.0).is_ok_and(|m| m.is_file()) {
            let _ = fs::remove_file(&self.0);
        }
    }
}

/// A name under /dev that does not exist is a disk or partition that is not there
/// (`/dev/sdc1` of an unplugged disk, a partition `partx` did not add): the image went to a
/// regular file in /dev — memory, gone at the next boot — and the run said it succeeded.
/// Refused for every tool, dry runs included, nothing created; existing devices there are
/// written as before.
#[test]
fn a_missing_device_under_dev_is_not_created_as_a_file() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let q = d.path().join("fs.qcow2");
    run_ok(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&q));
    let missing = PathBuf::from(format!("/dev/e2i-test-missing-{}", std::process::id()));
    let _gone = Gone(missing.clone());
    let m = missing.to_str().unwrap();
    let img_s = img.to_str().unwrap();
    let q_s = q.to_str().unwrap();
    for (t, args) in [
        ("e2i-capture", vec!["-r", img_s, m]),
        ("e2i-capture", vec![img_s, m]),
        ("e2i-to-raw", vec![q_s, m]),
        ("e2i-to-raw", vec!["-n", q_s, m]),
        ("e2i-to-raw", vec!["-O", "1M", q_s, m]),
        ("qcow2-to-raw", vec![q_s, m]),
        ("e2i-to-qcow2", vec![img_s, m]),
        ("e2i-move", vec![img_s, m]),
    ] {
        let o = run(tool_cmd(t).args(&args));
        let err = failed(&o, &format!("{t} {args:?}"));
        assert!(
            err.contains("holds device nodes") && err.contains("nothing written"),
            "{t} {args:?}: {err}"
        );
        assert!(fs::symlink_metadata(&missing).is_err(), "{t} {args:?}");
    }
    // An existing character device there is still a stream target.
    run_ok(tool_cmd("e2i-capture").arg(&img).arg("/dev/null"));
}

/// An undo file holds the target's old inode tables and bitmaps, a move journal up to two
/// pieces of the moved filesystem's bytes (file data with a full move): both are created
/// 0600 whatever the umask, as e2fsprogs creates its undo files and e2i its images, so
/// that a disk only root may read does not become readable by everyone through them.
#[test]
fn undo_files_and_move_journals_are_private() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let image = d.path().join("fs.e2i");
    run_ok(tool_cmd("e2i-capture").arg(&img).arg(&image));
    let undo = d.path().join("fs.undo");
    // Under a permissive umask, as a shell's default 022 would not show.
    let sh = |cmd: &str, args: &[&Path]| {
        run(tool_in_sh("umask 000; exec \"$@\"", cmd)
            .args(args)
            .env("XDG_STATE_HOME", d.path().join("state")))
    };
    ok(
        &sh(
            "e2i-install",
            &[Path::new("-q"), Path::new("-z"), &undo, &img, &image],
        ),
        "install -z",
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&undo), 0o600, "undo file");
    // An in-place move: its journal stays, finished, next to SOURCE.
    let disk = d.path().join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes.extend(read(&img));
    bytes.resize(bytes.len() + (2 << 20), 0);
    fs::write(&disk, bytes).unwrap();
    ok(
        &sh(
            "e2i-move",
            &[
                Path::new("-q"),
                Path::new("-o"),
                Path::new("1M"),
                Path::new("-O"),
                Path::new("2M"),
                &disk,
            ],
        ),
        "move",
    );
    assert_eq!(mode(&journal_of(&disk)), 0o600, "move journal");
}

/// Run `cmd ARGS` as nobody.
fn as_nobody(cmd: &str, args: &[&Path]) {
    ok(
        &run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", cmd])
            .args(args)),
        cmd,
    );
}

/// Another user's symlink, file or FIFO planted in a world-writable sticky folder (`/tmp`)
/// where root will write its image: the link was followed by hand (so the kernel's
/// `protected_symlinks` never saw it) and root's image replaced what it named
/// (`/tmp/sdb1.img -> /etc/shadow`); a planted file kept its owner, who then read the image
/// of a disk only root may read; a planted FIFO was read by its owner. Refused, nothing
/// written; root's own files there, and a user's own links, are written as before.
#[test]
fn outputs_planted_by_another_user_in_a_sticky_folder_are_refused() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let q = d.path().join("fs.qcow2");
    run_ok(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&q));
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let sticky = d.path().join("sticky");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = d.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let link = sticky.join("link.img");
    as_nobody("ln", &[Path::new("-s"), &victim, &link]);
    let theirs = sticky.join("theirs.img");
    as_nobody("touch", &[&theirs]);
    as_nobody("chmod", &[Path::new("666"), &theirs]);
    let fifo = sticky.join("fifo");
    as_nobody("mkfifo", &[&fifo]);
    for (t, args) in [
        ("e2i-capture", vec![img.as_path(), &link]),
        ("e2i-capture", vec![Path::new("-r"), &img, &theirs]),
        ("e2i-capture", vec![img.as_path(), &fifo]),
        (
            "e2i-to-raw",
            vec![Path::new("-O"), Path::new("0"), &q, &theirs],
        ),
        ("qcow2-to-raw", vec![q.as_path(), &link]),
        ("e2i-move", vec![img.as_path(), &link]),
    ] {
        let o = run(tool_cmd(t).args(&args));
        let err = failed(&o, &format!("{t} {args:?}"));
        assert!(
            err.contains("in a folder anyone may write to") && err.contains("nothing written"),
            "{t} {args:?}: {err}"
        );
        assert_eq!(read(&victim), b"precious", "{t} {args:?}");
        assert_eq!(fs::metadata(&theirs).unwrap().len(), 0, "{t} {args:?}");
    }
    // Root's own file there is replaced as before.
    let mine = sticky.join("mine.img");
    fs::write(&mine, b"old").unwrap();
    run_ok(tool_cmd("e2i-capture").arg(&img).arg(&mine));
    assert!(fs::metadata(&mine).unwrap().len() > 3);
    // A user writing through their own link there is not refused.
    let own_target = d.path().join("nobodys");
    fs::create_dir(&own_target).unwrap();
    std::os::unix::fs::chown(&own_target, Some(65534), Some(65534)).unwrap();
    let own_link = sticky.join("own-link.img");
    as_nobody(
        "ln",
        &[Path::new("-s"), &own_target.join("out.raw"), &own_link],
    );
    fs::set_permissions(&img, fs::Permissions::from_mode(0o644)).unwrap();
    run_ok(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(tool("e2i-capture"))
            .arg("-r")
            .arg(&img)
            .arg(&own_link),
    );
    assert!(own_target.join("out.raw").exists());
}

/// An in-place move's journal in memory (`--journal /tmp/…` where /tmp is a tmpfs, as on
/// many distributions) survives a killed move, but not the crash or power loss the journal
/// is there for: the half-moved filesystem could then never be finished. Said on stderr
/// (not with -q); a journal on the same memory filesystem as SOURCE is not worth a word
/// (both go together).
#[test]
fn a_journal_in_memory_is_warned_about() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let mut bytes = vec![0u8; 1 << 20];
    bytes.extend(read(&img));
    bytes.resize(bytes.len() + (2 << 20), 0);
    let disk = d.path().join("disk.img");
    let mem = d.path().join("mem");
    fs::create_dir(&mem).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
            .arg(&mem),
    );
    let _m = Mount(mem.clone());
    let mv = |src: &Path, journal: &Path, quiet: bool| {
        let mut c = tool_cmd("e2i-move");
        if quiet {
            c.arg("-q");
        }
        run(c
            .args(["-o", "1M", "-O", "1028K", "--journal"])
            .arg(journal)
            .arg(src)
            .env("XDG_STATE_HOME", d.path().join("state"))
            .env("E2I_MOVE_PIECE_KIB", "64"))
    };
    let warned = |o: &std::process::Output| text(&o.stderr).contains("is on tmpfs, in memory");
    for quiet in [false, true] {
        fs::write(&disk, &bytes).unwrap();
        let j = mem.join(format!("j{quiet}"));
        let o = mv(&disk, &j, quiet);
        ok(&o, "move with its journal on tmpfs");
        assert_eq!(warned(&o), !quiet, "quiet {quiet}: {}", text(&o.stderr));
    }
    // SOURCE on the same tmpfs: no warning.
    let inmem = mem.join("disk.img");
    fs::write(&inmem, &bytes).unwrap();
    let o = mv(&inmem, &mem.join("j-same"), false);
    ok(&o, "move on tmpfs");
    assert!(!warned(&o), "{}", text(&o.stderr));
}

/// An undo file is for later — after a reboot as often as not: one written to a memory
/// filesystem is warned about (not with -q); one on a disk is not.
#[test]
fn an_undo_file_in_memory_is_warned_about() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let image = d.path().join("fs.e2i");
    run_ok(tool_cmd("e2i-capture").arg(&img).arg(&image));
    let mem = d.path().join("mem");
    fs::create_dir(&mem).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(&mem),
    );
    let _m = Mount(mem.clone());
    let orig = read(&img);
    let install = |undo: &Path, quiet: bool| {
        // Each onto the filesystem as it was (an install leaves it newer than the image).
        fs::write(&img, &orig).unwrap();
        let mut c = tool_cmd("e2i-install");
        if quiet {
            c.arg("-q");
        }
        run(c.arg("-z").arg(undo).arg(&img).arg(&image))
    };
    let warned = |o: &std::process::Output| text(&o.stderr).contains("is on tmpfs, in memory");
    let o = install(&mem.join("a.undo"), false);
    ok(&o, "install -z onto tmpfs");
    assert!(warned(&o), "{}", text(&o.stderr));
    let o = install(&mem.join("b.undo"), true);
    ok(&o, "install -q -z onto tmpfs");
    assert!(!warned(&o), "{}", text(&o.stderr));
    let o = install(&d.path().join("c.undo"), false);
    ok(&o, "install -z onto a disk");
    assert!(!warned(&o), "{}", text(&o.stderr));
}

/// A new OUTPUT's folder renamed during the run: the rename at the end went to the old
/// path, failed (naming SOURCE), and left the temporary file — the whole image — behind in
/// the moved folder. The image now lands in the folder, wherever it went; a folder deleted
/// during the run fails the run naming OUTPUT, nothing left.
#[test]
fn a_new_outputs_folder_moved_during_the_run_gets_the_image() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    fs::create_dir(&a).unwrap();
    let child = held_capture(&img, &a.join("out.raw"));
    fs::rename(&a, &b).unwrap();
    resume_stopped(child.child());
    let o = child.take().wait_with_output().unwrap();
    ok(&o, "capture into a folder renamed during the run");
    assert_eq!(names(&b), ["out.raw"]);
    let want = d.path().join("want.raw");
    e2image(&["-r"], &img, &want);
    assert!(read(&b.join("out.raw")) == read(&want));
    let child = held_capture(&img, &b.join("again.raw"));
    fs::remove_dir_all(&b).unwrap();
    resume_stopped(child.child());
    let o = child.take().wait_with_output().unwrap();
    let err = failed(&o, "capture into a folder deleted during the run");
    assert!(err.contains("again.raw") && err.contains("rename"), "{err}");
}
