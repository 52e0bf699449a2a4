//! `e2i-to-raw` command line.

use std::path::PathBuf;

use clap::Parser;

use crate::number;

const LONG_ABOUT: &str = "\
Convert INPUT (an e2i stream, a qcow2 image, a normal e2image image or a raw filesystem \
image; gzip, bzip2, xz or zstd wrapping is detected; a file, a FIFO or `-` for stdin) to a \
raw image at OUTPUT (a file, a block device, a FIFO or character device, or `-`). A new \
OUTPUT file is sparse and appears under its name only when complete; a block device gets \
exactly the bytes `e2image -r` writes to one (whole inode tables, zero blocks written). \
OUTPUT may not be INPUT under any name (a link, a loop device backed by it). A scrambled \
INPUT (e2i-capture -s; marked in every format) is not written over the filesystem it was \
taken from (an existing OUTPUT or block device holding its UUID) unless --allow-scrambled; \
a new file, stdout, or a device holding something else is always fine.

e2image equivalents: `e2i-to-raw x.qcow2 x.raw` is `e2image -r x.qcow2 x.raw`; `-O` is \
`e2image -O`, `-c` is `e2image -c`, `-n` is `e2image -n`, `-p` is `e2image -p`, `-a` is \
`e2image -a`. Streams, normal images and compressed inputs have no e2image equivalent.";

const AFTER_LONG_HELP: &str = concat!(
    "\
Examples:
  e2i-to-raw sdb1.qcow2 sdb1.raw             qcow2 to sparse raw
  e2i-capture /dev/sdb1 - | e2i-to-raw - sdb1.raw
                                             from a stream on stdin
  e2i-to-raw -O 1M sdb1.qcow2 disk.img       into an existing image at byte 1 MiB
  e2i-to-raw -c sdb1.raw /dev/sdc1           write only the blocks that differ
  e2i-to-raw -n sdb1.qcow2 /dev/sdc1         list what would be written
  e2i-to-raw -c -n sdb1.raw /dev/sdc1        verify: list only the blocks that differ

Exit status:
  0  success
  1  failure or refusal, also with -n (one line on stderr: `e2i-to-raw: FILE: what`)
  2  usage error
  3  a raw filesystem INPUT: damaged metadata was skipped (the image holds everything else): one
",
    exit_skipped_lines!(),
    exit_signals!(),
    "\n\n",
    diag_errors!("e2i-to-raw"),
    diag_stdout!(),
    diag_offset!("OUTPUT"),
    diag_partly!("An OUTPUT updated in place (a block device, an existing file with -O or -c)"),
    diag_chain!(),
    "\
\nNotes:
With --json, a one-line JSON summary goes to stdout, or to stderr when OUTPUT is `-`. Its \
sha256 is the SHA-256 of the bytes written to stdout (null for files and devices); \
stream_blake3 (version 2) or stream_sha256 (version 1) is the checksum recorded in (and \
verified against) an e2i stream INPUT."
);

/// Convert INPUT (e2i stream, qcow2, normal e2image image or raw filesystem image; gzip,
/// bzip2, xz or zstd wrapping detected) to a raw image at OUTPUT (a file, a block device, a
/// FIFO, or `-`).
#[derive(Parser, Debug)]
#[command(
    name = "e2i-to-raw",
    version,
    long_about = LONG_ABOUT,
    after_help = "Exit status: 0 success, 1 failure, 2 usage error, 3 damaged metadata skipped (raw input), 141 reader of stdout gone, 128+N ended by signal N.",
    after_long_help = AFTER_LONG_HELP
)]
pub struct Args {
    /// Input file, or `-` for stdin.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub input: PathBuf,
    /// Output file, block device, or `-` for stdout.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub output: PathBuf,
    /// Write the image at this byte offset of OUTPUT, updating it in place.
    #[arg(short = 'O', long = "dest-offset", value_name = "N", value_parser = number)]
    pub dest_offset: Option<u64>,
    /// Compare before writing; skip blocks OUTPUT already holds.
    #[arg(short = 'c', long = "check")]
    pub check: bool,
    /// Print the blocks that would be written; create and change nothing.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// Show progress on stderr (a bar on a terminal, a line every few seconds otherwise).
    #[arg(short = 'p', long)]
    pub progress: bool,
    /// Raw filesystem input: include regular-file data.
    #[arg(short = 'a', long = "all-data")]
    pub all_data: bool,
    /// No warnings or summaries on stderr (errors are still reported).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print a one-line JSON summary (stdout, or stderr when OUTPUT is `-`).
    #[arg(long)]
    pub json: bool,
    /// Write a scrambled INPUT (e2i-capture -s) even over the filesystem it was taken from
    /// (an existing OUTPUT or block device with its UUID), whose names, symlink targets,
    /// inline data, xattrs, journal and label then become the scrambled ones.
    #[arg(long = "allow-scrambled")]
    pub allow_scrambled: bool,
}
