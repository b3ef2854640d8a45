//! Fuzz target: nbd::fuzz::negotiation (see nbd/src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nbd::fuzz::negotiation(data);
});
