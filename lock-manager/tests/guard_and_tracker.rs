//! The node-side `FenceGuard` and the coordinator-side `LivenessTracker`, driven with
//! explicit clock readings against a real `LockState`.

mod common;

use common::*;
use lock_manager::{
    Command, Epoch, FenceDenied, FenceEvent, FenceGuard, Generation, LeaseTiming, LivenessTracker,
    LockError, LockState, Mode, NodeId, Outcome, Time, VhdId,
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
    let reg_out = state.apply(&reg(1)).expect("register");
    assert!(g.on_registered(&reg_out).is_empty());
    let t = g
        .poll_renewal(at(sent_ms))
        .expect("first renewal is due at once");
    let res = state.apply(&g.renew_command(&t));
    assert!(g.on_renewal_result(t.id, &res, at(sent_ms + 5)).is_empty());
    g
}

fn grant(state: &mut LockState, g: &mut FenceGuard, cmd: &Command) -> Generation {
    match state.apply(cmd).expect("grant") {
        Outcome::Granted {
            vhd,
            mode,
            epoch,
            generation,
            ..
        } => {
            assert!(g.on_granted(vhd, mode, epoch, generation));
            generation
        }
        o => panic!("unexpected {o:?}"),
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
    assert_eq!(
        g.check_write(V1, Generation(1), at(0)),
        Err(FenceDenied::NotHeld)
    );
    let out = state.apply(&reg(1)).expect("register");
    g.on_registered(&out);
    // Granted but no lease yet.
    let gen_ = match state.apply(&w(1, 1, 1)).expect("acquire") {
        Outcome::Granted { generation, .. } => generation,
        o => panic!("{o:?}"),
    };
    assert!(g.on_granted(V1, Mode::Write, Epoch(1), gen_));
    assert_eq!(g.check_write(V1, gen_, at(1)), Err(FenceDenied::NoLease));
    let t = g.poll_renewal(at(10)).expect("due");
    let res = state.apply(&g.renew_command(&t));
    g.on_renewal_result(t.id, &res, at(12));
    assert!(g.may_write(V1, gen_, at(12)));
    assert_eq!(g.deadline(), Some(at(10).saturating_add(timing.node_lease)));
}

#[test]
fn fence_checks_mode_generation_and_closes_on_its_own_at_the_deadline() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 1000);
    state.apply(&reg(2)).expect("register 2");
    let gen_ = grant(&mut state, &mut g, &w(1, 1, 1));
    grant(&mut state, &mut g, &r(2, 1, 1));
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
    let gen_ = grant(&mut state, &mut g, &w(1, 1, 1));
    let deadline = at(0).saturating_add(d);
    // Two renewals go out while confirmations are delayed (a partition).
    let early = g
        .poll_renewal(at(0).saturating_add(timing.renew_interval))
        .expect("due");
    let late = g
        .poll_renewal(early.sent_at.saturating_add(timing.renew_retry))
        .expect("retry while unconfirmed");
    let lapse_time = deadline.saturating_add(Duration::from_millis(10));
    assert_eq!(g.poll(lapse_time), vec![FenceEvent::Lapsed { deadline }]);
    assert!(!g.may_write(V1, gen_, lapse_time));
    // The answer to `early` comes so late that its own deadline has passed: stays closed.
    let res = state.apply(&g.renew_command(&early));
    let after_early = early
        .sent_at
        .saturating_add(d)
        .saturating_add(Duration::from_millis(1));
    assert!(g.on_renewal_result(early.id, &res, after_early).is_empty());
    assert!(!g.may_write(V1, gen_, after_early));
    // `late` is confirmed while its deadline is still ahead: reopened.
    let res = state.apply(&g.renew_command(&late));
    let new_deadline = late.sent_at.saturating_add(d);
    assert_eq!(
        g.on_renewal_result(late.id, &res, after_early),
        vec![FenceEvent::Reopened {
            deadline: new_deadline
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
    let gen_ = grant(&mut state, &mut g, &w(1, 1, 1));
    grant(&mut state, &mut g, &rd(2, 1, 1));
    // The coordinator expires node 1 (count 1: the one renewal above).
    state.apply(&expire(1, 1, 1)).expect("expire");
    let t = g
        .poll_renewal(at(0).saturating_add(timing.renew_interval))
        .expect("due");
    let res = state.apply(&g.renew_command(&t));
    assert!(matches!(res, Err(LockError::StaleEpoch { .. })));
    let ev = g.on_renewal_result(t.id, &res, t.sent_at);
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
        !g.may_write(V1, gen_, t.sent_at),
        "closed although the old deadline is ahead"
    );
    // It renews at the new epoch: live again, but holds nothing.
    let t2 = g
        .poll_renewal(t.sent_at)
        .expect("renews at once at the new epoch");
    assert_eq!(t2.epoch, Epoch(2));
    let res = state.apply(&g.renew_command(&t2));
    assert!(g.on_renewal_result(t2.id, &res, t2.sent_at).is_empty());
    assert!(g.holds().is_empty());
    assert!(!g.may_write(V1, gen_, t2.sent_at));
    // A grant under the old epoch (a late answer) is refused.
    assert!(!g.on_granted(V1, Mode::Write, Epoch(1), gen_));
}

#[test]
fn cooperative_handoff_closes_first_and_reopens_only_through_a_reclaim() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 0);
    state.apply(&reg(2)).expect("register 2");
    let gen_ = grant(&mut state, &mut g, &w(1, 1, 1));
    let now = at(100);
    // Target named at a wrong epoch: refused, but the fence stays closed (a duplicate of
    // the transfer could still be in flight).
    let stale_cmd = g
        .begin_handoff(V1, NodeId(2), Epoch(9))
        .expect("held for write");
    assert_eq!(g.check_write(V1, gen_, now), Err(FenceDenied::HandingOff));
    let res = state.apply(&stale_cmd);
    assert!(matches!(
        res,
        Err(LockError::StaleEpoch {
            node: NodeId(2),
            ..
        })
    ));
    assert!(g.on_handoff_result(V1, &res).is_empty());
    assert!(!g.may_write(V1, gen_, now));
    // A late duplicate of the current grant does not reopen it either.
    assert!(!g.on_granted(V1, Mode::Write, Epoch(1), gen_));
    // Reclaim: a new generation; the old one is dead for every in-flight command.
    let reclaim = g.reclaim_command(V1).expect("write hold");
    let new_gen = grant(&mut state, &mut g, &reclaim);
    assert!(new_gen > gen_);
    assert!(g.may_write(V1, new_gen, now));
    assert!(!g.may_write(V1, gen_, now));
    let late = xfer(1, 1, 1, 2, 1, gen_.0);
    assert!(matches!(
        state.apply(&late),
        Err(LockError::GenerationMismatch { .. })
    ));
    // The real hand-off.
    let cmd = g
        .begin_handoff(V1, NodeId(2), Epoch(1))
        .expect("held for write");
    assert!(!g.may_write(V1, new_gen, now), "closed before the proposal");
    let res = state.apply(&cmd);
    assert_eq!(
        g.on_handoff_result(V1, &res),
        vec![FenceEvent::HoldDropped {
            vhd: V1,
            generation: new_gen
        }]
    );
    assert!(g.hold(V1).is_none());
    assert_eq!(state.valid_writer(V1).map(|(n, ..)| n), Some(NodeId(2)));
}

#[test]
fn a_handoff_with_no_answer_is_settled_by_a_reclaim() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 0);
    state.apply(&reg(2)).expect("register 2");
    let gen_ = grant(&mut state, &mut g, &w(1, 1, 1));
    let cmd = g.begin_handoff(V1, NodeId(2), Epoch(1)).expect("held");
    // The transfer committed but its answer was lost; the reclaim tells.
    state.apply(&cmd).expect("transfer");
    let reclaim = g.reclaim_command(V1).expect("still a local hold");
    let res = state.apply(&reclaim);
    assert!(matches!(res, Err(LockError::NotHeld { .. })));
    assert!(g.on_error(res.as_ref().expect_err("refused")).is_empty());
    assert!(g.forget(V1).is_some());
    assert!(!g.may_write(V1, gen_, at(1)));
}

#[test]
fn release_closes_before_the_command_and_carries_the_generation() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 0);
    let gen_ = grant(&mut state, &mut g, &w(1, 1, 1));
    let cmd = g.begin_release(V1).expect("held");
    assert!(!g.may_write(V1, gen_, at(1)));
    assert_eq!(cmd, rel(1, 1, 1, gen_.0));
    state.apply(&cmd).expect("released");
    assert!(state.owner(V1).is_none());
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
    let t = g
        .poll_renewal(at(0).saturating_add(i))
        .expect("due after the interval");
    let retry_at = t.sent_at.saturating_add(timing.renew_retry);
    assert!(
        g.poll_renewal(Time::from_nanos(retry_at.as_nanos() - 1))
            .is_none()
    );
    assert!(g.poll_renewal(retry_at).is_some(), "unconfirmed: retried");
    assert_eq!(
        g.next_wakeup(),
        Some(retry_at.saturating_add(timing.renew_retry))
    );
    // Many unanswered sends stay bounded.
    let mut now = retry_at;
    for _ in 0..50 {
        now = now.saturating_add(timing.renew_retry);
        g.poll_renewal(now);
    }
    let status = g.status(now);
    assert!(!status.lease_valid);
}

#[test]
fn a_node_that_left_must_register_again() {
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = live_guard(&mut state, &timing, 0);
    state.apply(&leave(1, 1)).expect("leave");
    let t = g
        .poll_renewal(at(0).saturating_add(timing.renew_interval))
        .expect("due");
    let res = state.apply(&g.renew_command(&t));
    g.on_renewal_result(t.id, &res, t.sent_at);
    // Stale epoch first (leave bumped it), then not live at the new one.
    let t = g.poll_renewal(t.sent_at).expect("renews at the new epoch");
    let res = state.apply(&g.renew_command(&t));
    assert!(matches!(res, Err(LockError::NodeNotLive { .. })));
    g.on_renewal_result(t.id, &res, t.sent_at);
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
