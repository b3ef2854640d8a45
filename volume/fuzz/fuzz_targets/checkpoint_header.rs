//! cargo-fuzz target: `volume::fuzz::checkpoint_header` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| volume::fuzz::checkpoint_header(data));
