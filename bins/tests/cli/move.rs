//! e2i-move: clones compared with `e2image -ra`, in-place moves by awkward distances, and
//! moves killed at random moments and finished by a rerun.

use super::util::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
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

/// e2i-move with a state folder of its own: the index an in-place move writes must reach
/// neither the user's state folder nor another test's (a new move reads every unfinished
/// journal the index knows).
fn e2i_move(args: &[&str]) -> std::process::Output {
    let state = tempdir();
    run(tool_cmd("e2i-move")
        .args(args)
        .env("XDG_STATE_HOME", state.path()))
}

/// An e2i-move a test starts through the util helpers (directly or under a shell) gets
/// the test's own state folder: an in-place move indexes its journal there, never under
/// HOME (~/.local/state), and another test (thread) gets another folder.
#[test]
fn tests_run_e2i_move_with_a_state_folder_of_their_own() {
    let d = tempdir();
    let home = d.path().join("home");
    fs::create_dir(&home).unwrap();
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(12 * MIB)
        .unwrap();
    let index = state_home().join("e2i/index");
    for (from, to, mut c) in [
        ("0", "1M", tool_cmd("e2i-move")),
        ("1M", "2M", tool_in_sh("exec \"$@\"", "e2i-move")),
    ] {
        let _ = fs::remove_file(journal_of(&img));
        ok(&run(c
            .args(["-o", from, "-O", to])
            .arg(&img)
            .env("HOME", &home)));
        assert!(names(&home).is_empty(), "e2i-move wrote under HOME");
        assert_eq!(names(&index).len(), 1, "no index entry");
        fs::remove_dir_all(&index).unwrap();
    }
    let other = std::thread::spawn(state_home).join().unwrap();
    assert_ne!(other, state_home());
    assert!(!other.exists(), "another thread's folder outlived it");
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
    // Hold a move (SIGSTOP, by the test hook) before its third write: its journal exists,
    // a piece is under way, SOURCE is locked. Then try another.
    let mover = held_mover(
        &["--journal", p(&journal), "-o", "1M", "-O", "2M"],
        &disk,
        &d.path().join("state"),
        256,
    );
    assert!(journal.exists());
    // While it is held, a second mover is turned away.
    let o = e2i_move(&["--journal", p(&journal), "-o", "1M", "-O", "2M", p(&disk)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another e2i-move"));
    drop(mover); // killed
    // Resumed, and killed again once it has moved some pieces (what it moved so far may
    // have been nothing: an unfinished move that changed nothing does not block another).
    let o = run(tool_cmd("e2i-move")
        .args(["--journal", p(&journal), "-o", "1M", "-O", "2M", p(&disk)])
        .env("XDG_STATE_HOME", d.path().join("state"))
        .env("E2I_MOVE_SLICE_KIB", "64")
        .env("E2I_MOVE_KILL_AT", "40"));
    assert!(
        std::os::unix::process::ExitStatusExt::signal(&o.status) == Some(9),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
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
/// each move `kills` times (SIGKILL, by the binary's exact-write test hook: no timing
/// involved), also during the runs that resume it, then finishing it with a plain rerun;
/// every trial must end with the same filesystem.
///
/// The kill points are seeded and chosen so that every one of them is reached: an
/// uninterrupted run on a copy counts the move's crash points (writes to SOURCE or the
/// journal), and each kill leaves the runs after it enough of them (a resumed run redoes
/// the pieces since the last checkpoint and skips at most a few writes: the journal's
/// creation, pieces already saved, one checkpoint). Half the kills come early in what is
/// left, the others anywhere, the last one up to the final write.
fn killed_moves(data: u64, fs_size: &str, piece: u64, slice: u64, kills: u64, seed: u64) {
    let d = tempdir();
    let img = mkfs_data(d.path(), "fs.img", fs_size, data, 60, &["-b", "4096"]);
    let want = e2image_ra(&img, 0, &d.path().join("want.raw"));
    let disk = d.path().join("disk.img");
    let head = MIB;
    embed(&img, &disk, head, piece * 2, seed);
    fs::remove_file(&img).unwrap();
    let state = d.path().join("state");
    let mut rng = Rng(seed);
    let mut at = head;
    let (mut runs, mut points_seen) = (0u64, 0u64);
    // Writes a resumed run may skip beyond those the killed run made.
    const SKIPPED: u64 = 6;
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
        let (at_s, to_s) = (at.to_string(), to.to_string());
        let args = ["-o", &at_s, "-O", &to_s, p(&disk)];
        // The move's command without its arguments.
        let cmd = |kill_at: u64| {
            let mut c = tool_cmd("e2i-move");
            c.env("XDG_STATE_HOME", &state)
                .env("E2I_MOVE_PIECE_KIB", (piece >> 10).to_string())
                .env("E2I_MOVE_SLICE_KIB", (slice >> 10).to_string())
                .env("E2I_MOVE_KILL_AT", kill_at.to_string());
            c
        };
        let total = crash_points_with(&disk, &args, cmd(0));
        assert!(
            total > kills * (SKIPPED + 1),
            "move {at} -> {to}: only {total} crash points"
        );
        let mut left = total;
        for i in 0..kills {
            // Leave at least one reachable point for each kill still to come.
            let room = left - (kills - 1 - i) * (SKIPPED + 1);
            let window = if i % 2 == 0 { room / (kills - i) } else { room };
            let c = 1 + rng.below(window.max(1));
            let o = run(cmd(c).args(args));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                killed(&o),
                "move {at} -> {to}, kill {i} at crash point {c} ({left} of {total} left): not killed: {err}"
            );
            assert_eq!(
                err.contains("resuming"),
                i > 0,
                "move {at} -> {to}, kill {i} at {c}: {err}"
            );
            // What the next run is sure to have: this run made at most c - 1 writes of
            // progress, and the next may skip SKIPPED more.
            left = left.saturating_sub(c + SKIPPED);
            runs += 1;
            points_seen += c;
        }
        let o = run(cmd(0).args(args));
        let msg = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "final run: {msg}");
        assert!(msg.contains("resuming"), "final run did not resume: {msg}");
        let got = e2image_ra(&disk, to, &d.path().join("got.raw"));
        assert!(
            got == want,
            "move {at} -> {to} killed {kills} times: filesystem differs"
        );
        fsck_at(&disk, to);
        at = to;
    }
    eprintln!(
        "killed_moves({data} bytes): {runs} runs killed ({points_seen} writes in all), every rerun resumed"
    );
}

#[test]
fn killed_moves_finish_on_rerun() {
    // 2 MiB pieces written in 256 KiB slices: many pieces, and kills inside them.
    killed_moves(40 * MIB, "64M", 2 * MIB, 256 << 10, 6, 0x1234_5678);
}

/// The ~300 MB variant: `E2I_SLOW_TESTS=1 cargo test --release killed_moves_big`.
#[test]
fn killed_moves_big() {
    if std::env::var("E2I_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!("killed_moves_big: set E2I_SLOW_TESTS=1 to run the 300 MB variant");
        return;
    }
    // The real piece size (e2i::ops::move_fs::PIECE_BYTES).
    killed_moves(300 * MIB, "400M", 32 * MIB, 4 * MIB, 8, 0xdead_beef);
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

// ---- The journal knows its SOURCE: crash points, restored and replaced images, names ----

use e2i::ops::move_fs::{JournalOptions, MoveOptions, MoveReport};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

/// Piece and slice sizes of the crash tests: small, so a few MiB make many pieces and every
/// piece is written in several slices (kills land inside pieces).
const PIECE_KIB: u64 = 64;
const SLICE_KIB: u64 = 16;

/// A scratch folder on tmpfs when there is one with room (the crash tests sync a lot; a
/// kill leaves the page cache as it is, so tmpfs shows the same states as a disk).
fn scratch() -> tempfile::TempDir {
    mem_tempdir()
}

/// Raised by the in-process crash hook: the move stops there, as if killed.
struct Crashed;

thread_local! {
    /// (crash points passed, the one to stop at; 0: none).
    static CRASH: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

fn crash_hook() {
    CRASH.with(|c| {
        let (n, at) = c.get();
        c.set((n + 1, at));
        if n + 1 == at {
            // Unwinding without the panic hook: no message, the test catches it.
            resume_unwind(Box::new(Crashed));
        }
    });
}

/// One in-process run of the move, stopped at crash point `crash_at` (0: never). Returns
/// the run's result (`None`: stopped) and the crash points it passed.
fn move_once(
    disk: &Path,
    jopts: &JournalOptions,
    opts: &MoveOptions,
    crash_at: u64,
) -> (Option<e2i::Result<MoveReport>>, u64) {
    // Up to a minute: the fork-to-exec window is short, but a loaded machine can stretch it.
    for _ in 0..12_000 {
        CRASH.with(|c| c.set((0, crash_at)));
        let r = catch_unwind(AssertUnwindSafe(|| {
            e2i::ops::move_fs::move_in_place(
                disk,
                jopts,
                opts,
                &mut |_, _| {},
                &mut |_| {},
                &mut e2i::progress::NoProgress,
            )
        }));
        let n = CRASH.with(|c| c.get().0);
        match r {
            // Another test's child process, forked but not yet exec'd, can briefly hold a
            // copy of the descriptor that held SOURCE's lock: wait for it to let go.
            Ok(Err(e)) if e.to_string().contains("another e2i-move") => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(res) => return (Some(res), n),
            Err(p) if p.is::<Crashed>() => return (None, n),
            Err(p) => resume_unwind(p),
        }
    }
    panic!("{}: locked for a minute", disk.display());
}

/// Move a filesystem back and forth by awkward distances; for each move, stop it at crash
/// points (every one with E2I_SLOW_TESTS=1, else `trials` seeded ones plus the first and
/// last), stop the reruns at seeded points too, finish with a plain rerun, and compare the
/// whole SOURCE with an uninterrupted move: byte for byte the same.
fn crash_sweep(bs: &str, trials: usize, seed: u64) {
    let d = scratch();
    let img = mkfs_data(d.path(), "fs.img", "6M", 2 * MIB, 24, &["-b", bs]);
    let want = e2image_ra(&img, 0, &d.path().join("want.raw"));
    let disk = d.path().join("disk.img");
    let head = 512 << 10;
    embed(&img, &disk, head, 256 << 10, seed);
    let refd = d.path().join("ref.img");
    let jopts = JournalOptions {
        path: Some(d.path().join("j")),
        state_dir: Some(d.path().join("state")),
    };
    let slow = std::env::var("E2I_SLOW_TESTS").as_deref() == Ok("1");
    let piece = PIECE_KIB << 10;
    let bsz: i64 = bs.parse().unwrap();
    // Shorter than a piece (every piece saved), shorter than a block, longer than a piece
    // (no piece overlaps itself, later pieces overwrite earlier ones' sources), both ways.
    let far = (piece + piece / 4 + 512) as i64;
    let steps = [3 * bsz + 512, 1536, far, -far, -3 * bsz - 1536, -512];
    let mut rng = Rng(seed);
    let (mut at, mut runs, mut resumed, mut from_saves) = (head, 0u64, 0u64, 0u64);
    for step in steps {
        let to = (at as i64 + step) as u64;
        let opts = MoveOptions {
            src_offset: at,
            dest_offset: to,
            piece_bytes: piece,
            slice_bytes: (SLICE_KIB << 10) as usize,
            crash_point: Some(crash_hook),
            ..MoveOptions::default()
        };
        let orig = fs::read(&disk).unwrap();
        fs::write(&refd, &orig).unwrap();
        let _ = fs::remove_file(jopts.path.as_ref().unwrap());
        let (res, total) = move_once(&refd, &jopts, &opts, 0);
        res.expect("uninterrupted run").unwrap();
        let reference = fs::read(&refd).unwrap();
        assert!(
            e2image_ra(&refd, to, &d.path().join("got.raw")) == want,
            "uninterrupted move {at} -> {to} differs"
        );
        let points: Vec<u64> = if slow {
            (1..=total).collect()
        } else {
            let mut v = vec![1, total];
            v.extend((0..trials).map(|_| 1 + rng.below(total)));
            v
        };
        for &c in &points {
            fs::write(&disk, &orig).unwrap();
            let _ = fs::remove_file(jopts.path.as_ref().unwrap());
            let (res, _) = move_once(&disk, &jopts, &opts, c);
            assert!(
                res.is_none(),
                "move {at} -> {to}: crash point {c} of {total} not reached"
            );
            runs += 1;
            // Reruns, themselves stopped at seeded points, then one that finishes.
            let mut done = false;
            for again in 0..4 {
                let stop = if again < 3 { 1 + rng.below(total) } else { 0 };
                let (res, _) = move_once(&disk, &jopts, &opts, stop);
                runs += 1;
                if let Some(res) = res {
                    let rep = res.unwrap_or_else(|e| {
                        panic!("move {at} -> {to}, crashed at {c}: rerun refused: {e}")
                    });
                    resumed += u64::from(rep.resumed);
                    from_saves += rep.from_saves;
                    done = true;
                    break;
                }
            }
            assert!(done, "move {at} -> {to}: never finished");
            assert!(
                fs::read(&disk).unwrap() == reference,
                "move {at} -> {to} crashed at point {c} of {total}: SOURCE differs from an uninterrupted move"
            );
        }
        at = to;
        fs::write(&disk, &reference).unwrap();
    }
    eprintln!(
        "crash_sweep(bs {bs}): {runs} runs, {resumed} finished a resumed move ({from_saves} pieces from save records)"
    );
    // Resumes that copied pieces from the records the killed runs left, read a slice at a
    // time from the journal.
    assert!(resumed > 0 && from_saves > 0);
}

#[test]
fn crash_points_4k() {
    crash_sweep("4096", 12, 0x4b1d);
}

#[test]
fn crash_points_1k() {
    crash_sweep("1024", 12, 0x1c0ffee);
}

/// A small disk (`head` bytes, the filesystem, 1 MiB) and the e2image -ra image of the
/// filesystem alone.
fn small_disk(dir: &Path, name: &str, head: u64) -> (PathBuf, Vec<u8>) {
    let img = mkfs_data(
        dir,
        &format!("{name}.fs"),
        "8M",
        3 * MIB,
        30,
        &["-b", "4096"],
    );
    let want = e2image_ra(&img, 0, &dir.join(format!("{name}.want")));
    let disk = dir.join(name);
    embed(&img, &disk, head, MIB, 77);
    fs::remove_file(&img).unwrap();
    (disk, want)
}

/// e2i-move with the crash-test sizes and the state folder in `state`, killed (SIGKILL, by
/// the test hook) before its `kill_at`-th write (0: not killed). `cwd` for relative names.
fn move_cmd(args: &[&str], state: &Path, kill_at: u64, cwd: Option<&Path>) -> std::process::Output {
    let mut c = tool_cmd("e2i-move");
    c.args(args)
        .env("XDG_STATE_HOME", state)
        .env("E2I_MOVE_PIECE_KIB", PIECE_KIB.to_string())
        .env("E2I_MOVE_SLICE_KIB", SLICE_KIB.to_string())
        .env("E2I_MOVE_KILL_AT", kill_at.to_string());
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    run(&mut c)
}

/// Crash points of an uninterrupted run of `args` on a copy of `disk`.
fn crash_points_of(disk: &Path, args: &[&str], state: &Path) -> u64 {
    let mut c = tool_cmd("e2i-move");
    c.env("XDG_STATE_HOME", state)
        .env("E2I_MOVE_PIECE_KIB", PIECE_KIB.to_string())
        .env("E2I_MOVE_SLICE_KIB", SLICE_KIB.to_string())
        .env("E2I_MOVE_KILL_AT", "0");
    crash_points_with(disk, args, c)
}

/// Crash points of an uninterrupted run of `cmd` (its environment set, E2I_MOVE_KILL_AT=0,
/// no arguments yet) with `args` on a copy of `disk` (the last argument).
fn crash_points_with(disk: &Path, args: &[&str], mut cmd: Command) -> u64 {
    let copy = disk.with_extension("count");
    fs::copy(disk, &copy).unwrap();
    let mut a: Vec<&str> = args.to_vec();
    let cp = p(&copy).to_string();
    *a.last_mut().unwrap() = &cp;
    let o = run(cmd.args(&a).env("E2I_MOVE_KILL_AT", "0"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let _ = fs::remove_file(&copy);
    let mut j = copy.as_os_str().to_owned();
    j.push(".e2i-move");
    let _ = fs::remove_file(j);
    err.lines()
        .find_map(|l| {
            l.strip_suffix(" crash points")?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("crash point count")
}

fn killed(o: &std::process::Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

fn refused(o: &std::process::Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "expected a refusal: {err}");
    assert!(err.contains(what), "expected '{what}': {err}");
    assert_eq!(
        err.lines().filter(|l| !l.contains("test hook")).count(),
        1,
        "{err}"
    );
    err
}

/// Kill a move, restore SOURCE from a backup, run the same move again: it is refused
/// (nothing written) or, when the kill came before any byte moved, it moves correctly.
/// After deleting the journal the move works. A backup put back under the name (a new
/// inode) is refused as another file.
#[test]
fn restored_source_is_never_resumed_over() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = small_disk(d.path(), "disk.img", MIB);
    let backup = d.path().join("backup.img");
    fs::copy(&disk, &backup).unwrap();
    let orig = fs::read(&disk).unwrap();
    for (to, shift) in [
        (MIB + 3072, "sub-block"),
        (2 * MIB + 512, "longer than a piece"),
    ] {
        let args = ["-o", "1048576", "-O", &to.to_string(), p(&disk)];
        fs::copy(&backup, &disk).unwrap();
        let total = crash_points_of(&disk, &args, &state);
        let (mut refusals, mut moved) = (0, 0);
        for c in [1, 2, total / 4, total / 2, total * 3 / 4, total - 1] {
            fs::copy(&backup, &disk).unwrap();
            let _ = fs::remove_file(journal_of(&disk));
            assert!(
                killed(&move_cmd(&args, &state, c, None)),
                "{shift}: not killed at {c}"
            );
            // Restored in place, as `cp backup disk` does (same inode).
            fs::copy(&backup, &disk).unwrap();
            let o = move_cmd(&args, &state, 0, None);
            if o.status.success() {
                moved += 1;
                assert!(
                    e2image_ra(&disk, to, &d.path().join("got.raw")) == want,
                    "{shift}, killed at {c}: the rerun over the backup corrupted the filesystem"
                );
                fsck_at(&disk, to);
            } else {
                refused(&o, "as it was before the move (restored from a backup?)");
                assert!(
                    fs::read(&disk).unwrap() == orig,
                    "{shift}, killed at {c}: refusal wrote"
                );
                refusals += 1;
            }
        }
        assert!(
            refusals >= 3 && moved >= 1,
            "{shift}: {refusals} refused, {moved} moved"
        );
        // Starting over, as the message says: delete the journal.
        fs::remove_file(journal_of(&disk)).unwrap();
        ok(&move_cmd(&args, &state, 0, None));
        assert!(e2image_ra(&disk, to, &d.path().join("got.raw")) == want);
        fsck_at(&disk, to);
    }
    // The backup renamed over SOURCE: another inode, refused as another file.
    let args = ["-o", "1048576", "-O", "1051648", p(&disk)];
    fs::copy(&backup, &disk).unwrap();
    let _ = fs::remove_file(journal_of(&disk));
    let total = crash_points_of(&disk, &args, &state);
    assert!(killed(&move_cmd(&args, &state, total / 2, None)));
    let fresh = d.path().join("fresh.img");
    fs::copy(&backup, &fresh).unwrap();
    fs::rename(&fresh, &disk).unwrap();
    let err = refused(&move_cmd(&args, &state, 0, None), "another file or device");
    assert!(err.contains("--journal"), "{err}");
    assert!(fs::read(&disk).unwrap() == orig);
}

/// A move killed under one name of SOURCE resumes under every other: the real path after a
/// symlink and back, a hard link in another folder, a relative name.
#[test]
fn killed_move_resumes_under_every_name() {
    let d = tempdir();
    let state = d.path().join("state");
    let real_dir = d.path().join("real");
    let other_dir = d.path().join("other");
    fs::create_dir_all(&real_dir).unwrap();
    fs::create_dir_all(&other_dir).unwrap();
    let (disk, want) = small_disk(&real_dir, "disk.img", MIB);
    let orig = fs::read(&disk).unwrap();
    let link = d.path().join("link.img");
    std::os::unix::fs::symlink(&disk, &link).unwrap();
    let hard = other_dir.join("hard.img");
    fs::hard_link(&disk, &hard).unwrap();
    let to = (MIB + 3072).to_string();
    let with = |name: &str| -> Vec<String> {
        ["-o", "1048576", "-O", &to, name]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let (l, r, h) = (p(&link), p(&disk), p(&hard));
    let cases: [(&str, &str, Option<&Path>); 5] = [
        (l, r, None),
        (r, l, None),
        (r, h, None),
        (h, "./disk.img", Some(&real_dir)),
        ("disk.img", l, Some(&real_dir)),
    ];
    let total = {
        let a = with(r);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        crash_points_of(&disk, &a, &state)
    };
    for (i, (first, then, cwd)) in cases.into_iter().enumerate() {
        fs::write(&disk, &orig).unwrap();
        for j in [journal_of(&disk), journal_of(&hard)] {
            let _ = fs::remove_file(j);
        }
        let a = with(first);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let kill = total / 3 + i as u64 * total / 9;
        let o = move_cmd(
            &a,
            &state,
            kill,
            if first.contains('/') { None } else { cwd },
        );
        assert!(
            killed(&o),
            "{first}: not killed at {kill}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let b = with(then);
        let b: Vec<&str> = b.iter().map(String::as_str).collect();
        let o = move_cmd(&b, &state, 0, cwd);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "killed as {first}, rerun as {then}: {err}"
        );
        assert!(
            err.contains("resuming"),
            "killed as {first}, rerun as {then}: no resume: {err}"
        );
        assert!(
            e2image_ra(&disk, MIB + 3072, &d.path().join("got.raw")) == want,
            "killed as {first}, rerun as {then}: filesystem differs"
        );
        fsck_at(&disk, MIB + 3072);
        // Every name now knows the move is finished.
        for name in [l, r, h] {
            let a = with(name);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let out = ok(&move_cmd(&a, &state, 0, None));
            assert!(out.contains("already finished"), "{name}: {out}");
        }
    }
    // The journal of a file lives next to its resolved path, never next to a symlink.
    assert!(!journal_of(&link).starts_with(d.path().join("link")));
    assert!(!d.path().join("link.img.e2i-move").exists());
}

/// A move killed under the default journal, then finished under `--journal other.j` (after
/// restoring SOURCE), then run again with the default journal: the stale default journal is
/// never replayed. And while it is not stale, `--journal other.j` may not start afresh.
#[test]
fn stale_default_journal_is_never_replayed() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = small_disk(d.path(), "disk.img", MIB);
    let backup = d.path().join("backup.img");
    fs::copy(&disk, &backup).unwrap();
    let to = MIB + 3072;
    let args = ["-o", "1048576", "-O", &to.to_string(), p(&disk)];
    let other = d.path().join("other.j");
    let with_other = [
        "--journal",
        p(&other),
        "-o",
        "1048576",
        "-O",
        &to.to_string(),
        p(&disk),
    ];
    let total = crash_points_of(&disk, &args, &state);
    assert!(killed(&move_cmd(&args, &state, total / 2, None)));
    let half = fs::read(&disk).unwrap();
    // The default journal holds a resumable move: a fresh one under another journal would
    // scan a half-moved filesystem.
    let err = refused(&move_cmd(&with_other, &state, 0, None), "half-moved state");
    assert!(
        err.contains(&journal_of(&disk).display().to_string()),
        "{err}"
    );
    assert!(fs::read(&disk).unwrap() == half && !other.exists());
    // Restored: the default journal is stale now; the move under other.j runs.
    fs::copy(&backup, &disk).unwrap();
    let o = move_cmd(&with_other, &state, 0, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("left alone"), "{err}");
    assert!(e2image_ra(&disk, to, &d.path().join("got.raw")) == want);
    let done = fs::read(&disk).unwrap();
    // The default command again: the stale journal is refused, nothing written.
    refused(&move_cmd(&args, &state, 0, None), "already complete");
    assert!(fs::read(&disk).unwrap() == done);
    fsck_at(&disk, to);
    // other.j knows its move is finished.
    let out = ok(&move_cmd(&with_other, &state, 0, None));
    assert!(out.contains("already finished"), "{out}");
}

/// A qcow2 SOURCE: the clone reads its virtual disk (`-o` inside it) and equals e2image -ra
/// of the raw equivalent (qemu-img convert -O raw), also compressed and with -O, -c and
/// --metadata-only; the in-place form refuses it and touches nothing.
#[test]
fn qcow2_source() {
    let d = tempdir();
    let img = mkfs_data(d.path(), "fs.img", "24M", 6 * MIB, 40, &["-b", "1024"]);
    let disk = d.path().join("disk.raw");
    let off = MIB + 512 * 3;
    embed(&img, &disk, off, MIB, 9);
    for compress in [false, true] {
        let q = d.path().join("disk.qcow2");
        let _ = fs::remove_file(&q);
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-f", "raw", "-O", "qcow2"]);
        if compress {
            c.arg("-c");
        }
        assert!(run(c.arg(&disk).arg(&q)).status.success());
        let raw = d.path().join("equivalent.raw");
        let _ = fs::remove_file(&raw);
        assert!(
            run(Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(&q)
                .arg(&raw))
            .status
            .success()
        );
        for dst_off in [0, 2 * MIB + 1024] {
            let want = d.path().join("want.raw");
            let _ = fs::remove_file(&want);
            let st = run(Command::new("e2image")
                .args(["-ra", "-o", &off.to_string(), "-O", &dst_off.to_string()])
                .arg(&raw)
                .arg(&want));
            assert!(st.status.success());
            let got = d.path().join("got.raw");
            let _ = fs::remove_file(&got);
            ok(&e2i_move(&[
                "-o",
                &off.to_string(),
                "-O",
                &dst_off.to_string(),
                p(&q),
                p(&got),
            ]));
            assert!(
                fs::read(&got).unwrap() == fs::read(&want).unwrap(),
                "qcow2 (compressed: {compress}) -O {dst_off}: clone differs from e2image -ra"
            );
            // -c into the identical target: nothing to write.
            let out = ok(&e2i_move(&[
                "-c",
                "-o",
                &off.to_string(),
                "-O",
                &dst_off.to_string(),
                p(&q),
                p(&got),
            ]));
            assert!(out.contains("already contained"), "{out}");
        }
        let meta_want = d.path().join("meta_want.raw");
        let _ = fs::remove_file(&meta_want);
        assert!(
            run(Command::new("e2image").arg("-r").arg(&img).arg(&meta_want))
                .status
                .success()
        );
        let meta = d.path().join("meta.raw");
        let _ = fs::remove_file(&meta);
        ok(&e2i_move(&[
            "--metadata-only",
            "-o",
            &off.to_string(),
            p(&q),
            p(&meta),
        ]));
        assert!(fs::read(&meta).unwrap() == fs::read(&meta_want).unwrap());
        // In place: refused, nothing touched, no journal.
        let before = fs::read(&q).unwrap();
        let o = e2i_move(&["-o", &off.to_string(), "-O", "0", p(&q)]);
        refused(&o, "qcow2");
        assert!(fs::read(&q).unwrap() == before);
        assert!(!journal_of(&q).exists());
    }
}

/// `--journal` in a folder that does not exist: an error; no folder is made, SOURCE is not
/// touched. DEST naming SOURCE is refused; a damaged journal is refused with what is wrong.
#[test]
fn journal_and_dest_mistakes() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, _) = small_disk(d.path(), "disk.img", MIB);
    let orig = fs::read(&disk).unwrap();
    let missing = d.path().join("missing/sub/j");
    let o = e2i_move(&["--journal", p(&missing), "-o", "1M", "-O", "2M", p(&disk)]);
    refused(&o, "does not exist");
    assert!(!d.path().join("missing").exists());
    assert!(fs::read(&disk).unwrap() == orig);
    // DEST is SOURCE under another name.
    let link = d.path().join("same.img");
    std::os::unix::fs::symlink(&disk, &link).unwrap();
    refused(&e2i_move(&["-O", "2M", p(&disk), p(&link)]), "is SOURCE");
    assert!(fs::read(&disk).unwrap() == orig);
    // A damaged journal (header changed): refused with its kind, nothing written.
    let args = ["-o", "1048576", "-O", "1051648", p(&disk)];
    let total = crash_points_of(&disk, &args, &state);
    assert!(killed(&move_cmd(&args, &state, total / 2, None)));
    let half = fs::read(&disk).unwrap();
    let j = journal_of(&disk);
    let mut jb = fs::read(&j).unwrap();
    jb[40] ^= 0x55;
    fs::write(&j, &jb).unwrap();
    let err = refused(
        &move_cmd(&args, &state, 0, None),
        "header checksum mismatch",
    );
    assert!(err.contains("move journal"), "{err}");
    assert!(fs::read(&disk).unwrap() == half);
    // A journal of the old format.
    jb[40] ^= 0x55;
    jb[8] = 1;
    fs::write(&j, &jb).unwrap();
    refused(&move_cmd(&args, &state, 0, None), "format version 1");
    assert!(fs::read(&disk).unwrap() == half);
}

/// Kill a move of a block device (a loop device; needs root), run it again through another
/// device node name: the journal, kept in the state folder by device number, is found.
#[test]
fn block_device_move_resumes_under_another_name() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        eprintln!("block_device_move_resumes_under_another_name: needs root; not run");
        return;
    }
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = small_disk(d.path(), "disk.img", MIB);
    let o = run(Command::new("losetup").args(["-f", "--show"]).arg(&disk));
    assert!(o.status.success(), "losetup failed");
    let dev = Loop(String::from_utf8_lossy(&o.stdout).trim().to_string());
    let alias = d.path().join("dev-alias");
    std::os::unix::fs::symlink(&dev.0, &alias).unwrap();
    let to = (MIB + 3072).to_string();
    let args = ["-o", "1048576", "-O", to.as_str(), dev.0.as_str()];
    // The count from a copy would be of a file; count on the device itself, then restore.
    let orig = fs::read(&disk).unwrap();
    let o = move_cmd(&args, &state, 0, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let total: u64 = String::from_utf8_lossy(&o.stderr)
        .lines()
        .find_map(|l| {
            l.strip_suffix(" crash points")?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap();
    let journals: Vec<_> = fs::read_dir(state.join("e2i"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        journals
            .iter()
            .any(|n| n.to_string_lossy().starts_with("blockdev-")),
        "{journals:?}"
    );
    for e in fs::read_dir(state.join("e2i")).unwrap().flatten() {
        if e.path().is_file() {
            fs::remove_file(e.path()).unwrap();
        }
    }
    {
        let f = fs::OpenOptions::new().write(true).open(&dev.0).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&orig, 0).unwrap();
        f.sync_all().unwrap();
    }
    assert!(killed(&move_cmd(&args, &state, total / 2, None)));
    let b = ["-o", "1048576", "-O", to.as_str(), p(&alias)];
    let o = move_cmd(&b, &state, 0, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("resuming"), "{err}");
    assert!(e2image_ra(Path::new(&dev.0), MIB + 3072, &d.path().join("got.raw")) == want);
}

/// `-n` on an interrupted move: lists what is still to move, checks SOURCE against the
/// journal as a real run would, and changes neither.
#[test]
fn dry_run_of_an_interrupted_move() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = small_disk(d.path(), "disk.img", MIB);
    let backup = d.path().join("backup.img");
    fs::copy(&disk, &backup).unwrap();
    let args = ["-o", "1048576", "-O", "1051648", p(&disk)];
    let total = crash_points_of(&disk, &args, &state);
    assert!(killed(&move_cmd(&args, &state, total / 2, None)));
    let (half, journal) = (
        fs::read(&disk).unwrap(),
        fs::read(journal_of(&disk)).unwrap(),
    );
    let dry = ["-n", "-o", "1048576", "-O", "1051648", p(&disk)];
    let o = move_cmd(&dry, &state, 0, None);
    let listed: u64 = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(blocks_in_line)
        .sum();
    assert!(
        o.status.success() && listed > 0,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let full: u64 = {
        let o = e2i_move(&["-n", "-o", "1048576", "-O", "1051648", p(&backup)]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(blocks_in_line)
            .sum()
    };
    assert!(
        listed < full,
        "{listed} of {full} blocks listed after half the move"
    );
    assert!(fs::read(&disk).unwrap() == half);
    assert!(fs::read(journal_of(&disk)).unwrap() == journal);
    // Restored: -n refuses as the real run would.
    fs::copy(&backup, &disk).unwrap();
    refused(&move_cmd(&dry, &state, 0, None), "before the move");
    fs::write(&disk, &half).unwrap();
    ok(&move_cmd(&args, &state, 0, None));
    assert!(e2image_ra(&disk, 1051648, &d.path().join("got.raw")) == want);
}

/// A half-moved image copied to another file: without `--journal` its move is not started
/// afresh over the half-moved data; with `--journal` naming the original's journal, whose
/// state the copy holds exactly, it resumes (with a note). A SOURCE whose size the move
/// cannot have given it is refused.
#[test]
fn copied_half_moved_image() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, want) = small_disk(d.path(), "disk.img", MIB);
    let to = MIB + 3072;
    let args = ["-o", "1048576", "-O", &to.to_string(), p(&disk)];
    let total = crash_points_of(&disk, &args, &state);
    assert!(killed(&move_cmd(&args, &state, total / 2, None)));
    let copy = d.path().join("copy.img");
    fs::copy(&disk, &copy).unwrap();
    let half = fs::read(&copy).unwrap();
    let on_copy = ["-o", "1048576", "-O", &to.to_string(), p(&copy)];
    let o = move_cmd(&on_copy, &state, 0, None);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        fs::read(&copy).unwrap() == half,
        "a fresh move ran over the half-moved copy"
    );
    let j = journal_of(&disk);
    let explicit = [
        "--journal",
        p(&j),
        "-o",
        "1048576",
        "-O",
        &to.to_string(),
        p(&copy),
    ];
    let o = move_cmd(&explicit, &state, 0, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("was written for") && err.contains("resuming"),
        "{err}"
    );
    assert!(e2image_ra(&copy, to, &d.path().join("got.raw")) == want);
    fsck_at(&copy, to);
    // The original, still half-moved, while its journal now records the move as finished
    // (on the copy): no fresh move runs over it.
    assert!(fs::read(&disk).unwrap() == half);
    refused(&move_cmd(&args, &state, 0, None), "may be half-moved");
    assert!(fs::read(&disk).unwrap() == half);
}

/// A SOURCE whose size the interrupted move cannot have given it (shortened) is refused.
#[test]
fn shortened_source_is_refused() {
    let d = tempdir();
    let state = d.path().join("state");
    let (disk, _) = small_disk(d.path(), "disk.img", MIB);
    let args = ["-o", "1048576", "-O", "1051648", p(&disk)];
    let total = crash_points_of(&disk, &args, &state);
    assert!(killed(&move_cmd(&args, &state, total / 2, None)));
    let len = fs::metadata(&disk).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(len - 4096).unwrap();
    let before = fs::read(&disk).unwrap();
    refused(&move_cmd(&args, &state, 0, None), "cannot have made that");
    assert!(fs::read(&disk).unwrap() == before);
}

/// The number in "N blocks already contained the data to be copied" (0 when not said).
fn already_contained(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_suffix(" blocks already contained the data to be copied"))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// An in-place `-c` move onto bytes that already hold the filesystem: pieces of several MiB
/// are compared with their destination a chunk at a time, and nothing is written. With one
/// byte different near the end of a file's data, the piece holding it is written (the
/// chunks before it compared equal), and the destination is the filesystem again.
#[test]
fn in_place_check_compares_pieces_chunk_by_chunk() {
    let d = tempdir();
    let img = mkfs_data(d.path(), "fs.img", "24M", 6 * MIB, 3, &[]);
    let orig = fs::read(&img).unwrap();
    let disk = d.path().join("disk.raw");
    let twice = [orig.clone(), orig.clone()].concat();
    fs::write(&disk, &twice).unwrap();
    let off = orig.len() as u64;
    let move_c = || ok(&e2i_move(&["-c", "-O", &off.to_string(), p(&disk)]));
    let all = already_contained(&move_c());
    assert!(all > 0);
    assert!(fs::read(&disk).unwrap() == twice);
    // File f0 (about 2 MiB of random bytes, as mkfs_data made them), found in the image;
    // spoil a byte near the end of its copy.
    let mut rng = Rng(0x5eed ^ (6 * MIB) ^ 3);
    let n = (2 * MIB) as usize + rng.below(4096) as usize;
    let file = rng.bytes(n);
    assert!(file.len() as u64 > 3 * MIB / 2);
    let at = orig
        .windows(64)
        .position(|w| w == &file[..64])
        .expect("the file's data in the image");
    let spoil = off as usize + at + file.len() - 100;
    let mut spoiled = twice.clone();
    spoiled[spoil] ^= 0xff;
    fs::write(&disk, &spoiled).unwrap();
    let some = already_contained(&move_c());
    assert!(
        some < all,
        "{some} of {all} blocks counted as already there"
    );
    assert!(fs::read(&disk).unwrap() == twice);
}

/// An in-place move holds one piece (32 MiB) and a few slices, not whole pieces in flight
/// (three, 96 MiB): the heap of moving 40 MiB of data by 1 MiB (every piece overlaps itself
/// and is saved), counted on this thread, which makes the move's buffers.
#[test]
fn in_place_move_holds_one_piece() {
    use crate::ALLOC;
    let d = tempdir();
    let img = mkfs_data(d.path(), "fs.img", "64M", 40 * MIB, 8, &[]);
    let want = e2image_ra(&img, 0, &d.path().join("want.raw"));
    let jopts = JournalOptions {
        path: Some(d.path().join("j")),
        state_dir: Some(d.path().join("state")),
    };
    let opts = MoveOptions {
        dest_offset: MIB,
        ..MoveOptions::default()
    };
    ALLOC.reset_peak();
    let base = ALLOC.peak();
    let (res, _) = move_once(&img, &jopts, &opts, 0);
    let peak = ALLOC.peak() - base;
    let rep = res.unwrap().unwrap();
    assert!(rep.saved_pieces >= 2 && rep.pieces >= 2, "{rep:?}");
    assert!(e2image_ra(&img, MIB, &d.path().join("got.raw")) == want);
    // Measured: 34.1 MiB (96.0 MiB with whole pieces in flight).
    assert!(peak < 40 << 20, "{peak} bytes");
}

/// Move `img` (reset to `orig`, its journal removed) stopped at crash point 1, 2, … `total`
/// until `pick` finds the journal left as wanted: what `pick` returns, SOURCE and the
/// journal left so.
fn first_crash_where<T>(
    img: &Path,
    orig: &[u8],
    jopts: &JournalOptions,
    opts: &MoveOptions,
    total: u64,
    mut pick: impl FnMut(&e2i::ops::move_journal::Journal) -> Option<T>,
) -> Option<T> {
    let jpath = jopts.path.as_ref().expect("a journal path");
    for c in 1..=total {
        fs::write(img, orig).unwrap();
        let _ = fs::remove_file(jpath);
        let (res, _) = move_once(img, jopts, opts, c);
        assert!(res.is_none(), "crash point {c} of {total} not reached");
        let j = e2i::ops::move_journal::Journal::open(jpath, false)
            .unwrap()
            .unwrap();
        if let Some(t) = pick(&j) {
            return Some(t);
        }
    }
    None
}

/// A resumed in-place move holds what a fresh one holds: the save records an interrupted run
/// left (up to two pieces, 64 MiB) are read from the journal a slice at a time as their
/// pieces are copied, not loaded first. Stopped where two pieces are saved and none is
/// committed, the rerun's heap stays under the fresh move's bound, and SOURCE ends as after
/// an uninterrupted move.
#[test]
fn resumed_in_place_move_holds_one_piece() {
    use crate::ALLOC;
    use e2i::ops::move_journal::State;
    let d = tempdir();
    let img = mkfs_data(d.path(), "fs.img", "64M", 40 * MIB, 8, &[]);
    let orig = fs::read(&img).unwrap();
    let jpath = d.path().join("j");
    let jopts = JournalOptions {
        path: Some(jpath.clone()),
        state_dir: Some(d.path().join("state")),
    };
    let opts = MoveOptions {
        dest_offset: MIB,
        slice_bytes: 4 << 20,
        crash_point: Some(crash_hook),
        ..MoveOptions::default()
    };
    let (res, total) = move_once(&img, &jopts, &opts, 0);
    assert!(res.unwrap().unwrap().pieces >= 2);
    let reference = fs::read(&img).unwrap();
    // The first point where the journal holds two save records the rerun will use: the
    // checkpoint after the first piece is written and the second saved.
    let found = first_crash_where(&img, &orig, &jopts, &opts, total, |j| {
        let running = matches!(j.state(), State::Running { .. });
        let next = j.next_piece();
        let saved = j
            .saved()
            .unwrap()
            .iter()
            .filter(|s| s.piece >= next)
            .count();
        (running && saved == 2).then_some(())
    });
    assert!(found.is_some(), "no crash point leaves two save records");
    ALLOC.reset_peak();
    let base = ALLOC.peak();
    let (res, _) = move_once(
        &img,
        &jopts,
        &MoveOptions {
            crash_point: None,
            ..opts
        },
        0,
    );
    let peak = ALLOC.peak() - base;
    let rep = res.unwrap().unwrap();
    assert!(rep.resumed && rep.from_saves == 2, "{rep:?}");
    assert!(fs::read(&img).unwrap() == reference);
    // Measured: 34.1 MiB (78.9 MiB with the two records loaded before copying).
    assert!(peak < 40 << 20, "{peak} bytes");
}

thread_local! {
    /// A byte of a journal to flip at the next crash point ([`tamper_hook`]).
    static TAMPER: std::cell::RefCell<Option<(PathBuf, u64)>> = const { std::cell::RefCell::new(None) };
}

/// A crash hook that changes the journal instead of stopping the move: another program
/// writing it while a move runs.
fn tamper_hook() {
    use std::os::unix::fs::FileExt;
    if let Some((p, at)) = TAMPER.with(|t| t.borrow_mut().take()) {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[!b[0]], at).unwrap();
    }
}

/// A resumed move reads a save record from the journal as it copies the piece (not from
/// memory filled when it checked the journal): a record changed in between (another
/// program writing the journal) fails its checksum and stops the move before anything of
/// that piece is written. The piece's source is still intact (the ordering), so a rerun
/// checks it there and finishes the move as an uninterrupted one.
#[test]
fn a_save_record_changed_during_a_resume_stops_it_before_its_piece() {
    use e2i::ops::move_journal::State;
    let d = tempdir();
    let img = mkfs_data(d.path(), "fs.img", "64M", 40 * MIB, 8, &[]);
    let orig = fs::read(&img).unwrap();
    let jpath = d.path().join("j");
    let jopts = JournalOptions {
        path: Some(jpath.clone()),
        state_dir: Some(d.path().join("state")),
    };
    let opts = MoveOptions {
        dest_offset: MIB,
        piece_bytes: 8 * MIB,
        slice_bytes: 1 << 20,
        crash_point: Some(crash_hook),
        ..MoveOptions::default()
    };
    let (res, total) = move_once(&img, &jopts, &opts, 0);
    res.unwrap().unwrap();
    let reference = fs::read(&img).unwrap();
    // Stopped where two large pieces k and k + 1 are saved and k is not committed: before
    // the resumed run's first write its reader holds piece k and one spare 2 MiB slice of
    // piece k + 1, so a byte of that record past 4 MiB is read after it.
    let big = |pc: &e2i::ops::move_journal::Piece| pc.bytes() > 6 * MIB;
    let found = first_crash_where(&img, &orig, &jopts, &opts, total, |j| {
        let State::Running { next } = j.state() else {
            return None;
        };
        let saved: Vec<u64> = j.saved().unwrap().iter().map(|s| s.piece).collect();
        let k = next as usize;
        (saved == [next, next + 1] && big(&j.pieces()[k]) && big(&j.pieces()[k + 1]))
            .then(|| (k, j.pieces()[k + 1].clone()))
    });
    let (k, p1) = found.expect("no crash point leaves two large pieces saved");
    let from = (p1.src.end - 2 * MIB) as usize;
    let window = (from..p1.src.end as usize - 64)
        .step_by(4096)
        .map(|i| &orig[i..i + 64])
        .find(|w| w.iter().any(|&b| b != w[0]))
        .expect("data in the piece's last 2 MiB");
    let jbytes = fs::read(&jpath).unwrap();
    let at = jbytes.windows(64).position(|w| w == window).unwrap() as u64;
    let killed = fs::read(&img).unwrap();
    TAMPER.with(|t| *t.borrow_mut() = Some((jpath.clone(), at)));
    let tampering = MoveOptions {
        crash_point: Some(tamper_hook),
        ..opts.clone()
    };
    let (res, _) = move_once(&img, &jopts, &tampering, 0);
    let err = res.unwrap().unwrap_err();
    assert!(
        matches!(
            err.corrupt_kind(),
            Some(e2i::error::CorruptKind::MoveJournalSaveChanged { piece, .. }) if *piece == k as u64 + 1
        ),
        "{err}"
    );
    let now = fs::read(&img).unwrap();
    let dst = p1.dst.start as usize..p1.dst.end as usize;
    assert!(
        now[dst.clone()] == killed[dst],
        "piece {} was written",
        k + 1
    );
    let (res, _) = move_once(
        &img,
        &jopts,
        &MoveOptions {
            crash_point: None,
            ..opts
        },
        0,
    );
    let rep = res.unwrap().unwrap();
    assert!(rep.resumed && rep.from_saves == 1, "{rep:?}");
    assert!(fs::read(&img).unwrap() == reference);
}
