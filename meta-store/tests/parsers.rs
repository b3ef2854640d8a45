//! Property tests of everything that parses peer or disk input: arbitrary bytes give an
//! error or a value, never a panic, and valid values round-trip. (Fuzz targets for the
//! same parsers live in meta-store/fuzz.)

use std::sync::Arc;

use meta_store::config::Config;
use meta_store::core::Core;
use meta_store::engine::MemEngine;
use meta_store::kvsm::{KvCommand, KvStateMachine};
use meta_store::storage::decode_snapshot_payload;
use meta_store::transport::tcp::check_hello;
use meta_store::wire::{Body, Envelope, Forward, Reply, WireError};
use proptest::prelude::*;
use prost::Message as _;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn envelopes_and_errors_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(env) = Envelope::decode(bytes.as_slice()) {
            let again = Envelope::decode(env.encode_to_vec().as_slice()).expect("re-decode");
            prop_assert_eq!(again, env);
        }
        if let Ok(w) = WireError::decode(bytes.as_slice()) {
            let _ = meta_store::Error::from(&w).code();
        }
        let _ = check_hello(&bytes, "c", 1);
    }

    #[test]
    fn kv_commands_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        if let Ok(c) = KvCommand::decode(&bytes) {
            prop_assert_eq!(c.encode(), bytes);
        }
    }

    #[test]
    fn kv_commands_round_trip(key in proptest::collection::vec(any::<u8>(), 0..40), value in proptest::collection::vec(any::<u8>(), 0..40), del in any::<bool>()) {
        let c = if del { KvCommand::Delete { key } } else { KvCommand::Put { key, value } };
        prop_assert_eq!(KvCommand::decode(&c.encode()).expect("valid"), c);
    }

    #[test]
    fn snapshot_payloads_are_checked(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut s = raft::prelude::Snapshot::default();
        s.set_data(bytes.into());
        s.mut_metadata().index = 9;
        if let Ok(p) = decode_snapshot_payload(&s, 1 << 16) {
            prop_assert!(p.kvs.windows(2).all(|w| w[0].key < w[1].key));
        }
    }

    /// Forwarded requests and replies with arbitrary fields, and undecodable raft bytes,
    /// reach a running core: it answers or drops them and keeps working.
    #[test]
    fn core_survives_arbitrary_peer_requests(
        msgs in proptest::collection::vec((0u8..3, any::<u64>(), any::<i32>(), proptest::collection::vec(any::<u8>(), 0..64), any::<u64>(), any::<u64>()), 1..24)
    ) {
        let mut cfg = Config::new(1, "prop");
        cfg.initial_voters = vec![1];
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut core = Core::new(cfg, Arc::new(MemEngine::new()), KvStateMachine::new(), 3, &logger)
            .expect("core");
        for _ in 0..25 {
            core.tick();
            core.process_ready();
        }
        for (kind, rid, k, data, inc, lowest) in msgs {
            let body = match kind {
                0 => Body::Forward(Forward { request_id: rid, kind: k, data, incarnation: inc, lowest }),
                1 => Body::Reply(Reply { request_id: rid, outcome: None, incarnation: inc }),
                _ => Body::Raft(vec![0xff; 3]),
            };
            core.step(Envelope { from: 2 + (rid % 3), to: 1, body: Some(body) });
            core.process_ready();
            while core.next_event().is_some() {}
            let _ = core.take_outbox();
        }
        prop_assert!(core.failure().is_none());
        // Still a working leader.
        let rid = core.propose(KvCommand::Put { key: b"k".to_vec(), value: b"v".to_vec() }.encode(), None);
        core.process_ready();
        let mut done = false;
        while let Some(ev) = core.next_event() {
            if let meta_store::Event::Done { request_id, result } = ev {
                prop_assert_eq!(request_id, rid);
                prop_assert!(result.is_ok(), "{:?}", result);
                done = true;
            }
        }
        prop_assert!(done);
    }
}
