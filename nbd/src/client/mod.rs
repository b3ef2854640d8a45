//! NBD client: fixed-newstyle negotiation (optional STARTTLS, structured replies,
//! `base:allocation`, NBD_OPT_GO with block sizes, NBD_OPT_EXPORT_NAME fallback), then
//! async requests with many in flight over one connection ([`Client`] is cheap to
//! clone and every clone can issue requests concurrently).

mod conn;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use conn::Client;

use crate::codec::CodecError;
use crate::codec::handshake::{encode_client_flags, parse_export_name_reply, parse_greeting};
use crate::codec::option::*;
use crate::error::Errno;
use crate::proto::*;

/// Anything that carries the protocol.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    #[error("server refused {option}: reply {reply:#x} {message}")]
    Refused {
        option: &'static str,
        reply: u32,
        message: String,
    },
    #[error("the server requires TLS")]
    TlsRequired,
    #[error("server error {errno}: {message}")]
    Server { errno: Errno, message: String },
    #[error("request timed out (connection closed)")]
    Timeout,
    #[error("connection closed")]
    Closed,
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    #[error("{0} was not negotiated")]
    NotNegotiated(&'static str),
}

impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// TLS settings of a client.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// Name the server certificate must carry.
    pub server_name: rustls::pki_types::ServerName<'static>,
}

/// What to negotiate.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub export: String,
    pub tls: Option<ClientTls>,
    pub structured_replies: bool,
    pub base_allocation: bool,
    /// A request not answered in this time fails and poisons the connection (replies
    /// can no longer be matched safely).
    pub request_timeout: Duration,
    /// Requests in flight at once; more wait.
    pub max_in_flight: usize,
    /// TCP only: `TCP_USER_TIMEOUT`, how long sent data may stay unacknowledged before
    /// the kernel drops the connection (instead of retransmitting it for minutes, to be
    /// delivered after a partition heals).
    pub tcp_user_timeout: Option<Duration>,
    /// TCP only: `SO_LINGER` 0, so closing the connection resets it and discards what is
    /// still unsent (a client that gave up on its requests must not have them delivered
    /// later).
    pub reset_on_close: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            export: String::new(),
            tls: None,
            structured_replies: true,
            base_allocation: true,
            request_timeout: Duration::from_secs(60),
            max_in_flight: 64,
            tcp_user_timeout: None,
            reset_on_close: false,
        }
    }
}

/// The export as negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_block: u32,
    pub structured: bool,
    /// Context id of `base:allocation`, when selected.
    pub base_allocation: Option<u32>,
    pub description: Option<String>,
}

impl ExportInfo {
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

type BoxStream = Box<dyn Stream>;

async fn send_option<S: AsyncWrite + Unpin>(
    s: &mut S,
    opt: u32,
    payload: &[u8],
) -> Result<(), ClientError> {
    let mut b = BytesMut::with_capacity(16 + payload.len());
    encode_option(&mut b, opt, payload);
    s.write_all(&b).await?;
    s.flush().await?;
    Ok(())
}

/// Reads one option reply (header + bounded payload).
async fn read_option_reply<S: AsyncRead + Unpin>(
    s: &mut S,
    opt: u32,
) -> Result<(OptionReplyHeader, Vec<u8>), ClientError> {
    let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
    s.read_exact(&mut h).await?;
    let (hdr, _) = parse_option_reply_header(&h)?
        .ok_or_else(|| ClientError::Protocol("short option reply".into()))?;
    if hdr.opt != opt {
        return Err(ClientError::Protocol(format!(
            "reply to option {} while {} was sent",
            hdr.opt, opt
        )));
    }
    let mut payload = vec![0u8; hdr.len as usize];
    s.read_exact(&mut payload).await?;
    Ok((hdr, payload))
}

fn refused(opt: u32, reply: u32, payload: &[u8]) -> ClientError {
    if reply == REP_ERR_TLS_REQD {
        return ClientError::TlsRequired;
    }
    ClientError::Refused {
        option: option_name(opt),
        reply,
        message: String::from_utf8_lossy(payload).into_owned(),
    }
}

/// Negotiates on a connected stream and returns the client for the export.
pub async fn handshake<S: Stream>(stream: S, cfg: ClientConfig) -> Result<Client, ClientError> {
    let mut s: BoxStream = Box::new(stream);
    let no_zeroes = greet(&mut s).await?;
    if let Some(tls) = &cfg.tls {
        send_option(&mut s, OPT_STARTTLS, &[]).await?;
        let (h, p) = read_option_reply(&mut s, OPT_STARTTLS).await?;
        if h.reply != REP_ACK {
            return Err(refused(OPT_STARTTLS, h.reply, &p));
        }
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let t = connector.connect(tls.server_name.clone(), s).await?;
        s = Box::new(t);
    }
    let info = options(&mut s, &cfg, no_zeroes).await?;
    Ok(Client::start(s, info, &cfg))
}

/// Negotiates on a plaintext stream and hands the stream back, in transmission, for a
/// caller that speaks the transmission phase itself (one request at a time, simple
/// replies: `cfg.structured_replies` should be off). `cfg.tls` must be `None`.
pub async fn negotiate_raw<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    cfg: &ClientConfig,
) -> Result<(S, ExportInfo), ClientError> {
    if cfg.tls.is_some() {
        return Err(ClientError::Invalid("a raw connection is plaintext"));
    }
    let no_zeroes = greet(&mut s).await?;
    let info = options(&mut s, cfg, no_zeroes).await?;
    Ok((s, info))
}

/// The greeting and the client flags; returns whether the server omits the zeroes of
/// an EXPORT_NAME reply.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<bool, ClientError> {
    let mut g = [0u8; GREETING_LEN];
    s.read_exact(&mut g).await?;
    let (sflags, _) =
        parse_greeting(&g)?.ok_or_else(|| ClientError::Protocol("short greeting".into()))?;
    if sflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(ClientError::Protocol("server is not fixed-newstyle".into()));
    }
    let no_zeroes = sflags & FLAG_NO_ZEROES != 0;
    let cflags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };
    let mut b = BytesMut::new();
    encode_client_flags(&mut b, cflags);
    s.write_all(&b).await?;
    Ok(no_zeroes)
}

/// Structured replies, `base:allocation`, then GO (or EXPORT_NAME): the export.
async fn options<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cfg: &ClientConfig,
    no_zeroes: bool,
) -> Result<ExportInfo, ClientError> {
    let mut structured = false;
    if cfg.structured_replies {
        send_option(s, OPT_STRUCTURED_REPLY, &[]).await?;
        let (h, p) = read_option_reply(s, OPT_STRUCTURED_REPLY).await?;
        match h.reply {
            REP_ACK => structured = true,
            REP_ERR_UNSUP => {}
            r => return Err(refused(OPT_STRUCTURED_REPLY, r, &p)),
        }
    }

    let mut base_allocation = None;
    if structured && cfg.base_allocation {
        let mut p = BytesMut::new();
        encode_meta_context_request(
            &mut p,
            &MetaContextRequest {
                export: cfg.export.clone(),
                queries: vec![META_BASE_ALLOCATION.into()],
            },
        );
        send_option(s, OPT_SET_META_CONTEXT, &p).await?;
        loop {
            let (h, p) = read_option_reply(s, OPT_SET_META_CONTEXT).await?;
            match h.reply {
                REP_META_CONTEXT => {
                    let (id, name) = parse_rep_meta_context(&p)?;
                    if name == META_BASE_ALLOCATION {
                        base_allocation = Some(id);
                    }
                }
                REP_ACK => break,
                r if r & REP_FLAG_ERROR != 0 => {
                    if r == REP_ERR_TLS_REQD {
                        return Err(ClientError::TlsRequired);
                    }
                    base_allocation = None;
                    break;
                }
                r => return Err(ClientError::Protocol(format!("unexpected reply {r:#x}"))),
            }
        }
    }

    let mut p = BytesMut::new();
    encode_info_request(
        &mut p,
        &InfoRequest {
            name: cfg.export.clone(),
            requests: vec![INFO_BLOCK_SIZE, INFO_DESCRIPTION],
        },
    );
    send_option(s, OPT_GO, &p).await?;
    let mut info = ExportInfo {
        size: 0,
        flags: 0,
        min_block: 1,
        preferred_block: BLOCK_SIZE_PREFERRED,
        max_block: MAX_PAYLOAD,
        structured,
        base_allocation,
        description: None,
    };
    let mut have_export = false;
    loop {
        let (h, p) = read_option_reply(s, OPT_GO).await?;
        match h.reply {
            REP_INFO => match parse_info(&p)? {
                Info::Export { size, flags } => {
                    info.size = size;
                    info.flags = flags;
                    have_export = true;
                }
                Info::BlockSize {
                    min,
                    preferred,
                    max,
                } => {
                    info.min_block = min.max(1);
                    info.preferred_block = preferred;
                    info.max_block = max.min(MAX_PAYLOAD);
                }
                Info::Description(d) => info.description = Some(d),
                Info::Name(_) | Info::Unknown(_) => {}
            },
            REP_ACK => {
                if !have_export {
                    return Err(ClientError::Protocol(
                        "GO succeeded without NBD_INFO_EXPORT".into(),
                    ));
                }
                break;
            }
            REP_ERR_UNSUP => {
                // An old server: EXPORT_NAME ends negotiation without error replies.
                send_option(s, OPT_EXPORT_NAME, cfg.export.as_bytes()).await?;
                let need = 10 + if no_zeroes { 0 } else { EXPORT_NAME_ZEROES };
                let mut r = vec![0u8; need];
                s.read_exact(&mut r).await?;
                let ((size, flags), _) = parse_export_name_reply(&r, no_zeroes)?
                    .ok_or_else(|| ClientError::Protocol("short EXPORT_NAME reply".into()))?;
                info.size = size;
                info.flags = flags;
                break;
            }
            r if r & REP_FLAG_ERROR != 0 => return Err(refused(OPT_GO, r, &p)),
            r => return Err(ClientError::Protocol(format!("unexpected GO reply {r:#x}"))),
        }
    }
    Ok(info)
}

/// Connects to a Unix socket and negotiates.
pub async fn connect_unix(path: &Path, cfg: ClientConfig) -> Result<Client, ClientError> {
    let s = tokio::net::UnixStream::connect(path).await?;
    handshake(s, cfg).await
}

/// Connects over TCP (TCP_NODELAY, and the socket options of `cfg`) and negotiates.
pub async fn connect_tcp(
    addr: impl tokio::net::ToSocketAddrs,
    cfg: ClientConfig,
) -> Result<Client, ClientError> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let sock = socket2::SockRef::from(&s);
    if let Some(t) = cfg.tcp_user_timeout {
        sock.set_tcp_user_timeout(Some(t))?;
    }
    if cfg.reset_on_close {
        sock.set_linger(Some(Duration::ZERO))?;
    }
    handshake(s, cfg).await
}
