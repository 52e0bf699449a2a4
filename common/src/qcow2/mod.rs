//! qcow2 images: header, table entries, a clean one-pass writer and a checked reader.
//!
//! Writer: [`writer::Qcow2Layout::plan`] fixes the layout from the list of data clusters,
//! [`writer::SequentialWriter`] writes it front to back to any `Write` (pipes too),
//! [`writer::CompressedWriter`] writes deflate clusters to a seekable file, and
//! [`writer::write_qcow2`] does both passes for a captured block map.
//!
//! Reader: [`reader::Qcow2Reader`] presents the virtual disk of any version 2 or 3 image
//! (any cluster size, refcount width, compressed and zero clusters, snapshots ignored) as a
//! [`crate::io::ReadAt`], with unallocated and zero clusters reported as holes.

pub mod entry;
pub mod header;
pub mod reader;
pub mod writer;

pub use entry::{L1Entry, L2Entry, Mapping, RefcountTableEntry};
pub use header::Header;
pub use reader::{Qcow2Reader, Shifted, is_qcow2};
pub use writer::{CompressedWriter, Qcow2Layout, Qcow2Target, SequentialWriter, write_qcow2};
