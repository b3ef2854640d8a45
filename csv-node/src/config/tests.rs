use super::*;

const MIN: &str = r#"
[node]
id = 3
[cluster]
listen = "127.0.0.1:7401"
[paths]
data_dir = "/var/lib/csv"
[tls]
ca = "/etc/csv/tls/ca.pem"
cert = "/etc/csv/tls/node-3.pem"
key = "/etc/csv/tls/node-3.key"
"#;

/// The test-bed form: no certificates.
const PLAIN: &str = r#"
[node]
id = 3
[cluster]
listen = "127.0.0.1:7401"
[paths]
data_dir = "/var/lib/csv"
[tls]
plaintext = true
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = NodeConfig::parse(MIN).expect("valid");
    assert_eq!(c.node.id, 3);
    assert_eq!(c.advertise(), "127.0.0.1:7401");
    assert_eq!(c.admin_socket(), PathBuf::from("/var/lib/csv/admin.sock"));
    assert_eq!(c.raft.tick.0, Duration::from_millis(100));
    let m = c.meta_config(csv_api::ClusterId::random(), vec![3]);
    m.validate().expect("meta config valid");
}

/// The LUN call bound is derived from the lease (half its margin) and may not exceed
/// it: a write must land within the margin of its fence check (docs/design/042 §4).
#[test]
fn volume_io_timeout_is_bounded_by_the_lease_margin() {
    let c = NodeConfig::parse(&format!("{MIN}[volume]\nlun = \"/dev/x\"\n")).expect("valid");
    let margin = c.lease.timing().expect("timing").io_timeout;
    let v = c.volume.as_ref().expect("volume");
    assert_eq!(v.io_timeout(margin), margin / 2);
    assert!(margin / 2 < Duration::from_secs(1), "{margin:?}");
    let ok = format!("{MIN}[volume]\nlun = \"/dev/x\"\nio_timeout = \"500ms\"\n");
    let c = NodeConfig::parse(&ok).expect("within the margin");
    assert_eq!(
        c.volume.as_ref().expect("volume").io_timeout(margin),
        Duration::from_millis(500)
    );
    let e = NodeConfig::parse(&format!(
        "{MIN}[volume]\nlun = \"/dev/x\"\nio_timeout = \"5s\"\n"
    ))
    .expect_err("above the margin");
    assert!(
        matches!(&e, ConfigError::Invalid { field, .. } if *field == "volume.io_timeout"),
        "{e}"
    );
    // A longer outage budget allows a longer bound.
    NodeConfig::parse(&format!(
        "{MIN}[lease]\noutage_budget = \"60s\"\n[volume]\nlun = \"/dev/x\"\nio_timeout = \"5s\"\n"
    ))
    .expect("60 s budget: margin 14 s");
}

#[test]
fn the_example_file_is_valid() {
    let text = include_str!("../../node.example.toml");
    NodeConfig::parse(text).expect("node.example.toml parses and validates");
}

#[test]
fn bad_values_get_typed_errors() {
    let cases = [
        (MIN.replace("id = 3", "id = 0"), "node.id"),
        (MIN.replace(":7401", ":0"), "cluster.listen"),
        (
            MIN.replace("127.0.0.1:7401", "0.0.0.0:7401"),
            "cluster.advertise",
        ),
        (MIN.replace("/var/lib/csv", "relative"), "paths.data_dir"),
        (format!("{MIN}[raft]\ntick = \"100\"\n"), "parse"),
        (format!("{MIN}[raft]\ntick = \"1d\"\n"), "parse"),
        (
            format!("{MIN}[raft]\nheartbeat_ticks = 20\n"),
            "raft/limits",
        ),
        (
            format!("{MIN}[admin]\nmax_connections = 0\n"),
            "admin.max_connections",
        ),
        (format!("{MIN}[bogus]\nx = 1\n"), "parse"),
        (MIN.replace("cert = ", "# cert = "), "tls"),
        (
            MIN.replace("[tls]", "[tls]\nplaintext = true"),
            "tls.plaintext",
        ),
        (MIN.replace("/etc/csv/tls/ca.pem", "ca.pem"), "tls.ca"),
        (
            format!("{PLAIN}[volume]\nlun = \"/dev/x\"\nnbd_listen = \"127.0.0.1:10809\"\n"),
            "tls.nbd",
        ),
        (format!("{MIN}nbd = \"maybe\"\n"), "parse"),
        (
            format!("{MIN}[raft]\ncompact_threshold = 10\nkeep_entries = 10\n"),
            "raft/limits",
        ),
    ];
    for (text, want) in cases {
        let e = NodeConfig::parse(&text).expect_err(want);
        match (&e, want) {
            (ConfigError::Parse { .. }, "parse") => {}
            (ConfigError::Invalid { field, .. }, w) => assert_eq!(*field, w, "{e}"),
            _ => panic!("{want}: unexpected {e}"),
        }
    }
    assert_eq!("250ms".parse::<Dur>(), Ok(Dur(Duration::from_millis(250))));
    assert_eq!("2m".parse::<Dur>(), Ok(Dur(Duration::from_secs(120))));
    assert!("x5s".parse::<Dur>().is_err());
}

#[test]
fn metrics_section_is_optional_and_checked() {
    let c = NodeConfig::parse(MIN).expect("valid");
    assert!(c.metrics.listen.is_none(), "off by default");
    let c = NodeConfig::parse(&format!("{MIN}[metrics]\nlisten = \"127.0.0.1:9464\"\n"))
        .expect("valid");
    assert_eq!(
        c.metrics.listen,
        Some("127.0.0.1:9464".parse().expect("addr"))
    );
    for (bad, field) in [
        ("listen = \"127.0.0.1:0\"", "metrics.listen"),
        ("listen = \"127.0.0.1:7401\"", "metrics.listen"),
    ] {
        let e = NodeConfig::parse(&format!("{MIN}[metrics]\n{bad}\n")).expect_err(bad);
        assert!(
            matches!(&e, ConfigError::Invalid { field: f, .. } if *f == field),
            "{bad}: {e}"
        );
    }
    let e = NodeConfig::parse(&format!("{MIN}[metrics]\nlisten = \"nowhere\"\n"))
        .expect_err("not an address");
    assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    let e = NodeConfig::parse(&format!("{MIN}[metrics]\nport = 1\n")).expect_err("unknown");
    assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
}
