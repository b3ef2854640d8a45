//! What operators ask of redirection: every node's path state (`volume status`), the
//! standing request (`volume redirect`), the history (`volume events`), and the mode an
//! attachment is served in.

use csv_api::NodeId;
use csv_api::admin::volume::{self as api, NodePath};

use crate::data::{Data, DataError};
use crate::meta::{Member, unexpected};
use crate::state::types::{Command, Query, QueryReply, Reply};
use crate::sync::lock;

/// Default and largest page of `volume events`.
const EVENTS_PAGE: u32 = 100;
const EVENTS_MAX: u32 = 1_000;

impl Data {
    /// How this node reaches the LUN now (`direct`, `redirected`, ...; empty without
    /// redirection).
    pub(crate) fn path_mode(&self) -> String {
        self.redirect()
            .map(|r| lock(&r.view).mode.as_str().to_string())
            .unwrap_or_default()
    }

    /// Bytes of LUN calls this node sent through a peer since it started.
    pub(crate) fn redirected_bytes(&self) -> u64 {
        self.redirect().map_or(0, |r| {
            r.shared
                .redirected_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Every node's published path state; this node's own from its driver (fresher).
    pub(crate) async fn node_paths(&self, m: &Member) -> Vec<NodePath> {
        let recs = match m
            .query(Query::Paths {
                after: u64::MAX - 1,
                limit: 0,
            })
            .await
        {
            Ok(QueryReply::Paths { paths, .. }) => paths,
            _ => Vec::new(),
        };
        let mut out: Vec<NodePath> = recs
            .into_iter()
            .map(|p| NodePath {
                node: p.node.0,
                path: p.mode,
                reason: p.reason,
                since_unix_ms: p.since_unix_ms,
                peer: p.peer.map_or(0, |n| n.0),
                user_request: p.user_redirect,
                data_addr: p.data_addr,
                load: p.load,
            })
            .collect();
        // The driver's own view once it runs (it publishes the same, later).
        if let Some(r) = self.redirect()
            && !lock(&r.view).data_addr.is_empty()
        {
            let v = lock(&r.view).clone();
            let me = match out.iter_mut().find(|p| p.node == self.id()) {
                Some(p) => p,
                None => {
                    out.push(NodePath {
                        node: self.id(),
                        ..NodePath::default()
                    });
                    out.sort_by_key(|p| p.node);
                    let id = self.id();
                    let Some(p) = out.iter_mut().find(|p| p.node == id) else {
                        return out;
                    };
                    p
                }
            };
            me.path = v.mode.as_str().into();
            me.reason = v.reason.as_str().into();
            me.peer = v.peer.unwrap_or(0);
            me.since_unix_ms = v.since_unix_ms;
            if me.data_addr.is_empty() {
                me.data_addr = v.data_addr;
            }
        }
        out
    }

    /// `volume redirect --node N on|off`.
    pub(crate) async fn volume_redirect(
        &self,
        r: api::VolumeRedirect,
    ) -> Result<api::VolumeStatus, DataError> {
        let m = self.member().await?;
        let node = if r.node == 0 { self.id() } else { r.node };
        match m
            .propose(Command::SetRedirect {
                node: NodeId(node),
                on: r.on,
            })
            .await?
        {
            Reply::Path(_) => {}
            _ => return unexpected("SetRedirect"),
        }
        tracing::info!(
            node,
            on = r.on,
            "redirected access requested by the operator"
        );
        self.volume_status().await
    }

    /// `volume events`.
    pub(crate) async fn volume_events(
        &self,
        e: api::VolumeEvents,
    ) -> Result<api::PathEvents, DataError> {
        let limit = match e.limit {
            0 => EVENTS_PAGE,
            n => n.min(EVENTS_MAX),
        };
        let m = self.member().await?;
        let QueryReply::Paths { events, .. } = m
            .query(Query::Paths {
                after: e.after,
                limit,
            })
            .await?
        else {
            return unexpected("a path query");
        };
        Ok(api::PathEvents {
            events: events
                .into_iter()
                .map(|e| api::PathEvent {
                    seq: e.seq,
                    index: e.index,
                    node: e.node.0,
                    path: e.mode,
                    reason: e.reason,
                    peer: e.peer.map_or(0, |n| n.0),
                    since_unix_ms: e.since_unix_ms,
                })
                .collect(),
        })
    }
}
