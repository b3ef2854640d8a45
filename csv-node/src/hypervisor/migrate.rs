//! Live and quick migration, both sides (docs/design/080 §3–4). The record on the VM
//! drives it: `prepared` (the destination starts QEMU with `-incoming defer` over standby
//! exports of the disks and publishes where it listens), then the source `migrate`s with
//! `pause-before-switchover`; at `pre-switchover` (guest stopped, its I/O drained and
//! flushed by QEMU) the source hands every disk to the destination (the cooperative
//! transfer, export closed at once) and records `switched` (refused unless the lock
//! table agrees), then `migrate-continue`; the destination attaches the disks (the
//! standby exports start serving), and at `completed` continues the guest and commits.
//! Before the switch any failure aborts: disks moved back, `migrate_cancel`, the source
//! guest runs on. After it the destination owns the disks: it completes, or starts the
//! guest afresh there (a cold start; the disks were flushed at the switch).
//! Quick migration is the same with the guest stopped first (its whole state crosses
//! while it does not run).

use std::time::{Duration, Instant};

use csv_api::VhdId;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::qemu::Process;
use super::qmp::{Qmp, QmpEvent};
use super::runner::{Live, QMP_TIMEOUT, QUIT_WAIT, Runner};
use crate::meta::{Limit, MetaError, Retry, now_unix_ms};
use crate::metrics::MigrationLabels;
use crate::state::types::{Command, Query, QueryReply};
use crate::state::vms::{Migration, MigrationKind, MigrationStep, VmCommand, VmRecord, VmState};

/// Longest a migration may take from its record to its end.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause between attempts to attach the disks at the destination after the switch.
const ATTACH_RETRY: Duration = Duration::from_millis(100);
/// Migration bandwidth cap (bytes/s): a LAN's, not QEMU's conservative default.
const MAX_BANDWIDTH: u64 = 10 << 30;

/// A migration kind as the metrics name it.
fn kind_name(k: MigrationKind) -> &'static str {
    match k {
        MigrationKind::Live => "live",
        MigrationKind::Quick => "quick",
    }
}

fn migration_status(ev: &QmpEvent) -> Option<&str> {
    (ev.name == "MIGRATION")
        .then(|| ev.data.get("status").and_then(Value::as_str))
        .flatten()
}

async fn set_capabilities(qmp: &Qmp, caps: &[&str]) -> Result<(), String> {
    let caps: Vec<Value> = caps
        .iter()
        .map(|c| json!({"capability": c, "state": true}))
        .collect();
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": caps })),
        QMP_TIMEOUT,
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Ends a QEMU whose guest runs elsewhere (or never ran here): SIGKILL. Its state went
/// to the destination or is not wanted, and its disks are no longer served here (a
/// `quit` would wait for its NBD client to reconnect before closing them).
pub(super) async fn discard(proc: &mut Process) {
    proc.kill();
    proc.wait_end(QUIT_WAIT).await;
}

/// Why an incoming migration stopped short.
enum Incoming {
    /// The record ended it (aborted elsewhere).
    Ended,
    Failed(String),
}

impl Runner {
    async fn propose_vm(&self, command: VmCommand) -> Result<(), MetaError> {
        let retry = Retry {
            limit: Limit::Patience(Duration::from_secs(30)),
            pause: Duration::from_millis(200),
            repeatable: true,
        };
        self.m
            .propose_retrying(&Command::Vm { command }, retry)
            .await
            .map(|_| ())
    }

    /// The host the destination's QEMU listens on: this node's advertised address.
    fn migration_host(&self) -> String {
        let a = self.h.cfg.advertise();
        match a.rsplit_once(':') {
            Some((h, _)) => h.trim_matches(|c| c == '[' || c == ']').to_string(),
            None => a,
        }
    }

    pub(super) fn current(&self, id: u64) -> Option<Migration> {
        self.record()
            .and_then(|r| r.migration)
            .filter(|m| m.id == id)
    }

    pub(super) async fn abort(&self, m: &Migration, reason: &str) {
        self.try_abort(m, reason).await;
    }

    /// Proposes the abort of `m`; whether it was recorded (it is refused once the
    /// migration switched or ended: the state machine's step check is the arbiter).
    pub(super) async fn try_abort(&self, m: &Migration, reason: &str) -> bool {
        let cmd = VmCommand::MigrateAbort {
            name: self.name.clone(),
            id: m.id,
            reason: reason.to_string(),
            ended_unix_ms: now_unix_ms(),
        };
        match self.propose_vm(cmd).await {
            Ok(()) => {
                tracing::warn!(vm = self.name, id = m.id, "migration aborted: {reason}");
                self.h
                    .meta
                    .metrics()
                    .vm
                    .migrations
                    .get_or_create(&MigrationLabels {
                        kind: kind_name(m.kind),
                        result: "aborted",
                    })
                    .inc();
                true
            }
            Err(e) => {
                tracing::info!(
                    vm = self.name,
                    "abort not recorded (the migration moved on or ended): {e}"
                );
                false
            }
        }
    }

    async fn drop_standbys(&self, rec: &VmRecord, why: &str) {
        for d in &rec.def.disks {
            self.h.data.drop_standby(d, why).await;
        }
    }

    /// The destination side.
    pub(super) async fn incoming(&mut self, rec: &VmRecord, m: &Migration) {
        tracing::info!(vm = self.name, id = m.id, from = %m.src, "incoming migration");
        let mut standby = Ok(());
        for d in &rec.def.disks {
            if let Err(e) = self.h.data.standby(d).await {
                standby = Err(format!("standby export of {d}: {e}"));
                break;
            }
        }
        let launched = match standby {
            Ok(()) => self.launch(rec, Some("defer")).await,
            Err(e) => Err(e),
        };
        let (mut proc, qmp, mut events) = match launched {
            Ok(x) => x,
            Err(e) => {
                self.drop_standbys(rec, "the migration failed").await;
                self.abort(m, &format!("destination: {e}")).await;
                return;
            }
        };
        let r = self.follow_incoming(rec, m, &qmp, &mut events).await;
        match r {
            Ok(()) => {
                self.disks = rec.def.disks.clone();
                // Until this replica has applied the commit, the record still places the
                // VM on the source: the runner must not take that for "stop it here".
                let me = self.h.node();
                let committed = tokio::time::timeout(MIGRATION_TIMEOUT, async {
                    while self
                        .record()
                        .is_some_and(|r| r.node != Some(me) && r.migration.is_some())
                    {
                        if self.rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                })
                .await;
                if committed.is_err() {
                    tracing::error!(vm = self.name, "the commit did not reach this replica");
                }
                self.live = Some(Live {
                    qmp,
                    events,
                    proc,
                    incarnation: rec.incarnation + 1,
                    state: VmState::Running,
                    guest_off: false,
                    io_paused: false,
                    devices: super::runner::devices_of(rec),
                    plugged_for: rec.def.disks.clone(),
                });
            }
            Err(Incoming::Ended) => {
                discard(&mut proc).await;
                self.drop_standbys(rec, "the migration was aborted").await;
            }
            Err(Incoming::Failed(why)) => {
                discard(&mut proc).await;
                self.drop_standbys(rec, "the migration failed").await;
                match self.current(m.id) {
                    Some(cur) if cur.step == MigrationStep::Switched => {
                        // The disks are here: the VM starts afresh here.
                        tracing::error!(
                            vm = self.name,
                            "migration failed after the switch ({why}): cold start here"
                        );
                        self.commit(m).await;
                    }
                    Some(_) => self.abort(m, &format!("destination: {why}")).await,
                    None => {}
                }
            }
        }
    }

    pub(super) async fn commit(&self, m: &Migration) {
        let cmd = VmCommand::MigrateCommit {
            name: self.name.clone(),
            id: m.id,
            node: self.h.node(),
            ended_unix_ms: now_unix_ms(),
        };
        if let Err(e) = self.propose_vm(cmd).await {
            tracing::error!(
                vm = self.name,
                "commit of migration {} not recorded: {e}",
                m.id
            );
        }
    }

    async fn follow_incoming(
        &mut self,
        rec: &VmRecord,
        m: &Migration,
        qmp: &Qmp,
        events: &mut mpsc::Receiver<QmpEvent>,
    ) -> Result<(), Incoming> {
        let failed = |e: String| Incoming::Failed(e);
        set_capabilities(qmp, &["events"]).await.map_err(failed)?;
        let host = self.migration_host();
        qmp.execute(
            "migrate-incoming",
            Some(json!({"uri": format!("tcp:{host}:0")})),
            QMP_TIMEOUT,
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
        let q = qmp
            .execute("query-migrate", None, QMP_TIMEOUT)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let port = q
            .get("socket-address")
            .and_then(|a| a.get(0))
            .and_then(|a| a.get("port"))
            .and_then(|p| {
                p.as_str()
                    .map(str::to_string)
                    .or_else(|| p.as_u64().map(|n| n.to_string()))
            })
            .ok_or_else(|| failed(format!("no listening port in {q}")))?;
        let uri = format!("tcp:{host}:{port}");
        if let Some(d) = volume::failpoint::delay("vm.migrate.dst.hold_ready") {
            tracing::warn!(vm = self.name, "fail point: holding before ready for {d:?}");
            tokio::time::sleep(d).await;
        }
        let ready = VmCommand::MigrateReady {
            name: self.name.clone(),
            id: m.id,
            node: self.h.node(),
            uri: uri.clone(),
        };
        if let Err(e) = self.propose_vm(ready).await {
            return Err(failed(format!("ready not recorded: {e}")));
        }
        tracing::info!(vm = self.name, uri, "listening for the migration");
        volume::failpoint::crash("vm.migrate.dst.ready");
        let deadline = tokio::time::Instant::now() + MIGRATION_TIMEOUT;
        let (mut completed, mut activated) = (false, false);
        loop {
            let Some(cur) = self.current(m.id) else {
                return Err(Incoming::Ended);
            };
            let switched = cur.step == MigrationStep::Switched;
            if switched && !activated {
                match self.attach_disks(rec).await {
                    Ok(()) => {
                        activated = true;
                        tracing::info!(vm = self.name, "disks attached: standby exports serve");
                    }
                    Err(e) => tracing::debug!(vm = self.name, "attach after the switch: {e}"),
                }
            }
            if completed && activated {
                if let Some(d) = volume::failpoint::delay("vm.migrate.dst.hold_commit") {
                    tracing::warn!(
                        vm = self.name,
                        "fail point: holding before the commit for {d:?}"
                    );
                    tokio::time::sleep(d).await;
                }
                volume::failpoint::crash("vm.migrate.dst.before_commit");
                qmp.execute("cont", None, QMP_TIMEOUT)
                    .await
                    .map_err(|e| failed(format!("continue the guest: {e}")))?;
                self.commit(m).await;
                tracing::info!(
                    vm = self.name,
                    id = m.id,
                    "migration completed: the guest runs here"
                );
                return Ok(());
            }
            let retry_attach = switched && !activated;
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => match migration_status(&ev) {
                        Some("completed") => completed = true,
                        Some(s @ ("failed" | "cancelled")) => {
                            return Err(failed(format!("incoming migration {s}")));
                        }
                        _ => {}
                    },
                    None => return Err(failed("QEMU ended".into())),
                },
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                () = tokio::time::sleep(ATTACH_RETRY), if retry_attach => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(failed(format!("not done within {MIGRATION_TIMEOUT:?}")));
                }
            }
        }
    }

    /// The VHD ids of the VM's disks.
    async fn disk_ids(&self, rec: &VmRecord) -> Result<Vec<VhdId>, String> {
        let mut out = Vec::new();
        for d in &rec.def.disks {
            match self.m.query(Query::VhdByName { name: d.clone() }).await {
                Ok(QueryReply::Vhd(v)) => out.push(v.id),
                Ok(_) => return Err(format!("disk {d}: unexpected answer")),
                Err(e) => return Err(format!("disk {d}: {e}")),
            }
        }
        Ok(out)
    }

    /// Moves every disk's write hold to `to` (in parallel; each a cooperative transfer).
    async fn move_disks(&self, ids: &[VhdId], to: csv_api::NodeId) -> Result<(), String> {
        for v in ids {
            self.h.data.set_vm_handoff(*v, true);
        }
        let leases = self.h.data.leases.clone();
        let moves = ids.iter().map(|v| {
            let leases = leases.clone();
            let m = self.m.clone();
            async move {
                leases
                    .move_to(&m, *v, to)
                    .await
                    .map_err(|e| format!("{v}: {e}"))
            }
        });
        let results = futures_util::future::join_all(moves).await;
        for v in ids {
            self.h.data.set_vm_handoff(*v, false);
        }
        results
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map(|_| ())
    }

    /// At `pre-switchover`: the disks go to the destination, then the record says so.
    async fn switch_over(&self, rec: &VmRecord, m: &Migration) -> Result<(), String> {
        let ids = self.disk_ids(rec).await?;
        self.move_disks(&ids, m.dst).await?;
        volume::failpoint::crash("vm.migrate.src.after_move");
        let cmd = VmCommand::MigrateSwitched {
            name: self.name.clone(),
            id: m.id,
            node: self.h.node(),
            handoff_us: 0,
        };
        self.propose_vm(cmd)
            .await
            .map_err(|e| format!("switch not recorded: {e}"))
    }

    /// Undoes a partial switch: the disks come back here and are served again.
    pub(super) async fn switch_back(&mut self, rec: &VmRecord) {
        let me = self.h.node();
        match self.disk_ids(rec).await {
            Ok(ids) => {
                if let Err(e) = self.move_disks(&ids, me).await {
                    tracing::warn!(
                        vm = self.name,
                        "moving the disks back: {e} (an expired holder is taken over at attach)"
                    );
                }
            }
            Err(e) => tracing::warn!(vm = self.name, "{e}"),
        }
        if let Err(e) = self.attach_disks(rec).await {
            tracing::error!(
                vm = self.name,
                "serving the disks again after an aborted switch: {e}"
            );
        }
    }

    /// The guest runs again here after a migration that did not happen.
    pub(super) async fn resume_here(&self) {
        let Some(live) = self.live.as_ref() else {
            return;
        };
        let st = live.qmp.execute("query-status", None, QMP_TIMEOUT).await;
        let running = st
            .as_ref()
            .ok()
            .and_then(|v| v.get("running"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if !running && let Err(e) = live.qmp.execute("cont", None, QMP_TIMEOUT).await {
            tracing::warn!(vm = self.name, "continue after the aborted migration: {e}");
        }
    }

    /// The source side, while this node's QEMU runs the guest.
    pub(super) async fn outgoing(&mut self, rec: &VmRecord, m: &Migration) {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + MIGRATION_TIMEOUT;
        // Wait for the destination to listen.
        let uri = loop {
            match self.current(m.id) {
                None => return,
                Some(cur) if !cur.dst_uri.is_empty() => break cur.dst_uri,
                Some(_) => {}
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.abort(m, "the destination did not get ready").await;
                    return;
                }
            }
        };
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let setup = async {
            if m.kind == MigrationKind::Quick {
                live.qmp
                    .execute("stop", None, QMP_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            set_capabilities(&live.qmp, &["events", "pause-before-switchover"]).await?;
            live.qmp
                .execute(
                    "migrate-set-parameters",
                    Some(json!({"max-bandwidth": MAX_BANDWIDTH})),
                    QMP_TIMEOUT,
                )
                .await
                .map_err(|e| e.to_string())?;
            live.qmp
                .execute("migrate", Some(json!({ "uri": uri })), QMP_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = setup {
            self.abort(m, &format!("source: {e}")).await;
            self.resume_here().await;
            return;
        }
        tracing::info!(vm = self.name, id = m.id, uri, kind = ?m.kind, "migrating");
        let mut switched = false;
        loop {
            let Some(live) = self.live.as_mut() else {
                return;
            };
            tokio::select! {
                ev = live.events.recv() => {
                    let Some(ev) = ev else {
                        // QEMU died under the migration.
                        tracing::warn!(vm = self.name, switched, "the source QEMU ended during the migration");
                        if !switched {
                            self.abort(m, "the source QEMU ended").await;
                        }
                        if let Some(mut l) = self.live.take() {
                            l.proc.wait_end(QUIT_WAIT).await;
                        }
                        return;
                    };
                    if let Some(st) = migration_status(&ev) {
                        tracing::debug!(vm = self.name, status = st, "source migration status");
                    }
                    match migration_status(&ev) {
                        Some("pre-switchover") => {
                            if let Some(d) = volume::failpoint::delay("vm.migrate.src.hold") {
                                tracing::warn!(vm = self.name, "fail point: holding at the switch-over for {d:?}");
                                tokio::time::sleep(d).await;
                            }
                            volume::failpoint::crash("vm.migrate.src.before_switch");
                            let t0 = Instant::now();
                            match self.switch_over(rec, m).await {
                                Ok(()) => {
                                    volume::failpoint::crash("vm.migrate.src.after_switch");
                                    switched = true;
                                    let handoff = t0.elapsed();
                                    let Some(live) = self.live.as_mut() else { return };
                                    if let Err(e) = live.qmp.execute(
                                        "migrate-continue",
                                        Some(json!({"state": "pre-switchover"})),
                                        QMP_TIMEOUT,
                                    ).await {
                                        tracing::error!(vm = self.name, "migrate-continue: {e}");
                                    }
                                    tracing::info!(vm = self.name, handoff_us = handoff.as_micros() as u64, "disks handed over inside the switch-over pause");
                                    self.handoff_us = handoff.as_micros() as u64;
                                }
                                Err(e) => {
                                    tracing::error!(vm = self.name, "switch-over failed: {e}");
                                    if let Some(live) = self.live.as_ref() {
                                        let _ = live.qmp.execute("migrate_cancel", None, QMP_TIMEOUT).await;
                                    }
                                    self.switch_back(rec).await;
                                    self.abort(m, &format!("switch-over: {e}")).await;
                                    self.resume_here().await;
                                    return;
                                }
                            }
                        }
                        Some("completed") => {
                            volume::failpoint::crash("vm.migrate.src.completed");
                            self.finish_outgoing(m, started).await;
                            return;
                        }
                        Some(s @ ("failed" | "cancelled")) => {
                            if switched {
                                // The destination owns the disks: it starts the guest.
                                if let Some(mut l) = self.live.take() {
                                    discard(&mut l.proc).await;
                                }
                                self.disks.clear();
                            } else {
                                self.abort(m, &format!("migration {s}")).await;
                                self.resume_here().await;
                            }
                            return;
                        }
                        _ => {}
                    }
                }
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                    if !switched && self.current(m.id).is_none() {
                        tracing::info!(vm = self.name, "migration ended by the record: cancelling");
                        if let Some(l) = self.live.as_ref() {
                            let _ = l.qmp.execute("migrate_cancel", None, QMP_TIMEOUT).await;
                        }
                        self.resume_here().await;
                        return;
                    }
                }
                () = tokio::time::sleep_until(deadline), if !switched => {
                    if let Some(l) = self.live.as_ref() {
                        let _ = l.qmp.execute("migrate_cancel", None, QMP_TIMEOUT).await;
                    }
                }
            }
        }
    }

    /// The source after `completed`: QEMU's figures recorded, QEMU quit.
    pub(super) async fn finish_outgoing(&mut self, m: &Migration, started: Instant) {
        let Some(mut live) = self.live.take() else {
            return;
        };
        let q = live
            .qmp
            .execute("query-migrate", None, QMP_TIMEOUT)
            .await
            .unwrap_or(Value::Null);
        let n = |k: &str| q.get(k).and_then(Value::as_u64).unwrap_or(0);
        let total_ms = n("total-time");
        // A quick migration stopped the guest before QEMU's clock for its downtime
        // started: the guest was down the whole time.
        let downtime_ms = match m.kind {
            MigrationKind::Live => n("downtime"),
            MigrationKind::Quick => total_ms.max(n("downtime")),
        };
        discard(&mut live.proc).await;
        self.disks.clear();
        tracing::info!(
            vm = self.name,
            id = m.id,
            downtime_ms,
            total_ms,
            handoff_us = self.handoff_us,
            took_ms = started.elapsed().as_millis() as u64,
            "migrated away"
        );
        let vm = &self.h.meta.metrics().vm;
        vm.migrations
            .get_or_create(&MigrationLabels {
                kind: kind_name(m.kind),
                result: "completed",
            })
            .inc();
        vm.migration_downtime
            .observe(Duration::from_millis(downtime_ms));
        let cmd = VmCommand::MigrateStats {
            name: self.name.clone(),
            id: m.id,
            downtime_ms,
            total_ms,
            handoff_us: self.handoff_us,
        };
        if let Err(e) = self.propose_vm(cmd).await {
            tracing::warn!(vm = self.name, "migration figures not recorded: {e}");
        }
    }
}
