//! e2i-to-qcow2: convert an image to a clean qcow2 (version 2, cluster = block size).
//! INPUT is a raw filesystem image, captured as `e2i-capture -Q` would (`-a` for all data).

use std::io::{self, Write};
use std::time::Instant;

use anyhow::Context;
use e2i::ops::capture::{self, CaptureOptions, Format};
use e2i::ops::input::{self, Input, Kind};
use e2i::ops::to_qcow2::{Qcow2Out, stream_to_qcow2};
use e2i::stream::StreamReader;
use e2i_cli::cli::to_qcow2::Args;
use e2i_cli::json::{HashWriter, Obj};
use e2i_cli::{EXIT_DAMAGED, EXIT_OK, Output, Reporter, parse_args, run, usage_error};

const TOOL: &str = "e2i-to-qcow2";

fn main() -> std::process::ExitCode {
    let args: Args = parse_args(TOOL);
    run(TOOL, || {
        let started = Instant::now();
        let mut sum = Summary::default();
        let status = convert(&args, &mut sum)?;
        if args.json && !args.dry_run {
            sum.print(&args, status, started);
        }
        Ok(status)
    })
}

/// What `--json` reports.
#[derive(Default)]
struct Summary {
    input_kind: &'static str,
    block_size: u32,
    blocks_count: u64,
    blocks: u64,
    problems: usize,
    stream_sha256: Option<[u8; 32]>,
    /// SHA-256 and length of what went to stdout.
    stdout: Option<(String, u64)>,
}

impl Summary {
    fn print(&self, args: &Args, status: u8, started: Instant) {
        let to_stdout = args.output.as_os_str() == "-";
        let output_bytes = match &self.stdout {
            Some((_, n)) => *n,
            None => std::fs::metadata(&args.output).map_or(0, |m| m.len()),
        };
        let line = Obj::new()
            .str("tool", TOOL)
            .str("input", &args.input.display().to_string())
            .str("input_kind", self.input_kind)
            .str("output", &args.output.display().to_string())
            .num("block_size", u64::from(self.block_size))
            .num("blocks_count", self.blocks_count)
            .num("blocks", self.blocks)
            .num("output_bytes", output_bytes)
            .opt_str("sha256", self.stdout.as_ref().map(|(h, _)| h.as_str()))
            .opt_str(
                "stream_sha256",
                self.stream_sha256
                    .map(|d| e2i_cli::json::hex(&d))
                    .as_deref(),
            )
            .float("elapsed_seconds", started.elapsed().as_secs_f64())
            .num("problems", self.problems as u64)
            .num("exit", u64::from(status))
            .finish();
        e2i_cli::print_json(&line, to_stdout);
    }
}

/// Stdout for a qcow2 written front to back: buffered, counted, hashed for `--json`.
fn stdout_writer(json: bool) -> io::BufWriter<HashWriter<io::StdoutLock<'static>>> {
    io::BufWriter::with_capacity(1 << 20, HashWriter::new(io::stdout().lock(), json))
}

fn convert(args: &Args, sum: &mut Summary) -> anyhow::Result<u8> {
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
        Input::Stream(r) => return from_stream(r, args, &src, &mut reporter, sum),
        Input::File {
            kind: Kind::Normal,
            path,
            ..
        } => return from_normal(&path, args, &src, &mut reporter, sum),
        // Raw and qcow2 images (or their spooled copies) are captured like e2i-capture -Q.
        Input::File { path, spooled, .. } => (path, spooled),
    };
    let input_path = path.0.clone();
    let mut out = Output::create(&args.output)?;
    let report = match &mut out {
        Output::Stdout => {
            let mut w = stdout_writer(args.json);
            let r = capture::capture(
                &input_path,
                &opts,
                Format::Qcow2,
                capture::Output::Stream(&mut w),
                &mut reporter,
            );
            w.flush().ok();
            sum.stdout = w.get_ref().sha256().map(|h| (h, w.get_ref().bytes()));
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
    reporter.summary(report.block_size);
    sum.input_kind = "raw";
    sum.block_size = report.block_size;
    sum.blocks_count = report.blocks_count;
    sum.blocks = report.selected_blocks;
    sum.problems = report.problems.len();
    if report.problems.is_empty() {
        return Ok(EXIT_OK);
    }
    if args.quiet {
        return Ok(EXIT_DAMAGED);
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
    sum: &mut Summary,
) -> anyhow::Result<u8> {
    if args.all_data && !args.quiet {
        eprintln!(
            "{TOOL}: note: -a has no effect on a stream input (the capture chose its blocks)"
        );
    }
    reporter.set_block_size(r.header.block_size);
    let mut out = Output::create(&args.output)?;
    let rep = match &mut out {
        Output::Stdout => {
            let mut w = stdout_writer(args.json);
            let rep = stream_to_qcow2(r, Qcow2Out::Sequential(&mut w), reporter)
                .with_context(|| src.to_string())?;
            w.flush()?;
            sum.stdout = w.get_ref().sha256().map(|h| (h, w.get_ref().bytes()));
            rep
        }
        Output::Device { file } => {
            let mut w = io::BufWriter::with_capacity(1 << 20, &*file);
            let rep = stream_to_qcow2(r, Qcow2Out::Sequential(&mut w), reporter)
                .with_context(|| src.to_string())?;
            w.flush()?;
            rep
        }
        Output::File { file, .. } if args.compress => {
            stream_to_qcow2(r, Qcow2Out::Compressed(file), reporter)
                .with_context(|| src.to_string())?
        }
        Output::File { file, .. } => {
            let mut w = io::BufWriter::with_capacity(1 << 20, &*file);
            let rep = stream_to_qcow2(r, Qcow2Out::Sequential(&mut w), reporter)
                .with_context(|| src.to_string())?;
            w.flush()?;
            rep
        }
    };
    out.commit()?;
    reporter.summary(rep.block_size);
    sum.input_kind = "stream";
    sum.block_size = rep.block_size;
    sum.blocks_count = rep.blocks_count;
    sum.blocks = rep.data_blocks + rep.zero_blocks;
    sum.stream_sha256 = Some(rep.stream_sha256);
    Ok(EXIT_OK)
}

/// A normal e2image image: its blocks at their filesystem positions.
fn from_normal(
    path: &std::path::Path,
    args: &Args,
    src: &str,
    reporter: &mut Reporter,
    sum: &mut Summary,
) -> anyhow::Result<u8> {
    use e2i::qcow2::writer::Qcow2Target;
    // The normal image's block size, for the MB/s figures.
    let bs = e2i::io::FileSource::open(path, 0)
        .and_then(e2i::normal::NormalImage::open)
        .map_or(0, |img| img.superblock().block_size);
    reporter.set_block_size(bs);
    let mut out = Output::create(&args.output)?;
    let stats = match &mut out {
        Output::Stdout => {
            let mut w = stdout_writer(args.json);
            let st = e2i::ops::to_qcow2::normal_to_qcow2(
                path,
                Qcow2Target::Sequential(&mut w),
                reporter,
            )
            .with_context(|| src.to_string())?;
            w.flush()?;
            sum.stdout = w.get_ref().sha256().map(|h| (h, w.get_ref().bytes()));
            st
        }
        Output::Device { file } => {
            let mut w = io::BufWriter::with_capacity(1 << 20, &*file);
            let st = e2i::ops::to_qcow2::normal_to_qcow2(
                path,
                Qcow2Target::Sequential(&mut w),
                reporter,
            )
            .with_context(|| src.to_string())?;
            w.flush()?;
            st
        }
        Output::File { file, .. } => e2i::ops::to_qcow2::normal_to_qcow2(
            path,
            Qcow2Target::File {
                file,
                compress: args.compress,
            },
            reporter,
        )
        .with_context(|| src.to_string())?,
    };
    out.commit()?;
    reporter.summary(bs);
    sum.input_kind = "normal";
    sum.block_size = bs;
    sum.blocks = stats.blocks;
    Ok(EXIT_OK)
}
