//! One VM's QEMU process (docs/design/080 §2): its command line (pure, from the VM's
//! definition), its files under `<vm_dir>/<name>/`, starting it in its own process
//! group (an agent that dies or is stopped leaves it running), finding it again after an
//! agent restart (pidfile, checked against `/proc/<pid>/cmdline`), and watching it end.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::config::HypervisorSection;
use crate::state::vms::{MAX_VM_DISKS, VmRecord};

/// How long a started QEMU may take to open its QMP socket.
const QMP_APPEAR: Duration = Duration::from_secs(30);
/// How often an adopted process (not our child) is checked for its end.
const ADOPTED_POLL: Duration = Duration::from_millis(250);
/// Bytes of QEMU's own log quoted in an error.
const LOG_TAIL: u64 = 2048;

/// A VM's files.
#[derive(Debug, Clone)]
pub struct VmFiles {
    pub dir: PathBuf,
    pub qmp: PathBuf,
    pub pid: PathBuf,
    /// The guest's serial console.
    pub console: PathBuf,
    /// QEMU's stdout and stderr.
    pub log: PathBuf,
}

impl VmFiles {
    pub fn new(vm_dir: &Path, name: &str) -> VmFiles {
        let dir = vm_dir.join(name);
        VmFiles {
            qmp: dir.join("qmp.sock"),
            pid: dir.join("qemu.pid"),
            console: dir.join("console.log"),
            log: dir.join("qemu.log"),
            dir,
        }
    }
}

/// The UUID QEMU gets for VM record `id` (stable across nodes and runs).
pub fn vm_uuid(id: u64) -> String {
    format!("6373762d-0000-4000-8000-{:012x}", id & 0xffff_ffff_ffff)
}

/// How long a KVM probe QEMU must stay up for KVM to count as working.
const KVM_PROBE: Duration = Duration::from_millis(1500);

/// The accelerator `accel` (`auto`, `kvm`, `tcg`) means on this host. `auto` is KVM when
/// `/dev/kvm` opens and a QEMU of this machine type with `-cpu host` starts under it (a
/// host without nested virtualisation can have `/dev/kvm` and still fail every vCPU at
/// its first MSR write), TCG otherwise.
pub async fn accel_of(accel: &str, qemu: &Path, machine: &str) -> &'static str {
    match accel {
        "kvm" => return "kvm",
        "tcg" => return "tcg",
        _ => {}
    }
    let dev = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .await;
    if let Err(e) = dev {
        tracing::info!("/dev/kvm: {e}: guests run under TCG");
        return "tcg";
    }
    let child = tokio::process::Command::new(qemu)
        .args([
            "-accel", "kvm", "-cpu", "host", "-machine", machine, "-m", "16",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-S"])
        .args(["-monitor", "none", "-serial", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("KVM probe ({}): {e}: guests run under TCG", qemu.display());
            return "tcg";
        }
    };
    match tokio::time::timeout(KVM_PROBE, child.wait()).await {
        Err(_) => {
            let _ = child.kill().await;
            "kvm"
        }
        Ok(status) => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt as _;
                let _ = e.read_to_string(&mut err).await;
            }
            let status = match status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            let err = err.trim().replace('\n', "; ");
            tracing::warn!(
                "/dev/kvm opens but QEMU does not run under it ({status}: {err}): guests run under TCG"
            );
            "tcg"
        }
    }
}

/// The QEMU arguments of a VM. Disks are NBD clients of this node's agent (`nbd_socket`),
/// one export per VHD named after it, retried for `reconnect_delay` when the agent goes
/// away; a failed request pauses the guest (`werror=stop,rerror=stop`). The guest starts
/// paused (`-S`): the supervisor continues it once QMP answers. `incoming` starts it
/// waiting for a migration instead.
pub fn argv(
    rec: &VmRecord,
    files: &VmFiles,
    hv: &HypervisorSection,
    accel: &str,
    nbd_socket: &Path,
    incoming: Option<&str>,
) -> Vec<OsString> {
    let d = &rec.def;
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: String| a.push(s.into());
    push("-name".into());
    push(format!("guest={},debug-threads=on", d.name));
    push("-uuid".into());
    push(vm_uuid(rec.id));
    push("-machine".into());
    push(hv.machine.clone());
    push("-accel".into());
    push(accel.into());
    if accel == "kvm" {
        push("-cpu".into());
        push("host".into());
    }
    push("-m".into());
    push(format!("{}M", d.memory_mib));
    push("-smp".into());
    push(d.cpus.to_string());
    for s in ["-nodefaults", "-no-user-config", "-S"] {
        push(s.into());
    }
    push("-display".into());
    push("none".into());
    push("-qmp".into());
    push(format!("unix:{},server=on,wait=off", files.qmp.display()));
    push("-pidfile".into());
    push(files.pid.display().to_string());
    push("-chardev".into());
    push(format!(
        "file,id=console0,path={},append=on",
        files.console.display()
    ));
    push("-serial".into());
    push("chardev:console0".into());
    if !d.kernel.is_empty() {
        push("-kernel".into());
        push(d.kernel.clone());
        if !d.initrd.is_empty() {
            push("-initrd".into());
            push(d.initrd.clone());
        }
        if !d.append.is_empty() {
            push("-append".into());
            push(d.append.clone());
        }
    }
    let reconnect = hv.reconnect_delay.0.as_secs().max(1);
    let ports = has_root_ports(&hv.machine);
    if ports {
        for slot in 0..MAX_VM_DISKS as u32 {
            push("-device".into());
            push(root_port(slot).to_string());
        }
    }
    for (i, (slot, disk)) in d.disk_slots().into_iter().enumerate() {
        push("-blockdev".into());
        push(disk_blockdev(slot, disk, nbd_socket, reconnect).to_string());
        let mut dev = disk_device(slot, ports);
        if i == 0 && d.kernel.is_empty() {
            dev["bootindex"] = json!(0);
        }
        push("-device".into());
        push(dev.to_string());
    }
    if d.nic {
        push("-netdev".into());
        push("user,id=net0".into());
        push("-device".into());
        push("virtio-net-pci,netdev=net0,id=nic0".into());
    }
    if let Some(uri) = incoming {
        push("-incoming".into());
        push(uri.into());
    }
    a
}

/// Whether the machine type is PCI Express (q35): disks then sit behind root ports, one
/// per slot, created at start so a disk can be plugged in while the guest runs (PCIe has
/// no hot-plug on the root bus) and every disk keeps its address across hot-plugs and
/// migrations.
pub fn has_root_ports(machine: &str) -> bool {
    machine
        .split(',')
        .next()
        .is_some_and(|t| t.starts_with("q35") || t.contains("-q35-"))
}

/// The root port of disk slot `slot`.
fn root_port(slot: u32) -> Value {
    json!({
        "driver": "pcie-root-port",
        "id": format!("rp{slot}"),
        "bus": "pcie.0",
        "chassis": slot + 1,
    })
}

/// The block node of the disk in `slot`: an NBD client of the agent's export `disk`.
pub fn disk_blockdev(slot: u32, disk: &str, nbd_socket: &Path, reconnect_s: u64) -> Value {
    json!({
        "driver": "nbd",
        "node-name": format!("d{slot}"),
        "server": {"type": "unix", "path": nbd_socket.display().to_string()},
        "export": disk,
        "reconnect-delay": reconnect_s,
    })
}

/// The guest device of the disk in `slot` (behind its root port on q35); a failed
/// request pauses the guest.
pub fn disk_device(slot: u32, root_ports: bool) -> Value {
    let mut dev = json!({
        "driver": "virtio-blk-pci",
        "drive": format!("d{slot}"),
        "id": format!("disk{slot}"),
        "werror": "stop",
        "rerror": "stop",
    });
    if root_ports {
        dev["bus"] = json!(format!("rp{slot}"));
    }
    dev
}

/// A running QEMU: its pid and a watch that turns true once it ended.
#[derive(Debug)]
pub struct Process {
    pub pid: u32,
    pub ended: watch::Receiver<bool>,
    /// How it ended, when known (our child: its exit status).
    pub how: watch::Receiver<String>,
}

impl Process {
    pub fn is_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Waits until it ended, at most `d`; true if it did.
    pub async fn wait_end(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.ended.wait_for(|e| *e))
            .await
            .is_ok()
    }

    /// SIGKILL.
    pub fn kill(&self) {
        if self.is_ended() {
            return;
        }
        if let Some(p) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

/// Why QEMU could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("QEMU ended at start ({how}): {log}")]
    Ended { how: String, log: String },
    #[error("QEMU opened no QMP socket within {0:?}")]
    NoQmp(Duration),
}

/// The end of QEMU's log (for an error message).
pub async fn log_tail(files: &VmFiles) -> String {
    let path = files.log.clone();
    let read = move || -> std::io::Result<String> {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let mut f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)))?;
        let mut s = String::new();
        f.take(LOG_TAIL).read_to_string(&mut s)?;
        Ok(s.trim().replace('\n', " | "))
    };
    tokio::task::spawn_blocking(read)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// Starts QEMU with `args` in its own process group and waits for its QMP socket.
pub async fn spawn(
    qemu: &Path,
    args: Vec<OsString>,
    files: &VmFiles,
) -> Result<Process, StartError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| StartError::Io { what, source }
    };
    tokio::fs::create_dir_all(&files.dir)
        .await
        .map_err(io(&format!("create {}", files.dir.display())))?;
    for f in [&files.qmp, &files.pid] {
        match tokio::fs::remove_file(f).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(&format!("remove {}", f.display()))(e));
            }
            _ => {}
        }
    }
    let log = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log)
        .await
        .map_err(io(&format!("open {}", files.log.display())))?
        .into_std()
        .await;
    let log2 = log
        .try_clone()
        .map_err(io(&format!("open {}", files.log.display())))?;
    let mut child = tokio::process::Command::new(qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(io(&format!("start {}", qemu.display())))?;
    let pid = child.id().unwrap_or(0);
    let (ended_tx, ended) = watch::channel(false);
    let (how_tx, how) = watch::channel(String::new());
    tokio::spawn(async move {
        let s = match child.wait().await {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        how_tx.send_replace(s);
        ended_tx.send_replace(true);
    });
    let mut p = Process { pid, ended, how };
    let start = tokio::time::Instant::now();
    loop {
        if tokio::fs::try_exists(&files.qmp).await.unwrap_or(false) {
            return Ok(p);
        }
        if p.wait_end(Duration::from_millis(50)).await {
            let how = p.how.borrow().clone();
            return Err(StartError::Ended {
                how,
                log: log_tail(files).await,
            });
        }
        if start.elapsed() > QMP_APPEAR {
            p.kill();
            return Err(StartError::NoQmp(QMP_APPEAR));
        }
    }
}

/// The QEMU of this VM left running by an earlier agent, if its pidfile names a live
/// process whose command line is this VM's (its QMP socket path).
pub async fn adopt(files: &VmFiles) -> Option<Process> {
    let pid: u32 = tokio::fs::read_to_string(&files.pid)
        .await
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = tokio::fs::read(format!("/proc/{pid}/cmdline")).await.ok()?;
    let needle = format!("unix:{},", files.qmp.display());
    let ours = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg.starts_with(needle.as_bytes()));
    if !ours {
        return None;
    }
    let (ended_tx, ended) = watch::channel(false);
    let (how_tx, how) = watch::channel(String::new());
    tokio::spawn(async move {
        let proc_dir = format!("/proc/{pid}");
        loop {
            tokio::time::sleep(ADOPTED_POLL).await;
            let alive = match tokio::fs::read_to_string(format!("{proc_dir}/stat")).await {
                // A zombie (state Z) has ended too.
                Ok(s) => s
                    .rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z')),
                Err(_) => false,
            };
            if !alive {
                how_tx.send_replace("ended (adopted process)".into());
                ended_tx.send_replace(true);
                return;
            }
        }
    });
    Some(Process { pid, ended, how })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::vms::{VmDef, VmState, Want};

    fn rec(kernel: &str) -> VmRecord {
        VmRecord {
            id: 7,
            def: VmDef {
                name: "web1".into(),
                cpus: 2,
                memory_mib: 512,
                disks: vec!["a".into(), "b,c".into()],
                nic: true,
                kernel: kernel.into(),
                initrd: String::new(),
                append: "console=ttyS0".into(),
                preferred: vec![],
                priority: 1,
                slots: Vec::new(),
            },
            node: None,
            want: Want::Stopped,
            kill: false,
            incarnation: 1,
            state: VmState::Stopped,
            detail: String::new(),
            since_unix_ms: 0,
            started_unix_ms: 0,
            created_index: 1,
            migration: None,
            last_migration: None,
        }
    }

    fn args(r: &VmRecord, incoming: Option<&str>) -> Vec<String> {
        let files = VmFiles::new(Path::new("/v"), &r.def.name);
        argv(
            r,
            &files,
            &HypervisorSection::default(),
            "tcg",
            Path::new("/d/nbd.sock"),
            incoming,
        )
        .into_iter()
        .map(|s| s.into_string().expect("utf-8"))
        .collect()
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    fn disks(a: &[String]) -> Vec<serde_json::Value> {
        after(a, "-device")
            .into_iter()
            .filter(|d| d.starts_with('{'))
            .map(|d| serde_json::from_str::<serde_json::Value>(d).expect("json"))
            .filter(|d| d["driver"] == "virtio-blk-pci")
            .collect()
    }

    #[test]
    fn disks_keep_their_slots_across_hot_plugs() {
        let mut r = rec("");
        r.def.disks = vec!["x".into(), "y".into()];
        r.def.slots = vec![3, 0];
        let a = args(&r, None);
        let devs = disks(&a);
        assert_eq!(
            (devs[0]["id"].as_str(), devs[0]["bus"].as_str()),
            (Some("disk3"), Some("rp3"))
        );
        assert_eq!(devs[0]["drive"], "d3");
        assert_eq!(devs[0]["bootindex"], 0, "the first listed disk boots");
        assert_eq!(devs[1]["id"], "disk0");
        assert!(has_root_ports("pc-q35-10.0,accel=kvm"));
        assert!(!has_root_ports("pc"));
        assert!(disk_device(1, false).get("bus").is_none());
    }

    #[test]
    fn disks_are_nbd_clients_of_the_agent_that_pause_the_guest_on_errors() {
        let a = args(&rec(""), None);
        let blockdevs = after(&a, "-blockdev");
        assert_eq!(blockdevs.len(), 2);
        let b: serde_json::Value = serde_json::from_str(blockdevs[1]).expect("json");
        assert_eq!(b["driver"], "nbd");
        // A comma in an export name needs no escaping in the JSON form.
        assert_eq!(b["export"], "b,c");
        assert_eq!(b["server"]["path"], "/d/nbd.sock");
        assert_eq!(b["reconnect-delay"], 30);
        let devs = disks(&a);
        assert_eq!(devs.len(), 2);
        let d0 = &devs[0];
        assert_eq!(d0["bus"], "rp0", "q35: each disk behind its own root port");
        assert_eq!(devs[1]["id"], "disk1");
        assert_eq!(
            after(&a, "-device")
                .iter()
                .filter(|d| d.contains("pcie-root-port"))
                .count(),
            MAX_VM_DISKS,
            "a free root port for every disk that may be plugged in"
        );
        assert_eq!(
            (d0["werror"].as_str(), d0["rerror"].as_str()),
            (Some("stop"), Some("stop"))
        );
        assert_eq!(d0["bootindex"], 0, "no kernel: boots from the first disk");
        assert!(a.contains(&"-S".to_string()), "starts paused");
        assert_eq!(
            after(&a, "-uuid"),
            vec!["6373762d-0000-4000-8000-000000000007"]
        );
        assert_eq!(after(&a, "-m"), vec!["512M"]);
        assert_eq!(
            after(&a, "-qmp"),
            vec!["unix:/v/web1/qmp.sock,server=on,wait=off"]
        );
        assert!(after(&a, "-incoming").is_empty());
        assert!(after(&a, "-kernel").is_empty());
    }

    #[test]
    fn direct_kernel_boot_and_incoming_migration() {
        let a = args(&rec("/boot/k"), Some("defer"));
        assert_eq!(after(&a, "-kernel"), vec!["/boot/k"]);
        assert_eq!(after(&a, "-append"), vec!["console=ttyS0"]);
        assert!(after(&a, "-initrd").is_empty());
        assert_eq!(after(&a, "-incoming"), vec!["defer"]);
        assert!(disks(&a)[0].get("bootindex").is_none());
    }
}
