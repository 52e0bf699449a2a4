//! Opening an OUTPUT: one layer for every tool, so that an output is written where it points
//! and never over what was not asked for.
//!
//! * OUTPUT is resolved once: symlinks are followed (a dangling link names the file to
//!   create), the target is stat'ed, and its kind decides how it is written:
//!   stdout and character devices and FIFOs are streams; block devices are updated in place;
//!   an existing regular file is updated in place when the tool was asked to (`-O`, `-c`,
//!   e2i-move's DEST), else replaced; a new regular file is written under a temporary name in
//!   its folder and renamed into place on [`Output::commit`].
//! * OUTPUT may not share a byte with what the run reads ([`Footprint`]): the same file under
//!   any name, a loop device backed by it, a partition of the same disk or the disk of a
//!   partition, a device built on it (device mapper, md), a backing file of a qcow2 read.
//! * An existing regular file is opened for writing before anything else happens, so the
//!   system's verdict (permissions, read-only filesystem) stands as e2image's would; a
//!   replaced file keeps its mode and, where the system allows, its owner.
//! * Temporary files are registered ([`pending`]) so that a signal handler can remove them.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::footprint::Footprint;
use crate::io::ObjectId;
use crate::ops::hold::{Hold, HoldFor};
use crate::sysfs::{dir as sysfs_dir, read_u64};
use crate::{Error, Result};

/// How an OUTPUT is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Standard output (`-`).
    Stdout,
    /// A character device or FIFO: written front to back like stdout, never replaced.
    Stream,
    /// A block device: updated in place, inside its size.
    BlockDevice,
    /// An existing regular file updated in place (`-O`, `-c`, a move's DEST).
    Existing,
    /// A regular file created (or replaced) under a temporary name and renamed on success.
    New,
}

impl Kind {
    /// Written front to back (no seeking): stdout, character devices, FIFOs.
    pub fn is_stream(self) -> bool {
        matches!(self, Kind::Stdout | Kind::Stream)
    }
}

/// What a tool wants of its OUTPUT.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// As the user typed it; `-` is stdout.
    pub path: &'a Path,
    /// How the tool names it in messages: "OUTPUT", "DEST", "DEVICE".
    pub role: &'a str,
    /// Update an existing regular file in place instead of replacing it (`-O`, `-c`, a
    /// move's DEST). A file that does not exist is created either way.
    pub in_place: bool,
    /// Change nothing (`-n`): every check runs, nothing is created, truncated or written.
    /// The target, when it exists, is opened read-only (for `-c`).
    pub dry_run: bool,
    /// Open block devices exclusively (O_EXCL): the kernel then refuses a mounted or
    /// otherwise claimed device.
    pub exclusive: bool,
    /// A FIFO or character device may be written front to back; when not (or when
    /// `in_place` asks for positional writes), it is refused before it is opened (opening
    /// a FIFO waits for its reader).
    pub streams: bool,
    /// What the run does with an existing regular file or block device OUTPUT (written now
    /// or later, or only looked at by a dry run): it is held so for as long as the
    /// [`Output`] lives, and refused while an in-place e2i-move runs on it or has left it
    /// half-moved ([`crate::ops::hold::hold`]).
    pub hold: HoldFor,
    /// e2i's state folder (where the journals of moves of block devices are), for that.
    pub state_dir: Option<&'a Path>,
}

/// An opened OUTPUT.
#[derive(Debug)]
pub struct Output {
    kind: Kind,
    /// Open for writing (read-only in a dry run); `None` for stdout and for dry runs of
    /// targets that do not exist or are streams.
    file: Option<File>,
    /// A block device's size in bytes.
    device_size: Option<u64>,
    /// The temporary file of a new or replaced regular file.
    pending: Option<Pending>,
    dry_run: bool,
    /// The path written, symlinks followed.
    path: PathBuf,
    /// The existing target held against in-place moves (see [`Request::hold`]).
    _hold: Option<Hold>,
    /// A regular file written under its own name (it cannot be renamed over), to be
    /// truncated when [`Output::file`] first hands it out to be written.
    truncate_on_use: std::cell::Cell<bool>,
    /// Stdout redirected to a new, empty file of its own (see [`Output::seekable_stdout`]).
    stdout_file: Option<File>,
    /// `stdout_file` was handed out and not yet ended: emptied again if the run fails.
    stdout_pending: std::cell::Cell<bool>,
}

#[derive(Debug)]
struct Pending {
    tmp: PathBuf,
    /// The folder, held open: the temporary file is renamed (or removed) in it even when it
    /// was renamed or moved during the run (else the rename failed and the temporary file,
    /// gigabytes perhaps, stayed behind where its path no longer led).
    dir: std::os::fd::OwnedFd,
    /// The temporary file's and OUTPUT's names in `dir`.
    tmp_name: std::ffi::OsString,
    dest_name: std::ffi::OsString,
    /// The replaced file's mode and owner, applied to the temporary file before the rename.
    keep: Option<(u32, u32, u32)>,
    committed: bool,
}

impl Output {
    /// Resolve and open `req.path`, refusing it when it overlaps any of `reads` (the files
    /// and devices the run reads, with the role naming each in messages: `("SOURCE", path)`).
    pub fn open(req: &Request<'_>, reads: &[(&str, &Path)]) -> Result<Output> {
        Output::open_ranged(req, reads, None)
    }

    /// [`Output::open`] when the run reads only bytes `source_range` of the first of
    /// `reads` (a filesystem at an offset of a disk or image, its size known): OUTPUT may
    /// then be another part of the same disk (a partition, a loop device over a disjoint
    /// stretch of the file). A qcow2's bytes are not the disk's: it counts whole.
    pub fn open_ranged(
        req: &Request<'_>,
        reads: &[(&str, &Path)],
        source_range: Option<std::ops::Range<u64>>,
    ) -> Result<Output> {
        if req.path == Path::new("-") {
            // Stdout redirected to a file (`>> SOURCE`) is that file.
            let fd1 = Path::new("/proc/self/fd/1");
            if req.streams && std::fs::metadata(fd1).is_ok_and(|m| m.file_type().is_block_device())
            {
                // Stdout redirected to a block device (`- > /dev/sdb1`) is that device, as
                // OUTPUT naming it is: opened exclusively (a mounted or claimed device is
                // refused, where the shell's open refused nothing), its size checked before
                // the first write, written in place.
                // Opened by its kernel link, which resolves to the device: messages then
                // name it as stdout ([`shown`]).
                return Output::open_ranged(&Request { path: fd1, ..*req }, reads, source_range);
            }
            let mut held = None;
            if let Ok(m) = std::fs::metadata(fd1)
                && (m.is_file() || m.file_type().is_block_device())
            {
                let home = m.is_file().then(|| m.dev());
                refuse_overlap(req, fd1, Some(&m), home, reads, source_range.clone())?;
                // A redirection never replaces the file: `1<>` and `>>` write the inode a
                // loop device may stand on (and `>` already emptied it under the kernel).
                refuse_mounted(req, fd1)?;
                held = Some(hold(req, fd1)?);
            }
            // A dry run's listing goes to stdout too.
            refuse_read_only_stdout(req.role)?;
            if !req.dry_run {
                crate::io::grow_pipe(io::stdout());
            }
            return Ok(Output {
                kind: Kind::Stdout,
                file: None,
                device_size: None,
                pending: None,
                dry_run: req.dry_run,
                path: PathBuf::from("-"),
                _hold: held,
                truncate_on_use: std::cell::Cell::new(false),
                stdout_file: if req.dry_run {
                    None
                } else {
                    fresh_stdout_file()
                },
                stdout_pending: std::cell::Cell::new(false),
            });
        }
        refuse_planted(req)?;
        let Resolved {
            path,
            meta,
            renamable,
        } = resolve(req.path)?;
        // The filesystem a regular file's bytes land on: its own, or its folder's.
        let home = match &meta {
            Some(m) if m.is_file() => Some(m.dev()),
            Some(_) => None,
            None => std::fs::metadata(parent_dir(&path)).ok().map(|d| d.dev()),
        };
        refuse_overlap(req, &path, meta.as_ref(), home, reads, source_range)?;
        let mut held = None;
        if meta.is_some() {
            // Before anything is opened for writing (a replaced file may be truncated).
            held = Some(hold(req, &path)?);
        }
        let ft = meta.as_ref().map(|m| m.file_type());
        let mut out = Output {
            kind: Kind::New,
            file: None,
            device_size: None,
            pending: None,
            dry_run: req.dry_run,
            path: path.clone(),
            _hold: held,
            truncate_on_use: std::cell::Cell::new(false),
            stdout_file: None,
            stdout_pending: std::cell::Cell::new(false),
        };
        match ft {
            // Refused before it is opened: opening a FIFO waits for its reader, only for
            // the run to be refused then.
            Some(t) if (t.is_char_device() || t.is_fifo()) && (!req.streams || req.in_place) => {
                return Err(Error::InvalidInput(format!(
                    "{} {}: a FIFO or character device cannot be written by position; give a file or block device",
                    req.role,
                    shown(req.path)
                )));
            }
            Some(t) if t.is_char_device() || t.is_fifo() => {
                out.kind = Kind::Stream;
                if req.dry_run {
                    check_writable(&path)?;
                } else {
                    // O_WRONLY on a FIFO waits for its reader, as e2image's open does.
                    let f = if t.is_fifo() {
                        open_fifo(&path)?
                    } else {
                        open_rw(&path, false, false)?
                    };
                    crate::io::grow_pipe(&f);
                    out.file = Some(f);
                }
            }
            Some(t) if t.is_block_device() => {
                out.kind = Kind::BlockDevice;
                if meta.as_ref().is_some_and(|m| is_read_only_device(m.rdev())) {
                    // Opening it for writing would succeed and every write fail: say so first.
                    return Err(Error::InvalidInput(format!(
                        "{} {}: the device is read-only; nothing written",
                        req.role,
                        shown(req.path)
                    )));
                }
                // The exclusive open refuses the mounted device itself, not another name of
                // its bytes: a second loop device over an image file mounted through a first
                // one, a loop device over a partition. Asked of the mount table first (and
                // by -n, which opens nothing for writing).
                refuse_mounted(req, &path)?;
                let file = if req.dry_run {
                    check_writable(&path)?;
                    File::open(&path).map_err(|e| Error::io("open", e))?
                } else {
                    open_rw(&path, true, req.exclusive)?
                };
                out.device_size = crate::io::block_device_size(&file)?;
                out.file = Some(file);
            }
            Some(t) if t.is_file() && req.in_place => {
                out.kind = Kind::Existing;
                refuse_mounted(req, &path)?;
                let file = if req.dry_run {
                    check_writable(&path)?;
                    File::open(&path).map_err(|e| Error::io("open", e))?
                } else {
                    open_rw(&path, true, false)?
                };
                refuse_qcow2(req, &file)?;
                out.file = Some(file);
            }
            Some(t) if t.is_file() => {
                // Replaced: the user must be able to write the file itself, not only its
                // folder (a rename would otherwise bypass the file's permissions).
                check_writable(&path)?;
                let m = meta.as_ref().map(|m| (m.mode() & 0o7777, m.uid(), m.gid()));
                // Written under its own name (below) when it cannot be renamed over: the
                // inode a loop device may stand on, so asked as for `-O`. The same verdict
                // for `-n`, which creates no temporary file to find out.
                let own_name = !renamable
                    || !rename_allowed(&path, meta.as_ref())
                    || rustix::fs::access(parent_dir(&path), rustix::fs::Access::WRITE_OK).is_err();
                if own_name {
                    refuse_mounted(req, &path)?;
                }
                if !req.dry_run {
                    // A file we may write whose name we may not replace: write the file
                    // itself, truncated, as e2image does (a failed run then leaves it
                    // partial, as e2image's would). Truncated only when the run takes the
                    // file to write it ([`Output::file`]): a run that fails before (an
                    // input that is no image) leaves it whole.
                    let open_it = || {
                        OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&path)
                            .map_err(|e| Error::io("open", e))
                    };
                    if !renamable || !rename_allowed(&path, meta.as_ref()) {
                        out.file = Some(open_it()?);
                        out.truncate_on_use.set(true);
                    } else {
                        match out.start_new(&path, m) {
                            Ok(()) => {}
                            // No temporary name is possible in the folder.
                            Err(Error::Io { source, .. })
                                if source.kind() == io::ErrorKind::PermissionDenied =>
                            {
                                refuse_mounted(req, &path)?;
                                out.file = Some(open_it()?);
                                out.truncate_on_use.set(true);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            Some(t) if t.is_dir() => {
                return Err(Error::io(
                    "open",
                    io::Error::from_raw_os_error(rustix::io::Errno::ISDIR.raw_os_error()),
                ));
            }
            // A socket this process holds, named through the kernel's link to its
            // descriptor (`/dev/stdout` of a run whose stdout is a socket, as under
            // systemd or inetd): written as a stream, as `-` is. open(2) cannot open a
            // socket, so the descriptor itself is duplicated.
            Some(t) if t.is_socket() && req.streams && !req.in_place => {
                let Some(fd) = own_socket(req.path) else {
                    return Err(Error::InvalidInput(format!(
                        "{} {} is a socket, which cannot be opened by name; give a file, a device, a FIFO, or `-` (or /dev/stdout) for a socket on stdout",
                        req.role,
                        shown(req.path)
                    )));
                };
                out.kind = Kind::Stream;
                if !req.dry_run {
                    let f = File::from(fd);
                    crate::io::grow_pipe(&f);
                    out.file = Some(f);
                }
            }
            Some(t) if t.is_socket() => {
                return Err(Error::InvalidInput(format!(
                    "{} {}: a socket cannot be written by position; give a file or block device",
                    req.role,
                    shown(req.path)
                )));
            }
            Some(_) => {
                return Err(Error::InvalidInput(format!(
                    "{} {} is neither a file, a device nor a FIFO",
                    req.role,
                    shown(req.path)
                )));
            }
            // `x/` names a folder: open(2) says so when it would create it (after the
            // whole run, with a temporary name and a rename).
            None if path.as_os_str().as_encoded_bytes().ends_with(b"/") => {
                return Err(Error::io(
                    "create",
                    io::Error::from_raw_os_error(rustix::io::Errno::ISDIR.raw_os_error()),
                ));
            }
            None if req.dry_run => {
                refuse_device_folder(req, &path)?;
                // Would the file be created? Its folder must exist and be writable.
                let dir = parent_dir(&path);
                rustix::fs::access(dir, rustix::fs::Access::WRITE_OK)
                    .map_err(|e| Error::io("create", io::Error::from(e)))?;
            }
            None => {
                refuse_device_folder(req, &path)?;
                out.start_new(&path, None)?;
            }
        }
        Ok(out)
    }

    fn start_new(&mut self, dest: &Path, keep: Option<(u32, u32, u32)>) -> Result<()> {
        let dir = parent_dir(dest);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        remove_stale_partials(dir, &name);
        use rustix::fs::{Mode, OFlags};
        let dirfd = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("create", e.into()))?;
        let dest_name = dest.file_name().unwrap_or_default().to_os_string();
        let mut last = None;
        for i in 0..100u32 {
            let tmp_name = format!("{}{}-{i}", partial_prefix(&name), std::process::id());
            let tmp = dir.join(&tmp_name);
            // Registered before it exists: a signal between the two removes nothing wrongly.
            pending::add(&tmp);
            // 0600 like e2image: images hold private metadata (names, layout).
            match rustix::fs::openat(
                &dirfd,
                tmp_name.as_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map(File::from)
            .map_err(io::Error::from)
            {
                Ok(f) => {
                    // Held while the file lives: a later run knows a partial file nobody
                    // holds is a killed run's (remove_stale_partials).
                    let _ =
                        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive);
                    self.file = Some(f);
                    self.pending = Some(Pending {
                        tmp,
                        dir: dirfd,
                        tmp_name: tmp_name.into(),
                        dest_name,
                        keep,
                        committed: false,
                    });
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    pending::remove(&tmp);
                    last = Some(e);
                }
                Err(e) => {
                    pending::remove(&tmp);
                    return Err(Error::io("create", e));
                }
            }
        }
        Err(Error::io(
            "create",
            last.unwrap_or_else(|| io::Error::other("no free temporary name")),
        ))
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// A replaced file written under its own name: [`Output::file`] truncates it. A run
    /// that learns only later whether its input is usable checks that first.
    pub fn truncates_on_use(&self) -> bool {
        self.truncate_on_use.get()
    }

    /// Stdout (OUTPUT `-`) redirected to a new, empty regular file of its own (`> FILE`:
    /// not appending, at offset 0, not also stderr): a handle for writing it by position,
    /// as a new file is written (one pass, holes), where the format's writer would
    /// otherwise write front to back. [`Output::end_stdout`] then leaves stdout's offset
    /// after the image, where a sequential writer would have left it.
    ///
    /// Until then the file is the run's own: a run that fails (dropped without
    /// `end_stdout`) or is stopped by a signal empties it again, as a new file's temporary
    /// name is removed, so that no image that looks complete (a stream's data written
    /// before its checksum failed) is left where the user looks for one.
    pub fn seekable_stdout(&self) -> Option<&File> {
        let f = self.stdout_file.as_ref()?;
        if !self.stdout_pending.replace(true) {
            pending::add_stdout();
        }
        Some(f)
    }

    /// After writing through [`Output::seekable_stdout`]: move stdout's offset to the end
    /// of what was written (a command writing next in the same redirection follows it).
    pub fn end_stdout(&self) -> Result<()> {
        if let Some(f) = &self.stdout_file {
            use std::io::Seek;
            let mut f = f;
            let _commit = pending::committing();
            f.seek(io::SeekFrom::End(0))
                .map_err(|e| Error::io("seek", e))?;
            if self.stdout_pending.replace(false) {
                pending::remove_stdout();
            }
        }
        Ok(())
    }

    /// The file to write (or, in a dry run, to compare with); `None` for stdout and for
    /// dry runs of new files and streams.
    ///
    /// A replaced file that cannot be renamed over is truncated here, on the first call
    /// (after the run opened and checked its input); `None` if that fails (the run then
    /// stops, "not opened", the file as it was).
    pub fn file(&self) -> Option<&File> {
        let f = self.file.as_ref()?;
        if self.truncate_on_use.replace(false) && f.set_len(0).is_err() {
            return None;
        }
        Some(f)
    }

    /// A block device's size in bytes.
    pub fn device_size(&self) -> Option<u64> {
        self.device_size
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// Written where it is, over what it held: an existing regular file updated in place or a
    /// block device (not a dry run). A write that fails there leaves it partly written; a
    /// new file's temporary name is removed instead.
    pub fn is_updated_in_place(&self) -> bool {
        !self.dry_run && matches!(self.kind, Kind::Existing | Kind::BlockDevice)
    }

    /// The path written, symlinks followed (`-` for stdout).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuse, before the first write, an image of `need` bytes that does not fit a block
    /// device.
    pub fn check_room(&self, need: u64) -> Result<()> {
        check_room(self.device_size, need)
    }

    /// Make a new or replaced regular file visible under its name; a block device's writes
    /// are synced (a write error of the device — its backing store full, a bad sector —
    /// shows only then: without it the run would say it succeeded).
    pub fn commit(&mut self) -> Result<()> {
        if self.kind == Kind::BlockDevice
            && !self.dry_run
            && let Some(f) = &self.file
        {
            f.sync_data().map_err(|e| Error::io("sync", e))?;
        }
        if let Some(p) = &mut self.pending {
            let file = self.file.as_ref();
            if let (Some((mode, uid, gid)), Some(f)) = (p.keep, file) {
                // The replaced file's owner where the system allows it (root, or our own
                // group), then its mode (after chown, which clears set-id bits).
                if rustix::fs::fchown(
                    f,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )
                .is_err()
                {
                    let _ = rustix::fs::fchown(f, None, Some(rustix::fs::Gid::from_raw(gid)));
                }
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io("chmod", e))?;
            }
            // No fsync: like e2image, an image is left to the page cache; the temporary
            // name guards against failures of this run, not against power loss.
            let _commit = pending::committing();
            rustix::fs::renameat(&p.dir, &p.tmp_name, &p.dir, &p.dest_name)
                .map_err(|e| Error::io("rename", lost_temporary(p, e)))?;
            p.committed = true;
            pending::remove(&p.tmp);
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.stdout_pending.replace(false)
            && let Some(f) = &self.stdout_file
        {
            empty_stdout(f);
            pending::remove_stdout();
        }
        if let Some(p) = &self.pending
            && !p.committed
        {
            let _ = rustix::fs::unlinkat(&p.dir, &p.tmp_name, rustix::fs::AtFlags::empty());
            pending::remove(&p.tmp);
        }
    }
}

/// A duplicate of stdout when `given` leads to it through this process's `/proc/self/fd/1`
/// link (`/dev/stdout`, `/dev/fd/1`, `/proc/PID/fd/1`) and it is a socket.
fn own_socket(given: &Path) -> Option<std::os::fd::OwnedFd> {
    let own_fds = std::fs::canonicalize("/proc/self/fd").ok()?;
    let mut cur = given.to_path_buf();
    for _ in 0..40 {
        let to = std::fs::read_link(&cur).ok()?;
        if to.as_os_str().as_encoded_bytes().starts_with(b"socket:[") {
            let dir = std::fs::canonicalize(parent_dir(&cur)).ok()?;
            // Stdout only: other descriptors cannot be borrowed without unsafe code, and
            // an image is sent to a socket on stdout (`-`) or by name.
            if dir != own_fds || cur.file_name()? != "1" {
                return None;
            }
            return rustix::io::fcntl_dupfd_cloexec(io::stdout(), 3).ok();
        }
        cur = if to.is_absolute() {
            to
        } else {
            parent_dir(&cur).join(to)
        };
    }
    None
}

/// Why the rename of a finished temporary file failed, in words: a bare ENOENT would not
/// say that the image is gone, or why. The folder held open has no links left when it was
/// deleted (`rm -rf` took the temporary file with it); otherwise someone removed the
/// temporary file itself.
fn lost_temporary(p: &Pending, e: rustix::io::Errno) -> io::Error {
    if e != rustix::io::Errno::NOENT {
        return e.into();
    }
    let what = if rustix::fs::fstat(&p.dir).is_ok_and(|st| st.st_nlink == 0) {
        "OUTPUT's folder was deleted during the run, and the image written there with it; nothing is left".to_string()
    } else {
        format!(
            "the temporary file {} was removed during the run (by another program), and the image with it; nothing is left",
            p.tmp.display()
        )
    };
    io::Error::new(io::ErrorKind::NotFound, what)
}

/// Hold an existing OUTPUT as `req` says.
fn hold(req: &Request<'_>, path: &Path) -> Result<Hold> {
    crate::ops::hold::hold(
        path,
        req.hold,
        req.role,
        req.state_dir.map(Path::to_path_buf),
        &mut crate::progress::NoProgress,
    )
    .map_err(|e| match e {
        // The tools print InvalidInput as it is: name the file here.
        Error::InvalidInput(m) => Error::InvalidInput(format!("{}: {m}", shown(req.path))),
        e => e,
    })
}

/// OUTPUT as messages name it: as given, but stdout (`-`, or its link /proc/self/fd/1 when
/// stdout is redirected to a block device) as `- (stdout, WHAT)`.
fn shown(p: &Path) -> String {
    if p == Path::new("-") || p == Path::new("/proc/self/fd/1") {
        format!("- (stdout, {})", stdout_name())
    } else {
        p.display().to_string()
    }
}

/// What stdout is redirected to, for messages: the file's path.
fn stdout_name() -> String {
    stdout_target().unwrap_or_else(|| "redirected to a file".to_string())
}

/// The link /proc/self/fd/1: the path of what stdout was opened on (`pipe:[N]` and the
/// like for what has none); `None` without /proc.
pub fn stdout_link() -> Option<std::path::PathBuf> {
    std::fs::read_link("/proc/self/fd/1").ok()
}

/// What stdout is, for messages, from the link /proc/self/fd/1: a path (`/dev/full`, a
/// file), `a pipe`, `a socket`; `None` when the system does not say (no /proc, an anonymous
/// file).
pub fn stdout_target() -> Option<String> {
    let t = stdout_link()?;
    let t = t.to_string_lossy();
    if t.starts_with("pipe:") {
        Some("a pipe".into())
    } else if t.starts_with("socket:") {
        Some("a socket".into())
    } else {
        t.starts_with('/').then(|| t.into_owned())
    }
}

/// The temporary name of a new output named `name`, up to its `PID-N` tail:
/// `.NAME.e2i-partial-`, NAME cut ([`crate::io::fit_name`]) where the whole would not fit a
/// folder entry with the longest PID and N: any name that can be created can be written.
fn partial_prefix(name: &str) -> String {
    const TAIL: &str = ".e2i-partial-";
    // "." + NAME + TAIL + PID (at most 7 digits, pid_max 2^22) + "-" + N (at most 2).
    let room = crate::io::NAME_MAX.saturating_sub(1 + TAIL.len() + 7 + 1 + 2);
    format!(".{}{TAIL}", crate::io::fit_name(name, room))
}

/// Remove what runs killed by SIGKILL (the OOM killer, a power-user's `kill -9`) left of
/// new outputs named `name` in `dir`: `.NAME.e2i-partial-PID-N` files — possibly gigabytes
/// on a disk that is already short of room. One is stale only when nobody holds its lock
/// (a live run holds its own) and its process is gone from this machine; anything that
/// cannot be checked is left alone.
fn remove_stale_partials(dir: &Path, name: &str) {
    let prefix = partial_prefix(name);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let fname = e.file_name();
        let Some(rest) = fname.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        let alive = !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        );
        if alive || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = e.path();
        let Ok(f) = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
        else {
            continue;
        };
        if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// [`Output::check_room`] for a target of `size` bytes (`None`: it grows as needed).
pub fn check_room(size: Option<u64>, need: u64) -> Result<()> {
    match size {
        Some(have) if need > have => Err(Error::NoRoom { have, need }),
        _ => Ok(()),
    }
}

/// Stdout as a file that can be written by position: a regular file, empty, opened for
/// writing without O_APPEND (a `>>` redirection appends whatever the offset), at offset 0,
/// and not also stderr (`> FILE 2>&1`: messages would land inside the image). A duplicate
/// handle, sharing stdout's offset.
fn fresh_stdout_file() -> Option<File> {
    use rustix::fs::{OFlags, fcntl_getfl, fstat};
    use std::os::fd::AsFd;
    let out = io::stdout();
    let fd = out.as_fd();
    let st = fstat(fd).ok()?;
    let regular =
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
    let fl = fcntl_getfl(fd).ok()?;
    let writable = fl.intersects(OFlags::WRONLY | OFlags::RDWR);
    let at_start = rustix::fs::seek(fd, rustix::fs::SeekFrom::Current(0)).ok()? == 0;
    let same_as_stderr =
        fstat(io::stderr().as_fd()).is_ok_and(|e| e.st_dev == st.st_dev && e.st_ino == st.st_ino);
    if !regular
        || st.st_size != 0
        || !writable
        || fl.contains(OFlags::APPEND)
        || !at_start
        || same_as_stderr
    {
        return None;
    }
    fd.try_clone_to_owned().ok().map(File::from)
}

/// Refuse stdout opened for reading only (`1< FILE`, a typo for `1> FILE`): every write
/// fails with EBADF, which Rust's stdout takes for a closed stdout and discards, so the run
/// said it succeeded and wrote nothing.
fn refuse_read_only_stdout(role: &str) -> Result<()> {
    use rustix::fs::{OFlags, fcntl_getfl};
    match fcntl_getfl(io::stdout()) {
        Ok(fl) if !fl.intersects(OFlags::WRONLY | OFlags::RDWR) => {
            Err(Error::InvalidInput(format!(
                "{role} - (stdout, {}): open for reading only (a `<` redirection?); nothing written",
                stdout_name()
            )))
        }
        _ => Ok(()),
    }
}

/// Empty stdout's file again and rewind it (a failed run on a redirected stdout it wrote
/// by position: see [`Output::seekable_stdout`]).
fn empty_stdout(f: impl std::os::fd::AsFd) {
    let fd = f.as_fd();
    let _ = rustix::fs::ftruncate(fd, 0);
    let _ = rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(0));
}

fn parent_dir(p: &Path) -> &Path {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Told (once per FIFO) that opening a FIFO OUTPUT waits for a reader that is not there yet.
static FIFO_WAIT: std::sync::OnceLock<fn(&Path)> = std::sync::OnceLock::new();

/// Have `note` called when a FIFO OUTPUT has no reader yet and the open is about to wait
/// (a tool on a terminal says so rather than seem to hang). Set once per process.
pub fn on_fifo_wait(note: fn(&Path)) {
    let _ = FIFO_WAIT.set(note);
}

/// Open a FIFO for writing. A non-blocking open tells whether a reader is there (ENXIO:
/// none); then the blocking open waits for one. Probing by opening and closing would not
/// do: a reader that sees its last writer close reads end of file and goes.
fn open_fifo(path: &Path) -> Result<File> {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    match OpenOptions::new()
        .write(true)
        .custom_flags(OFlags::NONBLOCK.bits() as i32)
        .open(path)
    {
        Ok(f) => {
            let fl = fcntl_getfl(&f).map_err(|e| Error::io("fcntl", e.into()))?;
            fcntl_setfl(&f, fl - OFlags::NONBLOCK).map_err(|e| Error::io("fcntl", e.into()))?;
            Ok(f)
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
            if let Some(note) = FIFO_WAIT.get() {
                note(path);
            }
            open_rw(path, false, false)
        }
        Err(e) => Err(Error::io("open", e)),
    }
}

fn open_rw(path: &Path, read: bool, exclusive: bool) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(read).write(true);
    if exclusive {
        o.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
    }
    o.open(path).map_err(|e| {
        if exclusive && e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
            Error::InvalidInput(format!(
                "{}: in use (mounted, or held by another program); nothing written",
                path.display()
            ))
        } else {
            Error::io("open", e)
        }
    })
}

/// Would opening `path` for writing succeed? Checked with the effective ids, as open(2)
/// checks them; no open for writing, so a dry run leaves no trace (not even a udev event).
/// access(2) does not look at an append-only flag, which makes open(2) fail (and a rename
/// over the file too): that is read from the file's flags.
fn check_writable(path: &Path) -> Result<()> {
    rustix::fs::accessat(
        rustix::fs::CWD,
        path,
        rustix::fs::Access::WRITE_OK,
        rustix::fs::AtFlags::EACCESS,
    )
    .map_err(|e| Error::io("open", io::Error::from(e)))?;
    // Regular files only: opening a device, even to read, can act (a tape rewinds).
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    let flags = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    )
    .and_then(|fd| {
        if rustix::fs::fstat(&fd)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
        {
            rustix::fs::ioctl_getflags(&fd)
        } else {
            Ok(rustix::fs::IFlags::empty())
        }
    });
    if flags.is_ok_and(|f| f.intersects(rustix::fs::IFlags::APPEND | rustix::fs::IFlags::IMMUTABLE))
    {
        return Err(Error::io(
            "open",
            io::Error::from_raw_os_error(rustix::io::Errno::PERM.raw_os_error()),
        ));
    }
    Ok(())
}

/// May the file at `path` be replaced by renaming another over it? Not when it is a mount
/// point (a file bind-mounted there: EBUSY), nor in a sticky folder (such as /tmp) when the
/// caller owns neither the file nor the folder and is not root (EPERM). Known before the
/// work starts, so that the run writes the file itself instead of failing at its end.
fn rename_allowed(path: &Path, meta: Option<&Metadata>) -> bool {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    if rustix::fs::statx(
        rustix::fs::CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT,
        StatxFlags::empty(),
    )
    .is_ok_and(|x| x.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
    {
        return false;
    }
    let euid = rustix::process::geteuid();
    if euid.is_root() {
        return true;
    }
    let Ok(dir) = std::fs::metadata(parent_dir(path)) else {
        return true;
    };
    let sticky = dir.mode() & 0o1000 != 0;
    let owner = |uid: u32| uid == euid.as_raw();
    !sticky || owner(dir.uid()) || meta.is_some_and(|m| owner(m.uid()))
}

/// A file or device holding a mounted filesystem is never written in place: a file through
/// the loop device it backs (which no exclusive open of the file itself would notice).
/// Replacing the file (a new inode) leaves the mounted one alone, so only in-place writes
/// are checked.
fn refuse_mounted(req: &Request<'_>, path: &Path) -> Result<()> {
    use crate::mount::{MountState, mount_state};
    let state = mount_state(path);
    if state == MountState::NotMounted {
        return match crate::mount::held_loop_device(path) {
            Some(dev) => Err(Error::InvalidInput(format!(
                "{} {} is under {dev}, which is in use (held by another program: device mapper, md, an exclusive open); refusing to write under it, nothing written",
                req.role,
                shown(req.path),
            ))),
            None => Ok(()),
        };
    }
    Err(Error::InvalidInput(format!(
        "{} {} holds the filesystem mounted {}; refusing to write into a mounted filesystem, nothing written",
        req.role,
        shown(req.path),
        state.place()
    )))
}

/// An existing qcow2 image is never written by position: its bytes are not the disk's, so
/// a raw image written into it would break the container (and the data it holds).
fn refuse_qcow2(req: &Request<'_>, file: &File) -> Result<()> {
    let mut magic = [0u8; 4];
    let n = crate::io::pread_full(file, &mut magic, 0).unwrap_or(0);
    if crate::qcow2::is_qcow2(&magic[..n]) {
        return Err(Error::InvalidInput(format!(
            "{} {} is a qcow2 image: writing a raw image into it by position would break it; nothing written (convert it with qcow2-to-raw first, or write a new file)",
            req.role,
            shown(req.path)
        )));
    }
    Ok(())
}

/// A regular file written at bytes up to `end`: refused before the first write when no file
/// of that size is possible there (past 2^63 - 1, or past the largest file its filesystem
/// holds, which lseek(2) checks), rather than failing at a write in the middle of the run.
pub fn check_file_end(file: &File, end: u64) -> Result<()> {
    let fits = i64::try_from(end).is_ok()
        && rustix::fs::seek(file, rustix::fs::SeekFrom::Start(end)).is_ok();
    if fits {
        Ok(())
    } else {
        Err(Error::too_large(end))
    }
}

/// OUTPUT resolved.
struct Resolved {
    /// The path to open: the end of its symlinks; or the name as given when a link on the
    /// way is one of the kernel's (`/proc/self/fd/N`, `/dev/stdout`) whose text names no
    /// file (a pipe, a socket, a deleted file).
    path: PathBuf,
    /// What it is, when it exists.
    meta: Option<Metadata>,
    /// `path` is a name in a folder, which a new file may be renamed over.
    renamable: bool,
}

fn resolve(given: &Path) -> Result<Resolved> {
    let followed = follow_links(given)?;
    match std::fs::metadata(given) {
        Ok(m) => {
            let same = std::fs::metadata(&followed)
                .is_ok_and(|f| f.dev() == m.dev() && f.ino() == m.ino());
            Ok(Resolved {
                path: if same { followed } else { given.to_path_buf() },
                meta: Some(m),
                renamable: same,
            })
        }
        // A dangling link names the file to create.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Resolved {
            path: followed,
            meta: None,
            renamable: true,
        }),
        Err(e) => Err(Error::io("stat", e)),
    }
}

/// Follow the symlinks of `p` to the path they end at, which need not exist (a dangling
/// link names the file to create). Only the last component is followed: folders on the way
/// are the system's business.
pub fn follow_links(p: &Path) -> Result<PathBuf> {
    let mut cur = p.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&cur).map_err(|e| Error::io("readlink", e))?;
                cur = if to.is_absolute() {
                    to
                } else {
                    parent_dir(&cur).join(to)
                };
            }
            _ => return Ok(cur),
        }
    }
    Err(Error::io(
        "open",
        io::Error::from_raw_os_error(rustix::io::Errno::LOOP.raw_os_error()),
    ))
}

/// Refuse an OUTPUT that another user planted in a world-writable sticky folder (`/tmp`): a
/// symlink on the way to it, or the file or FIFO itself, owned by neither the caller nor the
/// folder's owner. Followed, root's image would replace (or fill) whatever the link names
/// (`/tmp/sdb1.img -> /etc/shadow`); written, the file keeps its owner, who reads the image
/// of a disk only root may read. The kernel refuses both (`fs.protected_symlinks`,
/// `protected_regular`, `protected_fifos`) where enabled; links are followed here by hand,
/// so the rule is applied here, always.
fn refuse_planted(req: &Request<'_>) -> Result<()> {
    let euid = rustix::process::geteuid().as_raw();
    let mut cur = req.path.to_path_buf();
    for _ in 0..40 {
        let Ok(m) = std::fs::symlink_metadata(&cur) else {
            return Ok(());
        };
        if m.file_type().is_dir() {
            return Ok(());
        }
        if let Ok(dir) = std::fs::metadata(parent_dir(&cur)) {
            let open_sticky = dir.mode() & 0o1002 == 0o1002;
            if open_sticky && m.uid() != euid && m.uid() != dir.uid() {
                let what = if m.file_type().is_symlink() {
                    "a symbolic link"
                } else if m.file_type().is_fifo() {
                    "a FIFO"
                } else {
                    "a file"
                };
                let it = if cur == req.path {
                    String::new()
                } else {
                    format!(": {} on the way", cur.display())
                };
                return Err(Error::InvalidInput(format!(
                    "{} {}{it} is {what} of user {} in a folder anyone may write to (sticky): not written through, as the kernel's protected_symlinks and protected_regular refuse it; nothing written (remove it, or choose another name)",
                    req.role,
                    shown(req.path),
                    m.uid()
                )));
            }
        }
        if !m.file_type().is_symlink() {
            return Ok(());
        }
        let Ok(to) = std::fs::read_link(&cur) else {
            return Ok(());
        };
        cur = if to.is_absolute() {
            to
        } else {
            parent_dir(&cur).join(to)
        };
    }
    Ok(())
}

/// A new regular file is never created in /dev (devtmpfs, or whatever is mounted there):
/// a name there that does not exist is a disk or partition that is not there (unplugged,
/// not yet scanned, misspelled), and the image would go to a file in memory that vanishes
/// at the next boot, the run reporting success.
fn refuse_device_folder(req: &Request<'_>, path: &Path) -> Result<()> {
    let Ok(dir) = std::fs::metadata(parent_dir(path)) else {
        return Ok(());
    };
    let Some(m) = crate::mount::mounted_by_dev(dir.dev()) else {
        return Ok(());
    };
    if m.fstype != "devtmpfs" && m.mount_point != "/dev" {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "{} {} does not exist, and {} holds device nodes, not images: no such disk or partition (not attached, or misspelled?); refusing to create a file there, nothing written",
        req.role,
        shown(req.path),
        m.mount_point
    )))
}

/// Refuse an OUTPUT (stat'ed as `meta`, or new) that shares bytes with what the run reads,
/// or that is a file (existing or new) on a mounted filesystem the run reads (`home`: the
/// `st_dev` of the filesystem the file is on): writing it would change the filesystem
/// under the capture, and could fill it.
fn refuse_overlap(
    req: &Request<'_>,
    path: &Path,
    meta: Option<&Metadata>,
    home: Option<u64>,
    reads: &[(&str, &Path)],
    source_range: Option<std::ops::Range<u64>>,
) -> Result<()> {
    let out = meta.map(|m| Footprint::of(path, m)).unwrap_or_default();
    let home_fp = home.and_then(|d| Footprint::of_device(d).map(|fp| (d, fp)));
    for (i, (role, given)) in reads.iter().enumerate() {
        // Stdin redirected from a file (`< OUTPUT`) is that file.
        let (r, name) = if *given == Path::new("-") {
            (Path::new("/proc/self/fd/0"), "- (stdin)".to_string())
        } else {
            (*given, given.display().to_string())
        };
        let Ok(rm) = std::fs::metadata(r) else {
            continue;
        };
        let out_name = || {
            if path == Path::new("/proc/self/fd/1") {
                shown(path)
            } else {
                shown(req.path)
            }
        };
        let chain = {
            let dir = (*given != Path::new("-")).then(|| crate::qcow2::chain::folder_of(given));
            backing_chain(r, &rm, dir)
        };
        let inp = match &source_range {
            Some(range) if i == 0 && chain.is_empty() && !is_qcow2_file(r) => {
                Footprint::of_range(r, &rm, range.clone())
            }
            _ => Footprint::of(r, &rm),
        };
        if let Some(why) = out.overlap(&inp) {
            return Err(Error::InvalidInput(format!(
                "{} {} is {role} {name}{why}; refusing to write over what is being read, nothing written",
                req.role,
                out_name(),
            )));
        }
        if let Some((dev, fp)) = &home_fp
            && let Some(why) = fp.overlap(&inp)
        {
            let on = crate::mount::mounted_by_dev(*dev).map_or_else(String::new, |m| {
                format!(" mounted on {} from {}", m.mount_point, m.device)
            });
            return Err(Error::InvalidInput(format!(
                "{} {} is on the filesystem being read: {role} {name} holds the filesystem{on}{why}; writing there would change it while it is read, and could fill it; write to another filesystem, nothing written",
                req.role,
                out_name(),
            )));
        }
        // A qcow2 image reads through to its backing files and its data file: they are read
        // too.
        for (b, what) in chain {
            let Ok(bm) = std::fs::metadata(&b) else {
                continue;
            };
            if let Some(why) = out.overlap(&Footprint::of(&b, &bm)) {
                return Err(Error::InvalidInput(format!(
                    "{} {} is {}, {what} of {role} {name}{why}; refusing to write over what is being read, nothing written",
                    req.role,
                    out_name(),
                    b.display(),
                )));
            }
        }
    }
    Ok(())
}

/// Does the file or device at `path` hold a qcow2 image?
fn is_qcow2_file(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    let plain =
        std::fs::metadata(path).is_ok_and(|m| m.is_file() || m.file_type().is_block_device());
    plain
        && File::open(path).is_ok_and(|f| {
            crate::io::pread_full(&f, &mut magic, 0)
                .is_ok_and(|n| crate::qcow2::is_qcow2(&magic[..n]))
        })
}

/// The backing files of the qcow2 image at `path` (stat'ed as `meta`; relative backing
/// names resolve against `dir`, its folder), nearest first, then the chain's external data
/// files, each with what it is; none for anything else, or a chain that cannot be opened
/// (the run reports that when it opens its input).
fn backing_chain(path: &Path, meta: &Metadata, dir: Option<&Path>) -> Vec<(PathBuf, &'static str)> {
    use crate::io::{FileSource, ReadAt};
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return Vec::new();
    }
    let Ok(src) = FileSource::open(path, 0) else {
        return Vec::new();
    };
    let mut magic = [0u8; 4];
    if !src
        .read_at(&mut magic, 0)
        .is_ok_and(|n| crate::qcow2::is_qcow2(&magic[..n]))
    {
        return Vec::new();
    }
    let Ok(q) =
        crate::qcow2::chain::Qcow2Image::open_layers(src, dir, Some(ObjectId::of_metadata(meta)))
    else {
        return Vec::new();
    };
    let backing = q
        .backing_files()
        .iter()
        .map(|b| (b.clone(), "a backing file"));
    let data = q
        .data_files()
        .into_iter()
        .map(|d| (d, "an external data file"));
    backing.chain(data).collect()
}

/// Is the block device `rdev` read-only (`losetup -r`, `blockdev --setro`)? Opening it for
/// writing succeeds and every write fails: callers refuse it first.
pub fn is_read_only_device(rdev: u64) -> bool {
    sysfs_dir(rdev).is_some_and(|d| read_u64(&d.join("ro")) == Some(1))
}

/// Temporary files of this process that must not outlive it: a signal handler removes them
/// ([`remove_all`](pending::remove_all)) before the process dies.
pub mod pending {
    use super::*;

    static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub fn add(p: &Path) {
        if let Ok(mut v) = PATHS.lock() {
            v.push(p.to_path_buf());
        }
    }

    pub fn remove(p: &Path) {
        if let Ok(mut v) = PATHS.lock() {
            v.retain(|x| x != p);
        }
    }

    /// Stdout is a file this run writes by position (see [`Output::seekable_stdout`]).
    static STDOUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    pub fn add_stdout() {
        STDOUT.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn remove_stdout() {
        STDOUT.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    static CRITICAL: Mutex<()> = Mutex::new(());

    /// Held while a finished image is made visible (renamed into place, stdout's file
    /// handed back): [`remove_all`] never runs in the middle of it, and once it has run
    /// the commit waits for the process to die of its signal.
    pub fn committing() -> std::sync::MutexGuard<'static, ()> {
        critical()
    }

    /// From here on no thread of this process writes to a regular file or makes one
    /// longer: a file-size limit of 0 fails every such write and `set_len` (EFBIG; the
    /// SIGXFSZ it raises is caught). The other threads run on until the signal ends the
    /// process: a piece a copying thread wrote after stdout's file was emptied left
    /// hundreds of megabytes there, and a run finishing meanwhile set the image's full
    /// size again. A write already under way completes before the truncation, which
    /// waits for it.
    fn stop_file_growth() {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let maximum = getrlimit(Resource::Fsize).maximum;
        let _ = setrlimit(
            Resource::Fsize,
            Rlimit {
                current: Some(0),
                maximum,
            },
        );
    }

    /// Held while writes that only make sense together are made (e2i-install's superblock
    /// and its undo file's switch to the final copy): [`remove_all`], which a terminating
    /// signal calls before the process dies, waits for it to be released.
    pub fn critical() -> std::sync::MutexGuard<'static, ()> {
        CRITICAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The main thread ends the run from here on ([`hand_over`]).
    static MAIN_ENDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// Called holding [`critical`]: the run's writes are over, and the main thread itself
    /// ends the process (by a signal received meanwhile, after saying what was completed).
    /// A terminating signal's thread then leaves the process alone ([`remove_all`] returns
    /// false), rather than end it before that is said.
    pub fn hand_over() {
        MAIN_ENDS.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Remove every registered file, and empty stdout's file when it is registered (called
    /// on SIGINT, SIGTERM, SIGHUP), once no [`critical`] section is under way; the caller
    /// then ends the process. False, with nothing removed, when the main thread has taken
    /// over ending the run ([`hand_over`]).
    pub fn remove_all() -> bool {
        let guard = critical();
        if MAIN_ENDS.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        // Never released: the process dies of its signal right after. A commit waits for
        // it ([`committing`]), so a run cannot rename its image into place, or end stdout's
        // file and exit 0, after this emptied it; nor exit 1 on a write this failed.
        std::mem::forget(guard);
        remove_held();
        true
    }

    /// [`remove_all`] by a thread that holds [`critical`] (the main thread ending the run,
    /// or the signal's thread).
    pub fn remove_held() {
        stop_file_growth();
        if STDOUT.swap(false, std::sync::atomic::Ordering::SeqCst) {
            empty_stdout(io::stdout());
        }
        let v = match PATHS.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(_) => return,
        };
        for p in v {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_followed_to_their_end() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("sub/../t", d.path().join("l1")).unwrap();
        std::os::unix::fs::symlink("l1", d.path().join("l2")).unwrap();
        assert_eq!(
            follow_links(&d.path().join("l2")).unwrap(),
            d.path().join("sub/../t")
        );
        std::os::unix::fs::symlink("loop", d.path().join("loop")).unwrap();
        assert!(follow_links(&d.path().join("loop")).is_err());
    }

    #[test]
    fn room() {
        assert!(check_room(None, u64::MAX).is_ok());
        assert!(check_room(Some(10), 10).is_ok());
        assert!(matches!(
            check_room(Some(10), 11),
            Err(Error::NoRoom { have: 10, need: 11 })
        ));
    }
}
