//! Arbitrary bytes as a filesystem image: open, scan (strict and lenient), classify.
#![no_main]

use e2i::ext4::scan::{ScanOptions, scan};
use e2i::ext4::{Filesystem, OpenOptions};
use e2i::io::MemSource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let src = MemSource(data.to_vec());
    let Ok(fs) = Filesystem::open(&src, OpenOptions::default()) else { return };
    for strict in [true, false] {
        // The lenient scan with walker threads, the strict one without.
        let walkers = Some(if strict { 0 } else { 2 });
        let opts = ScanOptions { all_data: true, output_is_block_device: false, strict, want_dir_blocks: true, walkers };
        if let Ok(res) = scan(&fs, opts, None) {
            let _ = e2i::pieces::classify_runs(&src, &res.map, fs.sb.block_size, &mut e2i::progress::NoProgress);
        }
    }
});
