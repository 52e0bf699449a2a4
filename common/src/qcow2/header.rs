//! The qcow2 header (cluster 0): versions 2 and 3, feature bits and header extensions.

use super::types::{ClusterBits, HostOffset};
use crate::bytes::be;
use crate::error::CorruptKind;
use crate::{Error, Result};

/// "QFI\xfb".
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Size of a version 2 header; version 3 headers are at least [`V3_HEADER_LEN`].
pub const V2_HEADER_LEN: usize = 72;
pub const V3_HEADER_LEN: usize = 104;
/// Cluster sizes qemu accepts: 512 B (9) to 2 MiB (21).
pub const MIN_CLUSTER_BITS: u32 = ClusterBits::MIN;
pub const MAX_CLUSTER_BITS: u32 = ClusterBits::MAX;

/// A v3 header longer than 104 bytes holds the compression type in its next byte.
const COMPRESSION_TYPE_END: u64 = field::COMPRESSION_TYPE as u64 + 1;

/// Byte offsets of the header fields.
pub mod field {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const BACKING_FILE_OFFSET: usize = 8;
    pub const BACKING_FILE_SIZE: usize = 16;
    pub const CLUSTER_BITS: usize = 20;
    pub const SIZE: usize = 24;
    pub const CRYPT_METHOD: usize = 32;
    pub const L1_SIZE: usize = 36;
    pub const L1_TABLE_OFFSET: usize = 40;
    pub const REFCOUNT_TABLE_OFFSET: usize = 48;
    pub const REFCOUNT_TABLE_CLUSTERS: usize = 56;
    pub const NB_SNAPSHOTS: usize = 60;
    pub const SNAPSHOTS_OFFSET: usize = 64;
    pub const INCOMPATIBLE_FEATURES: usize = 72;
    pub const COMPATIBLE_FEATURES: usize = 80;
    pub const AUTOCLEAR_FEATURES: usize = 88;
    pub const REFCOUNT_ORDER: usize = 96;
    pub const HEADER_LENGTH: usize = 100;
    pub const COMPRESSION_TYPE: usize = 104;
}

/// Incompatible feature bits (v3).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;

/// Autoclear feature bit 1, "Raw external data bit": "If this bit is set, the external data
/// file can be read as a consistent standalone raw image without looking at the qcow2
/// metadata." It "may only be set if the External Data File bit ... is also set".
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Longest external data file name e2i opens: Linux's PATH_MAX (the header allows up to
/// a cluster; no longer name can be opened).
pub const MAX_DATA_FILE_NAME: usize = 4096;

/// Compression types (v3 header byte 104): "0: zlib <https://www.zlib.net/>; 1: zstd
/// <http://github.com/facebook/zstd>"; both need the compression-type bit when not 0.
pub const COMPRESSION_ZLIB: u8 = 0;
pub const COMPRESSION_ZSTD: u8 = 1;
/// The v3 header length e2i writes: 104 bytes, the compression type byte and padding to
/// a multiple of 8, as qemu writes it.
pub const V3_WRITTEN_HEADER_LEN: usize = 112;

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterCompression {
    /// Raw deflate (zlib type 0), what version 2 images and stock tools know.
    Deflate,
    /// zstd frames (type 1, version 3 only).
    Zstd,
}

/// Header extension types.
pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
pub const EXT_BITMAPS: u32 = 0x2385_2875;
pub const EXT_FULL_DISK_ENCRYPTION: u32 = 0x0537_be77;
pub const EXT_EXTERNAL_DATA_FILE: u32 = 0x4441_5441;
/// e2i's record of the disk an overlay was written on ("e2iB"; qemu ignores extensions it
/// does not know and keeps them): [`BACKING_DIGEST_V1`], then the BLAKE3 of
/// [`super::chain::chain_digest`].
pub const EXT_E2I_BACKING_DIGEST: u32 = 0x6532_6942;
/// The one layout of [`EXT_E2I_BACKING_DIGEST`]'s data: 4 bytes big-endian, then 32.
pub const BACKING_DIGEST_V1: u32 = 1;

/// One header extension: type and data (without padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub kind: u32,
    pub data: Vec<u8>,
}

/// The decoded header. Field comments quote the qcow2 spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// "Version number (valid values are 2 and 3)".
    pub version: u32,
    /// "Offset into the image file at which the backing file name is stored. 0 if the image
    /// doesn't have a backing file."
    pub backing_file_offset: HostOffset,
    /// "Length of the backing file name in bytes. Must not be longer than 1023 bytes."
    pub backing_file_size: u32,
    /// "Number of bits that are used for addressing an offset within a cluster
    /// (1 << cluster_bits is the cluster size). Must not be less than 9 (i.e. 512 byte
    /// clusters). Note: qemu as of today has an implementation limit of 2 MB as the maximum
    /// cluster size and won't be able to open images with larger cluster sizes."
    pub cluster_bits: ClusterBits,
    /// "Virtual disk size in bytes."
    pub size: u64,
    /// "0 for no encryption, 1 for AES encryption, 2 for LUKS encryption."
    pub crypt_method: u32,
    /// "Number of entries in the active L1 table".
    pub l1_size: u32,
    /// "Offset into the image file at which the active L1 table starts. Must be aligned to a
    /// cluster boundary."
    pub l1_table_offset: HostOffset,
    /// "Offset into the image file at which the refcount table starts. Must be aligned to a
    /// cluster boundary."
    pub refcount_table_offset: HostOffset,
    /// "Number of clusters that the refcount table occupies".
    pub refcount_table_clusters: u32,
    /// "Number of snapshots contained in the image".
    pub nb_snapshots: u32,
    /// "Offset into the image file at which the snapshot table starts. Must be aligned to a
    /// cluster boundary."
    pub snapshots_offset: HostOffset,
    /// v3: "Bitmask of incompatible features. An implementation must fail to open an image
    /// if an unknown bit is set."
    pub incompatible_features: u64,
    /// v3: compatible features (may be ignored).
    pub compatible_features: u64,
    /// v3: auto-clear features.
    pub autoclear_features: u64,
    /// v3: "Describes the width of a reference count block entry: width in bits =
    /// 1 << refcount_order. For version 2 images, the order is always assumed to be 4."
    pub refcount_order: u32,
    /// v3: "Length of the header structure in bytes. For version 2 images, the length is
    /// always assumed to be 72 bytes."
    pub header_length: u32,
    /// v3 (header_length > 104): "0: zlib <https://www.zlib.net/>; 1: zstd".
    pub compression_type: u8,
    /// Header extensions in file order (the end marker excluded).
    pub extensions: Vec<Extension>,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        self.cluster_bits.size()
    }

    /// A version 2 header (no extensions, 16-bit refcounts) for the writer.
    pub fn v2(cluster_bits: ClusterBits, size: u64) -> Self {
        Header {
            version: 2,
            backing_file_offset: HostOffset(0),
            backing_file_size: 0,
            cluster_bits,
            size,
            crypt_method: 0,
            l1_size: 0,
            l1_table_offset: HostOffset(0),
            refcount_table_offset: HostOffset(0),
            refcount_table_clusters: 0,
            nb_snapshots: 0,
            snapshots_offset: HostOffset(0),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            compression_type: 0,
            extensions: Vec::new(),
        }
    }

    /// Parse the header from the start of the file. `buf` should hold the first cluster
    /// (or the whole file when it is shorter); extensions are read from it. Checks the
    /// fields needed to interpret the rest; [`Header::check_supported`] says whether e2i can
    /// read the image.
    pub fn parse(buf: &[u8]) -> Result<Header> {
        use field as f;
        let len = buf.len() as u64;
        if buf.len() < V2_HEADER_LEN {
            return Err(CorruptKind::Qcow2HeaderShort { len }.into());
        }
        if buf[..4] != MAGIC {
            return Err(CorruptKind::Qcow2Magic.into());
        }
        let version = be::u32(buf, f::VERSION);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported(format!(
                "qcow2 version {version} (only versions 2 and 3 exist)"
            )));
        }
        let raw_bits = be::u32(buf, f::CLUSTER_BITS);
        let cluster_bits = ClusterBits::new(raw_bits).ok_or(CorruptKind::Qcow2ClusterBits {
            cluster_bits: raw_bits,
        })?;
        let mut h = Header {
            version,
            backing_file_offset: HostOffset(be::u64(buf, f::BACKING_FILE_OFFSET)),
            backing_file_size: be::u32(buf, f::BACKING_FILE_SIZE),
            size: be::u64(buf, f::SIZE),
            crypt_method: be::u32(buf, f::CRYPT_METHOD),
            l1_size: be::u32(buf, f::L1_SIZE),
            l1_table_offset: HostOffset(be::u64(buf, f::L1_TABLE_OFFSET)),
            refcount_table_offset: HostOffset(be::u64(buf, f::REFCOUNT_TABLE_OFFSET)),
            refcount_table_clusters: be::u32(buf, f::REFCOUNT_TABLE_CLUSTERS),
            nb_snapshots: be::u32(buf, f::NB_SNAPSHOTS),
            snapshots_offset: HostOffset(be::u64(buf, f::SNAPSHOTS_OFFSET)),
            ..Header::v2(cluster_bits, 0)
        };
        if h.version == 3 {
            let v3_short = CorruptKind::Qcow2HeaderTruncated {
                len,
                needed: V3_HEADER_LEN as u64,
            };
            if buf.len() < V3_HEADER_LEN {
                return Err(v3_short.into());
            }
            h.incompatible_features = be::u64(buf, f::INCOMPATIBLE_FEATURES);
            h.compatible_features = be::u64(buf, f::COMPATIBLE_FEATURES);
            h.autoclear_features = be::u64(buf, f::AUTOCLEAR_FEATURES);
            h.refcount_order = be::u32(buf, f::REFCOUNT_ORDER);
            h.header_length = be::u32(buf, f::HEADER_LENGTH);
            let hl = u64::from(h.header_length);
            if hl < V3_HEADER_LEN as u64 || !hl.is_multiple_of(8) || hl > h.cluster_size() {
                return Err(CorruptKind::Qcow2HeaderLength {
                    header_length: h.header_length,
                }
                .into());
            }
            if hl > V3_HEADER_LEN as u64 {
                h.compression_type =
                    *buf.get(f::COMPRESSION_TYPE)
                        .ok_or(CorruptKind::Qcow2HeaderTruncated {
                            len,
                            needed: COMPRESSION_TYPE_END,
                        })?;
            }
            if h.refcount_order > 6 {
                return Err(CorruptKind::Qcow2RefcountOrder {
                    refcount_order: h.refcount_order,
                }
                .into());
            }
        }
        // header_length is at most the cluster size (2 MiB): a usize.
        h.extensions = parse_extensions(buf, h.header_length as usize, h.cluster_bits)?;
        Ok(h)
    }

    /// Refuse what e2i does not read as one file: a backing file (read through
    /// [`super::chain`]), and everything [`Header::check_supported_layer`] refuses.
    pub fn check_supported(&self) -> Result<()> {
        if self.has_backing_file() {
            return Err(Error::Unsupported(
                "the qcow2 image has a backing file (open it as a chain)".into(),
            ));
        }
        self.check_supported_layer()
    }

    /// "If the image doesn't have a backing file", the offset is 0.
    pub fn has_backing_file(&self) -> bool {
        self.backing_file_offset.0 != 0
    }

    /// The backing file format recorded in the header extension ("qcow2", "raw", …).
    pub fn backing_format(&self) -> Option<&[u8]> {
        self.extensions
            .iter()
            .find(|e| e.kind == EXT_BACKING_FORMAT)
            .map(|e| e.data.as_slice())
    }

    /// The compression of compressed clusters, from the header (v3 with the compression
    /// type bit; deflate otherwise).
    pub fn cluster_compression(&self) -> Result<ClusterCompression> {
        if self.incompatible_features & INCOMPAT_COMPRESSION_TYPE == 0 {
            return Ok(ClusterCompression::Deflate);
        }
        match self.compression_type {
            COMPRESSION_ZLIB => Ok(ClusterCompression::Deflate),
            COMPRESSION_ZSTD => Ok(ClusterCompression::Zstd),
            t => Err(Error::Unsupported(format!(
                "the qcow2 image uses compression type {t} (only 0, zlib, and 1, zstd, exist)"
            ))),
        }
    }

    /// True when L2 entries are 128 bits: the standard entry and a [`super::entry::SubclusterBitmap`].
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTENDED_L2 != 0
    }

    /// True when guest data lives in an external data file (incompatible bit 2): "Guest
    /// clusters are then stored in the external data file", "neither compressed clusters
    /// nor internal snapshots are supported".
    pub fn has_data_file(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTERNAL_DATA != 0
    }

    /// True when the external data file is itself a raw image of the guest disk (autoclear
    /// bit 1). Reading still goes through the L2 tables, as qemu reads it.
    pub fn data_file_raw(&self) -> bool {
        self.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0
    }

    /// The external data file's name as recorded ("the header extension length is the
    /// string length and the string is not '\0' terminated"), `None` without the external
    /// data file bit: qemu ignores the extension then. When the extension appears more than
    /// once, the last one counts, as in qemu. A name qemu could not open as given (empty,
    /// with a NUL byte, longer than a path can be) is a corruption.
    pub fn data_file_name(&self) -> Result<Option<&[u8]>> {
        if !self.has_data_file() {
            return Ok(None);
        }
        let name = self
            .extensions
            .iter()
            .rev()
            .find(|e| e.kind == EXT_EXTERNAL_DATA_FILE)
            .map(|e| e.data.as_slice())
            .ok_or(CorruptKind::Qcow2DataFileUnnamed)?;
        let len = name.len() as u64;
        let why = if name.is_empty() {
            "it is empty"
        } else if name.contains(&0) {
            "it holds a NUL byte"
        } else if name.len() > MAX_DATA_FILE_NAME {
            "it is longer than a path can be (4096 bytes)"
        } else {
            return Ok(Some(name));
        };
        Err(CorruptKind::Qcow2DataFileName { len, why }.into())
    }

    /// Refuse what e2i does not read in one file of a chain: encryption, unknown
    /// compression types and incompatible features, and an external data file qemu would
    /// not open (unnamed, badly named, or raw data without one).
    pub fn check_supported_layer(&self) -> Result<()> {
        if self.crypt_method != 0 {
            return Err(Error::Unsupported(format!(
                "the qcow2 image is encrypted (crypt_method {})",
                self.crypt_method
            )));
        }
        let inc = self.incompatible_features;
        self.data_file_name()?;
        if self.data_file_raw() && !self.has_data_file() {
            return Err(CorruptKind::Qcow2DataFileRawWithoutDataFile.into());
        }
        // qemu: "Extended L2 entries are only supported with cluster sizes of at least
        // 16384 bytes" (subclusters of at least 512 bytes).
        if self.extended_l2() && self.cluster_bits.get() < 14 {
            return Err(CorruptKind::Qcow2ExtendedL2ClusterSize {
                cluster_bits: self.cluster_bits.get(),
            }
            .into());
        }
        self.cluster_compression()?;
        let known = INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_EXTERNAL_DATA
            | INCOMPAT_COMPRESSION_TYPE
            | INCOMPAT_EXTENDED_L2;
        if inc & !known != 0 {
            return Err(Error::Unsupported(format!(
                "the qcow2 image has unknown incompatible features {:#x}",
                inc & !known
            )));
        }
        if i64::try_from(self.size).is_err() {
            return Err(CorruptKind::Qcow2VirtualSize { size: self.size }.into());
        }
        Ok(())
    }

    /// The 72-byte version 2 header, big-endian.
    pub fn encode_v2(&self) -> [u8; V2_HEADER_LEN] {
        use field as f;
        let mut b = [0u8; V2_HEADER_LEN];
        b[f::MAGIC..f::MAGIC + 4].copy_from_slice(&MAGIC);
        be::set_u32(&mut b, f::VERSION, 2);
        be::set_u64(&mut b, f::BACKING_FILE_OFFSET, self.backing_file_offset.0);
        be::set_u32(&mut b, f::BACKING_FILE_SIZE, self.backing_file_size);
        be::set_u32(&mut b, f::CLUSTER_BITS, self.cluster_bits.get());
        be::set_u64(&mut b, f::SIZE, self.size);
        be::set_u32(&mut b, f::CRYPT_METHOD, self.crypt_method);
        be::set_u32(&mut b, f::L1_SIZE, self.l1_size);
        be::set_u64(&mut b, f::L1_TABLE_OFFSET, self.l1_table_offset.0);
        be::set_u64(
            &mut b,
            f::REFCOUNT_TABLE_OFFSET,
            self.refcount_table_offset.0,
        );
        be::set_u32(
            &mut b,
            f::REFCOUNT_TABLE_CLUSTERS,
            self.refcount_table_clusters,
        );
        be::set_u32(&mut b, f::NB_SNAPSHOTS, self.nb_snapshots);
        be::set_u64(&mut b, f::SNAPSHOTS_OFFSET, self.snapshots_offset.0);
        b
    }
}

impl Header {
    /// The 112-byte version 3 header (with the compression type byte), big-endian.
    pub fn encode_v3(&self) -> [u8; V3_WRITTEN_HEADER_LEN] {
        use field as f;
        let mut b = [0u8; V3_WRITTEN_HEADER_LEN];
        b[..V2_HEADER_LEN].copy_from_slice(&self.encode_v2());
        be::set_u32(&mut b, f::VERSION, 3);
        be::set_u64(&mut b, f::INCOMPATIBLE_FEATURES, self.incompatible_features);
        be::set_u64(&mut b, f::COMPATIBLE_FEATURES, self.compatible_features);
        be::set_u64(&mut b, f::AUTOCLEAR_FEATURES, self.autoclear_features);
        be::set_u32(&mut b, f::REFCOUNT_ORDER, self.refcount_order);
        be::set_u32(&mut b, f::HEADER_LENGTH, V3_WRITTEN_HEADER_LEN as u32);
        b[f::COMPRESSION_TYPE] = self.compression_type;
        b
    }

    /// The digest e2i recorded of the disk of this overlay's backing chain when it was
    /// written; `None` for images without one (made by qemu or an older e2i) or with a
    /// layout this build does not know.
    pub fn backing_digest(&self) -> Option<[u8; 32]> {
        let e = self
            .extensions
            .iter()
            .find(|e| e.kind == EXT_E2I_BACKING_DIGEST)?;
        if be::get_u32(&e.data, 0)? != BACKING_DIGEST_V1 {
            return None;
        }
        e.data.get(4..)?.try_into().ok()
    }

    /// The flags of e2i's extension ([`crate::mark::QCOW2_EXTENSION`]); 0 without one.
    pub fn e2i_flags(&self) -> u32 {
        self.extensions
            .iter()
            .find(|e| e.kind == crate::mark::QCOW2_EXTENSION)
            .and_then(|e| be::get_u32(&e.data, 0))
            .unwrap_or(0)
    }
}

/// The header extension area for `exts`: each extension's type, length and data padded to
/// 8 bytes, then the end marker (type 0).
pub fn encode_extensions(exts: &[Extension]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in exts {
        out.extend_from_slice(&be::bytes_u32(e.kind));
        // Extensions are e2i's own few bytes: their length fits.
        out.extend_from_slice(&be::bytes_u32(
            u32::try_from(e.data.len()).unwrap_or(u32::MAX),
        ));
        out.extend_from_slice(&e.data);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    out.extend_from_slice(&[0u8; 8]);
    out
}

/// e2i's extension carrying `flags` (see [`crate::mark`]).
pub fn e2i_extension(flags: u32) -> Extension {
    Extension {
        kind: crate::mark::QCOW2_EXTENSION,
        data: be::bytes_u32(flags).to_vec(),
    }
}

/// e2i's record of the disk an overlay was written on (see [`Header::backing_digest`]).
pub fn backing_digest_extension(digest: [u8; 32]) -> Extension {
    let mut data = be::bytes_u32(BACKING_DIGEST_V1).to_vec();
    data.extend_from_slice(&digest);
    Extension {
        kind: EXT_E2I_BACKING_DIGEST,
        data,
    }
}

/// "Directly after the image header, optional sections called header extensions can be
/// stored. Each extension has a structure like: 0-3 type; 4-7 length of the header
/// extension data; 8-n data; n-m padding to round up to a multiple of 8 bytes."
/// They must fit in the first cluster; a type of 0 ends the list.
fn parse_extensions(buf: &[u8], start: usize, cb: ClusterBits) -> Result<Vec<Extension>> {
    let limit = buf.len().min(cb.size_usize());
    let mut out = Vec::new();
    let mut at = start;
    loop {
        // The list ends with the first cluster (as in qemu), or with a short file right
        // after the header of an image without extensions.
        if at >= limit {
            return Ok(out);
        }
        let offset = at as u64;
        let (Some(kind), Some(len)) = (
            be::get_u32(&buf[..limit], at),
            at.checked_add(4)
                .and_then(|l| be::get_u32(&buf[..limit], l)),
        ) else {
            return Err(CorruptKind::Qcow2ExtensionHeader { offset }.into());
        };
        if kind == EXT_END {
            return Ok(out);
        }
        let data = at
            .checked_add(8)
            .and_then(|s| Some(s..s.checked_add(usize::try_from(len).ok()?)?))
            .and_then(|r| buf[..limit].get(r.clone()).map(|d| (r.end, d)));
        let Some((data_end, data)) = data else {
            return Err(CorruptKind::Qcow2ExtensionData { offset, kind, len }.into());
        };
        out.push(Extension {
            kind,
            data: data.to_vec(),
        });
        // data_end <= limit <= 2 MiB: rounding up to 8 cannot overflow.
        at = data_end.next_multiple_of(8);
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // tests compute expected values freely
mod tests {
    use super::*;

    fn cb(bits: u32) -> ClusterBits {
        ClusterBits::new(bits).unwrap()
    }

    fn kind(r: Result<Header>) -> CorruptKind {
        match r {
            Err(Error::Corrupt(k)) => k,
            Err(e) => panic!("not a corruption: {e}"),
            Ok(h) => panic!("accepted: {h:?}"),
        }
    }

    #[test]
    fn v2_round_trip() {
        let mut h = Header::v2(cb(12), 1 << 30);
        h.l1_size = 512;
        h.l1_table_offset = HostOffset(4096);
        h.refcount_table_offset = HostOffset(8192);
        h.refcount_table_clusters = 1;
        let mut buf = h.encode_v2().to_vec();
        buf.resize(4096, 0);
        assert_eq!(Header::parse(&buf).unwrap(), h);
    }

    /// Property: every v2 header with valid cluster bits round-trips, whatever its other
    /// fields hold (full-width values included).
    #[test]
    fn v2_round_trips_any_fields() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..5000u64 {
            let pick = |v: u64| match i % 4 {
                0 => u64::MAX,
                1 => 0,
                _ => v,
            };
            let mut h = Header::v2(cb(9 + (next() % 13) as u32), pick(next()));
            h.backing_file_offset = HostOffset(pick(next()));
            h.backing_file_size = pick(next()) as u32;
            h.crypt_method = pick(next()) as u32;
            h.l1_size = pick(next()) as u32;
            h.l1_table_offset = HostOffset(pick(next()));
            h.refcount_table_offset = HostOffset(pick(next()));
            h.refcount_table_clusters = pick(next()) as u32;
            h.nb_snapshots = pick(next()) as u32;
            h.snapshots_offset = HostOffset(pick(next()));
            assert_eq!(Header::parse(&h.encode_v2()).unwrap(), h);
        }
    }

    #[test]
    fn rejects_bad_fields() {
        let mut buf = Header::v2(cb(12), 1 << 30).encode_v2().to_vec();
        be::set_u32(&mut buf, field::CLUSTER_BITS, 40);
        assert_eq!(
            kind(Header::parse(&buf)),
            CorruptKind::Qcow2ClusterBits { cluster_bits: 40 }
        );
        assert!(
            Header::parse(&buf)
                .unwrap_err()
                .to_string()
                .contains("cluster_bits 40")
        );
        be::set_u32(&mut buf, field::VERSION, 7);
        assert!(matches!(Header::parse(&buf), Err(Error::Unsupported(_))));
        assert_eq!(
            kind(Header::parse(&buf[..10])),
            CorruptKind::Qcow2HeaderShort { len: 10 }
        );
        buf[0] = b'X';
        assert_eq!(kind(Header::parse(&buf)), CorruptKind::Qcow2Magic);
        let mut big = Header::v2(cb(12), u64::MAX).encode_v2().to_vec();
        big.resize(4096, 0);
        let h = Header::parse(&big).unwrap();
        assert_eq!(
            h.check_supported().unwrap_err().corrupt_kind(),
            Some(&CorruptKind::Qcow2VirtualSize { size: u64::MAX })
        );
    }

    fn v3(bits: u32, header_length: u32) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << bits];
        buf[..4].copy_from_slice(&MAGIC);
        be::set_u32(&mut buf, field::VERSION, 3);
        be::set_u32(&mut buf, field::CLUSTER_BITS, bits);
        be::set_u32(&mut buf, field::REFCOUNT_ORDER, 4);
        be::set_u32(&mut buf, field::HEADER_LENGTH, header_length);
        buf
    }

    #[test]
    fn e2i_extension_round_trips_after_a_v2_header() {
        let h = Header::v2(cb(12), 1 << 30);
        let mut buf = h.encode_v2().to_vec();
        buf.extend(encode_extensions(&[e2i_extension(
            crate::mark::QCOW2_FLAG_SCRAMBLED,
        )]));
        assert_eq!(buf.len(), 72 + 16 + 8);
        buf.resize(4096, 0);
        let p = Header::parse(&buf).unwrap();
        assert_eq!(p.extensions, vec![e2i_extension(1)]);
        assert_eq!(p.e2i_flags(), crate::mark::QCOW2_FLAG_SCRAMBLED);
        assert_eq!(h.e2i_flags(), 0);
        // A truncated extension of our type reads as no flags, never a panic.
        let short = Header {
            extensions: vec![Extension {
                kind: crate::mark::QCOW2_EXTENSION,
                data: vec![1],
            }],
            ..h
        };
        assert_eq!(short.e2i_flags(), 0);
    }

    #[test]
    fn backing_digest_round_trips_and_unknown_layouts_are_ignored() {
        let h = Header::v2(cb(12), 1 << 30);
        let mut buf = h.encode_v2().to_vec();
        let d = [0xa5u8; 32];
        buf.extend(encode_extensions(&[backing_digest_extension(d)]));
        buf.resize(4096, 0);
        let p = Header::parse(&buf).unwrap();
        assert_eq!(p.backing_digest(), Some(d));
        assert_eq!(h.backing_digest(), None);
        // Another layout version, or a short one: no digest (not checked), never a panic.
        for data in [vec![0, 0, 0, 2], vec![0, 0, 0, 1, 7], vec![]] {
            let other = Header {
                extensions: vec![Extension {
                    kind: EXT_E2I_BACKING_DIGEST,
                    data,
                }],
                ..h.clone()
            };
            assert_eq!(other.backing_digest(), None);
        }
    }

    #[test]
    fn v3_extensions() {
        let mut buf = v3(9, 112);
        be::set_u32(&mut buf, 112, EXT_FEATURE_NAMES);
        be::set_u32(&mut buf, 116, 5);
        buf[120..125].copy_from_slice(b"hello");
        let h = Header::parse(&buf).unwrap();
        assert_eq!(h.extensions.len(), 1);
        assert_eq!(h.extensions[0].data, b"hello");
        be::set_u32(&mut buf, 116, 5000);
        assert_eq!(
            kind(Header::parse(&buf)),
            CorruptKind::Qcow2ExtensionData {
                offset: 112,
                kind: EXT_FEATURE_NAMES,
                len: 5000
            }
        );
        be::set_u32(&mut buf, 116, u32::MAX);
        assert!(matches!(
            kind(Header::parse(&buf)),
            CorruptKind::Qcow2ExtensionData { .. }
        ));
        // An extension header cut by the end of the file; one that fills the first cluster.
        let mut buf = v3(9, 504);
        be::set_u32(&mut buf, 504, EXT_FEATURE_NAMES);
        assert_eq!(Header::parse(&buf).unwrap().extensions[0].data, b"");
        buf.truncate(508);
        assert_eq!(
            kind(Header::parse(&buf)),
            CorruptKind::Qcow2ExtensionHeader { offset: 504 }
        );
        for (hl, bad) in [(100u32, true), (108, true), (1024, true), (104, false)] {
            let r = Header::parse(&v3(9, hl));
            if bad {
                assert_eq!(
                    kind(r),
                    CorruptKind::Qcow2HeaderLength { header_length: hl }
                );
            } else {
                r.unwrap();
            }
        }
        let mut buf = v3(9, 104);
        be::set_u32(&mut buf, field::REFCOUNT_ORDER, 7);
        assert_eq!(
            kind(Header::parse(&buf)),
            CorruptKind::Qcow2RefcountOrder { refcount_order: 7 }
        );
        assert_eq!(
            kind(Header::parse(&v3(9, 112)[..100])),
            CorruptKind::Qcow2HeaderTruncated {
                len: 100,
                needed: 104
            }
        );
        assert_eq!(
            kind(Header::parse(&v3(9, 112)[..104])),
            CorruptKind::Qcow2HeaderTruncated {
                len: 104,
                needed: 105
            }
        );
    }

    /// A v3 header (64 KiB clusters) with `incompat` and `autoclear` bits and one data file
    /// name extension holding `name`, if any.
    fn with_data_file(incompat: u64, autoclear: u64, name: Option<&[u8]>) -> Header {
        let mut buf = v3(16, 104);
        be::set_u64(&mut buf, field::INCOMPATIBLE_FEATURES, incompat);
        be::set_u64(&mut buf, field::AUTOCLEAR_FEATURES, autoclear);
        if let Some(n) = name {
            let ext = encode_extensions(&[Extension {
                kind: EXT_EXTERNAL_DATA_FILE,
                data: n.to_vec(),
            }]);
            buf[104..104 + ext.len()].copy_from_slice(&ext);
        }
        Header::parse(&buf).unwrap()
    }

    /// The data file name as qemu reads it: only with the external data file bit; one that
    /// cannot name a file (missing, empty, NUL, longer than a path) is a corruption, as is
    /// the raw bit without a data file. Names are taken as they are (absolute, `..`).
    #[test]
    fn data_file_names() {
        let bit = INCOMPAT_EXTERNAL_DATA;
        let raw = AUTOCLEAR_DATA_FILE_RAW;
        let h = with_data_file(bit, raw, Some(b"d.raw"));
        assert_eq!(h.data_file_name().unwrap(), Some(&b"d.raw"[..]));
        assert!(h.has_data_file() && h.data_file_raw());
        h.check_supported().unwrap();
        for n in [&b"/abs/d"[..], b"../up/d", &[b'x'; MAX_DATA_FILE_NAME]] {
            let h = with_data_file(bit, 0, Some(n));
            assert_eq!(h.data_file_name().unwrap(), Some(n));
        }
        // The extension without the bit: ignored, as qemu ignores it.
        let h = with_data_file(0, 0, Some(b"d.raw"));
        assert_eq!(h.data_file_name().unwrap(), None);
        h.check_supported().unwrap();
        let bad = |h: Header| h.check_supported().unwrap_err().corrupt_kind().cloned();
        assert_eq!(
            bad(with_data_file(bit, 0, None)),
            Some(CorruptKind::Qcow2DataFileUnnamed)
        );
        for (n, why) in [
            (&b""[..], "it is empty"),
            (b"d\0.raw", "it holds a NUL byte"),
            (b"\0", "it holds a NUL byte"),
            (
                &[b'x'; MAX_DATA_FILE_NAME + 1],
                "it is longer than a path can be (4096 bytes)",
            ),
        ] {
            assert_eq!(
                bad(with_data_file(bit, 0, Some(n))),
                Some(CorruptKind::Qcow2DataFileName {
                    len: n.len() as u64,
                    why
                })
            );
        }
        assert_eq!(
            bad(with_data_file(0, raw, None)),
            Some(CorruptKind::Qcow2DataFileRawWithoutDataFile)
        );
    }

    /// Mutated and truncated headers (v2 and v3 with extensions): parse and the support
    /// check return, never panic (the debug test build checks overflow).
    #[test]
    fn mutated_headers_never_panic() {
        let mut v3b = v3(12, 112);
        be::set_u32(&mut v3b, 112, EXT_FEATURE_NAMES);
        be::set_u32(&mut v3b, 116, 48);
        let mut v2b = Header::v2(cb(16), 1 << 40).encode_v2().to_vec();
        v2b.resize(4096, 0);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut parsed = 0;
        for good in [v2b, v3b] {
            for _ in 0..20_000 {
                let mut b = good.clone();
                for _ in 0..(1 + next() % 4) {
                    let at = (next() % 160) as usize;
                    b[at] = match next() % 3 {
                        0 => 0xff,
                        1 => 0,
                        _ => next() as u8,
                    };
                }
                // Keep the magic most of the time so that the fields get parsed.
                if next() % 4 != 0 {
                    b[..4].copy_from_slice(&MAGIC);
                }
                if next() % 8 == 0 {
                    b.truncate((next() % b.len() as u64) as usize);
                }
                if let Ok(h) = Header::parse(&b) {
                    parsed += 1;
                    let _ = h.check_supported();
                }
            }
        }
        assert!(
            parsed > 4000,
            "only {parsed} of 40000 damaged headers parsed"
        );
    }
}
