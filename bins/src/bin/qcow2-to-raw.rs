//! qcow2-to-raw: expand any qcow2 image (v2 or v3) into a raw image.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::time::Instant;

use anyhow::Context;
use e2i::ops::qcow2_to_raw;
use e2i::sparse::CopyStats;
use e2i::sparse::RawTarget;
use e2i_cli::cli::qcow2_to_raw::Args;
use e2i_cli::json::{HashWriter, Obj};
use e2i_cli::{EXIT_OK, Output, Reporter, parse_args, run, usage_error};

const TOOL: &str = "qcow2-to-raw";

fn main() -> std::process::ExitCode {
    let args: Args = parse_args(TOOL);
    run(TOOL, || convert(args))
}

/// The `--json` summary of a finished conversion.
fn print_summary(
    args: &Args,
    unit: u32,
    virtual_size: u64,
    copy: &CopyStats,
    stdout: Option<(String, u64)>,
    started: Instant,
) {
    let to_stdout = args.output.as_os_str() == "-";
    let output_bytes = match &stdout {
        Some((_, n)) => *n,
        None => std::fs::metadata(&args.output).map_or(0, |m| m.len()),
    };
    let line = Obj::new()
        .str("tool", TOOL)
        .str("input", &args.input.display().to_string())
        .str("output", &args.output.display().to_string())
        .num("block_size", u64::from(unit))
        .num("virtual_size", virtual_size)
        .num("blocks", copy.blocks)
        .num("identical_blocks", copy.identical_blocks)
        .num("bytes_written", copy.bytes_written)
        .num("output_bytes", output_bytes)
        .opt_str("sha256", stdout.as_ref().map(|(h, _)| h.as_str()))
        .float("elapsed_seconds", started.elapsed().as_secs_f64())
        .num("exit", u64::from(EXIT_OK))
        .finish();
    e2i_cli::print_json(&line, to_stdout);
}

fn convert(args: Args) -> anyhow::Result<u8> {
    let started = Instant::now();
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
            let copy = qcow2_to_raw::convert(&image, &plan, target, &mut reporter)
                .with_context(|| format!("{name} -> {outname}"))?;
            out.commit()?;
            reporter.summary(plan.unit);
            if args.json {
                print_summary(&args, plan.unit, image.virtual_size(), &copy, None, started);
            }
        }
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
        let copy = qcow2_to_raw::convert(&image, &plan, target, &mut reporter)
            .with_context(|| format!("{name} -> {outname}"))?;
        reporter.summary(plan.unit);
        if args.json {
            print_summary(&args, plan.unit, image.virtual_size(), &copy, None, started);
        }
        if args.check && !args.quiet {
            eprintln!(
                "{TOOL}: {} blocks already contained the data to be copied",
                copy.identical_blocks
            );
        }
        return Ok(EXIT_OK);
    }
    let mut out = Output::create(&args.output)?;
    let mut stdout_sum = None;
    let copy = match &mut out {
        Output::Stdout => {
            let stdout = io::stdout();
            let mut w =
                io::BufWriter::with_capacity(1 << 20, HashWriter::new(stdout.lock(), args.json));
            let copy =
                qcow2_to_raw::convert(&image, &plan, RawTarget::Stream(&mut w), &mut reporter)
                    .with_context(|| name.clone())?;
            w.flush()?;
            stdout_sum = w.get_ref().sha256().map(|h| (h, w.get_ref().bytes()));
            copy
        }
        Output::File { file, .. } => {
            qcow2_to_raw::convert(&image, &plan, RawTarget::NewFile(file), &mut reporter)
                .with_context(|| format!("{name} -> {outname}"))?
        }
        Output::Device { .. } => anyhow::bail!("{outname}: became a block device while opening"),
    };
    out.commit()?;
    reporter.summary(plan.unit);
    if args.json {
        print_summary(
            &args,
            plan.unit,
            image.virtual_size(),
            &copy,
            stdout_sum,
            started,
        );
    }
    Ok(EXIT_OK)
}
