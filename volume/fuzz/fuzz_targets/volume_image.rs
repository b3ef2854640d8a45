//! cargo-fuzz target: `volume::fuzz::volume_image` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| volume::fuzz::volume_image(data));
