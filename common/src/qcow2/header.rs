//! The qcow2 header (cluster 0): versions 2 and 3, feature bits and header extensions.

use crate::{Error, Result};

/// "QFI\xfb".
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Size of a version 2 header; version 3 headers are at least [`V3_HEADER_LEN`].
pub const V2_HEADER_LEN: usize = 72;
pub const V3_HEADER_LEN: usize = 104;
/// Cluster sizes qemu accepts: 512 B (9) to 2 MiB (21).
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;

/// Incompatible feature bits (v3).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;

/// Header extension types.
pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
pub const EXT_BITMAPS: u32 = 0x2385_2875;
pub const EXT_FULL_DISK_ENCRYPTION: u32 = 0x0537_be77;
pub const EXT_EXTERNAL_DATA_FILE: u32 = 0x4441_5441;

/// One header extension: type and data (without padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub kind: u32,
    pub data: Vec<u8>,
}

/// The decoded header. Field comments quote the qcow2 spec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    /// "Version number (valid values are 2 and 3)".
    pub version: u32,
    /// "Offset into the image file at which the backing file name is stored. 0 if the image
    /// doesn't have a backing file."
    pub backing_file_offset: u64,
    /// "Length of the backing file name in bytes. Must not be longer than 1023 bytes."
    pub backing_file_size: u32,
    /// "Number of bits that are used for addressing an offset within a cluster
    /// (1 << cluster_bits is the cluster size). Must not be less than 9 (i.e. 512 byte
    /// clusters). Note: qemu as of today has an implementation limit of 2 MB as the maximum
    /// cluster size and won't be able to open images with larger cluster sizes."
    pub cluster_bits: u32,
    /// "Virtual disk size in bytes."
    pub size: u64,
    /// "0 for no encryption, 1 for AES encryption, 2 for LUKS encryption."
    pub crypt_method: u32,
    /// "Number of entries in the active L1 table".
    pub l1_size: u32,
    /// "Offset into the image file at which the active L1 table starts. Must be aligned to a
    /// cluster boundary."
    pub l1_table_offset: u64,
    /// "Offset into the image file at which the refcount table starts. Must be aligned to a
    /// cluster boundary."
    pub refcount_table_offset: u64,
    /// "Number of clusters that the refcount table occupies".
    pub refcount_table_clusters: u32,
    /// "Number of snapshots contained in the image".
    pub nb_snapshots: u32,
    /// "Offset into the image file at which the snapshot table starts. Must be aligned to a
    /// cluster boundary."
    pub snapshots_offset: u64,
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

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// A version 2 header (no extensions, 16-bit refcounts) for the writer.
    pub fn v2(cluster_bits: u32, size: u64) -> Self {
        Header {
            version: 2,
            cluster_bits,
            size,
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            ..Header::default()
        }
    }

    /// Parse the header from the start of the file. `buf` should hold the first cluster
    /// (or the whole file when it is shorter); extensions are read from it. Checks the
    /// fields needed to interpret the rest; [`Header::check_supported`] says whether e2i can
    /// read the image.
    pub fn parse(buf: &[u8]) -> Result<Header> {
        let what = "qcow2 header";
        if buf.len() < V2_HEADER_LEN {
            return Err(Error::corrupt(
                what,
                format!("the file is {} bytes, shorter than a header", buf.len()),
            ));
        }
        if buf[..4] != MAGIC {
            return Err(Error::corrupt(what, "bad magic (not a qcow2 image)"));
        }
        let mut h = Header {
            version: be32(buf, 4),
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits: be32(buf, 20),
            size: be64(buf, 24),
            crypt_method: be32(buf, 32),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            ..Header::default()
        };
        if h.version != 2 && h.version != 3 {
            return Err(Error::Unsupported(format!(
                "qcow2 version {} (only versions 2 and 3 exist)",
                h.version
            )));
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
            return Err(Error::corrupt(
                what,
                format!(
                    "cluster_bits {} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}",
                    h.cluster_bits
                ),
            ));
        }
        if h.version == 3 {
            if buf.len() < V3_HEADER_LEN {
                return Err(Error::corrupt(what, "the file ends inside the v3 header"));
            }
            h.incompatible_features = be64(buf, 72);
            h.compatible_features = be64(buf, 80);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            let hl = h.header_length as usize;
            if hl < V3_HEADER_LEN || !hl.is_multiple_of(8) || hl as u64 > h.cluster_size() {
                return Err(Error::corrupt(
                    what,
                    format!("header_length {} is invalid", h.header_length),
                ));
            }
            if hl > V3_HEADER_LEN {
                if buf.len() <= V3_HEADER_LEN {
                    return Err(Error::corrupt(what, "the file ends inside the v3 header"));
                }
                h.compression_type = buf[V3_HEADER_LEN];
            }
            if h.refcount_order > 6 {
                return Err(Error::corrupt(
                    what,
                    format!("refcount_order {} is above 6", h.refcount_order),
                ));
            }
        }
        h.extensions = parse_extensions(buf, h.header_length as usize, h.cluster_size())?;
        Ok(h)
    }

    /// Refuse what e2i does not read: backing files, encryption, external data files,
    /// extended L2 entries, compression other than deflate, unknown incompatible features.
    pub fn check_supported(&self) -> Result<()> {
        if self.backing_file_offset != 0 {
            return Err(Error::Unsupported(
                "the qcow2 image has a backing file (convert it with qemu-img first)".into(),
            ));
        }
        if self.crypt_method != 0 {
            return Err(Error::Unsupported(format!(
                "the qcow2 image is encrypted (crypt_method {})",
                self.crypt_method
            )));
        }
        let inc = self.incompatible_features;
        if inc & INCOMPAT_EXTERNAL_DATA != 0
            || self
                .extensions
                .iter()
                .any(|e| e.kind == EXT_EXTERNAL_DATA_FILE)
        {
            return Err(Error::Unsupported(
                "the qcow2 image keeps its data in an external data file".into(),
            ));
        }
        if inc & INCOMPAT_EXTENDED_L2 != 0 {
            return Err(Error::Unsupported(
                "the qcow2 image uses extended L2 entries (subclusters)".into(),
            ));
        }
        if inc & INCOMPAT_COMPRESSION_TYPE != 0 && self.compression_type != 0 {
            return Err(Error::Unsupported(format!(
                "the qcow2 image uses compression type {} (only deflate is supported)",
                self.compression_type
            )));
        }
        let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION_TYPE;
        if inc & !known != 0 {
            return Err(Error::Unsupported(format!(
                "the qcow2 image has unknown incompatible features {:#x}",
                inc & !known
            )));
        }
        if self.size > i64::MAX as u64 {
            return Err(Error::corrupt(
                "qcow2 header",
                format!("virtual size {} is too large", self.size),
            ));
        }
        Ok(())
    }

    /// The 72-byte version 2 header, big-endian.
    pub fn encode_v2(&self) -> [u8; V2_HEADER_LEN] {
        let mut b = [0u8; V2_HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&2u32.to_be_bytes());
        b[8..16].copy_from_slice(&self.backing_file_offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.backing_file_size.to_be_bytes());
        b[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&self.size.to_be_bytes());
        b[32..36].copy_from_slice(&self.crypt_method.to_be_bytes());
        b[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        b[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        b[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        b[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        b
    }
}

/// "Directly after the image header, optional sections called header extensions can be
/// stored. Each extension has a structure like: 0-3 type; 4-7 length of the header
/// extension data; 8-n data; n-m padding to round up to a multiple of 8 bytes."
/// They must fit in the first cluster; a type of 0 ends the list.
fn parse_extensions(buf: &[u8], start: usize, cluster_size: u64) -> Result<Vec<Extension>> {
    let what = "qcow2 header extensions";
    let limit = buf.len().min(cluster_size as usize);
    let mut out = Vec::new();
    let mut at = start;
    loop {
        if at + 8 > limit {
            // A short file may end right after the header of an image without extensions.
            if at >= buf.len() {
                return Ok(out);
            }
            return Err(Error::corrupt(
                what,
                format!("extension at byte {at} runs past the first cluster"),
            ));
        }
        let kind = be32(buf, at);
        let len = be32(buf, at + 4) as usize;
        if kind == EXT_END {
            return Ok(out);
        }
        let data_end = (at + 8).checked_add(len).filter(|&e| e <= limit);
        let Some(data_end) = data_end else {
            return Err(Error::corrupt(
                what,
                format!(
                    "extension {kind:#x} at byte {at} ({len} bytes) runs past the first cluster"
                ),
            ));
        };
        out.push(Extension {
            kind,
            data: buf[at + 8..data_end].to_vec(),
        });
        at = data_end.div_ceil(8) * 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_round_trip() {
        let mut h = Header::v2(12, 1 << 30);
        h.l1_size = 512;
        h.l1_table_offset = 4096;
        h.refcount_table_offset = 8192;
        h.refcount_table_clusters = 1;
        let mut buf = h.encode_v2().to_vec();
        buf.resize(4096, 0);
        assert_eq!(Header::parse(&buf).unwrap(), h);
    }

    #[test]
    fn rejects_bad_fields() {
        let mut buf = Header::v2(12, 1 << 30).encode_v2().to_vec();
        buf[20..24].copy_from_slice(&40u32.to_be_bytes());
        assert!(
            Header::parse(&buf)
                .unwrap_err()
                .to_string()
                .contains("cluster_bits 40")
        );
        buf[4..8].copy_from_slice(&7u32.to_be_bytes());
        assert!(Header::parse(&buf).is_err());
        assert!(Header::parse(&buf[..10]).is_err());
    }

    #[test]
    fn v3_extensions() {
        let mut buf = vec![0u8; 512];
        buf[..4].copy_from_slice(&MAGIC);
        buf[4..8].copy_from_slice(&3u32.to_be_bytes());
        buf[20..24].copy_from_slice(&9u32.to_be_bytes());
        buf[96..100].copy_from_slice(&4u32.to_be_bytes());
        buf[100..104].copy_from_slice(&112u32.to_be_bytes());
        buf[112..116].copy_from_slice(&EXT_FEATURE_NAMES.to_be_bytes());
        buf[116..120].copy_from_slice(&5u32.to_be_bytes());
        buf[120..125].copy_from_slice(b"hello");
        let h = Header::parse(&buf).unwrap();
        assert_eq!(h.extensions.len(), 1);
        assert_eq!(h.extensions[0].data, b"hello");
        buf[116..120].copy_from_slice(&5000u32.to_be_bytes());
        assert!(Header::parse(&buf).is_err());
    }
}
