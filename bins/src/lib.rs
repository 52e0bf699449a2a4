//! Shared command-line glue for the e2i tools: number parsing, error reporting and exit
//! codes, outputs that appear only when complete, and progress drawing.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use e2i::progress::{Progress, Unit};

pub mod cli;
pub mod docs;
pub mod json;

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: usage error.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: capture finished, damaged metadata skipped.
pub const EXIT_DAMAGED: u8 = 3;

/// Parse a number: decimal or `0x` hex, with an optional binary suffix (`K`, `KiB`, `M`,
/// `MiB`, … `E`; all powers of 1024). Garbage, octal-looking input aside, is an error.
pub fn parse_number(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = split_suffix(t).ok_or_else(|| format!("invalid number '{s}'"))?;
    let v = if let Some(h) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(h, 16)
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<u64>()
    } else {
        return Err(format!("invalid number '{s}'"));
    }
    .map_err(|_| format!("invalid number '{s}'"))?;
    v.checked_mul(mult)
        .ok_or_else(|| format!("number '{s}' is too large"))
}

fn split_suffix(t: &str) -> Option<(&str, u64)> {
    const UNITS: [(char, u32); 6] = [
        ('K', 10),
        ('M', 20),
        ('G', 30),
        ('T', 40),
        ('P', 50),
        ('E', 60),
    ];
    let is_hex = t.starts_with("0x") || t.starts_with("0X");
    for suffix_len in [3usize, 1] {
        if t.len() <= suffix_len {
            continue;
        }
        let (d, suf) = t.split_at(t.len() - suffix_len);
        let mut chars = suf.chars();
        let Some(c) = chars.next() else { continue };
        let rest: String = chars.collect();
        if suffix_len == 3 && !rest.eq_ignore_ascii_case("iB") {
            continue;
        }
        // In hex, a trailing 'E' is a digit, not exa.
        if is_hex && suffix_len == 1 && c.is_ascii_hexdigit() {
            continue;
        }
        if let Some(&(_, sh)) = UNITS.iter().find(|(u, _)| u.eq_ignore_ascii_case(&c)) {
            return Some((d, 1u64 << sh));
        }
    }
    Some((t, 1))
}

/// clap value parser for numbers.
pub fn number(s: &str) -> Result<u64, String> {
    parse_number(s)
}

/// Run a tool's body: print errors as `tool: message` (one line) and map them to exit 1.
/// A closed stdout (broken pipe) ends quietly with success.
pub fn run(tool: &str, body: impl FnOnce() -> anyhow::Result<u8>) -> ExitCode {
    match body() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::from(EXIT_OK);
            }
            let msg = one_line(&e);
            let _ = writeln!(io::stderr(), "{tool}: {msg}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The error and its causes joined with ": ", skipping a cause whose text the message already
/// ends with (e2i's I/O errors show their OS error, which is also their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if msg.ends_with(&s) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s);
    }
    msg.replace('\n', " ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<e2i::Error>()
                .is_some_and(|x| x.is_broken_pipe())
    })
}

/// Exit with a usage error (exit 2) and a one-line message.
pub fn usage_error(tool: &str, msg: &str) -> u8 {
    let _ = writeln!(
        io::stderr(),
        "{tool}: {msg}\nTry '{tool} --help' for more information."
    );
    EXIT_USAGE
}

/// `-` (stdin/stdout) where the tool needs a file or device it can seek in: a usage error
/// (exit 2) saying so. `what` names the argument (`SOURCE`), `hint` says what to do instead.
pub fn refuse_dash(tool: &str, what: &str, path: &Path, hint: &str) -> Option<u8> {
    (path == Path::new("-")).then(|| {
        usage_error(
            tool,
            &format!("{what} cannot be '-' (it needs a seekable file or device); {hint}"),
        )
    })
}

/// An output path: stdout, a block device, or a regular file written under a temporary
/// name and renamed into place only on [`Output::commit`].
pub enum Output {
    Stdout,
    Device {
        file: File,
    },
    File {
        file: File,
        tmp: PathBuf,
        dest: PathBuf,
        committed: bool,
    },
}

impl Output {
    /// Open `path` (`-` is stdout) for a fresh image.
    pub fn create(path: &Path) -> anyhow::Result<Output> {
        use anyhow::Context;
        if path == Path::new("-") {
            e2i::io::grow_pipe(io::stdout());
            return Ok(Output::Stdout);
        }
        if let Ok(meta) = std::fs::metadata(path)
            && meta.file_type().is_block_device()
        {
            let file = OpenOptions::new()
                .write(true)
                .read(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            return Ok(Output::Device { file });
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.e2i-partial-{}", std::process::id()));
        // 0600 like e2image: images hold private metadata (names, layout).
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Output::File {
            file,
            tmp,
            dest: path.to_path_buf(),
            committed: false,
        })
    }

    /// Make a regular-file output visible under its name.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        use anyhow::Context;
        if let Output::File {
            file,
            tmp,
            dest,
            committed,
        } = self
        {
            // No fsync: like e2image, an image is left to the page cache; the temporary
            // name guards against failures of this run, not against power loss.
            let _ = file;
            std::fs::rename(tmp, &dest)
                .with_context(|| format!("renaming into {}", dest.display()))?;
            *committed = true;
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Output::File {
            tmp,
            committed: false,
            ..
        } = self
        {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Draws progress on stderr, never on stdout (stdout carries data in pipelines): an
/// indicatif bar on a terminal; otherwise a plain line every few seconds. The copy phase's
/// figures are kept for [`Reporter::summary`], which prints e2image's closing line
/// `Copied N / M blocks (P%) in HH:MM:SS at R MB/s`; other phases ("scanning inodes",
/// "finding data") never print a `Copied` line.
pub struct Reporter {
    enabled: bool,
    tty: bool,
    interval: Duration,
    bar: Option<indicatif::ProgressBar>,
    phase: String,
    unit: Unit,
    total: u64,
    done: u64,
    block_size: u64,
    start: Instant,
    last_line: Instant,
    lines: u32,
    copied: Option<Copied>,
}

/// Figures of the last finished copy phase.
#[derive(Debug, Clone, Copy)]
struct Copied {
    unit: Unit,
    done: u64,
    total: u64,
    elapsed: Duration,
}

/// Default pause between two plain progress lines.
const LINE_INTERVAL: Duration = Duration::from_secs(3);

impl Reporter {
    /// A reporter that draws only when `enabled` (`-p`).
    pub fn new(enabled: bool) -> Self {
        // Hidden, for tests: `E2I_PROGRESS_INTERVAL_MS` sets the pause between plain lines.
        let interval = std::env::var("E2I_PROGRESS_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(LINE_INTERVAL, Duration::from_millis);
        Reporter {
            enabled,
            tty: io::stderr().is_terminal(),
            interval,
            bar: None,
            phase: String::new(),
            unit: Unit::Blocks,
            total: 0,
            done: 0,
            block_size: 0,
            start: Instant::now(),
            last_line: Instant::now(),
            lines: 0,
            copied: None,
        }
    }

    /// Block size, for the MB/s figures of block phases.
    pub fn set_block_size(&mut self, bs: u32) {
        self.block_size = u64::from(bs);
    }

    /// Print the closing line of the copy phase (if one ran): `Copied N / M blocks (P%) in
    /// HH:MM:SS at R MB/s`. `block_size` converts byte-counted phases to blocks and blocks
    /// to MB/s; 0 keeps what [`Reporter::set_block_size`] gave.
    pub fn summary(&mut self, block_size: u32) {
        if block_size != 0 {
            self.block_size = u64::from(block_size);
        }
        let Some(c) = self.copied.take() else { return };
        if !self.enabled {
            return;
        }
        let bs = self.block_size;
        let (done, total, bytes) = match c.unit {
            Unit::Bytes if bs > 0 => (c.done.div_ceil(bs), c.total.div_ceil(bs), c.done),
            Unit::Bytes => (c.done, c.total, c.done),
            _ => (c.done, c.total, c.done.saturating_mul(bs)),
        };
        let unit = match (c.unit, bs) {
            (Unit::Bytes, 0) => "bytes",
            (Unit::Inodes, _) => "inodes",
            _ => "blocks",
        };
        let line = copied_line(done, total, unit, bytes, c.elapsed);
        let _ = writeln!(io::stderr(), "{line}");
    }

    fn unit_name(&self) -> &'static str {
        unit_name(self.unit)
    }

    fn rate_text(&self, per_sec: f64) -> String {
        match self.unit {
            Unit::Bytes => format!("{:.2} MB/s", per_sec / 1048576.0),
            Unit::Blocks if self.block_size > 0 => {
                format!("{:.2} MB/s", per_sec * self.block_size as f64 / 1048576.0)
            }
            _ => format!("{per_sec:.0} {}/s", self.unit_name()),
        }
    }

    fn plain_line(&self) -> String {
        let el = self.start.elapsed().as_secs_f64();
        let per_sec = if el > 0.0 { self.done as f64 / el } else { 0.0 };
        let eta = if per_sec > 0.0 && self.total > self.done {
            format!(
                ", {} remaining",
                hms(Duration::from_secs_f64(
                    ((self.total - self.done) as f64 / per_sec).min(1e9)
                ))
            )
        } else {
            String::new()
        };
        format!(
            "{}: {} / {} {} ({}%) at {}{eta}",
            self.phase,
            self.done,
            self.total,
            self.unit_name(),
            percent(self.done, self.total),
            self.rate_text(per_sec)
        )
    }

    fn new_bar(&self) -> indicatif::ProgressBar {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(self.total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        let counts = match self.unit {
            Unit::Bytes => "{bytes}/{total_bytes}",
            Unit::Blocks => "{pos}/{len} blocks",
            Unit::Inodes => "{pos}/{len} inodes",
        };
        let bs = self.block_size;
        let unit = self.unit;
        let template = format!("{{msg}} [{{bar:25}}] {counts} ({{percent}}%) {{rate}} ETA {{eta}}");
        let style = indicatif::ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .with_key(
                "rate",
                move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let per_sec = s.per_sec();
                    let _ = match unit {
                        Unit::Bytes => write!(w, "{:.2} MB/s", per_sec / 1048576.0),
                        Unit::Blocks if bs > 0 => {
                            write!(w, "{:.2} MB/s", per_sec * bs as f64 / 1048576.0)
                        }
                        Unit::Blocks => write!(w, "{per_sec:.0} blocks/s"),
                        Unit::Inodes => write!(w, "{per_sec:.0} inodes/s"),
                    };
                },
            )
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(self.phase.clone());
        // Draw at once: short phases show too.
        bar.tick();
        bar
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        // An error line must not land on a half-drawn bar.
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn unit_name(u: Unit) -> &'static str {
    match u {
        Unit::Inodes => "inodes",
        Unit::Blocks => "blocks",
        Unit::Bytes => "bytes",
    }
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        100
    } else {
        ((u128::from(done) * 100) / u128::from(total)) as u64
    }
}

/// e2image's closing line: `Copied N / M blocks (P%) in HH:MM:SS at R MB/s`.
pub fn copied_line(done: u64, total: u64, unit: &str, bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        bytes as f64 / 1048576.0 / secs
    } else {
        0.0
    };
    format!(
        "Copied {done} / {total} {unit} ({}%) in {} at {rate:.2} MB/s",
        percent(done, total),
        hms(elapsed)
    )
}

/// Phases whose end is a copy's end (they get the `Copied` line).
fn is_copy_phase(name: &str) -> bool {
    name.starts_with("copying") || name == "moving" || name == "installing"
}

/// `HH:MM:SS`.
pub fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl Progress for Reporter {
    fn block_size(&mut self, bytes: u32) {
        self.set_block_size(bytes);
    }

    fn phase(&mut self, name: &str, total: u64, unit: Unit) {
        if !self.enabled {
            return;
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        // The same phase announced again with its total (capture's scan) keeps its clock.
        if name != self.phase || self.total != 0 {
            self.start = Instant::now();
            self.last_line = Instant::now();
            self.lines = 0;
        }
        self.phase = name.to_string();
        self.unit = unit;
        self.total = total;
        self.done = 0;
        if self.tty && total > 0 {
            self.bar = Some(self.new_bar());
        }
    }

    fn update(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        self.done = done;
        if let Some(b) = &self.bar {
            b.set_position(done);
        } else if !self.tty && self.last_line.elapsed() >= self.interval {
            self.last_line = Instant::now();
            self.lines += 1;
            let _ = writeln!(io::stderr(), "{}", self.plain_line());
        }
    }

    fn finish(&mut self) {
        if !self.enabled {
            return;
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if is_copy_phase(&self.phase) {
            self.copied = Some(Copied {
                unit: self.unit,
                done: self.done,
                total: self.total,
                elapsed: self.start.elapsed(),
            });
        } else if !self.tty && self.lines > 0 {
            // A long non-copy phase that printed lines says it is over.
            let _ = writeln!(
                io::stderr(),
                "{}: done, {} {} in {}",
                self.phase,
                self.done,
                self.unit_name(),
                hms(self.start.elapsed())
            );
        }
        self.phase.clear();
        self.total = 0;
    }
}

/// Parse the command line like clap, but report usage errors in the tools' own form: one
/// line `tool: message` and a pointer to `--help`, exit 2. `--help` and `--version` print
/// as usual.
pub fn parse_args<T: clap::Parser>(tool: &str) -> T {
    match T::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            let msg = clap_error_line(&e.render().to_string());
            std::process::exit(i32::from(usage_error(tool, &msg)));
        }
    }
}

/// clap's error text as one line: the message and its details, without usage and tips.
fn clap_error_line(text: &str) -> String {
    let mut parts = Vec::new();
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with("Usage:") || l.starts_with("For more information") {
            break;
        }
        if l.is_empty() || l.starts_with("tip:") {
            continue;
        }
        parts.push(l.strip_prefix("error: ").unwrap_or(l).to_string());
    }
    parts.join(" ")
}

/// Where a `--json` summary goes: stdout, unless stdout carries the data (OUTPUT `-`).
pub fn print_json(line: &str, output_is_stdout: bool) {
    if output_is_stdout {
        let _ = writeln!(io::stderr(), "{line}");
    } else {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_number;
    use super::{clap_error_line, copied_line, hms, is_copy_phase, percent};
    use std::time::Duration;

    #[test]
    fn closing_line_matches_e2image_wording() {
        // e2image: "Copied %llu / %llu blocks (%d%%) in %s at %.2f MB/s" (MB = MiB).
        assert_eq!(
            copied_line(512, 1024, "blocks", 3 << 20, Duration::from_secs(3723)),
            "Copied 512 / 1024 blocks (50%) in 01:02:03 at 0.00 MB/s"
        );
        assert_eq!(
            copied_line(10, 10, "blocks", 4 << 20, Duration::from_secs(2)),
            "Copied 10 / 10 blocks (100%) in 00:00:02 at 2.00 MB/s"
        );
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
        assert_eq!(hms(Duration::from_secs(100 * 3600 + 61)), "100:01:01");
        assert!(is_copy_phase("copying") && is_copy_phase("copying inode tables"));
        assert!(is_copy_phase("moving") && is_copy_phase("installing"));
        assert!(!is_copy_phase("scanning inodes") && !is_copy_phase("finding data"));
    }

    #[test]
    fn clap_errors_become_one_line() {
        let text = "error: the following required arguments were not provided:\n  <SOURCE>\n  <OUTPUT>\n\nUsage: t <SOURCE> <OUTPUT>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_error_line(text),
            "the following required arguments were not provided: <SOURCE> <OUTPUT>"
        );
        let text = "error: unexpected argument '--x' found\n\n  tip: to pass '--x' as a value, use '-- --x'\n\nUsage: t\n";
        assert_eq!(clap_error_line(text), "unexpected argument '--x' found");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0"), Ok(0));
        assert_eq!(parse_number("4096"), Ok(4096));
        assert_eq!(parse_number("0x1000"), Ok(4096));
        assert_eq!(parse_number("1M"), Ok(1 << 20));
        assert_eq!(parse_number("1MiB"), Ok(1 << 20));
        assert_eq!(parse_number("2k"), Ok(2048));
        assert_eq!(parse_number("0x1E"), Ok(30));
        assert!(parse_number("12abc").is_err());
        assert!(parse_number("").is_err());
        assert!(parse_number("-1").is_err());
        assert!(parse_number("16E").is_err());
        assert_eq!(parse_number("010"), Ok(10));
    }
}
