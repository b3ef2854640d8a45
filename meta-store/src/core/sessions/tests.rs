//! Duplicate detection, eviction and reload of the session table.

use super::*;
use crate::engine::MemEngine;

#[test]
fn duplicates_are_recognised_and_state_survives_a_reload() {
    let e = MemEngine::new();
    let mut s = Sessions::default();
    let mut b = WriteBatch::new();
    assert_eq!(s.begin(1, 7, 10, 10, 100, &mut b), Seen::New);
    s.record(1, 7, 10, b"r10", &mut b);
    assert_eq!(s.begin(1, 7, 11, 10, 101, &mut b), Seen::New);
    s.record(1, 7, 11, b"r11", &mut b);
    assert_eq!(
        s.begin(1, 7, 10, 10, 102, &mut b),
        Seen::Duplicate(Some(b"r10".to_vec()))
    );
    e.write(b, true).expect("write");

    let mut s2 = Sessions::load(&e).expect("load");
    let mut b = WriteBatch::new();
    // The origin has its answer for 10: lowest moves to 11, 10's copies are ignored.
    assert_eq!(s2.begin(1, 7, 12, 11, 103, &mut b), Seen::New);
    assert_eq!(s2.begin(1, 7, 10, 11, 104, &mut b), Seen::Duplicate(None));
    assert_eq!(
        s2.begin(1, 7, 11, 11, 105, &mut b),
        Seen::Duplicate(Some(b"r11".to_vec()))
    );
    // Another incarnation of the same node is a separate session.
    assert_eq!(s2.begin(1, 8, 10, 1, 106, &mut b), Seen::New);
    e.write(b, true).expect("write");
    let s3 = Sessions::load(&e).expect("load");
    assert_eq!(s3.map, s2.map);
    assert!(
        e.get(Cf::Sessions, &result_key(1, 7, 10))
            .expect("get")
            .is_none()
    );
}

#[test]
fn sessions_are_capped_per_node() {
    let e = MemEngine::new();
    let mut s = Sessions::default();
    let mut b = WriteBatch::new();
    for inc in 1..=(MAX_SESSIONS_PER_NODE as u64 + 2) {
        assert_eq!(s.begin(3, inc, 1, 1, inc, &mut b), Seen::New);
        s.record(3, inc, 1, b"x", &mut b);
    }
    assert_eq!(s.len(), MAX_SESSIONS_PER_NODE);
    e.write(b, true).expect("write");
    let loaded = Sessions::load(&e).expect("load");
    assert_eq!(loaded.map, s.map);
    assert!(
        !s.map.contains_key(&(3, 1)),
        "the oldest session went first"
    );
}

#[test]
fn corrupt_records_are_reported() {
    let e = MemEngine::new();
    let mut b = WriteBatch::new();
    b.put(Cf::Sessions, vec![1, 2, 3], vec![]);
    e.write(b, true).expect("write");
    assert!(Sessions::load(&e).is_err());
}
