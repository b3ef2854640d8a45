//! Identifiers and counters shared by the crates of csv. The numeric ones are plain
//! `u64` newtypes that serialize transparently; cluster and volume identities are UUIDs.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// A cluster node (the same number as its Raft id; never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

/// A VHD file of the cluster volume, as the namespace numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VhdId(pub u64);

/// A node's incarnation of liveness: bumped when the node is declared expired or leaves.
/// Every hold is granted under one epoch and is void once the node's epoch moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

/// A grant number from one cluster-wide counter; a writer's generation is its fencing
/// token. Strictly increasing: a later grant always has a larger generation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl Epoch {
    /// The epoch a node starts with.
    pub const FIRST: Epoch = Epoch(1);
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

impl fmt::Display for VhdId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vhd-{}", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// Error of parsing a UUID-based identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: expected a UUID")]
pub struct ParseIdError {
    what: &'static str,
    input: String,
}

macro_rules! uuid_id {
    ($name:ident, $what:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random identity.
            pub fn random() -> Self {
                $name(Uuid::new_v4())
            }
            /// The nil identity (all zero), used for "none" on the wire.
            pub fn nil() -> Self {
                $name(Uuid::nil())
            }
            /// True for the nil identity.
            pub fn is_nil(&self) -> bool {
                self.0.is_nil()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name).map_err(|_| ParseIdError {
                    what: $what,
                    input: s.chars().take(64).collect(),
                })
            }
        }
    };
}

uuid_id!(
    ClusterId,
    "cluster id",
    "A cluster's identity, chosen at `cluster init`; every node of the cluster stores it."
);
uuid_id!(
    VolumeId,
    "volume id",
    "A cluster volume's identity, written in the LUN's superblock at format time."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_and_serialize_transparently() {
        assert_eq!(NodeId(3).to_string(), "node-3");
        assert_eq!(VhdId(4).to_string(), "vhd-4");
        assert_eq!(Epoch::FIRST.to_string(), "e1");
        assert_eq!(Generation(9).to_string(), "g9");
        assert_eq!(serde_json::to_string(&NodeId(7)).expect("json"), "7");
        let c = ClusterId::random();
        let s = c.to_string();
        assert_eq!(s.parse::<ClusterId>().expect("parse"), c);
        assert_eq!(serde_json::to_string(&c).expect("json"), format!("\"{s}\""));
        assert!(VolumeId::nil().is_nil());
        let e = "nope".parse::<VolumeId>().expect_err("not a uuid");
        assert!(e.to_string().contains("volume id"), "{e}");
    }
}
