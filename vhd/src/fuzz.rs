//! Fuzz entry points, shared by the cargo-fuzz targets (`fuzz/`) and a stable property
//! test. Each takes arbitrary bytes, must never panic, and asserts the round-trip and
//! consistency properties that hold for any input the parsers accept.

use crate::chain::NoParents;
use crate::footer::{DiskType, Footer};
use crate::header::DynamicHeader;
use crate::image::Image;
use crate::locator::{self, LocatorEntry};
use crate::storage::{MemStorage, Storage};
use crate::{bat, bitmap};
use std::sync::Arc;

/// Footer: parse; whatever parses re-encodes to bytes that parse to the same value.
pub fn footer(data: &[u8]) {
    if let Ok(f) = Footer::parse(data) {
        let again = Footer::parse(&f.encode()).expect("encoded footer parses");
        assert_eq!(f, again);
        let _ = f.qemu_size();
    }
}

/// Dynamic header: parse / encode round trip.
pub fn header(data: &[u8]) {
    if let Ok(h) = DynamicHeader::parse(data) {
        let again = DynamicHeader::parse(&h.encode()).expect("encoded header parses");
        assert_eq!(h, again);
        let _ = h.parent_name_string();
        let _ = h.check_covers(u64::MAX);
    }
}

/// Locators: entry parse/encode and path decoding of every platform.
pub fn locators(data: &[u8]) {
    if data.len() < 24 {
        return;
    }
    let e = LocatorEntry::parse(&data[..24]);
    assert_eq!(LocatorEntry::parse(&e.encode()), e);
    let _ = e.validate(0, data.len() as u64);
    let _ = e.data_space_bytes();
    let rest = &data[24..];
    for code in [
        locator::PLATFORM_W2RU,
        locator::PLATFORM_W2KU,
        locator::PLATFORM_MACX,
        locator::PLATFORM_WI2R,
        e.platform_code,
    ] {
        if let Ok(p) = locator::decode_path(0, code, rest) {
            assert!(!p.contains('\\'));
        }
    }
}

/// BAT and bitmap arithmetic: parse/encode round trip, runs consistent with bit reads.
pub fn bat_bitmap(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let entries = u32::from(data[0]) * 4 + u32::from(data[1] % 4);
    let body = &data[2..];
    if let Ok(v) = bat::parse(body, entries) {
        let enc = bat::encode(&v);
        assert_eq!(enc.len() % 512, 0);
        assert_eq!(bat::parse(&enc, entries).expect("encoded BAT parses"), v);
    }
    let sectors = (body.len() * 8) as u32;
    let mut bm = body.to_vec();
    let runs = bitmap::runs(&bm, 0, sectors);
    let mut expect = 0;
    for (s0, s1, v) in runs {
        assert_eq!(s0, expect);
        assert!(s1 > s0);
        assert!((s0..s1).all(|i| bitmap::get(&bm, i) == v));
        expect = s1;
    }
    assert_eq!(expect, sectors);
    if sectors > 0 {
        let a = u32::from(data[0]) % sectors;
        let b = a + (u32::from(data[1]) % (sectors - a + 1));
        bitmap::set_range(&mut bm, a, b);
        assert!(bitmap::all_set(&bm, a, b));
    }
}

/// Largest block size for which the whole-image target also writes (bounds memory).
const FUZZ_WRITE_BLOCK_LIMIT: u32 = 4 << 20;

/// Whole image: open the bytes as an image (no parents), read a few ranges, block
/// status, then on success write a pattern, flush, reopen and read it back. Done twice:
/// on the bytes as given, and with the footer and header checksums recomputed, so that
/// mutated fields reach the checks behind the checksums (a fuzzer rarely guesses one).
pub fn open_image(data: &[u8]) {
    open_image_bytes(data);
    let mut fixed = data.to_vec();
    if fix_checksums(&mut fixed) {
        open_image_bytes(&fixed);
    }
}

/// Recomputes the checksums of both footer copies and of the dynamic header they point
/// at; false when there is nothing to fix.
fn fix_checksums(b: &mut [u8]) -> bool {
    use crate::footer::FOOTER_SIZE;
    use crate::header::HEADER_SIZE;
    let len = b.len();
    if len < FOOTER_SIZE {
        return false;
    }
    let mut header_at = None;
    for at in [len - FOOTER_SIZE, 0] {
        let f = &mut b[at..at + FOOTER_SIZE];
        if f[..8] != crate::footer::FOOTER_COOKIE {
            continue;
        }
        f[64..68].fill(0);
        let c = crate::checksum::checksum(f, 64);
        f[64..68].copy_from_slice(&c.to_be_bytes());
        let mut off = [0u8; 8];
        off.copy_from_slice(&f[16..24]);
        header_at = header_at.or(Some(u64::from_be_bytes(off)));
    }
    let Some(h) = header_at.and_then(|h| usize::try_from(h).ok()) else {
        return false;
    };
    if let Some(hdr) = h.checked_add(HEADER_SIZE).and_then(|end| b.get_mut(h..end)) {
        hdr[36..40].fill(0);
        let c = crate::checksum::checksum(hdr, 36);
        hdr[36..40].copy_from_slice(&c.to_be_bytes());
    }
    true
}

fn open_image_bytes(data: &[u8]) {
    let storage = Arc::new(MemStorage::from_vec(data.to_vec()));
    let Ok(img) = Image::open_storage(storage.clone(), false, "fuzz", &NoParents) else {
        return;
    };
    let size = img.virtual_size();
    let mut buf = vec![0u8; 64 * 1024];
    for off in [0, size / 2, size.saturating_sub(buf.len() as u64)] {
        let n = (size - off.min(size)).min(buf.len() as u64) as usize;
        img.read_at(&mut buf[..n], off)
            .expect("in-range read of an opened image");
    }
    if let Ok(ext) = img.block_status(0, size) {
        assert_eq!(ext.iter().map(|e| e.length).sum::<u64>(), size);
    }
    let _ = crate::check::check_image(&img);
    if size < 4096 || img.block_size().is_some_and(|b| b > FUZZ_WRITE_BLOCK_LIMIT) {
        return;
    }
    let pattern: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 + 1).collect();
    let off = (size / 3) & !511;
    if img.write_at(&pattern, off + 7).is_err() {
        return;
    }
    if img.flush().is_err() {
        return;
    }
    let is_fixed = img.disk_type() == DiskType::Fixed;
    drop(img);
    let again =
        Image::open_storage(storage.clone(), true, "fuzz", &NoParents).expect("reopen after write");
    let mut back = vec![0u8; pattern.len()];
    again.read_at(&mut back, off + 7).expect("read back");
    assert_eq!(back, pattern, "fixed={is_fixed}");
    let _ = storage.len();
}
