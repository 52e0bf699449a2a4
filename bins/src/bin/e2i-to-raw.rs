//! e2i-to-raw: convert an e2i stream, qcow2, normal e2image image or raw filesystem image
//! (optionally gzip/bzip2-compressed, from a file or stdin) to a raw image.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::time::Instant;

use anyhow::Context;
use e2i::ops::input;
use e2i::ops::to_raw::{self, ConvertOptions};
use e2i::sparse::RawTarget;
use e2i_cli::cli::to_raw::Args;
use e2i_cli::json::{HashWriter, Obj};
use e2i_cli::{EXIT_DAMAGED, EXIT_OK, Output, Reporter, parse_args, run, usage_error};

const TOOL: &str = "e2i-to-raw";

fn main() -> std::process::ExitCode {
    let args: Args = parse_args(TOOL);
    run(TOOL, || convert(args))
}

fn convert(args: Args) -> anyhow::Result<u8> {
    let started = Instant::now();
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
    let mut stdout_sum = None;
    let report = if args.dry_run {
        let stdout = io::stdout();
        let mut w = stdout.lock();
        to_raw::to_raw(inp, RawTarget::DryRun(&mut w), opts, &mut reporter)
    } else if to_stdout {
        let stdout = io::stdout();
        let mut w =
            io::BufWriter::with_capacity(1 << 20, HashWriter::new(stdout.lock(), args.json));
        let r = to_raw::to_raw(inp, RawTarget::Stream(&mut w), opts, &mut reporter);
        w.flush().ok();
        stdout_sum = w.get_ref().sha256().map(|h| (h, w.get_ref().bytes()));
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
    reporter.summary(report.block_size);
    let status = if report.problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_DAMAGED
    };
    if args.json && !args.dry_run {
        let output_bytes = match &stdout_sum {
            Some((_, n)) => *n,
            None => std::fs::metadata(&args.output).map_or(0, |m| m.len()),
        };
        let line = Obj::new()
            .str("tool", TOOL)
            .str("input", &name)
            .opt_str(
                "input_kind",
                report
                    .input
                    .map(|k| format!("{k:?}").to_lowercase())
                    .as_deref(),
            )
            .str("output", &out_name)
            .num("block_size", u64::from(report.block_size))
            .num("blocks_count", report.blocks_count)
            .num("blocks", report.copy.blocks)
            .num("identical_blocks", report.copy.identical_blocks)
            .num("bytes_written", report.copy.bytes_written)
            .num("output_bytes", output_bytes)
            .opt_str("sha256", stdout_sum.as_ref().map(|(h, _)| h.as_str()))
            .opt_str(
                "stream_sha256",
                report
                    .stream_sha256
                    .map(|d| e2i_cli::json::hex(&d))
                    .as_deref(),
            )
            .float("elapsed_seconds", started.elapsed().as_secs_f64())
            .num("problems", report.problems.len() as u64)
            .num("exit", u64::from(status))
            .finish();
        e2i_cli::print_json(&line, to_stdout);
    }
    if args.quiet {
        return Ok(status);
    }
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
