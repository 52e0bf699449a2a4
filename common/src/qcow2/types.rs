//! The units of a qcow2 image, one type each (as imago's `qcow2/types.rs`): a host offset
//! (a byte of the image file) cannot be passed where a guest cluster (a cluster of the
//! virtual disk) or a guest byte offset is expected, and a cluster size is always one qemu
//! can open.
//!
//! Conversions between units take the [`ClusterBits`] of the image and say when a value
//! does not fit (`None`) instead of dropping high bits.

use std::fmt;

use crate::blockmap::BlockRun;
use crate::units::FsBlock;

/// log2 of the cluster size: "Must not be less than 9 (i.e. 512 byte clusters)"; qemu has
/// "an implementation limit of 2 MB as the maximum cluster size" (21). Only values in
/// `9..=21` exist, so shifts by it and by the derived widths below never overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterBits(u32);

impl ClusterBits {
    pub const MIN: u32 = 9;
    pub const MAX: u32 = 21;

    /// `bits` if qemu can open clusters of `2^bits` bytes.
    pub fn new(bits: u32) -> Option<Self> {
        (Self::MIN..=Self::MAX)
            .contains(&bits)
            .then_some(ClusterBits(bits))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// Cluster size in bytes (512 B to 2 MiB).
    pub fn size(self) -> u64 {
        1 << self.0
    }

    /// Cluster size as a buffer length.
    pub fn size_usize(self) -> usize {
        1 << self.0
    }

    /// The bits of a byte offset inside its cluster.
    pub fn offset_mask(self) -> u64 {
        !(u64::MAX << self.0)
    }

    /// log2 of the entries of one L2 table (or one cluster of the L1 table): 8-byte entries.
    pub fn l2_bits(self) -> u32 {
        // self.0 >= 9: cannot saturate.
        self.0.saturating_sub(3)
    }

    /// Entries of one L2 table (cluster size / 8).
    pub fn l2_entries(self) -> u64 {
        1 << self.l2_bits()
    }

    /// Compressed L2 descriptors: "x = 62 - (cluster_bits - 8)": bits `0..x` hold the host
    /// offset, bits `x..62` the number of additional 512-byte sectors (49..=61).
    pub fn compressed_offset_bits(self) -> u32 {
        // self.0 <= 21: cannot saturate.
        70u32.saturating_sub(self.0)
    }
}

impl fmt::Display for ClusterBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A byte offset in the image file (where tables and data clusters are stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HostOffset(pub u64);

impl HostOffset {
    pub fn get(self) -> u64 {
        self.0
    }

    pub fn checked_add(self, bytes: u64) -> Option<HostOffset> {
        self.0.checked_add(bytes).map(HostOffset)
    }

    /// True on a cluster boundary.
    pub fn is_aligned(self, cb: ClusterBits) -> bool {
        self.0 & cb.offset_mask() == 0
    }

    /// The host cluster holding this byte.
    pub fn cluster(self, cb: ClusterBits) -> u64 {
        self.0 >> cb.get()
    }

    /// The first byte of host cluster `c`, if it is addressable.
    pub fn of_cluster(c: u64, cb: ClusterBits) -> Option<HostOffset> {
        shl(c, cb.get()).map(HostOffset)
    }
}

impl fmt::Display for HostOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A byte offset in the virtual disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GuestOffset(pub u64);

impl GuestOffset {
    pub fn get(self) -> u64 {
        self.0
    }

    /// The guest cluster holding this byte.
    pub fn cluster(self, cb: ClusterBits) -> GuestCluster {
        GuestCluster(self.0 >> cb.get())
    }

    /// The offset inside its cluster (below 2 MiB).
    pub fn within(self, cb: ClusterBits) -> usize {
        // Below the cluster size, which is a usize.
        (self.0 & cb.offset_mask()) as usize
    }
}

/// The index of a cluster of the virtual disk (guest byte offset >> cluster_bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GuestCluster(pub u64);

impl GuestCluster {
    pub fn get(self) -> u64 {
        self.0
    }

    pub fn checked_add(self, clusters: u64) -> Option<GuestCluster> {
        self.0.checked_add(clusters).map(GuestCluster)
    }

    /// The L1 entry whose L2 table maps this cluster.
    pub fn l1_index(self, cb: ClusterBits) -> u64 {
        self.0 >> cb.l2_bits()
    }

    /// The entry of that L2 table mapping this cluster.
    pub fn l2_slot(self, cb: ClusterBits) -> usize {
        // Below the number of entries per L2 table (at most 2^18).
        (self.0 & !(u64::MAX << cb.l2_bits())) as usize
    }

    /// The first cluster mapped by L1 entry `l1_index`, if it is addressable.
    pub fn first_of_l1(l1_index: u64, cb: ClusterBits) -> Option<GuestCluster> {
        shl(l1_index, cb.l2_bits()).map(GuestCluster)
    }

    /// The first byte of this cluster, if it is addressable.
    pub fn offset(self, cb: ClusterBits) -> Option<GuestOffset> {
        shl(self.0, cb.get()).map(GuestOffset)
    }

    /// The cluster holding filesystem block `b` in an image whose cluster size is the
    /// filesystem block size (every image e2i makes below qemu's limits; see
    /// [`super::grouping`]).
    pub fn one_per_block(b: FsBlock) -> GuestCluster {
        GuestCluster(b.get())
    }
}

impl fmt::Display for GuestCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Consecutive guest clusters `[start, start + len)` (not the filesystem blocks of
/// [`crate::blockmap::BlockRun`]: a qcow2 image made by e2i has one cluster per block below
/// qemu's limits, and [`ClusterRun::one_per_block`] is where that is said).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterRun {
    pub start: GuestCluster,
    /// Number of clusters.
    pub len: u64,
}

impl ClusterRun {
    /// The clusters of an image whose cluster size is the filesystem block size.
    pub fn one_per_block(r: BlockRun) -> ClusterRun {
        ClusterRun {
            start: GuestCluster::one_per_block(r.start),
            len: r.len,
        }
    }

    /// One past the last cluster, if it is addressable.
    pub fn checked_end(self) -> Option<GuestCluster> {
        self.start.checked_add(self.len)
    }

    /// One past the last cluster (saturating: use on runs already checked with
    /// [`Self::checked_end`], as every constructor in this module does).
    pub fn end(self) -> GuestCluster {
        GuestCluster(self.start.0.saturating_add(self.len))
    }

    /// The clusters, in order.
    pub fn clusters(self) -> impl Iterator<Item = GuestCluster> {
        (self.start.0..self.end().0).map(GuestCluster)
    }
}

/// `v << bits` when no set bit is shifted out.
fn shl(v: u64, bits: u32) -> Option<u64> {
    (bits < 64 && v.leading_zeros() >= bits).then(|| v << bits)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // tests compute expected values freely
mod tests {
    use super::*;

    #[test]
    fn cluster_bits_are_bounded() {
        assert_eq!(ClusterBits::new(8), None);
        assert_eq!(ClusterBits::new(22), None);
        let cb = ClusterBits::new(16).unwrap();
        assert_eq!(cb.size(), 65536);
        assert_eq!(cb.l2_entries(), 8192);
        assert_eq!(cb.compressed_offset_bits(), 54);
        for b in ClusterBits::MIN..=ClusterBits::MAX {
            let cb = ClusterBits::new(b).unwrap();
            assert_eq!(cb.size() / 8, cb.l2_entries());
            assert_eq!(cb.compressed_offset_bits(), 62 - (b - 8));
        }
    }

    #[test]
    fn conversions_never_drop_bits() {
        let cb = ClusterBits::new(9).unwrap();
        let g = GuestCluster(64 * 5 + 7);
        assert_eq!(g.l1_index(cb), 5);
        assert_eq!(g.l2_slot(cb), 7);
        assert_eq!(GuestCluster::first_of_l1(5, cb), Some(GuestCluster(320)));
        assert_eq!(g.offset(cb), Some(GuestOffset(327 * 512)));
        assert_eq!(
            GuestCluster(u64::MAX >> 9).offset(cb).map(|o| o.0),
            Some(u64::MAX - 511)
        );
        assert_eq!(GuestCluster(1 << 55).offset(cb), None);
        assert_eq!(GuestCluster::first_of_l1(u64::MAX, cb), None);
        assert_eq!(HostOffset::of_cluster(u64::MAX, cb), None);
        let o = GuestOffset(327 * 512 + 100);
        assert_eq!((o.cluster(cb), o.within(cb)), (g, 100));
        assert!(HostOffset(1024).is_aligned(cb) && !HostOffset(1025).is_aligned(cb));
        let r = ClusterRun {
            start: GuestCluster(u64::MAX - 1),
            len: 5,
        };
        assert_eq!(r.checked_end(), None);
        assert_eq!(r.end(), GuestCluster(u64::MAX));
    }
}
