//! The scrambled-image guard of the tools that write over what is already there: before a
//! scrambled image ([`crate::mark`]) is written onto an existing file or block device, look at
//! the filesystem there, and refuse when it is the one the image was taken from (unless the
//! user insists). A new file, stdout, or a target holding something else is never refused.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::path::Path;

use crate::ext4::Superblock;
use crate::ext4::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::io::{FileSource, ReadAt};
use crate::mark::{self, Action, Evidence, ImageFacts};
use crate::ops::input;
use crate::ops::install::find_superblock;
use crate::{Error, Result};

/// The superblock of the filesystem in the existing file or block device `target` at byte
/// `offset` (its primary, else a backup), if there is one. A target that does not exist, is
/// not a regular file or block device, cannot be read, or holds an image container (a
/// normal image, a qcow2 or a stream, which are not filesystems) has none.
pub fn target_superblock(
    target: &Path,
    offset: u64,
    geometry: Option<&Superblock>,
) -> Option<Superblock> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(target).ok()?;
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return None;
    }
    let src = FileSource::open(target, offset).ok()?;
    let mut head = vec![0u8; 2048];
    let n = src.read_at(&mut head, 0).ok()?;
    head.truncate(n);
    if input::detect(&head).is_some_and(|k| k != input::Kind::Raw) {
        return None;
    }
    find_superblock(&src, geometry).1
}

/// Refuse (exit 1, one line) to write the image `image` over `target` at byte `offset` when
/// it is judged scrambled and `target` holds the filesystem it was taken from, unless
/// `allow`. Returns the evidence when the write goes ahead all the same (`allow`), for a
/// warning.
pub fn refuse_scrambled(
    image: &ImageFacts,
    target: &Path,
    offset: u64,
    allow: bool,
) -> Result<Option<Evidence>> {
    if !image.is_scrambled() && image.superblock.is_none() {
        // Nothing says it is scrambled, and nothing to compare with the target.
        return Ok(None);
    }
    let geometry = image
        .superblock
        .as_deref()
        .and_then(|raw| Superblock::parse(raw, None).ok());
    let Some(t) = target_superblock(target, offset, geometry.as_ref()) else {
        return Ok(None);
    };
    let Some(ev) = mark::refusal(image, Some(t.raw()), true) else {
        return Ok(None);
    };
    if allow {
        return Ok(Some(ev));
    }
    Err(Error::InvalidInput(mark::refusal_message(
        &ev,
        &target.display().to_string(),
        Action::Write,
    )))
}

/// What a filesystem SOURCE (a raw image, a device or a qcow2 image; the filesystem at
/// byte `offset`) of `e2i-capture` or `e2i-move` says about being scrambled: its
/// superblock's mark, a qcow2's extension. Only the marks count here: a SOURCE is usually a
/// real filesystem, whose blank label and last-mounted path say nothing (the comparison
/// with the target is for converter INPUTs, which are images).
pub fn source_facts(source: &Path, offset: u64) -> ImageFacts {
    let Ok(src) = crate::ops::capture::open_source(source, offset) else {
        return ImageFacts::default();
    };
    let mut raw = [0u8; SUPERBLOCK_SIZE];
    let mut f = match src.read_at(&mut raw, SUPERBLOCK_OFFSET) {
        Ok(SUPERBLOCK_SIZE) => ImageFacts::from_superblock(&raw),
        _ => ImageFacts::default(),
    };
    if crate::ops::capture::qcow2_is_marked(source) {
        f.add(Evidence::Qcow2Extension);
    }
    f.vouched = !f.is_scrambled();
    f
}

/// What a filesystem SOURCE about to be captured with `-s` is: its UUID and superblock
/// (read at `offset`), and the scramble option as the evidence.
pub fn capture_facts(src: &dyn ReadAt) -> ImageFacts {
    let mut raw = [0u8; SUPERBLOCK_SIZE];
    let mut f = match src.read_at(&mut raw, SUPERBLOCK_OFFSET) {
        Ok(SUPERBLOCK_SIZE) => ImageFacts::from_superblock(&raw),
        _ => ImageFacts::default(),
    };
    f.add(Evidence::ScrambleOption);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/sample.ext4");
        std::fs::read(path).expect("testdata/sample.ext4")
    }

    fn file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// What counts as a filesystem target: a raw filesystem at the offset (primary
    /// superblock, or a backup), not an image container, not a missing file or a FIFO.
    #[test]
    fn target_superblocks() {
        let d = tempfile::tempdir().unwrap();
        let fs = sample();
        let uuid = ImageFacts::from_superblock(fs[1024..2048].try_into().unwrap()).uuid;
        let found = |p: &Path, off: u64| target_superblock(p, off, None).map(|s| Some(s.uuid()));
        let plain = file(d.path(), "fs.img", &fs);
        assert_eq!(found(&plain, 0), Some(uuid));
        assert_eq!(found(&plain, 4096), None, "nothing at that offset");
        assert_eq!(found(&plain, u64::MAX), None, "offset past the end");
        let mut at = vec![0u8; 1 << 20];
        at.extend_from_slice(&fs);
        let disk = file(d.path(), "disk.img", &at);
        assert_eq!(found(&disk, 1 << 20), Some(uuid));
        // Image containers are not filesystems, even with a superblock at byte 1024.
        for magic in [
            &b"QFI\xfb\0\0\0\x02"[..],
            b"E2ISTRM\0",
            &[0x10, 0xb7, 0x2b, 0x7f],
        ] {
            let mut c = fs.clone();
            c[..magic.len()].copy_from_slice(magic);
            let p = file(d.path(), "container", &c);
            assert_eq!(found(&p, 0), None, "{magic:?}");
        }
        assert_eq!(found(&d.path().join("missing"), 0), None);
        assert_eq!(found(d.path(), 0), None, "a folder");
    }

    /// A scrambled image is refused over its own filesystem, allowed elsewhere, and with
    /// `allow` comes back as a warning.
    #[test]
    fn refuse_scrambled_over_its_filesystem_only() {
        let d = tempfile::tempdir().unwrap();
        let fs = sample();
        let target = file(d.path(), "fs.img", &fs);
        let mut raw: [u8; SUPERBLOCK_SIZE] = fs[1024..2048].try_into().unwrap();
        assert!(mark::mark_superblock(&mut raw));
        let image = ImageFacts::from_superblock(&raw);
        let err = refuse_scrambled(&image, &target, 0, false).unwrap_err();
        assert!(err.to_string().contains("--allow-scrambled"), "{err}");
        assert_eq!(
            refuse_scrambled(&image, &target, 0, true).unwrap(),
            Some(Evidence::Superblock)
        );
        assert_eq!(
            refuse_scrambled(&image, &target, 1024, false).unwrap(),
            None
        );
        let new = d.path().join("new.raw");
        assert_eq!(refuse_scrambled(&image, &new, 0, false).unwrap(), None);
        // Not scrambled: nothing to refuse.
        let plain = ImageFacts::from_superblock(fs[1024..2048].try_into().unwrap());
        assert_eq!(refuse_scrambled(&plain, &target, 0, false).unwrap(), None);
    }
}
