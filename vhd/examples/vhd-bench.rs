//! Benchmark of the library's I/O paths (run by scripts/bench-vhd; figures go to
//! docs/benchmarks.md). Same-size files, measured side by side in one run:
//! raw (plain file through FileStorage), fixed VHD, dynamic VHD fully allocated:
//! random 4 KiB reads and writes (THREADS threads, one request in flight each, as a server
//! thread pool issues them), sequential 1 MiB reads and writes; then first sequential
//! writes into an empty dynamic image vs an empty sparse raw file (ending with a flush).
//! Files live in the page cache (just written, machine memory far larger): this measures
//! the library's overhead per request, which is what the targets are about. The machine
//! is shared, so each test runs ROUNDS x 5 short slices with the three images in rotating order,
//! write tests end with a flush (no dirty pages carried into the next measurement), and
//! the mean over many short interleaved slices is reported.
//!
//! usage: bench DIR [SIZE_MIB] [SECONDS_PER_TEST] [THREADS] [ROUNDS]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vhd::create::{CreateOptions, create_file};
use vhd::{DiskType, FileStorage, Image, OpenOptions, Storage};

#[allow(clippy::large_enum_variant)] // a handful of instances
enum Target {
    Raw(FileStorage),
    Vhd(Image),
}

impl Target {
    fn read(&self, buf: &mut [u8], off: u64) {
        match self {
            Target::Raw(s) => s.read_at(buf, off).expect("raw read"),
            Target::Vhd(i) => i.read_at(buf, off).expect("vhd read"),
        }
    }
    fn write(&self, buf: &[u8], off: u64) {
        match self {
            Target::Raw(s) => s.write_at(buf, off).expect("raw write"),
            Target::Vhd(i) => i.write_at(buf, off).expect("vhd write"),
        }
    }
    fn flush(&self) {
        match self {
            Target::Raw(s) => s.flush().expect("raw flush"),
            Target::Vhd(i) => i.flush().expect("vhd flush"),
        }
    }
}

/// Slices each round of a test is cut into.
const SLICES_PER_ROUND: usize = 5;

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Random 4 KiB requests from `threads` threads for `secs`: IOPS.
fn random(t: &Arc<Target>, size: u64, write: bool, threads: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let blocks = size / 4096;
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (t, stop, ops) = (t.clone(), stop.clone(), ops.clone());
            std::thread::spawn(move || {
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ ((i as u64 + 1) * 0x1234_5678);
                let mut buf = vec![(i as u8) | 1; 4096];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let off = (xorshift(&mut seed) % blocks) * 4096;
                    if write {
                        t.write(&buf, off);
                    } else {
                        t.read(&mut buf, off);
                    }
                    n += 1;
                }
                ops.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("bench thread");
    }
    ops.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Sequential 1 MiB requests over the whole image, wrapping, for `secs`: MiB/s.
fn sequential(t: &Target, size: u64, write: bool, secs: f64) -> f64 {
    let mut buf = vec![0x5Au8; 1 << 20];
    let start = Instant::now();
    let mut off = 0u64;
    let mut bytes = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        if write {
            t.write(&buf, off);
        } else {
            t.read(&mut buf, off);
        }
        bytes += buf.len() as u64;
        off = (off + buf.len() as u64) % size;
    }
    bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

fn fill(t: &Target, size: u64) {
    let buf = vec![0xA5u8; 1 << 20];
    let mut off = 0;
    while off < size {
        t.write(&buf, off);
        off += buf.len() as u64;
    }
    t.flush();
}

fn open_vhd(p: &Path) -> Image {
    Image::open(
        p,
        &OpenOptions {
            read_only: false,
            parent: None,
        },
    )
    .expect("open")
}

fn new_raw(p: &Path, size: u64) -> FileStorage {
    let _ = std::fs::remove_file(p);
    let fs = FileStorage::create(p).expect("create raw");
    fs.set_len(size).expect("size raw");
    fs
}

fn new_vhd(p: &Path, t: DiskType, size: u64) -> Image {
    let _ = std::fs::remove_file(p);
    create_file(p, &CreateOptions::new(t, size)).expect("create");
    open_vhd(p)
}

/// Time to write the whole empty image sequentially in 1 MiB requests, then flush.
fn first_writes(t: &Target, size: u64) -> f64 {
    let buf = vec![0x3Cu8; 1 << 20];
    let start = Instant::now();
    let mut off = 0;
    while off < size {
        t.write(&buf, off);
        off += buf.len() as u64;
    }
    t.flush();
    start.elapsed().as_secs_f64()
}

#[allow(clippy::needless_range_loop)] // tests and images index a results table
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("/tmp", String::as_str));
    let mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let secs: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let threads: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(4);
    let size = mib << 20;
    println!(
        "# vhd bench: {mib} MiB images in {}, {secs} s per test, {threads} threads for random I/O",
        dir.display()
    );
    println!("# files are in the page cache (written just before); 2 MiB dynamic blocks");
    let raw_p = dir.join("bench-raw.img");
    let fixed_p = dir.join("bench-fixed.vhd");
    let dyn_p = dir.join("bench-dynamic.vhd");
    let targets: Vec<(&str, Arc<Target>)> = vec![
        ("raw", Arc::new(Target::Raw(new_raw(&raw_p, size)))),
        (
            "fixed",
            Arc::new(Target::Vhd(new_vhd(&fixed_p, DiskType::Fixed, size))),
        ),
        (
            "dynamic",
            Arc::new(Target::Vhd(new_vhd(&dyn_p, DiskType::Dynamic, size))),
        ),
    ];
    for (_, t) in &targets {
        fill(t, size);
    }
    let rounds: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(3);
    // Short slices, images in rotating order: background load on a shared machine hits
    // the three images alike and averages out.
    let slices = rounds * SLICES_PER_ROUND;
    let slice_secs = secs / SLICES_PER_ROUND as f64;
    println!(
        "# mean of {slices} slices of {slice_secs:.2} s per image and test, images interleaved"
    );
    println!(
        "{:<8} {:>14} {:>14} {:>14} {:>14}",
        "image", "rand4k rd IOPS", "rand4k wr IOPS", "seq1M rd MiB/s", "seq1M wr MiB/s"
    );
    let mut results = vec![[0f64; 4]; targets.len()];
    for test in 0..4 {
        for slice in 0..slices {
            for k in 0..targets.len() {
                let idx = (k + slice) % targets.len();
                let t = &targets[idx].1;
                let v = match test {
                    0 => random(t, size, false, threads, slice_secs),
                    1 => random(t, size, true, threads, slice_secs),
                    2 => sequential(t, size, false, slice_secs),
                    _ => sequential(t, size, true, slice_secs),
                };
                if test % 2 == 1 {
                    t.flush();
                }
                results[idx][test] += v / slices as f64;
            }
        }
    }
    for (i, (name, _)) in targets.iter().enumerate() {
        let [rr, rw, sr, sw] = results[i];
        println!("{name:<8} {rr:>14.0} {rw:>14.0} {sr:>14.0} {sw:>14.0}");
    }
    drop(targets);
    let labels = ["rand4k read", "rand4k write", "seq1M read", "seq1M write"];
    println!("\n# dynamic vs fixed (target: within 5%, i.e. ratio >= 0.95)");
    for (i, l) in labels.iter().enumerate() {
        let r = results[2][i] / results[1][i];
        println!(
            "{l:<14} dynamic/fixed = {r:.3} {}",
            if r >= 0.95 { "OK" } else { "MISS" }
        );
    }
    println!("# fixed vs raw (information)");
    for (i, l) in labels.iter().enumerate() {
        println!("{l:<14} fixed/raw = {:.3}", results[1][i] / results[0][i]);
    }
    // first writes: empty sparse raw vs empty dynamic, best of 3 each, alternating
    let mut raw_t = f64::MAX;
    let mut dyn_t = f64::MAX;
    for _ in 0..3 {
        let r = Target::Raw(new_raw(&raw_p, size));
        raw_t = raw_t.min(first_writes(&r, size));
        drop(r);
        let d = Target::Vhd(new_vhd(&dyn_p, DiskType::Dynamic, size));
        dyn_t = dyn_t.min(first_writes(&d, size));
    }
    let ratio = dyn_t / raw_t;
    println!("\n# first sequential 1 MiB writes into empty images, incl. final flush (best of 3)");
    println!(
        "raw {raw_t:.3} s ({:.0} MiB/s), dynamic {dyn_t:.3} s ({:.0} MiB/s): dynamic/raw time = {ratio:.3} {} (target <= 1.5)",
        mib as f64 / raw_t,
        mib as f64 / dyn_t,
        if ratio <= 1.5 { "OK" } else { "MISS" }
    );
    for p in [raw_p, fixed_p, dyn_p] {
        let _ = std::fs::remove_file(p);
    }
}
