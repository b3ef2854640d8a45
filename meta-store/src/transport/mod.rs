//! Node-to-node transport: the [`Transport`] trait the node sends through, the bounded
//! [`Inbox`] incoming envelopes are delivered to, and the implementations (TCP, and the
//! simulated network of the simulation lives in `sim`).

pub mod frame;
pub mod tcp;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::wire::Envelope;

/// Where a transport delivers incoming envelopes. Bounded: when the node falls behind,
/// further envelopes are dropped and counted (Raft retransmits), so a flood from one peer
/// cannot grow memory or block the transport.
#[derive(Debug, Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Envelope>,
    dropped: Arc<AtomicU64>,
}

impl Inbox {
    /// An inbox of `capacity` envelopes and its receiving end.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Envelope>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Inbox {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Delivers without waiting; false (and counted) when full or closed.
    pub fn deliver(&self, env: Envelope) -> bool {
        if self.tx.try_send(env).is_ok() {
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Envelopes dropped because the node was not keeping up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Sends envelopes to peers by node id.
///
/// Implementations never block the caller: each peer has a bounded queue and a full queue
/// drops the envelope (and counts it), so a slow or dead peer never delays the others.
/// They authenticate peers (today: the handshake's cluster id and node id; later mutual
/// TLS) and deliver to the inbox only envelopes whose `from` is the authenticated peer.
pub trait Transport: Send + Sync + 'static {
    /// Connects incoming traffic to a node. Called once when the node starts.
    fn attach(&self, inbox: Inbox);
    /// Queues `env` for `env.to`.
    fn send(&self, env: Envelope);
    /// Sets (or with `None` removes) the address of peer `id`.
    fn set_peer(&self, id: u64, addr: Option<String>);
    /// Closes every connection and stops the transport's tasks.
    fn shutdown(&self);
}
