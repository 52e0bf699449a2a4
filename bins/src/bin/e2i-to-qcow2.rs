//! e2i-to-qcow2: convert an image to a clean qcow2 (version 2, cluster = block size).
//! INPUT is a raw filesystem image, captured as `e2i-capture -Q` would (`-a` for all data).

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use e2i::ops::capture::{self, CaptureOptions, Format};
use e2i::ops::input::{self, Input, Kind};
use e2i::ops::to_qcow2::{Qcow2Out, stream_to_qcow2};
use e2i::stream::StreamReader;
use e2i_cli::{EXIT_DAMAGED, EXIT_OK, Output, Reporter, run, usage_error};

const TOOL: &str = "e2i-to-qcow2";

/// Convert INPUT (a raw filesystem image) to a qcow2 image that qemu-img and stock
/// e2image read.
#[derive(Parser, Debug)]
#[command(name = TOOL, version, about, after_help = "Exit status: 0 success, 1 failure, 2 usage error, 3 finished but damaged metadata was skipped.")]
struct Args {
    /// Input image (a raw filesystem image).
    input: PathBuf,
    /// qcow2 to write; `-` for stdout (written front to back).
    output: PathBuf,
    /// Raw input: include regular-file data too.
    #[arg(short = 'a', long = "all-data")]
    all_data: bool,
    /// Deflate-compressed clusters (needs a seekable OUTPUT).
    #[arg(long)]
    compress: bool,
    /// Print the image layout that would be written; create nothing.
    #[arg(short = 'n', long = "dry-run")]
    dry_run: bool,
    /// Show progress on stderr.
    #[arg(short = 'p', long)]
    progress: bool,
    /// Stop at the first damaged structure (exit 1) instead of skipping it (exit 3).
    #[arg(long)]
    strict: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    run(TOOL, || convert(args))
}

fn convert(args: Args) -> anyhow::Result<u8> {
    let to_stdout = args.output.as_os_str() == "-";
    if args.compress && to_stdout {
        return Ok(usage_error(
            TOOL,
            "--compress needs a seekable OUTPUT file, not stdout",
        ));
    }
    let opts = CaptureOptions {
        all_data: args.all_data,
        strict: args.strict,
        compress: args.compress,
        ..CaptureOptions::default()
    };
    let mut reporter = Reporter::new(args.progress);
    let src = args.input.display().to_string();
    if args.dry_run {
        let l = e2i::ops::to_qcow2::plan(&args.input, &opts, &mut reporter)
            .with_context(|| src.clone())?;
        println!(
            "would write {}: qcow2 v2, virtual size {}, cluster size {}, {} data clusters after {} bytes of metadata, {} bytes{}",
            args.output.display(),
            l.virtual_size(),
            l.cluster_size(),
            l.data_clusters(),
            l.data_offset(),
            l.file_size(),
            if args.compress {
                " before compression"
            } else {
                ""
            }
        );
        return Ok(EXIT_OK);
    }
    let inp = input::open(&args.input).with_context(|| src.clone())?;
    let path = match inp {
        Input::Stream(r) => return from_stream(r, &args, &src, &mut reporter),
        Input::File {
            kind: Kind::Normal,
            path,
            ..
        } => return from_normal(&path, &args, &src, &mut reporter),
        // Raw and qcow2 images (or their spooled copies) are captured like e2i-capture -Q.
        Input::File { path, spooled, .. } => (path, spooled),
    };
    let input_path = path.0.clone();
    let mut out = Output::create(&args.output)?;
    let report = match &mut out {
        Output::Stdout => {
            let stdout = io::stdout();
            let mut w = io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let r = capture::capture(
                &input_path,
                &opts,
                Format::Qcow2,
                capture::Output::Stream(&mut w),
                &mut reporter,
            );
            w.flush().ok();
            r
        }
        Output::Device { file } => capture::capture(
            &input_path,
            &opts,
            Format::Qcow2,
            capture::Output::Device(file),
            &mut reporter,
        ),
        Output::File { file, .. } => capture::capture(
            &input_path,
            &opts,
            Format::Qcow2,
            capture::Output::NewFile(file),
            &mut reporter,
        ),
    }
    .with_context(|| src.clone())?;
    out.commit()?;
    if report.problems.is_empty() {
        return Ok(EXIT_OK);
    }
    for p in &report.problems {
        eprintln!("{TOOL}: skipped: {src}: {p}");
    }
    Ok(EXIT_DAMAGED)
}

/// An e2i stream: the qcow2 layout comes from the stream's map, the data follows.
fn from_stream(
    r: StreamReader<Box<dyn io::Read>>,
    args: &Args,
    src: &str,
    reporter: &mut Reporter,
) -> anyhow::Result<u8> {
    if args.all_data {
        eprintln!(
            "{TOOL}: note: -a has no effect on a stream input (the capture chose its blocks)"
        );
    }
    reporter.set_block_size(r.header.block_size);
    let mut out = Output::create(&args.output)?;
    match &mut out {
        Output::Stdout => {
            let stdout = io::stdout();
            let mut w = io::BufWriter::with_capacity(1 << 20, stdout.lock());
            stream_to_qcow2(r, Qcow2Out::Sequential(&mut w), reporter)
                .with_context(|| src.to_string())?;
            w.flush()?;
        }
        Output::Device { file } => {
            let mut w = io::BufWriter::with_capacity(1 << 20, &*file);
            stream_to_qcow2(r, Qcow2Out::Sequential(&mut w), reporter)
                .with_context(|| src.to_string())?;
            w.flush()?;
        }
        Output::File { file, .. } if args.compress => {
            stream_to_qcow2(r, Qcow2Out::Compressed(file), reporter)
                .with_context(|| src.to_string())?;
        }
        Output::File { file, .. } => {
            let mut w = io::BufWriter::with_capacity(1 << 20, &*file);
            stream_to_qcow2(r, Qcow2Out::Sequential(&mut w), reporter)
                .with_context(|| src.to_string())?;
            w.flush()?;
        }
    }
    out.commit()?;
    Ok(EXIT_OK)
}

/// A normal e2image image: its blocks at their filesystem positions.
fn from_normal(
    path: &std::path::Path,
    args: &Args,
    src: &str,
    reporter: &mut Reporter,
) -> anyhow::Result<u8> {
    use e2i::qcow2::writer::Qcow2Target;
    let mut out = Output::create(&args.output)?;
    match &mut out {
        Output::Stdout => {
            let stdout = io::stdout();
            let mut w = io::BufWriter::with_capacity(1 << 20, stdout.lock());
            e2i::ops::to_qcow2::normal_to_qcow2(path, Qcow2Target::Sequential(&mut w), reporter)
                .with_context(|| src.to_string())?;
            w.flush()?;
        }
        Output::Device { file } => {
            let mut w = io::BufWriter::with_capacity(1 << 20, &*file);
            e2i::ops::to_qcow2::normal_to_qcow2(path, Qcow2Target::Sequential(&mut w), reporter)
                .with_context(|| src.to_string())?;
            w.flush()?;
        }
        Output::File { file, .. } => {
            e2i::ops::to_qcow2::normal_to_qcow2(
                path,
                Qcow2Target::File {
                    file,
                    compress: args.compress,
                },
                reporter,
            )
            .with_context(|| src.to_string())?;
        }
    }
    out.commit()?;
    Ok(EXIT_OK)
}
