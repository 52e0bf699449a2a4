//! Integration tests of the e2i tools (one test binary; each topic is a module in cli/).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts live heap bytes and their peak, so tests can bound memory.
pub struct PeakAlloc {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl PeakAlloc {
    pub fn reset_peak(&self) {
        self.peak
            .store(self.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

// SAFETY: delegates to the system allocator; only adds counters.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = self.live.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        self.live.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
pub static ALLOC: PeakAlloc = PeakAlloc {
    live: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
};

mod cli {
    pub mod basic;
    pub mod bug_report;
    pub mod corpus;
    pub mod damaged;
    pub mod hostile;
    pub mod install;
    #[path = "move.rs"]
    pub mod move_fs;
    pub mod mutation;
    pub mod normal;
    pub mod outputs;
    pub mod pipeline;
    pub mod qcow2;
    pub mod scramble;
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
        let o = run(Command::new(tool("e2i-capture"))
            .arg("-r")
            .arg(&img)
            .arg(&ours));
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
