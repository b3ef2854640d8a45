//! The chaos workload: per VHD, one client (this crate's NBD client) with a few
//! operations in flight writes whole stamped blocks, reads them back and flushes,
//! through whichever node serves the VHD now, and logs every operation to the history.
//!
//! When an operation fails, the client finds the VHD's route again: the owner with the
//! highest generation any live node reports, if that owner is valid and serves it, or
//! else an attach on a live node (a takeover once the old owner's lease ran out).

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos::history::{Event, Outcome, write_event};
use chaos::rng::Rng;
use chaos::stamp::{self, BLOCK, Stamp};
use csv_api::admin::volume::VhdAttach;
use csv_api::admin::{Client, Request, Response, vhd_ref};
use nbd::client::{ClientConfig, ClientError};

/// What every driver shares.
#[derive(Debug)]
pub struct Shared {
    /// Admin socket of each node.
    pub admins: BTreeMap<u64, PathBuf>,
    /// NBD socket of each node.
    pub nbd: BTreeMap<u64, PathBuf>,
    /// Time zero of the history.
    pub start: Instant,
    /// The history file's writer thread.
    pub history: HistoryWriter,
    /// Next write id.
    pub next_id: AtomicU64,
    /// Ends the drivers.
    pub stop: AtomicBool,
    /// Blocks per VHD the workload uses.
    pub blocks: u64,
    /// Operations in flight per VHD.
    pub depth: usize,
    /// Share of writes among the operations, in percent (reads make the rest but for
    /// 5 % flushes).
    pub write_percent: u64,
    /// A request without an answer in this time is `unknown`.
    pub op_timeout: Duration,
    /// Longest time any VHD had no route (µs).
    pub longest_outage_us: AtomicU64,
    /// The nodes' FAILPOINTS setting for the run (kept when a fault adds its own).
    pub node_failpoints: String,
}

impl Shared {
    /// Microseconds since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Appends an event to the history (a channel send: no file I/O on the runtime).
    pub fn log(&self, e: &Event) {
        self.history.send(e.clone());
    }

    /// An admin client of `node` whose calls give up after `timeout` (a paused node
    /// accepts the connection and never answers).
    pub fn admin_within(&self, node: u64, timeout: Duration) -> Option<Client> {
        let c = Client::connect(self.admins.get(&node)?).ok()?;
        c.set_timeout(timeout).ok()?;
        Some(c)
    }

    fn admin(&self, node: u64) -> Option<Client> {
        self.admin_within(node, Duration::from_secs(2))
    }
}

/// The history file, written by a thread of its own: the drivers run on tokio workers,
/// which must not block on file I/O; they hand each event over a channel.
#[derive(Debug)]
pub struct HistoryWriter {
    tx: Mutex<Option<std::sync::mpsc::Sender<Event>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl HistoryWriter {
    /// Starts the writer on `file`.
    pub fn start(file: std::fs::File) -> HistoryWriter {
        let (tx, rx) = std::sync::mpsc::channel::<Event>();
        let thread = std::thread::spawn(move || {
            let mut w = std::io::BufWriter::new(file);
            for e in rx {
                if let Err(err) = write_event(&mut w, &e) {
                    eprintln!("chaos: history write failed: {err}");
                    return;
                }
            }
            if let Err(err) = w.flush() {
                eprintln!("chaos: history flush failed: {err}");
            }
        });
        HistoryWriter {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        }
    }

    fn send(&self, e: Event) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(e);
        }
    }

    /// Ends the history: every event sent so far is in the file when this returns; later
    /// ones are dropped.
    pub fn finish(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// One VHD of the workload.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name (the export name).
    pub name: String,
    /// Its id (stamped in every block).
    pub vhd: u64,
    /// The client id.
    pub client: u64,
    /// The disk of the chaos VM: the hypervisor attaches it where the VM runs; the
    /// client only follows its owner (an attach of its own would take the disk from the
    /// VM's failover).
    pub vm: bool,
}

/// Where a VHD is served now.
struct Route {
    node: u64,
    generation: u64,
    nbd: nbd::client::Client,
}

fn outcome(e: &ClientError) -> Outcome {
    match e {
        ClientError::Server { .. } => Outcome::Error,
        _ => Outcome::Unknown,
    }
}

/// The owner (node, generation, valid) with the highest generation the answering nodes
/// report, and the nodes that answered.
fn survey(sh: &Shared, name: &str) -> (Option<(u64, u64, bool)>, Vec<u64>) {
    let mut best: Option<(u64, u64, bool)> = None;
    let mut live = Vec::new();
    for node in sh.admins.keys() {
        let Some(mut c) = sh.admin(*node) else {
            continue;
        };
        let Ok(info) = c.owner_show(vhd_ref(name)) else {
            continue;
        };
        live.push(*node);
        let cand = (info.owner, info.generation, info.owner_valid);
        if best.is_none_or(|b| cand.1 > b.1 || (cand.1 == b.1 && cand.2 && !b.2)) {
            best = Some(cand);
        }
    }
    (best, live)
}

/// Attaches `name` on `node`; its generation.
fn attach(sh: &Shared, node: u64, name: &str) -> Result<u64, String> {
    let mut c = sh
        .admin(node)
        .ok_or_else(|| format!("node {node} does not answer"))?;
    match c.call(Request::VhdAttach(VhdAttach {
        name: name.to_string(),
        node: 0,
        read_only: false,
    })) {
        Ok(Response::Attachment(a)) => Ok(a.generation),
        Ok(other) => Err(format!("attach answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Finds (or makes) the VHD's route: blocking admin calls, run off the runtime.
fn plan_route(sh: &Shared, name: &str, follow: bool, rng: &mut Rng) -> Option<(u64, u64)> {
    let (owner, live) = survey(sh, name);
    match owner {
        Some((node, generation, true)) if node != 0 && live.contains(&node) => {
            Some((node, generation))
        }
        Some((node, _, true)) if node != 0 => None, // valid, but it does not answer: wait
        _ => {
            if live.is_empty() || follow {
                return None;
            }
            let node = live[rng.below(live.len() as u64) as usize];
            attach(sh, node, name).ok().map(|g| (node, g))
        }
    }
}

async fn connect(sh: &Arc<Shared>, t: &Target, rng: &mut Rng) -> Option<Route> {
    let (sh2, name, mut r2, follow) = (sh.clone(), t.name.clone(), rng.fork(), t.vm);
    let (node, generation) =
        tokio::task::spawn_blocking(move || plan_route(&sh2, &name, follow, &mut r2))
            .await
            .ok()??;
    let cfg = ClientConfig {
        export: t.name.clone(),
        request_timeout: sh.op_timeout,
        max_in_flight: sh.depth,
        ..ClientConfig::default()
    };
    let sock = sh.nbd.get(&node)?;
    let nbd = match tokio::time::timeout(sh.op_timeout, nbd::client::connect_unix(sock, cfg)).await
    {
        Ok(Ok(c)) => c,
        _ if t.vm => return None,
        _ => {
            // The owner holds it but serves no export (a move, a restart): attach there.
            let (sh2, name) = (sh.clone(), t.name.clone());
            let _ = tokio::task::spawn_blocking(move || attach(&sh2, node, &name)).await;
            return None;
        }
    };
    Some(Route {
        node,
        generation,
        nbd,
    })
}

/// Runs one VHD's client until `stop`.
pub async fn drive(sh: Arc<Shared>, t: Target, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut down_since = Instant::now();
    // Blocks with an operation in flight: like a guest, the client never races two
    // operations on one block.
    let busy: Arc<Mutex<HashSet<u64>>> = Arc::default();
    while !sh.stop.load(Ordering::Acquire) {
        let Some(route) = connect(&sh, &t, &mut rng).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let out = down_since.elapsed().as_micros() as u64;
        sh.longest_outage_us.fetch_max(out, Ordering::AcqRel);
        let route = Arc::new(route);
        let failed = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..sh.depth)
            .map(|_| {
                let w = Worker {
                    sh: sh.clone(),
                    t: t.clone(),
                    route: route.clone(),
                    failed: failed.clone(),
                    busy: busy.clone(),
                };
                tokio::spawn(worker(w, rng.fork()))
            })
            .collect();
        for w in workers {
            let _ = w.await;
        }
        down_since = Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(1), route.nbd.disconnect()).await;
    }
}

struct Worker {
    sh: Arc<Shared>,
    t: Target,
    route: Arc<Route>,
    failed: Arc<AtomicBool>,
    busy: Arc<Mutex<HashSet<u64>>>,
}

async fn worker(w: Worker, mut rng: Rng) {
    let (sh, t, route) = (&w.sh, &w.t, &w.route);
    while !sh.stop.load(Ordering::Acquire) && !w.failed.load(Ordering::Acquire) {
        let kind = rng.below(100);
        let o = if kind >= 95 {
            flush(sh, t, route).await
        } else {
            let block = loop {
                let b = rng.below(sh.blocks);
                if w.busy.lock().unwrap_or_else(|p| p.into_inner()).insert(b) {
                    break b;
                }
                tokio::task::yield_now().await;
            };
            let o = if kind < sh.write_percent.min(95) {
                write(sh, t, route, block).await
            } else {
                read(sh, t, route, block).await
            };
            w.busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&block);
            o
        };
        if o != Outcome::Ok {
            w.failed.store(true, Ordering::Release);
        }
    }
}

async fn write(sh: &Shared, t: &Target, route: &Route, block: u64) -> Outcome {
    let id = sh.next_id.fetch_add(1, Ordering::AcqRel);
    let s = Stamp {
        vhd: t.vhd,
        block,
        client: t.client,
        id,
        generation: route.generation,
        node: route.node,
    };
    let data = s.encode();
    let invoke = sh.now();
    let r = route.nbd.write(block * BLOCK as u64, &data, false).await;
    let outcome = r.as_ref().map_or_else(outcome, |()| Outcome::Ok);
    sh.log(&Event::Write {
        client: t.client,
        vhd: t.vhd,
        block,
        id,
        generation: route.generation,
        node: route.node,
        invoke,
        complete: sh.now(),
        outcome,
    });
    outcome
}

async fn read(sh: &Shared, t: &Target, route: &Route, block: u64) -> Outcome {
    let invoke = sh.now();
    let r = route.nbd.read(block * BLOCK as u64, BLOCK as u32).await;
    let complete = sh.now();
    let (outcome, seen) = match r {
        Ok(b) => (Outcome::Ok, Some(stamp::decode(&b, t.vhd, block))),
        Err(e) => (outcome(&e), None),
    };
    sh.log(&Event::Read {
        client: t.client,
        vhd: t.vhd,
        block,
        node: route.node,
        invoke,
        complete,
        outcome,
        seen,
    });
    outcome
}

async fn flush(sh: &Shared, t: &Target, route: &Route) -> Outcome {
    let invoke = sh.now();
    let r = route.nbd.flush().await;
    let outcome = r.as_ref().map_or_else(outcome, |()| Outcome::Ok);
    sh.log(&Event::Flush {
        client: t.client,
        vhd: t.vhd,
        node: route.node,
        invoke,
        complete: sh.now(),
        outcome,
    });
    outcome
}

/// After the run: reads every block of `t` once more (the last word on what survived),
/// retrying routes for at most `patience`. Whether every block was read.
pub async fn verify(sh: Arc<Shared>, t: Target, patience: Duration) -> bool {
    let mut rng = Rng::new(t.vhd);
    let start = Instant::now();
    let mut next = 0;
    while next < sh.blocks && start.elapsed() < patience {
        let Some(route) = connect(&sh, &t, &mut rng).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while next < sh.blocks {
            if read(&sh, &t, &route, next).await != Outcome::Ok {
                break;
            }
            next += 1;
        }
        let _ = route.nbd.disconnect().await;
    }
    next == sh.blocks
}
