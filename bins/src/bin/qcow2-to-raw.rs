//! qcow2-to-raw: expand any qcow2 image (v2 or v3) into a raw image.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use e2i::ops::qcow2_to_raw;
use e2i::sparse::RawTarget;
use e2i_cli::{EXIT_OK, Output, Reporter, number, run, usage_error};

const TOOL: &str = "qcow2-to-raw";

/// Write the virtual disk of the qcow2 image INPUT as a raw image to OUTPUT.
#[derive(Parser, Debug)]
#[command(name = TOOL, version, about, after_help = "INPUT may be `-` (stdin; also gzip- or bzip2-compressed), spooled to a temporary file.\nExit status: 0 success, 1 failure, 2 usage error.")]
struct Args {
    /// qcow2 image; `-` for stdin.
    input: PathBuf,
    /// Raw image to write: a file, a block device, or `-` for stdout.
    output: PathBuf,
    /// Write at byte N of an existing OUTPUT, updating it in place.
    #[arg(short = 'O', long = "dest-offset", value_name = "N", value_parser = number)]
    dest_offset: Option<u64>,
    /// Compare before writing; write only what differs (updates OUTPUT in place).
    #[arg(short = 'c', long)]
    check: bool,
    /// Print the byte ranges that would be written; create and change nothing.
    #[arg(short = 'n', long = "dry-run")]
    dry_run: bool,
    /// Show progress on stderr.
    #[arg(short = 'p', long)]
    progress: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    run(TOOL, || convert(args))
}

fn convert(args: Args) -> anyhow::Result<u8> {
    let to_stdout = args.output.as_os_str() == "-";
    if to_stdout && (args.dest_offset.is_some() || args.check) {
        return Ok(usage_error(TOOL, "-O and -c need an OUTPUT file or device"));
    }
    let name = args.input.display().to_string();
    let image = qcow2_to_raw::open_input(&args.input).with_context(|| name.clone())?;
    let meta = std::fs::metadata(&args.output).ok();
    let is_dev = meta
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    let in_place = !to_stdout && (args.dest_offset.is_some() || args.check || is_dev);
    let plan = qcow2_to_raw::plan(&image, in_place).with_context(|| name.clone())?;
    let outname = args.output.display().to_string();
    if args.dry_run {
        let target = if in_place && meta.is_some() {
            Some(std::fs::File::open(&args.output).with_context(|| outname.clone())?)
        } else {
            None
        };
        let stdout = io::stdout();
        let mut w = stdout.lock();
        let r = qcow2_to_raw::dry_run(
            &image,
            &plan,
            target.as_ref(),
            args.dest_offset.unwrap_or(0),
            args.check,
            !in_place,
            &mut w,
        )
        .with_context(|| name.clone())?;
        writeln!(
            w,
            "would write {} bytes to {outname} ({} bytes already identical); virtual size {}",
            r.bytes,
            r.identical,
            image.virtual_size()
        )?;
        return Ok(EXIT_OK);
    }
    let mut reporter = Reporter::new(args.progress);
    reporter.set_block_size(plan.unit);
    if in_place && meta.is_none() {
        // A new file with -O or -c: built under a temporary name like any new output.
        let mut out = Output::create(&args.output)?;
        if let Output::File { file, .. } = &mut out {
            let target = RawTarget::InPlace {
                file,
                dest_offset: args.dest_offset.unwrap_or(0),
                check: false,
                grow_to_end: true,
            };
            qcow2_to_raw::convert(&image, &plan, target, &mut reporter)
                .with_context(|| format!("{name} -> {outname}"))?;
        }
        out.commit()?;
        return Ok(EXIT_OK);
    }
    if in_place {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .truncate(false)
            .open(&args.output)
            .with_context(|| format!("opening {outname}"))?;
        let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        let target = RawTarget::InPlace {
            file: &file,
            dest_offset: args.dest_offset.unwrap_or(0),
            check: args.check,
            grow_to_end: regular,
        };
        qcow2_to_raw::convert(&image, &plan, target, &mut reporter)
            .with_context(|| format!("{name} -> {outname}"))?;
        return Ok(EXIT_OK);
    }
    let mut out = Output::create(&args.output)?;
    match &mut out {
        Output::Stdout => {
            let stdout = io::stdout();
            let mut w = io::BufWriter::with_capacity(1 << 20, stdout.lock());
            qcow2_to_raw::convert(&image, &plan, RawTarget::Stream(&mut w), &mut reporter)
                .with_context(|| name.clone())?;
            w.flush()?;
        }
        Output::File { file, .. } => {
            qcow2_to_raw::convert(&image, &plan, RawTarget::NewFile(file), &mut reporter)
                .with_context(|| format!("{name} -> {outname}"))?;
        }
        Output::Device { .. } => anyhow::bail!("{outname}: became a block device while opening"),
    }
    out.commit()?;
    Ok(EXIT_OK)
}
