//! Bounded scale run of the cluster volume (issue 6): 4 nodes × 100 attached dynamic VHDs
//! on one shared file LUN; every export answers libnbd (size, write + read back, zero
//! block) and an attached idle VHD costs under 1 MiB of node RSS. The full 16 × 1,000
//! run is `scripts/scale-volume`.

use csv_tests::scale::{ScaleOptions, mib, run};

#[test]
fn heavy_four_nodes_serve_a_hundred_attached_vhds_under_a_mib_each() {
    let o = ScaleOptions {
        nodes: 4,
        vhds: 100,
        vhd_size: 64 << 20,
        lun_size: 16 << 30,
        sample: 0,
    };
    let (_vc, r) = run(&o).expect("scale run");
    assert_eq!(r.checked, 100, "every export is checked");
    for n in &r.nodes {
        assert_eq!(n.vhds, 25, "node {} attaches its share", n.id);
        assert!(
            n.per_vhd() < 1024.0 * 1024.0,
            "node {}: {} per attached idle VHD (RSS {} -> {})",
            n.id,
            mib(n.per_vhd()),
            mib(n.rss_before as f64),
            mib(n.rss_after as f64)
        );
    }
}
