//! The heartbeat probe of a node's own LUN path (docs/design/070 §3.1): the node writes
//! its heartbeat sector (4 KiB at `4 KiB × node id`, in the unused space between the
//! superblock and the checkpoint region) and reads it back. Only that node writes that
//! sector, so the probe needs no fence. A node id without a sector there (above the
//! region's 255 slots, or a volume formatted with a smaller checkpoint offset) probes
//! by reading the superblock.

use volume::path::{Op, PathError};
use volume::{Layout, LunPath};

/// Bytes of one heartbeat sector.
pub(crate) const SECTOR: u64 = 4096;
const MAGIC: &[u8; 8] = b"CSVHBEAT";

/// Where node `node`'s heartbeat sector is, if the layout has one for it.
pub(crate) fn slot_offset(node: u64, layout: &Layout) -> Option<u64> {
    let off = node.checked_mul(SECTOR)?;
    (node >= 1 && off.checked_add(SECTOR)? <= layout.checkpoint_offset).then_some(off)
}

/// The sector node `node` writes at probe `counter`: magic, node, counter, crc32c of
/// the 24 bytes before it, zeros.
pub(crate) fn sector(node: u64, counter: u64) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR as usize];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&node.to_le_bytes());
    b[16..24].copy_from_slice(&counter.to_le_bytes());
    let crc = crc32c::crc32c(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// One probe (blocking, bounded by the path's call bound): write, then read back.
pub(crate) fn probe(
    lun: &dyn LunPath,
    node: u64,
    counter: u64,
    layout: &Layout,
) -> Result<(), PathError> {
    let Some(off) = slot_offset(node, layout) else {
        let mut b = vec![0u8; SECTOR as usize];
        return lun.read_at(&mut b, 0);
    };
    let want = sector(node, counter);
    lun.write_at(&want, off)?;
    let mut got = vec![0u8; SECTOR as usize];
    lun.read_at(&mut got, off)?;
    if got != want {
        return Err(PathError::media(
            &lun.describe(),
            Op::Read,
            off,
            "the heartbeat sector read back differs from what was written",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_sit_between_the_superblock_and_the_checkpoints() {
        let l = Layout::plan(4 << 30, 64 << 20, 64 << 20).expect("layout");
        assert_eq!(slot_offset(0, &l), None);
        assert_eq!(slot_offset(1, &l), Some(4096));
        assert_eq!(slot_offset(255, &l), Some(255 * 4096));
        assert_eq!(slot_offset(256, &l), None);
        assert_eq!(slot_offset(u64::MAX, &l), None);
        assert!(255 * SECTOR + SECTOR <= l.checkpoint_offset);
    }

    #[test]
    fn a_probe_writes_its_own_sector_only() {
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("lun");
        std::fs::File::create(&f)
            .and_then(|x| x.set_len(4 << 30))
            .expect("lun");
        let p = volume::FilePath::open(&f, volume::FileOptions::default()).expect("open");
        let l = Layout::plan(4 << 30, 64 << 20, 64 << 20).expect("layout");
        probe(&p, 7, 1, &l).expect("probe");
        probe(&p, 7, 2, &l).expect("probe");
        let mut b = vec![0u8; 8 * SECTOR as usize];
        p.read_at(&mut b, 0).expect("read");
        assert!(b[..7 * SECTOR as usize].iter().all(|x| *x == 0));
        assert_eq!(&b[7 * SECTOR as usize..], &sector(7, 2)[..]);
        probe(&p, 1000, 3, &l).expect("a node without a sector reads the superblock");
    }
}
