//! Integration tests of the e2i tools (one test binary; each topic is a module in cli/).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the heap bytes each thread has live and their peak, so that a test can bound the
/// memory of the work it runs on its own thread. Per thread, not per process: the test
/// harness runs tests in parallel, and a process-wide peak would include whatever the
/// other tests hold at that moment (it once failed the mutation test on a fresh clone).
/// Memory a thread frees that another allocated is subtracted from the freeing thread;
/// the counts are signed so that this cannot underflow. Code measured this way must do its
/// allocating on the test's thread (the scanner and writers do).
pub struct PeakAlloc;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

impl PeakAlloc {
    /// Start a new measurement on this thread: the peak is what is live now.
    pub fn reset_peak(&self) {
        let live = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(live));
    }
    /// The most this thread had live since [`Self::reset_peak`], in bytes.
    pub fn peak(&self) -> usize {
        usize::try_from(PEAK.with(Cell::get)).unwrap_or(0)
    }
}

fn count(delta: isize) {
    // try_with: a thread being torn down has no counters left; its frees are not counted.
    let _ = LIVE.try_with(|l| {
        let now = l.get().saturating_add(delta);
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn size(l: Layout) -> isize {
    isize::try_from(l.size()).unwrap_or(isize::MAX)
}

// SAFETY: delegates to the system allocator; only adds counters. The thread-local cells
// have const initializers and no destructors, so touching them never allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            count(size(l));
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        count(size(l).saturating_neg());
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new_size) };
        if !q.is_null() {
            count(size(l).saturating_neg());
            count(isize::try_from(new_size).unwrap_or(isize::MAX));
        }
        q
    }
}

#[global_allocator]
pub static ALLOC: PeakAlloc = PeakAlloc;

mod cli {
    pub mod aliases;
    pub mod basic;
    pub mod bug_report;
    pub mod corpus;
    pub mod damaged;
    pub mod data_file;
    pub mod hostile;
    pub mod install;
    pub mod kinds;
    pub mod leaks;
    pub mod limits;
    pub mod midrun;
    #[path = "move.rs"]
    pub mod move_fs;
    pub mod mutation;
    pub mod normal;
    pub mod outputs;
    pub mod overlap;
    pub mod overlay;
    pub mod partitions;
    pub mod pipeline;
    pub mod placement;
    pub mod qcow2;
    pub mod qcow2_large;
    pub mod scramble;
    pub mod scrambled;
    pub mod stream_v2;
    pub mod subclusters;
    pub mod sweep;
    pub mod util;
    pub mod ux;
}

mod raw_basic {
    use super::cli::util::*;
    use std::process::Command;

    #[test]
    fn raw_matches_e2image_on_a_small_fs() {
        let d = tempdir();
        let img = mkfs(d.path(), "fs.img", "4M", &[]);
        let ours = d.path().join("ours.raw");
        let theirs = d.path().join("theirs.raw");
        let o = run(tool_cmd("e2i-capture").arg("-r").arg(&img).arg(&ours));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let st = Command::new("e2image")
            .arg("-r")
            .arg(&img)
            .arg(&theirs)
            .output()
            .expect("e2image");
        assert!(st.status.success());
        assert_eq!(
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap()
        );
    }
}
