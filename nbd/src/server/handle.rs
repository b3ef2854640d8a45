//! [`Server`], the cheap shared handle: export management, accept loops over
//! [`Listener`]s, one task per connection (negotiation, optional STARTTLS, transmission)
//! and graceful shutdown.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::config::{ListenerTls, ServerConfig, ServerError, TlsPolicy};
use super::export::{Export, ExportOptions, ExportRegistry, ExportRemoval};
use super::listener::Listener;
use super::negotiate::{Negotiator, Session, Step};
use super::transmit::{self, TransmitLimits};
use crate::codec::option::parse_option_header;
use crate::device::BlockDevice;
use crate::proto::*;

#[derive(Debug)]
struct Shared {
    config: ServerConfig,
    exports: ExportRegistry,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
}

/// A running (or ready) NBD server. Clones share everything.
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

impl Server {
    pub fn new(config: ServerConfig) -> Result<Server, ServerError> {
        config.validate()?;
        let slots = Arc::new(Semaphore::new(config.max_connections));
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                exports: ExportRegistry::default(),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                slots,
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// Adds an export; new connections see it at once.
    pub fn add_export(
        &self,
        name: &str,
        device: Arc<dyn BlockDevice>,
        options: ExportOptions,
    ) -> Result<Arc<Export>, ServerError> {
        let e = self.shared.exports.add(name, device, options)?;
        tracing::info!(
            export = name,
            size = e.size(),
            read_only = e.read_only(),
            "export added"
        );
        Ok(e)
    }

    /// Removes an export: hidden from new negotiations at once; its connections finish
    /// what they already read, answer further requests with ESHUTDOWN and close. Await
    /// [`ExportRemoval::wait`] to know the device is no longer used.
    pub fn remove_export(&self, name: &str) -> Option<ExportRemoval> {
        let r = self.shared.exports.remove(name);
        if r.is_some() {
            tracing::info!(export = name, "export removed");
        }
        r
    }

    pub fn export(&self, name: &str) -> Option<Arc<Export>> {
        self.shared.exports.get(name)
    }

    pub fn export_names(&self) -> Vec<String> {
        self.shared
            .exports
            .list()
            .iter()
            .map(|e| e.name().to_owned())
            .collect()
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        self.shared.config.max_connections - self.shared.slots.available_permits()
    }

    /// Starts a graceful shutdown: listeners stop, negotiations get ERR_SHUTDOWN,
    /// connections drain (in-flight requests answered, later ones ESHUTDOWN) and close.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Resolves when shutdown was requested and every listener and connection ended.
    pub async fn wait(&self) {
        self.shared.shutdown.cancelled().await;
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// Starts accepting on `listener` (until shutdown) in a background task, with the
    /// server's TLS settings.
    pub fn spawn_listener(&self, listener: Listener) {
        let tls = self.server_tls();
        self.spawn_listener_with_tls(listener, tls);
    }

    /// Starts accepting on `listener` with TLS settings of its own (a node serves its
    /// Unix socket in plaintext and requires TLS on TCP).
    pub fn spawn_listener_with_tls(&self, listener: Listener, tls: ListenerTls) {
        let me = self.clone();
        self.shared
            .tasks
            .spawn(async move { me.accept_loop(listener, tls).await });
    }

    fn server_tls(&self) -> ListenerTls {
        let c = &self.shared.config;
        ListenerTls {
            config: c.tls.clone(),
            policy: c.tls_policy,
        }
    }

    async fn accept_loop(&self, listener: Listener, tls: ListenerTls) {
        let what = listener.describe();
        tracing::info!("listening on {what}");
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                _ = self.shared.shutdown.cancelled() => break,
                r = accept(&listener) => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    match stream {
                        Accepted::Tcp(s) => self.spawn_conn(s, peer, tls.clone()),
                        Accepted::Unix(s) => self.spawn_conn(s, peer, tls.clone()),
                    }
                }
                Err(e) => {
                    // EMFILE and friends: wait instead of spinning.
                    tracing::warn!("accept on {what}: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        tracing::info!("stopped listening on {what}");
    }

    /// Serves one already-connected stream (a test harness, inetd-style use).
    pub fn spawn_connection<S>(&self, stream: S, peer: String)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tls = self.server_tls();
        self.spawn_conn(stream, peer, tls);
    }

    fn spawn_conn<S>(&self, stream: S, peer: String, tls: ListenerTls)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(permit) = self.shared.slots.clone().try_acquire_owned() else {
            tracing::warn!(peer, "connection limit reached, closing new connection");
            return;
        };
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("conn", id, peer);
        let me = self.clone();
        self.shared.tasks.spawn(
            async move {
                me.connection(stream, &tls).await;
                drop(permit);
            }
            .instrument(span),
        );
    }

    async fn connection<S: Io>(&self, stream: S, tls: &ListenerTls) {
        let sh = &self.shared;
        let neg =
            tokio::time::timeout(sh.config.negotiation_timeout, self.negotiate(stream, tls)).await;
        match neg {
            Err(_) => tracing::info!("negotiation timed out"),
            Ok(Err(e)) => tracing::debug!("negotiation ended: {e}"),
            Ok(Ok(None)) => {}
            Ok(Ok(Some((Transport::Plain(s), session)))) => self.run(s, session).await,
            Ok(Ok(Some((Transport::Tls(s), session)))) => self.run(*s, session).await,
        }
    }

    async fn run<S: Io>(&self, stream: S, session: Box<Session>) {
        tracing::info!(
            export = session.export.name(),
            structured = session.structured,
            "transmission started"
        );
        let removed = session.export.removed().clone();
        let shutdown = self.shared.shutdown.clone();
        let stop: Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(async move {
            tokio::select! {
                _ = removed.cancelled() => {}
                _ = shutdown.cancelled() => {}
            }
        });
        let tl = TransmitLimits {
            max_requests: self.shared.config.max_requests,
            max_bytes: self.shared.config.max_bytes,
            linger: self.shared.config.linger,
        };
        let killed = session.export.killed().clone();
        tokio::select! {
            end = transmit::transmit(stream, &session, stop, tl) => {
                tracing::info!(?end, "connection closed");
            }
            _ = killed.cancelled() => {
                tracing::info!("connection closed by the server (export removed)");
            }
        }
    }

    /// Greeting, client flags, options; STARTTLS upgrades in place.
    async fn negotiate<S: Io>(
        &self,
        mut stream: S,
        tls: &ListenerTls,
    ) -> io::Result<Option<(Transport<S>, Box<Session>)>> {
        let policy = if tls.config.is_some() {
            tls.policy
        } else {
            TlsPolicy::Off
        };
        let mut neg = Negotiator::new(policy);
        let mut out = BytesMut::with_capacity(256);
        Negotiator::greeting(&mut out);
        stream.write_all(&out).await?;
        stream.flush().await?;
        let mut flags = [0u8; 4];
        stream.read_exact(&mut flags).await?;
        neg.client_flags(&flags)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match self.options(&mut stream, &mut neg).await? {
            Outcome::Done => Ok(None),
            Outcome::Transmit(s) => Ok(Some((Transport::Plain(stream), s))),
            Outcome::StartTls => {
                let Some(cfg) = tls.config.clone() else {
                    return Ok(None);
                };
                let mut tls = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await?;
                neg.tls_started();
                tracing::debug!("TLS established");
                match self.options(&mut tls, &mut neg).await? {
                    Outcome::Transmit(s) => Ok(Some((Transport::Tls(Box::new(tls)), s))),
                    Outcome::Done | Outcome::StartTls => Ok(None),
                }
            }
        }
    }

    async fn options<S: Io>(&self, stream: &mut S, neg: &mut Negotiator) -> io::Result<Outcome> {
        let sh = &self.shared;
        let mut out = BytesMut::with_capacity(1024);
        let mut payload = Vec::new();
        loop {
            let mut hdr = [0u8; OPTION_HEADER_LEN];
            stream.read_exact(&mut hdr).await?;
            let h = match parse_option_header(&hdr) {
                Ok(Some((h, _))) => h,
                Ok(None) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            };
            tracing::debug!(option = option_name(h.opt), len = h.len, "option");
            out.clear();
            let step = if h.len > MAX_OPTION_LEN {
                if h.len > MAX_OPTION_DRAIN {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("option of {} bytes", h.len),
                    ));
                }
                let mut rest = u64::from(h.len);
                let mut sink = vec![0u8; 64 * 1024];
                while rest > 0 {
                    let n = rest.min(sink.len() as u64) as usize;
                    stream.read_exact(&mut sink[..n]).await?;
                    rest -= n as u64;
                }
                neg.oversized_option(h.opt, &mut out)
            } else {
                payload.resize(h.len as usize, 0);
                stream.read_exact(&mut payload).await?;
                neg.handle_option(
                    h.opt,
                    &payload,
                    &sh.exports,
                    sh.shutdown.is_cancelled(),
                    &mut out,
                )
            };
            if !out.is_empty() {
                stream.write_all(&out).await?;
                stream.flush().await?;
            }
            match step {
                Step::Continue => {}
                Step::Close(why) => {
                    tracing::debug!("negotiation closed: {why}");
                    let _ = stream.shutdown().await;
                    return Ok(Outcome::Done);
                }
                Step::StartTls => return Ok(Outcome::StartTls),
                Step::Transmit(s) => return Ok(Outcome::Transmit(s)),
            }
        }
    }
}

enum Outcome {
    Done,
    StartTls,
    Transmit(Box<Session>),
}

enum Transport<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> io::Result<(Accepted, String)> {
    match l {
        Listener::Tcp(t) => {
            let (s, peer) = t.accept().await?;
            // Replies are small and latency-bound: never wait for Nagle.
            s.set_nodelay(true)?;
            Ok((Accepted::Tcp(s), peer.to_string()))
        }
        Listener::Unix(u, _) => {
            let (s, _) = u.accept().await?;
            Ok((Accepted::Unix(s), "unix".to_owned()))
        }
    }
}
