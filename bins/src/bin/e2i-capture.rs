//! e2i-capture: image the metadata of an ext2/3/4 filesystem (e2image, e2image -r, -Q).

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use e2i::mount::{MountState, mount_state};
use e2i::ops::capture::{self, CaptureOptions, Format};
use e2i_cli::{EXIT_DAMAGED, EXIT_OK, Output, Reporter, number, run, usage_error};

const TOOL: &str = "e2i-capture";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    Normal,
    Raw,
    Qcow2,
    Stream,
}

/// Read the ext2/3/4 filesystem in SOURCE (block device, raw image or qcow2 image) and
/// write an image of its metadata to OUTPUT.
#[derive(Parser, Debug)]
#[command(name = TOOL, version, about, after_help = "Exit status: 0 success, 1 failure, 2 usage error, 3 finished but damaged metadata was skipped.")]
struct Args {
    /// Block device or image file holding the filesystem.
    source: PathBuf,
    /// Image to write; `-` for stdout.
    #[arg(default_value = "-")]
    output: PathBuf,
    /// Image format [default: normal for a file, stream for stdout].
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Raw image (same as --format raw; e2image -r).
    #[arg(short = 'r', conflicts_with_all = ["qcow2", "format"])]
    raw: bool,
    /// qcow2 image (same as --format qcow2; e2image -Q).
    #[arg(short = 'Q', conflicts_with = "format")]
    qcow2: bool,
    /// Include regular-file data (raw, qcow2, stream).
    #[arg(short = 'a', long = "all-data")]
    all_data: bool,
    /// Scramble names and other private strings.
    #[arg(short = 's', long)]
    scramble: bool,
    /// Seed for --scramble.
    #[arg(long, value_parser = number, requires = "scramble")]
    seed: Option<u64>,
    /// Allow a source mounted read-write.
    #[arg(short = 'f', long)]
    force: bool,
    /// Read the filesystem through the backup superblock at block N (needs -B).
    #[arg(short = 'b', long = "superblock", value_name = "N", value_parser = number)]
    superblock: Option<u64>,
    /// Block size to use with -b.
    #[arg(short = 'B', long = "blocksize", value_name = "N", value_parser = number)]
    blocksize: Option<u64>,
    /// Byte offset of the filesystem inside SOURCE.
    #[arg(short = 'o', long = "offset", value_name = "N", value_parser = number, default_value = "0")]
    offset: u64,
    /// Show progress on stderr.
    #[arg(short = 'p', long)]
    progress: bool,
    /// qcow2 only: deflate-compressed clusters.
    #[arg(long)]
    compress: bool,
    /// Stop at the first damaged structure (exit 1) instead of skipping it (exit 3).
    #[arg(long)]
    strict: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    run(TOOL, || capture(args))
}

fn capture(args: Args) -> anyhow::Result<u8> {
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
        scramble: args
            .scramble
            .then(|| args.seed.unwrap_or(e2i::scramble::DEFAULT_SEED)),
    };
    let mut reporter = Reporter::new(args.progress);
    let mut out = Output::create(&args.output)?;
    let src = args.source.display().to_string();
    let report = match &mut out {
        Output::Stdout => {
            let stdout = io::stdout();
            let mut w = io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let r = capture::capture(
                &args.source,
                &opts,
                format,
                capture::Output::Stream(&mut w),
                &mut reporter,
            );
            w.flush().ok();
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
    if report.copy.past_end_blocks > 0 {
        eprintln!(
            "{TOOL}: warning: {src}: {} selected blocks lie past the end of the source and were written as zeros",
            report.copy.past_end_blocks
        );
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
