//! Arbitrary bytes as an e2i stream: every read path must fail cleanly.
#![no_main]

use e2i::stream::StreamReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = StreamReader::open(data) {
        let _ = r.for_each(1 << 16, &mut |_, _| Ok(()));
    }
});
