//! Fuzz target: the replicated command decoder (`state::types::Command::decode`), what
//! every replica runs on every log entry. Arbitrary bytes are a typed error, never a
//! panic; a decoded command encodes and decodes again to itself.
#![no_main]

use csv_node::state::types::Command;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Command::decode(data) {
        let again = Command::decode(&c.encode()).expect("re-decode");
        assert_eq!(again, c);
    }
});
