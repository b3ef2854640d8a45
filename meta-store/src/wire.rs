//! Wire messages of the metadata store (prost, hand-written, no .proto): the node-to-node
//! envelope, forwarded requests and their replies, the proposal context stored in each log
//! entry, the snapshot payload and the transport handshake.
//!
//! Raft's own messages travel as opaque bytes in the protobuf-2 encoding raft-rs uses; they
//! are decoded with `merge_from_bytes` and only from peers that passed the handshake (see
//! docs/design/020-metadata-raft.md on RUSTSEC-2024-0437).

use crate::error::{Error, ErrorCode};

/// Everything one node sends another.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// Sender node id.
    #[prost(uint64, tag = "1")]
    pub from: u64,
    /// Receiver node id.
    #[prost(uint64, tag = "2")]
    pub to: u64,
    /// The payload.
    #[prost(oneof = "Body", tags = "3, 4, 5")]
    pub body: Option<Body>,
}

/// Payloads of an [`Envelope`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    /// A raft-rs `eraftpb::Message` in protobuf-2 encoding.
    #[prost(bytes, tag = "3")]
    Raft(Vec<u8>),
    /// A request a follower forwards to the leader.
    #[prost(message, tag = "4")]
    Forward(Forward),
    /// The leader's answer to a forwarded request.
    #[prost(message, tag = "5")]
    Reply(Reply),
}

/// Kinds of forwarded requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ForwardKind {
    /// A state-machine command.
    Command = 0,
    /// A membership change ([`MembershipRequest`] in `data`).
    Membership = 1,
}

/// A request forwarded to the leader by the node a client asked.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Forward {
    /// Id chosen by the origin node, unique there.
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    /// What `data` holds.
    #[prost(enumeration = "ForwardKind", tag = "2")]
    pub kind: i32,
    /// The command or the encoded membership request.
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
    /// The origin's incarnation (its request-id space).
    #[prost(uint64, tag = "4")]
    pub incarnation: u64,
    /// The origin's lowest unanswered request id (see [`ProposalContext::lowest`]).
    #[prost(uint64, tag = "5")]
    pub lowest: u64,
}

/// The outcome of a forwarded request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reply {
    /// The origin's request id.
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    /// Result or error.
    #[prost(oneof = "Outcome", tags = "2, 3, 4")]
    pub outcome: Option<Outcome>,
    /// The origin incarnation the request came from.
    #[prost(uint64, tag = "5")]
    pub incarnation: u64,
}

/// Outcomes of a forwarded request.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Outcome {
    /// The state machine's apply result.
    #[prost(bytes, tag = "2")]
    Applied(Vec<u8>),
    /// The membership after the change.
    #[prost(message, tag = "3")]
    Membership(Membership),
    /// The request failed.
    #[prost(message, tag = "4")]
    Error(WireError),
}

/// An [`Error`] on the wire: its stable code plus the fields some codes carry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireError {
    /// [`ErrorCode`] number.
    #[prost(uint32, tag = "1")]
    pub code: u32,
    /// Numeric detail (leader hint, sizes, learner id).
    #[prost(uint64, tag = "2")]
    pub a: u64,
    /// Numeric detail.
    #[prost(uint64, tag = "3")]
    pub b: u64,
    /// Numeric detail.
    #[prost(uint64, tag = "4")]
    pub c: u64,
    /// Text detail.
    #[prost(string, tag = "5")]
    pub detail: String,
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        let mut w = WireError {
            code: e.code() as u32,
            ..Default::default()
        };
        match e {
            Error::NotLeader { leader } => w.a = leader.unwrap_or(0),
            Error::TooLarge { what, size, max } => {
                w.a = *size;
                w.b = *max;
                w.detail = what.clone();
            }
            Error::NotCaughtUp { id, lag, max } => {
                w.a = *id;
                w.b = *lag;
                w.c = *max;
            }
            Error::Indeterminate(s)
            | Error::InvalidMembership(s)
            | Error::Storage(s)
            | Error::Config(s)
            | Error::Malformed(s) => w.detail = s.clone(),
            _ => {}
        }
        w
    }
}

impl From<&WireError> for Error {
    fn from(w: &WireError) -> Self {
        let Some(code) = ErrorCode::from_u32(w.code) else {
            return Error::Malformed(format!("unknown error code {}", w.code));
        };
        let d = w.detail.clone();
        match code {
            ErrorCode::NoLeader => Error::NoLeader,
            ErrorCode::NotLeader => Error::NotLeader {
                leader: (w.a != 0).then_some(w.a),
            },
            ErrorCode::Dropped => Error::Dropped,
            ErrorCode::Busy => Error::Busy,
            ErrorCode::Timeout => Error::Timeout,
            ErrorCode::Indeterminate => Error::Indeterminate(d),
            ErrorCode::TooLarge => Error::TooLarge {
                what: d,
                size: w.a,
                max: w.b,
            },
            ErrorCode::InvalidMembership => Error::InvalidMembership(d),
            ErrorCode::ConfChangeInProgress => Error::ConfChangeInProgress,
            ErrorCode::Stopped => Error::Stopped,
            ErrorCode::Storage => Error::Storage(d),
            ErrorCode::Config => Error::Config(d),
            ErrorCode::NotCaughtUp => Error::NotCaughtUp {
                id: w.a,
                lag: w.b,
                max: w.c,
            },
            ErrorCode::Malformed => Error::Malformed(d),
        }
    }
}

/// Cluster membership as the applied configuration holds it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Membership {
    /// Voters (the incoming set while joint).
    #[prost(uint64, repeated, tag = "1")]
    pub voters: Vec<u64>,
    #[prost(uint64, repeated, tag = "2")]
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration while in joint consensus (empty otherwise).
    #[prost(uint64, repeated, tag = "3")]
    pub outgoing_voters: Vec<u64>,
}

impl Membership {
    /// True while a joint configuration is in force.
    pub fn is_joint(&self) -> bool {
        !self.outgoing_voters.is_empty()
    }

    /// True when `id` votes in either configuration.
    pub fn is_voter(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.outgoing_voters.contains(&id)
    }

    /// True when `id` is a learner.
    pub fn is_learner(&self, id: u64) -> bool {
        self.learners.contains(&id)
    }

    pub(crate) fn from_conf_state(cs: &raft::prelude::ConfState) -> Self {
        let mut m = Membership {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            outgoing_voters: cs.voters_outgoing.clone(),
        };
        m.voters.sort_unstable();
        m.learners.sort_unstable();
        m.outgoing_voters.sort_unstable();
        m
    }
}

/// Kinds of a single membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ChangeKind {
    /// Add a voter, or promote a learner.
    AddVoter = 0,
    /// Add a learner.
    AddLearner = 1,
    /// Remove a voter or learner.
    Remove = 2,
}

/// One membership change on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChangeMsg {
    /// [`ChangeKind`].
    #[prost(enumeration = "ChangeKind", tag = "1")]
    pub kind: i32,
    /// The node.
    #[prost(uint64, tag = "2")]
    pub id: u64,
    /// Its address (added nodes).
    #[prost(string, tag = "3")]
    pub addr: String,
}

/// A membership request (one or more changes applied together).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MembershipRequest {
    #[prost(message, repeated, tag = "1")]
    pub changes: Vec<ChangeMsg>,
}

/// Stored in every entry this store proposes: who asked, and the addresses a membership
/// change brings into the replicated address book.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProposalContext {
    /// The node whose client asked.
    #[prost(uint64, tag = "1")]
    pub origin: u64,
    /// The origin's request id.
    #[prost(uint64, tag = "2")]
    pub request_id: u64,
    /// Addresses of added nodes (membership changes only).
    #[prost(message, repeated, tag = "3")]
    pub peers: Vec<PeerEntry>,
    /// The origin's incarnation: its request ids are unique within it.
    #[prost(uint64, tag = "4")]
    pub incarnation: u64,
    /// Every request of this incarnation below this id is answered (or abandoned), so the
    /// replicated session table may forget their results and ignore late copies.
    #[prost(uint64, tag = "5")]
    pub lowest: u64,
}

/// An address-book entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerEntry {
    /// Node id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Address; empty for a removed node (in snapshots).
    #[prost(string, tag = "2")]
    pub addr: String,
}

/// One state-machine key and value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KvPair {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// The data of a Raft snapshot: the state-machine column family and the address book as
/// of the snapshot's index (index, term and configuration travel in raft's metadata).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotPayload {
    /// Format version, [`SNAPSHOT_FORMAT`].
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// State-machine data in key order.
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KvPair>,
    /// Address book.
    #[prost(message, repeated, tag = "3")]
    pub peers: Vec<PeerEntry>,
    /// Session table (raw records of the `sm_sessions` family).
    #[prost(message, repeated, tag = "4")]
    pub sessions: Vec<KvPair>,
}

/// Current snapshot payload format.
pub const SNAPSHOT_FORMAT: u32 = 2;

/// First frame on every node-to-node connection.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// [`HELLO_MAGIC`].
    #[prost(fixed32, tag = "1")]
    pub magic: u32,
    /// [`PROTOCOL_VERSION`].
    #[prost(uint32, tag = "2")]
    pub version: u32,
    /// Cluster identity; connections from another cluster are refused.
    #[prost(string, tag = "3")]
    pub cluster_id: String,
    /// The dialling node.
    #[prost(uint64, tag = "4")]
    pub from: u64,
    /// The node it meant to reach.
    #[prost(uint64, tag = "5")]
    pub to: u64,
    /// Address at which the dialling node accepts connections (empty when not given). A
    /// node joining with an empty store learns its first peer from it: without it the
    /// joiner could not answer the leader, so it would never receive the snapshot that
    /// carries the rest of the address book.
    #[prost(string, tag = "6")]
    pub from_addr: String,
}

/// "CSVm": marks a metadata-transport connection.
pub const HELLO_MAGIC: u32 = 0x4353_566d;
/// Version of the node-to-node protocol.
pub const PROTOCOL_VERSION: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn errors_round_trip_through_the_wire() {
        let cases = vec![
            Error::NoLeader,
            Error::NotLeader { leader: Some(3) },
            Error::NotLeader { leader: None },
            Error::Dropped,
            Error::Busy,
            Error::Timeout,
            Error::Indeterminate("x".into()),
            Error::TooLarge {
                what: "command".into(),
                size: 9,
                max: 4,
            },
            Error::InvalidMembership("last voter".into()),
            Error::ConfChangeInProgress,
            Error::NotCaughtUp {
                id: 4,
                lag: 100,
                max: 10,
            },
            Error::Stopped,
            Error::Storage("disk".into()),
            Error::Config("c".into()),
            Error::Malformed("m".into()),
        ];
        for e in cases {
            let w = WireError::from(&e);
            let bytes = w.encode_to_vec();
            let back = WireError::decode(bytes.as_slice()).expect("decode");
            assert_eq!(Error::from(&back), e);
        }
        let unknown = WireError {
            code: 999,
            ..Default::default()
        };
        assert!(matches!(Error::from(&unknown), Error::Malformed(_)));
    }

    #[test]
    fn envelope_round_trip() {
        let env = Envelope {
            from: 1,
            to: 2,
            body: Some(Body::Reply(Reply {
                request_id: 7,
                incarnation: 9,
                outcome: Some(Outcome::Membership(Membership {
                    voters: vec![1, 2],
                    learners: vec![3],
                    outgoing_voters: vec![],
                })),
            })),
        };
        let back = Envelope::decode(env.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(back, env);
    }
}
