//! Server settings (connection limits, timeouts, TLS policy) and the errors of the
//! server API.

use std::sync::Arc;
use std::time::Duration;

use crate::proto::MAX_PAYLOAD;

/// The server's TLS policy for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// No TLS configured: STARTTLS is answered ERR_UNSUP.
    Off,
    /// The client may upgrade.
    Optional,
    /// FORCEDTLS: everything but STARTTLS and ABORT is refused until TLS is up.
    Required,
}

/// Errors of the server API (not of connections: those are logged and end the
/// connection only).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("export {0:?} already exists")]
    DuplicateExport(String),
    #[error("export name {0:?} is too long or contains NUL")]
    BadExportName(String),
    #[error("export description is too long or contains NUL")]
    BadDescription,
    #[error("invalid server configuration: {0}")]
    Config(String),
}

/// Server settings; [`ServerConfig::validate`] checks them.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Requests in flight per connection.
    pub max_requests: usize,
    /// Payload and unsent reply bytes per connection.
    pub max_bytes: usize,
    /// Time allowed from accept to the end of negotiation (TLS handshake included).
    pub negotiation_timeout: Duration,
    /// After shutdown/removal, how long an idle connection waits for the client's DISC.
    pub linger: Duration,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub tls_policy: TlsPolicy,
}

/// TLS of one listener ([`crate::server::Server::spawn_listener_with_tls`]).
#[derive(Clone)]
pub struct ListenerTls {
    /// Credentials (None: plaintext whatever the policy).
    pub config: Option<Arc<rustls::ServerConfig>>,
    /// Off, optional or required.
    pub policy: TlsPolicy,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("credentials", &self.config.is_some())
            .field("policy", &self.policy)
            .finish()
    }
}

/// Default connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Default requests in flight per connection (the kernel queues up to 128).
pub const DEFAULT_MAX_REQUESTS: usize = 128;
/// Default bytes in flight per connection: four maximum-size requests.
pub const DEFAULT_MAX_BYTES: usize = 4 * MAX_PAYLOAD as usize;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_bytes: DEFAULT_MAX_BYTES,
            negotiation_timeout: Duration::from_secs(30),
            linger: Duration::from_secs(2),
            tls: None,
            tls_policy: TlsPolicy::Off,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: &str| Err(ServerError::Config(m.to_owned()));
        if self.max_connections == 0 || self.max_connections > 1 << 20 {
            return bad("max_connections must be in 1..=1048576");
        }
        if self.max_requests == 0 || self.max_requests > 1 << 16 {
            return bad("max_requests must be in 1..=65536");
        }
        if self.max_bytes < MAX_PAYLOAD as usize {
            return bad("max_bytes must hold at least one maximum-size request (32 MiB)");
        }
        if self.negotiation_timeout.is_zero() {
            return bad("negotiation_timeout must be positive");
        }
        match (self.tls_policy, &self.tls) {
            (TlsPolicy::Off, Some(_)) => bad("TLS credentials given with TLS off"),
            (TlsPolicy::Optional | TlsPolicy::Required, None) => {
                bad("TLS enabled without credentials")
            }
            _ => Ok(()),
        }
    }
}
