//! Holding a file or device against in-place moves (e2i-move without DEST) while a run
//! reads or writes it: `flock`, shared by readers and exclusive by writers, on it and on the
//! files under a loop device, against the mover's exclusive lock; and a refusal while an
//! unfinished move has left it half moved. Apart from move_fs so that the output layer can
//! use it without depending on the operations.

use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::io::{FileSource, ObjectId};
use crate::ops::move_journal::{self as mj, State};
use crate::progress::Progress;
use crate::{Error, Result};

/// A file or device held against in-place moves while a run reads or writes it ([`hold`]):
/// locked — shared by readers, exclusively by writers — so that an in-place move of it,
/// which locks it (and the files under a loop device) exclusively, cannot run at the same
/// time: a reader would copy a filesystem half moved under it, a writer would write into a
/// file the mover is rearranging (and the mover then move its bytes elsewhere).
#[derive(Debug)]
pub struct Hold {
    _held: Vec<File>,
    /// What this hold registered in [`HELD`] (removed on drop).
    ids: Vec<ObjectId>,
}

/// The objects this process holds (one entry per hold that locked it). A second hold of
/// one (OUTPUT a loop device over another part of the file under a loop SOURCE) would
/// conflict with the first hold's lock, taken through another open file; the first lock
/// already keeps movers out, so the second is not taken.
static HELD: std::sync::Mutex<Vec<ObjectId>> = std::sync::Mutex::new(Vec::new());

fn held_ids() -> std::sync::MutexGuard<'static, Vec<ObjectId>> {
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut all = held_ids();
        for id in &self.ids {
            if let Some(i) = all.iter().position(|x| x == id) {
                all.swap_remove(i);
            }
        }
    }
}

/// What a run does with the file it holds ([`hold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldFor {
    /// SOURCE or INPUT (a capture's, a clone's, a converter's), or an OUTPUT a dry run only
    /// looks at: a shared lock.
    Reading,
    /// An OUTPUT, a clone's DEST, install's DEVICE: an exclusive lock (one writer, no
    /// reader, no mover).
    Writing,
}

/// Hold `source` for reading ([`HoldFor::Reading`]): see [`hold`]. `role` names it in
/// messages: "SOURCE" (e2i-capture, a clone), "INPUT" (the converters).
pub fn hold_for_reading(
    source: &Path,
    role: &str,
    state: Option<PathBuf>,
    progress: &mut dyn Progress,
) -> Result<Hold> {
    hold(source, HoldFor::Reading, role, state, progress)
}

/// Hold `path` ([`Hold`]) and refuse it while it is half-way through an in-place move: an
/// unfinished journal recorded for it (or for the file under a loop device), found where a
/// move would find it, whose half-moved state it holds. No offset of a half-moved file
/// holds a consistent filesystem: a copy of it would be silently corrupt, and writing over
/// it would leave a move that can no longer be finished (the filesystem it holds lost). A
/// journal the file does not match (a backup restored since) is stale and ignored. Anything
/// but a regular file or block device is not held (nothing moves those). `role` names the
/// file in messages ("SOURCE", "DEST", ...).
pub fn hold(
    path: &Path,
    what: HoldFor,
    role: &str,
    state: Option<PathBuf>,
    progress: &mut dyn Progress,
) -> Result<Hold> {
    use rustix::fs::{FlockOperation, flock};
    let none = Hold {
        _held: Vec::new(),
        ids: Vec::new(),
    };
    // Stdin redirected from a file or device (`< disk.img`) is that file, read as any
    // other INPUT is; a pipe is not held (nothing moves it).
    let path = if path == Path::new("-") {
        match what {
            HoldFor::Reading => Path::new("/proc/self/fd/0"),
            HoldFor::Writing => return Ok(none),
        }
    } else {
        path
    };
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(none);
    };
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return Ok(none);
    }
    // Opening a device to read has no effect; one that cannot be opened is reported by
    // whatever opens it next (the reader, the output layer).
    let Ok(file) = File::open(path) else {
        return Ok(none);
    };
    let mut held = vec![file];
    held.extend(loop_backing_files(&meta));
    // A writer locks its target exclusively, and the files under a loop device shared: a
    // mover of such a file (which locks it exclusively) is kept out, a writer of another
    // loop device over another part of it is not.
    let mut ids = Vec::new();
    let mut busy = false;
    {
        let mut all = held_ids();
        for (i, f) in held.iter().enumerate() {
            let Ok(id) = f.metadata().map(|m| ObjectId::of_metadata(&m)) else {
                continue;
            };
            if all.contains(&id) {
                continue;
            }
            let op = match what {
                HoldFor::Writing if i == 0 => FlockOperation::NonBlockingLockExclusive,
                _ => FlockOperation::NonBlockingLockShared,
            };
            if flock(f, op).is_err() {
                busy = true;
                break;
            }
            all.push(id);
            ids.push(id);
        }
    }
    // Registered from here on: released (with the locks) if this returns an error.
    let hold = Hold { _held: held, ids };
    if busy {
        return Err(Error::InvalidInput(match what {
            HoldFor::Reading => "an in-place e2i-move is moving this file or device, or an e2i tool is writing to it: read it when that has finished".into(),
            HoldFor::Writing => "an in-place e2i-move is moving this file or device, or another e2i tool is reading or writing it: write to it when that has finished".into(),
        }));
    }
    // The file itself, by its real name (stdin's file, when `-` is one): what the message
    // tells e2i-move to finish; and the files under a loop device, by theirs.
    let real = std::fs::canonicalize(path).ok();
    let names: Vec<Option<PathBuf>> = hold
        ._held
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == 0 {
                real.clone()
            } else {
                use std::os::fd::AsRawFd;
                std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()
            }
        })
        .collect();
    let held_ids: Vec<Option<ObjectId>> = hold
        ._held
        .iter()
        .map(|f| f.metadata().ok().map(|m| ObjectId::of_metadata(&m)))
        .collect();
    let mut candidates = Vec::new();
    for (name, id) in names.iter().zip(&held_ids) {
        let (Some(name), Some(id)) = (name, id) else {
            continue;
        };
        let loc = mj::locations(name, *id, state.clone());
        candidates.extend(loc.default);
        candidates.extend(loc.index.and_then(|i| std::fs::read_link(i).ok()));
    }
    for (c, j) in mj::open_distinct(candidates, Vec::new()) {
        if j.state() == State::Done {
            continue;
        }
        // Checked through the object the journal was recorded for: a loop device over the
        // half-moved file at an offset (`losetup -o`) shows its bytes shifted, which no
        // journal matches, and was taken for a file that was not half-moved.
        let recorded = held_ids
            .iter()
            .position(|id| *id == Some(j.source().object));
        let order: Vec<usize> = match recorded {
            Some(k) => vec![k],
            None => (0..hold._held.len()).collect(),
        };
        for k in order {
            let reader = FileSource::from_file(
                hold._held[k].try_clone().map_err(|e| Error::io("dup", e))?,
                0,
            )?;
            if !matches!(j.verify(&reader, progress), Ok(Ok(_))) {
                continue;
            }
            let p = j.params();
            let (a, b, jn) = (p.src_offset, p.dest_offset, c.display());
            // e2i-move needs the file itself (not `-`): name it when it is known.
            let it = names[k]
                .as_ref()
                .map_or_else(|| "on it".to_string(), |r| r.display().to_string());
            let subject = if k == 0 {
                format!("{role} is half-moved")
            } else {
                format!("{role} is half-moved (a loop device over {it})")
            };
            return Err(Error::InvalidInput(match what {
                HoldFor::Reading => format!(
                    "{subject}: the in-place move from byte {a} to byte {b} recorded in {jn} is unfinished, so no offset of {role} holds a consistent filesystem; finish it first (e2i-move -o {a} -O {b} --journal {jn} {it}), then read it"
                ),
                HoldFor::Writing => format!(
                    "{subject}: the in-place move from byte {a} to byte {b} recorded in {jn} is unfinished, and writing to {role} would leave it impossible to finish, the filesystem it holds lost; finish it first (e2i-move -o {a} -O {b} --journal {jn} {it}), or delete {jn} if that filesystem is not wanted; nothing written"
                ),
            }));
        }
    }
    Ok(hold)
}

/// The files (or devices) a loop device stands on, opened read-only: its backing file, and
/// that one's when it is a loop device too. Empty for anything else.
pub(crate) fn loop_backing_files(meta: &std::fs::Metadata) -> Vec<File> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut rdev = meta.file_type().is_block_device().then(|| meta.rdev());
    while let Some(dev) = rdev.take() {
        let (ma, mi) = (rustix::fs::major(dev), rustix::fs::minor(dev));
        let Ok(b) = std::fs::read_to_string(format!("/sys/dev/block/{ma}:{mi}/loop/backing_file"))
        else {
            break;
        };
        let Ok(f) = File::open(b.trim_end()) else {
            break;
        };
        if out.len() < 8
            && let Ok(m) = f.metadata()
            && m.file_type().is_block_device()
        {
            rdev = Some(m.rdev());
        }
        out.push(f);
    }
    out
}
