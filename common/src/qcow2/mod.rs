//! qcow2 images: header, table entries, a clean one-pass writer and a checked reader.
//!
//! Writer: [`writer::Qcow2Layout::plan`] fixes the layout from the list of data clusters,
//! [`writer::SequentialWriter`] writes it front to back to any `Write` (pipes too),
//! [`writer::FileWriter`] writes to a seekable file (clusters stored or compressed, zeros
//! skipped as they are found), and [`writer::write_qcow2`] writes a captured block map; [`grouping`] puts
//! several blocks in a cluster where one per block would pass qemu's table limits.
//!
//! Reader: [`reader::Qcow2Reader`] presents the virtual disk of any version 2 or 3 image
//! (any cluster size, refcount width, compressed and zero clusters, snapshots ignored) as a
//! [`crate::io::ReadAt`], with unallocated and zero clusters reported as holes.
//!
//! Units ([`types`]): host offsets, guest offsets and guest clusters are distinct types, and
//! the cluster size is a [`types::ClusterBits`] qemu can open.

// Every number here comes from an image or feeds one: no unchecked arithmetic.
#![deny(clippy::arithmetic_side_effects)]

pub mod chain;
pub mod entry;
pub mod grouping;
pub mod header;
pub mod overlay;
pub mod reader;
pub mod types;
pub mod writer;

pub use chain::{Backing, Qcow2Image};
pub use entry::{L1Entry, L2Entry, Mapping, RefcountTableEntry};
pub use header::Header;
pub use reader::{Qcow2Reader, Shifted, is_qcow2};
pub use types::{ClusterBits, ClusterRun, GuestCluster, GuestOffset, HostOffset};
pub use writer::{FileWriter, Qcow2Layout, Qcow2Target, SequentialWriter, write_qcow2};
