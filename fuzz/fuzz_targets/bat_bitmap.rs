//! cargo-fuzz target: `vhd::fuzz::bat_bitmap` on arbitrary bytes (see scripts/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vhd::fuzz::bat_bitmap(data));
