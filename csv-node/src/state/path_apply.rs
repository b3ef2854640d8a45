//! The transitions of the path states (`SetPathState`, `SetRedirect`): docs/design/070
//! §6.

use csv_api::{ErrorCode, NodeId};
use meta_store::KvWrite;

use super::cluster::ClusterState;
use super::paths::{PathEvent, PathRecord, PathUpdate};
use super::types::{ApplyResult, NodeState, Reply};
use super::{MAX_ADDRESS_BYTES, err};

fn valid_mode(s: &str) -> bool {
    redirector::health::Mode::parse(s).is_some()
}

fn valid_reason(s: &str) -> bool {
    redirector::health::Reason::parse(s).is_some()
}

impl ClusterState {
    fn live_node(&self, node: NodeId) -> Result<(), csv_api::error::ApiError> {
        self.require_init()?;
        match self.nodes.get(&node) {
            Some(n) if n.state != NodeState::Removed => Ok(()),
            Some(_) => Err(err(ErrorCode::InvalidState, format!("{node} was removed"))),
            None => Err(err(ErrorCode::NotFound, format!("{node} is not recorded"))),
        }
    }

    /// `SetPathState`: a node publishes its path state. A change of mode, reason or peer
    /// is recorded in the history; a load-only update is not.
    pub(super) fn set_path_state(
        &mut self,
        index: u64,
        node: NodeId,
        u: PathUpdate,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        self.live_node(node)?;
        if !valid_mode(&u.mode) || !valid_reason(&u.reason) {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("unknown path mode {:?} or reason {:?}", u.mode, u.reason),
            ));
        }
        if u.data_addr.len() > MAX_ADDRESS_BYTES {
            return Err(err(ErrorCode::InvalidArgument, "data address too long"));
        }
        if u.peer == Some(node) {
            return Err(err(
                ErrorCode::InvalidArgument,
                "a node is not its own peer",
            ));
        }
        let old = self
            .paths
            .get(node)
            .cloned()
            .unwrap_or_else(|| PathRecord::empty(node));
        let changed = old.mode != u.mode || old.reason != u.reason || old.peer != u.peer;
        let rec = PathRecord {
            node,
            mode: u.mode,
            reason: u.reason,
            peer: u.peer,
            since_unix_ms: u.since_unix_ms,
            load: u.load,
            data_addr: u.data_addr,
            session_bound_ms: u.session_bound_ms,
            user_redirect: old.user_redirect,
        };
        if changed {
            let e = PathEvent {
                seq: self.paths.next_seq(),
                index,
                node,
                mode: rec.mode.clone(),
                reason: rec.reason.clone(),
                peer: rec.peer,
                since_unix_ms: rec.since_unix_ms,
            };
            self.paths.record_event(e, w);
        }
        self.paths.put(rec.clone(), w);
        Ok(Reply::Path(rec))
    }

    /// `SetRedirect`: the operator's standing request for a node.
    pub(super) fn set_redirect(
        &mut self,
        node: NodeId,
        on: bool,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        self.live_node(node)?;
        let mut rec = self
            .paths
            .get(node)
            .cloned()
            .unwrap_or_else(|| PathRecord::empty(node));
        rec.user_redirect = on;
        self.paths.put(rec.clone(), w);
        Ok(Reply::Path(rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::paths::MAX_PATH_EVENTS;
    use crate::state::tests::{run, setup};
    use crate::state::types::{Command, NodeRole, Query, QueryReply};

    pub(crate) fn update(mode: &str, reason: &str, peer: Option<u64>) -> PathUpdate {
        PathUpdate {
            mode: mode.into(),
            reason: reason.into(),
            peer: peer.map(NodeId),
            since_unix_ms: 5,
            load: 0,
            data_addr: "127.0.0.1:9".into(),
            session_bound_ms: 4000,
        }
    }

    fn set(node: u64, u: PathUpdate) -> Command {
        Command::SetPathState {
            node: NodeId(node),
            update: u,
        }
    }

    #[test]
    fn path_states_record_changes_keep_the_request_and_load_back() {
        let (mut s, mut kv) = setup();
        let add = Command::AddNode {
            node: NodeId(2),
            address: "127.0.0.1:2".into(),
            role: NodeRole::Voter,
        };
        run(&mut s, &mut kv, 3, &add).expect("add");
        run(
            &mut s,
            &mut kv,
            4,
            &set(2, update("direct", "healthy", None)),
        )
        .expect("direct");
        let on = Command::SetRedirect {
            node: NodeId(2),
            on: true,
        };
        run(&mut s, &mut kv, 5, &on).expect("redirect");
        let r = update("redirected", "user_request", Some(1));
        run(&mut s, &mut kv, 6, &set(2, r)).expect("redirected");
        let mut load_only = update("redirected", "user_request", Some(1));
        load_only.load = 7;
        run(&mut s, &mut kv, 7, &set(2, load_only)).expect("load");
        let bad = run(
            &mut s,
            &mut kv,
            8,
            &set(2, update("sideways", "healthy", None)),
        );
        assert_eq!(
            bad.expect_err("bad mode").code(),
            ErrorCode::InvalidArgument
        );
        let own = run(
            &mut s,
            &mut kv,
            8,
            &set(2, update("redirected", "io_errors", Some(2))),
        );
        assert_eq!(
            own.expect_err("own peer").code(),
            ErrorCode::InvalidArgument
        );
        let unknown = run(
            &mut s,
            &mut kv,
            8,
            &set(9, update("direct", "healthy", None)),
        );
        assert_eq!(unknown.expect_err("unknown").code(), ErrorCode::NotFound);
        let rec = s.paths().get(NodeId(2)).expect("record").clone();
        assert!(rec.user_redirect);
        assert_eq!(rec.load, 7);
        let ev = s.paths().events(0, 10);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!((ev[1].mode.as_str(), ev[1].index), ("redirected", 6));
        match s.answer(Query::Paths {
            after: 1,
            limit: 10,
        }) {
            Ok(QueryReply::Paths { paths, events }) => {
                assert_eq!(paths.len(), 1);
                assert_eq!(events.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        run(&mut s, &mut kv, 9, &Command::RemoveNode { node: NodeId(2) }).expect("remove");
        assert!(s.paths().get(NodeId(2)).is_none());
    }

    #[test]
    fn the_history_is_bounded() {
        let (mut s, mut kv) = setup();
        for i in 0..(MAX_PATH_EVENTS as u64 + 20) {
            let mode = if i % 2 == 0 { "direct" } else { "paused" };
            run(
                &mut s,
                &mut kv,
                10 + i,
                &set(1, update(mode, "healthy", None)),
            )
            .expect("set");
        }
        let ev = s.paths().events(0, 10_000);
        assert_eq!(ev.len(), MAX_PATH_EVENTS);
        assert_eq!(ev[0].seq, 21);
    }
}
