//! A migration found under way by a restarted agent (docs/design/080 §4, crash table).
//! The agent died; its QEMU did not (its own process group) and was adopted. The record
//! says how far the migration got; QEMU says how far its stream got. Each case ends with
//! one guest running and its disks owned by the node the record places it on:
//!
//! | side | record | QEMU | outcome |
//! |---|---|---|---|
//! | source | prepared | anything | cancel the stream, take back any disk already moved, abort, `cont` |
//! | source | switched | paused before switch-over | `migrate-continue`, then as below |
//! | source | switched | completed | figures recorded, QEMU discarded (the destination commits) |
//! | source | switched | failed | QEMU discarded: the destination holds the disks and cold-starts |
//! | destination | prepared | anything | QEMU discarded, abort (the source cancels and continues) |
//! | destination | switched | completed | attach the disks, `cont`, commit |
//! | destination | switched | failed or gone | QEMU discarded, commit: the VM starts afresh here |

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::migrate::discard;
use super::runner::{QMP_TIMEOUT, Runner};
use crate::state::vms::{Migration, MigrationStep, VmRecord};

/// How long a stream found in flight may take to end.
const STREAM_WAIT: Duration = Duration::from_secs(120);
/// Between two polls of QEMU's migration status.
const POLL: Duration = Duration::from_millis(100);

impl Runner {
    /// QEMU's migration status (`none` when it never migrated).
    async fn stream_status(&self) -> String {
        let Some(live) = self.live.as_ref() else {
            return "gone".into();
        };
        match live.qmp.execute("query-migrate", None, QMP_TIMEOUT).await {
            Ok(v) => v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_string(),
            Err(e) => {
                tracing::warn!(vm = self.name, "query-migrate: {e}");
                "gone".into()
            }
        }
    }

    /// Waits until the stream is no longer in flight; its final status.
    async fn stream_end(&self) -> String {
        let deadline = Instant::now() + STREAM_WAIT;
        loop {
            let s = self.stream_status().await;
            let moving = matches!(
                s.as_str(),
                "setup" | "active" | "device" | "wait-unplug" | "postcopy-active"
            );
            if !moving || Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the record places the VM on this node.
    fn placed_here(&self) -> bool {
        let me = self.h.node();
        self.record().is_some_and(|r| r.node == Some(me))
    }

    async fn discard_live(&mut self) {
        if let Some(mut l) = self.live.take() {
            discard(&mut l.proc).await;
        }
    }

    /// Finishes or undoes migration `m` with the QEMU this (restarted) agent adopted.
    pub(super) async fn recover(&mut self, rec: &VmRecord, m: &Migration) {
        let me = self.h.node();
        let status = self.stream_status().await;
        tracing::warn!(
            vm = self.name,
            id = m.id,
            step = ?m.step,
            status,
            source = m.src == me,
            "a migration was under way when this agent stopped"
        );
        if m.src == me {
            self.recover_source(rec, m, status).await;
        } else {
            self.recover_destination(rec, m).await;
        }
        // Until this replica applied the end, the record would still say "migrating".
        let waited = tokio::time::timeout(STREAM_WAIT, async {
            while self.current(m.id).is_some() {
                if self.rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        if waited.is_err() {
            tracing::error!(
                vm = self.name,
                id = m.id,
                "the migration's end did not reach this replica"
            );
        }
    }

    /// Once an abort was refused: waits until this replica shows `m` switched (`None`:
    /// it ended, or did not show within the bound).
    async fn switched(&mut self, id: u64) -> Option<Migration> {
        tokio::time::timeout(STREAM_WAIT, async {
            loop {
                match self.current(id) {
                    None => return None,
                    Some(c) if c.step == MigrationStep::Switched => return Some(c),
                    Some(_) => {}
                }
                if self.rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    async fn recover_source(&mut self, rec: &VmRecord, m: &Migration, status: String) {
        let mut m = m.clone();
        if m.step == MigrationStep::Prepared {
            // This replica may not have applied the switch this agent proposed before
            // it stopped: the abort is the arbiter (refused once switched).
            if self
                .try_abort(&m, "the source agent restarted before the switch")
                .await
            {
                if let Some(live) = self.live.as_ref()
                    && status != "none"
                {
                    let _ = live.qmp.execute("migrate_cancel", None, QMP_TIMEOUT).await;
                }
                self.stream_end().await;
                // The agent may have died inside the hand-off: every disk comes back.
                self.switch_back(rec).await;
                self.resume_here().await;
                return;
            }
            match self.switched(m.id).await {
                Some(c) => m = c,
                None if self.placed_here() => {
                    // The destination aborted it: the guest stays here.
                    tracing::warn!(vm = self.name, id = m.id, "the migration was aborted");
                    if let Some(live) = self.live.as_ref() {
                        let _ = live.qmp.execute("migrate_cancel", None, QMP_TIMEOUT).await;
                    }
                    self.stream_end().await;
                    self.switch_back(rec).await;
                    self.resume_here().await;
                    return;
                }
                None => {
                    tracing::error!(vm = self.name, id = m.id, "the VM moved on: QEMU discarded");
                    self.discard_live().await;
                    self.disks.clear();
                    return;
                }
            }
        }
        let m = &m;
        if status == "pre-switchover"
            && let Some(live) = self.live.as_ref()
            && let Err(e) = live
                .qmp
                .execute(
                    "migrate-continue",
                    Some(json!({"state": "pre-switchover"})),
                    QMP_TIMEOUT,
                )
                .await
        {
            tracing::error!(vm = self.name, "migrate-continue after a restart: {e}");
        }
        let end = self.stream_end().await;
        if end == "completed" {
            self.finish_outgoing(m, Instant::now()).await;
        } else {
            tracing::error!(
                vm = self.name,
                status = end,
                "the stream did not complete: the destination starts the VM afresh"
            );
            self.discard_live().await;
            self.disks.clear();
        }
    }

    async fn recover_destination(&mut self, rec: &VmRecord, m: &Migration) {
        let mut m = m.clone();
        if m.step == MigrationStep::Prepared {
            // This replica may lag: the source may have switched already. The abort is
            // the arbiter (refused once switched); QEMU goes only once it is recorded.
            if self
                .try_abort(&m, "the destination agent restarted before the switch")
                .await
            {
                self.discard_live().await;
                return;
            }
            match self.switched(m.id).await {
                Some(c) => m = c,
                None if self.placed_here() => return,
                None => {
                    tracing::error!(vm = self.name, id = m.id, "the migration ended elsewhere");
                    self.discard_live().await;
                    return;
                }
            }
        }
        let m = &m;
        // The disks are this node's since the switch: served at once, so QEMU's NBD
        // clients reconnect (the stream's last phase waits on them).
        let attached = self.attach_disks(rec).await;
        let end = self.stream_end().await;
        match attached {
            Ok(()) if end == "completed" => {
                let cont = match self.live.as_ref() {
                    Some(l) => l.qmp.execute("cont", None, QMP_TIMEOUT).await.err(),
                    None => None,
                };
                if let Some(e) = cont {
                    tracing::error!(vm = self.name, "continue the guest: {e}");
                    self.discard_live().await;
                }
            }
            Ok(()) => {
                tracing::error!(
                    vm = self.name,
                    status = end,
                    "the incoming stream did not complete: the VM starts afresh here"
                );
                self.discard_live().await;
            }
            Err(e) => {
                tracing::error!(vm = self.name, "after a restart: {e}");
                self.discard_live().await;
            }
        }
        self.commit(m).await;
        if let Some(l) = self.live.as_mut() {
            l.incarnation = rec.incarnation + 1;
            l.state = crate::state::vms::VmState::Running;
            l.io_paused = false;
            tracing::info!(
                vm = self.name,
                id = m.id,
                "migration completed after a restart"
            );
        }
    }
}
