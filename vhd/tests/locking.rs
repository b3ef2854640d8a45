//! One writer per image file: a second read-write open is refused (two writers would
//! each allocate blocks at the same end of file, one overwriting the other's data);
//! readers are never refused.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use vhd::create::{CreateOptions, create_file};
use vhd::{DiskType, Error};

#[test]
fn a_second_writer_is_refused_readers_are_not() {
    let dir = tempfile::tempdir().unwrap();
    for t in [DiskType::Dynamic, DiskType::Fixed] {
        let p = dir.path().join(format!("{t}.vhd"));
        create_file(&p, &CreateOptions::new(t, 8 << 20)).unwrap();
        let w = open_rw(&p);
        w.write_at(&pattern(4096, 1), 0).unwrap();
        let e = vhd::Image::open(&p, &vhd::OpenOptions::default()).unwrap_err();
        assert!(matches!(e, Error::Locked(_)), "{t}: {e}");
        // readers (info, check, convert, parents) still open it
        let r = open_ro(&p);
        drop(r);
        w.close().unwrap();
        // the lock goes with the writer
        let w2 = open_rw(&p);
        let mut b = vec![0u8; 4096];
        w2.read_at(&mut b, 0).unwrap();
        assert_eq!(b, pattern(4096, 1));
    }
}
