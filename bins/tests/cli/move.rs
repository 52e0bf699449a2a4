//! e2i-move: clones compared with `e2image -ra`, in-place moves by awkward distances, and
//! moves killed at random moments and finished by a rerun.

use super::util::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// A small deterministic generator (xorshift64*), so every run uses the same data and
/// kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// An image made by mkfs.ext4 -d from a tree of `files` random files totalling about
/// `data` bytes, deterministic (fixed UUID, hash seed, time).
fn mkfs_data(dir: &Path, name: &str, size: &str, data: u64, files: u64, extra: &[&str]) -> PathBuf {
    let tree = dir.join(format!("{name}.tree"));
    fs::create_dir_all(tree.join("d")).unwrap();
    let mut rng = Rng(0x5eed ^ data ^ files);
    for i in 0..files {
        let n = (data / files) as usize + rng.below(4096) as usize;
        let sub = if i % 3 == 0 { "d" } else { "" };
        fs::write(tree.join(sub).join(format!("f{i}")), rng.bytes(n)).unwrap();
    }
    fs::write(tree.join("zeros"), vec![0u8; 300_000]).unwrap();
    let img = dir.join(name);
    let uuid = "6b1f3c3e-2d52-4a8e-9a3b-0f5f7c1e2a11";
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", uuid, "-E"])
        .arg(format!("root_owner=0:0,hash_seed={uuid}"))
        .args(extra)
        .arg("-d")
        .arg(&tree)
        .arg(&img)
        .arg(size)
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .status()
        .expect("mkfs.ext4");
    assert!(st.success(), "mkfs.ext4 {extra:?} failed");
    fs::remove_dir_all(&tree).unwrap();
    img
}

/// `e2image -ra [-o OFF] SRC` into a new file; returns its bytes.
fn e2image_ra(src: &Path, off: u64, out: &Path) -> Vec<u8> {
    let _ = fs::remove_file(out);
    let o = run(Command::new("e2image")
        .arg("-ra")
        .args(if off > 0 {
            vec!["-o".to_string(), off.to_string()]
        } else {
            vec![]
        })
        .arg(src)
        .arg(out));
    assert!(
        o.status.success(),
        "e2image: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    fs::read(out).unwrap()
}

fn e2i_move(args: &[&str]) -> std::process::Output {
    run(Command::new(tool("e2i-move")).args(args))
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "e2i-move failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `e2fsck -fn` of the filesystem at byte `off` of `img` (unix_io's `?offset=`).
fn fsck_at(img: &Path, off: u64) {
    let o = run(Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={off}", img.display())));
    assert!(
        o.status.success(),
        "e2fsck at {off}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// A disk image: `head` random bytes, the filesystem image, `tail` random bytes.
fn embed(fs_img: &Path, disk: &Path, head: u64, tail: u64, seed: u64) {
    let mut rng = Rng(seed);
    let mut v = rng.bytes(head as usize);
    v.extend_from_slice(&fs::read(fs_img).unwrap());
    v.extend_from_slice(&rng.bytes(tail as usize));
    fs::write(disk, v).unwrap();
}

#[test]
fn clone_matches_e2image_ra() {
    let d = tempdir();
    let cases: [(&str, &str, &[&str]); 5] = [
        ("k1.img", "24M", &["-b", "1024"]),
        ("k4.img", "48M", &["-b", "4096"]),
        ("ext2.img", "24M", &["-t", "ext2", "-b", "1024"]),
        (
            "big.img",
            "64M",
            &["-b", "4096", "-O", "bigalloc", "-C", "16384"],
        ),
        (
            "k1big.img",
            "32M",
            &["-b", "1024", "-O", "bigalloc", "-C", "4096"],
        ),
    ];
    for (name, size, extra) in cases {
        let img = mkfs_data(d.path(), name, size, 6 * MIB, 40, extra);
        let theirs = e2image_ra(&img, 0, &d.path().join("theirs.raw"));
        let ours = d.path().join("ours.raw");
        let _ = fs::remove_file(&ours);
        ok(&e2i_move(&[p(&img), p(&ours)]));
        assert!(
            fs::read(&ours).unwrap() == theirs,
            "{name}: clone differs from e2image -ra"
        );
        // Sparse like e2image's: unselected blocks are holes.
        let m = fs::metadata(&ours).unwrap();
        assert!(
            m.blocks() * 512
                <= fs::metadata(d.path().join("theirs.raw")).unwrap().blocks() * 512 + 65536
        );

        // With offsets on both sides, into a new file: e2image -ra -o/-O does the same.
        let disk = d.path().join("disk.img");
        embed(&img, &disk, 3 * MIB + 512, MIB, 7);
        let (o, dst_off) = (3 * MIB + 512, 2 * MIB + 1024);
        let want = d.path().join("want.raw");
        let _ = fs::remove_file(&want);
        let st = run(Command::new("e2image")
            .args(["-ra", "-o", &o.to_string(), "-O", &dst_off.to_string()])
            .arg(&disk)
            .arg(&want));
        assert!(st.status.success());
        let got = d.path().join("got.raw");
        let _ = fs::remove_file(&got);
        ok(&e2i_move(&[
            "-o",
            &o.to_string(),
            "-O",
            &dst_off.to_string(),
            p(&disk),
            p(&got),
        ]));
        assert!(
            fs::read(&got).unwrap() == fs::read(&want).unwrap(),
            "{name}: clone with offsets differs"
        );

        // --metadata-only is e2image -r.
        let meta_theirs = d.path().join("meta_theirs.raw");
        let _ = fs::remove_file(&meta_theirs);
        assert!(
            run(Command::new("e2image")
                .arg("-r")
                .arg(&img)
                .arg(&meta_theirs))
            .status
            .success()
        );
        let meta = d.path().join("meta.raw");
        let _ = fs::remove_file(&meta);
        ok(&e2i_move(&["--metadata-only", p(&img), p(&meta)]));
        assert!(
            fs::read(&meta).unwrap() == fs::read(&meta_theirs).unwrap(),
            "{name}: --metadata-only differs"
        );
    }
}

#[test]
fn clone_into_existing_file_keeps_outside_bytes() {
    let d = tempdir();
    let img = mkfs_data(d.path(), "fs.img", "32M", 8 * MIB, 30, &["-b", "4096"]);
    let fs_len = fs::metadata(&img).unwrap().len();
    let theirs = e2image_ra(&img, 0, &d.path().join("theirs.raw"));
    let target = d.path().join("disk.img");
    let off = MIB + 512;
    let size = off + fs_len + 3 * MIB;
    let orig = Rng(99).bytes(size as usize);
    fs::write(&target, &orig).unwrap();
    ok(&e2i_move(&["-O", &off.to_string(), p(&img), p(&target)]));
    let now = fs::read(&target).unwrap();
    assert_eq!(now.len() as u64, size, "size changed");
    assert!(now[..off as usize] == orig[..off as usize], "head changed");
    let end = (off + fs_len) as usize;
    assert!(now[end..] == orig[end..], "tail changed");
    let back = e2image_ra(&target, off, &d.path().join("back.raw"));
    assert!(
        back == theirs,
        "the clone inside the file differs from the original"
    );
    fsck_at(&target, off);

    // -c on the now identical target: nothing written, mtime unchanged, all counted.
    let before = fs::metadata(&target).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let out = ok(&e2i_move(&[
        "-c",
        "-O",
        &off.to_string(),
        p(&img),
        p(&target),
    ]));
    let after = fs::metadata(&target).unwrap();
    assert_eq!(
        (before.mtime(), before.mtime_nsec()),
        (after.mtime(), after.mtime_nsec())
    );
    let listed = ok(&e2i_move(&[
        "-n",
        "-O",
        &off.to_string(),
        p(&img),
        p(&target),
    ]));
    let selected: u64 = listed.lines().map(blocks_in_line).sum();
    assert!(selected > 0);
    assert_eq!(
        out.trim(),
        format!("{selected} blocks already contained the data to be copied")
    );
    assert!(fs::read(&target).unwrap() == now);
}

/// Blocks named by one dry-run line: `Writing block N` or `Writing blocks A-B (n blocks)`.
fn blocks_in_line(l: &str) -> u64 {
    if let Some(r) = l.strip_prefix("Writing blocks ") {
        let (a, rest) = r.split_once('-').unwrap();
        let b = rest.split(' ').next().unwrap();
        b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1
    } else {
        assert!(l.starts_with("Writing block "), "{l}");
        1
    }
}

#[test]
fn dry_run_changes_nothing() {
    let d = tempdir();
    let img = mkfs_data(d.path(), "fs.img", "16M", 4 * MIB, 20, &["-b", "4096"]);
    let target = d.path().join("disk.img");
    let orig = Rng(5).bytes((20 * MIB) as usize);
    fs::write(&target, &orig).unwrap();
    let before = fs::metadata(&target).unwrap();
    let out = ok(&e2i_move(&["-n", "-O", "4096", p(&img), p(&target)]));
    assert!(out.lines().count() > 0);
    assert!(fs::read(&target).unwrap() == orig);
    let after = fs::metadata(&target).unwrap();
    assert_eq!(
        (before.mtime(), before.mtime_nsec()),
        (after.mtime(), after.mtime_nsec())
    );
    // The listing names exactly e2image -rn's blocks (into an existing file, every block).
    let list = d.path().join("list.raw");
    fs::write(&list, b"").unwrap();
    let theirs = run(Command::new("e2image").arg("-ran").arg(&img).arg(&list));
    let theirs: u64 = String::from_utf8_lossy(&theirs.stdout)
        .lines()
        .filter(|l| l.starts_with("Writing block"))
        .count() as u64;
    let ours: u64 = out.lines().map(blocks_in_line).sum();
    assert_eq!(ours, theirs);
    // A DEST that does not exist is not created; an in-place dry run leaves no journal.
    let new = d.path().join("new.raw");
    ok(&e2i_move(&["-n", p(&img), p(&new)]));
    assert!(!new.exists());
    let src_before = fs::read(&img).unwrap();
    ok(&e2i_move(&["-n", "-O", "1M", p(&img)]));
    assert!(fs::read(&img).unwrap() == src_before);
    assert!(!d.path().join("fs.img.e2i-move").exists());
}

#[test]
fn in_place_moves_by_awkward_distances() {
    let d = tempdir();
    for (bs, name) in [("4096", "k4.img"), ("1024", "k1.img")] {
        let img = mkfs_data(d.path(), name, "40M", 16 * MIB, 50, &["-b", bs]);
        let bsz: u64 = bs.parse().unwrap();
        let want = e2image_ra(&img, 0, &d.path().join("want.raw"));
        let disk = d.path().join(format!("{name}.disk"));
        let head = MIB;
        embed(&img, &disk, head, 6 * MIB, 11);
        let orig = fs::read(&disk).unwrap();
        let mut at = head;
        // Right by 1 MiB, by 1 MiB + 512 B, by 4.5 blocks, by half a block; then back left
        // by the same distances and a final odd one.
        let steps: [i64; 9] = [
            MIB as i64,
            (MIB + 512) as i64,
            (bsz * 9 / 2) as i64,
            (bsz / 2) as i64,
            -((bsz / 2) as i64),
            -((bsz * 9 / 2) as i64),
            -((MIB + 512) as i64),
            -(MIB as i64) + 3000,
            -3000,
        ];
        for step in steps {
            let to = (at as i64 + step) as u64;
            let o = ok(&e2i_move(&[
                "-o",
                &at.to_string(),
                "-O",
                &to.to_string(),
                p(&disk),
            ]));
            assert!(o.is_empty(), "{o}");
            let got = e2image_ra(&disk, to, &d.path().join("got.raw"));
            assert!(
                got == want,
                "{name}: move {at} -> {to}: e2image -ra differs"
            );
            fsck_at(&disk, to);
            // The rerun knows the move is finished.
            let again = ok(&e2i_move(&[
                "-o",
                &at.to_string(),
                "-O",
                &to.to_string(),
                p(&disk),
            ]));
            assert!(again.contains("already finished"), "{again}");
            at = to;
        }
        assert_eq!(at, head);
        let now = fs::read(&disk).unwrap();
        assert!(
            now[..head as usize] == orig[..head as usize],
            "bytes before the filesystem changed"
        );
        assert_eq!(now.len(), orig.len());
    }
}

#[test]
fn unfinished_move_blocks_a_different_one() {
    let d = tempdir();
    let img = mkfs_data(d.path(), "fs.img", "16M", 4 * MIB, 10, &["-b", "4096"]);
    let disk = d.path().join("disk.img");
    embed(&img, &disk, MIB, 2 * MIB, 3);
    let journal = d.path().join("j");
    // Stop a slowed move right after it started (its journal exists), then try another.
    let mut child = Command::new(tool("e2i-move"))
        .args(["--journal", p(&journal), "-o", "1M", "-O", "2M", p(&disk)])
        .env("E2I_MOVE_THROTTLE_US", "2000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while !journal.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    // While it runs, a second mover is turned away.
    let o = e2i_move(&["--journal", p(&journal), "-o", "1M", "-O", "2M", p(&disk)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another e2i-move"));
    child.kill().unwrap();
    child.wait().unwrap();
    let o = e2i_move(&["--journal", p(&journal), "-o", "1M", "-O", "3M", p(&disk)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unfinished move") && err.lines().count() == 1,
        "{err}"
    );
    let o = ok(&e2i_move(&[
        "--journal",
        p(&journal),
        "-o",
        "1M",
        "-O",
        "2M",
        p(&disk),
    ]));
    assert!(o.is_empty());
    let want = e2image_ra(&img, 0, &d.path().join("want.raw"));
    assert!(e2image_ra(&disk, 2 * MIB, &d.path().join("got.raw")) == want);
}

/// Move a filesystem holding `data` bytes back and forth by awkward distances, killing
/// each move `kills` times at random moments (also during resumed runs), then finishing
/// it with a plain rerun; every trial must end with the same filesystem.
fn killed_moves(data: u64, fs_size: &str, piece: u64, throttle_us: u64, kills: usize, seed: u64) {
    let d = tempdir();
    let img = mkfs_data(d.path(), "fs.img", fs_size, data, 60, &["-b", "4096"]);
    let want = e2image_ra(&img, 0, &d.path().join("want.raw"));
    let disk = d.path().join("disk.img");
    let head = MIB;
    embed(&img, &disk, head, piece * 2, seed);
    fs::remove_file(&img).unwrap();
    let mut rng = Rng(seed);
    let mut at = head;
    let mut resumed = 0;
    let mut interrupted = 0;
    // Shifts below the piece size (every piece overlaps its own source: saved first),
    // sub-block ones, and one larger than a piece (no piece overlaps itself, but later
    // pieces overwrite the sources of earlier ones: checkpoints first).
    let far = (piece + piece / 4 + 512) as i64;
    let steps: [i64; 6] = [
        (MIB + 512) as i64,
        2048,
        far,
        -far,
        -2048 - 4096 * 3,
        -(MIB as i64) + 4096 * 3 - 512,
    ];
    for step in steps {
        let to = (at as i64 + step) as u64;
        let args = [
            "-o".to_string(),
            at.to_string(),
            "-O".to_string(),
            to.to_string(),
            p(&disk).to_string(),
        ];
        // Expected duration ~ throttle × MiB; kill somewhere inside it.
        let span_ms = (throttle_us * (data >> 20) / 1000).max(200);
        for i in 0..kills {
            let mut child = Command::new(tool("e2i-move"))
                .args(&args)
                .env("E2I_MOVE_THROTTLE_US", throttle_us.to_string())
                .env("E2I_MOVE_PIECE_KIB", (piece >> 10).to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Spread the kills over the move: most runs get a fraction of it done; every
            // other run may get anywhere (also late states of a run that started over).
            let window = if i % 2 == 0 {
                span_ms * 2 / kills as u64
            } else {
                span_ms
            };
            std::thread::sleep(Duration::from_millis(20 + rng.below(window)));
            match child.try_wait().unwrap() {
                Some(_) => {}
                None => {
                    child.kill().unwrap();
                    interrupted += 1;
                }
            }
            let out = child.wait_with_output().unwrap();
            if String::from_utf8_lossy(&out.stderr).contains("resuming") {
                resumed += 1;
            }
        }
        let o = run(Command::new(tool("e2i-move"))
            .args(&args)
            .env("E2I_MOVE_PIECE_KIB", (piece >> 10).to_string()));
        let msg = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "final run: {msg}");
        if msg.contains("resuming") {
            resumed += 1;
        }
        let got = e2image_ra(&disk, to, &d.path().join("got.raw"));
        assert!(
            got == want,
            "move {at} -> {to} killed {kills} times: filesystem differs"
        );
        fsck_at(&disk, to);
        at = to;
    }
    eprintln!(
        "killed_moves({data} bytes): {interrupted} runs killed, {resumed} runs resumed a move"
    );
    assert!(interrupted >= kills, "too few kills landed: {interrupted}");
    assert!(resumed > 0, "no run ever resumed an interrupted move");
}

#[test]
fn killed_moves_finish_on_rerun() {
    // 2 MiB pieces: many pieces, so kills land in every phase of the protocol.
    killed_moves(40 * MIB, "64M", 2 * MIB, 30_000, 6, 0x1234_5678);
}

/// The ~300 MB variant: `E2I_SLOW_TESTS=1 cargo test --release killed_moves_big`.
#[test]
fn killed_moves_big() {
    if std::env::var("E2I_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!("killed_moves_big: set E2I_SLOW_TESTS=1 to run the 300 MB variant");
        return;
    }
    // The real piece size (e2i::ops::move_fs::PIECE_BYTES).
    killed_moves(300 * MIB, "400M", 32 * MIB, 4_000, 8, 0xdead_beef);
}

/// e2fsprogs' own test images (mostly damaged), where the shared conformance corpus is
/// present (../shared/conformance, as ci/test.sh finds it): wherever `e2image -ra`
/// succeeds, the clone must be byte-identical.
#[test]
fn clone_matches_e2image_on_e2fsprogs_images() {
    let corpus =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/e2fsprogs-tests");
    let Ok(dir) = fs::read_dir(&corpus) else {
        eprintln!(
            "{}: not present; e2fsprogs corpus not checked",
            corpus.display()
        );
        return;
    };
    let d = tempdir();
    let (mut compared, mut refused) = (0, 0);
    let mut names: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
    names.sort();
    for gz in names
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".img.gz"))
    {
        let img = d.path().join("s.img");
        let o = run(Command::new("gzip")
            .arg("-dc")
            .arg(gz)
            .stdout(fs::File::create(&img).unwrap()));
        assert!(o.status.success());
        let (a, b) = (d.path().join("a.raw"), d.path().join("b.raw"));
        let _ = fs::remove_file(&a);
        let _ = fs::remove_file(&b);
        if !run(Command::new("e2image").arg("-ra").arg(&img).arg(&a))
            .status
            .success()
        {
            refused += 1;
            continue;
        }
        let o = e2i_move(&[p(&img), p(&b)]);
        assert!(
            o.status.success(),
            "{}: {}",
            gz.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            fs::read(&a).unwrap() == fs::read(&b).unwrap(),
            "{}: clone differs",
            gz.display()
        );
        compared += 1;
    }
    eprintln!(
        "e2fsprogs images: {compared} clones identical to e2image -ra; {refused} refused by e2image"
    );
    assert!(compared > 100);
}
