//! Property tests: random command sequences (abstract actions resolved against the
//! current state, a quarter of them deliberately stale) keep every invariant of the lock table;
//! refused commands change nothing; replicas agree; snapshots restore to the same hash;
//! `restore` never panics on arbitrary or corrupted bytes.

mod common;

use lock_manager::{Command, Epoch, Generation, LockState, Mode, NodeId, Outcome, VhdId};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// An abstract action, resolved against the current state so that most commands name
/// real epochs, generations and renewal counts (and so succeed), while `skew` makes a
/// quarter of them stale or bogus on purpose.
#[derive(Debug, Clone, Copy)]
struct Action {
    kind: u8,
    node: u64,
    other: u64,
    vhd: u64,
    mode: u8,
    skew: u8,
}

fn action() -> impl Strategy<Value = Action> {
    (0u8..18, 1u64..5, 1u64..5, 1u64..5, 0u8..3, 0u8..8).prop_map(
        |(kind, node, other, vhd, mode, skew)| Action {
            kind,
            node,
            other,
            vhd,
            mode,
            skew,
        },
    )
}

fn resolve(s: &LockState, a: Action) -> Command {
    let skewed = |x: u64| match a.skew {
        0 => x.saturating_sub(1),
        1 => x + 1,
        _ => x,
    };
    let node = NodeId(a.node);
    let other = NodeId(a.other);
    let vhd = VhdId(a.vhd);
    let epoch_of = |n: NodeId| Epoch(skewed(s.node_record(n).map_or(1, |r| r.epoch.0)));
    let generation = Generation(skewed(s.vhd_record(vhd).map_or(0, |r| r.generation.0)));
    let mode = [Mode::Write, Mode::Read, Mode::ReadDenyWrite][usize::from(a.mode)];
    match a.kind {
        0 => Command::Register { node },
        1..=3 => Command::Renew {
            node,
            epoch: epoch_of(node),
        },
        4 => Command::ExpireNode {
            node,
            epoch: epoch_of(node),
            renewals: skewed(s.node_record(node).map_or(0, |r| r.renewals)),
        },
        5 => Command::Leave {
            node,
            epoch: epoch_of(node),
        },
        6..=9 => Command::Acquire {
            vhd,
            node,
            epoch: epoch_of(node),
            mode,
        },
        10 | 11 => {
            // Release what the node holds, at its generation (or a skewed one).
            let held = s.holds_of(node).into_iter().find(|h| h.vhd == vhd);
            let g = held.map_or(generation, |h| Generation(skewed(h.generation.0)));
            Command::Release {
                vhd,
                node,
                epoch: epoch_of(node),
                generation: g,
            }
        }
        12 | 13 => {
            let from = s
                .vhd_record(vhd)
                .and_then(|r| r.writer)
                .map_or(node, |w| w.node);
            Command::Transfer {
                vhd,
                from,
                from_epoch: epoch_of(from),
                to: other,
                to_epoch: epoch_of(other),
                expected_generation: generation,
            }
        }
        14 => {
            let from = s
                .vhd_record(vhd)
                .and_then(|r| r.writer)
                .map_or(node, |w| w.node);
            Command::RequestTransfer {
                vhd,
                from,
                to: other,
                expected_generation: generation,
            }
        }
        16 => {
            let n = s
                .vhd_record(vhd)
                .and_then(|r| r.writer)
                .map_or(node, |w| w.node);
            Command::Reclaim {
                vhd,
                node: n,
                epoch: epoch_of(n),
                expected_generation: generation,
            }
        }
        _ => Command::Takeover {
            vhd,
            node,
            epoch: epoch_of(node),
            expected_generation: generation,
        },
    }
}

/// Registrations first, then up to 80 resolved actions.
fn commands() -> impl Strategy<Value = Vec<Action>> {
    proptest::collection::vec(action(), 1..80)
}

fn run(actions: &[Action]) -> Vec<Command> {
    let mut s = LockState::new();
    let mut out = Vec::new();
    for n in 1..5 {
        let c = Command::Register { node: NodeId(n) };
        let _ = s.apply(&c);
        out.push(c);
    }
    for &a in actions {
        let c = resolve(&s, a);
        let _ = s.apply(&c);
        out.push(c);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_every_invariant(actions in commands()) {
        let cmds = run(&actions);
        let mut s = LockState::new();
        let mut replica = LockState::new();
        // Per VHD: the highest write generation ever granted and the writer it went to.
        let mut last_write: BTreeMap<VhdId, (Generation, NodeId, Epoch)> = BTreeMap::new();
        let mut epochs: BTreeMap<NodeId, Epoch> = BTreeMap::new();
        let mut granted = 0usize;
        for cmd in &cmds {
            let before = s.clone();
            let res = s.apply(cmd);
            prop_assert_eq!(&replica.apply(cmd), &res, "replicas disagree on {:?}", cmd);
            prop_assert_eq!(replica.state_hash(), s.state_hash());
            if let Err(e) = s.check_invariants() {
                prop_assert!(false, "after {:?} -> {:?}: {}", cmd, res, e);
            }
            match &res {
                Err(_) => prop_assert_eq!(&s, &before, "refused {:?} changed the state", cmd),
                Ok(Outcome::Granted { vhd, node, epoch, mode: Mode::Write, generation, .. }) => {
                    granted += 1;
                    if let Some(&(g, n, e)) = last_write.get(vhd) {
                        let same = (n, e) == (*node, *epoch);
                        prop_assert!(
                            *generation > g || (same && *generation == g),
                            "{:?}: generation {:?} after {:?}", vhd, generation, g
                        );
                    }
                    last_write.insert(*vhd, (*generation, *node, *epoch));
                    // The grantee is the one valid writer.
                    prop_assert_eq!(s.valid_writer(*vhd), Some((*node, *epoch, *generation)));
                }
                Ok(_) => {}
            }
            // A VHD's generation never goes backwards while its record exists, and the
            // only writer that can be valid is the latest write grant.
            for o in s.owners() {
                if let Some(old) = before.owner(o.vhd) {
                    prop_assert!(o.generation >= old.generation);
                }
                if o.owner_valid {
                    let (g, n, e) = last_write[&o.vhd];
                    prop_assert_eq!((o.generation, o.owner, o.owner_epoch), (g, Some(n), Some(e)));
                }
            }
            // Only the holder itself (release, transfer, leave) or its expiry ends a
            // valid hold: no other node's command displaces a live writer or reader.
            for o in before.owners() {
                if let Some((n, e, g)) = before.valid_writer(o.vhd)
                    && s.valid_writer(o.vhd) != Some((n, e, g))
                {
                    prop_assert!(ended_by_holder(cmd, n), "{:?} displaced writer {:?} of {:?}", cmd, n, o.vhd);
                }
                for r in &o.readers {
                    let still = s.owner(o.vhd).is_some_and(|a| {
                        a.readers.iter().any(|x| x.node == r.node && x.generation == r.generation)
                    });
                    prop_assert!(still || ended_by_holder(cmd, r.node), "{:?} dropped reader {:?}", cmd, r);
                }
            }
            for n in s.nodes() {
                let prev = epochs.insert(n.node, n.epoch);
                prop_assert!(prev.is_none_or(|p| p <= n.epoch), "epoch went backwards");
            }
        }
        let restored = LockState::restore(&s.snapshot()).expect("own snapshot restores");
        prop_assert_eq!(restored.state_hash(), s.state_hash());
        prop_assert_eq!(&restored, &s);
        // Continuing on the restored copy gives the same results as on the original.
        let mut a = s.clone();
        let mut b = restored;
        for cmd in cmds.iter().rev().take(20) {
            prop_assert_eq!(a.apply(cmd), b.apply(cmd));
        }
        prop_assert_eq!(a.state_hash(), b.state_hash());
        let _ = granted;
    }

    #[test]
    fn restore_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(s) = LockState::restore(&bytes) {
            prop_assert!(s.check_invariants().is_ok());
        }
    }

    #[test]
    fn restore_refuses_or_accepts_consistently_after_corruption(
        actions in commands(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut s = LockState::new();
        for c in &run(&actions) {
            let _ = s.apply(c);
        }
        let mut bytes = s.snapshot();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        match LockState::restore(&bytes) {
            Ok(r) => {
                prop_assert!(r.check_invariants().is_ok());
                // What restored snapshots again to a canonical form that restores equal.
                prop_assert_eq!(LockState::restore(&r.snapshot()).expect("canonical"), r);
            }
            Err(e) => prop_assert_eq!(e.code(), "bad_snapshot"),
        }
    }
}

/// Whether `cmd` may end a hold of `holder`: its own release, leave, transfer, hold
/// change, or its expiry.
fn ended_by_holder(cmd: &Command, holder: NodeId) -> bool {
    match *cmd {
        Command::Release { node, .. }
        | Command::Leave { node, .. }
        | Command::ExpireNode { node, .. }
        | Command::Acquire { node, .. }
        | Command::Reclaim { node, .. }
        | Command::Takeover { node, .. } => node == holder,
        Command::Transfer { from, to, .. } => from == holder || to == holder,
        Command::Register { .. } | Command::Renew { .. } | Command::RequestTransfer { .. } => false,
    }
}

/// The property above must actually reach grants, takeovers and transfers; a generator
/// that only produced refusals would make it vacuous.
#[test]
fn the_generator_reaches_every_kind_of_success() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    for _ in 0..400 {
        let cmds = run(&commands().new_tree(&mut runner).expect("tree").current());
        let mut s = LockState::new();
        for c in &cmds {
            if let Ok(o) = s.apply(c) {
                let kind = match (c, o) {
                    (Command::Takeover { .. }, _) => "takeover",
                    (Command::Reclaim { .. }, _) => "reclaim",
                    (Command::Transfer { .. }, _) => "transfer",
                    (Command::ExpireNode { .. }, _) => "expire",
                    (Command::Leave { .. }, _) => "leave",
                    (Command::Release { .. }, _) => "release",
                    (
                        _,
                        Outcome::Granted {
                            mode: Mode::Write, ..
                        },
                    ) => "acquire_write",
                    (
                        _,
                        Outcome::Granted {
                            mode: Mode::ReadDenyWrite,
                            ..
                        },
                    ) => "acquire_rdw",
                    (_, Outcome::Granted { .. }) => "acquire_read",
                    _ => "other",
                };
                *seen.entry(kind).or_default() += 1;
            }
        }
    }
    for kind in [
        "takeover",
        "transfer",
        "expire",
        "leave",
        "release",
        "acquire_write",
        "acquire_rdw",
        "acquire_read",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) >= 5,
            "{kind} reached too rarely: {seen:?}"
        );
    }
}
