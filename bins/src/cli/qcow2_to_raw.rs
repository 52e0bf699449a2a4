//! `qcow2-to-raw` command line.

use std::path::PathBuf;

use clap::Parser;

use crate::number;

const LONG_ABOUT: &str = "\
Write the virtual disk of the qcow2 image INPUT (version 2 or 3, of any origin: compressed \
clusters, zero clusters, extended L2 entries (subclusters), snapshots; backing chains are \
followed as qemu follows them; external data files are read, a relative name found from \
the image's folder) as a raw image to OUTPUT (a file, a block device, a FIFO or character device, or `-`). INPUT may be a FIFO or `-` (stdin), \
also gzip-, bzip2-, xz- or zstd-compressed; it is then spooled to a temporary file as far as it is read (no further than the image's last cluster). A \
scrambled INPUT (e2i-capture -s, as bug reports are) is not written over the filesystem it \
was taken from (an existing OUTPUT or block device holding its UUID) unless \
--allow-scrambled; a new file, stdout, or a device holding something else is always fine.

e2image equivalent: `qcow2-to-raw x.qcow2 x.raw` is `e2image -r x.qcow2 x.raw`; `-O` is \
`e2image -O`, `-c` is `e2image -c`, `-n` is `e2image -n`, `-p` is `e2image -p`.";

const AFTER_LONG_HELP: &str = concat!(
    "\
Examples:
  qcow2-to-raw sdb1.qcow2 sdb1.raw           expand to a sparse raw image
  qcow2-to-raw - sdb1.raw < sdb1.qcow2.gz    from a compressed pipe
  qcow2-to-raw -O 1M sdb1.qcow2 disk.img     into an existing image at byte 1 MiB
  qcow2-to-raw -c sdb1.qcow2 /dev/sdc1       write only what differs

Exit status:
  0  success
  1  failure or refusal, also with -n (one line on stderr: `qcow2-to-raw: FILE: what`)
  2  usage error
",
    exit_signals!(),
    "\n\n",
    diag_errors!("qcow2-to-raw"),
    diag_stdout!(),
    diag_offset!("OUTPUT"),
    diag_partly!("An OUTPUT updated in place (a block device, an existing file with -O or -c)"),
    diag_chain!(),
    "\
\nNotes:
With --json, a one-line JSON summary goes to stdout, or to stderr when OUTPUT is `-`. Its \
sha256 is the SHA-256 of the bytes written to stdout (null for files and devices)."
);

/// Write the virtual disk of the qcow2 image INPUT (v2 or v3; also compressed, or from a
/// pipe) as a raw image to OUTPUT (a file, a block device, a FIFO, or `-`).
#[derive(Parser, Debug)]
#[command(
    name = "qcow2-to-raw",
    version,
    long_about = LONG_ABOUT,
    after_help = "INPUT may be `-` (stdin; also gzip-, bzip2-, xz- or zstd-compressed), spooled to a temporary file as far as it is read.\nExit status: 0 success, 1 failure, 2 usage error, 141 reader of stdout gone, 128+N ended by signal N.",
    after_long_help = AFTER_LONG_HELP
)]
pub struct Args {
    /// qcow2 image; `-` for stdin.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub input: PathBuf,
    /// Raw image to write: a file, a block device, or `-` for stdout.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub output: PathBuf,
    /// Write at byte N of an existing OUTPUT, updating it in place.
    #[arg(short = 'O', long = "dest-offset", value_name = "N", value_parser = number)]
    pub dest_offset: Option<u64>,
    /// Compare before writing; write only what differs (updates OUTPUT in place).
    #[arg(short = 'c', long)]
    pub check: bool,
    /// Print the byte ranges that would be written; create and change nothing.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// Show progress on stderr (a bar on a terminal, a line every few seconds otherwise).
    #[arg(short = 'p', long)]
    pub progress: bool,
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
