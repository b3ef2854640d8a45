//! cargo-fuzz target: `vhd::fuzz::header` on arbitrary bytes (see scripts/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vhd::fuzz::header(data));
