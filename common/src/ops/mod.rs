//! One function per tool; the binaries parse arguments and call these.

pub mod capture;
pub mod move_fs;
pub mod move_journal;
