//! Everyday use: progress (`-p`) under a pseudo-terminal and without one, `--quiet`,
//! `--json`, one-line errors, the generated man pages and completions, `ci/install.sh`, and
//! the README's quick start.
//!
//! Progress must only ever reach stderr: stdout carries data in pipelines, so every run
//! with OUTPUT `-` checks that stdout holds exactly the image (compared with e2image's).

use super::util::*;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}: {}{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// A filesystem with enough metadata for several progress updates.
fn fixture(dir: &Path) -> PathBuf {
    mkfs(
        dir,
        "fs.img",
        "24M",
        &[
            "-b",
            "1024",
            "-U",
            "4c7a9e2b-5d1f-4a3e-9b6c-2e8f0a1d3c5b",
            "-E",
            "hash_seed=4c7a9e2b-5d1f-4a3e-9b6c-2e8f0a1d3c5b",
        ],
    )
}

/// The numbers of the closing line `Copied N / M blocks (P%) in HH:MM:SS at R MB/s`.
fn copied_line(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.trim_end_matches('\r').strip_prefix("Copied ")?;
    let w: Vec<&str> = rest.split(' ').collect();
    // N / M blocks (P%) in HH:MM:SS at R MB/s
    if w.len() != 10 || w[1] != "/" || w[3] != "blocks" || w[5] != "in" || w[7] != "at" {
        return None;
    }
    if w[9] != "MB/s" || w[8].parse::<f64>().is_err() {
        return None;
    }
    let hms: Vec<&str> = w[6].split(':').collect();
    if hms.len() != 3 || hms.iter().any(|p| p.len() != 2 || p.parse::<u8>().is_err()) {
        return None;
    }
    let pct = w[4].strip_prefix('(')?.strip_suffix("%)")?.parse().ok()?;
    Some((w[0].parse().ok()?, w[2].parse().ok()?, pct))
}

/// Builds a run's arguments from a tag that keeps the runs' outputs apart.
type ArgsFn<'a> = Box<dyn Fn(&str) -> Vec<OsString> + 'a>;

/// A tool run: its arguments (built fresh for each run, as runs change their outputs) and
/// what stdout must hold (`None`: nothing).
struct Case<'a> {
    tool: &'a str,
    args: ArgsFn<'a>,
    stdout: Option<Vec<u8>>,
    /// The phase name of the plain lines of the copy phase.
    copy_phase: &'a str,
}

fn os(v: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    v.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// Without a terminal: plain lines on stderr (every update, with the interval at 0), one
/// closing `Copied` line after them, and stdout exactly the data.
fn check_plain(c: &Case, dir: &Path) {
    let o = run(tool_cmd(c.tool)
        .arg("-p")
        .args((c.args)("plain"))
        .env("E2I_PROGRESS_INTERVAL_MS", "0")
        // e2i-move's journal index stays with the test, not in the user's state folder.
        .env("XDG_STATE_HOME", dir.join("state"))
        .stdin(Stdio::null()));
    ok(&o);
    let err = text(&o.stderr);
    match &c.stdout {
        Some(want) => assert!(o.stdout == *want, "{}: stdout is not the image", c.tool),
        None => assert!(
            o.stdout.is_empty(),
            "{}: stdout: {}",
            c.tool,
            text(&o.stdout)
        ),
    }
    let lines: Vec<&str> = err.lines().collect();
    let copied: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("Copied "))
        .collect();
    assert_eq!(copied.len(), 1, "{}: one Copied line:\n{err}", c.tool);
    let (n, m, pct) = copied_line(lines[copied[0]])
        .unwrap_or_else(|| panic!("{}: bad Copied line: {}", c.tool, lines[copied[0]]));
    assert!(
        m > 0 && n == m && pct == 100,
        "{}: {}",
        c.tool,
        lines[copied[0]]
    );
    let prefix = format!("{}: ", c.copy_phase);
    let plain: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with(&prefix))
        .collect();
    assert!(
        !plain.is_empty(),
        "{}: no plain progress lines:\n{err}",
        c.tool
    );
    assert!(
        plain.iter().all(|&i| i < copied[0]),
        "{}: the Copied line closes the copy phase:\n{err}",
        c.tool
    );
    // The last plain line of the copy phase reached the total the Copied line reports.
    let last = lines[*plain.last().unwrap()];
    assert!(last.contains("(100%)"), "{}: {last}", c.tool);
}

/// Quote a path for `sh -c`.
fn sh_quote(s: &std::ffi::OsStr) -> String {
    let s = s.to_string_lossy();
    assert!(!s.contains('\''), "{s}");
    format!("'{s}'")
}

/// Under a pseudo-terminal (util-linux `script`): stderr is the terminal and gets the bar;
/// stdout, redirected to a file inside the terminal session, gets only the data.
fn check_tty(c: &Case, dir: &Path) {
    let out = dir.join(format!("{}.stdout", c.tool));
    let mut cmd = sh_quote(tool(c.tool).as_os_str());
    cmd.push_str(" -p");
    for a in (c.args)("tty") {
        cmd.push(' ');
        cmd.push_str(&sh_quote(&a));
    }
    cmd.push_str(" > ");
    cmd.push_str(&sh_quote(out.as_os_str()));
    let o = run(Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .env("COLUMNS", "100")
        .env("XDG_STATE_HOME", dir.join("state"))
        .stdin(Stdio::null()));
    ok(&o);
    let term = text(&o.stdout);
    // The bar: its frame, its counters and the ETA, drawn with terminal escapes.
    assert!(
        term.contains("ETA") && term.contains("] ") && term.contains("\u{1b}["),
        "{}: no progress bar on the terminal: {term:?}",
        c.tool
    );
    assert!(
        term.contains("blocks (100%)") || term.contains("(100%)"),
        "{}: the bar never reached 100%: {term:?}",
        c.tool
    );
    let closing = term
        .lines()
        .filter_map(|l| l.rsplit('\u{1b}').next())
        .filter_map(|l| l.find("Copied ").map(|i| &l[i..]))
        .collect::<Vec<_>>();
    assert_eq!(closing.len(), 1, "{}: {term:?}", c.tool);
    assert!(
        copied_line(closing[0]).is_some(),
        "{}: {:?}",
        c.tool,
        closing[0]
    );
    // Not a byte of it on stdout.
    let got = std::fs::read(&out).unwrap();
    match &c.stdout {
        Some(want) => assert!(got == *want, "{}: stdout is not the image", c.tool),
        None => assert!(got.is_empty(), "{}: stdout: {}", c.tool, text(&got)),
    }
}

#[test]
fn progress_on_stderr_only_with_and_without_a_terminal() {
    let d = tempdir();
    let dir = d.path();
    let img = fixture(dir);
    let raw = e2image_bytes(&["-r"], &img, &dir.join("e2image.raw"));
    // Inputs of the converters and of install.
    let qcow2 = dir.join("in.qcow2");
    ok(&run(tool_cmd("e2i-capture")
        .arg("-Q")
        .arg(&img)
        .arg(&qcow2)));
    let normal = dir.join("in.e2i");
    ok(&run(Command::new("e2image").arg(&img).arg(&normal)));
    let out = |tag: &str, name: &str| dir.join(format!("{tag}-{name}"));
    let fresh_copy = |tag: &str, name: &str| {
        let p = out(tag, name);
        std::fs::copy(&img, &p).unwrap();
        p
    };
    let cases = vec![
        Case {
            tool: "e2i-capture",
            args: Box::new(|_| os(&[&"-r", &img, &"-"])),
            stdout: Some(raw.clone()),
            copy_phase: "copying",
        },
        Case {
            tool: "e2i-capture",
            args: Box::new(|t| os(&[&"-Q", &img, &out(t, "cap.qcow2")])),
            stdout: None,
            copy_phase: "copying",
        },
        Case {
            tool: "e2i-capture",
            args: Box::new(|t| os(&[&img, &out(t, "cap.e2i")])),
            stdout: None,
            copy_phase: "copying inode tables",
        },
        Case {
            tool: "e2i-to-raw",
            args: Box::new(|_| os(&[&qcow2, &"-"])),
            stdout: Some(raw.clone()),
            copy_phase: "copying",
        },
        Case {
            tool: "e2i-to-qcow2",
            args: Box::new(|t| os(&[&img, &out(t, "conv.qcow2")])),
            stdout: None,
            copy_phase: "copying",
        },
        Case {
            tool: "qcow2-to-raw",
            args: Box::new(|_| os(&[&qcow2, &"-"])),
            stdout: Some(raw.clone()),
            copy_phase: "copying",
        },
        Case {
            tool: "e2i-install",
            args: Box::new(|t| os(&[&fresh_copy(t, "dev.img"), &normal])),
            stdout: None,
            copy_phase: "installing",
        },
        Case {
            tool: "e2i-move",
            args: Box::new(|t| os(&[&img, &out(t, "clone.img")])),
            stdout: None,
            copy_phase: "copying",
        },
        Case {
            tool: "e2i-move",
            args: Box::new(|t| {
                let p = fresh_copy(t, "moved.img");
                os(&[&"-o", &"0", &"-O", &"1M", &p])
            }),
            stdout: None,
            copy_phase: "moving",
        },
    ];
    for c in &cases {
        check_plain(c, dir);
        check_tty(c, dir);
    }
    // The pipeline itself: capture | to-qcow2, both with -p, progress never mixed into data.
    let piped = dir.join("piped.qcow2");
    let o = run(Command::new("sh")
        .arg("-c")
        .arg(r#""$1" -p -r "$2" - | "$3" -p - "$4""#)
        .arg("sh")
        .arg(tool("e2i-capture"))
        .arg(&img)
        .arg(tool("e2i-to-qcow2"))
        .arg(&piped)
        .stdin(Stdio::null()));
    ok(&o);
    assert!(o.stdout.is_empty());
    assert_eq!(
        text(&o.stderr)
            .lines()
            .filter(|l| copied_line(l).is_some())
            .count(),
        2,
        "{}",
        text(&o.stderr)
    );
    let back = dir.join("piped.raw");
    let o = run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&piped)
        .arg(&back));
    ok(&o);
    assert!(std::fs::read(&back).unwrap() == raw, "piped qcow2 content");
}

/// A scan phase never ends with a `Copied` line, even when it printed plain lines, and
/// without `-p` nothing is drawn at all.
#[test]
fn only_the_copy_phase_says_copied() {
    let d = tempdir();
    let img = fixture(d.path());
    // To a file -Q reads the blocks once; to stdout it finds the data blocks first.
    for (out, passes) in [
        ("a.qcow2", &["scanning inodes", "copying"][..]),
        ("-", &["scanning inodes", "finding data", "copying"][..]),
    ] {
        let o = run(tool_cmd("e2i-capture")
            .args(["-p", "-Q"])
            .arg(&img)
            .arg(if out == "-" {
                out.into()
            } else {
                d.path().join(out)
            })
            .env("E2I_PROGRESS_INTERVAL_MS", "0"));
        ok(&o);
        let err = text(&o.stderr);
        let phases: Vec<&str> = err
            .lines()
            .filter_map(|l| l.split_once(": ").map(|(p, _)| p))
            .collect();
        for want in passes {
            assert!(phases.contains(want), "{out}: no {want} lines:\n{err}");
        }
        assert_eq!(
            phases.contains(&"finding data"),
            out == "-",
            "{out}:\n{err}"
        );
        for scan in &passes[..passes.len() - 1] {
            assert!(err.contains(&format!("{scan}: done, ")), "{out}: {err}");
        }
        assert!(!err.contains("copying: done"), "{out}: {err}");
        let copied: Vec<&str> = err.lines().filter(|l| l.starts_with("Copied")).collect();
        assert_eq!(copied.len(), 1, "{out}: {err}");
        assert_eq!(err.lines().last(), Some(copied[0]), "{out}: {err}");
    }
    // Without -p: silent.
    let o = run(tool_cmd("e2i-capture")
        .arg("-Q")
        .arg(&img)
        .arg(d.path().join("b.qcow2"))
        .env("E2I_PROGRESS_INTERVAL_MS", "0"));
    ok(&o);
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
}

/// Crude field extraction from the one-line JSON summaries (no JSON parser needed for
/// flat objects of strings, numbers and nulls).
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let at = json.find(&pat)? + pat.len();
    let rest = &json[at..];
    let end = if let Some(r) = rest.strip_prefix('"') {
        r.find('"')? + 2
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim_matches('"'))
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    e2i_cli::json::hex(&Sha256::digest(data))
}

#[test]
fn json_summaries() {
    let d = tempdir();
    let dir = d.path();
    let img = fixture(dir);
    let raw = e2image_bytes(&["-r"], &img, &dir.join("e2image.raw"));

    // OUTPUT `-`: the data on stdout, the JSON on stderr with the SHA-256 of that data.
    let o = run(tool_cmd("e2i-capture")
        .args(["--json", "-r"])
        .arg(&img)
        .arg("-"));
    ok(&o);
    assert!(o.stdout == raw, "stdout is the raw image");
    let j = text(&o.stderr);
    assert_eq!(j.lines().count(), 1, "{j}");
    assert!(j.starts_with('{') && j.trim_end().ends_with('}'), "{j}");
    assert_eq!(field(&j, "tool"), Some("e2i-capture"));
    assert_eq!(field(&j, "format"), Some("raw"));
    assert_eq!(field(&j, "sha256"), Some(sha256_hex(&raw).as_str()));
    assert_eq!(
        field(&j, "output_bytes"),
        Some(raw.len().to_string().as_str())
    );
    assert_eq!(field(&j, "exit"), Some("0"));
    // Block size and count agree with dumpe2fs.
    let dump = text(&run(Command::new("dumpe2fs").arg("-h").arg(&img)).stdout);
    let dumped = |k: &str| {
        dump.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap()
    };
    assert_eq!(field(&j, "block_size").unwrap(), dumped("Block size:"));
    assert_eq!(field(&j, "blocks_count").unwrap(), dumped("Block count:"));

    // A file OUTPUT: JSON on stdout, no hash of the (sparse) file.
    let stream = dir.join("s.e2i");
    let o = run(tool_cmd("e2i-capture")
        .args(["--json", "--format", "stream"])
        .arg(&img)
        .arg(&stream));
    ok(&o);
    let j = text(&o.stdout);
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
    assert_eq!(field(&j, "sha256"), Some("null"));
    assert_eq!(field(&j, "format"), Some("stream"));
    let len = std::fs::metadata(&stream).unwrap().len();
    assert_eq!(field(&j, "output_bytes"), Some(len.to_string().as_str()));

    // A stream INPUT: its recorded SHA-256; the raw output equals e2image's.
    let out = dir.join("from-stream.raw");
    let o = run(tool_cmd("e2i-to-raw").arg("--json").arg(&stream).arg(&out));
    ok(&o);
    let j = text(&o.stdout);
    assert_eq!(field(&j, "input_kind"), Some("stream"));
    // Version 2: BLAKE3 (no SHA-256).
    let ss = field(&j, "stream_blake3").unwrap();
    assert!(
        ss.len() == 64 && ss.bytes().all(|b| b.is_ascii_hexdigit()),
        "{j}"
    );
    assert_eq!(field(&j, "stream_sha256"), Some("null"));
    assert_eq!(field(&j, "sha256"), Some("null"));
    assert!(std::fs::read(&out).unwrap() == raw);
    // The same stream into e2i-to-qcow2 reports the same stream checksum.
    let o = run(tool_cmd("e2i-to-qcow2").arg("--json").arg(&stream).arg("-"));
    ok(&o);
    let j2 = text(&o.stderr);
    assert_eq!(field(&j2, "stream_blake3"), Some(ss));
    assert_eq!(
        field(&j2, "sha256"),
        Some(sha256_hex(&o.stdout).as_str()),
        "{j2}"
    );
    // qcow2-to-raw to stdout.
    let q = dir.join("q.qcow2");
    std::fs::write(&q, &o.stdout).unwrap();
    let o = run(tool_cmd("qcow2-to-raw").arg("--json").arg(&q).arg("-"));
    ok(&o);
    assert!(o.stdout == raw);
    let j = text(&o.stderr);
    assert_eq!(field(&j, "sha256"), Some(sha256_hex(&raw).as_str()), "{j}");
    assert_eq!(field(&j, "tool"), Some("qcow2-to-raw"));
}

#[test]
fn quiet_suppresses_summaries_not_errors() {
    let d = tempdir();
    let dir = d.path();
    let img = fixture(dir);
    let target = dir.join("t.raw");
    e2image(&["-r"], &img, &target);
    // -c into an identical target: a summary line, unless --quiet.
    let loud = run(tool_cmd("e2i-to-raw").arg("-c").arg(&img).arg(&target));
    ok(&loud);
    // e2image's closing line of -c, on stdout as e2image prints it.
    assert!(
        text(&loud.stdout).contains("already contained"),
        "{}",
        text(&loud.stdout)
    );
    let quiet = run(tool_cmd("e2i-to-raw")
        .args(["-c", "-q"])
        .arg(&img)
        .arg(&target));
    ok(&quiet);
    assert!(quiet.stderr.is_empty(), "{}", text(&quiet.stderr));
    assert!(quiet.stdout.is_empty(), "{}", text(&quiet.stdout));
    let clone = dir.join("clone.img");
    std::fs::copy(&img, &clone).unwrap();
    let loud = run(tool_cmd("e2i-move").arg("-c").arg(&img).arg(&clone));
    ok(&loud);
    assert!(text(&loud.stdout).contains("already contained"));
    let quiet = run(tool_cmd("e2i-move")
        .args(["-c", "--quiet"])
        .arg(&img)
        .arg(&clone));
    ok(&quiet);
    assert!(quiet.stdout.is_empty() && quiet.stderr.is_empty());
    // Errors still show.
    let o = run(tool_cmd("e2i-to-raw")
        .arg("-q")
        .arg(dir.join("missing"))
        .arg(dir.join("x.raw")));
    assert_eq!(o.status.code(), Some(1));
    assert!(!o.stderr.is_empty());
}

/// Every tool: a failure is one line `tool: what: where` (exit 1); a usage error is the
/// message plus a pointer to --help (exit 2); numbers take suffixes.
#[test]
fn errors_are_one_line() {
    let d = tempdir();
    let missing = d.path().join("no-such-file");
    let m = missing.to_string_lossy().to_string();
    let out = d.path().join("out").to_string_lossy().to_string();
    let tools: [(&str, Vec<&str>); 6] = [
        ("e2i-capture", vec![&m, &out]),
        ("e2i-to-raw", vec![&m, &out]),
        ("e2i-to-qcow2", vec![&m, &out]),
        ("qcow2-to-raw", vec![&m, &out]),
        ("e2i-install", vec![&out, &m]),
        ("e2i-move", vec![&m, &out]),
    ];
    for (t, args) in &tools {
        let o = run(tool_cmd(t).args(args));
        assert_eq!(o.status.code(), Some(1), "{t}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{t}: {err}");
        assert!(err.starts_with(&format!("{t}: ")), "{t}: {err}");
        assert!(err.contains(&m) || err.contains(&out), "{t}: where: {err}");
        assert!(err.matches(": ").count() >= 2, "{t}: what and where: {err}");
        assert!(o.stdout.is_empty(), "{t}");

        let o = run(tool_cmd(t).arg("--no-such-flag"));
        assert_eq!(o.status.code(), Some(2), "{t}");
        let err = text(&o.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{t}: {err}");
        assert!(lines[0].starts_with(&format!("{t}: ")), "{t}: {err}");
        assert!(lines[0].contains("--no-such-flag"), "{t}: {err}");
        assert_eq!(lines[1], format!("Try '{t} --help' for more information."));

        let o = run(tool_cmd(t).arg("--version"));
        ok(&o);
        assert!(text(&o.stdout).starts_with(t), "{t}");
    }
    // `-` where a seekable file is needed: a usage error that says so.
    for (t, args) in [
        ("e2i-capture", vec!["-", &out]),
        ("e2i-install", vec![&out, "-"]),
        ("e2i-install", vec!["-", &m]),
        ("e2i-move", vec!["-", &out]),
        ("e2i-move", vec![&m, "-"]),
    ] {
        let o = run(tool_cmd(t).args(&args).stdin(Stdio::null()));
        assert_eq!(o.status.code(), Some(2), "{t} {args:?}");
        let err = text(&o.stderr);
        assert!(err.starts_with(&format!("{t}: ")), "{err}");
        assert!(err.contains("cannot be '-'"), "{err}");
    }
    // A bad number is a usage error naming the value.
    let o = run(tool_cmd("e2i-capture").args(["-o", "12abc", &m]));
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("12abc"), "{}", text(&o.stderr));
}

/// The committed man pages and completions are what the clap definitions generate now.
#[test]
fn committed_docs_are_current() {
    let docs = repo().join("docs");
    let tmp = tempdir();
    let written = e2i_cli::docs::generate(tmp.path()).expect("generate");
    // Six tools × (man page + three completions), and e2i-bug-report's man page.
    assert_eq!(written.len(), 6 * 4 + 1);
    let mut stale = Vec::new();
    for (rel, data) in e2i_cli::docs::render().unwrap() {
        let fresh = std::fs::read(tmp.path().join(&rel)).unwrap();
        assert_eq!(fresh, data, "generate and render agree");
        if std::fs::read(docs.join(&rel)).ok().as_deref() != Some(&data[..]) {
            stale.push(rel.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale or missing under docs/ (run ci/gen-docs.sh and commit): {stale:?}"
    );
    // Nothing left over from a tool or shell that no longer exists.
    for sub in [
        "man",
        "completions/bash",
        "completions/zsh",
        "completions/fish",
    ] {
        for e in std::fs::read_dir(docs.join(sub)).unwrap() {
            let rel = Path::new(sub).join(e.unwrap().file_name());
            assert!(tmp.path().join(&rel).exists(), "not generated: {rel:?}");
        }
    }
}

/// Each man page (its EXIT STATUS and DIAGNOSTICS come from the tool's long help) says what
/// the tool's messages and statuses are, as docs/cli.md does: a closed pipe, a signal (also
/// one that arrives as the work ends), a write error at the first byte not taken, a source
/// truncated during the run, unreadable blocks one line a run, a closed stdout, a socket on
/// stdout, -O past what a file reaches, a partly written target, a changed backing chain.
#[test]
fn man_pages_describe_the_statuses_and_messages() {
    let all: &[&str] = &[
        "141",
        "128+N",
        "as the work ends",
        "Diagnostics:",
        "write at byte N: No space left on device",
        "the first byte it did not take, whatever the writes gathered or buffered",
        "- (stdout, a pipe)",
        "it ends at byte N but held M bytes when the run opened it",
    ];
    let per_tool: &[(&str, &[&str])] = &[
        (
            "e2i-capture",
            &[
                "read error; written as zeros",
                "stdout is closed",
                "/dev/stdout",
                "e2iB",
                "partly written",
            ],
        ),
        (
            "e2i-to-raw",
            &[
                "read error; written as zeros",
                "stdout is closed",
                "/dev/stdout",
                "e2iB",
                "partly written",
                "no file or device reaches",
            ],
        ),
        (
            "qcow2-to-raw",
            &[
                "stdout is closed",
                "/dev/stdout",
                "e2iB",
                "partly written",
                "no file or device reaches",
            ],
        ),
        (
            "e2i-to-qcow2",
            &[
                "read error; written as zeros",
                "stdout is closed",
                "/dev/stdout",
                "e2iB",
                "partly written",
            ],
        ),
        (
            "e2i-install",
            &[
                "partly installed",
                "e2undo FILE DEVICE",
                "the install completes, and says so",
                "newer state",
            ],
        ),
        (
            "e2i-move",
            &["e2iB", "partly written", "no file or device reaches"],
        ),
    ];
    let cmds = e2i_cli::cli::commands();
    assert_eq!(cmds.len(), per_tool.len());
    for (name, words) in per_tool {
        let cmd = cmds.iter().find(|c| c.get_name() == *name).expect(name);
        let help = cmd
            .get_after_long_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        for w in all.iter().chain(words.iter()) {
            assert!(
                help.contains(w),
                "{name}: {w:?} not in its long help:\n{help}"
            );
        }
    }
}

#[test]
fn man_pages_render_and_completions_load() {
    let docs = repo().join("docs");
    // HOME for the shells: they may write their state there.
    let home = tempdir();
    for cmd in e2i_cli::cli::commands() {
        let name = cmd.get_name().to_string();
        let page = docs.join(format!("man/{name}.1"));
        let o = run(Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("MANWIDTH", "80"));
        ok(&o);
        let t = text(&o.stdout);
        for want in [
            "NAME",
            "SYNOPSIS",
            "OPTIONS",
            "EXAMPLES",
            "EXIT STATUS",
            "e2image",
        ] {
            assert!(t.contains(want), "{name}.1 lacks {want}:\n{t}");
        }
        assert!(t.contains(&name), "{name}.1");
        // Every long option of the tool is documented.
        for a in cmd.get_arguments() {
            if let Some(l) = a.get_long() {
                assert!(t.contains(&format!("--{l}")), "{name}.1 lacks --{l}");
            }
        }
        // SYNOPSIS shows each option with its argument (`[-O|--dest-offset N]`).
        let syn: String = t
            .split("SYNOPSIS")
            .nth(1)
            .and_then(|s| s.split("DESCRIPTION").next())
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for a in cmd
            .get_arguments()
            .filter(|a| !a.is_positional() && a.get_action().takes_values())
        {
            if let (Some(l), Some(v)) = (a.get_long(), a.get_value_names()) {
                let want = format!("--{l} {}]", v[0]);
                assert!(syn.contains(&want), "{name}.1 SYNOPSIS lacks {want}: {syn}");
            }
        }
        // groff finds nothing to warn about.
        let o = run(Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&page));
        ok(&o);
        assert!(o.stderr.is_empty(), "{name}.1: {}", text(&o.stderr));
        // bash loads the completion and registers it for the tool.
        let comp = docs.join(format!("completions/bash/{name}.bash"));
        let o = run(Command::new("bash").arg("-c").arg(format!(
            "source {} && complete -p {name}",
            sh_quote(comp.as_os_str())
        )));
        ok(&o);
        assert!(text(&o.stdout).contains(&name), "{}", text(&o.stdout));
        // Completing `TOOL --` offers the tool's long options.
        let o = run(Command::new("bash").arg("-c").arg(format!(
            "source {} && COMP_WORDS=({name} --) COMP_CWORD=1 COMP_LINE='{name} --' COMP_POINT=${{#COMP_LINE}} && \
             f=$(complete -p {name} | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p') && $f {name} -- {name} && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            sh_quote(comp.as_os_str())
        )));
        ok(&o);
        assert!(
            text(&o.stdout).lines().any(|l| l == "--help"),
            "{name}: {}",
            text(&o.stdout)
        );
        // zsh's compinit finds the completion function in the directory.
        let o = run(Command::new("zsh")
            .arg("-fc")
            .arg(format!(
                "fpath=({} $fpath); autoload -U compinit; compinit -u -D; print -r -- $_comps[{name}]",
                sh_quote(docs.join("completions/zsh").as_os_str())
            ))
            .env("HOME", home.path()));
        ok(&o);
        assert_eq!(
            text(&o.stdout).trim(),
            format!("_{name}"),
            "zsh: {}",
            text(&o.stderr)
        );
        // fish completes the long options.
        let fish = docs.join(format!("completions/fish/{name}.fish"));
        let o = run(Command::new("fish")
            .arg("--no-config")
            .arg("-c")
            .arg(format!(
                "source {}; complete -C '{name} --'",
                sh_quote(fish.as_os_str())
            ))
            // fish writes its history and universal variables under HOME even with
            // --no-config: a folder of the test's, not the user's.
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME"));
        ok(&o);
        assert!(
            text(&o.stdout).lines().any(|l| l.starts_with("--help")),
            "fish: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
    }
}

#[test]
fn install_script_stages_everything() {
    let d = tempdir();
    let bin_dir = tool("e2i-capture").parent().unwrap().to_path_buf();
    let o = run(Command::new(repo().join("ci/install.sh"))
        .env("DESTDIR", d.path())
        .env("PREFIX", "/opt/e2i")
        .env("E2I_BIN", &bin_dir));
    ok(&o);
    let root = d.path().join("opt/e2i");
    for cmd in e2i_cli::cli::commands() {
        let n = cmd.get_name().to_string();
        for f in [
            format!("bin/{n}"),
            format!("share/man/man1/{n}.1"),
            format!("share/bash-completion/completions/{n}"),
            format!("share/zsh/site-functions/_{n}"),
            format!("share/fish/vendor_completions.d/{n}.fish"),
        ] {
            assert!(root.join(&f).is_file(), "{f} not installed");
        }
        let o = run(Command::new(root.join(format!("bin/{n}"))).arg("--version"));
        ok(&o);
        // man finds the installed page through the prefix's man path.
        let o = run(Command::new("man")
            .args(["-M"])
            .arg(root.join("share/man"))
            .arg(&n)
            .env("MANPAGER", "cat")
            .env("PAGER", "cat"));
        ok(&o);
        assert!(text(&o.stdout).contains("EXIT STATUS"), "{n}");
    }
    assert!(root.join("bin/e2i-bug-report").is_file());
    assert!(root.join("share/man/man1/e2i-bug-report.1").is_file());
    // The documents the man pages cite are installed with them.
    for doc in ["README.md", "cli.md", "stream-format.md", "move-journal.md"] {
        assert!(root.join("share/doc/e2i").join(doc).is_file(), "{doc}");
    }
}

/// The README's quick start, as written: its two commands are in it verbatim; the first
/// one's tool, run from the repository root on the bundled sample, writes what `e2image -r`
/// writes; the second is the executable script CI runs (running it here would recurse).
#[test]
fn readme_quick_start_works() {
    let root = repo();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let first = "cargo run --release -q --bin e2i-capture -- -r testdata/sample.ext4 sample.raw";
    assert!(readme.contains(first), "README lost the first command");
    assert!(
        readme.lines().any(|l| l.trim() == "ci/test.sh"),
        "README lost `ci/test.sh`"
    );
    let d = tempdir();
    let ours = d.path().join("sample.raw");
    let o = run(tool_cmd("e2i-capture")
        .args(["-r", "testdata/sample.ext4"])
        .arg(&ours)
        .current_dir(&root));
    ok(&o);
    assert!(o.stdout.is_empty() && o.stderr.is_empty());
    let theirs = e2image_bytes(
        &["-r"],
        &root.join("testdata/sample.ext4"),
        &d.path().join("e.raw"),
    );
    assert!(std::fs::read(&ours).unwrap() == theirs);
    use std::os::unix::fs::PermissionsExt;
    for s in ["ci/test.sh", "ci/gen-docs.sh", "ci/install.sh", ".ci/run"] {
        let m = std::fs::metadata(root.join(s)).unwrap();
        assert!(m.permissions().mode() & 0o111 != 0, "{s} is not executable");
    }
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.lines()
            .any(|l| l.contains("ci/test.sh") && !l.trim_start().starts_with('#'))
    );
    // Every file the README links to exists.
    for link in readme.split("](").skip(1) {
        let target = link.split(')').next().unwrap();
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        assert!(
            root.join(target).exists(),
            "README links to missing {target}"
        );
    }
}

/// A compressed INPUT cut short or damaged is refused and said to be that, in one line,
/// whatever the compression. A damaged zstd frame was decoded to other bytes and converted,
/// exit 0 (its content checksum went unchecked); zstd's errors came as debug dumps of
/// nested decoder errors ("BlockContentReadError(Error { kind: UnexpectedEof, … })"), and
/// the others in each decoder's own words ("premature eof", "decompression not finished
/// but EOF reached") without saying which data ended or was damaged.
#[test]
fn cut_or_damaged_compressed_inputs_are_named_in_one_line() {
    let d = tempdir();
    let img = mkfs(d.path(), "fs.img", "4M", &[]);
    let q = d.path().join("fs.qcow2");
    sh(tool_cmd("e2i-capture").arg("-Q").arg(&img).arg(&q));
    let out = d.path().join("out.raw");
    for (name, prog) in [
        ("gzip", "gzip"),
        ("bzip2", "bzip2"),
        ("xz", "xz"),
        ("zstd", "zstd"),
    ] {
        let z = sh(Command::new(prog).args(["-c", "-q"]).arg(&q)).stdout;
        let mut flipped = z.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xFF;
        for (how, bytes) in [("cut", &z[..z.len() / 2]), ("damaged", &flipped[..])] {
            let input = d.path().join(format!("in.{prog}"));
            std::fs::write(&input, bytes).unwrap();
            for t in ["e2i-to-raw", "qcow2-to-raw"] {
                let what = format!("{t}, {how} {name}");
                let err = failed(&run(tool_cmd(t).arg(&input).arg(&out)), &what);
                assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
                // bzip2 checks a block only once it is decoded: damage in the first block
                // shows as garbage, which no format matches.
                assert!(
                    err.contains(&format!("the {name} data is "))
                        || (name == "bzip2" && err.contains("unrecognised input")),
                    "{what}: {err}"
                );
                assert!(!err.contains("Error {") && !out.exists(), "{what}: {err}");
            }
        }
    }
}
