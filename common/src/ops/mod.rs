//! One function per tool; the binaries parse arguments and call these.

pub mod capture;
pub mod guard;
pub mod hold;
pub mod input;
pub mod install;
pub mod move_fs;
pub mod move_journal;
pub mod qcow2_to_raw;
pub mod to_qcow2;
pub mod to_raw;
