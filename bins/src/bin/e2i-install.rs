//! e2i-install: write a normal e2image image's metadata back onto a device (e2image -I),
//! refusing a mounted device or one that holds another filesystem.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use e2i::ops::install::{self, DeviceSuper, InstallOptions, WriteData};
use e2i_cli::{EXIT_OK, Reporter, run};

const TOOL: &str = "e2i-install";

/// Write the superblock, group descriptors, bitmaps and inode tables held in IMAGE (a normal
/// e2image image) back onto DEVICE (a block device or an image file).
#[derive(Parser, Debug)]
#[command(name = TOOL, version, after_help = "Exit status: 0 success, 1 failure (nothing written unless the failure came while writing), 2 usage error.")]
struct Args {
    /// Block device or image file to restore.
    device: PathBuf,
    /// Normal e2image image (as written by e2image or e2i-capture).
    image: PathBuf,
    /// Print what would be written; change nothing.
    #[arg(short = 'n', long = "dry-run")]
    dry_run: bool,
    /// First save every block that will be overwritten to FILE, for `e2undo FILE DEVICE`.
    #[arg(short = 'z', long = "undo", value_name = "FILE")]
    undo: Option<PathBuf>,
    /// Install even if DEVICE's filesystem UUID or geometry differs from the image's
    /// (never onto a mounted device).
    #[arg(short = 'f', long)]
    force: bool,
    /// Show progress on stderr.
    #[arg(short = 'p', long)]
    progress: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    run(TOOL, || body(args))
}

fn body(args: Args) -> anyhow::Result<u8> {
    let opts = InstallOptions {
        force: args.force,
        dry_run: args.dry_run,
        undo: args.undo.clone(),
    };
    let mut reporter = Reporter::new(args.progress);
    let report =
        install::install(&args.device, &args.image, &opts, &mut reporter).with_context(|| {
            format!(
                "installing {} onto {}",
                args.image.display(),
                args.device.display()
            )
        })?;
    let dev = args.device.display();
    for m in &report.mismatches {
        eprintln!("{TOOL}: warning: {dev}: {m} (installing anyway: --force)");
    }
    if let DeviceSuper::Backup { block, block_size } = report.device_super {
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
            let (first, last) = (w.offset / bs, (w.offset + w.len).div_ceil(bs) - 1);
            let blocks = if first == last {
                format!("block {first}")
            } else {
                format!("blocks {first}-{last}")
            };
            println!(
                "would write {}: {blocks} ({} bytes at byte {}, {src})",
                w.what, w.len, w.offset
            );
        }
        println!(
            "{} writes, {} bytes; nothing written (dry run)",
            report.writes.len(),
            report.bytes
        );
        return Ok(EXIT_OK);
    }
    if let (Some(u), Some(path)) = (report.undo, &args.undo) {
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
