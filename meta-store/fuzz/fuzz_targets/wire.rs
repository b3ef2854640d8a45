//! Everything a peer can send: frames, the hello, envelopes and what they carry (raft
//! messages in protobuf 2, membership requests, error replies). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meta_store::transport::frame::split_frames;
use meta_store::transport::tcp::check_hello;
use meta_store::wire::{Body, Envelope, ForwardKind, MembershipRequest, Outcome};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let _ = check_hello(data, "cluster", 1);
    if let Ok((frames, used)) = split_frames(data, 1 << 16) {
        assert!(used <= data.len());
        for f in frames {
            let Ok(env) = Envelope::decode(f) else {
                continue;
            };
            match env.body {
                Some(Body::Raft(bytes)) => {
                    let mut m = raft::prelude::Message::default();
                    let _ = protobuf::Message::merge_from_bytes(&mut m, &bytes);
                }
                Some(Body::Forward(fw))
                    if ForwardKind::try_from(fw.kind) == Ok(ForwardKind::Membership) =>
                {
                    let _ = MembershipRequest::decode(fw.data.as_slice());
                }
                Some(Body::Forward(_)) => {}
                Some(Body::Reply(r)) => {
                    if let Some(Outcome::Error(w)) = r.outcome {
                        let e = meta_store::Error::from(&w);
                        let _ = e.code();
                    }
                }
                None => {}
            }
        }
    }
});
