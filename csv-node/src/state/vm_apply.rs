//! The transitions of the VM table (`Command::Vm`): docs/design/080 §1.

use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId};
use lock_manager::NodeStatus;
use meta_store::KvWrite;

use super::cluster::ClusterState;
use super::types::{ApplyResult, NodeState, Reply};
use super::vm_migrate::ended;
use super::vms::*;
use super::{MAX_NODES, err};

/// Longest VM name (bytes): it names a directory and QEMU's `-name`.
pub const MAX_VM_NAME_BYTES: usize = 64;

fn check_vm_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_VM_NAME_BYTES
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "VM name {name:?}: 1 to {MAX_VM_NAME_BYTES} of A-Z a-z 0-9 . _ -, not starting with . or -"
            ),
        ))
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_DETAIL_BYTES {
        let mut end = MAX_DETAIL_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl ClusterState {
    fn vm_named(&self, name: &str) -> Result<VmRecord, ApiError> {
        self.require_init()?;
        self.vms
            .by_name(name)
            .cloned()
            .ok_or_else(|| err(ErrorCode::NotFound, format!("no VM named {name:?}")))
    }

    /// Whether VMs may be placed on `node` (docs/design/080 §5, §6).
    pub fn schedulable(&self, node: NodeId) -> bool {
        let active = self
            .nodes
            .get(&node)
            .is_some_and(|n| n.state == NodeState::Active);
        let live = self
            .locks
            .node_record(node)
            .is_some_and(|r| r.status == NodeStatus::Live);
        let path_ok = self.paths.get(node).is_none_or(|p| p.mode != "paused");
        active && live && path_ok && !self.vms.is_drained(node)
    }

    /// Where a VM goes when no node is named: its first schedulable preferred node,
    /// else the schedulable node with the fewest VMs to run (lowest id on a tie).
    pub(super) fn choose_node(&self, def: &VmDef) -> Option<NodeId> {
        self.choose_node_but(def, None)
    }

    /// [`Self::choose_node`] other than `not`.
    pub(super) fn choose_node_but(&self, def: &VmDef, not: Option<NodeId>) -> Option<NodeId> {
        let ok = |n: NodeId| Some(n) != not && self.schedulable(n);
        if let Some(n) = def.preferred.iter().find(|n| ok(**n)) {
            return Some(*n);
        }
        self.nodes
            .keys()
            .filter(|n| ok(**n))
            .min_by_key(|n| (self.vms.placed_on(**n), n.0))
            .copied()
    }

    fn check_def(&self, def: &VmDef) -> Result<(), ApiError> {
        check_vm_name(&def.name)?;
        let bad = |m: String| Err(err(ErrorCode::InvalidArgument, m));
        if def.cpus == 0 || def.cpus > MAX_VM_CPUS {
            return bad(format!("{} vCPUs: 1 to {MAX_VM_CPUS}", def.cpus));
        }
        if !(MIN_VM_MEMORY_MIB..=MAX_VM_MEMORY_MIB).contains(&def.memory_mib) {
            return bad(format!(
                "{} MiB of memory: {MIN_VM_MEMORY_MIB} MiB to {MAX_VM_MEMORY_MIB} MiB",
                def.memory_mib
            ));
        }
        if def.disks.len() > MAX_VM_DISKS {
            return bad(format!("{} disks: at most {MAX_VM_DISKS}", def.disks.len()));
        }
        for s in [&def.kernel, &def.initrd, &def.append] {
            if s.len() > MAX_BOOT_BYTES || s.chars().any(char::is_control) {
                return bad(format!(
                    "kernel, initrd and append: at most {MAX_BOOT_BYTES} bytes, no control characters"
                ));
            }
        }
        if def.kernel.is_empty() && !(def.initrd.is_empty() && def.append.is_empty()) {
            return bad("an initrd or kernel arguments need a kernel".into());
        }
        if def.preferred.len() > MAX_NODES {
            return bad(format!("more than {MAX_NODES} preferred nodes"));
        }
        for n in &def.preferred {
            if !self.nodes.contains_key(n) {
                return Err(err(
                    ErrorCode::NotFound,
                    format!("preferred {n} is not recorded"),
                ));
            }
        }
        for (i, d) in def.disks.iter().enumerate() {
            if def.disks[..i].contains(d) {
                return bad(format!("disk {d:?} named twice"));
            }
            if self.vhds.by_name(d).is_none() {
                return Err(err(ErrorCode::NotFound, format!("no VHD named {d:?}")));
            }
            if let Some(o) = self.vms.using_disk(d)
                && o.def.name != def.name
            {
                return Err(err(
                    ErrorCode::InvalidState,
                    format!("VHD {d:?} is a disk of VM {:?}", o.def.name),
                ));
            }
        }
        Ok(())
    }

    /// `VmCommand::SetDisk`.
    fn set_disk(
        &mut self,
        name: &str,
        disk: String,
        add: bool,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        let mut rec = self.vm_named(name)?;
        let at = rec.def.disks.iter().position(|d| *d == disk);
        if at.is_some() == add {
            // Added or removed already: a retry.
            return Ok(Reply::Vm(Box::new(rec)));
        }
        if rec.migration.is_some() {
            return Err(err(
                ErrorCode::Busy,
                format!("VM {name:?} is migrating: change its disks once it is over"),
            ));
        }
        let mut slots: Vec<u32> = rec.def.disk_slots().iter().map(|(s, _)| *s).collect();
        match at {
            Some(i) => {
                rec.def.disks.remove(i);
                slots.remove(i);
            }
            None => {
                if rec.def.disks.len() >= MAX_VM_DISKS {
                    return Err(err(
                        ErrorCode::Limit,
                        format!("VM {name:?} has {MAX_VM_DISKS} disks"),
                    ));
                }
                let Some(free) = (0..MAX_VM_DISKS as u32).find(|s| !slots.contains(s)) else {
                    return Err(err(ErrorCode::Limit, "no free disk slot"));
                };
                rec.def.disks.push(disk);
                slots.push(free);
                self.check_def(&rec.def)?;
            }
        }
        rec.def.slots = slots;
        self.vms.put(rec.clone(), w);
        Ok(Reply::Vm(Box::new(rec)))
    }

    /// `Command::Vm`.
    pub(super) fn apply_vm(
        &mut self,
        index: u64,
        c: VmCommand,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        match c {
            VmCommand::Create { mut def } => {
                self.require_init()?;
                def.slots = (0..def.disks.len() as u32).collect();
                if let Some(old) = self.vms.by_name(&def.name) {
                    if old.def == def {
                        return Ok(Reply::Vm(Box::new(old.clone())));
                    }
                    return Err(err(
                        ErrorCode::AlreadyExists,
                        format!("a VM named {:?} exists", def.name),
                    ));
                }
                self.check_def(&def)?;
                if self.vms.len() >= MAX_VMS {
                    return Err(err(ErrorCode::Limit, format!("{MAX_VMS} VMs exist")));
                }
                let rec = VmRecord {
                    id: self.vms.take_id(w),
                    def,
                    node: None,
                    want: Want::Stopped,
                    kill: false,
                    incarnation: 0,
                    state: VmState::Stopped,
                    detail: String::new(),
                    since_unix_ms: 0,
                    started_unix_ms: 0,
                    created_index: index,
                    migration: None,
                    last_migration: None,
                };
                self.vms.put(rec.clone(), w);
                Ok(Reply::Vm(Box::new(rec)))
            }
            VmCommand::Delete { name } => {
                let rec = self.vm_named(&name)?;
                if rec.want == Want::Running || rec.state.has_process() {
                    return Err(err(
                        ErrorCode::InvalidState,
                        format!("VM {name:?} is {}: stop it first", rec.state.name()),
                    ));
                }
                self.vms.remove(rec.id, w);
                Ok(Reply::Vm(Box::new(rec)))
            }
            VmCommand::Start { name, node } => {
                let mut rec = self.vm_named(&name)?;
                if rec.want == Want::Running && rec.migration.is_some() {
                    return match node {
                        Some(n) if rec.node != Some(n) => {
                            Err(err(ErrorCode::Busy, format!("VM {name:?} is migrating")))
                        }
                        _ => Ok(Reply::Vm(Box::new(rec))),
                    };
                }
                if rec.want == Want::Running {
                    return match node {
                        Some(n) if rec.node != Some(n) => Err(err(
                            ErrorCode::InvalidState,
                            format!(
                                "VM {name:?} runs on {}: migrate it",
                                rec.node.map_or("no node".into(), |n| n.to_string())
                            ),
                        )),
                        _ => Ok(Reply::Vm(Box::new(rec))),
                    };
                }
                if rec.state.has_process() {
                    return Err(err(
                        ErrorCode::Busy,
                        format!(
                            "VM {name:?} is still {}: wait for it to stop",
                            rec.state.name()
                        ),
                    ));
                }
                let target = match node {
                    Some(n) if self.schedulable(n) => n,
                    Some(n) => {
                        return Err(err(
                            ErrorCode::Unavailable,
                            format!(
                                "{n} cannot take VMs (not active, not live, or its path is paused)"
                            ),
                        ));
                    }
                    None => self
                        .choose_node(&rec.def)
                        .ok_or_else(|| err(ErrorCode::Unavailable, "no node can take VMs now"))?,
                };
                rec.node = Some(target);
                rec.want = Want::Running;
                rec.kill = false;
                rec.incarnation += 1;
                rec.state = VmState::Starting;
                rec.detail.clear();
                self.vms.put(rec.clone(), w);
                Ok(Reply::Vm(Box::new(rec)))
            }
            VmCommand::Stop { name, kill } => {
                let mut rec = self.vm_named(&name)?;
                if let Some(m) = &rec.migration {
                    if m.step == MigrationStep::Switched {
                        return Err(err(
                            ErrorCode::Busy,
                            format!(
                                "VM {name:?} is switching to {}: stop it once it runs there",
                                m.dst
                            ),
                        ));
                    }
                    // A stop ends a migration that has not switched yet.
                    rec.last_migration = Some(ended(m, "aborted: the VM was stopped", 0));
                    rec.migration = None;
                }
                if rec.want == Want::Stopped && (rec.kill || !kill) {
                    return Ok(Reply::Vm(Box::new(rec)));
                }
                rec.want = Want::Stopped;
                rec.kill = kill;
                self.vms.put(rec.clone(), w);
                Ok(Reply::Vm(Box::new(rec)))
            }
            VmCommand::Report {
                name,
                node,
                incarnation,
                state,
                detail,
                since_unix_ms,
                guest_off,
            } => {
                let mut rec = self.vm_named(&name)?;
                if rec.node != Some(node) || rec.incarnation != incarnation {
                    return Err(err(
                        ErrorCode::Fenced,
                        format!(
                            "VM {name:?} run {} is placed on {}: a report of {node} run {incarnation} is stale",
                            rec.incarnation,
                            rec.node.map_or("no node".into(), |n| n.to_string())
                        ),
                    ));
                }
                if state == VmState::Running
                    && !matches!(rec.state, VmState::Running | VmState::Paused)
                {
                    rec.started_unix_ms = since_unix_ms;
                }
                if !state.has_process() {
                    rec.started_unix_ms = 0;
                }
                if state == VmState::Stopped && guest_off {
                    rec.want = Want::Stopped;
                }
                rec.state = state;
                rec.detail = cut(detail);
                rec.since_unix_ms = since_unix_ms;
                self.vms.put(rec.clone(), w);
                Ok(Reply::Vm(Box::new(rec)))
            }
            VmCommand::SetDisk { name, disk, add } => self.set_disk(&name, disk, add, w),
            VmCommand::Drain { node, on } => {
                self.require_init()?;
                match self.nodes.get(&node) {
                    Some(n) if n.state != NodeState::Removed => {}
                    _ => {
                        return Err(err(
                            ErrorCode::NotFound,
                            format!("{node} is not a recorded node"),
                        ));
                    }
                }
                if self.vms.is_drained(node) != on {
                    self.vms.set_drained(node, on, w);
                }
                Ok(Reply::Done)
            }
            other => self.apply_migration(index, other, w),
        }
    }
}
