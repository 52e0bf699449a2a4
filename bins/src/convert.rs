//! The body shared by `e2i-to-raw` and `qcow2-to-raw`: any input (or qcow2 only) to a raw
//! image on a new file, an existing file or device (in place), a stream, or a listing (`-n`).

use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use e2i::ops::guard;
use e2i::ops::input::{self, Kind};
use e2i::ops::to_raw::{self, ConvertOptions};
use e2i::output::{Kind as OutKind, Request};
use e2i::sparse::RawTarget;

use crate::{
    EXIT_DAMAGED, EXIT_OK, Reporter, StreamOut, Summary, attribute, hold_for, open_output, usage,
};

/// What the two raw converters take.
pub struct RawArgs<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    pub dest_offset: Option<u64>,
    pub check: bool,
    pub dry_run: bool,
    pub progress: bool,
    pub all_data: bool,
    pub quiet: bool,
    pub json: bool,
    /// `qcow2-to-raw`: refuse any other input.
    pub qcow2_only: bool,
    /// Write a scrambled INPUT over the filesystem it was taken from all the same.
    pub allow_scrambled: bool,
}

pub fn to_raw(tool: &str, a: &RawArgs<'_>, sum: &mut Summary) -> anyhow::Result<u8> {
    let started = Instant::now();
    let name = a.input.display().to_string();
    let out_name = a.output.display().to_string();
    sum.add(|o| o.str("input", &name).str("output", &out_name));
    // A dry run's listing, and a stream image, go to stdout.
    sum.to_stderr(a.output == Path::new("-") || a.dry_run);
    if a.output == Path::new("-") && (a.dest_offset.is_some() || a.check) {
        return Ok(usage(
            tool,
            sum,
            "-O and -c need a seekable OUTPUT, not stdout",
        ));
    }
    // Held until the conversion is done: an in-place move of INPUT cannot start meanwhile.
    let _hold = crate::hold_source(a.input, "INPUT")?;
    let inp = input::open(a.input).map_err(|e| anyhow::Error::new(e).context(name.clone()))?;
    if a.qcow2_only && inp.kind() != Kind::Qcow2 {
        anyhow::bail!(
            "{name}: not a qcow2 image (it is a {}); e2i-to-raw converts it",
            inp.kind()
        );
    }
    sum.add(|o| o.str("input_kind", kind_name(inp.kind())));
    let in_files = input::chain_files(&inp);
    let state = crate::state_dir();
    let mut out = open_output(
        &Request {
            path: a.output,
            role: "OUTPUT",
            in_place: a.dest_offset.is_some() || a.check,
            dry_run: a.dry_run,
            exclusive: true,
            streams: true,
            hold: hold_for(a.dry_run),
            state_dir: state.as_deref(),
        },
        &[("INPUT", a.input)]
            .into_iter()
            .chain(in_files.reads())
            .collect::<Vec<_>>(),
    )?;
    let out_name = crate::opened_name(&out_name, &out);
    if out.kind() == OutKind::Stream && (a.dest_offset.is_some() || a.check) {
        anyhow::bail!(
            "{out_name}: -O and -c need a seekable OUTPUT; this one is a FIFO or character device (written front to back)"
        );
    }
    let dest_offset = a.dest_offset.unwrap_or(0);
    // A scrambled image is not written over the filesystem it came from (unless asked): an
    // existing file (replaced or updated in place) or a block device holding its UUID.
    let facts = input::facts(&inp);
    sum.add(|o| o.bool("input_scrambled", facts.is_scrambled()));
    if !out.kind().is_stream()
        && let Some(ev) =
            guard::refuse_scrambled(&facts, out.path(), dest_offset, a.allow_scrambled)
                .map_err(|e| anyhow::Error::new(e).context(name.clone()))?
        && !a.quiet
    {
        eprintln!(
            "{tool}: warning: {out_name}: writing a scrambled image ({ev}) over the filesystem it was taken from (--allow-scrambled)"
        );
    }
    let opts = ConvertOptions {
        all_data: a.all_data,
    };
    let mut reporter = Reporter::new(a.progress);
    reporter.set_dry_run(a.dry_run);
    if let Some((bs, _)) = to_raw::geometry(&inp) {
        reporter.set_block_size(bs);
    }
    let stdout = io::stdout();
    let mut list = stdout.lock();
    // Stdout redirected to a new file is written as a new file (unless --json hashes what
    // goes to stdout).
    let seek_stdout = if a.json || a.check || a.dest_offset.is_some() {
        None
    } else {
        out.seekable_stdout()
    };
    let mut stream = (!a.dry_run && out.kind().is_stream() && seek_stdout.is_none())
        .then(|| StreamOut::new(out.file(), a.json));
    let target = match (&mut stream, seek_stdout, out.kind(), out.file()) {
        _ if a.dry_run => RawTarget::DryRun {
            list: &mut list,
            target: out.file(),
            dest_offset,
            check: a.check,
            new_file: out.kind() == OutKind::New,
            room: out.device_size(),
        },
        (Some(s), ..) => RawTarget::Stream(s.writer()),
        (None, Some(file), ..) => RawTarget::NewFile { file, dest_offset },
        (None, None, OutKind::New, Some(file)) => RawTarget::NewFile { file, dest_offset },
        (None, None, _, Some(file)) => RawTarget::InPlace {
            file,
            dest_offset,
            check: a.check,
            room: out.device_size(),
        },
        (None, None, _, None) => anyhow::bail!("{out_name}: not opened"),
    };
    let report = to_raw::to_raw(inp, target, opts, &mut reporter)
        .map_err(|e| crate::attribute_written(e, &name, &out_name, &out, "OUTPUT"))?;
    let streamed = match stream {
        Some(s) => Some(s.finish().map_err(|e| attribute(e, &name, &out_name))?),
        None => None,
    };
    out.end_stdout()
        .map_err(|e| attribute(e, &name, &out_name))?;
    // A device's writes reach it (synced by commit) before we say they did.
    out.commit()
        .map_err(|e| crate::attribute_written(e, &name, &out_name, &out, "OUTPUT"))?;
    reporter.summary(report.block_size);
    let status = if report.problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_DAMAGED
    };
    let output_bytes = match &streamed {
        Some((_, n)) => *n,
        None if a.dry_run => 0,
        None => std::fs::metadata(out.path()).map_or(0, |m| m.len()),
    };
    sum.add(|o| {
        o.num("block_size", u64::from(report.block_size))
            .num("blocks_count", report.blocks_count)
            .num("blocks", report.copy.blocks)
            .num("identical_blocks", report.copy.identical_blocks)
            .num("bytes_written", report.copy.bytes_written)
            .num("output_bytes", output_bytes)
            .opt_str("sha256", streamed.as_ref().and_then(|(h, _)| h.as_deref()))
            .stream_digest(report.stream_digest)
            .float("elapsed_seconds", started.elapsed().as_secs_f64())
            .num("problems", report.problems.len() as u64)
            .bool("dry_run", a.dry_run)
    });
    if a.check && !a.quiet {
        // e2image's closing line of -c, on stdout as e2image prints it.
        let mut o = io::stdout().lock();
        writeln!(
            o,
            "{} blocks already contained the data to be copied",
            report.copy.identical_blocks
        )
        .and_then(|()| o.flush())
        .map_err(crate::listing_failed)?;
    }
    if a.quiet || report.problems.is_empty() {
        return Ok(status);
    }
    for p in &report.problems {
        eprintln!("{tool}: skipped: {name}: {p}");
    }
    Ok(EXIT_DAMAGED)
}

/// The `input_kind` of `--json`.
pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Stream => "stream",
        Kind::Normal => "normal",
        Kind::Qcow2 => "qcow2",
        Kind::Raw => "raw",
    }
}
