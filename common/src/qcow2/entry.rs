//! L1, L2 and refcount-table entries as bit-field newtypes (qcow2 spec, "Cluster mapping"),
//! and [`Mapping`], what an L2 entry decodes to.
//!
//! All entries are stored big-endian as 64-bit words ([`crate::bytes::be`]).

use super::types::{ClusterBits, HostOffset};

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
    pub fn table(offset: HostOffset) -> Self {
        L1Entry((offset.0 & OFFSET_MASK) | Self::COPIED)
    }

    /// Host offset of the L2 table, `None` when unallocated.
    pub fn l2_offset(self) -> Option<HostOffset> {
        Some(self.0 & OFFSET_MASK)
            .filter(|&o| o != 0)
            .map(HostOffset)
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
    Data(HostOffset),
    /// Stored deflate-compressed: `len` bytes from host byte `offset` hold at least the
    /// compressed stream (the length is rounded to 512-byte sectors and may run past EOF).
    Compressed { offset: HostOffset, len: u64 },
}

impl L2Entry {
    pub const COPIED: u64 = 1 << 63;
    pub const COMPRESSED: u64 = 1 << 62;
    /// Standard descriptor, bit 0: "If set to 1, the cluster reads as all zeros" (v3).
    pub const ZERO: u64 = 1;
    /// Standard descriptor bits 1–8 and 56–61: reserved, must be zero.
    pub const STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
    /// The cluster descriptor (bits 0–61).
    pub const DESCRIPTOR_MASK: u64 = !(Self::COPIED | Self::COMPRESSED);
    /// Compressed sectors are 512 bytes.
    const SECTOR_BITS: u32 = 9;

    /// A standard (uncompressed) data cluster with refcount one.
    pub fn data(offset: HostOffset) -> Self {
        L2Entry((offset.0 & OFFSET_MASK) | Self::COPIED)
    }

    /// A compressed cluster of `len` (> 0) bytes at host byte `offset`. Spec: "bits 0..x-1:
    /// host offset; x..61: number of additional 512-byte sectors used for the compressed
    /// data, beyond the sector containing the offset." `None` when `len` is 0 or either
    /// field does not fit its bits.
    pub fn compressed(offset: HostOffset, len: u64, cb: ClusterBits) -> Option<Self> {
        let x = cb.compressed_offset_bits();
        let last = offset.0.checked_add(len.checked_sub(1)?)?;
        let extra = (last >> Self::SECTOR_BITS).checked_sub(offset.0 >> Self::SECTOR_BITS)?;
        let fits = |v: u64, bits: u32| v >> bits == 0;
        (fits(offset.0, x) && fits(extra, 62u32.saturating_sub(x)))
            .then(|| L2Entry(Self::COMPRESSED | (extra << x) | offset.0))
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

    /// Decode for an image with clusters of `cb` bits.
    pub fn mapping(self, cb: ClusterBits) -> Mapping {
        if self.is_compressed() {
            let x = cb.compressed_offset_bits();
            let desc = self.0 & Self::DESCRIPTOR_MASK;
            let offset = desc & !(u64::MAX << x);
            let extra = desc >> x;
            // "Compressed size = (sectors + 1) * 512 - (offset & 511)". extra has at most
            // 62 - x <= 13 bits, so none of this can saturate.
            let len = (extra.saturating_add(1) << Self::SECTOR_BITS).saturating_sub(offset & 511);
            return Mapping::Compressed {
                offset: HostOffset(offset),
                len,
            };
        }
        if self.0 & Self::ZERO != 0 {
            return Mapping::Zero;
        }
        match self.0 & OFFSET_MASK {
            0 => Mapping::Unallocated,
            o => Mapping::Data(HostOffset(o)),
        }
    }
}

/// The second half of an extended L2 entry (incompatible feature bit 4): "Bit 0-31:
/// Allocation status (one bit per subcluster); 32-63: Subcluster reads as zeros (one bit
/// per subcluster)". A cluster has [`SubclusterBitmap::COUNT`] subclusters; compressed
/// clusters have none (the bitmap is not used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubclusterBitmap(pub u64);

impl SubclusterBitmap {
    /// Subclusters per cluster.
    pub const COUNT: u32 = 32;
    /// log2 of [`Self::COUNT`].
    pub const BITS: u32 = 5;

    /// The "allocated" bits, subcluster 0 in bit 0.
    pub fn allocated(self) -> u32 {
        // The low half: the cast keeps exactly it.
        self.0 as u32
    }

    /// The "reads as zeros" bits, subcluster 0 in bit 0.
    pub fn zero(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// A refcount-table entry: "Bit 0-8: Reserved (set to 0); 9-63: Bits 9-63 of the offset into
/// the image file at which the refcount block starts. If 0, the refcount block is unallocated."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefcountTableEntry(pub u64);

impl RefcountTableEntry {
    pub const OFFSET_MASK: u64 = !0x1ff;
    pub const RESERVED_MASK: u64 = 0x1ff;

    pub fn block(offset: HostOffset) -> Self {
        RefcountTableEntry(offset.0 & Self::OFFSET_MASK)
    }

    pub fn block_offset(self) -> Option<HostOffset> {
        Some(self.0 & Self::OFFSET_MASK)
            .filter(|&o| o != 0)
            .map(HostOffset)
    }

    pub fn reserved_bits(self) -> u64 {
        self.0 & Self::RESERVED_MASK
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // tests compute expected values freely
mod tests {
    use super::*;

    fn cbs() -> impl Iterator<Item = ClusterBits> {
        (ClusterBits::MIN..=ClusterBits::MAX).filter_map(ClusterBits::new)
    }

    /// xorshift64: deterministic "random" words for the property tests.
    fn rng(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn l2_round_trips() {
        for cb in cbs() {
            let c = cb.get();
            let d = L2Entry::data(HostOffset(7 << c));
            assert_eq!(d.mapping(cb), Mapping::Data(HostOffset(7 << c)));
            assert!(d.0 & L2Entry::COPIED != 0 && d.reserved_bits() == 0);
            for (off, len) in [(0x12345u64, 1u64), (0x1_0000_01ff, 513), (4096, 512)] {
                let e = L2Entry::compressed(HostOffset(off), len, cb).unwrap();
                match e.mapping(cb) {
                    Mapping::Compressed { offset, len: l } => {
                        assert_eq!(offset.0, off);
                        assert!(l >= len && off + l <= ((off + len + 511) & !511));
                    }
                    m => panic!("{m:?}"),
                }
            }
        }
        assert_eq!(
            L2Entry(0).mapping(ClusterBits::new(16).unwrap()),
            Mapping::Unallocated
        );
        let cb16 = ClusterBits::new(16).unwrap();
        assert_eq!(L2Entry(1).mapping(cb16), Mapping::Zero);
        assert_eq!(L2Entry(0x10000 | 1).mapping(cb16), Mapping::Zero);
        assert_ne!(L2Entry(0x10000 | 2).reserved_bits(), 0);
    }

    /// Property: every compressed (offset, len) that fits encodes to an entry that decodes
    /// to the same offset and a length covering exactly the sectors it touches; what does
    /// not fit is refused.
    #[test]
    fn compressed_entries_round_trip_or_are_refused() {
        let mut next = rng(0x9E37_79B9_7F4A_7C15);
        for cb in cbs() {
            let x = cb.compressed_offset_bits();
            for _ in 0..20_000 {
                let off = next() >> (next() % 64);
                let len = next() >> (40 + next() % 24);
                let e = L2Entry::compressed(HostOffset(off), len, cb);
                let sectors_fit = len > 0
                    && off
                        .checked_add(len - 1)
                        .is_some_and(|last| (last >> 9) - (off >> 9) < 1 << (62 - x));
                if len == 0 || off >> x != 0 || !sectors_fit {
                    assert_eq!(e, None, "cb {cb} off {off:#x} len {len}");
                    continue;
                }
                let e = e.unwrap();
                assert!(e.is_compressed() && e.reserved_bits() == 0);
                let Mapping::Compressed { offset, len: l } = e.mapping(cb) else {
                    panic!("{e:?}");
                };
                assert_eq!(offset.0, off);
                let end_sector = (off + len - 1) >> 9;
                assert_eq!(
                    off + l,
                    (end_sector + 1) << 9,
                    "cb {cb} off {off:#x} len {len}"
                );
            }
        }
    }

    /// Property: any 64-bit word decodes without panicking, and a standard entry's decoded
    /// offset re-encodes to the same offset bits.
    #[test]
    fn any_word_decodes() {
        let mut next = rng(0x2545_F491_4F6C_DD1D);
        for cb in cbs() {
            for _ in 0..20_000 {
                let w = next();
                let e = L2Entry(w);
                match e.mapping(cb) {
                    Mapping::Data(h) => {
                        assert_eq!(L2Entry::data(h).0 & OFFSET_MASK, w & OFFSET_MASK);
                        assert_eq!(h.0 & !OFFSET_MASK, 0);
                    }
                    Mapping::Compressed { offset, len } => {
                        assert!(e.is_compressed());
                        assert!((1..=1 << 22).contains(&len));
                        assert_eq!(offset.0 >> cb.compressed_offset_bits(), 0);
                    }
                    Mapping::Zero => assert!(w & L2Entry::ZERO != 0),
                    Mapping::Unallocated => assert_eq!(w & (OFFSET_MASK | 1), 0),
                }
                let l1 = L1Entry(w);
                if let Some(o) = l1.l2_offset() {
                    assert_eq!(L1Entry::table(o).0 & OFFSET_MASK, o.0);
                }
                assert_eq!(
                    l1.reserved_bits() | (w & (OFFSET_MASK | L1Entry::COPIED)),
                    w
                );
                let rt = RefcountTableEntry(w);
                assert_eq!(rt.reserved_bits() | rt.block_offset().map_or(0, |o| o.0), w);
            }
        }
    }

    #[test]
    fn l1_entries() {
        let e = L1Entry::table(HostOffset(0x30000));
        assert_eq!(e.l2_offset(), Some(HostOffset(0x30000)));
        assert_eq!(e.reserved_bits(), 0);
        assert_eq!(L1Entry(0).l2_offset(), None);
        assert_ne!(L1Entry(1 << 62).reserved_bits(), 0);
        assert_eq!(
            RefcountTableEntry::block(HostOffset(0x2000)).block_offset(),
            Some(HostOffset(0x2000))
        );
    }
}
