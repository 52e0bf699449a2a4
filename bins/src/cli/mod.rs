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
