//! The normal e2image format: e2i-capture against e2image on generated filesystems.

use super::util::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Header fields naming the host, source device, image file and time (zeroed before
/// comparing): `e2i::normal::HOST_SPECIFIC_FIELDS`.
fn zero_host_fields(b: &mut [u8]) {
    for (off, len) in e2i::normal::HOST_SPECIFIC_FIELDS {
        b[off..off + len].fill(0);
    }
}

fn capture(args: &[&str], img: &Path, out: &Path) {
    let o = run(tool_cmd("e2i-capture").args(args).arg(img).arg(out));
    assert!(
        o.status.success(),
        "e2i-capture: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn stdout_of(cmd: &mut Command) -> String {
    let o = run(cmd);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Ours vs e2image's: the same bytes apart from the host-specific header fields, the same
/// `dumpe2fs -i` and `debugfs -i` output; and the stdout image identical to the file image.
fn assert_like_e2image(dir: &Path, img: &Path) {
    let theirs = dir.join("theirs.e2i");
    let ours = dir.join("ours.e2i");
    e2image(&[], img, &theirs);
    capture(&[], img, &ours);
    assert_same_image(&theirs, &ours);
    for args in [vec!["-i"], vec!["-i", "-h"]] {
        let d1 = stdout_of(Command::new("dumpe2fs").args(&args).arg(&theirs));
        let d2 = stdout_of(Command::new("dumpe2fs").args(&args).arg(&ours));
        assert!(
            d1.contains("Block size"),
            "dumpe2fs -i failed on e2image's image"
        );
        assert_eq!(d1, d2, "dumpe2fs {args:?}");
    }
    for req in [
        "stat <2>",
        "stat <7>",
        "stat <11>",
        "testb 1 200",
        "testi <12>",
    ] {
        let d1 = stdout_of(Command::new("debugfs").args(["-i", "-R", req]).arg(&theirs));
        let d2 = stdout_of(Command::new("debugfs").args(["-i", "-R", req]).arg(&ours));
        assert_eq!(d1, d2, "debugfs -i -R '{req}'");
    }
    // To stdout (sequential; e2image cannot do this).
    let piped = dir.join("stdout.e2i");
    let o = run(tool_cmd("e2i-capture")
        .args(["--format", "normal"])
        .arg(img)
        .arg("-")
        .stdout(std::fs::File::create(&piped).unwrap()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_image(&ours, &piped);
    // A new file keeps e2image's holes (zero inode-table blocks are not allocated).
    let (ta, tb) = (alloc_blocks(&theirs), alloc_blocks(&ours));
    assert!(tb <= ta + 8, "ours allocates {tb} blocks, e2image's {ta}");
}

/// The first `n` bytes of a file.
fn head(p: &Path, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut v = Vec::new();
    std::fs::File::open(p)
        .unwrap()
        .take(n as u64)
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// Two normal images are the same apart from the host-specific header fields (all before
/// byte 256): compare the header in memory and the rest with cmp (large images stay on disk).
fn assert_same_image(a: &Path, b: &Path) {
    let (mut ha, mut hb) = (head(a, 256), head(b, 256));
    assert_eq!(ha.len(), 256);
    // The fields we fill like e2image: the same source name.
    assert_eq!(ha[124..188], hb[124..188], "fs_device_name");
    zero_host_fields(&mut ha);
    zero_host_fields(&mut hb);
    assert_eq!(ha, hb, "headers differ");
    let (la, lb) = (
        std::fs::metadata(a).unwrap().len(),
        std::fs::metadata(b).unwrap().len(),
    );
    assert_eq!(la, lb, "image sizes differ");
    let o = run(Command::new("cmp").args(["-i", "256"]).arg(a).arg(b));
    assert!(
        o.status.success(),
        "images differ: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

fn alloc_blocks(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks()
}

const UUID: &str = "6d1a1c1e-4f6b-4b58-9c4e-2f0a3b5c7d11";

fn make(dir: &Path, size: &str, opts: &[&str]) -> PathBuf {
    let mut all = vec!["-U", UUID];
    all.extend_from_slice(opts);
    mkfs(dir, "fs.img", size, &all)
}

macro_rules! like_e2image {
    ($($name:ident: $size:expr, [$($opt:expr),*];)*) => {$(
        #[test]
        fn $name() {
            let d = tempdir();
            let img = make(d.path(), $size, &[$($opt),*]);
            assert_like_e2image(d.path(), &img);
        }
    )*};
}

like_e2image! {
    normal_ext2_1k: "16M", ["-t", "ext2", "-b", "1024"];
    normal_ext2_4k: "64M", ["-t", "ext2", "-b", "4096"];
    normal_ext3_2k: "96M", ["-t", "ext3", "-b", "2048"];
    normal_ext4_1k: "64M", ["-b", "1024"];
    normal_ext4_4k_multigroup: "600M", ["-b", "4096"];
    normal_ext4_64k: "512M", ["-b", "65536"];
    normal_ext4_no_metadata_csum_uninit_bg: "200M", ["-O", "^metadata_csum,uninit_bg"];
    normal_ext4_no_group_checksums: "200M", ["-O", "^metadata_csum,^uninit_bg"];
    normal_ext4_64bit_meta_bg: "300M", ["-b", "1024", "-O", "64bit,meta_bg,^resize_inode"];
    normal_ext4_meta_bg_4k: "600M", ["-b", "4096", "-O", "meta_bg,^resize_inode"];
    normal_ext4_no_flex_bg: "300M", ["-O", "^flex_bg"];
    normal_ext4_32bit: "300M", ["-O", "^64bit"];
    normal_ext4_desc_size_128: "300M", ["-O", "64bit", "-E", "desc_size=128"];
    normal_ext4_bigalloc: "512M", ["-O", "bigalloc", "-C", "65536"];
    normal_ext4_bigalloc_1k: "64M", ["-b", "1024", "-O", "bigalloc", "-C", "16384"];
    normal_ext4_sparse_super2: "300M", ["-O", "sparse_super2"];
    normal_ext4_inode128: "64M", ["-I", "128"];
}

/// Locations of group `g`'s descriptor fields, read with the library.
fn group_locs(img: &Path, g: u32) -> (u64, u64, u64, u64, u32) {
    let src = e2i::io::FileSource::open(img, 0).unwrap();
    let fs = e2i::ext4::Filesystem::open(src, Default::default()).unwrap();
    let stride = fs.sb.desc_size as u64;
    let bs = fs.sb.block_size.bytes();
    let gdt = if bs == 1024 { 2048 } else { bs };
    (
        fs.desc.block_bitmap(g).get(),
        fs.desc.inode_bitmap(g).get(),
        gdt + u64::from(g) * stride,
        bs,
        fs.desc.flags(g).into(),
    )
}

fn patch(img: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

/// BLOCK_UNINIT/INODE_UNINIT groups whose bitmap blocks hold garbage: with a valid descriptor
/// checksum the library ignores the blocks, with a bad one it reads them. Both checksum kinds.
#[test]
fn normal_uninit_groups_and_descriptor_checksums() {
    for opts in [vec![], vec!["-O", "^metadata_csum,uninit_bg"]] {
        let d = tempdir();
        let img = make(d.path(), "300M", &opts);
        for g in [1u32, 2] {
            let (bb, ib, desc_off, bs, flags) = group_locs(&img, g);
            assert_ne!(flags & 1, 0, "group {g} should be INODE_UNINIT");
            patch(&img, bb * bs, &vec![0x55; bs as usize]);
            patch(&img, ib * bs, &vec![0xAA; bs as usize]);
            if g == 1 {
                // break group 1's descriptor checksum
                patch(&img, desc_off + 0x1E, &[0x12, 0x34]);
            }
        }
        assert_like_e2image(d.path(), &img);
    }
}

#[test]
fn normal_conformance_images() {
    // Beside the repository (../shared/conformance, as ci/test.sh finds it), not at a
    // fixed absolute path: a clone elsewhere (CI) has it there or not at all.
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/e2fsprogs");
    if !conf.is_dir() {
        eprintln!("{}: not present; not checked", conf.display());
        return;
    }
    for name in [
        "image1024.orig.bz2",
        "image4096.orig.bz2",
        "i_bitmaps.img.bz2",
    ] {
        let d = tempdir();
        let img = d.path().join("fs.img");
        let out = std::fs::File::create(&img).unwrap();
        let st = Command::new("bunzip2")
            .arg("-c")
            .arg(conf.join(name))
            .stdout(out)
            .status()
            .unwrap();
        assert!(st.success());
        assert_like_e2image(d.path(), &img);
    }
}

/// Past 4 GiB the header's 32-bit offsets wrap; e2image writes a corrupt image, e2i refuses
/// at once, naming the formats that work, and leaves no output behind.
#[test]
fn normal_refuses_filesystems_whose_offsets_overflow() {
    let d = tempdir();
    let img = d.path().join("big.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(2 << 40)
        .unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success());
    // "At once": the refusal needs the superblock and descriptors only. The image is cut
    // right after its descriptor table, so reading anything more (bitmaps, inode tables)
    // would fail with another message (a check that holds on a loaded machine, unlike a
    // time limit).
    let desc_end = {
        let fs = e2i::ext4::Filesystem::open(
            e2i::io::FileSource::open(&img, 0).unwrap(),
            e2i::ext4::OpenOptions::default(),
        )
        .unwrap();
        let sb = &fs.sb;
        assert!(!sb.has_meta_bg());
        (u64::from(sb.first_data_block) + 1 + u64::from(sb.desc_blocks)) * sb.block_size.bytes()
    };
    std::fs::File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(desc_end)
        .unwrap();
    let out = d.path().join("big.e2i");
    let o = run(tool_cmd("e2i-capture").arg(&img).arg(&out));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("raw") && err.contains("qcow2") && err.contains("stream"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");
}

/// A descriptor pointing the inode table outside the filesystem: a clean one-line failure.
#[test]
fn normal_refuses_an_inode_table_outside_the_filesystem() {
    let d = tempdir();
    let img = make(
        d.path(),
        "16M",
        &["-t", "ext2", "-b", "1024", "-O", "^metadata_csum"],
    );
    let (_, _, desc_off, _, _) = group_locs(&img, 1);
    patch(&img, desc_off + 8, &0x00FF_FFFFu32.to_le_bytes());
    let out = d.path().join("o.e2i");
    let o = run(tool_cmd("e2i-capture").arg(&img).arg(&out));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("group 1") && err.contains("inode table"),
        "{err}"
    );
    assert!(!out.exists());
}

/// A normal image whose descriptor puts an inode table partly past the filesystem's end
/// (or nowhere) is refused, naming the group, by every tool that reads it. The converters
/// wrote a raw image or qcow2 without that group's inodes (the root directory's, here),
/// exit 0 and not a word; e2i-install and e2image -r refuse it.
#[test]
fn a_normal_image_with_an_inode_table_outside_is_refused_by_every_reader() {
    let d = tempdir();
    let img = make(d.path(), "8M", &["-t", "ext2", "-b", "1024"]);
    let good = d.path().join("good.e2i");
    capture(&[], &img, &good);
    let good = read(&good);
    // The descriptors follow the superblock's block in the image (1 KiB blocks).
    let desc = u64::from(e2i::bytes::le::u32(&good, 284)) + 1024;
    let blocks = 8 * 1024u32;
    for (table, what) in [(blocks - 4, "16 KiB before the end"), (0, "missing")] {
        let bad = d.path().join("bad.e2i");
        std::fs::write(&bad, &good).unwrap();
        patch(&bad, desc + 8, &table.to_le_bytes());
        for (t, args) in [
            ("e2i-to-raw", vec![]),
            ("e2i-to-qcow2", vec![]),
            ("e2i-install", vec!["-n"]),
        ] {
            let out = d.path().join(format!("{t}.out"));
            let mut cmd = tool_cmd(t);
            cmd.args(&args);
            if t == "e2i-install" {
                cmd.arg(&img).arg(&bad);
            } else {
                cmd.arg(&bad).arg(&out);
            }
            let err = failed(&run(&mut cmd), &format!("{t}, inode table {what}"));
            assert!(
                err.contains("group 0") && err.contains("inode table"),
                "{t}, inode table {what}: {err}"
            );
            assert!(!out.exists(), "{t}, inode table {what}: an output was left");
        }
        let ref_out = d.path().join("e2image.raw");
        let o = run(Command::new("e2image").arg("-r").arg(&bad).arg(&ref_out));
        assert!(!o.status.success(), "e2image -r took the image ({what})");
    }
}

/// A normal image given where a filesystem is read in place (e2i-capture's and e2i-move's
/// SOURCE, also at an offset or inside a qcow2) has a superblock at byte 1024 like a
/// filesystem, but nothing else where that superblock says: it was read as a filesystem
/// into an image of garbage, exit 0 (as e2image -r does). Refused, saying what to use.
#[test]
fn a_normal_image_is_not_read_as_a_filesystem() {
    let d = tempdir();
    let img = make(d.path(), "8M", &["-b", "1024"]);
    let image = d.path().join("fs.e2i");
    capture(&[], &img, &image);
    let mut shifted = vec![0x5A; 65536];
    shifted.extend(read(&image));
    let at_offset = d.path().join("shifted.e2i");
    std::fs::write(&at_offset, shifted).unwrap();
    let wrapped = d.path().join("wrapped.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&image)
        .arg(&wrapped));
    let out = d.path().join("out");
    for (t, args, src) in [
        ("e2i-capture", vec!["-r"], &image),
        ("e2i-capture", vec!["-Q"], &image),
        ("e2i-capture", vec![], &image),
        ("e2i-capture", vec!["-r", "-o", "65536"], &at_offset),
        ("e2i-capture", vec!["-r"], &wrapped),
        ("e2i-move", vec![], &image),
    ] {
        let what = format!("{t} {args:?} {}", src.display());
        let o = run(tool_cmd(t).args(&args).arg(src).arg(&out));
        let err = failed(&o, &what);
        assert!(
            err.contains("a normal e2image image, not a filesystem") && err.contains("e2i-to-raw"),
            "{what}: {err}"
        );
        assert!(!out.exists(), "{what}: an output was left");
    }
    // The converters read it as what it is; a qcow2 INPUT is converted as it is, as
    // qemu-img convert converts it: its disk holds the normal image.
    let raw = d.path().join("fs.raw");
    run_ok(tool_cmd("e2i-to-raw").arg(&image).arg(&raw));
    run_ok(tool_cmd("e2i-to-qcow2").arg(&wrapped).arg(&out));
    assert!(
        qemu_to_raw(&out, &d.path().join("out.raw")) == qemu_to_raw(&wrapped, &raw),
        "e2i-to-qcow2 of the wrapped normal image"
    );
}

/// A normal image is a sparse file: one of 264 KiB claiming 2^32 - 1 blocks (its header's
/// offsets and its length made to match the claim, all holes) had e2i-to-raw and
/// e2i-install load 560 MiB of descriptors and bitmaps before failing on its first
/// descriptor. The descriptors, never zero in a real filesystem, must now be data first.
#[test]
fn a_normal_image_claiming_a_huge_filesystem_over_holes_is_refused_at_once() {
    use e2i::bytes::le;
    use e2i::normal::field;
    let d = tempdir();
    let img = make(d.path(), "8M", &["-b", "1024", "-O", "^metadata_csum"]);
    let image = d.path().join("fs.e2i");
    capture(&[], &img, &image);
    let mut b = read(&image);
    let so = le::u32(&b, 284) as usize;
    let bpg = le::u32(&b, so + 32);
    let (blocks, ipg) = (u32::MAX, 8u32);
    let groups = (blocks - 1).div_ceil(bpg);
    le::set_u32(&mut b, so + 4, blocks);
    le::set_u32(&mut b, so + 40, ipg);
    le::set_u32(&mut b, so, groups * ipg);
    let sb = e2i::ext4::Superblock::parse(b[so..so + 1024].try_into().unwrap(), None).unwrap();
    let layout = e2i::normal::Layout::new(&sb).unwrap();
    for (at, v) in [
        (field::OFFSET_INODE, layout.offset_inode),
        (field::OFFSET_BLOCKMAP, layout.offset_blockmap),
        (field::OFFSET_INODEMAP, layout.offset_inodemap),
    ] {
        le::set_u32(&mut b, at, u32::try_from(v).unwrap());
    }
    let huge = d.path().join("huge.e2i");
    std::fs::write(&huge, &b).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len(layout.size)
        .unwrap();
    let out = d.path().join("out");
    for t in ["e2i-to-raw", "e2i-to-qcow2"] {
        let o = run(tool_cmd(t).arg(&huge).arg(&out));
        let err = failed(&o, t);
        assert!(
            err.contains("the descriptors") && err.contains("holes"),
            "{t}: {err}"
        );
    }
    let o = run(tool_cmd("e2i-install").arg("-n").arg(&img).arg(&huge));
    let err = failed(&o, "e2i-install -n");
    assert!(
        err.contains("the descriptors") && err.contains("holes"),
        "{err}"
    );
}

/// The reader puts every block the image holds at its filesystem position: each byte of the
/// view's blocks equals the original filesystem's (mkfs writes bitmap padding as 0xFF, as the
/// library does), and a raw image made from the view alone passes `dumpe2fs -h`.
#[test]
fn reader_places_blocks_at_their_filesystem_positions() {
    use e2i::io::ReadAt;
    for opts in [
        vec!["-b", "1024"],
        vec!["-b", "4096"],
        vec!["-b", "1024", "-O", "64bit,meta_bg,^resize_inode"],
        vec!["-O", "bigalloc", "-C", "65536"],
        vec!["-t", "ext2", "-b", "2048"],
    ] {
        let d = tempdir();
        let img = make(d.path(), "300M", &opts);
        let image = d.path().join("fs.e2i");
        capture(&[], &img, &image);
        let ni =
            e2i::normal::NormalImage::open(e2i::io::FileSource::open(&image, 0).unwrap()).unwrap();
        let view = ni.fs_view().unwrap();
        let map = view.block_map();
        let bs = ni.superblock().block_size.bytes();
        let orig_file = std::fs::File::open(&img).unwrap();
        let read_orig = |s: usize, e: usize| {
            use std::os::unix::fs::FileExt;
            let mut v = vec![0u8; e - s];
            orig_file.read_exact_at(&mut v, s as u64).unwrap();
            v
        };
        assert_eq!(view.size(), std::fs::metadata(&img).unwrap().len());
        let mut checked = 0;
        // Runs in pieces of at most 256 blocks, so memory stays small.
        let pieces = map.runs().iter().flat_map(|r| {
            (r.start.get()..r.end().get())
                .step_by(256)
                .map(move |b| (b, (b + 256).min(r.end().get())))
        });
        for (b0, b1) in pieces {
            let (s, e) = ((b0 * bs) as usize, (b1 * bs) as usize);
            let mut got = vec![0u8; e - s];
            assert_eq!(view.read_at(&mut got, s as u64).unwrap(), e - s);
            let orig = read_orig(s, e);
            if s == 0 {
                // block 0: only the superblock bytes are known
                assert_eq!(got[1024..2048], orig[1024..2048], "{opts:?}: superblock");
                got[..1024].copy_from_slice(&orig[..1024]);
                let n = got.len().min(bs as usize);
                got[2048.min(n)..n].copy_from_slice(&orig[2048.min(n)..n]);
            }
            if got != orig {
                let i = got.iter().zip(&orig).position(|(a, b)| a != b).unwrap();
                panic!("{opts:?}: block {} differs", (s + i) as u64 / bs);
            }
            checked += b1 - b0;
        }
        let sb = ni.superblock();
        let itables = u64::from(sb.group_count) * u64::from(sb.inode_blocks_per_group);
        assert!(
            checked > itables + u64::from(sb.desc_blocks),
            "{opts:?}: {checked} blocks"
        );
        // Data regions cover exactly the map.
        let mut pos = 0;
        let mut regions = 0u64;
        while let Some(r) = view.data_region(pos).unwrap() {
            regions += r.end - r.start;
            pos = r.end;
        }
        assert!(regions >= itables * bs, "{opts:?}: data regions {regions}");
        // A raw image of just those blocks is a readable filesystem.
        let raw = d.path().join("view.raw");
        let f = std::fs::File::create(&raw).unwrap();
        e2i::sparse::write_raw(
            &view,
            &map,
            sb.block_size,
            e2i::sparse::RawTarget::NewFile {
                file: &f,
                dest_offset: 0,
            },
            &mut e2i::progress::NoProgress,
        )
        .unwrap();
        drop(f);
        let a = stdout_of(Command::new("dumpe2fs").arg("-h").arg(&img));
        let b = stdout_of(Command::new("dumpe2fs").arg("-h").arg(&raw));
        let strip = |s: &str| -> String {
            s.lines()
                .take_while(|l| !l.starts_with("Journal"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&a), strip(&b), "{opts:?}");
    }
}

/// Through a backup superblock libext2fs clears the UNINIT flags in memory, which would give
/// a normal image inconsistent bitmaps: refused as a usage error (e2image refuses -b too).
#[test]
fn normal_refuses_a_backup_superblock() {
    let d = tempdir();
    let img = make(d.path(), "64M", &["-b", "1024"]);
    let out = d.path().join("o.e2i");
    let o = run(tool_cmd("e2i-capture")
        .args(["-b", "8193", "-B", "1024"])
        .arg(&img)
        .arg(&out));
    assert_eq!(o.status.code(), Some(2));
    assert!(!out.exists());
}
