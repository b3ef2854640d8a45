//! The core's rules, by example and under a seeded simulation of paths failing, peers
//! dying, operators and clocks.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn peer(node: u64, load: u64) -> Peer {
    Peer {
        node,
        direct: true,
        reachable: true,
        load,
    }
}

fn peers(h: &mut Health, now: Instant, list: Vec<Peer>, coordinator: Option<u64>) {
    h.handle(
        now,
        Input::Peers {
            peers: list,
            coordinator,
        },
    );
}

const S: Duration = Duration::from_secs(1);

#[test]
fn three_errors_in_the_window_quiesce_then_redirect_to_the_coordinator() {
    let t0 = Instant::now();
    let mut h = Health::new(Config::default(), 2, t0);
    peers(
        &mut h,
        t0,
        vec![peer(1, 9), peer(2, 0), peer(3, 0)],
        Some(1),
    );
    assert!(h.handle(t0, Input::PathError { timeout: false }).is_none());
    h.handle(t0 + S, Input::PathError { timeout: false });
    // An error outside the window does not count with the first.
    h.handle(t0 + 7 * S, Input::PathError { timeout: false });
    h.handle(t0 + 8 * S, Input::PathError { timeout: false });
    assert_eq!(h.status().mode, Mode::Direct);
    let st = h
        .handle(t0 + 9 * S, Input::PathError { timeout: false })
        .expect("lost");
    assert_eq!((st.mode, st.reason), (Mode::Quiescing, Reason::IoErrors));
    // Nothing is reissued before the failed path is quiet.
    assert!(h.tick(t0 + 10 * S).is_none());
    let st = h.handle(t0 + 10 * S, Input::Quiet).expect("redirected");
    assert_eq!(
        (st.mode, st.reason, st.peer),
        (Mode::Redirected, Reason::IoErrors, Some(1))
    );
}

#[test]
fn without_a_serving_coordinator_the_least_loaded_peer_is_chosen() {
    let t0 = Instant::now();
    let mut h = Health::new(Config::default(), 2, t0);
    let mut c = peer(1, 0);
    c.direct = false;
    peers(
        &mut h,
        t0,
        vec![c, peer(3, 5), peer(4, 2), peer(5, 2)],
        Some(1),
    );
    assert_eq!(h.choose(), Some(4));
}

#[test]
fn a_timeout_or_a_failed_probe_is_enough() {
    let t0 = Instant::now();
    let mut h = Health::new(Config::default(), 2, t0);
    let st = h
        .handle(t0, Input::PathError { timeout: true })
        .expect("lost");
    assert_eq!(st.reason, Reason::IoTimeout);
    let mut h = Health::new(Config::default(), 2, t0);
    let st = h.handle(t0, Input::Probe { ok: false }).expect("lost");
    assert_eq!(st.reason, Reason::NoDiskConnectivity);
}

#[test]
fn no_peer_pauses_and_a_peer_appearing_resumes() {
    let t0 = Instant::now();
    let mut h = Health::new(Config::default(), 2, t0);
    h.handle(t0, Input::Probe { ok: false });
    let st = h.handle(t0, Input::Quiet).expect("paused");
    assert_eq!(st.mode, Mode::Paused);
    peers(&mut h, t0 + S, vec![peer(3, 0)], None);
    assert_eq!(h.status().mode, Mode::Redirected);
    assert_eq!(h.status().peer, Some(3));
}

#[test]
fn fail_back_waits_for_the_settle_time_and_the_drain_and_flaps_double_it() {
    let t0 = Instant::now();
    let cfg = Config::default();
    let mut h = Health::new(cfg.clone(), 2, t0);
    peers(&mut h, t0, vec![peer(1, 0)], Some(1));
    h.handle(t0, Input::Probe { ok: false });
    h.handle(t0, Input::Quiet);
    h.handle(t0 + S, Input::Probe { ok: true });
    assert!(
        h.tick(t0 + 10 * S).is_none(),
        "settle counts from the first good probe"
    );
    let st = h.tick(t0 + 11 * S).expect("failing back");
    assert_eq!(st.mode, Mode::FailingBack);
    assert_eq!(st.peer, Some(1));
    let st = h.handle(t0 + 11 * S, Input::Drained).expect("direct");
    assert_eq!(st.mode, Mode::Direct);
    // A loss within the flap window doubles the settle time, up to the ceiling.
    let mut t = t0 + 12 * S;
    let mut expected = cfg.settle_time;
    for _ in 0..8 {
        h.handle(t, Input::Probe { ok: false });
        expected = (expected * 2).min(cfg.max_settle);
        assert_eq!(h.settle_time(), expected);
        h.handle(t, Input::Quiet);
        h.handle(t, Input::Probe { ok: true });
        t += h.settle_time();
        h.tick(t);
        h.handle(t, Input::Drained);
        assert_eq!(h.status().mode, Mode::Direct);
        t += S;
    }
    // A loss long after the last return starts from the base again.
    t += cfg.flap_window;
    h.handle(t, Input::Probe { ok: false });
    assert_eq!(h.settle_time(), cfg.settle_time);
}

#[test]
fn the_operators_request_holds_until_withdrawn() {
    let t0 = Instant::now();
    let mut h = Health::new(Config::default(), 2, t0);
    peers(&mut h, t0, vec![peer(1, 0)], Some(1));
    let st = h.handle(t0, Input::User { on: true }).expect("quiescing");
    assert_eq!((st.mode, st.reason), (Mode::Quiescing, Reason::UserRequest));
    h.handle(t0, Input::Quiet);
    assert_eq!(h.status().mode, Mode::Redirected);
    for i in 1..100 {
        h.handle(t0 + i * S, Input::Probe { ok: true });
        assert_eq!(h.status().mode, Mode::Redirected);
    }
    // The path was healthy all along: withdrawing fails back at once.
    let st = h
        .handle(t0 + 100 * S, Input::User { on: false })
        .expect("failing back");
    assert_eq!(st.mode, Mode::FailingBack);
}

#[test]
fn a_lost_peer_is_left_through_quiescing_and_another_taken() {
    let t0 = Instant::now();
    let mut h = Health::new(Config::default(), 2, t0);
    peers(&mut h, t0, vec![peer(1, 0), peer(3, 0)], Some(1));
    h.handle(t0, Input::Probe { ok: false });
    h.handle(t0, Input::Quiet);
    assert_eq!(h.status().peer, Some(1));
    let st = h.handle(t0 + S, Input::PeerFailed).expect("leaving");
    assert_eq!(
        (st.mode, st.reason, st.peer),
        (Mode::Quiescing, Reason::PeerLost, Some(1))
    );
    let st = h.handle(t0 + 2 * S, Input::Quiet).expect("another peer");
    assert_eq!((st.mode, st.peer), (Mode::Redirected, Some(3)));
    // A peer whose published path is lost is left the same way.
    let mut p3 = peer(3, 0);
    p3.direct = false;
    peers(&mut h, t0 + 3 * S, vec![peer(1, 0), p3], Some(1));
    assert_eq!(h.status().mode, Mode::Quiescing);
}

#[test]
fn names_parse_back() {
    for m in [
        Mode::Direct,
        Mode::Quiescing,
        Mode::Redirected,
        Mode::Paused,
        Mode::FailingBack,
    ] {
        assert_eq!(Mode::parse(m.as_str()), Some(m));
    }
    for r in [
        Reason::Healthy,
        Reason::IoErrors,
        Reason::IoTimeout,
        Reason::NoDiskConnectivity,
        Reason::UserRequest,
        Reason::PeerLost,
    ] {
        assert_eq!(Reason::parse(r.as_str()), Some(r));
    }
    assert_eq!(Mode::parse("sideways"), None);
}

/// The shell's side in the simulation: where calls are issued, what is in doubt.
#[derive(Debug, Default)]
struct Shell {
    /// Calls issued on the direct path not known to have ended.
    direct_in_doubt: bool,
    /// Calls issued through a peer's session not known to have ended.
    session_in_doubt: Option<u64>,
}

/// Seeded simulation: random inputs (with clock jumps) from a shell that keeps its
/// contract (it reports `Quiet`/`Drained` only when true); every step checks the
/// rules of the module documentation.
#[test]
fn seeded_simulation_keeps_the_reissue_rules() {
    let seeds = std::env::var("REDIRECTOR_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300u64);
    for seed in 0..seeds {
        simulate(seed);
    }
}

fn simulate(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cfg = Config::default();
    let t0 = Instant::now();
    let mut now = t0;
    let mut h = Health::new(cfg.clone(), 1, now);
    let mut shell = Shell::default();
    let mut path_ok = true;
    let mut healthy_from = Some(now);
    let mut user = false;
    let mut list: Vec<Peer> = (2..=4).map(|n| peer(n, rng.random_range(0..4))).collect();
    for step in 0..400 {
        now += Duration::from_millis(rng.random_range(0..3000));
        if rng.random_range(0..100) < 3 {
            now += Duration::from_secs(rng.random_range(10..120));
        }
        let before = h.status().clone();
        let input = match rng.random_range(0..10) {
            0 => {
                path_ok = !path_ok;
                healthy_from = path_ok.then_some(now);
                Input::Probe { ok: path_ok }
            }
            1 | 2 => {
                if path_ok {
                    healthy_from.get_or_insert(now);
                    Input::Probe { ok: true }
                } else {
                    Input::Probe { ok: false }
                }
            }
            3 if !path_ok && before.mode == Mode::Direct => {
                healthy_from = None;
                Input::PathError {
                    timeout: rng.random_bool(0.3),
                }
            }
            4 => {
                for p in &mut list {
                    if rng.random_bool(0.2) {
                        p.direct = !p.direct;
                    }
                    if rng.random_bool(0.1) {
                        p.reachable = !p.reachable;
                    }
                    p.load = rng.random_range(0..4);
                }
                Input::Peers {
                    peers: list.clone(),
                    coordinator: Some(rng.random_range(1..=4)),
                }
            }
            5 if before.mode == Mode::Redirected => Input::PeerFailed,
            6 => {
                // The shell's wait for quiet ends: what was in doubt has passed its bound.
                shell.direct_in_doubt = false;
                if before.mode == Mode::Quiescing {
                    shell.session_in_doubt = None;
                }
                Input::Quiet
            }
            7 if before.mode == Mode::FailingBack => {
                shell.session_in_doubt = None;
                Input::Drained
            }
            8 if rng.random_bool(0.2) => {
                user = !user;
                Input::User { on: user }
            }
            _ => Input::CallOk,
        };
        h.handle(now, input.clone());
        h.tick(now);
        let after = h.status().clone();
        let ctx = format!("seed {seed} step {step}: {before:?} --{input:?}--> {after:?}");
        // What the shell issues in the new mode, and the rules on reissue.
        match after.mode {
            Mode::Direct => {
                assert!(
                    shell.session_in_doubt.is_none(),
                    "direct while a session is in doubt: {ctx}"
                );
                shell.direct_in_doubt = true;
            }
            Mode::Redirected => {
                assert!(
                    !shell.direct_in_doubt,
                    "redirected while direct calls are in doubt: {ctx}"
                );
                let p = after.peer.expect("a peer");
                assert!(
                    shell.session_in_doubt.is_none_or(|s| s == p),
                    "a second peer while the first session is in doubt: {ctx}"
                );
                assert!(p != 1, "redirected to itself: {ctx}");
                if before.mode != Mode::Redirected || before.peer != after.peer {
                    let lp = list.iter().find(|x| x.node == p).expect("known peer");
                    assert!(
                        lp.direct && lp.reachable,
                        "chose a peer that cannot serve: {ctx}"
                    );
                }
                shell.session_in_doubt = Some(p);
            }
            Mode::FailingBack if before.mode != Mode::FailingBack => {
                assert_eq!(before.mode, Mode::Redirected, "{ctx}");
                assert!(!user, "failing back against the operator's request: {ctx}");
                let hf = healthy_from.expect("failing back on a path never healthy");
                assert!(
                    now.saturating_duration_since(hf) >= cfg.settle_time,
                    "{ctx}"
                );
            }
            Mode::FailingBack | Mode::Quiescing | Mode::Paused => {}
        }
        if before.mode == Mode::Redirected && after.mode == Mode::Direct {
            panic!("direct without failing back: {ctx}");
        }
        if before.mode == Mode::Direct && after.mode == Mode::Redirected {
            panic!("redirected without quiescing: {ctx}");
        }
        assert!(
            (cfg.settle_time..=cfg.max_settle).contains(&h.settle_time()),
            "{ctx}"
        );
    }
}
