//! cargo-fuzz target: `vhd::fuzz::open_image` on arbitrary bytes (see scripts/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vhd::fuzz::open_image(data));
