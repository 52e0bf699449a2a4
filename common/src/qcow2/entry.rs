//! L1, L2 and refcount-table entries as bit-field newtypes (qcow2 spec, "Cluster mapping").
//!
//! All entries are stored big-endian as 64-bit words. Offsets are host file offsets.

/// Bits 9–55 of L1, L2 (standard) and refcount-table entries: a cluster-aligned host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// An L1 table entry: "Bit 0-8: Reserved (set to 0); 9-55: Bits 9-55 of the offset into the
/// image file at which the L2 table starts. Must be aligned to a cluster boundary. If the
/// offset is 0, the L2 table and all clusters described by this L2 table are unallocated.
/// 56-62: Reserved (set to 0); 63: 0 for an L2 table that is unused or requires COW, 1 if its
/// refcount is exactly one."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L1Entry(pub u64);

impl L1Entry {
    /// Bit 63: refcount is exactly one.
    pub const COPIED: u64 = 1 << 63;
    /// Bits that must be zero.
    pub const RESERVED_MASK: u64 = !(OFFSET_MASK | Self::COPIED);

    /// An entry pointing to an L2 table at `offset` whose refcount is one.
    pub fn table(offset: u64) -> Self {
        L1Entry((offset & OFFSET_MASK) | Self::COPIED)
    }

    /// Host offset of the L2 table, `None` when unallocated.
    pub fn l2_offset(self) -> Option<u64> {
        Some(self.0 & OFFSET_MASK).filter(|&o| o != 0)
    }

    pub fn reserved_bits(self) -> u64 {
        self.0 & Self::RESERVED_MASK
    }
}

/// An L2 table entry: "Bit 0-61: Cluster descriptor; 62: 0 for standard clusters, 1 for
/// compressed clusters; 63: 0 for clusters that are unused, compressed or require COW,
/// 1 for standard clusters whose refcount is exactly one."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L2Entry(pub u64);

/// What one guest cluster maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated: reads from the backing file, or zeros without one.
    Unallocated,
    /// Reads as zeros (the v3 zero flag), whether or not a host cluster is preallocated.
    Zero,
    /// Stored uncompressed in the host cluster at this offset.
    Data(u64),
    /// Stored deflate-compressed: `len` bytes from host byte `offset` hold at least the
    /// compressed stream (the length is rounded to 512-byte sectors and may run past EOF).
    Compressed { offset: u64, len: u64 },
}

impl L2Entry {
    pub const COPIED: u64 = 1 << 63;
    pub const COMPRESSED: u64 = 1 << 62;
    /// Standard descriptor, bit 0: "If set to 1, the cluster reads as all zeros" (v3).
    pub const ZERO: u64 = 1;
    /// Standard descriptor bits 1–8 and 56–61: reserved, must be zero.
    pub const STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;

    /// A standard (uncompressed) data cluster with refcount one.
    pub fn data(offset: u64) -> Self {
        L2Entry((offset & OFFSET_MASK) | Self::COPIED)
    }

    /// A compressed cluster of `len` (> 0) bytes at host byte `offset`, for `cluster_bits`.
    /// Spec: "x = 62 - (cluster_bits - 8); bits 0..x-1: host offset; x..61: number of
    /// additional 512-byte sectors used for the compressed data, beyond the sector
    /// containing the offset."
    pub fn compressed(offset: u64, len: u64, cluster_bits: u32) -> Self {
        let x = 62 - (cluster_bits - 8);
        let extra = ((offset + len - 1) >> 9) - (offset >> 9);
        L2Entry(Self::COMPRESSED | (extra << x) | offset)
    }

    pub fn is_compressed(self) -> bool {
        self.0 & Self::COMPRESSED != 0
    }

    /// Reserved bits of a standard entry (always 0 for compressed ones).
    pub fn reserved_bits(self) -> u64 {
        if self.is_compressed() {
            0
        } else {
            self.0 & Self::STD_RESERVED_MASK
        }
    }

    /// Decode for an image with `cluster_bits`.
    pub fn mapping(self, cluster_bits: u32) -> Mapping {
        if self.is_compressed() {
            let x = 62 - (cluster_bits - 8);
            let desc = self.0 & !(Self::COPIED | Self::COMPRESSED);
            let offset = desc & ((1u64 << x) - 1);
            let extra = desc >> x;
            // "Compressed size = (sectors + 1) * 512 - (offset & 511)".
            let len = (extra + 1) * 512 - (offset & 511);
            return Mapping::Compressed { offset, len };
        }
        if self.0 & Self::ZERO != 0 {
            return Mapping::Zero;
        }
        match self.0 & OFFSET_MASK {
            0 => Mapping::Unallocated,
            o => Mapping::Data(o),
        }
    }
}

/// A refcount-table entry: "Bit 0-8: Reserved (set to 0); 9-63: Bits 9-63 of the offset into
/// the image file at which the refcount block starts. If 0, the refcount block is unallocated."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefcountTableEntry(pub u64);

impl RefcountTableEntry {
    pub const OFFSET_MASK: u64 = !0x1ff;

    pub fn block(offset: u64) -> Self {
        RefcountTableEntry(offset & Self::OFFSET_MASK)
    }

    pub fn block_offset(self) -> Option<u64> {
        Some(self.0 & Self::OFFSET_MASK).filter(|&o| o != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_round_trips() {
        for cb in 9..=21u32 {
            let d = L2Entry::data(7 << cb);
            assert_eq!(d.mapping(cb), Mapping::Data(7 << cb));
            assert!(d.0 & L2Entry::COPIED != 0 && d.reserved_bits() == 0);
            for (off, len) in [(0x12345u64, 1u64), (0x1_0000_01ff, 513), (4096, 512)] {
                let c = L2Entry::compressed(off, len, cb);
                match c.mapping(cb) {
                    Mapping::Compressed { offset, len: l } => {
                        assert_eq!(offset, off);
                        assert!(l >= len && offset + l <= ((off + len + 511) & !511));
                    }
                    m => panic!("{m:?}"),
                }
            }
        }
        assert_eq!(L2Entry(0).mapping(16), Mapping::Unallocated);
        assert_eq!(L2Entry(1).mapping(16), Mapping::Zero);
        assert_eq!(L2Entry(0x10000 | 1).mapping(16), Mapping::Zero);
        assert_ne!(L2Entry(0x10000 | 2).reserved_bits(), 0);
    }

    #[test]
    fn l1_entries() {
        let e = L1Entry::table(0x30000);
        assert_eq!(e.l2_offset(), Some(0x30000));
        assert_eq!(e.reserved_bits(), 0);
        assert_eq!(L1Entry(0).l2_offset(), None);
        assert_ne!(L1Entry(1 << 62).reserved_bits(), 0);
        assert_eq!(
            RefcountTableEntry::block(0x2000).block_offset(),
            Some(0x2000)
        );
    }
}
