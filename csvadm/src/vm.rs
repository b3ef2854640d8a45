//! `csvadm vm ...`: cluster VMs (issue 14, docs/design/080): define, list, show, start,
//! stop, kill, delete, through the addressed node's daemon (exit codes in `client.rs`).
//! `start` and `stop` wait until the VM's node reports the result, unless `--no-wait`.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use csv_api::admin::vm::{
    VmAnswer, VmDefinition, VmDiskChange, VmInfo, VmMigrate, VmName, VmOp, VmStart, VmStop,
};
use csv_api::admin::{Client, Empty};
use serde::Serialize;

use crate::client::{EXIT_REFUSED, EXIT_UNAVAILABLE, Failure, connect};
use crate::output::{Output, print};
use crate::size::parse_size;

#[derive(Args, Debug)]
pub struct VmArgs {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: VmCommand,
}

#[derive(Subcommand, Debug)]
enum VmCommand {
    /// Define a VM (stopped until `vm start`).
    Create {
        name: String,
        /// Memory (K/M/G suffix; at least 16M).
        #[arg(long, default_value = "512M", value_parser = parse_size)]
        memory: u64,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// A VHD on the cluster volume (repeat for more disks, in device order).
        #[arg(long = "disk", value_name = "VHD")]
        disks: Vec<String>,
        /// Boot this kernel directly (a path valid on every node).
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long, requires = "kernel")]
        initrd: Option<String>,
        /// Kernel command line.
        #[arg(long, requires = "kernel")]
        append: Option<String>,
        /// No network card (default: one user-mode NIC).
        #[arg(long)]
        no_nic: bool,
        /// A node the VM prefers (repeat, in order).
        #[arg(long = "prefer", value_name = "NODE")]
        preferred: Vec<u64>,
        /// Restart priority after its node fails (0: never restarted elsewhere).
        #[arg(long, default_value_t = 1)]
        priority: u32,
    },
    /// Every VM: node, state, disks, uptime.
    List,
    /// One VM, with the owner of each disk.
    Show { name: String },
    /// Run it (on `--node`, else a preferred or the least loaded node).
    Start {
        name: String,
        #[arg(long)]
        node: Option<u64>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Ask the guest to power off (QEMU is quit after the node's stop_timeout).
    Stop {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Stop it at once (QEMU quit without asking the guest).
    Kill {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Remove a stopped VM's definition (its VHDs stay).
    Delete { name: String },
    /// Move a running VM to another node: live (the guest runs while its memory is
    /// copied; its disks change owner inside the final pause), or `--quick` (stopped
    /// while its state moves). Prints the downtime and the total time.
    Migrate {
        name: String,
        /// The destination node (default: a preferred or the least loaded other node).
        #[arg(long, value_name = "NODE")]
        to: Option<u64>,
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Add a disk to a VM or remove one; plugged in or out while it runs (the guest
    /// must release a removed disk).
    Disk {
        #[command(subcommand)]
        command: DiskCommand,
    },
}

#[derive(Subcommand, Debug)]
enum DiskCommand {
    /// Add a VHD of the volume as the VM's next disk.
    Add {
        /// The VM.
        name: String,
        /// The VHD.
        vhd: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Remove a disk (the VHD stays on the volume).
    Remove {
        name: String,
        vhd: String,
        #[command(flatten)]
        wait: Wait,
    },
}

#[derive(Args, Debug)]
struct Wait {
    /// Return once the request is recorded, without waiting for the VM's node.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the VM's node (seconds).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// Runs `csvadm vm ...`; `json` is the top-level `--json`.
pub fn run(socket: &Path, args: VmArgs, json: bool) -> Result<(), Failure> {
    let out = Output::json_if(args.json || json);
    let mut c = connect(socket)?;
    let name_of = |name: &str| VmName {
        name: name.to_string(),
    };
    let v = match args.command {
        VmCommand::Create {
            name,
            memory,
            cpus,
            disks,
            kernel,
            initrd,
            append,
            no_nic,
            preferred,
            priority,
        } => c.vm_info(VmOp::Create(VmDefinition {
            name,
            cpus,
            memory_mib: memory >> 20,
            disks,
            nic: !no_nic,
            kernel: kernel.unwrap_or_default(),
            initrd: initrd.unwrap_or_default(),
            append: append.unwrap_or_default(),
            preferred,
            priority,
        }))?,
        VmCommand::List => {
            let (vms, drained) = match c.vm(VmOp::List(Empty {}))? {
                VmAnswer::List(l) => (l.vms, l.drained),
                other => {
                    return Err(Failure::local(format!("unexpected answer: {other:?}")));
                }
            };
            let now = now_ms();
            let vms = vms.iter().map(|v| VmView::of(v, now)).collect();
            print(&VmListView { vms, drained }, out)?;
            return Ok(());
        }
        VmCommand::Show { name } => c.vm_info(VmOp::Show(name_of(&name)))?,
        VmCommand::Start { name, node, wait } => {
            let v = c.vm_info(VmOp::Start(VmStart {
                name: name.clone(),
                node: node.unwrap_or(0),
            }))?;
            finish(&mut c, &name, v, &wait, &["running"])?
        }
        VmCommand::Stop { name, wait } => {
            let v = c.vm_info(VmOp::Stop(VmStop {
                name: name.clone(),
                kill: false,
            }))?;
            finish(&mut c, &name, v, &wait, &["stopped"])?
        }
        VmCommand::Kill { name, wait } => {
            let v = c.vm_info(VmOp::Stop(VmStop {
                name: name.clone(),
                kill: true,
            }))?;
            finish(&mut c, &name, v, &wait, &["stopped"])?
        }
        VmCommand::Delete { name } => c.vm_info(VmOp::Delete(name_of(&name)))?,
        VmCommand::Migrate {
            name,
            to,
            quick,
            wait,
        } => {
            let v = c.vm_info(VmOp::Migrate(VmMigrate {
                name: name.clone(),
                to: to.unwrap_or(0),
                quick,
            }))?;
            if wait.no_wait {
                v
            } else {
                let r = migrated(&mut c, &name, &v, &wait)?;
                print(&r, out)?;
                return match r.outcome.as_str() {
                    "completed" => Ok(()),
                    _ => Err(Failure {
                        code: EXIT_REFUSED,
                        message: format!("migration of {name} {}", r.outcome),
                    }),
                };
            }
        }
        VmCommand::Disk { command } => {
            let (add, name, vhd, wait) = match command {
                DiskCommand::Add { name, vhd, wait } => (true, name, vhd, wait),
                DiskCommand::Remove { name, vhd, wait } => (false, name, vhd, wait),
            };
            let change = VmDiskChange {
                name: name.clone(),
                disk: vhd.clone(),
            };
            let v = c.vm_info(if add {
                VmOp::DiskAdd(change)
            } else {
                VmOp::DiskRemove(change)
            })?;
            disk_changed(&mut c, &name, &vhd, add, v, &wait)?
        }
    };
    print(&VmView::of(&v, now_ms()), out)?;
    Ok(())
}

/// Waits (unless told not to, or the VM does not run) until the VM's node plugged the
/// disk in or out: the disk's owner is that node (added) or not (removed), or the
/// node's report names the disk.
fn disk_changed(
    c: &mut Client,
    name: &str,
    vhd: &str,
    add: bool,
    mut v: VmInfo,
    wait: &Wait,
) -> Result<VmInfo, Failure> {
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    loop {
        if wait.no_wait || !matches!(v.state.as_str(), "running" | "paused") {
            return Ok(v);
        }
        if v.detail.contains(vhd) {
            return Err(Failure {
                code: EXIT_REFUSED,
                message: format!("VM {name} on node {}: {}", v.node, v.detail),
            });
        }
        let owned = v
            .disks
            .iter()
            .any(|d| d.name == vhd && d.owner == v.node && d.owner_valid);
        let listed = v.disks.iter().any(|d| d.name == vhd);
        if (add && owned) || (!add && !listed && !owner_is(c, vhd, v.node)?) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(Failure {
                code: EXIT_UNAVAILABLE,
                message: format!(
                    "disk {vhd} of VM {name} not {} after {} s",
                    if add { "plugged in" } else { "released" },
                    wait.timeout
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
        v = c.vm_info(VmOp::Show(VmName {
            name: name.to_string(),
        }))?;
    }
}

/// Whether `node` holds `vhd`'s write hold.
fn owner_is(c: &mut Client, vhd: &str, node: u64) -> Result<bool, Failure> {
    let o = c.owner_show(csv_api::admin::VhdRef {
        id: 0,
        name: vhd.to_string(),
    })?;
    Ok(o.owner == node && o.owner_valid)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Waits (unless told not to) until the VM's node reports one of `done`; `failed`
/// ends the wait with the node's detail.
fn finish(
    c: &mut Client,
    name: &str,
    mut v: VmInfo,
    wait: &Wait,
    done: &[&str],
) -> Result<VmInfo, Failure> {
    if wait.no_wait {
        return Ok(v);
    }
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    let inc = v.incarnation;
    loop {
        if done.contains(&v.state.as_str()) {
            return Ok(v);
        }
        if v.state == "failed" && v.incarnation == inc {
            return Err(Failure {
                code: EXIT_REFUSED,
                message: format!("VM {name} failed on node {}: {}", v.node, v.detail),
            });
        }
        if Instant::now() > deadline {
            return Err(Failure {
                code: EXIT_UNAVAILABLE,
                message: format!(
                    "VM {name} is still {} after {} s (node {})",
                    v.state, wait.timeout, v.node
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
        v = c.vm_info(VmOp::Show(VmName {
            name: name.to_string(),
        }))?;
    }
}

#[derive(Serialize)]
struct DiskView {
    name: String,
    owner: u64,
    owner_valid: bool,
    generation: u64,
}

#[derive(Serialize)]
struct VmView {
    name: String,
    id: u64,
    node: Option<u64>,
    want: String,
    state: String,
    detail: String,
    since_unix_ms: u64,
    uptime_s: Option<u64>,
    incarnation: u64,
    cpus: u32,
    memory_mib: u64,
    disks: Vec<String>,
    owners: Vec<DiskView>,
    kernel: String,
    priority: u32,
    preferred: Vec<u64>,
    migration: Option<MigrationInfo>,
    last_migration: Option<MigrationInfo>,
}

#[derive(Serialize)]
struct MigrationInfo {
    id: u64,
    from: u64,
    to: u64,
    kind: String,
    state: String,
    handoff_us: u64,
    downtime_ms: u64,
    total_ms: u64,
    at_unix_ms: u64,
}

impl MigrationInfo {
    fn of(m: &csv_api::admin::vm::VmMigration) -> MigrationInfo {
        MigrationInfo {
            id: m.id,
            from: m.src,
            to: m.dst,
            kind: m.kind.clone(),
            state: m.state.clone(),
            handoff_us: m.handoff_us,
            downtime_ms: m.downtime_ms,
            total_ms: m.total_ms,
            at_unix_ms: m.at_unix_ms,
        }
    }
}

impl VmView {
    fn of(v: &VmInfo, now: u64) -> VmView {
        let d = v.definition.clone().unwrap_or_default();
        VmView {
            name: d.name,
            id: v.id,
            node: (v.node != 0).then_some(v.node),
            want: v.want.clone(),
            state: v.state.clone(),
            detail: v.detail.clone(),
            since_unix_ms: v.since_unix_ms,
            uptime_s: (v.started_unix_ms != 0)
                .then(|| now.saturating_sub(v.started_unix_ms) / 1000),
            incarnation: v.incarnation,
            cpus: d.cpus,
            memory_mib: d.memory_mib,
            disks: d.disks,
            owners: v
                .disks
                .iter()
                .map(|x| DiskView {
                    name: x.name.clone(),
                    owner: x.owner,
                    owner_valid: x.owner_valid,
                    generation: x.generation,
                })
                .collect(),
            kernel: d.kernel,
            priority: d.priority,
            preferred: d.preferred,
            migration: v.migration.as_ref().map(MigrationInfo::of),
            last_migration: v.last_migration.as_ref().map(MigrationInfo::of),
        }
    }
}

fn node_text(n: Option<u64>) -> String {
    n.map_or("-".into(), |n| n.to_string())
}

fn uptime_text(s: Option<u64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        Some(s) => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl fmt::Display for VmView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "vm:          {} (id {})", self.name, self.id)?;
        writeln!(f, "node:        {}", node_text(self.node))?;
        write!(f, "state:       {} (want {})", self.state, self.want)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        writeln!(f)?;
        writeln!(f, "uptime:      {}", uptime_text(self.uptime_s))?;
        writeln!(f, "cpus:        {}", self.cpus)?;
        writeln!(f, "memory:      {} MiB", self.memory_mib)?;
        if !self.kernel.is_empty() {
            writeln!(f, "kernel:      {}", self.kernel)?;
        }
        writeln!(f, "priority:    {}", self.priority)?;
        if let Some(m) = &self.migration {
            writeln!(f, "migrating:   {} to node {} ({})", m.kind, m.to, m.state)?;
        }
        if let Some(m) = &self.last_migration {
            writeln!(
                f,
                "last move:   {} {} node {} -> {}: downtime {} ms, total {} ms, hand-off {:.1} ms",
                m.kind,
                m.state,
                m.from,
                m.to,
                m.downtime_ms,
                m.total_ms,
                m.handoff_us as f64 / 1000.0
            )?;
        }
        if self.owners.is_empty() {
            write!(f, "disks:       {}", self.disks.join(", "))?;
        } else {
            write!(f, "disks:")?;
            for d in &self.owners {
                let owner = if d.owner == 0 {
                    "no owner".to_string()
                } else {
                    format!(
                        "owner node {} gen {}{}",
                        d.owner,
                        d.generation,
                        if d.owner_valid { "" } else { " (expired)" }
                    )
                };
                write!(f, "\n  {:<24} {owner}", d.name)?;
            }
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct VmListView {
    vms: Vec<VmView>,
    /// Nodes drained for maintenance.
    drained: Vec<u64>,
}

impl fmt::Display for VmListView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<20} {:>5} {:<9} {:>8} {:>5} {:>7}  DISKS",
            "NAME", "NODE", "STATE", "UPTIME", "CPUS", "MEMORY"
        )?;
        for v in &self.vms {
            write!(
                f,
                "\n{:<20} {:>5} {:<9} {:>8} {:>5} {:>6}M  {}",
                v.name,
                node_text(v.node),
                v.state,
                uptime_text(v.uptime_s),
                v.cpus,
                v.memory_mib,
                v.disks.join(",")
            )?;
        }
        if !self.drained.is_empty() {
            write!(f, "\ndrained nodes: {:?}", self.drained)?;
        }
        Ok(())
    }
}

/// How a migration ended.
#[derive(Serialize)]
struct MigrationView {
    name: String,
    id: u64,
    from: u64,
    to: u64,
    kind: String,
    outcome: String,
    downtime_ms: u64,
    total_ms: u64,
    handoff_us: u64,
    elapsed_ms: u64,
}

impl fmt::Display for MigrationView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} migration of {} from node {} to node {}",
            self.outcome, self.kind, self.name, self.from, self.to
        )?;
        if self.outcome == "completed" {
            write!(
                f,
                ": downtime {} ms, total {} ms, disk hand-off {:.1} ms (elapsed {:.1} s)",
                self.downtime_ms,
                self.total_ms,
                self.handoff_us as f64 / 1000.0,
                self.elapsed_ms as f64 / 1000.0
            )?;
        }
        Ok(())
    }
}

/// Waits for migration of `v` to end (phases on a progress bar on a terminal).
fn migrated(c: &mut Client, name: &str, v: &VmInfo, wait: &Wait) -> Result<MigrationView, Failure> {
    let Some(m) = v.migration.clone() else {
        return Err(Failure::local(format!("{name}: no migration was recorded")));
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(wait.timeout);
    let bar = crate::progress::Bar::new(&format!("migrating {name} to node {}", m.dst));
    let mut stats_deadline = None;
    loop {
        let v = c.vm_info(VmOp::Show(VmName {
            name: name.to_string(),
        }))?;
        let phase = match v.migration.as_ref().filter(|x| x.id == m.id) {
            Some(x) if x.state == "switched" => 2,
            Some(_) => 1,
            None => 3,
        };
        bar.update(phase, 3);
        if let Some(r) = v.last_migration.as_ref().filter(|r| r.id == m.id)
            && phase == 3
        {
            let done = r.state != "completed" || r.downtime_ms > 0;
            let until = *stats_deadline.get_or_insert(Instant::now() + Duration::from_secs(5));
            if done || Instant::now() > until {
                bar.finish();
                return Ok(MigrationView {
                    name: name.to_string(),
                    id: m.id,
                    from: m.src,
                    to: m.dst,
                    kind: m.kind.clone(),
                    outcome: r.state.clone(),
                    downtime_ms: r.downtime_ms,
                    total_ms: r.total_ms,
                    handoff_us: r.handoff_us,
                    elapsed_ms: start.elapsed().as_millis() as u64,
                });
            }
        }
        if Instant::now() > deadline {
            bar.finish();
            return Err(Failure {
                code: EXIT_UNAVAILABLE,
                message: format!("migration of {name} not over after {} s", wait.timeout),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
