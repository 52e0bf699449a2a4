//! e2i-capture: image the metadata of an ext2/3/4 filesystem (e2image, e2image -r, -Q).

use std::io::{self, Write};
use std::time::Instant;

use anyhow::Context;
use e2i::mount::{MountState, mount_state};
use e2i::ops::capture::{self, CaptureOptions, Format};
use e2i_cli::cli::capture::{Args, FormatArg};
use e2i_cli::json::{HashWriter, Obj};
use e2i_cli::{EXIT_DAMAGED, EXIT_OK, Output, Reporter, parse_args, run, usage_error};

const TOOL: &str = "e2i-capture";

fn main() -> std::process::ExitCode {
    let args: Args = parse_args(TOOL);
    run(TOOL, || capture(args))
}

fn capture(args: Args) -> anyhow::Result<u8> {
    let started = Instant::now();
    if let Some(code) = e2i_cli::refuse_dash(
        TOOL,
        "SOURCE",
        &args.source,
        "to image a stream or a compressed image, use e2i-to-raw or e2i-to-qcow2",
    ) {
        return Ok(code);
    }
    let to_stdout = args.output.as_os_str() == "-";
    let format = match (args.format, args.raw, args.qcow2) {
        (Some(FormatArg::Normal), ..) => Format::Normal,
        (Some(FormatArg::Raw), ..) | (None, true, _) => Format::Raw,
        (Some(FormatArg::Qcow2), ..) | (None, _, true) => Format::Qcow2,
        (Some(FormatArg::Stream), ..) => Format::Stream,
        (None, false, false) if to_stdout => Format::Stream,
        (None, false, false) => Format::Normal,
    };
    if args.superblock.is_some_and(|s| s != 0) && args.blocksize.is_none() {
        return Ok(usage_error(TOOL, "-b needs the block size (-B)"));
    }
    if args.superblock.is_some_and(|s| s != 0) && format == Format::Normal {
        return Ok(usage_error(
            TOOL,
            "-b needs a raw, qcow2 or stream image (a normal image made through a backup superblock would have inconsistent bitmaps)",
        ));
    }
    if args.all_data && format == Format::Normal {
        return Ok(usage_error(TOOL, "-a needs a raw, qcow2 or stream image"));
    }
    if args.compress && format != Format::Qcow2 {
        return Ok(usage_error(TOOL, "--compress is for qcow2 images"));
    }
    let blocksize = match args.blocksize {
        Some(b) if [1024, 2048, 4096, 8192, 16384, 32768, 65536].contains(&b) => Some(b as u32),
        Some(b) => return Ok(usage_error(TOOL, &format!("invalid block size {b}"))),
        None => None,
    };
    if !args.force
        && let MountState::ReadWrite { mount_point } = mount_state(&args.source)
    {
        anyhow::bail!(
            "{}: mounted read-write on {mount_point}; an image of it would be inconsistent (use -f to capture anyway)",
            args.source.display()
        );
    }
    let opts = CaptureOptions {
        all_data: args.all_data,
        open: e2i::ext4::OpenOptions {
            superblock: args.superblock.filter(|&s| s != 0),
            block_size: blocksize,
        },
        offset: args.offset,
        strict: args.strict,
        compress: args.compress,
        scramble: args
            .scramble
            .then(|| args.seed.unwrap_or(e2i::scramble::DEFAULT_SEED)),
    };
    let mut reporter = Reporter::new(args.progress);
    let mut out = Output::create(&args.output)?;
    let src = args.source.display().to_string();
    let mut stdout_sum = None;
    let report = match &mut out {
        Output::Stdout => {
            let stdout = io::stdout();
            let mut w =
                io::BufWriter::with_capacity(1 << 20, HashWriter::new(stdout.lock(), args.json));
            let r = capture::capture(
                &args.source,
                &opts,
                format,
                capture::Output::Stream(&mut w),
                &mut reporter,
            );
            w.flush().ok();
            stdout_sum = w.get_ref().sha256().map(|h| (h, w.get_ref().bytes()));
            r
        }
        Output::Device { file } => capture::capture(
            &args.source,
            &opts,
            format,
            capture::Output::Device(file),
            &mut reporter,
        ),
        Output::File { file, .. } => capture::capture(
            &args.source,
            &opts,
            format,
            capture::Output::NewFile(file),
            &mut reporter,
        ),
    }
    .with_context(|| src.clone())?;
    out.commit()?;
    reporter.summary(report.block_size);
    let status = if report.problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_DAMAGED
    };
    if args.json {
        let output_bytes = match &stdout_sum {
            Some((_, n)) => *n,
            None => std::fs::metadata(&args.output).map_or(0, |m| m.len()),
        };
        let line = Obj::new()
            .str("tool", TOOL)
            .str("input", &src)
            .str("output", &args.output.display().to_string())
            .str("format", &format!("{format:?}").to_lowercase())
            .num("block_size", u64::from(report.block_size))
            .num("blocks_count", report.blocks_count)
            .num("blocks", report.selected_blocks)
            .num("bytes_written", report.copy.bytes_written)
            .num("output_bytes", output_bytes)
            .opt_str("sha256", stdout_sum.as_ref().map(|(h, _)| h.as_str()))
            .float("elapsed_seconds", started.elapsed().as_secs_f64())
            .num("problems", report.problems.len() as u64)
            .num("exit", u64::from(status))
            .finish();
        e2i_cli::print_json(&line, to_stdout);
    }
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
            ", the label and last-mounted path"
        } else {
            ""
        }
    );
    if s.names_out_of_range > 0 {
        eprintln!(
            "{TOOL}: warning: {src}: {} names could not keep their htree hash range; e2fsck will report those directories",
            s.names_out_of_range
        );
    }
    const SHOWN: usize = 20;
    for w in s.not_scrambled.iter().take(SHOWN) {
        eprintln!("{TOOL}: not scrambled: {src}: {w}");
    }
    if s.not_scrambled.len() > SHOWN {
        eprintln!(
            "{TOOL}: not scrambled: {src}: … and {} more",
            s.not_scrambled.len() - SHOWN
        );
    }
}
