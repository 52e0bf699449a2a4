//! e2i-move: clone an ext2/3/4 filesystem between offsets (e2image -ra -o/-O SRC DST), or
//! move it inside SOURCE, crash-safely (e2image -ra -o/-O SRC).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use e2i::io::ObjectId;
use e2i::mount::{MountState, mount_state};
use e2i::ops::move_fs::{self, CloneTarget, JournalOptions, MoveNote, MoveOptions, MoveReport};
use e2i::ops::move_journal as mj;
use e2i_cli::cli::move_fs::Args;
use e2i_cli::{EXIT_OK, Output, Reporter, parse_args, run, usage_error};

const TOOL: &str = "e2i-move";

fn main() -> std::process::ExitCode {
    let args: Args = parse_args(TOOL);
    run(TOOL, || body(args))
}

fn refuse_mounted(path: &Path, any: bool) -> anyhow::Result<()> {
    match mount_state(path) {
        MountState::ReadWrite { mount_point } => {
            anyhow::bail!("{}: mounted read-write on {mount_point}", path.display())
        }
        MountState::ReadOnly { mount_point } if any => {
            anyhow::bail!("{}: mounted on {mount_point}", path.display())
        }
        _ => Ok(()),
    }
}

/// Print one dry-run line per run of blocks (e2image -n prints `Writing block N`).
fn lister(dry: bool) -> impl FnMut(u64, u64) {
    let mut out = io::BufWriter::new(io::stdout());
    move |first, n| {
        if !dry {
            return;
        }
        let _ = if n == 1 {
            writeln!(out, "Writing block {first}")
        } else {
            writeln!(out, "Writing blocks {first}-{} ({n} blocks)", first + n - 1)
        };
        let _ = out.flush();
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

/// Test hook (`E2I_MOVE_KILL_AT=N`): SIGKILL this process before its N-th write to SOURCE or
/// the journal, so tests can stop a move at exact points. `E2I_MOVE_KILL_AT=0` kills
/// nothing; either way the run ends by printing how many such points it passed.
fn crash_point() {
    let n = CRASH_POINTS.fetch_add(1, Ordering::SeqCst) + 1;
    if n == knob("E2I_MOVE_KILL_AT") {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

fn body(args: Args) -> anyhow::Result<u8> {
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
    let src_id =
        ObjectId::of_path(&args.source).with_context(|| args.source.display().to_string())?;
    let in_place = args.dest.is_none();
    if in_place && args.metadata_only {
        return Ok(usage_error(
            TOOL,
            "--metadata-only is for clones (give DEST)",
        ));
    }
    if in_place && args.src_offset == args.dest_offset {
        return Ok(usage_error(
            TOOL,
            "a move needs different source and destination offsets (-o, -O)",
        ));
    }
    if !in_place && args.journal.is_some() {
        return Ok(usage_error(TOOL, "--journal is for in-place moves"));
    }
    let kill_hook = std::env::var_os("E2I_MOVE_KILL_AT").is_some();
    let opts = MoveOptions {
        src_offset: args.src_offset,
        dest_offset: args.dest_offset,
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
    let src = args.source.display().to_string();
    let mut reporter = Reporter::new(args.progress);
    let mut list = lister(args.dry_run);
    if in_place {
        refuse_mounted(&args.source, true)?;
        let jopts = JournalOptions {
            path: args.journal.clone(),
            state_dir: mj::state_dir(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")),
        };
        let quiet = args.quiet;
        let mut notes = |n: MoveNote| print_note(&src, n, quiet);
        let rep = move_fs::move_in_place(
            &args.source,
            &jopts,
            &opts,
            &mut list,
            &mut notes,
            &mut reporter,
        )
        .with_context(|| src.clone());
        if kill_hook {
            eprintln!(
                "{TOOL}: test hook: {} crash points",
                CRASH_POINTS.load(Ordering::SeqCst)
            );
        }
        let rep = rep?;
        reporter.summary(rep.block_size);
        report_move(&args, &rep);
        return Ok(EXIT_OK);
    }
    let dest = args.dest.clone().unwrap_or_default();
    // DEST that is SOURCE (another name, a link): a clone would overwrite what it reads.
    if ObjectId::of_path(&dest).is_ok_and(|d| d == src_id) {
        anyhow::bail!(
            "{}: DEST is SOURCE ({src}); to move the filesystem inside it, leave DEST out",
            dest.display()
        );
    }
    refuse_mounted(&dest, true)?;
    if !args.force {
        refuse_mounted(&args.source, false)
            .context("a copy of it would be inconsistent (use -f to copy anyway)")?;
    }
    let rep = clone(&args, &dest, &opts, &mut list, &mut reporter).with_context(|| src.clone())?;
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
        println!(
            "{} blocks already contained the data to be copied",
            rep.identical_blocks
        );
    }
    Ok(EXIT_OK)
}

/// Open DEST and clone into it: an existing file or device is updated in place, a new file
/// appears only when complete, a dry run creates nothing.
fn clone(
    args: &Args,
    dest: &Path,
    opts: &MoveOptions,
    list: &mut dyn FnMut(u64, u64),
    reporter: &mut Reporter,
) -> anyhow::Result<MoveReport> {
    let dst = dest.display().to_string();
    if dest.exists() {
        let file = OpenOptions::new()
            .read(true)
            .write(!args.dry_run)
            .open(dest)
            .with_context(|| format!("opening {dst}"))?;
        Ok(move_fs::clone_fs(
            &args.source,
            CloneTarget::Existing(&file),
            opts,
            list,
            reporter,
        )?)
    } else if args.dry_run {
        // Nothing is created: list what a new file would receive.
        let tmp = scratch_file()?;
        Ok(move_fs::clone_fs(
            &args.source,
            CloneTarget::NewFile(&tmp),
            opts,
            list,
            reporter,
        )?)
    } else {
        let mut out = Output::create(dest)?;
        let Output::File { file, .. } = &out else {
            anyhow::bail!("{dst}: not a regular file or block device");
        };
        let rep = move_fs::clone_fs(
            &args.source,
            CloneTarget::NewFile(file),
            opts,
            list,
            reporter,
        )?;
        out.commit()?;
        Ok(rep)
    }
}

/// An anonymous scratch file for a dry run into a DEST that does not exist (never written).
fn scratch_file() -> anyhow::Result<std::fs::File> {
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
        MoveNote::NotIndexed { index, reason } => format!(
            "{src}: warning: could not record the journal in {} ({reason}): after an interruption, rerun the move under this name of SOURCE or with --journal",
            index.display()
        ),
    };
    eprintln!("{TOOL}: {line}");
}

fn report_move(args: &Args, rep: &MoveReport) {
    if args.quiet {
        return;
    }
    let src = args.source.display();
    if rep.already_done {
        let j: PathBuf = rep.journal.clone().unwrap_or_default();
        println!(
            "{src}: the move from byte {} to byte {} is already finished (journal {}); nothing to do",
            args.src_offset,
            args.dest_offset,
            j.display()
        );
        return;
    }
    if args.dry_run {
        return;
    }
    if args.check {
        println!(
            "{} blocks already contained the data to be copied",
            rep.identical_blocks
        );
    }
}
