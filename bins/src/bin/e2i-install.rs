//! e2i-install: write a normal e2image image's metadata back onto a device (e2image -I),
//! refusing a mounted device, one that holds another filesystem, and a scrambled image.

use anyhow::Context;
use e2i::ops::install::{DeviceSuper, Install, InstallOptions, InstallReport, WriteData};
use e2i::output::{Kind, Request};
use e2i::sparse::range_text;
use e2i_cli::cli::install::Args;
use e2i_cli::{EXIT_OK, Reporter, Summary, open_output, parse_args, run, utc};

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
    // Written by position, and named to e2undo later: `-` would be a file called `-`.
    if let Some(u) = &args.undo
        && let Some(code) = e2i_cli::refuse_dash(
            TOOL,
            "the undo file",
            u,
            "give a file name (./- for a file named -)",
        )
    {
        return Ok(code);
    }
    // DEVICE and the undo file go through the output layer's checks (resolved, not what
    // is read, writable); install then opens DEVICE itself, exclusively.
    let state = e2i_cli::state_dir();
    let dev_out = open_output(
        &Request {
            path: &args.device,
            role: "DEVICE",
            in_place: true,
            dry_run: true,
            exclusive: false,
            streams: false,
            // Held until install has written it (dev_out lives to the end of the run).
            hold: e2i_cli::hold_for(args.dry_run),
            state_dir: state.as_deref(),
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
        // The name must be new. The output layer checks a new name's folder, and says so
        // when an existing file or block device is DEVICE or IMAGE under another name;
        // anything else that exists (a FIFO, a character device, a folder) is refused
        // without being opened.
        let file_or_device = std::fs::metadata(u).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.is_file() || m.file_type().is_block_device()
        });
        if std::fs::symlink_metadata(u).is_ok() && !file_or_device {
            e2i::ops::install::refuse_existing_undo(u)?;
        }
        open_output(
            &Request {
                path: u,
                role: "the undo file",
                in_place: true,
                dry_run: true,
                exclusive: false,
                streams: false,
                hold: e2i::ops::hold::HoldFor::Reading,
                state_dir: state.as_deref(),
            },
            &[("DEVICE", &args.device), ("IMAGE", &args.image)],
        )?;
        e2i::ops::install::refuse_existing_undo(u)?;
    }
    let (offset, limit) = match args.partition {
        Some(n) => partition(&args, n)?,
        None => (0, None),
    };
    let opts = InstallOptions {
        force: args.force,
        dry_run: args.dry_run,
        undo: args.undo.clone(),
        offset,
        limit,
    };
    let context = || {
        format!(
            "installing {} onto {}",
            args.image.display(),
            args.device.display()
        )
    };
    let install = Install::prepare(&args.device, &args.image, &opts).with_context(context)?;
    if !args.quiet {
        // Said before anything is written, so that an interrupted or regretted run was
        // announced (and -n shows the same).
        warn_before_writing(&args.device.display().to_string(), install.report());
    }
    let mut reporter = Reporter::new(args.progress);
    reporter.set_dry_run(args.dry_run);
    let report = install.run(&mut reporter).map_err(|e| {
        let unfinished = matches!(e, e2i::Error::InstallUnfinished(_));
        let full = e.is_out_of_room();
        let e = anyhow::Error::new(e).context(context());
        if !unfinished {
            return e;
        }
        // DEVICE holds part of the image's metadata over its own: say how to get back.
        let dev = args.device.display();
        let then = if full {
            "once there is room (free space on the filesystem that is full)"
        } else {
            "once the cause is fixed"
        };
        match &args.undo {
            Some(u) => anyhow::anyhow!(
                "{e:#}; DEVICE {dev} is partly installed (part of the image's metadata over its own) and the undo file is complete: {then}, restore DEVICE with `e2undo {} {dev}`, or finish the install by running the same command again with another undo file",
                u.display()
            ),
            None => anyhow::anyhow!(
                "{e:#}; DEVICE {dev} is partly installed (part of the image's metadata over its own): {then}, run the same command again to finish the install"
            ),
        }
    })?;
    if !args.dry_run {
        e2i_cli::completed(format!(
            "the install is complete (DEVICE {} holds the image's metadata{})",
            args.device.display(),
            match &args.undo {
                Some(u) => format!(
                    "; undo with: e2undo {} {}",
                    u.display(),
                    args.device.display()
                ),
                None => String::new(),
            }
        ));
    }
    reporter.summary(report.block_size.get());
    if args.dry_run {
        let bs = report.block_size;
        for w in &report.writes {
            let src = match &w.data {
                WriteData::Image(off) => format!("from image byte {off}"),
                WriteData::Bytes(_) => "computed".to_string(),
            };
            let first = bs.block_of(w.offset);
            let end = bs.blocks_covering(w.offset.saturating_add(w.len));
            e2i_cli::say(format_args!(
                "Writing {}: {} ({} bytes at byte {}, {src})",
                range_text(first, end.saturating_sub(first.get())),
                w.what,
                w.len,
                // A byte of DEVICE (the partition's start further with -P).
                w.offset.saturating_add(offset)
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
        let dev = args.device.display();
        eprintln!(
            "{TOOL}: saved {} blocks ({} keys) to {}; undo with: e2undo {} {}",
            u.blocks,
            u.keys,
            path.display(),
            path.display(),
            dev
        );
        // An undo file is for later, after a reboot as often as not.
        if let Some(fstype) = memory_fs(path) {
            eprintln!(
                "{TOOL}: warning: the undo file {} is on {fstype}, in memory: a reboot loses it; copy it to a disk",
                path.display()
            );
        }
    }
    Ok(EXIT_OK)
}

/// The memory filesystem (tmpfs, ramfs, devtmpfs) `path` lives on, if it does.
fn memory_fs(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let m = e2i::mount::mounted_by_dev(dev)?;
    matches!(m.fstype.as_str(), "tmpfs" | "ramfs" | "devtmpfs").then_some(m.fstype)
}

/// `-P N`: partition N of DEVICE's own table (DEVICE is written as it is, so a qcow2 file is
/// not looked into): its start, and its size, past which nothing is written.
fn partition(args: &Args, n: u32) -> anyhow::Result<(u64, Option<u64>)> {
    let dev = args.device.display().to_string();
    let disk = e2i::io::FileSource::open(&args.device, 0)
        .map_err(|e| anyhow::Error::new(e).context(dev.clone()))?;
    let located =
        e2i::partition::locate(&disk, n).map_err(|e| anyhow::Error::new(e).context(dev.clone()))?;
    if !args.quiet {
        for note in &located.table.notes {
            eprintln!("{TOOL}: warning: {dev}: {note}");
        }
    }
    e2i_cli::partition::refuse_mounted(
        &args.device,
        n,
        true,
        "refusing to write to a mounted filesystem",
    )?;
    let p = located.partition;
    // What can be written: the partition, as far as DEVICE holds it.
    let room = p.size.min(located.table.disk_bytes.saturating_sub(p.start));
    Ok((p.start, Some(room)))
}

/// The warnings and the one-line overview of what the install replaces, on stderr.
fn warn_before_writing(dev: &str, report: &InstallReport) {
    for m in &report.mismatches {
        eprintln!("{TOOL}: warning: {dev}: {m} (installing anyway: --force)");
    }
    if let DeviceSuper::Backup { block, block_size } = report.device_super {
        eprintln!(
            "{TOOL}: {dev}: primary superblock invalid; identified the filesystem by the backup at block {block} ({block_size}-byte blocks)"
        );
    }
    if report.overview.journal_dropped {
        eprintln!(
            "{TOOL}: warning: {dev}: its journal needs recovery, and the image's superblock replaces the one that says so: the journal will not be replayed (run e2fsck on {dev} first to keep its transactions)"
        );
    }
    if !report.newer.is_empty() {
        eprintln!(
            "{TOOL}: warning: {dev}: holds a newer state of the filesystem than the image: {} (installing anyway: --force)",
            report.newer.join(", ")
        );
    }
    eprintln!("{TOOL}: {dev}: {}", overview_line(report));
}

/// "replacing the inode tables and bitmaps of N groups with the image's from T; ...".
fn overview_line(report: &InstallReport) -> String {
    let o = &report.overview;
    let groups = if o.groups == 1 {
        "1 group".to_string()
    } else {
        format!("{} groups", o.groups)
    };
    let when = if o.image_time == 0 {
        "of an unknown time".to_string()
    } else {
        format!("from {}", utc(o.image_time))
    };
    let mut line = format!(
        "replacing the inode tables and bitmaps of {groups}, the group descriptors and the superblock with the image's {when}"
    );
    match o.device_write_time {
        Some(t) if o.device_is_newer() => line.push_str(&format!(
            "; the filesystem was written after that ({}): files created or changed since become unreachable, and blocks allocated since are marked free",
            utc(t)
        )),
        // Times are whole seconds: a write in the second of the capture may have come
        // before it or after it.
        Some(t) if t == o.image_time && t != 0 => line.push_str(
            "; the filesystem was last written in that same second, before or after the capture (times are whole seconds): what was written after it in that second becomes unreachable",
        ),
        Some(_) if o.image_time != 0 => {
            line.push_str("; the filesystem has not been written since")
        }
        _ => {}
    }
    if let Some(d) = o.device_inodes_used
        && d != o.image_inodes_used
    {
        line.push_str(&format!(
            "; inodes in use: {d} now, {} in the image",
            o.image_inodes_used
        ));
    }
    if let Some((d, i)) = &o.label_change {
        line.push_str(&format!("; the label {d:?} becomes {i:?}"));
    }
    line
}
