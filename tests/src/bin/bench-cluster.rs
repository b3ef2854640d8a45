//! Cluster benchmark (run by `scripts/bench-cluster`, release build): a 3-node loopback
//! cluster of `csv-node` processes with fsync on. Phase 1: C concurrent admin clients,
//! spread over the nodes, create and delete VHD records for T seconds: operations/s, p50,
//! p99. Phase 2: R rounds of kill -9 the coordinator and time until the next successful
//! commit through a survivor (the killed node is restarted between rounds). Prints the
//! figures and pass/fail against the targets (≥ 1,000 ops/s; failover p99 < 3 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use csv_api::admin::Client;
use csv_tests::{Cluster, Options, create_retry, small_vhd};

const TARGET_OPS: f64 = 1_000.0;
const TARGET_FAILOVER: Duration = Duration::from_secs(3);

struct Args {
    clients: usize,
    seconds: u64,
    failovers: usize,
    check: bool,
}

fn args() -> Args {
    let mut a = Args {
        clients: 64,
        seconds: 10,
        failovers: 20,
        check: false,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let num = |i: usize| -> u64 {
            v.get(i + 1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", v[i]))
        };
        match v[i].as_str() {
            "--clients" => a.clients = num(i) as usize,
            "--seconds" => a.seconds = num(i),
            "--failovers" => a.failovers = num(i) as usize,
            "--check" => {
                a.check = true;
                i += 1;
                continue;
            }
            other => panic!(
                "unknown argument {other}; usage: bench-cluster [--clients N] [--seconds T] [--failovers R] [--check]"
            ),
        }
        i += 2;
    }
    a
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let a = args();
    let mut c = Cluster::new(
        3,
        Options {
            log: "warn,raft=error".into(),
            ..Options::default()
        },
    );
    c.bootstrap();
    let leader = c.wait_leader();
    c.set_volume(leader, 1 << 20);
    println!("3-node loopback cluster (processes, RocksDB, fsync on); coordinator node {leader}");

    // Phase 1: throughput and latency of metadata operations.
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..a.clients {
        let admin = c.nodes[&(1 + t as u64 % 3)].admin.clone();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut cl = Client::connect(&admin).expect("connect");
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("b{t}-{k}");
                let s = Instant::now();
                match cl.vhd_create(small_vhd(&name)) {
                    Ok(v) => {
                        lat.push(s.elapsed());
                        let s = Instant::now();
                        match cl.vhd_delete(v.id) {
                            Ok(_) => lat.push(s.elapsed()),
                            Err(_) => errors += 1,
                        }
                    }
                    Err(_) => errors += 1,
                }
                k += 1;
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(a.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().expect("client thread");
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    lat.sort();
    let ops = lat.len() as f64 / elapsed.as_secs_f64();
    println!(
        "metadata operations (VHD create/delete, {} clients over 3 nodes, {:.1} s): {:.0} ops/s, p50 {}, p99 {}, max {}, errors {errors}",
        a.clients,
        elapsed.as_secs_f64(),
        ops,
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.99)),
        ms(pct(&lat, 1.0)),
    );

    // Phase 2: coordinator failover.
    let mut times = Vec::new();
    for round in 0..a.failovers {
        let leader = c.wait_leader();
        c.wait_converged(&[1, 2, 3]);
        let survivor = (1..=3).find(|i| *i != leader).expect("survivor");
        let mut cl = c.client(survivor);
        cl.set_timeout(Duration::from_secs(30)).expect("timeout");
        let killed = Instant::now();
        c.kill(leader);
        create_retry(
            &mut cl,
            &format!("failover-{round}"),
            Duration::from_secs(30),
        )
        .expect("commit after failover");
        let took = killed.elapsed();
        println!(
            "failover {round:>2}: killed node {leader}, next commit after {}",
            ms(took)
        );
        times.push(took);
        c.start(leader);
    }
    times.sort();
    let p99 = pct(&times, 0.99);
    if !times.is_empty() {
        println!(
            "failover (kill -9 coordinator -> next commit, {} runs): p50 {}, p99 {}, max {}",
            times.len(),
            ms(pct(&times, 0.5)),
            ms(p99),
            ms(pct(&times, 1.0))
        );
    }
    let ops_ok = ops >= TARGET_OPS;
    let fo_ok = times.is_empty() || p99 < TARGET_FAILOVER;
    println!(
        "targets: ops/s >= {TARGET_OPS:.0}: {} ({ops:.0}); failover p99 < 3 s: {} ({})",
        if ops_ok { "PASS" } else { "FAIL" },
        if fo_ok { "PASS" } else { "FAIL" },
        ms(p99)
    );
    if a.check && !(ops_ok && fo_ok) {
        std::process::exit(1);
    }
}
