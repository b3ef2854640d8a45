//! Fuzz target: nbd::fuzz::requests (see nbd/src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nbd::fuzz::requests(data);
});
