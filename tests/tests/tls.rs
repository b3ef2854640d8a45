//! Mutual TLS between the nodes (issue 16) with real processes: a cluster whose nodes
//! hold certificates of one CA forms and replicates; a node whose certificate comes from
//! another CA is added but never joins, and a connection presenting such a certificate
//! (or none) is refused before a frame is read.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use csv_tests::{Cluster, Options};
use csv_tls::pki;

/// A meta-store hello frame (length-prefixed protobuf) from `from` to `to`.
fn hello_frame(cluster: &str, from: u64, to: u64) -> Vec<u8> {
    use prost::Message as _;
    let h = hello(cluster, from, to).encode_to_vec();
    let mut f = (h.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&h);
    f
}

/// "CSVm", meta-store's `HELLO_MAGIC`.
const HELLO_MAGIC: u32 = 0x4353_566d;

/// meta-store's `Hello` (its wire fields and tags), encoded here so that the test binary
/// does not link the metadata store.
#[derive(Clone, PartialEq, prost::Message)]
struct Hello {
    #[prost(fixed32, tag = "1")]
    magic: u32,
    #[prost(uint32, tag = "2")]
    version: u32,
    #[prost(string, tag = "3")]
    cluster_id: String,
    #[prost(uint64, tag = "4")]
    from: u64,
    #[prost(uint64, tag = "5")]
    to: u64,
    #[prost(string, tag = "6")]
    from_addr: String,
}

fn hello(cluster: &str, from: u64, to: u64) -> Hello {
    Hello {
        magic: HELLO_MAGIC,
        version: 1,
        cluster_id: cluster.into(),
        from,
        to,
        from_addr: "127.0.0.1:1".into(),
    }
}

/// Dials `addr` as a TLS client trusting `ca` and presenting `cert`/`key`, expecting the
/// server to be node `node`; sends a hello and reads. Returns what the read gave.
fn tls_dial(
    addr: std::net::SocketAddr,
    node: u64,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    frame: &[u8],
) -> std::io::Result<usize> {
    let cfg = csv_tls::pem::client_config(ca, Some((cert, key))).map_err(std::io::Error::other)?;
    let name = rustls::pki_types::ServerName::try_from(csv_tls::node_name(node))
        .map_err(std::io::Error::other)?;
    let conn =
        rustls::ClientConnection::new(Arc::clone(&cfg), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(frame)?;
    tls.flush()?;
    let mut buf = [0u8; 64];
    tls.read(&mut buf)
}

#[test]
fn a_tls_cluster_forms_and_a_node_of_another_ca_cannot_join_or_send_a_frame() {
    let mut c = Cluster::new(
        3,
        Options {
            tls: true,
            ..Options::default()
        },
    );
    c.bootstrap();
    let leader = c.wait_leader();
    c.set_volume(leader, 64);
    let applied = c.wait_converged(&[1, 2, 3]);
    assert!(applied > 0);
    let cluster_id = c.status(1).expect("status").cluster_id;

    // Node 4 with a CA, certificate and key of its own world.
    let stranger = tempfile::tempdir().expect("dir");
    pki::init_ca(stranger.path(), "another cluster", 30).expect("ca");
    let foreign = pki::issue_node(stranger.path(), 4, &[], 30).expect("issue");
    c.prepare(4);
    let conf = c.nodes[&4].dir.join("node.toml");
    let text = std::fs::read_to_string(&conf).expect("config");
    let ours = c.pki().display().to_string();
    std::fs::write(
        &conf,
        text.replace(&ours, &stranger.path().display().to_string()),
    )
    .expect("rewrite");
    c.start(4);
    let addr4 = c.nodes[&4].addr.to_string();
    c.client(leader)
        .node_add(4, &addr4, true)
        .expect("the membership change itself commits");
    // The leader dials node 4 with every retry; node 4 never hears a hello it trusts.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let st = c.status(4).expect("node 4 answers its admin socket");
        assert_eq!(st.node_state, "uninitialized", "node 4 joined: {st:?}");
        std::thread::sleep(Duration::from_millis(250));
    }

    // A frame sent with the stranger's certificate to node 1 (the dialler trusts our
    // CA, so only node 1's check can stop it): refused in the handshake.
    let our_ca = pki::ca_cert_path(&c.pki());
    let addr1 = c.nodes[&1].addr;
    let frame = hello_frame(&cluster_id, 4, 1);
    let r = tls_dial(addr1, 1, &our_ca, &foreign.cert, &foreign.key, &frame);
    assert!(
        // node 1 answers with the alert "unknown CA".
        r.as_ref()
            .is_err_and(|e| format!("{e:?}").contains("UnknownCA")),
        "a foreign certificate got through: {r:?}"
    );
    // Node 2's genuine certificate claiming to be node 3: the hello is refused and the
    // connection closed without an answer.
    let n2 = pki::node_paths(&c.pki(), 2);
    let r = tls_dial(
        addr1,
        1,
        &our_ca,
        &n2.cert,
        &n2.key,
        &hello_frame(&cluster_id, 3, 1),
    );
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    // Plaintext: the bytes are not TLS; no hello is read.
    let mut tcp = TcpStream::connect(addr1).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    tcp.write_all(&frame).expect("write");
    let mut buf = [0u8; 64];
    let n = tcp.read(&mut buf).unwrap_or(0);
    // At most a TLS alert comes back (content type 21), never data.
    assert!(
        n == 0 || buf[0] == 21,
        "plaintext answered: {:?}",
        &buf[..n]
    );

    // The cluster is unharmed and still replicating over TLS.
    c.set_volume(c.wait_leader_among(&[1, 2, 3], csv_tests::PATIENCE), 128);
    c.wait_converged(&[1, 2, 3]);
    let log1 = c.log(1);
    assert!(!log1.contains("panicked"), "{log1}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

fn nbdinfo(uri: &str) -> std::process::Output {
    std::process::Command::new("nbdinfo")
        .args(["--size", uri])
        .output()
        .expect("nbdinfo (package libnbd-bin)")
}

/// NBD over TCP on a node with `[tls]` certificates requires TLS and a client
/// certificate of the cluster CA (`csvadm cluster certs issue-client`); libnbd's nbdinfo
/// and qemu-img are the clients. Plaintext and certificate-less clients are refused.
#[test]
fn nbd_over_tcp_requires_tls_and_a_client_certificate_of_the_cluster_ca() {
    use csv_tests::volume::{VolumeCluster, cluster_on_lun_with};
    let port = free_port();
    let lun_dir = tempfile::tempdir().expect("dir");
    let lun = lun_dir.path().join("lun.img");
    std::fs::File::create(&lun)
        .and_then(|f| f.set_len(1 << 30))
        .expect("LUN");
    let toml = format!("[volume]\nlun = \"{{lun}}\"\nnbd_listen = \"127.0.0.1:{port}\"\n");
    let c = cluster_on_lun_with(1, &lun, &toml, true);
    let vc = VolumeCluster::format_on(c, lun, lun_dir);
    vc.ok(1, &["vhd", "create", "m", "--size", "64M"]);
    vc.ok(1, &["vhd", "attach", "m"]);

    // The client's certificate directory in the layout libnbd and qemu read.
    let certs = tempfile::tempdir().expect("certs");
    let ca = pki::ca_cert_path(&vc.c.pki());
    std::fs::copy(&ca, certs.path().join("ca-cert.pem")).expect("ca");
    let only_ca = tempfile::tempdir().expect("ca only");
    std::fs::copy(&ca, only_ca.path().join("ca-cert.pem")).expect("ca");
    let client = pki::issue_client(&vc.c.pki(), "qemu", 30).expect("client");
    std::fs::copy(&client.cert, certs.path().join("client-cert.pem")).expect("cert");
    std::fs::copy(&client.key, certs.path().join("client-key.pem")).expect("key");

    let ok = nbdinfo(&format!(
        "nbds://127.0.0.1:{port}/m?tls-certificates={}",
        certs.path().display()
    ));
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "67108864");
    let plain = nbdinfo(&format!("nbd://127.0.0.1:{port}/m"));
    assert!(!plain.status.success(), "plaintext was served: {plain:?}");
    let anon = nbdinfo(&format!(
        "nbds://127.0.0.1:{port}/m?tls-certificates={}",
        only_ca.path().display()
    ));
    assert!(
        !anon.status.success(),
        "no client certificate, served: {anon:?}"
    );

    // qemu-img writes and reads through TLS with the same credentials.
    let obj = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        certs.path().display()
    );
    let target = format!("driver=nbd,host=127.0.0.1,port={port},export=m,tls-creds=tls0");
    let io = std::process::Command::new("qemu-io")
        .args(["--object", &obj, "--image-opts", &target])
        .args(["-c", "write -P 0x5a 1M 1M", "-c", "read -P 0x5a 1M 1M"])
        .output()
        .expect("qemu-io (package qemu-utils)");
    let out = String::from_utf8_lossy(&io.stdout);
    assert!(
        io.status.success() && !out.contains("fail") && !out.contains("Pattern verification"),
        "{io:?}"
    );
}

/// `scripts/local-cluster start 3 DIR --tls`: three nodes on mutual TLS with their
/// metrics endpoints on; each endpoint's text parses as OpenMetrics (Python's
/// prometheus_client parser) and says the cluster has one leader.
#[test]
fn the_local_cluster_script_runs_three_nodes_on_tls_with_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("dir");
    let bins = csv_tests::binary("csv-node");
    let bin_dir = bins.parent().expect("bin dir");
    let script = root.join("scripts/local-cluster");
    let run = |args: &[&str]| {
        std::process::Command::new(&script)
            .args(args)
            .env("CSV_BIN_DIR", bin_dir)
            .env("CSV_LUN_SIZE", "2G")
            .env("CSV_STOP_TIMEOUT", "5s")
            .output()
            .expect("local-cluster")
    };
    let d = dir.path().to_str().expect("utf-8");
    let out = run(&["start", "3", d, "--tls"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stopped = scopeguard(|| {
        run(&["stop", d]);
    });
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut leaders = 0.0;
    for id in 1..=3 {
        let conf =
            std::fs::read_to_string(dir.path().join(format!("{id}/node.toml"))).expect("config");
        assert!(
            conf.contains("node-") && !conf.contains("plaintext = true"),
            "{conf}"
        );
        let url = text
            .lines()
            .find(|l| l.starts_with(&format!("node {id}:")))
            .and_then(|l| l.split("metrics: ").nth(1))
            .map(|u| u.trim_end_matches(')').to_string())
            .expect("metrics address printed");
        let parse = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "curl -sf {url} | /usr/bin/python3 -c '{}'",
                "import sys; from prometheus_client.openmetrics.parser import text_string_to_metric_families as p; \
                 print(sum(s.value for f in p(sys.stdin.read()) if f.name == \"csv_raft_is_leader\" for s in f.samples))"
            ))
            .output()
            .expect("curl | python3");
        assert!(parse.status.success(), "{url}: {parse:?}");
        leaders += String::from_utf8_lossy(&parse.stdout)
            .trim()
            .parse::<f64>()
            .expect("a number");
    }
    assert_eq!(leaders, 1.0, "one leader among the three endpoints");
    drop(stopped);
}

/// Runs `f` when dropped (the cluster is stopped even when an assertion fails).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
