//! e2i-to-raw: convert an e2i stream, qcow2, normal e2image image or raw filesystem image
//! (optionally gzip/bzip2-compressed, from a file or stdin) to a raw image.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use e2i::ops::input;
use e2i::ops::to_raw::{self, ConvertOptions};
use e2i::sparse::RawTarget;
use e2i_cli::{EXIT_DAMAGED, EXIT_OK, Output, Reporter, number, run, usage_error};

const TOOL: &str = "e2i-to-raw";

/// Convert INPUT (e2i stream, qcow2, normal e2image image or raw filesystem image; gzip or
/// bzip2 wrapping detected) to a raw image at OUTPUT (a file, a block device, or `-`).
#[derive(Parser, Debug)]
#[command(name = TOOL, version, about, after_help = "Exit status: 0 success, 1 failure, 2 usage error, 3 damaged metadata skipped (raw input).")]
struct Args {
    /// Input file, or `-` for stdin.
    input: PathBuf,
    /// Output file, block device, or `-` for stdout.
    output: PathBuf,
    /// Write the image at this byte offset of OUTPUT, updating it in place.
    #[arg(short = 'O', long = "dest-offset", value_name = "N", value_parser = number)]
    dest_offset: Option<u64>,
    /// Compare before writing; skip blocks OUTPUT already holds.
    #[arg(short = 'c', long = "check")]
    check: bool,
    /// Print the blocks that would be written; create and change nothing.
    #[arg(short = 'n', long = "dry-run")]
    dry_run: bool,
    /// Show progress on stderr.
    #[arg(short = 'p', long)]
    progress: bool,
    /// Raw filesystem input: include regular-file data.
    #[arg(short = 'a', long = "all-data")]
    all_data: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    run(TOOL, || convert(args))
}

fn convert(args: Args) -> anyhow::Result<u8> {
    let to_stdout = args.output.as_os_str() == "-";
    if to_stdout && (args.dest_offset.is_some() || args.check) {
        return Ok(usage_error(
            TOOL,
            "-O and -c need a seekable OUTPUT, not stdout",
        ));
    }
    let name = args.input.display().to_string();
    let inp = input::open(&args.input).with_context(|| name.clone())?;
    let opts = ConvertOptions {
        all_data: args.all_data,
    };
    let mut reporter = Reporter::new(args.progress);
    if let Some((bs, _)) = to_raw::geometry(&inp) {
        reporter.set_block_size(bs);
    }
    let out_name = args.output.display().to_string();
    let report = if args.dry_run {
        let stdout = io::stdout();
        let mut w = stdout.lock();
        to_raw::to_raw(inp, RawTarget::DryRun(&mut w), opts, &mut reporter)
    } else if to_stdout {
        let stdout = io::stdout();
        let mut w = io::BufWriter::with_capacity(1 << 20, stdout.lock());
        let r = to_raw::to_raw(inp, RawTarget::Stream(&mut w), opts, &mut reporter);
        w.flush().ok();
        r
    } else {
        let is_dev = std::fs::metadata(&args.output).is_ok_and(|m| m.file_type().is_block_device());
        let exists = args.output.exists();
        if is_dev || (exists && (args.dest_offset.is_some() || args.check)) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&args.output)
                .with_context(|| out_name.clone())?;
            let target = RawTarget::InPlace {
                file: &file,
                dest_offset: args.dest_offset.unwrap_or(0),
                check: args.check,
                grow_to_end: !is_dev,
            };
            let r = to_raw::to_raw(inp, target, opts, &mut reporter);
            file.sync_data().ok();
            r
        } else {
            let mut out = Output::create(&args.output)?;
            let r = match &out {
                Output::File { file, .. } => match args.dest_offset {
                    Some(o) => to_raw::to_raw(
                        inp,
                        RawTarget::InPlace {
                            file,
                            dest_offset: o,
                            check: false,
                            grow_to_end: true,
                        },
                        opts,
                        &mut reporter,
                    ),
                    None => to_raw::to_raw(inp, RawTarget::NewFile(file), opts, &mut reporter),
                },
                _ => Err(e2i::Error::InvalidInput(format!(
                    "{out_name}: changed type while opening"
                ))),
            };
            if r.is_ok() {
                out.commit()?;
            }
            r
        }
    }
    .with_context(|| name.clone())?;
    if args.check {
        eprintln!(
            "{TOOL}: {} blocks already contained the data to be copied",
            report.copy.identical_blocks
        );
    }
    if report.problems.is_empty() {
        return Ok(EXIT_OK);
    }
    for p in &report.problems {
        eprintln!("{TOOL}: skipped: {name}: {p}");
    }
    Ok(EXIT_DAMAGED)
}
