//! `e2i-install` command line.

use std::path::PathBuf;

use clap::Parser;

const LONG_ABOUT: &str = "\
Write the superblock, group descriptors, bitmaps and inode tables held in IMAGE (a normal \
e2image image) back onto DEVICE (a block device or an image file). A mounted DEVICE is \
always refused; so is one whose filesystem UUID or geometry differs from the image's, \
unless --force. With --undo FILE, every block about to be overwritten is first saved to \
FILE, which e2fsprogs' `e2undo FILE DEVICE` replays.

e2image equivalent: `e2i-install DEVICE IMAGE` is `e2image -I DEVICE IMAGE`; `-n` and \
`-z` have no e2image -I equivalent (e2image -I writes without checks or undo file).";

const AFTER_LONG_HELP: &str = "\
Examples:
  e2i-install -n /dev/sdb1 sdb1.e2i          show what would be written
  e2i-install -z sdb1.undo /dev/sdb1 sdb1.e2i
                                             install, saving an undo file first
  e2undo sdb1.undo /dev/sdb1                 ...and take it back

Exit status:
  0  success
  1  failure (nothing written unless the failure came while writing)
  2  usage error";

/// Write the superblock, group descriptors, bitmaps and inode tables held in IMAGE (a normal
/// e2image image) back onto DEVICE (a block device or an image file).
#[derive(Parser, Debug)]
#[command(
    name = "e2i-install",
    version,
    long_about = LONG_ABOUT,
    after_help = "Exit status: 0 success, 1 failure (nothing written unless the failure came while writing), 2 usage error.",
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
    /// First save every block that will be overwritten to FILE, for `e2undo FILE DEVICE`.
    #[arg(short = 'z', long = "undo", value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub undo: Option<PathBuf>,
    /// Install even if DEVICE's filesystem UUID or geometry differs from the image's
    /// (never onto a mounted device).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Show progress on stderr (a bar on a terminal, a line every few seconds otherwise).
    #[arg(short = 'p', long)]
    pub progress: bool,
    /// No warnings or summaries on stderr (errors are still reported).
    #[arg(short = 'q', long)]
    pub quiet: bool,
}
