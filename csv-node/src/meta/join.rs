//! Joining: an uninitialised node listens on its cluster address until a leader that
//! added it connects. The leader's transport opens with a `Hello{cluster_id, from, to}`;
//! a hello addressed to this node (and, when configured, naming the expected cluster)
//! tells the node which cluster it joins and, through `from_addr`, where the leader
//! listens. The node then closes this listener and starts its metadata store on the same
//! address with that leader as its one known peer (it must be able to answer the leader
//! before the snapshot that carries the whole address book arrives); the leader's
//! transport reconnects (backoff ≤ 1 s) and brings the empty store up by snapshot.

use std::net::SocketAddr;
use std::time::Duration;

use csv_api::ClusterId;
use csv_tls::PeerSecurity;
use prost::Message as _;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Largest hello accepted (meta-store's hello is far smaller).
const MAX_HELLO: usize = 1024;
/// Deadline of a hello on a new connection.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections examined at once.
const MAX_PENDING: usize = 16;

/// Why a hello was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Not a meta-store hello.
    #[error("not a cluster hello: {0}")]
    Malformed(String),
    /// Addressed to another node.
    #[error("hello addressed to node {0}")]
    OtherNode(u64),
    /// From another cluster than the configured one.
    #[error("hello from cluster {0}, not the configured one")]
    OtherCluster(String),
    /// The sender's certificate is not the node its hello names.
    #[error("{0}")]
    NotThePeer(String),
}

/// Checks a hello frame; returns the cluster to join.
/// What an accepted hello tells a joining node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// The cluster to join.
    pub cluster: ClusterId,
    /// The node that dialled (the leader that added this node).
    pub from: u64,
    /// Where that node listens.
    pub from_addr: String,
}

/// Longest `from_addr` accepted (a host name plus port).
const MAX_ADDR: usize = 300;

pub fn check_hello(
    frame: &[u8],
    me: u64,
    expected: Option<ClusterId>,
) -> Result<Invitation, HelloError> {
    let h =
        meta_store::wire::Hello::decode(frame).map_err(|e| HelloError::Malformed(e.to_string()))?;
    if h.magic != meta_store::wire::HELLO_MAGIC
        || h.version != meta_store::wire::PROTOCOL_VERSION
        || h.from == 0
        || h.from == me
    {
        return Err(HelloError::Malformed(format!(
            "magic {:#x} version {} from {}",
            h.magic, h.version, h.from
        )));
    }
    if h.to != me {
        return Err(HelloError::OtherNode(h.to));
    }
    let id: ClusterId = h
        .cluster_id
        .parse()
        .map_err(|_| HelloError::Malformed(format!("cluster id {:?}", h.cluster_id)))?;
    if expected.is_some_and(|e| e != id) {
        return Err(HelloError::OtherCluster(h.cluster_id));
    }
    // host:port with a numeric port; the transport resolves it when it dials.
    let addr_ok = h.from_addr.len() <= MAX_ADDR
        && h.from_addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
    if !addr_ok {
        return Err(HelloError::Malformed(format!(
            "sender address {:?}",
            h.from_addr.chars().take(64).collect::<String>()
        )));
    }
    Ok(Invitation {
        cluster: id,
        from: h.from,
        from_addr: h.from_addr,
    })
}

/// Accepts connections on `listener` until a valid hello arrives; sends its cluster id
/// on `found` and returns (dropping the listener).
pub async fn wait_for_leader(
    listener: TcpListener,
    me: u64,
    expected: Option<ClusterId>,
    security: PeerSecurity,
    found: mpsc::Sender<Invitation>,
) {
    let (tx, mut rx) = mpsc::channel::<Invitation>(1);
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PENDING));
    // Connections being examined end with the listener (dropping the set aborts them).
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        tokio::select! {
            Some(id) = rx.recv() => {
                let _ = found.send(id).await;
                return;
            }
            acc = listener.accept() => {
                let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = match acc {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "join listener accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = sem.clone().try_acquire_owned() else { continue };
                let tx = tx.clone();
                let security = security.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    let r = tokio::time::timeout(HELLO_TIMEOUT, async {
                        // Mutual TLS first: a dialler without a certificate of the
                        // cluster CA never gets its hello read.
                        let (mut s, who) = security.accept(tcp).await?;
                        let mut len = [0u8; 4];
                        s.read_exact(&mut len).await?;
                        let len = u32::from_be_bytes(len) as usize;
                        if len > MAX_HELLO {
                            return Err(std::io::Error::other("hello too large"));
                        }
                        let mut buf = vec![0u8; len];
                        s.read_exact(&mut buf).await?;
                        Ok((buf, who))
                    })
                    .await;
                    match r {
                        Ok(Ok((frame, who))) => match check_hello(&frame, me, expected).and_then(|inv| {
                            who.check(inv.from).map(|()| inv).map_err(|e| HelloError::NotThePeer(e.to_string()))
                        }) {
                            Ok(inv) => {
                                tracing::info!(%peer, cluster = %inv.cluster, leader = inv.from, leader_addr = %inv.from_addr, "contacted by a cluster leader: joining");
                                let _ = tx.try_send(inv);
                            }
                            Err(e) => tracing::warn!(%peer, error = %e, "hello refused"),
                        },
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "join connection closed"),
                        Err(_) => tracing::debug!(%peer, "no hello in time"),
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meta_store::wire::{HELLO_MAGIC, Hello, PROTOCOL_VERSION};

    fn hello_at(cluster: &str, from: u64, to: u64, from_addr: &str) -> Vec<u8> {
        Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
            cluster_id: cluster.into(),
            from,
            to,
            from_addr: from_addr.into(),
        }
        .encode_to_vec()
    }

    fn hello(cluster: &str, from: u64, to: u64) -> Vec<u8> {
        hello_at(cluster, from, to, "127.0.0.1:7000")
    }

    #[test]
    fn hellos_are_checked() {
        let c = ClusterId::random();
        let s = c.to_string();
        let inv = Invitation {
            cluster: c,
            from: 1,
            from_addr: "127.0.0.1:7000".into(),
        };
        assert_eq!(check_hello(&hello(&s, 1, 4), 4, None), Ok(inv.clone()));
        assert_eq!(check_hello(&hello(&s, 1, 4), 4, Some(c)), Ok(inv));
        for bad in ["", "no-port", ":7000", "h:0", "h:99999", &"x".repeat(400)] {
            assert!(
                matches!(
                    check_hello(&hello_at(&s, 1, 4, bad), 4, None),
                    Err(HelloError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check_hello(&hello(&s, 1, 4), 4, Some(ClusterId::random())),
            Err(HelloError::OtherCluster(_))
        ));
        assert_eq!(
            check_hello(&hello(&s, 1, 5), 4, None),
            Err(HelloError::OtherNode(5))
        );
        assert!(check_hello(&hello("not-a-uuid", 1, 4), 4, None).is_err());
        assert!(check_hello(&hello(&s, 4, 4), 4, None).is_err());
        assert!(check_hello(b"\xff\xff", 4, None).is_err());
    }
}
