//! Redirected I/O (docs/design/070): the pure core that watches a node's LUN path and
//! chooses between direct and redirected access ([`health`]), and the wire format of
//! the node-to-node data transport ([`wire`]). No I/O here: the shell is csv-node's
//! `redirect` module.

pub mod health;
pub mod wire;
