//! e2i-move: clone an ext2/3/4 filesystem between offsets (e2image -ra -o/-O SRC DST), or
//! move it inside SOURCE, crash-safely (e2image -ra -o/-O SRC).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;
use e2i::mount::{MountState, mount_state};
use e2i::ops::move_fs::{self, CloneTarget, MoveOptions, MoveReport};
use e2i::ops::move_journal::{Journal, State};
use e2i::output::{Kind, Request};
use e2i::sparse::range_text;
use e2i_cli::cli::move_fs::Args;
use e2i_cli::{EXIT_OK, Reporter, Summary, attribute, open_output, parse_args, run, usage_error};

const TOOL: &str = "e2i-move";

fn main() -> std::process::ExitCode {
    let args: Args = parse_args(TOOL);
    run(TOOL, Summary::new(false, TOOL), |_| body(args))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
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
/// The first failed write (a closed pipe: `e2i-move -n … | head`) is kept in `failed`, for
/// the run to end with it once the library call returns.
fn lister(
    dry: bool,
    failed: std::rc::Rc<std::cell::RefCell<Option<io::Error>>>,
) -> impl FnMut(u64, u64) {
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
        Some(e) => Err(anyhow::Error::new(e).context("listing on stdout")),
        None => Ok(()),
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
    std::fs::metadata(&args.source).with_context(|| args.source.display().to_string())?;
    // -o at or past the end: say where SOURCE ends (a qcow2 SOURCE's virtual disk is
    // checked where it is opened).
    if args.src_offset > 0
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
    let opts = MoveOptions {
        src_offset: args.src_offset,
        dest_offset: args.dest_offset,
        metadata_only: args.metadata_only,
        check: args.check,
        dry_run: args.dry_run,
        // Hidden, for tests only: slow the move down so a kill lands in the middle.
        throttle_us_per_mib: std::env::var("E2I_MOVE_THROTTLE_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        // Hidden, for tests only: smaller pieces, so a small filesystem has many of them.
        piece_bytes: std::env::var("E2I_MOVE_PIECE_KIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |k| k.saturating_mul(1024)),
    };
    let src = args.source.display().to_string();
    let mut reporter = Reporter::new(args.progress);
    reporter.set_dry_run(args.dry_run);
    let list_failed = std::rc::Rc::new(std::cell::RefCell::new(None));
    let mut list = lister(args.dry_run, list_failed.clone());
    if in_place {
        refuse_mounted(&args.source, true)?;
        let journal = match &args.journal {
            Some(j) => j.clone(),
            None => move_fs::default_journal_path(&args.source).with_context(|| src.clone())?,
        };
        if same_file(&journal, &args.source) {
            anyhow::bail!("{}: the journal cannot be SOURCE itself", journal.display());
        }
        if !args.dry_run
            && let Some(dir) = journal.parent().filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if let Ok(Some(j)) = Journal::open(&journal)
            && matches!(j.state, State::Running { .. })
            && !args.quiet
            && j.params.src_offset == args.src_offset
            && j.params.dest_offset == args.dest_offset
        {
            eprintln!(
                "{TOOL}: {src}: resuming the interrupted move recorded in {}",
                journal.display()
            );
        }
        let rep = move_fs::move_in_place(&args.source, &journal, &opts, &mut list, &mut reporter)
            .with_context(|| src.clone())?;
        listing_result(&list_failed)?;
        reporter.summary(rep.block_size);
        report_move(&args, &rep, &journal)?;
        return Ok(EXIT_OK);
    }
    let dest = args.dest.clone().unwrap_or_default();
    refuse_mounted(&dest, true)?;
    if !args.force {
        refuse_mounted(&args.source, false)
            .context("a copy of it would be inconsistent (use -f to copy anyway)")?;
    }
    let dst = dest.display().to_string();
    let mut out = open_output(
        &Request {
            path: &dest,
            role: "DEST",
            in_place: true,
            dry_run: args.dry_run,
            exclusive: true,
            streams: false,
        },
        &[("SOURCE", &args.source)],
    )?;
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
        .map_err(|e| attribute(e, &src, &dst))?;
    listing_result(&list_failed)?;
    if out.kind() == Kind::BlockDevice
        && !args.dry_run
        && let Some(f) = out.file()
    {
        f.sync_data()
            .map_err(|e| attribute(e2i::Error::io("sync", 0, e), &src, &dst))?;
    }
    out.commit()
        .map_err(|e| anyhow::Error::new(e).context(dst.clone()))?;
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

fn report_move(args: &Args, rep: &MoveReport, journal: &Path) -> anyhow::Result<()> {
    if args.quiet {
        return Ok(());
    }
    let src = args.source.display();
    if rep.already_done {
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
