//! Data I/O across a coordinator kill (run by `scripts/bench-failover-io`, release
//! build). Each round: a 3-node cluster of `csv-node` processes on a sparse file LUN; a
//! fixed VHD attached on each node that is not the coordinator; one NBD client per such
//! node (this crate's own client over the node's Unix socket) writes and reads 4 KiB at
//! random offsets, one request at a time, with a FLUSH every 16 requests, timing every
//! request. After `--before` seconds the coordinator is killed with SIGKILL; the clients
//! go on for `--after` seconds. Printed per round: the longest request (the stall) in the
//! window from the kill on and in the calm window before it, requests and errors.
//! Summary: medians over the rounds with min and max. Target (MISSION): the other nodes'
//! data I/O stalls no more than 100 ms.
//!
//! Before the first round's clients start, `--flushes N` times the cost of a flush that
//! grew a dynamic VHD (a new 2 MiB block: the map commit and the wait for a LUN
//! checkpoint covering it, docs/design/042 §6) against a flush after an overwrite.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use csv_tests::volume::volume_cluster;

const TARGET: Duration = Duration::from_millis(100);

struct Args {
    rounds: usize,
    before: u64,
    after: u64,
    flushes: u64,
}

fn args() -> Args {
    let (mut rounds, mut before, mut after, mut flushes) = (5, 3, 5, 100);
    csv_tests::bench::numeric_args(
        "bench-failover-io [--rounds N] [--before S] [--after S] [--flushes N]",
        &mut [
            ("--rounds", &mut rounds),
            ("--before", &mut before),
            ("--after", &mut after),
            ("--flushes", &mut flushes),
        ],
    );
    Args {
        rounds: rounds as usize,
        before,
        after,
        flushes,
    }
}

/// One request's completion: when it was issued, how long it took, whether it failed.
struct Sample {
    at: Instant,
    took: Duration,
    failed: bool,
}

/// Runs `f` with a client of export `name` on `socket`, on a runtime of its own.
fn with_client<T>(
    socket: std::path::PathBuf,
    name: String,
    f: impl AsyncFnOnce(nbd::client::Client) -> T,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let cfg = nbd::client::ClientConfig {
            export: name,
            request_timeout: Duration::from_secs(60),
            ..nbd::client::ClientConfig::default()
        };
        let c = nbd::client::connect_unix(&socket, cfg)
            .await
            .expect("connect");
        f(c).await
    })
}

fn client_loop(socket: std::path::PathBuf, name: String, stop: Arc<AtomicBool>) -> Vec<Sample> {
    with_client(socket, name, async move |c| {
        let blocks = c.size() / 4096;
        let mut out = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut k = 0u64;
        let data = vec![0x5au8; 4096];
        while !stop.load(Ordering::Acquire) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % blocks) * 4096;
            k += 1;
            let start = Instant::now();
            let r = match k % 3 {
                0 => c.read(off, 4096).await.map(|_| ()),
                _ if k.is_multiple_of(16) => c.flush().await,
                _ => c.write(off, &data, false).await,
            };
            out.push(Sample {
                at: start,
                took: start.elapsed(),
                failed: r.is_err(),
            });
        }
        out
    })
}

/// Flush latencies on a dynamic VHD: after writing a new block each time (growth), then
/// after overwriting an allocated one.
fn flush_costs(socket: std::path::PathBuf, name: String, n: u64) -> (Vec<Duration>, Vec<Duration>) {
    with_client(socket, name, async move |c| {
        let data = vec![0x33u8; 65536];
        let mut grow = Vec::new();
        let mut over = Vec::new();
        for i in 0..n {
            c.write(i * (2 << 20), &data, false).await.expect("write");
            let t = Instant::now();
            c.flush().await.expect("flush");
            grow.push(t.elapsed());
        }
        for _ in 0..n {
            c.write(0, &data, false).await.expect("write");
            let t = Instant::now();
            c.flush().await.expect("flush");
            over.push(t.elapsed());
        }
        (grow, over)
    })
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() {
    let a = args();
    let mut kill_stalls = Vec::new();
    let mut calm_stalls = Vec::new();
    let mut errors = 0usize;
    println!("round  node  requests  errors  stall after kill  stall before");
    for round in 1..=a.rounds {
        let mut vc = volume_cluster(3, 4 << 30);
        let leader = vc.c.wait_leader();
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
        for id in &others {
            let name = format!("f{id}");
            vc.ok(
                *id,
                &["vhd", "create", &name, "--size", "256M", "--type", "fixed"],
            );
            vc.ok(*id, &["vhd", "attach", &name]);
        }
        if round == 1 && a.flushes > 0 {
            let id = others[0];
            vc.ok(id, &["vhd", "create", "grow", "--size", "4G"]);
            vc.ok(id, &["vhd", "attach", "grow"]);
            let (mut g, mut o) = flush_costs(vc.nbd_socket(id), "grow".into(), a.flushes);
            println!(
                "flush after a new 2 MiB block (map commit + LUN checkpoint): p50 {:.2} ms, p99 {:.2} ms; after an overwrite: p50 {:.2} ms, p99 {:.2} ms ({} each)",
                pct(&mut g, 0.5).as_secs_f64() * 1e3,
                pct(&mut g, 0.99).as_secs_f64() * 1e3,
                pct(&mut o, 0.5).as_secs_f64() * 1e3,
                pct(&mut o, 0.99).as_secs_f64() * 1e3,
                a.flushes
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = others
            .iter()
            .map(|id| {
                let (sock, name, stop) = (vc.nbd_socket(*id), format!("f{id}"), stop.clone());
                std::thread::spawn(move || client_loop(sock, name, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(a.before));
        let killed = Instant::now();
        vc.c.kill(leader);
        std::thread::sleep(Duration::from_secs(a.after));
        stop.store(true, Ordering::Release);
        let mut worst_kill = Duration::ZERO;
        let mut worst_calm = Duration::ZERO;
        for (id, c) in others.iter().zip(clients) {
            let s = c.join().expect("client");
            let calm_from = killed - Duration::from_secs(a.before.saturating_sub(1));
            // A request that was in flight at the kill counts in the kill window.
            let after = s
                .iter()
                .filter(|x| x.at + x.took >= killed)
                .map(|x| x.took)
                .max()
                .unwrap_or_default();
            let before = s
                .iter()
                .filter(|x| x.at >= calm_from && x.at + x.took < killed)
                .map(|x| x.took)
                .max()
                .unwrap_or_default();
            let errs = s.iter().filter(|x| x.failed).count();
            errors += errs;
            println!(
                "{round:>5}  {id:>4}  {:>8}  {errs:>6}  {:>13.1} ms  {:>9.1} ms",
                s.len(),
                after.as_secs_f64() * 1e3,
                before.as_secs_f64() * 1e3
            );
            worst_kill = worst_kill.max(after);
            worst_calm = worst_calm.max(before);
        }
        kill_stalls.push(worst_kill);
        calm_stalls.push(worst_calm);
    }
    let (kmin, kmax) = (
        kill_stalls.iter().min().copied().unwrap_or_default(),
        kill_stalls.iter().max().copied().unwrap_or_default(),
    );
    let (cmin, cmax) = (
        calm_stalls.iter().min().copied().unwrap_or_default(),
        calm_stalls.iter().max().copied().unwrap_or_default(),
    );
    let km = median(&mut kill_stalls);
    let cm = median(&mut calm_stalls);
    println!(
        "longest request from the coordinator kill on (worst node per round): median {:.1} ms (min {:.1}, max {:.1}) over {} rounds",
        km.as_secs_f64() * 1e3,
        kmin.as_secs_f64() * 1e3,
        kmax.as_secs_f64() * 1e3,
        a.rounds
    );
    println!(
        "longest request in the calm window before it: median {:.1} ms (min {:.1}, max {:.1})",
        cm.as_secs_f64() * 1e3,
        cmin.as_secs_f64() * 1e3,
        cmax.as_secs_f64() * 1e3
    );
    println!("request errors: {errors}");
    println!(
        "target: the other nodes' I/O stalls no more than {} ms: {}",
        TARGET.as_millis(),
        if km <= TARGET && errors == 0 {
            "met (median)"
        } else {
            "MISSED"
        }
    );
}
