//! Mutual TLS between the nodes of a cluster (docs/design/110-tls.md).
//!
//! Every node holds a certificate issued by the cluster CA for the name
//! [`node_name`]`(id)`. A node that dials peer P verifies the server certificate against
//! the CA *and* the name of P, so it talks to P and nothing else; the node that accepts
//! verifies the client certificate against the CA during the handshake, and afterwards
//! checks the node the peer claims to be (in its hello or session open) against the
//! names of that certificate ([`PeerIdentity::check`]). A certificate from another CA
//! fails the handshake; a certificate of node 2 cannot speak as node 3.
//!
//! [`PeerSecurity::Plaintext`] turns all of it off; it exists for tests and must be asked
//! for in the configuration.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::pem::{self, TlsError};

/// The DNS name a node's certificate carries: `node-<id>.csv`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}.csv")
}

/// Why a peer is not who it says it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate does not name the node the peer claims to be.
    #[error("the peer's certificate is not issued to node {claimed}: {reason}")]
    NotTheNode {
        /// The node id the peer claimed.
        claimed: u64,
        /// What the check said.
        reason: String,
    },
}

/// One node's TLS material, loaded and checked.
#[derive(Debug)]
pub struct NodeTls {
    node: u64,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl NodeTls {
    /// Loads the CA, this node's certificate chain and key, and checks that the
    /// certificate chains to the CA, is valid now and is issued to node `node`.
    pub fn load(node: u64, ca: &Path, cert: &Path, key: &Path) -> Result<NodeTls, TlsError> {
        let server = pem::server_config(cert, key, Some(ca))?;
        let client = pem::client_config(ca, Some((cert, key)))?;
        let chain = pem::load_certs(cert)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in pem::load_certs(ca)? {
            roots.add(c)?;
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            pem::provider(),
        )
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let name = server_name(node)?;
        let (end, rest) = chain
            .split_first()
            .ok_or_else(|| TlsError::NoCertificate(cert.to_owned()))?;
        verifier
            .verify_server_cert(end, rest, &name, &[], UnixTime::now())
            .map_err(|e| TlsError::NotForNode {
                path: cert.to_owned(),
                node,
                reason: e.to_string(),
            })?;
        Ok(NodeTls {
            node,
            client,
            server,
        })
    }

    /// The node this material belongs to.
    pub fn node(&self) -> u64 {
        self.node
    }
}

fn server_name(node: u64) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(node_name(node)).map_err(|e| TlsError::Verifier(e.to_string()))
}

/// How a node's connections to its peers are secured.
#[derive(Debug, Clone)]
pub enum PeerSecurity {
    /// No TLS and no peer authentication (tests; must be configured explicitly).
    Plaintext,
    /// Mutual TLS under the cluster CA.
    Tls(Arc<NodeTls>),
}

impl PeerSecurity {
    /// Whether connections are authenticated.
    pub fn is_tls(&self) -> bool {
        matches!(self, PeerSecurity::Tls(_))
    }

    /// Secures a connection this node dialled to node `peer` (its certificate must name
    /// `peer`).
    pub async fn connect(&self, tcp: TcpStream, peer: u64) -> std::io::Result<PeerStream> {
        match self {
            PeerSecurity::Plaintext => Ok(PeerStream::Plain(tcp)),
            PeerSecurity::Tls(t) => {
                let name = server_name(peer).map_err(std::io::Error::other)?;
                let s = tokio_rustls::TlsConnector::from(t.client.clone())
                    .connect(name, tcp)
                    .await?;
                Ok(PeerStream::Tls(Box::new(s.into())))
            }
        }
    }

    /// Secures a connection a peer dialled; the returned identity checks the node the
    /// peer then claims to be.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<(PeerStream, PeerIdentity)> {
        match self {
            PeerSecurity::Plaintext => Ok((PeerStream::Plain(tcp), PeerIdentity(None))),
            PeerSecurity::Tls(t) => {
                let s = tokio_rustls::TlsAcceptor::from(t.server.clone())
                    .accept(tcp)
                    .await?;
                let cert = s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.clone().into_owned())
                    .ok_or_else(|| std::io::Error::other("the peer sent no certificate"))?;
                Ok((
                    PeerStream::Tls(Box::new(s.into())),
                    PeerIdentity(Some(cert)),
                ))
            }
        }
    }
}

/// The certificate a peer presented (none on plaintext connections).
#[derive(Debug, Clone)]
pub struct PeerIdentity(Option<CertificateDer<'static>>);

impl PeerIdentity {
    /// Whether the peer may speak as node `claimed`: its certificate (already verified
    /// against the CA in the handshake) must be issued to that node. Always true on a
    /// plaintext connection.
    pub fn check(&self, claimed: u64) -> Result<(), IdentityError> {
        let Some(der) = &self.0 else { return Ok(()) };
        let not = |reason: String| IdentityError::NotTheNode { claimed, reason };
        let cert = webpki::EndEntityCert::try_from(der).map_err(|e| not(e.to_string()))?;
        let name = ServerName::try_from(node_name(claimed)).map_err(|e| not(e.to_string()))?;
        cert.verify_is_valid_for_subject_name(&name)
            .map_err(|e| not(e.to_string()))
    }

    /// Whether the connection is authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.0.is_some()
    }
}

/// A connection between two nodes: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum PeerStream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS (either side of the handshake).
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PeerStream::Plain(s) => s.is_write_vectored(),
            PeerStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl PeerStream {
    /// Splits into a read and a write half that separate tasks may drive: plain TCP
    /// without a lock, TLS (one state machine) through tokio's split.
    pub fn split(self) -> (PeerReadHalf, PeerWriteHalf) {
        match self {
            PeerStream::Plain(s) => {
                let (r, w) = s.into_split();
                (PeerReadHalf::Plain(r), PeerWriteHalf::Plain(w))
            }
            PeerStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (PeerReadHalf::Tls(r), PeerWriteHalf::Tls(w))
            }
        }
    }
}

type TlsOverTcp = tokio_rustls::TlsStream<TcpStream>;

/// The read half of a [`PeerStream`].
#[derive(Debug)]
pub enum PeerReadHalf {
    /// Plain TCP.
    Plain(tokio::net::tcp::OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<TlsOverTcp>),
}

/// The write half of a [`PeerStream`].
#[derive(Debug)]
pub enum PeerWriteHalf {
    /// Plain TCP.
    Plain(tokio::net::tcp::OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<TlsOverTcp>),
}

impl PeerWriteHalf {
    /// The TCP socket of a plaintext connection, for a writer that moves data into it
    /// with `splice(2)` (nothing to encrypt); `None` under TLS.
    pub fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            PeerWriteHalf::Plain(w) => Some(w.as_ref()),
            PeerWriteHalf::Tls(_) => None,
        }
    }
}

impl AsyncRead for PeerReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerReadHalf::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerWriteHalf::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerWriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerWriteHalf::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PeerWriteHalf::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PeerWriteHalf::Plain(s) => s.is_write_vectored(),
            PeerWriteHalf::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerWriteHalf::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerWriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerWriteHalf::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerWriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
