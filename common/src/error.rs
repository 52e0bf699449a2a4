//! The one error type of the library. Messages are lower-case and say what and where.

use std::io;

/// Everything that can go wrong in `e2i`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed. (The source error is printed by the error chain.)
    #[error("{op}{}", if *offset > 0 { format!(" at byte {offset}") } else { String::new() })]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The input is damaged: `what` names the structure, `detail` what is wrong with it.
    #[error("{what}: {detail}")]
    Corrupt { what: String, detail: String },
    /// The input is valid but uses something e2i does not handle.
    #[error("{0}")]
    Unsupported(String),
    /// The caller asked for something impossible (bad option combination, wrong target).
    #[error("{0}")]
    InvalidInput(String),
}

impl Error {
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub fn io(op: &'static str, offset: u64, source: io::Error) -> Self {
        Error::Io { op, offset, source }
    }

    /// True for a write to a closed pipe, which the tools treat as a normal end.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
