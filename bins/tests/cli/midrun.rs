//! Things going wrong in the middle of a run, as on a broken system: a full disk, a source
//! that shrinks, a signal, a folder or temporary file removed, odd standard streams. Each
//! run must end with one line naming what and where (exit 1), or by its signal, and leave
//! its outputs complete or absent, a target updated in place recoverable.

use super::util::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// The rename at the end of a run whose temporary file is gone said only `rename: No such
/// file or directory`. It now says what happened: the folder was deleted, or the temporary
/// file itself was removed (a cleanup script), and that nothing is left.
#[test]
fn a_temporary_file_lost_during_the_run_is_named() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let dir = d.path().join("outs");
    fs::create_dir(&dir).unwrap();
    let child = held_capture(&img, &dir.join("a.raw"));
    fs::remove_dir_all(&dir).unwrap();
    resume_stopped(child.child());
    let o = child.take().wait_with_output().unwrap();
    let err = failed(&o, "capture into a folder deleted during the run");
    assert!(
        err.contains("a.raw: rename: OUTPUT's folder was deleted during the run")
            && err.contains("nothing is left")
            && err.lines().count() == 1,
        "{err}"
    );
    fs::create_dir(&dir).unwrap();
    let child = held_capture(&img, &dir.join("b.raw"));
    for n in names(&dir) {
        fs::remove_file(dir.join(n)).unwrap();
    }
    resume_stopped(child.child());
    let o = child.take().wait_with_output().unwrap();
    let err = failed(&o, "capture whose temporary file was removed");
    assert!(
        err.contains("b.raw: rename: the temporary file")
            && err.contains(".b.raw.e2i-partial-")
            && err.contains("was removed during the run")
            && err.lines().count() == 1,
        "{err}"
    );
    assert!(names(&dir).is_empty(), "{:?}", names(&dir));
}

/// Stdout a socket (a service's stdout under systemd or inetd): `-` wrote the image down
/// it, while `/dev/stdout` (the same descriptor, by name) was refused as "neither a file, a
/// device nor a FIFO" — open(2) cannot open a socket. Both now write the same bytes; a
/// socket named otherwise is refused, saying what to use.
#[test]
fn stdout_a_socket_is_written_under_every_name() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let through = |out: &str, format: &str| {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let child = Reaper::new(
            tool_cmd("e2i-capture")
                .args(["--format", format])
                .arg(&img)
                .arg(out)
                .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut got = Vec::new();
        (&ours).read_to_end(&mut got).unwrap();
        let o = child.take().wait_with_output().unwrap();
        (o, got)
    };
    for format in ["stream", "raw", "qcow2"] {
        let (o, want) = through("-", format);
        ok(&o, "capture to a socket on stdout as -");
        assert!(!want.is_empty());
        for name in ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"] {
            let (o, got) = through(name, format);
            ok(&o, name);
            assert!(got == want, "{name} {format}: other bytes than -");
        }
    }
    // A socket another way (a named one) cannot be opened.
    let sock = d.path().join("s.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let o = run(tool_cmd("e2i-capture").arg(&img).arg(&sock));
    let err = failed(&o, "capture to a named socket");
    assert!(
        err.contains("is a socket, which cannot be opened by name"),
        "{err}"
    );
}

/// `-O` so large that OUTPUT's end passes 2^64: the message named SOURCE (`e2i-move`'s
/// clone: "destination offset plus filesystem size overflows", the converters' "lies past
/// the largest possible file" under INPUT's name). It names the target and the offset now,
/// as the other "cannot reach" errors do, and nothing is created.
#[test]
fn an_offset_past_two_to_the_64_names_the_target() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let q = d.path().join("fs.qcow2");
    run_ok(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&q));
    let out = d.path().join("out.img");
    let huge = "0xfffffffffff00000";
    let cases: Vec<(&str, Vec<&std::ffi::OsStr>, &Path)> = vec![
        (
            "e2i-move",
            vec![img.as_os_str(), out.as_os_str()],
            out.as_path(),
        ),
        (
            "e2i-to-raw",
            vec![img.as_os_str(), out.as_os_str()],
            out.as_path(),
        ),
        (
            "qcow2-to-raw",
            vec![q.as_os_str(), out.as_os_str()],
            out.as_path(),
        ),
        // In place, the moved SOURCE is the target.
        ("e2i-move", vec![img.as_os_str()], img.as_path()),
    ];
    let before = read(&img);
    for (t, args, target) in cases {
        let o = run(tool_cmd(t).args(["-O", huge]).args(&args));
        let err = failed(&o, t);
        assert!(
            err.starts_with(&format!("{t}: {}: ", target.display()))
                && err.contains("destination offset 18446744073708503040 plus the ")
                && err.contains("pass byte 2^64 - 1; nothing written")
                && err.lines().count() == 1,
            "{t} {args:?}: {err}"
        );
        assert!(!out.exists(), "{t}: {} created", out.display());
        assert!(read(&img) == before);
    }
    assert!(!journal_of(&img).exists());
}

/// `e2i-install` stopped by a full disk after its first write to DEVICE (an image file on a
/// full filesystem, whose never-written inode tables are holes) said only "No space left on
/// device", as if nothing had happened to DEVICE. It now says DEVICE is partly installed
/// and how to get back: with `-z`, `e2undo` restores DEVICE's exact bytes; without, the
/// same command finishes the install once there is room.
#[test]
fn an_install_stopped_by_a_full_disk_says_how_to_recover() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &["-b", "1024"]);
    let image = d.path().join("fs.e2i");
    run_ok(tool_cmd("e2i-capture").arg(&img).arg(&image));
    // DEVICE changed since the image: an install rewrites its inode tables (every
    // group's, the image holds them whole).
    let note = d.path().join("note");
    fs::write(&note, "written after the image was taken\n").unwrap();
    debugfs_w(
        &img,
        &format!(
            "mkdir newer\nwrite {} newer/f\nmkdir newer/d2",
            note.display()
        ),
    );
    let orig = read(&img);
    // What an install that had room leaves.
    let roomy = d.path().join("roomy.img");
    fs::write(&roomy, &orig).unwrap();
    run_ok(
        tool_cmd("e2i-install")
            .arg("-f")
            .arg(&roomy)
            .arg(&image)
            .env("E2FSPROGS_FAKE_TIME", "1800000000"),
    );
    let mnt = d.path().join("small");
    let _m = Mount::new(
        &[Path::new("tmpfs")],
        &mnt,
        &["-t", "tmpfs", "-o", "size=12m"],
    );
    let dev = mnt.join("dev.img");
    let filler = mnt.join("filler");
    let undo = d.path().join("dev.undo");
    for with_undo in [true, false] {
        free_and_remove(&filler);
        let _ = fs::remove_file(&undo);
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&img)
                .arg(&dev),
        );
        // Room for a few of the writes into holes (never-used inode tables), not all.
        let st = rustix::fs::statvfs(&mnt).unwrap();
        let free = st.f_bavail * st.f_frsize;
        fs::write(&filler, vec![0x55u8; (free - 128 * 1024) as usize]).unwrap();
        let install = || {
            let mut c = tool_cmd("e2i-install");
            c.args(["-q", "-f"]);
            if with_undo {
                c.arg("-z").arg(&undo);
            }
            run(c
                .arg(&dev)
                .arg(&image)
                .env("E2FSPROGS_FAKE_TIME", "1800000000"))
        };
        let err = failed(&install(), "install onto a full disk");
        assert!(
            err.contains("No space left on device")
                && err.contains(&format!(
                    "DEVICE {} is partly installed (part of the image's metadata over its own)",
                    dev.display()
                ))
                && err.lines().count() == 1,
            "{err}"
        );
        assert!(
            read(&dev) != orig,
            "nothing was written: not the case tested"
        );
        free_and_remove(&filler);
        if with_undo {
            let how = format!(
                "once there is room (free space on the filesystem that is full), restore DEVICE with `e2undo {} {}`",
                undo.display(),
                dev.display()
            );
            assert!(err.contains(&how), "{err}");
            sh(Command::new("e2undo").arg(&undo).arg(&dev));
            assert!(read(&dev) == orig, "e2undo gave other bytes than DEVICE's");
        } else {
            assert!(
                err.contains("once there is room (free space on the filesystem that is full), run the same command again to finish the install"),
                "{err}"
            );
            ok(&install(), "the same command, room made");
            assert!(read(&dev) == read(&roomy), "the finished install");
        }
    }
}

/// SOURCE truncated while it is read (a careless `truncate`, an image being replaced):
/// reads past the new end came back as zeros, as past the end of an image that was short
/// from the start, and the run exited 0 with an image whose file data was zeros past the
/// cut. A read that finds the end before the size SOURCE had when it was opened now fails
/// the run (exit 1, one line saying so). The run is held by its own stdout: a pipe this
/// test reads a little of, then truncates SOURCE, then reads the rest.
#[test]
fn a_source_truncated_during_the_run_fails_it() {
    use std::io::Read;
    let d = tempdir();
    let tree = d.path().join("tree");
    fs::create_dir(&tree).unwrap();
    // File data read while the image is written (more than the pipe and the read-ahead
    // hold), in a filesystem much larger than the cut.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    fs::write(tree.join("data"), noise(&mut x, 16 << 20)).unwrap();
    let img = d.path().join("fs.img");
    mkfs_from(&tree, &img, "64M", &[]);
    fs::remove_dir_all(&tree).unwrap();
    let src = d.path().join("src.img");
    for args in [
        &["-r", "-a"][..],
        &["--format", "stream", "-a"],
        &["-Q", "-a"],
    ] {
        sh(Command::new("cp").arg(&img).arg(&src));
        let mut child = Reaper::new(
            tool_cmd("e2i-capture")
                .args(args)
                .arg(&src)
                .arg("-")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut out = child.child_mut().stdout.take().unwrap();
        let mut first = vec![0u8; 4096];
        out.read_exact(&mut first).unwrap();
        // The run now waits on the pipe, with most of the data still to read.
        fs::File::options()
            .write(true)
            .open(&src)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        std::io::copy(&mut out, &mut std::io::sink()).unwrap();
        let o = child.take().wait_with_output().unwrap();
        let err = failed(
            &o,
            &format!("capture {args:?} of a SOURCE truncated mid-run"),
        );
        assert!(
            err.starts_with(&format!(
                "e2i-capture: {}: it ends at byte 2097152 but held 67108864 bytes when the run opened it: it was truncated during the run",
                src.display()
            )) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

/// Stdout closed (`>&-`) with OUTPUT `-`: Rust's runtime puts /dev/null where a closed
/// standard stream was, so the image went there and the run exited 0, as if sent. It is
/// refused now (exit 1, one line); stdout redirected to /dev/null by the shell is still
/// written, as asked.
#[test]
fn a_closed_stdout_is_refused() {
    let fx_dir = tempdir();
    let img = mkfs(fx_dir.path(), "fs.img", "4M", &[]);
    let stream = fx_dir.path().join("fs.e2s");
    run_ok(
        tool_cmd("e2i-capture")
            .arg(&img)
            .arg("-")
            .stdout(fs::File::create(&stream).unwrap()),
    );
    let cases: [(&str, &[&str], &Path); 4] = [
        ("e2i-capture", &["-r"], &img),
        ("e2i-to-raw", &[], &stream),
        ("e2i-to-qcow2", &[], &stream),
        ("e2i-capture", &[], &img),
    ];
    for (t, args, input) in cases {
        let o = run(tool_in_sh(r#"exec "$@" - >&-"#, t).args(args).arg(input));
        let err = failed(&o, &format!("{t} {args:?} with stdout closed"));
        assert_eq!(
            err,
            format!("{t}: OUTPUT - (stdout): stdout is closed (`>&-`?); nothing written\n")
        );
        let o = run(tool_cmd(t)
            .args(args)
            .arg(input)
            .arg("-")
            .stdout(fs::File::options().write(true).open("/dev/null").unwrap()));
        ok(&o, &format!("{t} {args:?} > /dev/null"));
    }
}

/// SIGINT (or SIGTERM) arriving between e2i-install's superblock write and its undo file's
/// switch to the final superblock killed the run there: plain `e2undo` then refused the
/// undo file ("superblock doesn't match"), and only `e2undo -f` (which marks the
/// filesystem for e2fsck) got DEVICE back. Seen once in 75 seeded signals. The signal now
/// waits for that one write: the install completes, says so, and the run ends as the
/// signal ends it (never with 0, as it once did when the main thread won the race to the
/// exit); plain e2undo restores DEVICE's exact bytes. The hook stops the run at that
/// instant.
#[test]
fn an_install_signalled_at_its_superblock_stays_undoable() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let image = d.path().join("fs.e2i");
    run_ok(tool_cmd("e2i-capture").arg(&img).arg(&image));
    let note = d.path().join("note");
    fs::write(&note, "written after the image was taken\n").unwrap();
    debugfs_w(
        &img,
        &format!("mkdir newer\nwrite {} newer/f", note.display()),
    );
    let orig = read(&img);
    for sig in ["INT", "TERM"] {
        if ignored_here(sig) {
            eprintln!("SIG{sig} is ignored here (and so in the tool); not sent");
            continue;
        }
        fs::write(&img, &orig).unwrap();
        let undo = d.path().join(format!("{sig}.undo"));
        let child = Reaper::new(
            tool_cmd("e2i-install")
                .args(["-q", "-f", "-z"])
                .arg(&undo)
                .arg(&img)
                .arg(&image)
                .env("E2I_TEST_STOP_AFTER_SUPERBLOCK", "1")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let o = signal_when_stopped(child, sig);
        // The install completes, says so, and ends as the signal ends it: the status tells
        // the signal (it ended with 0 when the signal's thread lost the race to the end of
        // main).
        use std::os::unix::process::ExitStatusExt;
        let signo = if sig == "INT" { 2 } else { 15 };
        let err = text(&o.stderr);
        assert_eq!(
            o.status.signal(),
            Some(signo),
            "SIG{sig}: {:?}: {err}",
            o.status
        );
        assert!(
            err.contains(&format!(
                "e2i-install: SIG{sig} received as the run ended: the install is complete (DEVICE {} holds the image's metadata; undo with: e2undo {} {}); ending as SIG{sig} does",
                img.display(),
                undo.display(),
                img.display()
            )) && err.lines().count() == 1,
            "SIG{sig}: {err}"
        );
        let o = run(Command::new("e2undo").arg(&undo).arg(&img));
        ok(&o, &format!("plain e2undo after SIG{sig}"));
        assert!(read(&img) == orig, "SIG{sig}: e2undo gave other bytes");
    }
}

/// A loop device whose backing file was cut short: every read past the cut fails (EIO).
/// The capture goes on (exit 3) and says which blocks it wrote as zeros: one line per run
/// of them, not one per block (it printed a thousand lines).
#[test]
fn unreadable_stretches_are_reported_as_ranges() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("unreadable_stretches_are_reported_as_ranges: needs root for losetup; not run");
        return;
    }
    let d = tempdir();
    // 1 KiB blocks: 8 groups of 8 MiB; the journal (taken whole) lies past the cut.
    let img = mkfs(d.path(), "fs.img", "64M", &["-b", "1024", "-O", "^flex_bg"]);
    let lo = Loop::new(&img, &[]);
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let out = d.path().join("out.raw");
    let o = run(tool_cmd("e2i-capture").arg("-r").arg(lo.path()).arg(&out));
    drop(lo);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("read error")).collect();
    assert!(!lines.is_empty(), "{err}");
    assert!(lines.len() < 20, "one line per stretch: {err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("blocks ") && l.contains(" blocks)")),
        "{err}"
    );
    // Every stretch listed: the list is of runs, not of the first 1000 blocks.
    assert!(!err.contains("more blocks could not be read"), "{err}");
}

/// A stream that runs out of room said `write at byte N` with N the start of the buffer
/// being flushed (up to 2 MiB before the failure: the stream writer's gathered bytes and a
/// buffer under it). N is now the stream byte where the failed write began, the first one
/// the disk did not take: the length of what stdout's file holds (`>>`), and the same for a
/// new OUTPUT on the same room.
#[test]
fn a_stream_stopped_by_a_full_disk_names_the_first_byte_not_written() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "16M", &["-b", "1024"]);
    // Data the stream carries (-a): more than the disk below takes.
    let data = d.path().join("data");
    fs::write(&data, noise(&mut 7, 3 << 20)).unwrap();
    debugfs_w(&img, &format!("write {} data", data.display()));
    let mnt = d.path().join("small");
    let _m = Mount::new(
        &[Path::new("tmpfs")],
        &mnt,
        &["-t", "tmpfs", "-o", "size=1m"],
    );
    let at_byte = |err: &str| -> u64 {
        let n = err
            .split("write at byte ")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .unwrap_or_else(|| panic!("no offset: {err}"));
        n.parse().unwrap_or_else(|_| panic!("{n:?}: {err}"))
    };
    let mut offsets = Vec::new();
    for version in ["2", "1"] {
        // Stdout appended to a file: kept as it is after the failure. The shell opens it, so
        // that no child another test forks meanwhile inherits it (the disk's room would then
        // come back only when that child execs).
        let held = mnt.join("held.e2is");
        fs::write(&held, b"").unwrap();
        let o = run(Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" -a --stream-version "$1" "$2" - >> "$3""#)
            .arg(tool("e2i-capture"))
            .arg(version)
            .arg(&img)
            .arg(&held));
        let err = failed(&o, "stream to a full disk");
        assert!(err.contains("No space left on device"), "{err}");
        let len = fs::metadata(&held).unwrap().len();
        assert!(len > 0, "nothing written: not the case tested");
        assert_eq!(at_byte(&err), len, "v{version} to stdout: {err}");
        fs::remove_file(&held).unwrap();
        // A new OUTPUT on the same room: its temporary file is gone, the offset the same.
        let out = mnt.join("new.e2is");
        let o = run(tool_cmd("e2i-capture")
            .args(["-a", "--format", "stream", "--stream-version", version])
            .arg(&img)
            .arg(&out));
        let err = failed(&o, "stream to a new file on a full disk");
        assert_eq!(at_byte(&err), len, "v{version} to a new file: {err}");
        assert!(names(&mnt).is_empty(), "{:?}", names(&mnt));
        offsets.push(len);
    }
    assert!(offsets.iter().all(|&n| n == offsets[0]), "{offsets:?}");
}
