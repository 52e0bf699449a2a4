//! `e2i-capture` command line.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::number;

/// Image formats of `--format`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Normal,
    Raw,
    Qcow2,
    Stream,
}

const LONG_ABOUT: &str = "\
Read the ext2/3/4 filesystem in SOURCE (a block device, a raw image or a qcow2 image, \
detected by content) and write an image of its metadata to OUTPUT.

e2image equivalents: `e2i-capture SRC OUT` is `e2image SRC OUT` (normal format), \
`-r` is `e2image -r`, `-Q` is `e2image -Q`, `-a` is `e2image -a`, `-s` is `e2image -s`, \
`-b`/`-B` are `e2image -b`/`-B`, `-o` is `e2image -o`, `-p` is `e2image -p`. \
`-P N` is `e2image -o` with partition N's start byte (which e2image leaves to the user). \
The stream format (the default when OUTPUT is `-`) is e2i's own: a checksummed, \
front-to-back format that the converters read from a pipe.

Every image made with -s says so: the stream's header flag, a mark in the normal image's \
header and in a qcow2 header extension, and in every format the superblock's last-mounted \
path, which reads `<scrambled by e2i-capture -s>`. A capture of a scrambled SOURCE (a raw \
image made from one) keeps the mark. e2i-install and the converters refuse to write a \
scrambled image over the filesystem it was taken from; so does e2i-capture itself (with -s, \
or of a scrambled SOURCE) when OUTPUT is an existing file or block device holding SOURCE's \
filesystem (a clone), unless --allow-scrambled.";

const AFTER_LONG_HELP: &str = concat!(
    "\
Examples:
  e2i-capture -r /dev/sdb1 sdb1.raw          sparse raw image (e2image -r)
  e2i-capture -Q /dev/sdb1 sdb1.qcow2        qcow2 image (e2image -Q)
  e2i-capture /dev/sdb1 sdb1.e2i             normal e2image image (e2image)
  e2i-capture -p /dev/sdb1 - | e2i-to-qcow2 - sdb1.qcow2
                                             stream through a pipe, progress on stderr
  e2i-capture -ra -o 1M disk.img fs.raw      with file data, filesystem at byte 1 MiB
  e2i-capture -Q --backing mon.qcow2 /dev/sdb1 tue.qcow2
                                             overlay on Monday's capture: only changes
  e2i-capture -Q --compress=zstd /dev/sdb1 sdb1.qcow2
                                             zstd-compressed clusters (qcow2 v3)
  e2i-capture --list disk.img                the partitions of a disk and what they hold
  e2i-capture -r -P 2 disk.qcow2 p2.raw      the filesystem in partition 2 of a VM disk

Exit status:
  0  success
  1  failure (one line on stderr: `e2i-capture: FILE: what`)
  2  usage error
  3  finished, but damaged metadata was skipped (the image holds everything else): one
",
    exit_skipped_lines!(),
    exit_signals!(),
    "\n\n",
    diag_errors!("e2i-capture"),
    diag_stdout!(),
    diag_partly!("A block device OUTPUT (written in place)"),
    diag_chain!(),
    "\
\nNotes:
With --json, a one-line JSON summary goes to stdout, or to stderr when OUTPUT is `-` \
(stdout then carries the image). Its sha256 is the SHA-256 of the bytes written to stdout; \
it is null for file and device outputs (hashing a large sparse file would cost more than \
the capture)."
);

/// Read the ext2/3/4 filesystem in SOURCE (block device, raw image or qcow2 image) and
/// write an image of its metadata to OUTPUT.
#[derive(Parser, Debug)]
#[command(
    name = "e2i-capture",
    version,
    long_about = LONG_ABOUT,
    after_help = "Exit status: 0 success, 1 failure, 2 usage error, 3 finished but damaged metadata was skipped, 141 reader of stdout gone, 128+N ended by signal N.",
    after_long_help = AFTER_LONG_HELP
)]
pub struct Args {
    /// Block device or image file holding the filesystem.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub source: PathBuf,
    /// Image to write: a file, a block device, a FIFO or character device, or `-` for stdout
    /// [default: stdout, unless it is a terminal].
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub output: Option<PathBuf>,
    /// Image format [default: normal for a file, stream for stdout].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Raw image (same as --format raw; e2image -r).
    #[arg(short = 'r', conflicts_with_all = ["qcow2", "format"])]
    pub raw: bool,
    /// qcow2 image (same as --format qcow2; e2image -Q).
    #[arg(short = 'Q', conflicts_with = "format")]
    pub qcow2: bool,
    /// Include regular-file data (raw, qcow2, stream).
    #[arg(short = 'a', long = "all-data")]
    pub all_data: bool,
    /// Scramble names and other private strings.
    #[arg(short = 's', long)]
    pub scramble: bool,
    /// Seed for --scramble.
    #[arg(long, value_parser = number, requires = "scramble")]
    pub seed: Option<u64>,
    /// Write a scrambled image (-s, or a SOURCE that is itself scrambled) even over the
    /// filesystem it is taken from (an existing OUTPUT file or block device holding its
    /// UUID, such as a clone).
    #[arg(long = "allow-scrambled")]
    pub allow_scrambled: bool,
    /// Allow a source mounted read-write.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// With -P: when the filesystem runs past the end of its partition (a partition shrunk
    /// under it), read on past that end, into what follows on SOURCE, as e2image -o would
    /// (by default nothing past it is read: zeros stand for it).
    #[arg(long = "past-partition-end", requires = "partition")]
    pub past_partition_end: bool,
    /// Read the filesystem through the backup superblock at block N (needs -B).
    #[arg(short = 'b', long = "superblock", value_name = "N", value_parser = number, requires = "blocksize")]
    pub superblock: Option<u64>,
    /// Block size to use with -b.
    #[arg(short = 'B', long = "blocksize", value_name = "N", value_parser = crate::block_size)]
    pub blocksize: Option<e2i::units::BlockSize>,
    /// Byte offset of the filesystem inside SOURCE (suffixes K, M, G, ...: powers of 1024).
    #[arg(short = 'o', long = "offset", value_name = "N", value_parser = number, default_value = "0")]
    pub offset: u64,
    /// The filesystem in partition N of a GPT or MBR partition table on SOURCE (1-based;
    /// MBR logical partitions from 5, as Linux numbers them; 0: a disk without a table).
    /// Nothing past the partition's end is read unless --past-partition-end. Not with -o.
    #[arg(
        short = 'P',
        long = "partition",
        value_name = "N",
        conflicts_with = "offset"
    )]
    pub partition: Option<u32>,
    /// Print SOURCE's partition table, one line a partition: number, start byte, size in
    /// bytes, type, and the filesystem there (ext2/3/4, block size, block count, UUID) or
    /// `-`. With --json, a JSON array (when it fails, the one-line summary with "exit").
    #[arg(long, conflicts_with_all = ["output", "partition", "offset", "raw", "qcow2", "format", "all_data", "scramble"])]
    pub list: bool,
    /// Show progress on stderr (a bar on a terminal, a line every few seconds otherwise).
    #[arg(short = 'p', long)]
    pub progress: bool,
    /// qcow2 only: compressed clusters, deflate (the default) or zstd (qcow2 v3); needs a
    /// seekable new file.
    #[arg(long, value_name = "ALGO", num_args = 0..=1, require_equals = true, default_missing_value = "deflate", value_enum, conflicts_with = "raw")]
    pub compress: Option<super::CompressArg>,
    /// qcow2 only: write an overlay (qcow2 v3) on FILE, a previous capture (qcow2 or raw):
    /// only clusters that differ from FILE's backing chain are stored. FILE is recorded as
    /// given (a relative name is found from OUTPUT's folder, as qemu-img finds it), with the
    /// digest of its chain's disk: e2i readers refuse a chain changed since.
    #[arg(long, value_name = "FILE", conflicts_with = "raw", value_hint = clap::ValueHint::FilePath)]
    pub backing: Option<PathBuf>,
    /// Stream only: the stream format version. 2 (the default) reads SOURCE once and
    /// checksums with BLAKE3; 1 is for e2i tools that read only version 1 (SOURCE's selected
    /// blocks are read twice; SHA-256).
    #[arg(long = "stream-version", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=2))]
    pub stream_version: Option<u16>,
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
