//! Tests of the TCP transport on loopback: delivery, handshake refusal, the partition
//! filter, reconnection after the peer restarts, and isolation from a dead peer.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::*;
use crate::wire::Body;

fn cfg(id: u64) -> TcpConfig {
    let mut c = TcpConfig::new(id, "c1", "127.0.0.1:0".parse().expect("addr"), 1 << 20);
    c.backoff_min = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(50);
    c
}

fn env(from: u64, to: u64, n: u8) -> Envelope {
    Envelope {
        from,
        to,
        body: Some(Body::Raft(vec![n])),
    }
}

async fn node(id: u64) -> (TcpTransport, mpsc::Receiver<Envelope>) {
    let t = TcpTransport::bind(cfg(id)).await.expect("bind");
    let (inbox, rx) = Inbox::new(64);
    t.attach(inbox);
    (t, rx)
}

async fn recv(rx: &mut mpsc::Receiver<Envelope>) -> Option<Envelope> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .ok()
        .flatten()
}

/// Sends until one arrives (the first sends may race the connection set-up).
async fn send_until_received(
    t: &TcpTransport,
    rx: &mut mpsc::Receiver<Envelope>,
    e: Envelope,
) -> Envelope {
    for _ in 0..200 {
        t.send(e.clone());
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(25), rx.recv()).await {
            return got;
        }
    }
    panic!("nothing delivered");
}

#[tokio::test]
async fn delivers_in_order_between_two_nodes() {
    let (a, _arx) = node(1).await;
    let (b, mut brx) = node(2).await;
    a.set_peer(2, Some(b.local_addr().to_string()));
    let first = send_until_received(&a, &mut brx, env(1, 2, 0)).await;
    assert_eq!(first.from, 1);
    for n in 1..=50 {
        a.send(env(1, 2, n));
    }
    let mut last = 0;
    while last < 50 {
        let e = recv(&mut brx).await.expect("delivered");
        let Some(Body::Raft(v)) = e.body else {
            panic!("body")
        };
        if v[0] == 0 {
            continue;
        }
        assert_eq!(v[0], last + 1, "in order");
        last = v[0];
    }
    assert!(a.stats().sent.load(Ordering::Relaxed) >= 51);
    a.shutdown();
    b.shutdown();
}

#[tokio::test]
async fn refuses_wrong_cluster_and_spoofed_sender() {
    let (b, mut brx) = node(2).await;
    // Wrong cluster id.
    let mut s = TcpStream::connect(b.local_addr()).await.expect("connect");
    let mut other = cfg(1);
    other.cluster_id = "another".into();
    write_hello(&mut s, &other, 2).await.expect("hello");
    write_frame(&mut s, &env(1, 2, 1).encode_to_vec())
        .await
        .expect("frame");
    s.flush().await.expect("flush");
    // Right cluster, but an envelope claiming another sender.
    let mut s2 = TcpStream::connect(b.local_addr()).await.expect("connect");
    write_hello(&mut s2, &cfg(1), 2).await.expect("hello");
    write_frame(&mut s2, &env(3, 2, 1).encode_to_vec())
        .await
        .expect("frame");
    s2.flush().await.expect("flush");
    // Garbage instead of a hello.
    let mut s3 = TcpStream::connect(b.local_addr()).await.expect("connect");
    s3.write_all(&[0, 0, 0, 3, 1, 2, 3]).await.expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), brx.recv())
            .await
            .is_err(),
        "nothing must be delivered"
    );
    assert!(b.stats().rejected.load(Ordering::Relaxed) >= 2);
    assert!(check_hello(b"\x00", "c1", 2).is_err());
    b.shutdown();
}

#[tokio::test]
async fn partition_filter_and_reconnect_after_restart() {
    let (a, _arx) = node(1).await;
    let (b, mut brx) = node(2).await;
    let addr = b.local_addr();
    a.set_peer(2, Some(addr.to_string()));
    send_until_received(&a, &mut brx, env(1, 2, 1)).await;
    a.block(2);
    a.send(env(1, 2, 2));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), brx.recv())
            .await
            .is_err()
    );
    assert_eq!(a.stats().dropped_blocked.load(Ordering::Relaxed), 1);
    a.unblock_all();

    // The peer goes away and comes back on the same address.
    b.shutdown();
    drop(brx);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for n in 0..20 {
        a.send(env(1, 2, n));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut c2 = cfg(2);
    c2.listen = addr;
    let b2 = TcpTransport::bind(c2).await.expect("rebind");
    let (inbox, mut rx2) = Inbox::new(64);
    b2.attach(inbox);
    send_until_received(&a, &mut rx2, env(1, 2, 9)).await;
    assert!(a.stats().connects.load(Ordering::Relaxed) >= 2);
    a.shutdown();
    b2.shutdown();
}

#[tokio::test]
async fn a_dead_peer_does_not_block_the_others() {
    let (a, _arx) = node(1).await;
    let (c, mut crx) = node(3).await;
    // Peer 2 accepts connections but never reads: its socket buffer fills up.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            keep.push(s);
        }
    });
    a.set_peer(2, Some(silent_addr.to_string()));
    a.set_peer(3, Some(c.local_addr().to_string()));
    send_until_received(&a, &mut crx, env(1, 3, 0)).await;
    let big = Envelope {
        from: 1,
        to: 2,
        body: Some(Body::Raft(vec![7; 60_000])),
    };
    for _ in 0..10_000 {
        a.send(big.clone());
    }
    // Peer 3 still gets its traffic promptly.
    for n in 1..=20u8 {
        a.send(env(1, 3, n));
    }
    let mut seen = 0;
    while seen < 20 {
        let e = recv(&mut crx).await.expect("peer 3 not starved");
        if let Some(Body::Raft(v)) = e.body
            && v[0] > 0
        {
            seen += 1;
        }
    }
    assert!(
        a.stats().dropped_full.load(Ordering::Relaxed) > 0,
        "full queue drops"
    );
    hold.abort();
    a.shutdown();
    c.shutdown();
}

fn tls(dir: &std::path::Path, id: u64) -> PeerSecurity {
    let p = csv_tls::pki::node_paths(dir, id);
    let ca = csv_tls::pki::ca_cert_path(dir);
    PeerSecurity::Tls(std::sync::Arc::new(
        csv_tls::NodeTls::load(id, &ca, &p.cert, &p.key).expect("load"),
    ))
}

async fn tls_node(sec: PeerSecurity, id: u64) -> (TcpTransport, mpsc::Receiver<Envelope>) {
    let mut c = cfg(id);
    c.security = sec;
    let t = TcpTransport::bind(c).await.expect("bind");
    let (inbox, rx) = Inbox::new(64);
    t.attach(inbox);
    (t, rx)
}

/// Mutual TLS: nodes of the cluster CA exchange envelopes; a node whose certificate
/// comes from another CA, or a node of the CA sending as someone else, or a plaintext
/// peer, never gets an envelope delivered.
#[tokio::test]
async fn mutual_tls_admits_the_clusters_nodes_only() {
    let (ours, theirs) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    for d in [ours.path(), theirs.path()] {
        csv_tls::pki::init_ca(d, "test", 30).expect("ca");
        for id in 1..=3 {
            csv_tls::pki::issue_node(d, id, &[], 30).expect("issue");
        }
    }
    let (a, _arx) = tls_node(tls(ours.path(), 1), 1).await;
    let (b, mut brx) = tls_node(tls(ours.path(), 2), 2).await;
    a.set_peer(2, Some(b.local_addr().to_string()));
    let got = send_until_received(&a, &mut brx, env(1, 2, 7)).await;
    assert_eq!(got.from, 1);

    // Node 3 of another CA.
    let (x, _xrx) = tls_node(tls(theirs.path(), 3), 3).await;
    // Node 3's certificate from our CA, but the transport claims to be node 1 (its
    // hello and envelopes say 1).
    let (y, _yrx) = tls_node(tls(ours.path(), 3), 1).await;
    // No TLS at all.
    let (z, _zrx) = tls_node(PeerSecurity::Plaintext, 3).await;
    let before = b.stats().rejected.load(Ordering::Relaxed);
    for (t, from) in [(&x, 3), (&y, 1), (&z, 3)] {
        t.set_peer(2, Some(b.local_addr().to_string()));
        for n in 0..20 {
            t.send(env(from, 2, 100 + n));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(e) = brx.try_recv() {
        let Some(Body::Raft(v)) = &e.body else {
            continue;
        };
        assert!(
            v[0] < 100,
            "an envelope of an intruder was delivered: {e:?}"
        );
    }
    let rejected = b.stats().rejected.load(Ordering::Relaxed) - before;
    assert!(rejected >= 3, "{rejected} connections refused");
    for t in [a, b, x, y, z] {
        t.shutdown();
    }
}
