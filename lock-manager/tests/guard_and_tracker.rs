//! The node-side `FenceGuard` and the coordinator-side `LivenessTracker`, driven with
//! explicit clock readings against a real `LockState`.

mod common;

use common::*;
use lock_manager::{
    Command, Epoch, FenceDenied, FenceEvent, FenceGuard, Generation, LeaseTiming, LivenessTracker,
    LockError, LockState, Mode, NodeId, Outcome, Request, Time, VhdId,
};
use std::time::Duration;

const N1: NodeId = NodeId(1);
const V1: VhdId = VhdId(1);

fn at(ms: u64) -> Time {
    Time::from_millis(ms)
}

/// A registered guard for node 1 with a confirmed renewal sent at `sent_ms`.
fn live_guard(state: &mut LockState, timing: &LeaseTiming, sent_ms: u64) -> FenceGuard {
    let mut g = FenceGuard::new(N1, timing);
    let reg_out = state.apply(&g.register_command()).expect("register");
    assert!(g.on_registered(&reg_out).is_empty());
    let req = g
        .poll_renewal(at(sent_ms))
        .expect("first renewal is due at once");
    let res = state.apply(&req.command);
    assert!(g.on_result(req.ticket, &res, at(sent_ms + 5)).is_empty());
    g
}

/// Proposes `req`, applies it, feeds the answer back; returns the answer.
fn propose(
    state: &mut LockState,
    g: &mut FenceGuard,
    req: Request,
    now: Time,
) -> (Result<Outcome, LockError>, Vec<FenceEvent>) {
    let res = state.apply(&req.command);
    let ev = g.on_result(req.ticket, &res, now);
    (res, ev)
}

fn acquire(state: &mut LockState, g: &mut FenceGuard, vhd: VhdId, mode: Mode) -> Generation {
    let req = g.request_acquire(vhd, mode).expect("may request");
    match propose(state, g, req, at(1)) {
        (Ok(Outcome::Granted { generation, .. }), ev) if ev.is_empty() => generation,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn fence_is_closed_until_registered_renewed_and_granted() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = FenceGuard::new(N1, &timing);
    assert!(
        g.poll_renewal(at(0)).is_none(),
        "no renewal before registration"
    );
    assert!(g.needs_register());
    assert!(g.request_acquire(V1, Mode::Write).is_err(), "no epoch yet");
    assert_eq!(
        g.check_write(V1, Generation(1), at(0)),
        Err(FenceDenied::NotHeld)
    );
    let out = state.apply(&g.register_command()).expect("register");
    g.on_registered(&out);
    // Granted but no lease yet.
    let gen_ = acquire(&mut state, &mut g, V1, Mode::Write);
    assert_eq!(g.check_write(V1, gen_, at(1)), Err(FenceDenied::NoLease));
    let req = g.poll_renewal(at(10)).expect("due");
    propose(&mut state, &mut g, req, at(12)).0.expect("renewed");
    assert!(g.may_write(V1, gen_, at(12)));
    assert_eq!(g.deadline(), Some(at(10).saturating_add(timing.node_lease)));
}

#[test]
fn fence_checks_mode_generation_and_closes_on_its_own_at_the_deadline() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 1000);
    state.apply(&reg(2)).expect("register 2");
    let gen_ = acquire(&mut state, &mut g, V1, Mode::Write);
    acquire(&mut state, &mut g, VhdId(2), Mode::Read);
    let deadline = at(1000).saturating_add(timing.node_lease);
    let just_before = Time::from_nanos(deadline.as_nanos() - 1);
    assert!(g.may_write(V1, gen_, just_before));
    assert_eq!(
        g.check_write(V1, Generation(gen_.0 + 1), just_before),
        Err(FenceDenied::WrongGeneration {
            held: gen_,
            asked: Generation(gen_.0 + 1)
        })
    );
    assert_eq!(
        g.check_write(VhdId(2), Generation(2), just_before),
        Err(FenceDenied::ReadOnly)
    );
    assert!(g.check_read(VhdId(2), just_before).is_ok());
    // Nothing is called at the deadline: the comparison alone closes the fence.
    assert_eq!(
        g.check_write(V1, gen_, deadline),
        Err(FenceDenied::Lapsed { deadline })
    );
    assert_eq!(
        g.check_read(VhdId(2), deadline),
        Err(FenceDenied::Lapsed { deadline })
    );
    assert!(g.poll(just_before).is_empty());
    assert_eq!(g.poll(deadline), vec![FenceEvent::Lapsed { deadline }]);
    assert!(g.poll(deadline).is_empty(), "a lapse is reported once");
}

#[test]
fn fence_reopens_only_after_a_renewal_at_the_same_epoch_still_in_date() {
    let timing = LeaseTiming::default();
    let d = timing.node_lease;
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 0);
    let gen_ = acquire(&mut state, &mut g, V1, Mode::Write);
    let deadline = at(0).saturating_add(d);
    // Two renewals go out while confirmations are delayed (a partition).
    let t_early = at(0).saturating_add(timing.renew_interval);
    let early = g.poll_renewal(t_early).expect("due");
    let t_late = t_early.saturating_add(timing.renew_retry);
    let late = g.poll_renewal(t_late).expect("retry while unconfirmed");
    let lapse_time = deadline.saturating_add(Duration::from_millis(10));
    assert_eq!(g.poll(lapse_time), vec![FenceEvent::Lapsed { deadline }]);
    assert!(!g.may_write(V1, gen_, lapse_time));
    // The answer to `early` comes so late that its own deadline has passed: stays closed.
    let after_early = t_early
        .saturating_add(d)
        .saturating_add(Duration::from_millis(1));
    let (_, ev) = propose(&mut state, &mut g, early, after_early);
    assert!(ev.is_empty());
    assert!(!g.may_write(V1, gen_, after_early));
    // `late` is confirmed while its deadline is still ahead: reopened.
    let (_, ev) = propose(&mut state, &mut g, late, after_early);
    assert_eq!(
        ev,
        vec![FenceEvent::Reopened {
            deadline: t_late.saturating_add(d)
        }]
    );
    assert!(g.may_write(V1, gen_, after_early));
}

#[test]
fn a_bumped_epoch_loses_every_hold_and_nothing_is_retaken() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 0);
    state.apply(&reg(2)).expect("register 2");
    let gen_ = acquire(&mut state, &mut g, V1, Mode::Write);
    acquire(&mut state, &mut g, VhdId(2), Mode::ReadDenyWrite);
    // A request sent before the expiry, answered after it.
    let pending = g
        .request_acquire(VhdId(3), Mode::Write)
        .expect("may request");
    // The coordinator expires node 1 (count 1: the one renewal above).
    state.apply(&expire(1, 1, 1)).expect("expire");
    let t = at(0).saturating_add(timing.renew_interval);
    let req = g.poll_renewal(t).expect("due");
    let (res, ev) = propose(&mut state, &mut g, req, t);
    assert!(matches!(res, Err(LockError::StaleEpoch { .. })));
    let FenceEvent::OwnershipLost {
        old_epoch,
        new_epoch,
        holds,
    } = &ev[0]
    else {
        panic!("{ev:?}")
    };
    assert_eq!((*old_epoch, *new_epoch), (Some(Epoch(1)), Some(Epoch(2))));
    assert_eq!(holds.len(), 2);
    assert!(
        !g.may_write(V1, gen_, t),
        "closed although the old deadline is ahead"
    );
    // The old request's answer is ignored (its ticket died with the epoch).
    let (res, ev) = propose(&mut state, &mut g, pending, t);
    assert!(res.is_err() && ev.is_empty());
    // It renews at the new epoch: live again, but holds nothing.
    let req = g.poll_renewal(t).expect("renews at once at the new epoch");
    assert_eq!(req.command, renew(1, 2));
    let (_, ev) = propose(&mut state, &mut g, req, t);
    assert!(ev.is_empty());
    assert!(g.holds().is_empty());
    assert!(!g.may_write(V1, gen_, t));
}

#[test]
fn a_late_grant_after_a_release_does_not_reopen_the_fence() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 0);
    let gen_ = acquire(&mut state, &mut g, V1, Mode::Write);
    // A retried acquire is answered (idempotently) only after the node began releasing.
    let retry = g.request_acquire(V1, Mode::Write).expect("may request");
    let late_answer = state.apply(&retry.command);
    let rel_req = g.begin_release(V1).expect("held");
    assert!(
        g.request_acquire(V1, Mode::Write).is_err(),
        "no acquire while releasing"
    );
    assert!(g.on_result(retry.ticket, &late_answer, at(2)).is_empty());
    assert!(!g.may_write(V1, gen_, at(2)));
    let (res, _) = propose(&mut state, &mut g, rel_req, at(3));
    assert!(res.is_ok());
    assert!(g.status(at(3)).releasing.is_empty());
    assert!(state.owner(V1).is_none());
}

#[test]
fn cooperative_handoff_closes_first_and_reopens_only_through_a_reclaim() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 0);
    state.apply(&reg(2)).expect("register 2");
    let gen_ = acquire(&mut state, &mut g, V1, Mode::Write);
    let now = at(100);
    // Target named at a wrong epoch: refused, but the fence stays closed (a duplicate of
    // the transfer could still be in flight).
    let req = g
        .begin_handoff(V1, NodeId(2), Epoch(9))
        .expect("held for write");
    assert_eq!(g.check_write(V1, gen_, now), Err(FenceDenied::HandingOff));
    let duplicate = req.command.clone();
    let (res, ev) = propose(&mut state, &mut g, req, now);
    assert!(matches!(
        res,
        Err(LockError::StaleEpoch {
            node: NodeId(2),
            ..
        })
    ));
    assert_eq!(ev, vec![FenceEvent::HandoffFailed { vhd: V1 }]);
    assert!(!g.may_write(V1, gen_, now));
    // Reclaim: a new generation; the old one is dead for every in-flight command.
    let req = g.reclaim(V1).expect("handing off");
    let (res, ev) = propose(&mut state, &mut g, req, now);
    let Ok(Outcome::Granted {
        generation: new_gen,
        ..
    }) = res
    else {
        panic!("{res:?}")
    };
    assert!(ev.is_empty() && new_gen > gen_);
    assert!(g.may_write(V1, new_gen, now));
    assert!(!g.may_write(V1, gen_, now));
    assert!(matches!(
        state.apply(&duplicate),
        Err(LockError::GenerationMismatch { .. })
    ));
    // The real hand-off; the target expects it above the source's generation.
    let mut target = FenceGuard::new(NodeId(2), &timing);
    target.on_registered(&state.apply(&reg(2)).expect("register"));
    assert!(target.expect_transfer(V1, new_gen));
    let req = g
        .begin_handoff(V1, NodeId(2), Epoch(1))
        .expect("held for write");
    assert!(!g.may_write(V1, new_gen, now), "closed before the proposal");
    let (res, ev) = propose(&mut state, &mut g, req, now);
    assert_eq!(
        ev,
        vec![FenceEvent::HoldDropped {
            vhd: V1,
            generation: new_gen
        }]
    );
    assert!(g.hold(V1).is_none());
    let granted = res.expect("transferred");
    assert!(target.on_transfer_in(&granted).is_empty());
    assert_eq!(target.hold(V1).map(|h| h.mode), Some(Mode::Write));
    // A duplicate notification changes nothing; after a release it is refused (the
    // expectation was used up), so it cannot reopen the released VHD.
    assert!(target.on_transfer_in(&granted).is_empty());
    let rel = target.begin_release(V1).expect("held");
    assert!(matches!(
        target.on_transfer_in(&granted)[0],
        FenceEvent::GrantRefused { .. }
    ));
    assert!(target.hold(V1).is_none());
    assert!(state.apply(&rel.command).is_ok());
}

#[test]
fn a_handoff_with_no_answer_is_settled_by_a_reclaim() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 0);
    state.apply(&reg(2)).expect("register 2");
    let gen_ = acquire(&mut state, &mut g, V1, Mode::Write);
    let req = g.begin_handoff(V1, NodeId(2), Epoch(1)).expect("held");
    // The transfer committed but its answer was lost; the reclaim tells.
    state.apply(&req.command).expect("transfer");
    let reclaim = g.reclaim(V1).expect("still handing off");
    let (res, ev) = propose(&mut state, &mut g, reclaim, at(1));
    assert!(matches!(res, Err(LockError::NotHeld { .. })));
    assert_eq!(
        ev,
        vec![FenceEvent::HoldDropped {
            vhd: V1,
            generation: gen_
        }]
    );
    assert!(!g.may_write(V1, gen_, at(1)));
}

#[test]
fn renewals_follow_the_interval_and_retry_while_unconfirmed() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 0);
    let i = timing.renew_interval;
    assert!(
        g.poll_renewal(at(0).saturating_add(i - Duration::from_millis(1)))
            .is_none()
    );
    let t = at(0).saturating_add(i);
    assert!(g.poll_renewal(t).is_some(), "due after the interval");
    let retry_at = t.saturating_add(timing.renew_retry);
    assert!(
        g.poll_renewal(Time::from_nanos(retry_at.as_nanos() - 1))
            .is_none()
    );
    assert!(g.poll_renewal(retry_at).is_some(), "unconfirmed: retried");
    assert_eq!(
        g.next_wakeup(),
        Some(retry_at.saturating_add(timing.renew_retry))
    );
    let mut now = retry_at;
    for _ in 0..50 {
        now = now.saturating_add(timing.renew_retry);
        g.poll_renewal(now);
    }
    assert!(!g.status(now).lease_valid);
}

#[test]
fn a_node_that_left_must_register_again() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 0);
    state.apply(&leave(1, 1)).expect("leave");
    let t = at(0).saturating_add(timing.renew_interval);
    let req = g.poll_renewal(t).expect("due");
    let (res, _) = propose(&mut state, &mut g, req, t);
    assert!(res.is_err());
    // Stale epoch first (leave bumped it), then not live at the new one.
    let req = g.poll_renewal(t).expect("renews at the new epoch");
    let (res, _) = propose(&mut state, &mut g, req, t);
    assert!(matches!(res, Err(LockError::NodeNotLive { .. })));
    assert!(g.needs_register());
}

#[test]
fn tracker_expires_only_after_the_full_wait_with_the_count_it_saw() {
    let timing = LeaseTiming::default();
    let wait = timing.expiry_wait;
    let mut state = build(&[reg(1), reg(2), renew(1, 1)]);
    let mut tr = LivenessTracker::new(&timing);
    assert!(tr.due(at(u64::MAX / 2_000_000)).is_empty(), "not leader");
    tr.on_leadership(&state, at(1000));
    let base = at(1000);
    assert!(
        tr.due(Time::from_nanos(base.saturating_add(wait).as_nanos() - 1))
            .is_empty()
    );
    // Node 2 renews at +1 s: only node 1 is due at base + W.
    let cmd = renew(2, 1);
    let res = state.apply(&cmd);
    tr.observe(&cmd, &res, at(2000));
    let due = tr.due(base.saturating_add(wait));
    assert_eq!(due, vec![expire(1, 1, 1)]);
    assert!(
        tr.due(base.saturating_add(wait)).is_empty(),
        "handed out once"
    );
    assert_eq!(
        tr.next_wakeup(),
        Some(
            base.saturating_add(wait)
                .saturating_add(timing.renew_interval)
        )
    );
    // Node 1 renews before the expiry is applied: the expiry fails and is not re-issued
    // until a full wait after that renewal.
    let cmd = renew(1, 1);
    let res = state.apply(&cmd);
    let t_renew = base
        .saturating_add(wait)
        .saturating_add(Duration::from_millis(3));
    tr.observe(&cmd, &res, t_renew);
    let exp = due[0].clone();
    let res = state.apply(&exp);
    assert!(matches!(
        res,
        Err(LockError::RenewedSince {
            seen: 1,
            current: 2,
            ..
        })
    ));
    tr.observe(&exp, &res, t_renew);
    // (Node 2, silent since +1 s, is due by now too; look at node 1 only.)
    let node1 = |cmds: Vec<Command>| -> Vec<Command> {
        cmds.into_iter()
            .filter(|c| matches!(c, Command::ExpireNode { node: N1, .. }))
            .collect()
    };
    assert!(node1(tr.due(t_renew.saturating_add(wait - Duration::from_millis(1)))).is_empty());
    let due = node1(tr.due(t_renew.saturating_add(wait)));
    assert_eq!(due, vec![expire(1, 1, 2)]);
    let res = state.apply(&due[0]);
    assert!(res.is_ok());
    tr.observe(&due[0], &res, t_renew.saturating_add(wait));
    let report = tr.report(t_renew.saturating_add(wait));
    assert_eq!(
        report.iter().map(|r| r.node).collect::<Vec<_>>(),
        vec![NodeId(2)]
    );
}

#[test]
fn tracker_reissues_a_lost_expiry_and_forgets_everything_when_deposed() {
    let timing = LeaseTiming::default();
    let state = build(&[reg(1)]);
    let mut tr = LivenessTracker::new(&timing);
    tr.on_leadership(&state, at(0));
    let t1 = at(0).saturating_add(timing.expiry_wait);
    assert_eq!(tr.due(t1).len(), 1);
    assert!(
        tr.due(t1.saturating_add(timing.renew_interval - Duration::from_millis(1)))
            .is_empty()
    );
    assert_eq!(
        tr.due(t1.saturating_add(timing.renew_interval)).len(),
        1,
        "re-issued"
    );
    tr.on_leadership_lost();
    assert!(!tr.is_leader());
    assert!(
        tr.due(t1.saturating_add(Duration::from_secs(100)))
            .is_empty()
    );
    // A new term starts a full grace again.
    let t2 = t1.saturating_add(Duration::from_secs(100));
    tr.on_leadership(&state, t2);
    assert!(
        tr.due(t2.saturating_add(timing.expiry_wait - Duration::from_millis(1)))
            .is_empty()
    );
    assert_eq!(tr.due(t2.saturating_add(timing.expiry_wait)).len(), 1);
}

#[test]
fn renewal_cost_does_not_depend_on_how_many_vhds_a_node_holds() {
    // The renewal touches only the node record: the snapshot delta is one record.
    let mut cmds = vec![reg(1)];
    for v in 0..1000 {
        cmds.push(w(v, 1, 1));
    }
    let mut s = build(&cmds);
    let before = s.owners();
    s.apply(&renew(1, 1)).expect("renew");
    assert_eq!(s.owners(), before, "no VHD record changes on renewal");
}

#[test]
fn a_restarted_node_reclaims_writes_releases_reads_and_waits_io_timeout() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut old = live_guard(&mut state, &timing, 0);
    state.apply(&reg(2)).expect("register 2");
    let gen_ = acquire(&mut state, &mut old, V1, Mode::Write);
    acquire(&mut state, &mut old, VhdId(2), Mode::Read);
    // The old incarnation began a hand-off, then crashed; its transfer is in flight.
    let in_flight = old
        .begin_handoff(V1, NodeId(2), Epoch(1))
        .expect("held")
        .command;
    drop(old);
    let mut g = FenceGuard::new(N1, &timing);
    g.on_registered(&state.apply(&g.register_command()).expect("register"));
    let now = at(10_000);
    let reqs = g.recover(&state.holds_of(N1), now);
    assert_eq!(reqs.len(), 2);
    for req in reqs {
        let (res, ev) = propose(&mut state, &mut g, req, now);
        assert!(res.is_ok() && ev.is_empty(), "{res:?} {ev:?}");
    }
    // The old incarnation's transfer can no longer apply.
    assert!(matches!(
        state.apply(&in_flight),
        Err(LockError::GenerationMismatch { .. })
    ));
    let new_gen = g.hold(V1).expect("reclaimed").generation;
    assert!(new_gen > gen_ && g.hold(VhdId(2)).is_none());
    let req = g.poll_renewal(now).expect("due");
    propose(&mut state, &mut g, req, now).0.expect("renewed");
    let until = now.saturating_add(timing.io_timeout);
    assert_eq!(
        g.check_write(V1, new_gen, now),
        Err(FenceDenied::Recovering { until })
    );
    assert!(g.may_write(V1, new_gen, until));
}
