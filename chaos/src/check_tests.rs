use proptest::prelude::*;

use super::*;
use crate::history::{FaultClass, Header};
use crate::stamp::Stamp;

const BOUND: u64 = 100;

fn hist(events: Vec<Event>) -> History {
    History {
        header: Header {
            seed: 0,
            in_doubt_us: BOUND,
            block: 4096,
            detail: String::new(),
        },
        events,
    }
}

fn w(id: u64, generation: u64, invoke: u64, complete: u64, outcome: Outcome) -> Event {
    Event::Write {
        client: 1,
        vhd: 1,
        block: 0,
        id,
        generation,
        node: 1,
        invoke,
        complete,
        outcome,
    }
}

fn seen(id: u64, generation: u64) -> Seen {
    Seen::Stamp(Stamp {
        vhd: 1,
        block: 0,
        client: 1,
        id,
        generation,
        node: 1,
    })
}

fn r(client: u64, s: Seen, invoke: u64, complete: u64) -> Event {
    Event::Read {
        client,
        vhd: 1,
        block: 0,
        node: 1,
        invoke,
        complete,
        outcome: Outcome::Ok,
        seen: Some(s),
    }
}

fn flush(invoke: u64, complete: u64) -> Event {
    Event::Flush {
        client: 1,
        vhd: 1,
        node: 1,
        invoke,
        complete,
        outcome: Outcome::Ok,
    }
}

fn kill(at: u64) -> Event {
    Event::Fault {
        class: FaultClass::Kill,
        node: 2,
        start: at,
        end: at + 1,
        detail: String::new(),
    }
}

fn kinds(events: Vec<Event>) -> Vec<&'static str> {
    check(&hist(events))
        .violations
        .iter()
        .map(|v| v.kind)
        .collect()
}

#[test]
fn a_plain_register_history_passes() {
    let rep = check(&hist(vec![
        r(1, Seen::Zero, 0, 5),
        w(1, 1, 10, 20, Outcome::Ok),
        r(1, seen(1, 1), 15, 25),
        r(1, seen(1, 1), 30, 40),
        w(2, 1, 50, 60, Outcome::Ok),
        // Concurrent with write 2: either value.
        r(1, seen(1, 1), 55, 58),
        r(2, seen(2, 1), 56, 70),
        r(1, seen(2, 1), 80, 90),
    ]));
    assert!(rep.ok(), "{:?}", rep.violations);
    assert_eq!(rep.writes_acked, 2);
    assert_eq!(rep.reads_acked, 6);
}

#[test]
fn an_overwritten_value_read_later_is_a_stale_read() {
    let ev = vec![
        w(1, 1, 10, 20, Outcome::Ok),
        w(2, 1, 30, 40, Outcome::Ok),
        r(1, seen(1, 1), 50, 60),
    ];
    assert_eq!(kinds(ev), ["stale_read"]);
    // Zeroes after an acknowledged write: lost.
    assert_eq!(
        kinds(vec![w(1, 1, 10, 20, Outcome::Ok), r(1, Seen::Zero, 30, 40)]),
        ["stale_read"]
    );
}

#[test]
fn a_write_in_doubt_may_land_until_its_bound() {
    // Write 1 timed out at 20; write 2 started within its bound: 1 may land after 2.
    let ok = vec![
        w(1, 1, 10, 20, Outcome::Unknown),
        w(2, 1, 30, 40, Outcome::Ok),
        r(1, seen(1, 1), 50, 60),
    ];
    assert!(kinds(ok).is_empty());
    // Write 2 started after the bound: 1 landing then is a late (stale) write.
    let late = vec![
        w(1, 1, 10, 20, Outcome::Unknown),
        w(2, 1, 20 + BOUND + 1, 200, Outcome::Ok),
        r(1, seen(1, 1), 300, 310),
    ];
    assert_eq!(kinds(late), ["stale_read"]);
}

#[test]
fn a_crash_may_lose_unflushed_writes_but_never_flushed_ones() {
    let unflushed = vec![
        w(1, 1, 10, 20, Outcome::Ok),
        w(2, 1, 30, 40, Outcome::Ok),
        kill(50),
        r(1, seen(1, 1), 60, 70),
    ];
    assert!(kinds(unflushed).is_empty());
    let flushed = vec![
        w(1, 1, 10, 20, Outcome::Ok),
        w(2, 1, 30, 40, Outcome::Ok),
        flush(45, 48),
        kill(50),
        r(1, seen(1, 1), 60, 70),
    ];
    assert_eq!(kinds(flushed), ["lost_flushed_write"]);
    // A flush sent before the write completed does not cover it.
    let early = vec![
        w(1, 1, 10, 20, Outcome::Ok),
        w(2, 1, 30, 40, Outcome::Ok),
        flush(35, 48),
        kill(50),
        r(1, seen(1, 1), 60, 70),
    ];
    assert!(kinds(early).is_empty());
}

#[test]
fn a_generation_never_goes_back() {
    // Write 1 (gen 5, in doubt) and write 2 (gen 6) overlap; a read saw gen 6, a later
    // read sees gen 5: a stale writer's write landed after the new owner's.
    let ev = vec![
        w(1, 5, 10, 20, Outcome::Unknown),
        w(2, 6, 15, 30, Outcome::Ok),
        r(1, seen(2, 6), 40, 50),
        r(1, seen(1, 5), 60, 70),
    ];
    let k = kinds(ev);
    assert!(k.contains(&"stale_generation"), "{k:?}");
    // The same order of generations with the reads concurrent is fine.
    let concurrent = vec![
        w(1, 5, 10, 20, Outcome::Unknown),
        w(2, 6, 15, 30, Outcome::Ok),
        r(1, seen(2, 6), 40, 65),
        r(2, seen(1, 5), 60, 70),
    ];
    assert!(kinds(concurrent).is_empty());
}

#[test]
fn a_clients_reads_never_go_back_in_time() {
    // Write 2 is in doubt (never acknowledged), so rule 3 allows either value; but once
    // client 1 saw write 2, its later read may not see write 1, which ended before 2.
    let ev = vec![
        w(1, 1, 10, 20, Outcome::Ok),
        w(2, 1, 30, 40, Outcome::Unknown),
        r(1, seen(2, 1), 50, 60),
        r(1, seen(1, 1), 70, 80),
    ];
    assert_eq!(kinds(ev), ["non_monotonic"]);
    let other_client = vec![
        w(1, 1, 10, 20, Outcome::Ok),
        w(2, 1, 30, 40, Outcome::Unknown),
        r(1, seen(2, 1), 50, 60),
        r(2, seen(1, 1), 70, 80),
    ];
    // Another client: only the register rule applies, and 2 was never acknowledged.
    assert!(kinds(other_client).is_empty());
}

#[test]
fn torn_misplaced_phantom_and_future_blocks_are_named() {
    let other = Stamp {
        vhd: 1,
        block: 7,
        client: 1,
        id: 1,
        generation: 1,
        node: 1,
    };
    let ev = vec![
        w(1, 1, 10, 20, Outcome::Ok),
        r(1, Seen::Torn { detail: "x".into() }, 300, 400),
        r(1, Seen::Misplaced(other), 300, 400),
        r(1, seen(9, 1), 30, 40),
        r(1, seen(1, 2), 30, 40),
    ];
    assert_eq!(kinds(ev), ["torn", "misplaced", "phantom", "phantom"]);
    let future = vec![w(1, 1, 50, 60, Outcome::Ok), r(1, seen(1, 1), 10, 20)];
    assert_eq!(kinds(future), ["future"]);
}

#[test]
fn a_torn_block_is_allowed_only_while_a_write_may_be_landing() {
    let torn = || Seen::Torn { detail: "x".into() };
    // Racing a write of the block.
    assert!(kinds(vec![w(1, 1, 10, 30, Outcome::Ok), r(1, torn(), 20, 25)]).is_empty());
    // Long after an acknowledged write: torn for real.
    assert_eq!(
        kinds(vec![w(1, 1, 10, 30, Outcome::Ok), r(1, torn(), 500, 510)]),
        ["torn"]
    );
    // A write without an answer may have landed in part, until a later write replaces it.
    assert!(
        kinds(vec![
            w(1, 1, 10, 30, Outcome::Unknown),
            r(1, torn(), 500, 510)
        ])
        .is_empty()
    );
    assert_eq!(
        kinds(vec![
            w(1, 1, 10, 30, Outcome::Unknown),
            w(2, 1, 30 + BOUND + 1, 300, Outcome::Ok),
            r(1, torn(), 500, 510)
        ]),
        ["torn"]
    );
}

#[test]
fn a_violation_prints_the_operations_involved() {
    let rep = check(&hist(vec![
        w(1, 1, 10, 20, Outcome::Ok),
        w(2, 1, 30, 40, Outcome::Ok),
        r(1, seen(1, 1), 50, 60),
    ]));
    let v = &rep.violations[0];
    assert_eq!(v.ops.len(), 3);
    assert!(v.ops[1].contains("\"id\":2"), "{:?}", v.ops);
    assert!(v.detail.contains("write 1"), "{}", v.detail);
}

/// A random history of a correct register: each operation takes effect at one instant
/// between its invoke and completion, generations only grow, some writes time out (and
/// take effect or not).
fn linearizable() -> impl Strategy<Value = Vec<Event>> {
    proptest::collection::vec((0u8..10, 1u64..8, 0u64..30, 0u64..30, 0u8..10), 1..120).prop_map(
        |ops| {
            let mut t = 1000;
            let mut value: Option<(u64, u64)> = None;
            let mut generation = 1;
            let mut events = Vec::new();
            for (i, (kind, step, before, after, extra)) in ops.into_iter().enumerate() {
                t += step;
                let (invoke, complete) = (t - before, t + after);
                let id = i as u64 + 1;
                let client = u64::from(extra % 2) + 1;
                match kind {
                    0..=4 => {
                        if extra == 0 {
                            generation += 1;
                        }
                        let outcome = if extra == 9 {
                            Outcome::Unknown
                        } else {
                            Outcome::Ok
                        };
                        // An unknown write that did not happen leaves the value as is.
                        if outcome == Outcome::Ok || before % 2 == 0 {
                            value = Some((id, generation));
                        }
                        events.push(Event::Write {
                            client,
                            vhd: 1,
                            block: 0,
                            id,
                            generation,
                            node: 1,
                            invoke,
                            complete,
                            outcome,
                        });
                    }
                    5..=8 => events.push(Event::Read {
                        client,
                        vhd: 1,
                        block: 0,
                        node: 1,
                        invoke,
                        complete,
                        outcome: Outcome::Ok,
                        seen: Some(value.map_or(Seen::Zero, |(id, g)| seen(id, g))),
                    }),
                    _ => events.push(flush(invoke, complete)),
                }
            }
            events
        },
    )
}

proptest! {
    #[test]
    fn a_correct_register_never_violates(events in linearizable()) {
        let rep = check(&hist(events));
        prop_assert!(rep.ok(), "{:#?}", rep.violations);
    }

    #[test]
    fn rereading_an_overwritten_value_is_always_caught(events in linearizable()) {
        // Append: an acknowledged write, then a read that sees the write before it.
        let last = events.iter().filter_map(|e| match e {
            Event::Write { id, generation, complete, .. } => Some((*id, *generation, *complete)),
            _ => None,
        }).max_by_key(|x| x.2);
        let end = events.iter().map(|e| match e {
            Event::Write { complete, .. } | Event::Read { complete, .. } | Event::Flush { complete, .. } => *complete,
            _ => 0,
        }).max().unwrap_or(0);
        let mut ev = events;
        let t = end + BOUND + 10;
        ev.push(w(100_000, 1_000, t, t + 5, Outcome::Ok));
        ev.push(r(1, last.map_or(Seen::Zero, |(id, g, _)| seen(id, g)), t + 10, t + 20));
        let rep = check(&hist(ev));
        prop_assert!(rep.violations.iter().any(|v| v.kind == "stale_read"), "{:#?}", rep.violations);
    }
}
