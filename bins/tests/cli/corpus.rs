//! Differential tests over the generated corpus (testdata/gen-corpus.sh): every image captured
//! by `e2i-capture -r` (to a new file and to stdout) and `-ra` must be byte-identical to what
//! `e2image -r` / `-ra` writes; `-b`/`-B` likewise. Also the contract on bad inputs.
//!
//! The corpus is generated once per test process into `target/<profile>/e2i-corpus/{quick,full}`
//! (the full set when `E2I_FULL_CORPUS=1`): tests share it through a `OnceLock`; a file lock
//! (exclusive while generating, shared while in use) keeps concurrent test processes apart.

use super::util::{e2image, run, tempdir, tool, tool_cmd};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

struct Corpus {
    dir: PathBuf,
    images: Vec<String>,
    _lock: File,
}

impl Corpus {
    fn img(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let full = std::env::var("E2I_FULL_CORPUS").is_ok_and(|v| v == "1");
        let base = tool("e2i-capture")
            .parent()
            .expect("target dir")
            .join("e2i-corpus");
        std::fs::create_dir_all(&base).expect("corpus dir");
        let dir = base.join(if full { "full" } else { "quick" });
        let lock = File::create(base.join(if full { "full.lock" } else { "quick.lock" }))
            .expect("lock file");
        lock.lock().expect("lock corpus");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/gen-corpus.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script).arg(&dir);
        if !full {
            cmd.arg("--quick");
        }
        let o = run(&mut cmd);
        assert!(
            o.status.success(),
            "gen-corpus.sh failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let list = std::fs::read_to_string(dir.join("LIST")).expect("corpus LIST");
        let images: Vec<String> = list.lines().map(str::to_owned).collect();
        assert!(
            images.len() >= 12,
            "corpus has only {} images",
            images.len()
        );
        // Hold a shared lock until this process exits, so that another test process does
        // not regenerate the images while this one reads them.
        lock.unlock().expect("unlock corpus");
        lock.lock_shared().expect("lock corpus (shared)");
        Corpus {
            dir,
            images,
            _lock: lock,
        }
    })
}

/// Block size of an image, as dumpe2fs reports it.
fn block_size(img: &Path) -> u64 {
    dumpe2fs_field(img, "Block size:")
        .parse()
        .expect("block size")
}

fn dumpe2fs_field(img: &Path, field: &str) -> String {
    let o = run(Command::new("dumpe2fs").arg("-h").arg(img));
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("{}: no {field} in dumpe2fs -h", img.display()))
}

/// Compare two byte streams; on a difference say where, in bytes and in blocks of `bs`.
fn compare(mut a: impl Read, mut b: impl Read, bs: u64) -> Result<u64, String> {
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let na = read_full(&mut a, &mut ba);
        let nb = read_full(&mut b, &mut bb);
        let n = na.min(nb);
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            let off = pos + i as u64;
            return Err(format!(
                "first difference at byte {off} (block {} of {bs} bytes)",
                off / bs
            ));
        }
        if na != nb {
            return Err(format!(
                "lengths differ: one ends at byte {}",
                pos + n as u64
            ));
        }
        if n == 0 {
            return Ok(pos);
        }
        pos += n as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).expect("read") {
            0 => break,
            k => n += k,
        }
    }
    n
}

fn open(p: &Path) -> BufReader<File> {
    BufReader::new(File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// `e2i-capture ARGS IMG OUT`; returns stderr on a non-zero exit.
fn capture(args: &[&str], img: &Path, out: &Path) -> Result<(), String> {
    let o = run(tool_cmd("e2i-capture").args(args).arg(img).arg(out));
    if o.status.success() && o.stderr.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "exit {:?}: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// For every corpus image: ours (file output) against e2image's, with the same `args`.
fn files_match(args: &[&str]) {
    let c = corpus();
    let mut failures = Vec::new();
    for name in &c.images {
        let img = c.img(name);
        let d = tempdir();
        let (ours, theirs) = (d.path().join("ours"), d.path().join("theirs"));
        e2image(args, &img, &theirs);
        let r = capture(args, &img, &ours)
            .and_then(|_| compare(open(&ours), open(&theirs), block_size(&img)));
        if let Err(e) = r {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "e2i-capture {args:?} differs from e2image:\n{}",
        failures.join("\n")
    );
}

#[test]
fn corpus_raw_file_matches_e2image() {
    files_match(&["-r"]);
}

#[test]
fn corpus_raw_all_data_matches_e2image() {
    files_match(&["-ra"]);
}

#[test]
fn corpus_raw_stdout_matches_e2image() {
    let c = corpus();
    let mut failures = Vec::new();
    for name in &c.images {
        let img = c.img(name);
        let d = tempdir();
        let theirs = d.path().join("theirs");
        e2image(&["-r"], &img, &theirs);
        let mut child = tool_cmd("e2i-capture")
            .arg("-r")
            .arg(&img)
            .arg("-")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn e2i-capture");
        let stdout = child.stdout.take().expect("stdout pipe");
        let cmp = compare(BufReader::new(stdout), open(&theirs), block_size(&img));
        let o = child.wait_with_output().expect("wait");
        let r = if !o.status.success() || !o.stderr.is_empty() {
            Err(format!(
                "exit {:?}: {}",
                o.status.code(),
                String::from_utf8_lossy(&o.stderr)
            ))
        } else {
            cmp.map(|_| ())
        };
        if let Err(e) = r {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "e2i-capture -r IMG - differs from e2image -r:\n{}",
        failures.join("\n")
    );
}

/// `-b N -B BS` through the first backup superblock (read from dumpe2fs), on every corpus
/// image that has one and is in this run's set.
#[test]
fn corpus_backup_superblock_matches_e2image() {
    let c = corpus();
    let mut failures = Vec::new();
    let mut checked = 0;
    for name in [
        "ext3-1k-htree",
        "ext4-4k",
        "ext4-64k",
        "ext4-2k-nocsum-no64-noflex",
        "ext4-1k-metabg",
    ] {
        if !c.images.iter().any(|n| n == name) {
            continue;
        }
        let img = c.img(name);
        let o = run(Command::new("dumpe2fs").arg(&img));
        let out = String::from_utf8_lossy(&o.stdout);
        let sb = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Backup superblock at "))
            .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
            .unwrap_or_else(|| panic!("{name}: no backup superblock"))
            .to_owned();
        let bs = block_size(&img).to_string();
        for args in [
            vec!["-r", "-b", &sb, "-B", &bs],
            vec!["-ra", "-b", &sb, "-B", &bs],
        ] {
            let d = tempdir();
            let (ours, theirs) = (d.path().join("ours"), d.path().join("theirs"));
            e2image(&args, &img, &theirs);
            let r = capture(&args, &img, &ours)
                .and_then(|_| compare(open(&ours), open(&theirs), block_size(&img)));
            if let Err(e) = r {
                failures.push(format!("{name} {args:?}: {e}"));
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} backup-superblock checks ran");
    assert!(
        failures.is_empty(),
        "-b/-B differs from e2image:\n{}",
        failures.join("\n")
    );
}

/// The corpus generator is deterministic: regenerating three images (htree, casefold and
/// orphan-list fixtures, the most debugfs- and e2fsck-heavy) gives the same checksums.
#[test]
fn corpus_generation_is_deterministic() {
    let c = corpus();
    let d = tempdir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/gen-corpus.sh");
    let names = "ext3-1k-htree,ext4-4k-casefold,ext4-4k-orphans";
    let o = run(Command::new("bash")
        .arg(&script)
        .arg(d.path())
        .args(["--only", names]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = std::fs::read_to_string(d.path().join("SHA256SUMS")).unwrap();
    let first = std::fs::read_to_string(c.dir.join("SHA256SUMS")).unwrap();
    assert_eq!(again.lines().count(), 3, "{again}");
    for line in again.lines() {
        assert!(first.contains(line), "not reproduced: {line}");
    }
}

#[test]
fn compare_reports_the_first_difference() {
    let a = vec![7u8; 3 << 20];
    let mut b = a.clone();
    assert_eq!(compare(&a[..], &b[..], 4096), Ok(3 << 20));
    b[(2 << 20) + 4097] = 0;
    let e = compare(&a[..], &b[..], 4096).unwrap_err();
    assert!(e.contains("byte 2101249 (block 513 "), "{e}");
    assert!(
        compare(&a[..], &a[..1000], 4096)
            .unwrap_err()
            .contains("lengths differ")
    );
}

// ---- bad inputs -------------------------------------------------------------------------------

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

fn capture_outcome(args: &[&str], src: &Path, out: &Path) -> Outcome {
    let o = run(tool_cmd("e2i-capture").args(args).arg(src).arg(out));
    Outcome {
        code: o.status.code(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Exit 1 with exactly one line on stderr, `e2i-capture: ` + the source's name + `what`, and
/// no output file left behind.
fn assert_fails_cleanly(src: &Path, args: &[&str], what: &str) {
    let d = tempdir();
    let out = d.path().join("out.raw");
    let r = capture_outcome(args, src, &out);
    let name = src.display().to_string();
    assert!(!r.stderr.contains("panicked"), "panic: {}", r.stderr);
    assert_eq!(r.code, Some(1), "{name}: exit status; stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{name}: want one line, got: {}", r.stderr);
    assert!(lines[0].starts_with("e2i-capture: "), "{}", lines[0]);
    assert!(
        lines[0].contains(&name),
        "{name} not named in: {}",
        lines[0]
    );
    assert!(lines[0].contains(what), "'{what}' not in: {}", lines[0]);
    assert!(
        !out.exists(),
        "{name}: a failed capture left {}",
        out.display()
    );
}

/// Default mode skips the damaged structure: exit 3, one `skipped:` line naming `what`, a
/// summary line, and a finished image. `--strict` fails: exit 1, one line naming `what`.
fn assert_damage_contract(src: &Path, what: &str) {
    let d = tempdir();
    let out = d.path().join("out.raw");
    let r = capture_outcome(&["-r"], src, &out);
    let name = src.display().to_string();
    assert!(!r.stderr.contains("panicked"), "panic: {}", r.stderr);
    assert_eq!(r.code, Some(3), "{name}: exit status; stderr: {}", r.stderr);
    let skipped: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains(": skipped: "))
        .collect();
    assert!(!skipped.is_empty(), "no skipped line: {}", r.stderr);
    assert!(skipped.iter().all(|l| l.contains(&name)), "{}", r.stderr);
    assert!(
        skipped.iter().any(|l| l.contains(what)),
        "'{what}' not in: {}",
        r.stderr
    );
    assert!(
        r.stderr
            .lines()
            .last()
            .unwrap_or("")
            .contains("damaged structures skipped"),
        "{}",
        r.stderr
    );
    assert!(out.exists(), "exit 3 promises a usable image");
    assert_fails_cleanly(src, &["-r", "--strict"], what);
}

#[test]
fn bad_input_missing_file() {
    let d = tempdir();
    assert_fails_cleanly(&d.path().join("no-such-image"), &["-r"], "No such file");
}

#[test]
fn bad_input_not_ext4() {
    let d = tempdir();
    let p = d.path().join("random.bin");
    let mut x: u32 = 12345;
    let data: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    std::fs::write(&p, data).unwrap();
    assert_fails_cleanly(&p, &["-r"], "not an ext2/3/4 filesystem");
}

#[test]
fn bad_input_empty_file() {
    let d = tempdir();
    let p = d.path().join("empty.img");
    std::fs::write(&p, b"").unwrap();
    assert_fails_cleanly(&p, &["-r"], "superblock");
}

/// A copy of a corpus image, to damage.
fn damaged_copy(name: &str, d: &Path) -> PathBuf {
    let c = corpus();
    let p = d.join(format!("{name}.damaged.img"));
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(c.img(name))
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());
    p
}

fn patch(p: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

/// Cut to 1 MiB: superblock and descriptors remain; inode tables and directory blocks are gone.
/// e2image stops with an error; e2i finishes, names what it skipped (exit 3).
#[test]
fn bad_input_truncated_image() {
    let d = tempdir();
    let p = damaged_copy("ext4-4k", d.path());
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let e2 = run(Command::new("e2image")
        .arg("-r")
        .arg(&p)
        .arg(d.path().join("e2image.out")));
    assert!(!e2.status.success(), "e2image accepts the truncated image?");
    assert_damage_contract(&p, "lies past the end of the source");
}

/// Group 1's inode table moved past the end of the filesystem (no checksums on this image,
/// so only the location is wrong).
#[test]
fn bad_input_descriptor_past_end() {
    let d = tempdir();
    let p = damaged_copy("ext4-2k-nocsum-no64-noflex", d.path());
    let bs = block_size(&p);
    let features = dumpe2fs_field(&p, "Filesystem features:");
    assert!(
        !features.contains("64bit") && !features.contains("metadata_csum"),
        "{features}"
    );
    // descriptors start in block 1 (first_data_block 0 at 2 KiB); bg_inode_table_lo at +8
    patch(&p, bs + 32 + 8, &0x7fff_ffffu32.to_le_bytes());
    let e2 = run(Command::new("e2image")
        .arg("-r")
        .arg(&p)
        .arg(d.path().join("e2image.out")));
    assert!(!e2.status.success(), "e2image accepts the bad descriptor?");
    assert_damage_contract(&p, "group 1: inode table at block 2147483647 lies outside");
}

/// A regular file's extent header magic zeroed (located with debugfs imap).
#[test]
fn bad_input_corrupt_extent_header() {
    let d = tempdir();
    let p = damaged_copy("ext4-2k-nocsum-no64-noflex", d.path());
    let o = run(Command::new("debugfs").arg("-R").arg("imap d/big").arg(&p));
    let out = String::from_utf8_lossy(&o.stdout);
    let (ino, blk, off) = parse_imap(&out).unwrap_or_else(|| panic!("imap: {out}"));
    let at = blk * block_size(&p) + off + 40; // i_block
    patch(&p, at, &[0, 0]);
    // libext2fs's block iterator treats an invalid extent root as an empty tree and e2image
    // succeeds without the inode's blocks; e2i selects the same (same bytes, exit 0) and
    // warns, naming the inode.
    let d2 = tempdir();
    let ours = d2.path().join("ours.raw");
    let theirs = d2.path().join("theirs.raw");
    let r = capture_outcome(&["-r"], &p, &ours);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "warning: {}: inode {ino}: extent root",
            p.display()
        )),
        "{}",
        r.stderr
    );
    let st = Command::new("e2image")
        .arg("-r")
        .arg(&p)
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(st.status.success());
    assert!(
        std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
        "bytes differ from e2image -r"
    );
}

/// "Inode 16 is part of block group 0\n\tlocated at block 68, offset 0x0700"
fn parse_imap(s: &str) -> Option<(u64, u64, u64)> {
    let ino = s.split_whitespace().nth(1)?.parse().ok()?;
    let rest = s.split("located at block ").nth(1)?;
    let (blk, off) = rest.split_once(", offset 0x")?;
    let off = u64::from_str_radix(off.trim(), 16).ok()?;
    Some((ino, blk.trim().parse().ok()?, off))
}

/// `-s` on every corpus image: e2fsck gives the scrambled image the verdict it gives the
/// unscrambled one, and debugfs lists the root without checksum errors.
#[test]
fn corpus_scrambled_keeps_the_fsck_verdict() {
    let c = corpus();
    let fsck = |p: &Path| {
        Command::new("e2fsck")
            .arg("-fn")
            .arg(p)
            .output()
            .expect("e2fsck")
            .status
            .code()
    };
    let mut failures = Vec::new();
    for name in &c.images {
        let img = c.img(name);
        let d = tempdir();
        let plain = d.path().join("plain.raw");
        let scrambled = d.path().join("scrambled.raw");
        if let Err(e) = capture(&["-r"], &img, &plain)
            .and_then(|_| capture(&["-r", "-s", "-q"], &img, &scrambled))
        {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        let (a, b) = (fsck(&plain), fsck(&scrambled));
        if a != b {
            failures.push(format!(
                "{name}: e2fsck -fn exits {a:?} unscrambled but {b:?} scrambled"
            ));
        }
        let ls = Command::new("debugfs")
            .args(["-R", "ls -l /"])
            .arg(&scrambled)
            .output()
            .expect("debugfs");
        let err = String::from_utf8_lossy(&ls.stderr).to_lowercase();
        if err.contains("checksum") || err.contains("corrupt") {
            failures.push(format!("{name}: debugfs ls: {err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
