//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of a built tool (cargo builds every binary of the package before its tests).
/// `E2I_TEST_BIN_DIR` points the tests at other binaries (say, an older build, to see a test
/// fail on the behaviour it guards against).
pub fn tool(name: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("E2I_TEST_BIN_DIR") {
        return PathBuf::from(d).join(name);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join(name)
}

thread_local! {
    /// This test's own state folder: libtest runs each test on a thread of its own, and
    /// the folder is removed when that thread ends.
    static STATE_HOME: tempfile::TempDir = tempdir();
}

/// The state folder ($XDG_STATE_HOME) of the tools this test runs through [`tool_cmd`]
/// and [`tool_in_sh`]: e2i-move writes its journal index there, the other tools read it,
/// and a test must never touch the real user's (~/.local/state). The same folder for
/// every run of one test (a rerun finds what an earlier run indexed), another for each
/// test (and for each thread a test starts).
pub fn state_home() -> PathBuf {
    STATE_HOME.with(|d| d.path().to_path_buf())
}

/// A command running tool `name` with this test's own state folder ([`state_home`]); a
/// test that needs another sets XDG_STATE_HOME again.
pub fn tool_cmd(name: &str) -> Command {
    let mut c = Command::new(tool(name));
    c.env("XDG_STATE_HOME", state_home());
    c
}

/// `sh -c SCRIPT sh TOOL`: tool `name` started by a shell script (to change a limit, a
/// signal's disposition or a descriptor first), which finds its path as `$1` and as the
/// first word of `"$@"` (arguments added to the command follow it), with this test's own
/// state folder ([`state_home`]).
pub fn tool_in_sh(script: &str, name: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(script)
        .arg("sh")
        .arg(tool(name))
        .env("XDG_STATE_HOME", state_home());
    c
}

/// Run a command and return its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A fresh temporary directory in memory (/dev/shm) when that has room to spare (1 GiB
/// free), else [`tempdir`]: a small /dev/shm (64 MiB in a default container), shared by
/// the tests running in parallel, would fill up and fail whichever test wrote last.
pub fn mem_tempdir() -> tempfile::TempDir {
    let roomy = rustix::fs::statvfs("/dev/shm")
        .is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) >= 1 << 30);
    if roomy {
        tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempdir())
    } else {
        tempdir()
    }
}

/// `mkfs.ext4 -d TREE` into `img` of `size`, root-owned, at a fixed time; `extra` are mkfs
/// options.
pub fn mkfs_from(tree: &Path, img: &Path, size: &str, extra: &[&str]) {
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0"])
        .args(extra)
        .arg("-d")
        .arg(tree)
        .arg(img)
        .arg(size)
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .status()
        .expect("mkfs.ext4");
    assert!(st.success(), "mkfs.ext4 {extra:?} failed");
}

/// Make a small ext4 image with `mkfs.ext4 -d` of a little tree; `extra` are mkfs options.
pub fn mkfs(dir: &Path, name: &str, size: &str, extra: &[&str]) -> PathBuf {
    let tree = dir.join(format!("{name}.tree"));
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    for i in 0..30 {
        std::fs::write(
            tree.join(format!("f{i}")),
            format!("file {i}\n").repeat(i * 40),
        )
        .expect("write");
    }
    std::os::unix::fs::symlink("sub/target", tree.join("link")).expect("symlink");
    let img = dir.join(name);
    mkfs_from(&tree, &img, size, extra);
    img
}

/// Wait until `child` stops (SIGSTOP, e.g. from e2i-move's E2I_MOVE_STOP_AT hook): waitpid
/// with WUNTRACED reports it without reaping the child, so `child.wait()` still works.
pub fn wait_stopped(child: &std::process::Child) {
    use rustix::process::{Pid, WaitOptions, waitpid};
    let pid = Pid::from_raw(child.id() as i32).expect("a child's pid");
    let (_, st) = waitpid(Some(pid), WaitOptions::UNTRACED)
        .expect("waitpid")
        .expect("a status");
    assert!(st.stopped(), "the child did not stop at its hook: {st:?}");
}

/// A child killed (SIGKILL, which also ends a stopped one) and reaped on drop, unless taken
/// back with [`Reaper::take`]: a test that fails while it holds a mover stopped at a hook
/// must not leave the mover behind.
pub struct Reaper(Option<std::process::Child>);

impl Reaper {
    pub fn new(child: std::process::Child) -> Reaper {
        Reaper(Some(child))
    }
    pub fn child(&self) -> &std::process::Child {
        self.0.as_ref().expect("a child")
    }
    pub fn child_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("a child")
    }
    pub fn take(mut self) -> std::process::Child {
        self.0.take().expect("a child")
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start `e2i-move ARGS DISK` (its state folder `state`, pieces of `piece_kib` KiB, stderr
/// piped) and wait until its test hook stops it (SIGSTOP) before its third write: its journal
/// begun, SOURCE locked, a piece under way; no timing involved. Killed when dropped;
/// [`resume_stopped`] lets it go on.
pub fn held_mover(args: &[&str], disk: &Path, state: &Path, piece_kib: u64) -> Reaper {
    let mover = Reaper::new(
        tool_cmd("e2i-move")
            .args(args)
            .arg(disk)
            .env("XDG_STATE_HOME", state)
            .env("E2I_MOVE_PIECE_KIB", piece_kib.to_string())
            .env("E2I_MOVE_STOP_AT", "3")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_stopped(mover.child());
    mover
}

/// Let a child stopped by [`wait_stopped`] go on (SIGCONT).
pub fn resume_stopped(child: &std::process::Child) {
    use rustix::process::{Pid, Signal, kill_process};
    let pid = Pid::from_raw(child.id() as i32).expect("a child's pid");
    kill_process(pid, Signal::CONT).expect("SIGCONT");
}

/// Wait until `child` stops at its test hook, send it signal `sig` (a name for `kill -s`),
/// let it go on, and collect how it ended.
pub fn signal_when_stopped(child: Reaper, sig: &str) -> std::process::Output {
    wait_stopped(child.child());
    send_signal(child.child().id(), sig);
    resume_stopped(child.child());
    child.take().wait_with_output().unwrap()
}

/// Send signal `sig` (a name for `kill -s`) to process `pid`, a tool this test started. A
/// signal this test process ignores (the suite started under nohup, or as a background
/// job of a script: SIGINT and SIGQUIT) is ignored by the tools it starts too, and a run
/// held for the signal would wait for it for an hour: that is said at once instead.
pub fn send_signal(pid: u32, sig: &str) {
    let n = sh(Command::new("bash").args(["-c", "kill -l \"$1\"", "bash", sig]));
    let n: u32 = text(&n.stdout).trim().parse().expect("a signal number");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| n >= 1 && m & (1 << (n - 1)) != 0);
    if ignored {
        // Not left waiting for the hour: SIGKILL cannot be ignored.
        let _ = Command::new("kill")
            .args(["-s", "KILL", &pid.to_string()])
            .status();
    }
    assert!(
        !ignored,
        "SIG{sig} is ignored by this test run (started under nohup or as a background job?), so the tools it starts ignore it too: run the suite with default signal handling, as ci/test.sh from a shell or CI does"
    );
    sh(Command::new("kill").args(["-s", sig, &pid.to_string()]));
}

/// Bytes a tool printed, as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `what` exited 0; otherwise the panic shows its exit code and output.
pub fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: exit {:?}: {}{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// Run `cmd` and require exit 0; otherwise the panic shows the command (program,
/// arguments, environment set), its exit code and its output. Returns the output.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Output {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{cmd:?}: exit {:?}: {}{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

/// `what` exited 1; its stderr.
pub fn failed(o: &Output, what: &str) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}: expected exit 1: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stderr)
}

/// A loop device over `file` (extra `losetup` options such as `-o`), detached on drop,
/// also when the test fails.
pub struct Loop(pub String);

impl Loop {
    pub fn new(file: &Path, extra: &[&str]) -> Loop {
        let o = run(Command::new("losetup")
            .args(["-f", "--show"])
            .args(extra)
            .arg(file));
        ok(&o, "losetup");
        Loop(text(&o.stdout).trim().to_string())
    }
    pub fn path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A mount (`mount OPTS… SOURCES… TARGET`, TARGET made if missing), undone on drop, also
/// when the test fails.
pub struct Mount(pub PathBuf);

impl Mount {
    pub fn new(sources: &[&Path], target: &Path, opts: &[&str]) -> Mount {
        if !target.exists() {
            std::fs::create_dir_all(target).unwrap();
        }
        ok(
            &run(Command::new("mount").args(opts).args(sources).arg(target)),
            "mount",
        );
        Mount(target.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Where e2i-move keeps the journal of an in-place move of `path` by default.
pub fn journal_of(path: &Path) -> PathBuf {
    let mut j = std::fs::canonicalize(path).unwrap().into_os_string();
    j.push(".e2i-move");
    PathBuf::from(j)
}

/// Run a command that must succeed; its output (a failure shows the command and stderr).
pub fn sh(cmd: &mut Command) -> Output {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed: {}", text(&o.stderr));
    o
}

/// A file's bytes (a failure names the file).
pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A command's stdout and stderr, as text.
pub fn output_text(o: &Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

/// `e2image ARGS SRC OUT`, which must succeed.
pub fn e2image(args: &[&str], src: &Path, out: &Path) {
    sh(Command::new("e2image").args(args).arg(src).arg(out));
}

/// `e2image ARGS SRC OUT` into a new file (an old OUT is removed first); its bytes.
pub fn e2image_bytes(args: &[&str], src: &Path, out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    e2image(args, src, out);
    read(out)
}

/// `qemu-img check` exit status (0 = clean, 3 = leaks, 2 = corruption).
pub fn qemu_check(q: &Path) -> i32 {
    run(Command::new("qemu-img").arg("check").arg(q))
        .status
        .code()
        .unwrap_or(-1)
}

/// `qemu-img convert -O raw Q OUT`; the raw image's bytes.
pub fn qemu_to_raw(q: &Path, out: &Path) -> Vec<u8> {
    sh(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(q)
        .arg(out));
    read(out)
}

/// The folder of `q`, an absolute path, where the qemu helpers run: qemu 10 finds a
/// relative data file name from its current folder (e2i from the image's: they agree
/// there), and a relative backing name from the image's.
fn folder_of(q: &Path) -> &Path {
    q.parent()
        .filter(|d| d.is_absolute())
        .unwrap_or_else(|| panic!("{}: not an absolute path", q.display()))
}

/// `qemu-img create -q -f qcow2 [-o OPTS] [-b BACKING -F FORMAT] Q [SIZE]`, run in Q's
/// folder; it must succeed. Without a size, the backing file's.
pub fn qemu_create(q: &Path, opts: &str, backing: Option<(&Path, &str)>, size: Option<&str>) {
    let mut c = Command::new("qemu-img");
    c.current_dir(folder_of(q))
        .args(["create", "-q", "-f", "qcow2"]);
    if !opts.is_empty() {
        c.args(["-o", opts]);
    }
    if let Some((b, fmt)) = backing {
        c.arg("-b").arg(b).args(["-F", fmt]);
    }
    sh(c.arg(q).args(size));
}

/// `qemu-io -f qcow2 -c CMD… Q`, run in Q's folder; it must succeed.
pub fn qemu_io<S: AsRef<std::ffi::OsStr>>(q: &Path, cmds: &[S]) {
    let mut c = Command::new("qemu-io");
    c.current_dir(folder_of(q)).args(["-f", "qcow2"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    sh(c.arg(q));
}

/// `qemu-img convert -O qcow2 -o OPTS RAW Q` (say `extended_l2=on,cluster_size=64k`, or
/// `data_file=NAME`), run in Q's folder; it must succeed.
pub fn qemu_to_qcow2(raw: &Path, q: &Path, opts: &str) {
    sh(Command::new("qemu-img")
        .current_dir(folder_of(q))
        .args(["convert", "-O", "qcow2", "-o", opts])
        .arg(raw)
        .arg(q));
}

/// `debugfs -R REQUEST img` (read-only): its stdout.
pub fn debugfs(img: &Path, request: &str) -> String {
    text(&run(Command::new("debugfs").arg("-R").arg(request).arg(img)).stdout)
}

/// `debugfs -w -f CMDS img`, `cmds` one request a line (written next to `img`); it must
/// exit 0.
pub fn debugfs_w(img: &Path, cmds: &str) {
    let f = img.with_extension("cmds");
    std::fs::write(&f, cmds).unwrap();
    let o = run(Command::new("debugfs").arg("-w").arg("-f").arg(&f).arg(img));
    assert!(o.status.success(), "debugfs: {}", output_text(&o));
}

/// `e2fsck -fn img`: its exit status and output.
pub fn e2fsck_status(img: &Path) -> (i32, String) {
    let o = run(Command::new("e2fsck").arg("-fn").arg(img));
    (o.status.code().unwrap_or(-1), output_text(&o))
}

/// `e2fsck -fn img`: its exit status (its verdict).
pub fn e2fsck(img: &Path) -> i32 {
    e2fsck_status(img).0
}

/// Whether two (sparse) files hold the same bytes, reading only where either has data
/// (SEEK_DATA): elsewhere both read as zeros. Returns the bytes compared, or what differs
/// (a file that cannot be opened included).
pub fn same_sparse(a: &Path, b: &Path) -> Result<u64, String> {
    use e2i::io::{FileSource, ReadAt};
    let open = |p: &Path| FileSource::open(p, 0).map_err(|e| format!("{}: {e}", p.display()));
    let (fa, fb) = (open(a)?, open(b)?);
    if fa.size() != fb.size() {
        return Err(format!("sizes {} and {}", fa.size(), fb.size()));
    }
    let regions = |f: &FileSource| {
        let mut v = Vec::new();
        let mut pos = 0;
        while pos < f.size() {
            match f.data_region(pos).unwrap() {
                Some(r) if r.start < f.size() => {
                    let end = r.end.min(f.size());
                    v.push(r.start..end);
                    pos = end;
                }
                _ => break,
            }
        }
        v
    };
    let mut all = regions(&fa);
    all.extend(regions(&fb));
    all.sort_by_key(|r| r.start);
    let (mut compared, mut done) = (0u64, 0u64);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for r in all {
        let mut at = r.start.max(done);
        while at < r.end {
            let n = (r.end - at).min(1 << 20) as usize;
            x.resize(n, 0);
            y.resize(n, 0);
            fa.read_sparse_at(&mut x, at).unwrap();
            fb.read_sparse_at(&mut y, at).unwrap();
            if x != y {
                return Err(format!("bytes differ in {at}..{}", at + n as u64));
            }
            at += n as u64;
            compared += n as u64;
        }
        done = done.max(r.end);
    }
    Ok(compared)
}

/// `a` and `b` hold the same bytes (a failure names both, `what` and the difference).
pub fn assert_same(a: &Path, b: &Path, what: &str) {
    if let Err(e) = same_sparse(a, b) {
        panic!("{what}: {} and {} differ: {e}", a.display(), b.display());
    }
}

/// Two scans of one image (with and without walker threads) found the same: the same result,
/// or the same error.
pub fn assert_same_scan(
    a: &e2i::Result<e2i::ext4::scan::ScanResult>,
    b: &e2i::Result<e2i::ext4::scan::ScanResult>,
    what: &str,
) {
    match (a, b) {
        (Ok(a), Ok(b)) => assert!(a == b, "{what}: another scan"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{what}: another error"),
        (a, b) => panic!("{what}: {:?} against {:?}", a.is_ok(), b.is_ok()),
    }
}

/// `len` bytes of xorshift64 noise from `state`, which advances: data that neither
/// compresses nor reads as zeros, the same on every run.
pub fn noise(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state as u8
        })
        .collect()
}

/// Give a file's space back at once (truncated to nothing), then remove it. A removal
/// alone frees nothing while a descriptor of the file is open, and a child that another
/// test is starting holds copies of this process's descriptors until its exec: the space
/// came back late, after a test had measured the free space to leave a run too little,
/// and the run fit.
pub fn free_and_remove(p: &Path) {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(p) {
        let _ = f.set_len(0);
    }
    let _ = std::fs::remove_file(p);
}

/// Poll `done` every 20 ms until it holds (true), or give up after `polls` polls (false).
/// For a wait that has no handshake and must not hang a broken run forever. Counted in
/// polls, not read off the clock: while this process is stopped (SIGSTOP, as a session is
/// paused) or starved, the polls wait too, where a deadline would expire meanwhile.
pub fn poll_until(polls: u32, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..polls {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    done()
}

/// Signals this process ignores, and so its children (`nohup` ignores HUP, `cmd &` in a
/// script INT and QUIT): the tools keep them ignored, as documented, so a test that sends
/// them would wait for a run that never ends.
pub fn ignored_here(name: &str) -> bool {
    let no: u32 = match name {
        "HUP" => 1,
        "INT" => 2,
        "TERM" => 15,
        _ => return false,
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1u64 << (no - 1)) != 0)
}

/// Start `e2i-capture -r IMG OUT` and return it stopped (SIGSTOP, its test hook
/// E2I_TEST_STOP_AFTER_BLOCKS) once its copy is under way: OUTPUT open, its temporary file
/// made. A test changes what it likes, then [`resume_stopped`] lets the run go on. A timed
/// pause here let a loaded machine finish the run before the test acted.
pub fn held_capture(img: &Path, out: &Path) -> Reaper {
    let child = Reaper::new(
        tool_cmd("e2i-capture")
            .arg("-r")
            .arg(img)
            .arg(out)
            .env("E2I_TEST_STOP_AFTER_BLOCKS", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_stopped(child.child());
    let dir = out.parent().unwrap();
    assert!(
        names(dir).iter().any(|n| n.contains(".e2i-partial-")),
        "no temporary file in {}",
        dir.display()
    );
    child
}
