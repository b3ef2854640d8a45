//! Cost of the extent layer (run by scripts/bench-volume). The same `vhd::Image` (fixed
//! and dynamic) on a plain file through `FileStorage`, and on an `ExtentFile` on a
//! formatted LUN file through `FilePath`, measured side by side in one run: random 4 KiB
//! reads and writes (THREADS threads, one request in flight each, as a server's blocking
//! pool issues them), sequential 1 MiB reads and writes, and first writes of an empty
//! dynamic image (growth: extents taken, zeroed, committed at the flush). Prints each
//! figure and the ratio volume/plain (target: ≥ 0.95). Short slices with the images in
//! rotating order, so background load hits all alike; write slices end with a flush.
//!
//! usage: bench DIR [SIZE_MIB] [SECONDS_PER_TEST] [THREADS] [ROUNDS]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vhd::chain::NoParents;
use vhd::create::{CreateOptions, create_dynamic, create_fixed};
use vhd::{DiskType, FileStorage, Image, Storage};
use volume::layout::DEFAULT_EXTENT_SIZE;
use volume::superblock::{self, FormatParams};
use volume::testing::{ExtentPool, RecordingSink};
use volume::{ExtentFile, ExtentMap, FileOptions, FilePath, LunPath, OpenFence, WriteAccess};

const SLICES_PER_ROUND: usize = 5;

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn random(img: &Arc<Image>, size: u64, write: bool, threads: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let blocks = size / 4096;
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (img, stop, ops) = (img.clone(), stop.clone(), ops.clone());
            std::thread::spawn(move || {
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ ((i as u64 + 1) * 0x1234_5678);
                let mut buf = vec![(i as u8) | 1; 4096];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let off = (xorshift(&mut seed) % blocks) * 4096;
                    if write {
                        img.write_at(&buf, off).expect("write");
                    } else {
                        img.read_at(&mut buf, off).expect("read");
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
    if write {
        img.flush().expect("flush");
    }
    ops.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn sequential(img: &Image, size: u64, write: bool, secs: f64, pos: &mut u64) -> f64 {
    let mut buf = vec![0x5Au8; 1 << 20];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        if write {
            img.write_at(&buf, *pos).expect("write");
        } else {
            img.read_at(&mut buf, *pos).expect("read");
        }
        bytes += buf.len() as u64;
        *pos = (*pos + buf.len() as u64) % size;
    }
    if write {
        img.flush().expect("flush");
    }
    bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

fn fill(img: &Image, size: u64) -> f64 {
    let buf = vec![0xA5u8; 1 << 20];
    let start = Instant::now();
    let mut off = 0;
    while off < size {
        img.write_at(&buf, off).expect("fill");
        off += buf.len() as u64;
    }
    img.flush().expect("flush");
    start.elapsed().as_secs_f64()
}

struct Volume {
    lun: Arc<dyn LunPath>,
    layout: volume::Layout,
    pool: Arc<ExtentPool>,
}

impl Volume {
    fn new(dir: &Path, bytes: u64) -> Volume {
        let p = dir.join("bench-lun.img");
        let _ = std::fs::remove_file(&p);
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(bytes))
            .expect("create LUN file");
        let lun: Arc<dyn LunPath> =
            Arc::new(FilePath::open(&p, FileOptions::default()).expect("open LUN"));
        let sb = superblock::format(lun.as_ref(), &FormatParams::default()).expect("format");
        // Not clean: growth zeroes extents, as when reusing a deleted VHD's space.
        let pool = Arc::new(ExtentPool::new(0..sb.layout.extent_count, false));
        Volume {
            lun,
            layout: sb.layout,
            pool,
        }
    }

    fn file(&self, name: &str) -> Arc<ExtentFile> {
        Arc::new(
            ExtentFile::open(
                self.lun.clone(),
                self.layout,
                name,
                ExtentMap::new(),
                0,
                Some(WriteAccess {
                    source: self.pool.clone(),
                    sink: Arc::new(RecordingSink::new(Some(self.pool.clone()))),
                    fence: Arc::new(OpenFence),
                    fence_wait: volume::DEFAULT_FENCE_WAIT,
                }),
            )
            .expect("extent file"),
        )
    }
}

fn image(storage: Arc<dyn Storage>, t: DiskType, size: u64, name: &str) -> Arc<Image> {
    let opts = CreateOptions::new(t, size);
    match t {
        DiskType::Fixed => create_fixed(storage.as_ref(), &opts).map(|_| ()),
        _ => create_dynamic(storage.as_ref(), &opts).map(|_| ()),
    }
    .expect("create image");
    Arc::new(Image::open_storage(storage, false, name, &NoParents).expect("open image"))
}

fn plain(dir: &Path, name: &str) -> Arc<dyn Storage> {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    Arc::new(FileStorage::create(&p).expect("create plain file"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("/tmp", String::as_str));
    let mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let secs: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let threads: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(4);
    let rounds: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(3);
    let size = mib << 20;
    println!(
        "# volume bench: {mib} MiB images in {}, {secs} s per test, {threads} threads for random I/O",
        dir.display()
    );
    println!(
        "# plain = vhd::Image on FileStorage; volume = vhd::Image on ExtentFile on FilePath ({} MiB extents)",
        DEFAULT_EXTENT_SIZE >> 20
    );
    // Room for the images, the first-write test, and the layout (checkpoints, slack).
    let vol = Volume::new(&dir, 4 * size + 8 * DEFAULT_EXTENT_SIZE + (512 << 20));

    // First writes of an empty dynamic image (growth path), plain vs volume.
    let fw_plain = fill(
        &image(plain(&dir, "bench-first.vhd"), DiskType::Dynamic, size, "p"),
        size,
    );
    let fw_vol = fill(
        &image(vol.file("first"), DiskType::Dynamic, size, "v"),
        size,
    );
    let _ = std::fs::remove_file(dir.join("bench-first.vhd"));

    let pairs: Vec<(&str, Arc<Image>, Arc<Image>)> = [DiskType::Fixed, DiskType::Dynamic]
        .into_iter()
        .map(|t| {
            let name = if t == DiskType::Fixed {
                "fixed"
            } else {
                "dynamic"
            };
            let p = image(plain(&dir, &format!("bench-{name}.vhd")), t, size, name);
            let v = image(vol.file(name), t, size, name);
            fill(&p, size);
            fill(&v, size);
            (name, p, v)
        })
        .collect();

    let tests = [
        "rand4k rd IOPS",
        "rand4k wr IOPS",
        "seq1M rd MiB/s",
        "seq1M wr MiB/s",
    ];
    let slices = rounds * SLICES_PER_ROUND;
    let slice_secs = secs / SLICES_PER_ROUND as f64;
    println!("# mean of {slices} slices of {slice_secs:.2} s per image and test, interleaved");
    println!(
        "{:<8} {:<16} {:>12} {:>12} {:>8}",
        "image", "test", "plain", "volume", "ratio"
    );
    for (name, p, v) in &pairs {
        for (ti, test) in tests.iter().enumerate() {
            let (mut sp, mut sv) = (0f64, 0f64);
            let (mut pos_p, mut pos_v) = (0u64, 0u64);
            for s in 0..slices {
                let run = |img: &Arc<Image>, pos: &mut u64| match ti {
                    0 => random(img, size, false, threads, slice_secs),
                    1 => random(img, size, true, threads, slice_secs),
                    2 => sequential(img, size, false, slice_secs, pos),
                    _ => sequential(img, size, true, slice_secs, pos),
                };
                if s % 2 == 0 {
                    sp += run(p, &mut pos_p);
                    sv += run(v, &mut pos_v);
                } else {
                    sv += run(v, &mut pos_v);
                    sp += run(p, &mut pos_p);
                }
            }
            let (mp, mv) = (sp / slices as f64, sv / slices as f64);
            println!(
                "{:<8} {:<16} {:>12.0} {:>12.0} {:>7.3}x",
                name,
                test,
                mp,
                mv,
                mv / mp
            );
        }
    }
    println!(
        "{:<8} {:<16} {:>11.3}s {:>11.3}s {:>7.3}x",
        "dynamic",
        "first writes",
        fw_plain,
        fw_vol,
        fw_plain / fw_vol
    );
    println!("# ratio = volume / plain (first writes: plain time / volume time); target >= 0.95");
}
