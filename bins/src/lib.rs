//! Shared command-line glue for the e2i tools: number parsing, error reporting and exit
//! codes, outputs that appear only when complete, and progress drawing.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use e2i::progress::{Progress, Unit};

pub mod cli;
pub mod convert;
pub mod docs;
pub mod json;
pub mod partition;

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

/// clap value parser for a block size (`-B`): 1024 to 65536, a power of two.
pub fn block_size(s: &str) -> Result<e2i::units::BlockSize, String> {
    let v = parse_number(s)?;
    u32::try_from(v)
        .ok()
        .and_then(e2i::units::BlockSize::new)
        .ok_or_else(|| format!("invalid block size {v}: a power of two from 1024 to 65536"))
}

/// Exit status of a run whose output pipe was closed by its reader: what a shell reports
/// for a process killed by SIGPIPE, as e2image is.
pub const EXIT_BROKEN_PIPE: u8 = 141;

/// The `--json` summary of a run, filled in as the run learns its figures and printed on
/// every outcome (success, dry run, failure) with `"exit"` and, on failure, `"error"`.
#[derive(Debug, Default)]
pub struct Summary {
    enabled: bool,
    /// OUTPUT is stdout: the summary goes to stderr.
    to_stderr: bool,
    /// See [`Summary::replaced`].
    replaced: bool,
    obj: json::Obj,
}

impl Summary {
    /// A summary printed only when `enabled` (`--json`).
    pub fn new(enabled: bool, tool: &str) -> Self {
        Summary {
            enabled,
            to_stderr: false,
            replaced: false,
            obj: json::Obj::new().str("tool", tool),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Stdout carries data (OUTPUT `-`, or a dry run's listing): print on stderr.
    pub fn to_stderr(&mut self, yes: bool) {
        self.to_stderr |= yes;
    }

    /// The run printed its own JSON in its place (`--list --json`'s array): nothing more,
    /// unless the run fails after all (a closed stdout).
    pub fn replaced(&mut self) {
        self.replaced = true;
    }

    /// Add fields: `sum.add(|o| o.num("blocks", n))`.
    pub fn add(&mut self, f: impl FnOnce(json::Obj) -> json::Obj) {
        let o = std::mem::take(&mut self.obj);
        self.obj = f(o);
    }

    /// Print the summary; the run's status, unless a summary due on stdout could not be
    /// written there: a script reading it got nothing, so the run did not succeed (141 when
    /// the reader went away, else 1 with one line naming stdout).
    fn print(&mut self, tool: &str, status: u8, error: Option<&str>) -> u8 {
        if !self.enabled || self.replaced && status == EXIT_OK {
            return status;
        }
        let mut o = std::mem::take(&mut self.obj).num("exit", u64::from(status));
        if let Some(e) = error {
            o = o.str("error", e);
        }
        // A closed stdout cannot take it: stderr still can. `>&-` left the runtime's
        // /dev/null there, which would swallow it.
        let closed = STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed);
        let to_stderr = self.to_stderr || status == EXIT_BROKEN_PIPE || closed;
        match print_json(&o.finish(), to_stderr) {
            Ok(()) => status,
            // A failed run has said why already; its status stands.
            Err(_) if status != EXIT_OK && status != EXIT_DAMAGED => status,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => EXIT_BROKEN_PIPE,
            Err(e) => {
                let on =
                    e2i::output::stdout_target().map_or_else(String::new, |t| format!(", {t}"));
                let _ = writeln!(io::stderr(), "{tool}: - (stdout{on}): --json summary: {e}");
                EXIT_FAILURE
            }
        }
    }
}

/// Run a tool's body: print errors as `tool: message` (one line) and map them to exit 1; a
/// closed output pipe ends quietly with 141 (the receiver did not get everything, so never
/// 0). The `--json` summary is printed whatever the outcome. SIGINT, SIGTERM, SIGHUP and
/// the other signals that end a run first remove its temporary files, then end the process
/// as the signal would.
pub fn run(
    tool: &str,
    mut summary: Summary,
    body: impl FnOnce(&mut Summary) -> anyhow::Result<u8>,
) -> ExitCode {
    note_closed_stdout();
    clean_up_on_signals();
    let result = body(&mut summary);
    // From here the main thread ends the process: a signal's thread already ending it (its
    // cleanup under way; it fails every write to a file from its start, which may be what
    // ended the body) is waited for, rather than exit 1 with a write error it caused; one
    // that arrives later is left to the check below.
    {
        let _wait = e2i::output::pending::critical();
        e2i::output::pending::hand_over();
    }
    let (code, msg) = match &result {
        Ok(code) => (*code, None),
        Err(e) if is_broken_pipe(e) => (EXIT_BROKEN_PIPE, None),
        Err(e) => {
            let msg = one_line(e);
            let _ = writeln!(io::stderr(), "{tool}: {msg}");
            (EXIT_FAILURE, Some(msg))
        }
    };
    // A signal received during the run's last steps (e2i-install's, which waits for the
    // undo file's switch) ends it as the signal does, after saying the work is complete:
    // never with 0. One that arrives after this check came after the run.
    if let Some(sig) = signal_received() {
        end_by_signal(tool, sig, result.is_ok());
    }
    ExitCode::from(summary.print(tool, code, msg.as_deref()))
}

/// The terminating signal received (0: none yet), set by the signal handler itself, so
/// that the main thread sees a signal the moment it arrives.
static SIGNAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What the run completed, said when a signal ends it after all its work was done.
static COMPLETED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Say what a run that returns success has completed (`the install is complete: ...`), for
/// the line printed when a signal received meanwhile ends it anyway.
pub fn completed(note: String) {
    if let Ok(mut c) = COMPLETED.lock() {
        *c = Some(note);
    }
}

/// The terminating signal received so far, if any.
pub fn signal_received() -> Option<i32> {
    i32::try_from(SIGNAL.load(std::sync::atomic::Ordering::SeqCst))
        .ok()
        .filter(|&s| s != 0)
}

/// A run whose body has returned, with `sig` received meanwhile (e2i-install's signal that
/// waited for the undo file's switch, or one that came as the work ended): say, when the
/// work succeeded, that it is complete (an error was said already), remove what a signal
/// removes, and end as the signal ends a process (the shell's 128+N), so that the status
/// tells the signal. No `--json` summary, as for any run a signal ends.
fn end_by_signal(tool: &str, sig: i32, succeeded: bool) -> ! {
    let name = signal_hook::low_level::signal_name(sig).unwrap_or("a signal");
    if succeeded {
        let done = COMPLETED
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .unwrap_or_else(|| "the run had completed".to_string());
        let _ = writeln!(
            io::stderr(),
            "{tool}: {name} received as the run ended: {done}; ending as {name} does"
        );
    }
    {
        let _held = e2i::output::pending::critical();
        e2i::output::pending::remove_held();
    }
    let _ = signal_hook::low_level::emulate_default_handler(sig);
    // Not reached for these signals; exit the way a shell reports them if it is.
    std::process::exit(128 + sig);
}

/// Stdout was closed when the run started (`>&-`): see [`note_closed_stdout`].
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Was stdout closed when the run started (`>&-`)? Rust's runtime puts `/dev/null` in the
/// place of a closed standard stream before `main` (so that no file opened later takes its
/// number), opened read-write, where a shell's `> /dev/null` opens it write-only: an image
/// meant for stdout then went to /dev/null and the run exited 0, as if it had been sent.
fn note_closed_stdout() {
    use rustix::fs::{OFlags, fcntl_getfl, fstat, major, minor};
    let out = io::stdout();
    let null = fstat(&out).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice
            && (major(st.st_rdev), minor(st.st_rdev)) == (1, 3)
    });
    let read_write = fcntl_getfl(&out).is_ok_and(|fl| fl.contains(OFlags::RDWR));
    if null && read_write {
        STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Refuse `-` as OUTPUT when stdout was closed: the image would go nowhere.
fn refuse_closed_stdout(req: &e2i::output::Request<'_>) -> anyhow::Result<()> {
    if req.path == Path::new("-") && STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        anyhow::bail!(
            "{} - (stdout): stdout is closed (`>&-`?); nothing written",
            req.role
        );
    }
    Ok(())
}

/// Remove registered temporary files ([`e2i::output::pending`]) when a terminating signal
/// arrives, then die of that signal (its default action), as the shell expects: the ones a
/// user or the system sends to stop a run (^C, ^\\, kill, a closed terminal, `timeout -s`,
/// a CPU-time limit, an alarm). A file-size limit (`ulimit -f`) is a write error instead:
/// SIGXFSZ, whose default killed the run with its temporary file left behind, is caught,
/// and the write fails with EFBIG, reported naming OUTPUT, the temporary file removed.
fn clean_up_on_signals() {
    use signal_hook::consts::{
        SIGALRM, SIGHUP, SIGINT, SIGPROF, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGVTALRM, SIGXCPU,
        SIGXFSZ,
    };
    // A signal ignored when the run starts stays ignored: `nohup` (SIGHUP), a shell's
    // background job (SIGINT, SIGQUIT) mean the run must outlive them.
    let ignored = ignored_signals();
    let wanted = |sigs: &[i32]| -> Vec<i32> {
        sigs.iter()
            .copied()
            .filter(|&s| {
                u32::try_from(s - 1)
                    .ok()
                    .and_then(|b| 1u64.checked_shl(b))
                    .is_none_or(|bit| ignored & bit == 0)
            })
            .collect()
    };
    if !wanted(&[SIGXFSZ]).is_empty() {
        let _ = signal_hook::flag::register(
            SIGXFSZ,
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        );
    }
    let ending = wanted(&[
        SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGALRM, SIGUSR1, SIGUSR2, SIGVTALRM, SIGPROF, SIGXCPU,
    ]);
    for &sig in &ending {
        if let Ok(v) = usize::try_from(sig) {
            let _ = signal_hook::flag::register_usize(sig, &SIGNAL, v);
        }
    }
    let Ok(mut signals) = signal_hook::iterator::Signals::new(ending) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            // False once the main thread ends the run itself (see `run`): it sees the signal
            // and ends the process within moments. Should it be stuck (its last line going to
            // a stderr nobody reads), the signal ends the process all the same.
            if !e2i::output::pending::remove_all() {
                std::thread::sleep(std::time::Duration::from_secs(5));
                let _held = e2i::output::pending::critical();
                e2i::output::pending::remove_held();
            }
            let _ = signal_hook::low_level::emulate_default_handler(sig);
            // Not reached for these signals; exit the way a shell reports them if it is.
            std::process::exit(128 + sig);
        }
    });
}

/// The signals this process ignores (bit N-1 for signal N), as it inherited them.
fn ignored_signals() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// A usage error found after parsing (exit 2), with the `--json` summary when asked.
pub fn usage(tool: &str, sum: &mut Summary, msg: &str) -> u8 {
    sum.add(|o| o.str("error", msg));
    usage_error(tool, msg)
}

/// Name the file an error is about: OUTPUT for writes, truncations, `-c` reads and lack of
/// room; INPUT (SOURCE, IMAGE) for everything else.
pub fn attribute(e: e2i::Error, input: &str, output: &str) -> anyhow::Error {
    if let e2i::Error::Io { op: "listing", .. } = e {
        return anyhow::Error::new(e).context(stdout_named());
    }
    let name = if e.is_output_side() { output } else { input };
    anyhow::Error::new(e).context(name.to_string())
}

/// [`attribute`] for an error of a run that writes `out`: once a write into a target updated
/// in place (an existing file with -O/-c, a clone's DEST, a block device) has failed, the
/// target holds part of the image over what it held, and the message says so — inside the
/// image's range only — and what to do (`role` names the target: "OUTPUT", "DEST").
pub fn attribute_written(
    e: e2i::Error,
    input: &str,
    output: &str,
    out: &e2i::output::Output,
    role: &str,
) -> anyhow::Error {
    let partly = out.is_updated_in_place() && e.is_write_failure();
    let full = e.is_out_of_room();
    let err = attribute(e, input, output);
    if !partly {
        return err;
    }
    let then = if full {
        "once there is room (free space on the filesystem it lives on), run the same command again to write it whole"
    } else {
        "once the cause is fixed, run the same command again to write it whole"
    };
    anyhow::anyhow!(
        "{err:#}; {role} {output} is partly written: inside the image's range it may hold part of the image over its old bytes (nothing outside that range was touched): {then}"
    )
}

/// Open `--backing FILE` for an overlay written to `output`: a relative FILE is found from
/// the folder the image lands in, as qemu-img finds it when it reads the image there:
/// OUTPUT's folder; for stdout (`-`, `/dev/stdout`) redirected to a file, that file's
/// folder (`/dev` or the current folder would pass a name that the image then does not
/// find), else the current folder. A miss that exists from the current folder says so.
pub fn open_base(file: &Path, output: &Path) -> Result<e2i::qcow2::overlay::Base, e2i::Error> {
    let via_stdout = output == Path::new("-")
        || ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"]
            .iter()
            .any(|s| output == Path::new(s));
    // The file stdout lands in (a pipe's link is `pipe:[N]`, not absolute).
    let stdout_file = via_stdout
        .then(e2i::output::stdout_link)
        .flatten()
        .filter(|t| t.is_absolute() && std::fs::metadata(t).is_ok_and(|m| m.is_file()));
    let dir = match &stdout_file {
        Some(t) => e2i::qcow2::chain::folder_of(t),
        None if via_stdout => Path::new(""),
        None => e2i::qcow2::chain::folder_of(output),
    };
    e2i::qcow2::overlay::Base::open(file, dir).map_err(|e| {
        let missing = matches!(&e, e2i::Error::Backing { source, .. }
            if matches!(&**source, e2i::Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound));
        if missing && file.is_relative() && !dir.as_os_str().is_empty() && file.exists() {
            e2i::Error::InvalidInput(format!(
                "a relative backing name is recorded as given and found from the folder OUTPUT is written to ({}), where it does not exist; give it relative to that folder, or absolute",
                dir.display()
            ))
        } else {
            e
        }
    })
}

/// Refuse a base whose chain holds `input` (SOURCE or INPUT, by identity): the overlay
/// would read through to whatever that file holds later, not to a previous capture.
pub fn refuse_base_is_input(
    base: &e2i::qcow2::overlay::Base,
    input: &Path,
) -> Result<(), e2i::Error> {
    let Ok(id) = e2i::io::ObjectId::of_path(input) else {
        return Ok(());
    };
    match base
        .files()
        .into_iter()
        .find(|f| e2i::io::ObjectId::of_path(f).is_ok_and(|x| x == id))
    {
        Some(f) => Err(e2i::Error::InvalidInput(format!(
            "{} is the filesystem being captured: an overlay on it would read whatever it holds later; the backing file must be a previous capture",
            f.display()
        ))),
        None => Ok(()),
    }
}

/// Open OUTPUT through [`e2i::output::Output::open`], naming it in errors about it.
pub fn open_output(
    req: &e2i::output::Request<'_>,
    reads: &[(&str, &Path)],
) -> anyhow::Result<e2i::output::Output> {
    open_output_ranged(req, reads, None)
}

/// How messages name OUTPUT once it is open: `-` is named with what stdout is, so that a
/// failed write says where it went: the block device it is written as (`- (stdout,
/// /dev/sdb1)`), else the file or device behind it (`- (stdout, /dev/full)`), `a pipe`,
/// `a socket`, or `- (stdout)` (as before the open) when the system does not say.
pub fn opened_name(given: &str, out: &e2i::output::Output) -> String {
    if given != "-" {
        given.to_string()
    } else if out.kind() == e2i::output::Kind::BlockDevice {
        format!("- (stdout, {})", out.path().display())
    } else {
        match e2i::output::stdout_target() {
            Some(t) => format!("- (stdout, {t})"),
            None => "- (stdout)".to_string(),
        }
    }
}

/// [`open_output`] for a run that reads only bytes `source_range` of its SOURCE (the first
/// of `reads`): see [`e2i::output::Output::open_ranged`].
pub fn open_output_ranged(
    req: &e2i::output::Request<'_>,
    reads: &[(&str, &Path)],
    source_range: Option<std::ops::Range<u64>>,
) -> anyhow::Result<e2i::output::Output> {
    refuse_closed_stdout(req)?;
    note_fifo_without_reader(req);
    let out = e2i::output::Output::open_ranged(req, reads, source_range).map_err(|e| match e {
        e2i::Error::InvalidInput(_) => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context(link_named(req.path)),
    })?;
    // Hidden, for tests only: hold the run here, OUTPUT open (its temporary file created),
    // so that a test can signal it at a known moment.
    if let Some(ms) = std::env::var("E2I_TEST_PAUSE_AFTER_OPEN_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    Ok(out)
}

/// OUTPUT as messages about opening it name it: a symlink with the file it leads to
/// (`out.raw (-> /mnt/x/out.raw)`), since that is what could not be made or opened.
fn link_named(p: &Path) -> String {
    let given = p.display().to_string();
    if !std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
        return given;
    }
    match e2i::output::follow_links(p) {
        Ok(to) => format!("{given} (-> {})", to.display()),
        Err(_) => given,
    }
}

/// The bytes of SOURCE a capture or clone of the filesystem at byte `offset` reads: from
/// there to the end of the filesystem its superblock describes (`None` when that cannot be
/// read: SOURCE then counts whole).
pub fn filesystem_range(source: &Path, offset: u64) -> Option<std::ops::Range<u64>> {
    use std::os::unix::fs::FileTypeExt;
    // Opening anything else could wait (a FIFO waits for its writer) or act (a tape).
    let meta = std::fs::metadata(source).ok()?;
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return None;
    }
    let src = e2i::io::FileSource::open(source, offset).ok()?;
    let (_, sb) = e2i::ops::install::find_superblock(&src, None);
    let sb = sb?;
    // Never less than the superblock's own bytes.
    let len = sb.block_size.bytes_of(sb.blocks_count)?.max(2048);
    Some(offset..offset.checked_add(len)?)
}

/// Hold what a run reads while it reads it — SOURCE (e2i-capture, a clone) or INPUT (a
/// converter), named `role` in messages: refused while an in-place e2i-move runs on it or
/// has left it half moved ([`e2i::ops::hold::hold_for_reading`]); the journals are looked
/// for where e2i-move puts them.
pub fn hold_source(source: &Path, role: &str) -> anyhow::Result<e2i::ops::hold::Hold> {
    e2i::ops::hold::hold_for_reading(source, role, state_dir(), &mut e2i::progress::NoProgress)
        .map_err(|e| {
            let name = if source == Path::new("-") {
                // Stdin redirected from a file: say which.
                std::fs::read_link("/proc/self/fd/0").map_or_else(
                    |_| "- (stdin)".to_string(),
                    |p| format!("- (stdin, {})", p.display()),
                )
            } else {
                source.display().to_string()
            };
            anyhow::Error::new(e).context(name)
        })
}

/// e2i's state folder, where e2i-move keeps the journals of block devices (and its index).
pub fn state_dir() -> Option<std::path::PathBuf> {
    e2i::ops::move_journal::state_dir(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
}

/// How a run holds an existing OUTPUT: it writes it, or (a dry run) only looks at it.
pub fn hold_for(dry_run: bool) -> e2i::ops::hold::HoldFor {
    if dry_run {
        e2i::ops::hold::HoldFor::Reading
    } else {
        e2i::ops::hold::HoldFor::Writing
    }
}

/// Opening a FIFO for writing waits for its reader, silently (as e2image's open does). On a
/// terminal, say so when no reader is there yet, rather than seem to hang.
fn note_fifo_without_reader(_req: &e2i::output::Request<'_>) {
    if io::stderr().is_terminal() {
        e2i::output::on_fifo_wait(|path| {
            let tool = std::env::args_os()
                .next()
                .and_then(|a| {
                    Path::new(&a)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                })
                .unwrap_or_default();
            let _ = writeln!(
                io::stderr(),
                "{tool}: {}: a FIFO with no reader yet: waiting for one (Ctrl-C to give up)",
                path.display()
            );
        });
    }
}

/// Where a stream-like OUTPUT (stdout, a FIFO, a character device) is written: buffered,
/// counted and (for `--json`) hashed.
pub struct StreamOut {
    w: io::BufWriter<json::HashWriter<Box<dyn Write>>>,
}

impl StreamOut {
    /// Stdout, or `file` (a FIFO or character device; a second handle is taken).
    pub fn new(file: Option<&File>, hash: bool) -> Self {
        // Stdout as a second handle on its file, not Rust's line-buffered `Stdout`, which
        // holds back the tail of each write after a newline byte: a write that fails is
        // then reported at a later one, and the count of bytes sent runs ahead.
        let dup = match file {
            Some(f) => f.try_clone(),
            None => {
                use std::os::fd::AsFd;
                io::stdout().as_fd().try_clone_to_owned().map(File::from)
            }
        };
        let inner: Box<dyn Write> = match dup {
            Ok(f) => Box::new(f),
            // Could not duplicate the handle: every write will fail, naming OUTPUT.
            Err(e) => Box::new(FailingWriter(Some(e))),
        };
        StreamOut {
            w: io::BufWriter::with_capacity(1 << 20, json::HashWriter::new(inner, hash)),
        }
    }

    pub fn writer(&mut self) -> &mut dyn e2i::io::SeqWrite {
        &mut self.w
    }

    /// The same output without the buffer, for a writer that gathers its own writes and
    /// counts what the output took (the e2i stream): nothing is held back below it, so the
    /// position of a failed write is exact. Not to be mixed with [`StreamOut::writer`].
    pub fn unbuffered(&mut self) -> &mut dyn e2i::io::SeqWrite {
        self.w.get_mut()
    }

    /// Flush everything (a failure here is a write error of OUTPUT, at the first byte not
    /// taken), and give the SHA-256 (when hashing) and the byte count.
    pub fn finish(mut self) -> Result<(Option<String>, u64), e2i::Error> {
        if let Err(e) = self.w.flush() {
            return Err(e2i::Error::io_at("write", self.w.get_ref().bytes(), e));
        }
        let h = self.w.get_ref();
        Ok((h.sha256(), h.bytes()))
    }
}

/// Print a line on stdout. A closed stdout is an error that ends the run (a broken pipe
/// exits 141), not a panic as with `println!`.
pub fn say(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut o = io::stdout().lock();
    o.write_fmt(args)
        .and_then(|()| o.write_all(b"\n"))
        .and_then(|()| o.flush())
        .map_err(listing_failed)
}

/// Stdout as messages name it: `- (stdout, /dev/full)`, or `- (stdout)` where the system
/// does not say what it is.
pub fn stdout_named() -> String {
    e2i::output::stdout_target().map_or_else(|| "- (stdout)".into(), |t| format!("- (stdout, {t})"))
}

/// A listing (`-n`'s blocks, `-c`'s closing line, `--list`) that stdout did not take: the
/// error names stdout, as any write error on it is named.
pub fn listing_failed(e: io::Error) -> anyhow::Error {
    anyhow::Error::new(e).context(format!("{}: listing", stdout_named()))
}

/// A writer whose every write fails with the error it was made with.
struct FailingWriter(Option<io::Error>);

impl Write for FailingWriter {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("output unavailable")))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// True when OUTPUT was left out and stdout is a terminal: binary data must not go there.
pub fn refuse_terminal(tool: &str, sum: &mut Summary, given: bool) -> Option<u8> {
    (!given && io::stdout().is_terminal()).then(|| {
        usage(
            tool,
            sum,
            "refusing to write a binary image to the terminal: give OUTPUT (a file or device), or '-' to write to stdout anyway",
        )
    })
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
    printable(&msg)
}

/// `s` as one line of plain text: line breaks and tabs become spaces, other control
/// characters are escaped (`\u{1b}`). Messages carry names taken from images (a qcow2's
/// backing or data file name), which must not move the cursor, clear the line or send the
/// terminal commands.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
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
    /// `-n`: the closing line says nothing was written.
    dry_run: bool,
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
            dry_run: false,
        }
    }

    /// A dry run (`-n`): its closing line must not claim a copy.
    pub fn set_dry_run(&mut self, yes: bool) {
        self.dry_run = yes;
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
        let line = if self.dry_run {
            format!(
                "Checked {done} / {total} {unit} ({}%) in {}; nothing written (dry run)",
                percent(done, total),
                hms(c.elapsed)
            )
        } else {
            copied_line(done, total, unit, bytes, c.elapsed)
        };
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

pub use e2i::progress::utc;

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
/// as usual; when stdout does not take them (a full device), that is a failure (exit 1,
/// naming stdout), not exit 0 with nothing shown. A reader that leaves early took what it
/// wanted (`--help | grep -q --scramble`, as e2i-bug-report probes, under pipefail): exit 0.
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
                let shown = e.print().and_then(|()| io::stdout().lock().flush());
                match shown {
                    Ok(()) => std::process::exit(e.exit_code()),
                    Err(w) if w.kind() == io::ErrorKind::BrokenPipe => {
                        std::process::exit(e.exit_code())
                    }
                    Err(w) => {
                        eprintln!("{tool}: {}: {w}", stdout_named());
                        std::process::exit(1);
                    }
                }
            }
            let msg = clap_error_line(&e.render().to_string());
            let code = usage_error(tool, &msg);
            // `--json` is promised on every outcome: a command line clap refused too.
            if std::env::args_os()
                .skip(1)
                .take_while(|a| a != "--")
                .any(|a| a == "--json")
            {
                let line = json::Obj::new()
                    .str("tool", tool)
                    .num("exit", u64::from(code))
                    .str("error", &msg)
                    .finish();
                let _ = print_json(&line, false);
            }
            std::process::exit(i32::from(code));
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
/// A write error on stdout is returned (stderr's are not: nothing is left to tell them).
pub fn print_json(line: &str, output_is_stdout: bool) -> io::Result<()> {
    if output_is_stdout {
        let _ = writeln!(io::stderr(), "{line}");
        Ok(())
    } else {
        let mut out = io::stdout().lock();
        writeln!(out, "{line}").and_then(|()| out.flush())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_number;
    use super::{clap_error_line, copied_line, hms, is_copy_phase, percent, utc};
    use std::time::Duration;

    #[test]
    fn utc_dates() {
        // Checked with `date -u -d @N`.
        for (secs, text) in [
            (0, "1970-01-01 00:00:00 UTC"),
            (951_782_400, "2000-02-29 00:00:00 UTC"),
            (1_700_000_000, "2023-11-14 22:13:20 UTC"),
            (4_107_542_399, "2100-02-28 23:59:59 UTC"),
            (4_107_542_400, "2100-03-01 00:00:00 UTC"),
        ] {
            assert_eq!(utc(secs), text, "{secs}");
        }
        // The largest time never panics.
        assert!(utc(u64::MAX).ends_with(" UTC"));
    }

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
