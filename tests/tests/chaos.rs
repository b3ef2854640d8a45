//! The chaos checker against a deliberately broken build (issue 15): with the fail point
//! `fence.off`, a node's writes pass its closed fence, and a peer serving redirected
//! writes does not check their writer's generation. A SIGSTOPped owner (no lease
//! watchdog to kill it) then lands the writes it had queued when it resumes, after
//! another node took the VHD over and wrote it at a newer generation, and the checker
//! must say so. The correct build runs every fault class (with the watchdog, as
//! production should) in `scripts/test`'s `csvadm chaos run` with no violation.

use std::time::Duration;

use chaos::history::FaultClass;
use csv_tests::chaos::{Config, run};

#[test]
fn heavy_the_checker_catches_a_build_whose_fence_lets_a_paused_owner_write() {
    let dir = tempfile::tempdir().expect("dir");
    let history = dir.path().join("broken.jsonl");
    let s = run(&Config {
        seed: 3,
        duration: Duration::from_secs(20),
        classes: vec![FaultClass::Stop],
        history: history.clone(),
        node_env: vec![("FAILPOINTS".into(), "fence.off=return".into())],
        blocks: 64,
        // Many operations in flight, half of them writes: about 16 writes are queued in
        // the paused owner. Each stale one that lands is caught unless the new owner's
        // next operation on its block is a write (one chance in two): a miss takes all of
        // them hidden, about 2^-16.
        depth: 32,
        write_percent: 50,
        watchdog: false,
    });
    let kinds: Vec<&str> = s.report.violations.iter().map(|v| v.kind).collect();
    assert!(
        kinds
            .iter()
            .any(|k| ["stale_generation", "stale_read"].contains(k)),
        "the broken build went unnoticed: {:?} faults, {} operations, violations {kinds:?}",
        s.report.faults,
        s.report.operations
    );
    assert!(!s.ok());
    // The kept history gives the same verdict when checked again.
    let f = std::fs::File::open(&history).expect("history");
    let h = chaos::history::History::read(std::io::BufReader::new(f)).expect("parse");
    assert_eq!(chaos::check::check(&h).violations, s.report.violations);
}
