use std::time::Duration;

use nbd::server::RequestKind;

use super::*;

/// Every family is in the text with its OpenMetrics type and the `csv_` prefix once it
/// has a series (a labelled family has none before its first use), and the text ends
/// with `# EOF`.
#[test]
fn encoding_names_every_family() {
    let m = Metrics::new();
    m.proposal(true, Duration::from_millis(3));
    m.fence_closed("lease_lapse", 1);
    m.nbd_observer("x")
        .completed(RequestKind::Read, 1, Duration::ZERO, true);
    let state = StateLabel { state: "direct" };
    m.data.path_state.get_or_create(&state).set(1);
    m.data.extents.get_or_create(&state).set(1);
    m.vm.vms.get_or_create(&state).set(1);
    m.lease
        .renewals
        .get_or_create(&ResultLabel {
            result: "confirmed",
        })
        .inc();
    m.vm.migrations
        .get_or_create(&MigrationLabels {
            kind: "live",
            result: "completed",
        })
        .inc();
    let t = m.encode().expect("encode");
    for (name, kind) in [
        ("csv_nbd_requests", "counter"),
        ("csv_nbd_bytes", "counter"),
        ("csv_nbd_request_duration_seconds", "histogram"),
        ("csv_lease_renewals", "counter"),
        ("csv_lease_renewal_lag_seconds", "histogram"),
        ("csv_fence_closures", "counter"),
        ("csv_raft_term", "gauge"),
        ("csv_raft_apply_lag_entries", "gauge"),
        ("csv_raft_proposals", "counter"),
        ("csv_raft_proposal_duration_seconds", "histogram"),
        ("csv_path_state", "gauge"),
        ("csv_redirected_bytes", "counter"),
        ("csv_volume_extents", "gauge"),
        ("csv_vhds_attached", "gauge"),
        ("csv_vms", "gauge"),
        ("csv_migrations", "counter"),
        ("csv_migration_downtime_seconds", "histogram"),
    ] {
        assert!(
            t.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind} missing in:\n{t}"
        );
    }
    assert!(
        t.contains("csv_raft_proposals_total{result=\"committed\"} 1\n"),
        "{t}"
    );
    assert!(
        t.contains("csv_fence_closures_total{reason=\"lease_lapse\"} 1\n"),
        "{t}"
    );
    assert!(t.ends_with("# EOF\n"), "{t}");
}

/// An export's observer counts requests, errors and bytes per op, and times them.
#[test]
fn nbd_observer_counts_per_export_and_op() {
    let m = Metrics::new();
    let o = m.nbd_observer("disk0");
    o.completed(RequestKind::Write, 4096, Duration::from_micros(80), true);
    o.completed(RequestKind::Write, 8192, Duration::from_micros(120), true);
    o.completed(RequestKind::Read, 512, Duration::from_millis(2), false);
    o.completed(RequestKind::Flush, 0, Duration::from_millis(1), true);
    let t = m.encode().expect("encode");
    for line in [
        "csv_nbd_requests_total{export=\"disk0\",op=\"write\"} 2\n",
        "csv_nbd_bytes_total{export=\"disk0\",op=\"write\"} 12288\n",
        "csv_nbd_request_errors_total{export=\"disk0\",op=\"read\"} 1\n",
        "csv_nbd_requests_total{export=\"disk0\",op=\"flush\"} 1\n",
        "csv_nbd_request_duration_seconds_count{export=\"disk0\",op=\"write\"} 2\n",
        "csv_nbd_request_duration_seconds_bucket{le=\"0.0001\",export=\"disk0\",op=\"write\"} 1\n",
    ] {
        assert!(t.contains(line), "{line:?} missing in:\n{t}");
    }
    // Only the ops that were used have series.
    assert!(!t.contains("op=\"trim\""), "{t}");
    // A second observer of the same export shares its series (a re-attach counts on).
    m.nbd_observer("disk0")
        .completed(RequestKind::Write, 1, Duration::ZERO, true);
    let t = m.encode().expect("encode");
    assert!(
        t.contains("csv_nbd_requests_total{export=\"disk0\",op=\"write\"} 3\n"),
        "{t}"
    );
}
