//! Fuzz target: the chaos history parser and the checker. Arbitrary text is a history
//! error with its line number or a history the checker judges, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(h) = chaos::history::History::read(data) {
        let _ = chaos::check::check(&h);
    }
});
