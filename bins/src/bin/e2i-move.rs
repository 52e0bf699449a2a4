//! e2i-move: clone an ext2/3/4 filesystem between offsets (e2image -ra -o/-O SRC DST), or
//! move it inside SOURCE, crash-safely (e2image -ra -o/-O SRC).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use e2i::mount::{MountState, mount_state, mount_state_at};
use e2i::ops::move_fs::{self, CloneTarget, JournalOptions, MoveNote, MoveOptions, MoveReport};
use e2i::ops::move_journal as mj;
use e2i::output::{Kind, Request};
use e2i::sparse::range_text;
use e2i::units::FsBlock;
use e2i_cli::cli::move_fs::Args;
use e2i_cli::{EXIT_OK, Reporter, Summary, open_output_ranged, parse_args, run, usage_error};

const TOOL: &str = "e2i-move";

fn main() -> std::process::ExitCode {
    let args: Args = parse_args(TOOL);
    run(TOOL, Summary::new(false, TOOL), |_| body(args))
}

/// Refuse `path` when a filesystem in it is mounted: anywhere in it for what is written
/// (`any`: also mounted read-only), the filesystem at `offset` for a clone's SOURCE. `why`
/// ends the message.
fn refuse_mounted(path: &Path, any: bool, offset: u64, why: &str) -> anyhow::Result<()> {
    let state = if any {
        mount_state(path)
    } else {
        mount_state_at(path, offset)
    };
    // The place names the mounted device when it is not `path` itself (a partition of a
    // loop device over the file, say): what to unmount.
    match state {
        MountState::ReadWrite { .. } => {
            anyhow::bail!(
                "{}: mounted read-write {}; {why}",
                path.display(),
                state.place()
            )
        }
        MountState::ReadOnly { .. } if any => {
            anyhow::bail!("{}: mounted {}; {why}", path.display(), state.place())
        }
        // A file under a loop device that device mapper, md or an exclusive open holds:
        // written, it changes what the holder sees, as writing the device would.
        _ if any => match e2i::mount::held_loop_device(path) {
            Some(dev) => anyhow::bail!(
                "{}: under {dev}, which is in use (held by another program: device mapper, md, an exclusive open); refusing to write under it, nothing written",
                path.display()
            ),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Print one dry-run line per run of blocks (e2image -n prints `Writing block N`).
/// The first failed write (a closed pipe: `e2i-move -n … | head`) is kept in `failed`, for
/// the run to end with it once the library call returns.
fn lister(
    dry: bool,
    failed: std::rc::Rc<std::cell::RefCell<Option<io::Error>>>,
) -> impl FnMut(FsBlock, u64) {
    let mut out = io::BufWriter::new(io::stdout());
    move |first, n| {
        if !dry || failed.borrow().is_some() {
            return;
        }
        if let Err(e) = writeln!(out, "Writing {}", range_text(first, n)).and_then(|()| out.flush())
        {
            *failed.borrow_mut() = Some(e);
        }
    }
}

/// A test-only environment knob (hidden; see docs/move-journal.md).
fn knob(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Crash points passed so far (test hook).
static CRASH_POINTS: AtomicU64 = AtomicU64::new(0);

/// Test hooks (`E2I_MOVE_KILL_AT=N`, `E2I_MOVE_STOP_AT=N`): SIGKILL (or SIGSTOP) this
/// process before its N-th write to SOURCE or the journal, so tests can stop a move at exact
/// points, or hold it there (its lock taken) until they kill it. `=0` stops nothing; either
/// way the run ends by printing how many such points it passed.
fn crash_point() {
    let n = CRASH_POINTS
        .fetch_add(1, Ordering::SeqCst)
        .saturating_add(1);
    use rustix::process::{Signal, getpid, kill_process};
    if n == knob("E2I_MOVE_KILL_AT") {
        let _ = kill_process(getpid(), Signal::KILL);
    }
    if n == knob("E2I_MOVE_STOP_AT") {
        let _ = kill_process(getpid(), Signal::STOP);
    }
}

/// Does `src` start with qcow2's magic (its size is then not the disk's)?
fn is_qcow2(src: &e2i::io::FileSource) -> bool {
    let mut m = [0u8; 4];
    e2i::io::ReadAt::read_at(src, &mut m, 0).is_ok_and(|n| e2i::qcow2::is_qcow2(&m[..n]))
}

/// A listing write that failed ends the run (a broken pipe exits 141).
fn listing_result(
    failed: &std::rc::Rc<std::cell::RefCell<Option<io::Error>>>,
) -> anyhow::Result<()> {
    match failed.borrow_mut().take() {
        Some(e) => Err(e2i_cli::listing_failed(e)),
        None => Ok(()),
    }
}

fn body(mut args: Args) -> anyhow::Result<u8> {
    if let Some(code) = e2i_cli::refuse_dash(TOOL, "SOURCE", &args.source, "give a file or device")
    {
        return Ok(code);
    }
    if let Some(d) = &args.dest
        && let Some(code) = e2i_cli::refuse_dash(
            TOOL,
            "DEST",
            d,
            "to send a copy down a pipe, use e2i-capture -ra SOURCE -",
        )
    {
        return Ok(code);
    }
    if let Some(j) = &args.journal
        && let Some(code) = e2i_cli::refuse_dash(
            TOOL,
            "the journal",
            j,
            "give a file name (./- for a file named -)",
        )
    {
        return Ok(code);
    }
    let meta =
        std::fs::metadata(&args.source).with_context(|| args.source.display().to_string())?;
    // -P: -o becomes the partition's start; its end bounds a clone's reads (unless
    // --past-partition-end) and a move's writes.
    let mut src_limit = None;
    if let Some(n) = args.partition {
        let in_place = args.dest.is_none();
        let c = e2i_cli::partition::choose(
            TOOL,
            &args.source,
            n,
            args.past_partition_end && !in_place,
            args.quiet || in_place,
        )?;
        if in_place {
            e2i_cli::partition::refuse_mounted(&args.source, n, true, "refusing to move it")?;
            partition_move_bounds(&args, &c)?;
        } else if !args.force {
            e2i_cli::partition::refuse_mounted(
                &args.source,
                n,
                false,
                "a copy of it would be inconsistent (use -f to copy anyway)",
            )?;
        }
        args.src_offset = c.start;
        src_limit = c.limit;
    }
    // -o at or past the end: say where SOURCE ends (a qcow2 SOURCE's virtual disk is
    // checked where it is opened). Only for what can be read by position: opening a FIFO
    // to read waits for its writer (it is refused, unopened, further on).
    let seekable =
        meta.is_file() || std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type());
    if args.src_offset > 0
        && seekable
        && let Ok(src) = e2i::io::FileSource::open(&args.source, 0)
        && args.src_offset >= e2i::io::ReadAt::size(&src)
        && !is_qcow2(&src)
    {
        anyhow::bail!(
            "{}: offset {} lies past the end of the source, which ends at byte {}",
            args.source.display(),
            args.src_offset,
            e2i::io::ReadAt::size(&src)
        );
    }
    // DEST naming SOURCE (under any name) is refused by the output layer: the in-place
    // form is the one without DEST.
    let in_place = args.dest.is_none();
    if in_place && args.src_offset == args.dest_offset {
        return Ok(usage_error(
            TOOL,
            "a move needs different source and destination offsets (-o, -O)",
        ));
    }
    let kill_hook = ["E2I_MOVE_KILL_AT", "E2I_MOVE_STOP_AT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    let opts = MoveOptions {
        src_offset: args.src_offset,
        dest_offset: args.dest_offset,
        src_limit,
        metadata_only: args.metadata_only,
        check: args.check,
        dry_run: args.dry_run,
        // Hidden, for tests only: slow the move down so a kill lands in the middle.
        throttle_us_per_mib: knob("E2I_MOVE_THROTTLE_US"),
        // Hidden, for tests only: smaller pieces, so a small filesystem has many of them.
        piece_bytes: knob("E2I_MOVE_PIECE_KIB").saturating_mul(1024),
        // Hidden, for tests only: write in slices with a crash point before each.
        slice_bytes: usize::try_from(knob("E2I_MOVE_SLICE_KIB").saturating_mul(1024)).unwrap_or(0),
        crash_point: kill_hook.then_some(crash_point as fn()),
    };
    let src = match args.partition {
        Some(n) => format!("{} partition {n}", args.source.display()),
        None => args.source.display().to_string(),
    };
    let mut reporter = Reporter::new(args.progress);
    reporter.set_dry_run(args.dry_run);
    let list_failed = std::rc::Rc::new(std::cell::RefCell::new(None));
    let mut list = lister(args.dry_run, list_failed.clone());
    if in_place {
        refuse_mounted(
            &args.source,
            true,
            0,
            "refusing to move a mounted filesystem, nothing written",
        )?;
        let jopts = JournalOptions {
            path: args.journal.clone(),
            state_dir: mj::state_dir(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")),
        };
        let quiet = args.quiet;
        // A move that fails after its journal is begun says, on its error line, that it is
        // unfinished and how to finish it.
        let mut unfinished = None;
        let mut notes = |n: MoveNote| match n {
            MoveNote::Unfinished { journal } => unfinished = Some(journal),
            n => print_note(&src, n, quiet),
        };
        let rep = move_fs::move_in_place(
            &args.source,
            &jopts,
            &opts,
            &mut list,
            &mut notes,
            &mut reporter,
        )
        .map_err(|e| {
            let full = e.is_out_of_room();
            let e = anyhow::Error::new(e).context(src.clone());
            match &unfinished {
                // SOURCE may be half moved: no offset of it holds a consistent filesystem
                // until the move is finished, which the journal allows.
                Some(j) => anyhow::anyhow!(
                    "{e:#}; the move is unfinished and SOURCE may be partly moved (no offset of it holds a consistent filesystem until the move is finished); its journal {} is kept (do not delete it to make room) and lets the move resume where it stopped: {} run the same command again to finish it",
                    j.display(),
                    if full {
                        "once there is room (free space on the filesystem that is full),"
                    } else {
                        "fix the cause, then"
                    }
                ),
                None => e,
            }
        });
        if kill_hook {
            eprintln!(
                "{TOOL}: test hook: {} crash points",
                CRASH_POINTS.load(Ordering::SeqCst)
            );
        }
        let rep = rep?;
        listing_result(&list_failed)?;
        reporter.summary(rep.block_size);
        report_move(&args, &rep)?;
        return Ok(EXIT_OK);
    }
    let dest = args.dest.clone().unwrap_or_default();
    refuse_mounted(
        &dest,
        true,
        0,
        "refusing to write into a mounted filesystem, nothing written",
    )?;
    if !args.force {
        refuse_mounted(
            &args.source,
            false,
            args.src_offset,
            "a copy of it would be inconsistent (use -f to copy anyway)",
        )?;
    }
    let dst = dest.display().to_string();
    // Held until the copy is done: an in-place move of SOURCE cannot start meanwhile.
    let _hold = e2i_cli::hold_source(&args.source, "SOURCE")?;
    let mut out = open_output_ranged(
        &Request {
            path: &dest,
            role: "DEST",
            in_place: true,
            dry_run: args.dry_run,
            exclusive: true,
            streams: false,
            hold: e2i_cli::hold_for(args.dry_run),
            state_dir: e2i_cli::state_dir().as_deref(),
        },
        &[("SOURCE", &args.source)],
        // Only the filesystem's bytes are read: another partition of the same disk may be
        // DEST.
        e2i_cli::filesystem_range(&args.source, args.src_offset),
    )?;
    // A scrambled SOURCE (e2i-capture -s) is not cloned over the filesystem it was taken
    // from unless asked: its names, symlink targets, inline data and label would replace
    // the real ones.
    let facts = e2i::ops::guard::source_facts(&args.source, args.src_offset);
    if let Some(ev) = e2i::ops::guard::refuse_scrambled(
        &facts,
        out.path(),
        args.dest_offset,
        args.allow_scrambled,
    )
    .map_err(|e| anyhow::Error::new(e).context(src.clone()))?
        && !args.quiet
    {
        eprintln!(
            "{TOOL}: warning: {dst}: copying a scrambled image ({ev}) over the filesystem it was taken from (--allow-scrambled)"
        );
    }
    let scratch;
    let target = match (out.kind(), out.file()) {
        (Kind::Stdout | Kind::Stream, _) => anyhow::bail!(
            "{dst}: DEST must be a file or block device (a copy is written by position); to send a copy down a pipe, use e2i-capture -ra SOURCE -"
        ),
        (Kind::New, Some(f)) => CloneTarget::NewFile(f),
        (Kind::New, None) => {
            // A dry run into a DEST that does not exist: list what a new file would get.
            scratch = e2i_cli_tempfile()?;
            CloneTarget::NewFile(&scratch)
        }
        (_, Some(f)) => CloneTarget::Existing(f),
        (_, None) => anyhow::bail!("{dst}: not opened"),
    };
    let rep = move_fs::clone_fs(&args.source, target, &opts, &mut list, &mut reporter)
        .map_err(|e| e2i_cli::attribute_written(e, &src, &dst, &out, "DEST"))?;
    listing_result(&list_failed)?;
    // A device's writes reach it (synced by commit) before we say they did.
    out.commit()
        .map_err(|e| e2i_cli::attribute_written(e, &src, &dst, &out, "DEST"))?;
    reporter.summary(rep.block_size);
    if args.quiet {
        return Ok(EXIT_OK);
    }
    if rep.past_end_blocks > 0 {
        eprintln!(
            "{TOOL}: warning: {src}: {} selected blocks lie past the end of the source and were copied as zeros",
            rep.past_end_blocks
        );
    }
    for p in &rep.problems {
        eprintln!("{TOOL}: warning: {src}: skipped damaged metadata: {p}");
    }
    if args.check {
        e2i_cli::say(format_args!(
            "{} blocks already contained the data to be copied",
            rep.identical_blocks
        ))?;
    }
    Ok(EXIT_OK)
}

/// An in-place move inside partition `c`: the filesystem must fit in the partition, and
/// the moved one must lie inside it (`-O` is a byte offset of SOURCE, like `-o`).
fn partition_move_bounds(args: &Args, c: &e2i_cli::partition::Chosen) -> anyhow::Result<()> {
    let name = args.source.display();
    let p = c.located.partition;
    for n in &c.located.table.notes {
        if !args.quiet {
            eprintln!("{TOOL}: warning: {name}: {n}");
        }
    }
    if let (Some(over), Some(fs)) = (c.located.overrun(), &c.located.fs) {
        anyhow::bail!(
            "{name}: partition {} is {} bytes, but its {} filesystem is {over} bytes larger; a move reads and writes the whole filesystem, so nothing is moved",
            p.number,
            p.size,
            fs.kind
        );
    }
    // Without a filesystem at the partition's start (a move already under way or done),
    // the journal decides; -O must still lie inside the partition.
    let size = c.located.fs.as_ref().and_then(|f| f.bytes()).unwrap_or(1);
    let end = args.dest_offset.checked_add(size);
    if args.dest_offset < p.start || end.is_none_or(|e| e > p.end()) {
        anyhow::bail!(
            "{name}: the moved filesystem (bytes {} to {}) would not lie inside partition {} (bytes {} to {}); nothing moved",
            args.dest_offset,
            end.map_or_else(|| "past 2^64".to_string(), |e| e.to_string()),
            p.number,
            p.start,
            p.end()
        );
    }
    Ok(())
}

/// An anonymous scratch file for a dry run into a DEST that does not exist (never written).
fn e2i_cli_tempfile() -> anyhow::Result<std::fs::File> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(".e2i-move-dry-{}", std::process::id()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

fn print_note(src: &str, note: MoveNote, quiet: bool) {
    let line = match note {
        MoveNote::Resuming {
            journal,
            next,
            pieces,
        } => {
            if quiet {
                return;
            }
            format!(
                "{src}: resuming the interrupted move recorded in {} ({next} of {pieces} pieces already moved)",
                journal.display()
            )
        }
        MoveNote::Adopted {
            journal,
            recorded,
            actual,
        } => format!(
            "{src}: note: {} was written for {}, SOURCE is {}; SOURCE holds exactly the half-moved state it records, so it is used",
            journal.display(),
            mj::describe(recorded),
            mj::describe(actual)
        ),
        MoveNote::Stale { journal } => {
            if quiet {
                return;
            }
            format!(
                "{src}: note: {} records an unfinished move that SOURCE no longer matches; it is left alone (delete it)",
                journal.display()
            )
        }
        MoveNote::Abandoned {
            journal,
            src_offset,
            dest_offset,
        } => format!(
            "{src}: note: the unfinished move from byte {src_offset} to byte {dest_offset} recorded in {} had changed nothing (every piece is still where it was): it is given up for this one",
            journal.display()
        ),
        MoveNote::Unfinished { journal } => format!(
            "{src}: the move is unfinished; its journal {} is kept",
            journal.display()
        ),
        MoveNote::Volatile { journal, fstype } => {
            if quiet {
                return;
            }
            format!(
                "{src}: warning: the journal {} is on {fstype}, in memory: the move survives being killed, but a crash or power loss of the system loses the journal and with it the way to finish the move; give --journal a place on a disk",
                journal.display()
            )
        }
        MoveNote::NotIndexed { index, reason } => format!(
            "{src}: warning: could not record the journal in {} ({reason}): after an interruption, rerun the move under this name of SOURCE or with --journal",
            index.display()
        ),
    };
    eprintln!("{TOOL}: {line}");
}

fn report_move(args: &Args, rep: &MoveReport) -> anyhow::Result<()> {
    if args.quiet {
        return Ok(());
    }
    let src = args.source.display();
    if rep.already_done {
        let journal = rep.journal.clone().unwrap_or_default();
        e2i_cli::say(format_args!(
            "{src}: the move from byte {} to byte {} is already finished (journal {}); nothing to do",
            args.src_offset,
            args.dest_offset,
            journal.display()
        ))?;
        return Ok(());
    }
    if args.dry_run {
        return Ok(());
    }
    if args.check {
        e2i_cli::say(format_args!(
            "{} blocks already contained the data to be copied",
            rep.identical_blocks
        ))?;
    }
    Ok(())
}
