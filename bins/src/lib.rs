//! Shared command-line glue for the e2i tools: number parsing, error reporting and exit
//! codes, outputs that appear only when complete, and progress drawing.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use e2i::progress::{Progress, Unit};

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
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
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

/// Draws progress on stderr: a bar on a terminal, plain lines every few seconds otherwise.
pub struct Reporter {
    enabled: bool,
    tty: bool,
    bar: Option<indicatif::ProgressBar>,
    phase: String,
    unit: Unit,
    total: u64,
    done: u64,
    block_size: u64,
    start: Instant,
    last_line: Instant,
}

impl Reporter {
    pub fn new(enabled: bool) -> Self {
        Reporter {
            enabled,
            tty: io::stderr().is_terminal(),
            bar: None,
            phase: String::new(),
            unit: Unit::Blocks,
            total: 0,
            done: 0,
            block_size: 0,
            start: Instant::now(),
            last_line: Instant::now(),
        }
    }

    /// Block size for the MB/s figure of block phases.
    pub fn set_block_size(&mut self, bs: u32) {
        self.block_size = u64::from(bs);
    }

    fn unit_name(&self) -> &'static str {
        match self.unit {
            Unit::Inodes => "inodes",
            Unit::Blocks => "blocks",
            Unit::Bytes => "bytes",
        }
    }
}

/// `HH:MM:SS`.
pub fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl Progress for Reporter {
    fn phase(&mut self, name: &str, total: u64, unit: Unit) {
        if !self.enabled {
            return;
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.phase = name.to_string();
        self.unit = unit;
        self.total = total;
        self.done = 0;
        self.start = Instant::now();
        self.last_line = Instant::now();
        if self.tty && total > 0 {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total),
                indicatif::ProgressDrawTarget::stderr(),
            );
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} ({percent}%) {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(format!("{name} ({})", self.unit_name()));
            self.bar = Some(bar);
        }
    }

    fn update(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        self.done = done;
        if let Some(b) = &self.bar {
            b.set_position(done);
        } else if self.last_line.elapsed() >= Duration::from_secs(3) {
            self.last_line = Instant::now();
            let pct = (done * 100).checked_div(self.total).unwrap_or(0);
            let _ = writeln!(
                io::stderr(),
                "{}: {} / {} {} ({pct}%)",
                self.phase,
                done,
                self.total,
                self.unit_name()
            );
        }
    }

    fn finish(&mut self) {
        if !self.enabled {
            return;
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if self.unit == Unit::Blocks || self.unit == Unit::Bytes {
            let el = self.start.elapsed();
            let bytes = if self.unit == Unit::Blocks {
                self.done * self.block_size.max(1)
            } else {
                self.done
            };
            let rate = if el.as_secs_f64() > 0.0 {
                bytes as f64 / 1048576.0 / el.as_secs_f64()
            } else {
                0.0
            };
            let pct = if self.total > 0 {
                self.done as f64 * 100.0 / self.total as f64
            } else {
                100.0
            };
            let _ = writeln!(
                io::stderr(),
                "Copied {} / {} {} ({:.0}%) in {} at {:.2} MB/s",
                self.done,
                self.total,
                self.unit_name(),
                pct,
                hms(el),
                rate
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_number;

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
