//! qcow2 images with extended L2 entries (subclusters, `qemu-img create -o extended_l2=on`):
//! every reader gives the disk `qemu-img convert` gives, over backing chains mixing
//! extended and standard entries; damaged subcluster bitmaps are one located line, exit 1.
//! The images are made here with qemu-img and qemu-io.

use std::path::Path;
use std::process::Command;

use super::util::*;

/// `raw` converted by qemu-img to a qcow2 with extended L2 entries and 64 KiB clusters.
fn to_extended_l2(raw: &Path, q: &Path) {
    qemu_to_qcow2(raw, q, "extended_l2=on,cluster_size=64k");
}

/// Writes, zero writes and discards at sub-cluster offsets and lengths (512-byte steps),
/// drawn from `state`, within a disk of `size` bytes.
fn scribble(q: &Path, state: &mut u64, size: u64, n: usize) {
    let mut next = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    };
    let cmds: Vec<String> = (0..n)
        .map(|_| {
            let off = next() % (size / 512) * 512;
            let len = ((next() % 96 + 1) * 512).min(size - off);
            match next() % 3 {
                0 => format!("write -P {} {off} {len}", next() % 255 + 1),
                1 => format!("write -z {off} {len}"),
                _ => format!("discard {off} {len}"),
            }
        })
        .collect();
    qemu_io(q, &cmds);
}

/// qcow2-to-raw (to a file and to stdout) gives the bytes qemu-img convert gives.
fn same_as_qemu(d: &Path, q: &Path, what: &str) {
    let expect = qemu_to_raw(q, &d.join("expect.raw"));
    let out = d.join("out.raw");
    let _ = std::fs::remove_file(&out);
    ok(&run(tool_cmd("qcow2-to-raw").arg(q).arg(&out)), what);
    assert!(
        read(&out) == expect,
        "{what}: qcow2-to-raw differs from qemu-img"
    );
    let o = run(tool_cmd("qcow2-to-raw").arg(q).arg("-"));
    ok(&o, what);
    assert!(o.stdout == expect, "{what}: stdout differs from qemu-img");
}

/// 16 KiB (512-byte subclusters), 64 KiB and 2 MiB clusters: single images, overlays with
/// extended entries on extended and standard bases and on a raw file, standard overlays on
/// extended bases, compressed clusters, random sub-cluster writes.
#[test]
fn extended_l2_images_read_as_qemu_reads_them() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let size = 6u64 << 20;
    let sz = size.to_string();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut cases = 0;
    for cs in ["16k", "64k", "2M"] {
        let ext = format!("extended_l2=on,cluster_size={cs}");
        let std = format!("cluster_size={cs}");
        let base = p(&format!("base-{cs}.qcow2"));
        qemu_create(&base, &ext, None, Some(&sz));
        qemu_io(
            &base,
            &[
                "write -P 0x11 0 3M",
                "write -P 0x55 4096 1536",
                "write -z 8192 2048",
                "discard 65536 16384",
                "write -P 0x66 5M 700",
            ],
        );
        scribble(&base, &mut state, size, 12);
        same_as_qemu(d.path(), &base, &format!("{cs} base"));
        let ov = p(&format!("ov-{cs}.qcow2"));
        qemu_create(&ov, &ext, Some((&base, "qcow2")), Some(&sz));
        scribble(&ov, &mut state, size, 12);
        same_as_qemu(d.path(), &ov, &format!("{cs} extended on extended"));
        let top = p(&format!("top-{cs}.qcow2"));
        qemu_create(&top, &std, Some((&ov, "qcow2")), Some(&sz));
        scribble(&top, &mut state, size, 8);
        same_as_qemu(d.path(), &top, &format!("{cs} standard on extended"));
        let sbase = p(&format!("sbase-{cs}.qcow2"));
        qemu_create(&sbase, &std, None, Some(&sz));
        qemu_io(&sbase, &[format!("write -P 0x12 0 {size}")]);
        let eos = p(&format!("eos-{cs}.qcow2"));
        qemu_create(&eos, &ext, Some((&sbase, "qcow2")), Some(&sz));
        scribble(&eos, &mut state, size, 12);
        same_as_qemu(d.path(), &eos, &format!("{cs} extended on standard"));
        let raw = p("noise.raw");
        let mut n = state;
        std::fs::write(&raw, noise(&mut n, size as usize)).unwrap();
        let eor = p(&format!("eor-{cs}.qcow2"));
        qemu_create(&eor, &ext, Some((&raw, "raw")), Some(&sz));
        scribble(&eor, &mut state, size, 12);
        same_as_qemu(d.path(), &eor, &format!("{cs} extended on raw"));
        // Compressed clusters (the bitmap is not used), then sub-cluster writes over them.
        let comp = p(&format!("comp-{cs}.qcow2"));
        sh(Command::new("qemu-img")
            .args(["convert", "-c", "-O", "qcow2", "-o", &ext])
            .arg(&base)
            .arg(&comp));
        same_as_qemu(d.path(), &comp, &format!("{cs} compressed"));
        scribble(&comp, &mut state, size, 12);
        same_as_qemu(d.path(), &comp, &format!("{cs} compressed, then written"));
        cases += 7;
    }
    assert_eq!(cases, 21);
}

/// A filesystem in an extended-L2 overlay: e2i-capture (-r and -Q), e2i-to-raw and
/// e2i-to-qcow2 read it as qemu does.
#[test]
fn extended_l2_filesystem_through_every_tool() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    let img = mkfs(d.path(), "fs.img", "32M", &[]);
    debugfs_w(&img, "write /etc/hostname f");
    let base = p("fs.qcow2");
    to_extended_l2(&img, &base);
    let ov = p("ov.qcow2");
    qemu_create(&ov, "extended_l2=on", Some((&base, "qcow2")), Some("32M"));
    // Sub-cluster writes through the overlay, past the filesystem's metadata.
    qemu_io(&ov, &["write -P 0x5a 30M 3000", "write -z 31M 1536"]);
    let disk = qemu_to_raw(&ov, &p("disk.raw"));
    let reference = e2image_bytes(&["-r"], &p("disk.raw"), &p("ref.raw"));
    let cap = p("cap.raw");
    ok(
        &run(tool_cmd("e2i-capture").arg("-r").arg(&ov).arg(&cap)),
        "capture -r",
    );
    assert!(
        read(&cap) == reference,
        "e2i-capture -r differs from e2image -r"
    );
    let capq = p("cap.qcow2");
    ok(
        &run(tool_cmd("e2i-capture").arg("-Q").arg(&ov).arg(&capq)),
        "capture -Q",
    );
    assert!(
        qemu_to_raw(&capq, &p("capq.raw")) == reference,
        "e2i-capture -Q"
    );
    let tr = p("tr.raw");
    ok(&run(tool_cmd("e2i-to-raw").arg(&ov).arg(&tr)), "e2i-to-raw");
    assert!(read(&tr) == disk, "e2i-to-raw differs from qemu-img");
    let tq = p("tq.qcow2");
    ok(
        &run(tool_cmd("e2i-to-qcow2").arg(&ov).arg(&tq)),
        "e2i-to-qcow2",
    );
    assert_eq!(qemu_check(&tq), 0);
    assert!(
        qemu_to_raw(&tq, &p("tq.raw")) == disk,
        "e2i-to-qcow2 differs"
    );
}

/// The big-endian word at byte `o`.
fn word_at(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// The byte offset of the L2 table of guest cluster 0 of image `b`.
fn l2_of(b: &[u8]) -> usize {
    let l1 = word_at(b, 40) as usize;
    (word_at(b, l1) & 0x00ff_ffff_ffff_fe00) as usize
}

/// Damaged extended entries: both bits of a subcluster, allocated bits without a host
/// cluster, a host offset past the file or off its alignment, extended L2 with clusters
/// below 16 KiB, all in guest cluster 0. Every reading tool: one line naming the entry, exit 1, no output left.
/// The standard zero flag is not used with extended entries (qemu ignores it).
#[test]
fn damaged_subcluster_bitmaps_are_one_located_line() {
    let d = tempdir();
    let p = |n: &str| d.path().join(n);
    // A filesystem, so that the tools reading one get as far as the damage: guest cluster
    // 0 (the superblock's) is damaged.
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let good = p("good.qcow2");
    to_extended_l2(&img, &good);
    let gb = read(&good);
    let l2 = l2_of(&gb);
    let (w00, w01) = (word_at(&gb, l2), word_at(&gb, l2 + 8));
    let put = move |b: &mut Vec<u8>, k: usize, w: usize, v: u64| {
        let o = l2 + 16 * k + 8 * w;
        b[o..o + 8].copy_from_slice(&v.to_be_bytes());
    };
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "both",
            Box::new(move |b| put(b, 0, 1, w01 | 1 << 32)),
            "both allocated and zero",
        ),
        (
            "nohost",
            Box::new(move |b| {
                put(b, 0, 0, 0);
                put(b, 0, 1, 1);
            }),
            "without a host offset",
        ),
        (
            "past",
            Box::new(move |b| put(b, 0, 0, 1 << 40 | 1 << 63)),
            "past the end of the file",
        ),
        (
            "cbits",
            Box::new(|b| b[20..24].copy_from_slice(&13u32.to_be_bytes())),
            "at least 16 KiB",
        ),
    ];
    for (what, damage, says) in cases {
        let mut b = gb.clone();
        damage(&mut b);
        let q = p(&format!("{what}.qcow2"));
        std::fs::write(&q, &b).unwrap();
        for (t, args) in [
            ("qcow2-to-raw", &[][..]),
            ("e2i-to-raw", &[][..]),
            ("e2i-to-qcow2", &[][..]),
            ("e2i-capture", &["-r"][..]),
        ] {
            let out = p("o.out");
            let o = run(tool_cmd(t).args(args).arg(&q).arg(&out));
            let err = failed(&o, &format!("{t} {what}"));
            assert_eq!(err.lines().count(), 1, "{t} {what}: {err}");
            assert!(err.contains(says), "{t} {what}: {err}");
            assert!(!out.exists(), "{t} {what}: left an output");
        }
    }
    // The standard zero flag set on an allocated extended entry: read as qemu reads it.
    let mut b = gb.clone();
    put(&mut b, 0, 0, w00 | 1);
    let q = p("zeroflag.qcow2");
    std::fs::write(&q, &b).unwrap();
    same_as_qemu(d.path(), &q, "zero flag");
}
