//! `e2i-capture -r` to a new file copies while the scan reads (blocks in any order, from a
//! second thread): attacked where that differs from a capture that scans first — signals
//! while the copy is under way, stdout redirected to the file, unreadable blocks met in
//! scan order — and held to the bytes, exit status and stderr of the two-pass paths.

use super::util::*;
use std::fs;
use std::path::Path;
use std::process::Stdio;

/// A filesystem with `mib` MiB of file data (noise, so that nothing is a hole).
fn data_fs(dir: &Path, mib: usize) -> std::path::PathBuf {
    let tree = dir.join("tree");
    fs::create_dir(&tree).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    fs::write(tree.join("data"), noise(&mut x, mib << 20)).unwrap();
    let img = dir.join("fs.img");
    mkfs_from(&tree, &img, &format!("{}M", mib * 2 + 16), &[]);
    fs::remove_dir_all(&tree).unwrap();
    img
}

/// A signal that ends a run while its copying thread writes stdout's file (`-r -a SRC - >
/// FILE`, written by position as a new file): the signal's thread emptied the file and the
/// copying thread went on writing until the process died, leaving tens to hundreds of
/// megabytes of a partial image there (7 runs in 20, SIGHUP a few milliseconds in); a run
/// whose copy ended meanwhile set the image's full size again and could exit 0 with the
/// image emptied. Now no file grows once the signal's clean-up has begun, and a finished
/// run hands the file back only before it. The hook stops the run with the copy under
/// way (after its first blocks, and after its last); the signal arrives there.
#[test]
fn a_signal_during_the_copy_leaves_stdouts_file_empty() {
    let d = tempdir();
    let img = data_fs(d.path(), 24);
    let want = d.path().join("want.raw");
    e2image(&["-r", "-a"], &img, &want);
    let want = read(&want);
    let blocks = (want.len() / 4096) as u64;
    for sig in ["TERM", "INT", "HUP"] {
        if ignored_here(sig) {
            eprintln!("SIG{sig} is ignored here (and so in the tool); not sent");
            continue;
        }
        // After the first pieces (the copy in full flow), and at the end of the copy.
        for stop in [256u64, blocks] {
            let out = d.path().join(format!("out-{sig}-{stop}.raw"));
            let child = Reaper::new(
                tool_cmd("e2i-capture")
                    .args(["-r", "-a"])
                    .arg(&img)
                    .arg("-")
                    .stdout(fs::File::create(&out).unwrap())
                    .stderr(Stdio::piped())
                    .env("E2I_TEST_STOP_AFTER_BLOCKS", stop.to_string())
                    .spawn()
                    .unwrap(),
            );
            let o = signal_when_stopped(child, sig);
            let got = read(&out);
            let what = format!(
                "SIG{sig} after {stop} blocks: {:?} {}",
                o.status,
                text(&o.stderr)
            );
            if o.status.success() {
                // The copy finished before the signal was handled: the whole image.
                assert!(got == want, "{what}: exit 0 with other bytes");
            } else if !got.is_empty() {
                // A file handed back before the signal's clean-up holds the whole image.
                assert!(
                    got == want,
                    "{what}: a partial image of {} bytes left",
                    got.len()
                );
            }
            let meta = fs::metadata(&out).unwrap();
            assert!(
                meta.len() == 0 || got == want,
                "{what}: {} bytes, {} allocated",
                meta.len(),
                std::os::unix::fs::MetadataExt::blocks(&meta)
            );
        }
    }
}

/// The same for a named OUTPUT: the temporary file is removed and OUTPUT never appears
/// (or is the whole image, when the run finished before the signal's clean-up).
#[test]
fn a_signal_during_the_copy_leaves_no_output() {
    let d = tempdir();
    let img = data_fs(d.path(), 8);
    let want = d.path().join("want.raw");
    e2image(&["-r", "-a"], &img, &want);
    let want = read(&want);
    let blocks = (want.len() / 4096) as u64;
    let outs = d.path().join("outs");
    fs::create_dir(&outs).unwrap();
    for sig in ["TERM", "INT"] {
        if ignored_here(sig) {
            eprintln!("SIG{sig} is ignored here (and so in the tool); not sent");
            continue;
        }
        for stop in [256u64, blocks] {
            let out = outs.join(format!("out-{sig}-{stop}.raw"));
            let child = Reaper::new(
                tool_cmd("e2i-capture")
                    .args(["-r", "-a"])
                    .arg(&img)
                    .arg(&out)
                    .stderr(Stdio::piped())
                    .env("E2I_TEST_STOP_AFTER_BLOCKS", stop.to_string())
                    .spawn()
                    .unwrap(),
            );
            let o = signal_when_stopped(child, sig);
            let what = format!(
                "SIG{sig} after {stop} blocks: {:?} {}",
                o.status,
                text(&o.stderr)
            );
            assert!(
                !names(&outs).iter().any(|n| n.contains(".e2i-partial-")),
                "{what}: temporary file left"
            );
            if out.exists() {
                assert!(read(&out) == want, "{what}: OUTPUT holds other bytes");
            } else {
                assert!(!o.status.success(), "{what}: exit 0 without OUTPUT");
            }
        }
    }
}
