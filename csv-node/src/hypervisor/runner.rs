//! One VM's runner on this node (docs/design/080 §1–2): it makes the VM's QEMU match
//! the replicated record and reports what it did. Placed here with `want = running`:
//! attach every disk (write holds), start QEMU paused, connect QMP, continue the guest,
//! report `running`. Otherwise: stop it (power-off request, then `quit`, then SIGKILL;
//! `kill` skips the request), detach the disks, report `stopped`. While it runs: a guest
//! paused by an I/O error is continued every `resume_interval` (QEMU retries the
//! failed requests); a lost write hold on any disk kills QEMU at once (a guest never
//! runs on disks another node may write); QEMU's end is reported (`stopped` when the
//! guest powered off, `failed` otherwise, not restarted until started again). Disks
//! added or removed while it runs are plugged in or out (`hotplug.rs`).

use std::sync::Arc;
use std::time::Duration;

use csv_api::admin::volume::VhdAttach;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::host::Host;
use super::qemu::{self, Process, VmFiles};
use super::qmp::{Qmp, QmpEvent};
use crate::meta::{Limit, Member, Retry, now_unix_ms};
use crate::state::types::{Command, Query, QueryReply};
use crate::state::vms::{VmCommand, VmRecord, VmState, Want};

/// Deadline of one QMP command.
pub(super) const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `quit` may take before SIGKILL.
pub(super) const QUIT_WAIT: Duration = Duration::from_secs(5);
/// How long a report keeps trying (the coordinator may be changing).
const REPORT_PATIENCE: Duration = Duration::from_secs(30);

pub(super) struct Live {
    pub(super) qmp: Qmp,
    pub(super) events: mpsc::Receiver<QmpEvent>,
    pub(super) proc: Process,
    pub(super) incarnation: u64,
    pub(super) state: VmState,
    /// The guest asked for its own power-off (QMP `SHUTDOWN` with `guest: true`).
    pub(super) guest_off: bool,
    /// Stopped by an I/O error: continue it from time to time.
    pub(super) io_paused: bool,
    /// The disks QEMU has, by slot (`hotplug.rs` makes them follow the definition).
    pub(super) devices: Vec<(u32, String)>,
    /// The disk list of the definition last plugged to (a failed plug is not retried
    /// until the definition changes again).
    pub(super) plugged_for: Vec<String>,
}

/// The disks of a record, by slot.
pub(super) fn devices_of(rec: &VmRecord) -> Vec<(u32, String)> {
    rec.def
        .disk_slots()
        .into_iter()
        .map(|(s, d)| (s, d.to_string()))
        .collect()
}

pub(super) struct Runner {
    pub(super) h: Arc<Host>,
    pub(super) m: Member,
    pub(super) name: String,
    pub(super) files: VmFiles,
    pub(super) rx: watch::Receiver<Option<VmRecord>>,
    pub(super) live: Option<Live>,
    /// Disks this runner attached (detached when QEMU is gone).
    pub(super) disks: Vec<String>,
    /// The run whose start failed or whose QEMU ended unasked: not started again
    /// until the VM is started anew (a new incarnation).
    pub(super) failed: Option<u64>,
    /// The last outgoing migration's disk hand-off (µs).
    pub(super) handoff_us: u64,
}

/// Runs until the VM's record is gone and no QEMU of it is left (or the node stops:
/// QEMU then keeps running, for the next agent to adopt).
pub(super) async fn run(
    h: Arc<Host>,
    m: Member,
    name: String,
    rx: watch::Receiver<Option<VmRecord>>,
) {
    let files = VmFiles::new(&h.vm_dir(), &name);
    let mut r = Runner {
        h,
        m,
        name,
        files,
        rx,
        live: None,
        disks: Vec::new(),
        failed: None,
        handoff_us: 0,
    };
    r.adopt().await;
    r.main().await;
}

impl Runner {
    pub(super) fn record(&self) -> Option<VmRecord> {
        self.rx.borrow().clone()
    }

    /// Takes over a QEMU left running by an earlier agent.
    async fn adopt(&mut self) {
        let Some(proc) = qemu::adopt(&self.files).await else {
            return;
        };
        match Qmp::connect(&self.files.qmp, QMP_TIMEOUT).await {
            Ok((qmp, events)) => {
                let st = qmp.execute("query-status", None, QMP_TIMEOUT).await;
                let running = st
                    .as_ref()
                    .ok()
                    .and_then(|v| v.get("running"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let rec = self.record();
                self.disks = rec
                    .as_ref()
                    .map(|r| r.def.disks.clone())
                    .unwrap_or_default();
                tracing::info!(vm = self.name, pid = proc.pid, running, "adopted its QEMU");
                self.live = Some(Live {
                    qmp,
                    events,
                    proc,
                    // Reported anew below under the current incarnation.
                    incarnation: 0,
                    state: if running {
                        VmState::Running
                    } else {
                        VmState::Paused
                    },
                    guest_off: false,
                    io_paused: !running,
                    devices: rec.as_ref().map(devices_of).unwrap_or_default(),
                    plugged_for: rec
                        .as_ref()
                        .map(|r| r.def.disks.clone())
                        .unwrap_or_default(),
                });
            }
            Err(e) => {
                tracing::error!(
                    vm = self.name,
                    pid = proc.pid,
                    "QMP of a left QEMU: {e}; killing it"
                );
                proc.kill();
            }
        }
    }

    async fn main(&mut self) {
        loop {
            let rec = self.record();
            let me = self.h.node();
            if let Some((r, m)) = rec
                .as_ref()
                .and_then(|r| r.migration.clone().map(|m| (r.clone(), m)))
            {
                let adopted = self.live.as_ref().is_some_and(|l| l.incarnation == 0);
                if adopted && (m.src == me || m.dst == me) {
                    self.recover(&r, &m).await;
                    continue;
                }
                if m.dst == me && self.live.is_none() {
                    self.incoming(&r, &m).await;
                    continue;
                }
                if m.src == me && self.live.is_some() {
                    self.outgoing(&r, &m).await;
                    continue;
                }
                if m.src == me {
                    // Migrating away with no QEMU here: the destination ends it.
                    if self.rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
            }
            let mine = rec.as_ref().filter(|r| r.node == Some(me));
            let want_run = mine.is_some_and(|r| r.want == Want::Running);
            match (self.live.is_some(), want_run) {
                (true, true) => {
                    let Some(r) = mine.cloned() else { continue };
                    self.watch(&r).await;
                }
                (true, false) => {
                    let kill = rec.as_ref().is_none_or(|r| r.kill || r.node != Some(me));
                    self.stop(kill).await;
                    self.detach_disks().await;
                    if let Some(r) = mine {
                        self.report(r.incarnation, VmState::Stopped, "stopped on request", false)
                            .await;
                    }
                }
                (false, true) => {
                    let Some(r) = mine.cloned() else { continue };
                    if self.failed == Some(r.incarnation) {
                        if self.rx.changed().await.is_err() {
                            return;
                        }
                        continue;
                    }
                    self.start(&r).await;
                }
                (false, false) => {
                    self.detach_disks().await;
                    if let Some(r) = mine
                        && r.state.has_process()
                    {
                        self.report(r.incarnation, VmState::Stopped, "", false)
                            .await;
                    }
                    if rec.is_none() {
                        return;
                    }
                    if self.rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Proposes a report; a stale one (the VM was placed again meanwhile) is dropped.
    pub(super) async fn report(
        &self,
        incarnation: u64,
        state: VmState,
        detail: &str,
        guest_off: bool,
    ) {
        let cmd = Command::Vm {
            command: VmCommand::Report {
                name: self.name.clone(),
                node: self.h.node(),
                incarnation,
                state,
                detail: detail.to_string(),
                since_unix_ms: now_unix_ms(),
                guest_off,
            },
        };
        let retry = Retry {
            limit: Limit::Patience(REPORT_PATIENCE),
            pause: Duration::from_millis(300),
            repeatable: true,
        };
        match self.m.propose_retrying(&cmd, retry).await {
            Ok(_) => tracing::info!(vm = self.name, state = state.name(), detail, "reported"),
            Err(e) => tracing::warn!(
                vm = self.name,
                state = state.name(),
                "report not recorded: {e}"
            ),
        }
    }

    pub(super) async fn attach_disks(&mut self, rec: &VmRecord) -> Result<(), String> {
        for d in &rec.def.disks {
            let a = VhdAttach {
                name: d.clone(),
                node: 0,
                read_only: false,
            };
            if let Err(e) = self.h.data.attach(a).await {
                return Err(format!("attach disk {d}: {e}"));
            }
            if !self.disks.contains(d) {
                self.disks.push(d.clone());
            }
        }
        Ok(())
    }

    pub(super) async fn detach_disks(&mut self) {
        for d in std::mem::take(&mut self.disks) {
            if !self.h.data.is_attached_name(&d) {
                continue;
            }
            if let Err(e) = self.h.data.detach(&d).await {
                tracing::warn!(vm = self.name, disk = d, "detach after the VM stopped: {e}");
            }
        }
    }

    async fn start(&mut self, rec: &VmRecord) {
        tracing::info!(vm = self.name, incarnation = rec.incarnation, "starting");
        match self.try_start(rec).await {
            Ok(live) => {
                self.live = Some(live);
                self.report(rec.incarnation, VmState::Running, "", false)
                    .await;
            }
            Err(e) => {
                tracing::error!(vm = self.name, "start failed: {e}");
                self.failed = Some(rec.incarnation);
                self.detach_disks().await;
                self.report(rec.incarnation, VmState::Failed, &e, false)
                    .await;
            }
        }
    }

    async fn try_start(&mut self, rec: &VmRecord) -> Result<Live, String> {
        self.attach_disks(rec).await?;
        let (proc, qmp, events) = self.launch(rec, None).await?;
        if let Err(e) = qmp.execute("cont", None, QMP_TIMEOUT).await {
            proc.kill();
            return Err(format!("continue the guest: {e}"));
        }
        tracing::info!(
            vm = self.name,
            pid = proc.pid,
            accel = self.h.accel(),
            "QEMU running"
        );
        Ok(Live {
            qmp,
            events,
            proc,
            incarnation: rec.incarnation,
            state: VmState::Running,
            guest_off: false,
            io_paused: false,
            devices: devices_of(rec),
            plugged_for: rec.def.disks.clone(),
        })
    }

    /// Starts QEMU (paused; `incoming`: waiting for a migration) and connects to its
    /// QMP socket. A QEMU of this VM that still runs is killed first: never two.
    pub(super) async fn launch(
        &mut self,
        rec: &VmRecord,
        incoming: Option<&str>,
    ) -> Result<(Process, Qmp, mpsc::Receiver<QmpEvent>), String> {
        if let Some(mut old) = qemu::adopt(&self.files).await {
            tracing::warn!(
                vm = self.name,
                pid = old.pid,
                "a QEMU of this VM still runs: killing it"
            );
            old.kill();
            if !old.wait_end(QUIT_WAIT).await {
                return Err(format!("an earlier QEMU (pid {}) does not end", old.pid));
            }
        }
        let hv = &self.h.cfg.hypervisor;
        let args = qemu::argv(
            rec,
            &self.files,
            hv,
            self.h.accel(),
            &self.h.data.nbd_socket(),
            incoming,
        );
        let proc = qemu::spawn(&hv.qemu, args, &self.files)
            .await
            .map_err(|e| e.to_string())?;
        match Qmp::connect(&self.files.qmp, QMP_TIMEOUT).await {
            Ok((qmp, events)) => Ok((proc, qmp, events)),
            Err(e) => {
                proc.kill();
                Err(format!("QMP: {e}"))
            }
        }
    }

    /// Follows a running QEMU until something changes: an event, its end, the record,
    /// or the periodic check.
    async fn watch(&mut self, rec: &VmRecord) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.incarnation != rec.incarnation {
            // Adopted, or placed here again while it ran: report under this run.
            live.incarnation = rec.incarnation;
            let state = live.state;
            self.report(rec.incarnation, state, "", false).await;
            return;
        }
        if live.plugged_for != rec.def.disks {
            self.plug_disks(rec).await;
            return;
        }
        let interval = self.h.cfg.hypervisor.resume_interval.0;
        let Some(live) = self.live.as_mut() else {
            return;
        };
        tokio::select! {
            ev = live.events.recv() => match ev {
                Some(ev) => self.on_event(ev).await,
                None => self.on_end(rec).await,
            },
            changed = self.rx.changed() => {
                if changed.is_err() {
                    // The supervisor is gone (the node stops): QEMU keeps running.
                    std::future::pending::<()>().await;
                }
            }
            () = tokio::time::sleep(interval) => self.check(rec).await,
        }
    }

    pub(super) async fn on_event(&mut self, ev: QmpEvent) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        tracing::debug!(vm = self.name, event = ev.name, data = %ev.data, "QMP event");
        let (state, detail) = match ev.name.as_str() {
            "SHUTDOWN" => {
                live.guest_off = ev.data.get("guest").and_then(Value::as_bool) == Some(true);
                return;
            }
            "BLOCK_IO_ERROR" => {
                tracing::warn!(vm = self.name, data = %ev.data, "guest I/O error: paused until it clears");
                live.io_paused = true;
                return;
            }
            "STOP" => {
                let why = match live.qmp.execute("query-status", None, QMP_TIMEOUT).await {
                    Ok(v) => v
                        .get("status")
                        .and_then(Value::as_str)
                        .unwrap_or("paused")
                        .to_string(),
                    Err(e) => e.to_string(),
                };
                if why == "io-error" {
                    live.io_paused = true;
                }
                (VmState::Paused, why)
            }
            "RESUME" => {
                live.io_paused = false;
                (VmState::Running, String::new())
            }
            _ => return,
        };
        if live.state != state {
            live.state = state;
            let inc = live.incarnation;
            self.report(inc, state, &detail, false).await;
        }
    }

    /// QEMU ended without being asked.
    async fn on_end(&mut self, rec: &VmRecord) {
        let Some(mut live) = self.live.take() else {
            return;
        };
        live.proc.wait_end(QUIT_WAIT).await;
        let how = live.proc.how.borrow().clone();
        self.detach_disks().await;
        if live.guest_off {
            tracing::info!(vm = self.name, "the guest powered off");
            self.report(
                rec.incarnation,
                VmState::Stopped,
                "the guest powered off",
                true,
            )
            .await;
        } else {
            let detail = format!("QEMU ended ({how}): {}", qemu::log_tail(&self.files).await);
            tracing::error!(vm = self.name, "{detail}");
            self.failed = Some(rec.incarnation);
            self.report(rec.incarnation, VmState::Failed, &detail, false)
                .await;
        }
    }

    /// The periodic check: every disk still written by this node (else QEMU is killed),
    /// and a guest paused by an I/O error continued.
    async fn check(&mut self, rec: &VmRecord) {
        if let Some(lost) = self.lost_disk().await {
            let detail = format!("lost the write hold of disk {lost}: QEMU killed");
            tracing::error!(vm = self.name, "{detail}");
            if let Some(live) = self.live.take() {
                live.proc.kill();
                let mut p = live.proc;
                p.wait_end(QUIT_WAIT).await;
            }
            self.failed = Some(rec.incarnation);
            self.detach_disks().await;
            self.report(rec.incarnation, VmState::Failed, &detail, false)
                .await;
            return;
        }
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.io_paused {
            match live.qmp.execute("cont", None, QMP_TIMEOUT).await {
                Ok(_) => tracing::info!(vm = self.name, "continued after an I/O error"),
                Err(e) => tracing::debug!(vm = self.name, "continue: {e}"),
            }
        }
    }

    /// A disk of the VM's QEMU whose write hold another node has. A disk nobody holds
    /// (this node's agent stopped gracefully and released it, or its hold expired) is
    /// taken back here: the guest cannot write it meanwhile (its export is gone), and
    /// its NBD client reconnects once the export is back.
    async fn lost_disk(&mut self) -> Option<String> {
        let me = self.h.node();
        let disks: Vec<String> = self
            .live
            .as_ref()
            .map(|l| l.devices.iter().map(|(_, d)| d.clone()).collect())
            .unwrap_or_default();
        for d in &disks {
            let Ok(QueryReply::Vhd(v)) = self
                .m
                .query_local(Query::VhdByName { name: d.clone() })
                .await
            else {
                continue;
            };
            let holder = match self.m.query_local(Query::Owner { vhd: v.id }).await {
                Ok(QueryReply::Owner { owner: Some(o) }) if o.owner_valid => o.owner,
                Ok(_) => None,
                Err(_) => continue,
            };
            match holder {
                Some(n) if n != me => return Some(d.clone()),
                Some(_) if self.h.data.is_attached_name(d) => {}
                _ => {
                    let a = VhdAttach {
                        name: d.clone(),
                        node: 0,
                        read_only: false,
                    };
                    match self.h.data.attach(a).await {
                        Ok(_) => tracing::info!(vm = self.name, disk = d, "disk taken back"),
                        Err(e) => {
                            tracing::debug!(vm = self.name, disk = d, "taking the disk back: {e}")
                        }
                    }
                    if !self.disks.contains(d) {
                        self.disks.push(d.clone());
                    }
                }
            }
        }
        None
    }

    /// Stops QEMU: a power-off request first (unless `kill`), then `quit`, then SIGKILL.
    /// A change of the record to `kill` cuts the wait short.
    pub(super) async fn stop(&mut self, kill: bool) {
        let Some(mut live) = self.live.take() else {
            return;
        };
        tracing::info!(vm = self.name, kill, "stopping");
        if !kill {
            let _ = live
                .qmp
                .execute("system_powerdown", None, QMP_TIMEOUT)
                .await;
            let deadline = tokio::time::Instant::now() + self.h.cfg.hypervisor.stop_timeout.0;
            loop {
                tokio::select! {
                    _ = live.proc.ended.wait_for(|e| *e) => break,
                    () = tokio::time::sleep_until(deadline) => break,
                    changed = self.rx.changed() => {
                        let killed = changed.is_err()
                            || self.rx.borrow().as_ref().is_none_or(|r| r.kill);
                        if killed { break; }
                    }
                }
            }
        }
        if !live.proc.is_ended() {
            let _ = live.qmp.execute("quit", None, QMP_TIMEOUT).await;
            if !live.proc.wait_end(QUIT_WAIT).await {
                live.proc.kill();
                live.proc.wait_end(QUIT_WAIT).await;
            }
        }
        tracing::info!(vm = self.name, "QEMU stopped");
    }
}
