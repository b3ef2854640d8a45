//! `ops::merge_into` over in-memory storage (the form the cluster volume uses on extent
//! files): random writes into a parent and a differencing child, merge, and the parent
//! reads as the child did; a merge cut short by failing writes (a crash) leaves the child
//! reading exactly as before once reopened from what reached storage; a wrong parent is
//! refused untouched.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use proptest::prelude::*;
use vhd::chain::{ChildRef, FnResolver, ParentCandidate, ParentHints};
use vhd::create::{CreateOptions, ParentInfo, create_differencing, create_dynamic};
use vhd::{DiskType, Image, MemStorage, Storage};

const SIZE: u64 = 8 << 20;
const BLOCK: u32 = 512 << 10;

/// Memory storage whose writes fail once `budget` writes were made (a crash).
#[derive(Debug)]
struct Failing {
    inner: Arc<MemStorage>,
    budget: AtomicI64,
}

impl Storage for Failing {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.budget.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(io::Error::other("injected crash"));
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.budget.load(Ordering::SeqCst) <= 0 {
            return Err(io::Error::other("injected crash"));
        }
        self.inner.set_len(len)
    }
}

fn resolver(parent: Arc<dyn Storage>) -> impl vhd::chain::ParentResolver {
    FnResolver(move |_: ChildRef<'_>, _: &ParentHints| {
        (
            vec![ParentCandidate {
                storage: parent.clone(),
                identity: "parent".into(),
                path: None,
            }],
            vec![],
        )
    })
}

fn read_all(img: &Image) -> Vec<u8> {
    let mut v = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut v, 0).expect("read image");
    v
}

/// A parent with `pw` written and a child over it with `cw` written; the expected view.
fn build(
    pw: &[(u64, u64, u8)],
    cw: &[(u64, u64, u8)],
) -> (Arc<MemStorage>, Arc<MemStorage>, Vec<u8>) {
    let p = Arc::new(MemStorage::new());
    let mut o = CreateOptions::new(DiskType::Dynamic, SIZE);
    o.block_size = BLOCK;
    let pf = create_dynamic(&*p, &o).expect("create parent");
    let mut model = vec![0u8; SIZE as usize];
    {
        let img = Image::open_storage(p.clone(), false, "parent", &vhd::chain::NoParents)
            .expect("open parent");
        for &(off, len, pat) in pw {
            img.write_at(&vec![pat; len as usize], off)
                .expect("write parent");
            model[off as usize..(off + len) as usize].fill(pat);
        }
        img.close().expect("close parent");
    }
    let c = Arc::new(MemStorage::new());
    let info = ParentInfo {
        uuid: pf.uuid,
        virtual_size: SIZE,
        timestamp: pf.timestamp,
        name: "parent.vhd".into(),
        absolute: None,
        relative: Some(".\\parent.vhd".into()),
    };
    create_differencing(&*c, &info, BLOCK, None).expect("create child");
    let img =
        Image::open_storage(c.clone(), false, "child", &resolver(p.clone())).expect("open child");
    for &(off, len, pat) in cw {
        if pat == 0 {
            img.write_zeroes(off, len, false).expect("zero child");
        } else {
            img.write_at(&vec![pat; len as usize], off)
                .expect("write child");
        }
        model[off as usize..(off + len) as usize].fill(pat);
    }
    img.close().expect("close child");
    (p, c, model)
}

fn writes() -> impl Strategy<Value = Vec<(u64, u64, u8)>> {
    prop::collection::vec(
        (0..SIZE / 512 - 64, 1..64u64, any::<u8>()).prop_map(|(s, n, p)| (s * 512, n * 512, p)),
        0..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn merged_parent_reads_as_the_child(pw in writes(), cw in writes(), cut in 0i64..40) {
        let (p, c, model) = build(&pw, &cw);
        let child_before = {
            let img = Image::open_storage(c.clone(), true, "child", &resolver(p.clone())).unwrap();
            read_all(&img)
        };
        prop_assert!(child_before == model);

        // A merge cut after `cut` writes: the child still reads as before.
        let failing = Arc::new(Failing { inner: p.clone(), budget: AtomicI64::new(cut) });
        {
            let child = Image::open_storage(c.clone(), true, "child", &resolver(p.clone())).unwrap();
            let mut parent =
                Image::open_storage(failing.clone(), false, "parent", &vhd::chain::NoParents).unwrap();
            let _ = vhd::ops::merge_into(&child, &mut parent, &mut |_, _| {});
            // the crash: nothing more reaches storage
            failing.budget.store(i64::MIN / 2, Ordering::SeqCst);
        }
        let child = Image::open_storage(c.clone(), true, "child", &resolver(p.clone())).unwrap();
        prop_assert!(read_all(&child) == model, "child changed by a cut merge");

        // The whole merge (again, over whatever the cut one left).
        let mut parent =
            Image::open_storage(p.clone(), false, "parent", &vhd::chain::NoParents).unwrap();
        let mut last = (0, 0);
        let n = vhd::ops::merge_into(&child, &mut parent, &mut |d, t| last = (d, t)).unwrap();
        prop_assert_eq!(last.0, last.1);
        prop_assert_eq!(last.1, n.bytes_merged);
        parent.close().unwrap();
        let parent =
            Image::open_storage(p.clone(), true, "parent", &vhd::chain::NoParents).unwrap();
        prop_assert!(read_all(&parent) == model, "merged parent differs");
        prop_assert!(read_all(&child) == model, "child changed by the merge");
    }
}

#[test]
fn a_wrong_parent_is_refused_untouched() {
    let (p, c, _) = build(&[(0, 4096, 1)], &[(8192, 4096, 2)]);
    let (other, _, _) = build(&[(0, 4096, 3)], &[]);
    let before = other.to_vec();
    let child = Image::open_storage(c, true, "child", &resolver(p)).unwrap();
    let mut wrong =
        Image::open_storage(other.clone(), false, "other", &vhd::chain::NoParents).unwrap();
    let e = vhd::ops::merge_into(&child, &mut wrong, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("not the parent"), "{e}");
    drop(wrong);
    assert!(other.to_vec() == before, "the wrong parent was written");
    // a dynamic image is not a child
    let mut parent2 = Image::open_storage(
        Arc::new(MemStorage::from_vec(before)),
        false,
        "p2",
        &vhd::chain::NoParents,
    )
    .unwrap();
    let dynamic = Image::open_storage(other, true, "d", &vhd::chain::NoParents).unwrap();
    assert!(vhd::ops::merge_into(&dynamic, &mut parent2, &mut |_, _| {}).is_err());
}
