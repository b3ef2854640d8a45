//! The example state machine's command parser: garbage is an error, never a panic, and
//! whatever parses re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meta_store::kvsm::KvCommand;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = KvCommand::decode(data) {
        assert_eq!(c.encode(), data);
    }
});
