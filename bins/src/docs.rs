//! Man pages and shell completions, generated from the tools' clap definitions
//! (`ci/gen-docs.sh`, `just man`; a test keeps the committed copies in `docs/` current).

use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Every generated file: its path under the docs directory and its content.
pub fn render() -> io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = Vec::new();
    for cmd in crate::cli::commands() {
        let name = cmd.get_name().to_string();
        let page = man_page(&cmd)?;
        files.push((PathBuf::from(format!("man/{name}.1")), page));
        for (shell, path) in [
            (Shell::Bash, format!("completions/bash/{name}.bash")),
            (Shell::Zsh, format!("completions/zsh/_{name}")),
            (Shell::Fish, format!("completions/fish/{name}.fish")),
        ] {
            let mut c = cmd.clone();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut c, &name, &mut out);
            files.push((PathBuf::from(path), out));
        }
    }
    files.push((
        PathBuf::from("man/e2i-bug-report.1"),
        bug_report_page().into_bytes(),
    ));
    Ok(files)
}

/// Write every generated file under `dir` (e.g. `docs/`).
pub fn generate(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (rel, data) in render()? {
        let path = dir.join(&rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&path, data)?;
        written.push(path);
    }
    Ok(written)
}

/// A tool's man page: clap_mangen's title, name, synopsis, description and options, then
/// EXAMPLES, EXIT STATUS and NOTES from the command's `after_long_help`, then the version.
pub fn man_page(cmd: &clap::Command) -> io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    out.extend_from_slice(synopsis(cmd).as_bytes());
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if let Some(h) = cmd.get_after_long_help() {
        out.extend_from_slice(help_sections(&h.to_string()).as_bytes());
    }
    out.extend_from_slice(see_also(cmd.get_name()).as_bytes());
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// SYNOPSIS: every option with its argument (`[-O|--dest-offset N]`), then the operands
/// (`[OUTPUT]` when optional). clap_mangen's own synopsis leaves option arguments out.
fn synopsis(cmd: &clap::Command) -> String {
    let mut parts = vec![format!("\\fB{}\\fR", roff_escape(cmd.get_name()))];
    let mut operands = Vec::new();
    for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let value = a
            .get_value_names()
            .and_then(|v| v.first())
            .map(|v| v.to_string())
            .unwrap_or_else(|| a.get_id().to_string().to_uppercase());
        if a.is_positional() {
            let v = format!("\\fI{}\\fR", roff_escape(&value));
            operands.push(if a.is_required_set() {
                v
            } else {
                format!("[{v}]")
            });
            continue;
        }
        let mut names = Vec::new();
        if let Some(c) = a.get_short() {
            names.push(format!("\\fB\\-{}\\fR", roff_escape(&c.to_string())));
        }
        if let Some(l) = a.get_long() {
            names.push(format!("\\fB\\-\\-{}\\fR", roff_escape(l)));
        }
        let takes_value = a.get_action().takes_values();
        let arg = if takes_value {
            format!(" \\fI{}\\fR", roff_escape(&value))
        } else {
            String::new()
        };
        parts.push(format!("[{}{arg}]", names.join("|")));
    }
    parts.extend(operands);
    // No hyphenation inside option names.
    format!(".SH SYNOPSIS\n.nh\n{}\n.hy\n", parts.join(" "))
}

/// The man page of `scripts/e2i-bug-report` (a shell script: no clap definition).
fn bug_report_page() -> String {
    let v = env!("CARGO_PKG_VERSION");
    format!(
        r#".TH e2i\-bug\-report 1  "e2i\-bug\-report {v}"
.SH NAME
e2i\-bug\-report \- Bundle what filesystem maintainers ask for about an ext2/3/4 filesystem, with every private string scrambled
.SH SYNOPSIS
\fBe2i\-bug\-report\fR [\fB\-h\fR|\fB\-\-help\fR] [\fB\-V\fR|\fB\-\-version\fR] [\fB\-P\fR \fIN\fR [\fB\-\-past\-partition\-end\fR]] [\fB\-\-\fR] \fIDEVICE\fR [\fIOUTPUT.tar\fR]
.SH DESCRIPTION
Captures the filesystem on DEVICE (a block device or an image file; with \fB\-P\fR \fIN\fR, the filesystem in partition N of DEVICE's partition table) with \fBe2i\-capture \-s \-Q\fR and writes one tarball holding:
.TP
\fBfs.qcow2.xz\fR
the scrambled qcow2 image (uncompressed clusters, so stock e2image reads it), compressed with xz; where xz is missing, \fBfs.qcow2.bz2\fR, compressed with bzip2;
.TP
\fBdumpe2fs.txt\fR
\fBdumpe2fs \-h\fR of the scrambled image;
.TP
\fBgeometry.txt\fR
the size and partition geometry of DEVICE: its partition table as \fBe2i\-capture \-\-list\fR reads it (number, start and size in bytes, type, filesystem kind, block size and count), the partition captured; no serial numbers, labels or UUIDs;
.TP
\fBcapture.txt\fR
the capture's exit status and its summary on stderr (what it scrambled, what damage it skipped), with DEVICE's name replaced by the word DEVICE;
.TP
\fBSHA256SUMS\fR
the checksums of the members.
.PP
Nothing in it reveals a file name, label, symlink target or extended attribute of the source. The image is marked as scrambled (its qcow2 header, and its superblock's last-mounted path, which reads <scrambled by e2i\-capture \-s>): the e2i tools refuse to write it back over the filesystem it was taken from. OUTPUT.tar defaults to \fIe2i\-bug\-report\-DATE.tar\fR in the current folder. Its folder is checked (it must exist and be writable) before any work is done, an existing OUTPUT.tar is never overwritten, and the last line on stderr names the file actually written.
.PP
A damaged filesystem is bundled too: when the capture skips damaged structures (its exit status 3, "the image holds everything else"), the script says so on stderr and writes the bundle all the same, with the capture's account of the damage in capture.txt. When dumpe2fs fails on a damaged image after printing what it could, its output is kept, followed by its exit status and complaint.
.SH OPTIONS
.TP
\fB\-h\fR, \fB\-\-help\fR
Print the usage and exit.
.TP
\fB\-V\fR, \fB\-\-version\fR
Print the version and exit.
.TP
\fB\-P\fR, \fB\-\-partition\fR \fIN\fR
Capture the filesystem in partition N of a GPT or MBR partition table on DEVICE (1\-based; MBR logical partitions from 5, as Linux numbers them). A filesystem that runs past the end of its partition (a partition shrunk under it) is read only up to that end: e2i\-capture warns, and zeros stand for the rest.
.TP
\fB\-\-past\-partition\-end\fR
With \fB\-P\fR: read such a filesystem on past its partition's end, into what follows on DEVICE, as \fBe2image \-o\fR would (\fBe2i\-capture \-\-past\-partition\-end\fR).
.TP
\fB\-\-\fR
End of options: a DEVICE or OUTPUT.tar whose name starts with \- follows it (\fBe2i\-bug\-report \-\- \-disk.img \-report.tar\fR). Without it such a name is a usage error, before any work.
.SH ENVIRONMENT
.TP
\fBE2I_BIN\fR
the folder of the e2i tools to use (default: the repository's target/release next to the script, then PATH).
.SH EXAMPLES
.TP
\fBe2i\-bug\-report /dev/sdb1 sdb1\-report.tar\fR
bundle the filesystem on /dev/sdb1
.TP
\fBe2i\-bug\-report \-P 2 disk.img\fR
bundle the filesystem in partition 2 of a disk image
.SH "EXIT STATUS"
.TP
\fB0\fR
the bundle was written (also for a damaged filesystem whose capture skipped damage)
.TP
\fB1\fR
failure (one line on stderr); nothing is left behind
.TP
\fB2\fR
usage error
.SH "SEE ALSO"
\fBe2i\-capture\fR(1), \fBqcow2\-to\-raw\fR(1), \fBdumpe2fs\fR(8), \fBe2image\fR(8)
"#
    )
}

/// Escape text for roff: backslashes, hyphens (so they stay ASCII in copies and searches),
/// and a leading `.` or `'` that would read as a request.
fn roff_escape(s: &str) -> String {
    let e = s.replace('\\', "\\e").replace('-', "\\-");
    if e.starts_with('.') || e.starts_with('\'') {
        format!("\\&{e}")
    } else {
        e
    }
}

/// Turn the `after_long_help` text (sections "Examples:" and "Exit status:" of indented
/// lines, "Diagnostics:" and "Notes:" of paragraphs, and free paragraphs, which are notes)
/// into roff sections.
fn help_sections(text: &str) -> String {
    #[derive(PartialEq)]
    enum Sec {
        None,
        Examples,
        Exit,
        Diagnostics,
        Notes,
    }
    let mut sec = Sec::None;
    let mut out = String::new();
    let mut diag = String::new();
    let mut notes = String::new();
    for line in text.lines() {
        let t = line.trim();
        match t {
            "Examples:" => {
                sec = Sec::Examples;
                out.push_str(".SH EXAMPLES\n");
                continue;
            }
            "Exit status:" => {
                sec = Sec::Exit;
                out.push_str(".SH \"EXIT STATUS\"\n");
                continue;
            }
            "Diagnostics:" => {
                sec = Sec::Diagnostics;
                continue;
            }
            "Notes:" => {
                sec = Sec::Notes;
                continue;
            }
            _ => {}
        }
        if t.is_empty() {
            match sec {
                Sec::Notes => notes.push_str(".PP\n"),
                Sec::Diagnostics => diag.push_str(".PP\n"),
                _ => sec = Sec::None,
            }
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        match sec {
            Sec::Examples if indent >= 8 => {
                // The description of the command above.
                out.push_str(&roff_escape(t));
                out.push('\n');
            }
            Sec::Examples => {
                let (cmd, desc) = split_columns(t);
                out.push_str(".TP\n\\fB");
                out.push_str(&roff_escape(cmd));
                out.push_str("\\fR\n");
                if !desc.is_empty() {
                    out.push_str(&roff_escape(desc));
                    out.push('\n');
                }
            }
            Sec::Exit if indent >= 6 => {
                // The description of the status above, continued.
                out.push_str(&roff_escape(t));
                out.push('\n');
            }
            Sec::Exit => {
                let (code, desc) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
                out.push_str(".TP\n\\fB");
                out.push_str(&roff_escape(code));
                out.push_str("\\fR\n");
                out.push_str(&roff_escape(desc.trim()));
                out.push('\n');
            }
            Sec::Diagnostics => {
                diag.push_str(&roff_escape(t));
                diag.push('\n');
            }
            Sec::None | Sec::Notes => {
                sec = Sec::Notes;
                notes.push_str(&roff_escape(t));
                notes.push('\n');
            }
        }
    }
    if !diag.is_empty() {
        out.push_str(".SH DIAGNOSTICS\n");
        out.push_str(diag.trim_end_matches(".PP\n"));
    }
    if !notes.is_empty() {
        out.push_str(".SH NOTES\n");
        out.push_str(notes.trim_end_matches(".PP\n"));
    }
    out
}

/// `cmd   description` (columns separated by three or more spaces).
fn split_columns(t: &str) -> (&str, &str) {
    match t.find("   ") {
        Some(i) => (t[..i].trim_end(), t[i..].trim()),
        None => (t, ""),
    }
}

/// SEE ALSO: the other e2i tools and the e2fsprogs/qemu tools they stand in for.
fn see_also(name: &str) -> String {
    let mut refs: Vec<String> = crate::cli::commands()
        .iter()
        .map(|c| c.get_name().to_string())
        .filter(|n| n != name)
        .map(|n| format!("\\fB{}\\fR(1)", roff_escape(&n)))
        .collect();
    refs.push("\\fBe2i\\-bug\\-report\\fR(1)".to_string());
    for (page, sec) in [
        ("e2image", 8),
        ("e2undo", 8),
        ("e2fsck", 8),
        ("qemu\\-img", 1),
    ] {
        refs.push(format!("\\fB{page}\\fR({sec})"));
    }
    format!(
        ".SH \"SEE ALSO\"\n{}\n.PP\nThe command\\-line contract (cli.md), the stream format (stream\\-format.md) and the move journal (move\\-journal.md) are installed in share/doc/e2i under the installation prefix (docs/ in the source tree).\n",
        refs.join(", ")
    )
}
