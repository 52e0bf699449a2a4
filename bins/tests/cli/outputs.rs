//! Outputs that never destroy: one test per rule of the output layer, each run for every
//! tool the rule applies to (decisions.md, "An OUTPUT is written where it points").
//!
//! Block-device cases use loop devices (root only here; [`Loop`] always detaches), the
//! permission cases a non-root user through `setpriv`. Every test failed on the tools as
//! they were before this layer (run them with `E2I_TEST_BIN_DIR` pointing at an older build).

use super::util::*;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn p(x: &Path) -> &str {
    x.to_str().expect("utf-8 path")
}

/// What a tool reads.
#[derive(Clone, Copy, Debug, PartialEq)]
enum In {
    /// A raw filesystem image.
    Img,
    Qcow2,
    Stream,
    Normal,
}

/// One way of writing OUTPUT: a tool, its options, what it reads.
#[derive(Clone, Copy, Debug)]
struct W {
    tool: &'static str,
    args: &'static [&'static str],
    input: In,
    /// Writes a stream to stdout, a FIFO or a character device.
    streams: bool,
}

const WRITERS: &[W] = &[
    W {
        tool: "e2i-capture",
        args: &[],
        input: In::Img,
        streams: true,
    },
    W {
        tool: "e2i-capture",
        args: &["-r"],
        input: In::Img,
        streams: true,
    },
    W {
        tool: "e2i-capture",
        args: &["-Q"],
        input: In::Img,
        streams: true,
    },
    W {
        tool: "e2i-capture",
        args: &["--format", "stream"],
        input: In::Img,
        streams: true,
    },
    W {
        tool: "e2i-to-raw",
        args: &[],
        input: In::Img,
        streams: true,
    },
    W {
        tool: "e2i-to-raw",
        args: &[],
        input: In::Stream,
        streams: true,
    },
    W {
        tool: "e2i-to-qcow2",
        args: &[],
        input: In::Img,
        streams: true,
    },
    W {
        tool: "qcow2-to-raw",
        args: &[],
        input: In::Qcow2,
        streams: true,
    },
    W {
        tool: "e2i-move",
        args: &[],
        input: In::Img,
        streams: false,
    },
];

/// The e2image normal format, which [`WRITERS`] leave out (its header records the output's
/// inode and the time): the write error tests cover it too.
const NORMAL: W = W {
    tool: "e2i-capture",
    args: &["--format", "normal"],
    input: In::Img,
    streams: true,
};

impl W {
    fn cmd(&self, input: &Path, output: &Path) -> Command {
        let mut c = tool_cmd(self.tool);
        c.args(self.args).arg(input).arg(output);
        c
    }
    fn name(&self) -> String {
        format!("{} {} ({:?})", self.tool, self.args.join(" "), self.input)
    }
    /// Its output does not depend on where it goes (not the normal format, whose header
    /// records the output's inode and the time).
    fn deterministic(&self) -> bool {
        !(self.tool == "e2i-capture" && self.args.is_empty())
    }
}

/// A small filesystem and its images in every input format.
struct Fx {
    dir: tempfile::TempDir,
    img: PathBuf,
    qcow2: PathBuf,
    stream: PathBuf,
    normal: PathBuf,
}

impl Fx {
    fn new(size: &str) -> Fx {
        Fx::with(size, &[])
    }

    /// With these mkfs options.
    fn with(size: &str, mkfs_opts: &[&str]) -> Fx {
        let dir = tempdir();
        let img = mkfs(dir.path(), "fs.img", size, mkfs_opts);
        let qcow2 = dir.path().join("fs.qcow2");
        run_ok(Command::new("e2image").arg("-Q").arg(&img).arg(&qcow2));
        let normal = dir.path().join("fs.e2i");
        run_ok(Command::new("e2image").arg(&img).arg(&normal));
        let stream = dir.path().join("fs.stream");
        let o = run_ok(
            tool_cmd("e2i-capture")
                .args(["--format", "stream"])
                .arg(&img)
                .arg("-"),
        );
        fs::write(&stream, &o.stdout).unwrap();
        Fx {
            dir,
            img,
            qcow2,
            stream,
            normal,
        }
    }
    fn input(&self, i: In) -> &Path {
        match i {
            In::Img => &self.img,
            In::Qcow2 => &self.qcow2,
            In::Stream => &self.stream,
            In::Normal => &self.normal,
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A character device node like /dev/null (`1 3`) or /dev/full (`1 7`), made in the test's
/// own folder: a tool that wrongly replaced its OUTPUT must not take the system's with it.
fn char_dev(dir: &Path, name: &str, minor: u32) -> PathBuf {
    let p = dir.join(name);
    let st = Command::new("mknod")
        .arg(&p)
        .args(["c", "1", &minor.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "mknod");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
    p
}

fn digest(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap()
}

#[test]
fn output_that_is_the_input_is_refused_under_any_name() {
    let fx = Fx::new("8M");
    for w in WRITERS {
        let input = fx.input(w.input).to_path_buf();
        let before = digest(&input);
        let dir = fx.dir.path();
        let link = dir.join("link");
        let hard = dir.join("hard");
        let _ = fs::remove_file(&link);
        let _ = fs::remove_file(&hard);
        std::os::unix::fs::symlink(&input, &link).unwrap();
        fs::hard_link(&input, &hard).unwrap();
        let name = input.file_name().unwrap().to_str().unwrap().to_string();
        let lo = Loop::new(&input, &[]);
        let cases: Vec<(String, Command)> = vec![
            ("same path".into(), w.cmd(&input, &input)),
            ("symlink".into(), w.cmd(&input, &link)),
            ("hard link".into(), w.cmd(&input, &hard)),
            ("./x and x".into(), {
                let mut c = w.cmd(Path::new(&name), &Path::new(".").join(&name));
                c.current_dir(dir);
                c
            }),
            ("loop device backed by it".into(), w.cmd(&input, lo.path())),
            (
                "its file, read through a loop device".into(),
                w.cmd(lo.path(), &input),
            ),
        ];
        for (how, mut c) in cases {
            let o = run(&mut c);
            let what = format!("{} OUTPUT = INPUT ({how})", w.name());
            let err = failed(&o, &what);
            assert!(
                err.contains("is SOURCE") || err.contains("is INPUT"),
                "{what}: {err}"
            );
            assert!(err.contains("nothing written"), "{what}: {err}");
            assert!(digest(&input) == before, "{what}: the input changed");
        }
        drop(lo);
    }
    // Redirections: stdin read from OUTPUT, stdout appended to INPUT.
    let before = digest(&fx.img);
    let o = run(tool_cmd("e2i-to-raw")
        .arg("-")
        .arg(&fx.img)
        .stdin(fs::File::open(&fx.img).unwrap()));
    let err = failed(&o, "e2i-to-raw - X < X");
    assert!(err.contains("is INPUT - (stdin)"), "{err}");
    let o = run(tool_cmd("e2i-capture")
        .arg("-r")
        .arg(&fx.img)
        .arg("-")
        .stdout(fs::OpenOptions::new().append(true).open(&fx.img).unwrap()));
    let err = failed(&o, "e2i-capture -r X - >> X");
    let named = format!(
        "- (stdout, {}) is SOURCE",
        fs::canonicalize(&fx.img).unwrap().display()
    );
    assert!(err.contains(&named), "{err}");
    assert!(digest(&fx.img) == before, "redirections: the input changed");
    // e2i-install: DEVICE that is IMAGE, and an undo file that is DEVICE.
    let img_copy = fx.path("copy.img");
    fs::copy(&fx.img, &img_copy).unwrap();
    let before = digest(&fx.normal);
    let o = run(tool_cmd("e2i-install").arg(&fx.normal).arg(&fx.normal));
    let err = failed(&o, "install DEVICE = IMAGE");
    assert!(err.contains("is IMAGE"), "{err}");
    assert!(digest(&fx.normal) == before);
    let dev_before = digest(&img_copy);
    let o = run(tool_cmd("e2i-install")
        .arg("-z")
        .arg(&img_copy)
        .arg(&img_copy)
        .arg(&fx.normal));
    let err = failed(&o, "install undo file = DEVICE");
    assert!(err.contains("is DEVICE"), "{err}");
    assert!(digest(&img_copy) == dev_before);
}

#[test]
fn loop_devices_over_parts_of_a_file_overlap_only_where_they_share_bytes() {
    // A disk image with a filesystem at 1 MiB and a second "partition" at 20 MiB, each seen
    // through a loop device with an offset (as a partition would be).
    let fx = Fx::new("8M");
    let disk = fx.path("disk.img");
    let mut d = vec![0u8; 40 << 20];
    let fsb = fs::read(&fx.img).unwrap();
    d[1 << 20..(1 << 20) + fsb.len()].copy_from_slice(&fsb);
    fs::write(&disk, &d).unwrap();
    let p1 = Loop::new(&disk, &["-o", "1048576", "--sizelimit", "16777216"]);
    let p2 = Loop::new(&disk, &["-o", "20971520", "--sizelimit", "16777216"]);
    run_ok(
        tool_cmd("e2i-capture")
            .arg("-r")
            .arg(p1.path())
            .arg(p2.path()),
    );
    for (t, args) in [("e2i-capture", &["-r"][..]), ("e2i-move", &[][..])] {
        let before = digest(&disk);
        let o = run(tool_cmd(t).args(args).arg(p1.path()).arg(&disk));
        let err = failed(&o, &format!("{t}: OUTPUT is the disk under SOURCE"));
        assert!(err.contains("loop device backed by"), "{err}");
        assert!(digest(&disk) == before, "{t}: the disk changed");
    }
}

#[test]
fn char_devices_and_fifos_are_written_as_streams_never_replaced() {
    let fx = Fx::new("8M");
    let null = char_dev(fx.dir.path(), "null", 3);
    for w in WRITERS {
        let input = fx.input(w.input);
        let o = run(&mut w.cmd(input, &null));
        let m = fs::metadata(&null).unwrap();
        assert!(
            m.file_type().is_char_device(),
            "{}: the null device was replaced",
            w.name()
        );
        let fifo = fx.path("fifo");
        let _ = fs::remove_file(&fifo);
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        if !w.streams {
            let err = failed(&o, &format!("{} to /dev/null", w.name()));
            assert!(err.contains("character device"), "{err}");
            let o = run(&mut w.cmd(input, &fifo));
            failed(&o, &format!("{} to a FIFO", w.name()));
            assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
            continue;
        }
        ok(&o, &format!("{} to /dev/null", w.name()));
        // What the tool writes to stdout is what a FIFO's reader gets.
        let expect = run(&mut w.cmd(input, Path::new("-")));
        ok(&expect, &format!("{} to stdout", w.name()));
        let f2 = fifo.clone();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            fs::File::open(&f2).unwrap().read_to_end(&mut v).unwrap();
            v
        });
        let o = run(&mut w.cmd(input, &fifo));
        ok(&o, &format!("{} to a FIFO", w.name()));
        let got = reader.join().unwrap();
        assert!(
            got == expect.stdout,
            "{}: the FIFO's reader got {} bytes, stdout {}",
            w.name(),
            got.len(),
            expect.stdout.len()
        );
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }
}

#[test]
fn a_symlink_output_writes_its_target_and_stays() {
    let fx = Fx::new("8M");
    for w in WRITERS {
        let input = fx.input(w.input);
        let direct = fx.path("direct.out");
        let _ = fs::remove_file(&direct);
        ok(&run(&mut w.cmd(input, &direct)), &w.name());
        let target = fx.path("target.out");
        let link = fx.path("link.out");
        let _ = fs::remove_file(&target);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("target.out", &link).unwrap();
        // A dangling link names the file to create; then an existing target is replaced,
        // keeping its mode.
        for round in ["dangling", "existing"] {
            if round == "existing" {
                fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
            }
            ok(
                &run(&mut w.cmd(input, &link)),
                &format!("{} {round}", w.name()),
            );
            let lm = fs::symlink_metadata(&link).unwrap();
            assert!(
                lm.file_type().is_symlink(),
                "{}: the link was replaced",
                w.name()
            );
            let t = fs::read(&target).unwrap();
            let d = fs::read(&direct).unwrap();
            if w.deterministic() {
                assert!(t == d, "{} {round}: the target differs", w.name());
            } else {
                assert_eq!(t.len(), d.len(), "{} {round}", w.name());
            }
            let mode = fs::metadata(&target).unwrap().mode() & 0o777;
            let want = if round == "existing" { 0o644 } else { 0o600 };
            assert_eq!(mode, want, "{} {round}: mode {mode:o}", w.name());
        }
    }
}

/// Run `cmd` as user and group 65534 with no supplementary groups.
fn as_nobody(cmd: &Command) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    run(&mut c)
}

#[test]
fn an_output_the_user_cannot_write_is_refused_with_the_systems_reason() {
    let fx = Fx::new("8M");
    let dir = fx.path("shared");
    fs::create_dir(&dir).unwrap();
    // The folder is writable by everyone: only the file's own permissions protect it.
    fs::set_permissions(fx.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let mut cases: Vec<(String, Command, PathBuf)> = Vec::new();
    for w in WRITERS {
        let input = dir.join(format!("in-{}", cases.len()));
        fs::copy(fx.input(w.input), &input).unwrap();
        fs::set_permissions(&input, fs::Permissions::from_mode(0o644)).unwrap();
        for (owner, mode) in [(65534, 0o444), (0, 0o644)] {
            let out = dir.join(format!("out-{}-{owner}", cases.len()));
            fs::write(&out, b"precious").unwrap();
            std::os::unix::fs::chown(&out, Some(owner), Some(owner)).unwrap();
            fs::set_permissions(&out, fs::Permissions::from_mode(mode)).unwrap();
            cases.push((
                format!("{} over a {mode:o} file of uid {owner}", w.name()),
                w.cmd(&input, &out),
                out,
            ));
        }
    }
    // e2i-install onto an image file the user may not write.
    let dev = dir.join("device.img");
    fs::copy(&fx.img, &dev).unwrap();
    fs::set_permissions(&dev, fs::Permissions::from_mode(0o644)).unwrap();
    let image = dir.join("image.e2i");
    fs::copy(&fx.normal, &image).unwrap();
    fs::set_permissions(&image, fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = tool_cmd("e2i-install");
    c.arg(&dev).arg(&image);
    cases.push(("e2i-install onto a 644 root file".into(), c, dev));
    // A file the user may write in a folder they may not: written in place, as e2image does.
    let locked = fx.path("locked");
    fs::create_dir(&locked).unwrap();
    let mine = locked.join("mine.raw");
    fs::write(&mine, b"old").unwrap();
    std::os::unix::fs::chown(&mine, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    let input = dir.join("in-locked");
    fs::copy(&fx.img, &input).unwrap();
    fs::set_permissions(&input, fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = tool_cmd("e2i-to-raw");
    c.arg(&input).arg(&mine);
    let o = as_nobody(&c);
    ok(&o, "e2i-to-raw over a writable file in a locked folder");
    let want = fx.path("want.raw");
    run_ok(Command::new("e2image").arg("-r").arg(&fx.img).arg(&want));
    assert!(fs::read(&mine).unwrap() == fs::read(&want).unwrap());
    for (what, cmd, out) in cases {
        let before = fs::read(&out).unwrap();
        let mode = fs::metadata(&out).unwrap().mode();
        let o = as_nobody(&cmd);
        let err = failed(&o, &what);
        assert!(err.contains("Permission denied"), "{what}: {err}");
        assert!(fs::read(&out).unwrap() == before, "{what}: changed");
        assert_eq!(fs::metadata(&out).unwrap().mode(), mode, "{what}: mode");
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(left.is_empty(), "{what}: temporary files left");
    }
}

/// A file of `len` bytes of a repeating pattern (a device's previous contents).
fn pattern_file(path: &Path, len: usize) {
    let v: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ 0xA5).collect();
    fs::write(path, v).unwrap();
}

#[test]
fn a_device_too_small_is_refused_before_the_first_write() {
    let fx = Fx::new("8M");
    let backing = fx.path("small.dev");
    pattern_file(&backing, 16 << 10);
    let lo = Loop::new(&backing, &[]);
    let before = digest(lo.path());
    let mut cases: Vec<(String, Command)> = WRITERS
        .iter()
        .map(|w| (w.name(), w.cmd(fx.input(w.input), lo.path())))
        .collect();
    // -n checks the same limits as the real run.
    for (t, i) in [
        ("e2i-to-raw", &fx.img),
        ("qcow2-to-raw", &fx.qcow2),
        ("e2i-move", &fx.img),
        ("e2i-to-qcow2", &fx.img),
    ] {
        let mut c = tool_cmd(t);
        c.arg("-n").arg(i).arg(lo.path());
        cases.push((format!("{t} -n"), c));
    }
    for (what, mut c) in cases {
        let o = run(&mut c);
        let err = failed(&o, &what);
        assert!(
            err.contains("16384") && err.contains("must be written"),
            "{what}: {err}"
        );
        if !what.contains("-Q") && !what.contains("to-qcow2") && what.contains("raw")
            || what.contains("move")
        {
            assert!(err.contains("8388608"), "{what}: {err}");
        }
        assert!(digest(lo.path()) == before, "{what}: the device changed");
    }
}

#[test]
fn a_device_gets_exactly_e2images_bytes_whatever_the_input() {
    // mkfs leaves unused inode-table blocks unwritten; a device that held something else
    // before must not keep it there (e2image -r writes whole inode tables to devices).
    // Several layouts: block sizes, bigalloc clusters, no descriptor checksums, ext2, meta_bg.
    for opts in [
        &[][..],
        &["-b", "4096"],
        &["-b", "4096", "-O", "bigalloc", "-C", "16384"],
        &["-O", "^metadata_csum,uninit_bg"],
        &["-t", "ext2"],
        &["-b", "4096", "-O", "meta_bg,^resize_inode"],
    ] {
        device_bytes_match_e2image(opts);
    }
}

fn device_bytes_match_e2image(mkfs_opts: &[&str]) {
    let fx = Fx::with("32M", mkfs_opts);
    let garbage = fx.path("garbage");
    let mut g: Vec<u8> = (0..32usize << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    // e2image ends with a zero byte at the last byte of the filesystem (its truncation
    // fallback on devices); ours leaves that unselected byte alone: keep it zero here.
    let n = g.len();
    g[n - 4096..].fill(0);
    fs::write(&garbage, &g).unwrap();
    let reference = fx.path("ref.dev");
    fs::copy(&garbage, &reference).unwrap();
    let rl = Loop::new(&reference, &[]);
    run_ok(
        Command::new("e2image")
            .arg("-r")
            .arg(&fx.img)
            .arg(rl.path()),
    );
    let want = digest(rl.path());
    drop(rl);
    let cases: &[(&str, &[&str], In)] = &[
        ("e2i-to-raw", &[], In::Img),
        ("e2i-to-raw", &[], In::Stream),
        ("e2i-to-raw", &[], In::Qcow2),
        ("qcow2-to-raw", &[], In::Qcow2),
        ("e2i-capture", &["-r"], In::Img),
        ("e2i-move", &["--metadata-only"], In::Img),
        ("e2i-to-raw", &[], In::Normal),
    ];
    let ours = fx.path("ours.dev");
    let itables = inode_table_blocks(&fx.img);
    for (t, args, i) in cases {
        fs::copy(&garbage, &ours).unwrap();
        let lo = Loop::new(&ours, &[]);
        let what = format!("{t} {args:?} from {i:?} (mkfs {mkfs_opts:?})");
        ok(
            &run(tool_cmd(t).args(*args).arg(fx.input(*i)).arg(lo.path())),
            &what,
        );
        let got = digest(lo.path());
        drop(lo);
        if *i != In::Normal {
            assert!(got == want, "{what}: the device differs from e2image -r's");
            continue;
        }
        // A normal image holds the superblock, descriptors, bitmaps and inode tables:
        // those positions get e2image's bytes, every other block is left as it was.
        let bs = block_size(&fx.img);
        for b in 0..got.len() / bs {
            let r = b * bs..(b + 1) * bs;
            let same = got[r.clone()] == want[r.clone()];
            assert!(
                same || got[r.clone()] == g[r.clone()],
                "{what}: block {b} is neither e2image's nor untouched"
            );
            if itables.contains(&(b as u64)) {
                assert!(same, "{what}: inode-table block {b} differs from e2image's");
            }
        }
    }
}

/// The block size of `img`, from dumpe2fs -h.
fn block_size(img: &Path) -> usize {
    let o = run(Command::new("dumpe2fs").arg("-h").arg(img));
    text(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("block size")
}

/// Every inode-table block of `img`, from dumpe2fs ("Inode table at A-B").
fn inode_table_blocks(img: &Path) -> std::collections::BTreeSet<u64> {
    let o = run_ok(Command::new("dumpe2fs").arg(img));
    let mut set = std::collections::BTreeSet::new();
    for l in text(&o.stdout).lines() {
        if let Some(r) = l.trim().strip_prefix("Inode table at ") {
            let r = r.split_whitespace().next().unwrap();
            let (a, b) = r.split_once('-').unwrap();
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            set.extend(a..=b);
        }
    }
    assert!(!set.is_empty());
    set
}

/// A filesystem with a large incompressible file, so that every format of it is larger than
/// a pipe's buffer.
fn big_fs(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    fs::create_dir_all(&tree).unwrap();
    let data: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    fs::write(tree.join("big"), data).unwrap();
    let img = dir.join("big.img");
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("64M"),
    );
    img
}

#[test]
fn a_closed_pipe_on_stdout_is_a_failure() {
    let d = tempdir();
    let img = big_fs(d.path());
    let qcow2 = d.path().join("big.qcow2");
    run_ok(Command::new("e2image").arg("-Qa").arg(&img).arg(&qcow2));
    let cases: &[(&str, &[&str], &Path)] = &[
        ("e2i-capture", &["-a"], &img),
        ("e2i-capture", &["-r"], &img),
        ("e2i-to-raw", &[], &img),
        ("e2i-to-qcow2", &["-a"], &img),
        ("qcow2-to-raw", &[], &qcow2),
    ];
    for (t, args, input) in cases {
        let mut child = tool_cmd(t)
            .args(*args)
            .arg("--json")
            .arg(input)
            .arg("-")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut head = [0u8; 10];
        child.stdout.take().unwrap().read_exact(&mut head).unwrap();
        // The reader goes away (`| head -c 10`).
        let o = child.wait_with_output().unwrap();
        let what = format!("{t} {args:?} | head -c 10");
        assert_eq!(o.status.code(), Some(141), "{what}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("\"exit\":141"),
            "{what}: {}",
            text(&o.stderr)
        );
    }
}

/// Wait until a file whose name contains `part` appears in `dir` (true), or `child` ends
/// without one (false). No time limit: a loaded machine only makes it slower.
fn wait_for(dir: &Path, part: &str, child: &mut std::process::Child) -> bool {
    loop {
        if fs::read_dir(dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(part))
        {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n.starts_with("new.out"))
        .collect()
}

#[test]
fn signals_remove_the_temporary_file() {
    let fx = Fx::new("8M");
    let out_dir = fx.path("outs");
    fs::create_dir(&out_dir).unwrap();
    let signals: Vec<&str> = ["INT", "TERM", "HUP"]
        .into_iter()
        .filter(|s| {
            let ign = ignored_here(s);
            if ign {
                eprintln!("signals_remove_the_temporary_file: SIG{s} is ignored here; not sent");
            }
            !ign
        })
        .collect();
    let Some(&first) = signals.first() else {
        return;
    };
    for (k, w) in WRITERS.iter().enumerate() {
        let sig = signals[k % signals.len()];
        let mut child = w
            .cmd(fx.input(w.input), &out_dir.join("new.out"))
            // Held until the signal comes, however loaded the machine (an hour).
            .env("E2I_TEST_PAUSE_AFTER_OPEN_MS", "3600000")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            wait_for(&out_dir, "partial", &mut child),
            "{}: no temporary file",
            w.name()
        );
        send_signal(child.id(), sig);
        let status = child.wait().unwrap();
        assert!(!status.success(), "{} SIG{sig}", w.name());
        assert!(
            leftovers(&out_dir).is_empty(),
            "{} SIG{sig}: left {:?}",
            w.name(),
            leftovers(&out_dir)
        );
    }
    // Without any test hook: a converter waiting on a pipe that stalls (ssh hangs), ^C.
    let stream = fs::read(&fx.stream).unwrap();
    let mut child = tool_cmd("e2i-to-raw")
        .arg("-")
        .arg(out_dir.join("new.out"))
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&stream[..stream.len() / 2]).unwrap();
    assert!(
        wait_for(&out_dir, "partial", &mut child),
        "to-raw from a pipe: no temporary file"
    );
    send_signal(child.id(), first);
    assert!(!child.wait().unwrap().success());
    drop(stdin);
    assert!(leftovers(&out_dir).is_empty(), "{:?}", leftovers(&out_dir));
    // A qcow2 on stdin is spooled to a temporary file first: that goes too, however the
    // run ends (SIGKILL included: the spool file has no name).
    for sig in ["TERM", "KILL"] {
        if ignored_here(sig) {
            continue;
        }
        let spool_dir = fx.path(&format!("tmp-{sig}"));
        fs::create_dir(&spool_dir).unwrap();
        let mut child = tool_cmd("qcow2-to-raw")
            .arg("-")
            .arg(out_dir.join("new.out"))
            .env("TMPDIR", &spool_dir)
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let q = fs::read(&fx.qcow2).unwrap();
        stdin.write_all(&q[..q.len() / 2]).unwrap();
        // The spool file is open in the temporary folder (its name already gone).
        let fds = PathBuf::from(format!("/proc/{}/fd", child.id()));
        let spooling = || {
            fs::read_dir(&fds)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| fs::read_link(e.path()).is_ok_and(|l| l.starts_with(&spool_dir)))
        };
        let spooled = poll_until(6000, || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "SIG{sig}: ended before spooling"
            );
            spooling()
        });
        assert!(spooled, "SIG{sig}: no spool file");
        send_signal(child.id(), sig);
        assert!(!child.wait().unwrap().success());
        drop(stdin);
        let left: Vec<_> = fs::read_dir(&spool_dir).unwrap().flatten().collect();
        assert!(left.is_empty(), "SIG{sig}: spool files left: {left:?}");
    }
    assert!(leftovers(&out_dir).is_empty(), "{:?}", leftovers(&out_dir));
}

/// e2image's verdict of `-c -n` (the count on its last line).
fn e2image_check_count(args: &str, img: &Path, target: &Path) -> u64 {
    let o = run_ok(Command::new("e2image").arg(args).arg(img).arg(target));
    let out = text(&o.stdout);
    let last = out.lines().last().unwrap_or_default();
    last.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn check_dry_run_compares_and_lists_only_what_differs() {
    let fx = Fx::new("32M");
    let raw = fx.path("t.raw");
    run_ok(Command::new("e2image").arg("-r").arg(&fx.img).arg(&raw));
    let clone = fx.path("t.clone");
    run_ok(Command::new("e2image").arg("-ra").arg(&fx.img).arg(&clone));
    // A device that held something else, then received e2image -r: -c -n must compare
    // what e2image compares on a device (whole inode tables).
    let backing = fx.path("dev.img");
    pattern_file(&backing, 32 << 20);
    let lo = Loop::new(&backing, &[]);
    run_ok(
        Command::new("e2image")
            .arg("-r")
            .arg(&fx.img)
            .arg(lo.path()),
    );
    let dev = lo.path().to_path_buf();
    let cases: &[(&str, &[&str], &Path, &Path, &str)] = &[
        ("e2i-to-raw", &[], &fx.img, &dev, "-rcn"),
        ("e2i-to-raw", &[], &fx.stream, &dev, "-rcn"),
        ("qcow2-to-raw", &[], &fx.qcow2, &dev, "-rcn"),
        ("e2i-to-raw", &[], &fx.img, &raw, "-rcn"),
        ("e2i-to-raw", &[], &fx.stream, &raw, "-rcn"),
        ("e2i-to-raw", &[], &fx.qcow2, &raw, "-rcn"),
        ("qcow2-to-raw", &[], &fx.qcow2, &raw, "-rcn"),
        ("e2i-move", &[], &fx.img, &clone, "-racn"),
    ];
    for (t, args, input, target, e2args) in cases {
        let what = format!("{t} -c -n from {}", input.display());
        let theirs = e2image_check_count(e2args, &fx.img, target);
        let before = digest(target);
        let o = run(tool_cmd(t)
            .args(*args)
            .args(["-c", "-n"])
            .arg(input)
            .arg(target));
        ok(&o, &what);
        assert_eq!(
            text(&o.stdout),
            format!("{theirs} blocks already contained the data to be copied\n"),
            "{what}"
        );
        // One changed metadata block (a byte of the superblock, block 1): exactly it.
        let mut changed = before.clone();
        changed[1024 + 0x100] ^= 0xFF;
        fs::write(target, &changed).unwrap();
        let o = run(tool_cmd(t)
            .args(*args)
            .args(["-c", "-n"])
            .arg(input)
            .arg(target));
        ok(&o, &what);
        assert_eq!(
            text(&o.stdout),
            format!(
                "Writing block 1 (1 block)\n{} blocks already contained the data to be copied\n",
                theirs - 1
            ),
            "{what}"
        );
        assert!(digest(target) == changed, "{what}: the dry run wrote");
        fs::write(target, &before).unwrap();
        // -p -n does not claim a copy.
        let o = run(tool_cmd(t)
            .args(*args)
            .args(["-p", "-n"])
            .arg(input)
            .arg(target));
        ok(&o, &what);
        assert!(
            !text(&o.stderr).contains("Copied"),
            "{what} -p: {}",
            text(&o.stderr)
        );
    }
}

/// The JSON lines among `o`'s stdout and stderr.
fn json_lines(o: &Output) -> Vec<String> {
    text(&o.stdout)
        .lines()
        .chain(text(&o.stderr).lines())
        .filter(|l| l.starts_with('{'))
        .map(str::to_string)
        .collect()
}

#[test]
fn json_summary_on_every_outcome() {
    let fx = Fx::new("8M");
    let missing = fx.path("missing");
    let tools: &[(&str, &Path)] = &[
        ("e2i-capture", &fx.img),
        ("e2i-to-raw", &fx.img),
        ("e2i-to-qcow2", &fx.img),
        ("qcow2-to-raw", &fx.qcow2),
    ];
    for (k, (t, input)) in tools.iter().enumerate() {
        let out = fx.path(&format!("j{k}.out"));
        let mut outcomes: Vec<(&str, Command, i32)> = Vec::new();
        let mut c = tool_cmd(t);
        c.arg("--json").arg(input).arg(&out);
        outcomes.push(("success", c, 0));
        let mut c = tool_cmd(t);
        c.arg("--json").arg(&missing).arg(&out);
        outcomes.push(("failure", c, 1));
        let mut c = tool_cmd(t);
        c.args(["--json", "--no-such-option"]).arg(input).arg(&out);
        outcomes.push(("usage error", c, 2));
        if *t != "e2i-capture" {
            let mut c = tool_cmd(t);
            c.args(["--json", "-n"]).arg(input).arg(fx.path("dry.out"));
            outcomes.push(("dry run", c, 0));
        }
        for (what, mut c, code) in outcomes {
            let o = run(&mut c);
            assert_eq!(
                o.status.code(),
                Some(code),
                "{t} {what}: {}",
                text(&o.stderr)
            );
            let lines = json_lines(&o);
            assert_eq!(lines.len(), 1, "{t} {what}: {lines:?}");
            assert!(
                lines[0].contains(&format!("\"exit\":{code}")),
                "{t} {what}: {}",
                lines[0]
            );
        }
        assert!(
            !fx.path("dry.out").exists(),
            "{t}: the dry run created OUTPUT"
        );
    }
}

/// `--json` with OUTPUT a file, its summary the one thing on stdout: stdout closed (`>&-`)
/// put it into the /dev/null the runtime opens in its place, a full device or a reader gone
/// lost it, and the run exited 0 — a script reading the summary found none, and was told
/// all went well. Now it goes to stderr when stdout was closed (as for a closed pipe's
/// run), and a summary that cannot be written fails the run: exit 1 with one line naming
/// stdout, 141 when its reader went away.
#[test]
fn a_json_summary_that_cannot_be_delivered_is_not_a_success() {
    let fx = Fx::new("8M");
    let tools: &[(&str, &Path)] = &[
        ("e2i-capture", &fx.img),
        ("e2i-to-raw", &fx.img),
        ("e2i-to-qcow2", &fx.img),
        ("qcow2-to-raw", &fx.qcow2),
    ];
    for (k, (t, input)) in tools.iter().enumerate() {
        let out = fx.path(&format!("j{k}.out"));
        let what = format!("{t} --json with stdout closed");
        let o = run(tool_in_sh(r#"exec "$@" >&-"#, t)
            .arg("--json")
            .arg(input)
            .arg(&out));
        ok(&o, &what);
        let stderr = text(&o.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with('{') && lines[0].contains("\"exit\":0"),
            "{what}: {lines:?}"
        );
        let what = format!("{t} --json > /dev/full");
        let o = run(tool_cmd(t)
            .arg("--json")
            .arg(input)
            .arg(&out)
            .stdout(fs::File::options().write(true).open("/dev/full").unwrap()));
        let err = failed(&o, &what);
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(
            err.starts_with(&format!("{t}: - (stdout, /dev/full): ")),
            "{what}: {err}"
        );
        let what = format!("{t} --json into a pipe nobody reads");
        let (r, w) = std::io::pipe().unwrap();
        drop(r);
        let o = run(tool_cmd(t).arg("--json").arg(input).arg(&out).stdout(w));
        assert_eq!(o.status.code(), Some(141), "{what}: {}", text(&o.stderr));
    }
}

/// A listing on stdout (`-n`, `-c`'s closing line, `--list`) that stdout cannot take was
/// reported five ways: naming INPUT (`e2i-to-raw: fs.img: list: No space left on device`),
/// naming nothing (`e2i-install: No space left on device`), `list:`, `listing on stdout:`.
/// The file named is the one the error is about: stdout, as every write error on it is named.
#[test]
fn a_listing_stdout_cannot_take_names_stdout() {
    let fx = Fx::new("8M");
    let existing = fx.path("existing.raw");
    run_ok(tool_cmd("e2i-to-raw").arg(&fx.img).arg(&existing));
    let normal = fx.path("fs.e2i");
    run_ok(tool_cmd("e2i-capture").arg(&fx.img).arg(&normal));
    let device = fx.path("device.img");
    fs::copy(&fx.img, &device).unwrap();
    let new = fx.path("new.out");
    let cases: Vec<(&str, Vec<&std::ffi::OsStr>)> = vec![
        ("e2i-capture", vec!["--list".as_ref(), fx.img.as_ref()]),
        (
            "e2i-to-raw",
            vec!["-n".as_ref(), fx.img.as_ref(), new.as_ref()],
        ),
        (
            "e2i-to-raw",
            vec!["-c".as_ref(), fx.img.as_ref(), existing.as_ref()],
        ),
        (
            "qcow2-to-raw",
            vec!["-n".as_ref(), fx.qcow2.as_ref(), new.as_ref()],
        ),
        (
            "e2i-to-qcow2",
            vec!["-n".as_ref(), fx.img.as_ref(), new.as_ref()],
        ),
        (
            "e2i-move",
            vec!["-n".as_ref(), fx.img.as_ref(), new.as_ref()],
        ),
        (
            "e2i-install",
            vec![
                "-n".as_ref(),
                "-f".as_ref(),
                device.as_ref(),
                normal.as_ref(),
            ],
        ),
    ];
    for (t, args) in cases {
        let what = format!("{t} {args:?} > /dev/full");
        let o = run(tool_cmd(t)
            .args(&args)
            .stdout(fs::File::options().write(true).open("/dev/full").unwrap()));
        let err = failed(&o, &what);
        let last = err.lines().last().unwrap_or_default();
        assert_eq!(
            last,
            format!("{t}: - (stdout, /dev/full): listing: No space left on device (os error 28)"),
            "{what}: {err}"
        );
    }
}

/// `--help` and `--version` that stdout does not take (a full device) fail in one line
/// naming stdout: every tool exited 0 having shown nothing. A closed pipe is no failure.
#[test]
fn help_and_version_stdout_cannot_take_are_failures() {
    for t in [
        "e2i-capture",
        "e2i-to-raw",
        "e2i-to-qcow2",
        "qcow2-to-raw",
        "e2i-install",
        "e2i-move",
    ] {
        for a in ["--help", "-h", "--version"] {
            let what = format!("{t} {a} > /dev/full");
            let o = run(tool_cmd(t)
                .arg(a)
                .stdout(fs::File::options().write(true).open("/dev/full").unwrap()));
            let err = failed(&o, &what);
            assert_eq!(
                err.trim_end(),
                format!("{t}: - (stdout, /dev/full): No space left on device (os error 28)"),
                "{what}"
            );
        }
        // Shown where stdout takes it: exit 0 as before.
        let o = run_ok(tool_cmd(t).arg("--version"));
        assert!(text(&o.stdout).starts_with(t), "{t} --version");
        // A reader gone before it all arrived took what it wanted (`--help | grep -q`,
        // e2i-bug-report's probe under pipefail): exit 0, nothing said.
        let (r, w) = std::io::pipe().unwrap();
        drop(r);
        let o = run(tool_cmd(t).arg("--help").stdout(w));
        assert_eq!(o.status.code(), Some(0), "{t} --help to a closed pipe");
        assert!(o.stderr.is_empty(), "{t}: {}", text(&o.stderr));
    }
}

/// What `--json` must print when a run fails before it has done anything: exactly one JSON
/// line among stdout and stderr, on `stream` (stdout for a file OUTPUT and for `--list`),
/// with the exit status and an error naming `names`.
fn one_json_failure(o: &Output, what: &str, code: i32, on_stdout: bool, names: &Path) {
    assert_eq!(o.status.code(), Some(code), "{what}: {}", text(&o.stderr));
    let lines = json_lines(o);
    assert_eq!(lines.len(), 1, "{what}: {lines:?} {}", text(&o.stderr));
    let j = &lines[0];
    let stream = if on_stdout { &o.stdout } else { &o.stderr };
    assert!(
        text(stream).lines().any(|l| l == j),
        "{what}: not on the expected stream: {j}"
    );
    assert!(j.ends_with('}'), "{what}: {j}");
    assert!(j.contains(&format!("\"exit\":{code}")), "{what}: {j}");
    let err = j.split("\"error\":").nth(1).unwrap_or_default();
    assert!(
        err.contains(p(names)),
        "{what}: the error does not name {}: {j}",
        names.display()
    );
}

#[test]
fn json_summary_on_early_failures() {
    let fx = Fx::new("8M");
    // A folder everybody may write, with root's private inputs in it (0600).
    fs::set_permissions(fx.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let shared = fx.path("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let private = |from: &Path, name: &str| {
        let to = shared.join(name);
        fs::copy(from, &to).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
        to
    };
    let secret_img = private(&fx.img, "secret.img");
    let secret_qcow2 = private(&fx.qcow2, "secret.qcow2");
    let missing = shared.join("missing");
    let no_folder = shared.join("no-such-folder/out");
    // A GPT disk whose two headers are both damaged: no table can be read.
    let hostile = shared.join("hostile.img");
    let f = super::partitions::blank(&hostile, 4 << 20);
    super::partitions::write_gpt(&f, 512, (4 << 20) / 512, &[(2048, 4095)]);
    f.write_all_at(&[0xFF], 512 + 40).unwrap();
    f.write_all_at(&[0xFF], (4 << 20) - 512 + 40).unwrap();
    drop(f);
    fs::set_permissions(&hostile, fs::Permissions::from_mode(0o644)).unwrap();

    for (t, input, secret) in [
        ("e2i-capture", &fx.img, &secret_img),
        ("e2i-to-raw", &fx.img, &secret_img),
        ("e2i-to-qcow2", &fx.img, &secret_img),
        ("qcow2-to-raw", &fx.qcow2, &secret_qcow2),
    ] {
        let out = shared.join(format!("out-{t}"));
        let cmd = |args: &[&str], i: &Path, o: &Path| {
            let mut c = tool_cmd(t);
            c.arg("--json").args(args).arg(i).arg(o);
            c
        };
        let o = run(&mut cmd(&[], &missing, &out));
        one_json_failure(&o, &format!("{t}: missing INPUT"), 1, true, &missing);
        let o = as_nobody(&cmd(&[], secret, &out));
        one_json_failure(&o, &format!("{t}: unreadable INPUT"), 1, true, secret);
        assert!(
            text(&o.stderr).contains("Permission denied"),
            "{}",
            text(&o.stderr)
        );
        let o = run(&mut cmd(&[], input, input));
        one_json_failure(&o, &format!("{t}: OUTPUT is INPUT"), 1, true, input);
        let o = run(&mut cmd(&[], input, &no_folder));
        one_json_failure(
            &o,
            &format!("{t}: OUTPUT in a missing folder"),
            1,
            true,
            &no_folder,
        );
        // The same to stdout: the line goes to stderr.
        let o = run(&mut cmd(&[], &missing, Path::new("-")));
        one_json_failure(
            &o,
            &format!("{t}: missing INPUT to stdout"),
            1,
            false,
            &missing,
        );
        assert!(o.stdout.is_empty(), "{t}: data on stdout");
        // A usage error found after parsing.
        let (args, to): (&[&str], &Path) = if t == "e2i-capture" {
            (&["-a"], &out)
        } else if t == "e2i-to-qcow2" {
            (&["--compress"], Path::new("-"))
        } else {
            (&["-O", "0"], Path::new("-"))
        };
        let o = run(&mut cmd(args, input, to));
        assert_eq!(
            o.status.code(),
            Some(2),
            "{t} {args:?}: {}",
            text(&o.stderr)
        );
        let lines = json_lines(&o);
        assert_eq!(lines.len(), 1, "{t} {args:?}: {lines:?}");
        let j = &lines[0];
        assert!(j.contains("\"exit\":2") && j.contains("\"error\":"), "{j}");
        assert!(!out.exists() && !no_folder.exists(), "{t} created OUTPUT");
    }

    // --list --json: the array on success, the summary line on stdout on failure.
    let list = |src: &Path| {
        let mut c = tool_cmd("e2i-capture");
        c.args(["--list", "--json"]).arg(src);
        c
    };
    let o = run(&mut list(&missing));
    one_json_failure(&o, "--list of a missing SOURCE", 1, true, &missing);
    let o = as_nobody(&list(&secret_img));
    one_json_failure(&o, "--list of an unreadable SOURCE", 1, true, &secret_img);
    let o = run(&mut list(&hostile));
    one_json_failure(
        &o,
        "--list of a disk with both GPT headers damaged",
        1,
        true,
        &hostile,
    );
    assert!(
        text(&o.stderr).contains("header damaged"),
        "{}",
        text(&o.stderr)
    );
    let o = run(&mut list(Path::new("-")));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert_eq!(
        json_lines(&o).len(),
        1,
        "--list of '-': {}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stdout).contains("\"exit\":2"),
        "{}",
        text(&o.stdout)
    );
    let o = run_ok(&mut list(&fx.img));
    let out = text(&o.stdout);
    assert!(
        out.starts_with("[{") && out.ends_with("}]\n") && out.lines().count() == 1,
        "{out}"
    );
    assert!(
        !out.contains("\"exit\""),
        "a summary after the array: {out}"
    );
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
}

#[test]
fn messages_name_the_file_they_are_about() {
    let fx = Fx::new("8M");
    // Write errors name OUTPUT (a /dev/full node: every write fails with ENOSPC).
    let full = char_dev(fx.dir.path(), "full", 7);
    for w in WRITERS.iter().filter(|w| w.streams) {
        let o = run(&mut w.cmd(fx.input(w.input), &full));
        let err = failed(&o, &format!("{} to a full device", w.name()));
        assert!(
            err.starts_with(&format!("{}: {}: ", w.tool, full.display())),
            "{}: {err}",
            w.name()
        );
        assert!(fs::metadata(&full).unwrap().file_type().is_char_device());
    }
    // Read errors name INPUT: a stream cut short.
    let cut = fx.path("cut.stream");
    let s = fs::read(&fx.stream).unwrap();
    fs::write(&cut, &s[..s.len() / 2]).unwrap();
    for t in ["e2i-to-raw", "e2i-to-qcow2"] {
        let o = run(tool_cmd(t).arg(&cut).arg(fx.path("x.out")));
        let err = failed(&o, &format!("{t} of a cut stream"));
        assert!(
            err.starts_with(&format!("{t}: {}: ", cut.display())),
            "{err}"
        );
    }
}

#[test]
fn compressed_and_fifo_inputs_are_read_or_explained() {
    let fx = Fx::new("8M");
    let want = fx.path("want.raw");
    run_ok(Command::new("e2image").arg("-r").arg(&fx.img).arg(&want));
    let want = fs::read(&want).unwrap();
    for (c, ext) in [("xz", "xz"), ("zstd", "zst")] {
        for (input, t) in [(&fx.img, "e2i-to-raw"), (&fx.qcow2, "qcow2-to-raw")] {
            let packed = fx.path(&format!("in.{ext}"));
            let o = run(Command::new(c).arg("-c").arg("-q").arg(input));
            ok(&o, c);
            fs::write(&packed, &o.stdout).unwrap();
            let out = fx.path("unpacked.raw");
            let _ = fs::remove_file(&out);
            ok(&run(tool_cmd(t).arg(&packed).arg(&out)), t);
            assert!(fs::read(&out).unwrap() == want, "{t} of a {c} file");
        }
        // A filesystem is read in place: capture says what to do.
        let packed = fx.path(&format!("in.{ext}"));
        let o = run(Command::new(c).arg("-c").arg("-q").arg(&fx.img));
        fs::write(&packed, &o.stdout).unwrap();
        let o = run(tool_cmd("e2i-capture")
            .arg("-r")
            .arg(&packed)
            .arg(fx.path("x.raw")));
        let err = failed(&o, &format!("capture of a {c} file"));
        assert!(
            err.contains(&format!("{c}-compressed")) && err.contains("decompress"),
            "{err}"
        );
    }
    // A FIFO (what process substitution gives): the converters spool it.
    for (input, t) in [
        (&fx.img, "e2i-to-raw"),
        (&fx.qcow2, "qcow2-to-raw"),
        (&fx.img, "e2i-to-qcow2"),
    ] {
        let fifo = fx.path("in.fifo");
        let _ = fs::remove_file(&fifo);
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let (f2, data) = (fifo.clone(), fs::read(input).unwrap());
        let writer = std::thread::spawn(move || {
            let _ = fs::OpenOptions::new()
                .write(true)
                .open(&f2)
                .and_then(|mut f| f.write_all(&data));
        });
        let out = fx.path("fifo.out");
        let _ = fs::remove_file(&out);
        ok(
            &run(tool_cmd(t).arg(&fifo).arg(&out)),
            &format!("{t} from a FIFO"),
        );
        writer.join().unwrap();
        if t != "e2i-to-qcow2" {
            assert!(fs::read(&out).unwrap() == want, "{t} from a FIFO");
        }
    }
    // capture and e2i-move need to seek in SOURCE: a FIFO is refused (without waiting
    // for a writer).
    let fifo = fx.path("src.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let o = run(tool_cmd("e2i-capture")
        .arg("-r")
        .arg(&fifo)
        .arg(fx.path("y.raw")));
    let err = failed(&o, "capture of a FIFO");
    assert!(err.contains("seekable"), "{err}");
}

#[test]
fn capture_says_where_the_source_ends_and_keeps_binary_off_terminals() {
    let fx = Fx::new("8M");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-o", "64M"])
        .arg(&fx.img)
        .arg(fx.path("o.raw")));
    let err = failed(&o, "capture -o past the end");
    assert!(err.contains("ends at byte 8388608"), "{err}");
    let o = run(tool_cmd("e2i-move")
        .args(["-o", "64M"])
        .arg(&fx.img)
        .arg(fx.path("m.img")));
    let err = failed(&o, "move -o past the end");
    assert!(err.contains("ends at byte 8388608"), "{err}");
    // No OUTPUT and stdout a terminal: refused, nothing binary on the screen.
    let cmd = format!("{} {}", tool("e2i-capture").display(), p(&fx.img));
    let o = run(Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null()));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stdout));
    let screen = text(&o.stdout);
    assert!(
        screen.contains("refusing to write a binary image to the terminal"),
        "{screen}"
    );
    assert!(!screen.contains("E2ISTRM"), "{screen}");
    // -b needs -B: clap says so (usage error).
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-b", "8193"])
        .arg(&fx.img)
        .arg(fx.path("b.raw")));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

/// A copy of the fixture's filesystem on a loop device, mounted at `mnt`; unmounted, then
/// detached, when dropped (fields drop in order).
struct MountedCopy {
    _mount: Mount,
    lo: Loop,
    mnt: PathBuf,
}

impl Fx {
    fn mounted_copy(&self) -> MountedCopy {
        let victim = self.path("victim.img");
        fs::copy(&self.img, &victim).unwrap();
        let lo = Loop::new(&victim, &[]);
        let mnt = self.path("mnt");
        fs::create_dir(&mnt).unwrap();
        run_ok(Command::new("mount").arg(lo.path()).arg(&mnt));
        MountedCopy {
            _mount: Mount(mnt.clone()),
            lo,
            mnt,
        }
    }
}

/// Run `sh -c script sh args...` with the tools first on PATH.
fn tools_sh(script: &str, args: &[&Path]) -> Output {
    let path = format!(
        "{}:{}",
        tool("e2i-capture").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(Command::new("sh")
        .env("PATH", path)
        .env("XDG_STATE_HOME", state_home())
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args))
}

#[test]
fn a_mounted_device_is_refused() {
    let fx = Fx::new("8M");
    let m = fx.mounted_copy();
    let lo = &m.lo;
    for w in WRITERS {
        let o = run(&mut w.cmd(fx.input(w.input), lo.path()));
        let err = failed(&o, &format!("{} onto a mounted device", w.name()));
        assert!(err.contains("mounted"), "{}: {err}", w.name());
    }
}

/// A pipe whose reader is already gone: the write end, for a child's stdout.
fn closed_pipe() -> Stdio {
    let mut reader = Command::new("true").stdin(Stdio::piped()).spawn().unwrap();
    let w = reader.stdin.take().unwrap();
    reader.wait().unwrap();
    Stdio::from(w)
}

#[test]
fn a_closed_pipe_under_a_listing_is_a_failure_too() {
    let fx = Fx::new("8M");
    let target = fx.path("t.raw");
    fs::copy(&fx.img, &target).unwrap();
    let cases: &[(&str, &[&str], &Path, &Path)] = &[
        ("e2i-to-raw", &["-n"], &fx.img, &target),
        ("e2i-to-raw", &["-c", "-n"], &fx.stream, &target),
        ("qcow2-to-raw", &["-n"], &fx.qcow2, &target),
        ("e2i-to-qcow2", &["-n"], &fx.img, &fx.path("q.qcow2")),
        ("e2i-move", &["-n"], &fx.img, &target),
        ("e2i-install", &["-n"], &target, &fx.normal),
    ];
    for (t, args, a, b) in cases {
        let o = tool_cmd(t)
            .args(*args)
            .arg(a)
            .arg(b)
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(141),
            "{t} {args:?} into a closed pipe: {}",
            text(&o.stderr)
        );
    }
}

/// Stdout redirected to a new file (`> FILE`) is written like a new file — by position, in
/// one pass, with holes — and ends where a front-to-back writer would have left it; the same
/// bytes as OUTPUT FILE. Appending (`>>`), a file shared with stderr (`2>&1`) and `--json`
/// (which hashes stdout) keep writing front to back, with the same bytes.
#[test]
fn stdout_redirected_to_a_new_file_is_written_as_one() {
    let fx = Fx::new("8M");
    let d = fx.dir.path();
    let q = |extra: &str| format!("e2i-capture -Q {extra} \"$1\"");
    let cases: [(&str, String, String); 6] = [
        (
            "-Q",
            format!("{} - > \"$2\"", q("")),
            format!("{} \"$2\"", q("")),
        ),
        (
            "-r",
            "e2i-capture -r \"$1\" - > \"$2\"".into(),
            "e2i-capture -r \"$1\" \"$2\"".into(),
        ),
        (
            "stream | e2i-to-qcow2",
            "e2i-capture \"$1\" | e2i-to-qcow2 - - > \"$2\"".into(),
            format!("{} \"$2\"", q("")),
        ),
        (
            "stream | e2i-to-raw",
            "e2i-capture \"$1\" | e2i-to-raw - - > \"$2\"".into(),
            "e2i-capture -r \"$1\" \"$2\"".into(),
        ),
        (
            "2>&1",
            format!("{} - > \"$2\" 2>&1", q("")),
            format!("{} \"$2\"", q("")),
        ),
        (
            "--json",
            format!("{} --json - > \"$2\" 2>/dev/null", q("")),
            format!("{} \"$2\"", q("")),
        ),
    ];
    let shell = |script: &str, out: &Path| ok(&tools_sh(script, &[&fx.img, out]), script);
    for (what, redirected, file) in &cases {
        let (a, b) = (d.join("a.out"), d.join("b.out"));
        let _ = (fs::remove_file(&a), fs::remove_file(&b));
        shell(redirected, &a);
        shell(file, &b);
        assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "{what}");
        let sparse = |p: &Path| p.metadata().unwrap().blocks() * 512 < p.metadata().unwrap().len();
        if *what == "-r" {
            assert!(sparse(&a), "{what}: not written with holes");
        }
    }
    // Appending, and a command writing after the image in the same redirection.
    let (a, b) = (d.join("a.out"), d.join("b.out"));
    shell(&format!("{} \"$2\"", q("")), &b);
    let image = fs::read(&b).unwrap();
    fs::write(&a, b"HEAD").unwrap();
    shell(&format!("{} - >> \"$2\"", q("")), &a);
    assert!(
        fs::read(&a).unwrap() == [&b"HEAD"[..], &image].concat(),
        ">>"
    );
    let _ = fs::remove_file(&a);
    shell(&format!("{{ {} -; echo TAIL; }} > \"$2\"", q("")), &a);
    assert!(
        fs::read(&a).unwrap() == [&image[..], b"TAIL\n"].concat(),
        "then TAIL"
    );
}

/// Refusals of stdout name it as stdout, with what it is (`- (stdout, /dev/loop0)`), as its
/// write errors do: a block device on stdout was named as if typed as OUTPUT (`OUTPUT
/// /dev/loop0 is SOURCE …`, `OUTPUT /dev/loop1: the device is read-only`), a file on stdout
/// as a bare `- (stdout)`.
#[test]
fn refusals_name_stdout_with_what_it_is() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let lo = Loop::new(&img, &[]);
    let other = d.path().join("other.img");
    fs::write(&other, vec![0u8; 1 << 20]).unwrap();
    let ro = Loop::new(&other, &["-r"]);
    let abs = fs::canonicalize(&img).unwrap();
    let cases: Vec<(String, &Path, String)> = vec![
        (
            format!("> {}", lo.0),
            lo.path(),
            format!("OUTPUT - (stdout, {}) is SOURCE {}", lo.0, lo.0),
        ),
        (
            format!("1<> '{}'", img.display()),
            &img,
            format!(
                "OUTPUT - (stdout, {}) is SOURCE {}",
                abs.display(),
                img.display()
            ),
        ),
        (
            format!("> {}", ro.0),
            &img,
            format!("OUTPUT - (stdout, {}): the device is read-only", ro.0),
        ),
    ];
    for (redirect, src, want) in cases {
        let what = format!("e2i-capture -r SOURCE - {redirect}");
        let script = format!("exec \"$@\" - {redirect}");
        let o = run(tool_in_sh(&script, "e2i-capture").arg("-r").arg(src));
        let err = failed(&o, &what);
        assert!(err.contains(&want), "{what}: {err}");
    }
}

/// Stdout redirected to a block device (`- > /dev/sdb1`) is that device, as OUTPUT naming it
/// is: a mounted one is refused (the shell's open refused nothing), one too small is refused
/// before the first write, and otherwise it gets the bytes OUTPUT DEVICE gets.
#[test]
fn stdout_redirected_to_a_block_device_is_that_device() {
    let fx = Fx::new("8M");
    let shell = |script: &str, dev: &Path| tools_sh(script, &[&fx.img, dev]);
    let cases = [
        "e2i-capture -r \"$1\" - > \"$2\"",
        "e2i-to-raw \"$1\" - > \"$2\"",
        "e2i-capture -Q \"$1\" - > \"$2\"",
        "e2i-capture \"$1\" - > \"$2\"",
    ];
    // Mounted: refused, the filesystem on it untouched.
    {
        let m = fx.mounted_copy();
        let (lo, mnt) = (&m.lo, &m.mnt);
        fs::write(mnt.join("keep"), b"kept").unwrap();
        // Frozen: the kernel's own later writes (a journal checkpoint, lazy inode-table
        // init) would change the device under a loaded run and fail the check below.
        struct Thaw<'a>(&'a Path);
        impl Drop for Thaw<'_> {
            fn drop(&mut self) {
                let _ = Command::new("fsfreeze").arg("-u").arg(self.0).status();
            }
        }
        run_ok(Command::new("fsfreeze").arg("-f").arg(mnt));
        let thaw = Thaw(mnt);
        let before = digest(lo.path());
        for script in cases {
            let o = shell(script, lo.path());
            let err = failed(&o, script);
            assert!(err.contains("mounted"), "{script}: {err}");
            assert_eq!(digest(lo.path()), before, "{script}: the device changed");
        }
        drop(thaw);
        assert_eq!(fs::read(mnt.join("keep")).unwrap(), b"kept");
    }
    // Too small: refused before the first write, named.
    let small = fx.path("small.dev");
    pattern_file(&small, 4 << 20);
    let lo = Loop::new(&small, &[]);
    let before = digest(lo.path());
    for script in &cases[..2] {
        let o = shell(script, lo.path());
        let err = failed(&o, script);
        assert!(
            err.contains("must be written") && err.contains("(stdout, /dev/"),
            "{script}: {err}"
        );
        assert_eq!(digest(lo.path()), before, "{script}: the device changed");
    }
    drop(lo);
    // Room enough: the bytes of OUTPUT DEVICE.
    let big = fx.path("big.dev");
    for script in cases {
        pattern_file(&big, 9 << 20);
        let lo = Loop::new(&big, &[]);
        let o = shell(script, lo.path());
        ok(&o, script);
        let via_stdout = digest(lo.path());
        drop(lo);
        pattern_file(&big, 9 << 20);
        let lo = Loop::new(&big, &[]);
        let named = script.replace("- > \"$2\"", "\"$2\"");
        let named = if script.starts_with("e2i-capture \"$1\"") {
            named.replace("e2i-capture", "e2i-capture --format stream")
        } else {
            named
        };
        ok(&shell(&named, lo.path()), &named);
        assert_eq!(digest(lo.path()), via_stdout, "{script}");
    }
}

/// A write error names the byte of OUTPUT where the failed write began (the first byte the
/// target did not take, whatever the writer buffered), byte 0 included, and OUTPUT `-` as
/// what stdout is. Raw, qcow2 and normal images to a full stdout said `-: write at byte
/// 626688` (the block being put, a buffer past the failed write) and the e2i stream `-:
/// write` (byte 0 read as "no position").
#[test]
fn write_errors_name_the_byte_and_what_stdout_is() {
    let fx = Fx::new("8M");
    let full = char_dev(fx.dir.path(), "full", 7);
    let enospc = "No space left on device (os error 28)";
    let writers = WRITERS.iter().filter(|w| w.streams).chain([&NORMAL]);
    for w in writers {
        let input = fx.input(w.input);
        // OUTPUT `-`, stdout a full device.
        let o = run(w
            .cmd(input, Path::new("-"))
            .stdout(fs::OpenOptions::new().write(true).open(&full).unwrap()));
        assert_eq!(o.status.code(), Some(1), "{}", w.name());
        assert_eq!(
            text(&o.stderr),
            format!(
                "{}: - (stdout, {}): write at byte 0: {enospc}\n",
                w.tool,
                full.display()
            ),
            "{} > full",
            w.name()
        );
        // The same device as OUTPUT.
        let o = run(&mut w.cmd(input, &full));
        assert_eq!(o.status.code(), Some(1), "{}", w.name());
        assert_eq!(
            text(&o.stderr),
            format!(
                "{}: {}: write at byte 0: {enospc}\n",
                w.tool,
                full.display()
            ),
            "{} full",
            w.name()
        );
        // A closed pipe, SIGPIPE ignored by whoever started the run (EPIPE instead of the
        // signal): still the quiet 141 of a closed pipe, not a write error.
        let o = run(tool_in_sh("trap '' PIPE; exec \"$@\"", w.tool)
            .args(w.args)
            .arg(input)
            .arg("-")
            .stdout(closed_pipe()));
        assert_eq!(
            o.status.code(),
            Some(141),
            "{}: {}",
            w.name(),
            text(&o.stderr)
        );
        assert_eq!(text(&o.stderr), "", "{} into a closed pipe", w.name());
    }
}

/// The first byte of a qcow2 image's data clusters: the lowest host offset `qemu-img map`
/// reports.
fn first_data_byte(q: &Path) -> u64 {
    let o = run_ok(
        Command::new("qemu-img")
            .args(["map", "--output=json"])
            .arg(q),
    );
    text(&o.stdout)
        .split("\"offset\": ")
        .skip(1)
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .min()
        .unwrap_or_else(|| panic!("{}: no data cluster", q.display()))
}

/// A file-size limit (`ulimit -f`, EFBIG) reached inside a write: the error names the
/// limit, the first byte not written, not the start of the write that was cut short (nor
/// a buffered writer's position). 3 blocks of 512 bytes (sh counts `ulimit -f` in those):
/// inside the first superblock's write (bytes 1024-2047 and on) of each raw-ordered image.
/// A qcow2 writer to a new file writes its data clusters first, in guest order from the
/// first byte after its tables, and its head last: its first failed write is its first,
/// which starts past the limit, and is named by its own first byte (that of the image's
/// data, read from the whole image qemu-img maps).
#[test]
fn a_write_cut_short_names_the_first_byte_not_written() {
    let fx = Fx::new("8M");
    let efbig = "File too large (os error 27)";
    const BLOCKS: u64 = 3;
    let limit = BLOCKS * 512;
    let ulimit = format!("ulimit -f {BLOCKS}; exec \"$@\"");
    for w in WRITERS.iter().chain([&NORMAL]) {
        let out = fx.path("limited.out");
        let _ = fs::remove_file(&out);
        let o = run(tool_in_sh(&ulimit, w.tool)
            .args(w.args)
            .arg(fx.input(w.input))
            .arg(&out));
        let err = failed(&o, &w.name());
        let err = err.trim_end();
        let prefix = format!("{}: {}: write at byte ", w.tool, out.display());
        let at: u64 = err
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(&format!(": {efbig}")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: {err}", w.name()));
        let qcow2 = w.tool == "e2i-to-qcow2" || w.args == ["-Q"];
        let want = if qcow2 {
            let whole = fx.path("whole.qcow2");
            let _ = fs::remove_file(&whole);
            run_ok(&mut w.cmd(fx.input(w.input), &whole));
            let data = first_data_byte(&whole);
            assert!(data > limit, "{}: the limit is not in the tables", w.name());
            data
        } else {
            limit
        };
        assert_eq!(at, want, "{}: {err}", w.name());
    }
    // Stdout redirected to the file (written by position, as a new file) is named as it.
    let out = fx.path("stdout.raw");
    let o = run(Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -f {BLOCKS}; exec \"$@\" > \"$0\""))
        .arg(&out)
        .arg(tool("e2i-capture"))
        .args(["-r"])
        .arg(&fx.img)
        .arg("-"));
    assert_eq!(
        failed(&o, "e2i-capture -r > file under ulimit -f").trim_end(),
        format!(
            "e2i-capture: - (stdout, {}): write at byte {limit}: {efbig}",
            out.display()
        )
    );
}

/// A symlink OUTPUT that cannot be made or opened is named with the file it leads to: a
/// dangling link into a missing folder said only "create: No such file or directory".
#[test]
fn a_symlink_output_that_cannot_be_made_names_its_target() {
    let d = tempdir();
    let link = d.path().join("link");
    let target = d.path().join("missing/out.raw");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/sample.ext4");
    for (t, args) in [("e2i-capture", &["-r"][..]), ("e2i-to-raw", &[][..])] {
        let o = run(tool_cmd(t).args(args).arg(&sample).arg(&link));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{t}: {err}");
        assert_eq!(err.lines().count(), 1, "{t}: {err}");
        assert!(
            err.contains(&format!("{} (-> {})", link.display(), target.display())),
            "{t}: {err}"
        );
        assert!(!d.path().join("missing").exists(), "{t}");
    }
}
