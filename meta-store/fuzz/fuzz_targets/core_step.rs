//! Envelopes from an authenticated peer fed into a running single-node core: forwarded
//! requests, replies and undecodable raft bytes must be answered or dropped, never panic.
//! (Well-formed raft messages are left to raft-rs: a peer that passed authentication is
//! trusted to speak Raft correctly.)
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use meta_store::config::Config;
use meta_store::core::Core;
use meta_store::engine::MemEngine;
use meta_store::kvsm::KvStateMachine;
use meta_store::wire::{Body, Envelope};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let mut cfg = Config::new(1, "fuzz");
    cfg.initial_voters = vec![1];
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let Ok(mut core) = Core::new(
        cfg,
        Arc::new(MemEngine::new()),
        KvStateMachine::new(),
        1,
        &logger,
    ) else {
        return;
    };
    for _ in 0..25 {
        core.tick();
        core.process_ready();
    }
    for chunk in data.split(|b| *b == 0xff) {
        let Ok(mut env) = Envelope::decode(chunk) else {
            continue;
        };
        env.to = 1;
        if let Some(Body::Raft(bytes)) = &env.body {
            let mut m = raft::prelude::Message::default();
            if protobuf::Message::merge_from_bytes(&mut m, bytes).is_ok() {
                continue;
            }
        }
        core.step(env);
        core.process_ready();
        while core.next_event().is_some() {}
        let _ = core.take_outbox();
    }
});
