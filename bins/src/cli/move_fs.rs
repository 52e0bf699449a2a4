//! `e2i-move` command line.

use std::path::PathBuf;

use clap::Parser;

use crate::number;

const LONG_ABOUT: &str = "\
Copy the filesystem in SOURCE with all its data to DEST, or, without DEST, move it inside \
SOURCE from offset -o to offset -O. An in-place move is journalled: if it is interrupted \
(crash, power loss, kill), running the same command again finishes it, under any name of \
SOURCE. The journal records which file or device SOURCE is and checksums of the bytes it \
moves; a rerun over a SOURCE that no longer matches it (restored from a backup, replaced, \
already moved) is refused and nothing is written. See move-journal.md (installed in \
share/doc/e2i). DEST is a new or existing file or a block device, never SOURCE under \
another name. SOURCE may be a qcow2 image when cloning (its virtual disk is read, -o \
inside it); a qcow2 image cannot be moved in place. A scrambled SOURCE (an e2i-capture -s \
image) is not cloned over the filesystem it was taken from (an existing DEST holding its \
UUID at -O) unless --allow-scrambled.

e2image equivalents: `e2i-move -o S -O D SRC DST` is `e2image -ra -o S -O D SRC DST`; \
`e2i-move -o S -O D SRC` is `e2image -ra -o S -O D SRC` (which is not crash-safe); \
`--metadata-only` is `e2image -r` with offsets; `-c` is `e2image -c`, `-n` is `e2image -n`, \
`-p` is `e2image -p`, `-f` is `e2image -f`.";

const AFTER_LONG_HELP: &str = concat!(
    "\
Examples:
  e2i-move /dev/sdb1 /dev/sdc1               clone a filesystem with its data
  e2i-move -O 1M fs.img disk.img             clone into an image at byte 1 MiB
  e2i-move -o 1M -O 2M disk.img              move the filesystem 1 MiB right, in place
  e2i-move -o 1M -O 2M disk.img              (again, after a crash: finishes the move)
  e2i-move -n -o 1M -O 2M disk.img           list the blocks that would be written
  e2i-move -P 2 disk.img p2.img              clone the filesystem of partition 2

Exit status:
  0  success
  1  failure (one line on stderr: `e2i-move: FILE: what`)
  2  usage error
",
    exit_signals!(),
    "\n\n",
    diag_errors!("e2i-move"),
    diag_offset!("DEST"),
    diag_partly!("DEST (a block device or an existing file, updated in place)"),
    diag_chain!(),
    "\
\nAn interrupted in-place move (a crash, power loss, a kill) is finished by the \
same command; SOURCE is refused by every tool until then.
"
);

/// Copy the filesystem in SOURCE with all its data to DEST, or, without DEST, move it
/// inside SOURCE from offset -o to offset -O. An interrupted move is finished by running
/// the same command again.
#[derive(Parser, Debug)]
#[command(
    name = "e2i-move",
    version,
    long_about = LONG_ABOUT,
    after_help = "Exit status: 0 success, 1 failure, 2 usage error, 141 reader of stdout gone, 128+N ended by signal N.",
    after_long_help = AFTER_LONG_HELP
)]
pub struct Args {
    /// Block device or image file holding the filesystem (for a clone, also a qcow2 image).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub source: PathBuf,
    /// Where to copy it (a new file, an existing image or a block device). Without it,
    /// the filesystem is moved inside SOURCE.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub dest: Option<PathBuf>,
    /// Byte offset of the filesystem inside SOURCE.
    #[arg(short = 'o', long = "src-offset", value_name = "N", value_parser = number, default_value = "0")]
    pub src_offset: u64,
    /// Byte offset of the copy inside DEST (or SOURCE, for a move).
    #[arg(short = 'O', long = "dest-offset", value_name = "N", value_parser = number, default_value = "0")]
    pub dest_offset: u64,
    /// The filesystem in partition N of a GPT or MBR partition table on SOURCE (sets -o to
    /// its start; MBR logical partitions from 5). A clone reads nothing past the
    /// partition's end unless --past-partition-end; a move's destination must lie inside
    /// the partition.
    #[arg(
        short = 'P',
        long = "partition",
        value_name = "N",
        conflicts_with = "src_offset"
    )]
    pub partition: Option<u32>,
    /// Compare before writing; skip blocks the target already holds.
    #[arg(short = 'c', long)]
    pub check: bool,
    /// Print the blocks that would be written; create and change nothing.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// Show progress on stderr (a bar on a terminal, a line every few seconds otherwise).
    #[arg(short = 'p', long)]
    pub progress: bool,
    /// Clone a SOURCE that is mounted read-write (never allowed for a move).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// A clone with -P: when the filesystem runs past the end of its partition, read on
    /// past that end, as e2image -o would (by default nothing past it is read: zeros stand
    /// for it). Never for a move, which refuses such a filesystem.
    #[arg(long = "past-partition-end", requires_all = ["partition", "dest"])]
    pub past_partition_end: bool,
    /// Copy the metadata only (e2image -r with offsets); clones only.
    #[arg(long, requires = "dest")]
    pub metadata_only: bool,
    /// Journal of an in-place move [default: next to SOURCE (symlinks resolved) as
    /// SOURCE.e2i-move for a file; $XDG_STATE_HOME/e2i/blockdev-MAJOR:MINOR.e2i-move for a
    /// device]. Its folder must exist.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath, conflicts_with = "dest")]
    pub journal: Option<PathBuf>,
    /// No warnings or summaries (errors are still reported).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Clone a scrambled SOURCE (an e2i-capture -s image) even over the filesystem it was
    /// taken from (an existing DEST holding its UUID at -O).
    #[arg(long = "allow-scrambled", requires = "dest")]
    pub allow_scrambled: bool,
}
