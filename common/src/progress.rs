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

/// A time in seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian
/// calendar, from the days since 1970-01-01).
// Bounded by construction: days < 2^48, every intermediate is far inside i64.
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_wrap)]
pub fn utc(secs: u64) -> String {
    let (days, rest) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days, over eras of 400 years (146097 days); u64 seconds
    // give at most ~2^48 days, far inside i64.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}
