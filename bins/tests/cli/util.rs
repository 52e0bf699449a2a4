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

/// Run a command and return its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
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
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0"])
        .args(extra)
        .arg("-d")
        .arg(&tree)
        .arg(&img)
        .arg(size)
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .status()
        .expect("mkfs.ext4");
    assert!(st.success(), "mkfs.ext4 failed");
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

/// Let a child stopped by [`wait_stopped`] go on (SIGCONT).
pub fn resume_stopped(child: &std::process::Child) {
    use rustix::process::{Pid, Signal, kill_process};
    let pid = Pid::from_raw(child.id() as i32).expect("a child's pid");
    kill_process(pid, Signal::CONT).expect("SIGCONT");
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

/// Where e2i-move keeps the journal of an in-place move of `path` by default.
pub fn journal_of(path: &Path) -> PathBuf {
    let mut j = std::fs::canonicalize(path).unwrap().into_os_string();
    j.push(".e2i-move");
    PathBuf::from(j)
}
