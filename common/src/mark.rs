//! Scrambled images (`-s`): the mark every format carries, how an image is judged scrambled,
//! and when writing one over a filesystem must be refused.
//!
//! A scrambled image is a valid filesystem whose names, symlink targets, inline file data,
//! xattrs, journal, label and last-mounted path are not the original's. Written back over the
//! filesystem it was taken from (`e2i-install`, a converter onto its device) it replaces them
//! silently: e2fsck finds nothing wrong, the data is simply gone. So a scrambled image says
//! so, in every place its format has for it:
//!
//! | where | mark | why it is safe there |
//! |---|---|---|
//! | the superblock (every format; the only place raw images have) | `s_last_mounted` reads [`SUPERBLOCK_TEXT`] | `-s` blanks the field anyway; it travels with the filesystem through conversions and re-captures, and `dumpe2fs` shows it |
//! | e2i stream | header flag [`crate::stream::flags::SCRAMBLED`] | readers ignore unknown flags |
//! | normal image | `fs_reserved[0..2]` of the header: [`crate::normal::E2I_MARK_MAGIC`] and flags ([`crate::normal::E2I_FLAG_SCRAMBLED`]) | nothing in e2fsprogs reads `fs_reserved` |
//! | qcow2 | header extension [`QCOW2_EXTENSION`]: 4 bytes, big-endian flags ([`QCOW2_FLAG_SCRAMBLED`]) | qemu ignores extensions it does not know and keeps them when it rewrites the header; e2image reads no extensions |
//!
//! Images made before the mark existed are recognised by what `-s` leaves behind: a normal
//! image whose header names neither the host nor the device ([`Evidence::BlankHostFields`]:
//! e2image and an unscrambled capture always name the device), and a raw or qcow2 image
//! whose label and last-mounted path are blank where the target's are not
//! ([`Evidence::BlankStrings`]).
//!
//! Conversions of such an older image add the superblock mark to what they write
//! ([`MarkedSource`], [`chunk_with_mark`]), so that it survives where no container does.
//!
//! [`refusal`] decides: an image judged scrambled is not written over a filesystem with its
//! UUID unless the user says so (`--allow-scrambled`); `e2i-install` refuses it anywhere,
//! always.
//! A target whose own superblock carries the mark is already scrambled: nothing real is lost
//! there, so it is never refused.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::fmt;

use crate::bytes::le;
use crate::ext4::csum;
use crate::ext4::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::io::ReadAt;

/// What `s_last_mounted` of a scrambled image's superblock reads (NUL-padded to 64 bytes).
pub const SUPERBLOCK_TEXT: &[u8] = b"<scrambled by e2i-capture -s>";
/// `s_magic`.
const S_MAGIC: usize = 0x38;
/// `s_volume_name[16]`.
const S_VOLUME_NAME: usize = 0x78;
/// `s_last_mounted[64]`.
const S_LAST_MOUNTED: usize = 0x88;
const LAST_MOUNTED_LEN: usize = 64;
const LABEL_LEN: usize = 16;
const EXT2_SUPER_MAGIC: u16 = 0xEF53;

/// qcow2 header extension type of e2i's marks ("e2iS"); not one qemu defines.
pub const QCOW2_EXTENSION: u32 = 0x6532_6953;
/// In the extension's flags: the image was scrambled.
pub const QCOW2_FLAG_SCRAMBLED: u32 = 1 << 0;

/// What an image writer records about the image beyond its blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// The image is scrambled (`-s`, or made from a scrambled image).
    pub scrambled: bool,
}

/// Is `raw` (at least a superblock's bytes) an ext2/3/4 superblock carrying the mark?
pub fn superblock_is_marked(raw: &[u8]) -> bool {
    let Some(field) = raw.get(S_LAST_MOUNTED..S_LAST_MOUNTED + LAST_MOUNTED_LEN) else {
        return false;
    };
    let (text, rest) = field.split_at(SUPERBLOCK_TEXT.len());
    le::get_u16(raw, S_MAGIC) == Some(EXT2_SUPER_MAGIC)
        && text == SUPERBLOCK_TEXT
        && rest.iter().all(|&b| b == 0)
}

/// Write the mark into a superblock: `s_last_mounted` becomes [`SUPERBLOCK_TEXT`]. The
/// checksum (metadata_csum) is recomputed when it was right before, as `-s` does for the
/// fields it blanks; a superblock without the ext2/3/4 magic is left alone. Returns whether
/// the bytes changed.
pub fn mark_superblock(raw: &mut [u8; SUPERBLOCK_SIZE]) -> bool {
    if le::u16(raw, S_MAGIC) != EXT2_SUPER_MAGIC || superblock_is_marked(raw) {
        return false;
    }
    let was_valid = csum::superblock_csum_verify(raw);
    let field = &mut raw[S_LAST_MOUNTED..S_LAST_MOUNTED + LAST_MOUNTED_LEN];
    field.fill(0);
    field[..SUPERBLOCK_TEXT.len()].copy_from_slice(SUPERBLOCK_TEXT);
    if was_valid {
        csum::superblock_csum_set(raw);
    }
    true
}

/// Mark the superblock in `data`, consecutive filesystem bytes starting at byte `first`,
/// when they hold all of it (a superblock never straddles a block, and callers pass whole
/// blocks). Returns whether the bytes changed. How a conversion of a scrambled stream made
/// before the superblock mark existed adds it to what it writes.
pub fn mark_in_chunk(first: u64, data: &mut [u8]) -> bool {
    let Some(at) = SUPERBLOCK_OFFSET
        .checked_sub(first)
        .and_then(|a| usize::try_from(a).ok())
    else {
        return false;
    };
    at.checked_add(SUPERBLOCK_SIZE)
        .and_then(|end| data.get_mut(at..end))
        .and_then(|r| <&mut [u8; SUPERBLOCK_SIZE]>::try_from(r).ok())
        .is_some_and(mark_superblock)
}

/// `data` (consecutive filesystem bytes from byte `first`) with the superblock marked
/// ([`mark_in_chunk`]); borrowed unchanged when it holds no superblock lacking the mark.
pub fn chunk_with_mark(first: u64, data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let end = first.saturating_add(data.len() as u64);
    let holds = first <= SUPERBLOCK_OFFSET
        && end >= SUPERBLOCK_OFFSET.saturating_add(SUPERBLOCK_SIZE as u64);
    if holds {
        let mut v = data.to_vec();
        if mark_in_chunk(first, &mut v) {
            return std::borrow::Cow::Owned(v);
        }
    }
    std::borrow::Cow::Borrowed(data)
}

/// A filesystem source whose superblock (bytes 1024..2048) reads as marked: how a
/// conversion of a scrambled image made before the superblock mark existed (a marked
/// container, or a normal image with blank host fields) adds it to what it writes.
pub struct MarkedSource<S> {
    inner: S,
    /// The marked superblock, when the source's lacked the mark.
    superblock: Option<Box<[u8; SUPERBLOCK_SIZE]>>,
}

impl<S: ReadAt> MarkedSource<S> {
    /// Wrap `inner`; when `mark` is false, or its superblock cannot be read or already
    /// carries the mark, reads pass through unchanged.
    pub fn new(inner: S, mark: bool) -> Self {
        let mut raw = [0u8; SUPERBLOCK_SIZE];
        let superblock = (mark
            && inner.read_at(&mut raw, SUPERBLOCK_OFFSET).ok() == Some(SUPERBLOCK_SIZE)
            && mark_superblock(&mut raw))
        .then(|| Box::new(raw));
        MarkedSource { inner, superblock }
    }
}

impl<S: ReadAt> ReadAt for MarkedSource<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        if let Some(sb) = &self.superblock {
            // The overlap of [offset, offset + n) with the superblock's bytes.
            let end = offset.saturating_add(n as u64);
            let lo = offset.max(SUPERBLOCK_OFFSET);
            let hi = end.min(SUPERBLOCK_OFFSET.saturating_add(SUPERBLOCK_SIZE as u64));
            if lo < hi {
                // All three differences are below n or SUPERBLOCK_SIZE: they fit a usize.
                let small = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
                let (b, s, len) = (
                    small(lo.saturating_sub(offset)),
                    small(lo.saturating_sub(SUPERBLOCK_OFFSET)),
                    small(hi.saturating_sub(lo)),
                );
                if let (Some(d), Some(src)) = (
                    buf.get_mut(b..b.saturating_add(len)),
                    sb.get(s..s.saturating_add(len)),
                ) {
                    d.copy_from_slice(src);
                }
            }
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn data_region(&self, offset: u64) -> crate::Result<Option<std::ops::Range<u64>>> {
        // The superblock is never a hole of a filesystem source: regions pass through.
        self.inner.data_region(offset)
    }

    fn will_need(&self, offset: u64, len: u64) {
        self.inner.will_need(offset, len)
    }
}

/// A NUL-terminated text field, lossily decoded; empty when blank.
fn text_field(raw: &[u8], off: usize, len: usize) -> String {
    let f = raw.get(off..off.saturating_add(len)).unwrap_or_default();
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    String::from_utf8_lossy(&f[..end]).into_owned()
}

/// The volume label of a superblock (empty when none).
pub fn label(raw: &[u8]) -> String {
    text_field(raw, S_VOLUME_NAME, LABEL_LEN)
}

/// The last-mounted path of a superblock (empty when none).
pub fn last_mounted(raw: &[u8]) -> String {
    text_field(raw, S_LAST_MOUNTED, LAST_MOUNTED_LEN)
}

/// Why an image is judged scrambled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// `-s` was given (the image is being made).
    ScrambleOption,
    /// The e2i stream's header flag.
    StreamFlag,
    /// The mark in a normal image's header.
    NormalHeader,
    /// e2i's qcow2 header extension.
    Qcow2Extension,
    /// The mark in the image's superblock.
    Superblock,
    /// A normal image whose header names neither the host nor the device: what `-s` made
    /// before the mark existed (e2image and unscrambled captures always name the device).
    BlankHostFields,
    /// The image's label and last-mounted path are blank where the target's read these:
    /// what `-s` made of a raw or qcow2 image before the mark existed.
    BlankStrings { label: String, last_mounted: String },
}

impl Evidence {
    /// A mark, rather than a sign.
    pub fn is_certain(&self) -> bool {
        !matches!(
            self,
            Evidence::BlankHostFields | Evidence::BlankStrings { .. }
        )
    }

    /// Which evidence a message names when there are several: the option, then the
    /// format's own mark, then the superblock's, then the signs.
    fn rank(&self) -> u8 {
        match self {
            Evidence::ScrambleOption => 0,
            Evidence::StreamFlag | Evidence::NormalHeader | Evidence::Qcow2Extension => 1,
            Evidence::Superblock => 2,
            Evidence::BlankHostFields => 3,
            Evidence::BlankStrings { .. } => 4,
        }
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::ScrambleOption => f.write_str("-s"),
            Evidence::StreamFlag => f.write_str("its stream header says so"),
            Evidence::NormalHeader => f.write_str("its header carries e2i's scrambled mark"),
            Evidence::Qcow2Extension => {
                f.write_str("its qcow2 header carries e2i's scrambled mark")
            }
            Evidence::Superblock => {
                f.write_str("its superblock's last-mounted path reads ")?;
                f.write_str(&String::from_utf8_lossy(SUPERBLOCK_TEXT))
            }
            Evidence::BlankHostFields => f.write_str(
                "its header names neither the host nor the device, as e2i-capture -s leaves it",
            ),
            Evidence::BlankStrings {
                label,
                last_mounted,
            } => {
                let mut had = Vec::new();
                if !label.is_empty() {
                    had.push(format!("label {label:?}"));
                }
                if !last_mounted.is_empty() {
                    had.push(format!("last-mounted path {last_mounted:?}"));
                }
                write!(
                    f,
                    "its label and last-mounted path are blank, as e2i-capture -s leaves them, where the target has {}",
                    had.join(" and ")
                )
            }
        }
    }
}

/// What is known about an image before it is written somewhere.
#[derive(Debug, Clone, Default)]
pub struct ImageFacts {
    /// The filesystem's UUID, when the image shows it.
    pub uuid: Option<[u8; 16]>,
    /// The image's superblock, when it holds a valid one.
    pub superblock: Option<Box<[u8; SUPERBLOCK_SIZE]>>,
    /// Why the image is judged scrambled, from the image alone (empty: it is not).
    pub evidence: Vec<Evidence>,
    /// The image itself says it was not scrambled (a normal header naming its host and
    /// device, a stream without the flag): the comparison with the target is not needed.
    pub vouched: bool,
}

impl ImageFacts {
    /// Facts from the image's superblock bytes (its UUID and mark).
    pub fn from_superblock(raw: &[u8; SUPERBLOCK_SIZE]) -> ImageFacts {
        let mut f = ImageFacts::default();
        f.set_superblock(raw);
        f
    }

    /// Take the UUID and the mark from the image's superblock (ignored without the magic).
    pub fn set_superblock(&mut self, raw: &[u8; SUPERBLOCK_SIZE]) {
        if le::u16(raw, S_MAGIC) != EXT2_SUPER_MAGIC {
            return;
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&raw[0x68..0x78]);
        self.uuid.get_or_insert(uuid);
        if superblock_is_marked(raw) {
            self.add(Evidence::Superblock);
        }
        self.superblock = Some(Box::new(*raw));
    }

    /// Record a piece of evidence (once).
    pub fn add(&mut self, e: Evidence) {
        if !self.evidence.contains(&e) {
            self.evidence.push(e);
        }
    }

    /// The image itself says it is scrambled (marked, or a normal image with blank host
    /// fields).
    pub fn is_scrambled(&self) -> bool {
        !self.evidence.is_empty()
    }

    /// What a writer converting this image records: the scrambled mark travels on.
    pub fn marks(&self) -> Marks {
        Marks {
            scrambled: self.is_scrambled(),
        }
    }
}

/// The one piece of evidence a refusal names: certain before probable.
fn strongest(ev: &[Evidence]) -> Option<&Evidence> {
    ev.iter().min_by_key(|e| e.rank())
}

/// Why writing `image` over `target` (the superblock of the filesystem found there, if
/// any) must be refused; `None` when it may go ahead.
///
/// `same_fs_only`: refuse only over a filesystem with the image's UUID (the converters and
/// `e2i-capture`, which may write a scrambled image anywhere else); without it every target
/// is protected (`e2i-install`, whose only purpose is to put metadata back).
pub fn refusal(
    image: &ImageFacts,
    target: Option<&[u8; SUPERBLOCK_SIZE]>,
    same_fs_only: bool,
) -> Option<Evidence> {
    if target.is_some_and(|t| superblock_is_marked(t)) {
        // Already scrambled: nothing real to lose.
        return None;
    }
    if same_fs_only {
        let same = target.is_some_and(|t| image.uuid.is_some_and(|u| u[..] == t[0x68..0x78]));
        if !same {
            return None;
        }
    }
    if let Some(e) = strongest(&image.evidence) {
        return Some(e.clone());
    }
    if image.vouched {
        return None;
    }
    let (isb, t) = (image.superblock.as_deref()?, target?);
    let (t_label, t_mounted) = (label(t), last_mounted(t));
    let blank = label(isb).is_empty() && last_mounted(isb).is_empty();
    (blank && !(t_label.is_empty() && t_mounted.is_empty())).then_some(Evidence::BlankStrings {
        label: t_label,
        last_mounted: t_mounted,
    })
}

/// The tool about to write a scrambled image, for the refusal's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `e2i-install`: the inode tables, bitmaps, descriptors and superblock.
    Install,
    /// A converter or `e2i-capture` writing the whole image over a filesystem.
    Write,
}

/// The one-line refusal: what the image is, what would be lost, how to proceed.
pub fn refusal_message(ev: &Evidence, target: &str, action: Action) -> String {
    let what = if ev.is_certain() {
        "the image is scrambled"
    } else {
        "the image is probably scrambled"
    };
    match action {
        Action::Install => format!(
            "{what} ({ev}): it would replace the names in inline directories, symlink targets, \
             inline file data, in-inode xattrs, label and last-mounted path on {target} with \
             scrambled ones; nothing written (a scrambled image is never installed, --force \
             or not, except onto a scrambled copy)"
        ),
        Action::Write => format!(
            "{what} ({ev}) and {target} holds the filesystem it was taken from: writing it \
             there would replace its file names, symlink targets, inline file data, xattrs, \
             journal, label and last-mounted path with scrambled ones; nothing written (write it \
             to a new file instead, or add --allow-scrambled)"
        ),
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)] // tests compute expected values freely
mod tests {
    use super::*;

    fn sb(label_: &str, mounted: &str, uuid: u8, metadata_csum: bool) -> [u8; SUPERBLOCK_SIZE] {
        let mut r = [0u8; SUPERBLOCK_SIZE];
        le::set_u16(&mut r, S_MAGIC, EXT2_SUPER_MAGIC);
        r[0x68..0x78].fill(uuid);
        r[S_VOLUME_NAME..][..label_.len()].copy_from_slice(label_.as_bytes());
        r[S_LAST_MOUNTED..][..mounted.len()].copy_from_slice(mounted.as_bytes());
        if metadata_csum {
            // s_feature_ro_compat: metadata_csum.
            le::set_u32(&mut r, 0x64, 0x400);
            csum::superblock_csum_set(&mut r);
        }
        r
    }

    #[test]
    fn superblock_mark_round_trips_and_keeps_the_checksum_valid() {
        let mut r = sb("", "/mnt/secret", 1, true);
        assert!(!superblock_is_marked(&r));
        assert!(mark_superblock(&mut r));
        assert!(superblock_is_marked(&r));
        assert!(csum::superblock_csum_verify(&r));
        assert!(!mark_superblock(&mut r), "marking twice changes nothing");
        // A wrong checksum stays wrong (as -s leaves it).
        let mut bad = sb("", "", 1, true);
        bad[0x3FC] ^= 1;
        mark_superblock(&mut bad);
        assert!(superblock_is_marked(&bad) && !csum::superblock_csum_verify(&bad));
        // Not a superblock: untouched.
        let mut zero = [0u8; SUPERBLOCK_SIZE];
        assert!(!mark_superblock(&mut zero));
        assert_eq!(zero, [0u8; SUPERBLOCK_SIZE]);
        // A longer text that starts like the mark is not the mark.
        let mut long = sb("", "<scrambled by e2i-capture -s>x", 1, false);
        assert!(!superblock_is_marked(&long));
        long[S_MAGIC] = 0;
        assert!(!superblock_is_marked(&long[..100]));
    }

    #[test]
    fn refusal_table() {
        let real = sb("MYLABEL", "/srv", 7, true);
        let other = sb("OTHER", "/x", 8, true);
        let mut marked_target = real;
        mark_superblock(&mut marked_target);
        let blank = sb("", "", 7, true);
        let mut marked_image = blank;
        mark_superblock(&mut marked_image);

        let facts = |raw: &[u8; SUPERBLOCK_SIZE], ev: &[Evidence], vouched: bool| {
            let mut f = ImageFacts::from_superblock(raw);
            for e in ev {
                f.add(e.clone());
            }
            f.vouched = vouched;
            f
        };
        let marked = facts(&marked_image, &[], false);
        let old_normal = facts(&blank, &[Evidence::BlankHostFields], false);
        let unmarked = facts(&blank, &[], false);
        let vouched = facts(&blank, &[], true);
        let named = facts(&real, &[], false);
        let flagged = facts(&blank, &[Evidence::StreamFlag], false);

        type Case<'a> = (
            &'a str,
            &'a ImageFacts,
            Option<&'a [u8; SUPERBLOCK_SIZE]>,
            bool,
            Option<bool>,
        );
        // (what, image, target, same_fs_only, expected: None = allowed, Some(certain))
        let cases: [Case; 13] = [
            ("marked onto its fs", &marked, Some(&real), true, Some(true)),
            ("marked onto another fs", &marked, Some(&other), true, None),
            ("marked onto no fs", &marked, None, true, None),
            (
                "marked, install anywhere",
                &marked,
                Some(&other),
                false,
                Some(true),
            ),
            (
                "marked, install onto no fs",
                &marked,
                None,
                false,
                Some(true),
            ),
            (
                "marked onto a scrambled copy",
                &marked,
                Some(&marked_target),
                true,
                None,
            ),
            (
                "install onto a scrambled copy",
                &marked,
                Some(&marked_target),
                false,
                None,
            ),
            (
                "old normal onto its fs",
                &old_normal,
                Some(&real),
                true,
                Some(false),
            ),
            (
                "stream flag onto its fs",
                &flagged,
                Some(&real),
                true,
                Some(true),
            ),
            (
                "unmarked blank onto labelled fs",
                &unmarked,
                Some(&real),
                true,
                Some(false),
            ),
            (
                "unmarked blank onto blank fs",
                &unmarked,
                Some(&blank),
                true,
                None,
            ),
            (
                "vouched blank onto labelled fs",
                &vouched,
                Some(&real),
                true,
                None,
            ),
            (
                "labelled image onto its fs",
                &named,
                Some(&real),
                true,
                None,
            ),
        ];
        for (what, image, target, same, expect) in cases {
            let got = refusal(image, target, same);
            assert_eq!(
                got.as_ref().map(Evidence::is_certain),
                expect,
                "{what}: {got:?}"
            );
        }
        let Some(e @ Evidence::BlankStrings { .. }) = refusal(&unmarked, Some(&real), true) else {
            panic!("expected BlankStrings");
        };
        let msg = refusal_message(&e, "/dev/sdb1", Action::Write);
        assert!(
            msg.contains("\"MYLABEL\"") && msg.contains("\"/srv\""),
            "{msg}"
        );
        assert!(
            msg.contains("probably") && msg.contains("--allow-scrambled"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }

    /// Arbitrary bytes as superblocks: marking, reading and judging never panic, and a
    /// marked superblock always reads as marked.
    #[test]
    fn random_superblocks_never_panic() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..3000 {
            let mut r = [0u8; SUPERBLOCK_SIZE];
            for b in r.iter_mut() {
                *b = next() as u8;
            }
            if i % 2 == 0 {
                le::set_u16(&mut r, S_MAGIC, EXT2_SUPER_MAGIC);
            }
            let t = r;
            let _ = (
                label(&r),
                last_mounted(&r),
                superblock_is_marked(&r[..(i % 300)]),
            );
            let marked = mark_superblock(&mut r);
            assert_eq!(superblock_is_marked(&r), marked || superblock_is_marked(&t));
            let f = ImageFacts::from_superblock(&t);
            let _ = refusal(&f, Some(&r), i % 3 == 0);
            let _ = refusal(&f, None, false);
        }
    }

    /// The wrapper and the chunk marker put the same bytes where the superblock is, for
    /// every block size and read window; unmarked sources pass through.
    #[test]
    fn marked_source_and_chunks() {
        use crate::io::MemSource;
        for bs in [1024usize, 4096] {
            let mut fs = vec![0u8; 8 * bs];
            fs[1024..2048].copy_from_slice(&sb("L", "", 3, true));
            let mut want = fs.clone();
            let sbb: &mut [u8; SUPERBLOCK_SIZE] = (&mut want[1024..2048]).try_into().unwrap();
            assert!(mark_superblock(sbb));
            let m = MarkedSource::new(MemSource(fs.clone()), true);
            for (off, len) in [(0, 8 * bs), (1000, 100), (2000, 100), (1500, 1), (0, 1024)] {
                let mut buf = vec![0u8; len];
                let n = m.read_at(&mut buf, off as u64).unwrap();
                assert_eq!(&buf[..n], &want[off..off + n], "{bs} {off}+{len}");
            }
            let plain = MarkedSource::new(MemSource(fs.clone()), false);
            let mut buf = vec![0u8; 8 * bs];
            plain.read_at(&mut buf, 0).unwrap();
            assert_eq!(buf, fs);
            // Chunks of whole blocks: the one holding the superblock gets the mark.
            let mut got = fs.clone();
            for (i, chunk) in got.chunks_mut(bs).enumerate() {
                mark_in_chunk((i * bs) as u64, chunk);
            }
            assert_eq!(got, want, "{bs}");
            assert!(!mark_in_chunk(4096, &mut fs[..bs]), "no superblock there");
        }
    }
}
