//! Wire format of the node-to-node data transport (docs/design/070 §5).
//!
//! A source node whose LUN path is lost forwards its VHDs' LUN calls to a peer over TCP.
//! Each message is one frame of `tokio_util`'s [`LengthDelimitedCodec`] (a u32 big-endian
//! length, then the frame body), the same framing as the admin and Raft transports:
//!
//! ```text
//! frame body = header_len: u16 BE | header: prost `Header`, header_len bytes | payload
//! ```
//!
//! The header is small and extensible (protobuf: a newer peer's extra fields are skipped by
//! an older one). The payload is the rest of the frame: the data of a write call or of a
//! successful read reply, never anything else. Keeping it out of the protobuf lets the
//! receiver hand it to the LUN call as a slice of the frame it read ([`decode`] takes
//! [`Bytes`] and returns `frame.slice(..)`), and lets a sender write it straight from the
//! VM's buffer after the header ([`encode_parts`]).
//!
//! Everything that could reach a LUN call is checked here, on both sides: [`encode`]
//! refuses a message [`decode`] would refuse, so a frame this module writes always reads
//! back equal, and a malformed frame is a [`WireError`], never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LengthDelimitedCodecError};

/// The protobuf header (private: [`Msg`] is the format's public face).
mod pb;

/// Largest byte count one read, write or write-zeroes call carries; the source splits
/// larger requests.
pub const MAX_CALL: usize = 8 << 20;

/// Largest frame body: a full call's payload plus room for its header.
pub const MAX_FRAME: usize = MAX_CALL + (64 << 10);

/// Protocol version a source sends in [`Msg::Open`]. Later versions must keep the `Open`
/// header's layout, so that any peer can read it and answer [`Msg::OpenRefused`].
pub const VERSION: u32 = 1;

/// Longest `detail` string on the wire, in bytes: [`encode`] truncates longer ones (at a
/// character boundary), [`decode`] refuses them.
pub const MAX_DETAIL: usize = 4096;

/// Bytes of the frame body's header-length prefix.
const HEADER_LEN_BYTES: usize = 2;

/// Bytes of the codec's frame-length prefix.
const FRAME_LEN_BYTES: usize = 4;

/// What a forwarded call asks of the peer's LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOp {
    /// Read `len` bytes at `offset`; the data comes back in the reply's payload.
    Read,
    /// Write the call's payload (`len` bytes) at `offset`.
    Write,
    /// Write `len` zero bytes at `offset` (no payload).
    WriteZeroes,
    /// Answered once every write of the session answered before it is durable.
    Flush,
}

/// Who writes: the VHD, the node and the node's hold generation (checked at the peer
/// against its lock table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writer {
    /// The VHD the call belongs to.
    pub vhd: u64,
    /// The node that holds the VHD (the source).
    pub node: u64,
    /// The generation of that hold.
    pub generation: u64,
}

/// One LUN call forwarded by the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Chosen by the source, unique among the connection's calls in flight; the reply
    /// carries it back (replies come in any order).
    pub id: u64,
    /// The session the call belongs to (the one the connection opened).
    pub session: u64,
    /// What to do.
    pub op: CallOp,
    /// Byte offset on the LUN (0 for a flush).
    pub offset: u64,
    /// Byte count: 1..=[`MAX_CALL`] for read, write and write-zeroes, 0 for a flush.
    pub len: u64,
    /// The hold the peer checks before the LUN call. The peer, not the wire, decides
    /// which ops need one.
    pub writer: Option<Writer>,
    /// The data of a write (exactly `len` bytes); empty for every other op.
    pub payload: Bytes,
}

/// Why a peer refused or failed a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer has no usable LUN path of its own.
    Path,
    /// The peer's LUN call failed; `errno` says how.
    Media,
    /// The peer's checks refused the writer: it is not the VHD's writer, or the range
    /// is not mapped to the VHD or reserved to the node.
    Fenced,
    /// The writer's generation is not the one the peer's lock table holds.
    Stale,
    /// The peer's replica has not yet applied what the source had; the source retries.
    NotYet,
    /// The session is closed or expired at the peer.
    SessionClosed,
    /// The call is inconsistent (for example a write with no writer).
    BadRequest,
}

/// A refused or failed call.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The class of failure.
    pub refusal: Refusal,
    /// The errno the source should report for it.
    pub errno: i32,
    /// Human-readable detail, at most [`MAX_DETAIL`] bytes on the wire.
    pub detail: String,
}

/// The answer to a [`Call`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The call's id.
    pub id: u64,
    /// Ok: the data of a read (empty for other ops); Err: why the call failed.
    pub result: Result<Bytes, Failure>,
}

/// Every message of the transport.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// Source → peer, first frame of a connection: opens session `session` of node `source`.
    Open {
        version: u32,
        source: u64,
        session: u64,
    },
    /// Peer → source: the session is open; `ttl_ms` is the session lease, `io_timeout_ms`
    /// the peer's LUN call bound.
    Opened {
        session: u64,
        ttl_ms: u64,
        io_timeout_ms: u64,
    },
    /// Peer refuses to open (wrong version, shutting down, no path of its own...).
    OpenRefused { detail: String },
    /// Source → peer: a LUN call.
    Call(Call),
    /// Peer → source: the answer to a call.
    Reply(Reply),
    /// Source → peer: keeps an idle session's lease.
    Ping { session: u64 },
    /// Peer → source: answers a ping.
    Pong { session: u64 },
    /// Source → peer: close the named older session of the same source; answered with
    /// Closed{id} once it is drained.
    CloseSession { id: u64, session: u64 },
    /// Peer → source: the session named by `CloseSession{id}` is closed and drained.
    Closed { id: u64, session: u64 },
}

/// A message that cannot be encoded or a frame that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frame body exceeds [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    /// The frame is too short to hold the header length.
    #[error("frame of {0} bytes is too short for its 2-byte header length")]
    ShortFrame(usize),
    /// The header length points past the end of the frame.
    #[error("truncated header: {header} bytes announced, {available} in the frame")]
    TruncatedHeader { header: usize, available: usize },
    /// An encoded header does not fit its u16 length.
    #[error("header of {0} bytes does not fit the 16-bit header length")]
    HeaderTooLarge(usize),
    /// The header is not a valid protobuf `Header`.
    #[error("bad header: {0}")]
    Prost(#[from] prost::DecodeError),
    /// The header could not be encoded (cannot happen into a growable buffer).
    #[error("header encoding failed: {0}")]
    Encode(#[from] prost::EncodeError),
    /// The header names no message kind this version knows.
    #[error("header carries no known message kind")]
    UnknownKind,
    /// The call's op code is not one this version knows.
    #[error("unknown call op {0}")]
    UnknownOp(u32),
    /// The failure's refusal code is not one this version knows.
    #[error("unknown refusal {0}")]
    UnknownRefusal(u32),
    /// A required header field is absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A read, write or write-zeroes call of zero bytes.
    #[error("{0:?} call of 0 bytes")]
    EmptyCall(CallOp),
    /// A call longer than [`MAX_CALL`].
    #[error("{op:?} call of {len} bytes exceeds the {max}-byte call limit")]
    CallTooLarge { op: CallOp, len: u64, max: usize },
    /// A flush with a range (a flush covers the whole session, not a range).
    #[error("flush with a range (offset {offset}, len {len})")]
    FlushRange { offset: u64, len: u64 },
    /// `offset + len` does not fit in u64.
    #[error("range overflows: offset {offset} + len {len}")]
    RangeOverflow { offset: u64, len: u64 },
    /// A write whose payload is not exactly `len` bytes.
    #[error("payload length mismatch: write of {len} bytes carries {payload} bytes")]
    PayloadMismatch { len: u64, payload: usize },
    /// A payload on a message that carries none.
    #[error("{kind} carries no payload, found {len} bytes")]
    UnexpectedPayload { kind: &'static str, len: usize },
    /// A read reply longer than [`MAX_CALL`].
    #[error("reply payload of {len} bytes exceeds the {max}-byte call limit")]
    ReplyTooLarge { len: usize, max: usize },
    /// A detail string longer than [`MAX_DETAIL`] in a received frame.
    #[error("detail of {len} bytes exceeds the {max}-byte limit")]
    DetailTooLong { len: usize, max: usize },
    /// The underlying stream failed (codec only).
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
}

impl CallOp {
    fn code(self) -> u32 {
        match self {
            CallOp::Read => 1,
            CallOp::Write => 2,
            CallOp::WriteZeroes => 3,
            CallOp::Flush => 4,
        }
    }

    fn from_code(code: u32) -> Result<Self, WireError> {
        match code {
            0 => Err(WireError::MissingField("call op")),
            1 => Ok(CallOp::Read),
            2 => Ok(CallOp::Write),
            3 => Ok(CallOp::WriteZeroes),
            4 => Ok(CallOp::Flush),
            n => Err(WireError::UnknownOp(n)),
        }
    }
}

impl Refusal {
    fn code(self) -> u32 {
        match self {
            Refusal::Path => 1,
            Refusal::Media => 2,
            Refusal::Fenced => 3,
            Refusal::Stale => 4,
            Refusal::NotYet => 5,
            Refusal::SessionClosed => 6,
            Refusal::BadRequest => 7,
        }
    }

    fn from_code(code: u32) -> Result<Self, WireError> {
        match code {
            0 => Err(WireError::MissingField("refusal")),
            1 => Ok(Refusal::Path),
            2 => Ok(Refusal::Media),
            3 => Ok(Refusal::Fenced),
            4 => Ok(Refusal::Stale),
            5 => Ok(Refusal::NotYet),
            6 => Ok(Refusal::SessionClosed),
            7 => Ok(Refusal::BadRequest),
            n => Err(WireError::UnknownRefusal(n)),
        }
    }
}

impl Msg {
    /// The message kind, for error messages.
    fn kind(&self) -> &'static str {
        match self {
            Msg::Open { .. } => "Open",
            Msg::Opened { .. } => "Opened",
            Msg::OpenRefused { .. } => "OpenRefused",
            Msg::Call(_) => "Call",
            Msg::Reply(Reply { result: Ok(_), .. }) => "Reply",
            Msg::Reply(Reply { result: Err(_), .. }) => "failed Reply",
            Msg::Ping { .. } => "Ping",
            Msg::Pong { .. } => "Pong",
            Msg::CloseSession { .. } => "CloseSession",
            Msg::Closed { .. } => "Closed",
        }
    }
}

/// The checks a call passes on both sides of the wire (`payload_len` is the payload the
/// call carries).
fn check_call(op: CallOp, offset: u64, len: u64, payload_len: usize) -> Result<(), WireError> {
    if op == CallOp::Flush {
        if offset != 0 || len != 0 {
            return Err(WireError::FlushRange { offset, len });
        }
    } else {
        if len == 0 {
            return Err(WireError::EmptyCall(op));
        }
        if len > MAX_CALL as u64 {
            return Err(WireError::CallTooLarge {
                op,
                len,
                max: MAX_CALL,
            });
        }
        if offset.checked_add(len).is_none() {
            return Err(WireError::RangeOverflow { offset, len });
        }
    }
    match op {
        CallOp::Write if payload_len as u64 != len => Err(WireError::PayloadMismatch {
            len,
            payload: payload_len,
        }),
        CallOp::Write => Ok(()),
        _ if payload_len != 0 => Err(WireError::UnexpectedPayload {
            kind: "a non-write call",
            len: payload_len,
        }),
        _ => Ok(()),
    }
}

/// `detail` cut to at most [`MAX_DETAIL`] bytes, at a character boundary.
fn truncate_detail(detail: &str) -> String {
    detail[..detail.floor_char_boundary(MAX_DETAIL)].to_owned()
}

/// A received detail string, refused when too long.
fn check_detail(detail: String) -> Result<String, WireError> {
    if detail.len() > MAX_DETAIL {
        return Err(WireError::DetailTooLong {
            len: detail.len(),
            max: MAX_DETAIL,
        });
    }
    Ok(detail)
}

/// The header of `msg` and the payload that follows it (empty for most kinds), after the
/// same checks [`decode`] applies.
fn to_header(msg: &Msg) -> Result<(pb::Header, Bytes), WireError> {
    let mut payload = Bytes::new();
    let body = match msg {
        Msg::Open {
            version,
            source,
            session,
        } => pb::Body::Open(pb::Open {
            version: *version,
            source: *source,
            session: *session,
        }),
        Msg::Opened {
            session,
            ttl_ms,
            io_timeout_ms,
        } => pb::Body::Opened(pb::Opened {
            session: *session,
            ttl_ms: *ttl_ms,
            io_timeout_ms: *io_timeout_ms,
        }),
        Msg::OpenRefused { detail } => pb::Body::OpenRefused(pb::OpenRefused {
            detail: truncate_detail(detail),
        }),
        Msg::Call(call) => {
            check_call(call.op, call.offset, call.len, call.payload.len())?;
            payload = call.payload.clone();
            pb::Body::Call(pb::Call {
                id: call.id,
                session: call.session,
                op: call.op.code(),
                offset: call.offset,
                len: call.len,
                writer: call.writer.map(|w| pb::Writer {
                    vhd: w.vhd,
                    node: w.node,
                    generation: w.generation,
                }),
            })
        }
        Msg::Reply(reply) => {
            let failure = match &reply.result {
                Ok(data) => {
                    if data.len() > MAX_CALL {
                        return Err(WireError::ReplyTooLarge {
                            len: data.len(),
                            max: MAX_CALL,
                        });
                    }
                    payload = data.clone();
                    None
                }
                Err(f) => Some(pb::Failure {
                    refusal: f.refusal.code(),
                    errno: f.errno,
                    detail: truncate_detail(&f.detail),
                }),
            };
            pb::Body::Reply(pb::Reply {
                id: reply.id,
                failure,
            })
        }
        Msg::Ping { session } => pb::Body::Ping(pb::Session { session: *session }),
        Msg::Pong { session } => pb::Body::Pong(pb::Session { session: *session }),
        Msg::CloseSession { id, session } => pb::Body::CloseSession(pb::Close {
            id: *id,
            session: *session,
        }),
        Msg::Closed { id, session } => pb::Body::Closed(pb::Close {
            id: *id,
            session: *session,
        }),
    };
    Ok((pb::Header { body: Some(body) }, payload))
}

/// The message a decoded header and its payload stand for.
fn from_header(header: pb::Header, payload: Bytes) -> Result<Msg, WireError> {
    let body = header.body.ok_or(WireError::UnknownKind)?;
    let msg = match body {
        pb::Body::Call(c) => {
            let op = CallOp::from_code(c.op)?;
            check_call(op, c.offset, c.len, payload.len())?;
            return Ok(Msg::Call(Call {
                id: c.id,
                session: c.session,
                op,
                offset: c.offset,
                len: c.len,
                writer: c.writer.map(|w| Writer {
                    vhd: w.vhd,
                    node: w.node,
                    generation: w.generation,
                }),
                payload,
            }));
        }
        pb::Body::Reply(pb::Reply { id, failure: None }) => {
            if payload.len() > MAX_CALL {
                return Err(WireError::ReplyTooLarge {
                    len: payload.len(),
                    max: MAX_CALL,
                });
            }
            return Ok(Msg::Reply(Reply {
                id,
                result: Ok(payload),
            }));
        }
        pb::Body::Reply(pb::Reply {
            id,
            failure: Some(f),
        }) => Msg::Reply(Reply {
            id,
            result: Err(Failure {
                refusal: Refusal::from_code(f.refusal)?,
                errno: f.errno,
                detail: check_detail(f.detail)?,
            }),
        }),
        pb::Body::Open(o) => Msg::Open {
            version: o.version,
            source: o.source,
            session: o.session,
        },
        pb::Body::Opened(o) => Msg::Opened {
            session: o.session,
            ttl_ms: o.ttl_ms,
            io_timeout_ms: o.io_timeout_ms,
        },
        pb::Body::OpenRefused(o) => Msg::OpenRefused {
            detail: check_detail(o.detail)?,
        },
        pb::Body::Ping(s) => Msg::Ping { session: s.session },
        pb::Body::Pong(s) => Msg::Pong { session: s.session },
        pb::Body::CloseSession(c) => Msg::CloseSession {
            id: c.id,
            session: c.session,
        },
        pb::Body::Closed(c) => Msg::Closed {
            id: c.id,
            session: c.session,
        },
    };
    // Only a call or a successful reply (returned above) carries a payload.
    if !payload.is_empty() {
        return Err(WireError::UnexpectedPayload {
            kind: msg.kind(),
            len: payload.len(),
        });
    }
    Ok(msg)
}

/// A checked message ready to be written: everything the three encoders need, computed
/// once.
struct Encoded {
    header: pb::Header,
    header_len: u16,
    payload: Bytes,
    /// Frame body length (header length, header, payload), at most [`MAX_FRAME`].
    body_len: usize,
    /// The same as the codec's u32 length prefix.
    prefix: u32,
}

impl Encoded {
    fn new(msg: &Msg) -> Result<Self, WireError> {
        let (header, payload) = to_header(msg)?;
        let len = header.encoded_len();
        let header_len = u16::try_from(len).map_err(|_| WireError::HeaderTooLarge(len))?;
        let body = HEADER_LEN_BYTES + len + payload.len();
        let too_large = WireError::FrameTooLarge {
            len: body,
            max: MAX_FRAME,
        };
        if body > MAX_FRAME {
            return Err(too_large);
        }
        let prefix = u32::try_from(body).map_err(|_| too_large)?;
        Ok(Encoded {
            header,
            header_len,
            payload,
            body_len: body,
            prefix,
        })
    }

    /// Appends the header length and the header to `dst`.
    fn put_head(&self, dst: &mut BytesMut) -> Result<(), WireError> {
        dst.put_u16(self.header_len);
        self.header.encode(dst)?;
        Ok(())
    }
}

/// Encodes `msg` as a frame body (without the codec's u32 length prefix): what [`decode`]
/// takes. Copies the payload once into the new buffer; see [`encode_parts`] to avoid that.
/// Refuses messages [`decode`] would refuse; truncates detail strings to [`MAX_DETAIL`].
pub fn encode(msg: &Msg) -> Result<Bytes, WireError> {
    let e = Encoded::new(msg)?;
    let mut dst = BytesMut::with_capacity(e.body_len);
    e.put_head(&mut dst)?;
    dst.extend_from_slice(&e.payload);
    Ok(dst.freeze())
}

/// Encodes `msg` for a writer that puts frames on the stream itself, without copying the
/// payload: the first part is the codec's u32 frame length, the header length and the
/// header; the second the payload (`None` when the message carries no bytes). Writing the
/// first part then the payload yields exactly one frame [`MsgCodec`] reads back.
pub fn encode_parts(msg: &Msg) -> Result<(BytesMut, Option<Bytes>), WireError> {
    let e = Encoded::new(msg)?;
    let mut head =
        BytesMut::with_capacity(FRAME_LEN_BYTES + HEADER_LEN_BYTES + usize::from(e.header_len));
    head.put_u32(e.prefix);
    e.put_head(&mut head)?;
    let payload = (!e.payload.is_empty()).then_some(e.payload);
    Ok((head, payload))
}

/// The first part of [`encode_parts`] for a successful [`Reply`] that carries `len`
/// bytes, for a writer whose payload is not in memory (spliced from a pipe into the
/// socket): this head, then exactly `len` bytes, is one frame that [`MsgCodec`] reads back
/// as `Reply { id, result: Ok(those bytes) }`.
pub fn encode_reply_head(id: u64, len: usize) -> Result<BytesMut, WireError> {
    if len > MAX_CALL {
        return Err(WireError::ReplyTooLarge { len, max: MAX_CALL });
    }
    // The header of a successful reply names its id only; the payload is what follows.
    let e = Encoded::new(&Msg::Reply(Reply {
        id,
        result: Ok(Bytes::new()),
    }))?;
    let body = e.body_len + len;
    let prefix = u32::try_from(body).map_err(|_| WireError::FrameTooLarge {
        len: body,
        max: MAX_FRAME,
    })?;
    let mut head =
        BytesMut::with_capacity(FRAME_LEN_BYTES + HEADER_LEN_BYTES + usize::from(e.header_len));
    head.put_u32(prefix);
    e.put_head(&mut head)?;
    Ok(head)
}

/// Decodes one frame body (as [`LengthDelimitedCodec`] yields it, frozen). A payload is
/// returned as a slice of `frame`, not copied.
pub fn decode(frame: Bytes) -> Result<Msg, WireError> {
    if frame.len() > MAX_FRAME {
        return Err(WireError::FrameTooLarge {
            len: frame.len(),
            max: MAX_FRAME,
        });
    }
    let Some(mut len_bytes) = frame.get(..HEADER_LEN_BYTES) else {
        return Err(WireError::ShortFrame(frame.len()));
    };
    let header_len = usize::from(len_bytes.get_u16());
    let end = HEADER_LEN_BYTES + header_len;
    let Some(header_bytes) = frame.get(HEADER_LEN_BYTES..end) else {
        return Err(WireError::TruncatedHeader {
            header: header_len,
            available: frame.len() - HEADER_LEN_BYTES,
        });
    };
    let header = pb::Header::decode(header_bytes)?;
    from_header(header, frame.slice(end..))
}

/// Frames and parses [`Msg`]s on a byte stream: [`LengthDelimitedCodec`] (u32 big-endian
/// length, bodies up to [`MAX_FRAME`]) around [`encode`] / [`decode`]. Decoded payloads
/// are slices of the read buffer; encoding copies a payload once into the write buffer
/// (use [`encode_parts`] to write without that copy).
#[derive(Debug)]
pub struct MsgCodec {
    frames: LengthDelimitedCodec,
}

impl MsgCodec {
    /// A codec with the transport's frame limit.
    pub fn new() -> Self {
        let frames = LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_length(FRAME_LEN_BYTES)
            .max_frame_length(MAX_FRAME)
            .new_codec();
        MsgCodec { frames }
    }
}

impl Default for MsgCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for MsgCodec {
    type Item = Msg;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Msg>, WireError> {
        match self.frames.decode(src) {
            Ok(Some(frame)) => decode(frame.freeze()).map(Some),
            Ok(None) => Ok(None),
            Err(err) => Err(oversized(&err, src).unwrap_or(WireError::Io(err))),
        }
    }
}

/// The inner codec reports an oversized frame as an opaque I/O error and leaves the
/// length prefix in `src`: name the frame's size instead.
fn oversized(err: &std::io::Error, src: &BytesMut) -> Option<WireError> {
    err.get_ref()?.downcast_ref::<LengthDelimitedCodecError>()?;
    let mut prefix = src.get(..FRAME_LEN_BYTES)?;
    Some(WireError::FrameTooLarge {
        len: usize::try_from(prefix.get_u32()).unwrap_or(usize::MAX),
        max: MAX_FRAME,
    })
}

impl Encoder<Msg> for MsgCodec {
    type Error = WireError;

    /// Writes the frame straight into `dst` (the same bytes the inner codec would write
    /// for [`encode`]'s output, without building that intermediate buffer).
    fn encode(&mut self, msg: Msg, dst: &mut BytesMut) -> Result<(), WireError> {
        let e = Encoded::new(&msg)?;
        let start = dst.len();
        dst.reserve(FRAME_LEN_BYTES + e.body_len);
        dst.put_u32(e.prefix);
        if let Err(err) = e.put_head(dst) {
            // Leave no partial frame behind in the write buffer.
            dst.truncate(start);
            return Err(err);
        }
        dst.extend_from_slice(&e.payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
