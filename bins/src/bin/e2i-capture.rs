//! e2i-capture: image the metadata of an ext2/3/4 filesystem (e2image, e2image -r, -Q).

use std::path::Path;
use std::time::Instant;

use e2i::mount::{MountState, mount_state_at};
use e2i::ops::capture::{self, CaptureOptions, Format};
use e2i::output::{Kind, Request};
use e2i_cli::cli::capture::{Args, FormatArg};
use e2i_cli::{
    EXIT_DAMAGED, EXIT_OK, Reporter, StreamOut, Summary, attribute, open_output_ranged, parse_args,
    run, usage,
};

const TOOL: &str = "e2i-capture";

fn main() -> std::process::ExitCode {
    let args: Args = parse_args(TOOL);
    run(TOOL, Summary::new(args.json, TOOL), |sum| {
        capture(&args, sum)
    })
}

fn capture(args: &Args, sum: &mut Summary) -> anyhow::Result<u8> {
    let started = Instant::now();
    let out_path = args.output.as_deref().unwrap_or(Path::new("-"));
    let src = args.source.display().to_string();
    let out_name = out_path.display().to_string();
    if args.list {
        // On stdout, where the array goes: a failed --list --json still says so there.
        sum.add(|o| o.str("input", &src).bool("list", true));
    } else {
        sum.add(|o| o.str("input", &src).str("output", &out_name));
        sum.to_stderr(out_path == Path::new("-"));
    }
    if args.source == Path::new("-") {
        return Ok(usage(
            TOOL,
            sum,
            "SOURCE cannot be '-' (it needs a seekable file or device); to image a stream or a compressed image, use e2i-to-raw or e2i-to-qcow2",
        ));
    }
    if args.list {
        return list(args, sum);
    }
    if let Some(code) = e2i_cli::refuse_terminal(TOOL, sum, args.output.is_some()) {
        return Ok(code);
    }
    let explicit = match (args.format, args.raw, args.qcow2) {
        (Some(FormatArg::Normal), ..) => Some(Format::Normal),
        (Some(FormatArg::Raw), ..) | (None, true, _) => Some(Format::Raw),
        (Some(FormatArg::Qcow2), ..) | (None, _, true) => Some(Format::Qcow2),
        (Some(FormatArg::Stream), ..) => Some(Format::Stream),
        (None, false, false) => None,
    };
    if args.superblock.is_some_and(|s| s != 0) && explicit.is_none_or(|f| f == Format::Normal) {
        // The default format of a file or device is normal.
        if explicit == Some(Format::Normal) || !is_stream_path(out_path) {
            return Ok(usage(
                TOOL,
                sum,
                "-b needs a raw, qcow2 or stream image (a normal image made through a backup superblock would have inconsistent bitmaps)",
            ));
        }
    }
    if args.stream_version.is_some()
        && (explicit.is_some_and(|f| f != Format::Stream)
            || explicit.is_none() && !is_stream_path(out_path))
    {
        return Ok(usage(
            TOOL,
            sum,
            "--stream-version needs the stream format (--format stream, or OUTPUT a pipe)",
        ));
    }
    if args.all_data
        && (explicit == Some(Format::Normal) || explicit.is_none() && !is_stream_path(out_path))
    {
        return Ok(usage(TOOL, sum, "-a needs a raw, qcow2 or stream image"));
    }
    if args.compress.is_some() && explicit != Some(Format::Qcow2) {
        return Ok(usage(TOOL, sum, "--compress is for qcow2 images (-Q)"));
    }
    if args.backing.is_some() && explicit != Some(Format::Qcow2) {
        return Ok(usage(TOOL, sum, "--backing is for qcow2 images (-Q)"));
    }
    // -P: the partition's start is the offset, its end bounds what is read (unless
    // --past-partition-end).
    let (offset, limit) = match args.partition {
        Some(n) => {
            let c = e2i_cli::partition::choose(
                TOOL,
                &args.source,
                n,
                args.past_partition_end,
                args.quiet,
            )?;
            if !args.force {
                e2i_cli::partition::refuse_mounted(
                    &args.source,
                    n,
                    false,
                    "an image of it would be inconsistent (use -f to capture anyway)",
                )?;
            }
            sum.add(|o| o.num("partition", u64::from(n)).num("offset", c.start));
            (c.start, c.limit)
        }
        None => (args.offset, None),
    };
    // Messages about the filesystem name the partition it is in.
    let src = match args.partition {
        Some(n) => format!("{src} partition {n}"),
        None => src,
    };
    if !args.force
        && let state @ MountState::ReadWrite { .. } = mount_state_at(&args.source, offset)
    {
        anyhow::bail!(
            "{src}: mounted read-write {}; an image of it would be inconsistent (use -f to capture anyway)",
            state.place()
        );
    }
    // The base is opened first: OUTPUT must not be any file of its chain.
    let base = match &args.backing {
        Some(b) => Some(std::rc::Rc::new(e2i_cli::open_base(b, out_path).map_err(
            |e| anyhow::Error::new(e).context(format!("--backing {}", b.display())),
        )?)),
        None => None,
    };
    if let (Some(b), Some(name)) = (&base, &args.backing) {
        e2i_cli::refuse_base_is_input(b, &args.source)
            .map_err(|e| anyhow::Error::new(e).context(format!("--backing {}", name.display())))?;
    }
    let chain = base.as_ref().map(|b| b.files()).unwrap_or_default();
    let mut reads: Vec<(&str, &Path)> = vec![("SOURCE", &args.source)];
    reads.extend(chain.iter().map(|p| ("the backing file", p.as_path())));
    // Held until the image is written: an in-place move of SOURCE cannot start meanwhile.
    let _hold = e2i_cli::hold_source(&args.source, "SOURCE")?;
    let mut out = open_output_ranged(
        &Request {
            path: out_path,
            role: "OUTPUT",
            in_place: false,
            dry_run: false,
            exclusive: true,
            // A compressed qcow2 needs a new regular file: a FIFO is refused unopened.
            streams: args.compress.is_none(),
            hold: e2i::ops::hold::HoldFor::Writing,
            state_dir: e2i_cli::state_dir().as_deref(),
        },
        &reads,
        // Only the filesystem's bytes are read: another partition of the same disk may be
        // OUTPUT.
        e2i_cli::filesystem_range(&args.source, offset),
    )?;
    let out_name = e2i_cli::opened_name(&out_name, &out);
    // A pipe-like OUTPUT (stdout, a FIFO, a character device) gets a stream by default.
    let format = explicit.unwrap_or(if out.kind().is_stream() || out_path == Path::new("-") {
        Format::Stream
    } else {
        Format::Normal
    });
    sum.add(|o| o.str("format", &format!("{format:?}").to_lowercase()));
    let backing_name = args.backing.as_ref().map(|b| b.display().to_string());
    sum.add(|o| o.opt_str("backing", backing_name.as_deref()));
    let opts = CaptureOptions {
        all_data: args.all_data,
        open: e2i::ext4::OpenOptions {
            superblock: args.superblock.filter(|&s| s != 0).map(e2i::units::FsBlock),
            block_size: args.blocksize,
        },
        offset,
        limit,
        strict: args.strict,
        compress: args.compress.map(|c| c.cluster_compression()),
        backing: base,
        scramble: args
            .scramble
            .then(|| args.seed.unwrap_or(e2i::scramble::DEFAULT_SEED)),
        stream_version: match args.stream_version {
            Some(1) => e2i::stream::Version::V1,
            _ => e2i::stream::VERSION,
        },
    };
    if !out.kind().is_stream() {
        // A scrambled image (-s, or SOURCE itself a scrambled image) over a filesystem with
        // SOURCE's UUID (a clone, a copy, the original) would replace its names, symlink
        // targets, inline data, xattrs and label.
        let facts = if args.scramble {
            let fs = capture::open_source_within(&args.source, offset, limit)
                .map_err(|e| attribute(e, &src, &out_name))?;
            e2i::ops::guard::capture_facts(&*fs)
        } else {
            e2i::ops::guard::source_facts(&args.source, offset)
        };
        if let Some(ev) =
            e2i::ops::guard::refuse_scrambled(&facts, out.path(), 0, args.allow_scrambled)
                .map_err(|e| anyhow::Error::new(e).context(out_name.clone()))?
            && !args.quiet
        {
            eprintln!(
                "{TOOL}: warning: {out_name}: writing a scrambled image ({ev}) over the filesystem it is taken from (--allow-scrambled)"
            );
        }
    }
    if out.truncates_on_use() {
        // OUTPUT is written under its own name, truncated when taken: not before SOURCE is
        // known to hold a filesystem (a mistyped SOURCE leaves it whole).
        let fs = capture::open_source_within(&args.source, offset, limit)
            .map_err(|e| attribute(e, &src, &out_name))?;
        e2i::ext4::Filesystem::open(fs, opts.open).map_err(|e| attribute(e, &src, &out_name))?;
    }
    let mut reporter = Reporter::new(args.progress);
    // Stdout redirected to a new file is written as a new file (unless --json hashes what
    // goes to stdout).
    let seek_stdout = if args.json {
        None
    } else {
        out.seekable_stdout()
    };
    let mut stream = (out.kind().is_stream() && seek_stdout.is_none())
        .then(|| StreamOut::new(out.file(), args.json));
    let target = match (&mut stream, out.kind(), seek_stdout.or(out.file())) {
        // The e2i stream gathers its own writes (and names the byte a failed one began at).
        (Some(s), ..) if matches!(format, capture::Format::Stream) => {
            capture::Output::Stream(s.unbuffered())
        }
        (Some(s), ..) => capture::Output::Stream(s.writer()),
        (None, Kind::BlockDevice, Some(file)) => capture::Output::Device {
            file,
            size: out.device_size().unwrap_or(0),
        },
        (None, _, Some(file)) => capture::Output::NewFile(file),
        (None, _, None) => anyhow::bail!("{out_name}: not opened"),
    };
    let report = capture::capture(&args.source, &opts, format, target, &mut reporter)
        .map_err(|e| e2i_cli::attribute_written(e, &src, &out_name, &out, "OUTPUT"))?;
    let streamed = match stream {
        Some(s) => Some(s.finish().map_err(|e| attribute(e, &src, &out_name))?),
        None => None,
    };
    out.end_stdout()
        .map_err(|e| attribute(e, &src, &out_name))?;
    out.commit()
        .map_err(|e| e2i_cli::attribute_written(e, &src, &out_name, &out, "OUTPUT"))?;
    reporter.summary(report.block_size);
    let status = if report.problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_DAMAGED
    };
    let output_bytes = match &streamed {
        Some((_, n)) => *n,
        None => std::fs::metadata(out.path()).map_or(0, |m| m.len()),
    };
    sum.add(|o| {
        o.num("block_size", u64::from(report.block_size))
            .num("blocks_count", report.blocks_count)
            .num("blocks", report.selected_blocks)
            .num("bytes_written", report.copy.bytes_written)
            .num("output_bytes", output_bytes)
            .opt_str("sha256", streamed.as_ref().and_then(|(h, _)| h.as_deref()))
            .float("elapsed_seconds", started.elapsed().as_secs_f64())
            .num("problems", report.problems.len() as u64)
    });
    if args.quiet {
        return Ok(status);
    }
    if report.copy.past_end_blocks > 0 {
        eprintln!(
            "{TOOL}: warning: {src}: {} selected blocks lie past the end of the source and were written as zeros",
            report.copy.past_end_blocks
        );
    }
    for w in &report.warnings {
        eprintln!("{TOOL}: warning: {src}: {w}");
    }
    if let Some(s) = &report.scramble {
        print_scramble_summary(&src, s);
    }
    if report.problems.is_empty() {
        return Ok(EXIT_OK);
    }
    for p in &report.problems {
        eprintln!("{TOOL}: skipped: {src}: {p}");
    }
    eprintln!(
        "{TOOL}: {src}: {} damaged structures skipped; the image holds everything else",
        report.problems.len()
    );
    Ok(EXIT_DAMAGED)
}

/// `--list`: SOURCE's partitions, one line each (with --json, one JSON array, which then
/// stands for the summary: a failure before it prints the summary instead); the table's
/// notes on stderr.
fn list(args: &Args, sum: &mut Summary) -> anyhow::Result<u8> {
    use e2i_cli::partition as part;
    let src = args.source.display().to_string();
    let disk = part::open_disk(&args.source)?;
    let table = e2i::partition::read_table(&*disk)
        .map_err(|e| anyhow::Error::new(e).context(src.clone()))?;
    let fss = part::probe_all(&*disk, &table);
    if !args.quiet {
        for n in &table.notes {
            eprintln!("{TOOL}: warning: {src}: {n}");
        }
    }
    let rows = table.partitions.iter().zip(&fss);
    if args.json {
        let items: Vec<String> = rows
            .map(|(p, f)| part::list_json(&table, p, f.as_ref()))
            .collect();
        sum.replaced();
        e2i_cli::say(format_args!("[{}]", items.join(",")))?;
    } else {
        for (p, f) in rows {
            e2i_cli::say(format_args!("{}", part::list_line(p, f.as_ref())))?;
        }
    }
    Ok(EXIT_OK)
}

/// Is `p` stdout, a FIFO or a character device (where the default format is the stream)?
fn is_stream_path(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    p == Path::new("-")
        || std::fs::metadata(p)
            .is_ok_and(|m| m.file_type().is_fifo() || m.file_type().is_char_device())
}
/// The `-s` summary on stderr: what was scrambled, then what could not be, with reasons.
fn print_scramble_summary(src: &str, s: &e2i::scramble::ScrambleReport) {
    eprintln!(
        "{TOOL}: {src}: scrambled {} names in {} directories, {} symlink targets, {} xattr names and {} values, {} inline files, {} journal blocks{}",
        s.names,
        s.directories,
        s.symlinks,
        s.xattr_names,
        s.xattr_values,
        s.inline_files,
        s.journal_blocks,
        if s.superblock_strings {
            ", the superblock's text (label, last-mounted path, mount options, error functions)"
        } else {
            ""
        }
    );
    if s.scrubbed_regions > 0 {
        eprintln!(
            "{TOOL}: {src}: {} damaged directory blocks scrubbed: names located in them renamed, the bytes that could not be parsed zeroed",
            s.scrubbed_regions
        );
    }
    if s.names_out_of_range > 0 {
        eprintln!(
            "{TOOL}: warning: {src}: {} names could not keep their htree hash range; e2fsck will report those directories",
            s.names_out_of_range
        );
    }
    const SHOWN: usize = 20;
    for w in s.not_scrambled.iter().take(SHOWN) {
        let what = match w {
            e2i::scramble::Unscrambled::Scrubbed(_) => "scrubbed",
            e2i::scramble::Unscrambled::SharedScrambled { .. } => "scrambled",
            _ => "not scrambled",
        };
        eprintln!("{TOOL}: {what}: {src}: {w}");
    }
    if s.not_scrambled.len() > SHOWN {
        eprintln!(
            "{TOOL}: not scrambled: {src}: … and {} more",
            s.not_scrambled.len() - SHOWN
        );
    }
}
