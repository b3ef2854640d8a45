//! The hypervisor backend end to end (issue 14): a real Linux guest (scripts/guest-image,
//! TCG) defined as a cluster VM whose disk is a VHD on the shared volume. It writes,
//! flushes and verifies a round-stamped pattern once a second for its whole life, and
//! keeps doing so across: a kill -9 and a graceful stop of its node's agent (QEMU runs on
//! and is adopted by the restarted agent), five live migrations back and forth and a quick one (the disk's
//! owner follows the VM each time), a disk plugged in and out while it runs, a drain of
//! its node, a stop and start, and the death of its node (the VM restarts elsewhere and
//! finds its last flushed round on the disk).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use csv_tests::qemus_under;
use csv_tests::volume::{VolumeCluster, need, volume_cluster_with};
use serde_json::Value;

const GIB: u64 = 1 << 30;
const CONFIG: &str = "[volume]\nlun = \"{lun}\"\n\n[hypervisor]\naccel = \"tcg\"\nstop_timeout = \"3s\"\nreconnect_delay = \"10s\"\nresume_interval = \"500ms\"\n";

/// Kills every QEMU whose command line names the fixture's directory (they run in their
/// own process groups: killing the nodes leaves them).
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in qemus_under(&self.0) {
            let _ = csv_tests::send_signal(pid, "KILL");
        }
    }
}

fn vm_dir(vc: &VolumeCluster, node: u64) -> PathBuf {
    vc.c.nodes[&node].data_dir().join("vms/g1")
}

fn console(vc: &VolumeCluster, node: u64) -> String {
    std::fs::read_to_string(vm_dir(vc, node).join("console.log")).unwrap_or_default()
}

/// Forgets what earlier runs printed on `node` (no QEMU of the VM runs there now).
fn clear_console(vc: &VolumeCluster, node: u64) {
    let _ = std::fs::write(vm_dir(vc, node).join("console.log"), "");
}

/// The last round the guest verified in `text`; panics on a failed round.
fn last_round(text: &str) -> u64 {
    assert!(!text.contains("FAIL"), "the guest saw bad data:\n{text}");
    text.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("guest: round "))
        .filter_map(|r| r.strip_suffix(" OK"))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn show(vc: &VolumeCluster, via: u64) -> Value {
    let out = vc.ok(via, &["vm", "show", "g1", "--json"]);
    serde_json::from_str(&out).expect("vm show --json")
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the guest on `node` verified a round after `after`.
fn wait_round(vc: &VolumeCluster, node: u64, after: u64) -> u64 {
    let mut r = 0;
    wait_for(
        &format!("a round after {after} on node {node}"),
        Duration::from_secs(120),
        || {
            r = last_round(&console(vc, node));
            r > after
        },
    );
    r
}

fn qemu_pid(vc: &VolumeCluster, node: u64) -> u32 {
    std::fs::read_to_string(vm_dir(vc, node).join("qemu.pid"))
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

/// Waits until the guest on `node` printed `line`.
fn wait_console(vc: &VolumeCluster, node: u64, line: &str) {
    wait_for(
        &format!("{line:?} on node {node}"),
        Duration::from_secs(90),
        || console(vc, node).contains(line),
    );
}

fn owner_of(vc: &VolumeCluster, vhd: &str) -> Value {
    let o: Value =
        serde_json::from_str(&vc.ok(1, &["owner", "show", vhd, "--json"])).expect("json");
    o["owner"].clone()
}

fn coordinator(vc: &VolumeCluster) -> u64 {
    let st: Value =
        serde_json::from_str(&vc.ok(1, &["cluster", "status", "--json"])).expect("json");
    st["coordinator"].as_u64().expect("a coordinator")
}

/// A disk plugged into the running guest (it writes and reads it back), carried by a
/// live migration, unplugged (the guest lets it go, the VHD's hold is released); then
/// the VM's node drained (the VM moves to its other preferred node; nothing is placed on
/// a drained node) and the coordinator's node drained (the role moves). Returns where
/// the VM runs.
fn hot_plug_and_drain(vc: &VolumeCluster, on: u64) -> u64 {
    let other = if on == 2 { 3 } else { 2 };
    vc.ok(1, &["vm", "disk", "add", "g1", "d2"]);
    wait_console(vc, on, "guest: disk vdb appeared");
    let r = wait_round(vc, on, 0);
    wait_console(vc, on, &format!("guest: disk vdb round {} OK", r + 1));
    assert_eq!(owner_of(vc, "d2"), on);
    let to = other.to_string();
    let m: Value = serde_json::from_str(&vc.ok(1, &["vm", "migrate", "g1", "--to", &to, "--json"]))
        .expect("json");
    assert_eq!(m["outcome"], "completed", "{m}");
    assert_eq!(owner_of(vc, "d2"), other, "the plugged disk follows the VM");
    let r = wait_round(vc, other, r);
    wait_console(vc, other, &format!("guest: disk vdb round {} OK", r + 1));
    vc.ok(1, &["vm", "disk", "remove", "g1", "d2"]);
    wait_console(vc, other, "guest: disk vdb gone");
    assert!(
        owner_of(vc, "d2").is_null(),
        "the unplugged disk is still held"
    );
    wait_round(vc, other, r + 2);

    // Drain the VM's node: it moves to its other preferred node.
    let from = other.to_string();
    let d: Value =
        serde_json::from_str(&vc.ok(1, &["node", "drain", &from, "--json"])).expect("json");
    assert_eq!(d["migrated"][0]["name"], "g1", "{d}");
    assert_eq!(d["migrated"][0]["to"], on, "{d}");
    assert_placed(vc, on);
    let listed = vc.ok(1, &["vm", "list"]);
    assert!(
        listed.contains(&format!("drained nodes: [{other}]")),
        "{listed}"
    );
    vc.refused(1, &["vm", "migrate", "g1", "--to", &from]);
    let r = wait_round(vc, on, 0);
    // Drain the coordinator's node (no VM there): the role moves.
    let c = coordinator(vc);
    if c != on {
        let cs = c.to_string();
        let d: Value =
            serde_json::from_str(&vc.ok(1, &["node", "drain", &cs, "--json"])).expect("json");
        assert!(
            d["coordinator_moved_to"].as_u64().is_some_and(|n| n != c),
            "{d}"
        );
        assert_ne!(coordinator(vc), c);
        vc.ok(1, &["node", "resume", &cs]);
    }
    vc.ok(1, &["node", "resume", &from]);
    assert!(!vc.ok(1, &["vm", "list"]).contains("drained"));
    wait_round(vc, on, r);
    on
}

/// The VM runs on `node`, and the node writes its disk (within a lease: an agent that
/// restarted right after a migration's switch-over takes its disk's hold again, the hold
/// of its previous incarnation having ended with it).
fn assert_placed(vc: &VolumeCluster, node: u64) {
    let owned = |v: &Value| {
        let owner = &v["owners"][0];
        (owner["owner"].as_u64(), owner["owner_valid"].as_bool()) == (Some(node), Some(true))
    };
    let start = Instant::now();
    let mut v = show(vc, 1);
    while v["node"] == node && !owned(&v) && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        v = show(vc, 1);
    }
    assert_eq!(v["node"], node, "{v}");
    assert_eq!(v["state"], "running", "{v}");
    assert!(owned(&v), "the disk is not node {node}'s: {v}");
    let o: Value =
        serde_json::from_str(&vc.ok(1, &["owner", "show", "d1", "--json"])).expect("json");
    assert_eq!(o["owner"], node, "{o}");
}

/// A 3-node cluster with the test guest defined as VM `g1` (stopped): its disk `d1`
/// (64 MiB), preferred nodes 2 then 3. The reaper kills its QEMUs when dropped (before
/// the cluster: declare it after).
fn guest_cluster() -> (VolumeCluster, Reaper) {
    need("qemu-system-x86_64", "qemu-system-x86");
    need("busybox", "busybox-static");
    need("cpio", "cpio");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guest = root.join("target/guest");
    let st = Command::new(root.join("scripts/guest-image"))
        .arg(&guest)
        .status()
        .expect("run scripts/guest-image");
    assert!(st.success(), "scripts/guest-image failed");
    let vc = volume_cluster_with(3, 2 * GIB, CONFIG);
    let reaper = Reaper(vc.c.dir().to_path_buf());
    vc.ok(1, &["vhd", "create", "d1", "--size", "64M"]);
    let kernel = guest.join("vmlinuz").display().to_string();
    let initrd = guest.join("initrd.img").display().to_string();
    let append = "console=ttyS0 panic=-1 quiet csv_rounds=0";
    let create = [
        "vm", "create", "g1", "--memory", "256M", "--disk", "d1", "--kernel", &kernel, "--initrd",
        &initrd, "--append", append, "--no-nic", "--prefer", "2", "--prefer", "3",
    ];
    vc.ok(1, &create);
    (vc, reaper)
}

#[test]
fn heavy_a_guest_keeps_verifying_its_disk_across_agent_kills_migrations_and_node_death() {
    let (mut vc, _reaper) = guest_cluster();
    vc.ok(1, &["vhd", "create", "d2", "--size", "32M"]);
    // A disk is one VM's: another VM cannot name it, and it cannot be deleted.
    vc.refused(1, &["vm", "create", "g2", "--disk", "d1"]);
    vc.refused(1, &["vhd", "delete", "d1"]);

    vc.ok(1, &["vm", "start", "g1", "--node", "2", "--timeout", "60"]);
    let mut round = wait_round(&vc, 2, 1);
    assert_placed(&vc, 2);
    let listed = vc.ok(3, &["vm", "list"]);
    assert!(
        listed.contains("g1") && listed.contains("running"),
        "{listed}"
    );

    // kill -9 of the agent: QEMU runs on, the restarted agent adopts it.
    let pid = qemu_pid(&vc, 2);
    vc.c.kill(2);
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(pid), "QEMU died with its agent");
    vc.c.start(2);
    round = wait_round(&vc, 2, round);
    assert_eq!(
        qemu_pid(&vc, 2),
        pid,
        "the restarted agent started another QEMU"
    );
    assert_eq!(qemus_under(vc.c.dir()).len(), 1, "two QEMUs of one VM");
    assert_placed(&vc, 2);

    // A graceful stop of the agent (SIGTERM: its disks released, it leaves): QEMU runs
    // on, its guest waits on the NBD reconnect; the restarted agent adopts it and takes
    // the disk back.
    vc.c.stop(2);
    assert!(alive(pid), "QEMU died with its agent's graceful stop");
    vc.c.start(2);
    round = wait_round(&vc, 2, round);
    assert_eq!(qemu_pid(&vc, 2), pid, "a graceful restart replaced QEMU");
    assert_placed(&vc, 2);

    // Five live migrations back and forth, then a quick one.
    let mut on = 2;
    let mut handoffs = Vec::new();
    for i in 0..6 {
        let to = if on == 2 { 3 } else { 2 };
        let mut args = vec!["vm", "migrate", "g1", "--to"];
        let to_s = to.to_string();
        args.push(&to_s);
        args.push("--json");
        if i == 5 {
            args.push("--quick");
        }
        let r: Value = serde_json::from_str(&vc.ok(1, &args)).expect("migrate --json");
        assert_eq!(r["outcome"], "completed", "{r}");
        handoffs.push(r["handoff_us"].as_u64().unwrap_or(0));
        assert!(r["downtime_ms"].as_u64().is_some(), "{r}");
        on = to;
        round = wait_round(&vc, on, round);
        assert_placed(&vc, on);
        assert_eq!(
            qemus_under(vc.c.dir()).len(),
            1,
            "two QEMUs after migration {i}"
        );
    }
    eprintln!("disk hand-offs inside the switch-over pause (µs): {handoffs:?}");

    on = hot_plug_and_drain(&vc, on);

    // Stop and start again on the node it is on.
    vc.ok(1, &["vm", "stop", "g1"]);
    assert_eq!(show(&vc, 1)["state"], "stopped");
    assert!(
        qemus_under(vc.c.dir()).is_empty(),
        "QEMU left after the stop"
    );
    let o: Value =
        serde_json::from_str(&vc.ok(1, &["owner", "show", "d1", "--json"])).expect("json");
    assert!(
        o["owner"].is_null(),
        "the disk is still held after the stop: {o}"
    );
    let onto = on.to_string();
    clear_console(&vc, on);
    vc.ok(1, &["vm", "start", "g1", "--node", &onto]);
    round = wait_round(&vc, on, 1);

    // The node dies (agent and QEMU): the VM restarts elsewhere after its lease and
    // finds its last flushed round on the disk.
    let dead = on;
    let pid = qemu_pid(&vc, dead);
    vc.c.kill(dead);
    let _ = csv_tests::send_signal(pid, "KILL");
    let before = last_round(&console(&vc, dead));
    let survivor = if dead == 2 { 3 } else { 2 };
    for n in [1, survivor] {
        clear_console(&vc, n);
    }
    let t0 = Instant::now();
    let mut placed = 0;
    wait_for(
        "the VM restarted on another node",
        Duration::from_secs(90),
        || {
            let v: Value = serde_json::from_str(&vc.ok(survivor, &["vm", "show", "g1", "--json"]))
                .expect("json");
            placed = v["node"].as_u64().unwrap_or(0);
            placed != dead && v["state"] == "running"
        },
    );
    let restarted = t0.elapsed();
    wait_for(
        "the restarted guest reads its disk",
        Duration::from_secs(60),
        || console(&vc, placed).contains("guest: found"),
    );
    let text = console(&vc, placed);
    let found = text
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("guest: found round"))
        .find_map(|n| {
            n.trim()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse::<u64>().ok())
        })
        .unwrap_or(0);
    assert!(
        found >= before.max(round) && found <= before + 1,
        "the restarted guest found round {found}; the last verified round was {before}\n{text}"
    );
    eprintln!(
        "restarted on node {placed} {restarted:?} after node {dead} died; found round {found}"
    );
    wait_round(&vc, placed, 1);
    vc.c.start(dead);
    // The old node's agent, back, runs nothing of it.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(qemus_under(vc.c.dir()).len(), 1);

    vc.ok(1, &["vm", "kill", "g1"]);
    assert!(qemus_under(vc.c.dir()).is_empty());
    vc.ok(1, &["vm", "delete", "g1"]);
    vc.ok(1, &["vhd", "delete", "d1"]);
}

/// The VM once no migration is under way and it runs: its node.
fn settled(vc: &VolumeCluster, via: u64) -> u64 {
    let mut node = 0;
    wait_for(
        "the VM settled after the crash",
        Duration::from_secs(150),
        || {
            let o = vc.csvadm(via, &["vm", "show", "g1", "--json"]);
            let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) else {
                return false;
            };
            node = v["node"].as_u64().unwrap_or(0);
            v["migration"].is_null() && v["state"] == "running"
        },
    );
    node
}

/// Waits for node `id`'s process to end (a crash point fired).
fn wait_exit(vc: &mut VolumeCluster, id: u64) {
    let start = Instant::now();
    while vc.c.try_exit(id).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "node {id} did not reach its crash point\n{}",
            vc.c.log(id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Restarts node `id` with `FAILPOINTS` set to `points` (empty: none).
fn restart_with(vc: &mut VolumeCluster, id: u64, points: &str) {
    if vc.c.try_exit(id).is_none() {
        vc.c.kill(id);
    }
    vc.c.set_env(id, "FAILPOINTS", points);
    vc.c.start(id);
}

#[test]
fn heavy_a_crash_at_each_migration_step_leaves_exactly_one_running_vm() {
    let (mut vc, _reaper) = guest_cluster();
    vc.ok(1, &["vm", "start", "g1", "--node", "2", "--timeout", "60"]);
    wait_round(&vc, 2, 1);
    // (crash point, on the source or the destination)
    let cases = [
        ("vm.migrate.src.before_switch", true),
        ("vm.migrate.src.after_move", true),
        ("vm.migrate.src.after_switch", true),
        ("vm.migrate.src.completed", true),
        ("vm.migrate.dst.ready", false),
        ("vm.migrate.dst.before_commit", false),
    ];
    // CSV_VM_CRASH_POINTS=a,b runs those cases only; CSV_VM_CRASH_LOG=1 prints what the
    // agents' hypervisors logged in each.
    let only = std::env::var("CSV_VM_CRASH_POINTS").unwrap_or_default();
    let show_log = std::env::var_os("CSV_VM_CRASH_LOG").is_some();
    let mut on = 2;
    for (point, source) in cases {
        if !only.is_empty() && !only.split(',').any(|p| p == point) {
            continue;
        }
        let other = if on == 2 { 3 } else { 2 };
        let victim = if source { on } else { other };
        restart_with(&mut vc, victim, &format!("{point}=return"));
        vc.c.wait_converged(&[1, 2, 3]);
        settled(&vc, 1);
        let to = other.to_string();
        vc.ok(1, &["vm", "migrate", "g1", "--to", &to, "--no-wait"]);
        wait_exit(&mut vc, victim);
        restart_with(&mut vc, victim, "");
        let now = settled(&vc, 1);
        // Give a second QEMU, were there one, the time to show.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            qemus_under(vc.c.dir()).len(),
            1,
            "{point}: not exactly one QEMU"
        );
        assert_placed(&vc, now);
        let r = wait_round(&vc, now, 0);
        wait_round(&vc, now, r);
        let v = show(&vc, 1);
        eprintln!(
            "{point}: the VM runs on node {now} (was {on}); last move {}",
            v["last_migration"]
        );
        if show_log {
            for n in [2, 3] {
                for l in vc.c.log(n).lines().filter(|l| l.contains("hypervisor")) {
                    eprintln!("node {n}: {l}");
                }
            }
        }
        on = now;
    }
    // The coordinator dies while the migration holds at each step: before the
    // destination is ready (prepared), at the switch-over pause, before the commit
    // (switched).
    let holds = [
        ("vm.migrate.dst.hold_ready", false, "holding before ready"),
        ("vm.migrate.src.hold", true, "holding at the switch-over"),
        (
            "vm.migrate.dst.hold_commit",
            false,
            "holding before the commit",
        ),
    ];
    for (point, source, said) in holds {
        if !only.is_empty() && !only.split(',').any(|p| p == point) {
            continue;
        }
        vc.c.wait_converged(&[1, 2, 3]);
        vc.ok(1, &["cluster", "transfer-leader", "--to", "1"]);
        assert_eq!(vc.c.wait_leader(), 1, "node 1 coordinates");
        let other = if on == 2 { 3 } else { 2 };
        let holder = if source { on } else { other };
        restart_with(&mut vc, holder, &format!("{point}=return(3000)"));
        vc.c.wait_converged(&[1, 2, 3]);
        settled(&vc, 1);
        let before = vc.c.log(holder).matches(said).count();
        let to = other.to_string();
        vc.ok(1, &["vm", "migrate", "g1", "--to", &to, "--no-wait"]);
        wait_for(&format!("{point} reached"), Duration::from_secs(60), || {
            vc.c.log(holder).matches(said).count() > before
        });
        vc.c.kill(1);
        std::thread::sleep(Duration::from_secs(1));
        vc.c.start(1);
        let now = settled(&vc, other);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            qemus_under(vc.c.dir()).len(),
            1,
            "coordinator killed at {point}: not one QEMU"
        );
        assert_placed(&vc, now);
        let r = wait_round(&vc, now, 0);
        wait_round(&vc, now, r);
        eprintln!(
            "coordinator killed at {point}: the VM runs on node {now} (was {on}); last move {}",
            show(&vc, 1)["last_migration"]
        );
        restart_with(&mut vc, holder, "");
        on = now;
    }
    vc.ok(1, &["vm", "kill", "g1"]);
    assert!(qemus_under(vc.c.dir()).is_empty());
}
