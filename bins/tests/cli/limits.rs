//! What the system does to a run besides ^C: a file-size limit, the other signals that end
//! a process, signals ignored by whoever started it (`nohup`), an OUTPUT that cannot be
//! renamed over and an input that is no image. Each test failed before the fix it guards.

use super::util::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A filesystem with some file data (a few MiB of raw image with `-a`).
fn fs_with_data(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    fs::create_dir(&tree).unwrap();
    for i in 0..8u8 {
        fs::write(
            tree.join(format!("f{i}")),
            vec![i.wrapping_mul(37) | 1; 300_000],
        )
        .unwrap();
    }
    let img = dir.join("fs.img");
    mkfs_from(&tree, &img, "16M", &[]);
    img
}

/// The names in `dir` but `keep`.
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

/// A file-size limit (`ulimit -f`) reached in the middle of an output killed the run with
/// SIGXFSZ: its temporary file stayed behind, and no message said what happened. It is now
/// a write error naming OUTPUT (exit 1), the temporary file removed.
#[test]
fn a_file_size_limit_is_a_write_error_naming_the_output() {
    let d = tempdir();
    let img = fs_with_data(d.path());
    let qcow2 = d.path().join("fs.qcow2");
    e2image(&["-Qa"], &img, &qcow2);
    let outs = d.path().join("outs");
    fs::create_dir(&outs).unwrap();
    let cases: &[(&str, &[&str], &Path)] = &[
        ("e2i-capture", &["-ra"], &img),
        ("e2i-capture", &["-Qa"], &img),
        ("qcow2-to-raw", &[], &qcow2),
        ("e2i-to-qcow2", &["-a"], &img),
        ("e2i-move", &[], &img),
    ];
    for (t, args, input) in cases {
        let out = outs.join("new.out");
        // 1 MiB (2048 blocks of 512 bytes): less than any of these outputs.
        let o = run(tool_in_sh("ulimit -f 2048; exec \"$@\"", t)
            .args(*args)
            .arg(input)
            .arg(&out));
        let what = format!("{t} {args:?} under ulimit -f");
        let err = failed(&o, &what);
        assert!(err.contains("new.out"), "{what}: {err}");
        assert!(err.contains("File too large"), "{what}: {err}");
        assert!(
            others(&outs, &[]).is_empty(),
            "{what}: left {:?}",
            others(&outs, &[])
        );
    }
}

/// Every signal that ends a run removes its temporary file first, not only SIGINT, SIGTERM
/// and SIGHUP: SIGQUIT (^\), SIGALRM, SIGUSR1/2, SIGXCPU (a CPU-time limit) left it behind.
/// The run still dies of the signal.
#[test]
fn every_signal_that_ends_a_run_removes_its_temporary_file() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let outs = d.path().join("outs");
    fs::create_dir(&outs).unwrap();
    for sig in ["QUIT", "ALRM", "USR1", "USR2", "XCPU", "VTALRM", "PROF"] {
        let mut child = tool_cmd("e2i-capture")
            .arg("-r")
            .arg(&img)
            .arg(outs.join("new.out"))
            // Held until the signal comes, however loaded the machine (an hour).
            .env("E2I_TEST_PAUSE_AFTER_OPEN_MS", "3600000")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while others(&outs, &[]).is_empty() {
            assert!(child.try_wait().unwrap().is_none(), "SIG{sig}: ended early");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        send_signal(child.id(), sig);
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert!(st.signal().is_some(), "SIG{sig}: {st:?}");
        assert!(
            others(&outs, &[]).is_empty(),
            "SIG{sig}: left {:?}",
            others(&outs, &[])
        );
    }
}

/// A signal ignored by whoever started the run stays ignored: `nohup e2i-capture …` was
/// killed by the SIGHUP of the closing terminal it was meant to survive (the tools caught
/// SIGHUP whatever its disposition). Under nohup the run finishes, the image complete.
#[test]
fn nohup_keeps_a_run_alive() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let want = e2image_bytes(&["-r"], &img, &d.path().join("want.raw"));
    let outs = d.path().join("outs");
    fs::create_dir(&outs).unwrap();
    let out = outs.join("new.raw");
    let child = Reaper::new(
        Command::new("nohup")
            .arg(tool("e2i-capture"))
            .arg("-r")
            .arg(&img)
            .arg(&out)
            // Stopped mid-copy (SIGSTOP) until the signal has come: a timed pause could
            // end first on a loaded machine, and the signal would then prove nothing.
            .env("E2I_TEST_STOP_AFTER_BLOCKS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // nohup execs the tool: the child's pid is the tool's.
    wait_stopped(child.child());
    assert!(!others(&outs, &[]).is_empty(), "OUTPUT is not open");
    sh(Command::new("kill").args(["-s", "HUP", &child.child().id().to_string()]));
    resume_stopped(child.child());
    let mut child = child.take();
    let st = child.wait().unwrap();
    assert!(st.success(), "killed by SIGHUP under nohup: {st:?}");
    assert!(read(&out) == want);
}

/// An existing OUTPUT that cannot be renamed over (here a file bind-mounted at its name) is
/// written under its own name, truncated, as e2image does. It was truncated when opened,
/// before the input was read: a SOURCE or INPUT that is no image left it empty. It is now
/// truncated only when the run starts writing; a good input still replaces it.
#[test]
fn a_target_written_in_place_is_not_truncated_for_a_bad_input() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let want = e2image_bytes(&["-r"], &img, &d.path().join("want.raw"));
    let garbage = d.path().join("garbage");
    fs::write(&garbage, vec![0u8; 3 << 20]).unwrap();
    let keep = d.path().join("keep");
    let name = d.path().join("bound");
    let old: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&keep, &old).unwrap();
    fs::write(&name, b"").unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    sh(Command::new("mount").arg("--bind").arg(&keep).arg(&name));
    let _m = Unmount(name.clone());
    for (t, args) in [
        ("e2i-capture", &["-r"][..]),
        ("e2i-capture", &["-Q"]),
        ("e2i-capture", &[]),
        ("e2i-to-raw", &[]),
        ("qcow2-to-raw", &[]),
        ("e2i-to-qcow2", &[]),
    ] {
        let o = run(tool_cmd(t).args(args).arg(&garbage).arg(&name));
        let what = format!("{t} {args:?} GARBAGE BOUND");
        failed(&o, &what);
        assert!(read(&keep) == old, "{what}: the target changed");
    }
    run_ok(tool_cmd("e2i-capture").arg("-r").arg(&img).arg(&name));
    assert!(read(&keep) == want);
}

/// An undo file that cannot be written to the end (a full disk; here a file-size limit) was
/// left behind, partial — not an undo file to e2undo, and in the way of the rerun ("undo
/// file … already exists"). DEVICE is written only once the undo file is complete: the
/// partial one is now removed, the message naming it; the rerun then works.
#[test]
fn an_undo_file_that_cannot_be_written_is_removed() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "8M", &[]);
    let normal = d.path().join("fs.e2i");
    e2image(&[], &img, &normal);
    let dev = d.path().join("dev.img");
    fs::copy(&img, &dev).unwrap();
    let before = read(&dev);
    let undo = d.path().join("undo");
    let o = run(tool_in_sh("ulimit -f 64; exec \"$@\"", "e2i-install")
        .arg("-z")
        .arg(&undo)
        .arg(&dev)
        .arg(&normal));
    let err = failed(&o, "install with an undo file that cannot be written");
    assert!(err.contains(&undo.display().to_string()), "{err}");
    assert!(err.contains("nothing written to the device"), "{err}");
    assert!(!undo.exists(), "the partial undo file is left");
    assert!(read(&dev) == before, "the device changed");
    run_ok(
        tool_cmd("e2i-install")
            .arg("-z")
            .arg(&undo)
            .arg(&dev)
            .arg(&normal),
    );
    sh(Command::new("e2undo").arg(&undo).arg(&dev));
    assert!(read(&dev) == before, "e2undo restores the device");
}
