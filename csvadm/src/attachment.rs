//! The view of an attachment (a VHD served as an NBD export by a node): the output of
//! `csvadm vhd attach`, and part of `csvadm volume status`.

use std::fmt;

use csv_api::admin::volume::Attachment;
use serde::Serialize;

/// A VHD served as an NBD export by a node.
#[derive(Debug, Clone, Serialize)]
pub struct AttachmentView {
    /// The VHD's name, also the export name.
    pub name: String,
    pub vhd: u64,
    /// The serving node.
    pub node: u64,
    pub read_only: bool,
    pub generation: u64,
    /// The NBD Unix socket on the serving node's host.
    pub socket: String,
    pub uri: String,
    /// The NBD TCP address, when the node serves TCP.
    pub tcp: Option<String>,
    /// Why the held VHD is not exported.
    pub error: Option<String>,
    /// How the serving node reaches the LUN (`direct`, `redirected`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl AttachmentView {
    /// `ro` or `rw`.
    pub fn access(&self) -> &'static str {
        if self.read_only { "ro" } else { "rw" }
    }
}

impl From<&Attachment> for AttachmentView {
    fn from(a: &Attachment) -> AttachmentView {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        AttachmentView {
            name: a.name.clone(),
            vhd: a.vhd,
            node: a.node,
            read_only: a.read_only,
            generation: a.generation,
            socket: a.socket.clone(),
            uri: a.uri.clone(),
            tcp: non_empty(&a.tcp),
            error: non_empty(&a.error),
            path: non_empty(&a.path),
        }
    }
}

impl fmt::Display for AttachmentView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} attached on node {} ({}); connect with: {}",
            self.name,
            self.node,
            if self.read_only {
                "read-only"
            } else {
                "read-write"
            },
            self.uri
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::to_json;

    #[test]
    fn attachment_text_and_json() {
        let v = AttachmentView::from(&Attachment {
            name: "a".into(),
            vhd: 7,
            node: 2,
            read_only: true,
            generation: 3,
            socket: "/s".into(),
            uri: "nbd+unix:///a?socket=/s".into(),
            tcp: String::new(),
            error: "busy".into(),
            path: String::new(),
        });
        assert_eq!(
            v.to_string(),
            "a attached on node 2 (read-only); connect with: nbd+unix:///a?socket=/s"
        );
        assert_eq!(
            to_json(&v, false).expect("json"),
            r#"{"error":"busy","generation":3,"name":"a","node":2,"read_only":true,"socket":"/s","tcp":null,"uri":"nbd+unix:///a?socket=/s","vhd":7}"#
        );
    }
}
