//! The one way to read and write fixed-size on-disk fields: little-endian for ext4, its
//! checksummed structures, e2undo files and e2i's own journal and stream; big-endian for
//! qcow2 and jbd2.
//!
//! Callers pass offsets inside records whose length they checked once (a superblock is
//! 1024 bytes, an inode `inode_size` bytes), so the plain accessors index directly. Where
//! the offset itself comes from the disk, use the `get_*` forms, which return `None` when
//! the field does not lie inside `b`.

#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use byteorder::{BigEndian, ByteOrder, LittleEndian};

macro_rules! endian {
    ($name:ident, $order:ty, $doc:literal) => {
        #[doc = $doc]
        pub mod $name {
            use super::*;

            pub fn u16(b: &[u8], off: usize) -> u16 {
                <$order>::read_u16(&b[off..][..2])
            }
            pub fn u32(b: &[u8], off: usize) -> u32 {
                <$order>::read_u32(&b[off..][..4])
            }
            pub fn u64(b: &[u8], off: usize) -> u64 {
                <$order>::read_u64(&b[off..][..8])
            }
            pub fn set_u16(b: &mut [u8], off: usize, v: u16) {
                <$order>::write_u16(&mut b[off..][..2], v)
            }
            pub fn set_u32(b: &mut [u8], off: usize, v: u32) {
                <$order>::write_u32(&mut b[off..][..4], v)
            }
            pub fn set_u64(b: &mut [u8], off: usize, v: u64) {
                <$order>::write_u64(&mut b[off..][..8], v)
            }
            /// The field at `off`, or `None` when it does not lie inside `b`.
            pub fn get_u16(b: &[u8], off: usize) -> Option<u16> {
                b.get(off..off.checked_add(2)?).map(<$order>::read_u16)
            }
            pub fn get_u32(b: &[u8], off: usize) -> Option<u32> {
                b.get(off..off.checked_add(4)?).map(<$order>::read_u32)
            }
            pub fn get_u64(b: &[u8], off: usize) -> Option<u64> {
                b.get(off..off.checked_add(8)?).map(<$order>::read_u64)
            }
            /// `v` as its on-disk bytes (for building records and hashing fields).
            pub fn bytes_u16(v: u16) -> [u8; 2] {
                let mut a = [0; 2];
                <$order>::write_u16(&mut a, v);
                a
            }
            pub fn bytes_u32(v: u32) -> [u8; 4] {
                let mut a = [0; 4];
                <$order>::write_u32(&mut a, v);
                a
            }
            pub fn bytes_u64(v: u64) -> [u8; 8] {
                let mut a = [0; 8];
                <$order>::write_u64(&mut a, v);
                a
            }
        }
    };
}

endian!(
    le,
    LittleEndian,
    "Little-endian fields: ext2/3/4, e2undo, e2i's move journal and stream."
);
endian!(
    be,
    BigEndian,
    "Big-endian fields: qcow2 and the jbd2 journal."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bounds() {
        let mut b = [0u8; 16];
        le::set_u32(&mut b, 2, 0x1122_3344);
        assert_eq!(b[2..6], [0x44, 0x33, 0x22, 0x11]);
        assert_eq!(le::u32(&b, 2), 0x1122_3344);
        be::set_u64(&mut b, 8, 0x0102_0304_0506_0708);
        assert_eq!(b[8], 1);
        assert_eq!(be::u64(&b, 8), 0x0102_0304_0506_0708);
        assert_eq!(le::bytes_u16(0xABCD), [0xCD, 0xAB]);
        assert_eq!(be::bytes_u32(1), [0, 0, 0, 1]);
        assert_eq!(le::get_u64(&b, 8), Some(le::u64(&b, 8)));
        assert_eq!(le::get_u64(&b, 9), None);
        assert_eq!(be::get_u16(&b, usize::MAX), None);
    }
}
