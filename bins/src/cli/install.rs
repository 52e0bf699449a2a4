//! `e2i-install` command line.

use std::path::PathBuf;

use clap::Parser;

const LONG_ABOUT: &str = "\
Write the superblock, group descriptors, bitmaps and inode tables held in IMAGE (a normal \
e2image image) back onto DEVICE (a block device or an image file). A mounted DEVICE is \
always refused; so is one whose filesystem UUID or geometry differs from the image's, \
unless --force, and so is one holding a newer state of the filesystem than the image (its \
last write time, mount count or lifetime writes past the image's superblock's: what was \
written since would be lost), unless --force. A scrambled IMAGE (made with `e2i-capture -s`: \
its header's or superblock's mark, or, for images made before the mark, a header naming \
neither host nor device) is always refused, --force or not: its inode tables and superblock \
would replace the real names in inline directories, symlink targets, inline file data, \
in-inode xattrs and the label, and e2fsck would find nothing wrong (a DEVICE that is itself \
scrambled takes it). With --undo FILE, every block about to be overwritten is first saved to \
FILE, a name that must not exist yet; `e2undo FILE DEVICE` then restores DEVICE's exact \
bytes, also after an install killed at any point but one: between its last write to DEVICE \
(the superblock) and the undo file's last update, the install is complete and e2undo refuses \
without changing anything.

Before writing (and with -n), one line says what is replaced: the inode tables and bitmaps \
of every group, with the image's from the time it was taken, and whether DEVICE's \
filesystem was written after that (files created or changed since become unreachable). A \
warning says when DEVICE's journal needs recovery: the image's superblock replaces the one \
that says so, and the journal is then not replayed (run e2fsck first).

e2image equivalent: `e2i-install DEVICE IMAGE` is `e2image -I DEVICE IMAGE`; `-n` and \
`-z` have no e2image -I equivalent (e2image -I writes without checks or undo file).";

const AFTER_LONG_HELP: &str = concat!(
    "\
Examples:
  e2i-install -n /dev/sdb1 sdb1.e2i          show what would be written
  e2i-install -z sdb1.undo /dev/sdb1 sdb1.e2i
                                             install, saving an undo file first
  e2undo sdb1.undo /dev/sdb1                 ...and take it back
  e2i-install -P 2 disk.img p2.e2i           onto the filesystem in partition 2

Exit status:
  0  success
  1  failure or refusal, also with -n (nothing written unless the failure came while writing)
  2  usage error
",
    exit_signals!(),
    "
        (a signal during the superblock's write and the undo file's last update waits for
        them: the install completes, and says so)

",
    diag_errors!("e2i-install"),
    "\
\nA run that fails after its first write to DEVICE (an image file on a full filesystem, a \
failing device) says DEVICE is partly installed and how to get back: `e2undo FILE DEVICE` \
with its undo file, or the same command again once there is room or the cause is fixed (the \
superblock is written last, so the rerun sees DEVICE as the first run did).

DEVICE holding a newer state of the filesystem than the image (a later last write time, a \
higher mount count, more lifetime writes) is refused with both values, e.g. `last written \
2025-06-15 15:06:40 UTC (1750000000) (image: 2023-11-14 22:13:20 UTC (1700000000))`.
"
);

/// Write the superblock, group descriptors, bitmaps and inode tables held in IMAGE (a normal
/// e2image image) back onto DEVICE (a block device or an image file).
#[derive(Parser, Debug)]
#[command(
    name = "e2i-install",
    version,
    long_about = LONG_ABOUT,
    after_help = "Exit status: 0 success, 1 failure (nothing written unless the failure came while writing), 2 usage error, 141 reader of stdout gone, 128+N ended by signal N.",
    after_long_help = AFTER_LONG_HELP
)]
pub struct Args {
    /// Block device or image file to restore.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub device: PathBuf,
    /// Normal e2image image (as written by e2image or e2i-capture).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub image: PathBuf,
    /// Print what would be written; change nothing.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// First save every block that will be overwritten to FILE (which must not exist), for
    /// `e2undo FILE DEVICE`.
    #[arg(short = 'z', long = "undo", value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub undo: Option<PathBuf>,
    /// Install even if DEVICE's filesystem UUID or geometry differs from the image's, or it
    /// is newer than the image (never onto a mounted device, never a scrambled image).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Install onto the filesystem in partition N of a GPT or MBR partition table on DEVICE
    /// (MBR logical partitions from 5); nothing is written outside the partition.
    #[arg(short = 'P', long = "partition", value_name = "N")]
    pub partition: Option<u32>,
    /// Show progress on stderr (a bar on a terminal, a line every few seconds otherwise).
    #[arg(short = 'p', long)]
    pub progress: bool,
    /// No warnings or summaries on stderr (errors are still reported).
    #[arg(short = 'q', long)]
    pub quiet: bool,
}
