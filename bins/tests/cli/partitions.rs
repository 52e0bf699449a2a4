//! Whole disks: `-P N` and `--list` on generated GPT (512- and 4096-byte sectors) and MBR
//! disks (with an extended partition and logical partitions), against `e2image -o START`.
//! The tables are written here, byte by byte as sgdisk and sfdisk write them (neither
//! tool is needed); filesystems are made with mkfs and copied into their partitions.

use super::util::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const LINUX_FS: [u8; 16] = [
    0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
];

pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A 512-byte MBR or EBR sector with `entries` (id, start sector, sectors).
pub fn mbr_sector(entries: &[(u8, u32, u32)]) -> Vec<u8> {
    let mut s = vec![0u8; 512];
    for (i, &(id, start, n)) in entries.iter().enumerate() {
        let e = 446 + 16 * i;
        s[e + 4] = id;
        put_u32(&mut s, e + 8, start);
        put_u32(&mut s, e + 12, n);
    }
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// A sparse disk image of `bytes` bytes.
pub fn blank(path: &Path, bytes: u64) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(bytes).unwrap();
    f
}

/// Write a GPT onto `f` (`sectors` sectors of `ss` bytes): a protective MBR, the primary
/// header at LBA 1 with 128 entries from LBA 2, and the backup header in the last sector
/// with its entries before it. `parts` are (first LBA, last LBA), in slots from 0.
pub fn write_gpt(f: &std::fs::File, ss: u64, sectors: u64, parts: &[(u64, u64)]) {
    let mut arr = vec![0u8; 128 * 128];
    for (slot, &(first, last)) in parts.iter().enumerate() {
        let e = &mut arr[slot * 128..(slot + 1) * 128];
        e[..16].copy_from_slice(&LINUX_FS);
        e[16] = slot as u8 + 1;
        put_u64(e, 32, first);
        put_u64(e, 40, last);
        // A name, which nothing may print (bug reports leave labels out).
        for (i, c) in "secret-label".encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
    }
    let arr_sectors = arr.len() as u64 / ss;
    let last = sectors - 1;
    f.write_all_at(
        &mbr_sector(&[(0xEE, 1, u32::try_from(last).unwrap_or(u32::MAX))]),
        0,
    )
    .unwrap();
    for (my, alt, entries) in [(1, last, 2), (last, 1, last - arr_sectors)] {
        f.write_all_at(&arr, entries * ss).unwrap();
        let mut h = vec![0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        put_u32(&mut h, 8, 0x10000);
        put_u32(&mut h, 12, 92);
        put_u64(&mut h, 24, my);
        put_u64(&mut h, 32, alt);
        put_u64(&mut h, 40, 2 + arr_sectors);
        put_u64(&mut h, 48, last - arr_sectors - 1);
        h[56..72].copy_from_slice(&[0x5A; 16]);
        put_u64(&mut h, 72, entries);
        put_u32(&mut h, 80, 128);
        put_u32(&mut h, 84, 128);
        put_u32(&mut h, 88, crc32(&arr));
        let c = crc32(&h);
        put_u32(&mut h, 16, c);
        f.write_all_at(&h, my * ss).unwrap();
    }
}

/// CRC-32 (IEEE, as GPT uses), bit by bit: the tests check the library's table-driven one.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Copy the filesystem image `fs` into `f` at byte `at` (holes stay holes).
pub fn put_fs(f: &std::fs::File, fs: &Path, at: u64) {
    let data = std::fs::read(fs).unwrap();
    for (i, chunk) in data.chunks(4096).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            f.write_all_at(chunk, at + i as u64 * 4096).unwrap();
        }
    }
}

/// A partition of a test disk: its number, start byte, and the filesystem image in it.
struct Part {
    n: u32,
    start: u64,
    fs: Option<PathBuf>,
}

/// Three filesystems of different kinds for a disk's partitions.
fn filesystems(dir: &Path, tag: &str) -> [PathBuf; 3] {
    [
        mkfs(
            dir,
            &format!("{tag}-ext4-4k"),
            "8M",
            &["-b", "4096", "-U", "11111111-2222-4333-8444-555555555555"],
        ),
        mkfs(
            dir,
            &format!("{tag}-ext2-1k"),
            "6M",
            &["-t", "ext2", "-b", "1024"],
        ),
        mkfs(
            dir,
            &format!("{tag}-ext4-1k"),
            "6M",
            &["-b", "1024", "-O", "^metadata_csum"],
        ),
    ]
}

/// A GPT disk with sectors of `ss` bytes: partitions 1 (ext4, 4 KiB blocks), 2 (ext2,
/// 1 KiB) and 3 (ext4, 1 KiB), 1 MiB apart.
fn gpt_disk(dir: &Path, ss: u64) -> (PathBuf, Vec<Part>) {
    let fss = filesystems(dir, &format!("gpt{ss}"));
    let disk = dir.join(format!("gpt{ss}.img"));
    let total: u64 = 26 << 20;
    let f = blank(&disk, total);
    let mib = (1 << 20) / ss;
    let parts = [
        (mib, 9 * mib - 1),
        (10 * mib, 16 * mib - 1),
        (17 * mib, 23 * mib - 1),
    ];
    write_gpt(&f, ss, total / ss, &parts);
    let mut out = Vec::new();
    for (i, (&(first, _), fs)) in parts.iter().zip(fss).enumerate() {
        put_fs(&f, &fs, first * ss);
        out.push(Part {
            n: i as u32 + 1,
            start: first * ss,
            fs: Some(fs),
        });
    }
    (disk, out)
}

/// An MBR disk: primary 1 (ext4, 1 KiB blocks), primary 2 extended (from 10 MiB) holding
/// logical 5 (ext4, 4 KiB) and 6 (ext2), primary 3 empty space typed Linux.
fn mbr_disk(dir: &Path) -> (PathBuf, Vec<Part>) {
    let [ext4_4k, ext2_1k, ext4_1k] = filesystems(dir, "mbr");
    let disk = dir.join("mbr.img");
    let mib = 2048u32;
    let f = blank(&disk, 40 << 20);
    f.write_all_at(
        &mbr_sector(&[
            (0x83, mib, 8 * mib),
            (0x05, 10 * mib, 20 * mib),
            (0x83, 31 * mib, mib),
        ]),
        0,
    )
    .unwrap();
    // EBR 1 at the extended partition's start: logical 5 one MiB in, link to EBR 2 at
    // 11 MiB into the extended partition; EBR 2: logical 6 right after it.
    f.write_all_at(
        &mbr_sector(&[(0x83, mib, 8 * mib), (0x05, 11 * mib, 8 * mib)]),
        u64::from(10 * mib) * 512,
    )
    .unwrap();
    f.write_all_at(
        &mbr_sector(&[(0x83, 2048, 7 * mib)]),
        u64::from(21 * mib) * 512,
    )
    .unwrap();
    let m = 1u64 << 20;
    put_fs(&f, &ext4_1k, m);
    put_fs(&f, &ext4_4k, 11 * m);
    put_fs(&f, &ext2_1k, 22 * m);
    let parts = vec![
        Part {
            n: 1,
            start: m,
            fs: Some(ext4_1k),
        },
        Part {
            n: 3,
            start: 31 * m,
            fs: None,
        },
        Part {
            n: 5,
            start: 11 * m,
            fs: Some(ext4_4k),
        },
        Part {
            n: 6,
            start: 22 * m,
            fs: Some(ext2_1k),
        },
    ];
    (disk, parts)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The UUID in a filesystem image's superblock, as text.
fn uuid_of(fs: &Path) -> String {
    let mut sb = [0u8; 1024];
    std::fs::File::open(fs)
        .unwrap()
        .read_exact_at(&mut sb, 1024)
        .unwrap();
    let u = &sb[0x68..0x78];
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..].concat()
    )
}

#[test]
fn partitions_capture_and_clone_like_e2image_at_their_offset() {
    let d = tempdir();
    let disks = [
        gpt_disk(d.path(), 512),
        gpt_disk(d.path(), 4096),
        mbr_disk(d.path()),
    ];
    // The MBR disk again, as a qcow2 image: partitions are read from its virtual disk.
    let qcow = d.path().join("mbr.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-q", "-O", "qcow2"])
            .arg(&disks[2].0)
            .arg(&qcow),
    );
    let mut checked = 0;
    for (di, (disk, parts)) in disks.iter().enumerate() {
        let sources: Vec<&Path> = if di == 2 {
            vec![disk, &qcow]
        } else {
            vec![disk]
        };
        for p in parts.iter().filter(|p| p.fs.is_some()) {
            let start = p.start.to_string();
            let theirs = d.path().join(format!("e2image-{di}-{}.raw", p.n));
            e2image(&["-r", "-o", &start], disk, &theirs);
            let theirs_all = d.path().join(format!("e2image-{di}-{}-all.raw", p.n));
            e2image(&["-ra", "-o", &start], disk, &theirs_all);
            for (si, src) in sources.iter().enumerate() {
                let ours = d.path().join(format!("ours-{di}-{si}-{}.raw", p.n));
                run_ok(
                    tool_cmd("e2i-capture")
                        .args(["-r", "-P", &p.n.to_string()])
                        .arg(src)
                        .arg(&ours),
                );
                assert_same(
                    &ours,
                    &theirs,
                    &format!("capture -r -P {} of {}", p.n, src.display()),
                );
                let clone = d.path().join(format!("clone-{di}-{si}-{}.img", p.n));
                run_ok(
                    tool_cmd("e2i-move")
                        .args(["-P", &p.n.to_string()])
                        .arg(src)
                        .arg(&clone),
                );
                assert_same(
                    &clone,
                    &theirs_all,
                    &format!("move -P {} of {}", p.n, src.display()),
                );
                checked += 1;
            }
        }
    }
    // 3 + 3 GPT partitions, 3 MBR partitions read from the raw disk and from the qcow2.
    assert_eq!(checked, 12);
}

#[test]
fn list_names_every_partition_with_its_start_and_filesystem() {
    let d = tempdir();
    for (disk, parts) in [
        gpt_disk(d.path(), 512),
        gpt_disk(d.path(), 4096),
        mbr_disk(d.path()),
    ] {
        let o = run_ok(tool_cmd("e2i-capture").arg("--list").arg(&disk));
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(
            !text.contains("secret"),
            "a partition name was printed:\n{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        for p in &parts {
            let line = lines
                .iter()
                .find(|l| l.split_whitespace().next() == Some(&p.n.to_string()))
                .unwrap_or_else(|| panic!("partition {} missing:\n{text}", p.n));
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f[1], p.start.to_string(), "{line}");
            match &p.fs {
                Some(fs) => {
                    assert!(line.contains(&uuid_of(fs)), "{line}");
                    let kind = if fs.display().to_string().contains("ext2") {
                        "ext2"
                    } else {
                        "ext4"
                    };
                    assert!(line.contains(&format!("{kind}, ")), "{line}");
                }
                None => assert!(line.ends_with(" -"), "{line}"),
            }
        }
        let o = run_ok(
            tool_cmd("e2i-capture")
                .args(["--list", "--json"])
                .arg(&disk),
        );
        let json = String::from_utf8(o.stdout).unwrap();
        assert!(
            json.starts_with("[{") && json.trim_end().ends_with("}]"),
            "{json}"
        );
        for p in &parts {
            assert!(
                json.contains(&format!("\"number\":{},\"start\":{},", p.n, p.start)),
                "{json}"
            );
        }
        if disk.display().to_string().contains("mbr") {
            // Primaries, the extended container, the logical partitions; ids with names.
            assert_eq!(lines.len(), 5, "{text}");
            assert!(
                text.contains("0x05 Extended") && text.contains("0x83 Linux"),
                "{text}"
            );
        } else {
            assert_eq!(lines.len(), 3, "{text}");
            assert!(text.contains("Linux filesystem"), "{text}");
        }
    }
    // A bare filesystem: one entry, number 0, start 0.
    let fs = mkfs(d.path(), "bare", "4M", &[]);
    let o = run_ok(tool_cmd("e2i-capture").arg("--list").arg(&fs));
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!((f[0], f[1], f[2]), ("0", "0", "4194304"), "{text}");
    assert!(text.contains(&uuid_of(&fs)), "{text}");
}

#[test]
fn partition_usage_errors_and_missing_partitions() {
    let d = tempdir();
    let (disk, _) = mbr_disk(d.path());
    let out = d.path().join("out.raw");
    for (tool_name, args) in [
        ("e2i-capture", vec!["-r", "-P", "1", "-o", "1M"]),
        ("e2i-move", vec!["-P", "1", "-o", "1M"]),
    ] {
        let o = run(tool_cmd(tool_name).args(&args).arg(&disk).arg(&out));
        assert_eq!(o.status.code(), Some(2), "{tool_name}: {}", stderr(&o));
        assert!(!out.exists());
    }
    // A partition that does not exist: one line naming those that do.
    for (tool_name, args) in [
        ("e2i-capture", vec!["-r", "-P", "4"]),
        ("e2i-move", vec!["-P", "7"]),
    ] {
        let o = run(tool_cmd(tool_name).args(&args).arg(&disk).arg(&out));
        assert_eq!(o.status.code(), Some(1), "{tool_name}");
        let e = stderr(&o);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.contains("has partitions 1, 2, 3, 5, 6"), "{e}");
        assert!(!out.exists());
    }
    let o = run(tool_cmd("e2i-install")
        .args(["-n", "-P", "9"])
        .arg(&disk)
        .arg(&out));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("has partitions 1, 2, 3, 5, 6"),
        "{}",
        stderr(&o)
    );
    // The extended container is no filesystem.
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-P", "2"])
        .arg(&disk)
        .arg(&out));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("extended partition"), "{}", stderr(&o));
    // A disk without a table has partition 0 only.
    let fs = mkfs(d.path(), "bare", "4M", &[]);
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-P", "1"])
        .arg(&fs)
        .arg(&out));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no partition table"), "{}", stderr(&o));
    run_ok(
        tool_cmd("e2i-capture")
            .args(["-r", "-P", "0"])
            .arg(&fs)
            .arg(&out),
    );
}

/// A GPT disk whose partition 1 (4 MiB) is smaller than its 8 MiB filesystem; partition 2
/// follows right after and is full of 0xEE bytes.
fn shrunk_disk(dir: &Path) -> (PathBuf, PathBuf) {
    // 8 groups of 1 MiB: the metadata of groups 4 to 7 lies past the partition's end.
    let fs = mkfs(
        dir,
        "big",
        "8M",
        &[
            "-b",
            "1024",
            "-g",
            "1024",
            "-N",
            "256",
            "-O",
            "^metadata_csum,^resize_inode,^flex_bg",
        ],
    );
    let disk = dir.join("shrunk.img");
    let f = blank(&disk, 16 << 20);
    write_gpt(&f, 512, (16 << 20) / 512, &[(2048, 10239), (10240, 20479)]);
    put_fs(&f, &fs, 1 << 20);
    f.write_all_at(&vec![0xEE; 5 << 20], 5 << 20).unwrap();
    (disk, fs)
}

#[test]
fn a_partition_shrunk_below_its_filesystem_is_reported_and_not_read_past() {
    let d = tempdir();
    let (disk, fs) = shrunk_disk(d.path());
    let o = run_ok(tool_cmd("e2i-capture").arg("--list").arg(&disk));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("(runs 4194304 bytes past the partition's end)"),
        "{text}"
    );

    let ours = d.path().join("ours.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-P", "1"])
        .arg(&disk)
        .arg(&ours));
    let e = stderr(&o);
    assert!(
        e.contains(
            "partition 1 is 4194304 bytes, but its ext4 filesystem is 8192 blocks of 1024 bytes"
        ) && e.contains("nothing past the partition's end is read"),
        "{e}"
    );
    assert!(matches!(o.status.code(), Some(0 | 3)), "{e}");
    // Nothing from partition 2 came in: the image holds no 0xEE byte past 4 MiB.
    let img = std::fs::read(&ours).unwrap();
    assert!(img.len() <= 8 << 20);
    assert!(
        img.iter().skip(4 << 20).all(|&b| b == 0),
        "bytes past the partition's end were read"
    );
    assert!(e.contains("(--past-partition-end reads on)"), "{e}");
    // -f allows a SOURCE mounted read-write, nothing else: it does not read past the end.
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "-f", "-P", "1"])
        .arg(&disk)
        .arg(&ours));
    assert!(matches!(o.status.code(), Some(0 | 3)), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nothing past the partition's end is read"),
        "{}",
        stderr(&o)
    );
    assert!(
        std::fs::read(&ours).unwrap() == img,
        "-f changed what is read"
    );
    // --past-partition-end reads on, as e2image -o does.
    let forced = d.path().join("forced.raw");
    let o = run_ok(
        tool_cmd("e2i-capture")
            .args(["-r", "--past-partition-end", "-P", "1"])
            .arg(&disk)
            .arg(&forced),
    );
    assert!(
        stderr(&o).contains("reading past the partition's end (--past-partition-end)"),
        "{}",
        stderr(&o)
    );
    let theirs = d.path().join("theirs.raw");
    e2image(&["-r", "-o", "1048576"], &disk, &theirs);
    assert_same(&forced, &theirs, "capture --past-partition-end -P 1");
    // The same for a clone (e2i-move SOURCE DEST): zeros past the end, with -f too, unless
    // --past-partition-end (then e2image -ra -o's bytes).
    for (opts, past) in [(&["-f"][..], false), (&["--past-partition-end"], true)] {
        let clone = d.path().join("clone.img");
        let _ = std::fs::remove_file(&clone);
        let o = run(tool_cmd("e2i-move")
            .args(opts)
            .args(["-P", "1"])
            .arg(&disk)
            .arg(&clone));
        assert!(o.status.code() == Some(0), "clone {opts:?}: {}", stderr(&o));
        let c = std::fs::read(&clone).unwrap();
        if past {
            let theirs = d.path().join("theirs-a.raw");
            let _ = std::fs::remove_file(&theirs);
            e2image(&["-ra", "-o", "1048576"], &disk, &theirs);
            assert_same(&clone, &theirs, "clone --past-partition-end -P 1");
        } else {
            assert!(
                c.iter().skip(4 << 20).all(|&b| b != 0xEE),
                "clone {opts:?}: bytes past the partition's end were read"
            );
        }
    }
    // Usage errors: without -P, and for an in-place move (which refuses such a filesystem).
    for (t, args) in [
        ("e2i-capture", &["-r", "--past-partition-end"][..]),
        ("e2i-move", &["--past-partition-end"]),
        ("e2i-move", &["--past-partition-end", "-P", "1", "-O", "2M"]),
    ] {
        let mut c = tool_cmd(t);
        c.args(args).arg(&disk);
        if !args.contains(&"-O") {
            c.arg(d.path().join("never.img"));
        }
        let o = run(&mut c);
        assert_eq!(o.status.code(), Some(2), "{t} {args:?}: {}", stderr(&o));
        assert!(!d.path().join("never.img").exists());
    }
    // e2i-bug-report passes it on to its capture (and says so in capture.txt); without -P
    // it is a usage error.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/e2i-bug-report");
    let bin_dir = tool("e2i-capture").parent().unwrap().to_path_buf();
    let o = run(Command::new(&script)
        .arg("--past-partition-end")
        .arg(&disk)
        .arg(d.path().join("never.tar"))
        .env("E2I_BIN", &bin_dir));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!d.path().join("never.tar").exists());
    let tar = d.path().join("bundle.tar");
    run_ok(
        Command::new(&script)
            .args(["-P", "1", "--past-partition-end"])
            .arg(&disk)
            .arg(&tar)
            .env("E2I_BIN", &bin_dir),
    );
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run_ok(Command::new("tar").arg("xf").arg(&tar).arg("-C").arg(&x));
    let cap = std::fs::read_to_string(x.join("capture.txt")).unwrap();
    assert!(
        cap.contains("-P 1 --past-partition-end DEVICE")
            && cap.contains("reading past the partition's end (--past-partition-end)"),
        "{cap}"
    );

    // A move inside the partition is refused (it would read and write past its end), and
    // one whose destination leaves the partition too.
    let before = std::fs::read(&disk).unwrap();
    let o = run(tool_cmd("e2i-move")
        .args(["-P", "1", "-O", "2M"])
        .arg(&disk));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing is moved"), "{}", stderr(&o));
    assert!(std::fs::read(&disk).unwrap() == before, "SOURCE changed");

    // An install of the filesystem's image onto the shrunk partition would write its
    // groups' metadata past the partition's end: refused, with -f too, nothing written.
    let image = d.path().join("big.e2i");
    run_ok(tool_cmd("e2i-capture").arg(&fs).arg(&image));
    for force in [false, true] {
        let mut c = tool_cmd("e2i-install");
        if force {
            c.arg("-f");
        }
        let o = run(c.args(["-P", "1"]).arg(&disk).arg(&image));
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("the partition is 4194304 bytes"),
            "{}",
            stderr(&o)
        );
        assert!(
            std::fs::read(&disk).unwrap() == before,
            "a refused install wrote"
        );
    }
}

#[test]
fn moves_and_installs_stay_inside_their_partition() {
    let d = tempdir();
    let (disk, parts) = gpt_disk(d.path(), 512);
    let p2 = &parts[1];
    // A move whose destination leaves partition 2 (6 MiB, holding a 6 MiB ext2) is refused.
    let before = std::fs::read(&disk).unwrap();
    let o = run(tool_cmd("e2i-move")
        .args(["-P", "2", "-O", &(p2.start + 4096).to_string()])
        .arg(&disk));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("would not lie inside partition 2"),
        "{}",
        stderr(&o)
    );
    assert!(std::fs::read(&disk).unwrap() == before, "SOURCE changed");

    // Install onto partition 2: a normal image of it, the filesystem changed since, then
    // installed back with an undo file. Only partition 2's bytes change, and e2undo takes
    // it all back without being told the offset.
    let image = d.path().join("p2.e2i");
    run_ok(
        tool_cmd("e2i-capture")
            .args(["-P", "2"])
            .arg(&disk)
            .arg(&image),
    );
    let spec = format!("{}?offset={}", disk.display(), p2.start);
    run_ok(
        Command::new("debugfs")
            .args(["-w", "-R", "mkdir /after"])
            .arg(&spec),
    );
    let changed = std::fs::read(&disk).unwrap();
    let undo = d.path().join("p2.undo");
    // -f: the filesystem was written after the image was taken (install refuses that).
    run_ok(
        tool_cmd("e2i-install")
            .args(["-f", "-P", "2", "-z"])
            .arg(&undo)
            .arg(&disk)
            .arg(&image),
    );
    let after = std::fs::read(&disk).unwrap();
    let (lo, hi) = (p2.start as usize, p2.start as usize + (6 << 20));
    let diff: Vec<usize> = (0..after.len())
        .filter(|&i| after[i] != changed[i])
        .collect();
    assert!(!diff.is_empty(), "nothing was installed");
    assert!(
        diff.iter().all(|&i| (lo..hi).contains(&i)),
        "install wrote outside partition 2"
    );
    let o = run(Command::new("e2fsck").args(["-fn"]).arg(&spec));
    assert!(
        matches!(o.status.code(), Some(0 | 4)),
        "e2fsck: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    run_ok(Command::new("e2undo").arg(&undo).arg(&disk));
    assert!(
        std::fs::read(&disk).unwrap() == changed,
        "e2undo did not restore the disk"
    );
}

#[test]
fn bug_report_takes_a_partition_and_lists_the_table_without_uuids() {
    let d = tempdir();
    let (disk, parts) = mbr_disk(d.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/e2i-bug-report");
    let bin_dir = tool("e2i-capture").parent().unwrap().to_path_buf();
    let tar = d.path().join("bundle.tar");
    run_ok(
        Command::new(&script)
            .args(["-P", "5"])
            .arg(&disk)
            .arg(&tar)
            .env("E2I_BIN", &bin_dir),
    );
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run_ok(Command::new("tar").arg("xf").arg(&tar).arg("-C").arg(&x));
    let geo = std::fs::read_to_string(x.join("geometry.txt")).unwrap();
    assert!(geo.contains("captured-partition: 5"), "{geo}");
    for p in &parts {
        assert!(
            geo.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 2 && f[0] == p.n.to_string() && f[1] == p.start.to_string()
            }),
            "partition {} missing:\n{geo}",
            p.n
        );
        if let Some(fs) = &p.fs {
            assert!(
                !geo.contains(&uuid_of(fs)),
                "a UUID in the geometry:\n{geo}"
            );
        }
    }
    // The image is partition 5's filesystem (4 KiB blocks), scrambled.
    let dump = std::fs::read_to_string(x.join("dumpe2fs.txt")).unwrap();
    assert!(dump.contains("Block size:               4096"), "{dump}");
    // Usage errors: a bad number, a missing one.
    for args in [&["-P", "x"][..], &["-P"]] {
        let o = run(Command::new(&script).args(args).arg(&disk));
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
    let o = run(Command::new(&script)
        .args(["-P", "4"])
        .arg(&disk)
        .arg(d.path().join("none.tar"))
        .env("E2I_BIN", &bin_dir));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("has partitions 1, 2, 3, 5, 6"),
        "{}",
        stderr(&o)
    );
    assert!(!d.path().join("none.tar").exists());
}
