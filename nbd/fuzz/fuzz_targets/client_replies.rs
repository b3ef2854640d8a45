//! Fuzz target: nbd::fuzz::client_replies (see nbd/src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nbd::fuzz::client_replies(data);
});
