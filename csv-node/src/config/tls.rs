//! `[tls]`: mutual TLS between the nodes (Raft transport, joining, redirected I/O) and
//! TLS on NBD over TCP. Certificates come from the cluster CA (`csvadm cluster certs
//! init|issue`). Without them a node refuses to start unless `plaintext = true` says the
//! cluster is a test bed.

use std::path::PathBuf;
use std::sync::Arc;

use csv_tls::{NodeTls, PeerSecurity};
use serde::Deserialize;

/// NBD over TCP: TLS required, or plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NbdTls {
    /// Clients must STARTTLS and present a certificate of the cluster CA (default).
    Require,
    /// Plaintext (tests, or a listener that only loopback reaches).
    Off,
}

/// `[tls]` of the node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// The cluster CA certificate (PEM).
    pub ca: Option<PathBuf>,
    /// This node's certificate, issued to `node-<id>.csv` by the CA (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// Tests only: node-to-node traffic without TLS or peer authentication.
    pub plaintext: bool,
    /// NBD over TCP (`[volume] nbd_listen`); Unix sockets are always plaintext.
    pub nbd: NbdTls,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            ca: None,
            cert: None,
            key: None,
            plaintext: false,
            nbd: NbdTls::Require,
        }
    }
}

/// The certificate paths of a TLS configuration.
struct Files<'a> {
    ca: &'a PathBuf,
    cert: &'a PathBuf,
    key: &'a PathBuf,
}

impl TlsSection {
    fn files(&self) -> Option<Files<'_>> {
        Some(Files {
            ca: self.ca.as_ref()?,
            cert: self.cert.as_ref()?,
            key: self.key.as_ref()?,
        })
    }

    /// Checks the values (not the files: [`TlsSection::load`] reads those).
    pub(super) fn validate(&self, nbd_tcp: bool) -> Result<(), (&'static str, String)> {
        let given = [&self.ca, &self.cert, &self.key]
            .iter()
            .filter(|p| p.is_some())
            .count();
        for (field, p) in [
            ("tls.ca", &self.ca),
            ("tls.cert", &self.cert),
            ("tls.key", &self.key),
        ] {
            if p.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err((field, "must be an absolute path".into()));
            }
        }
        match (self.plaintext, given) {
            (true, 0) => {}
            (true, _) => {
                return Err((
                    "tls.plaintext",
                    "plaintext = true with certificates configured: remove one or the other".into(),
                ));
            }
            (false, 3) => {}
            (false, _) => {
                return Err((
                    "tls",
                    "connections between nodes need mutual TLS: set tls.ca, tls.cert and \
                     tls.key (made by `csvadm cluster certs init` and `issue NODE`), or \
                     plaintext = true on a test bed"
                        .into(),
                ));
            }
        }
        if nbd_tcp && self.nbd == NbdTls::Require && self.plaintext {
            return Err((
                "tls.nbd",
                "NBD over TCP requires TLS, which needs tls.ca/cert/key; set nbd = \"off\" \
                 to serve it in plaintext, or serve NBD on a Unix socket"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Loads and checks the certificates for node `node`: the node-to-node security and,
    /// when NBD over TCP requires TLS, the NBD server configuration (the node's
    /// certificate; clients must present one of the cluster CA).
    pub fn load(&self, node: u64) -> Result<LoadedTls, String> {
        let Some(f) = self.files() else {
            return Ok(LoadedTls {
                peers: PeerSecurity::Plaintext,
                nbd: None,
            });
        };
        let t = NodeTls::load(node, f.ca, f.cert, f.key).map_err(|e| e.to_string())?;
        let nbd = match self.nbd {
            NbdTls::Require => Some(
                csv_tls::pem::server_config(f.cert, f.key, Some(f.ca))
                    .map_err(|e| e.to_string())?,
            ),
            NbdTls::Off => None,
        };
        Ok(LoadedTls {
            peers: PeerSecurity::Tls(Arc::new(t)),
            nbd,
        })
    }
}

/// What `[tls]` gives the running node.
#[derive(Debug, Clone)]
pub struct LoadedTls {
    /// Node-to-node connections.
    pub peers: PeerSecurity,
    /// NBD over TCP (None: plaintext).
    pub nbd: Option<Arc<rustls::ServerConfig>>,
}

impl Default for LoadedTls {
    fn default() -> Self {
        LoadedTls {
            peers: PeerSecurity::Plaintext,
            nbd: None,
        }
    }
}
