//! The command-line definitions of every tool, in the library so that the man pages and
//! shell completions are generated from the same clap `Command`s the binaries parse with.

use clap::CommandFactory;

/// Cluster compression of `--compress[=deflate|zstd]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressArg {
    /// Deflate (zlib type): every qemu-img reads it (stock e2image reads no compressed
    /// clusters).
    Deflate,
    /// zstd (qcow2 v3 compression type 1): faster and smaller; qemu-img 5.1 and later read it.
    Zstd,
}

impl CompressArg {
    pub fn cluster_compression(self) -> e2i::qcow2::header::ClusterCompression {
        match self {
            CompressArg::Deflate => e2i::qcow2::header::ClusterCompression::Deflate,
            CompressArg::Zstd => e2i::qcow2::header::ClusterCompression::Zstd,
        }
    }
}

/// Exit-status lines every tool shares (the end of its "Exit status:" list; macros so that
/// `concat!` builds each tool's help from literals).
macro_rules! exit_signals {
    () => {
        "  141  the reader of stdout went away (a closed pipe): it did not get everything
  128+N  ended by signal N (130: SIGINT, 143: SIGTERM), its temporary files removed; also
        when the signal arrives as the work ends, after a line saying the work is complete"
    };
}

/// What follows exit status 3's first line in every tool that can skip damage: the lines
/// it prints, in the form the tools print them.
macro_rules! exit_skipped_lines {
    () => {
        "        `skipped:` line a structure; blocks that could not be read, one line a run:
        `blocks A-B (N blocks): read error; written as zeros`
"
    };
}

/// The DIAGNOSTICS paragraph on the form of errors, shared by every tool.
macro_rules! diag_errors {
    ($tool:literal) => {
        concat!(
            "Diagnostics:\n",
            "Errors are one line on stderr, `",
            $tool,
            ": FILE: what`, naming the file the error is about: the one written for a write \
error or a lack of room (`write at byte N: No space left on device`, N the byte of the \
target where the failed write began: the first byte it did not take, whatever the writes gathered or buffered; \
stdout named as what it is, `- (stdout, /dev/full)`, `- (stdout, a pipe)`), the one read for a read or format error. A file read that ends, \
during the run, before the size it had when the run opened it (truncated meanwhile) fails \
the run: `it ends at byte N but held M bytes when the run opened it`.\n"
        )
    };
}

/// The DIAGNOSTICS paragraphs of tools that write an image to stdout.
macro_rules! diag_stdout {
    () => {
        "\nOUTPUT `-` with stdout closed (`>&-`) is refused: `stdout is closed`, nothing \
written. A socket on stdout (a service under systemd or inetd) is written as a stream, \
under /dev/stdout and /proc/self/fd/1 as under `-`.\n"
    };
}

/// The DIAGNOSTICS paragraph of tools that read qcow2 overlays.
macro_rules! diag_chain {
    () => {
        "\nAn overlay written by e2i (--backing) records the BLAKE3 digest of the disk its \
backing chain held when it was written (qcow2 header extension `e2iB`, which qemu ignores \
and keeps). Every e2i reader checks it first and refuses a chain changed since (a file \
replaced, restored or modified): `backing chain from FILE: changed since this overlay was \
written on it`, exit 1, nothing written. Renaming chain files (then `qemu-img rebase -u`) \
keeps it valid; flatten with `qemu-img convert` after changing a chain on purpose.\n"
    };
}

/// The DIAGNOSTICS paragraph of tools with -O.
macro_rules! diag_offset {
    ($target:literal) => {
        concat!(
            "\nAn -O no file can reach (past 2^63 - 1, past the largest file the filesystem \
holding ",
            $target,
            " allows, or past 2^64 - 1) is refused before anything is created or written, naming ",
            $target,
            ": `a file there cannot reach the end of what must be written` (past 2^64 - 1: `no \
file or device reaches`).\n"
        )
    };
}

/// The DIAGNOSTICS paragraph of tools that update a target in place (`$target`: which).
macro_rules! diag_partly {
    ($target:literal) => {
        concat!(
            "\n",
            $target,
            " whose writes fail once begun (a full disk, a failing device) holds part of the \
image inside its range over its old bytes: the error line says it is partly written and, \
for a full disk, to run the same command again once there is room.\n"
        )
    };
}

pub mod capture;
pub mod install;
pub mod move_fs;
pub mod qcow2_to_raw;
pub mod to_qcow2;
pub mod to_raw;

/// Every tool's clap `Command`, in the order the README lists them.
pub fn commands() -> Vec<clap::Command> {
    vec![
        capture::Args::command(),
        to_raw::Args::command(),
        to_qcow2::Args::command(),
        qcow2_to_raw::Args::command(),
        install::Args::command(),
        move_fs::Args::command(),
    ]
}
