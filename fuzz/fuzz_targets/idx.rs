//! The IDX / gzip reader on arbitrary bytes: a clean result or a clean `BadData`, never a
//! panic, and a success holds exactly the data its header promises.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for dims in [1u8, 3] {
        match bilevel::app::data::read_idx_from(data, std::path::Path::new("fuzz-input"), dims) {
            Ok(idx) => assert_eq!(idx.data.len(), idx.dims.iter().product::<usize>()),
            Err(bilevel::Error::BadData { reason, .. }) => assert!(!reason.is_empty()),
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }
});
