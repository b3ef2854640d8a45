//! Fuzz target: any bytes a peer can send as one frame body. `decode` must never panic, and
//! whatever it accepts must encode again into a frame that decodes to the same message.
#![no_main]

use bytes::Bytes;
use redirector::wire::{decode, encode};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode(Bytes::copy_from_slice(data)) {
        let frame = encode(&msg).expect("a decoded message encodes");
        assert_eq!(decode(frame).expect("an encoded message decodes"), msg);
    }
});
