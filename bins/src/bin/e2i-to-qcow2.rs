//! e2i-to-qcow2: convert an image to a clean qcow2 (version 2, cluster = block size).
//! INPUT is an e2i stream (written to OUTPUT front to back, so OUTPUT may be a pipe), a
//! normal e2image image, or a raw or qcow2 filesystem image captured as `e2i-capture -Q`
//! would (`-a` for all data).

use std::io::{self, Write};
use std::time::Instant;

use anyhow::Context;
use e2i::ops::capture::CaptureOptions;
use e2i::ops::input::{self, Kind};
use e2i::ops::to_qcow2::to_qcow2;
use e2i::qcow2::writer::Qcow2Target;
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
        let inp = input::open(&args.input).with_context(|| src.clone())?;
        let l = e2i::ops::to_qcow2::plan(inp, &opts, &mut reporter).with_context(|| src.clone())?;
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
    if args.all_data && inp.kind() == Kind::Stream && !args.quiet {
        eprintln!(
            "{TOOL}: note: -a has no effect on a stream input (the capture chose its blocks)"
        );
    }
    let mut out = Output::create(&args.output)?;
    let report = match &mut out {
        Output::Stdout => {
            let mut w = stdout_writer(args.json);
            let r = to_qcow2(inp, Qcow2Target::Sequential(&mut w), &opts, &mut reporter);
            w.flush().ok();
            sum.stdout = w.get_ref().sha256().map(|h| (h, w.get_ref().bytes()));
            r
        }
        Output::Device { file } => {
            let mut w = io::BufWriter::with_capacity(1 << 20, &*file);
            let r = to_qcow2(inp, Qcow2Target::Sequential(&mut w), &opts, &mut reporter);
            w.flush().ok();
            r
        }
        Output::File { file, .. } => to_qcow2(
            inp,
            Qcow2Target::File {
                file,
                compress: args.compress,
            },
            &opts,
            &mut reporter,
        ),
    }
    .with_context(|| src.clone())?;
    out.commit()?;
    reporter.summary(report.block_size);
    sum.input_kind = match report.input {
        Kind::Stream => "stream",
        Kind::Normal => "normal",
        Kind::Qcow2 => "qcow2",
        Kind::Raw => "raw",
    };
    sum.block_size = report.block_size;
    sum.blocks_count = report.blocks_count;
    sum.blocks = report.blocks;
    sum.stream_sha256 = report.stream_sha256;
    sum.problems = report.problems.len();
    if report.problems.is_empty() {
        return Ok(EXIT_OK);
    }
    if !args.quiet {
        for p in &report.problems {
            eprintln!("{TOOL}: skipped: {src}: {p}");
        }
    }
    Ok(EXIT_DAMAGED)
}
