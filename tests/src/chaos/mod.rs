//! The chaos runner (issue 15): a 3-node cluster of real csv-node processes, each node
//! in its own network namespace and with its own SAN port (nbdkit) on one LUN file; the
//! workload of [`workload`] on one VHD per node; a seeded schedule of faults
//! ([`chaos::schedule`]) injected one after another; then every block read once more
//! and the history judged by [`chaos::check`].
//!
//! Faults: `kill` (kill -9, restart), `stop` (SIGSTOP past the lease, SIGCONT),
//! `partition` (the node's link cut), `path` (its SAN port killed, restored), `late`
//! (its SAN port replaced by one that lands every write a second late, then cut),
//! `slow_fsync` (the node restarted with every metadata fsync 300 ms slow, then
//! restarted as it was), `move` (a VHD's write hold handed to another node, attached
//! there).

pub mod faults;
pub mod rig;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chaos::check::{Report, check};
use chaos::history::{Event, FaultClass, Header, History};
use chaos::schedule::Plan;
use serde::Serialize;

pub use rig::{LEASE, Rig, VM};
use workload::{Shared, Target};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of the schedule and the workload.
    pub seed: u64,
    /// How long faults are injected.
    pub duration: Duration,
    /// Fault classes to draw from.
    pub classes: Vec<FaultClass>,
    /// Where the history goes.
    pub history: PathBuf,
    /// Extra environment of every node (a test build's failpoints).
    pub node_env: Vec<(String, String)>,
    /// Blocks per VHD.
    pub blocks: u64,
    /// Operations in flight per VHD.
    pub depth: usize,
    /// Writes among the operations, in percent (55 by default; the rest reads and 5 %
    /// flushes).
    pub write_percent: u64,
    /// Run each node's lease watchdog (`[lease] watchdog`): it SIGKILLs a paused or
    /// cut-off owner before its VHDs can be taken over. Without it, a write that passed
    /// the fence right before a SIGSTOP lands when the node resumes, after the takeover
    /// (docs/design/030 §9): chaos seed 1 showed it.
    pub watchdog: bool,
}

/// The run's summary (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Seed.
    pub seed: u64,
    /// Seconds of faults.
    pub seconds: f64,
    /// The history file.
    pub history: String,
    /// Classes asked for and not injected (the run was too short).
    pub missing_classes: Vec<String>,
    /// Every block read back at the end.
    pub verified: bool,
    /// Longest time a VHD's client had no route (ms).
    pub longest_outage_ms: u64,
    /// Nodes restarted after their lease watchdog killed them (paused or cut-off owners).
    pub watchdog_restarts: u64,
    /// What is wrong with the chaos VM at the end (not running on exactly one node, or
    /// its guest saw bad data), when there is one.
    pub vm_problem: Option<String>,
    /// The checker's counts and violations.
    #[serde(flatten)]
    pub report: Report,
}

impl Summary {
    /// The run passed: no violation, every class injected, every block read back.
    pub fn ok(&self) -> bool {
        self.report.ok()
            && self.missing_classes.is_empty()
            && self.verified
            && self.vm_problem.is_none()
    }
}

/// Restarts nodes whose process ended (their lease watchdog killed a paused or cut-off
/// owner), as the node's supervisor (systemd) would; how many. (The checker counts a
/// stop or a partition as a possible crash from its start, so no event is needed.)
fn revive(rig: &mut Rig) -> u64 {
    let ids: Vec<u64> = rig.vc.c.nodes.keys().copied().collect();
    let mut n = 0;
    for id in ids {
        if let Some(st) = rig.vc.c.try_exit(id) {
            eprintln!("chaos: node {id} ended ({st}), restarted as its supervisor would");
            rig.vc.c.start(id);
            n += 1;
        }
    }
    n
}

/// Creates the VM on `disk` (an idle-verifying guest: a round of writes and reads of its
/// own regions every second) and starts it on node 1.
fn start_vm(rig: &Rig, guest: &std::path::Path, disk: &str) {
    let kernel = guest.join("vmlinuz").display().to_string();
    let initrd = guest.join("initrd.img").display().to_string();
    rig.vc.ok(
        1,
        &[
            "vm",
            "create",
            VM,
            "--memory",
            "256M",
            "--disk",
            disk,
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--append",
            "console=ttyS0 panic=-1 quiet csv_rounds=0",
            "--no-nic",
        ],
    );
    rig.vc
        .ok(1, &["vm", "start", VM, "--node", "1", "--timeout", "90"]);
}

/// At the end: the VM runs, on exactly one node, one QEMU, and no guest saw bad data.
fn vm_problem(rig: &Rig) -> Option<String> {
    let start = Instant::now();
    loop {
        let shown = rig
            .vc
            .c
            .nodes
            .keys()
            .find_map(|id| {
                let o = rig.vc.csvadm(*id, &["vm", "show", VM, "--json"]);
                o.status.success().then(|| {
                    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_default()
                })
            })
            .unwrap_or_default();
        let qemus = crate::qemus_under(rig.vc.c.dir()).len();
        let bad: Vec<String> = rig
            .vc
            .c
            .nodes
            .values()
            .filter_map(|n| {
                let log = n.data_dir().join("vms").join(VM).join("console.log");
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.contains("FAIL").then(|| {
                    format!(
                        "{}: {}",
                        log.display(),
                        text.lines()
                            .filter(|l| l.contains("FAIL"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                })
            })
            .collect();
        if !bad.is_empty() {
            return Some(format!("the guest saw bad data: {}", bad.join(" | ")));
        }
        if shown["state"] == "running" && qemus == 1 {
            return None;
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Some(format!("VM {VM} is {} with {qemus} QEMU processes", shown));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs a chaos run; its summary (the history is in `cfg.history`).
pub fn run(cfg: &Config) -> Summary {
    let nodes = 3;
    let mut rig = Rig::start(nodes, &cfg.node_env, cfg.watchdog);
    let mut classes = cfg.classes.clone();
    if !rig.netns {
        eprintln!("chaos: not root, no network namespaces: partitions left out");
        classes.retain(|c| *c != FaultClass::Partition);
    }
    let guest = if classes.contains(&FaultClass::Migrate) {
        let g = rig::guest_dir();
        if g.is_none() {
            eprintln!("chaos: no guest image (scripts/guest-image): migrations left out");
            classes.retain(|c| *c != FaultClass::Migrate);
        }
        g
    } else {
        None
    };
    let mut targets = Vec::new();
    for i in 1..=nodes {
        let name = format!("chaos{i}");
        rig.vc.ok(
            1,
            &["vhd", "create", &name, "--size", "16M", "--type", "fixed"],
        );
        let info: serde_json::Value =
            serde_json::from_str(&rig.vc.ok(1, &["vhd", "info", &name, "--json"])).expect("json");
        let vhd = info["id"].as_u64().expect("vhd id");
        // The first VHD is the disk of a VM when migrations are asked for: its guest
        // writes and verifies 1–3 MiB and 9–11 MiB, the client blocks 0–63.
        let vm = i == 1 && guest.is_some();
        if let (true, Some(g)) = (vm, &guest) {
            start_vm(&rig, g, &name);
        } else {
            rig.vc.ok(i, &["vhd", "attach", &name]);
        }
        targets.push(Target {
            name,
            vhd,
            client: i,
            vm,
        });
    }
    let file = std::fs::File::create(&cfg.history).expect("create the history file");
    let header = Header {
        seed: cfg.seed,
        // Longest a write may still land after its client gave up: a request queued on
        // a node's failed path for its whole queue time, with margin.
        in_doubt_us: 30_000_000,
        block: chaos::stamp::BLOCK as u64,
        detail: format!(
            "csv-chaos, {nodes} nodes, classes {:?}, env {:?}",
            classes, cfg.node_env
        ),
    };
    let sh = Arc::new(Shared {
        admins: rig
            .vc
            .c
            .nodes
            .iter()
            .map(|(id, n)| (*id, n.admin.clone()))
            .collect(),
        nbd: (1..=nodes).map(|id| (id, rig.vc.nbd_socket(id))).collect(),
        start: Instant::now(),
        history: workload::HistoryWriter::start(file),
        next_id: AtomicU64::new(1),
        stop: AtomicBool::new(false),
        blocks: cfg.blocks,
        depth: cfg.depth,
        write_percent: cfg.write_percent,
        op_timeout: Duration::from_secs(3),
        longest_outage_us: AtomicU64::new(0),
        node_failpoints: cfg
            .node_env
            .iter()
            .find(|(k, _)| k == "FAILPOINTS")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
    });
    sh.log(&Event::Header(header.clone()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let drivers: Vec<_> = targets
        .iter()
        .map(|t| rt.spawn(workload::drive(sh.clone(), t.clone(), cfg.seed ^ t.vhd)))
        .collect();
    let plan = Plan {
        nodes,
        vhds: targets.len(),
        classes: classes.clone(),
        lease_ms: LEASE.as_millis() as u64 + 6_000,
    };
    let deadline = Instant::now() + cfg.duration;
    let mut injected: BTreeMap<FaultClass, u64> = BTreeMap::new();
    let mut restarts = 0;
    for f in plan.faults(cfg.seed) {
        // The first round (every class once) always runs to its end, however slow the
        // machine: a run covers every class it was asked for.
        if Instant::now() >= deadline && injected.len() >= classes.len() {
            break;
        }
        restarts += revive(&mut rig);
        std::thread::sleep(Duration::from_millis(f.gap_ms));
        let (start, detail) = (sh.now(), faults::inject(&mut rig, &sh, &targets, &f));
        eprintln!(
            "chaos: {:>7.1}s {} node {}: {detail}",
            start as f64 / 1e6,
            f.class.name(),
            f.node
        );
        sh.log(&Event::Fault {
            class: f.class,
            node: f.node,
            start,
            end: sh.now(),
            detail,
        });
        *injected.entry(f.class).or_default() += 1;
    }
    // Quiet: the cluster settles with the workload running, then the drivers stop and
    // every block is read once more.
    restarts += revive(&mut rig);
    std::thread::sleep(Duration::from_secs(3));
    sh.stop.store(true, Ordering::Release);
    for d in drivers {
        let _ = rt.block_on(d);
    }
    let vm_problem = guest.as_ref().and_then(|_| vm_problem(&rig));
    let verified = rt.block_on(async {
        let mut all = true;
        for t in &targets {
            all &= workload::verify(sh.clone(), t.clone(), Duration::from_secs(60)).await;
        }
        all
    });
    sh.history.finish();
    let history = std::fs::File::open(&cfg.history)
        .map_err(chaos::history::HistoryError::from)
        .and_then(|f| History::read(std::io::BufReader::new(f)))
        .expect("read back the history");
    let report = check(&history);
    let missing_classes = classes
        .iter()
        .filter(|c| !injected.contains_key(c))
        .map(|c| c.name().to_string())
        .collect();
    Summary {
        seed: cfg.seed,
        seconds: cfg.duration.as_secs_f64(),
        history: cfg.history.display().to_string(),
        missing_classes,
        verified,
        longest_outage_ms: sh.longest_outage_us.load(Ordering::Acquire) / 1000,
        watchdog_restarts: restarts,
        vm_problem,
        report,
    }
}
