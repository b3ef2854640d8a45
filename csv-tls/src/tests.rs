//! Handshakes between real rustls endpoints over loopback with certificates from
//! [`crate::pki`].

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::pki::{self, PkiError};
use crate::{NodeTls, PeerSecurity};

fn node(dir: &Path, id: u64) -> PeerSecurity {
    let p = pki::node_paths(dir, id);
    let t = NodeTls::load(id, &pki::ca_cert_path(dir), &p.cert, &p.key).expect("load");
    PeerSecurity::Tls(Arc::new(t))
}

fn cluster(dir: &Path, ids: &[u64]) {
    pki::init_ca(dir, "test cluster", 30).expect("ca");
    for &id in ids {
        pki::issue_node(dir, id, &["127.0.0.1".into()], 30).expect("issue");
    }
}

/// Dials `server` as `client` towards node `peer`; the acceptor echoes one byte after
/// checking that the dialler is node `claimed`. Returns (dial result, accept result).
async fn exchange(
    client: PeerSecurity,
    server: PeerSecurity,
    peer: u64,
    claimed: u64,
) -> (std::io::Result<u8>, Result<(), String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let acc = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.map_err(|e| e.to_string())?;
        let (mut s, who) = server.accept(tcp).await.map_err(|e| e.to_string())?;
        who.check(claimed).map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        s.write_all(&b).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())
    });
    let dial = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut s = client.connect(tcp, peer).await?;
        s.write_all(&[42]).await?;
        s.flush().await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        Ok(b[0])
    };
    let d = tokio::time::timeout(std::time::Duration::from_secs(5), dial)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("timeout")));
    let a = match tokio::time::timeout(std::time::Duration::from_secs(5), acc).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("accept timeout".into()),
    };
    (d, a)
}

#[tokio::test]
async fn nodes_of_one_ca_talk_and_are_who_they_claim() {
    let d = tempfile::tempdir().expect("tmp");
    cluster(d.path(), &[1, 2]);
    let (dial, acc) = exchange(node(d.path(), 1), node(d.path(), 2), 2, 1).await;
    assert_eq!(dial.expect("dial"), 42);
    acc.expect("accept");
}

#[tokio::test]
async fn a_node_cannot_claim_another_nodes_id() {
    let d = tempfile::tempdir().expect("tmp");
    cluster(d.path(), &[1, 2, 3]);
    // Node 1's certificate, claiming to be node 3.
    let (_, acc) = exchange(node(d.path(), 1), node(d.path(), 2), 2, 3).await;
    let e = acc.expect_err("claim refused");
    assert!(e.contains("not issued to node 3"), "{e}");
}

#[tokio::test]
async fn a_dialler_refuses_a_server_that_is_not_the_node_it_dialled() {
    let d = tempfile::tempdir().expect("tmp");
    cluster(d.path(), &[1, 2, 3]);
    // Node 1 dials "node 3" but node 2 answers.
    let (dial, _) = exchange(node(d.path(), 1), node(d.path(), 2), 3, 1).await;
    let e = dial.expect_err("wrong server refused");
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[tokio::test]
async fn a_certificate_of_another_ca_fails_both_ways() {
    let (a, b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    cluster(a.path(), &[1, 2]);
    cluster(b.path(), &[1, 2]);
    // A stranger's node 1 (other CA) dials our node 2.
    let (dial, acc) = exchange(node(b.path(), 1), node(a.path(), 2), 2, 1).await;
    assert!(dial.is_err() && acc.is_err(), "{dial:?} {acc:?}");
    // Our node 1 dials a stranger's node 2.
    let (dial, acc) = exchange(node(a.path(), 1), node(b.path(), 2), 2, 1).await;
    assert!(dial.is_err() && acc.is_err(), "{dial:?} {acc:?}");
    // A plaintext dialler gets nowhere either.
    // (the byte it reads back is the server's TLS alert, not its echo).
    let (dial, acc) = exchange(PeerSecurity::Plaintext, node(a.path(), 2), 2, 1).await;
    assert!(acc.is_err() && dial.ok() != Some(42), "{acc:?}");
}

#[test]
fn loading_checks_the_certificate_is_the_nodes_and_the_cas() {
    let (a, b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    cluster(a.path(), &[1]);
    cluster(b.path(), &[1]);
    let p = pki::node_paths(a.path(), 1);
    let e = NodeTls::load(2, &pki::ca_cert_path(a.path()), &p.cert, &p.key).expect_err("id");
    assert!(e.to_string().contains("node 2"), "{e}");
    let e = NodeTls::load(1, &pki::ca_cert_path(b.path()), &p.cert, &p.key).expect_err("ca");
    assert!(e.to_string().contains("cluster CA"), "{e}");
    // A client certificate is not a node's.
    let c = pki::issue_client(a.path(), "qemu", 30).expect("client");
    let e = NodeTls::load(1, &pki::ca_cert_path(a.path()), &c.cert, &c.key).expect_err("client");
    assert!(e.to_string().contains("node 1"), "{e}");
    // Garbage files get typed errors.
    let junk = a.path().join("junk.pem");
    std::fs::write(&junk, "not a pem").expect("write");
    assert!(NodeTls::load(1, &junk, &p.cert, &p.key).is_err());
    assert!(NodeTls::load(1, &pki::ca_cert_path(a.path()), &junk, &p.key).is_err());
    assert!(NodeTls::load(1, &pki::ca_cert_path(a.path()), &p.cert, &junk).is_err());
}

#[test]
fn the_pki_never_overwrites_and_checks_its_arguments() {
    let d = tempfile::tempdir().expect("tmp");
    assert!(matches!(
        pki::issue_node(d.path(), 1, &[], 30),
        Err(PkiError::NoCa(_))
    ));
    pki::init_ca(d.path(), "c", 30).expect("ca");
    assert!(matches!(
        pki::init_ca(d.path(), "c", 30),
        Err(PkiError::Exists(_))
    ));
    pki::issue_node(d.path(), 4, &[], 30).expect("node 4");
    assert!(matches!(
        pki::issue_node(d.path(), 4, &[], 30),
        Err(PkiError::Exists(_))
    ));
    for bad in [
        pki::issue_node(d.path(), 0, &[], 30),
        pki::issue_node(d.path(), 5, &["node-1.csv".into()], 30),
        pki::issue_node(d.path(), 5, &["bad host!".into()], 30),
        pki::issue_node(d.path(), 5, &[], 0),
        pki::issue_client(d.path(), "../x", 30),
    ] {
        assert!(matches!(bad, Err(PkiError::Invalid(_))), "{bad:?}");
    }
    use std::os::unix::fs::PermissionsExt as _;
    let key = pki::node_paths(d.path(), 4).key;
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
