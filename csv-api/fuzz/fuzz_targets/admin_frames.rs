//! Fuzz target: the admin socket's input. Length-prefixed frames read from arbitrary
//! bytes, each decoded as an `AdminRequest` (what csv-node's admin socket does) and as
//! an `AdminResponse` (what csvadm does); a decoded message encodes and decodes again
//! to itself. Never a panic, never a frame over the limit.
#![no_main]

use csv_api::admin::frame::read_frame;
use csv_api::admin::{AdminRequest, AdminResponse, MAX_FRAME_BYTES};
use prost::Message as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(Some(frame)) = read_frame(&mut r) {
        assert!(frame.len() <= MAX_FRAME_BYTES);
        if let Ok(req) = AdminRequest::decode(frame.as_slice()) {
            let again = AdminRequest::decode(req.encode_to_vec().as_slice()).expect("re-decode");
            assert_eq!(again, req);
        }
        if let Ok(resp) = AdminResponse::decode(frame.as_slice()) {
            let again = AdminResponse::decode(resp.encode_to_vec().as_slice()).expect("re-decode");
            assert_eq!(again, resp);
        }
    }
});
