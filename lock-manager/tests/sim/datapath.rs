//! The data path on top of the protocol (issue 15). Each write a node's hold allows is a
//! client's whole-block write (stamped with the hold's generation), with reads besides,
//! and goes where the node's path-health core — `redirector::health::Health`, the real
//! one — sends it: down the node's own LUN path, or through a peer's session once the
//! path failed. A path can be cut: a write in flight on it lands late (within the
//! in-doubt bound) or never, and the node sees a timeout. Nothing is reissued until the
//! failed path (or the failed peer session) is quiet; a peer runs a forwarded call only
//! while its session is renewed, only with a direct path of its own, and a write only
//! for the VHD's valid writer at that generation. A cut-off or paused peer's calls arrive
//! late and are refused once the session lapsed.
//!
//! The LUN is a map of stamped blocks. Every operation goes into a chaos history that
//! `chaos::check` judges at the end of the seed: every block a register, no stale
//! generation, reads of a client never going back. The protocol's own checks (one open
//! fence, landings in generation order) keep running after every event.

use std::time::{Duration, Instant};

use chaos::history::{Event as HEv, Header, History, Outcome};
use chaos::stamp::Seen;
use redirector::health::{Input, Mode as PMode, Peer};

use super::dp_types::{Call, Kind, Op, PathSim};
use super::*;

/// Blocks per VHD the clients use.
pub(super) const BLOCKS: u64 = 8;
/// A peer's session lease: calls that reach it later than this after they were sent are
/// refused (the session lapsed; the source counts on it).
const SESSION_TTL: u64 = 2 * SEC;

impl World {
    fn io_ns(&self) -> u64 {
        u64::try_from(self.timing.io_timeout.as_nanos()).expect("fits")
    }

    /// The call bound of a forwarded call (as `session.rs`: twice the peer's I/O bound
    /// and a second).
    fn call_bound(&self) -> u64 {
        2 * self.io_ns() + SEC
    }

    /// When a failed session's calls can no longer run at the peer, counting from now
    /// (after the last call sent): its lease, then a running call's I/O bound.
    fn session_quiet(&self) -> u64 {
        self.now + SESSION_TTL + 2 * self.io_ns()
    }

    fn instant(&self) -> Instant {
        self.dp.base + Duration::from_nanos(self.now)
    }

    fn link_up(&self, i: usize) -> bool {
        let (link, until) = self.nodes[i].link;
        link == Link::Up || self.now >= until
    }

    /// A client operation of node `i` on `vhd` (a write at the hold's generation, or a
    /// read), issued at once.
    pub(super) fn client_op(&mut self, i: usize, vhd: VhdId, generation: Generation) {
        let block = self.rng.random_range(0..BLOCKS);
        let kind = if self.rng.random_bool(0.6) {
            let id = self.dp.next_write;
            self.dp.next_write += 1;
            Kind::Write(id)
        } else {
            Kind::Read
        };
        let op = self.dp.next_op;
        self.dp.next_op += 1;
        self.dp.ops.insert(
            op,
            Op {
                node: i,
                inc: self.nodes[i].inc,
                vhd,
                block,
                kind,
                generation,
                invoke: self.now,
                attempt: 0,
                seen: None,
            },
        );
        self.stats.dp.ops += 1;
        self.issue(op);
    }

    /// Sends the op's next attempt where the route says, or holds it.
    fn issue(&mut self, op: u64) {
        let Some(o) = self.dp.ops.get_mut(&op) else {
            return;
        };
        o.attempt += 1;
        let (i, attempt, vhd, generation) = (o.node, o.attempt, o.vhd, o.generation);
        let call = o.call();
        if attempt > 1 {
            self.stats.dp.reissued += 1;
        }
        let st = self.nodes[i].path.health.status().clone();
        match st.mode {
            PMode::Direct => {
                // Each attempt asks the fence anew, right before it goes down the path.
                let now_l = self.local(i);
                if call.write.is_some() && !self.nodes[i].guard.may_write(vhd, generation, now_l) {
                    self.complete(op, Outcome::Error);
                    return;
                }
                let io = self.io_ns();
                if self.nodes[i].path.ok {
                    let lat = if self.rng.random_bool(0.02) {
                        self.rng.random_range(0..io - MS)
                    } else {
                        self.rng.random_range(0..2 * MS)
                    };
                    self.run_at(call, op, attempt, i, self.now + lat);
                } else {
                    // A failed path: the call may still land, within the in-doubt bound,
                    // or never; the node sees no answer within its call bound.
                    if self.rng.random_bool(0.5) {
                        let land = self.now + self.rng.random_range(io..2 * io);
                        self.run_at(call, op, attempt, i, land);
                        self.stats.dp.late_landed += 1;
                    }
                    let p = &mut self.nodes[i].path;
                    p.doubt_until = p.doubt_until.max(self.now + 2 * io);
                    self.at(self.now + io, Ev::DpTimeout { op, attempt });
                }
            }
            PMode::Redirected => {
                let Some(peer) = st.peer.and_then(|p| usize::try_from(p - 1).ok()) else {
                    self.nodes[i].path.waiting.push_back(op);
                    return;
                };
                self.stats.dp.redirected += 1;
                self.nodes[i].path.at_peer.insert(op);
                let sent = self.now;
                if let (Some(a), Some(b)) = (self.link_delay(i), self.link_delay(peer)) {
                    self.at(
                        self.now + a + b,
                        Ev::DpAtPeer {
                            call,
                            op,
                            attempt,
                            peer,
                            sent,
                        },
                    );
                }
                self.at(
                    self.now + self.call_bound(),
                    Ev::DpPeerTimeout { op, attempt },
                );
            }
            PMode::Quiescing | PMode::Paused | PMode::FailingBack => {
                self.nodes[i].path.waiting.push_back(op);
            }
        }
    }

    /// Schedules a LUN call through node `via`'s own path at `t`.
    fn run_at(&mut self, call: Call, op: u64, attempt: u32, via: usize, t: u64) {
        if call.write.is_some() {
            // What a hand-off of the VHD drains before it lets the next writer in.
            let e = self.nodes[call.node].landing.entry(call.vhd).or_insert(0);
            *e = (*e).max(t);
        }
        self.at(
            t,
            Ev::DpRun {
                call,
                op,
                attempt,
                via,
            },
        );
    }

    fn complete(&mut self, op: u64, outcome: Outcome) {
        let Some(o) = self.dp.ops.remove(&op) else {
            return;
        };
        if outcome == Outcome::Ok {
            self.stats.dp.acked += 1;
        }
        let client = o.node as u64 + 1;
        let ev = match o.kind {
            Kind::Write(id) => HEv::Write {
                client,
                vhd: o.vhd.0,
                block: o.block,
                id,
                generation: o.generation.0,
                node: client,
                invoke: o.invoke,
                complete: self.now,
                outcome,
            },
            Kind::Read => HEv::Read {
                client,
                vhd: o.vhd.0,
                block: o.block,
                node: client,
                invoke: o.invoke,
                complete: self.now,
                outcome,
                seen: if outcome == Outcome::Ok { o.seen } else { None },
            },
        };
        self.dp.history.push(ev);
    }

    /// The op's attempt if it is still the current one of a live incarnation; `Err` when
    /// its node is paused (the event is looked at again later).
    fn current(&mut self, op: u64, attempt: u32, ev: Ev) -> Option<usize> {
        let o = self.dp.ops.get(&op)?;
        let i = o.node;
        if o.attempt != attempt || !self.nodes[i].alive || self.nodes[i].inc != o.inc {
            return None;
        }
        if self.nodes[i].paused.is_some() {
            self.at(self.now + NODE_TICK, ev);
            return None;
        }
        Some(i)
    }

    /// A LUN call runs on `via`'s path now: a write lands (in generation order per VHD,
    /// checked), a read takes the block's value. The answer reaches the op's node after
    /// a short delay (back through the link when forwarded).
    pub(super) fn dp_run(&mut self, call: Call, op: u64, attempt: u32, via: usize) -> Check {
        if let Some(s) = call.write {
            self.landed(call.node, call.vhd, Generation(s.generation))?;
            self.dp.lun.insert((call.vhd, call.block), s);
        }
        let Some(o) = self.dp.ops.get_mut(&op) else {
            return Ok(());
        };
        if o.attempt != attempt {
            return Ok(());
        }
        if call.write.is_none() {
            o.seen = Some(match self.dp.lun.get(&(call.vhd, call.block)) {
                Some(s) => Seen::Stamp(*s),
                None => Seen::Zero,
            });
        }
        let node = o.node;
        let back = if via == node {
            Some(self.rng.random_range(MS / 10..MS))
        } else {
            self.link_delay(via)
                .zip(self.link_delay(node))
                .map(|(a, b)| a + b)
        };
        if let Some(d) = back {
            self.at(self.now + d, Ev::DpAck { op, attempt, via });
        }
        Ok(())
    }

    pub(super) fn dp_ack(&mut self, op: u64, attempt: u32, via: usize) {
        let Some(i) = self.current(op, attempt, Ev::DpAck { op, attempt, via }) else {
            return;
        };
        if via == i {
            let t = self.instant();
            self.nodes[i].path.health.handle(t, Input::CallOk);
        }
        self.nodes[i].path.at_peer.remove(&op);
        self.complete(op, Outcome::Ok);
    }

    /// The node's call bound passed on its own path: a path error; the call waits for
    /// the route to change (never reissued on a path it may still land from).
    pub(super) fn dp_timeout(&mut self, op: u64, attempt: u32) {
        let Some(i) = self.current(op, attempt, Ev::DpTimeout { op, attempt }) else {
            return;
        };
        let t = self.instant();
        self.nodes[i]
            .path
            .health
            .handle(t, Input::PathError { timeout: true });
        self.nodes[i].path.waiting.push_back(op);
        self.pump(i);
    }

    /// A forwarded call reaches `peer`.
    pub(super) fn dp_at_peer(&mut self, call: Call, op: u64, attempt: u32, peer: usize, sent: u64) {
        if !self.nodes[peer].alive {
            return;
        }
        if self.nodes[peer].paused.is_some() {
            self.nodes[peer].path.inbox.push((call, op, attempt, sent));
            return;
        }
        self.serve(call, op, attempt, peer, sent);
    }

    /// The peer's side: the session must still be renewed (a call that reaches it after
    /// the lease is refused: the source no longer waits for it), its own path direct, and
    /// a write's writer the VHD's valid writer at that generation.
    fn serve(&mut self, call: Call, op: u64, attempt: u32, peer: usize, sent: u64) {
        if self.now > sent + SESSION_TTL {
            self.stats.dp.refused_lapsed += 1;
            return;
        }
        let p = &self.nodes[peer].path;
        let direct = p.ok && p.health.status().mode == PMode::Direct;
        let writer_ok = call.write.is_none_or(|s| {
            self.state
                .valid_writer(call.vhd)
                .is_some_and(|(n, _, g)| n == NodeId(call.node as u64 + 1) && g.0 == s.generation)
        });
        if !direct || !writer_ok {
            if !writer_ok {
                self.stats.dp.refused_stale += 1;
            }
            let back = self.link_delay(peer).zip(self.link_delay(call.node));
            if let Some((a, b)) = back {
                self.at(
                    self.now + a + b,
                    Ev::DpRefused {
                        op,
                        attempt,
                        stale: !writer_ok,
                    },
                );
            }
            return;
        }
        let lat = self.rng.random_range(0..2 * MS);
        self.run_at(call, op, attempt, peer, self.now + lat);
    }

    pub(super) fn dp_refused(&mut self, op: u64, attempt: u32, stale: bool) {
        let Some(i) = self.current(op, attempt, Ev::DpRefused { op, attempt, stale }) else {
            return;
        };
        self.nodes[i].path.at_peer.remove(&op);
        if stale {
            self.complete(op, Outcome::Error);
            return;
        }
        self.peer_failed(i);
        self.nodes[i].path.waiting.push_back(op);
        self.pump(i);
    }

    pub(super) fn dp_peer_timeout(&mut self, op: u64, attempt: u32) {
        let Some(i) = self.current(op, attempt, Ev::DpPeerTimeout { op, attempt }) else {
            return;
        };
        if !self.nodes[i].path.at_peer.remove(&op) {
            return;
        }
        self.peer_failed(i);
        self.nodes[i].path.waiting.push_back(op);
        self.pump(i);
    }

    fn peer_failed(&mut self, i: usize) {
        let t = self.instant();
        let quiet = self.session_quiet();
        let p = &mut self.nodes[i].path;
        p.peer_quiet_at = p.peer_quiet_at.max(quiet);
        if matches!(
            p.health.status().mode,
            PMode::Redirected | PMode::FailingBack
        ) {
            p.health.handle(t, Input::PeerFailed);
        }
    }

    /// Held calls go out once the route allows.
    fn pump(&mut self, i: usize) {
        while matches!(
            self.nodes[i].path.health.status().mode,
            PMode::Direct | PMode::Redirected
        ) {
            let Some(op) = self.nodes[i].path.waiting.pop_front() else {
                break;
            };
            self.issue(op);
        }
    }

    /// Each node tick: the core hears the peers and the probe, then quiet and drain are
    /// reported when they hold, and held calls go out.
    pub(super) fn dp_tick(&mut self, i: usize) {
        let peers: Vec<Peer> = (0..NODES)
            .filter(|j| *j != i)
            .map(|j| {
                let n = &self.nodes[j];
                let up = n.alive && n.paused.is_none();
                Peer {
                    node: j as u64 + 1,
                    direct: up && n.path.ok && n.path.health.status().mode == PMode::Direct,
                    reachable: up && self.link_up(i) && self.link_up(j),
                    load: 0,
                }
            })
            .collect();
        let t = self.instant();
        let now = self.now;
        let broken = self.dp.skip_quiesce;
        let p = &mut self.nodes[i].path;
        p.health.handle(
            t,
            Input::Peers {
                peers,
                coordinator: None,
            },
        );
        p.health.handle(t, Input::Probe { ok: p.ok });
        p.health.tick(t);
        match p.health.status().mode {
            PMode::Quiescing
                if broken
                    || (now >= p.doubt_until && p.at_peer.is_empty() && now >= p.peer_quiet_at) =>
            {
                p.health.handle(t, Input::Quiet);
            }
            PMode::FailingBack if p.at_peer.is_empty() => {
                p.health.handle(t, Input::Drained);
            }
            _ => {}
        }
        self.pump(i);
    }

    /// A paused node resumes: forwarded calls that reached it meanwhile are served now
    /// (refused when their session lapsed).
    pub(super) fn dp_resume(&mut self, i: usize) {
        let inbox = std::mem::take(&mut self.nodes[i].path.inbox);
        for (call, op, attempt, sent) in inbox {
            self.serve(call, op, attempt, i, sent);
        }
    }

    /// A node crashed: its clients' operations end without an answer.
    pub(super) fn dp_crash(&mut self, i: usize) {
        let mine: Vec<u64> = self
            .dp
            .ops
            .iter()
            .filter(|(_, o)| o.node == i)
            .map(|(k, _)| *k)
            .collect();
        for op in mine {
            self.complete(op, Outcome::Unknown);
        }
        let ok = self.nodes[i].path.ok;
        self.nodes[i].path = PathSim::new(i as u64 + 1, self.instant());
        self.nodes[i].path.ok = ok;
    }

    /// A fault: node `i`'s own path cut for a while.
    pub(super) fn cut_path(&mut self, i: usize) {
        if !self.nodes[i].path.ok {
            return;
        }
        self.nodes[i].path.ok = false;
        self.stats.dp.path_cuts += 1;
        let back = self.now + self.rng.random_range(SEC..10 * SEC);
        self.at(back, Ev::PathRestore(i));
    }

    /// The end of a seed: operations still open end without an answer, and the history
    /// is judged.
    pub(super) fn dp_end(&mut self) -> Check {
        let open: Vec<u64> = self.dp.ops.keys().copied().collect();
        for op in open {
            self.complete(op, Outcome::Unknown);
        }
        let h = History {
            header: Header {
                seed: self.seed,
                // Times are ns here: a call in doubt lands within 2 × io_timeout on a
                // path, or within the session lease and a call bound at a peer.
                in_doubt_us: 2 * self.io_ns() + SESSION_TTL + self.call_bound(),
                block: 4096,
                detail: "lock-manager data-path simulation".into(),
            },
            events: std::mem::take(&mut self.dp.history),
        };
        let r = chaos::check::check(&h);
        if let Some(v) = r.violations.first() {
            return Err(format!(
                "data path: {} violations; first: {} on {} block {}: {}\n{}",
                r.violations.len(),
                v.kind,
                v.vhd,
                v.block,
                v.detail,
                v.ops.join("\n")
            ));
        }
        Ok(())
    }
}
