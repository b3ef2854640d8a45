//! Crash safety. A storage wrapper logs every write, set_len and flush of a run of
//! allocations, writes and flushes. Every prefix of that log is a crash "after the N-th
//! write"; for each we also try the state of the last storage flush plus every subset of
//! later writes missing one (the OS may reorder unflushed writes). Each crash state must
//! open (read-write, which repairs a torn trailing footer), check without corruption, and
//! hold every write that a completed `flush()` covered.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use vhd::chain::{FnResolver, NoParents, ParentCandidate, ParentResolver};
use vhd::create::{CreateOptions, ParentInfo, create_differencing, create_dynamic};
use vhd::{DiskType, Image, MemStorage, Storage};

#[derive(Debug, Clone)]
enum Event {
    Write(u64, Vec<u8>),
    SetLen(u64),
    Flush,
    /// `Image::flush()` returned: every op before index `usize` is durable.
    Commit(usize),
}

#[derive(Debug)]
struct LogStorage {
    inner: MemStorage,
    log: Mutex<Vec<Event>>,
}

impl Storage for LogStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(Event::Write(offset, buf.to_vec()));
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.log.lock().unwrap().push(Event::Flush);
        Ok(())
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.log.lock().unwrap().push(Event::SetLen(len));
        self.inner.set_len(len)
    }
}

const SIZE: u64 = 1 << 20;
const BS: u32 = 64 << 10;

/// Disjoint writes (offset, data); flushes after ops 1 and 3.
fn ops() -> Vec<(u64, Vec<u8>)> {
    let p = |n: usize, s: u8| {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31) ^ s | 1)
            .collect::<Vec<u8>>()
    };
    vec![
        (200_005, p(3000, 1)),
        (4096, p(4096, 2)),
        (700_000, p(70_000, 3)),
        (900_000, p(100, 4)),
    ]
}
const FLUSH_AFTER: [usize; 2] = [1, 2];

fn apply(base: &[u8], events: &[Event], skip: Option<usize>) -> Vec<u8> {
    let m = MemStorage::from_vec(base.to_vec());
    for (i, e) in events.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        match e {
            Event::Write(o, d) => m.write_at(d, *o).unwrap(),
            Event::SetLen(l) => m.set_len(*l).unwrap(),
            _ => {}
        }
    }
    m.to_vec()
}

fn run(diff: bool) {
    let parent_bytes: Arc<MemStorage> = Arc::new(MemStorage::new());
    let pfooter = create_dynamic(parent_bytes.as_ref(), &{
        let mut o = CreateOptions::new(DiskType::Dynamic, SIZE);
        o.block_size = BS;
        o
    })
    .unwrap();
    {
        let p = Image::open_storage(parent_bytes.clone(), false, "parent", &NoParents).unwrap();
        p.write_at(&vec![0xEE; SIZE as usize], 0).unwrap();
        p.close().unwrap();
    }
    let pb = parent_bytes.clone();
    let resolver = FnResolver(
        move |_: vhd::chain::ChildRef<'_>, _: &vhd::chain::ParentHints| {
            (
                vec![ParentCandidate {
                    storage: pb.clone(),
                    identity: "parent".into(),
                    path: None,
                }],
                vec![],
            )
        },
    );
    let resolver: &dyn ParentResolver = if diff { &resolver } else { &NoParents };
    let base = MemStorage::new();
    if diff {
        let info = ParentInfo {
            uuid: pfooter.uuid,
            virtual_size: SIZE,
            timestamp: 0,
            name: "parent".into(),
            absolute: None,
            relative: None,
        };
        create_differencing(&base, &info, BS, None).unwrap();
    } else {
        let mut o = CreateOptions::new(DiskType::Dynamic, SIZE);
        o.block_size = BS;
        create_dynamic(&base, &o).unwrap();
    }
    // a first flushed write, part of the base state
    {
        let img = Image::open_storage(
            Arc::new(MemStorage::from_vec(base.to_vec())),
            false,
            "c",
            resolver,
        )
        .unwrap();
        drop(img);
    }
    let base_bytes = {
        let s = Arc::new(MemStorage::from_vec(base.to_vec()));
        let img = Image::open_storage(s.clone(), false, "c", resolver).unwrap();
        img.write_at(&[7u8; 4096], 0).unwrap();
        img.close().unwrap();
        s.to_vec()
    };
    let logged = Arc::new(LogStorage {
        inner: MemStorage::from_vec(base_bytes.clone()),
        log: Mutex::new(Vec::new()),
    });
    let ops = ops();
    {
        let img = Image::open_storage(logged.clone(), false, "c", resolver).unwrap();
        for (i, (off, data)) in ops.iter().enumerate() {
            img.write_at(data, *off).unwrap();
            if FLUSH_AFTER.contains(&i) {
                img.flush().unwrap();
                logged.log.lock().unwrap().push(Event::Commit(i + 1));
            }
        }
        // the last op is left to the clean close
        img.close().unwrap();
        logged.log.lock().unwrap().push(Event::Commit(ops.len()));
    }
    let log = logged.log.lock().unwrap().clone();
    let old = |_off: u64, len: usize| -> Vec<u8> {
        if diff {
            vec![0xEE; len]
        } else {
            vec![0u8; len]
        }
    };
    let mut states = 0;
    for n in 0..=log.len() {
        let prefix = &log[..n];
        let durable_upto = prefix
            .iter()
            .rposition(|e| matches!(e, Event::Flush))
            .map_or(0, |i| i + 1);
        let committed = prefix
            .iter()
            .filter_map(|e| {
                if let Event::Commit(c) = e {
                    Some(*c)
                } else {
                    None
                }
            })
            .max()
            .unwrap_or(0);
        let mut candidates = vec![(apply(&base_bytes, prefix, None), "prefix")];
        candidates.push((apply(&base_bytes, &log[..durable_upto], None), "last flush"));
        for skip in durable_upto..n {
            if matches!(prefix[skip], Event::Write(..)) {
                candidates.push((apply(&base_bytes, prefix, Some(skip)), "reordered"));
            }
        }
        for (bytes, kind) in candidates {
            states += 1;
            let s = Arc::new(MemStorage::from_vec(bytes));
            let img = Image::open_storage(s.clone(), false, "c", resolver).unwrap_or_else(|e| {
                panic!("diff={diff} crash after event {n} ({kind}): open failed: {e}")
            });
            let r = vhd::check::check_image(&img);
            assert!(
                r.corruptions() == 0,
                "diff={diff} n={n} {kind}: {:?}",
                r.findings
            );
            let mut first = vec![0u8; 4096];
            img.read_at(&mut first, 0).unwrap();
            assert_eq!(
                first,
                vec![7u8; 4096],
                "diff={diff} n={n} {kind}: base write lost"
            );
            for (i, (off, data)) in ops.iter().enumerate() {
                let mut b = vec![0u8; data.len()];
                img.read_at(&mut b, *off).unwrap();
                if i < committed {
                    assert!(b == *data, "diff={diff} n={n} {kind}: flushed op {i} lost");
                } else {
                    assert!(
                        b == *data || b == old(*off, data.len()),
                        "diff={diff} n={n} {kind}: op {i} torn"
                    );
                }
            }
            drop(img);
            // after the read-write open repaired it, a read-only open is clean too
            let again = Image::open_storage(s, true, "c", resolver).unwrap();
            assert!(
                again.warnings().is_empty(),
                "diff={diff} n={n} {kind}: {:?}",
                again.warnings()
            );
        }
    }
    assert!(states > log.len());
}

#[test]
fn crash_at_every_write_dynamic() {
    run(false);
}

#[test]
fn crash_at_every_write_differencing() {
    run(true);
}
