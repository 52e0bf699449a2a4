//! Mutation tests: deterministic corruptions of real filesystems, aimed at their metadata
//! blocks (superblock, descriptors, bitmaps, inode tables, extent, indirect and directory
//! blocks), run through the scanner and writers in-process. Every case must end in success,
//! a clean error or a partial capture — never a panic — within bounded work and memory.
//!
//! Both bounds are measured so that they hold on a loaded machine and beside other tests
//! running in parallel: memory is this thread's heap peak (the test binary's allocator
//! counts per thread), work is the bytes read from the image (a damaged tree that made the
//! walk exponential would read without end). Wall time is only reported.

use super::util::*;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use e2i::blockmap::BlockMap;
use e2i::ext4::scan::{ScanOptions, scan};
use e2i::ext4::{Filesystem, OpenOptions};
use e2i::io::{MemSource, ReadAt};
use e2i::progress::NoProgress;
use e2i::sparse::{RawTarget, write_raw};

/// Peak-tracking allocator (installed by the test binary root): bytes live at most.
pub use super::super::ALLOC;

/// Heap a case may use at most (the images are 6–16 MiB).
const HEAP_LIMIT: usize = 512 << 20;
/// Bytes a case may read, as a multiple of its image's size: open, scan, the raw writer
/// and the stream classifier each read the metadata about once, twice in strict mode.
const READ_FACTOR: u64 = 64;

/// The image, counting the bytes read from it.
struct Counted<'a> {
    inner: &'a MemSource,
    read: &'a AtomicU64,
}

impl ReadAt for Counted<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> e2i::Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        self.read.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn data_region(&self, offset: u64) -> e2i::Result<Option<Range<u64>>> {
        self.inner.data_region(offset)
    }
}

/// splitmix64: small, deterministic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Clean,
    Damaged,
    Refused,
}

/// Run open → scan → raw writer (dry run, and the stream classifier) on `img`, adding the
/// bytes read to `read`.
fn capture(img: Vec<u8>, strict: bool, read: &AtomicU64) -> Outcome {
    let mem = MemSource(img);
    let src = Counted { inner: &mem, read };
    let fs = match Filesystem::open(&src, OpenOptions::default()) {
        Ok(fs) => fs,
        Err(_) => return Outcome::Refused,
    };
    let opts = ScanOptions {
        all_data: true,
        output_is_block_device: false,
        strict,
        want_dir_blocks: true,
        walkers: Some(0),
    };
    let res = scan(&fs, opts, None);
    // Walker threads find exactly the same, in the same order (read uncounted).
    let fs2 = Filesystem::open(&mem, OpenOptions::default()).expect("opened once already");
    let walked = scan(
        &fs2,
        ScanOptions {
            walkers: Some(3),
            ..opts
        },
        None,
    );
    assert_same_scan(&res, &walked, "walkers");
    let res = match res {
        Ok(r) => r,
        Err(_) => return Outcome::Refused,
    };
    let map: &BlockMap = &res.map;
    let mut sink = std::io::sink();
    if write_raw(
        &src,
        map,
        fs.sb.block_size,
        RawTarget::DryRun {
            list: &mut sink,
            target: None,
            dest_offset: 0,
            check: false,
            new_file: false,
            room: None,
        },
        &mut NoProgress,
    )
    .is_err()
    {
        return Outcome::Refused;
    }
    if e2i::pieces::classify_runs(&src, map, fs.sb.block_size, &mut NoProgress).is_err() {
        return Outcome::Refused;
    }
    if res.problems.is_empty() {
        Outcome::Clean
    } else {
        Outcome::Damaged
    }
}

/// Byte ranges worth corrupting in `img`: superblock, descriptors, and every selected block
/// (bitmaps, inode tables, extent/indirect/directory blocks, xattr blocks, journal).
fn targets(img: &[u8]) -> Vec<(u64, u64)> {
    let src = MemSource(img.to_vec());
    let fs = Filesystem::open(&src, OpenOptions::default()).expect("base image opens");
    let bs = fs.sb.block_size.bytes();
    let mut t = vec![(1024u64, 1024u64)];
    let desc_start = (u64::from(fs.sb.first_data_block) + 1) * bs;
    t.push((desc_start, u64::from(fs.sb.desc_blocks) * bs));
    let opts = ScanOptions {
        all_data: false,
        output_is_block_device: false,
        strict: true,
        want_dir_blocks: false,
        walkers: None,
    };
    let res = scan(&fs, opts, None).expect("base image scans");
    for r in res.map.runs() {
        for b in r.start.get()..r.end().get() {
            t.push((b * bs, bs));
        }
    }
    t
}

/// The largest figures seen over the cases (reported, and bounded per case).
#[derive(Default)]
struct Worst {
    time: Duration,
    heap: usize,
    /// Bytes read per byte of image.
    read_factor: f64,
}

fn run_case(name: &str, img: Vec<u8>, worst: &mut Worst) -> Outcome {
    ALLOC.reset_peak();
    let start = Instant::now();
    let size = (img.len() as u64).max(1 << 20);
    let read = AtomicU64::new(0);
    let r = catch_unwind(AssertUnwindSafe(|| {
        let lenient = capture(img.clone(), false, &read);
        let strict = capture(img, true, &read);
        // Strict mode never reports a partial capture; it refuses instead.
        assert_ne!(
            strict,
            Outcome::Damaged,
            "{name}: strict mode returned a partial capture"
        );
        lenient
    }));
    worst.time = worst.time.max(start.elapsed());
    worst.heap = worst.heap.max(ALLOC.peak());
    worst.read_factor = worst
        .read_factor
        .max(read.load(Relaxed) as f64 / size as f64);
    let outcome = r.unwrap_or_else(|_| panic!("{name}: panicked"));
    assert!(
        ALLOC.peak() < HEAP_LIMIT,
        "{name}: peak heap {} bytes",
        ALLOC.peak()
    );
    assert!(
        read.load(Relaxed) <= size.saturating_mul(READ_FACTOR),
        "{name}: read {} bytes of a {size}-byte image",
        read.load(Relaxed)
    );
    outcome
}

fn base_images(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let specs: [(&str, &str, &[&str]); 4] = [
        (
            "ext4-4k-csum",
            "8M",
            &["-b", "4096", "-O", "metadata_csum,64bit"],
        ),
        (
            "ext4-1k-flex",
            "8M",
            &["-b", "1024", "-O", "^metadata_csum,uninit_bg"],
        ),
        ("ext2-1k", "6M", &["-t", "ext2", "-b", "1024"]),
        (
            "ext4-bigalloc",
            "16M",
            &["-b", "1024", "-O", "bigalloc", "-C", "16384"],
        ),
    ];
    specs
        .iter()
        .map(|(n, size, args)| {
            let img = mkfs(dir, n, size, args);
            (n.to_string(), std::fs::read(img).expect("read image"))
        })
        .collect()
}

#[test]
fn mutated_filesystems_never_crash() {
    let d = tempdir();
    let bases = base_images(d.path());
    let per_image: u64 = std::env::var("E2I_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let mut worst = Worst::default();
    let mut counts = [0u64; 3];
    let mut cases = 0u64;
    for (bi, (name, base)) in bases.iter().enumerate() {
        assert_eq!(
            capture(base.clone(), true, &AtomicU64::new(0)),
            Outcome::Clean,
            "{name} base image"
        );
        let t = targets(base);
        let mut rng = Rng(0xE21 + bi as u64);
        for case in 0..per_image {
            let mut img = base.clone();
            let (off, len) = t[rng.below(t.len() as u64) as usize];
            let kind = rng.below(5);
            match kind {
                0 => {
                    // A few bit flips.
                    for _ in 0..=rng.below(8) {
                        let p = (off + rng.below(len)) as usize;
                        img[p] ^= 1 << rng.below(8);
                    }
                }
                1 => {
                    // A run of random bytes.
                    let p = off + rng.below(len);
                    let n = 1 + rng.below(64);
                    for i in p..(p + n).min(off + len) {
                        img[i as usize] = rng.next() as u8;
                    }
                }
                2 => {
                    // A 32-bit field set to 0 or all ones.
                    let p = (off + rng.below(len / 4) * 4) as usize;
                    let v = if rng.below(2) == 0 { 0u8 } else { 0xFF };
                    img[p..p + 4].fill(v);
                }
                3 => {
                    // Truncation inside or after the target.
                    let cut = (off + rng.below(len)).min(img.len() as u64) as usize;
                    img.truncate(cut);
                }
                _ => {
                    // Zero a whole metadata block.
                    img[off as usize..(off + len) as usize].fill(0);
                }
            }
            let o = run_case(
                &format!("{name} case {case} kind {kind} at {off}"),
                img,
                &mut worst,
            );
            counts[o as usize] += 1;
            cases += 1;
        }
        // Every superblock field (32-bit word) set to 0, then to all ones.
        for w in 0..256usize {
            for v in [0u8, 0xFF] {
                let mut img = base.clone();
                img[1024 + 4 * w..1024 + 4 * w + 4].fill(v);
                let o = run_case(
                    &format!("{name} superblock word {w} = {v:#x}"),
                    img,
                    &mut worst,
                );
                counts[o as usize] += 1;
                cases += 1;
            }
        }
    }
    // Degenerate inputs.
    let mut rng = Rng(7);
    let degenerate: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("zeros".into(), vec![0u8; 1 << 20]),
        (
            "random".into(),
            (0..1 << 20).map(|_| rng.next() as u8).collect(),
        ),
        ("one superblock".into(), bases[0].1[..2048].to_vec()),
    ];
    for (n, img) in degenerate {
        let o = run_case(&n, img, &mut worst);
        assert_eq!(o, Outcome::Refused, "{n}");
        cases += 1;
    }
    eprintln!(
        "mutation: {cases} cases: {} clean, {} partial (exit 3), {} refused (exit 1); slowest {:?}; peak heap {} KiB; most read {:.1}× the image",
        counts[0],
        counts[1],
        counts[2],
        worst.time,
        worst.heap / 1024,
        worst.read_factor
    );
}

/// A disk for the partition-table cases: 8 MiB, a 2 MiB ext4 in its first partition.
fn table_disk(dir: &std::path::Path, gpt: bool) -> Vec<u8> {
    use super::partitions::{blank, mbr_sector, put_fs, write_gpt};
    use std::os::unix::fs::FileExt;
    let fs = mkfs(
        dir,
        if gpt { "tgpt" } else { "tmbr" },
        "2M",
        &["-b", "1024"],
    );
    let path = dir.join(if gpt { "gpt.disk" } else { "mbr.disk" });
    let f = blank(&path, 8 << 20);
    if gpt {
        write_gpt(
            &f,
            512,
            16384,
            &[(2048, 6143), (6144, 10239), (10240, 12287)],
        );
    } else {
        f.write_all_at(&mbr_sector(&[(0x83, 2048, 4096), (0x05, 6144, 8192)]), 0)
            .unwrap();
        // Three logical partitions, each EBR linking to the next.
        for (i, ebr) in [6144u32, 8192, 10240].iter().enumerate() {
            let mut es = vec![(0x83, 64, 1024)];
            if i < 2 {
                es.push((0x05, ebr + 2048 - 6144, 2048));
            }
            f.write_all_at(&mbr_sector(&es), u64::from(*ebr) * 512)
                .unwrap();
        }
    }
    put_fs(&f, &fs, 1 << 20);
    std::fs::read(&path).unwrap()
}

/// Re-checksum a GPT header at `at` and its entry array (so that a mutation of a field
/// reaches the field checks instead of stopping at the CRC).
fn fix_gpt_crcs(d: &mut [u8], at: usize) {
    use super::partitions::{crc32, put_u32};
    let le64 = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let le32 = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let arr = le64(d, at + 72).saturating_mul(512);
    let len = u64::from(le32(d, at + 80)).saturating_mul(u64::from(le32(d, at + 84)));
    if let (Ok(a), Ok(n)) = (usize::try_from(arr), usize::try_from(len))
        && a.checked_add(n).is_some_and(|e| e <= d.len())
    {
        let c = crc32(&d[a..a + n]);
        put_u32(d, at + 88, c);
    }
    let hs = (le32(d, at + 12) as usize).clamp(92, 512);
    put_u32(d, at + 16, 0);
    let c = crc32(&d[at..at + hs]);
    put_u32(d, at + 16, c);
}

/// Read the table of `img` and locate every partition it lists and a few it does not;
/// returns the number of partitions found (or `None` for a refused table).
fn read_tables(img: Vec<u8>, read: &AtomicU64) -> Option<usize> {
    let mem = MemSource(img);
    let src = Counted { inner: &mem, read };
    let t = e2i::partition::read_table(&src).ok()?;
    for n in t.partitions.iter().map(|p| p.number).chain([0, 4, 9, 300]) {
        if let Ok(l) = e2i::partition::locate(&src, n) {
            let _ = l.overrun();
        }
    }
    for note in &t.notes {
        let _ = note.to_string();
    }
    Some(t.partitions.len())
}

#[test]
fn mutated_partition_tables_never_crash() {
    let d = tempdir();
    let gpt = table_disk(d.path(), true);
    let mbr = table_disk(d.path(), false);
    // Partition tables are small: a case may hold the 1 MiB entry-array limit a few times
    // over, never more, and reads a few MiB at most.
    const TABLE_HEAP: usize = 8 << 20;
    const TABLE_READ: u64 = 16 << 20;
    let mut worst_heap = 0usize;
    let mut worst_read = 0u64;
    let mut cases = 0u64;
    let mut refused = 0u64;
    let mut check = |name: &str, img: Vec<u8>| {
        ALLOC.reset_peak();
        // What is live now (the disk image itself among it) is not the case's.
        let base = ALLOC.peak();
        let read = AtomicU64::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| read_tables(img, &read)));
        let found = r.unwrap_or_else(|_| panic!("{name}: panicked"));
        let heap = ALLOC.peak().saturating_sub(base);
        assert!(heap < TABLE_HEAP, "{name}: peak heap {heap}");
        assert!(
            read.load(Relaxed) < TABLE_READ,
            "{name}: read {} bytes",
            read.load(Relaxed)
        );
        worst_heap = worst_heap.max(heap);
        worst_read = worst_read.max(read.load(Relaxed));
        cases += 1;
        refused += u64::from(found.is_none());
        found
    };
    assert_eq!(check("gpt base", gpt.clone()), Some(3));
    assert_eq!(check("mbr base", mbr.clone()), Some(5));
    let mut rng = Rng(0x9A27);
    // The structures: protective MBR / MBR, GPT header (primary and backup) and entries,
    // the EBRs.
    let gpt_targets = [
        (0usize, 512usize, false),
        (512, 92, true),
        (1024, 384, true),
    ];
    let backup = gpt.len() - 512;
    let mbr_targets = [
        (0usize, 512usize),
        (6144 * 512, 512),
        (8192 * 512, 512),
        (10240 * 512, 512),
    ];
    for case in 0..1500u64 {
        let (mut img, name) = if case % 2 == 0 {
            let mut img = gpt.clone();
            let (off, len, fix) = gpt_targets[rng.below(3) as usize];
            for _ in 0..=rng.below(6) {
                let p = off + rng.below(len as u64) as usize;
                img[p] = match rng.below(3) {
                    0 => 0xFF,
                    1 => 0,
                    _ => rng.next() as u8,
                };
            }
            if fix && rng.below(4) != 0 {
                fix_gpt_crcs(&mut img, 512);
            }
            if rng.below(3) == 0 {
                // The backup damaged as well.
                img[backup + rng.below(92) as usize] ^= 0x40;
            }
            (img, format!("gpt case {case}"))
        } else {
            let mut img = mbr.clone();
            let (off, len) = mbr_targets[rng.below(4) as usize];
            for _ in 0..=rng.below(6) {
                // Mostly the four entries, where the numbers are.
                let p = if rng.below(4) == 0 {
                    off + rng.below(len as u64) as usize
                } else {
                    off + 446 + rng.below(64) as usize
                };
                img[p] = rng.next() as u8;
            }
            (img, format!("mbr case {case}"))
        };
        if rng.below(10) == 0 {
            img.truncate(rng.below(img.len() as u64) as usize);
        }
        check(&name, img);
    }
    // Named hostile tables.
    let le = |v: u64| v.to_le_bytes();
    let mut named: Vec<(&str, Vec<u8>)> = Vec::new();
    for (what, field, value, wide) in [
        ("huge entry count", 80usize, u64::from(u32::MAX), false),
        ("huge entry size", 84, 1 << 31, false),
        ("entry array past the disk", 72, u64::MAX / 512, true),
        ("header size past the sector", 12, 100_000, false),
    ] {
        let mut img = gpt.clone();
        for at in [512, backup] {
            let v = le(value);
            img[at + field..at + field + if wide { 8 } else { 4 }]
                .copy_from_slice(&v[..if wide { 8 } else { 4 }]);
            fix_gpt_crcs(&mut img, at);
        }
        named.push((what, img));
    }
    let mut img = gpt.clone();
    img[512 + 16] ^= 1;
    img[backup + 16] ^= 1;
    named.push(("bad crcs on both headers", img));
    let mut img = gpt.clone();
    // Entries past the disk's end and overlapping each other.
    img[1024 + 40..1024 + 48].copy_from_slice(&le(u64::MAX / 1024));
    img[1024 + 128 + 32..1024 + 128 + 40].copy_from_slice(&le(3000));
    fix_gpt_crcs(&mut img, 512);
    named.push(("entries past the end and overlapping", img));
    let mut img = mbr.clone();
    // The third EBR links back to the first.
    img[10240 * 512..10241 * 512].copy_from_slice(&super::partitions::mbr_sector(&[
        (0x83, 64, 1024),
        (0x05, 0, 2048),
    ]));
    named.push(("looping EBR chain", img));
    let mut img = mbr.clone();
    img[6144 * 512..6145 * 512].copy_from_slice(&super::partitions::mbr_sector(&[
        (0x83, 64, 1024),
        (0x05, 0, 2048),
    ]));
    named.push(("EBR linking to itself", img));
    let mut img = mbr.clone();
    img[..512].copy_from_slice(&super::partitions::mbr_sector(&[
        (0x83, 2048, u32::MAX),
        (0x05, u32::MAX - 10, u32::MAX),
        (0x83, 4000, 100),
    ]));
    named.push(("MBR entries past the end, overlapping", img));
    let mut results = Vec::new();
    for (what, img) in &named {
        results.push((what, check(what, img.clone())));
    }
    // Whole-table damage is refused; chain damage and odd entries keep what can be read.
    for (what, r) in &results {
        let expect_refused = what.contains("huge")
            || what.contains("array past")
            || what.contains("header size")
            || what.contains("bad crcs");
        assert_eq!(r.is_none(), expect_refused, "{what}: {r:?}");
    }
    // The tools on the same disks: a clean line and exit 0, 1 or 3 (never a panic's 101).
    let dir = tempdir();
    for (i, (what, img)) in named.iter().enumerate() {
        let disk = dir.path().join(format!("hostile{i}.img"));
        std::fs::write(&disk, img).unwrap();
        for args in [&["--list"][..], &["-r", "-P", "1"], &["-r", "-P", "5"]] {
            let out = dir.path().join(format!("hostile{i}.raw"));
            let _ = std::fs::remove_file(&out);
            let mut c = tool_cmd("e2i-capture");
            c.args(args).arg(&disk);
            if args[0] == "-r" {
                c.arg(&out);
            }
            let o = run(&mut c);
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(
                matches!(o.status.code(), Some(0 | 1 | 3)),
                "{what} {args:?}: {e}"
            );
            assert!(
                e.lines().all(|l| l.starts_with("e2i-capture: ")),
                "{what} {args:?}: {e}"
            );
        }
    }
    eprintln!(
        "partition tables: {cases} cases, {refused} refused; peak heap {} KiB; most read {} KiB",
        worst_heap / 1024,
        worst_read / 1024
    );
}
