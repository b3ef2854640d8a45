//! The node's Prometheus endpoint (issue 16), end to end: a node with `[metrics] listen`
//! serves a VHD over NBD, a libnbd client writes, flushes and reads it, `curl` fetches
//! `GET /metrics`, and Python's `prometheus_client` OpenMetrics parser (the reference
//! client library's, `python3-prometheus-client`) must accept the text whole; the
//! families must then say what happened (NBD bytes at least what was written, a Raft
//! term, a renewed lease, the attachment, the direct path). `csvadm node metrics` must
//! print the same figures, and a node without `[metrics]` must refuse it clearly.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use csv_tests::volume::{need, run, volume_cluster, volume_cluster_with};
use csv_tests::{free_port, nbdpy};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Writes 1 MiB in 16 writes of 64 KiB, flushes, reads 256 KiB back in 4 reads.
const IO: &str = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
buf = bytes(range(256)) * 256
for i in range(16):
    h.pwrite(buf, i * 65536)
h.flush()
for i in range(4):
    assert h.pread(65536, i * 65536) == buf
h.shutdown()
print("io done")
"#;

/// Parses the text on stdin with prometheus_client's OpenMetrics parser (which raises
/// on anything that is not valid OpenMetrics) and prints the families as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {
        "type": f.type,
        "unit": f.unit,
        "samples": [[s.name, s.labels, s.value] for s in f.samples],
    }
print(json.dumps(out))
"#;

/// `curl` of `url`: (HTTP status, content type, body).
fn curl(url: &str) -> (String, String, String) {
    let dir = tempfile::tempdir().expect("dir");
    let body = dir.path().join("body");
    let meta = run(Command::new("curl").args([
        "-sS",
        "--max-time",
        "10",
        "-o",
        body.to_str().expect("path"),
        "-w",
        "%{http_code}\n%{content_type}",
        url,
    ]));
    let (code, ctype) = meta.split_once('\n').expect("curl -w output");
    let body = std::fs::read_to_string(&body).unwrap_or_default();
    (code.to_string(), ctype.to_string(), body)
}

/// The families of `text`, as the OpenMetrics parser read them.
fn parse(text: &str) -> Value {
    use std::io::Write as _;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-I", "-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the text");
    let o = child.wait_with_output().expect("python3");
    assert!(
        o.status.success(),
        "the OpenMetrics parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("parser JSON")
}

/// The value of the sample `name` of family `family` whose labels include `labels`.
fn value(f: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    f[family]["samples"].as_array()?.iter().find_map(|s| {
        let ok = s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v);
        if ok { s[2].as_f64() } else { None }
    })
}

#[test]
fn endpoint_serves_openmetrics_that_count_nbd_io() {
    need("curl", "curl");
    need("/usr/bin/python3", "python3");
    let py = run(Command::new("/usr/bin/python3").args([
        "-I",
        "-c",
        "import prometheus_client.openmetrics.parser, nbd; print('ok')",
    ]));
    assert!(
        py.contains("ok"),
        "python3-prometheus-client and python3-libnbd are needed (scripts/install-deps)"
    );
    let port = free_port(Ipv4Addr::LOCALHOST);
    let vc = volume_cluster_with(
        1,
        1 << 30,
        &format!("[volume]\nlun = \"{{lun}}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let log = vc.c.log(1);
    assert!(
        log.contains("metrics endpoint ready") && log.contains(&format!("127.0.0.1:{port}")),
        "{log}"
    );
    vc.ok(1, &["vhd", "create", "m0", "--size", "64M"]);
    vc.ok(1, &["vhd", "attach", "m0"]);
    let o = nbdpy::run(IO, &[&vc.uri(1, "m0")]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("io done"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let url = format!("http://127.0.0.1:{port}/metrics");
    // Scrape until a lease renewal has been confirmed (one per renewal interval) and the
    // redirection driver has settled on the direct path (it starts with the LUN).
    let start = Instant::now();
    let (families, text) = loop {
        let (code, ctype, text) = curl(&url);
        assert_eq!(code, "200", "{text}");
        assert_eq!(
            ctype, "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "content type"
        );
        let f = parse(&text);
        let renewed = value(
            &f,
            "csv_lease_renewals",
            "csv_lease_renewals_total",
            &[("result", "confirmed")],
        )
        .is_some_and(|v| v >= 1.0);
        let direct = value(
            &f,
            "csv_path_state",
            "csv_path_state",
            &[("state", "direct")],
        )
        .is_some_and(|v| v == 1.0);
        if (renewed && direct) || start.elapsed() > Duration::from_secs(30) {
            break (f, text);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let get = |fam: &str, name: &str, labels: &[(&str, &str)]| {
        value(&families, fam, name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} missing in:\n{text}"))
    };
    let w = [("export", "m0"), ("op", "write")];
    let r = [("export", "m0"), ("op", "read")];
    assert_eq!(families["csv_nbd_bytes"]["type"], "counter");
    assert_eq!(families["csv_nbd_bytes"]["unit"], "bytes");
    assert!(get("csv_nbd_bytes", "csv_nbd_bytes_total", &w) >= MIB as f64);
    assert!(get("csv_nbd_requests", "csv_nbd_requests_total", &w) >= 16.0);
    assert!(get("csv_nbd_bytes", "csv_nbd_bytes_total", &r) >= (256 * 1024) as f64);
    assert!(
        get(
            "csv_nbd_requests",
            "csv_nbd_requests_total",
            &[("export", "m0"), ("op", "flush")]
        ) >= 1.0
    );
    assert_eq!(
        families["csv_nbd_request_duration_seconds"]["type"],
        "histogram"
    );
    assert!(
        get(
            "csv_nbd_request_duration_seconds",
            "csv_nbd_request_duration_seconds_count",
            &w
        ) >= 16.0
    );
    assert!(
        get(
            "csv_nbd_request_duration_seconds",
            "csv_nbd_request_duration_seconds_bucket",
            &[("export", "m0"), ("op", "write"), ("le", "+Inf")]
        ) >= 16.0
    );
    assert!(get("csv_raft_term", "csv_raft_term", &[]) >= 1.0);
    assert_eq!(get("csv_raft_is_leader", "csv_raft_is_leader", &[]), 1.0);
    let commit = get("csv_raft_commit_index", "csv_raft_commit_index", &[]);
    assert!(commit >= 1.0);
    assert!(get("csv_raft_applied_index", "csv_raft_applied_index", &[]) <= commit);
    assert!(
        get(
            "csv_raft_proposals",
            "csv_raft_proposals_total",
            &[("result", "committed")]
        ) >= 1.0
    );
    assert!(
        get(
            "csv_lease_renewals",
            "csv_lease_renewals_total",
            &[("result", "confirmed")]
        ) >= 1.0
    );
    assert!(
        get(
            "csv_lease_renewal_lag_seconds",
            "csv_lease_renewal_lag_seconds_count",
            &[]
        ) >= 1.0
    );
    assert_eq!(get("csv_vhds_attached", "csv_vhds_attached", &[]), 1.0);
    assert_eq!(
        get("csv_path_state", "csv_path_state", &[("state", "direct")]),
        1.0,
        "{text}"
    );
    let free = get(
        "csv_volume_extents",
        "csv_volume_extents",
        &[("state", "free")],
    );
    let all = get(
        "csv_volume_extents",
        "csv_volume_extents",
        &[("state", "all")],
    );
    assert!(free > 0.0 && free < all, "free {free} of {all}");
    assert_eq!(
        get("csv_redirected_bytes", "csv_redirected_bytes_total", &[]),
        0.0
    );
    assert_eq!(get("csv_vms", "csv_vms", &[("state", "running")]), 0.0);

    // Anything but /metrics is not found.
    let (code, _, _) = curl(&format!("http://127.0.0.1:{port}/"));
    assert_eq!(code, "404");

    // csvadm reads the same figures through the admin socket.
    let j: Value = serde_json::from_str(&vc.ok(1, &["node", "metrics", "--json"])).expect("json");
    assert_eq!(j["endpoint"], format!("127.0.0.1:{port}"), "{j}");
    assert!(j["raft_term"].as_u64().is_some_and(|t| t >= 1), "{j}");
    assert_eq!(j["vhds_attached"], 1, "{j}");
    assert_eq!(j["path_state"], "direct", "{j}");
    let e = &j["exports"][0];
    assert_eq!(e["export"], "m0", "{j}");
    assert!(e["write_bytes"].as_u64().is_some_and(|b| b >= MIB), "{j}");
    let t = vc.ok(1, &["node", "metrics"]);
    assert!(t.contains("raft:        term "), "{t}");
    assert!(t.lines().any(|l| l.starts_with("m0 ")), "{t}");
}

#[test]
fn csvadm_says_when_metrics_are_off() {
    let vc = volume_cluster(1, 256 << 20);
    let e = vc.refused(1, &["node", "metrics"]);
    assert!(
        e.contains("metrics are off on node 1") && e.contains("[metrics] listen"),
        "{e}"
    );
}

/// Kills the QEMUs under the cluster's directory when dropped (declare it after the
/// cluster: it drops first).
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in csv_tests::qemus_under(&self.0) {
            let _ = csv_tests::send_signal(pid, "KILL");
        }
    }
}

fn node_metrics(vc: &csv_tests::volume::VolumeCluster, id: u64) -> Value {
    serde_json::from_str(&vc.ok(id, &["node", "metrics", "--json"])).expect("metrics json")
}

/// A live migration of a booted test guest is counted on its source with its downtime,
/// and the VM gauges follow the VM from one node to the other.
#[test]
fn heavy_a_live_migration_is_counted_with_its_downtime() {
    need("qemu-system-x86_64", "qemu-system-x86");
    need("busybox", "busybox-static");
    need("cpio", "cpio");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guest = root.join("target/guest");
    let st = Command::new(root.join("scripts/guest-image"))
        .arg(&guest)
        .status()
        .expect("run scripts/guest-image");
    assert!(st.success(), "scripts/guest-image failed");
    // Each node's endpoint on its own loopback address (`{id}`), one port.
    let port = free_port(Ipv4Addr::LOCALHOST);
    let config = format!(
        "[volume]\nlun = \"{{lun}}\"\n[hypervisor]\naccel = \"tcg\"\nstop_timeout = \"3s\"\n\
         [metrics]\nlisten = \"127.0.{{id}}.9:{port}\"\n"
    );
    let vc = volume_cluster_with(2, 1 << 30, &config);
    let _reaper = Reaper(vc.c.dir().to_path_buf());
    vc.ok(1, &["vhd", "create", "d1", "--size", "64M"]);
    let kernel = guest.join("vmlinuz").display().to_string();
    let initrd = guest.join("initrd.img").display().to_string();
    vc.ok(
        1,
        &[
            "vm",
            "create",
            "g1",
            "--memory",
            "256M",
            "--disk",
            "d1",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--append",
            "console=ttyS0 panic=-1 quiet csv_rounds=0",
            "--no-nic",
            "--prefer",
            "1",
        ],
    );
    vc.ok(1, &["vm", "start", "g1", "--node", "1", "--timeout", "60"]);
    let wait = |id: u64, what: &str, f: &dyn Fn(&Value) -> bool| {
        let start = Instant::now();
        loop {
            let m = node_metrics(&vc, id);
            if f(&m) {
                return m;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "node {id}: {what}: {m}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    wait(1, "one VM running", &|m| m["vms"]["running"] == 1);
    let m: Value = serde_json::from_str(&vc.ok(1, &["vm", "migrate", "g1", "--to", "2", "--json"]))
        .expect("json");
    assert_eq!(m["outcome"], "completed", "{m}");
    let src = wait(1, "the migration counted", &|m| {
        m["migrations"]["live_completed"] == 1
    });
    assert!(src["migration_downtime_mean_ms"].is_number(), "{src}");
    assert!(src["migrations"].get("live_aborted").is_none(), "{src}");
    wait(1, "no VM left", &|m| m["vms"].get("running").is_none());
    let dst = wait(2, "the VM running", &|m| m["vms"]["running"] == 1);
    assert!(
        dst["migrations"].as_object().is_some_and(|o| o.is_empty()),
        "{dst}"
    );
    vc.ok(1, &["vm", "kill", "g1"]);
}
