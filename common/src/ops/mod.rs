//! One function per tool; the binaries parse arguments and call these.

pub mod capture;
pub mod install;
