//! e2i-install: write a normal e2image image's metadata back onto a device (e2image -I),
//! refusing a mounted device or one that holds another filesystem.

use anyhow::Context;
use e2i::ops::install::{self, DeviceSuper, InstallOptions, WriteData};
use e2i::output::{Kind, Request};
use e2i::sparse::range_text;
use e2i_cli::cli::install::Args;
use e2i_cli::{EXIT_OK, Reporter, Summary, open_output, parse_args, run};

const TOOL: &str = "e2i-install";

fn main() -> std::process::ExitCode {
    let args: Args = parse_args(TOOL);
    run(TOOL, Summary::new(false, TOOL), |_| body(args))
}

fn body(args: Args) -> anyhow::Result<u8> {
    for (what, path) in [("DEVICE", &args.device), ("IMAGE", &args.image)] {
        if let Some(code) = e2i_cli::refuse_dash(TOOL, what, path, "give a file or device") {
            return Ok(code);
        }
    }
    // DEVICE and the undo file go through the output layer's checks (resolved, not what
    // is read, writable); install then opens DEVICE itself, exclusively.
    let dev_out = open_output(
        &Request {
            path: &args.device,
            role: "DEVICE",
            in_place: true,
            dry_run: true,
            exclusive: false,
            streams: false,
        },
        &[("IMAGE", &args.image)],
    )?;
    if !matches!(dev_out.kind(), Kind::BlockDevice | Kind::Existing) {
        anyhow::bail!(
            "{}: DEVICE must be a block device or an existing image file",
            args.device.display()
        );
    }
    if let Some(u) = &args.undo {
        open_output(
            &Request {
                path: u,
                role: "the undo file",
                in_place: true,
                dry_run: true,
                exclusive: false,
                streams: false,
            },
            &[("DEVICE", &args.device), ("IMAGE", &args.image)],
        )?;
    }
    let opts = InstallOptions {
        force: args.force,
        dry_run: args.dry_run,
        undo: args.undo.clone(),
    };
    let mut reporter = Reporter::new(args.progress);
    reporter.set_dry_run(args.dry_run);
    let report =
        install::install(&args.device, &args.image, &opts, &mut reporter).with_context(|| {
            format!(
                "installing {} onto {}",
                args.image.display(),
                args.device.display()
            )
        })?;
    reporter.summary(report.block_size);
    let dev = args.device.display();
    for m in report.mismatches.iter().filter(|_| !args.quiet) {
        eprintln!("{TOOL}: warning: {dev}: {m} (installing anyway: --force)");
    }
    if let DeviceSuper::Backup { block, block_size } = report.device_super
        && !args.quiet
    {
        eprintln!(
            "{TOOL}: {dev}: primary superblock invalid; identified the filesystem by the backup at block {block} ({block_size}-byte blocks)"
        );
    }
    if args.dry_run {
        let bs = u64::from(report.block_size);
        for w in &report.writes {
            let src = match &w.data {
                WriteData::Image(off) => format!("from image byte {off}"),
                WriteData::Bytes(_) => "computed".to_string(),
            };
            let (first, end) = (w.offset / bs, (w.offset + w.len).div_ceil(bs));
            e2i_cli::say(format_args!(
                "Writing {}: {} ({} bytes at byte {}, {src})",
                range_text(first, end - first),
                w.what,
                w.len,
                w.offset
            ))?;
        }
        e2i_cli::say(format_args!(
            "{} writes, {} bytes; nothing written (dry run)",
            report.writes.len(),
            report.bytes
        ))?;
        return Ok(EXIT_OK);
    }
    if let (Some(u), Some(path), false) = (report.undo, &args.undo, args.quiet) {
        eprintln!(
            "{TOOL}: saved {} blocks ({} keys) to {}; undo with: e2undo {} {}",
            u.blocks,
            u.keys,
            path.display(),
            path.display(),
            dev
        );
    }
    Ok(EXIT_OK)
}
