//! cargo-fuzz target: `volume::fuzz::superblock` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| volume::fuzz::superblock(data));
