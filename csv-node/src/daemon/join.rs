//! Joining: an uninitialised node listens on its cluster address until a leader that
//! added it connects. The leader's transport opens with a `Hello{cluster_id, from, to}`;
//! a hello addressed to this node (and, when configured, naming the expected cluster)
//! tells the node which cluster it joins. The node then closes this listener and starts
//! its metadata store on the same address; the leader's transport reconnects (backoff
//! ≤ 1 s) and brings the empty store up by snapshot.

use std::net::SocketAddr;
use std::time::Duration;

use csv_api::ClusterId;
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
}

/// Checks a hello frame; returns the cluster to join.
pub fn check_hello(
    frame: &[u8],
    me: u64,
    expected: Option<ClusterId>,
) -> Result<ClusterId, HelloError> {
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
    Ok(id)
}

/// Accepts connections on `listener` until a valid hello arrives; sends its cluster id
/// on `found` and returns (dropping the listener).
pub async fn wait_for_leader(
    listener: TcpListener,
    me: u64,
    expected: Option<ClusterId>,
    found: mpsc::Sender<ClusterId>,
) {
    let (tx, mut rx) = mpsc::channel::<ClusterId>(1);
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PENDING));
    loop {
        tokio::select! {
            Some(id) = rx.recv() => {
                let _ = found.send(id).await;
                return;
            }
            acc = listener.accept() => {
                let (mut s, peer): (tokio::net::TcpStream, SocketAddr) = match acc {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "join listener accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = sem.clone().try_acquire_owned() else { continue };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let r = tokio::time::timeout(HELLO_TIMEOUT, async {
                        let mut len = [0u8; 4];
                        s.read_exact(&mut len).await?;
                        let len = u32::from_be_bytes(len) as usize;
                        if len > MAX_HELLO {
                            return Err(std::io::Error::other("hello too large"));
                        }
                        let mut buf = vec![0u8; len];
                        s.read_exact(&mut buf).await?;
                        Ok(buf)
                    })
                    .await;
                    match r {
                        Ok(Ok(frame)) => match check_hello(&frame, me, expected) {
                            Ok(id) => {
                                tracing::info!(%peer, cluster = %id, "contacted by a cluster leader: joining");
                                let _ = tx.try_send(id);
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

    fn hello(cluster: &str, from: u64, to: u64) -> Vec<u8> {
        Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
            cluster_id: cluster.into(),
            from,
            to,
        }
        .encode_to_vec()
    }

    #[test]
    fn hellos_are_checked() {
        let c = ClusterId::random();
        let s = c.to_string();
        assert_eq!(check_hello(&hello(&s, 1, 4), 4, None), Ok(c));
        assert_eq!(check_hello(&hello(&s, 1, 4), 4, Some(c)), Ok(c));
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
