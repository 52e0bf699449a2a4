//! Progress reporting: the library calls [`Progress::update`]; only the binaries draw.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

/// Receives progress of long operations.
pub trait Progress {
    /// A new phase starts ("scanning inodes", "copying"); `total` is in `unit`s.
    fn phase(&mut self, _name: &str, _total: u64, _unit: Unit) {}
    /// `done` of the phase's total.
    fn update(&mut self, _done: u64) {}
    /// The filesystem's block size, once known (so block counts can be shown as MB/s).
    fn block_size(&mut self, _bytes: u32) {}
    /// The phase ended.
    fn finish(&mut self) {}
}

/// Units a phase counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Inodes,
    Blocks,
    Bytes,
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
