//! e2i-to-qcow2: convert an image to a clean qcow2 (version 2, cluster = block size).
//! INPUT is an e2i stream (written to OUTPUT front to back, so OUTPUT may be a pipe), a
//! normal e2image image, or a raw or qcow2 filesystem image captured as `e2i-capture -Q`
//! would (`-a` for all data).

use std::path::Path;
use std::time::Instant;

use e2i::ops::capture::CaptureOptions;
use e2i::ops::input::{self, Kind};
use e2i::ops::to_qcow2::to_qcow2;
use e2i::output::{Kind as OutKind, Request};
use e2i::qcow2::writer::Qcow2Target;
use e2i_cli::cli::to_qcow2::Args;
use e2i_cli::convert::kind_name;
use e2i_cli::{
    EXIT_DAMAGED, EXIT_OK, Reporter, StreamOut, Summary, attribute, open_output, parse_args, run,
    usage,
};

const TOOL: &str = "e2i-to-qcow2";

fn main() -> std::process::ExitCode {
    let args: Args = parse_args(TOOL);
    run(TOOL, Summary::new(args.json, TOOL), |sum| {
        convert(&args, sum)
    })
}

fn convert(args: &Args, sum: &mut Summary) -> anyhow::Result<u8> {
    let started = Instant::now();
    let src = args.input.display().to_string();
    let out_name = args.output.display().to_string();
    let to_stdout = args.output == Path::new("-");
    sum.add(|o| o.str("input", &src).str("output", &out_name));
    sum.to_stderr(to_stdout || args.dry_run);
    if args.compress.is_some() && to_stdout {
        return Ok(usage(
            TOOL,
            sum,
            "--compress needs a seekable OUTPUT file, not stdout",
        ));
    }
    // The base is opened first: OUTPUT must not be any file of its chain.
    let base = match &args.backing {
        Some(b) => Some(std::rc::Rc::new(
            e2i_cli::open_base(b, &args.output)
                .map_err(|e| anyhow::Error::new(e).context(format!("--backing {}", b.display())))?,
        )),
        None => None,
    };
    if let (Some(b), Some(name)) = (&base, &args.backing) {
        e2i_cli::refuse_base_is_input(b, &args.input)
            .map_err(|e| anyhow::Error::new(e).context(format!("--backing {}", name.display())))?;
    }
    let chain = base.as_ref().map(|b| b.files()).unwrap_or_default();
    let opts = CaptureOptions {
        all_data: args.all_data,
        strict: args.strict,
        compress: args.compress.map(|c| c.cluster_compression()),
        backing: base.clone(),
        ..CaptureOptions::default()
    };
    let mut reporter = Reporter::new(args.progress);
    reporter.set_dry_run(args.dry_run);
    // Held until the conversion is done: an in-place move of INPUT cannot start meanwhile.
    let _hold = e2i_cli::hold_source(&args.input, "INPUT")?;
    let inp = input::open(&args.input).map_err(|e| anyhow::Error::new(e).context(src.clone()))?;
    sum.add(|o| o.str("input_kind", kind_name(inp.kind())));
    let backing_name = args.backing.as_ref().map(|b| b.display().to_string());
    sum.add(|o| o.opt_str("backing", backing_name.as_deref()));
    // The qcow2 of a scrambled image is marked as scrambled too (see e2i::mark).
    let scrambled = input::facts(&inp).is_scrambled();
    sum.add(|o| o.bool("input_scrambled", scrambled));
    if args.all_data && inp.kind() == Kind::Stream && !args.quiet {
        eprintln!(
            "{TOOL}: note: -a has no effect on a stream input (the capture chose its blocks)"
        );
    }
    let in_files = input::chain_files(&inp);
    let mut out = open_output(
        &Request {
            path: &args.output,
            role: "OUTPUT",
            in_place: false,
            dry_run: args.dry_run,
            exclusive: true,
            // A compressed qcow2 needs a new regular file: a FIFO is refused unopened.
            streams: args.compress.is_none(),
            hold: e2i_cli::hold_for(args.dry_run),
            state_dir: e2i_cli::state_dir().as_deref(),
        },
        &[("INPUT", args.input.as_path())]
            .into_iter()
            .chain(chain.iter().map(|p| ("the backing file", p.as_path())))
            .chain(in_files.reads())
            .collect::<Vec<_>>(),
    )?;
    let out_name = e2i_cli::opened_name(&out_name, &out);
    if args.compress.is_some() && out.kind() != OutKind::New {
        anyhow::bail!(
            "{out_name}: --compress needs a seekable new file; a compressed qcow2 cannot be written front to back to a pipe, character device or block device"
        );
    }
    if args.dry_run {
        let (l, bs) = e2i::ops::to_qcow2::plan(inp, &opts, &mut reporter)
            .map_err(|e| attribute(e, &src, &out_name))?;
        // The same limit as the real run: the image must fit a device.
        out.check_room(l.file_size())
            .map_err(|e| attribute(e, &src, &out_name))?;
        let overlay = match &base {
            Some(b) => format!(
                ", an overlay on {} ({}) with {} clusters flagged zero",
                b.name().display(),
                b.format(),
                l.zero_clusters()
            ),
            None => String::new(),
        };
        e2i_cli::say(format_args!(
            "would write {out_name}: qcow2 v{}, virtual size {}, cluster size {}, {} data clusters after {} bytes of metadata, {} bytes{}{overlay}",
            l.version(),
            l.virtual_size(),
            l.cluster_size(),
            l.data_clusters(),
            l.data_offset(),
            l.file_size(),
            if args.compress.is_some() {
                " before compression"
            } else {
                ""
            }
        ))?;
        sum.add(|o| {
            o.num("block_size", bs.bytes())
                .num("cluster_size", l.cluster_size())
                .num("output_bytes", l.file_size())
                .bool("dry_run", true)
        });
        return Ok(EXIT_OK);
    }
    // Stdout redirected to a new file is written as a new file (unless --json hashes what
    // goes to stdout).
    let seek_stdout = if args.json {
        None
    } else {
        out.seekable_stdout()
    };
    let mut stream = (out.kind().is_stream() && seek_stdout.is_none())
        .then(|| StreamOut::new(out.file(), args.json));
    let target = match (&mut stream, out.kind(), seek_stdout.or(out.file())) {
        (Some(s), ..) => Qcow2Target::Sequential(s.writer()),
        (None, OutKind::BlockDevice, Some(file)) => Qcow2Target::Device(file),
        (None, _, Some(file)) => Qcow2Target::File {
            file,
            compress: opts.compress,
        },
        (None, _, None) => anyhow::bail!("{out_name}: not opened"),
    };
    let report = to_qcow2(inp, target, &opts, &mut reporter)
        .map_err(|e| e2i_cli::attribute_written(e, &src, &out_name, &out, "OUTPUT"))?;
    let streamed = match stream {
        Some(s) => Some(s.finish().map_err(|e| attribute(e, &src, &out_name))?),
        None => None,
    };
    out.end_stdout()
        .map_err(|e| attribute(e, &src, &out_name))?;
    out.commit()
        .map_err(|e| e2i_cli::attribute_written(e, &src, &out_name, &out, "OUTPUT"))?;
    reporter.summary(report.block_size);
    let output_bytes = match &streamed {
        Some((_, n)) => *n,
        None => std::fs::metadata(out.path()).map_or(0, |m| m.len()),
    };
    sum.add(|o| {
        o.num("block_size", u64::from(report.block_size))
            .num("blocks_count", report.blocks_count)
            .num("blocks", report.blocks)
            .num("output_bytes", output_bytes)
            .opt_str("sha256", streamed.as_ref().and_then(|(h, _)| h.as_deref()))
            .stream_digest(report.stream_digest)
            .float("elapsed_seconds", started.elapsed().as_secs_f64())
            .num("problems", report.problems.len() as u64)
    });
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
