//! Becoming a member (at start from the state file, by `cluster init`, or by joining a
//! leader that added this node), and leaving the phase (removal, stop).

use std::time::Duration;

use anyhow::Context;
use csv_api::{ClusterId, NodeId};
use meta_store::{MetaNode, TcpConfig, TcpTransport};

use super::events::Replica;
use super::join::{self, Invitation};
use super::state_file::{self, NodeState};
use super::{Limit, Member, Meta, MetaError, Phase, Retry, now_unix_ms};
use crate::state::ClusterState;
use crate::state::types::{Command, NodeState as RecordState, Query, QueryReply};
use crate::sync::lock;

/// How often a member checks whether it was removed.
const REMOVAL_CHECK: Duration = Duration::from_secs(1);
/// Attempts to bind the cluster address after the join listener closed it.
const BIND_ATTEMPTS: u32 = 50;
/// How long the bootstrap node keeps proposing `InitCluster`.
const INIT_PATIENCE: Duration = Duration::from_secs(60);
/// Pause between those proposals.
const INIT_PAUSE: Duration = Duration::from_millis(200);

impl Meta {
    /// Starts as the state file says: a member of its cluster, or uninitialised waiting
    /// on the cluster address for a leader that added this node (its invitation is sent
    /// on `invitations`; the node calls [`Meta::join`] with it).
    pub async fn start(
        self: &std::sync::Arc<Self>,
        invitations: tokio::sync::mpsc::Sender<Invitation>,
    ) -> anyhow::Result<()> {
        let data = self.cfg.paths.data_dir.clone();
        let existing = tokio::task::spawn_blocking(move || state_file::read(&data))
            .await
            .context("read the state file")??;
        if let Some(st) = existing {
            let mut phase = self.phase.write().await;
            self.become_member(&mut phase, &st, false).await?;
            return Ok(());
        }
        let listen = self.cfg.cluster.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind cluster address {listen}"))?;
        let expected = match &self.cfg.cluster.join_cluster_id {
            Some(c) => Some(c.parse::<ClusterId>().map_err(|e| anyhow::anyhow!("{e}"))?),
            None => None,
        };
        let waiting = join::wait_for_leader(
            listener,
            self.id(),
            expected,
            self.cfg.loaded_tls.peers.clone(),
            invitations,
        );
        *lock(&self.join_task) = Some(tokio::spawn(tracing::Instrument::in_current_span(waiting)));
        tracing::info!(%listen, "uninitialised: waiting for `cluster init` or to be added");
        Ok(())
    }

    fn stop_join_listener(&self) -> Option<tokio::task::JoinHandle<()>> {
        let t = lock(&self.join_task).take();
        if let Some(t) = &t {
            t.abort();
        }
        t
    }

    /// Starts the metadata store under `st` (writing the state file first when new).
    /// The caller holds the phase lock in `phase`.
    #[tracing::instrument(skip_all, fields(cluster = %st.cluster_id))]
    async fn become_member(
        self: &std::sync::Arc<Self>,
        phase: &mut Phase,
        st: &NodeState,
        write_state: bool,
    ) -> anyhow::Result<Member> {
        let data = &self.cfg.paths.data_dir;
        if write_state {
            // It syncs the file and the directory: not on a runtime worker.
            let (dir, st2) = (data.clone(), st.clone());
            tokio::task::spawn_blocking(move || state_file::write(&dir, &st2))
                .await
                .map_err(|e| anyhow::anyhow!("write the state file: {e}"))??;
        }
        if let Some(t) = self.stop_join_listener() {
            let _ = t.await;
        }
        let mut mcfg = self
            .cfg
            .meta_config(st.cluster_id, st.initial_voters.clone());
        for p in &st.seed_peers {
            if p.id != self.id() {
                mcfg.peers.push(meta_store::PeerAddr {
                    id: p.id,
                    addr: p.addr.clone(),
                });
            }
        }
        let mut tcfg = TcpConfig::new(
            self.id(),
            st.cluster_id.to_string(),
            self.cfg.cluster.listen,
            mcfg.required_frame_bytes(),
        );
        tcfg.advertise = Some(self.cfg.advertise());
        tcfg.security = self.cfg.loaded_tls.peers.clone();
        let mut attempt = 0;
        let transport = loop {
            match TcpTransport::bind(tcfg.clone()).await {
                Ok(t) => break t,
                Err(e) if attempt < BIND_ATTEMPTS => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "cluster address busy; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("bind cluster address {}", self.cfg.cluster.listen)
                    });
                }
            }
        };
        let meta = MetaNode::start(
            mcfg,
            &data.join("store"),
            Replica::new(ClusterState::new(), self.events.clone()),
            std::sync::Arc::new(transport.clone()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("start metadata store: {e}"))?;
        let m = Member {
            cluster_id: st.cluster_id,
            meta,
            transport,
            metrics: self.metrics.clone(),
        };
        *phase = Phase::Member(m.clone());
        tracing::info!("metadata store running");
        let me = self.clone();
        self.tasks.spawn(async move { me.watch_removal().await });
        if st.initial_voters.contains(&self.id()) {
            let (me, st) = (self.clone(), st.clone());
            self.tasks.spawn(async move {
                if let Err(e) = me.ensure_init(&st).await {
                    tracing::warn!(error = %e, "cluster init command not applied yet");
                }
            });
        }
        self.members.send_replace(Some(m.clone()));
        Ok(m)
    }

    /// The bootstrap node proposes `InitCluster` until it is applied (a crash between
    /// bootstrap and the first commit leaves the identity unset).
    async fn ensure_init(&self, st: &NodeState) -> Result<(), MetaError> {
        let m = self.member().await?;
        let cmd = Command::InitCluster {
            id: st.cluster_id,
            name: st.cluster_name.clone().unwrap_or_else(|| "csv".into()),
            created_unix_ms: st.created_unix_ms.unwrap_or(0),
            node: NodeId(self.id()),
            address: self.cfg.advertise(),
        };
        let retry = Retry {
            limit: Limit::Patience(INIT_PATIENCE),
            pause: INIT_PAUSE,
            // Applied twice, the second is refused as already initialised: the
            // identity check before each attempt sees the first.
            repeatable: true,
        };
        retry
            .run(|| async {
                if let Ok(QueryReply::Cluster {
                    identity: Some(_), ..
                }) = m.query_local(Query::Cluster).await
                {
                    return Ok(());
                }
                m.propose(cmd.clone()).await.map(|_| ())
            })
            .await
    }

    /// `cluster init`: a new cluster with this node as its only voter.
    #[tracing::instrument(skip(self))]
    pub async fn init_cluster(
        self: &std::sync::Arc<Self>,
        name: &str,
    ) -> Result<ClusterId, MetaError> {
        let st = {
            let mut phase = self.phase.write().await;
            if !matches!(*phase, Phase::Uninitialized) {
                return Err(MetaError::AlreadyMember);
            }
            if name.len() > crate::state::MAX_NAME_BYTES || name.contains('/') {
                return Err(MetaError::BadClusterName);
            }
            let st = NodeState {
                cluster_id: ClusterId::random(),
                initial_voters: vec![self.id()],
                cluster_name: Some(if name.is_empty() {
                    "csv".into()
                } else {
                    name.into()
                }),
                created_unix_ms: Some(now_unix_ms()),
                seed_peers: Vec::new(),
            };
            self.become_member(&mut phase, &st, true)
                .await
                .map_err(MetaError::Start)?;
            st
        };
        self.ensure_init(&st).await?;
        Ok(st.cluster_id)
    }

    /// A leader contacted this uninitialised node: join its cluster.
    #[tracing::instrument(skip_all, fields(cluster = %inv.cluster, leader = inv.from))]
    pub async fn join(self: &std::sync::Arc<Self>, inv: Invitation) -> anyhow::Result<()> {
        let mut phase = self.phase.write().await;
        if !matches!(*phase, Phase::Uninitialized) {
            return Ok(());
        }
        let st = NodeState {
            cluster_id: inv.cluster,
            initial_voters: Vec::new(),
            cluster_name: None,
            created_unix_ms: None,
            seed_peers: vec![state_file::SeedPeer {
                id: inv.from,
                addr: inv.from_addr,
            }],
        };
        self.become_member(&mut phase, &st, true).await?;
        Ok(())
    }

    /// Stops the metadata store (the last step of a shutdown).
    pub async fn stop(&self) {
        let old = std::mem::replace(&mut *self.phase.write().await, Phase::Stopping);
        self.stop_join_listener();
        if let Phase::Member(m) = old {
            m.meta.shutdown().await;
            meta_store::Transport::shutdown(&m.transport);
        }
    }

    /// Stops the metadata node once this node's record says it was removed.
    async fn watch_removal(&self) {
        loop {
            tokio::time::sleep(REMOVAL_CHECK).await;
            let Some(m) = self.try_member().await else {
                return;
            };
            let Ok(QueryReply::Cluster { nodes, .. }) = m.query_local(Query::Cluster).await else {
                continue;
            };
            let me = self.id();
            if nodes
                .iter()
                .any(|n| n.id.0 == me && n.state == RecordState::Removed)
            {
                tracing::warn!(
                    "this node was removed from the cluster; stopping its metadata store"
                );
                *self.phase.write().await = Phase::Removed(m.cluster_id);
                m.meta.shutdown().await;
                meta_store::Transport::shutdown(&m.transport);
                return;
            }
        }
    }
}
