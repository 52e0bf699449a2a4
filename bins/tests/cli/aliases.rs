//! The same bytes under another name at the device level: partitions of a loop device over
//! an image file (the disk, the file, another loop device over a part of it), a mounted
//! filesystem reached through any of those, a qcow2 SOURCE or INPUT whose backing file is
//! the OUTPUT, and a block device another program holds. Each test failed on the tools
//! before the fix it guards (run with `E2I_TEST_BIN_DIR` pointing at an older build).

use super::util::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

/// A loop device over a disk image with its partitions added (`partx -a`: this kernel's
/// loop driver may scan no partitions by itself). On drop the partitions are deleted first:
/// a loop device detached with them keeps them, and the next user of the device would see
/// stale partitions of another file.
struct PartLoop(Loop);

impl PartLoop {
    fn new(disk: &Path) -> PartLoop {
        let l = PartLoop(Loop::new(disk, &[]));
        run_ok(Command::new("partx").arg("-a").arg(l.disk()));
        l
    }
    fn disk(&self) -> &Path {
        self.0.path()
    }
    fn part(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.0.0))
    }
}

impl Drop for PartLoop {
    fn drop(&mut self) {
        let _ = Command::new("partx").arg("-d").arg(self.disk()).status();
    }
}

fn mount(dev: &Path, at: &Path, opts: &str) -> Mount {
    Mount::new(&[dev], at, &["-o", opts])
}

fn digest(p: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(read(p)).to_vec()
}

/// A 40 MiB disk image with two 10 MiB partitions, at 1 MiB and 11 MiB, and a filesystem
/// (`fs`, 4 MiB) in the first. The MBR is written here, as sfdisk writes it (sfdisk is in no
/// package ci/setup.sh installs).
fn disk(dir: &Path, fs_img: &Path) -> PathBuf {
    use super::partitions::{blank, mbr_sector};
    let disk = dir.join("disk.img");
    let f = blank(&disk, 40 * MIB);
    f.write_all_at(&mbr_sector(&[(0x83, 2048, 20480), (0x83, 22528, 20480)]), 0)
        .unwrap();
    f.write_all_at(&read(fs_img), MIB).unwrap();
    disk
}

fn e2i(tool_name: &str, args: &[&str], paths: &[&Path]) -> std::process::Output {
    run(tool_cmd(tool_name).args(args).args(paths))
}

/// A partition of a loop device over a disk image shares its bytes with the disk, the
/// image file, and any other loop device over that part of the file: refused as OUTPUT of a
/// run that reads it (nothing written). Another partition of the same disk is disjoint:
/// written as asked.
#[test]
fn a_partition_overlaps_its_disk_and_the_file_under_it() {
    let d = tempdir();
    let fs_img = mkfs(d.path(), "fs.img", "4M", &[]);
    let want = e2image_bytes(&["-r"], &fs_img, &d.path().join("want.raw"));
    let disk = disk(d.path(), &fs_img);
    let pl = PartLoop::new(&disk);
    let (p1, p2) = (pl.part(1), pl.part(2));
    // A loop device over a stretch of the file inside partition 1.
    let inner = Loop::new(&disk, &["-o", "2097152", "--sizelimit", "2097152"]);
    let before = digest(&disk);
    let cases: Vec<(&str, Vec<&str>, &Path, &Path)> = vec![
        ("e2i-capture", vec!["-r"], &p1, pl.disk()),
        ("e2i-capture", vec!["-r"], &p1, &disk),
        ("e2i-capture", vec!["-r"], &p1, inner.path()),
        ("e2i-capture", vec!["-r"], pl.disk(), &p1),
        ("e2i-capture", vec!["-Q"], &disk, &p1),
        ("e2i-move", vec!["-O", "30M"], &p1, pl.disk()),
        ("e2i-move", vec!["-O", "30M"], &p1, &disk),
        ("e2i-move", vec!["-o", "1M"], &disk, inner.path()),
        // Only the filesystem's bytes are read, but those are partition 1's.
        ("e2i-capture", vec!["-r", "-o", "1M"], &disk, &p1),
        ("e2i-move", vec!["-o", "1M"], &disk, &p1),
        (
            "e2i-capture",
            vec!["-r", "-o", "1M"],
            pl.disk(),
            inner.path(),
        ),
    ];
    for (t, args, src, out) in &cases {
        let what = format!("{t} {args:?} {} {}", src.display(), out.display());
        let err = failed(&e2i(t, args, &[src, out]), &what);
        assert!(
            err.contains("refusing to write over what is being read"),
            "{what}: {err}"
        );
        assert!(digest(&disk) == before, "{what}: the disk changed");
    }
    // Partition 2 shares no byte with partition 1, nor with the filesystem at 1 MiB of the
    // disk or its file (`-o`: only the filesystem's bytes are read).
    let want_ra = e2image_bytes(&["-ra"], &fs_img, &d.path().join("want-ra.raw"));
    let p2_holds_it = |what: &str, want: &[u8]| {
        let mut got = vec![0u8; want.len()];
        fs::File::open(&disk)
            .unwrap()
            .read_exact_at(&mut got, 11 * MIB)
            .unwrap();
        assert!(
            got == want,
            "{what}: partition 2 holds e2image -r of partition 1"
        );
        fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .unwrap()
            .write_all_at(&vec![0u8; want.len()], 11 * MIB)
            .unwrap();
    };
    ok(&e2i("e2i-capture", &["-r"], &[&p1, &p2]), "p1 to p2");
    p2_holds_it("p1 to p2", &want);
    for (t, args, src, want) in [
        (
            "e2i-capture",
            &["-r", "-o", "1M"][..],
            disk.as_path(),
            &want,
        ),
        ("e2i-capture", &["-r", "-o", "1M"], pl.disk(), &want),
        ("e2i-move", &["-o", "1M"], disk.as_path(), &want_ra),
    ] {
        let what = format!("{t} {args:?} {} to p2", src.display());
        ok(&e2i(t, args, &[src, &p2]), &what);
        p2_holds_it(&what, want);
    }
}

/// A filesystem mounted from a partition of a loop device over an image file is mounted
/// in that file, the loop device, and any loop device over the file: every writer into
/// them is refused (e2i-move in place moved the mounted filesystem, a clone and -O wrote
/// into it, exit 0), naming the mounted partition's device and its mount point (what to
/// unmount; e2i-move said only "mounted on MNT" of a file that is not mounted itself).
/// Readers ask about the filesystem they read only: another partition of the same disk is
/// captured while the first is mounted read-write.
#[test]
fn a_filesystem_mounted_from_a_partition_is_never_written_under_another_name() {
    let d = tempdir();
    let fs_img = mkfs(d.path(), "fs.img", "4M", &[]);
    let normal = d.path().join("fs.e2i");
    e2image(&[], &fs_img, &normal);
    let disk = disk(d.path(), &fs_img);
    // A copy in partition 2, for the readers.
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&read(&fs_img), 11 * MIB).unwrap();
    drop(f);
    let pl = PartLoop::new(&disk);
    let other = Loop::new(&disk, &[]);
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    {
        // Read-only and without journal replay: nothing changes the disk meanwhile.
        let _m = mount(&pl.part(1), &mnt, "ro,noload");
        let before = digest(&disk);
        let cases: Vec<(&str, Vec<&str>, Vec<&Path>)> = vec![
            ("e2i-move", vec!["-o", "1M", "-O", "2M"], vec![&disk]),
            ("e2i-move", vec!["-n", "-o", "1M", "-O", "2M"], vec![&disk]),
            ("e2i-move", vec!["-o", "1M", "-O", "2M"], vec![other.path()]),
            ("e2i-move", vec!["-O", "1M"], vec![&fs_img, &disk]),
            ("e2i-move", vec!["-O", "30M"], vec![&fs_img, &disk]),
            ("e2i-move", vec!["-O", "1M"], vec![&fs_img, other.path()]),
            ("e2i-to-raw", vec!["-O", "1M"], vec![&normal, &disk]),
            ("e2i-to-raw", vec!["-c", "-O", "1M"], vec![&normal, &disk]),
            ("e2i-install", vec![], vec![&disk, &normal]),
            ("e2i-install", vec![], vec![other.path(), &normal]),
            ("e2i-install", vec![], vec![pl.disk(), &normal]),
        ];
        let place = format!("mounted as {} on {}", pl.part(1).display(), mnt.display());
        for (t, args, paths) in &cases {
            let what = format!("{t} {args:?} {paths:?}");
            let err = failed(&e2i(t, args, paths), &what);
            assert!(err.contains(&place), "{what}: {err}");
            assert!(digest(&disk) == before, "{what}: the disk changed");
        }
    }
    let _m = mount(&pl.part(1), &mnt, "rw");
    let x = d.path().join("x.raw");
    let err = failed(
        &e2i("e2i-capture", &["-r", "-o", "1M"], &[&disk, &x]),
        "capture of the mounted filesystem through the file",
    );
    let place = format!("as {} on {}", pl.part(1).display(), mnt.display());
    assert!(
        err.contains(&format!("mounted read-write {place}")),
        "{err}"
    );
    ok(
        &e2i("e2i-capture", &["-r", "-o", "11M"], &[&disk, &x]),
        "capture of the other partition",
    );
    ok(
        &e2i(
            "e2i-move",
            &["-o", "11M"],
            &[&disk, &d.path().join("y.raw")],
        ),
        "clone of the other partition",
    );
}

/// A qcow2 SOURCE or INPUT reads through to its backing files: an OUTPUT that is one of
/// them (replaced, or written by position) broke SOURCE, exit 0. Refused under every tool,
/// through a chain of two with a relative name, a compressed overlay and one on stdin;
/// another OUTPUT is written as usual.
#[test]
fn an_output_that_is_a_backing_file_of_what_is_read_is_refused() {
    let d = tempdir();
    let base = mkfs(d.path(), "base.raw", "4M", &[]);
    let dir = d.path();
    let qemu = |args: &[&str]| run_ok(Command::new("qemu-img").current_dir(dir).args(args));
    qemu(&[
        "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "ov.qcow2",
    ]);
    fs::create_dir(dir.join("sub")).unwrap();
    qemu(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "../ov.qcow2",
        "-F",
        "qcow2",
        "sub/top.qcow2",
    ]);
    sh(Command::new("xz").arg("-k").arg(dir.join("ov.qcow2")));
    let before = digest(&base);
    let ov = dir.join("ov.qcow2");
    let top = dir.join("sub/top.qcow2");
    let xz = dir.join("ov.qcow2.xz");
    let cases: Vec<(&str, Vec<&str>, &Path)> = vec![
        ("e2i-capture", vec!["-r"], &ov),
        ("e2i-capture", vec!["-Q"], &ov),
        ("e2i-capture", vec![], &ov),
        ("e2i-capture", vec!["-r"], &top),
        ("e2i-move", vec![], &ov),
        ("e2i-move", vec!["-O", "0"], &top),
        ("qcow2-to-raw", vec![], &ov),
        ("qcow2-to-raw", vec!["-c"], &top),
        ("qcow2-to-raw", vec![], &xz),
        ("e2i-to-raw", vec!["-O", "0"], &ov),
        ("e2i-to-raw", vec![], &xz),
        ("e2i-to-qcow2", vec![], &top),
        ("e2i-to-qcow2", vec![], &xz),
    ];
    for (t, args, input) in &cases {
        let what = format!("{t} {args:?} {}", input.display());
        let err = failed(&e2i(t, args, &[input, &base]), &what);
        assert!(err.contains("backing file"), "{what}: {err}");
        assert!(err.contains("nothing written"), "{what}: {err}");
        assert!(digest(&base) == before, "{what}: the backing file changed");
    }
    let o = run(tool_cmd("qcow2-to-raw")
        .arg("-")
        .arg(&base)
        .current_dir(dir)
        .stdin(fs::File::open(&ov).unwrap()));
    let err = failed(&o, "qcow2-to-raw - BASE < OVERLAY");
    assert!(err.contains("backing file"), "{err}");
    assert!(digest(&base) == before, "stdin: the backing file changed");
    // Elsewhere: converted as usual.
    let out = dir.join("out.raw");
    ok(
        &e2i("qcow2-to-raw", &[], &[&top, &out]),
        "qcow2-to-raw elsewhere",
    );
    assert!(read(&out) == read(&base));
}

/// A block device another program holds exclusively (a mount, device mapper, md, a
/// program's O_EXCL open): e2i-install said only "open device: Device or resource busy".
/// Every writer says the device is in use and that nothing was written.
#[test]
fn a_device_another_program_holds_is_refused_with_a_reason() {
    use std::os::unix::fs::OpenOptionsExt;
    let d = tempdir();
    let fs_img = mkfs(d.path(), "fs.img", "4M", &[]);
    let normal = d.path().join("fs.e2i");
    e2image(&[], &fs_img, &normal);
    let target = d.path().join("target.img");
    fs::copy(&fs_img, &target).unwrap();
    let lo = Loop::new(&target, &[]);
    // This test holds it, as a program would.
    let held = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(lo.path())
        .expect("exclusive open");
    let before = digest(&target);
    let cases: Vec<(&str, Vec<&str>, Vec<&Path>)> = vec![
        ("e2i-install", vec![], vec![lo.path(), &normal]),
        ("e2i-capture", vec!["-r"], vec![&fs_img, lo.path()]),
        ("e2i-to-raw", vec![], vec![&normal, lo.path()]),
        ("e2i-move", vec![], vec![&fs_img, lo.path()]),
        ("e2i-move", vec!["-O", "1M"], vec![lo.path()]),
    ];
    for (t, args, paths) in &cases {
        let what = format!("{t} {args:?} {paths:?}");
        let err = failed(&e2i(t, args, paths), &what);
        assert!(err.contains("in use"), "{what}: {err}");
        assert!(!err.contains("os error"), "{what}: {err}");
        assert!(digest(&target) == before, "{what}: the device changed");
    }
    drop(held);
    ok(
        &e2i("e2i-install", &[], &[lo.path(), &normal]),
        "install once released",
    );
}

/// The file under such a loop device (device mapper or md on an image file, a program's
/// O_EXCL open of its loop device): written in place, it changes what the holder sees as
/// writing the device would, which the exclusive open refuses; the file itself was written
/// by every in-place writer. Refused now, also with `-n`, nothing written; released, it is
/// written.
#[test]
fn a_file_under_a_held_loop_device_is_not_written_in_place() {
    use std::os::unix::fs::OpenOptionsExt;
    let d = tempdir();
    let fs_img = mkfs(d.path(), "fs.img", "4M", &[]);
    let normal = d.path().join("fs.e2i");
    e2image(&[], &fs_img, &normal);
    let target = d.path().join("target.img");
    fs::copy(&fs_img, &target).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let lo = Loop::new(&target, &[]);
    let held = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(lo.path())
        .expect("exclusive open");
    let before = digest(&target);
    let cases: Vec<(&str, Vec<&str>, Vec<&Path>)> = vec![
        ("e2i-install", vec![], vec![&target, &normal]),
        ("e2i-install", vec!["-n"], vec![&target, &normal]),
        ("e2i-to-raw", vec!["-O", "0"], vec![&fs_img, &target]),
        ("e2i-to-raw", vec!["-c", "-n"], vec![&fs_img, &target]),
        ("e2i-move", vec![], vec![&fs_img, &target]),
        ("e2i-move", vec!["-O", "1M"], vec![&target]),
        ("e2i-move", vec!["-n", "-O", "1M"], vec![&target]),
    ];
    for (t, args, paths) in &cases {
        let what = format!("{t} {args:?} {paths:?}");
        let err = failed(&e2i(t, args, paths), &what);
        assert!(err.contains("in use"), "{what}: {err}");
        assert!(err.contains(&lo.0), "{what}: {err}");
        assert!(digest(&target) == before, "{what}: the file changed");
    }
    drop(held);
    ok(
        &e2i("e2i-to-raw", &["-O", "0"], &[&fs_img, &target]),
        "written once released",
    );
}

/// A disk image: 1 MiB of pattern, the filesystem `fs`, 1 MiB of pattern.
fn disk_with(dir: &Path, name: &str, fs_img: &Path) -> PathBuf {
    let mut d: Vec<u8> = (0..MIB).map(|i| (i % 253) as u8).collect();
    d.extend_from_slice(&read(fs_img));
    d.extend((0..MIB).map(|i| (i % 241) as u8));
    let p = dir.join(name);
    fs::write(&p, d).unwrap();
    p
}

/// Stdout appended to a file being moved in place (`>> disk.img`) was refused as "-: an
/// in-place e2i-move is moving this file…", which names nothing a user typed; stdin
/// redirected from it (`< disk.img`) was read half moved, unheld. Both are now held and
/// named: "- (stdout, PATH)", "- (stdin, PATH)"; nothing written.
#[test]
fn stdin_and_stdout_redirected_to_a_file_being_moved_are_held_and_named() {
    let d = tempdir();
    let state = d.path().join("state");
    let fs_img = mkfs(d.path(), "fs.img", "4M", &[]);
    let disk = disk_with(d.path(), "disk.img", &fs_img);
    // Held before its third write until the checks are done.
    let mover = held_mover(&["-o", "1M", "-O", "2M"], &disk, &state, 64);
    let before = digest(&disk);
    let o = run(tool_cmd("e2i-capture")
        .arg("-r")
        .arg(&fs_img)
        .arg("-")
        .env("XDG_STATE_HOME", &state)
        .stdout(fs::OpenOptions::new().append(true).open(&disk).unwrap()));
    let err = failed(&o, "capture >> DISK being moved");
    assert!(
        err.contains(&format!("- (stdout, {})", disk.display())),
        "{err}"
    );
    assert!(digest(&disk) == before, "the disk changed");
    // A converter reading DISK on stdin, writing a new file.
    let from_stdin = |t: &str| {
        run(tool_cmd(t)
            .arg("-")
            .arg(d.path().join("out"))
            .env("XDG_STATE_HOME", &state)
            .stdin(fs::File::open(&disk).unwrap()))
    };
    for t in ["e2i-to-raw", "e2i-to-qcow2"] {
        let o = from_stdin(t);
        let err = failed(&o, &format!("{t} - OUT < DISK being moved"));
        assert!(
            err.contains(&format!("- (stdin, {})", disk.display())),
            "{t}: {err}"
        );
        assert!(!d.path().join("out").exists());
    }
    // Killed half-way: stdin from the half-moved file is refused too, naming the journal.
    // A converter's input is its INPUT (it was told "SOURCE is half-moved"), named with the
    // file behind stdin, which is what e2i-move must be given to finish the move.
    drop(mover);
    let real = disk.canonicalize().unwrap();
    let journal = format!("{}.e2i-move", real.display());
    for t in ["e2i-to-raw", "e2i-to-qcow2"] {
        let o = from_stdin(t);
        let err = failed(&o, &format!("{t} - OUT < DISK half moved"));
        let named = format!("- (stdin, {}): INPUT is half-moved", disk.display());
        assert!(err.contains(&named), "{t}: {err}");
        assert!(!err.contains("SOURCE"), "{t}: {err}");
        let finish = format!("--journal {journal} {})", real.display());
        assert!(err.contains(&finish), "{t}: {err}");
        assert!(!d.path().join("out").exists());
    }
    // e2i-capture's is its SOURCE (it reads no stdin).
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-o", "1M"])
        .arg(&disk)
        .arg(d.path().join("out"))
        .env("XDG_STATE_HOME", &state));
    let err = failed(&o, "e2i-capture DISK half moved");
    assert!(err.contains("SOURCE is half-moved"), "{err}");
}

/// The other side of the writers' hold: an in-place move of a file a writer holds (here a
/// converter blocked on its input, half of a stream on a pipe) is refused, nothing begun
/// (no journal); once the writer is done, the move runs.
#[test]
fn an_in_place_move_waits_for_the_writer_of_its_file() {
    use std::io::Write;
    let d = tempdir();
    let state = d.path().join("state");
    let fs_img = mkfs(d.path(), "fs.img", "4M", &[]);
    let stream = d.path().join("fs.stream");
    run_ok(
        tool_cmd("e2i-capture")
            .arg(&fs_img)
            .arg("-")
            .stdout(fs::File::create(&stream).unwrap()),
    );
    let stream = read(&stream);
    // Where the filesystem is once the writer is done: -O puts it back where it was, a
    // replaced file holds it at 0.
    for (name, args, at) in [
        ("in place", &["-O", "1048576"][..], "1M"),
        ("replaced", &[][..], "0"),
    ] {
        let disk = disk_with(d.path(), "disk.img", &fs_img);
        let mut writer = Reaper::new(
            tool_cmd("e2i-to-raw")
                .args(args)
                .arg("-")
                .arg(&disk)
                .env("XDG_STATE_HOME", &state)
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut stdin = writer.child_mut().stdin.take().unwrap();
        stdin.write_all(&stream[..stream.len() / 2]).unwrap();
        // Held: the writer's exclusive lock on DISK.
        let probe = fs::File::open(&disk).unwrap();
        while rustix::fs::flock(&probe, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok() {
            let _ = rustix::fs::flock(&probe, rustix::fs::FlockOperation::Unlock);
            assert!(
                writer.child_mut().try_wait().unwrap().is_none(),
                "{name}: the writer ended early"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(probe);
        let o = run(tool_cmd("e2i-move")
            .args(["-o", "1M", "-O", "2M"])
            .arg(&disk)
            .env("XDG_STATE_HOME", &state));
        let err = failed(&o, &format!("{name}: move while a writer holds DISK"));
        assert!(
            err.contains("an e2i tool is reading or writing it"),
            "{name}: {err}"
        );
        assert!(!journal_of(&disk).exists(), "{name}: a journal was begun");
        stdin.write_all(&stream[stream.len() / 2..]).unwrap();
        drop(stdin);
        let o = writer.take().wait_with_output().unwrap();
        ok(&o, &format!("{name}: the writer"));
        ok(
            &run(tool_cmd("e2i-move")
                .args(["-o", at, "-O", "3M"])
                .arg(&disk)
                .env("XDG_STATE_HOME", &state)),
            &format!("{name}: the move afterwards"),
        );
        let _ = fs::remove_file(journal_of(&disk));
        fs::remove_file(&disk).unwrap();
    }
}
