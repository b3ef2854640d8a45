//! TLS material of a csv cluster: PEM loading and rustls configurations ([`pem`]), the
//! cluster CA that issues node and client certificates ([`pki`]), and mutual TLS between
//! nodes with a check of the node a peer claims to be ([`peer`]).

pub mod peer;
pub mod pem;
pub mod pki;

pub use peer::{
    IdentityError, NodeTls, PeerIdentity, PeerReadHalf, PeerSecurity, PeerStream, PeerWriteHalf,
    node_name,
};

#[cfg(test)]
mod tests;
