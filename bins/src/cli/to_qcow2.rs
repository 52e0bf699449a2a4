//! `e2i-to-qcow2` command line.

use std::path::PathBuf;

use clap::Parser;

const LONG_ABOUT: &str = "\
Convert INPUT to a clean qcow2 image (version 2, cluster size = block size; past qemu's \
limits for that, 8 TiB with 4 KiB blocks, the smallest larger cluster size that qemu opens) \
that qemu-img and stock e2image read; with --backing, an overlay (version 3) on a previous image that \
stores only what changed, and with --compress=zstd, version 3 with zstd clusters (qemu-img \
reads both; stock e2image reads neither). INPUT may be a raw filesystem image (captured as `e2i-capture -Q` \
would, `-a` for file data too), a qcow2 image (converted as it is, whatever its disk holds), a \
normal e2image image, or an e2i stream \
(from a pipe: `-`); gzip, bzip2, xz and zstd wrapping is detected. OUTPUT is a new file, a \
block device, a FIFO or character device, or `-` (written front to back).

e2image equivalent: `e2i-to-qcow2 fs.raw fs.qcow2` is `e2image -Q fs.raw fs.qcow2`; \
`-a` is `e2image -a`, `-p` is `e2image -p`. Writing qcow2 to a pipe and reading a stream \
have no e2image equivalent.";

const AFTER_LONG_HELP: &str = concat!(
    "\
Examples:
  e2i-to-qcow2 fs.raw fs.qcow2               raw filesystem image to qcow2
  e2i-capture /dev/sdb1 - | e2i-to-qcow2 - sdb1.qcow2
                                             capture through a pipe
  e2i-to-qcow2 --compress fs.raw fs.qcow2    deflate-compressed clusters
  e2i-to-qcow2 --compress=zstd fs.raw fs.qcow2
                                             zstd-compressed clusters (qcow2 v3)
  ssh host e2i-capture /dev/sdb1 - | e2i-to-qcow2 --backing mon.qcow2 - tue.qcow2
                                             overlay on Monday's image: only changes
  e2i-to-qcow2 -n fs.raw fs.qcow2            print the layout; write nothing

Exit status:
  0  success
  1  failure (one line on stderr: `e2i-to-qcow2: FILE: what`)
  2  usage error
  3  a raw filesystem INPUT: damaged metadata was skipped (the image holds the rest): one
",
    exit_skipped_lines!(),
    exit_signals!(),
    "\n\n",
    diag_errors!("e2i-to-qcow2"),
    diag_stdout!(),
    diag_partly!("A block device OUTPUT (written in place)"),
    diag_chain!(),
    "\
\nNotes:
With --json, a one-line JSON summary goes to stdout, or to stderr when OUTPUT is `-`. Its \
sha256 is the SHA-256 of the bytes written to stdout (null for files and devices); \
stream_blake3 (version 2) or stream_sha256 (version 1) is the checksum recorded in (and \
verified against) an e2i stream INPUT."
);

/// Convert INPUT (a raw filesystem image, qcow2, normal e2image image or e2i stream; gzip,
/// bzip2, xz or zstd wrapping detected) to a clean qcow2 image that qemu-img and stock
/// e2image read.
#[derive(Parser, Debug)]
#[command(
    name = "e2i-to-qcow2",
    version,
    long_about = LONG_ABOUT,
    after_help = "Exit status: 0 success, 1 failure, 2 usage error, 3 finished but damaged metadata was skipped, 141 reader of stdout gone, 128+N ended by signal N.",
    after_long_help = AFTER_LONG_HELP
)]
pub struct Args {
    /// Input image (a raw filesystem image, qcow2, normal image or stream); `-` for stdin.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub input: PathBuf,
    /// qcow2 to write; `-` for stdout (written front to back).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub output: PathBuf,
    /// Raw input: include regular-file data too.
    #[arg(short = 'a', long = "all-data")]
    pub all_data: bool,
    /// Compressed clusters, deflate (the default) or zstd (qcow2 v3); needs a seekable
    /// new OUTPUT file.
    #[arg(long, value_name = "ALGO", num_args = 0..=1, require_equals = true, default_missing_value = "deflate", value_enum)]
    pub compress: Option<super::CompressArg>,
    /// Write an overlay (qcow2 v3) on FILE, a previous image (qcow2 or raw): only clusters
    /// that differ from FILE's backing chain are stored. FILE is recorded as given (a
    /// relative name is found from OUTPUT's folder, as qemu-img finds it), with the digest
    /// of its chain's disk: e2i readers refuse a chain changed since.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub backing: Option<PathBuf>,
    /// Print the image layout that would be written; create nothing.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// Show progress on stderr (a bar on a terminal, a line every few seconds otherwise).
    #[arg(short = 'p', long)]
    pub progress: bool,
    /// Stop at the first damaged structure (exit 1) instead of skipping it (exit 3).
    #[arg(long)]
    pub strict: bool,
    /// No warnings or summaries on stderr (errors are still reported).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print a one-line JSON summary (stdout, or stderr when OUTPUT is `-`).
    #[arg(long)]
    pub json: bool,
}
