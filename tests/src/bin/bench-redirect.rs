//! Redirected I/O against direct I/O on the same VHD (run by `scripts/bench-redirect`,
//! release build; docs/design/070). A 3-node cluster whose nodes each reach one sparse
//! LUN file through their own nbdkit (file plugin); a fixed VHD attached on node 2 and
//! filled once.
//!
//! * Throughput: per round, fio (NBD engine) runs 1M sequential read and write at QD8
//!   and 4k random read and write at QD32 with node 2 direct and with node 2 redirected
//!   by hand (`volume redirect --node 2 on`), the order alternating between rounds.
//!   Printed: each cell's median with min and max over the rounds, and the median of the
//!   per-round ratios redirected / direct with their spread. Targets (issue 13): 1M ≥
//!   0.7, 4k ≥ 0.5.
//! * Stalls: this crate's NBD client writes 4 KiB at random offsets one at a time (a
//!   FLUSH every 16) while node 2's path is cut (its nbdkit killed) and restored `--cuts`
//!   times. Per cut: the stall is the longest wait for a completion from the cut until
//!   the node is redirected plus 0.5 s; per return, the longest from the restore until
//!   the node is direct again plus 0.5 s. Printed: p50, p99 (nearest rank) and max.
//!   Targets: cut p99 < 1 s, fail-back p99 < 200 ms.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csv_tests::san::{Listen, San};
use csv_tests::volume::{VolumeCluster, cluster_on_lun_with};

const GIB: u64 = 1 << 30;

struct Args {
    rounds: usize,
    runtime: u64,
    cuts: usize,
    size_mib: u64,
    /// `[volume] io_timeout` in ms (0: derived from the lease, 0.93 s at the default
    /// budget); a write in doubt at a cut is waited out for twice that.
    io_timeout_ms: u64,
    /// Mutual TLS between the nodes (1) or a plaintext test bed (0, the default): what
    /// the redirected bytes cost when they cross TLS sessions.
    tls: bool,
}

fn args() -> Args {
    let (mut rounds, mut runtime, mut cuts, mut size_mib, mut io, mut tls) = (5, 5, 20, 1024, 0, 0);
    csv_tests::bench::numeric_args(
        "bench-redirect [--rounds N] [--runtime S] [--cuts N] [--size-mib M] [--io-timeout-ms MS] [--tls 0|1]",
        &mut [
            ("--rounds", &mut rounds),
            ("--runtime", &mut runtime),
            ("--cuts", &mut cuts),
            ("--size-mib", &mut size_mib),
            ("--io-timeout-ms", &mut io),
            ("--tls", &mut tls),
        ],
    );
    Args {
        rounds: rounds as usize,
        runtime,
        cuts: cuts as usize,
        size_mib,
        io_timeout_ms: io,
        tls: tls != 0,
    }
}

/// The fio jobs: name, rw, block size, queue depth, whether the figure is IOPS.
const JOBS: [(&str, &str, &str, u32, bool); 4] = [
    ("1M seq read QD8", "read", "1M", 8, false),
    ("1M seq write QD8", "write", "1M", 8, false),
    ("4k rand read QD32", "randread", "4k", 32, true),
    ("4k rand write QD32", "randwrite", "4k", 32, true),
];

/// One fio run's figure: MB/s or IOPS.
fn fio(uri: &str, rw: &str, bs: &str, qd: u32, iops: bool, runtime: u64, size: u64) -> f64 {
    let o = Command::new("fio")
        .args([
            "--name=b",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            &format!("--rw={rw}"),
            &format!("--bs={bs}"),
            &format!("--iodepth={qd}"),
            &format!("--size={size}M"),
            "--time_based",
            &format!("--runtime={runtime}"),
            "--ramp_time=1",
            "--randrepeat=0",
            "--output-format=json",
        ])
        .output()
        .expect("run fio");
    assert!(
        o.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // fio may print notes before its JSON.
    let text = String::from_utf8_lossy(&o.stdout);
    let json = text.find('{').map_or("", |i| &text[i..]);
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("fio json: {e}: {text}"));
    let job = &v["jobs"][0];
    let side = if rw.contains("read") {
        &job["read"]
    } else {
        &job["write"]
    };
    if iops {
        side["iops"].as_f64().unwrap_or(0.0)
    } else {
        side["bw_bytes"].as_f64().unwrap_or(0.0) / 1e6
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile of sorted durations.
fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// Node `node`'s path as it reports it.
fn path_of(vc: &VolumeCluster, node: u64) -> String {
    let st: serde_json::Value =
        serde_json::from_str(&vc.ok(node, &["volume", "status", "--json"])).expect("json");
    st["paths"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["node"] == node))
        .and_then(|p| p["path"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn wait_path(vc: &VolumeCluster, node: u64, mode: &str) -> Instant {
    let start = Instant::now();
    while path_of(vc, node) != mode {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "node {node} not {mode}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Instant::now()
}

/// Completion instants of the stall client.
struct Client {
    done: Arc<Mutex<Vec<Instant>>>,
    errors: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn start_client(socket: PathBuf, name: String) -> Client {
    let done: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let errors: Arc<Mutex<u64>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (d, e, s) = (done.clone(), errors.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let cfg = nbd::client::ClientConfig {
                export: name,
                request_timeout: Duration::from_secs(120),
                ..nbd::client::ClientConfig::default()
            };
            let c = nbd::client::connect_unix(&socket, cfg)
                .await
                .expect("connect");
            let blocks = c.size() / 4096;
            let data = vec![0x6bu8; 4096];
            let mut x: u64 = 0x2545_f491_4f6c_dd1d;
            let mut k = 0u64;
            while !s.load(Ordering::Acquire) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                k += 1;
                let r = if k.is_multiple_of(16) {
                    c.flush().await
                } else {
                    c.write((x % blocks) * 4096, &data, false).await
                };
                if r.is_err() {
                    *e.lock().expect("errors") += 1;
                }
                d.lock().expect("samples").push(Instant::now());
            }
        });
    });
    Client {
        done,
        errors,
        stop,
        thread,
    }
}

/// The longest wait for a completion within `[from, to]` (from `from` to the first
/// completion, between completions, and from the last one to `to`).
fn longest_gap(done: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for &t in done.iter().filter(|t| **t > from && **t <= to) {
        gap = gap.max(t - last);
        last = t;
    }
    gap.max(to.saturating_duration_since(last))
}

fn main() {
    let a = args();
    let dir = tempfile::Builder::new()
        .prefix("bench-redirect-")
        .tempdir()
        .expect("dir");
    let lun = dir.path().join("lun.img");
    std::fs::File::create(&lun)
        .and_then(|f| f.set_len(a.size_mib * (1 << 20) * 2 + 4 * GIB))
        .expect("LUN file");
    let sock = |id: u64| dir.path().join(format!("san-{id}.sock"));
    let mut sans: Vec<San> = (1..=3)
        .map(|id| San::start(Listen::Unix(sock(id)), &lun, &[], &[]))
        .collect();
    // Returns every second: the flap window is short so that every cut starts from the
    // base settle time (hysteresis is the core's, tested there).
    let mut toml = format!(
        "[redirect]\nprobe_interval = \"200ms\"\nsettle_time = \"1s\"\nflap_window = \"100ms\"\n[volume]\nlun = \"nbd+unix:///?socket={}/san-{{id}}.sock\"\n",
        dir.path().display()
    );
    if a.io_timeout_ms > 0 {
        toml.push_str(&format!("io_timeout = \"{}ms\"\n", a.io_timeout_ms));
    }
    let c = cluster_on_lun_with(3, &lun, &toml, a.tls);
    let vc = VolumeCluster::format_on(c, lun.clone(), tempfile::tempdir().expect("dir"));
    let size = format!("{}M", a.size_mib);
    vc.ok(
        1,
        &["vhd", "create", "b", "--size", &size, "--type", "fixed"],
    );
    vc.ok(2, &["vhd", "attach", "b"]);
    wait_path(&vc, 2, "direct");
    let uri = vc.uri(2, "b");
    // Fill once, so reads read data.
    let o = Command::new("fio")
        .args([
            "--name=fill",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=write",
            "--bs=1M",
            "--iodepth=8",
            &format!("--size={}M", a.size_mib),
        ])
        .output()
        .expect("fio fill");
    assert!(
        o.status.success(),
        "fill: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    println!(
        "# redirected vs direct, VHD {} MiB fixed on node 2, {} rounds of {} s per cell; io_timeout {}; {}",
        a.size_mib,
        a.rounds,
        a.runtime,
        if a.io_timeout_ms > 0 {
            format!("{} ms", a.io_timeout_ms)
        } else {
            "from the lease".into()
        },
        if a.tls {
            "mutual TLS between nodes"
        } else {
            "plaintext between nodes"
        }
    );
    let mut direct = vec![Vec::new(); JOBS.len()];
    let mut redirected = vec![Vec::new(); JOBS.len()];
    for round in 0..a.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for redirect in order {
            if redirect {
                vc.ok(1, &["volume", "redirect", "--node", "2", "on"]);
                wait_path(&vc, 2, "redirected");
            } else {
                vc.ok(1, &["volume", "redirect", "--node", "2", "off"]);
                wait_path(&vc, 2, "direct");
            }
            for (i, (name, rw, bs, qd, iops)) in JOBS.iter().enumerate() {
                let f = fio(&uri, rw, bs, *qd, *iops, a.runtime, a.size_mib);
                let unit = if *iops { "IOPS" } else { "MB/s" };
                let mode = if redirect { "redirected" } else { "direct" };
                println!("round {round} {mode:<10} {name:<20} {f:>10.1} {unit}");
                if redirect {
                    redirected[i].push(f);
                } else {
                    direct[i].push(f);
                }
            }
        }
    }
    vc.ok(1, &["volume", "redirect", "--node", "2", "off"]);
    wait_path(&vc, 2, "direct");
    println!(
        "\n{:<20} {:>24} {:>24} {:>22} target",
        "test", "direct", "redirected", "ratio"
    );
    for (i, (name, _, _, _, iops)) in JOBS.iter().enumerate() {
        let mut ratios: Vec<f64> = direct[i]
            .iter()
            .zip(&redirected[i])
            .map(|(d, r)| if *d > 0.0 { r / d } else { 0.0 })
            .collect();
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            (lo, hi)
        };
        let (rlo, rhi) = spread(&ratios);
        let (dlo, dhi) = spread(&direct[i]);
        let (xlo, xhi) = spread(&redirected[i]);
        let target = if *iops { 0.5 } else { 0.7 };
        let m = median(&mut ratios);
        println!(
            "{name:<20} {:>9.1} [{dlo:.0}-{dhi:.0}] {:>9.1} [{xlo:.0}-{xhi:.0}] {m:>8.2} [{rlo:.2}-{rhi:.2}] >= {target} {}",
            median(&mut direct[i].clone()),
            median(&mut redirected[i].clone()),
            if m >= target { "met" } else { "NOT MET" }
        );
    }

    // Stalls across cuts and returns.
    let client = start_client(vc.nbd_socket(2), "b".into());
    std::thread::sleep(Duration::from_secs(1));
    let mut cuts = Vec::new();
    let mut backs = Vec::new();
    for i in 0..a.cuts {
        std::thread::sleep(Duration::from_millis(700));
        let t_cut = Instant::now();
        sans[1].cut();
        let t_red = wait_path(&vc, 2, "redirected");
        std::thread::sleep(Duration::from_millis(800));
        let t_restore = Instant::now();
        sans[1].restore();
        let t_direct = wait_path(&vc, 2, "direct");
        std::thread::sleep(Duration::from_millis(500));
        let done = client.done.lock().expect("samples").clone();
        let cut = longest_gap(&done, t_cut, t_red + Duration::from_millis(500));
        let back = longest_gap(&done, t_restore, t_direct + Duration::from_millis(500));
        println!(
            "cut {i:>2}: stall {:>7.1} ms (redirected after {:>6.1} ms), fail-back stall {:>6.1} ms (direct {:>6.1} ms after the restore)",
            cut.as_secs_f64() * 1e3,
            (t_red - t_cut).as_secs_f64() * 1e3,
            back.as_secs_f64() * 1e3,
            (t_direct - t_restore).as_secs_f64() * 1e3
        );
        cuts.push(cut);
        backs.push(back);
    }
    client.stop.store(true, Ordering::Release);
    let _ = client.thread.join();
    let errors = *client.errors.lock().expect("errors");
    let requests = client.done.lock().expect("samples").len();
    cuts.sort();
    backs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\nstall from cut to redirected I/O over {} cuts: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 1000 ms: {})",
        cuts.len(),
        ms(pct(&cuts, 50.0)),
        ms(pct(&cuts, 99.0)),
        ms(pct(&cuts, 100.0)),
        if pct(&cuts, 99.0) < Duration::from_secs(1) {
            "met"
        } else {
            "NOT MET"
        }
    );
    println!(
        "fail-back stall: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 200 ms: {})",
        ms(pct(&backs, 50.0)),
        ms(pct(&backs, 99.0)),
        ms(pct(&backs, 100.0)),
        if pct(&backs, 99.0) < Duration::from_millis(200) {
            "met"
        } else {
            "NOT MET"
        }
    );
    println!("stall client: {requests} requests, {errors} errors");
    drop(vc);
    drop(sans);
    let _ = Path::new(&lun);
}
