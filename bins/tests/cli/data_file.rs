//! qcow2 images keeping their data in an external data file (`qemu-img -o data_file=`,
//! `data_file_raw=on`): every reader gives the disk `qemu-img convert` gives and the
//! filesystem `e2image -r` gives, also through backing chains, and a data file cut short
//! reads as zeros past its end, as qemu reads it; a missing or unusable data file, a
//! relative name on a pipe and a compressed cluster are one line naming the image and the
//! data file, exit 1, nothing written. The images are made here with qemu-img, run in the
//! image's folder: qemu finds a relative data file name from its current folder, e2i from
//! the image's (the two agree there).

use std::path::Path;
use std::process::{Command, Stdio};

use super::util::*;
use e2i::bytes::be;

/// `qemu-img convert -O raw Q` run in Q's folder; the raw bytes.
fn qemu_raw(q: &Path) -> Vec<u8> {
    let dir = q.parent().unwrap();
    let out = dir.join("qemu.raw");
    let _ = std::fs::remove_file(&out);
    sh(Command::new("qemu-img")
        .current_dir(dir)
        .args(["convert", "-O", "raw"])
        .arg(q)
        .arg(&out));
    read(&out)
}

/// `tool ARGS IN OUT` run from `/` (relative data file names must be found from IN's
/// folder, not the current one); OUT's bytes.
fn convert(t: &str, args: &[&str], input: &Path, out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    run_ok(tool_cmd(t).current_dir("/").args(args).arg(input).arg(out));
    read(out)
}

/// qcow2-to-raw, e2i-to-raw (also from stdin when `piped`) and, when the disk holds a
/// filesystem, a round trip through e2i-to-qcow2 give `expect`.
fn reads_as(q: &Path, expect: &[u8], piped: bool, what: &str) {
    let filesystem = expect.get(1080..1082) == Some(&[0x53, 0xef][..]);
    let d = q.parent().unwrap();
    let out = d.join("out.raw");
    assert!(
        convert("qcow2-to-raw", &[], q, &out) == expect,
        "{what}: qcow2-to-raw"
    );
    assert!(
        convert("e2i-to-raw", &[], q, &out) == expect,
        "{what}: e2i-to-raw"
    );
    if filesystem {
        let flat = d.join("flat.qcow2");
        convert("e2i-to-qcow2", &["-a"], q, &flat);
        assert!(
            convert("qcow2-to-raw", &[], &flat, &out) == expect,
            "{what}: e2i-to-qcow2"
        );
    }
    if piped {
        let o = run(tool_cmd("qcow2-to-raw")
            .args(["-", "-"])
            .stdin(std::fs::File::open(q).unwrap()));
        ok(&o, what);
        assert!(o.stdout == expect, "{what}: qcow2-to-raw from stdin");
    }
}

/// Filesystems of several block sizes and features, converted by qemu-img to qcow2 with a
/// data file (raw or not; standard and extended L2 entries): e2i-capture -r and -Q of them
/// give e2image -r of the filesystem, and the converters give qemu-img's disk.
#[test]
fn data_file_images_read_as_the_filesystem() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let filesystems: [(&str, &[&str]); 4] = [
        ("b1k", &["-b", "1024", "-O", "^has_journal"]),
        ("b2k", &["-b", "2048", "-O", "metadata_csum,64bit"]),
        ("b4k", &["-b", "4096"]),
        ("bigalloc", &["-b", "4096", "-O", "bigalloc", "-C", "65536"]),
    ];
    let layouts = [
        ("plain", ""),
        ("raw", ",data_file_raw=on"),
        ("ext", ",extended_l2=on,cluster_size=64k"),
        (
            "ext-raw",
            ",data_file_raw=on,extended_l2=on,cluster_size=32k",
        ),
    ];
    for (name, opts) in filesystems {
        let fs = mkfs(d.path(), &format!("{name}.img"), "32M", opts);
        let expect = e2image_bytes(&["-r"], &fs, &p("expect.raw"));
        for (lname, lopts) in layouts {
            let what = format!("{name} {lname}");
            let q = p(&format!("{name}-{lname}.qcow2"));
            let data = format!("{name}-{lname}.data");
            qemu_to_qcow2(&fs, &q, &format!("data_file={data}{lopts}"));
            let out = p("cap.raw");
            assert!(
                convert("e2i-capture", &["-r"], &q, &out) == expect,
                "{what}: e2i-capture -r differs from e2image -r"
            );
            let cq = p("cap.qcow2");
            convert("e2i-capture", &["-Q"], &q, &cq);
            assert!(
                qemu_to_raw(&cq, &p("cap-q.raw")) == expect,
                "{what}: e2i-capture -Q differs from e2image -r"
            );
            let disk = qemu_raw(&q);
            reads_as(&q, &disk, false, &what);
            // An absolute name is found from a pipe too.
            if lname == "plain" {
                let abs = p(&format!("{name}-abs.qcow2"));
                let data = p(&format!("{name}-abs.data"));
                qemu_to_qcow2(&fs, &abs, &format!("data_file={}", data.display()));
                reads_as(&abs, &disk, true, &format!("{name} absolute"));
            }
        }
    }
}

/// qemu-io writes, zero writes and discards on data file images (raw or not, standard or
/// extended entries), a backing chain mixing them, and a raw-data image whose data file
/// holds bytes where its L2 tables map nothing: every reader gives qemu-img's disk (the
/// unmapped bytes read as zeros, as qemu reads them, not as the raw data file holds them).
#[test]
fn data_file_images_read_as_qemu_reads_them() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let scribble = [
        "write -P 0x11 0 3M",
        "write -P 0x55 4096 1536",
        "write -z 1M 64k",
        "discard 2M 128k",
        "write -P 0x66 5M 700",
    ];
    for (name, opts) in [
        ("plain", "data_file=plain.data"),
        ("raw", "data_file=raw.data,data_file_raw=on"),
        ("ext", "data_file=ext.data,extended_l2=on,cluster_size=64k"),
        (
            "ext-raw",
            "data_file=extraw.data,data_file_raw=on,extended_l2=on",
        ),
    ] {
        let q = format!("{name}.qcow2");
        qemu_create(&p(&q), opts, None, Some("6M"));
        qemu_io(&p(&q), &scribble);
        reads_as(&p(&q), &qemu_raw(&p(&q)), false, name);
        // An overlay with its own data file on it, and a plain overlay on that (backing
        // names recorded relative: found from the overlay's folder).
        let ov = format!("ov-{name}.qcow2");
        let ov_opts = format!("data_file=ov-{name}.data");
        qemu_create(&p(&ov), &ov_opts, Some((Path::new(&q), "qcow2")), None);
        qemu_io(&p(&ov), &["write -P 0x77 1536k 300k", "write -z 4M 8k"]);
        let top = format!("top-{name}.qcow2");
        qemu_create(&p(&top), "", Some((Path::new(&ov), "qcow2")), None);
        qemu_io(&p(&top), &["write -P 0x88 100k 4k"]);
        for f in [&ov, &top] {
            reads_as(&p(f), &qemu_raw(&p(f)), false, &format!("{name} {f}"));
        }
    }
    // The raw data bit set on an image whose L2 tables leave clusters unmapped (qemu-img
    // sets it only on new images, which it maps whole), over a data file holding bytes
    // there.
    let q = p("late.qcow2");
    qemu_create(&q, "data_file=late.data", None, Some("4M"));
    qemu_io(&q, &["write -P 0x11 0 64k"]);
    let mut b = read(&q);
    let autoclear = be::u64(&b, 88);
    be::set_u64(&mut b, 88, autoclear | 2);
    std::fs::write(&q, b).unwrap();
    let mut data = read(&p("late.data"));
    data.resize(4 << 20, 0);
    data[1 << 20..(1 << 20) + 4096].fill(0x22);
    std::fs::write(p("late.data"), data).unwrap();
    let disk = qemu_raw(&q);
    assert!(disk[1 << 20..].iter().all(|&x| x == 0), "qemu changed");
    reads_as(&q, &disk, false, "raw bit on unmapped clusters");
}

/// A data file shorter than its image's L2 tables map (cut inside a cluster, or empty;
/// standard or extended entries, raw or not; under a filesystem): the bytes past its end
/// read as zeros, as qemu reads them, in every tool. A cluster away from its guest offset is still refused there, as qemu
/// refuses it.
#[test]
fn a_data_file_cut_short_reads_as_zeros_past_its_end() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    // Inside the second cluster of the 128 KiB written at 1 MiB.
    let cut: usize = (1 << 20) + 100_000;
    for (name, opts) in [
        ("plain", ""),
        ("raw", ",data_file_raw=on"),
        ("ext", ",extended_l2=on,cluster_size=64k"),
    ] {
        let q = format!("{name}.qcow2");
        let data = format!("{name}.data");
        qemu_create(&p(&q), &format!("data_file={data}{opts}"), None, Some("4M"));
        qemu_io(
            &p(&q),
            &[
                "write -P 0x11 0 64k",
                "write -P 0x22 1M 128k",
                "write -P 0x33 3M 64k",
            ],
        );
        for len in [cut, 0] {
            let f = std::fs::OpenOptions::new().write(true).open(p(&data));
            f.unwrap().set_len(len as u64).unwrap();
            let disk = qemu_raw(&p(&q));
            let mut want = vec![0u8; 4 << 20];
            if len == cut {
                want[..64 << 10].fill(0x11);
                want[1 << 20..cut].fill(0x22);
            }
            assert!(disk == want, "qemu changed: {name} cut to {len}");
            reads_as(&p(&q), &disk, false, &format!("{name} cut to {len}"));
        }
    }
    // A filesystem whose data file lost the last quarter of what it holds: the
    // converters, a round trip through e2i-to-qcow2 and e2i-capture -r read the disk qemu
    // reads.
    let fs = mkfs(d.path(), "fs.img", "8M", &[]);
    let fq = p("fs.qcow2");
    qemu_to_qcow2(&fs, &fq, "data_file=fs.data");
    let last = read(&fs).iter().rposition(|&x| x != 0).unwrap() as u64;
    let f = std::fs::OpenOptions::new().write(true).open(p("fs.data"));
    f.unwrap().set_len(last / 4 * 3 + 1234).unwrap();
    let disk = qemu_raw(&fq);
    assert!(disk != read(&fs), "nothing was cut");
    reads_as(&fq, &disk, false, "a filesystem cut short");
    std::fs::write(p("disk.raw"), &disk).unwrap();
    let expect = e2image_bytes(&["-r"], &p("disk.raw"), &p("expect.raw"));
    assert!(
        convert("e2i-capture", &["-r"], &fq, &p("cap.raw")) == expect,
        "a filesystem cut short: e2i-capture -r differs from e2image -r of qemu's disk"
    );
    // Guest cluster 48 (at 3 MiB) mapped past the end, away from its guest offset.
    let q = p("plain.qcow2");
    let mut b = read(&q);
    let l1 = be::u64(&b, 40) as usize;
    let l2 = (be::u64(&b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    be::set_u64(&mut b, l2 + 48 * 8, 1 << 63 | 1 << 40);
    std::fs::write(p("away.qcow2"), b).unwrap();
    let o = run(Command::new("qemu-img").current_dir(d.path()).args([
        "convert",
        "-O",
        "raw",
        "away.qcow2",
        "qemu.raw",
    ]));
    assert!(
        !o.status.success(),
        "qemu changed: it read {}",
        "away.qcow2"
    );
    refused(
        "qcow2-to-raw",
        &[],
        &p("away.qcow2"),
        &p("away.raw"),
        &[
            "away.qcow2",
            "guest cluster 48",
            "not at its guest offset 3145728",
        ],
        "away and past the end",
    );
}

/// `tool ARGS IN OUT` fails with one line naming `names`, exit 1, without an output.
fn refused(t: &str, args: &[&str], input: &Path, out: &Path, names: &[&str], what: &str) {
    let o = run(tool_cmd(t).current_dir("/").args(args).arg(input).arg(out));
    let err = failed(&o, &format!("{t} {what}"));
    assert_eq!(err.lines().count(), 1, "{t} {what}: {err}");
    assert!(!err.contains("panicked"), "{t} {what}: {err}");
    for n in names {
        assert!(err.contains(n), "{t} {what}: {n:?} not in {err}");
    }
    assert!(!out.exists(), "{t} {what}: left an output");
}

/// Every reader refuses, in one line naming the image and the data file: a missing data
/// file, a folder in its place, a relative name read from a pipe, a compressed cluster, a data cluster away from its guest offset (qemu
/// refuses it too), a name holding a NUL byte, the bit without a name.
/// An output that is the data file is refused before anything is written. An image naming
/// itself as its data file reads (as qemu reads it) or fails in one line, never panics.
#[test]
fn data_file_errors_are_one_line() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    mkfs(d.path(), "fs.img", "16M", &["-b", "4096"]);
    qemu_to_qcow2(&p("fs.img"), &p("img.qcow2"), "data_file=fs.data");
    let q = p("img.qcow2");
    let out = p("out.raw");
    let tools: [(&str, &[&str]); 4] = [
        ("qcow2-to-raw", &[]),
        ("e2i-to-raw", &[]),
        ("e2i-to-qcow2", &[]),
        ("e2i-capture", &["-r"]),
    ];
    let all = |q: &Path, names: &[&str], what: &str| {
        for (t, args) in tools {
            refused(t, args, q, &out, names, what);
        }
    };
    let good = read(&q);
    let data = read(&p("fs.data"));
    std::fs::rename(p("fs.data"), p("moved.data")).unwrap();
    all(
        &q,
        &["img.qcow2", "data file", "fs.data", "No such file"],
        "missing",
    );
    std::fs::create_dir(p("fs.data")).unwrap();
    all(
        &q,
        &["img.qcow2", "fs.data", "not a regular file or block device"],
        "a folder",
    );
    std::fs::remove_dir(p("fs.data")).unwrap();
    std::fs::rename(p("moved.data"), p("fs.data")).unwrap();
    let o = run(tool_cmd("e2i-to-raw")
        .args(["-", "-"])
        .stdin(std::fs::File::open(&q).unwrap())
        .stdout(Stdio::null()));
    let err = failed(&o, "pipe");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("fs.data") && err.contains("pipe"), "{err}");

    // Header and table damage, found by offsets in qemu's layout.
    let patched = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        let h = p(name);
        std::fs::write(&h, b).unwrap();
        h
    };
    let ext_at = (112..4096)
        .step_by(8)
        .find(|&o| be::u32(&good, o) == 0x4441_5441)
        .expect("data file extension");
    let l1 = be::u64(&good, 40) as usize;
    let l2 = (be::u64(&good, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let compressed = patched("compressed.qcow2", &|b| {
        be::set_u64(b, l2, 1 << 62 | 4096);
    });
    all(
        &compressed,
        &[
            "compressed.qcow2",
            "guest cluster 0",
            &format!("L2 table at byte {l2}"),
            "external data file",
        ],
        "compressed",
    );
    // Guest cluster 0 mapped to the data file's second cluster: qemu keeps every data
    // cluster at its guest offset and refuses the image (qemu-img convert fails).
    let elsewhere = patched("elsewhere.qcow2", &|b| {
        be::set_u64(b, l2, 1 << 63 | 65536);
    });
    let o = run(Command::new("qemu-img").current_dir(d.path()).args([
        "convert",
        "-O",
        "raw",
        "elsewhere.qcow2",
        "qemu.raw",
    ]));
    assert!(
        !o.status.success(),
        "qemu changed: it read a data cluster away from its guest offset"
    );
    all(
        &elsewhere,
        &[
            "elsewhere.qcow2",
            "guest cluster 0",
            &format!("L2 table at byte {l2}"),
            &format!(
                "data cluster at byte 65536 of the external data file {}, not at its guest offset 0",
                p("fs.data").display()
            ),
        ],
        "a data cluster away from its guest offset",
    );
    let nul = patched("nul.qcow2", &|b| b[ext_at + 9] = 0);
    all(&nul, &["nul.qcow2", "NUL byte"], "NUL in the name");
    let unnamed = patched("unnamed.qcow2", &|b| be::set_u32(b, ext_at, 0x1234_5678));
    all(
        &unnamed,
        &["unnamed.qcow2", "no header extension names the data file"],
        "no name",
    );
    let raw_alone = patched("rawalone.qcow2", &|b| {
        let incompat = be::u64(b, 72);
        be::set_u64(b, 72, incompat & !4);
        be::set_u64(b, 88, 2);
    });
    all(
        &raw_alone,
        &["rawalone.qcow2", "raw external data bit"],
        "raw bit without a data file",
    );

    // OUTPUT is the data file being read: refused, the data file untouched.
    for (t, args) in tools {
        if t == "e2i-capture" {
            continue;
        }
        let o = run(tool_cmd(t).args(args).arg(&q).arg(p("fs.data")));
        let err = failed(&o, t);
        assert!(err.contains("external data file"), "{t}: {err}");
    }
    let o = run(tool_cmd("e2i-capture")
        .args(["-r"])
        .arg(&q)
        .arg(p("fs.data")));
    let err = failed(&o, "e2i-capture onto the data file");
    assert!(err.contains("external data file"), "{err}");
    assert!(read(&p("fs.data")) == data, "the data file changed");

    // The image as its own data file: its own bytes as data, never a panic.
    sh(Command::new("qemu-img")
        .current_dir(d.path())
        .args(["amend", "-o", "data_file=self.qcow2", "-f", "qcow2"])
        .arg(&q));
    std::fs::copy(&q, p("self.qcow2")).unwrap();
    for (t, args) in tools {
        let _ = std::fs::remove_file(&out);
        let o = run(tool_cmd(t).args(args).arg(p("self.qcow2")).arg(&out));
        let err = text(&o.stderr);
        assert!(!err.contains("panicked"), "{t} self: {err}");
        assert!(matches!(o.status.code(), Some(0 | 1)), "{t} self: {err}");
        if o.status.code() == Some(1) {
            assert_eq!(err.lines().count(), 1, "{t} self: {err}");
        }
    }
}
